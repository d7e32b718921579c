"""`mlops-nb` commands for the tests, each a fork of a process that has already imported what the commands import.

Every `mlops-nb` process spends 1.5 to 2.5 s of CPU importing MLflow, scikit-learn and pandas before it does any work,
and the suite starts a few hundred of them on two cores. The zygote (one per test worker, started on first use) imports
them once; each command is then a fork of it that takes the command's environment, working folder, arguments and
output files, and runs the executable's own entry point (`mlops_nb.cli.console`, which exits with the command's code).
It is still a process of its own: its environment, folder, exit code, stdout and stderr are the command's, and nothing
it does reaches the test's process.

What differs from `mlops-nb` started afresh: the modules below are imported before the command's environment is set
(mlops_nb reads its settings when a command runs, never at import), and the command's parent is the zygote. Commands
a test signals, interrupts or serves from are started as real processes (`subprocess.Popen`), as are the pipelines'
steps, the images and a generated project's commands, so the executable's own start is exercised throughout the suite.
`TEST_CLI_FORK=0` starts every command afresh.

Protocol: one JSON object per line. The client writes {"id", "argv", "env", "cwd", "out", "err"}; the zygote answers
{"ready": true} once, then {"id", "pid"} when it has forked and {"id", "rc"} when that child has exited."""
import json, os, select, signal, subprocess, sys, threading, traceback

PRELOAD = ("pandas", "sklearn.ensemble", "sklearn.metrics", "mlflow", "mlflow.sklearn", "mlops_nb.cli", "mlops_nb.core",
           "mlops_nb.data", "mlops_nb.problem", "mlops_nb.tracking", "mlops_nb.train", "mlops_nb.serving",
           "mlops_nb.runner", "mlops_nb.examples.ottawa")


def _child(req:dict, ctl:int, res:int):
    "In the fork: become the command (output files, folder, environment, arguments), run it, exit with its code."
    code = 1
    try:
        os.close(ctl)
        os.close(res)
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, req["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            f = os.open(path, flags, 0o600)
            os.dup2(f, fd)
            os.close(f)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        import tempfile
        tempfile.tempdir = None  # read TMPDIR again
        sys.argv = list(req["argv"])
        # what an interpreter reads from its environment when it starts: the script's folder first, then PYTHONPATH
        # (the zygote starts without one); bytecode writing
        extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:1] = [os.path.dirname(req["argv"][0]), *extra]
        sys.dont_write_bytecode = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from mlops_nb.cli import console
        console()  # exits
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))): print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        for s in (sys.stdout, sys.stderr):
            try: s.flush()
            except Exception: pass
        os._exit(code)


def serve():
    "The zygote: import, say ready, then fork a child per request and report each child's exit code."
    import importlib
    sys.path[0] = os.path.dirname(sys.executable)  # as for a console script: not this file's folder
    for m in PRELOAD: importlib.import_module(m)
    ctl, res = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1): os.dup2(devnull, fd)  # nothing else may write into the answers
    def say(msg): os.write(res, (json.dumps(msg) + "\n").encode())
    say({"ready": True})
    ids, buf = {}, b""
    while True:
        readable, _, _ = select.select([ctl], [], [], 0.05)
        if readable:
            chunk = os.read(ctl, 1 << 16)
            if not chunk: break  # the client is gone
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                req = json.loads(line)
                pid = os.fork()
                if pid == 0: _child(req, ctl, res)
                ids[pid] = req["id"]
                say({"id": req["id"], "pid": pid})
        while ids:
            try: pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError: break
            if pid == 0: break
            say({"id": ids.pop(pid), "rc": os.waitstatus_to_exitcode(status)})


# Read by the interpreter when it starts, so a command whose environment sets them differently than the zygote's
# is started afresh (PYTHONPATH and PYTHONDONTWRITEBYTECODE are applied in the fork)
STARTUP = ("PYTHONHASHSEED", "PYTHONWARNINGS", "PYTHONUTF8", "PYTHONIOENCODING", "PYTHONOPTIMIZE", "PYTHONSAFEPATH",
           "PYTHONNOUSERSITE", "PYTHONUSERBASE", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONPLATLIBDIR", "PYTHONINSPECT",
           "PYTHONDEVMODE", "PYTHONFAULTHANDLER", "PYTHONTRACEMALLOC", "PYTHONUNBUFFERED", "PYTHONVERBOSE")


class Zygote:
    "The client: one zygote process, and the commands waiting on it."
    def __init__(self, log:str):
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(log, "ab"), env=self.env, start_new_session=True)
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

    def fits(self, env:dict)->bool:
        "Whether a command in `env` can be forked: the interpreter's start-up variables are the zygote's."
        return all(env.get(k) == self.env.get(k) for k in STARTUP)

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


if __name__ == "__main__": serve()
