"""Serving at the machine's limit: ours, Seldon MLServer (its scikit-learn runtime) and azmlinfsrv on the same models,
beside the in-process limits, interleaved, in one run; prints figures, never asserts on them.

Run from the repository root (needs .venv, wrk, .venv-mlserver from `bash bench/mlserver-venv` and .venv-azml from
`bash scripts/azml-venv`; a server whose venv is missing is left out and said so):
  .venv/bin/python bench/bench_limits.py [--seconds 5] [--rounds 2] [--json]      (about 6 minutes)
  (also `bench/bench_serve.py --limits`)

Models: the Ottawa example made as bench_serve.py makes it (`make_case`), with 250 boosting iterations (the default
full run) and with 100 (`--epochs 4`). MLServer 1.7.1 serves the same fitted pipeline through mlserver-sklearn 1.7.1,
which loads a joblib pickle: the benchmark writes one for it beside the model folder (benchmark only; mlops_nb itself
loads skops, never pickle). Its requests are v2 JSON with `"content_type": "pd"` (a DataFrame, as the pipeline
wants) asking for the `predict_proba` output; settings: 127.0.0.1, parallel_workers 0 (see bench_protocols.py),
adaptive batching max_batch_size 32, max_batch_time 0.01; once as it comes and once with OMP_NUM_THREADS=1 (its
default OpenMP threads stall on a loaded 2-core machine; ours runs one OpenMP thread per call). Ours: `mlops-nb serve
--model FOLDER` with its defaults
(workers: one per usable CPU), and with --workers 1; /score with raw records. azmlinfsrv: api/score.py on /score (250
trees only).

In-process limits (a fresh process per round, pandas frames of the same check records): the pipeline's
`predict_proba` on 1, 100 and 800 rows and the estimator alone on the 800-row matrix, with OpenMP as it comes and
with one thread; "limit" is the faster of the two. Rows/s of 100-row requests at concurrency 8 are compared with
the pipeline's on 800-row frames of the same round.

Per round (2 by default), servers one after the other (each alone on the machine with wrk): start (ready time and
RSS of all its processes), 1 s warm-up, then 1-row requests at concurrency 1 and 32 and 100-row requests at
concurrency 8 (5 s each); the server's CPU use over each run is the user + system time of its processes, in % of one
core. `uptime`'s load average is printed beside every table: on a shared machine other people's work changes
absolute figures from one minute to the next; ratios are between neighbours of the same round.
"""
from __future__ import annotations
import argparse, json, os, shutil, signal, subprocess, sys, tempfile, time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_serve import descendants, free_port, make_case, rss_kb, say, to_json  # noqa: E402
from bench_protocols import Body, LIVE, cpu_s, http, launch, stop, wait_ready, wrk  # noqa: E402
import bench_serve  # noqa: E402

BIN, MLS_BIN, AZML_BIN = ROOT/".venv"/"bin", ROOT/".venv-mlserver"/"bin", ROOT/".venv-azml"/"bin"
SCENARIOS = [("1-row c=1", 1, 1, 1), ("1-row c=32", 1, 32, 2), ("100-row c=8", 100, 8, 1)]
MODEL_NAME = "ottawa-housing-classifier"

LIMITS_CHILD = r"""
import json, sys, time
import numpy as np, pandas as pd
from threadpoolctl import threadpool_limits
from mlops_nb.serving import load_runtime
rt = load_runtime(sys.argv[1])
recs = json.load(open(sys.argv[2]))
def rate(f, n):
    f()
    best, t_end = 0.0, time.perf_counter() + 1.0
    while time.perf_counter() < t_end:
        t0 = time.perf_counter(); f(); best = max(best, n / (time.perf_counter() - t0))
    return best
out = {}
for threads in ("default", 1):
    with threadpool_limits(None if threads == "default" else 1, user_api="openmp"):
        for n in (1, 100, 800):
            df = pd.DataFrame((recs * (n // len(recs) + 1))[:n])
            out[f"pipeline {n} rows, OpenMP {threads}"] = rate(lambda: rt.pipeline.predict_proba(df), n)
        X = rt.fast.matrix((recs * (800 // len(recs) + 1))[:800])
        out[f"estimator 800-row matrix, OpenMP {threads}"] = rate(lambda: rt.fast.est.predict_proba(X), 800)
print(json.dumps(out))
"""

def uptime()->str:
    "The load averages, as `uptime` prints them."
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())

