"""Three problems of different kinds, end to end as a new user would run them, with data that ships inside scikit-learn:
`mlops-nb new` -> test-mode run -> full run -> best version -> serve -> monitor -> package context -> deploy dry run.
And the registered model is the API: MLflow's pyfunc, a real `mlflow models serve` and `mlops-nb serve` give the
same numbers for the same raw records (the Ottawa example too, whose features are derived inside the model)."""
import contextlib, json, os, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import numpy as np
import pytest
from conftest import CLI, launched, run_cli

BIN = Path(sys.executable).parent
PROBLEMS = [("breast-cancer", "binary"), ("wine", "multiclass"), ("diabetes", "regression")]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args, cwd, env, timeout=600):
    "Run a command of the new project; fail with its stderr."
    p = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(map(str, args))} -> {p.returncode}\n{p.stderr[-3000:]}"
    return p


def cli(*args, cwd, env, timeout=600):
    "Run `mlops-nb ARGS` of the new project (conftest.run_cli); fail with its stderr."
    p = run_cli(*args, cwd=cwd, env=env, timeout=timeout)
    assert p.returncode == 0, f"mlops-nb {' '.join(map(str, args))} -> {p.returncode}\n{p.stderr[-3000:]}"
    return p


def cli_json(*args, cwd, env, **kw): return json.loads(cli(*args, "--json", cwd=cwd, env=env, **kw).stdout)


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r: return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e: return e.code, json.loads(e.read() or b"{}")


