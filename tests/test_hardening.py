"""Findings of the security and reliability audit (the hardening issue), each reproduced as it was found:
code execution and wrong models through the admin API, a cache that served another store's model, deleted user
folders, and training runs left behind by killed processes."""
import json, os, pickle, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest, yaml
from conftest import CLI, ROOT, GOOD, run_cli, cli_json, running, save_model
from test_server import Server, ADMIN


def _admin(server, body, token=ADMIN):
    "(status, body) of POST /admin/model with raw bytes or a JSON-able body."
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return server.request("POST", "/admin/model", data,
                          {"authorization": f"Bearer {token}", "content-type": "application/json"})[:2]


class _Exploit:
    "A pickle that runs a shell command when it is loaded."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    "The folder the test server allows model folders from (MLOPS_NB_MODEL_ROOTS)."
    return tmp_path_factory.mktemp("allowed")


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_dir, roots, state):
    s = Server(tmp_path_factory.mktemp("srv"), "--model", model_dir,
               env={"MLOPS_NB_ADMIN_TOKEN": ADMIN, "MLOPS_NB_MODEL_ROOTS": str(roots)})
    yield s
    s.stop()


def _still_serving_v1(server):
    assert server.get("/ready") == (200, {"ready": True})
    assert server.get("/version")[1]["version"] == "1"
    assert server.score(GOOD)[0] == 200


def test_a_crafted_pickle_folder_runs_nothing(server, model_dir, roots, tmp_path):
    "Finding 1: a folder whose MLmodel points at a pickle made the server run a shell command."
    bad = roots/"pickled"
    shutil.copytree(model_dir, bad)
    marker = tmp_path/"pwned"
    (bad/"model.pkl").write_bytes(pickle.dumps(_Exploit(marker)))
    meta = yaml.safe_load((bad/"MLmodel").read_text())
    meta["flavors"]["sklearn"].update(pickled_model="model.pkl", serialization_format="cloudpickle")
    (bad/"MLmodel").write_text(yaml.safe_dump(meta))
    st, body = _admin(server, {"model": str(bad), "wait": True})
    assert st == 409 and "loads only skops-serialised models" in json.dumps(body), body
    time.sleep(0.5)
    assert not marker.exists()
    _still_serving_v1(server)


def test_types_trusted_by_the_folder_itself_are_not_trusted(server, model_dir, roots):
    "Finding 1: the skops trusted types were read from the model folder's own MLmodel file."
    import skops.io
    from sklearn.preprocessing import FunctionTransformer
    bad = roots/"skops-system"
    shutil.copytree(model_dir, bad)
    skops.io.dump(FunctionTransformer(os.system), bad/"model.skops")
    meta = yaml.safe_load((bad/"MLmodel").read_text())
    meta["flavors"]["sklearn"]["skops_trusted_types"] = ["posix.system", "builtins.eval"]
    (bad/"MLmodel").write_text(yaml.safe_dump(meta))
    st, body = _admin(server, {"model": str(bad), "wait": True})
    assert st == 409 and "types mlops_nb does not trust: posix.system" in json.dumps(body), body
    _still_serving_v1(server)


def test_only_registry_references_and_folders_under_the_roots(server, model_dir_v2, roots, tmp_path):
    "Finding 1: any filesystem path was loaded."
    for ref, words in [(str(model_dir_v2), "not under an allowed root"), ("../../etc", "neither a registry reference"),
                       ("/etc", "not under an allowed root"), ("", "non-empty string"), ("x" * 2000, "at most 1024")]:
        st, body = _admin(server, {"model": ref, "wait": True})
        assert st == 422 and words in json.dumps(body), (ref, body)
    link = roots/"link-out"
    link.symlink_to(model_dir_v2)  # inside the root by name, outside by target
    st, body = _admin(server, {"model": str(link), "wait": True})
    assert st == 422 and "not under an allowed root" in json.dumps(body), body
    _still_serving_v1(server)


