"""LightGBM and XGBoost models declared with `estimator=` (mlops_nb.examples.boosters), end to end: the real training
notebook in test and full mode (epoch by epoch), the registered model (skops, the library pinned), loaded by
`load_runtime` on its fast path, answering through a real `mlops-nb serve` process, and batch-scored by `mlops-nb
score`.
Outside CI the file is skipped when a library is missing; CI installs both with [dev]."""
import importlib, json, os, sys
from pathlib import Path
import numpy as np
import pytest
from conftest import cli_json, run_cli


def _library(name:str):
    "The module `name`; outside CI a clean skip when it is not installed."
    try: return importlib.import_module(name)
    except ImportError:
        if os.environ.get("CI"): raise
        pytest.skip(f"{name} is not installed (pip install 'mlops_nb[boosting]'; CI installs it with [dev])",
                    allow_module_level=True)


lightgbm, xgboost = _library("lightgbm"), _library("xgboost")
import pandas as pd
from test_problems import Process, post
from conftest import CLI

# (problem reference, library): every kind, both libraries (nbs/04_train checks LightGBM regression in-process, skops
# included)
PROBLEMS = [("mlops_nb.examples.boosters:BREAST_CANCER_LIGHTGBM", "lightgbm"),
            ("mlops_nb.examples.boosters:WINE_XGBOOST", "xgboost"),
            ("mlops_nb.examples.boosters:DIABETES_XGBOOST", "xgboost")]
PACKAGED = {"breast-cancer-lightgbm", "wine-xgboost"}  # the problems whose image build context is checked
EPOCHS, PER_EPOCH = 3, 25  # full mode's epochs here; the examples' trees (rounds) per epoch


def _trees(est)->int:
    "Boosting rounds of a fitted LightGBM or XGBoost estimator (LightGBM counts a tree per class and round)."
    if isinstance(est, lightgbm.LGBMModel): return est.booster_.current_iteration()
    return est.get_booster().num_boosted_rounds()


@pytest.fixture(scope="module", params=PROBLEMS, ids=[p[0].rsplit(":", 1)[1].lower() for p in PROBLEMS])
def trained(request, state, tmp_path_factory):
    "The problem's table as a CSV, a test-mode and a full-mode run of the training notebook (version 1 registered)."
    from mlops_nb.problem import load_problem
    from mlops_nb.examples.boosters import table
    ref, library = request.param
    problem = load_problem(ref)
    t = tmp_path_factory.mktemp(problem.name)
    df = table(problem)
    df.to_csv(t/"data.csv", index=False)
    env = {**os.environ, "MLOPS_NB_PROBLEM": ref}
    test = cli_json("train", "--mode", "test", "--data", t/"data.csv", "--quiet", env=env, timeout=600)
    full = cli_json("train", "--mode", "full", "--data", t/"data.csv", "--epochs", str(EPOCHS), "--quiet", env=env,
                    timeout=600)
    return dict(problem=problem, ref=ref, library=library, t=t, df=df, env=env, test=test, full=full,
                uri=f"models:/{problem.registered_model}/{full['registered_version']}")


def _records(problem, df, n=40)->list:
    "The first `n` rows' raw inputs (the tables' inputs are all numbers), as a client sends them."
    # full precision
    return [{k: float(v) for k, v in r.items()} for r in df[list(problem.inputs)].head(n).to_dict("records")]


def _outputs(problem, answers:list)->np.ndarray:
    "The API's answers as the model's outputs: values, or per-class probabilities."
    if problem.kind == "regression": return np.array([a["value"] for a in answers])
    return np.array([[a["probabilities"][l] for l in problem.class_labels] for a in answers])


def test_trained_epoch_by_epoch_in_test_and_full_mode(trained):
    from mlops_nb.tracking import client
    p, test, full = trained["problem"], trained["test"], trained["full"]
    assert test["mode"] == "test" and test["registered_version"] is None and test["epochs"] == 1
    assert full["registered_version"] == 1 and full["epochs"] == EPOCHS
    assert set(full["metrics"]) == set(p.metric_names)
    good = {"roc_auc": lambda v: v > 0.95, "f1_macro": lambda v: v > 0.85, "rmse": lambda v: v < 65}[p.primary]
    assert good(full["metrics"][p.primary]), full["metrics"]
    # one validation figure per epoch, and the training loss falls as trees are added to the same booster
    c = client()
    assert [m.step for m in c.get_metric_history(test["run_id"], f"val_{p.primary}")] == [1]
    assert [m.step for m in c.get_metric_history(full["run_id"], f"val_{p.primary}")] == list(range(1, EPOCHS + 1))
    loss = [m.value for m in sorted(c.get_metric_history(full["run_id"], "train_loss"), key=lambda m: m.step)]
    assert loss == sorted(loss, reverse=True) and loss[-1] < loss[0], loss


