"""api/score.py UNCHANGED under Azure ML's own inference server (`azmlinfsrv`, azureml-inference-server-http).

The server gets its own venv (scripts/azml-venv: it pins OpenTelemetry exactly and conflicts with mlflow), which has no
mlflow at all: loading a model folder through `AZUREML_MODEL_DIR` must not need it. One real server process per module,
on a free port, answering on loopback; predictions must equal `score()` called in-process on the same model folder.

How azmlinfsrv 1.5.1 treats our undecorated `run(raw)`: it hands over the request body as text whatever the content type
(invalid JSON reaches score.py, which answers 400 itself), and serialises a non-Response return value as JSON with 200.
It always binds 0.0.0.0 (DEFAULT_HOST is hard-coded, no --host flag): we only ever connect to 127.0.0.1.
"""
import importlib.util, json, os, signal, socket, subprocess, time, urllib.error, urllib.request
from pathlib import Path
import pytest
from conftest import BAD_REQUESTS, GOOD, ROOT, side_venv

VENV = ROOT/".venv-azml"


def _free_port():
    "A free TCP port on loopback."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    "A running azmlinfsrv: its process, port and log file."
    def __init__(self, proc, port, log):
        self.proc, self.port, self.log = proc, port, Path(log)

    def log_tail(self, n=60):
        "The last `n` lines of the server's output, to explain a failure."
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n--- azmlinfsrv log (tail) ---\n" + "\n".join(lines[-n:])

    def request(self, path, body=None, content_type="application/json", method=None, timeout=30):
        "(status, headers, body text) of one HTTP request to 127.0.0.1."
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, method=method,
                                     headers={"Content-Type": content_type} if body is not None else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r: return r.status, r.headers, r.read().decode()
        except urllib.error.HTTPError as e: return e.code, e.headers, e.read().decode()


def _stop(proc):
    "Stop the server's whole process group (gunicorn master and workers)."
    if proc.poll() is not None: return
    try: os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError: return
    try: proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@pytest.fixture(scope="module")
def azml_venv():
    "The server's venv, created or updated by scripts/azml-venv (instant when up to date; fails under CI if it cannot)."
    return Path(side_venv("azml-venv", VENV.name))


