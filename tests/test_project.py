"""The nbdev project itself: notebooks are the source, the package and README follow them, notebooks stay clean."""
import json, os, re, shutil, subprocess, sys, tomllib
from pathlib import Path
from conftest import ROOT

BIN = Path(sys.executable).parent
LIB_NBS = sorted(p for p in (ROOT/"nbs").glob("[0-9]*.ipynb"))


def _copy(tmp):
    "A copy of the project's sources (no venv, no state) to run nbdev tools on."
    dst = tmp/"proj"
    dst.mkdir()
    for f in ("pyproject.toml", "README.md"): shutil.copy(ROOT/f, dst/f)
    for d in ("nbs", "mlops_nb"):
        shutil.copytree(ROOT/d, dst/d, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    return dst


def _files(d):
    "Relative path -> bytes of every file under `d`."
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()
            and "__pycache__" not in p.parts}


def test_settings_live_in_pyproject():
    cfg = tomllib.loads((ROOT/"pyproject.toml").read_text())
    assert cfg["tool"]["nbdev"]["lib_path"] == "mlops_nb" and cfg["tool"]["nbdev"]["allowed_cell_metadata_keys"] == [
        "tags"
    ]
    assert not (ROOT/"settings.ini").exists() and not (ROOT/"setup.py").exists()


def test_one_module_per_numbered_notebook():
    mods = []
    for nb in LIB_NBS:
        src = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"])
        m = re.findall(r"^#\| default_exp (\S+)", src, re.M)
        assert len(m) == 1, nb.name
        mods.append(m[0])
        assert (ROOT/"mlops_nb"/f"{m[0]}.py").exists()
    assert len(mods) == len(set(mods)) >= 7


def test_exported_package_matches_notebooks(tmp_path):
    d = _copy(tmp_path)
    subprocess.run([BIN/"nbdev-export"], cwd=d, check=True, capture_output=True)
    got, want = _files(d/"mlops_nb"), _files(ROOT/"mlops_nb")
    stale = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    assert not stale, f"mlops_nb/ is out of sync with the notebooks ({stale}): run nbdev-export and commit"


def test_notebooks_are_clean(tmp_path):
    d = _copy(tmp_path)
    subprocess.run([BIN/"nbdev-clean"], cwd=d, check=True, capture_output=True)
    got, want = _files(d/"nbs"), _files(ROOT/"nbs")
    dirty = sorted(k for k in want if got.get(k) != want[k])
    assert not dirty, f"notebooks not clean ({dirty}): run nbdev-clean and commit"


def test_parameters_tag_survives_nbdev_clean(tmp_path):
    "papermill finds its parameters cell by tag: cleaning an executed notebook keeps the tag, drops the rest."
    d = _copy(tmp_path)
    nb_path = d/"nbs"/"train.ipynb"
    nb = json.loads(nb_path.read_text())
    for c in nb["cells"]:
        c["metadata"]["papermill"] = {"duration": 1.0}
        c["metadata"]["execution"] = {"iopub.status.busy": "2026-01-01"}
    nb_path.write_text(json.dumps(nb))
    subprocess.run([BIN/"nbdev-clean"], cwd=d, check=True, capture_output=True)
    cells = json.loads(nb_path.read_text())["cells"]
    assert [c["metadata"] for c in cells if c["metadata"]] == [{"tags": ["parameters"]}]
    assert "mode = \"test\"" in "".join(next(c for c in cells if c["metadata"])["source"])


def test_readme_is_rendered_from_index():
    p = subprocess.run([sys.executable, ROOT/"scripts"/"readme.py", "--check"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_docs_notebooks_pass_nbdev_test(tmp_path):
    """nbdev-test on the notebooks that are not library notebooks (index and tutorials; train and batch are
    `skip_exec`: papermill runs them in their own tests). The library notebooks (`nbs/[0-9]*`, `nbs/examples/`) run in
    tests/test_notebooks_run_all.py, every cell under nbconvert: a superset of the cells nbdev-test runs (it skips
    `eval: false` and `slow`), so they are not run twice."""
    env = {**os.environ, "MLOPS_NB_HOME": str(tmp_path/"state")}
    p = subprocess.run([BIN/"nbdev-test", "--do-print", "--n-workers", "2", "--path-re",
                        r"/nbs/(index\.ipynb|tutorials/)"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    ran = {Path(l.split()[-1]).name for l in p.stdout.splitlines() if l.startswith("- Completed")}
    assert ran == {"index.ipynb"} | {nb.name for nb in (ROOT/"nbs"/"tutorials").glob("*.ipynb")}, ran


def test_ruff_is_clean():
    "The code passes the linter configured in pyproject.toml (the notebooks through the modules they export)."
    p = subprocess.run([str(BIN/"ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:]



def test_exported_lines_are_at_most_120_characters():
    """pyproject.toml leaves E501 off in mlops_nb/ only for the lines nbdev writes itself (the module docstring from the
    notebook's one-line summary, `__all__`'s first line, __init__'s list of modules): every other exported line, which
    comes from a notebook's code, is held to 120 characters (`# noqa: E501` marks literal tables, as elsewhere)."""
    p = subprocess.run([str(BIN/"ruff"), "check", "--isolated", "--no-cache", "--select", "E501",
                        "--line-length", "120", "--output-format", "json",
                        *[str(f) for f in (ROOT/"mlops_nb").rglob("*.py") if f.name != "_modidx.py"]],
                       cwd=ROOT, capture_output=True, text=True)
    found = json.loads(p.stdout)
    def nbdev_wrote(f):
        line = Path(f["filename"]).read_text().splitlines()[f["location"]["row"] - 1]
        return f["location"]["row"] == 1 or line.startswith(("__all__ = [", "- `mlops_nb."))
    assert any(map(nbdev_wrote, found)), p.stderr  # ruff looked: nbdev's own long lines are there
    long = [f"{f['filename']}:{f['location']['row']}" for f in found if not nbdev_wrote(f)]
    assert not long, f"lines over 120 characters (edit the notebooks, or run python scripts/tidy.py): {long}"

def test_pre_commit_hooks_name_installed_commands():
    "`.pre-commit-config.yaml` runs nbdev's hooks and ruff from the project's environment: each command exists there."
    import yaml
    hooks = [h for r in yaml.safe_load((ROOT/".pre-commit-config.yaml").read_text())["repos"] for h in r["hooks"]]
    assert [h["id"] for h in hooks] == ["nbdev-clean", "nbdev-export", "ruff"]
    for h in hooks: assert (BIN/h["entry"].split()[0]).exists(), h["entry"]


def test_license_and_changelog():
    assert (
        "Apache License" in (ROOT / "LICENSE").read_text()
        and tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
    )
    from mlops_nb import __version__
    assert f"## {__version__} " in (ROOT/"CHANGELOG.md").read_text()  # every released version has its entry
