"""Start of `mlops-nb serve`: from a registry reference, from a model folder, beside a bare skops load of the same
model,
interleaved in one run; prints figures, never asserts on them.

Run from the repository root (needs .venv):
  .venv/bin/python bench/bench_start.py [--rounds 3] [--json]      (about 3 minutes, most of it training)

Model: the Ottawa example made as bench_serve.py makes it (`make_case`: 20 000 generated listings, 250 boosting
iterations), then logged in a full-mode run of a fresh MLflow SQLite store (the project's default store, in a temporary
MLOPS_NB_HOME), registered as ottawa-housing-classifier version 1 (`tracking.register_model`, which checks it serves)
and promoted to champion.

Per round (3 by default), one after the other, each alone with this script on the machine:
- registry reference: `mlops-nb serve --model models:/ottawa-housing-classifier@champion`, the serving cache emptied
  before each start (a fresh container: resolve, download, load), with --workers 1 and with the default workers;
- model folder: `mlops-nb serve --model FOLDER` (what an image bakes in), --workers 1 and default workers;
- bare skops load: a fresh `python` that imports skops.io, lists the file's types and loads the pipeline with them
  trusted: the floor of any server that loads this model.
Figures: seconds from just before Popen to the first 200 of GET /health and of POST /score (one record), polled every
20 ms; the bare load's seconds to its exit. RSS: VmRSS of the server and its child processes after the first score
(the bare load: its own at the end, printed by it). Also whether MLflow is imported in a serving process: the server
logs `mlflow_imported` in its model_loaded event. The load average (`uptime`) is printed beside every figure: other
work on a shared machine changes absolute figures from one minute to the next; compare neighbours of the same round.
"""
from __future__ import annotations
import argparse, json, os, shutil, signal, statistics, subprocess, sys, tempfile, time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_serve import descendants, free_port, make_case, rss_kb, say  # noqa: E402
from bench_protocols import LIVE, Body, http, launch, stop  # noqa: E402

