"""mlops_nb as a library: its wheel installed into a fresh virtual environment outside any checkout, then
`mlops-nb new` on a team's CSV; in the generated project, unchanged, the README's test command and main command pass.
Also: the package's templates are the files this repository itself uses (one definition of each)."""
import os, subprocess, sys
import pytest
from conftest import ROOT

TEMPLATES = ROOT/"mlops_nb"/"templates"


@pytest.mark.parametrize("template,ours", [("api/score.py.tmpl", "api/score.py"), ("nbs/train.ipynb", "nbs/train.ipynb"),
                                           *[(f"pipelines/{p.name}.tmpl", f"pipelines/{p.name}") for p in sorted((ROOT/"pipelines").glob("*.py"))]])
def test_templates_are_the_files_this_project_uses(template, ours):
    "A new project gets the same entry script, training notebook and pipeline scripts as this one: no second copy drifts."
    assert (TEMPLATES/template).read_text() == (ROOT/ours).read_text(), f"{template} differs from {ours}: copy one onto the other"


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
    p = subprocess.run([str(venv/"bin"/"python"), "-m", "pip", "install", "-q", f"{wheel}[runner,serve,kube,project]",
                        "-c", str(ROOT/"requirements.lock")], capture_output=True, text=True, timeout=1200)
    if p.returncode != 0:
        reason = (p.stderr.strip().splitlines() or ["?"])[-1]
        if "No matching distribution" in p.stderr or "Could not fetch" in p.stderr: pytest.skip(f"no package index: {reason}")
        raise AssertionError(p.stderr[-3000:])
    return venv, wheel, t


def test_wheel_new_project_and_its_two_commands(fresh_venv):
    venv, wheel, t = fresh_venv
    from mlops_nb.examples.sklearn_tables import table
    work = t/"outside"; work.mkdir()  # no pyproject.toml, no .git above: outside any checkout
    table("breast-cancer").to_csv(work/"cells.csv", index=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_NB_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = f"{venv/'bin'}:{env['PATH']}"
    p = subprocess.run(["mlops-nb", "new", "tumours", "--data", "cells.csv", "--target", "target"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    proj = work/"tumours"
    assert "mlops_nb" not in {q.name for q in proj.iterdir()}  # a project of its own: mlops_nb is a library
    env.update(MLOPS_NB_VENV=str(venv), MLOPS_NB_SPEC=f"{wheel}[runner,serve,kube,project]")
    for cmd in (["bash", "scripts/test"], ["bash", "scripts/run"]):  # the README's two commands, unchanged
        p = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=1800)
        assert p.returncode == 0, f"{' '.join(cmd)} -> {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    assert "passed" in subprocess.run(["bash", "scripts/test", "-q"], cwd=proj, env=env, capture_output=True, text=True).stdout
    assert (proj/".mlops_nb"/"build"/"champion"/"Dockerfile").exists()
    p = subprocess.run([str(venv/"bin"/"python"), "pipelines/generate.py", "--check"], cwd=proj, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr  # its pipelines are what mlops_nb generates for it
