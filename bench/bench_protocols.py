"""Protocol benchmark: the other clients' protocols on `mlops-nb serve` against its own /score, and its Open Inference
Protocol v2 route against Seldon MLServer (the reference v2 server) serving the same model folder; prints figures, never
asserts on them.

Run from the repository root (needs .venv and wrk; .venv-mlserver is made by `bash bench/mlserver-venv`, which this
script runs first, a no-op when up to date; about 2 minutes the first time):
  .venv/bin/python bench/bench_protocols.py [--quick] [--json] [--skip-mlserver] [--mlserver-batch SIZE:SECONDS]
A full run takes about 8 minutes, --quick about 2.

Everything goes to a temporary folder (MLOPS_NB_HOME, the model, MLServer's settings, logs, request bodies), removed at
the end; every process started here is stopped, also on error or SIGTERM. We only ever connect to 127.0.0.1, and every
server binds it. Each server runs alone (started, measured, stopped before the next starts), one process each; wrk
shares the 2 cores with the server it measures. Ratios are between figures of the same run.

What is measured, and how:
1. Model: the Ottawa example (`mlops_nb.examples.ottawa:PROBLEM`), made exactly as bench/bench_serve.py makes it (its
   `make_case`: 20 000 generated listings, 250 boosting iterations, `mlops_nb.train.save_model`, `mlops_nb_model.json`
   naming it ottawa-housing-classifier version 1). Check records: 200 generated listings of 2023 (seed 3), inputs only.
2. Adapters on ours (`mlops-nb serve --model FOLDER --port N`, MLOPS_NB_PROBLEM naming the problem, no entry script):
   one 1-row body per protocol, POSTed by wrk (bench/wrk_protocols.lua) at concurrency 32 (2 wrk threads):
   /score with a record (ours), /invocations with dataframe_split, dataframe_records and CSV (MLflow's scoring
   protocol),
   /score with Azure ML's input_data, /v2/models/NAME/infer with JSON tensors, and (not in the brief's list, shown for
   completeness) with Triton's binary tensors. The v2 bodies follow GET /v2/models/NAME: one tensor per input column,
   its datatype, shape [n] or [n, 1] as the metadata's rank says. After a discarded warm-up run per body (2 s; 1 with
   --quick), every round (6; 2 with --quick) measures every adapter once in a 2 s run between two 2 s runs of /score
   (/score, a, /score, b, ..., /score), the adapters' order rotated each round. The bracketed ratio of a run is its
   req/s over the mean of the two /score runs around it: other people's work on a shared machine changes what a
   2-core server can do from one minute to the next, and bracketing cancels what changes slowly. Figures: req/s =
   median over the rounds; bracketed = the median (and range) of the bracketed ratios; medians = req/s over /score's.
   Target: every adapter within 10% of /score (bracketed >= 0.90).
   Besides req/s, the server's CPU time per request (user + system of its processes, from /proc, over each run): on a
   shared machine it moves less than req/s with what else runs. Before any load, every body is sent once and must
   answer 200 with the probabilities of the in-process pipeline (so no fast 4xx is ever counted as throughput), and
   each adapter scores the 200 check records in one request. After the load, every adapter at once (one client thread
   each, plus a second /score one; 10 s, 3 with --quick) with requests of 1 to 5 different check records: every answer
   must be 200 and the probabilities of its own records (batches then mix protocols and records).
3. v2 against MLServer: MLServer 1.7.1 with mlserver-mlflow 1.7.1 in .venv-mlserver (its own venv: its FastAPI,
   Starlette and OpenTelemetry pins conflict with ours; the science stack and MLflow pinned to .venv's versions;
   mlops_nb
   installed --no-deps -e, the model's pipeline code). Settings: settings.json {host 127.0.0.1, http/grpc/metrics on
   free ports, parallel_workers 0 (with the default 1, its inference worker process dies at start: uvloop 0.23 raises
   "RuntimeError: There is no current event loop in thread 'MainThread'" in mlserver/parallel/worker.py
   _ignore_signals), debug false (no per-request access log)};
   model-settings.json {name ottawa-housing-classifier, implementation mlserver_mlflow.MLflowRuntime, max_batch_size 32,
   max_batch_time 0.01 (adaptive batching on; --mlserver-batch to change), parameters.uri = the model folder}; run with
   MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true. Same wrk procedure on both servers, v2 JSON bodies built from each server's
   own metadata (MLServer declares shape [-1, 1]; ours [-1]), 3 s runs, as many rounds, the order rotated each round:
   1-row at c=32 (target: ours >= 3x MLServer req/s; ours' figure is its /v2 infer JSON adapter's of 2., 2 s runs),
   100-row at c=1 and at c=32 (target: ours' rows/s >= MLServer's; ours measured after its adapters). Equality: the 200
   check records in one v2
   request to each; outputs within 1e-6 of each other and of the in-process pipeline. The output tensor is found by
   shape ([n, 2] FP64), not by name: ours names it `predictions`, MLServer's mlflow runtime `output-1` (while its
   metadata declares `output-0`). Diagnostic (full runs only): MLServer again with OMP_NUM_THREADS=1, as ours limits
   OpenMP to one thread per model call (bench_serve.py shows what OpenMP's spinning threads do on 2 cores).
"""
from __future__ import annotations
import argparse, json, os, re, shutil, signal, statistics, subprocess, sys, tempfile, time, urllib.error, urllib.request
from http.client import HTTPException
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_serve import descendants, free_port, make_case, pkg_version, rss_kb, say, to_json  # noqa: E402  (same model, same helpers)

