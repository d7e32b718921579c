"""Serving benchmark: `mlops-nb serve` vs Azure ML's `azmlinfsrv` vs `mlflow models serve`, on declared problems;
prints figures, never asserts on them.

Run from the repository root (needs .venv, .venv-azml from `bash scripts/azml-venv`, and wrk):
  .venv/bin/python bench/bench_serve.py [--problem NAME] [--quick] [--json]   one problem, every server and scenario
                                                                             (about 5 minutes, --quick about 1.5)
  .venv/bin/python bench/bench_serve.py --all-problems [--quick] [--json]    the issue's figures for each problem
                                                                             (about 8 minutes, --quick about 3)
  .venv/bin/python bench/bench_serve.py --limits [--json]                    ours, MLServer, azmlinfsrv and the
                                                                             in-process limits (bench/bench_limits.py)
Problems (--problem, default ottawa-housing): ottawa-housing (binary, derived features), breast-cancer (binary),
wine (multiclass), diabetes (regression); see `PROBLEMS`.

Everything goes to a temporary folder (MLOPS_NB_HOME, the models, logs, request bodies), removed at the end; the
servers run with that folder as working directory and MLOPS_NB_PROBLEM naming the problem of the model they serve
(what a team's deployment configures; the Ottawa model's derive functions are trusted only through it). We only ever
connect to 127.0.0.1 (azmlinfsrv itself binds 0.0.0.0: it has no host flag). Each server runs alone (started,
measured, stopped before the next starts) with its default single worker process, so none competes with another for
the 2 cores; wrk shares the cores with the server it measures. Ratios are between servers measured in the same run.

What is measured, and how:
1. Model: the problem's default pipeline (`mlops_nb.train.build_model`: features, one-hot, gradient boosting) trained
   like the real full run: 10 epochs x 25 rounds = 250 boosting iterations (x 3 trees per iteration for wine), on a
   seeded split (`split_rows`, seed 0) of the problem's rows: 20 000 generated listings of 2021 for ottawa-housing,
   scikit-learn's table for the others. Saved with `mlops_nb.train.save_model` (an MLflow model folder whose pyfunc
   takes raw records and returns per-class probabilities, or values) plus `mlops_nb_model.json` beside MLmodel, as
   the repo-root conftest's `save_model` / `model_folder` do.
2. Cold start: process start (just before Popen) -> ready, polled every 20 ms, the median of 3 starts (1 with --quick
   and with --all-problems). Ready means: ours GET /ready 200; azmlinfsrv GET / 200 and one POST /score 200 (its
   liveness answers before the model is usable); mlflow GET /ping 200. "First score" is process start -> the first
   successful 1-row prediction. For ours, GET /version then tells whether it scores through the fast path (records
   to matrix without pandas, proven equal on the input example at load) or the pipeline fallback, and why.
3. Load: wrk with bench/wrk_post.lua (POST of a fixed JSON body; its done() prints request count, status >= 400 count,
   socket errors and latency percentiles). Per scenario a warm-up run (2 s; 1 s with --quick) is discarded, then a
   measured run (10 s; 4 s with --quick): 1-row requests at concurrency 1, 8 (1 wrk thread) and 32 (2 threads), and
   100-row requests at concurrency 1 (--all-problems: 1-row at concurrency 1 and 32 only, ours vs azmlinfsrv and the
   diagnostic of 6.; mlflow models serve runs in the single-problem run only). Bodies: ours and
   azmlinfsrv get raw records (a JSON object, a list of 100 for batches) on /score; mlflow gets the same raw records
   as `{"dataframe_records": [...]}` on /invocations (floats for float columns: MLflow enforces the signature).
4. Equality: the check records (ottawa-housing: 200 generated listings of 2023, seed 3; others: 200 rows of the table,
   or all of them when fewer, sampled with seed 3; inputs only, dates as YYYY-MM-DD) scored in one request by each
   server vs the same pipeline in this process (`mlops_nb.train.predict_outputs`): per-class probabilities (binary:
   also `probability` = the positive class's) or values within 1e-6, and labels equal to the arg max class.
5. Memory (ours, single-problem run): after a warm-up at c=32, RSS (VmRSS of the server and its child processes) is
   read, then at least 10 000 1-row requests are sent at c=32 (wrk runs sized from the measured c=32 throughput),
   then RSS is read again.
6. Diagnostic (full runs, not --quick): azmlinfsrv again with OMP_NUM_THREADS=1 (one start). By default
   scikit-learn's OpenMP prediction spreads each tiny request over both cores, and the idle OpenMP thread spins against
   the gunicorn worker and wrk: on this 2-core machine that stalls requests for up to ~1 s. Ours limits OpenMP to one
   thread per call, so this shows how much of the gap to azmlinfsrv is that setting rather than the server.
"""
from __future__ import annotations
import argparse, json, math, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.error, \
    urllib.request
from http.client import HTTPException
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN, AZML_BIN = ROOT/".venv"/"bin", ROOT/".venv-azml"/"bin"
LUA = Path(__file__).resolve().parent/"wrk_post.lua"
ENTRY = ROOT/"api"/"score.py"
# problem name -> its declaration (`module:attribute`, what MLOPS_NB_PROBLEM names)
PROBLEMS = {"ottawa-housing": "mlops_nb.examples.ottawa:PROBLEM",
            "breast-cancer": "mlops_nb.examples.sklearn_tables:BREAST_CANCER",
            "wine": "mlops_nb.examples.sklearn_tables:WINE",
            "diabetes": "mlops_nb.examples.sklearn_tables:DIABETES"}
