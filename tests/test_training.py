"""The training notebook through the real runner: papermill, a real kernel, MLflow on SQLite."""
import json, os, re, signal, subprocess, sys, time
from pathlib import Path
import pytest
from conftest import CLI, run_cli, cli_json, cli_json_here


def _runs(status=None):
    "Runs of the configured experiment (optionally with `status`)."
    from mlops_nb.tracking import client, experiment_id
    runs = client().search_runs([experiment_id()], max_results=1000)
    return [r for r in runs if status is None or r.info.status == status]


@pytest.fixture(scope="module")
def test_run(state, data_dir):
    "One test-mode run of the training notebook."
    return cli_json("train", "--mode", "test", "--data", data_dir/"2021.parquet", "--quiet")


@pytest.fixture(scope="module")
def full_run(state, data_dir):
    "One full-mode run (3 epochs to keep the suite fast)."
    return cli_json("train", "--mode", "full", "--epochs", "3", "--data", data_dir/"2021.parquet", "--quiet")


def test_test_mode_json_contract(test_run):
    assert {"run_id", "mode", "metrics", "registered_version"} <= set(test_run)
    assert test_run["mode"] == "test" and test_run["registered_version"] is None
    assert set(test_run["metrics"]) == {"accuracy", "roc_auc", "log_loss"}
    assert 0.5 < test_run["metrics"]["roc_auc"] <= 1


def test_test_mode_is_a_seeded_stratified_5pct_sample_and_one_epoch(test_run, data_dir):
    from mlops_nb.data import data_fingerprint
    from mlops_nb.examples.ottawa import PROBLEM
    from mlops_nb.train import sample_rows, train_eval_rows, _fraction_rows, MIN_SAMPLE_PER_CLASS
    table = PROBLEM.load(data_dir/"2021.parquet")
    used = sample_rows(table, PROBLEM, 0.05, 42)  # the seeded fraction plus coverage rows
    assert test_run["train_rows"] + test_run["eval_rows"] == len(used)
    y = PROBLEM.encode(table.iloc[_fraction_rows(table, PROBLEM, 0.05, 42)][PROBLEM.target])
    counts = [int((y == k).sum()) for k in (0, 1)]
    assert min(counts) == MIN_SAMPLE_PER_CLASS and max(counts) == round(
        0.05 * int((PROBLEM.encode(table[PROBLEM.target]) == 1).sum())
    )
    assert test_run["epochs"] == 1
    tr, ev, note = train_eval_rows(table, PROBLEM, 0.05, 42)
    assert test_run["data_fingerprint"] == data_fingerprint(tr)  # the fingerprint of the rows actually used
    assert test_run["eval_fingerprint"] == data_fingerprint(ev)
    assert test_run["sample_note"] == note and note.startswith(f"test mode: {len(y)} sampled rows (0.05 of 4000) + ")
    assert "categories" in note and "min and max" in note, note


def test_run_lineage_and_metrics_are_tracked(test_run):
    from mlops_nb.tracking import client
    c = client()
    r = c.get_run(test_run["run_id"])
    assert r.info.status == "FINISHED"
    t = r.data.tags
    assert t["mlops_nb.mode"] == "test" and t["mlops_nb.notebook"] == "nbs/train.ipynb"
    assert re.fullmatch(r"[0-9a-f]{40}|unknown",
                        t["mlops_nb.git_commit"]) and t["mlops_nb.git_dirty"] in ("true", "false", "unknown")
    assert t["mlops_nb.data_fingerprint"] == test_run["data_fingerprint"]
    assert t["mlops_nb.eval_fingerprint"] == test_run["eval_fingerprint"]
    assert r.data.params["mode"] == "test" and r.data.params["sample_frac"] == "0.05" and r.data.params["epochs"] == "1"
    assert r.data.params["seed"] == "42" and r.data.params["data_path"].endswith("2021.parquet")
    for m in ("train_loss", "val_accuracy", "val_roc_auc", "val_log_loss"):
        assert [h.step for h in c.get_metric_history(r.info.run_id, m)] == [1], m
    assert r.data.metrics["roc_auc"] == pytest.approx(test_run["metrics"]["roc_auc"])