BIN, MLS_BIN = ROOT/".venv"/"bin", ROOT/".venv-mlserver"/"bin"
LUA = HERE/"wrk_protocols.lua"
PROBLEM = "ottawa-housing"  # bench_serve's name of mlops_nb.examples.ottawa:PROBLEM
TOLERANCE, ADAPTER_TARGET, MLS_RPS_TARGET = 1e-6, 0.90, 3.0
LIVE = []  # servers started and not yet stopped, stopped on any exit

# ------------------------------------------------------------------------------------------------ request bodies

def v2_json(meta:dict, records:list)->bytes:
    ("An Open Inference Protocol infer request with one JSON tensor per "
     "input of `meta` (shape [n] or [n, 1] by its rank).")
    n = len(records)
    return to_json({"inputs": [{"name": t["name"], "shape": [n] + [1] * (len(t["shape"]) - 1),
                                "datatype": t["datatype"],
                                "data": [r[t["name"]] for r in records]} for t in meta["inputs"]]})

def v2_binary(meta:dict, records:list)->tuple:
    "(body, header length) of an infer request with Triton's binary tensor extension, as tritonclient sends it."
    import numpy as np
    head, blobs, n = [], [], len(records)
    for t in meta["inputs"]:
        vals = [r[t["name"]] for r in records]
        if t["datatype"] == "BYTES":
            b = b"".join(len(s).to_bytes(4, "little") + s for s in (str(v).encode() for v in vals))
        else:
            b = np.asarray(vals,
                           dtype={"INT64": "<i8", "INT32": "<i4", "FP64": "<f8", "FP32": "<f4",
                                  "BOOL": "?"}[t["datatype"]]).tobytes()
        head.append({"name": t["name"], "shape": [n] + [1] * (len(t["shape"]) - 1), "datatype": t["datatype"],
                     "parameters": {"binary_data_size": len(b)}})
        blobs.append(b)
    h = to_json({"inputs": head})
    return h + b"".join(blobs), len(h)

class Body:
    "One request: route, content type, extra header, the bytes, and how to read the probabilities out of its answer."
    def __init__(self, path:str, data:bytes, ctype:str="application/json", header:str|None=None, parse=None):
        self.path, self.data, self.ctype, self.header, self.parse = path, data, ctype, header, parse

def adapters(case, v2_path:str, meta:dict)->dict:
    ("adapter name -> function(records, one) -> Body; one: the bench's "
     "1-row body (a lone record where a protocol allows it).")
    import numpy as np
    cols, labels = list(case.records[0]), case.labels
    ours = lambda a: np.asarray([[p["probabilities"][l] for l in labels] for p in a["predictions"]], dtype=float)
    mlflow = lambda a: np.asarray(a["predictions"], dtype=float)
    rows = lambda rs: [[r[c] for c in cols] for r in rs]
    csv = lambda rs: ("\n".join([",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in rs]) + "\n").encode()
    def binary(rs, one):
        data, hl = v2_binary(meta, rs)
        return Body(v2_path, data, "application/octet-stream", f"Inference-Header-Content-Length: {hl}", v2_outputs)
    return {
        "/score record": lambda rs, one: Body("/score", to_json(rs[0] if one else rs), parse=ours),
        "/invocations dataframe_split": lambda rs,
        one: Body("/invocations", to_json({"dataframe_split": {"columns": cols, "data": rows(rs)}}), parse=mlflow),
        "/invocations dataframe_records": lambda rs,
        one: Body("/invocations", to_json({"dataframe_records": rs}), parse=mlflow),
        "/invocations CSV": lambda rs, one: Body("/invocations", csv(rs), "text/csv", parse=mlflow),
        "/score input_data": lambda rs,
        one: Body("/score", to_json({"input_data": {"columns": cols, "index": list(range(len(rs))), "data": rows(rs)}}),
                  parse=ours),
        "/v2 infer JSON": lambda rs, one: Body(v2_path, v2_json(meta, rs), parse=v2_outputs),
        "/v2 infer binary": binary,
    }
EXTRA_ADAPTERS = ("/v2 infer binary",)  # not in the brief's list of six

def v2_outputs(answer:dict):
    ("The probabilities tensor of a v2 infer response (the one FP64 [n, k] "
     "output, whatever its name) as an array; name in .name.")
    import numpy as np
    outs = answer["outputs"]
    cands = [o for o in outs if o.get("datatype") == "FP64" and len(o.get("shape", [])) == 2] if len(outs) > 1 else outs
    if len(cands) != 1: raise ValueError(f"no single [n, k] FP64 output among {[o.get('name') for o in outs]}")
    o = cands[0]
    a = np.asarray(o["data"], dtype=float).reshape(o["shape"])
    return OutputArray(a, o["name"])

class OutputArray:
    "An array with the name of the output tensor it came from."
    def __init__(self, a, name): self.a, self.name = a, name

def as_array(x):
    "The array of a parsed answer."
    return x.a if isinstance(x, OutputArray) else x

# ------------------------------------------------------------------------------------------------------ servers

class Server:
    "A server process in its own process group: name, port, log file, start time."
    def __init__(self, name, proc, port, log, t0, ready_path):
        self.name, self.proc, self.port, self.log, self.t0, self.ready_path = (
            name,
            proc,
            port,
            Path(log),
            t0,
            ready_path,
        )

    def log_tail(self, n:int=30)->str:
        "The last `n` lines of the server's output."
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:]) if self.log.exists() else ""

def clean_env(work:Path)->dict:
    "Our environment without inherited venv, mlops_nb, Azure or MLServer settings, plus the benchmark's own."
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "OMP_NUM_THREADS")
           and not k.startswith(("AZUREML_", "MLOPS_NB_", "MLSERVER_"))}
    env.update(MLOPS_NB_HOME=str(work/"state"), MLOPS_NB_PROBLEM="mlops_nb.examples.ottawa:PROBLEM",
               MLFLOW_ALLOW_PICKLE_DESERIALIZATION="true", MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
    return env

def launch(name:str, cmd:list, env:dict, cwd:Path, port:int, ready_path:str, work:Path)->Server:
    "Start `cmd` in a new process group, output to a log file in `work`."
    log = work/f"{name.replace(' ', '_').replace('=', '')}.log"
    with open(log, "wb") as f:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    srv = Server(name, proc, port, log, t0, ready_path)
    LIVE.append(srv)
    return srv

def start_ours(case, work:Path)->Server:
    "`mlops-nb serve --model FOLDER --port N` on loopback (its default host), working directory the temp folder."
    port = free_port()
    return launch("ours", [str(BIN/"mlops-nb"), "serve", "--model", str(case.model_dir), "--port", str(port)],
                  clean_env(work), work, port, "/ready", work)

def mlserver_settings(case, folder:Path, batch:tuple)->tuple:
    "Write MLServer's settings.json and model-settings.json into `folder`; (http port, the settings written)."
    folder.mkdir(parents=True, exist_ok=True)
    http, grpc, metrics = free_port(), free_port(), free_port()
    settings = {"host": "127.0.0.1", "http_port": http, "grpc_port": grpc, "metrics_port": metrics,
                "parallel_workers": 0, "debug": False}
    model = {"name": case.info_name, "implementation": "mlserver_mlflow.MLflowRuntime", "max_batch_size": batch[0],
             "max_batch_time": batch[1], "parameters": {"uri": str(case.model_dir), "version": "1"}}
    (folder/"settings.json").write_text(json.dumps(settings, indent=1))
    (folder/"model-settings.json").write_text(json.dumps(model, indent=1))
    return http, {"settings.json": settings, "model-settings.json": model}

def start_mlserver(case, work:Path, batch:tuple, omp1:bool=False)->tuple:
    "`mlserver start FOLDER` with the mlflow runtime on the model folder; (server, the settings written)."
    folder = work/("mlserver-omp1" if omp1 else "mlserver")
    port, settings = mlserver_settings(case, folder, batch)
    env = clean_env(work)
    if omp1: env["OMP_NUM_THREADS"] = "1"
    srv = launch("MLServer OMP=1" if omp1 else "MLServer", [str(MLS_BIN/"mlserver"), "start", str(folder)], env, folder,
                 port,
                 f"/v2/models/{case.info_name}/ready", work)
    return srv, settings

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
    try: os.killpg(srv.proc.pid, signal.SIGKILL)  # leftovers of the group
    except ProcessLookupError: pass

def http(port:int, path:str, body:Body|None=None, timeout:float=30)->tuple:
    "(status, body bytes) of one request to 127.0.0.1; status 0 when the connection fails."
    headers = {}
    if body is not None:
        headers["Content-Type"] = body.ctype
        if body.header:
            k, v = body.header.split(": ", 1)
            headers[k] = v
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path if body is None else body.path}",
                                 data=None if body is None else body.data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r: return r.status, r.read()
    except urllib.error.HTTPError as e: return e.code, e.read()
    except (OSError, HTTPException): return 0, b""