DEFAULT_PROBLEM = "ottawa-housing"
TRAIN_ROWS, CHECK_ROWS, EPOCHS = 20_000, 200, 10  # generated rows (problems with a generator), check records, epochs
SERVERS = ("ours", "azmlinfsrv", "azml-omp1", "mlflow")  # azml-omp1: a diagnostic, not run with --quick
ALL_SERVERS = ("ours", "azmlinfsrv", "azml-omp1")  # --all-problems (azml-omp1 not with --quick)
TITLES = {"ours": "ours (mlops-nb serve)", "azmlinfsrv": "azmlinfsrv", "azml-omp1": "azmlinfsrv OMP_NUM_THREADS=1",
          "mlflow": "mlflow models serve"}
BASE = {"ours": "ours", "azmlinfsrv": "azmlinfsrv", "azml-omp1": "azmlinfsrv", "mlflow": "mlflow"}  # server program
# (name, rows per request, connections, wrk threads)
SCENARIOS = [("1-row c=1", 1, 1, 1), ("1-row c=8", 1, 8, 1), ("1-row c=32", 1, 32, 2), ("100-row c=1", 100, 1, 1)]
ALL_SCENARIOS = [s for s in SCENARIOS if s[0] in ("1-row c=1", "1-row c=32")]  # --all-problems
MEMORY_REQUESTS = 10_000
TOLERANCE = 1e-6
LIVE = []  # servers started and not yet stopped, stopped on any exit

# --------------------------------------------------------------------------------------------------------- helpers

def say(*a):
    "Progress for people, on stderr."
    print("[bench]", *a, file=sys.stderr, flush=True)

def free_port()->int:
    "A free TCP port on loopback."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def http(port:int, path:str, body:bytes|None=None, timeout:float=30)->tuple:
    "(status, body text) of one request to 127.0.0.1; status 0 when the connection fails."
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                 headers={"Content-Type": "application/json"} if body is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r: return r.status, r.read().decode()
    except urllib.error.HTTPError as e: return e.code, e.read().decode(errors="replace")
    except (OSError, HTTPException): return 0, ""  # not listening yet, or a half-started server hanging up

def to_json(obj)->bytes:
    "JSON bytes of `obj`, numpy scalars included."
    return json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)).encode()

def descendants(pid:int)->list:
    "`pid` and every process below it (from /proc/*/stat parent ids)."
    parent = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit(): continue
        try: parent[int(d.name)] = int((d/"stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError): pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [c for c, pp in parent.items() if pp == p]
    return out

def rss_kb(pid:int)->int:
    "VmRSS in kB of `pid` and its child processes, summed."
    total = 0
    for p in descendants(pid):
        try:
            total += next(int(l.split()[1]) for l in Path(f"/proc/{p}/status").read_text().splitlines()
                          if l.startswith("VmRSS:"))
        except (OSError, StopIteration): pass
    return total

def pkg_version(python:Path, pkg:str)->str:
    "Version of `pkg` installed for interpreter `python`, or '?'."
    p = subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version({pkg!r}))"],
                       capture_output=True, text=True)
    return p.stdout.strip() or "?"

# ----------------------------------------------------------------------------------------------------- model, data

class Case:
    "One problem to serve: its declaration, the saved model folder, the fitted pipeline, the check records and outputs."
    def __init__(self, name:str, ref:str, problem, model_dir:Path, pipeline, records:list, want, train_rows:int):
        self.name, self.ref, self.problem, self.model_dir, self.pipeline = name, ref, problem, model_dir, pipeline
        self.records, self.want, self.train_rows = records, want, train_rows
        est = pipeline[-1]
        self.iters, self.per_iter = int(getattr(est, "n_iter_", 0)), int(getattr(est, "n_trees_per_iteration_", 1))

    @property
    def kind(self)->str: return self.problem.kind

    @property
    def labels(self)->list|None: return self.problem.class_labels

    def describe(self)->str:
        "One line: problem, kind, inputs, trees, training rows."
        trees = f"{self.iters} boosting iterations" + (f" x {self.per_iter} trees" if self.per_iter > 1 else " (trees)")
        return (f"{self.name} ({self.kind}{', ' + str(len(self.labels)) + ' classes' if self.labels else ''}; "
                f"{len(self.problem.inputs)} raw inputs; {trees}; trained on {self.train_rows} rows)")

def problem_rows(problem)->tuple:
    "(labelled rows to train on, rows to check equality with) of `problem`."
    if problem.generate is not None:  # a generator (the Ottawa example): its default period, and two periods later
        return (problem.generate(problem.default_period, TRAIN_ROWS, 0),
                problem.generate(problem.default_period + 2, CHECK_ROWS, 3))
    from mlops_nb.examples.sklearn_tables import table
    df = table(problem)
    return df, df.sample(n=min(CHECK_ROWS, len(df)), random_state=3)

def raw_records(problem, df)->list:
    "The problem's raw input records of `df` as JSON carries them: dates as YYYY-MM-DD, floats as floats."
    import pandas as pd
    X = df[list(problem.inputs)].copy()
    for c, s in problem.inputs.items():
        if s.kind == "datetime": X[c] = pd.to_datetime(X[c]).dt.strftime("%Y-%m-%d")
        elif s.kind == "float": X[c] = X[c].astype("float64")  # MLflow refuses an int for a double column
    return json.loads(to_json(X.to_dict("records")))