def test_a_folder_that_is_no_fitting_model_is_refused(server, roots, tmp_path):
    "Finding 1: a folder that was no model was swapped in; valid requests then failed while /ready said 200."
    empty = roots/"empty"
    empty.mkdir()
    st, body = _admin(server, {"model": str(empty), "wait": True})
    assert st == 409 and "no MLmodel file" in json.dumps(body), body
    plain = roots/"plain-mlflow"  # a real MLflow model that does not declare its API
    import mlflow, numpy as np, pandas as pd
    from sklearn.linear_model import LogisticRegression
    X = pd.DataFrame({"a": np.arange(20.0), "b": np.arange(20.0) % 3})
    mlflow.sklearn.save_model(LogisticRegression().fit(X, np.arange(20) % 2), str(plain), serialization_format="skops",
                              input_example=X.head(3), pip_requirements=["scikit-learn"])
    st, body = _admin(server, {"model": str(plain), "wait": True})
    assert st == 409 and "records no problem" in json.dumps(body), body
    from mlops_nb.examples.sklearn_tables import BREAST_CANCER, table
    other = roots/"other-problem"  # a real mlops_nb model of another problem: it would take other requests
    save_model(other, problem=BREAST_CANCER, data=table(BREAST_CANCER))
    st, body = _admin(server, {"model": str(other), "wait": True})
    assert st == 409 and "takes other requests than the served one" in json.dumps(body), body
    _still_serving_v1(server)


def test_admin_body_limits_and_shape(server):
    "Finding 13: an admin body over 64 KiB was read as {} and swapped to the champion."
    st, body = _admin(server, b'{"model": "' + b"x" * 70000 + b'"}')
    assert st == 413, body
    for bad in (b"{}", b"[]", b'{"model": 3}', b'{"model": "champion", "extra": 1}', b"not json"):
        assert _admin(server, bad)[0] == 400, bad
    assert _admin(server, {"model": "champion"}, token=ADMIN + "x")[0] == 401
    _still_serving_v1(server)


def test_an_allowed_folder_swaps(server, model_dir_v2, roots):
    ok = roots/"v2"
    shutil.copytree(model_dir_v2, ok)
    st, body = _admin(server, {"model": str(ok), "wait": True})
    assert st == 200 and body["serving"]["version"] == "2", body
    assert server.get("/version")[1]["version"] == "2"


def _register(store, rows, seed):
    "Register one full-mode model version in the SQLite store `store`; return its run id."
    import mlflow
    from mlops_nb import tracking
    from mlops_nb.params import make_params
    os.environ["MLOPS_NB_TRACKING_URI"] = f"sqlite:///{store}"
    tracking._clients.clear()
    rid = tracking.create_run(make_params(mode="full"), "nbs/train.ipynb")
    d = Path(str(store) + "-model")
    save_model(d, rows=rows, seed=seed)
    with mlflow.start_run(run_id=rid): mlflow.log_artifacts(str(d), "model")
    tracking.register_model(rid, f"runs:/{rid}/model")
    return rid


def test_the_model_cache_is_keyed_by_store_and_checked(state, tmp_path, monkeypatch):
    "Finding 2: with the same state folder and another tracking store, the other store's cached v1 was served."
    from mlops_nb import tracking
    from mlops_nb.serving import load_runtime, ModelLoadError
    monkeypatch.setenv("MLOPS_NB_TRACKING_URI", "")
    try:
        a = _register(tmp_path/"a.db", 800, 1)
        b = _register(tmp_path/"b.db", 900, 2)
        os.environ["MLOPS_NB_TRACKING_URI"] = f"sqlite:///{tmp_path/'a.db'}"
        tracking._clients.clear()
        ra = load_runtime("models:/ottawa-housing-classifier/1")
        os.environ["MLOPS_NB_TRACKING_URI"] = f"sqlite:///{tmp_path/'b.db'}"
        tracking._clients.clear()
        rb = load_runtime("models:/ottawa-housing-classifier/1")
        assert (ra.info.run_id, rb.info.run_id) == (a, b) and ra.model_dir != rb.model_dir
        # a cache folder that does not hold what the registry says is refused, not served
        meta = json.loads((rb.model_dir/"mlops_nb_model.json").read_text())
        (rb.model_dir/"mlops_nb_model.json").write_text(json.dumps({**meta, "run_id": a}))
        with pytest.raises(ModelLoadError, match="delete that folder and retry"):
            load_runtime("models:/ottawa-housing-classifier/1")
    finally:
        os.environ.pop("MLOPS_NB_TRACKING_URI", None)
        tracking._clients.clear()


