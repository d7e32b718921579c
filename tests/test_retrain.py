"""The closed loop: challenger vs champion on the same recent data, and the multi-year simulation end to end."""
import json, re
from pathlib import Path
import pytest
from conftest import run_cli, cli_json


def test_challenger_that_is_worse_keeps_the_champion(model_dir, model_dir_v2, state):
    "A model trained on 2021 does not replace a 2023 champion on 2023 data; the reason is recorded on its version."
    from test_server import _register
    from mlops_nb.data import generate_listings
    from mlops_nb.retrain import challenge
    from mlops_nb.tracking import promote, version_for_alias, client
    old, new = _register(model_dir, 1), _register(model_dir_v2, 2)  # trained on 2021 and on 2023
    promote(new, "champion")
    recent = generate_listings(2023, 2000, seed=77)
    d = challenge(old, recent)
    assert d["promoted"] is False and version_for_alias("champion") == new
    assert d["challenger_metrics"]["roc_auc"] < d["champion_metrics"]["roc_auc"] and d["reason"].startswith(f"kept v{new}")
    tag = client().get_model_version("ottawa-housing-classifier", str(old)).tags["mlops_nb.challenge"]
    assert tag == d["reason"] and d["eval_fingerprint"] in tag
    promote(old, "champion")
    d = challenge(new, recent)  # and the other way round, it wins
    assert d["promoted"] is True and version_for_alias("champion") == new and d["reason"].startswith("promoted: roc_auc")


def test_simulation_end_to_end(tmp_path, state):
    "Three market years through the real runner, server and client: a report, no failed request, retrained versions served."
    out = cli_json("simulate", "--first-year", "2020", "--years", "3", "--rows", "3000", "--epochs", "2", "--out", tmp_path/"sim", timeout=900)
    assert out["requests_failed"] == 0 and out["requests_ok"] > 50
    years = out["years"]
    assert [y["year"] for y in years] == [2020, 2021, 2022]
    assert all(0.5 < y["first_model"]["accuracy"] <= 1 and 0.5 < y["champion"]["accuracy"] <= 1 for y in years)
    assert years[0]["first_model"] == years[0]["champion"]  # year one: the same model
    later = years[1:]
    assert all(y["decision"] for y in later) and any(y["retrained"] for y in later)
    promoted = [y for y in later if y["decision"].startswith("promoted")]
    assert len(out["versions_served"]) == 1 + len(promoted)  # every promoted version answered the client
    page = Path(out["report"]).read_text()
    assert "<svg" in page and page.count("<polyline") == 2 and f"{out['requests_ok']} requests answered, 0 failed" in page
    assert json.loads((tmp_path/"sim"/"report.json").read_text())["requests_failed"] == 0
