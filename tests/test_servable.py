"""Issue 16: a team's own model, safely. A team declares its own estimator (here StandardScaler + SimpleImputer +
LogisticRegression, trained on rows with nulls): the full run through the real notebook checks, in a fresh process,
that the logged model loads and answers as `mlops-nb serve` loads it before it registers it; the version is
promotable and served. A model holding a class nothing trusts fails the run before anything is registered, naming
the exact line to add to the problem; a version without the servable verdict is never promoted; a model worse than
predicting the mean is registered but not promoted, with both figures."""
import json, os, sys
import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

TEAM_MODULE = '''
import dataclasses
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from mlops_nb.data import ColumnSpec
from mlops_nb.problem import Problem

INPUTS = {"a": ColumnSpec("float", nullable=True), "b": ColumnSpec("float", nullable=True), "c": ColumnSpec("float")}

class Clip(TransformerMixin, BaseEstimator):
    "A team's own step: a class no list trusts until the team says so."
    def fit(self, X, y=None): return self
    def transform(self, X): return np.clip(X, -3, 3)

IMPUTER = Problem(name="team-imputer", inputs=INPUTS, target="y", kind="binary", classes=[0, 1],
                  estimator=lambda seed: make_pipeline(StandardScaler(), SimpleImputer(), LogisticRegression(random_state=seed)))
CUSTOM = Problem(name="team-custom", inputs=INPUTS, target="y", kind="binary", classes=[0, 1],
                 estimator=lambda seed: make_pipeline(SimpleImputer(), Clip(), LogisticRegression(random_state=seed)))
CUSTOM_TRUSTED = dataclasses.replace(CUSTOM, trusted_types=("team_problems.Clip",))
NOISE = Problem(name="team-noise", inputs=INPUTS, target="y", kind="regression", primary_metric="r2",
                estimator=lambda seed: make_pipeline(SimpleImputer(), KNeighborsRegressor(n_neighbors=1)))
'''  # noqa: E501


@pytest.fixture(scope="module")
def team(state, tmp_path_factory, monkeypatch_module):
    "A team's problem module (importable here and in every child process) and its data: 300 rows, 10% nulls."
    t = tmp_path_factory.mktemp("team")
    (t/"team_problems.py").write_text(TEAM_MODULE)
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300), "c": rng.normal(size=300)})
    signal = df.a + df.b
    df.loc[df.index % 10 == 3, "a"] = np.nan
    df.loc[df.index % 10 == 7, "b"] = np.nan
    df.assign(y=(signal > 0).astype(int)).to_csv(t/"labels.csv", index=False)
    df.assign(y=rng.normal(size=300)).to_csv(t/"noise.csv", index=False)  # a target nothing predicts
    sys.path.insert(0, str(t))
    # the servable checks of this module in a Python started afresh, as users run them (not the suite's forks)
    monkeypatch_module.delenv("MLOPS_NB_SERVABLE_PYTHON", raising=False)
    monkeypatch_module.setenv("PYTHONPATH", os.pathsep.join([str(t), *filter(None, [os.environ.get("PYTHONPATH")])]))
    yield t
    sys.path.remove(str(t))


def _env(attr):
    return {**os.environ, "MLOPS_NB_PROBLEM": f"team_problems:{attr}"}


def _train(attr, data):
    "A full-mode run of the real training notebook for problem `attr`; the CompletedProcess."
    return run_cli("train", "--mode", "full", "--data", data, "--quiet", "--json", env=_env(attr), timeout=900)


@pytest.fixture(scope="module")
def imputer_run(team):
    p = _train("IMPUTER", team/"labels.csv")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_the_imputer_pipeline_registers_is_promoted_and_served(imputer_run, monkeypatch):
    from mlops_nb.serving import load_runtime
    from mlops_nb.tracking import client
    v = imputer_run["registered_version"]
    assert v == 1 and imputer_run["servable"].startswith(
        "3 example and 60 evaluation rows answered as trained"
    ), imputer_run
    assert imputer_run["baseline"]["baseline_roc_auc"] == pytest.approx(0.5)
    assert imputer_run["metrics"]["roc_auc"] > 0.8
    tags = client().get_model_version("team-imputer", "1").tags
    assert tags["mlops_nb.servable"] == "passed" and tags["mlops_nb.gates"] == "passed", tags
    out = json.loads(run_cli("models", "promote", "1", "--json", env=_env("IMPUTER"), check=True).stdout)
    assert out["previous"] is None
    monkeypatch.setenv("MLOPS_NB_PROBLEM", "team_problems:IMPUTER")
    rt = load_runtime("models:/team-imputer@champion")
    assert [type(s).__name__ for _, s in rt.pipeline[-1].steps] == ["StandardScaler", "SimpleImputer",
                                                                    "LogisticRegression"]
    got = rt.predict([{"a": None, "b": 1.5, "c": 0.0}, {"a": -2.0, "b": None, "c": 0.0}])
    assert got.shape == (2, 2) and got[0, 1] > 0.5 > got[1, 1]