def test_executed_notebook_is_kept_and_logged(test_run):
    from mlops_nb.tracking import client
    import nbformat
    nb = nbformat.read(test_run["output_notebook"], as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and 'mode = "test"' in injected[0].source and test_run["run_id"] in injected[0].source
    assert [a.path for a in client().list_artifacts(test_run["run_id"], "notebook")] == ["notebook/train.ipynb"]


def test_model_logged_with_signature_and_pinned_requirements(test_run):
    import mlflow
    from mlops_nb.tracking import client, experiment_id
    from mlops_nb.examples.ottawa import PROBLEM
    from mlops_nb.train import MODEL_PACKAGES
    models = client().search_logged_models([experiment_id()], filter_string=f"source_run_id = '{test_run['run_id']}'")
    assert len(models) == 1
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=models[0].artifact_location))
    info = mlflow.models.Model.load(local/"MLmodel")
    # the raw inputs: the model is the API
    assert [s.name for s in info.signature.inputs.inputs] == list(PROBLEM.inputs)
    assert info.metadata["mlops_nb"]["problem"] == "ottawa-housing"
    reqs = (local/"requirements.txt").read_text().split()
    for p in MODEL_PACKAGES: assert any(r.startswith(f"{p}==") for r in reqs), (p, reqs)


def test_test_mode_run_cannot_register(test_run):
    from mlops_nb.core import RegistrationRefused
    from mlops_nb.tracking import client, experiment_id, register_model, list_versions
    model = client().search_logged_models([experiment_id()], filter_string=f"source_run_id = '{test_run['run_id']}'")[0]
    with pytest.raises(RegistrationRefused, match="test-mode run: only full-mode runs register"):
        register_model(test_run["run_id"], model.model_uri)
    assert [v.run_id for v in list_versions() if v.run_id == test_run["run_id"]] == []


def test_full_mode_registers_a_version(full_run, data_dir):
    from mlops_nb.tracking import client, list_versions
    import mlflow
    assert full_run["mode"] == "full" and isinstance(full_run["registered_version"], int)
    assert full_run["train_rows"] + full_run["eval_rows"] == 4000 and full_run["epochs"] == 3
    v = {x.version: x for x in list_versions()}[full_run["registered_version"]]
    assert v.run_id == full_run["run_id"] and v.eval_fingerprint == full_run["eval_fingerprint"]
    assert v.metrics["roc_auc"] == pytest.approx(full_run["metrics"]["roc_auc"])
    assert [h.step for h in client().get_metric_history(full_run["run_id"], "train_loss")] == [1, 2, 3]
    # the registered model takes raw records and returns the probability of each class
    from mlops_nb.examples.ottawa import PROBLEM
    raw = PROBLEM.load(data_dir/"2021.parquet", require_label=False).head(5)
    out = mlflow.pyfunc.load_model(v.uri).predict(
        raw.assign(listing_date=raw.listing_date.dt.strftime("%Y-%m-%d"))[list(PROBLEM.inputs)]
    )
    assert out.shape == (5, 2) and abs(out.sum(1) - 1).max() < 1e-9


def test_monitor_needs_no_reference_data_after_a_full_run(full_run, data_dir, tmp_path):
    """The run logged the reference profile of its training rows: `monitor --model VERSION` without --reference gives
    the verdict that --reference with those same rows gives (issue 17, item 1); a run without a profile: one line."""
    from mlops_nb.data import write_table
    from mlops_nb.examples.ottawa import PROBLEM
    from mlops_nb.train import train_eval_rows
    v = str(full_run["registered_version"])
    train_df, _, _ = train_eval_rows(PROBLEM.load(data_dir/"2021.parquet"), PROBLEM, 1, 42)  # the run's training rows
    write_table(train_df, tmp_path/"train.parquet")
    for current in ("2023.parquet", "2021.parquet"):
        rows = cli_json("monitor", "--model", v, "--reference", tmp_path/"train.parquet", "--current", data_dir/current)
        prof = cli_json("monitor", "--model", v, "--current", data_dir/current)
        assert prof["rows"] == rows["rows"] and (prof["drift"], prof["drifted"]) == (rows["drift"], rows["drifted"])
        for c, f in rows["features"].items():
            assert (
                abs(f["psi"] - prof["features"][c]["psi"]) < 1e-6 and f["reasons"] == prof["features"][c]["reasons"]
            ), c
    from mlops_nb.tracking import client, experiment_id
    bare = client().create_run(experiment_id()).info.run_id  # as a version from before profiles would have
    from mlops_nb.reference import run_profile
    assert run_profile(bare) is None
    p = run_cli("monitor", "--current", data_dir/"2023.parquet")
    assert p.returncode == 2 and "pass --reference DATA" in p.stderr and "Traceback" not in p.stderr