def make_case(name:str, root:Path)->Case:
    "Train the problem's model (250 boosting iterations) and save it as an MLflow model folder with its identity."
    import pandas as pd
    from mlops_nb.problem import load_problem
    from mlops_nb.train import build_model, predict_outputs, save_model, split_rows, train_epochs
    ref = PROBLEMS[name]
    problem = load_problem(ref)
    df, check = problem_rows(problem)
    tr, ev = split_rows(df, problem, seed=0)
    model = build_model(problem, seed=0)
    train_epochs(problem, model, tr, ev, epochs=EPOCHS)
    d = save_model(problem, model, ev, root/f"model-{name}")
    (d/"mlops_nb_model.json").write_text(json.dumps({"name": problem.registered_model, "version": "1",
                                                     "run_id": "run-1"}))
    records = raw_records(problem, check)
    want = predict_outputs(model, pd.DataFrame(records), problem.kind)
    return Case(name, ref, problem, d, model, records, want, len(tr))

def request_body(kind:str, records:list, one:bool)->bytes:
    "The request body for server `kind`: raw records (an object when `one`), or mlflow's dataframe_records of them."
    if BASE[kind] == "mlflow": return to_json({"dataframe_records": records[:1] if one else records})
    return to_json(records[0] if one else records)

# ----------------------------------------------------------------------------------------------------------- servers

class Server:
    "A server process started in its own process group: name, program (kind), port, log file and start time."
    def __init__(self, name, proc, port, log, t0):
        self.name, self.kind, self.proc, self.port, self.log, self.t0 = name, BASE[name], proc, port, Path(log), t0

    @property
    def score_path(self)->str:
        "The scoring route."
        return "/invocations" if self.kind == "mlflow" else "/score"

    def log_tail(self, n:int=30)->str:
        "The last `n` lines of the server's output."
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])

