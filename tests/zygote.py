"""`mlops-nb` commands and Jupyter kernels for the tests, each a fork of a process that has already imported what they
import.

Every `mlops-nb` process spends 1.5 to 2.5 s of CPU importing MLflow, scikit-learn and pandas before it does any work,
and every kernel (a training run's, a notebook's under nbconvert) 3 s more with ipykernel; the suite starts a few
hundred of them on two cores. The zygote (one per test worker) imports them once; each command or kernel is then a fork
of it that takes the environment, working folder, arguments and output files it was started with, and runs the
executable's own entry point (`mlops_nb.cli.console`; `ipykernel_launcher`). It is still a process of its own: its
environment, folder, exit code, stdout and stderr are its own, and nothing it does reaches the test's process.

What differs from a process started afresh: the modules below are imported before its environment is set (mlops_nb
reads its settings when a command runs, never at import), and its parent is the zygote. The servers the tests start
with `subprocess.Popen` run as forks through a client (`Zygote.launcher`, like a kernel's below); commands a test
interrupts or kills, the servers whose process tree a test inspects (test_server), the servers mlops-nb starts
itself (a local deploy, the simulation), the pipelines' steps, the images and a generated project's commands are
started afresh, so the executable's own start is exercised throughout the suite; so are the kernels of a test that
kills a training's process tree (test_hardening). `TEST_FORK=0` starts every command and kernel afresh.

Commands. The test worker writes one JSON object per line to the zygote's stdin: {"id", "argv", "env", "cwd", "out",
"err"}; the zygote answers on its stdout {"ready": true} once, then {"id", "pid"} when it has forked and {"id", "rc"}
when that child has exited.

Kernels. `Zygote.kernelspec()` writes a `python3` kernel spec whose command is this file's client (`zygote.py kernel
SOCKET -f CONNECTION_FILE`), and the worker puts it first on JUPYTER_PATH for everything it starts. The client is what
jupyter_client starts and watches: it sends its environment, folder, arguments and standard files (SCM_RIGHTS) to the
zygote's socket, passes on every signal jupyter_client sends it (interrupt, terminate) to the kernel's process group,
and exits as the kernel did. The kernel leads a session of its own, which the zygote kills when the client or the
client's parent (papermill, nbconvert: what ipykernel itself watches) is gone, SIGKILL included. A client in another
interpreter (a side venv, a generated project's) or with other start-up variables, or without a zygote, starts
ipykernel itself.

The servable check. `Zygote.interpreter()` writes an executable `python` that the worker names in
`MLOPS_NB_SERVABLE_PYTHON`: the training's registration runs `python -c CODE MODEL` through it to load and score the
new version in a process of its own (`tracking.check_servable`); the same client asks the zygote for a fork that runs
the code (anything but `-c` starts this Python itself). test_servable keeps fresh interpreters for its checks."""
import json, os, select, signal, socket, subprocess, sys, threading, traceback
from pathlib import Path

# what commands and kernels import, and what they import on first use: MLflow's SQL stores and skops (0.9 and 0.5 s of
# CPU in every fork that opens the store or saves or loads a model), GitPython (a run's source commit), the debugger a
# kernel loads
PRELOAD = ("pandas", "sklearn.ensemble", "sklearn.metrics", "mlflow", "mlflow.sklearn", "mlops_nb.cli", "mlops_nb.core",
           "mlops_nb.data", "mlops_nb.problem", "mlops_nb.tracking", "mlops_nb.train", "mlops_nb.serving",
           "mlops_nb.runner", "mlops_nb.examples.ottawa", "ipykernel.kernelapp", "ipykernel.ipkernel",
           "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store", "skops.io",
           "nbformat", "git", "ipykernel.debugger", "mlops_nb.drift", "mlops_nb.reference", "mlops_nb.estimate",
           "mlops_nb.batch")
KEEP = ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")  # applied in a fork; any other PYTHON* is read at start-up only
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def startup(env:dict)->dict:
    "The variables an interpreter reads from `env` when it starts, other than the two a fork applies itself."
    return {k: v for k, v in env.items() if k.startswith("PYTHON") and k not in KEEP}