def wait_ready(srv:Server, budget:float=120)->float:
    "Seconds from process start to its readiness route answering 200; raise with the log tail on failure."
    while True:
        if srv.proc.poll() is not None:
            raise RuntimeError(f"{srv.name} exited with {srv.proc.returncode} before it was ready:\n{srv.log_tail()}")
        if time.monotonic() - srv.t0 > budget:
            raise RuntimeError(f"{srv.name} not ready within {budget:.0f} s:\n{srv.log_tail()}")
        if http(srv.port, srv.ready_path, timeout=2)[0] == 200: return time.monotonic() - srv.t0
        time.sleep(0.05)

def metadata(srv:Server, name:str)->dict:
    "GET /v2/models/NAME."
    st, text = http(srv.port, f"/v2/models/{name}")
    if st != 200: raise RuntimeError(f"{srv.name}: GET /v2/models/{name} answered {st}: {text[:300]!r}")
    return json.loads(text)

# ---------------------------------------------------------------------------------------------------- measuring

def wrk(port:int, body:Body, body_file:Path, conns:int, threads:int, seconds:float)->dict:
    "One wrk run; requests, req/s, latency percentiles (ms), status >= 400 count and socket errors."
    cmd = [shutil.which("wrk") or "/usr/bin/wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds:g}s",
           "--timeout", "10s", "-s", str(LUA), f"http://127.0.0.1:{port}{body.path}"]
    env = {**os.environ, "WRK_BODY": str(body_file), "WRK_CTYPE": body.ctype, "WRK_HEADER": body.header or ""}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 60)
    line = next((l for l in p.stdout.splitlines() if l.startswith("WRKJSON ")), None)
    if line is None: raise RuntimeError(f"wrk failed ({p.returncode}): {p.stderr.strip()[-500:]} {p.stdout[-500:]}")
    w = json.loads(line[len("WRKJSON "):])
    secs = w["duration_us"] / 1e6
    return {"requests": int(w["requests"]), "seconds": secs, "rps": w["requests"] / secs if secs else 0.0,
            "p50_ms": w["p50_us"] / 1e3, "p99_ms": w["p99_us"] / 1e3, "max_ms": w["max_us"] / 1e3,
            "non2xx": int(w["status"]),
            "socket_errors": int(w["connect"] + w["read"] + w["write"] + w["timeout"])}