def complete(records:list)->list:
    "The records without a missing value (MLServer's pandas codec takes no null in a numeric tensor)."
    return [r for r in records if all(v is not None for v in r.values())]

def mlserver_body(records:list)->bytes:
    "A v2 request of `records` as one column tensor each, decoded by MLServer as a DataFrame; asks for predict_proba."
    kind = lambda v: (
        "BYTES" if isinstance(v, str) else "BOOL" if isinstance(v, bool) else "INT64" if isinstance(v, int) else "FP64"
    )
    cols = list(records[0])
    return to_json({"parameters": {"content_type": "pd"}, "outputs": [{"name": "predict_proba"}],
                    "inputs": [{"name": c, "shape": [len(records), 1], "datatype": kind(records[0][c]),
                                "data": [r[c] for r in records],
                                **({"parameters": {"content_type": "str"}} if kind(records[0][c]) == "BYTES" else {})}
                               for c in cols]})

def start_mlserver(case, work:Path, tag:str, omp1:bool=False):
    "MLServer with mlserver-sklearn on a joblib pickle of the case's pipeline (benchmark only)."
    import joblib
    folder = work/f"mlserver{'-omp1' if omp1 else ''}-{tag}"
    folder.mkdir(exist_ok=True)
    joblib.dump(case.pipeline, folder/"model.joblib")
    port, grpc, metrics = free_port(), free_port(), free_port()
    (folder/"settings.json").write_text(json.dumps({"host": "127.0.0.1", "http_port": port, "grpc_port": grpc,
                                                    "metrics_port": metrics, "parallel_workers": 0, "debug": False}))
    (folder/"model-settings.json").write_text(json.dumps({
        "name": MODEL_NAME, "implementation": "mlserver_sklearn.SKLearnModel", "max_batch_size": 32,
        "max_batch_time": 0.01,
        "parameters": {"uri": str(folder/"model.joblib"), "version": "1"}}))
    env = {**env_of(work), **({"OMP_NUM_THREADS": "1"} if omp1 else {})}
    srv = launch(f"MLServer{' OMP=1' if omp1 else ''} {tag}", [str(MLS_BIN/"mlserver"), "start", str(folder)], env,
                 folder, port,
                 f"/v2/models/{MODEL_NAME}/ready", work)
    return srv, f"/v2/models/{MODEL_NAME}/infer", mlserver_body