def _become(env:dict, cwd:str, path0:str):
    "In a fork: take the folder and environment a process was started with, and what its interpreter reads from them."
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    import tempfile
    tempfile.tempdir = None  # read TMPDIR again
    # the script's folder first (the current folder for `-m`), then PYTHONPATH (the zygote starts without one)
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:1] = [path0, *extra]
    sys.dont_write_bytecode = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for s in SIGNALS[1:] + (signal.SIGCHLD,): signal.signal(s, signal.SIG_DFL)


def _exit(code:int):
    "End a fork as an interpreter ends: wait for its threads, run its exit functions, flush; then leave."
    try:
        threading._shutdown()
        import atexit
        atexit._run_exitfuncs()
    finally:
        for s in (sys.stdout, sys.stderr):
            try: s.flush()
            except Exception: pass
        os._exit(code)


def _code(e:SystemExit)->int:
    if not isinstance(e.code, (int, type(None))): print(e.code, file=sys.stderr)
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)


def _command(req:dict, close:list):
    "In the fork: become the command (output files, folder, environment, arguments), run it, exit with its code."
    code = 1
    try:
        for f in close: f.close()
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, req["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            f = os.open(path, flags, 0o600)
            os.dup2(f, fd)
            os.close(f)
        _become(req["env"], req["cwd"], os.path.dirname(req["argv"][0]))
        sys.argv = list(req["argv"])
        from mlops_nb.cli import console
        console()  # exits
        code = 0
    except SystemExit as e: code = _code(e)
    except BaseException: traceback.print_exc()
    finally: _exit(code)


def _read_at_import():
    "What ipykernel read from the zygote's environment when the zygote imported it: read it from the kernel's."
    from ipykernel.kernelapp import IPKernelApp
    for name, var in (("parent_handle", "JPY_PARENT_PID"), ("interrupt", "JPY_INTERRUPT_EVENT")):
        IPKernelApp.class_traits()[name].default_value = int(os.environ.get(var) or 0)
        IPKernelApp._static_immutable_initial_values[name] = int(os.environ.get(var) or 0)


def _launched(req:dict, fds:list, close:list):
    """In the fork: become what its client was started as (standard files, folder, environment, arguments): a kernel
    (`ipykernel_launcher ARGS`), `python -c CODE ARGS`, or an `mlops-nb` command."""
    code = 1
    try:
        for f in close: f.close()
        os.setsid()  # jupyter_client signals the kernel's group: the client passes its signals on to this one
        for i, fd in enumerate(fds): os.dup2(fd, i)
        for fd in fds: os.close(fd)
        path0 = {"kernel": req["cwd"], "python": ""}.get(req["kind"]) or os.path.dirname(req["args"][0])
        _become(req["env"], req["cwd"], path0)
        if req["kind"] == "kernel":
            _read_at_import()
            import runpy
            sys.argv = ["ipykernel_launcher", *req["args"]]
            runpy.run_module("ipykernel_launcher", run_name="__main__", alter_sys=True)
        elif req["kind"] == "python":
            sys.argv = ["-c", *req["args"][2:]]
            exec(compile(req["args"][1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        else:
            sys.argv = list(req["args"])
            from mlops_nb.cli import console
            console()  # exits
        code = 0
    except SystemExit as e: code = _code(e)
    except BaseException: traceback.print_exc()
    finally: _exit(code)


class _Server:
    "The zygote's loop: commands from the worker's pipe, kernels from the socket; each child's exit code to its asker."
    def __init__(self, sock:str):
        self.ctl, self.res = os.fdopen(os.dup(0), "rb", buffering=0), os.fdopen(os.dup(1), "wb", buffering=0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1): os.dup2(devnull, fd)  # nothing else may write into the answers
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(sock)
        self.listener.listen(64)
        self.children, self.buf = {}, b""  # pid -> command id or kernel client's connection
        # pidfd of a client (or its parent) -> the fork that dies with it: the zygote watches, so that the fork runs
        # no thread of its own (a server with threads would not fork its workers)
        self.watched = {}

    def say(self, msg:dict): self.res.write((json.dumps(msg) + "\n").encode())

    def _open(self)->list: return [self.ctl, self.res, self.listener] + [c for c in self.children.values()
                                                                       if isinstance(c, socket.socket)]

    def command(self, req:dict):
        pid = os.fork()
        if pid == 0: _command(req, self._open())
        self.children[pid] = req["id"]
        self.say({"id": req["id"], "pid": pid})

    def kernel(self):
        conn, _ = self.listener.accept()
        conn.settimeout(10)  # a client that connects and never asks must not stall the commands
        try:
            msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            req = json.loads(msg)
        except (OSError, ValueError):
            conn.close()
            return
        conn.settimeout(None)
        pid = os.fork()
        if pid == 0: _launched(req, fds, self._open() + [conn])
        for fd in fds: os.close(fd)
        self.children[pid] = conn
        conn.send(json.dumps({"pid": pid}).encode())
        for p in req["pids"]:
            try: self.watched[os.pidfd_open(p)] = pid
            except ProcessLookupError: self._kill(pid)

    def _kill(self, pid:int):
        "SIGKILL to the session fork `pid` leads (to the fork alone before it has made one)."
        try: os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            try: os.kill(pid, signal.SIGKILL)
            except ProcessLookupError: pass

    def unwatch(self, pid:int):
        for fd in [fd for fd, p in self.watched.items() if p == pid]:
            os.close(fd)
            del self.watched[fd]

    def reap(self):
        while self.children:
            try: pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError: return
            if pid == 0: return
            rc, asker = os.waitstatus_to_exitcode(status), self.children.pop(pid)
            self.unwatch(pid)
            if isinstance(asker, socket.socket):
                try: asker.send(json.dumps({"rc": rc}).encode())
                except OSError: pass
                asker.close()
            else: self.say({"id": asker, "rc": rc})

    def loop(self):
        self.say({"ready": True})
        while True:
            readable, _, _ = select.select([self.ctl, self.listener, *self.watched], [], [], 0.05)
            for fd in [fd for fd in readable if fd in self.watched]: self._kill(self.watched[fd])  # its client is gone
            if self.listener in readable: self.kernel()
            if self.ctl in readable:
                chunk = self.ctl.read(1 << 16)
                if not chunk: return  # the worker is gone
                self.buf += chunk
                while b"\n" in self.buf:
                    line, self.buf = self.buf.split(b"\n", 1)
                    self.command(json.loads(line))
            self.reap()


def serve(sock:str):
    "The zygote: import, listen, say ready, then fork a child per request and report each child's exit code."
    import importlib
    sys.path[0] = os.path.dirname(sys.executable)  # as for a console script: not this file's folder
    for m in PRELOAD: importlib.import_module(m)
    import gc
    gc.freeze()  # the forks' collections leave the imported objects' pages shared
    _Server(sock).loop()


def client(sock:str, kind:str, args:list):
    """What jupyter_client starts as the kernel (`kind` "kernel"), the servable check as Python ("python", for
    `-c CODE ARGS`) or a test as a long-running `mlops-nb` command ("command", ARGS its executable and arguments): the
    zygote's fork, watched and signalled through this process."""
    info = json.loads(Path(sock + ".json").read_text())
    conn = None
    fits = kind == "kernel" or kind == "command" and len(args) > 0 or args[:1] == ["-c"] and len(args) > 1
    if fits and sys.prefix == info["prefix"] and startup(os.environ) == info["startup"]:
        try:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            conn.connect(sock)
        except OSError: conn = None
    if conn is None and kind == "command": os.execv(args[0], args)
    if conn is None:
        os.execv(sys.executable, [sys.executable, *(["-m", "ipykernel_launcher"] if kind == "kernel" else []), *args])
    pending, kernel = [], []
    def relay(signum, frame):
        if not kernel: return pending.append(signum)
        try: os.killpg(kernel[0], signum)
        except ProcessLookupError:  # not yet the leader of its session
            try: os.kill(kernel[0], signum)
            except ProcessLookupError: pass
    for s in SIGNALS: signal.signal(s, relay)
    std = []
    for fd in (0, 1, 2):
        try: os.fstat(fd)
        except OSError: fd = os.open(os.devnull, os.O_RDWR)
        std.append(fd)
    req = {"kind": kind, "args": args, "env": dict(os.environ), "cwd": os.getcwd(),
           "pids": [os.getpid(), os.getppid()]}
    socket.send_fds(conn, [json.dumps(req).encode()], std)
    msg = conn.recv(1 << 16)
    if not msg: sys.exit(1)  # the zygote stopped
    kernel.append(json.loads(msg)["pid"])
    for s in pending: relay(s, None)
    msg = conn.recv(1 << 16)
    rc = json.loads(msg)["rc"] if msg else 1
    if rc < 0:
        signal.signal(-rc, signal.SIG_DFL)
        os.kill(os.getpid(), -rc)
    sys.exit(rc)


class Zygote:
    "The worker's side: one zygote process, and the commands waiting on it."
    def __init__(self, folder:str):
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.sock, self.jupyter, self.python = f"{folder}/zygote.sock", Path(folder)/"jupyter", Path(folder)/"python"
        self.proc = subprocess.Popen([sys.executable, __file__, "serve", self.sock], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=open(f"{folder}/zygote.log", "ab"), env=self.env,
                                     start_new_session=True)
        self._describe()
        self.lock, self.next, self.waiting = threading.Lock(), 0, {}
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            msg = json.loads(line)
            if msg.get("ready"):
                self.ready.set()
                continue
            w = self.waiting[msg["id"]]
            w.update(msg)
            if "rc" in msg: w["done"].set()
        self.ready.set()  # the zygote ended: wake whoever waits
        for w in list(self.waiting.values()): w["done"].set()

    def alive(self)->bool: return self.proc.poll() is None

    def kernelspec(self)->Path:
        "Write the `python3` kernel spec that starts kernels from this zygote; return the folder for JUPYTER_PATH."
        spec = self.jupyter/"kernels"/"python3"
        spec.mkdir(parents=True, exist_ok=True)
        (spec/"kernel.json").write_text(json.dumps({
            "argv": ["python", __file__, "kernel", self.sock, "-f", "{connection_file}"],
            "display_name": "Python 3 (ipykernel)", "language": "python", "metadata": {"debugger": True}}))
        return self.jupyter

    def _describe(self):
        "What a client checks before it asks for a fork: the interpreter and start-up variables the zygote has."
        Path(self.sock + ".json").write_text(json.dumps({"prefix": sys.prefix, "startup": startup(self.env)}))

    def interpreter(self)->Path:
        "Write an executable that runs `python -c CODE ARGS` as a fork (else as this Python); return its path."
        self.python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{__file__}" python "{self.sock}" "$@"\n')
        self.python.chmod(0o755)
        return self.python

    def launcher(self, argv:list)->list:
        """`argv` (an `mlops-nb` command a test starts with `subprocess.Popen` and signals, e.g. a server) as a fork
        through the client: Popen waits on, signals and reads the client as it would the command itself."""
        return [sys.executable, __file__, "command", self.sock, *map(str, argv)]

    def fits(self, env:dict)->bool:
        "Whether a command in `env` can be forked: the interpreter's start-up variables are the zygote's."
        return startup(env) == startup(self.env)

    def run(self, argv:list, env:dict, cwd:str, timeout:float, tmp:str)->subprocess.CompletedProcess:
        "Run `argv` (the executable's path, then its arguments) as a fork; like `subprocess.run(capture_output=True)`."
        with self.lock:
            self.next += 1
            i = self.next
            w = self.waiting[i] = {"done": threading.Event()}
        out, err = f"{tmp}/cli-{os.getpid()}-{i}.out", f"{tmp}/cli-{os.getpid()}-{i}.err"
        try:
            self.ready.wait(120)
            with self.lock:
                self.proc.stdin.write((json.dumps({"id": i, "argv": argv, "env": env, "cwd": cwd, "out": out,
                                                   "err": err}) + "\n").encode())
                self.proc.stdin.flush()
            finished = w["done"].wait(timeout)
            if not finished and "pid" in w:
                os.kill(w["pid"], signal.SIGKILL)
                w["done"].wait(30)
            text = [open(p, errors="replace").read() if os.path.exists(p) else "" for p in (out, err)]
            if not finished: raise subprocess.TimeoutExpired(argv, timeout, text[0], text[1])
            if "rc" not in w: raise RuntimeError(f"the zygote stopped while running {argv}")
            return subprocess.CompletedProcess(argv, w["rc"], *text)
        finally:
            self.waiting.pop(i, None)
            for p in (out, err):
                if os.path.exists(p): os.remove(p)

    def close(self):
        if self.alive():
            self.proc.stdin.close()
            try: self.proc.wait(10)
            except subprocess.TimeoutExpired: self.proc.kill()


if __name__ == "__main__":
    if sys.argv[1] == "serve": serve(sys.argv[2])
    else: client(sys.argv[2], sys.argv[1], sys.argv[3:])