def server_env(name:str, home:Path, case:Case)->dict:
    ("The environment of server `name`: our temp MLOPS_NB_HOME and the case's "
     "problem, no inherited venv or Azure/MLOPS_NB settings.")
    kind = BASE[name]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
           and not k.startswith(("AZUREML_", "MLOPS_NB_"))}
    env.update(MLOPS_NB_HOME=str(home), MLOPS_NB_PROBLEM=case.ref, MLFLOW_ALLOW_PICKLE_DESERIALIZATION="true",
               MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
    venv_bin = AZML_BIN if kind == "azmlinfsrv" else BIN
    env["PATH"] = f"{venv_bin}:{env.get('PATH', '')}"  # mlflow runs `exec uvicorn ...` through bash: it must be on PATH
    if kind == "azmlinfsrv":
        env["AZUREML_MODEL_DIR"] = str(case.model_dir)
        # gunicorn >= 27 opens a control socket at ~/.gunicorn/gunicorn.ctl, one path for every server of the user: not
        # ours
        if any(int(d.name.split("-")[1].split(".")[0]) >= 27
               for d in (AZML_BIN.parent).glob("lib/python*/site-packages/gunicorn-*.dist-info")):
            env["GUNICORN_CMD_ARGS"] = "--no-control-socket"
    # what ours does per call (threadpool_limits), for the whole process
    if name == "azml-omp1": env["OMP_NUM_THREADS"] = "1"
    return env

def server_cmd(name:str, model_dir:Path, port:int)->list:
    "The command line of server `name` on `port`."
    kind = BASE[name]
    if kind == "ours":
        return [str(BIN/"mlops-nb"), "serve", "--model", str(model_dir), "--entry", str(ENTRY), "--port", str(port)]
    if kind == "azmlinfsrv": return [str(AZML_BIN/"azmlinfsrv"), "--entry_script", str(ENTRY), "--port", str(port)]
    return [str(BIN/"mlflow"), "models", "serve", "-m", str(model_dir), "--env-manager", "local", "-h", "127.0.0.1",
            "-p", str(port)]

def start(kind:str, case:Case, work:Path, n:int)->Server:
    "Start server `kind` (a name of SERVERS) for `case` in a new process group, output to a log file in `work`."
    port, log = free_port(), work/f"{case.name}-{kind}-{n}.log"
    env = server_env(kind, work/"state", case)
    with open(log, "wb") as f:
        t0 = time.monotonic()
        proc = subprocess.Popen(server_cmd(kind, case.model_dir, port), cwd=work, env=env, stdout=f,
                                stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    srv = Server(kind, proc, port, log, t0)
    LIVE.append(srv)
    return srv

def stop(srv:Server):
    "Stop the server's whole process group: SIGTERM, then SIGKILL after 15 s."
    if srv in LIVE: LIVE.remove(srv)
    try: os.killpg(srv.proc.pid, signal.SIGTERM)
    except ProcessLookupError: pass
    try: srv.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        try: os.killpg(srv.proc.pid, signal.SIGKILL)
        except ProcessLookupError: pass
        srv.proc.wait(timeout=5)
    try: os.killpg(srv.proc.pid, signal.SIGKILL)  # leftovers of the group (workers whose master already exited)
    except ProcessLookupError: pass

def is_ready(srv:Server, one:bytes)->bool:
    "Whether the server answers its readiness check."
    if srv.kind == "ours": return http(srv.port, "/ready", timeout=2)[0] == 200
    if srv.kind == "mlflow": return http(srv.port, "/ping", timeout=2)[0] == 200
    return http(srv.port, "/", timeout=2)[0] == 200 and http(srv.port, "/score", one, timeout=10)[0] == 200

def wait_ready(srv:Server, one:bytes, budget:float=120)->dict:
    "Seconds from process start to ready and to the first successful 1-row score; raise with the log tail on failure."
    while True:
        if srv.proc.poll() is not None:
            raise RuntimeError(f"{srv.name} exited with {srv.proc.returncode} before it was ready:\n{srv.log_tail()}")
        if time.monotonic() - srv.t0 > budget:
            raise RuntimeError(f"{srv.name} not ready within {budget:.0f} s:\n{srv.log_tail()}")
        if is_ready(srv, one): break
        time.sleep(0.02)
    ready = time.monotonic() - srv.t0
    status, text = http(srv.port, srv.score_path, one)
    if status != 200: raise RuntimeError(f"{srv.name}: first score answered {status}: {text[:300]}\n{srv.log_tail()}")
    return {"ready_s": ready, "first_score_s": time.monotonic() - srv.t0}

def scoring_path(srv:Server)->dict:
    "Ours: GET /version's account of the scoring path (fast path or the pipeline fallback, and why)."
    status, text = http(srv.port, "/version")
    if status != 200: return {"error": f"GET /version answered {status}: {text[:200]}"}
    v = json.loads(text)
    return {k: v.get(k) for k in ("problem", "kind", "version", "fast_path", "fast_path_fallback")}

# --------------------------------------------------------------------------------------------------------- measuring

def wrk(port:int, path:str, body_file:Path, conns:int, threads:int, seconds:float)->dict:
    "One wrk run; requests, req/s, latency percentiles (ms), status >= 400 count and socket errors."
    cmd = [shutil.which("wrk") or "/usr/bin/wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds:g}s",
           "--timeout", "10s", "-s", str(LUA), f"http://127.0.0.1:{port}{path}"]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WRK_BODY": str(body_file)},
                       timeout=seconds + 60)
    line = next((l for l in p.stdout.splitlines() if l.startswith("WRKJSON ")), None)
    if line is None: raise RuntimeError(f"wrk failed ({p.returncode}): {p.stderr.strip()[-500:]} {p.stdout[-500:]}")
    w = json.loads(line[len("WRKJSON "):])
    secs = w["duration_us"] / 1e6
    return {"requests": int(w["requests"]), "seconds": secs, "rps": w["requests"] / secs if secs else 0.0,
            "p50_ms": w["p50_us"] / 1e3, "p90_ms": w["p90_us"] / 1e3, "p99_ms": w["p99_us"] / 1e3,
            "max_ms": w["max_us"] / 1e3,
            "mean_ms": w["mean_us"] / 1e3, "non2xx": int(w["status"]),
            "socket_errors": int(w["connect"] + w["read"] + w["write"] + w["timeout"])}

def load(srv:Server, files:dict, cfg:dict)->dict:
    "The configured wrk scenarios against `srv`, each after a discarded warm-up run."
    out = {}
    for name, rows, conns, threads in cfg["scenarios"]:
        f = files[rows]
        wrk(srv.port, srv.score_path, f, conns, threads, cfg["warmup_s"])
        r = wrk(srv.port, srv.score_path, f, conns, threads, cfg["duration_s"])
        r["rows_per_s"] = r["rps"] * rows
        say(f"  {name:12} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
            f"errors {r['non2xx']}+{r['socket_errors']}")
        out[name] = r
    return out

def outputs_of(kind:str, preds:list, case:Case):
    "The answers of server `kind` as the model's outputs ((n, classes) probabilities or (n,) values) and their labels."
    import numpy as np
    if BASE[kind] == "mlflow": return np.asarray(preds, dtype=float), None  # the pyfunc's outputs as they are
    if case.kind == "regression": return np.asarray([p["value"] for p in preds], dtype=float), None
    probs = np.asarray([[p["probabilities"][l] for l in case.labels] for p in preds], dtype=float)
    if case.kind == "binary":  # `probability` is the positive (second) class's
        bad = [i for i, p in enumerate(preds) if abs(p["probability"] - probs[i, 1]) > TOLERANCE]
        if bad: raise ValueError(f"'probability' is not the positive class's probability (first at record {bad[0]})")
    return probs, [p["label"] for p in preds]

def equality(srv:Server, case:Case)->dict:
    "Score the check records in one request and compare with the in-process pipeline."
    import numpy as np
    status, text = http(srv.port, srv.score_path, request_body(srv.name, case.records, one=False), timeout=60)
    if status != 200: return {"ok": False, "error": f"HTTP {status}: {text[:300]}"}
    try: got, labels = outputs_of(srv.name, json.loads(text)["predictions"], case)
    except (KeyError, TypeError, ValueError) as e:
        return {"ok": False, "error": f"unexpected answer ({type(e).__name__}: {e}): {text[:300]}"}
    want = case.want
    if got.shape != want.shape: return {"ok": False, "error": f"outputs of shape {got.shape} for {want.shape}"}
    diff = float(np.abs(got - want).max())
    out = {"ok": diff <= TOLERANCE, "n": len(got), "max_abs_diff": diff}
    if labels is not None:
        expected = [case.labels[i] for i in want.argmax(1)]
        out["label_mismatches"] = sum(a != b for a, b in zip(labels, expected))
        out["ok"] = out["ok"] and out["label_mismatches"] == 0
    return out

def memory(srv:Server, body_file:Path, rps_hint:float, cfg:dict)->dict:
    ("RSS of the server after a warm-up at c=32 and after at least 10 000 "
     "more requests at c=32; errors of those requests.")
    wrk(srv.port, srv.score_path, body_file, 32, 2, cfg["warmup_s"])
    before = rss_kb(srv.proc.pid)
    runs = []
    while sum(r["requests"] for r in runs) < MEMORY_REQUESTS and len(runs) < 3:
        left = MEMORY_REQUESTS - sum(r["requests"] for r in runs)
        secs = min(60, max(3, math.ceil(1.3 * left / max(rps_hint, 1))))
        runs.append(wrk(srv.port, srv.score_path, body_file, 32, 2, secs))
        rps_hint = runs[-1]["rps"]
    after = rss_kb(srv.proc.pid)
    return {"requests": sum(r["requests"] for r in runs), "seconds": sum(r["seconds"] for r in runs),
            "non2xx": sum(r["non2xx"] for r in runs), "socket_errors": sum(r["socket_errors"] for r in runs),
            "rss_before_mb": before / 1024, "rss_after_mb": after / 1024,
            "growth_pct": (after - before) / before * 100 if before else float("nan"),
            "processes": len(descendants(srv.proc.pid))}

def bench_server(kind:str, case:Case, work:Path, cfg:dict)->dict:
    ("Cold starts, scoring path (ours), equality, load scenarios (and "
     "memory, for ours) of one server; stopped before returning.")
    one = request_body(kind, case.records, one=True)
    files = {}
    for rows in sorted({s[1] for s in cfg["scenarios"]}):
        files[rows] = work/f"{case.name}-{kind}-{rows}.json"
        files[rows].write_bytes(one if rows == 1 else request_body(kind, case.records[:rows], one=False))
    res, starts, srv = {"load_avg_before": os.getloadavg()[0]}, [], None
    try:
        for n in range(1 if kind == "azml-omp1" else cfg["cold_reps"]):
            if srv: stop(srv)
            srv = start(kind, case, work, n)
            starts.append(wait_ready(srv, one))
            say(
                f"  start {n + 1}: ready {starts[-1]['ready_s']:.2f} s, first score {starts[-1]['first_score_s']:.2f} s"
            )
        res["cold_start"] = {"ready_s": statistics.median(s["ready_s"] for s in starts),
                             "first_score_s": statistics.median(s["first_score_s"] for s in starts),
                             "ready_all_s": [s["ready_s"] for s in starts]}
        res["rss_after_start_mb"] = rss_kb(srv.proc.pid) / 1024
        if kind == "ours":
            res["scoring_path"] = scoring_path(srv)
            say(f"  scoring path: {res['scoring_path']}")
        res["equality"] = equality(srv, case)
        say(f"  equality: {res['equality']}")
        res["load"] = load(srv, files, cfg)
        if kind == "ours" and cfg["memory"]:
            res["memory"] = memory(srv, files[1], res["load"]["1-row c=32"]["rps"], cfg)
            say(f"  memory: {res['memory']}")
        res["processes"] = len(descendants(srv.proc.pid))
    except Exception as e:
        res["error"] = f"{type(e).__name__}: {e}"
        say(f"  {kind} FAILED: {res['error']}")
    finally:
        if srv: stop(srv)
    return res

# ----------------------------------------------------------------------------------------------------------- report

def fmt_load(r:dict|None)->str:
    "A load cell: req/s and p50/p99 in ms."
    if not r: return "n/a"
    if not r["requests"]: return "0 r/s (no response)"
    return f"{r['rps']:5.0f} r/s {r['p50_ms']:.2f}/{r['p99_ms']:.1f}"

def ratio(a, b)->str:
    "a/b as 'N.Nx' ('inf' when b is 0), or 'n/a' when either is missing."
    if a is None or b is None: return "n/a"
    return f"{a / b:.1f}x" if b else "inf"

def get(r:dict, kind:str, *path):
    "A nested value of server `kind`'s results, or None."
    v = r["servers"].get(kind, {})
    for k in path:
        if not isinstance(v, dict) or k not in v: return None
        v = v[k]
    return v

def path_text(sp:dict|None)->str:
    "Ours' scoring path as text: 'fast path', or 'pipeline fallback (why)'."
    if not sp: return "n/a"
    if sp.get("error"): return sp["error"]
    return "fast path" if sp.get("fast_path") else ("pipeline fallback ("
                                                    f"{sp.get('fast_path_fallback') or 'no reason given'})")

def targets(r:dict)->list:
    "(scenario, target text, met) for each target of the issue."
    L = lambda sc, kind="ours": get(r, kind, "load", sc)
    out = []
    o32 = L("1-row c=32")
    for kind, what in (("azmlinfsrv", "azmlinfsrv"), ("azml-omp1", "azml OMP=1 (diagnostic)")):
        a32 = L("1-row c=32", kind)
        if o32 and a32:
            out.append(("1-row c=32", f"ours >= 5x {what} req/s ({ratio(o32['rps'], a32['rps'])})",
                        o32["rps"] >= 5 * a32["rps"]))
    if o32: out.append(("1-row c=32", f"ours p99 <= 100 ms ({o32['p99_ms']:.1f})", o32["p99_ms"] <= 100))
    if L("1-row c=1"):
        out.append(("1-row c=1", f"ours p50 <= 3 ms ({L('1-row c=1')['p50_ms']:.2f})", L("1-row c=1")["p50_ms"] <= 3))
    if L("100-row c=1"):
        out.append(("100-row c=1", f"ours p50 <= 15 ms ({L('100-row c=1')['p50_ms']:.2f})",
                    L("100-row c=1")["p50_ms"] <= 15))
    cs = get(r, "ours", "cold_start", "ready_s")
    if cs is not None: out.append(("cold start", f"ours <= 2 s ({cs:.2f})", cs <= 2))
    m = get(r, "ours", "memory")
    if m:
        out.append(("memory", f"ours errors = 0 ({m['non2xx'] + m['socket_errors']})",
                    m["non2xx"] + m["socket_errors"] == 0))
        out.append(("memory", f"ours RSS growth <= 10% ({m['growth_pct']:+.1f}%)", m["growth_pct"] <= 10))
    return out

def equality_line(kind:str, e:dict|None)->str:
    "One line of the equality section."
    if e is None: return f"  {TITLES[kind]:30} n/a"
    if "error" in e: return f"  {TITLES[kind]:30} MISMATCH  {e['error']}"
    what = f"max |output diff| {e['max_abs_diff']:.3g} (tolerance {TOLERANCE:g}) over {e['n']} records"
    if "label_mismatches" in e: what += f", label mismatches {e['label_mismatches']}"
    return f"  {TITLES[kind]:30} {'OK' if e['ok'] else 'MISMATCH':9} {what}"

def header(c:dict, load_end:float)->list:
    "The configuration lines of a report."
    return [f"Serving benchmark ({'quick' if c['quick'] else 'full'}{', all problems' if c['all_problems'] else ''}): "
            f"{c['cpus']} CPUs, load avg {c['load_start']:.2f} at start, {load_end:.2f} at end; wrk {c['duration_s']:g}"
            f" s per scenario after {c['warmup_s']:g} s warm-up; cold start = median of {c['cold_reps']}"
            + (" (1 for azml OMP=1)" if "azml-omp1" in c["servers"] else ""),
            f"versions: mlops_nb {c['mlops_nb']}, mlflow-skinny {c['mlflow']}, azureml-inference-server-http "
            f"{c['azml']}, scikit-learn {c['sklearn']}; 1 worker process per server (each server's default)"]

def render(r:dict)->str:
    "The single-problem report: configuration, per-server details, equality, memory, the summary table with targets."
    c = r["config"]
    lines = header(c, r["load_end"]) + [f"model: {r['case']}",
                                        f"ours scores through: {path_text(get(r, 'ours', 'scoring_path'))}", ""]
    lines.append("Per server (latency in ms; errors = responses >= 400 / socket errors)")
    for kind in c["servers"]:
        s = r["servers"].get(kind, {})
        lines.append(
            f"  {TITLES[kind]} (load avg {s.get('load_avg_before', float('nan')):.2f} before)"
            + (f"  FAILED: {s['error']}" if s.get("error") else "")
        )
        cs = s.get("cold_start")
        if cs:
            lines.append(
                f"    cold start: ready {cs['ready_s']:.2f} s (runs: "
                f"{', '.join(f'{x:.2f}' for x in cs['ready_all_s'])}), "
                f"first score {cs['first_score_s']:.2f} s; RSS after start {s['rss_after_start_mb']:.0f} MB"
            )
        for name, *_ in c["scenarios"]:
            x = s.get("load", {}).get(name)
            if x:
                lines.append(f"    {name:12} {x['rps']:8.1f} req/s {x['rows_per_s']:9.0f} rows/s  p50 "
                             f"{x['p50_ms']:7.2f}  p90 {x['p90_ms']:7.2f}  "
                               f"p99 {x['p99_ms']:7.2f}  max {x['max_ms']:7.1f}  n="
                               f"{x['requests']:6d}  errors {x['non2xx']}/{x['socket_errors']}")
    lines += ["", f"Equality with the in-process pipeline ({r['check']})"]
    lines += [equality_line(kind, get(r, kind, "equality")) for kind in c["servers"]]
    m = get(r, "ours", "memory")
    lines += ["", "Memory of ours under load (c=32, 1-row)"]
    lines.append(f"  {m['requests']} requests in {m['seconds']:.1f} s, errors {m['non2xx']}/{m['socket_errors']}; RSS "
                 f"{m['rss_before_mb']:.1f} MB after warm-up -> {m['rss_after_mb']:.1f} MB at end ("
                 f"{m['growth_pct']:+.1f}%), {m['processes']} process(es)" if m else "  n/a")
    kinds = list(c["servers"])
    short = {"ours": "ours", "azmlinfsrv": "azml", "azml-omp1": "azml1", "mlflow": "mlflow"}
    others = [k for k in kinds if k != "ours"]
    lines += ["",
              "Summary: req/s p50/p99 ms (100-row: req/s, then rows/s); cold start / first score: s from process start"
              + ("; azml OMP=1 = azmlinfsrv with OMP_NUM_THREADS=1" if "azml-omp1" in kinds else "")]
    w = 25
    names = {"ours": "ours", "azmlinfsrv": "azmlinfsrv", "azml-omp1": "azml OMP=1", "mlflow": "mlflow serve"}
    head = f"{'scenario':12}|" + "|".join(f" {names[k]:{w - 1}}"
                                          for k in kinds) + "|" + "|".join(f" {'ours/' + short[k]:12}" for k in others)
    lines += [head, "-" * len(head)]
    row = (
        lambda label, cells, ratios: f"{label:12}|"
        + "|".join(f" {c:{w - 1}}" for c in cells)
        + "|"
        + "|".join(f" {x:12}" for x in ratios)
    )
    for name, *_ in c["scenarios"]:
        xs = {k: get(r, k, "load", name) for k in kinds}
        rps = {k: (x["rps"] if x else None) for k, x in xs.items()}
        ratios = [ratio(rps["ours"], rps[k]) for k in others]
        lines.append(row(name, [fmt_load(xs[k]) for k in kinds], ratios))
        if name.startswith("100-row"):
            lines.append(row("  rows/s", [f"{xs[k]['rows_per_s']:.0f} rows/s" if xs[k] else "n/a" for k in kinds],
                             ratios))
    cell = lambda v: f"{v:.2f} s" if v is not None else "n/a"
    for label, key in (("cold start", "ready_s"), ("first score", "first_score_s")):
        lines.append(row(label, [cell(get(r, k, "cold_start", key)) for k in kinds], [""] * len(others)))
    lines += ["", "Targets (from the issue)"]
    for sc, text, met in r["targets"]: lines.append(f"  {sc:12} {text:52} {'met' if met else 'MISSED'}")
    return "\n".join(lines)

def problem_row(name:str, r:dict, servers:list)->dict:
    "The issue's figures of one problem in the --all-problems run."
    if "error" in r: return {"problem": name, "error": r["error"]}
    o32, a32, o1 = get(r, "ours", "load", "1-row c=32"), get(r, "azmlinfsrv", "load",
                                                             "1-row c=32"), get(r, "ours", "load", "1-row c=1")
    a1, m32 = get(r, "azmlinfsrv", "load", "1-row c=1"), get(r, "azml-omp1", "load", "1-row c=32")
    eq = {k: get(r, k, "equality") for k in servers}
    errors = sum(x["non2xx"] + x["socket_errors"] for k in servers for x in (get(r, k, "load") or {}).values())
    sp = get(r, "ours", "scoring_path")
    return {"problem": name, "kind": r["kind"], "ours_rps_c32": o32 and o32["rps"], "azml_rps_c32": a32 and a32["rps"],
            "azml_omp1_rps_c32": m32 and m32["rps"], "ratio_omp1_c32": o32["rps"] / m32["rps"] if o32 and m32
            and m32["rps"] else None,
            # azmlinfsrv may answer no request at all within a short measured run (its OpenMP stalls): then the ratio is
            # inf
            "ratio_c32": (o32["rps"] / a32["rps"] if a32["rps"] else math.inf) if o32 and a32 else None,
            "ours_p50_c1_ms": o1 and o1["p50_ms"], "ours_p99_c32_ms": o32 and o32["p99_ms"], "azml_p50_c1_ms": a1
            and a1["p50_ms"],
            "fast_path": bool(sp and sp.get("fast_path")), "fast_path_fallback": sp and sp.get("fast_path_fallback"),
            "scoring_path": path_text(sp), "equal": all(e and e.get("ok") for e in eq.values()), "load_errors": errors,
            "server_errors": {k: get(r, k, "error") for k in servers if get(r, k, "error")}}

def render_all(r:dict)->str:
    "The --all-problems report: configuration, per problem the details, then the figures table with targets."
    c = r["config"]
    lines = header(c, r["load_end"]) + [""]
    for name, pr in r["problems"].items():
        if "error" in pr:
            lines += [f"{name}: FAILED before serving: {pr['error']}", ""]
            continue
        lines.append(f"{pr['case']}")
        for kind in c["servers"]:
            s = pr["servers"].get(kind, {})
            cs = s.get("cold_start")
            lines.append(f"  {TITLES[kind]:23}" + (f" ready {cs['ready_s']:.2f} s, first score "
                                                   f"{cs['first_score_s']:.2f} s" if cs else "")
                         + (f"  FAILED: {s['error']}" if s.get("error") else ""))
            for sc, *_ in c["scenarios"]:
                x = s.get("load", {}).get(sc)
                if x:
                    lines.append(f"    {sc:12} {x['rps']:8.1f} req/s  p50 {x['p50_ms']:7.2f}  p90 "
                                 f"{x['p90_ms']:7.2f}  p99 {x['p99_ms']:7.2f}  "
                                   f"max {x['max_ms']:7.1f}  n={x['requests']:6d}  errors "
                                   f"{x['non2xx']}/{x['socket_errors']}")
            lines.append(equality_line(kind, s.get("equality")).replace("  ", "    ", 1))
        lines.append("")
    omp1 = "azml-omp1" in c["servers"]
    lines += ["Figures per problem (1-row requests; req/s at concurrency 32, p50 "
              "at concurrency 1; equal = every server matches the",
              "in-process pipeline within 1e-6; targets: ours >= 5x azmlinfsrv req/s at c=32, ours p50 <= 3 ms at c=1"
              + (";\nazml OMP=1 = azmlinfsrv with OMP_NUM_THREADS=1, a diagnostic)" if omp1 else ")")]
    head = (f"{'problem':15}|{'kind':11}|{'ours c=32':>10} |{'azml c=32':>10} |{'ours/azml':>10} {'':6}|"
            + (f"{'azml OMP=1':>11} |{'ours/that':>10} |" if omp1
               else "") + f"{'p50 c=1':>9} {'':6}|{'equal':6}| scoring path of ours")
    lines += [head, "-" * len(head)]
    f = lambda v, fmt: format(v, fmt) if v is not None else "n/a".rjust(int(fmt.split(".")[0] or 0))
    ok = lambda met: "met" if met else "MISSED"
    for row in r["table"]:
        if "error" in row:
            lines.append(f"{row['problem']:15}| FAILED: {row['error']}")
            continue
        lines.append(f"{row['problem']:15}|{row['kind']:11}|{f(row['ours_rps_c32'], '10.0f')} |"
                     f"{f(row['azml_rps_c32'], '10.0f')} |{ratio(row['ours_rps_c32'], row['azml_rps_c32']):>10} "
                     f"{ok(row['ratio_c32'] is not None and row['ratio_c32'] >= 5):6}|"
                     + (f"{f(row['azml_omp1_rps_c32'], '11.0f')} |"
                        f"{ratio(row['ours_rps_c32'], row['azml_omp1_rps_c32']):>10} |" if omp1 else "")
                     + f"{f(row['ours_p50_c1_ms'], '5.2f') + ' ms':>9} "
                       f"{ok(row['ours_p50_c1_ms'] is not None and row['ours_p50_c1_ms'] <= 3):6}|"
                     f"{'yes' if row['equal'] else 'NO':6}| {row['scoring_path']}"
                     + (f"  (load errors: {row['load_errors']})" if row["load_errors"] else "")
                     + (f"  (FAILED: {row['server_errors']})" if row["server_errors"] else ""))
    return "\n".join(lines)

# ------------------------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    "Command-line options."
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problem", choices=list(PROBLEMS), default=DEFAULT_PROBLEM,
                   help=f"problem whose model is served in the single-problem run (default: {DEFAULT_PROBLEM})")
    p.add_argument("--all-problems", action="store_true",
                   help="for every problem: ours vs azmlinfsrv (and azmlinfsrv with OMP_NUM_THREADS=1 unless --quick), "
                        "1-row at c=1 and c=32, and ours' scoring path (about 8 minutes, --quick about 3)")
    p.add_argument("--quick", action="store_true",
                   help="shorter runs (4 s per scenario, 1 s warm-up, 1 cold start): ~1.5 minutes per problem")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (the table goes to stderr)")
    p.add_argument("--limits", action="store_true",
                   help="the machine's-limit run instead (bench/bench_limits.py): ours, MLServer "
                   "(100 and 250 trees) and azmlinfsrv beside the in-process limits, interleaved, CPU per server")
    return p.parse_args(argv)

