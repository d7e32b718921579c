"""Batch scoring with the local engine (`mlops-nb score`): the numbers /score answers, in input order, bad input named
in one line, an interrupted run leaving no output, a problem without keys, and the batch notebook under papermill
(LocalRunner) and as a Databricks job (DatabricksRunner against the fake workspace)."""
import json, os, signal, subprocess, time
import numpy as np, pandas as pd
import pytest
from conftest import CLI, ROOT, run_cli, save_model
from mlops_nb.batch import BatchParams, make_batch_params, score_batch
from mlops_nb.examples.ottawa import generate_listings
from mlops_nb.serving import load_runtime


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    "Listings of a later year in two files: Parquet with several row groups, and CSV."
    d = tmp_path_factory.mktemp("batch-in")
    df = generate_listings(2022, 3000, seed=7)
    df.iloc[:2000].to_parquet(d/"a.parquet", row_group_size=600)
    df.iloc[2000:].to_csv(d/"b.csv", index=False)
    return d, df


def _post(url, records):
    import urllib.request
    req = urllib.request.Request(url + "/score", data=json.dumps(records).encode(),
                                 headers={"content-type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=60).read())["predictions"]


def test_cli_score_gives_the_numbers_of_score(model_dir, inputs, tmp_path):
    from mlops_nb.server import free_port, start_server
    d, df = inputs
    out = tmp_path/"scores"
    p = run_cli("score", "--model", model_dir, "--input", d/"*.*", "--output", out, "--batch-rows", "256", "--json",
                check=True)
    res = json.loads(p.stdout)
    assert (res["rows"], res["files"], res["engine"], res["model"], res["version"], res["fast_path"]) == \
        (3000, 2, "local", "ottawa-housing-classifier", "1", "columnar")
    got = pd.read_parquet(out)
    assert got["listing_id"].tolist() == df["listing_id"].tolist()  # every row once, in input order
    assert list(got.columns) == ["listing_id", "label", "probability", "probability_at_or_below_asking",
                                 "probability_above_asking", "model", "version"]
    rt = load_runtime(model_dir)
    raw = df[list(rt.schema)].assign(listing_date=df["listing_date"].dt.strftime("%Y-%m-%d"))
    assert np.abs(got["probability_above_asking"].to_numpy() - rt.predict(raw.to_dict("records"))[:, 1]).max() < 1e-9
    proc, url = start_server(model_dir, free_port())
    try:
        rows = list(range(0, 3000, 7))[:800]  # every 7th row, from both files, in one request
        want = _post(url, [{k: (v.item() if hasattr(v, "item") else v) for k, v in raw.iloc[i].items()} for i in rows])
    finally:
        proc.kill()
        proc.wait()
    sub = got.iloc[rows]
    assert sub["label"].tolist() == [a["label"] for a in want]
    assert np.abs(sub["probability"].to_numpy() - [a["probability"] for a in want]).max() < 1e-6
    assert np.abs(sub["probability_at_or_below_asking"].to_numpy() - [a["probabilities"]["at_or_below_asking"]
                                                                      for a in want]).max() < 1e-6
    assert {(a["model"], a["version"]) for a in want} == set(map(tuple, sub[["model", "version"]].to_numpy().tolist()))
    meta = json.loads((out/"_mlops_nb_batch.json").read_text())
    assert meta["rows"] == 3000 and meta["version"] == "1" and (out/"_SUCCESS").exists()
    p = run_cli("score", "--model", model_dir, "--input", d/"a.parquet", "--output", out)
    assert p.returncode == 2 and "already exists; pass --overwrite" in p.stderr


def test_bad_input_is_one_line_naming_file_column_and_row(model_dir, inputs, tmp_path):
    d, df = inputs
    bad = df.head(300).copy()
    bad["sqft"] = bad["sqft"].astype(object)
    bad.loc[250, "sqft"] = "big"
    bad.to_csv(tmp_path/"bad.csv", index=False)
    p = run_cli("score", "--model", model_dir, "--input", tmp_path/"bad.csv", "--output", tmp_path/"out",
                "--batch-rows", "100")
    assert p.returncode == 2 and p.stderr.strip().splitlines()[1:] == [
        f"error: {tmp_path/'bad.csv'}: column 'sqft' must hold int values but "
        "row 251 (line 252) has 'big'; fix or remove that row"], p.stderr
    df.head(10).drop(columns=["neighbourhood"]).to_parquet(tmp_path/"nocol.parquet")
    p = run_cli("score", "--model", model_dir, "--input", tmp_path/"nocol.parquet", "--output", tmp_path/"out")
    assert p.returncode == 2 and "nocol.parquet: missing required column(s) 'neighbourhood'" in p.stderr
    assert not [f for f in tmp_path.iterdir() if "out" in f.name]  # no output, no leftover folder


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_run_never_leaves_an_output_that_looks_complete(model_dir, tmp_path, sig):
    df = generate_listings(2022, 60_000, seed=1)
    df.to_parquet(tmp_path/"big.parquet", row_group_size=2000)
    out = tmp_path/"scores"
    p = subprocess.Popen([CLI, "score", "--model", str(model_dir), "--input", str(tmp_path/"big.parquet"), "--output",
                          str(out),
                          "--batch-rows", "500"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(tmp_path.glob(".scores.tmp-*/part-*")): time.sleep(0.2)
        assert list(tmp_path.glob(".scores.tmp-*/part-*")), "no part file was written"
        os.kill(p.pid, sig)
        rc = p.wait(60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert not out.exists()
    if sig == signal.SIGINT: assert rc == 130 and not list(tmp_path.glob(".scores*")), p.stderr.read()
    else: assert rc == -9 and not (next(tmp_path.glob(".scores.tmp-*"))/"_SUCCESS").exists()  # only the hidden folder


def test_a_problem_without_keys_gets_file_and_row(tmp_path):
    from mlops_nb.examples.sklearn_tables import DIABETES, table
    t = table(DIABETES)
    model = save_model(tmp_path/"model", problem=DIABETES, data=t, epochs=1)
    assert model is not None
    t.iloc[:300].to_parquet(tmp_path/"a.parquet", row_group_size=100)
    t.iloc[300:].to_csv(tmp_path/"b.csv", index=False)
    env = {**os.environ, "MLOPS_NB_PROBLEM": "mlops_nb.examples.sklearn_tables:DIABETES"}
    os.environ.update(env)
    try: res = score_batch(tmp_path/"model", tmp_path/"*.*", tmp_path/"scores", batch_rows=64, workers=2)
    finally: os.environ.pop("MLOPS_NB_PROBLEM")
    got = pd.read_parquet(tmp_path/"scores")
    assert res.rows == len(t) and list(got.columns) == ["source_file", "source_row", "value", "model", "version"]
    assert got["source_row"].tolist() == list(range(300)) + list(range(len(t) - 300))
    assert set(got["source_file"]) == {str(tmp_path/"a.parquet"), str(tmp_path/"b.csv")}
    rt = load_runtime(tmp_path/"model")
    assert np.abs(got["value"].to_numpy() - rt.predict(t[list(rt.schema)].to_dict("records"))).max() < 1e-9


def test_batch_notebook_runs_under_papermill_with_the_local_runner(state, model_dir, inputs, tmp_path):
    from mlops_nb.runner import LocalRunner
    from mlops_nb.tracking import client
    d, df = inputs
    params = make_batch_params(model=str(model_dir), input_path=str(d/"a.parquet"), output_path=str(tmp_path/"scores"),
                               batch_rows=500)
    res = LocalRunner(ROOT/"nbs"/"batch.ipynb", progress=False).submit(params).wait(600)
    assert res.mode == "batch" and res.metrics["rows"] == 2000 and res.extra["output"] == str(tmp_path/"scores")
    assert pd.read_parquet(tmp_path/"scores")["listing_id"].tolist() == df["listing_id"].iloc[:2000].tolist()
    run = client().get_run(res.run_id)
    assert (
        run.info.status == "FINISHED"
        and run.data.tags["mlops_nb.mode"] == "batch"
        and run.data.params["engine"] == "local"
    )
    with pytest.raises(Exception, match="already exists"):  # a failing cell fails the run, naming the cell
        LocalRunner(ROOT/"nbs"/"batch.ipynb", progress=False).submit(params).wait(600)


def test_batch_notebook_as_a_databricks_job():
    pytest.importorskip("databricks.sdk")
    from test_databricks import FakeDatabricks
    from mlops_nb.databricks import DatabricksRunner
    fake = FakeDatabricks()
    try:
        params = BatchParams(input_path="dbfs:/data/active/*.parquet", output_path="dbfs:/scores/today", engine="spark")
        runner = DatabricksRunner(ROOT/"nbs"/"batch.ipynb", client=fake.client(), existing_cluster_id="c-1",
                                  poll_s=0.05)
        res = runner.submit(params).wait(60)
        assert res.run_id  # the notebook's exit value, read back by the runner
        nb = next(v for k, v in fake.notebooks.items() if k.endswith("/batch"))
        src = "\n".join(c.source for c in nb.cells)
        assert 'input_path = "dbfs:/data/active/*.parquet"' in src and 'engine = "spark"' in src
        submitted = next(b for m, p, q, b, a in fake.requests if p.endswith("/runs/submit"))
        widgets = submitted["tasks"][0]["notebook_task"]["base_parameters"]
        assert (
            widgets["output_path"] == "dbfs:/scores/today"
            and widgets["batch_rows"] == "100000"
            and submitted["run_name"].startswith("mlops_nb batch")
        )
    finally: fake.server.shutdown()