def cpu_s(pid:int)->float:
    "CPU seconds (user + system) used so far by `pid` and its child processes."
    total = 0
    for p in descendants(pid):
        try: total += sum(int(x) for x in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[11:13])
        except (OSError, ValueError): pass
    return total / os.sysconf("SC_CLK_TCK")

def check(srv:Server, body:Body, want)->dict:
    "Send `body` once: status 200 and outputs within TOLERANCE of `want`, or why not."
    import numpy as np
    st, text = http(srv.port, None, body, timeout=60)
    if st != 200: return {"ok": False, "error": f"HTTP {st}: {text[:300].decode(errors='replace')}"}
    try: parsed = body.parse(json.loads(text))
    except (KeyError, TypeError, ValueError) as e:
        return {"ok": False, "error": f"unexpected answer ({type(e).__name__}: {e}): {text[:300]!r}"}
    got = as_array(parsed)
    out = {"n": len(want), "output": getattr(parsed, "name", None)}
    if got.shape != want.shape: return {**out, "ok": False, "error": f"outputs of shape {got.shape} for {want.shape}"}
    out["max_abs_diff"] = float(np.abs(got - want).max())
    out["ok"] = out["max_abs_diff"] <= TOLERANCE
    out["got"] = got
    return out

def measure(srv:Server, loads:dict, work:Path, cfg:dict, seconds:float, base:str|None=None)->dict:
    """Each load (name -> (Body, rows, conns, threads)) warmed up once, then measured once per round in runs of
    `seconds`,
    the order rotated each round; per load its runs and the median of their req/s. With `base` (a load's name), every
    other run is bracketed by runs of `base` (base, a, base, b, ..., base) and gets `paired`: its req/s over the mean of
    the two base runs around it, which cancels what else the machine does as long as that changes slowly."""
    files = {}
    for name, (body, *_) in loads.items():
        files[name] = work/("body-" + re.sub(r"[^A-Za-z0-9]+", "_", f"{srv.name}-{name}"))
        files[name].write_bytes(body.data)
    names = [n for n in loads if n != base]
    for name in ([base] if base else []) + names:
        body, rows, conns, threads = loads[name]
        wrk(srv.port, body, files[name], conns, threads, cfg["warmup_s"])
    runs = {n: [] for n in loads}
    def run(name:str, k:int)->dict:
        body, rows, conns, threads = loads[name]
        c0 = cpu_s(srv.proc.pid)
        r = wrk(srv.port, body, files[name], conns, threads, seconds)
        r["cpu_s"] = cpu_s(srv.proc.pid) - c0
        r["round"], r["cpu_ms_per_req"] = k, r["cpu_s"] * 1000 / r["requests"] if r["requests"] else None
        runs[name].append(r)
        say(f"  {srv.name} round {k + 1}: {name:32} {r['rps']:8.1f} req/s {r['rps'] * rows:9.0f} rows/s  p50 "
            f"{r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  errors {r['non2xx']}+{r['socket_errors']}")
        return r
    for k in range(cfg["rounds"]):
        before = run(base, k) if base else None
        for name in names[k % len(names):] + names[:k % len(names)]:
            r = run(name, k)
            if base:
                after = run(base, k)
                mean = (before["rps"] + after["rps"]) / 2
                r["paired"], before = (r["rps"] / mean if mean else None), after
    out = {}
    for name in loads:
        rs, rows = runs[name], loads[name][1]
        med = statistics.median(r["rps"] for r in rs)
        paired = [r["paired"] for r in rs if r.get("paired") is not None]
        out[name] = {"rows": rows, "conns": loads[name][2], "rps": med, "rows_per_s": med * rows, "runs": rs,
                     "paired": statistics.median(paired) if paired else None,
                     "paired_range": [min(paired), max(paired)] if paired else None,
                     "cpu_ms_per_req": statistics.median(c)
                     if (c := [r["cpu_ms_per_req"] for r in rs if r["cpu_ms_per_req"]]) else None,
                     "cpu_s": sum(r["cpu_s"] for r in rs), "seconds": sum(r["seconds"] for r in rs),
                     "p50_ms": statistics.median(r["p50_ms"] for r in rs),
                     "p99_ms": statistics.median(r["p99_ms"] for r in rs),
                     "max_ms": max(r["max_ms"] for r in rs), "requests": sum(r["requests"] for r in rs),
                     "non2xx": sum(r["non2xx"] for r in rs), "socket_errors": sum(r["socket_errors"] for r in rs)}
    return out

def mixed(srv:Server, ad:dict, case, seconds:float)->dict:
    """Every adapter at once, one client thread each (plus a second /score thread), for `seconds`: requests of 1 to 5
    different check records, so the batches mix protocols and records; every answer must be 200 and the in-process
    pipeline's probabilities for its own records (a mix-up in the batching would show here)."""
    import numpy as np
    from concurrent.futures import ThreadPoolExecutor
    names = list(ad) + ["/score record"]
    end = time.monotonic() + seconds
    def client(k:int)->dict:
        out, i = {"requests": 0, "wrong": 0, "failed": 0, "first_problem": None}, 0
        while time.monotonic() < end:
            n, start = 1 + (i + k) % 5, (i * 7 + k * 13) % (len(case.records) - 5)
            rows, want = case.records[start:start + n], case.want[start:start + n]
            body = ad[names[k]](rows, n == 1)
            st, text = http(srv.port, None, body, timeout=30)
            out["requests"] += 1
            i += 1
            try:
                got = as_array(body.parse(json.loads(text))) if st == 200 else None
                ok = got is not None and got.shape == want.shape and float(np.abs(got - want).max()) <= TOLERANCE
            except (KeyError, TypeError, ValueError): ok = False
            if not ok:
                out["wrong" if st == 200 else "failed"] += 1
                out["first_problem"] = out["first_problem"] or (f"{names[k]} rows {start}..{start + n - 1}: "
                                                                f"HTTP {st} {text[:200]!r}")
        return out
    with ThreadPoolExecutor(len(names)) as pool: per = list(pool.map(client, range(len(names))))
    return {"clients": len(names), "seconds": seconds, "requests": sum(p["requests"] for p in per),
            "wrong": sum(p["wrong"] for p in per),
            "failed": sum(p["failed"] for p in per),
            "problems": [p["first_problem"] for p in per if p["first_problem"]]}

