"""Audit finding 11 for every library notebook: "Run All", papermill and nbconvert ignore nbdev's `#| eval: false` and
`tst_flags`, so a cell that deploys or calls a cloud must be harmless when executed anyway.

Every library notebook (the ones that export modules: `nbs/[0-9]*.ipynb` and `nbs/examples/`) is executed here with
nbconvert, every cell including the ones nbdev-test skips, while each place a cell could reach for "the configured
cloud" points at a recorder: the kubeconfig's every context and the Databricks config file's DEFAULT profile (the
local container engine is left as it is: it is no cloud, and nbdev-test meets it the same way). The recorder must see
no request at all. A control first proves each of them is wired (a client built from
the same configuration does reach the recorder), so the main assertion can fail.

The notebooks whose cells start a local Spark session (14a_drift_spark, 17_batch) run every cell the same way but in
this process (execnb's shell, as nbdev-test runs notebooks, with nothing skipped), on the suite's one shared Spark
session: no kernel and no JVM of their own (a JVM start and cold Python workers cost each of them tens of seconds)."""
import os, subprocess, sys
from types import SimpleNamespace

import pytest
nbformat = pytest.importorskip("nbformat")
from nbconvert.preprocessors import ExecutePreprocessor
from conftest import ROOT, Recorder
from spark_fixtures import spark  # noqa: F401 (the shared session fixture)

LIBRARY_NBS = sorted((ROOT/"nbs").glob("[0-9]*.ipynb")) + sorted((ROOT/"nbs"/"examples").glob("*.ipynb"))


def starts_spark(nb):
    "Whether a code cell of notebook `nb` starts a local Spark session."
    return any('spark_session("local' in c.source for c in nbformat.read(nb, as_version=4).cells
               if c.cell_type == "code")


SPARK_NBS = {nb for nb in LIBRARY_NBS if starts_spark(nb)}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    "A recorder on loopback (`seen`) and the environment (`env`) that sends Kubernetes and Databricks clients to it."
    rec, d = Recorder(), tmp_path_factory.mktemp("clouds")
    (d/"databrickscfg").write_text(f"[DEFAULT]\nhost = {rec.url}\ntoken = dapi-recorder\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABRICKS_", "ARM_", "AZURE_", "MLFLOW_", "MLOPS_NB_"))}
    env.update(KUBECONFIG=str(rec.kubeconfig(d/"kubeconfig", ("prod", "staging", "dev"))),
               DATABRICKS_CONFIG_FILE=str(d/"databrickscfg"),
               AZURE_CONFIG_DIR=str(d/"azure"), MLOPS_NB_HOME=str(d/"state"))
    yield SimpleNamespace(env=env, seen=rec.seen)
    rec.close()


def test_the_recorders_are_what_clients_would_call(cloud):
    "The control: a Kubernetes and a Databricks client built from this environment each reach the recorder."
    code = """
import contextlib
with contextlib.suppress(Exception):
    from kubernetes import client, config; config.load_kube_config(); client.CoreV1Api().list_namespace()
with contextlib.suppress(Exception):
    from databricks.sdk import WorkspaceClient; WorkspaceClient().clusters.list().__next__()
"""
    cloud.seen.clear()
    subprocess.run([sys.executable, "-c", code], env=cloud.env, capture_output=True, text=True, timeout=300, check=True)
    paths = [p for _, p in cloud.seen]
    assert any(p.startswith("/api/v1/namespaces") for p in paths), paths
    assert any("/api/2." in p for p in paths), paths


def test_the_spark_notebooks_are_found():
    "The in-process route below is taken by the notebooks that start Spark, and only by them."
    assert sorted(nb.name for nb in SPARK_NBS) == ["14a_drift_spark.ipynb", "17_batch.ipynb"]


def run_in_this_process(nb, monkeypatch):
    "Execute every cell of notebook `nb` here, in its folder, as a kernel would; raise what a cell raises."
    from execnb.shell import CaptureShell
    from fastcore.nbio import read_nb
    from IPython.core.interactiveshell import InteractiveShell
    from mlops_nb import tracking
    monkeypatch.chdir(nb.parent)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the shell adds the notebook's folder
    tracking._clients.clear()  # clients of the recorder's state folder, not this module's
    try: CaptureShell(nb).run_all(read_nb(nb), exc_stop=True, cell_timeout=900)
    finally:
        InteractiveShell.clear_instance()
        tracking._clients.clear()


@pytest.mark.parametrize("nb", [pytest.param(nb, marks=pytest.mark.xdist_group("spark" if nb in SPARK_NBS else nb.name))
                                for nb in LIBRARY_NBS], ids=lambda p: p.relative_to(ROOT/"nbs").as_posix())
def test_library_notebook_runs_all_under_nbconvert_and_calls_no_cloud(nb, cloud, monkeypatch, request):
    # the shared session, started in this process's own environment
    if nb in SPARK_NBS: request.getfixturevalue("spark")
    # The kernel inherits the test process's environment: use exactly the recorder's.
    for k in list(os.environ): monkeypatch.delenv(k)
    for k, v in cloud.env.items(): monkeypatch.setenv(k, v)
    cloud.seen.clear()
    if nb in SPARK_NBS: run_in_this_process(nb, monkeypatch)  # every cell, here, on the shared session
    else: ExecutePreprocessor(timeout=900, kernel_name="python3").preprocess(nbformat.read(nb, as_version=4),
                                                                             {"metadata": {"path": str(nb.parent)}})
    assert cloud.seen == [], f"{nb.name} contacted the configured cloud: {cloud.seen}"
