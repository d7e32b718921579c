"""A problem's own metric (`Metric`) end to end, as a cost: on breast cancer (binary), a missed positive costs 5 and a
false alarm 1, lower is better, and the cost is the primary metric. Runs log it, the best version is the cheapest, a
threshold on it gates promotion, the challenger is compared on it, and monitoring watches it for decay. The logged
model records only its name and direction: its function comes from the configured problem, or a one-line error."""
import dataclasses, os
import pytest
from conftest import run_cli, cli_json

PROBLEM_MODULE = '''
import dataclasses
import numpy as np
from mlops_nb.problem import Metric
from mlops_nb.examples.sklearn_tables import BREAST_CANCER

def cost(y, pred):
    "Mean cost per row: a missed positive costs 5, a false alarm 1."
    return float(np.mean(5 * ((y == 1) & (pred == 0)) + ((y == 0) & (pred == 1))))

PROBLEM = dataclasses.replace(BREAST_CANCER, name="cancer-cost", thresholds={"cost": 1.0},
                              metrics=[Metric("cost", cost, higher_is_better=False), "roc_auc", "accuracy"])
'''


@pytest.fixture(scope="module")
def project(tmp_path_factory, state, monkeypatch_module):
    "The cost problem configured (MLOPS_NB_PROBLEM, importable here and in subprocesses), its table as a CSV."
    from mlops_nb.examples.sklearn_tables import table
    d = tmp_path_factory.mktemp("costproj")
    (d/"cost_problem.py").write_text(PROBLEM_MODULE)
    monkeypatch_module.syspath_prepend(str(d))
    monkeypatch_module.setenv("PYTHONPATH", os.pathsep.join([str(d), os.environ.get("PYTHONPATH", "")]))
    monkeypatch_module.setenv("MLOPS_NB_PROBLEM", "cost_problem:PROBLEM")
    table("breast-cancer").to_csv(d/"cancer.csv", index=False)
    from mlops_nb.problem import load_problem
    return dict(dir=d, csv=d/"cancer.csv", problem=load_problem())


@pytest.fixture(scope="module")
def trained(project):
    "A full run through the real training notebook: version 1."
    return cli_json("train", "--mode", "full", "--data", project["csv"], "--epochs", "2", "--quiet", timeout=600)


def _version(metrics:dict, pipeline, problem, rows):
    "Register `pipeline` from a full-mode run that logged `metrics`; return its version."
    import mlflow
    from mlops_nb.params import make_params
    from mlops_nb.tracking import create_run, register_model
    from mlops_nb.train import log_model
    rid = create_run(make_params(mode="full"), "nbs/train.ipynb")
    with mlflow.start_run(run_id=rid):
        mlflow.log_metrics(metrics)
        info = log_model(problem, pipeline, rows)
    return register_model(rid, info.model_uri)


def test_runs_log_it_and_the_cheapest_version_is_best(project, trained):
    import pandas as pd
    from mlops_nb.serving import load_runtime
    from mlops_nb.tracking import best_version, client
    p = project["problem"]
    assert trained["registered_version"] == 1 and set(trained["metrics"]) == {"cost", "roc_auc", "accuracy"}
    assert 0 <= trained["metrics"]["cost"] <= 5
    logged = client().get_run(trained["run_id"]).data.metrics
    assert logged["cost"] == pytest.approx(trained["metrics"]["cost"]) and "val_cost" in logged  # per epoch too
    rt = load_runtime("models:/cancer-cost/1")
    assert rt.problem.directions == {"cost": False, "roc_auc": True, "accuracy": True} and rt.problem.primary == "cost"
    assert [m.fn for m in rt.problem.metrics if getattr(m, "name", "") == "cost"] == [None]  # the metric, not its code
    rows = pd.read_csv(project["csv"]).head(5)
    # versions evaluated on the same data: the cheapest is not the one with the best ROC AUC
    dear = _version({"cost": 0.6, "roc_auc": 0.99, "accuracy": 0.9}, rt.pipeline, p, rows)
    cheap = _version({"cost": 0.2, "roc_auc": 0.90, "accuracy": 0.9}, rt.pipeline, p, rows)
    sel = best_version()
    assert (sel.metric, sel.version.version) == ("cost", cheap) and {v.version for v in sel.compared} == {dear, cheap}
    assert cli_json("models", "best")["version"] == cheap
    assert best_version("roc_auc").version.version == dear  # a built-in metric keeps its own direction


def test_a_threshold_on_it_gates_promotion(project, trained):
    from mlops_nb.serving import load_runtime
    import pandas as pd
    rt = load_runtime("models:/cancer-cost/1")
    costly = _version({"cost": 2.5, "roc_auc": 0.999, "accuracy": 0.99}, rt.pipeline, project["problem"],
                      pd.read_csv(project["csv"]).head(5))
    gates = {v["version"]: v["gates"] for v in cli_json("models", "list")}
    assert gates[1] == "passed" and gates[costly] == "failed: cost 2.5000 > 1"
    p = run_cli("models", "promote", costly)
    assert p.returncode == 2 and "fails its validation gates (cost 2.5000 > 1)" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_the_challenger_is_compared_on_it(project, trained):
    "A constant-ish model (the prior) costs more than the trained one: it never wins, and loses its place to it."
    from sklearn.dummy import DummyClassifier
    from mlops_nb.retrain import challenge
    from mlops_nb.train import build_model, train_epochs, split_rows, evaluate
    from mlops_nb.tracking import promote, version_for_alias
    from mlops_nb.examples.sklearn_tables import table
    p, df = project["problem"], table("breast-cancer")
    prior = dataclasses.replace(p, estimator=lambda seed: DummyClassifier(strategy="prior"))
    tr, ev = split_rows(df, prior, seed=0)
    m = build_model(prior, seed=0)
    train_epochs(prior, m, tr, ev, epochs=1)
    dummy = _version(evaluate(p, m, ev), m, p, df.head(5))
    promote(1)
    d = challenge(dummy, df)
    assert d["metric"] == "cost" and d["promoted"] is False and version_for_alias("champion") == 1
    assert d["challenger_metrics"]["cost"] > d["champion_metrics"]["cost"] and d["reason"].startswith("kept v1: "
                                                                                                      "challenger cost")
    promote(dummy)
    d = challenge(1, df)
    assert d["promoted"] is True and version_for_alias("champion") == 1 and d["reason"].startswith("promoted: cost")


def test_monitoring_watches_it_for_decay(project, trained):
    import pandas as pd
    d = project["dir"]
    df = pd.read_csv(project["csv"])
    df.assign(target=1 - df["target"]).to_csv(d/"flipped.csv", index=False)  # the world turned: every label is wrong
    out = cli_json("monitor", "--reference", project["csv"], "--current", d/"flipped.csv", "--model",
                   "models:/cancer-cost/1")
    assert out["decay"]["cost"]["drop"] > 1 and out["decay"]["cost"]["current"] > out["decay"]["cost"]["reference"]
    assert out["retrain"] is True and any(r.startswith("model decay: cost") for r in out["reasons"])
    # where the problem is not configured, the cost cannot be computed: one line says why and how
    env = {k: v for k, v in os.environ.items() if k != "MLOPS_NB_PROBLEM"}
    p = run_cli("monitor", "--reference", project["csv"], "--current", d/"flipped.csv", "--model",
                "models:/cancer-cost/1",
                env=env, cwd=d)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "metric(s) cost of problem 'cancer-cost' are code of its module" in errors[0]
    assert "no problem is declared here" in errors[0]