def test_registered_without_pickle_with_its_library_pinned(trained):
    from mlops_nb.package import image_requirements
    from mlops_nb.serving import load_runtime, model_folder
    from mlops_nb.train import BOOSTER_TYPES
    p, lib = trained["problem"], trained["library"]
    d = model_folder(trained["uri"])
    import yaml
    sk = yaml.safe_load((d/"MLmodel").read_text())["flavors"]["sklearn"]
    assert sk["serialization_format"] == "skops" and not list(d.rglob("*.pkl"))
    assert {t for t in sk["skops_trusted_types"] if t.startswith(lib)} <= set(BOOSTER_TYPES)
    assert any(t.startswith(f"{lib}.") and t.endswith(".Booster") for t in sk["skops_trusted_types"]), sk
    # the distribution installed here ([boosting] on Linux)
    dist = {"lightgbm": "lightgbm", "xgboost": "xgboost-cpu"}[lib]
    reqs = (d/"requirements.txt").read_text().split()
    assert any(r.startswith(f"{dist}==") for r in reqs), reqs
    assert any(r.startswith(f"{dist}==") for r in image_requirements(d)), "the image built from the model installs it"
    rt = load_runtime(trained["uri"])
    assert _trees(rt.pipeline[-1]) == EPOCHS * PER_EPOCH
    assert rt.fast is not None and rt.fast_reason is None and rt.max_abs_diff <= 1e-9
    recs = _records(p, trained["df"], 200)
    assert np.abs(rt.predict(recs) - rt.pipeline_predict(recs)).max() <= 1e-9
    rt.verify(rt.schema)  # takes its own requests and answers its input example with valid outputs


def test_served_by_a_real_server_on_the_fast_path(trained):
    from mlops_nb.serving import load_runtime
    p = trained["problem"]
    srv = Process([CLI, "serve", "--model", trained["uri"], "--port", "{port}"], trained["t"], trained["env"], "/ready",
                  trained["t"]/"serve.log")
    try:
        import urllib.request
        with urllib.request.urlopen(srv.url + "/version") as r: v = json.loads(r.read())
        assert v["fast_path"] is True and v["fast_path_fallback"] is None and v["problem"] == p.name, v
        recs = _records(p, trained["df"])
        st, body = post(srv.url + "/score", recs)
        assert st == 200, body
    finally: srv.stop()
    want = load_runtime(trained["uri"]).pipeline_predict(recs)
    assert np.abs(_outputs(p, body["predictions"]) - want).max() <= 1e-6
    if p.kind != "regression":
        assert [a["label"] for a in body["predictions"]] == [p.class_labels[i] for i in want.argmax(1)]


def test_batch_scored_by_mlops_nb_score(trained):
    from mlops_nb.serving import load_runtime
    p, t = trained["problem"], trained["t"]
    out = t/"scores"
    res = json.loads(run_cli("score", "--model", trained["uri"], "--input", t/"data.csv", "--output", out,
                             "--batch-rows", "128",
                             "--workers", "2", "--json", env=trained["env"], check=True).stdout)
    assert res["rows"] == len(trained["df"]) and res["version"] == "1"
    got = pd.read_parquet(out)
    assert got["source_row"].tolist() == list(range(len(trained["df"])))
    csv = pd.read_csv(t/"data.csv")  # what the scorer read
    want = load_runtime(trained["uri"]).pipeline_predict(_records(p, csv, len(csv)))
    cols = ["value"] if p.kind == "regression" else [f"probability_{l}" for l in p.class_labels]
    assert np.abs(got[cols].to_numpy().reshape(want.shape) - want).max() <= 1e-6


def test_image_context_installs_the_library(trained):
    ("The build context `mlops-nb package` writes: the library in its "
     "requirements (and its wheel), LightGBM's OpenMP link.")
    if trained["problem"].name not in PACKAGED:
        pytest.skip("one build context per library (collecting wheels takes a while)")
    lib, t = trained["library"], trained["t"]
    ctx = cli_json("package", "--model", trained["uri"], "--context-only", t/"ctx", env=trained["env"], timeout=900)
    d = Path(ctx["context"])
    dist = {"lightgbm": "lightgbm", "xgboost": "xgboost-cpu"}[lib]
    assert any(r.startswith(f"{dist}==") for r in (d/"requirements.txt").read_text().split())
    assert list((d/"wheels").glob(f"{dist.replace('-', '_')}-*.whl")), sorted(w.name for w in (d/"wheels").iterdir())
    dockerfile = (d/"Dockerfile").read_text()
    assert ("/opt/venv/lib/libgomp.so.1" in dockerfile) == (lib == "lightgbm")  # XGBoost ships its own OpenMP runtime
    assert ("LD_LIBRARY_PATH=/opt/venv/lib" in dockerfile) == (lib == "lightgbm")


def test_a_missing_library_is_named(trained, monkeypatch):
    "Loading the model where its library is not installed: a `ModelLoadError` naming the package, not a traceback."
    from mlops_nb.serving import ModelLoadError, load_runtime, model_folder
    lib = trained["library"]
    d = model_folder(trained["uri"])
    for name in [m for m in list(sys.modules) if m == lib or m.startswith(f"{lib}.")]:
        monkeypatch.setitem(sys.modules, name, None)  # `import lightgbm...` now fails as if not installed
    with pytest.raises(ModelLoadError, match=f"needs the {lib} package, which is not installed here.*requirements.txt"):
        load_runtime(d)