def env_of(work:Path)->dict:
    "Our environment without inherited venv or mlops_nb / Azure / MLServer settings, plus the benchmark's own."
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "OMP_NUM_THREADS")
           and not k.startswith(("AZUREML_", "MLOPS_NB_", "MLSERVER_"))}
    env.update(MLOPS_NB_HOME=str(work/"state"), MLOPS_NB_PROBLEM="mlops_nb.examples.ottawa:PROBLEM",
               MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
    return env

def start_ours(case, work:Path, tag:str, workers:int|None=None):
    "`mlops-nb serve --model FOLDER` with its defaults (or with `--workers N`)."
    port = free_port()
    env = {**env_of(work), "PYTHONPATH": str(ROOT)}  # this checkout's mlops_nb, whatever .venv has installed
    more = ["--workers", str(workers)] if workers else []
    srv = launch(f"ours{f' {workers}w' if workers else ''} {tag}",
                 [str(BIN/"mlops-nb"), "serve", "--model", str(case.model_dir), "--port", str(port), *more], env, work,
                 port, "/ready", work)
    return srv, "/score", lambda rs: to_json(rs[0] if len(rs) == 1 else rs)

def start_azml(case, work:Path, tag:str):
    "azmlinfsrv with api/score.py (it binds 0.0.0.0: it has no host flag; we connect to 127.0.0.1)."
    port = free_port()
    # Azure ML's layout, MODEL_DIR/NAME/VERSION/: its telemetry lists versions below each entry and fails on files
    root = work/f"azml-{tag}"
    if not root.exists():
        (root/"ottawa").mkdir(parents=True)
        (root/"ottawa"/"1").symlink_to(case.model_dir, target_is_directory=True)
    env = {**env_of(work), "AZUREML_MODEL_DIR": str(root), "PATH": f"{AZML_BIN}:{os.environ.get('PATH', '')}"}
    # gunicorn >= 27 opens a control socket at ~/.gunicorn/gunicorn.ctl, one path for every server of the user (as
    # bench_serve)
    if any(int(d.name.split("-")[1].split(".")[0]) >= 27
           for d in AZML_BIN.parent.glob("lib/python*/site-packages/gunicorn-*.dist-info")):
        env["GUNICORN_CMD_ARGS"] = "--no-control-socket"
    srv = launch(f"azmlinfsrv {tag}",
                 [str(AZML_BIN/"azmlinfsrv"), "--entry_script", str(ROOT/"api"/"score.py"), "--port", str(port)],
                 env, work, port, "/", work)
    return srv, "/score", lambda rs: to_json(rs[0] if len(rs) == 1 else rs)

def run_server(start, case, work:Path, tag:str, cfg:dict)->dict:
    "Start one server, time its start, load it with the scenarios (CPU % per run), stop it."
    res, srv = {}, None
    try:
        srv, path, body = start(case, work, tag)
        res["ready_s"] = wait_ready(srv)
        res["rss_mb"], res["processes"] = rss_kb(srv.proc.pid) / 1024, len(descendants(srv.proc.pid))
        recs = complete(case.records)
        files = {}
        for n in (1, 100):
            files[n] = work/f"body-{srv.name.replace(' ', '_')}-{n}"
            files[n].write_bytes(body(recs[:n]))
            st, text = http(srv.port, None, Body(path, files[n].read_bytes()), timeout=60)
            if st != 200: raise RuntimeError(f"{srv.name}: a {n}-row request answered {st}: {text[:300]!r}")
        wrk(srv.port, Body(path, b""), files[1], 8, 1, 1)  # warm-up
        for name, n, conns, threads in cfg["scenarios"]:
            c0, t0 = cpu_s(srv.proc.pid), time.monotonic()
            r = wrk(srv.port, Body(path, b""), files[n], conns, threads, cfg["seconds"])
            r["cpu_pct"] = (cpu_s(srv.proc.pid) - c0) / (time.monotonic() - t0) * 100
            r["rows_per_s"] = r["rps"] * n
            res[name] = r
            say(f"  {srv.name:22} {name:12} {r['rps']:8.1f} req/s {r['rows_per_s']:9.0f} rows/s p50 {r['p50_ms']:7.2f} "
                f"ms p99 {r['p99_ms']:7.2f} ms CPU {r['cpu_pct']:4.0f}%  errors {r['non2xx']}+{r['socket_errors']}")
    except Exception as e:
        res["error"] = f"{type(e).__name__}: {e}"
        say(f"  {tag} FAILED: {res['error'][:500]}")
    finally:
        if srv: stop(srv)
    return res

def limits(case, work:Path)->dict:
    "The in-process rows/s of the pipeline and the estimator (a fresh process, as a server would be)."
    recs = work/"limit-records.json"
    recs.write_text(json.dumps(complete(case.records)))
    p = subprocess.run([str(BIN/"python"), "-c", LIMITS_CHILD, str(case.model_dir), str(recs)], capture_output=True,
                       text=True,
                       env={**env_of(work), "PYTHONPATH": str(ROOT)}, timeout=600)
    if p.returncode: return {"error": p.stderr.strip().splitlines()[-1:]}
    return json.loads(p.stdout.strip().splitlines()[-1])

def limit_of(lim:dict, what:str)->float|None:
    "The faster of OpenMP as it comes and one thread for `what` (e.g. 'pipeline 800 rows')."
    vals = [v for k, v in lim.items() if k.startswith(what + ",")]
    return max(vals) if vals else None

def render(r:dict)->str:
    "One table per round and model: each server's figures, its CPU, and the in-process limits beside them."
    lines = [f"bench_limits {r['started']} on {r['cpus']} CPUs; "
             f"{r['seconds']:g} s runs; servers: {', '.join(r['servers'])}"]
    for i, rnd in enumerate(r["rounds"], 1):
        for trees, x in rnd["models"].items():
            lim = x["limits"]
            p800, p100, p1 = (limit_of(lim, f"pipeline {n} rows") for n in (800, 100, 1))
            est = limit_of(lim, "estimator 800-row matrix")
            lines += ["", f"round {i}, {trees} trees ({x['load_before']} before, {x['load_after']} after)",
                      f"  in process: pipeline predict_proba 1 row {p1 or 0:,.0f} rows/s, 100 rows {p100 or 0:,.0f}, "
                      f"800 rows {p800 or 0:,.0f}; estimator alone on an 800-row matrix {est or 0:,.0f} rows/s",
                      f"  {'server':16}|{'ready s':>8}|{'RSS MB':>7}|{'1-row c=1 p50':>14}|{'1-row c=32 req/s':>17}|"
                      f"{'CPU':>5}|{'100-row c=8 rows/s':>19}|{'CPU':>5}|{'x pipeline 800':>15}"]
            for name, s in x["servers"].items():
                if "error" in s:
                    lines.append(f"  {name:16}| FAILED: {s['error'][:200]}")
                    continue
                a, b, c = s["1-row c=1"], s["1-row c=32"], s["100-row c=8"]
                lines.append(f"  {name:16}|{s['ready_s']:8.2f}|{s['rss_mb']:7.0f}|{a['p50_ms']:11.2f} ms|"
                             f"{b['rps']:17,.0f}|{b['cpu_pct']:4.0f}%|{c['rows_per_s']:19,.0f}|{c['cpu_pct']:4.0f}%|"
                             f"{c['rows_per_s'] / p800 if p800 else float('nan'):15.2f}")
            o = x["servers"].get("ours", {})
            best = max((m for k, m in x["servers"].items() if k.startswith("MLServer") and "1-row c=32" in m),
                       key=lambda m: m["1-row c=32"]["rps"], default=None)
            if "1-row c=32" in o and best and best["1-row c=32"]["rps"]:
                lines.append("  ours / MLServer at its best, 1-row c=32: "
                             f"{o['1-row c=32']['rps'] / best['1-row c=32']['rps']:.2f}x; 100-row c=8: "
                             f"{o['100-row c=8']['rows_per_s'] / max(best['100-row c=8']['rows_per_s'], 1e-9):.2f}x")
    return "\n".join(lines)

def main(argv=None):
    "Train both models, then each round: the in-process limits and every server, one after the other."
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5, help="seconds per measured run (default 5)")
    p.add_argument("--rounds", type=int, default=2, help="rounds (default 2)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (the tables go to stderr)")
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="mlops_nb_bench_limits_"))
    (work/"state").mkdir()
    os.environ.update(MLOPS_NB_HOME=str(work/"state"), MLFLOW_DISABLE_TELEMETRY="true")
    # one worker: the server before it used every core (start, memory and throughput of one process)
    servers = {"ours": start_ours, "ours 1 worker": lambda case, work, tag: start_ours(case, work, tag, workers=1)}
    if (MLS_BIN/"mlserver").exists():
        servers["MLServer"] = start_mlserver
        # its default spreads each small call over every core with OpenMP, which stalls under load on 2 cores (see
        # bench_serve.py); ours runs one OpenMP thread per call: this is MLServer at its best here
        servers["MLServer OMP=1"] = lambda case, work, tag: start_mlserver(case, work, tag, omp1=True)
    else: say("no .venv-mlserver: run `bash bench/mlserver-venv` to compare with MLServer")
    if (AZML_BIN/"azmlinfsrv").exists(): servers["azmlinfsrv"] = start_azml
    else: say("no .venv-azml: run `bash scripts/azml-venv` to compare with azmlinfsrv")
    r = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(), "seconds": a.seconds,
         "servers": list(servers), "rounds": []}
    cfg = {"seconds": a.seconds, "scenarios": SCENARIOS}
    try:
        cases = {}
        for trees, epochs in ((250, 10), (100, 4)):
            bench_serve.EPOCHS = epochs
            (work/str(trees)).mkdir()
            say(f"training the {trees}-tree model")
            cases[trees] = make_case("ottawa-housing", work/str(trees))
        for i in range(a.rounds):
            rnd = {"models": {}}
            for trees, case in cases.items():
                x = {"load_before": uptime(), "servers": {}}
                say(f"round {i + 1}, {trees} trees ({x['load_before']})")
                x["limits"] = limits(case, work)
                for name, start in servers.items():
                    if name == "azmlinfsrv" and trees != 250: continue
                    x["servers"][name] = run_server(start, case, work, f"{trees}", cfg)
                x["load_after"] = uptime()
                rnd["models"][trees] = x
            r["rounds"].append(rnd)
        text = render(r)
        if a.json:
            print(text, file=sys.stderr)
            print(json.dumps(r, indent=1, default=str))
        else: print(text)
    finally:
        for srv in list(LIVE): stop(srv)
        shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__": main()