def test_select_and_promote_through_cli(full_run, data_dir):
    "The models commands in this process (the executable runs them in test_versions_on_other_data_are_not_compared, "
    "test_gates and test_cli); the training, and the refused promotion's one line and exit code, in its own."
    second = cli_json("train", "--mode", "full", "--epochs", "1", "--seed", "7", "--data", data_dir/"2021.parquet",
                      "--quiet")
    assert second["eval_fingerprint"] == full_run["eval_fingerprint"]  # same data, fixed hold-out: comparable
    listed = cli_json_here("models", "list")
    assert [x["version"] for x in listed][:2] == [second["registered_version"], full_run["registered_version"]]
    best = cli_json_here("models", "best", "--metric", "roc_auc")
    want = max([full_run, second], key=lambda r: r["metrics"]["roc_auc"])
    assert best["version"] == want["registered_version"] and best["value"] == pytest.approx(want["metrics"]["roc_auc"])
    low = cli_json_here("models", "best", "--metric", "log_loss", "--lower-is-better")
    assert low["version"] == min([full_run, second], key=lambda r: r["metrics"]["log_loss"])["registered_version"]
    out = cli_json_here("models", "promote", best["version"], "--alias", "champion")
    assert out == {"alias": "champion", "version": best["version"], "previous": None, "forced": False}
    assert {x["version"]: x["aliases"] for x in cli_json_here("models", "list")}[best["version"]] == ["champion"]
    p = run_cli("models", "promote", "999")
    assert p.returncode == 2 and "has no version 999" in p.stderr


def test_versions_on_other_data_are_not_compared(full_run, data_dir):
    other = cli_json("train", "--mode", "full", "--epochs", "1", "--data", data_dir/"2023.parquet", "--quiet")
    best = cli_json("models", "best", "--metric", "roc_auc")  # default: the latest version's evaluation data
    assert best["version"] == other["registered_version"] and best["compared"] == [other["registered_version"]]
    assert "evaluated on different data" in best["skipped"][str(full_run["registered_version"])]
    text = run_cli("models", "best", "--metric", "roc_auc", "--eval-fingerprint", full_run["eval_fingerprint"]).stdout
    assert "not compared" in text and f"v{other['registered_version']} (evaluated on different data" in text