def v2_loads(make:callable, records:list)->dict:
    "The v2 scenarios of part 3: 1-row at c=32, 100-row at c=1 and at c=32."
    return {"v2 1-row c=32": (make(records[:1]), 1, 32, 2), "v2 100-row c=1": (make(records[:100]), 100, 1, 1),
            "v2 100-row c=32": (make(records[:100]), 100, 32, 2)}

# -------------------------------------------------------------------------------------------------------- parts

def bench_ours(case, work:Path, cfg:dict)->dict:
    ("Ours alone: adapters' bodies checked, equality per adapter, then "
     "every 1-row adapter and the v2 scenarios under load.")
    res, srv = {}, None
    try:
        srv = start_ours(case, work)
        res["ready_s"] = wait_ready(srv)
        res["rss_after_start_mb"] = rss_kb(srv.proc.pid) / 1024
        meta = metadata(srv, case.info_name)
        res["metadata_outputs"] = [o["name"] for o in meta["outputs"]]
        path = f"/v2/models/{case.info_name}/infer"
        ad = adapters(case, path, meta)
        res["equality"], res["one_row"] = {}, {}
        # every body answers 200 and right before any load; each adapter on the check records
        for name, make in ad.items():
            res["one_row"][name] = {k: v for k, v in check(srv, make(case.records[:1], True), case.want[:1]).items()
                                    if k != "got"}
            e = check(srv, make(case.records, False), case.want)
            res["equality"][name] = {k: v for k, v in e.items() if k != "got"}
            if name == "/v2 infer JSON" and "got" in e: res["v2_got"] = e["got"]
            say(f"  {name:32} 1 row: {res['one_row'][name]}; {len(case.records)} rows: {res['equality'][name]}")
        bad = {n: e["error"] for n, e in res["one_row"].items() if not e["ok"] and "error" in e}
        if "/score record" in bad: raise RuntimeError(f"ours: the /score body answered wrong: {bad['/score record']}")
        loads = {name: (make(case.records[:1], True), 1, 32, 2) for name, make in ad.items() if name not in bad}
        v2 = v2_loads(lambda rs: ad["/v2 infer JSON"](rs, False), case.records)
        for name in ("v2 100-row c=1", "v2 100-row c=32"):
            e = check(srv, v2[name][0], case.want[:100])
            if not e["ok"]: raise RuntimeError(f"ours: {name} body answered wrong: {e.get('error') or e}")
        res["load"] = measure(srv, loads, work, cfg, cfg["pair_s"], base="/score record")
        res["load"]["v2 1-row c=32"] = res["load"].get("/v2 infer JSON")
        res["load"].update(measure(srv, {n: v2[n] for n in ("v2 100-row c=1", "v2 100-row c=32")}, work, cfg,
                                   cfg["duration_s"]))
        res["mixed"] = mixed(srv, {n: m for n, m in ad.items() if n not in bad}, case, cfg["mixed_s"])
        say(f"  mixed protocols: {res['mixed']}")
        res["rss_after_load_mb"] = rss_kb(srv.proc.pid) / 1024
        res["processes"] = len(descendants(srv.proc.pid))
        if srv.proc.poll() is not None:
            raise RuntimeError(f"ours exited with {srv.proc.returncode} during the load:\n{srv.log_tail()}")
        errs = [l for l in srv.log.read_text(errors="replace").splitlines() if '"event": "error"' in l]
        if errs: res["server_errors_logged"] = errs[:5]
    except Exception as e:
        res["error"] = f"{type(e).__name__}: {e}"
        say(f"  ours FAILED: {res['error']}")
    finally:
        if srv: stop(srv)
    return res

