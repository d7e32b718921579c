"""Shared fixtures: an isolated state folder per test module, the real `mlops-nb` CLI, generated data files."""
import json, os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent/"mlops-nb")


def run_cli(*args, env=None, cwd=ROOT, timeout=300, check=False):
    "Run the real `mlops-nb` executable; return the CompletedProcess (text)."
    p = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    if check and p.returncode != 0: raise AssertionError(f"mlops-nb {' '.join(map(str, args))} -> {p.returncode}\n{p.stderr}")
    return p


def cli_json(*args, env=None, **kw):
    "Run `mlops-nb ... --json` and parse its stdout."
    p = run_cli(*args, "--json", env=env, check=True, **kw)
    return json.loads(p.stdout)


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
    "Generated listings: a small 2021 year, a 2023 year, and bad files."
    from mlops_nb.data import generate_listings, write_listings
    d = tmp_path_factory.mktemp("data")
    write_listings(generate_listings(2021, 4000, seed=0), d/"2021.parquet")
    write_listings(generate_listings(2023, 4000, seed=0), d/"2023.parquet")
    return d
