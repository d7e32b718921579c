"""The suite's own machinery (tests/zygote.py): kernels forked from the worker's zygote behave as jupyter_client expects
of a kernel it started. It runs the kernel it asked for, passes on an interrupt, and dies with the process
jupyter_client watches, even by SIGKILL, leaving no kernel behind. The servable check's `python` runs `-c CODE` as a
fork the same way (its arguments, folder, output and exit code its own) and anything else as Python itself; a server a
test starts (`conftest.launched`) is a fork too, and stops with its client's process group as a server does."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
from conftest import CLI, _zygote, launched, running

pytest.importorskip("jupyter_client")


def _ppid(pid): return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.fixture
def kernel(tmp_path):
    "A kernel started as papermill and nbconvert start theirs (the `python3` spec), and the facts it wrote to a file."
    from jupyter_client.manager import start_new_kernel
    z = _zygote()
    if z is None: pytest.skip("TEST_FORK=0: kernels start afresh")
    z.ready.wait(120)
    km, kc = start_new_kernel(kernel_name="python3")
    facts = tmp_path/"facts"
    code = f"import os, sys; open({str(facts)!r}, 'w').write(f\"{{os.getpid()}} {{'mlflow' in sys.modules}}\")"
    kc.execute_interactive(code, timeout=60)
    pid, preloaded = facts.read_text().split()
    yield km, kc, int(pid), preloaded == "True", z
    kc.stop_channels()
    if km.is_alive(): km.shutdown_kernel(now=True)


def test_the_kernel_is_a_fork_of_the_zygote_and_its_client_is_what_jupyter_client_watches(kernel):
    km, _, pid, preloaded, z = kernel
    client = km.provisioner.process.pid
    assert pid != client and _ppid(pid) == z.proc.pid and preloaded  # forked, with MLflow already imported
    km.shutdown_kernel()  # the kernel's own shutdown: both end
    assert not running(pid) and not running(client)


def test_an_interrupt_reaches_the_kernel(kernel):
    km, kc, pid, _, _ = kernel
    msg_id = kc.execute("import time; time.sleep(60)")
    time.sleep(1)
    km.interrupt_kernel()  # SIGINT to the client's process group: passed on
    reply = kc.get_shell_msg(timeout=30)
    assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["ename"] == "KeyboardInterrupt"
    assert running(pid)


def test_sigkill_of_the_client_ends_the_kernel(kernel):
    km, _, pid, _, _ = kernel
    os.kill(km.provisioner.process.pid, signal.SIGKILL)  # what jupyter_client's kill sends to the group
    deadline = time.time() + 10
    while running(pid) and time.time() < deadline: time.sleep(0.1)
    assert not running(pid)


def test_the_servable_python_runs_code_as_a_fork_and_anything_else_afresh(tmp_path):
    z = _zygote()
    if z is None: pytest.skip("TEST_FORK=0: checks start afresh")
    z.ready.wait(120)
    py = os.environ["MLOPS_NB_SERVABLE_PYTHON"]  # what every registration's check runs in this suite
    code = ("import json, os, sys; print(json.dumps([os.getppid(), 'mlflow' in sys.modules, sys.argv, os.getcwd()]));"
            "sys.exit(3)")
    p = subprocess.run([py, "-c", code, "a b", "c"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    ppid, preloaded, argv, cwd = json.loads(p.stdout)
    assert (p.returncode, ppid, preloaded, argv, cwd) == (3, z.proc.pid, True, ["-c", "a b", "c"], str(tmp_path))
    p = subprocess.run([py, "-c", "import sys; sys.exit('no such model')"], capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stderr) == (1, "no such model\n")  # as Python reports a SystemExit with a message
    p = subprocess.run([py, "-V"], capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == f"Python {sys.version.split()[0]}"  # not -c: Python itself
    # a check that runs past its timeout: subprocess.run kills the client, and the fork ends with it
    with pytest.raises(subprocess.TimeoutExpired) as e:
        subprocess.run([py, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(60)"],
                       capture_output=True, text=True, timeout=5)
    pid = int(e.value.stdout)
    deadline = time.time() + 10
    while running(pid) and time.time() < deadline: time.sleep(0.1)
    assert not running(pid)


def _children(pid): return [int(d) for d in os.listdir("/proc") if d.isdigit() and running(d) and _ppid(d) == pid]


def test_a_launched_server_is_a_fork_and_stops_with_its_clients_group(tmp_path, model_dir):
    import urllib.request
    from mlops_nb.server import free_port, http_status
    z = _zygote()
    if z is None: pytest.skip("TEST_FORK=0: servers start afresh")
    port = free_port()
    argv = [CLI, "serve", "--port", str(port), "--model", str(model_dir), "--workers", "2"]
    p = subprocess.Popen(launched(argv), stdout=open(tmp_path/"log", "w"), stderr=subprocess.STDOUT,
                         start_new_session=True)
    deadline = time.time() + 60
    while http_status(f"http://127.0.0.1:{port}/ready") != 200 and time.time() < deadline: time.sleep(0.1)
    [server] = _children(z.proc.pid)  # the server, forked; its workers forked from it (it runs no other thread)
    kids = [k for k in _children(server) if "resource_tracker" not in Path(f"/proc/{k}/cmdline").read_text()]
    assert len(kids) == 2 and all(_ppid(k) == server for k in kids), kids
    assert all(Path(f"/proc/{k}/cmdline").read_text() == Path(f"/proc/{server}/cmdline").read_text() for k in kids)
    assert json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/version").read())["version"] == "1"
    os.killpg(p.pid, signal.SIGTERM)  # how the tests stop a server: the client passes it on to the server's group
    assert p.wait(30) == 0, (tmp_path/"log").read_text()  # a graceful stop, as `mlops-nb serve` exits on SIGTERM
    assert not running(server)