@pytest.fixture(scope="module")
def server(azml_venv, model_dir, tmp_path_factory):
    "`azmlinfsrv --entry_script api/score.py` with AZUREML_MODEL_DIR=model_dir, started once, stopped at the end."
    port, log = _free_port(), tmp_path_factory.mktemp("azmlinfsrv")/"server.log"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "MLOPS_NB_MODEL") and not k.startswith("AZUREML_")}
    env.update(AZUREML_MODEL_DIR=str(model_dir), PYTHONUNBUFFERED="1", PATH=f"{azml_venv/'bin'}:{env.get('PATH', '')}")
    # gunicorn >= 27 opens a control socket at ~/.gunicorn/gunicorn.ctl, one path for every server of the user: not ours
    if any(int(d.name.split("-")[1].split(".")[0]) >= 27
           for d in azml_venv.glob("lib/python*/site-packages/gunicorn-*.dist-info")):
        env["GUNICORN_CMD_ARGS"] = "--no-control-socket"
    with open(log, "wb") as f:
        proc = subprocess.Popen([str(azml_venv/"bin"/"azmlinfsrv"), "--entry_script", "api/score.py", "--port",
                                 str(port)],
                                cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    srv = Server(proc, port, log)
    try:
        deadline = time.monotonic() + 90
        while True:  # liveness probe: GET / answers "Healthy" once the worker has run init()
            if proc.poll() is not None:
                pytest.fail(f"azmlinfsrv exited with {proc.returncode} before answering{srv.log_tail()}")
            if time.monotonic() > deadline: pytest.fail(f"azmlinfsrv did not answer GET / within 90 s{srv.log_tail()}")
            try:
                if srv.request("/", timeout=5)[0] == 200: break
            except OSError: pass
            time.sleep(0.2)
        yield srv
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def score_module(model_dir):
    "api/score.py imported in this process (main venv) and init()-ed on the same model folder."
    spec = importlib.util.spec_from_file_location("score_inprocess", ROOT/"api"/"score.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("AZUREML_MODEL_DIR", raising=False)
        mp.setenv("MLOPS_NB_MODEL", str(model_dir))
        mod.init()
    return mod


def test_venv_has_no_mlflow(azml_venv):
    "The server's venv really lacks mlflow, so the scoring below proves score.py does not need it."
    p = subprocess.run([str(azml_venv/"bin"/"python"), "-c", "import mlflow"], capture_output=True, text=True)
    assert p.returncode != 0 and "No module named 'mlflow'" in p.stderr, p.stderr


def test_liveness(server):
    status, _, body = server.request("/")
    assert (status, body) == (200, "Healthy"), server.log_tail()


THREE = [GOOD, {**GOOD, "sqft": 1200, "lot_size": 3000, "neighbourhood": "Westboro"},
         {**GOOD, "list_price": 420000, "property_type": "condo", "bedrooms": 1, "year_built": 2015}]


@pytest.mark.parametrize("payload", [GOOD, THREE], ids=["one record", "three records"])
def test_score_matches_in_process(server, score_module, payload):
    status, headers, text = server.request("/score", json.dumps(payload).encode())
    assert status == 200, f"{status} {text}{server.log_tail()}"
    assert headers.get_content_type() == "application/json"
    got, want = json.loads(text)["predictions"], score_module.run(json.dumps(payload))["predictions"]
    assert len(got) == len(want) == (1 if isinstance(payload, dict) else len(payload))
    for g, w in zip(got, want):
        assert (g["label"], g["model"], g["version"]) == (w["label"], w["model"], w["version"]), (g, w)
        assert abs(g["probability"] - w["probability"]) <= 1e-6, (g, w)


@pytest.mark.parametrize("name,body,ctype,status,words", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests(server, name, body, ctype, status, words):
    # Every case reaches score.py's run() (the server does not parse the body of an undecorated run): the status is
    # score.py's own, through AMLResponse.
    got, headers, text = server.request("/score", body, ctype)
    assert got == status, f"{name}: {got} {text}{server.log_tail()}"
    assert headers.get_content_type() == "application/json", headers
    parsed = json.loads(text)
    if isinstance(parsed, str): parsed = json.loads(parsed)  # score.py double-encodes: see test_error_body_is_an_object
    assert parsed["error"] == "invalid request" and parsed["detail"], parsed
    for w in words: assert w in text, f"{name}: {w!r} not in {text}"


def test_error_body_is_an_object(server):
    "An error body is one JSON object `{error, detail}`, as under `mlops-nb serve`: not a JSON string holding one."
    _, _, text = server.request("/score", json.dumps({**GOOD, "sqft": -5}).encode())
    parsed = json.loads(text)
    if isinstance(parsed, str):
        # AMLResponse(message, status, json_str=True) json.dumps `message` itself: score.py passes json.dumps(body),
        # so clients get a JSON string. Fix in api/score.py `_error`: `return AMLResponse(body, status, json_str=True)`.
        pytest.xfail("api/score.py double-encodes error bodies under azmlinfsrv "
                     "(AMLResponse(json.dumps(body), ..., json_str=True))")
    assert isinstance(parsed, dict) and parsed["error"] == "invalid request", parsed
    assert parsed["detail"][0]["loc"] == [0, "sqft"], parsed


def test_server_answers_itself(server):
    "What azmlinfsrv answers before score.py runs: its own `{message}` body, not score.py's `{error, detail}` contract."
    status, headers, text = server.request("/score", b"\xff\xfe not utf-8")  # body cannot be decoded as text
    assert status == 400 and headers.get_content_type() == "application/json", text
    assert "UTF-8" in json.loads(text)["message"], text
    status, _, text = server.request("/score", method="PUT", body=b"{}")  # a method the route does not accept
    assert status == 405, text


@pytest.mark.parametrize("envelope", ["input_data", "data"])
def test_azure_ml_payloads_under_azmlinfsrv(server, score_module, envelope):
    ("Azure ML online endpoints' `{\"input_data\": {columns, index, "
     "data}}` and the older `{\"data\": [...]}`, unchanged.")
    cols = list(GOOD)
    body = ({"input_data": {"columns": cols, "index": [0, 1, 2], "data": [[r[c] for c in cols] for r in THREE]}}
            if envelope == "input_data"
            else {"data": THREE})
    status, _, text = server.request("/score", json.dumps(body).encode())
    assert status == 200, f"{status} {text}{server.log_tail()}"
    got, want = json.loads(text)["predictions"], score_module.run(json.dumps(THREE))["predictions"]
    assert [round(g["probability"], 9) for g in got] == [round(w["probability"], 9) for w in want]
