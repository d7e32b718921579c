"""Live traffic: the server logs a sample of what it answered (Parquet, written in the background), a shadow model
scores the same requests after the answer, and `mlops-nb monitor` measures drift on the log, the decay once labels
arrive (joined by request id or key), and how the shadow and the served model compare. Logging never fails a request."""
import json, time
from pathlib import Path
import pandas as pd
import pytest
from conftest import run_cli, cli_json
from test_server import Server, free_port


def _listings(year, n, seed):
    from mlops_nb.examples.ottawa import PROBLEM, generate_listings
    df = generate_listings(year, n, seed=seed)
    recs = json.loads(
        df[["listing_id", *PROBLEM.inputs]]
        .assign(listing_date=df.listing_date.dt.strftime("%Y-%m-%d"))
        .to_json(orient="records")
    )
    return df, recs


@pytest.fixture(scope="module")
def logged(tmp_path_factory, model_dir, model_dir_v2, state):
    ("A server with an inference log and a shadow model, asked about 600 "
     "listings of 2023 (in 60 requests), then stopped.")
    t = tmp_path_factory.mktemp("live")
    s = Server(t, "--model", model_dir, "--log-dir", t/"log", "--shadow", model_dir_v2)
    df, recs = _listings(2023, 600, 3)
    try:
        for i in range(60):
            st, body = s.request("POST", "/score", json.dumps(recs[i*10:(i+1)*10]).encode(),
                                 {"content-type": "application/json", "x-request-id": f"req-{i}"})[:2]
            assert st == 200, body
        metrics = s.get("/metrics")[1]
    finally: log = s.stop()  # SIGTERM: the writer finishes its file
    return dict(t=t, df=df, recs=recs, metrics=metrics, server_log=log)


def test_the_log_holds_what_was_answered(logged):
    from mlops_nb.inference_log import read_log
    log = read_log(logged["t"]/"log")
    assert len(log) == 600 and set(log["_request_id"]) == {f"req-{i}" for i in range(60)}
    # keys a client sends are kept, each request's rows in its order (the workers write files of their own, so the
    # order of requests across files is not the order they were sent in)
    recs = logged["recs"]
    sent = {f"req-{i}": [r["listing_id"] for r in recs[i*10:(i+1)*10]] for i in range(60)}
    assert log.groupby("_request_id", sort=False)["listing_id"].apply(list).to_dict() == sent
    assert set(log["_prediction"]) <= {"above_asking", "at_or_below_asking"} and log["_latency_ms"].gt(0).all()
    assert set(log["_version"]) == {"1"} and set(log["_shadow_version"]) == {"2"}
    assert (
        "mlops_nb_inference_log_rows_total" in logged["metrics"]
        and 'mlops_nb_inference_log_dropped_total{reason="disk"} 0.0' in logged["metrics"]
    )
    assert '"event": "shadow_loaded"' in logged["server_log"]


def test_monitor_on_live_traffic_then_labels(logged, data_dir, model_dir):
    t, df = logged["t"], logged["df"]
    out = cli_json("monitor", "--reference", data_dir/"2021.parquet", "--current", t/"log")
    assert out["drift"] is True and out["rows"]["current"] == 600 and out["decay"] is None
    assert out["shadow"]["rows"] == 600 and out["shadow"]["versions"] == {"served": ["1"], "shadow": ["2"]}
    assert 0 <= out["shadow"]["agreement"] <= 1
    # labels arrive later: by request id and row ...
    lab = pd.DataFrame({"request_id": [f"req-{i // 10}" for i in range(600)], "row": [i % 10 for i in range(600)],
                        "sold_above_ask": df["sold_above_ask"].tolist()})
    lab.to_csv(t/"labels.csv", index=False)
    out = cli_json("monitor", "--reference", data_dir/"2021.parquet", "--current", t/"log", "--labels", t/"labels.csv",
                   "--model", model_dir)
    assert out["decay"] is not None and out["rows"]["current"] == 600 and out["decay"]["roc_auc"]["current"] > 0.5
    # ... or by a key column the client sent
    df[["listing_id", "sold_above_ask"]].head(100).to_csv(t/"by_key.csv", index=False)
    out = cli_json("monitor", "--reference", data_dir/"2021.parquet", "--current", t/"log", "--labels", t/"by_key.csv",
                   "--labels-key", "listing_id", "--model", model_dir)
    assert out["rows"]["current"] == 100 and out["decay"] is not None
    p = run_cli("monitor", "--reference", data_dir/"2021.parquet", "--current", t/"log", "--labels", t/"labels.csv",
                "--labels-key", "nope")
    assert p.returncode == 2 and "key column 'nope' must be in both" in p.stderr


