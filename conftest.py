"""Shared pytest fixtures (tests/ and api/): an isolated state folder per module, the real CLI, data, model folders."""
import atexit, importlib.util, json, os, shlex, shutil, subprocess, sys, tempfile, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent
CLI = str(Path(sys.executable).parent/"mlops-nb")


_ZYGOTE = []  # this process's zygote (tests/zygote.py)


def _zygote():
    "The zygote the commands and kernels of this process fork from (a new one if it stopped); None with TEST_FORK=0."
    if os.environ.get("TEST_FORK") == "0": return None
    if not _ZYGOTE or not _ZYGOTE[0].alive():
        spec = importlib.util.spec_from_file_location("zygote", ROOT/"tests"/"zygote.py")
        zygote = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(zygote)
        folder = tempfile.mkdtemp(prefix="mlops-nb-zygote-")
        _ZYGOTE[:] = [zygote.Zygote(folder)]
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        atexit.register(_ZYGOTE[0].close)  # first
        # every kernel this process's children start (papermill's, nbconvert's) forks from it too
        path = [str(_ZYGOTE[0].kernelspec()), os.environ.get("JUPYTER_PATH")]
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in path if p)
        # and every registration's servable check (a process of its own, which loads and scores the new version)
        os.environ["MLOPS_NB_SERVABLE_PYTHON"] = str(_ZYGOTE[0].interpreter())
    return _ZYGOTE[0]


@pytest.fixture(autouse=True, scope="session")
def _zygote_started():
    "Started before the first test: kernels may be asked of it by any process the suite starts."
    _zygote()


@pytest.fixture
def real_kernels(monkeypatch):
    "Kernels started afresh by what this test starts (`python -m ipykernel_launcher`), for a test of the process tree."
    mine = str(_ZYGOTE[0].jupyter) if _ZYGOTE else None
    path = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p and p != mine]
    if path: monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(path))
    else: monkeypatch.delenv("JUPYTER_PATH", raising=False)


def run_cli(*args, env=None, cwd=ROOT, timeout=300, check=False):
    """Run `mlops-nb ARGS` (in `env`, default this process's environment, and `cwd`); return the CompletedProcess
    (text). Each command is its own process, forked from the zygote (tests/zygote.py: the executable's entry point
    without a second of imports per command); `TEST_FORK=0` starts the executable afresh instead."""
    argv, z, env = [CLI, *map(str, args)], _zygote(), dict(os.environ if env is None else env)
    if z is not None and z.fits(env): p = z.run(argv, env, str(cwd), timeout, tempfile.gettempdir())
    else: p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"mlops-nb {' '.join(map(str, args))} -> {p.returncode}\n{p.stderr}")
    return p


def launched(argv:list, env:dict|None=None)->list:
    """What to start with `subprocess.Popen` for the long-running command `argv` (a server): the command forked from
    the zygote through its client (tests/zygote.py), which Popen waits on, signals and reads as the command itself;
    `argv` itself for anything but `mlops-nb`, with TEST_FORK=0, or in another interpreter's start-up variables."""
    z = _zygote()
    if z is None or str(argv[0]) != CLI or not z.fits(dict(os.environ if env is None else env)): return list(argv)
    return z.launcher(argv)


def running(pid)->bool:
    "Whether `pid` is a live process (not a zombie)."
    try: return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError: return False


def side_venv(script, what):
    """The last line `scripts/SCRIPT` prints (the executable of a side venv it builds once per machine, then instant).
    When it cannot build: the test fails under CI, and is skipped elsewhere, naming `what` and the script's reason."""
    p = subprocess.run(["bash", str(ROOT/"scripts"/script)], capture_output=True, text=True, timeout=1200)
    if p.returncode != 0:
        reason = (p.stderr.strip().splitlines() or ["?"])[-1]
        if os.environ.get("CI"): pytest.fail(f"scripts/{script} failed: {reason}")
        pytest.skip(f"scripts/{script} could not build {what} (no access to PyPI?): {reason}")
    return p.stdout.strip().splitlines()[-1]