def test_context_only_never_deletes_a_user_folder(state, model_dir, tmp_path):
    "Finding 3: `package --context-only DIR` deleted an existing DIR, even when the command then failed."
    mine = tmp_path/"mine"
    mine.mkdir()
    (mine/"notes.txt").write_text("keep me")
    p = run_cli("package", "--model", model_dir, "--context-only", mine)
    assert (
        p.returncode == 2 and "non-empty folder that mlops-nb did not write" in p.stderr and "Traceback" not in p.stderr
    )
    assert (mine/"notes.txt").read_text() == "keep me"
    p = run_cli("package", "--model", tmp_path/"no-such-model", "--context-only", mine)  # a failing command
    assert p.returncode == 2 and (mine/"notes.txt").read_text() == "keep me"
    out = tmp_path/"ctx"
    first = cli_json("package", "--model", model_dir, "--context-only", out)
    assert (out/"Dockerfile").exists() and (out/".mlops-nb-context").exists()
    cli_json("package", "--model", model_dir, "--context-only", out)  # its own earlier context: replaced
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in Path(first["context"]).iterdir())
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name or ".old" in p.name]  # nothing left aside


def test_the_wheel_build_leaves_the_project_alone(state, tmp_path, monkeypatch):
    "Finding 3: building the mlops_nb wheel deleted <project>/build."
    from mlops_nb import package
    build = ROOT/"build"
    existed = build.exists()
    build.mkdir(exist_ok=True)
    (build/"user-file.txt").write_text("keep me")
    # Other test workers run git in this checkout (its index is refreshed) and write pytest's cache and side venvs
    # at the same time; those entries are not the wheel build's doing, everything else must stay untouched.
    concurrent = {".git", ".pytest_cache"}
    def snapshot(): return {p.name: p.stat().st_mtime_ns for p in ROOT.iterdir()
                            if p.name not in concurrent and not p.name.startswith(".venv-")}
    before = snapshot()
    try:
        monkeypatch.setenv("MLOPS_NB_HOME", str(tmp_path/"home"))
        monkeypatch.delenv("MLOPS_NB_WHEEL_CACHE", raising=False)  # a build, not the suite's cached wheel
        wheels = package.own_wheel()
        assert list(wheels.glob("mlops_nb-*.whl"))
        assert (build/"user-file.txt").read_text() == "keep me" and sorted((build).iterdir()) == [build/"user-file.txt"]
        assert snapshot() == before  # nothing written into the project
    finally:
        (build/"user-file.txt").unlink()
        if not existed: build.rmdir()


# Finding 4: processes and runs left behind

def _runs(status=None):
    from mlops_nb.tracking import client, experiment_id
    return [r for r in client().search_runs([experiment_id()], max_results=1000) if status is None
            or r.info.status == status]


