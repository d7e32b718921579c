"""Entry script of the scoring API, in Azure ML's convention: `init()` loads the model, `run(raw)` scores.

The same file runs unchanged under Azure ML's inference server (`azmlinfsrv --entry_script api/score.py`) and under
`mlops-nb serve`, which loads the model itself (so it can swap versions) and calls `preprocess` and `postprocess`
around batched model calls. Nothing here is specific to a problem: the model folder says what it takes and answers
(see `mlops_nb.serving`). `preprocess` and `postprocess` are the places for a team's own request and answer handling.

Model: `AZUREML_MODEL_DIR` (set by Azure ML), else `MLOPS_NB_MODEL` (a model folder or a registry reference such as
`models:/NAME@champion`), else the champion of the configured registry.
"""
import json, os
from mlops_nb.serving import RequestError, load_runtime, score

runtime = None  # the loaded model (`mlops_nb.serving.Runtime`)


def init():
    "Load the model once per process."
    global runtime
    runtime = load_runtime(os.environ.get("AZUREML_MODEL_DIR") or os.environ.get("MLOPS_NB_MODEL") or None)


def preprocess(records):
    "Validated raw records in, the records to score out: the place for a team's own request handling."
    return records


def postprocess(answers, records, runtime):
    ("The model's answers (label and probabilities, or value; model and "
     "version) for each record: the place to reshape them.")
    return answers


def run(raw):
    "Azure ML's entry point: JSON text in, predictions out; bad input gets a 4xx naming each offending field."
    try: return score(json.loads(raw), runtime, preprocess, postprocess)
    except json.JSONDecodeError as e: return _error(400, [{"loc": ["body"], "msg": f"invalid JSON: {e}"}])
    except RequestError as e: return _error(e.status, e.errors)


def _error(status, errors):
    "A 4xx answer: Azure ML's AMLResponse under its server, a plain dict with the status elsewhere."
    body = {"error": "invalid request", "detail": errors}
    try: from azureml.contrib.services.aml_response import AMLResponse
    except ImportError: return {**body, "status": status}
    return AMLResponse(body, status, json_str=True)  # AMLResponse encodes the body itself