def setup_mlserver()->str|None:
    "Run bench/mlserver-venv (a no-op when up to date); None, or why MLServer cannot run (its error text)."
    p = subprocess.run(["bash", str(HERE/"mlserver-venv")], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        return f"bench/mlserver-venv failed (exit {p.returncode}): " + "\n".join(p.stderr.strip().splitlines()[-15:])
    return None

def bench_mlserver(case, work:Path, cfg:dict, omp1:bool=False)->dict:
    "MLServer alone: metadata, equality on the check records, then the v2 scenarios under load."
    res, srv = {}, None
    try:
        srv, res["settings"] = start_mlserver(case, work, cfg["mlserver_batch"], omp1)
        res["ready_s"] = wait_ready(srv)
        res["rss_after_start_mb"] = rss_kb(srv.proc.pid) / 1024
        meta = metadata(srv, case.info_name)
        res["metadata_outputs"] = [o["name"] for o in meta["outputs"]]
        res["metadata_inputs"] = {t["name"]: (t["datatype"], t["shape"]) for t in meta["inputs"]}
        path = f"/v2/models/{case.info_name}/infer"
        make = lambda rs: Body(path, v2_json(meta, rs), parse=v2_outputs)
        one = check(srv, make(case.records[:1]), case.want[:1])
        e = check(srv, make(case.records), case.want)
        res["one_row"], res["equality"] = {k: v for k, v in one.items()
                                           if k != "got"}, {k: v for k, v in e.items() if k != "got"}
        if "got" in e: res["v2_got"] = e["got"]
        say(f"  {srv.name}: 1 row: {res['one_row']}; {len(case.records)} rows: {res['equality']}")
        loads = v2_loads(make, case.records)
        for name in ("v2 100-row c=1",):
            c = check(srv, loads[name][0], case.want[:100])
            if not c["ok"]: raise RuntimeError(f"{srv.name}: {name} body answered wrong: {c.get('error') or c}")
        if not one["ok"]: raise RuntimeError(f"{srv.name}: the 1-row body answered wrong: {one.get('error') or one}")
        res["load"] = measure(srv, loads, work, cfg, cfg["duration_s"])
        res["rss_after_load_mb"] = rss_kb(srv.proc.pid) / 1024
        res["processes"] = len(descendants(srv.proc.pid))
        if srv.proc.poll() is not None:
            raise RuntimeError(f"{srv.name} exited with {srv.proc.returncode} during the load:\n{srv.log_tail()}")
    except Exception as e:
        res["error"] = f"{type(e).__name__}: {e}"
        say(f"  {srv.name if srv else 'MLServer'} FAILED: {res['error']}")
    finally:
        if srv: stop(srv)
    return res

# ------------------------------------------------------------------------------------------------------- report

def ratio(a, b)->str:
    "a/b as 'N.NNx', or 'n/a'."
    if a is None or b is None: return "n/a"
    return f"{a / b:.2f}x" if b else "inf"

def errors_of(x:dict)->str:
    "'status>=400/socket' counts of a load."
    return f"{x['non2xx']}/{x['socket_errors']}"

def targets(r:dict)->list:
    "(what, text, met) for each target of the brief."
    out, o = [], r["ours"].get("load") or {}
    for name in list(o):
        if name.startswith("/") and name != "/score record" and o[name].get("paired") is not None:
            q = o[name]["paired"]
            out.append((name, f"within 10% of /score req/s (bracketed ratio {q:.2f})", q >= ADAPTER_TARGET))
    for key, who in (("mlserver", "MLServer"), ("mlserver_omp1", "MLServer OMP=1 (diagnostic)")):
        m = (r.get(key) or {}).get("load") or {}
        if o.get("v2 1-row c=32") and m.get("v2 1-row c=32"):
            a, b = o["v2 1-row c=32"]["rps"], m["v2 1-row c=32"]["rps"]
            out.append(("v2 1-row c=32", f"ours >= 3x {who} req/s ({ratio(a, b)})", a >= MLS_RPS_TARGET * b))
        for sc in ("v2 100-row c=1", "v2 100-row c=32"):
            if o.get(sc) and m.get(sc):
                a, b = o[sc]["rows_per_s"], m[sc]["rows_per_s"]
                out.append((sc, f"ours rows/s >= {who}'s ({ratio(a, b)})", a >= b))
    if r.get("v2_equal") is not None:
        out.append(("equality", f"ours and MLServer within {TOLERANCE:g} ({r['v2_equal']['max_abs_diff']:.3g})",
                    r["v2_equal"]["ok"]))
    return out

def render(r:dict)->str:
    "The report: configuration, the adapters table, ours vs MLServer, equality, targets."
    c, o = r["config"], r["ours"]
    L = [f"Protocol benchmark ({'quick' if c['quick'] else 'full'}): {c['cpus']} CPUs, load avg {c['load_start']:.2f} "
         f"at start, {r['load_end']:.2f} at end; {c['rounds']} round(s), order rotated each round, of wrk runs of "
         f"{c['pair_s']:g} s (adapters, each run between two /score runs) and {c['duration_s']:g} s (the other "
         f"scenarios), after a {c['warmup_s']:g} s warm-up per body; req/s = median over the rounds",
         f"versions: mlops_nb {c['mlops_nb']}, mlflow-skinny {c['mlflow']}, scikit-learn {c['sklearn']}; MLServer "
         f"{c['mlserver']}, mlserver-mlflow {c['mlserver_mlflow']}, mlflow {c['mlserver_env_mlflow']}, scikit-learn "
         f"{c['mlserver_env_sklearn']} (.venv-mlserver)",
         f"model: {r['case']}; served as {r['model_name']} version 1", ""]
    if o.get("error"): L += [f"ours FAILED: {o['error']}", ""]
    load = o.get("load") or {}
    base = load.get("/score record")
    L.append("1. Adapters on ours: 1-row requests at concurrency 32 (2 wrk threads). "
             "bracketed = median (min-max) over the rounds of each run's")
    L.append("   req/s over the mean of the two /score runs around it (target >= "
             "0.90); medians = median req/s over /score's median;")
    L.append("   CPU = the server's CPU ms per request (median over the rounds), "
             "CPU ratio = /score's over that (above 1: the adapter")
    L.append("   costs less); errors = responses >= 400 / socket errors")
    head = (f"{'adapter':32}|{'req/s':>9} |{'p50 ms':>8} |{'p99 ms':>8} |{'bracketed':>9} {'':6}|{'range':>11} |"
            f"{'medians':>8} |{'CPU ms':>7} |{'CPU ratio':>10} |{'errors':>7} | equal (1 row; 200 rows)")
    L += [head, "-" * len(head)]
    for name in [n for n in load if n.startswith("/")] + [n for n in o.get("one_row", {}) if n not in load]:
        x, e1, e200 = load.get(name), o["one_row"].get(name, {}), o["equality"].get(name, {})
        eq = lambda e: ("OK" if e.get("ok") else "NO") + (f" {e['max_abs_diff']:.1g}" if "max_abs_diff" in e
                                                          else f" ({e.get('error', '?')[:80]})")
        if not x:
            L.append(f"{name:32}| not measured: {e1.get('error', '?')[:100]}")
            continue
        q = x["rps"] / base["rps"] if base else None
        pq, rng = x.get("paired"), x.get("paired_range")
        extra = "  (extra)" if name in EXTRA_ADAPTERS else ""
        L.append(f"{name:32}|{x['rps']:9.0f} |{x['p50_ms']:8.2f} |{x['p99_ms']:8.2f} |"
                 + (f"{pq:9.2f} {'met' if pq >= ADAPTER_TARGET else 'MISSED':6}|{f'{rng[0]:.2f}-{rng[1]:.2f}':>11} |"
                    if pq is not None else f"{'(base)':>16}|{'':11} |")
                 + f"{q:8.2f} |{x['cpu_ms_per_req']:7.2f} |{base['cpu_ms_per_req'] / x['cpu_ms_per_req']:10.2f} |"
                 f"{errors_of(x):>7} | {eq(e1)}; {eq(e200)}{extra}")
    m, m1 = r.get("mlserver") or {}, r.get("mlserver_omp1")
    L += ["", "2. Open Inference Protocol v2: ours vs MLServer (mlflow runtime, "
              "adaptive batching), same model folder, v2 JSON bodies"]
    if c.get("skip_mlserver"): L.append("   MLServer skipped (--skip-mlserver)")
    if r.get("mlserver_setup_error"): L.append(f"   MLServer could not be set up: {r['mlserver_setup_error']}")
    elif m.get("error"): L.append(f"   MLServer FAILED: {m['error']}")
    if m.get("settings"):
        s, ms = m["settings"]["settings.json"], m["settings"]["model-settings.json"]
        L.append(f"   MLServer settings.json: parallel_workers {s['parallel_workers']}, debug {s['debug']}, host "
                 f"{s['host']}; model-settings.json: implementation {ms['implementation']}, max_batch_size "
                 f"{ms['max_batch_size']}, max_batch_time {ms['max_batch_time']} s, uri = the model folder")
    kinds = [("ours", o), ("MLServer", m)] + ([("MLServer OMP=1", m1)] if m1 is not None else [])
    W, notes = 40, []
    L.append("   (each cell: req/s or rows/s, median over the rounds; p50 latency; the server's CPU ms per request)")
    head = (
        f"{'scenario':16}|"
        + "|".join(f" {k:{W - 1}}" for k, _ in kinds)
        + f"| {'ours/MLServer':14}"
        + ("| ours/OMP=1" if m1 is not None else "")
    )
    L += [head, "-" * len(head)]
    for sc in ("v2 1-row c=32", "v2 100-row c=1", "v2 100-row c=32"):
        xs = [(s.get("load") or {}).get(sc) for _, s in kinds]
        key = "rps" if sc.startswith("v2 1-row") else "rows_per_s"
        cell = lambda x: ("n/a" if not x
                          else f"{x[key]:6.0f} {'req/s' if key == 'rps' else 'rows/s'}, p50 {x['p50_ms']:.1f} ms, "
                          + (f"CPU {x['cpu_ms_per_req']:.1f} ms" if x["cpu_ms_per_req"] else "CPU n/a")
                          + (f", err {errors_of(x)}" if x['non2xx'] + x['socket_errors'] else ""))
        val = lambda x: x[key] if x else None
        L.append(f"{sc:16}|" + "|".join(f" {cell(x):{W - 1}}" for x in xs) + f"| {ratio(val(xs[0]), val(xs[1])):14}"
                 + (f"| {ratio(val(xs[0]), val(xs[2]))}" if m1 is not None else ""))
    for k, s in kinds:
        for sc, x in (s.get("load") or {}).items():
            dead = [u for u in x["runs"] if not u["requests"]] if sc.startswith("v2 ") else []
            if dead:
                notes.append(f"   {k} {sc}: {len(dead)} of {len(x['runs'])} run(s) of "
                             f"{c['duration_s']:g} s got no response at all, while the "
                                  f"server used {sum(u['cpu_s'] for u in dead):.1f} CPU s in them")
    L.append(
        f"{'ready after':16}|"
        + "|".join(f" {(format(s['ready_s'], '.2f') + ' s') if s.get('ready_s') else 'n/a':{W - 1}}" for _, s in kinds)
        + "|"
    )
    rss = lambda s: (
        f"{s['rss_after_start_mb']:.0f} / {s.get('rss_after_load_mb', float('nan')):.0f} MB"
        if s.get("rss_after_start_mb")
        else "n/a"
    )
    L.append(f"{'RSS start/load':16}|" + "|".join(f" {rss(s):{W - 1}}" for _, s in kinds) + "|")
    L += notes
    L += ["", f"Equality of the v2 answers ({len(r['check_records'])} check records "
              "in one request; the output tensor found by shape)"]
    for k, s in kinds:
        e = s.get("equality")
        if k == "ours" and e: e = e.get("/v2 infer JSON")
        if e:
            L.append(
                f"   {k:16} vs in-process pipeline: "
                + (
                    f"max |diff| {e['max_abs_diff']:.3g} {'OK' if e['ok'] else 'MISMATCH'}"
                    if 'max_abs_diff' in e
                    else f"FAILED {e.get('error')}"
                )
                + f"; output tensor in the answer {e.get('output')!r}, in GET "
                f"/v2/models/NAME {s.get('metadata_outputs')}"
            )
    if r.get("v2_equal"):
        L.append(f"   ours vs MLServer: max |diff| {r['v2_equal']['max_abs_diff']:.3g} ("
                 f"{'OK' if r['v2_equal']['ok'] else 'MISMATCH'}, tolerance {TOLERANCE:g})")
    mx = o.get("mixed")
    if mx:
        L += ["", f"Mixed protocols at once ({mx['clients']} client threads, every adapter plus a second /score, "
                  f"{mx['seconds']:g} s, 1 to 5 different check records a request): {mx['requests']} requests, "
                  f"{mx['wrong']} wrong answers, {mx['failed']} failed"]
        L += [f"   {p}" for p in mx["problems"]]
    if o.get("server_errors_logged"):
        L += ["", "ours logged internal errors:"] + [f"   {l[:300]}" for l in o["server_errors_logged"]]
    L += ["", "Targets (from the brief)"]
    for what, text, met in r["targets"]: L.append(f"   {what:32} {text:62} {'met' if met else 'MISSED'}")
    return "\n".join(L)

# --------------------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    "Command-line options."
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="2 rounds, 1 s warm-ups, 3 s mixed check, no OMP=1 diagnostic (about 2 minutes)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (the report goes to stderr)")
    p.add_argument("--rounds", type=int, help="rounds: measured runs per body (default 6, 2 with --quick)")
    p.add_argument("--skip-mlserver", action="store_true", help="only the adapters on ours")
    p.add_argument("--mlserver-batch", default="32:0.01", metavar="SIZE:SECONDS",
                   help="MLServer's max_batch_size and max_batch_time (default 32:0.01)")
    return p.parse_args(argv)