class Recorder:
    """A loopback HTTP server that records every request (method, path) in `seen` and answers 404: a cloud nobody should
    contact. `kubeconfig` writes a kubeconfig whose every context points at it."""
    def __init__(self):
        self.seen = seen = []
        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                seen.append((self.command, self.path))
                self.send_response(404)
                self.send_header("content-length", "0")
                self.end_headers()
            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _any
            def log_message(self, *a): pass
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kubeconfig(self, path, contexts=("prod", "staging")):
        "Write a kubeconfig at `path` (current context: the first) whose every context is this server; return the path."
        import yaml
        path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "current-context": contexts[0],
            "clusters": [{"name": "c", "cluster": {"server": self.url}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": n, "context": {"cluster": "c", "user": "u"}} for n in contexts]}))
        return path

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def cli_json(*args, env=None, **kw):
    "Run `mlops-nb ... --json` and parse its stdout."
    p = run_cli(*args, "--json", env=env, check=True, **kw)
    return json.loads(p.stdout)


def cli_json_here(*args):
    """`mlops-nb ... --json` in this process (`mlops_nb.cli.main`, what the executable runs), its stdout parsed: for
    answers of commands whose process other tests start (each start imports mlflow again, seconds each)."""
    import contextlib, io
    from mlops_nb.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main([*map(str, args), "--json"])
    if rc != 0: raise AssertionError(f"mlops-nb {' '.join(map(str, args))} -> {rc}\n{err.getvalue()}")
    return json.loads(out.getvalue())


def cli_here(*args):
    """`mlops-nb ARGS` run in this process (`mlops_nb.cli.main`, what the executable runs): a CompletedProcess with its
    exit code, stdout and stderr. For commands refused before any work, where a new process would only import MLflow
    again; never for one that would serve or wait."""
    import contextlib, io
    from mlops_nb.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main([*map(str, args)])
    return subprocess.CompletedProcess(["mlops-nb", *map(str, args)], rc, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def state(tmp_path_factory, monkeypatch_module):
    "A fresh state folder (tracking DB, artifacts, runs) for this module, for in-process calls and subprocesses."
    home = tmp_path_factory.mktemp("state")
    monkeypatch_module.setenv("MLOPS_NB_HOME", str(home))
    for k in ("MLOPS_NB_TRACKING_URI", "MLOPS_NB_REGISTRY_URI", "MLOPS_NB_EXPERIMENT", "MLOPS_NB_MODEL_NAME"):
        monkeypatch_module.delenv(k, raising=False)
    monkeypatch_module.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # we load models we trained ourselves
    from mlops_nb import tracking
    tracking._clients.clear()
    yield home
    tracking._clients.clear()


@pytest.fixture(scope="module")
def monkeypatch_module():
    "A module-scoped monkeypatch."
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    "Generated listings of the Ottawa example: a small 2021 year, a 2023 year."
    from mlops_nb.data import write_table
    from mlops_nb.examples.ottawa import generate_listings
    d = tmp_path_factory.mktemp("data")
    write_table(generate_listings(2021, 4000, seed=0), d/"2021.parquet")
    write_table(generate_listings(2023, 4000, seed=0), d/"2023.parquet")
    return d


def save_model(path, year=2021, rows=3000, seed=0, epochs=2, problem=None, data=None):
    ("Train a small model of `problem` (default: the Ottawa example, on "
     "`year`) and save it as an MLflow model folder at `path`.")
    from mlops_nb.examples.ottawa import PROBLEM, generate_listings
    from mlops_nb.train import build_model, train_epochs, split_rows, save_model as save
    problem = problem or PROBLEM
    df = data if data is not None else generate_listings(year, rows, seed=seed)
    tr, ev = split_rows(df, problem, seed=0)
    model = build_model(problem, seed=seed)
    train_epochs(problem, model, tr, ev, epochs=epochs)
    save(problem, model, ev, path)
    return model


def model_folder(root, name, version, year, seed):
    "A saved model folder with its registry identity written beside it."
    d = root/name
    save_model(d, year=year, seed=seed)
    (d/"mlops_nb_model.json").write_text(json.dumps({"name": "ottawa-housing-classifier", "version": version,
                                                     "run_id": f"run-{version}"}))
    return d


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    "A model folder as MLflow saves it (what an image bakes in, what Azure ML mounts): version 1, trained on 2021."
    return model_folder(tmp_path_factory.mktemp("models"), "model", "1", 2021, 0)


@pytest.fixture(scope="session")
def model_dir_v2(tmp_path_factory):
    "Another model folder: version 2, trained on 2023."
    return model_folder(tmp_path_factory.mktemp("models"), "model", "2", 2023, 1)


GOOD = {"list_price": 650000, "bedrooms": 3, "bathrooms": 2.0, "sqft": 1800, "lot_size": 3000, "year_built": 1995,
        "days_on_market": 12, "neighbourhood": "Glebe", "property_type": "detached", "listing_date": "2024-05-01"}

# (name, body bytes, content type, expected status, words the error must contain): shared by every scoring test
BAD_REQUESTS = [
    ("missing field", json.dumps({k: v for k, v in GOOD.items() if k != "sqft"}).encode(), "application/json", 422,
     ["sqft", "field required"]),
    ("wrong type", json.dumps({**GOOD, "bedrooms": "three"}).encode(), "application/json", 422,
     ["bedrooms", "expected a number"]),
    ("out of range", json.dumps({**GOOD, "sqft": -5}).encode(), "application/json", 422, ["sqft", "must be >= 1"]),
    ("unknown field", json.dumps({**GOOD, "colour": "red"}).encode(), "application/json", 422,
     ["colour", "unknown field"]),
    ("unknown category", json.dumps({**GOOD, "property_type": "castle"}).encode(), "application/json", 422,
     ["property_type", "castle"]),
    ("empty list", b"[]", "application/json", 422, ["empty list"]),
    ("too many rows", json.dumps([GOOD] * 1001).encode(), "application/json", 413, ["at most 1000"]),
    ("invalid JSON", b'{"list_price": 650000,', "application/json", 400, ["invalid JSON"]),
]


@pytest.fixture(autouse=True)
def _mlflow_env_restored():
    """mlflow.set_tracking_uri / set_registry_uri (mlops_nb.tracking calls them in-process) also write MLFLOW_*_URI into
    os.environ, which every later subprocess of the suite would inherit: each test gets them back as they were."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = {k: os.environ.get(k) for k in names}
    yield
    for k, v in before.items():
        if v is None: os.environ.pop(k, None)
        else: os.environ[k] = v


# need a side venv or podman
LATE = ("test_azmlinfsrv.py", "test_checkov.py", "test_azureml_mlflow.py", "test_package.py")
HEAD = 4  # units started before any LATE one: minutes in which `bash scripts/test` builds those in the background

# Seconds each work unit (a file; one notebook of test_notebooks_run_all; the Spark group) took on one worker of
# `bash scripts/test` (2 workers, 2 cores, a quiet machine, commands and kernels forked, one library thread per
# worker: pytest 547 s). Only the order matters; units not listed count as short.
SECONDS = {"test_package.py": 124, "test_library.py": 86, "test_problems.py": 82, "test_training.py": 69,
           "test_pipelines.py": 53, "spark": 41, "test_hardening.py": 39, "test_batch.py": 37, "test_server.py": 36,
           "test_kube.py": 32, "test_boosters.py": 31, "test_databricks.py": 31, "test_docs.py": 31,
           "test_live_traffic.py": 25, "test_servable.py": 20, "17_batch.ipynb": 18, "test_retrain.py": 17,
           "07_serving.ipynb": 17, "03_tracking.ipynb": 17, "test_unity_catalog.py": 16, "test_project.py": 15,
           "test_azureml_mlflow.py": 13, "test_audit.py": 13, "test_cli.py": 13, "test_estimate.py": 12,
           "test_custom_metrics.py": 11, "test_fuzz.py": 10, "16_scaffold.ipynb": 10, "test_bundle.py": 9,
           "test_zygote.py": 9, "06_cli.ipynb": 8, "test_checkov.py": 7, "test_gates.py": 7,
           "08a_inference_log.ipynb": 7, "04_train.ipynb": 6, "test_names.py": 6, "test_report.py": 6,
           "08_server.ipynb": 5, "12a_pipeline_run.ipynb": 5, "05_runner.ipynb": 5}


# as xdist reads it
def _group_name(mark): return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))


# pytest-xdist 3.8's loadgroup passes each test's group to its scheduler by appending "@group" to the test's nodeid,
# which pytest 9.2 no longer lets a plugin change (pytest-xdist#1386): every test became its own unit, so a file's tests
# ran on both workers and each worker set up the file's module fixtures again (the same models trained twice, two JVMs).
# So the workers write each test's unit to a file the controller names, and the scheduler below reads the units from
# there.
UNITS = "TEST_UNITS_FILE"  # environment variable: that file's path (not MLOPS_NB_*: no setting of the toolkit)


WHEELS = "MLOPS_NB_WHEEL_CACHE"  # one wheel cache for every state folder of the run (pip builds mlops_nb's once)


def pytest_configure(config):
    ("On the controller (or the only process): one wheel cache for the whole run; on the xdist controller of a "
     "loadgroup run, the file the workers will write the units to (the workers inherit both variables).")
    if hasattr(config, "workerinput"): return
    config._mlops_nb_started = int(time.time())
    if not os.environ.get(WHEELS):
        os.environ[WHEELS] = config._mlops_nb_wheels = tempfile.mkdtemp(prefix="mlops-nb-wheels-")
    if getattr(config.option, "dist", "no") == "loadgroup":
        os.environ[UNITS] = str(Path(tempfile.mkdtemp(prefix="mlops-nb-units-"))/"units.json")


def pytest_unconfigure(config):
    "The controller removes the units' folder and the wheel cache it made, and the images the run built."
    if hasattr(config, "workerinput"): return
    if os.environ.get(UNITS): shutil.rmtree(Path(os.environ.pop(UNITS)).parent, ignore_errors=True)
    if getattr(config, "_mlops_nb_wheels", None): shutil.rmtree(os.environ.pop(WHEELS), ignore_errors=True)
    _remove_images_built_since(config._mlops_nb_started)


# what the run's images carry (`package.write_context`); the base image and anything not built by mlops-nb do not
IMAGE_SOURCE = "org.opencontainers.image.source=mlops_nb"
_REMOVE_IMAGES = f"""
import sys, docker
client = docker.DockerClient(base_url=sys.argv[1], timeout=120)
for i in client.api.images(filters={{"label": {IMAGE_SOURCE!r}}}):
    if i["Created"] >= int(sys.argv[2]):
        try: client.api.remove_image(i["Id"], force=True)
        except docker.errors.APIError: pass
"""


def container_services(action:str, timeout:float=1500)->tuple:
    "Run `scripts/containers ACTION` (up, env); return its CompletedProcess and the variables its `export` lines set."
    p = subprocess.run(["bash", str(ROOT/"scripts"/"containers"), action], capture_output=True, text=True,
                       timeout=timeout)
    env = {}
    for line in p.stdout.splitlines():
        if line.startswith("export "):
            env.update(part.split("=", 1) for part in shlex.split(line[len("export "):]) if "=" in part)
    return p, env


def _remove_images_built_since(start:int):
    """Remove the images mlops-nb built in the machine's container engine (scripts/containers) since `start`: a run
    builds a dozen, and podman's builds slow down as its store grows (every build step looks through every image). In
    a process of its own, not waited for: the run's time is not spent on it."""
    p, env = container_services("env", timeout=60)
    if p.returncode != 0: return  # not up: nothing was built
    subprocess.Popen([sys.executable, "-c", _REMOVE_IMAGES, env["DOCKER_HOST"], str(start)], start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # optional: a run with `-p no:xdist` has no such hook
def pytest_xdist_make_scheduler(config, log):
    "loadgroup's scheduler, with each test's unit read from the workers' file (a test not in it: xdist's own reading)."
    if config.getvalue("dist") != "loadgroup": return None
    from xdist.scheduler import LoadGroupScheduling

    class UnitScheduling(LoadGroupScheduling):
        units = None

        def _split_scope(self, nodeid):
            if self.units is None: self.units = json.loads(Path(os.environ[UNITS]).read_text())
            return self.units.get(nodeid) or super()._split_scope(nodeid)
    return UnitScheduling(config, log)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(session, config, items):
    """The order two workers take the work in (`--dist loadgroup --no-loadscope-reorder`; xdist's default reorders by
    test count, which left the 13-minute test_library file for the end). Each file is one unit (an `xdist_group` of
    its name: its module fixtures stay in one process) unless its tests name another group: each notebook of
    test_notebooks_run_all is a unit, and the Spark tests share one, so that one JVM serves them. The longest units
    start first and the short ones fill the end evenly on both workers; the units that need a side venv or the container
    services come after the first HEAD: `bash scripts/test` builds and starts those in the background meanwhile."""
    for item in items:
        if not item.get_closest_marker("xdist_group"): item.add_marker(pytest.mark.xdist_group(item.path.name))
    group = {item: _group_name(item.get_closest_marker("xdist_group")) for item in items}
    units = sorted(dict.fromkeys(group.values()), key=lambda g: -SECONDS.get(g, 0))  # stable: ties keep their order
    late = {item.path.name for item in items if item.path.name in LATE}
    head = [g for g in units if g not in late][:HEAD]
    rank = {g: i for i,
            g in enumerate(head + sorted((g for g in units if g not in head), key=lambda g: -SECONDS.get(g, 0)))}
    items.sort(key=lambda item: rank[group[item]])
    if hasattr(config, "workerinput") and os.environ.get(UNITS):  # for the scheduler: both workers write the same units
        units = Path(os.environ[UNITS])
        part = units.with_name(f"{config.workerinput['workerid']}.json")
        part.write_text(json.dumps({item.nodeid: group[item] for item in items}))
        os.replace(part, units)