def check_tools():
    "Fail early, with the fix, when a server or wrk is missing."
    missing = [(str(p), fix) for p, fix in [(BIN/"mlops-nb", "scripts/setup"), (BIN/"mlflow", "scripts/setup"),
               (AZML_BIN/"azmlinfsrv", "bash scripts/azml-venv")] if not p.exists()]
    if not (shutil.which("wrk") or Path("/usr/bin/wrk").exists()): missing.append(("wrk", "apt-get install -y wrk"))
    if missing: raise SystemExit("bench_serve: missing " + "; ".join(f"{p} (run {fix})" for p, fix in missing))

def check_text(case:Case)->str:
    "What the equality check scores."
    return (f"{len(case.records)} generated rows of period {case.problem.default_period + 2}, seed 3"
            if case.problem.generate
            else f"{len(case.records)} rows of the {case.name} table, sampled with seed 3")

def run_problem(name:str, work:Path, cfg:dict)->dict:
    "Train the problem's model, then benchmark the configured servers one after the other."
    say(f"{name}: training the model")
    t0 = time.perf_counter()
    case = make_case(name, work)
    say(f"{name}: {case.describe()} in {time.perf_counter() - t0:.0f} s")
    r = {"problem": name, "kind": case.kind, "case": case.describe(), "check": check_text(case), "servers": {}}
    for kind in cfg["servers"]:
        say(f"{name}: {TITLES[kind]}")
        r["servers"][kind] = bench_server(kind, case, work, cfg)
    return r

