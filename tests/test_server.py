"""The scoring server as a real process over HTTP: the same cases as api/test_score.py, the endpoints, auth,
failures that must not take it down (the swap under load: tests/test_audit.py)."""
import http.client, json, os, signal, socket, subprocess, time
from pathlib import Path
import pytest
from conftest import CLI, ROOT, GOOD, BAD_REQUESTS, launched

ADMIN, KEY = "admin-secret-for-tests", "api-key-for-tests"


def free_port():
    "A free loopback port."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlops-nb serve` in its own process group, with its log kept: forked from the zygote through its client, or
    started afresh (`real`) for a test of its process tree."""
    def __init__(self, tmp, *args, env=None, real=False):
        self.port, self.log = free_port(), tmp/f"server-{time.time_ns()}.log"
        argv = [CLI, "serve", "--port", str(self.port), *map(str, args)]
        self.proc = subprocess.Popen(argv if real else launched(argv, {**os.environ, **(env or {})}), cwd=ROOT,
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})},
                                     start_new_session=True)
        self.t0 = time.time()
        while time.time() - self.t0 < 60:
            try:
                if self.get("/ready")[0] == 200:
                    self.ready_s = time.time() - self.t0
                    return
            except OSError: pass
            if self.proc.poll() is not None: break
            time.sleep(0.05)
        raise AssertionError(f"server did not become ready:\n{self.log.read_text()}")

    def request(self, method, path, body=b"", headers=None, conn=None):
        "(status, parsed JSON or text, headers) of one request."
        c = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        if conn is None: c.close()
        ct = r.getheader("content-type", "")
        return r.status, (json.loads(data) if ct.startswith("application/json")
                          else data.decode()), dict(r.getheaders())

    def get(self, path, **kw): return self.request("GET", path, **kw)[:2]

    def score(self, payload, headers=None, conn=None):
        "(status, body) of POST /score with a JSON payload."
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.request("POST", "/score", body, {"content-type": "application/json", **(headers or {})}, conn)[:2]

    def stop(self):
        "Stop the server; its log is returned."
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try: self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.log.read_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_dir, state):
    s = Server(tmp_path_factory.mktemp("srv"), "--model", model_dir,  # the tests' folders are the allowed model roots
               env={"MLOPS_NB_ADMIN_TOKEN": ADMIN, "MLOPS_NB_MODEL_ROOTS": str(tmp_path_factory.getbasetemp())})
    yield s
    log = s.stop()
    assert ADMIN not in log  # secrets never logged


def test_cold_start_and_probes(server):
    print(f"cold start to ready: {server.ready_s:.2f} s")
    assert server.get("/health")[0] == 200
    assert server.get("/ready") == (200, {"ready": True})
    st, v = server.get("/version")
    assert st == 200 and (v["name"], v["version"], v["run_id"]) == ("ottawa-housing-classifier", "1",
                                                                    "run-1") and v["fast_path"]


def test_scores_like_score_py(server, model_dir, monkeypatch):
    "Over HTTP, the same predictions as api/score.py in-process on the same model."
    import importlib.util
    monkeypatch.setenv("MLOPS_NB_MODEL", str(model_dir))
    spec = importlib.util.spec_from_file_location("score_ref", ROOT/"api"/"score.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    ref.init()
    payloads = [GOOD, [GOOD, {**GOOD, "property_type": "condo", "sqft": 700, "lot_size": 0}],
                [dict(GOOD, days_on_market=d) for d in range(100)]]
    for p in payloads:
        st, body = server.score(p)
        assert st == 200
        want = ref.run(json.dumps(p))["predictions"]
        assert [x["label"] for x in body["predictions"]] == [x["label"] for x in want]
        assert all(abs(a["probability"] - b["probability"]) <= 1e-6 for a, b in zip(body["predictions"], want))


@pytest.mark.parametrize("name,body,ctype,status,words", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_over_http(server, name, body, ctype, status, words):
    st, out, hdr = server.request("POST", "/score", body, {"content-type": ctype})
    assert st == status, out
    text = json.dumps(out)
    for w in words: assert w in text, (w, text)
    assert "Traceback" not in text and "File \"" not in text
    assert hdr.get("x-request-id")


def test_protocol_errors(server):
    st, out, _ = server.request("POST", "/score", b"a=b", {"content-type": "application/x-www-form-urlencoded"})
    assert st == 415 and "send application/json" in out["error"]
    st, out, _ = server.request("POST", "/score", json.dumps(GOOD).encode(), {})
    assert st == 415
    st, out, _ = server.request("POST", "/score", b"x" * 2_000_000, {"content-type": "application/json"})
    assert st == 413 and "larger than" in out["error"]
    st, out, hdr = server.request("GET", "/score")
    assert st == 405 and hdr["allow"] == "POST" and "use POST" in out["error"]
    st, out, hdr = server.request("DELETE", "/health")
    assert st == 405 and hdr["allow"] == "GET, HEAD"
    assert server.request("GET", "/nope")[0] == 404
    st, out, hdr = server.request("POST", "/score", json.dumps(GOOD).encode(),
                                  {"content-type": "application/json", "x-request-id": "abc123"})
    assert st == 200 and hdr["x-request-id"] == "abc123"


def test_openapi_and_docs(server):
    st, spec = server.get("/openapi.json")
    listing = spec["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"][0]
    assert (
        st == 200
        and set(listing["required"]) == set(GOOD)
        and listing["properties"]["listing_date"]["format"] == "date"
    )
    assert "Glebe" in listing["properties"]["neighbourhood"]["enum"] and listing["additionalProperties"] is False
    st, html = server.get("/docs")
    assert st == 200 and "openapi.json" in html and "<table" in html


def test_metrics(server):
    server.score(GOOD)
    server.score([])
    st, text = server.get("/metrics")
    assert st == 200
    assert (
        'mlops_nb_requests_total{path="/score",status="200"}' in text and 'mlops_nb_errors_total{status="422"}' in text
    )
    assert 'mlops_nb_score_seconds_bucket{le="+Inf"}' in text
    assert 'mlops_nb_model_info{name="ottawa-housing-classifier",run_id="run-1",version="1"} 1.0' in text


def test_admin_requires_the_token(server):
    st, out, _ = server.request("POST", "/admin/model", b'{"model": "x"}', {"authorization": "Bearer wrong"})
    assert st == 401


def test_failed_swap_keeps_the_old_model(server, tmp_path):
    (tmp_path/"broken").mkdir()
    (tmp_path/"broken"/"MLmodel").write_text("flavors: {}\n")
    st, out, _ = server.request("POST", "/admin/model",
                                json.dumps({"model": str(tmp_path/"broken"), "wait": True}).encode(),
                                {"authorization": f"Bearer {ADMIN}"})
    assert st == 409 and "still serving 1" in out["error"] and "no scikit-learn model" in json.dumps(out)
    assert server.get("/version")[1]["version"] == "1" and server.score(GOOD)[0] == 200
    assert "no scikit-learn model" in server.get("/version")[1]["last_swap_error"]


# the swap under concurrent load: tests/test_audit.py::test_swap_under_load_answers_wholly_old_or_new (every answer
# checked to be wholly one version's, on the three protocols)


def test_api_key_and_scoring_failure(tmp_path, model_dir, state):
    "With a key configured /score needs it; a failing entry script answers 500 with an error id and keeps serving."
    entry = tmp_path/"score.py"
    entry.write_text((ROOT/"api"/"score.py").read_text().replace(
        "def preprocess(records):\n",
        "def preprocess(records):\n    if records[0]['days_on_market'] == 999: raise RuntimeError('boom')\n"))
    s = Server(tmp_path, "--model", model_dir, "--entry", entry, env={"MLOPS_NB_API_KEY": KEY})
    try:
        assert s.score(GOOD)[0] == 401
        assert s.score(GOOD, headers={"authorization": f"Bearer {KEY}"})[0] == 200
        assert s.score(GOOD, headers={"x-api-key": KEY})[0] == 200
        assert s.get("/health")[0] == 200 and s.get("/ready")[0] == 200  # probes stay open
        st, out = s.score({**GOOD, "days_on_market": 999}, headers={"x-api-key": KEY})
        assert st == 500 and set(out) == {"error", "error_id"} and "boom" not in json.dumps(out)
        assert s.score(GOOD, headers={"x-api-key": KEY})[0] == 200  # still serving
    finally: log = s.stop()
    assert out["error_id"] in log and "RuntimeError: boom" in log and KEY not in log


def test_api_key_from_a_mounted_file(tmp_path, model_dir, state):
    ("MLOPS_NB_API_KEY_FILE (a Kubernetes Secret mounted as a file, as "
     "`deploy --api-key-secret` renders it) sets the key.")
    (tmp_path/"api-key").write_text(KEY + "\n")
    s = Server(tmp_path, "--model", model_dir, env={"MLOPS_NB_API_KEY_FILE": str(tmp_path/"api-key")})
    try:
        assert s.score(GOOD)[0] == 401 and s.score(GOOD, headers={"x-api-key": KEY + "x"})[0] == 401
        assert s.score(GOOD, headers={"authorization": f"Bearer {KEY}"})[0] == 200
    finally: log = s.stop()
    assert KEY not in log
    env = {k: v for k, v in os.environ.items() if k != "MLOPS_NB_API_KEY"}
    for extra, says in (({"MLOPS_NB_API_KEY_FILE": str(tmp_path/"missing")},
                         "missing: cannot read it (No such file or directory)"),
                        ({"MLOPS_NB_API_KEY_FILE": str(tmp_path/"api-key"), "MLOPS_NB_API_KEY": KEY},
                         "both MLOPS_NB_API_KEY and MLOPS_NB_API_KEY_FILE")):
        p = subprocess.run([CLI, "serve", "--port", str(free_port()), "--model", str(model_dir)], env={**env, **extra},
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and says in p.stderr and "Traceback" not in p.stderr and KEY not in p.stderr, p.stderr


def test_bad_model_reference_fails_the_start(tmp_path, state):
    p = subprocess.run([CLI, "serve", "--port", str(free_port()), "--model", str(tmp_path/"missing")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "error: could not load model" in p.stderr


def _register(model_dir, seed):
    "Log the model folder's pipeline in a full-mode run and register it; return the version."
    import mlflow
    from mlops_nb.examples.ottawa import PROBLEM, generate_listings
    from mlops_nb.params import make_params
    from mlops_nb.serving import load_runtime
    from mlops_nb.tracking import create_run, register_model
    from mlops_nb.train import evaluate, log_model
    rt = load_runtime(model_dir)
    rid = create_run(make_params(mode="full", seed=seed), "nbs/train.ipynb")
    with mlflow.start_run(run_id=rid):  # its metrics, as a full run logs them (the validation gates read them)
        mlflow.log_metrics(evaluate(PROBLEM, rt.pipeline, generate_listings(2021, 1000, seed=seed)))
        info = log_model(PROBLEM, rt.pipeline, generate_listings(2021, 5, seed=seed))
    return register_model(rid, info.model_uri)


def test_watching_the_alias_swaps_when_it_moves(tmp_path, model_dir, model_dir_v2, state):
    from mlops_nb.tracking import promote
    v1, v2 = _register(model_dir, 1), _register(model_dir_v2, 2)
    promote(v1, "champion")
    s = Server(tmp_path, "--model", "models:/ottawa-housing-classifier@champion", "--watch", "0.5")
    try:
        assert s.get("/version")[1]["version"] == str(v1)
        promote(v2, "champion")
        # every worker (two by default here) follows the alias on its own: until each has swapped, answers mix versions
        # new connections, both workers
        served = lambda: {s.score(GOOD)[1]["predictions"][0]["version"] for _ in range(8)}
        deadline = time.time() + 60
        while time.time() < deadline and served() != {str(v2)}: time.sleep(0.2)
        assert served() == {str(v2)}
    finally: log = s.stop()
    assert '"event": "alias_moved"' in log


def _loaded(log:str)->list:
    "The model_loaded events of a server log."
    return [e for e in (json.loads(l) for l in log.splitlines() if l.startswith("{"))
            if e.get("event") == "model_loaded"]


def test_registry_reference_starts_without_mlflow_and_serves_the_version_it_names(
    tmp_path, model_dir, model_dir_v2, state
):
    ("On the local SQLite store a reference is read without MLflow, one "
     "worker or two; best:METRIC still goes through MLflow.")
    from mlops_nb.tracking import promote
    v1, v2 = _register(model_dir, 1), _register(model_dir_v2, 2)
    promote(v2, "champion")
    promote(v1, "previous")
    ref = "models:/ottawa-housing-classifier@"
    # one worker; the default (two here)
    for args, want in (([ref + "champion", "--workers", "1"], v2), ([ref + "previous"], v1)):
        s = Server(tmp_path, "--model", *args, real=True)  # real: a fork of the zygote has MLflow imported already
        try:
            for _ in range(6):  # new connections: with two workers, both answer
                st, body = s.score(GOOD)
                assert st == 200 and body["predictions"][0]["version"] == str(want)
        finally: log = s.stop()
        events = _loaded(log)
        assert events and all(e["info"]["version"] == str(want) and e["mlflow_imported"] is False for e in events), log
    cached = [d for d in (state/"served").glob("*/*") if (d/"MLmodel").exists()]
    assert cached and all((d/"registered_model_meta").exists() and (d/"mlops_nb_model.json").exists() for d in cached)
    s = Server(tmp_path, "--model", "best:roc_auc", "--workers", "1")  # a reference only MLflow answers: as before
    try: assert s.get("/version")[1]["version"] in (str(v1), str(v2))
    finally: log = s.stop()
    assert _loaded(log)[0]["mlflow_imported"] is True


def test_deploy_local_starts_then_swaps_without_engine(tmp_path_factory, tmp_path, model_dir, model_dir_v2, state):
    "`deploy --target local --model` starts a server process, then swaps its model; a broken model is refused."
    from conftest import run_cli
    port = free_port()
    env = {**os.environ, "MLOPS_NB_ADMIN_TOKEN": ADMIN, "MLOPS_NB_MODEL_ROOTS": str(tmp_path_factory.getbasetemp())}
    p = run_cli("deploy", "--target", "local", "--model", model_dir, "--port", port, "--timeout", "60", "--json",
                env=env)
    assert p.returncode == 0, p.stderr
    pid = json.loads(p.stdout)["pid"]
    try:
        version = lambda: json.loads(
            __import__("urllib.request").request.urlopen(f"http://127.0.0.1:{port}/version").read()
        )["version"]
        assert version() == "1"
        p = run_cli("deploy", "--target", "local", "--model", model_dir_v2, "--port", port, env=env)
        assert p.returncode == 0 and "now serves version 2" in p.stdout, p.stderr
        (tmp_path/"broken").mkdir()
        (tmp_path/"broken"/"MLmodel").write_text("flavors: {}\n")
        p = run_cli("deploy", "--target", "local", "--model", tmp_path/"broken", "--port", port, env=env)
        assert p.returncode == 2 and "swap refused (409)" in p.stderr and version() == "2"
        p = run_cli("deploy", "--target", "local", "--model", model_dir, "--port", port)  # no token: told what to do
        assert p.returncode == 2 and "set MLOPS_NB_ADMIN_TOKEN" in p.stderr
    finally: os.killpg(pid, signal.SIGTERM)


def test_workers_share_metrics_and_refuse_a_swap_that_would_reach_one(tmp_path, model_dir, model_dir_v2, state):
    ("With --workers 2: /metrics counts every worker's requests "
     "(prometheus_client's multiprocess mode); an admin swap is refused.")
    s = Server(tmp_path, "--model", model_dir, "--workers", "2", env={"MLOPS_NB_ADMIN_TOKEN": ADMIN}, real=True)
    try:
        for _ in range(40): assert s.score(GOOD)[0] == 200  # new connections: uvicorn spreads them over the workers
        # a worker counts a request just after it has sent the answer: the other may answer /metrics before that
        want, end = 'mlops_nb_requests_total{path="/score",status="200"} 40.0', time.time() + 10
        while want not in (text := s.get("/metrics")[1]) and time.time() < end: time.sleep(0.05)
        assert want in text, text
        st, out, _ = s.request("POST", "/admin/model", json.dumps({"model": str(model_dir_v2), "wait": True}).encode(),
                               {"authorization": f"Bearer {ADMIN}"})
        assert st == 409 and "runs 2 worker processes" in out["error"] and "--watch" in out["error"]
        shared = _metrics_folder(s.proc.pid)
        assert shared.is_dir()
    finally: s.stop()
    assert not shared.exists()  # the server removes the folder it made when it stops


def _metrics_folder(pid:int)->Path:
    "The multiprocess metrics folder of the server `pid`: where its workers' mapped metric files are."
    for k in _workers(pid):
        for line in open(f"/proc/{k}/maps"):
            f = Path(line.split(maxsplit=5)[-1].strip())
            if f.parent.name.startswith("mlops-nb-metrics-"): return f.parent
    raise AssertionError(f"no worker of {pid} has a metrics folder")


def _workers(pid:int)->set:
    "Pids of the worker processes below uvicorn's parent `pid` (a multiprocessing helper, if any, left out)."
    return {k for k in _children(pid) if "resource_tracker" not in open(f"/proc/{k}/cmdline").read()}


def _forked(pid:int, of:int)->bool:
    "Whether process `pid` is a fork of `of`: the same program and arguments, no interpreter started afresh."
    return open(f"/proc/{pid}/cmdline").read() == open(f"/proc/{of}/cmdline").read()


def test_default_uses_every_usable_cpu_and_stays_one_process_under_a_one_cpu_affinity(tmp_path, model_dir, state):
    ("No --workers: one worker process per usable CPU (here both), each "
     "answering as one process does; with one CPU, one process.")
    from mlops_nb.core import usable_cpus
    s = Server(tmp_path, "--model", model_dir, real=True)
    try:
        n = usable_cpus()
        assert f"{n} worker(s)" in s.log.read_text()
        assert len(_workers(s.proc.pid)) == (n if n > 1 else 0)
        one = s.score(GOOD)
        for _ in range(20): assert s.score(GOOD) == one  # whichever worker answers, the same answer
        many = s.score([GOOD] * 300)  # one model call through the estimator: the same numbers as record by record
        assert many[0] == 200 and all(p == one[1]["predictions"][0] for p in many[1]["predictions"])
    finally: s.stop()
    pinned = subprocess.run(["taskset", "-c", "0", CLI, "serve", "--port", "0", "--model", str(model_dir), "--workers",
                             "0"],
                            capture_output=True, text=True, timeout=60)
    assert pinned.returncode == 2 and "--workers 0 is not allowed" in pinned.stderr
    p = subprocess.Popen(["taskset", "-c", "0", CLI, "serve", "--port", str(free_port()), "--model", str(model_dir)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try: assert "1 worker(s)" in p.stdout.readline()  # an affinity (or a cgroup quota) of one CPU: one process
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(15)


def test_several_workers_report_a_model_that_does_not_load_as_one_process_does(tmp_path):
    "With two workers a missing model is one line and exit 2 from the parent, before any worker starts."
    p = subprocess.run([CLI, "serve", "--port", str(free_port()), "--model", str(tmp_path/"no-such-model"), "--workers",
                        "2"],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "MLOPS_NB_HOME": str(tmp_path/"state")})
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("error: "), p.stderr


def _children(pid:int)->set:
    "Pids of the processes whose parent is `pid` (from /proc)."
    kids = set()
    for d in os.listdir("/proc"):
        if not d.isdigit(): continue
        try: stat = open(f"/proc/{d}/stat").read()
        except OSError: continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid: kids.add(int(d))
    return kids


def test_workers_never_outlive_a_killed_server(model_dir, tmp_path):
    ("The workers are forks of the server (no interpreter started afresh) that die of SIGHUP as a fresh process does "
     "(uvicorn starts another); SIGKILL to the server (it cannot stop its workers): they stop anyway, and the port is "
     "free for the next one.")
    s = Server(tmp_path, "--model", model_dir, "--workers", "2", real=True)
    try:
        workers = _workers(s.proc.pid)
        assert len(workers) == 2 and all(_forked(k, s.proc.pid) for k in workers), workers
        hup = min(workers)
        os.kill(hup, signal.SIGHUP)  # the supervisor's handler, inherited by the fork, would have kept it alive
        end = time.time() + 30
        while time.time() < end and (os.path.exists(f"/proc/{hup}") or len(_workers(s.proc.pid)) < 2): time.sleep(0.1)
        workers = _workers(s.proc.pid)
        assert hup not in workers and len(workers) == 2, workers
        assert s.score(GOOD)[0] == 200
        shared = _metrics_folder(s.proc.pid)
        s.proc.kill()  # the parent only: its process group is left alone
        s.proc.wait()
        end = time.time() + 30
        while time.time() < end and any(os.path.exists(f"/proc/{k}") for k in workers): time.sleep(0.2)
        alive = [k for k in workers if os.path.exists(f"/proc/{k}")]
        assert not alive, f"processes {alive} outlived the server"
        with socket.socket() as sock: sock.bind(("127.0.0.1", s.port))  # nobody holds the port
        assert not shared.exists()  # nor the metrics folder: the orphaned workers removed it
    finally:
        try: os.killpg(s.proc.pid, signal.SIGKILL)
        except ProcessLookupError: pass
