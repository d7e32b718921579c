"""api/score.py in-process: Azure ML's init()/run(raw) contract with correct and incorrect inputs."""
import importlib.util, json
from pathlib import Path
import pytest
from conftest import GOOD, BAD_REQUESTS

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def score(model_dir, monkeypatch_module):
    "api/score.py imported and initialised on the model folder, as Azure ML would (AZUREML_MODEL_DIR)."
    monkeypatch_module.setenv("AZUREML_MODEL_DIR", str(model_dir.parent))  # Azure ML mounts a folder holding the model
    spec = importlib.util.spec_from_file_location("score_under_test", HERE/"score.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.init()
    return mod


def test_init_loads_the_model(score):
    assert score.runtime.info.version == "1" and score.runtime.fast is not None


def test_one_record_and_a_list(score, model_dir):
    from mlops_nb.examples.ottawa import generate_listings
    one = score.run(json.dumps(GOOD))
    assert list(one) == ["predictions"] and len(one["predictions"]) == 1
    p = one["predictions"][0]
    assert p["label"] in ("above_asking", "at_or_below_asking") and 0 <= p["probability"] <= 1
    assert (p["model"], p["version"]) == ("ottawa-housing-classifier", "1")
    assert (p["probability"] >= 0.5) == (p["label"] == "above_asking")
    assert p["probabilities"] == {"at_or_below_asking": pytest.approx(1 - p["probability"]),
                                  "above_asking": p["probability"]}
    df = generate_listings(2022, 50, seed=9)
    recs = df.drop(columns=["listing_id", "sold_price", "sold_above_ask"]).assign(
        listing_date=df.listing_date.dt.strftime("%Y-%m-%d")).to_dict("records")
    many = score.run(json.dumps(recs))["predictions"]
    assert len(many) == 50


def test_predictions_equal_the_pipeline(score):
    "The fast path gives the registered pipeline's probabilities (raw DataFrame in) within 1e-9."
    import numpy as np
    from mlops_nb.examples.ottawa import generate_listings
    df = generate_listings(2023, 500, seed=4)
    recs = df.drop(columns=["listing_id", "sold_price", "sold_above_ask"]).assign(
        listing_date=df.listing_date.dt.strftime("%Y-%m-%d")).to_dict("records")
    got = np.array([p["probability"] for p in score.run(json.dumps(recs))["predictions"]])
    want = score.runtime.pipeline.predict_proba(df)[:, 1]
    assert np.max(np.abs(got - want)) <= 1e-9


@pytest.mark.parametrize("name,body,ctype,status,words", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_is_a_4xx_naming_the_problem(score, name, body, ctype, status, words):
    out = score.run(body.decode())
    assert out["status"] == status and out["error"] == "invalid request"
    text = json.dumps(out["detail"])
    for w in words: assert w in text, (w, text)
    assert "Traceback" not in text


def test_all_problems_of_a_record_are_listed(score):
    out = score.run(json.dumps({"list_price": "x", "bedrooms": -1}))
    locs = {tuple(e["loc"]) for e in out["detail"]}
    assert {(0, "list_price"), (0, "bedrooms"), (0, "sqft"), (0, "listing_date")} <= locs