def main(argv=None):
    "Train the model(s), benchmark the servers one after the other, print the report."
    a = parse_args(argv)
    if a.limits:
        import bench_limits
        return bench_limits.main(["--json"] if a.json else [])
    check_tools()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop the servers
    work = Path(tempfile.mkdtemp(prefix="mlops_nb_bench_serve_"))
    (work/"state").mkdir()
    os.environ.update(MLOPS_NB_HOME=str(work/"state"), MLFLOW_ALLOW_PICKLE_DESERIALIZATION="true",
                      MLFLOW_DISABLE_TELEMETRY="true")
    q, every = a.quick, a.all_problems
    cfg = {"quick": q, "all_problems": every, "problem": None if every else a.problem,
           "duration_s": 4 if q else 10, "warmup_s": 1 if q else 2, "cold_reps": 1 if q or every else 3,
           "servers": [k for k in (ALL_SERVERS if every else SERVERS) if not (q and k == "azml-omp1")],
           "scenarios": ALL_SCENARIOS if every else SCENARIOS, "memory": not every,
           "cpus": os.cpu_count(), "load_start": os.getloadavg()[0], "mlops_nb": version("mlops_nb"),
           "mlflow": version("mlflow-skinny"), "sklearn": version("scikit-learn"),
           "azml": pkg_version(AZML_BIN/"python", "azureml-inference-server-http")}
    t0 = time.perf_counter()
    try:
        if every:
            r = {"config": cfg, "problems": {}}
            for name in PROBLEMS:
                try: r["problems"][name] = run_problem(name, work, cfg)
                except Exception as e:
                    r["problems"][name] = {"error": f"{type(e).__name__}: {e}"}
                    say(f"{name} FAILED: {r['problems'][name]['error']}")
                finally:
                    for srv in list(LIVE): stop(srv)
            r["table"] = [problem_row(n, pr, cfg["servers"]) for n, pr in r["problems"].items()]
            r["load_end"] = os.getloadavg()[0]
            show = render_all
        else:
            r = {"config": cfg, **run_problem(a.problem, work, cfg)}
            r["load_end"] = os.getloadavg()[0]
            r["targets"] = targets(r)
            show = render
        r["bench_wall_s"] = time.perf_counter() - t0
        text = show(r) + f"\n\n(bench wall time {r['bench_wall_s']:.0f} s; state in a temp folder, removed)"
        if "targets" in r: r["targets"] = [{"scenario": s, "target": t, "met": m} for s, t, m in r["targets"]]
        for row in r.get("table", []):  # JSON has no inf
            if row.get("ratio_c32") == math.inf:
                row["ratio_c32"], row["ratio_note"] = None, "azmlinfsrv answered no request at c=32"
        if a.json:
            print(text, file=sys.stderr)
            print(json.dumps(r, indent=2, default=str))
        else: print(text)
    finally:
        for srv in list(LIVE): stop(srv)
        shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__": main()
