"""Drift and decay through the public API of `mlops_nb.drift`: the verdicts, the JSON contract, determinism, errors."""
import json, math, subprocess, sys
from types import SimpleNamespace
import numpy as np
import pytest
from mlops_nb.core import DataError, MlopsNbError, ParamError
from mlops_nb.drift import DriftThresholds, drift_report as _drift_report, psi_numeric, psi_categorical, ks_test
from mlops_nb.examples.ottawa import PROBLEM, generate_listings, TARGET, NUMERIC

drift_report = lambda *a, **kw: _drift_report(*a, **{"problem": PROBLEM, **kw})  # the Ottawa example's features
WATCHED = NUMERIC + ["neighbourhood", "property_type"]


@pytest.fixture(scope="module")
def frames():
    return {"a18": generate_listings(2018, 4000, seed=1), "b18": generate_listings(2018, 4000, seed=2),
            "c23": generate_listings(2023, 4000, seed=1)}


@pytest.fixture(scope="module")
def model18(frames):
    from mlops_nb.train import build_model, train_epochs, split_rows
    tr, ev = split_rows(frames["a18"], PROBLEM, seed=0)
    m = build_model(PROBLEM, seed=0)
    h = train_epochs(PROBLEM, m, tr, ev, epochs=2)
    return m, ev, {k[4:]: v for k, v in h[-1].items() if k.startswith("val_")}


def test_same_year_no_drift(frames):
    r = drift_report(frames["a18"], frames["b18"])
    assert (r.drift, r.retrain, r.drifted, r.reasons) == (False, False, [], [])


def test_five_years_drift(frames):
    r = drift_report(frames["a18"], frames["c23"])
    assert r.drift and r.retrain and {"list_price", "days_on_market"} <= set(r.drifted)
    assert "bedrooms" not in r.drifted and any("list_price" in x for x in r.reasons)


def test_json_contract_finite_and_deterministic(frames, model18):
    m, ev, logged = model18
    # what load_runtime returns, as far as drift_report cares
    runtime = SimpleNamespace(pipeline=m, info=None, problem=PROBLEM)
    d1 = _drift_report(ev, frames["c23"], model=runtime, reference_metrics=logged).as_dict()
    d2 = json.loads(json.dumps(drift_report(ev, frames["c23"], model=m, reference_metrics=logged).as_dict()))
    assert d1 == d2  # deterministic, and JSON round-trips unchanged
    assert {"drift", "retrain", "reasons", "features", "decay", "rows"} <= set(d1)
    assert d1["rows"] == {"reference": len(ev), "current": 4000}
    assert set(d1["features"]) == set(WATCHED)
    for name, f in d1["features"].items():
        keys = {"psi", "drifted"} | ({"ks_stat", "ks_pvalue"} if name in NUMERIC else set())
        assert keys <= set(f) and all(math.isfinite(f[k]) for k in keys - {"drifted"})
    assert set(d1["decay"]) == {"accuracy", "roc_auc", "log_loss"}
    assert all(math.isfinite(v) for d in d1["decay"].values() for v in d.values())


def test_no_labels_no_decay(frames, model18):
    cur = frames["c23"].drop(columns=["sold_price", TARGET])
    assert drift_report(frames["a18"], cur, model=model18[0]).as_dict()["decay"] is None


def test_scores():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 300_000)
    assert psi_numeric(a, a) == 0 and psi_numeric(a, a + 1) > 0.5
    assert ks_test(a, a + 0.03) == ks_test(a, a + 0.03)  # subsampled above 200k, the same rows every time
    assert psi_categorical(["a"]*80 + ["b"]*20, ["a"]*20 + ["b"]*80) > 1


def test_thresholds(frames):
    assert not drift_report(frames["a18"], frames["c23"], thresholds={"psi": 100, "ks_stat": 1}).drift
    assert DriftThresholds.from_dict({"metric_drop": "0.1"}).metric_drop == 0.1
    with pytest.raises(ParamError, match="unknown drift threshold"): DriftThresholds.from_dict({"nope": 1})


def test_model_age(frames):
    from datetime import datetime, timezone
    r = drift_report(frames["a18"], frames["b18"], model_created=0, now=datetime(1970, 4, 11, tzinfo=timezone.utc))
    assert r.retrain and r.reasons == ["model age: 100 days > 90"]


@pytest.mark.parametrize("cur,msg", [(lambda d: d.drop(columns=["neighbourhood"]), "missing column(s) 'neighbourhood'"),
                                     (lambda d: d.iloc[:0], "current data has no rows"),
                                     (lambda d: d.assign(sqft=np.nan), "column 'sqft' has no numeric values")])
def test_bad_input(frames, cur, msg):
    with pytest.raises(DataError, match=msg.replace("(", r"\(").replace(")", r"\)")) as e:
        drift_report(frames["a18"], cur(frames["c23"]))
    assert isinstance(e.value, MlopsNbError) and "\n" not in str(e.value)


def test_import_stays_light():
    code = "import sys, mlops_nb.drift; print(sorted(m for m in ('pandas', 'scipy', 'sklearn') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