BIN = ROOT/".venv"/"bin"
PROBLEM = "mlops_nb.examples.ottawa:PROBLEM"
REF = "models:/ottawa-housing-classifier@champion"
BARE_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import skops.io
p = sys.argv[1]
m = skops.io.load(p, trusted=skops.io.get_untrusted_types(file=p))
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))
print(json.dumps({"in_process_s": time.perf_counter() - t0, "rss_mb": rss / 1024}))
"""

def load()->str:
    "The load averages, as `uptime` prints them."
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())

def env_of(work:Path)->dict:
    "Our environment without inherited venv or mlops_nb settings, plus the benchmark's store and problem."
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "OMP_NUM_THREADS")
           and not k.startswith(("AZUREML_", "MLOPS_NB_", "MLFLOW_"))}
    env.update(MLOPS_NB_HOME=str(work/"state"), MLOPS_NB_PROBLEM=PROBLEM, MLFLOW_DISABLE_TELEMETRY="true",
               PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))  # this checkout's mlops_nb, whatever .venv has installed
    return env

def register(case, work:Path):
    "Log the case's pipeline in a full-mode run of the temp store, register it and make it the champion."
    import mlflow
    from mlops_nb.examples.ottawa import PROBLEM as P, generate_listings
    from mlops_nb.params import make_params
    from mlops_nb.tracking import create_run, end_run, promote, register_model
    from mlops_nb.train import evaluate, log_model
    rid = create_run(make_params(mode="full", seed=0), "nbs/train.ipynb")
    with mlflow.start_run(run_id=rid):
        mlflow.log_metrics(evaluate(P, case.pipeline, generate_listings(2021, 1000, seed=1)))
        info = log_model(P, case.pipeline, generate_listings(2021, 5, seed=1))
    end_run(rid, "FINISHED")
    v = register_model(rid, info.model_uri)
    promote(v, "champion", force=True)
    return v

def first_200(port:int, body:Body|None, t0:float, proc, budget:float=180)->float:
    "Seconds from `t0` to the first 200 of GET /health (body None) or of the POST `body`."
    while True:
        if proc.poll() is not None: raise RuntimeError(f"exited with {proc.returncode}")
        if time.monotonic() - t0 > budget: raise RuntimeError(f"no 200 within {budget:.0f} s")
        if http(port, "/health" if body is None else None, body, timeout=5)[0] == 200: return time.monotonic() - t0
        time.sleep(0.02)

def start_server(name:str, model:str, work:Path, workers:int|None)->dict:
    "Start `mlops-nb serve`, time its first 200s, read its RSS and whether it imported MLflow, stop it."
    if model.startswith("models:/"): shutil.rmtree(work/"state"/"served", ignore_errors=True)  # a cold cache
    port = free_port()
    cmd = [str(BIN/"mlops-nb"), "serve", "--model", model, "--port",
           str(port)] + (["--workers", str(workers)] if workers else [])
    srv = launch(name, cmd, env_of(work), work, port, "/ready", work)
    rec = json.dumps({k: v for k, v in GOOD.items()}).encode()
    try:
        health = first_200(port, None, srv.t0, srv.proc)
        score = first_200(port, Body("/score", rec), srv.t0, srv.proc)
        rss, n = rss_kb(srv.proc.pid) / 1024, len(descendants(srv.proc.pid))
        time.sleep(0.2)
        events = [json.loads(l) for l in srv.log.read_text(errors="replace").splitlines() if l.startswith("{")]
        loaded = [e for e in events if e.get("event") == "model_loaded"]
        return {"health_s": health, "score_s": score, "rss_mb": rss, "processes": n,
                "mlflow_imported": sorted({str(e.get("mlflow_imported", "?")) for e in loaded}), "load": load()}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}: {srv.log_tail(10)}", "load": load()}
    finally: stop(srv)

def bare_load(case, work:Path)->dict:
    "A fresh python loading the model's skops file: seconds to its exit, its RSS at the end."
    meta = __import__("yaml").safe_load((case.model_dir/"MLmodel").read_text())
    path = case.model_dir/meta["flavors"]["sklearn"]["pickled_model"]
    t0 = time.monotonic()
    p = subprocess.run([str(BIN/"python"), "-c", BARE_CHILD, str(path)], capture_output=True, text=True,
                       env=env_of(work))
    s = time.monotonic() - t0
    if p.returncode: return {"error": p.stderr.strip()[-300:], "load": load()}
    return {"exit_s": s, **json.loads(p.stdout), "load": load()}

def spread(xs:list)->str:
    "median (min-max)."
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})" if xs else "n/a"

def render(r:dict)->str:
    "One line per case and round with its load, then medians and ranges."
    L = [f"bench_start {r['started']} on {r['cpus']} CPUs, {len(r['rounds'])} rounds; model: {r['case']}",
         f"{'round':6}|{'case':34}|{'/health 200 s':>14}|{'/score 200 s':>13}|"
         f"{'RSS MB':>8}|{'procs':>6}| mlflow imported | load (1, 5, 15 min)"]
    for i, rnd in enumerate(r["rounds"], 1):
        for name, x in rnd.items():
            if "error" in x:
                L.append(f"{i:<6}|{name:34}| FAILED {x['error'][:200]} | {x['load']}")
                continue
            if "exit_s" in x:
                L.append(f"{i:<6}|{name:34}|{x['exit_s']:14.2f}|{'':13}|"
                         f"{x['rss_mb']:8.0f}|{1:6}| no              | {x['load']}")
                continue
            L.append(f"{i:<6}|{name:34}|{x['health_s']:14.2f}|{x['score_s']:13.2f}|{x['rss_mb']:8.0f}|"
                     f"{x['processes']:6}| {','.join(x['mlflow_imported']):16}| {x['load']}")
    L += ["", "median (min-max) over the rounds"]
    for name in r["rounds"][0]:
        xs = [rnd[name] for rnd in r["rounds"] if "error" not in rnd[name]]
        t = [x.get("score_s", x.get("exit_s")) for x in xs]
        L.append(f"  {name:34} first /score 200 (bare: exit) {spread(t)} s; /health "
                 f"{spread([x['health_s'] for x in xs if 'health_s' in x])} s; "
                 f"RSS {spread([x['rss_mb'] for x in xs])} MB")
    return "\n".join(L)

GOOD = {"list_price": 650000, "bedrooms": 3, "bathrooms": 2.0, "sqft": 1800, "lot_size": 3000, "year_built": 1995,
        "days_on_market": 12, "neighbourhood": "Glebe", "property_type": "detached", "listing_date": "2024-05-01"}

def main(argv=None):
    "Train and register the model, then each round every case one after the other."
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (the table goes to stderr)")
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="mlops_nb_bench_start_"))
    (work/"state").mkdir()
    for k in [k for k in os.environ if k.startswith(("MLOPS_NB_", "MLFLOW_"))]: del os.environ[k]
    os.environ.update(MLOPS_NB_HOME=str(work/"state"), MLOPS_NB_PROBLEM=PROBLEM, MLFLOW_DISABLE_TELEMETRY="true")
    r = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(), "rounds": []}
    try:
        say("training the model")
        case = make_case("ottawa-housing", work)
        r["case"] = case.describe()
        say("registering it in the temp SQLite store")
        r["version"] = register(case, work)
        cases = {"registry reference, 1 worker": lambda: start_server("reg1", REF, work, 1),
                 "model folder, 1 worker": lambda: start_server("dir1", str(case.model_dir), work, 1),
                 "bare skops load (python, no server)": lambda: bare_load(case, work),
                 "registry reference, default workers": lambda: start_server("reg", REF, work, None),
                 "model folder, default workers": lambda: start_server("dir", str(case.model_dir), work, None)}
        for i in range(a.rounds):
            rnd = {}
            for name, run in cases.items():
                rnd[name] = run()
                x = rnd[name]
                say(f"round {i + 1} {name:36} " + (f"FAILED {x['error'][:300]}" if "error" in x else
                    f"{x.get('score_s', x.get('exit_s')):.2f} s, RSS {x['rss_mb']:.0f} MB") + f" (load {x['load']})")
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