def test_sampling_and_a_failing_disk_never_fail_a_request(tmp_path, model_dir, state):
    (tmp_path/"file").write_text("a file, not a folder")
    s = Server(tmp_path, "--model", model_dir, "--log-dir", tmp_path/"file"/"log")
    _, recs = _listings(2022, 50, 1)
    try:
        assert all(s.score([r])[0] == 200 for r in recs)
        time.sleep(2.5)
        m = s.get("/metrics")[1]
    finally: s.stop()
    assert 'mlops_nb_inference_log_dropped_total{reason="disk"} 50.0' in m, m
    s = Server(tmp_path, "--model", model_dir, "--log-dir", tmp_path/"half", "--log-sample", "0.5")
    try: assert all(s.score([r])[0] == 200 for r in recs)
    finally: s.stop()
    from mlops_nb.inference_log import read_log
    assert 10 < len(read_log(tmp_path/"half")) < 40  # about half of 50
    p = run_cli("serve", "--model", model_dir, "--log-dir", tmp_path/"x", "--log-sample", "2", "--port", free_port())
    assert p.returncode == 2 and "--log-sample 2 is not allowed" in p.stderr


def test_an_image_and_a_deployment_that_log_inference(tmp_path, model_dir, state):
    ("package --inference-log adds pyarrow and sets the log folder; deploy "
     "--inference-log mounts a volume there (strictly valid).")
    out = cli_json("package", "--model", model_dir, "--context-only", tmp_path/"ctx", "--inference-log", timeout=900)
    ctx = Path(out["context"])
    assert "MLOPS_NB_INFERENCE_LOG=/var/lib/mlops_nb/inference" in (ctx/"Dockerfile").read_text()
    assert any(r.startswith("pyarrow==") for r in (ctx/"requirements.txt").read_text().split())
    p = run_cli("deploy", "--target", "kubernetes", "--image", "127.0.0.1:5000/m:1-abc1234", "--dry-run",
                "--inference-log",
                "--log-claim", "scoring-logs", "--manifests", tmp_path/"k8s")
    assert p.returncode == 0 and "validated (strict)" in p.stderr, p.stderr
    assert "claimName: scoring-logs" in (tmp_path/"k8s"/"deployment.yaml").read_text()


def test_a_shadow_period_before_promotion(logged):
    "models promote --after-shadow LOG_DIR: the version must have answered enough logged requests as the shadow."
    from mlops_nb.inference_log import check_shadow_period
    assert check_shadow_period(logged["t"]/"log", 2, min_rows=600) == 600
    p = run_cli("models", "promote", "2", "--after-shadow", logged["t"]/"log", "--min-shadow-rows", "700")
    assert (
        p.returncode == 2
        and "answered 600 logged request row(s) as the shadow" in p.stderr
        and "Traceback" not in p.stderr
    )


def test_the_train_pipeline_can_require_a_shadow_period(logged, model_dir):
    """pipelines/promote.py (the train pipeline's promotion) with MLOPS_NB_SHADOW_LOG: a new best version becomes the
    challenger, the champion unchanged, until it has answered enough logged requests as the shadow; then it is
    promoted."""
    import os, subprocess, sys
    from conftest import ROOT
    from test_gates import _version
    from mlops_nb.tracking import version_for_alias
    first = _version(0.8, model_dir)
    step = lambda *a, **env: subprocess.run([sys.executable, "pipelines/promote.py", *a], cwd=ROOT, capture_output=True,
                                            text=True, timeout=300, env={**os.environ, **env})
    p = step()  # no shadow period asked: promoted at once
    assert (
        p.returncode == 0 and json.loads(p.stdout)["promoted"] is True and version_for_alias("champion") == first
    ), p.stderr
    second = _version(0.9, model_dir)
    assert second == 2  # the version the logged server ran as its shadow
    p = step(MLOPS_NB_SHADOW_LOG=str(logged["t"]/"log"), MLOPS_NB_MIN_SHADOW_ROWS="700")
    out = json.loads(p.stdout)
    assert (
        p.returncode == 0 and out["promoted"] is False and out["alias"] == "challenger" and out["version"] == second
    ), p.stderr
    assert "answered 600 logged request row(s) as the shadow" in out["waiting_for"]
    assert version_for_alias("champion") == first and version_for_alias("challenger") == second
    p = step("--after-shadow", logged["t"]/"log", "--min-shadow-rows", "600")
    assert p.returncode == 0 and json.loads(p.stdout)["promoted"] is True, p.stderr
    assert version_for_alias("champion") == second