def _wait(cond, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v: return v
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def _descendants(pid):
    "Pids of every living descendant of process `pid`."
    kids = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try: kids.setdefault(int((p/"stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(int(p.name))
            except (OSError, ValueError, IndexError): pass
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def _cmdline(pid)->bytes:
    try: return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError: return b""


class Training:
    "A long full-mode `mlops-nb train` whose processes are all killed at the end, whatever happens."
    def __init__(self, state, data, **popen):
        self.before, self._err = {r.info.run_id for r in _runs()}, None
        self.p = subprocess.Popen([CLI, "train", "--mode", "full", "--epochs", "500", "--data", str(data), "--quiet"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
        self.run = _wait(lambda: next((r for r in _runs("RUNNING") if r.info.run_id not in self.before
                                       and any((state/"runs"/r.info.run_id).glob("*.ipynb"))), None), 120,
                         "training to start")
        time.sleep(3)
        self.tree = _descendants(self.p.pid)  # papermill's process and the kernel
        self.kernels = [pid for pid in self.tree if b"ipykernel_launcher" in _cmdline(pid)]

    def status(self):
        from mlops_nb.tracking import client
        return client().get_run(self.run.info.run_id).info.status

    def alive(self): return [pid for pid in self.tree if running(pid)]

    def cleanup(self):
        for pid in self.alive():
            try: os.kill(pid, signal.SIGKILL)
            except ProcessLookupError: pass
        if self.p.poll() is None: self.p.kill()
        self.stderr()

    def stderr(self)->str:
        "What the CLI and its papermill child wrote to stderr (read once every process has ended)."
        if self._err is None: self._err = self.p.communicate(timeout=30)[1]
        return self._err


def test_kill_9_of_the_cli_stops_the_notebook_and_fails_its_run(state, data_dir, real_kernels):
    from mlops_nb.tracking import client, list_versions
    versions = len(list_versions())
    t = Training(state, data_dir/"2021.parquet")
    try:
        assert len(t.alive()) >= 2 and t.kernels  # papermill and the kernel (started afresh: `real_kernels`)
        t.p.send_signal(signal.SIGKILL)
        _wait(lambda: not t.alive(), 60, "papermill and the kernel to exit")
        # the papermill child's own words when it did not mark the run (it writes to the CLI's stderr)
        assert t.status() == "FAILED", t.stderr()[-3000:]
        tags = client().get_run(t.run.info.run_id).data.tags
        assert "the runner" in tags["mlops_nb.error"] and "died" in tags["mlops_nb.error"]
        assert [a.path for a in client().list_artifacts(t.run.info.run_id, "notebook")] == ["notebook/train.ipynb"]
        assert len(list_versions()) == versions  # nothing registered
    finally: t.cleanup()


def test_killing_the_whole_tree_leaves_a_run_that_sweep_fails(state, data_dir, real_kernels):
    t = Training(state, data_dir/"2021.parquet")
    try:
        for pid in [t.p.pid, *t.alive()]: os.kill(pid, signal.SIGKILL)
        _wait(lambda: not t.alive(), 30, "every process to exit")
        assert t.status() == "RUNNING"  # nobody was left to mark it
        out = cli_json("runs", "sweep", "--dry-run")
        assert [r["run_id"] for r in out] == [t.run.info.run_id] and t.status() == "RUNNING"
        out = cli_json("runs", "sweep")
        assert [r["run_id"] for r in out] == [t.run.info.run_id] and "is gone" in out[0]["why"]
        assert t.status() == "FAILED"
        assert cli_json("runs", "sweep") == []
    finally: t.cleanup()


def test_sigint_stops_a_cli_started_with_sigint_ignored(state, data_dir, real_kernels):
    "A background job of a non-interactive shell (a CI agent) inherits SIGINT ignored."
    t = Training(state, data_dir/"2021.parquet", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        t.p.send_signal(signal.SIGINT)
        _, err = t.p.communicate(timeout=60)
        assert t.p.returncode == 130 and "interrupted: the run was marked FAILED" in err, err
        assert t.status() == "FAILED"
        _wait(lambda: not t.alive(), 30, "papermill and the kernel to exit")
    finally: t.cleanup()


def test_a_notebook_run_by_papermill_itself_fails_its_run(state, tmp_path):
    "Finding 11: the training notebook run with papermill's own CLI left a failing run FINISHED."
    import nbformat
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "python3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell('mode = "full"'),
                nbformat.v4.new_code_cell("from mlops_nb.params import read_params\nfrom "
                                          "mlops_nb.tracking import start_notebook_run\n"
                                          "params = read_params(globals())\nrun = "
                                          "start_notebook_run(params, 'by-hand.ipynb')\n"
                                          "open('run_id.txt', 'w').write(run.info.run_id)"),
                nbformat.v4.new_code_cell("raise RuntimeError('the data went away')")]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, tmp_path/"by-hand.ipynb")
    # outside the project: name its problem
    env = {**os.environ, "MLOPS_NB_PROBLEM": "mlops_nb.examples.ottawa:PROBLEM"}
    p = subprocess.run([str(Path(sys.executable).parent/"papermill"), "by-hand.ipynb", "out.ipynb",
                        "--no-progress-bar"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 1 and (tmp_path/"run_id.txt").exists(), p.stderr[-3000:]
    from mlops_nb.tracking import client
    r = client().get_run((tmp_path/"run_id.txt").read_text())
    assert r.info.status == "FAILED" and "the data went away" in r.data.tags["mlops_nb.error"]


# Finding 6 (slow and oversized clients) and the second audit's idle connections: tests/test_audit.py, on its server
