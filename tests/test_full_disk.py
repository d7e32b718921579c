"""The inference log on a real full disk (a small tmpfs mounted for the test, as root): requests are all answered, the
server says once that it drops rows, no truncated `.parquet` and no `.tmp` is left, and `monitor` reads what is whole,
skipping an unreadable part with a warning (issue 18, audit finding 5)."""
import json, os, subprocess, time
import pytest
from conftest import run_cli
from test_server import Server
from test_live_traffic import _listings


@pytest.fixture
def full_disk(tmp_path):
    "A 96 KiB tmpfs: a disk that fills after a few thousand logged rows."
    d = tmp_path/"disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode:
        if os.environ.get("CI"): pytest.fail(f"cannot mount a tmpfs for the full-disk test: {r.stderr.strip()}")
        pytest.skip(f"mounting a tmpfs needs root: {r.stderr.strip()}")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


def _dropped(server, timeout=30):
    ("Rows the server's inference log dropped for lack of disk, and its /metrics: waited for up to `timeout` s, as the "
     "writer meets the full disk in the background, after answering.")
    dropped, end = 0.0, time.time() + timeout
    while dropped == 0 and time.time() < end:
        metrics = server.get("/metrics")[1]
        line = [ln for ln in metrics.splitlines()
                if ln.startswith('mlops_nb_inference_log_dropped_total{reason="disk"}')]
        dropped = float(line[0].split()[-1]) if line else 0.0
        if dropped == 0: time.sleep(0.2)
    return dropped, metrics


def test_the_inference_log_on_a_full_disk(full_disk, tmp_path, model_dir, data_dir, state):
    log_dir = full_disk/"log"
    s = Server(tmp_path, "--model", model_dir, "--log-dir", log_dir)
    _, recs = _listings(2023, 500, 5)
    try:
        for i in range(40):  # 20 000 rows: far more than 96 KiB of Parquet holds
            st, body = s.request("POST", "/score", json.dumps(recs).encode(), {"content-type": "application/json"})[:2]
            assert st == 200, body  # the log never fails a request
        dropped, metrics = _dropped(s)
    finally: server_log = s.stop()
    events = [json.loads(line)["event"] for line in server_log.splitlines() if line.startswith("{")]
    # said at most once by each worker's log (one model_loaded each), not once a flush (40 flushes here); a worker
    # that loaded after the others had answered every request never writes, so it may say nothing
    said = events.count("inference_log_dropping")
    assert 1 <= said <= events.count("model_loaded"), server_log[-2000:]
    assert dropped > 0, metrics  # counted in /metrics
    assert not list(log_dir.glob("*.tmp")), sorted(p.name for p in log_dir.iterdir())
    import pandas as pd
    for f in log_dir.glob("*.parquet"): pd.read_parquet(f)  # whatever is there reads whole
    p = run_cli("monitor", "--reference", data_dir/"2021.parquet", "--current", log_dir, "--json")
    assert p.returncode in (0, 2) and "Traceback" not in p.stderr, p.stderr  # rows that were kept, or one line
    # a truncated part (as an older writer could leave) beside a whole one: monitor skips it with a warning
    whole = tmp_path/"whole"
    s = Server(tmp_path, "--model", model_dir, "--log-dir", whole)
    try:
        assert s.request("POST", "/score", json.dumps(recs[:50]).encode(),
                         {"content-type": "application/json"})[0] == 200
    finally: s.stop()
    (whole/"inference-truncated.parquet").write_bytes(b"PAR1" + b"\0" * 64)
    p = run_cli("monitor", "--reference", data_dir/"2021.parquet", "--current", whole, "--json")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert "inference-truncated.parquet: skipped" in p.stderr and json.loads(p.stdout)["rows"]["current"] == 50


def test_a_disk_full_before_the_first_write_leaves_no_temporary(full_disk, tmp_path, model_dir):
    "The log's first file cannot even be started (its header does not fit): no `.tmp` is left, requests are answered."
    with open(full_disk/"filler", "wb", buffering=0) as f:  # fill the disk to the last byte
        for size in (4096, 1):
            try:
                while True: f.write(b"x" * size)
            except OSError: pass
    log_dir = full_disk/"log"
    log_dir.mkdir()
    s = Server(tmp_path, "--model", model_dir, "--log-dir", log_dir, "--workers", "1")
    _, recs = _listings(2023, 50, 6)
    try:
        for _ in range(5):
            st, body = s.request("POST", "/score", json.dumps(recs).encode(), {"content-type": "application/json"})[:2]
            assert st == 200, body
        dropped, _ = _dropped(s)
    finally: s.stop()
    assert dropped > 0
    assert sorted(p.name for p in log_dir.iterdir()) == [], "the log left a file on a disk it could not write to"
