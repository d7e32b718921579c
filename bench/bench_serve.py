"""Serving benchmark: `mlops-nb serve` vs Azure ML's `azmlinfsrv` vs `mlflow models serve`, one model; prints figures,
never asserts on them.

Run from the repository root:  .venv/bin/python bench/bench_serve.py [--quick] [--json]
(needs .venv, .venv-azml from `bash scripts/azml-venv`, and wrk; about 5 minutes, --quick about 1.5 minutes)

Everything goes to a temporary folder (MLOPS_NB_HOME, the model, logs, request bodies), removed at the end; the servers
run with that folder as working directory. We only ever connect to 127.0.0.1 (azmlinfsrv itself binds 0.0.0.0: it has
no host flag). Each server runs alone (started, measured, stopped before the next starts) with its default single
worker process, so none competes with another for the 2 cores; wrk shares the cores with the server it measures.

What is measured, and how:
1. Model: a HistGradientBoosting pipeline of the example problem (20 000 listings of 2021, 10 epochs x 25 rounds = 250
   trees, as the real full run), saved as an MLflow model folder with `mlops_nb_model.json` beside MLmodel (the
   repo-root conftest's `save_model` / `model_folder`, copied).
2. Cold start: process start (just before Popen) -> ready, polled every 20 ms, the median of 3 starts (1 with --quick).
   Ready means: ours GET /ready 200; azmlinfsrv GET / 200 and one POST /score 200 (its liveness answers before the
   model is usable); mlflow GET /ping 200. "First score" is process start -> the first successful 1-row prediction.
3. Load: wrk with bench/wrk_post.lua (POST of a fixed JSON body; its done() prints request count, status >= 400 count,
   socket errors and latency percentiles). Per scenario a warm-up run (2 s; 1 s with --quick) is discarded, then a
   measured run (10 s; 4 s with --quick): 1-row requests at concurrency 1, 8 (1 wrk thread) and 32 (2 threads), and
   100-row requests at concurrency 1. Bodies: ours and azmlinfsrv get listings (a JSON object, a list of 100 for
   batches) on /score; mlflow gets the model's signature inputs (`{"dataframe_records": [derive_features(...)]}`) on
   /invocations, and answers class labels (its sklearn pyfunc calls `predict`), not probabilities.
4. Equality: 200 listings of 2023 (seed 3; labels and listing_id dropped, listing_date as YYYY-MM-DD) scored in one
   request by each server vs the same pipeline in this process: probabilities of ours and azmlinfsrv within 1e-6 of
   `predict_proba(prepare_features(df))[:, 1]`, mlflow's labels equal to `predict(prepare_features(df))`.
5. Memory (ours): after a warm-up at c=32, RSS (VmRSS of the server and its child processes) is read, then at least
   10 000 1-row requests are sent at c=32 (wrk runs sized from the measured c=32 throughput), then RSS is read again.
6. Diagnostic (full run only): azmlinfsrv again with OMP_NUM_THREADS=1 (one start). By default scikit-learn's OpenMP
   prediction spreads each tiny request over both cores, and the idle OpenMP thread spins against the gunicorn
   worker and wrk: on this 2-core machine that stalls requests for up to ~1 s. Ours limits OpenMP to one thread per
   call, so this shows how much of the gap to azmlinfsrv is that setting rather than the server.
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
SERVERS = ("ours", "azmlinfsrv", "azml-omp1", "mlflow")  # azml-omp1: a diagnostic, not run with --quick
TITLES = {"ours": "ours (mlops-nb serve)", "azmlinfsrv": "azmlinfsrv", "azml-omp1": "azmlinfsrv OMP_NUM_THREADS=1",
          "mlflow": "mlflow models serve"}
BASE = {"ours": "ours", "azmlinfsrv": "azmlinfsrv", "azml-omp1": "azmlinfsrv", "mlflow": "mlflow"}  # server program
# (name, rows per request, connections, wrk threads)
SCENARIOS = [("1-row c=1", 1, 1, 1), ("1-row c=8", 1, 8, 1), ("1-row c=32", 1, 32, 2), ("100-row c=1", 100, 1, 1)]
MEMORY_REQUESTS = 10_000
GOOD = {"list_price": 650000, "bedrooms": 3, "bathrooms": 2.0, "sqft": 1800, "lot_size": 3000, "year_built": 1995,
        "days_on_market": 12, "neighbourhood": "Glebe", "property_type": "detached", "listing_date": "2024-05-01"}
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
        p = todo.pop(); out.append(p)
        todo += [c for c, pp in parent.items() if pp == p]
    return out

def rss_kb(pid:int)->int:
    "VmRSS in kB of `pid` and its child processes, summed."
    total = 0
    for p in descendants(pid):
        try: total += next(int(l.split()[1]) for l in Path(f"/proc/{p}/status").read_text().splitlines() if l.startswith("VmRSS:"))
        except (OSError, StopIteration): pass
    return total

def pkg_version(python:Path, pkg:str)->str:
    "Version of `pkg` installed for interpreter `python`, or '?'."
    p = subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version({pkg!r}))"], capture_output=True, text=True)
    return p.stdout.strip() or "?"

# ----------------------------------------------------------------------------------------------------- model, data

def make_model(root:Path):
    "Train the example model (250 trees) and save it as an MLflow model folder with its identity; return (dir, pipeline)."
    import mlflow
    from mlops_nb.data import generate_listings, TARGET
    from mlops_nb.train import prepare_features, build_model, train_epochs, pinned_requirements, SKOPS_TRUSTED_TYPES
    d = root/"model"
    df = generate_listings(2021, 20_000, seed=0)
    X, y = prepare_features(df), df[TARGET].astype(int)
    model = build_model(seed=0, iters_per_epoch=25)
    train_epochs(model, X, y, X[:200], y[:200], epochs=10)
    sig = mlflow.models.infer_signature(X.head(20), model.predict_proba(X.head(20))[:, 1])
    mlflow.sklearn.save_model(model, str(d), signature=sig, input_example=X.head(3), pip_requirements=pinned_requirements(),
                              skops_trusted_types=SKOPS_TRUSTED_TYPES)
    (d/"mlops_nb_model.json").write_text(json.dumps({"name": "ottawa-housing-classifier", "version": "1", "run_id": "run-1"}))
    return d, model

def check_listings()->list:
    "The 200 listings of the equality check: 2023, seed 3, labels and listing_id dropped, listing_date as YYYY-MM-DD."
    from mlops_nb.data import generate_listings, LABEL_COLUMNS
    df = generate_listings(2023, 200, seed=3).drop(columns=LABEL_COLUMNS + ["listing_id"])
    df["listing_date"] = df["listing_date"].dt.strftime("%Y-%m-%d")
    return json.loads(to_json(df.to_dict("records")))

def request_body(kind:str, records:list, one:bool)->bytes:
    "The request body for server `kind`: listings (an object when `one`), or mlflow's dataframe_records of model inputs."
    if BASE[kind] == "mlflow":
        from mlops_nb.train import derive_features
        return to_json({"dataframe_records": [derive_features(r) for r in records]})
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

def server_env(name:str, home:Path, model_dir:Path)->dict:
    "The environment of server `name`: our temp MLOPS_NB_HOME, no inherited venv or Azure/MLOPS_NB settings."
    kind = BASE[name]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
           and not k.startswith(("AZUREML_", "MLOPS_NB_"))}
    env.update(MLOPS_NB_HOME=str(home), MLFLOW_ALLOW_PICKLE_DESERIALIZATION="true", MLFLOW_DISABLE_TELEMETRY="true",
               PYTHONUNBUFFERED="1")
    venv_bin = AZML_BIN if kind == "azmlinfsrv" else BIN
    env["PATH"] = f"{venv_bin}:{env.get('PATH', '')}"  # mlflow runs `exec uvicorn ...` through bash: it must be on PATH
    if kind == "azmlinfsrv":
        env["AZUREML_MODEL_DIR"] = str(model_dir)
        # gunicorn >= 27 opens a control socket at ~/.gunicorn/gunicorn.ctl, one path for every server of the user: not ours
        if any(int(d.name.split("-")[1].split(".")[0]) >= 27 for d in (AZML_BIN.parent).glob("lib/python*/site-packages/gunicorn-*.dist-info")):
            env["GUNICORN_CMD_ARGS"] = "--no-control-socket"
    if name == "azml-omp1": env["OMP_NUM_THREADS"] = "1"  # what ours does per call (threadpool_limits), for the whole process
    return env

def server_cmd(name:str, model_dir:Path, port:int)->list:
    "The command line of server `name` on `port`."
    kind = BASE[name]
    if kind == "ours": return [str(BIN/"mlops-nb"), "serve", "--model", str(model_dir), "--entry", str(ENTRY), "--port", str(port)]
    if kind == "azmlinfsrv": return [str(AZML_BIN/"azmlinfsrv"), "--entry_script", str(ENTRY), "--port", str(port)]
    return [str(BIN/"mlflow"), "models", "serve", "-m", str(model_dir), "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]

def start(kind:str, model_dir:Path, work:Path, n:int)->Server:
    "Start server `kind` (a name of SERVERS) in a new process group, output to a log file in `work`."
    port, log = free_port(), work/f"{kind}-{n}.log"
    env = server_env(kind, work/"state", model_dir)
    with open(log, "wb") as f:
        t0 = time.monotonic()
        proc = subprocess.Popen(server_cmd(kind, model_dir, port), cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT,
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
        if time.monotonic() - srv.t0 > budget: raise RuntimeError(f"{srv.name} not ready within {budget:.0f} s:\n{srv.log_tail()}")
        if is_ready(srv, one): break
        time.sleep(0.02)
    ready = time.monotonic() - srv.t0
    status, text = http(srv.port, srv.score_path, one)
    if status != 200: raise RuntimeError(f"{srv.name}: first score answered {status}: {text[:300]}\n{srv.log_tail()}")
    return {"ready_s": ready, "first_score_s": time.monotonic() - srv.t0}

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
            "p50_ms": w["p50_us"] / 1e3, "p90_ms": w["p90_us"] / 1e3, "p99_ms": w["p99_us"] / 1e3, "max_ms": w["max_us"] / 1e3,
            "mean_ms": w["mean_us"] / 1e3, "non2xx": int(w["status"]),
            "socket_errors": int(w["connect"] + w["read"] + w["write"] + w["timeout"])}

def load(srv:Server, files:dict, cfg:dict)->dict:
    "The four wrk scenarios against `srv`, each after a discarded warm-up run."
    out = {}
    for name, rows, conns, threads in SCENARIOS:
        f = files[rows]
        wrk(srv.port, srv.score_path, f, conns, threads, cfg["warmup_s"])
        r = wrk(srv.port, srv.score_path, f, conns, threads, cfg["duration_s"])
        r["rows_per_s"] = r["rps"] * rows
        say(f"  {name:12} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
            f"errors {r['non2xx']}+{r['socket_errors']}")
        out[name] = r
    return out

def equality(srv:Server, records:list, want_p, want_labels)->dict:
    "Score the 200 check listings in one request and compare with the in-process pipeline."
    import numpy as np
    status, text = http(srv.port, srv.score_path, request_body(srv.kind, records, one=False), timeout=60)
    if status != 200: return {"ok": False, "error": f"HTTP {status}: {text[:300]}"}
    preds = json.loads(text)["predictions"]
    if srv.kind == "mlflow":
        got = np.asarray(preds).astype(int)
        mism = int((got != want_labels).sum()) if len(got) == len(want_labels) else len(want_labels)
        return {"ok": mism == 0, "n": len(got), "label_mismatches": mism}
    got = np.asarray([p["probability"] for p in preds], dtype=float)
    if len(got) != len(want_p): return {"ok": False, "error": f"{len(got)} predictions for {len(want_p)} listings"}
    diff = float(np.abs(got - want_p).max())
    labels = np.asarray([p["label"] == "above_asking" for p in preds]).astype(int)
    return {"ok": diff <= 1e-6, "n": len(got), "max_abs_diff": diff, "label_mismatches": int((labels != want_labels).sum())}

def memory(srv:Server, body_file:Path, rps_hint:float, cfg:dict)->dict:
    "RSS of the server after a warm-up at c=32 and after at least 10 000 more requests at c=32; errors of those requests."
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
            "growth_pct": (after - before) / before * 100 if before else float("nan"), "processes": len(descendants(srv.proc.pid))}

def bench_server(kind:str, model_dir:Path, work:Path, records:list, want, cfg:dict)->dict:
    "Cold starts, equality, load scenarios (and memory, for ours) of one server; stopped before returning."
    one = request_body(kind, records, one=True)
    files = {}
    for rows in (1, 100):
        files[rows] = work/f"{kind}-{rows}.json"
        files[rows].write_bytes(one if rows == 1 else request_body(kind, records[:100], one=False))
    res, starts, srv = {"load_avg_before": os.getloadavg()[0]}, [], None
    try:
        for n in range(1 if kind == "azml-omp1" else cfg["cold_reps"]):
            if srv: stop(srv)
            srv = start(kind, model_dir, work, n)
            starts.append(wait_ready(srv, one))
            say(f"  start {n + 1}: ready {starts[-1]['ready_s']:.2f} s, first score {starts[-1]['first_score_s']:.2f} s")
        res["cold_start"] = {"ready_s": statistics.median(s["ready_s"] for s in starts),
                             "first_score_s": statistics.median(s["first_score_s"] for s in starts),
                             "ready_all_s": [s["ready_s"] for s in starts]}
        res["rss_after_start_mb"] = rss_kb(srv.proc.pid) / 1024
        res["equality"] = equality(srv, records, *want)
        say(f"  equality: {res['equality']}")
        res["load"] = load(srv, files, cfg)
        if kind == "ours":
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

def targets(r:dict)->list:
    "(scenario, target text, met) for each target of the issue."
    L = lambda sc, kind="ours": get(r, kind, "load", sc)
    out = []
    o32 = L("1-row c=32")
    for kind, what in (("azmlinfsrv", "azmlinfsrv"), ("azml-omp1", "azml OMP=1 (diagnostic)")):
        a32 = L("1-row c=32", kind)
        if o32 and a32: out.append(("1-row c=32", f"ours >= 5x {what} req/s ({ratio(o32['rps'], a32['rps'])})", o32["rps"] >= 5 * a32["rps"]))
    if o32: out.append(("1-row c=32", f"ours p99 <= 100 ms ({o32['p99_ms']:.1f})", o32["p99_ms"] <= 100))
    if L("1-row c=1"): out.append(("1-row c=1", f"ours p50 <= 3 ms ({L('1-row c=1')['p50_ms']:.2f})", L("1-row c=1")["p50_ms"] <= 3))
    if L("100-row c=1"): out.append(("100-row c=1", f"ours p50 <= 15 ms ({L('100-row c=1')['p50_ms']:.2f})", L("100-row c=1")["p50_ms"] <= 15))
    cs = get(r, "ours", "cold_start", "ready_s")
    if cs is not None: out.append(("cold start", f"ours <= 2 s ({cs:.2f})", cs <= 2))
    m = get(r, "ours", "memory")
    if m:
        out.append(("memory", f"ours errors = 0 ({m['non2xx'] + m['socket_errors']})", m["non2xx"] + m["socket_errors"] == 0))
        out.append(("memory", f"ours RSS growth <= 10% ({m['growth_pct']:+.1f}%)", m["growth_pct"] <= 10))
    return out

def render(r:dict)->str:
    "The report: configuration, per-server details, equality, memory, the summary table with targets."
    c = r["config"]
    lines = [f"Serving benchmark ({'quick' if c['quick'] else 'full'}): {c['cpus']} CPUs, load avg {c['load_start']:.2f} at start, "
             f"{r['load_end']:.2f} at end; wrk {c['duration_s']:g} s per scenario after {c['warmup_s']:g} s warm-up; "
             f"cold start = median of {c['cold_reps']} (1 for azml OMP=1)",
             f"versions: mlops_nb {c['mlops_nb']}, mlflow-skinny {c['mlflow']}, azureml-inference-server-http {c['azml']}, "
             f"scikit-learn {c['sklearn']}; model: {c['trees']} trees, 1 worker process per server (each server's default)", ""]
    lines.append("Per server (latency in ms; errors = responses >= 400 / socket errors)")
    for kind in r["config"]["servers"]:
        s = r["servers"].get(kind, {})
        lines.append(f"  {TITLES[kind]} (load avg {s.get('load_avg_before', float('nan')):.2f} before)" + (f"  FAILED: {s['error']}" if s.get("error") else ""))
        cs = s.get("cold_start")
        if cs: lines.append(f"    cold start: ready {cs['ready_s']:.2f} s (runs: {', '.join(f'{x:.2f}' for x in cs['ready_all_s'])}), "
                            f"first score {cs['first_score_s']:.2f} s; RSS after start {s['rss_after_start_mb']:.0f} MB")
        for name, rows, conns, _ in SCENARIOS:
            x = s.get("load", {}).get(name)
            if x: lines.append(f"    {name:12} {x['rps']:8.1f} req/s {x['rows_per_s']:9.0f} rows/s  p50 {x['p50_ms']:7.2f}  p90 {x['p90_ms']:7.2f}  "
                               f"p99 {x['p99_ms']:7.2f}  max {x['max_ms']:7.1f}  n={x['requests']:6d}  errors {x['non2xx']}/{x['socket_errors']}")
    lines += ["", "Equality with the in-process pipeline (200 listings of 2023, seed 3)"]
    for kind in r["config"]["servers"]:
        e = get(r, kind, "equality")
        if e is None: lines.append(f"  {TITLES[kind]:30} n/a"); continue
        if "error" in e: lines.append(f"  {TITLES[kind]:30} MISMATCH  {e['error']}"); continue
        what = (f"labels vs predict: {e['label_mismatches']} mismatches of {e['n']}" if BASE[kind] == "mlflow" else
                f"max |probability diff| {e['max_abs_diff']:.3g} (tolerance 1e-6), label mismatches {e['label_mismatches']}")
        lines.append(f"  {TITLES[kind]:30} {'OK' if e['ok'] else 'MISMATCH':9} {what}")
    m = get(r, "ours", "memory")
    lines += ["", "Memory of ours under load (c=32, 1-row)"]
    lines.append(f"  {m['requests']} requests in {m['seconds']:.1f} s, errors {m['non2xx']}/{m['socket_errors']}; RSS "
                 f"{m['rss_before_mb']:.1f} MB after warm-up -> {m['rss_after_mb']:.1f} MB at end ({m['growth_pct']:+.1f}%), "
                 f"{m['processes']} process(es)" if m else "  n/a")
    kinds = [k for k in r["config"]["servers"]]
    short = {"ours": "ours", "azmlinfsrv": "azml", "azml-omp1": "azml1", "mlflow": "mlflow"}
    others = [k for k in kinds if k != "ours"]
    lines += ["", "Summary: req/s p50/p99 ms (100-row: req/s, then rows/s); cold start / first score: s from process start"
              + ("; azml OMP=1 = azmlinfsrv with OMP_NUM_THREADS=1" if "azml-omp1" in kinds else "")]
    w = 25
    names = {"ours": "ours", "azmlinfsrv": "azmlinfsrv", "azml-omp1": "azml OMP=1", "mlflow": "mlflow serve"}
    head = f"{'scenario':12}|" + "|".join(f" {names[k]:{w - 1}}" for k in kinds) + "|" + "|".join(f" {'ours/' + short[k]:12}" for k in others)
    lines += [head, "-" * len(head)]
    row = lambda label, cells, ratios: f"{label:12}|" + "|".join(f" {c:{w - 1}}" for c in cells) + "|" + "|".join(f" {x:12}" for x in ratios)
    for name, *_ in SCENARIOS:
        xs = {k: get(r, k, "load", name) for k in kinds}
        rps = {k: (x["rps"] if x else None) for k, x in xs.items()}
        ratios = [ratio(rps["ours"], rps[k]) for k in others]
        lines.append(row(name, [fmt_load(xs[k]) for k in kinds], ratios))
        if name.startswith("100-row"):
            lines.append(row("  rows/s", [f"{xs[k]['rows_per_s']:.0f} rows/s" if xs[k] else "n/a" for k in kinds], ratios))
    cell = lambda v: f"{v:.2f} s" if v is not None else "n/a"
    for label, key in (("cold start", "ready_s"), ("first score", "first_score_s")):
        lines.append(row(label, [cell(get(r, k, "cold_start", key)) for k in kinds], [""] * len(others)))
    lines += ["", "Targets (from the issue)"]
    for sc, text, met in r["targets"]: lines.append(f"  {sc:12} {text:52} {'met' if met else 'MISSED'}")
    return "\n".join(lines)

# ------------------------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    "Command-line options."
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="shorter runs (4 s per scenario, 1 s warm-up, 1 cold start): ~1.5 minutes")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (the table goes to stderr)")
    return p.parse_args(argv)

def check_tools():
    "Fail early, with the fix, when a server or wrk is missing."
    missing = [(str(p), fix) for p, fix in [(BIN/"mlops-nb", "scripts/setup"), (BIN/"mlflow", "scripts/setup"),
               (AZML_BIN/"azmlinfsrv", "bash scripts/azml-venv")] if not p.exists()]
    if not (shutil.which("wrk") or Path("/usr/bin/wrk").exists()): missing.append(("wrk", "apt-get install -y wrk"))
    if missing: raise SystemExit("bench_serve: missing " + "; ".join(f"{p} (run {fix})" for p, fix in missing))

def main(argv=None):
    "Train the model, benchmark the three servers one after the other, print the report."
    a = parse_args(argv)
    check_tools()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop the servers
    work = Path(tempfile.mkdtemp(prefix="mlops_nb_bench_serve_"))
    (work/"state").mkdir()
    os.environ.update(MLOPS_NB_HOME=str(work/"state"), MLFLOW_ALLOW_PICKLE_DESERIALIZATION="true", MLFLOW_DISABLE_TELEMETRY="true")
    q = a.quick
    cfg = {"quick": q, "duration_s": 4 if q else 10, "warmup_s": 1 if q else 2, "cold_reps": 1 if q else 3,
           "servers": [k for k in SERVERS if not (q and k == "azml-omp1")],
           "cpus": os.cpu_count(), "load_start": os.getloadavg()[0], "mlops_nb": version("mlops_nb"),
           "mlflow": version("mlflow-skinny"), "sklearn": version("scikit-learn"),
           "azml": pkg_version(AZML_BIN/"python", "azureml-inference-server-http")}
    t0 = time.perf_counter()
    try:
        say("training the model (20 000 rows, 250 trees)")
        model_dir, pipeline = make_model(work)
        cfg["trees"] = int(pipeline.named_steps["clf"].n_iter_)
        from mlops_nb.train import prepare_features
        import pandas as pd
        records = check_listings()
        X = prepare_features(pd.DataFrame(records))
        want = (pipeline.predict_proba(X)[:, 1], pipeline.predict(X).astype(int))
        r = {"config": cfg, "servers": {}}
        for kind in cfg["servers"]:
            say(f"{TITLES[kind]}")
            r["servers"][kind] = bench_server(kind, model_dir, work, records, want, cfg)
        r["load_end"], r["bench_wall_s"] = os.getloadavg()[0], time.perf_counter() - t0
        r["targets"] = targets(r)
        text = render(r) + f"\n\n(bench wall time {r['bench_wall_s']:.0f} s; state in a temp folder, removed)"
        r["targets"] = [{"scenario": s, "target": t, "met": m} for s, t, m in r["targets"]]
        if a.json:
            print(text, file=sys.stderr)
            print(json.dumps(r, indent=2, default=str))
        else: print(text)
    finally:
        for srv in list(LIVE): stop(srv)
        shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__": main()
