"""Entry script for the Ottawa listings model, in Azure ML's convention: `init()` loads the model, `run(raw)` scores.

The same file runs unchanged under Azure ML's inference server (`azmlinfsrv --entry_script api/score.py`) and under
`mlops-nb serve`, which loads the model itself (so it can swap versions) and calls `preprocess` and `postprocess`
around batched model calls. Everything else lives in `mlops_nb.serving`.

Model: `AZUREML_MODEL_DIR` (set by Azure ML), else `MLOPS_NB_MODEL` (a model folder or a registry reference such as
`models:/ottawa-housing-classifier@champion`), else the champion of the configured registry.
"""
import json, os
from mlops_nb.serving import AREA_UNITS, RequestError, load_runtime, validate_payload
from mlops_nb.train import derive_features

runtime = None  # the loaded model (`mlops_nb.serving.Runtime`)


def init():
    "Load the model once per process."
    global runtime
    runtime = load_runtime(os.environ.get("AZUREML_MODEL_DIR") or os.environ.get("MLOPS_NB_MODEL") or None)


def preprocess(records):
    "Our pre-processing: square metres to square feet, then the derived features the model was trained with."
    out = []
    for r in records:
        k = AREA_UNITS[r.get("area_unit", "sqft")]
        if k != 1.0: r = {**r, "sqft": r["sqft"] * k, "lot_size": r["lot_size"] * k}
        out.append(derive_features(r))
    return out


def postprocess(probabilities, records, info):
    "Our post-processing: a label and a probability per listing, with the model's name and version."
    return [{"label": "above_asking" if p >= 0.5 else "at_or_below_asking", "probability": float(p),
             "model": info.name, "version": info.version} for p in probabilities]


def score(payload, rt=None):
    "Predictions for a parsed request: validated, pre-processed, scored, post-processed."
    rt = rt or runtime
    records = validate_payload(payload, rt.fields)
    return {"predictions": postprocess(rt.predict_proba(preprocess(records)), records, rt.info)}


def run(raw):
    "Azure ML's entry point: JSON text in, predictions out; bad input gets a 4xx naming each offending field."
    try: return score(json.loads(raw))
    except json.JSONDecodeError as e: return _error(400, [{"loc": ["body"], "msg": f"invalid JSON: {e}"}])
    except RequestError as e: return _error(e.status, e.errors)


def _error(status, errors):
    "A 4xx answer: Azure ML's AMLResponse under its server, a plain dict with the status elsewhere."
    body = {"error": "invalid request", "detail": errors}
    try: from azureml.contrib.services.aml_response import AMLResponse
    except ImportError: return {**body, "status": status}
    return AMLResponse(body, status, json_str=True)  # AMLResponse encodes the body itself
