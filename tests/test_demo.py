"""scripts/demo: the short demo by default, every step it ran before behind --full, and a closing line with the seconds
of each step (also when a step fails). Run on a copy of the script whose setup, container engine and `mlops-nb` are
stand-ins that record their arguments: the real steps are what `mlops-nb pipeline` and `simulate` test elsewhere."""
import os, re, shutil, stat, subprocess
from conftest import ROOT


def _project(tmp_path, fail_on=""):
    "A folder with scripts/demo and stand-ins for scripts/setup, scripts/containers and .venv/bin/mlops-nb."
    d = tmp_path/"p"
    (d/"scripts").mkdir(parents=True)
    (d/".venv"/"bin").mkdir(parents=True)
    shutil.copy(ROOT/"scripts"/"demo", d/"scripts"/"demo")
    log = d/"calls.log"
    stubs = {d/"scripts"/"setup": f'echo "setup $*" >> {log}\n',
             d/"scripts"/"containers": f'echo "containers $*" >> {log}\necho "export DEMO_ENGINE=up"\n',
             d/".venv"/"bin"/"mlops-nb": f'echo "mlops-nb $* engine=${{DEMO_ENGINE:-none}}" >> {log}\n'
                                        f'case "$1" in {fail_on or "never-matches"}) exit 3;; esac\n'}
    for path, body in stubs.items():
        path.write_text("#!/usr/bin/env bash\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return d, log


def _run(d, *args):
    return subprocess.run(["bash", "scripts/demo", *args], cwd=d, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": os.environ.get("PATH", "")})


def test_short_demo_by_default(tmp_path):
    d, log = _project(tmp_path)
    r = _run(d)
    assert r.returncode == 0, r.stderr
    assert log.read_text().splitlines() == [
        "setup --demo",
        "mlops-nb pipeline ci engine=none",
        "mlops-nb pipeline train --trigger --rows 8000 --epochs 4 engine=none",
        "mlops-nb simulate --periods 2 --rows 4000 --epochs 4 engine=none"]
    last = [l for l in r.stderr.splitlines() if l.startswith("demo: ")]
    assert re.fullmatch(r"demo: done in \d+\.\d s \(short demo: --full runs everything\); seconds per step: "
                        r"setup \d+\.\d, ci \d+\.\d, train → deploy \d+\.\d, simulate \d+\.\d", last[-2]), last
    assert re.match(r"demo: CPU seconds per step: setup \d+\.\d, ci \d+\.\d, .*; load average", last[-1]), last


def test_full_runs_every_step_the_demo_ran_before(tmp_path):
    "--full: the whole environment, the container engine (its exports reach the pipelines), the default sizes."
    d, log = _project(tmp_path)
    r = _run(d, "--full", "--periods", "4")
    assert r.returncode == 0, r.stderr
    assert log.read_text().splitlines() == [
        "setup ",
        "containers up",
        "mlops-nb pipeline ci engine=up",
        "mlops-nb pipeline train --trigger --rows 20000 --epochs 10 engine=up",
        "mlops-nb simulate --periods 5 --rows 8000 --epochs 10 --periods 4 engine=up"]   # the last --periods wins
    assert re.search(r"demo: done in .* \(--full\); seconds per step: setup [\d.]+, containers [\d.]+, ci", r.stderr)


def test_a_failing_step_stops_the_demo_and_still_gets_its_times(tmp_path):
    d, log = _project(tmp_path, fail_on="simulate")
    r = _run(d)
    assert r.returncode == 3
    assert re.search(r"demo: stopped \(exit 3\) in [\d.]+ s .*train → deploy [\d.]+, simulate [\d.]+ \(failed\)$",
                     r.stderr, re.M), r.stderr
