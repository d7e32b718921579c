"""The closed loop: challenger vs champion on the same recent data, and the multi-year simulation end to end."""
import json
from pathlib import Path
from conftest import run_cli, cli_json


def test_challenger_that_is_worse_keeps_the_champion(model_dir, model_dir_v2, state):
    "A model trained on 2021 does not replace a 2023 champion on 2023 data; the reason is recorded on its version."
    from test_server import _register
    from mlops_nb.examples.ottawa import generate_listings
    from mlops_nb.retrain import challenge
    from mlops_nb.tracking import promote, version_for_alias, client
    old, new = _register(model_dir, 1), _register(model_dir_v2, 2)  # trained on 2021 and on 2023
    promote(new, "champion")
    recent = generate_listings(2023, 2000, seed=77)
    d = challenge(old, recent)
    assert d["promoted"] is False and version_for_alias("champion") == new
    assert d["challenger_metrics"]["roc_auc"] < d["champion_metrics"]["roc_auc"] and d["reason"].startswith("kept v"
                                                                                                            f"{new}")
    tag = client().get_model_version("ottawa-housing-classifier", str(old)).tags["mlops_nb.challenge"]
    assert tag == d["reason"] and d["eval_fingerprint"] in tag
    promote(old, "champion")
    d = challenge(new, recent)  # and the other way round, it wins
    assert (
        d["promoted"] is True and version_for_alias("champion") == new and d["reason"].startswith("promoted: roc_auc")
    )


def test_simulation_end_to_end(tmp_path, state):
    ("Three market years through the real runner, server and client: a "
     "report, no failed request, retrained versions served.")
    from mlops_nb.tracking import list_versions
    before = [(v.version, v.aliases) for v in list_versions()]
    out = cli_json("simulate", "--first-period", "2020", "--periods", "3", "--rows", "3000", "--epochs", "2", "--out",
                   tmp_path/"sim", timeout=900)
    assert out["requests_failed"] == 0 and out["requests_ok"] > 50 and out["metric"] == "accuracy"
    periods = out["periods"]
    assert [y["period"] for y in periods] == [2020, 2021, 2022]
    assert all(0.5 < y["first_model"]["accuracy"] <= 1 and 0.5 < y["champion"]["accuracy"] <= 1 for y in periods)
    assert periods[0]["first_model"] == periods[0]["champion"]  # period one: the same model
    later = periods[1:]
    assert all(y["decision"] for y in later) and any(y["retrained"] for y in later)
    promoted = [y for y in later if y["decision"].startswith("promoted")]
    assert len(out["versions_served"]) == 1 + len(promoted)  # every promoted version answered the client
    page = Path(out["report"]).read_text()
    assert (
        "<svg" in page and page.count("<polyline") == 2 and f"{out['requests_ok']} requests answered, 0 failed" in page
    )
    for y in later:  # each later period's monitoring report, linked from the simulation's
        monitor = (tmp_path/"sim"/y["monitor_report"]).read_text()
        assert f'<a href="{y["monitor_report"]}">' in page and "<h1>Monitoring report</h1>" in monitor
        assert all(f'<h3 class="distribution">{n} ' in monitor for n in y["drifted"])
    assert json.loads((tmp_path/"sim"/"report.json").read_text())["requests_failed"] == 0
    # finding 10 of the audit: it worked in a store of its own and left the configured registry alone
    assert [(v.version, v.aliases) for v in list_versions()] == before and (tmp_path/"sim"/"state"/"mlflow.db").exists()


def test_simulate_needs_a_generator_and_valid_sizes(tmp_path, state):
    p = run_cli("simulate", "--periods", "1")
    assert p.returncode == 2 and "--periods 1 is not allowed" in p.stderr
    p = run_cli("simulate", "--rows", "10", "--out", tmp_path/"x")
    assert p.returncode == 2 and "rows=10 is not allowed" in p.stderr and "Traceback" not in p.stderr
