"""mlops_nb as a library: its wheel installed into a fresh virtual environment outside any checkout, then
`mlops-nb new` on a team's CSV; in the generated project, unchanged, with no MLOPS_NB_SPEC and mlops_nb on no package
index, its scripts/setup installs the mlops_nb the project recorded (vendor/), and the README's test command (api/ tests
included), main command and docs build pass.
Also: the package's templates are the files this repository itself uses (one definition of each)."""
import json, os, subprocess, sys
from pathlib import Path
import pytest
from conftest import ROOT

TEMPLATES = ROOT/"mlops_nb"/"templates"


@pytest.mark.parametrize("template,ours",
                         [("api/score.py.tmpl", "api/score.py"), ("nbs/train.ipynb", "nbs/train.ipynb"),
                          ("scripts/docs.py.tmpl", "scripts/docs.py"),
                          *[(f"pipelines/{p.name}.tmpl", f"pipelines/{p.name}")
                            for p in sorted((ROOT/"pipelines").glob("*.py"))]])
def test_templates_are_the_files_this_project_uses(template, ours):
    ("A new project gets the same entry script, training notebook, docs builder "
     "and pipeline scripts as this one: no second copy drifts.")
    assert (TEMPLATES/template).read_text() == (ROOT/ours).read_text(), (f"{template} differs from {ours}: copy "
                                                                         "one onto the other")


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    "A new venv with only mlops_nb's wheel (and the extras a project uses) installed, at the tested versions."
    from mlops_nb import package
    t = tmp_path_factory.mktemp("lib")
    os.environ["MLOPS_NB_HOME"] = str(t/"state")
    try: wheel = next(package.own_wheel().glob("mlops_nb-*.whl"))
    finally: os.environ.pop("MLOPS_NB_HOME", None)
    venv = t/"venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # uv where scripts/setup installed it (a fifth of pip's time here; the project's own setup below still installs
    # the vendored wheel with pip), else pip. No bytecode ahead (uv's --compile-bytecode: 15 s, every module of every
    # package): the project's commands run without PYTHONDONTWRITEBYTECODE (below), so each module is compiled once,
    # by the first process that imports it
    uv = Path(sys.executable).parent/"uv"
    installer = ([str(uv), "pip", "install", "--python", str(venv/"bin"/"python")] if uv.exists()
                 else [str(venv/"bin"/"python"), "-m", "pip", "install"])
    p = subprocess.run([*installer, "-q", f"{wheel}[runner,serve,kube,project]", "-c", str(ROOT/"requirements.lock")],
                       capture_output=True, text=True, timeout=1200)
    if p.returncode != 0:
        reason = (p.stderr.strip().splitlines() or ["?"])[-1]
        if any(w in p.stderr for w in ("No matching distribution", "Could not fetch", "Failed to fetch")):
            pytest.skip(f"no package index: {reason}")
        raise AssertionError(p.stderr[-3000:])
    return venv, wheel, t


def test_wheel_new_project_and_its_two_commands(fresh_venv):
    venv, wheel, t = fresh_venv
    from mlops_nb.examples.sklearn_tables import table
    work = t/"outside"
    work.mkdir()  # no pyproject.toml, no .git above: outside any checkout
    table("breast-cancer").to_csv(work/"cells.csv", index=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_NB_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = f"{venv/'bin'}:{env['PATH']}"
    p = subprocess.run(["mlops-nb", "new", "tumours", "--data", "cells.csv", "--target", "target"], cwd=work,
                       env={**env, "MLOPS_NB_HOME": str(t/"home")}, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    proj = work/"tumours"
    assert "mlops_nb" not in {q.name for q in proj.iterdir()}  # a project of its own: mlops_nb is a library
    # installed from a wheel (not from an index): the project carries that mlops_nb, repacked from the installed files
    [vendored] = (proj/"vendor").glob("mlops_nb-*.whl")
    assert vendored.name == wheel.name
    # a fresh machine: no mlops_nb installed and none on the package index; the project's setup must use vendor/
    subprocess.run([str(venv/"bin"/"python"), "-m", "pip", "uninstall", "-y", "-q", "mlops_nb"], check=True,
                   capture_output=True)
    # the venv holds the other dependencies
    env.update(MLOPS_NB_VENV=str(venv), PIP_CONSTRAINT=str(ROOT/"requirements.lock"))
    assert not [k for k in env if k.startswith("MLOPS_NB_") and k != "MLOPS_NB_VENV"]
    def run(*cmd):
        p = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=1800)
        assert p.returncode == 0, f"{' '.join(cmd)} -> {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
        return p.stdout
    out = run("bash", "scripts/test")  # the README's two commands, unchanged
    direct = json.loads(
        next((venv / "lib").glob("python3*/site-packages/mlops_nb-*.dist-info/direct_url.json")).read_text()
    )
    assert direct["url"] == vendored.as_uri(), direct  # pip found mlops_nb where the project recorded it
    assert "no champion registered yet" in out  # api/ is collected; its tests wait for a champion
    run("bash", "scripts/run")
    out = run("bash", "scripts/test", "-q", "-rA")
    assert "PASSED api/test_score.py::test_the_example_scores" in out and "SKIPPED" not in out, out[-3000:]
    assert (proj/".mlops_nb"/"build"/"champion"/"Dockerfile").exists()
    # the docs: the nbconvert site (no Quarto here), and nbdev's own processing, which runs the problem notebook's cells
    # from the project folder (its data path must not depend on the working directory)
    assert "check: 3 pages, every relative link resolves" in run(str(venv/"bin"/"python"), "scripts/docs.py", "--check")
    assert {"index.html", "00_problem.html", "train.html"} <= {f.name for f in (proj/"_site").iterdir()}
    run(str(venv/"bin"/"nbdev-proc-nbs"))
    p = subprocess.run([str(venv/"bin"/"python"), "pipelines/generate.py", "--check"], cwd=proj, env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr  # its pipelines are what mlops_nb generates for it