def test_a_version_without_the_servable_verdict_is_never_promoted(imputer_run):
    from mlops_nb.tracking import client
    client().delete_model_version_tag("team-imputer", "1", "mlops_nb.servable")  # as registered by an older mlops_nb
    try:
        for force in ([], ["--force"]):
            p = run_cli("models", "promote", "1", "--alias", "staging", *force, env=_env("IMPUTER"))
            assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
            assert "never shown to load and answer as `mlops-nb serve` loads it" in p.stderr
            assert "retrain with this mlops_nb (`mlops-nb train --mode full`)" in p.stderr
    finally: client().set_model_version_tag("team-imputer", "1", "mlops_nb.servable", "passed")


def test_a_model_that_cannot_be_served_fails_the_run_and_registers_nothing(team):
    from mlops_nb.tracking import client, experiment_id, list_versions
    p = _train("CUSTOM", team/"labels.csv")
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    assert "the model cannot be served, so it cannot be registered" in p.stderr
    assert "does not trust: team_problems.Clip" in p.stderr
    assert f'add trusted_types=("team_problems.Clip",) to Problem(...) in {team/"team_problems.py"}' in p.stderr
    assert list_versions("team-custom") == []
    runs = client().search_runs([experiment_id("team-custom")])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_the_fix_the_error_names_works(team):
    "The same model, with the class declared in the problem's trusted_types: the fresh-process check passes."
    from mlops_nb.core import RegistrationRefused
    from mlops_nb.tracking import check_servable
    from mlops_nb.train import build_model, save_model, servable_rows, split_rows
    import team_problems
    df = team_problems.CUSTOM.load(team/"labels.csv")
    tr, ev = split_rows(df, team_problems.CUSTOM, seed=0)
    model = build_model(team_problems.CUSTOM).fit(tr, tr.y)
    d = save_model(team_problems.CUSTOM, model, ev, team/"custom-model")
    rows, expected = servable_rows(team_problems.CUSTOM, model, ev)
    os.environ["MLOPS_NB_PROBLEM"] = "team_problems:CUSTOM"
    try:
        with pytest.raises(RegistrationRefused, match="add trusted_types="): check_servable(str(d), rows, expected)
        os.environ["MLOPS_NB_PROBLEM"] = "team_problems:CUSTOM_TRUSTED"
        assert check_servable(str(d), rows, expected)["rows"] == len(ev)
    finally: os.environ.pop("MLOPS_NB_PROBLEM")


def test_a_model_worse_than_the_mean_is_registered_but_not_promoted(team):
    from mlops_nb.tracking import client
    p = _train("NOISE", team/"noise.csv")
    assert p.returncode == 0, p.stderr
    run = json.loads(p.stdout)
    r2, base = run["metrics"]["r2"], run["baseline"]["baseline_r2"]
    assert r2 < base <= 0, run
    v = run["registered_version"]
    assert v == 1
    import nbformat
    printed = "".join(o.get("text", "") for c in nbformat.read(run["output_notebook"], as_version=4).cells
                      for o in c.get("outputs", []))
    assert f"r2: model {r2:.4f}, baseline {base:.4f}: not better than the baseline" in printed
    verdict = f"not better than the baseline: r2 {r2:.4f} <= baseline {base:.4f}"
    assert client().get_model_version("team-noise", "1").tags["mlops_nb.gates"] == f"failed: {verdict}"
    from mlops_nb.serving import load_runtime  # its input example holds a null, sent as a client sends it
    assert any(v is None for r in load_runtime("models:/team-noise/1").example() for v in r.values())
    refused = run_cli("models", "promote", "1", env=_env("NOISE"))
    assert refused.returncode == 2 and f"fails its validation gates ({verdict})" in refused.stderr, refused.stderr
    forced = json.loads(run_cli("models", "promote", "1", "--force", "--json", env=_env("NOISE"), check=True).stdout)
    assert forced["forced"] is True
    assert verdict in client().get_model_version("team-noise", "1").tags["mlops_nb.forced"]


def test_the_trust_list_holds_classes_only():
    "Never a function (eval, an arbitrary callable): only classes, whose construction skops controls."
    import importlib, inspect
    from mlops_nb.train import TRUSTED_TYPES
    for t in TRUSTED_TYPES:
        mod, _, name = t.rpartition(".")
        assert inspect.isclass(getattr(importlib.import_module(mod), name)), t