def main(argv=None):
    "Train the model, measure ours, then MLServer, print the report."
    a = parse_args(argv)
    missing = [f"{p} (run {fix})" for p, fix in [(BIN/"mlops-nb", "scripts/setup")] if not p.exists()]
    if not (shutil.which("wrk") or Path("/usr/bin/wrk").exists()): missing.append("wrk (apt-get install -y wrk)")
    if missing: raise SystemExit("bench_protocols: missing " + "; ".join(missing))
    size, secs = a.mlserver_batch.split(":")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop the servers
    work = Path(tempfile.mkdtemp(prefix="mlops_nb_bench_protocols_"))
    (work/"state").mkdir()
    os.environ.update(MLOPS_NB_HOME=str(work/"state"), MLFLOW_ALLOW_PICKLE_DESERIALIZATION="true",
                      MLFLOW_DISABLE_TELEMETRY="true")
    q = a.quick
    cfg = {"quick": q, "pair_s": 2, "duration_s": 3, "warmup_s": 1 if q else 2, "rounds": a.rounds or (2 if q else 6),
           "mixed_s": 3 if q else 10,
           "mlserver_batch": (int(size), float(secs)), "skip_mlserver": a.skip_mlserver, "cpus": os.cpu_count(),
           "mlops_nb": version("mlops_nb"),
           "mlflow": version("mlflow-skinny"), "sklearn": version("scikit-learn")}
    t0 = time.perf_counter()
    try:
        setup_error = None
        if not a.skip_mlserver:  # before any server runs: pip would compete for the cores
            say("MLServer: bash bench/mlserver-venv")
            setup_error = setup_mlserver()
            if setup_error: say(setup_error)
        py = MLS_BIN/"python"
        cfg.update({k: pkg_version(py, p) if py.exists() else "?" for k, p in
                    (("mlserver", "mlserver"), ("mlserver_mlflow", "mlserver-mlflow"),
                     ("mlserver_env_mlflow", "mlflow"),
                     ("mlserver_env_sklearn", "scikit-learn"))})
        cfg["load_start"] = os.getloadavg()[0]
        say("training the model")
        case = make_case(PROBLEM, work)
        case.info_name = json.loads((case.model_dir/"mlops_nb_model.json").read_text())["name"]
        r = {"config": cfg, "case": case.describe(), "model_name": case.info_name, "check_records": case.records,
             "mlserver_setup_error": setup_error}
        say("ours (mlops-nb serve)")
        r["ours"] = bench_ours(case, work, cfg)
        if not a.skip_mlserver and not setup_error:
            say("MLServer")
            r["mlserver"] = bench_mlserver(case, work, cfg)
            if not q:
                say("MLServer with OMP_NUM_THREADS=1 (diagnostic)")
                r["mlserver_omp1"] = bench_mlserver(case, work, cfg, omp1=True)
        og, mg = r["ours"].pop("v2_got", None), (r.get("mlserver") or {}).pop("v2_got", None)
        (r.get("mlserver_omp1") or {}).pop("v2_got", None)
        if og is not None and mg is not None:
            import numpy as np
            d = float(np.abs(og - mg).max())
            r["v2_equal"] = {"max_abs_diff": d, "ok": d <= TOLERANCE}
        r["load_end"] = os.getloadavg()[0]
        r["targets"] = targets(r)
        r["bench_wall_s"] = time.perf_counter() - t0
        text = render(r) + f"\n\n(bench wall time {r['bench_wall_s']:.0f} s; state in a temp folder, removed)"
        r["check_records"] = len(r["check_records"])
        r["targets"] = [{"what": w, "target": t, "met": m} for w, t, m in r["targets"]]
        if a.json:
            print(text, file=sys.stderr)
            print(json.dumps(r, indent=2, default=str))
        else: print(text)
    finally:
        for srv in list(LIVE): stop(srv)
        shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__": main()