class Process:
    """A server process in its own session, waited for until `ready_path` answers 200, always stopped. A port another
    process took between `free_port` and the server's bind (the other worker's connections draw from the same range)
    is tried again with another."""
    def __init__(self, args, cwd, env, ready_path, log):
        self.log = log
        for _ in range(3):
            if self._start(args, cwd, env, ready_path): return
            if "address already in use" not in Path(log).read_text(): break
        raise AssertionError(f"{args[0]} did not become ready:\n{Path(log).read_text()[-3000:]}")

    def _start(self, args, cwd, env, ready_path)->bool:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = launched([str(a).replace("{port}", str(self.port)) for a in args], env)  # a server: forked
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env,
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + ready_path, timeout=2) as r:
                    if r.status == 200 and self.proc.poll() is None: return True  # ours, not a squatter
            except Exception: pass
            if self.proc.poll() is not None: break
            time.sleep(0.2)
        self.stop()
        return False

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try: self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    "One state folder for the three projects (their models have their own names); the wheels for images are shared."
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="module", params=PROBLEMS, ids=[p[0] for p in PROBLEMS])
def project(request, home, tmp_path_factory):
    "A new project made from a CSV of the table, trained in test and full mode, its best version promoted."
    from mlops_nb.examples.sklearn_tables import table
    name, kind = request.param
    t = tmp_path_factory.mktemp(name)
    csv = t/f"{name}.csv"
    table(name).to_csv(csv, index=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_NB_", "MLFLOW_"))}  # the project's own store
    env["MLOPS_NB_WHEEL_CACHE"] = os.environ.get("MLOPS_NB_WHEEL_CACHE", str(home/"wheels"))  # the machine's cache
    env["MLOPS_NB_HOME"] = str(home)
    if "MLOPS_NB_SERVABLE_PYTHON" in os.environ:  # the suite's: each registration's check as a fork (conftest)
        env["MLOPS_NB_SERVABLE_PYTHON"] = os.environ["MLOPS_NB_SERVABLE_PYTHON"]
    new = cli_json("new", t/name, "--data", csv, "--target", "target", "--kind", kind, cwd=t, env=env)
    root = Path(new["path"])
    data = f"data/{name}.csv"
    test = cli_json("train", "--mode", "test", "--data", data, "--quiet", cwd=root, env=env)
    full = cli_json("train", "--mode", "full", "--data", data, "--epochs", "3", "--quiet", cwd=root, env=env)
    best = cli_json("models", "best", cwd=root, env=env)
    cli_json("models", "promote", str(best["version"]), cwd=root, env=env)
    return dict(name=name, kind=kind, root=root, env=env, data=data, new=new, test=test, full=full, best=best, t=t)


def test_new_then_train_test_and_full(project):
    p = project
    assert (
        p["new"]["kind"] == p["kind"]
        and p["new"]["target"] == "target"
        and (p["root"] / "nbs" / "00_problem.ipynb").exists()
    )
    assert p["test"]["mode"] == "test" and p["test"]["registered_version"] is None
    assert p["full"]["registered_version"] == 1
    from mlops_nb.problem import METRICS
    assert set(p["full"]["metrics"]) == set(METRICS[p["kind"]])
    primary = {"binary": "roc_auc", "multiclass": "f1_macro", "regression": "rmse"}[p["kind"]]
    assert p["best"]["metric"] == primary and p["best"]["version"] == 1
    # the test-mode run trained on a real sample, not a vacuous one (its model is not constant, or the run fails)
    assert p["test"]["train_rows"] >= 80


def test_serve_monitor_package_deploy(project):
    p, env = project, project["env"]
    srv = Process([CLI, "serve", "--model", "champion", "--port", "{port}"], p["root"], env, "/ready",
                  p["t"]/"serve.log")
    try:
        with urllib.request.urlopen(srv.url + "/openapi.json") as r: api = json.loads(r.read())
        example = api["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"][0][
            "example"
        ]
        st, body = post(srv.url + "/score", example)
        assert st == 200, body
        answer = body["predictions"][0]
        assert (
            ("value" in answer) == (p["kind"] == "regression")
            and answer["model"] == p["name"]
            and answer["version"] == "1"
        )
        with urllib.request.urlopen(srv.url + "/version") as r: v = json.loads(r.read())
        assert v["fast_path"] is True and v["problem"] == p["name"], v
        st, body = post(srv.url + "/score", {**example, "unknown": 1})
        assert st == 422 and body["detail"][0]["loc"] == [0, "unknown"]
    finally: srv.stop()
    mon = cli_json("monitor", "--reference", p["data"], "--current", p["data"], "--model", "champion", cwd=p["root"],
                   env=env)
    assert mon["drift"] is False and mon["retrain"] is False and mon["decay"]
    ctx = cli_json("package", "--model", "champion", "--context-only", p["t"]/"ctx", cwd=p["root"], env=env,
                   timeout=900)
    dockerfile = (Path(ctx["context"])/"Dockerfile").read_text()
    assert f"MLOPS_NB_PROBLEM={p['name'].replace('-', '_')}.problem:PROBLEM" in dockerfile
    assert (Path(ctx["context"])/"model"/"MLmodel").exists()
    out = cli("deploy", "--target", "kubernetes", "--image", "127.0.0.1:5000/x:1-abc1234", "--dry-run",
              "--manifests", p["t"]/"k8s", cwd=p["root"], env=env)
    assert "validated (strict)" in out.stderr and (p["t"]/"k8s").exists()
    assert any(p["name"] in f.read_text() for f in (p["t"]/"k8s").glob("*.yaml"))


@contextlib.contextmanager
def mlflow_uris(uri):
    """MLflow's tracking and registry URIs set to `uri` in this process, then put back as they were. Earlier tests may
    have set them (they win over the environment), and setting them also writes MLFLOW_*_URI into os.environ, which
    later subprocesses would inherit: both are restored."""
    import mlflow
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    env, before = {k: os.environ.get(k) for k in names}, (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try: yield
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
        for k, v in env.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v


def _raw(problem_root, data, n=25):
    "The first `n` rows of a project's data as raw input records (what a client sends)."
    from mlops_nb.problem import load_problem
    prob = load_problem(start=problem_root)
    df = prob.load(problem_root/data)[list(prob.inputs)].head(n)
    return prob, json.loads(df.to_json(orient="records", date_format="iso"))


def _three_ways(model_ref, records, kind, labels, cwd, env, log_dir):
    "Outputs for `records` from MLflow's pyfunc, a `mlflow models serve` process and `mlops-nb serve`, as arrays."
    import mlflow, pandas as pd
    frame = pd.DataFrame(records)
    pyfunc = np.asarray(mlflow.pyfunc.load_model(model_ref).predict(frame), dtype=float)
    ml = Process([BIN/"mlflow", "models", "serve", "-m", model_ref, "--env-manager", "local", "-h", "127.0.0.1", "-p",
                  "{port}"],
                 # it execs uvicorn; and MLflow 3 loads any model (skops too: it trusts the types the model lists) only
                 # when told to
                 cwd, {**env, "PATH": f"{BIN}:{env.get('PATH', '')}", "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"},
                 "/ping", log_dir/"mlflow-serve.log")
    try:
        st, body = post(ml.url + "/invocations", {"dataframe_records": records})
        assert st == 200, body
        served = np.asarray(body["predictions"], dtype=float)
    finally: ml.stop()
    ours = Process([CLI, "serve", "--model", model_ref, "--port", "{port}"], cwd, env, "/ready", log_dir/"ours.log")
    try:
        st, body = post(ours.url + "/score", records)
        assert st == 200, body
        ans = body["predictions"]
        score = np.array([a["value"]
                          for a in ans]) if kind == "regression" else np.array([[a["probabilities"][l] for l in labels]
                                                                                for a in ans])
    finally: ours.stop()
    return pyfunc, served, score


def test_the_registered_model_is_the_api(project):
    "The same raw records to pyfunc, `mlflow models serve` (/invocations) and `mlops-nb serve` (/score): within 1e-6."
    p = project
    prob, records = _raw(p["root"], p["data"])
    uri = f"sqlite:///{p['env']['MLOPS_NB_HOME']}/mlflow.db"
    env = {**p["env"], "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}
    with mlflow_uris(uri):
        pyfunc, served, ours = _three_ways(f"models:/{p['name']}/1", records, p["kind"], prob.class_labels, p["root"],
                                           env, p["t"])
    want_shape = (len(records),) if p["kind"] == "regression" else (len(records), len(prob.classes))
    assert pyfunc.shape == served.shape == ours.shape == want_shape
    assert np.abs(pyfunc - served).max() <= 1e-6 and np.abs(pyfunc - ours).max() <= 1e-6
    if p["kind"] != "regression": assert np.allclose(pyfunc.sum(1), 1)  # probabilities, not labels


def test_the_ottawa_model_is_the_api_too(model_dir, tmp_path, state):
    "The example whose features are derived inside the model (dates as text, integers and floats as declared)."
    from mlops_nb.examples.ottawa import PROBLEM, generate_listings
    df = generate_listings(2022, 30, seed=5)
    records = json.loads(
        df[list(PROBLEM.inputs)].assign(listing_date=df.listing_date.dt.strftime("%Y-%m-%d")).to_json(orient="records")
    )
    # its derive functions are trusted code
    env = {**os.environ, "MLOPS_NB_PROBLEM": "mlops_nb.examples.ottawa:PROBLEM"}
    pyfunc, served, ours = _three_ways(str(model_dir), records, "binary", PROBLEM.class_labels, tmp_path, env, tmp_path)
    assert pyfunc.shape == served.shape == ours.shape == (30, 2)
    assert np.abs(pyfunc - served).max() <= 1e-6 and np.abs(pyfunc - ours).max() <= 1e-6


def test_a_fast_path_that_fails_falls_back_and_says_so(tmp_path, state):
    "A derive_record that is not derive's twin: the server scores through the pipeline; /version and the log say why."
    import dataclasses
    from conftest import save_model
    from mlops_nb.examples.ottawa import PROBLEM, derive, generate_listings
    slow = dataclasses.replace(PROBLEM, derive_record=derive)  # a slip: the DataFrame function as the per-record one
    save_model(tmp_path/"model", problem=slow)
    df = generate_listings(2022, 20, seed=2)
    records = json.loads(
        df[list(PROBLEM.inputs)].assign(listing_date=df.listing_date.dt.strftime("%Y-%m-%d")).to_json(orient="records")
    )
    env = {**os.environ, "MLOPS_NB_PROBLEM": "mlops_nb.examples.ottawa:PROBLEM"}
    srv = Process([CLI, "serve", "--model", tmp_path/"model", "--port", "{port}"], tmp_path, env, "/ready",
                  tmp_path/"serve.log")
    try:
        with urllib.request.urlopen(srv.url + "/version") as r: v = json.loads(r.read())
        assert v["fast_path"] is False and v["fast_path_fallback"].startswith("fails on the input example"), v
        st, body = post(srv.url + "/score", records)
        assert st == 200
    finally: srv.stop()
    import mlflow
    want = mlflow.pyfunc.load_model(str(tmp_path / "model")).predict(
        df[list(PROBLEM.inputs)].assign(listing_date=df.listing_date.dt.strftime("%Y-%m-%d"))
    )
    got = np.array([[a["probabilities"][l] for l in PROBLEM.class_labels] for a in body["predictions"]])
    assert np.abs(got - want).max() <= 1e-9
    assert '"fast_path_fallback": "fails on the input example' in Path(srv.log).read_text()
