"""Validation gates: absolute thresholds per metric (the problem's, or a profile's `gates:`). A version that fails one
is
never promoted (not by `models promote` unless --force, which is recorded; not by the challenger step), and the
verdict is recorded on the version."""
from conftest import run_cli, cli_json


def _version(roc_auc, model_dir):
    "Register the example's model folder as a full-mode run that logged `roc_auc`; return its version."
    import mlflow
    from mlops_nb.examples.ottawa import PROBLEM, generate_listings
    from mlops_nb.params import make_params
    from mlops_nb.serving import load_runtime
    from mlops_nb.tracking import create_run, register_model
    from mlops_nb.train import log_model
    rid = create_run(make_params(mode="full"), "nbs/train.ipynb")
    with mlflow.start_run(run_id=rid):
        mlflow.log_metrics({"roc_auc": roc_auc, "accuracy": 0.7, "log_loss": 0.5})
        info = log_model(PROBLEM, load_runtime(model_dir).pipeline, generate_listings(2021, 5, seed=1))
    return register_model(rid, info.model_uri)


def test_a_version_that_fails_a_gate_is_not_promoted(model_dir, state):
    good, bad = _version(0.9, model_dir), _version(0.6, model_dir)  # the example's gate: roc_auc >= 0.7
    listed = {v["version"]: v["gates"] for v in cli_json("models", "list")}
    assert listed[good] == "passed" and listed[bad] == "failed: roc_auc 0.6000 < 0.7"
    assert cli_json("models", "promote", good)["previous"] is None
    p = run_cli("models", "promote", bad)
    assert (
        p.returncode == 2
        and "fails its validation gates (roc_auc 0.6000 < 0.7)" in p.stderr
        and len(p.stderr.strip().splitlines()) == 1
    )
    assert {v["version"]: v["aliases"] for v in cli_json("models", "list")}[good] == ["champion"]
    out = cli_json("models", "promote", bad, "--force")
    assert out["forced"] is True and out["previous"] == good
    from mlops_nb.tracking import client
    assert "despite: roc_auc 0.6000 < 0.7" in client().get_model_version("ottawa-housing-classifier",
                                                                         str(bad)).tags["mlops_nb.forced"]


def test_the_challenger_step_checks_the_gates_first(model_dir, state):
    "A challenger that fails a gate is not promoted even when the champion is worse still; the reason is on it."
    from mlops_nb.examples.ottawa import generate_listings
    from mlops_nb.retrain import challenge
    from mlops_nb.tracking import promote, version_for_alias, client
    champ, weak = _version(0.95, model_dir), _version(0.65, model_dir)
    promote(champ)
    d = challenge(weak, generate_listings(2021, 1000, seed=4))
    assert d["promoted"] is False and version_for_alias("champion") == champ
    assert "fails its validation gates (roc_auc 0.6500 < 0.7)" in d["reason"]
    assert client().get_model_version("ottawa-housing-classifier", str(weak)).tags["mlops_nb.challenge"] == d["reason"]


def test_a_challenger_never_checked_for_serving_is_kept_out_with_its_reason(model_dir, state):
    """A version registered before the servable check existed (or by another tool) loses the challenge with a recorded
    reason, as `models promote` refuses it, instead of the challenger step failing midway."""
    from mlops_nb.examples.ottawa import generate_listings
    from mlops_nb.retrain import challenge
    from mlops_nb.tracking import promote, version_for_alias, client, SERVABLE_TAG
    champ, old = _version(0.9, model_dir), _version(0.99, model_dir)
    promote(champ)
    client().delete_model_version_tag("ottawa-housing-classifier", str(old), SERVABLE_TAG)
    d = challenge(old, generate_listings(2021, 1000, seed=4))
    assert d["promoted"] is False and version_for_alias("champion") == champ
    assert "no servable check" in d["reason"] and d["reason"].startswith(f"kept v{champ}")
    assert client().get_model_version("ottawa-housing-classifier", str(old)).tags["mlops_nb.challenge"] == d["reason"]