def test_two_full_runs_at_once_both_register(state, data_dir):
    args = [CLI, "train", "--mode", "full", "--epochs", "1", "--data", str(data_dir/"2021.parquet"), "--quiet",
            "--json"]
    procs = [subprocess.Popen(args + ["--seed", str(s)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for s in (11, 12)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    res = [json.loads(o[0]) for o in outs]
    versions = {r["registered_version"] for r in res}
    assert len(versions) == 2
    from mlops_nb.tracking import list_versions
    by_version = {v.version: v.run_id for v in list_versions()}
    for r in res: assert by_version[r["registered_version"]] == r["run_id"]


def test_failing_cell_fails_the_run(tmp_path, state):
    from mlops_nb.data import write_table
    from mlops_nb.examples.ottawa import generate_listings
    from mlops_nb.tracking import client
    write_table(generate_listings(2021, 12, seed=0), tmp_path/"tiny.parquet")  # valid file, too few rows to train
    before = {r.info.run_id for r in _runs()}
    p = run_cli("train", "--mode", "full", "--data", tmp_path/"tiny.parquet", "--quiet")
    assert p.returncode == 1, p.stderr
    err = [l for l in p.stderr.splitlines() if l.startswith("error:")]
    assert (
        len(err) == 1
        and "code cell 3 (`from mlops_nb.data import data_fingerprint" in err[0]
        and "too few to train" in err[0]
    )
    new = [r for r in _runs() if r.info.run_id not in before]
    assert len(new) == 1 and new[0].info.status == "FAILED"
    assert "too few to train" in new[0].data.tags["mlops_nb.error"]
    kept = Path(err[0].split("executed notebook kept at ")[1])
    assert kept.exists() and kept.parent.name == new[0].info.run_id
    assert [a.path for a in client().list_artifacts(new[0].info.run_id, "notebook")] == ["notebook/train.ipynb"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_marks_the_run_failed(sig, state, data_dir):
    before = {r.info.run_id for r in _runs()}
    p = subprocess.Popen([CLI, "train", "--mode", "full", "--epochs", "500", "--data", str(data_dir/"2021.parquet"),
                          "--quiet"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until the notebook is training (its run is RUNNING and its notebook written)
        new = [r for r in _runs("RUNNING") if r.info.run_id not in before]
        if new and any((state/"runs"/new[0].info.run_id).glob("*.ipynb")): break
        time.sleep(0.3)
    else: pytest.fail("training did not start")
    time.sleep(3)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted: the run was marked FAILED" in err
    run = [r for r in _runs() if r.info.run_id not in before]
    assert len(run) == 1 and run[0].info.status == "FAILED" and run[0].data.tags["mlops_nb.error"] == "interrupted"
    assert (state/"runs"/run[0].info.run_id/"train.ipynb").exists()


GAPPY = """
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from mlops_nb.data import ColumnSpec
from mlops_nb.problem import Problem
INPUTS = {"a": ColumnSpec("float", nullable=True), "b": ColumnSpec("float"), "colour": ColumnSpec("str")}
NO_IMPUTER = Problem("gappy", INPUTS, "y", "binary", classes=[0, 1], estimator=lambda seed: LogisticRegression())
IMPUTED = Problem("gappy", INPUTS, "y", "binary", classes=[0, 1],
                  estimator=lambda seed: make_pipeline(SimpleImputer(), LogisticRegression()))
"""


@pytest.fixture(scope="module")
def gappy(tmp_path_factory):
    "A project folder with 2 000 rows, 1% of them with a null in column `a`, and two problems over them."
    import numpy as np, pandas as pd
    d = tmp_path_factory.mktemp("gappy")
    (d/"gappy_problem.py").write_text(GAPPY)
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.normal(size=2000), "b": rng.normal(size=2000),
                       "colour": rng.choice(["red", "green"], 2000)})
    df.loc[rng.choice(2000, 20, replace=False), "a"] = np.nan
    df["y"] = (df.b + rng.normal(scale=0.5, size=2000) > 0).astype(int)
    df.to_csv(d/"gappy.csv", index=False)
    return d


@pytest.mark.parametrize("ref", ["NO_IMPUTER", "IMPUTED"])
def test_test_mode_sees_the_nulls_a_full_run_sees(gappy, state, ref):
    "The pull-request check fails like the full run would for a model that cannot take NaN, and passes with an imputer."
    env = {**os.environ, "MLOPS_NB_PROBLEM": f"gappy_problem:{ref}",
           "PYTHONPATH": os.pathsep.join(p for p in (str(gappy), os.environ.get("PYTHONPATH")) if p)}
    p = run_cli("train", "--mode", "test", "--data", gappy/"gappy.csv", "--quiet", env=env)
    if ref == "NO_IMPUTER":
        assert p.returncode == 1 and "raised ValueError: Input X contains NaN" in p.stderr, p.stderr
        return
    assert p.returncode == 0, p.stderr
    assert p.stderr.startswith("training in test mode (a seeded 0.05 sample with floors, plus coverage rows; 1 epoch) ")
    note = p.stdout.splitlines()[0]  # then the run's result
    assert re.match(r"test mode: \d+ sampled rows \(0\.05 of 2000\) \+ \d+ added so training sees", note), p.stdout
    assert "missing values (3 rows)" in note and "categories (2 rows)" in note, note
    lines = [l for l in (p.stderr + p.stdout).splitlines() if l.strip()]
    assert not [l for l in lines if "ERROR" in l], lines  # no kernel noise after a successful run
    assert len(lines) == len(set(lines)), lines  # nothing printed twice


SLOW_KERNEL_INFO = """import time
kernel = get_ipython().kernel
reply = kernel.shell_handlers["kernel_info_request"]
async def slow_kernel_info(*a):
    await reply(*a)
    time.sleep(2)  # still in the handler after the reply, as a busy machine may be
kernel.shell_handlers["kernel_info_request"] = slow_kernel_info"""


def test_a_successful_run_ends_without_a_kernel_error(tmp_path):
    """jupyter_client interrupts every kernel it shuts down; papermill's last request is kernel_info, so a kernel still
    in
    that handler logs `[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel.` at the end of a successful run. The
    runner's child shuts its kernel down without the interrupt (plain papermill shows the line: the test can fail)."""
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(SLOW_KERNEL_INFO)],
                                  metadata={"kernelspec": {"name": "python3", "display_name": "python3",
                                                           "language": "python"}})
    nbformat.write(nb, tmp_path/"in.ipynb")
    args = {"input": str(tmp_path/"in.ipynb"), "output": str(tmp_path/"out.ipynb"), "parameters": {},
            "cwd": str(tmp_path),
            "parent": os.getpid(), "progress": False}
    child = subprocess.run([sys.executable, "-c", "from mlops_nb.runner import _execute_child; _execute_child()"],
                           input=json.dumps(args) + "\n", capture_output=True, text=True, timeout=120)
    assert (
        child.returncode == 0 and "KeyboardInterrupt" not in child.stderr and "ERROR" not in child.stderr
    ), child.stderr
    plain = subprocess.run([str(Path(sys.executable).parent/"papermill"), tmp_path/"in.ipynb", tmp_path/"plain.ipynb",
                            "--no-progress-bar"], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0 and "KeyboardInterrupt caught in kernel" in plain.stderr, plain.stderr
