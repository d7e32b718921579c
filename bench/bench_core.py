"""Benchmarks of mlops_nb's core loop; prints figures, never asserts on them.

Run from the repository root:  .venv/bin/python bench/bench_core.py [--rows N] [--quick] [--json]

All state (tracking DB, artifacts, executed notebooks, data) goes to a temporary folder: MLOPS_NB_HOME is set for
this process and every subprocess, so the project's .mlops_nb is never touched. Peers and ratios come from the same run.

What is measured, and how:
1. Training, test vs full mode: `mlops-nb train --mode test|full --data FILE --quiet --json` as subprocesses (the real
   path), on data made once by `mlops-nb data generate` (the configured problem's generator, its default period: the
   Ottawa example's listings of 2021 in this repository). A fresh store is created first (timed separately), so no
   run pays for the schema migrations. Wall time is split with timestamps from the same clock: the run's
   start/end in the tracking DB, and papermill's notebook start/end and per-cell durations in the executed notebook.
2. Fixed overhead: a trivial notebook that follows the run-mode contract, run through
   `LocalRunner(path, progress=False).submit(make_params()).wait()` in a fresh subprocess (interpreter start and the
   MLflow import counted), then again in the same process (warm).
3. Start-up: `python -c "import mlops_nb"` vs `python -c "pass"`, and `mlops-nb --help`, fresh processes, median of 5.
4. Logging: 100 runs made with `create_run`, 3 metrics + 2 tags each through `client()`, `end_run`, in this process.
5. Selection: `best_run` over 10 000 runs bulk-inserted with sqlite3 into the MLflow schema (creating them through
   the client would take minutes), checked against the true best computed from the inserted values, then timed again
   after `ANALYZE` as a diagnostic (SQLite's planner without statistics can make MLflow's order-by-metric join
   quadratic); `best_version` with no metric given (the configured problem's primary metric and its direction, as
   `mlops-nb models best` without --metric) over ~50 registered versions made through the library (skipped if setup
   passes 30 s).

Timings depend on what else runs on the machine: the report prints the load average and the share of the cores other
processes keep busy (sampled from /proc/stat for 1 s while the bench sleeps, at start and end) and warns above 15%.
Test/full repetitions stop once training has taken 100 s, to stay within ~4 minutes.
"""
from __future__ import annotations
import argparse, contextlib, json, logging, os, random, shutil, sqlite3, statistics, subprocess, sys, tempfile, time, \
    uuid, warnings
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CLI = (
    str(Path(PY).parent / "mlops-nb")
    if (Path(PY).parent / "mlops-nb").exists()
    else (shutil.which("mlops-nb") or "mlops-nb")
)
REGISTRY_BUDGET_S = 30.0
TRAINING_BUDGET_S = 100.0  # no further test/full repetition starts past this (a busy machine makes full runs slow)

# --------------------------------------------------------------------------------------------------------- helpers

def say(*a):
    "Progress for people, on stderr."
    print("[bench]", *a, file=sys.stderr, flush=True)

def median(xs):
    "Median of a non-empty list."
    return statistics.median(xs)

def run(cmd, **kw):
    "Run `cmd`, failing loudly with its stderr; return (wall seconds, stdout, start epoch, end epoch)."
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, **kw)
    t1 = time.time()
    if p.returncode != 0:
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(map(str, cmd))}\n{p.stderr[-3000:]}")
    return t1 - t0, p.stdout, t0, t1

def fresh_wall(cmd, reps):
    "Median wall time of `reps` fresh runs of `cmd`."
    return median([run(cmd)[0] for _ in range(reps)])

def timed(fn, *a, **kw):
    "(seconds, result) of one call."
    t0 = time.perf_counter()
    r = fn(*a, **kw)
    return time.perf_counter() - t0, r

@contextlib.contextmanager
def env(**kw):
    "Set environment variables for the duration of the block."
    old = {k: os.environ.get(k) for k in kw}
    os.environ.update(kw)
    try: yield
    finally:
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v

def busy_seconds()->float|None:
    "CPU seconds the machine has been busy since boot (all but idle and iowait, from /proc/stat), or None."
    try: ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError): return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")

def others_busy(seconds:float=1.0)->float|None:
    "Share of the cores busy while this bench sleeps for `seconds`: the work of other processes."
    b0 = busy_seconds()
    time.sleep(seconds)
    b1 = busy_seconds()
    return None if b0 is None or b1 is None else (b1 - b0) / (seconds * os.cpu_count())

def epoch(iso:str)->float:
    "Seconds since the epoch of an ISO timestamp with a time zone (papermill's)."
    return datetime.fromisoformat(iso).timestamp()

def db_path()->Path:
    "The tracking SQLite file in the bench's state folder."
    return Path(os.environ["MLOPS_NB_HOME"])/"mlflow.db"

def run_times(run_id:str)->tuple:
    "(start, end) of a run in seconds since the epoch, read from the tracking DB."
    with contextlib.closing(sqlite3.connect(db_path())) as con:
        s, e = con.execute("SELECT start_time, end_time FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
    return s/1000, e/1000

# ------------------------------------------------------------------------------------- where a notebook run's time goes

PHASES = ["before the run exists", "run created -> notebook start", "kernel start/stop + papermill", "notebook cells",
          "notebook end -> run ended", "run ended -> done"]

def breakdown(nb_path:str, run_id:str, t0:float, t1:float)->dict:
    "Split [t0, t1] of one tracked notebook run into phases, from DB and papermill timestamps, plus per-cell times."
    nb = json.loads(Path(nb_path).read_text())
    pm = nb["metadata"]["papermill"]
    nb_start, nb_end, nb_dur = epoch(pm["start_time"]), epoch(pm["end_time"]), pm["duration"]
    cells = [(c["source"] if isinstance(c["source"], str) else "".join(c["source"]),
              c["metadata"].get("papermill", {}).get("duration") or 0.0) for c in nb["cells"]
             if c["cell_type"] == "code"]
    cell_sum = sum(d for _, d in cells)
    r_start, r_end = run_times(run_id)
    phases = dict(zip(PHASES,
                      [r_start - t0, nb_start - r_start, nb_dur - cell_sum, cell_sum, r_end - nb_end, t1 - r_end]))
    top = sorted(((d, src.strip().splitlines()[0][:48] if src.strip() else "") for src, d in cells), reverse=True)[:4]
    return {"wall": t1 - t0, "notebook": nb_dur, "outside_notebook": (t1 - t0) - nb_dur, "phases": phases,
            "top_cells": [{"cell": s, "seconds": d} for d, s in top]}

def median_breakdown(bs:list)->dict:
    "Element-wise median of several breakdowns (top cells taken from the first)."
    return {"wall": median([b["wall"] for b in bs]), "notebook": median([b["notebook"] for b in bs]),
            "outside_notebook": median([b["outside_notebook"] for b in bs]),
            "phases": {k: median([b["phases"][k] for b in bs]) for k in PHASES}, "top_cells": bs[0]["top_cells"],
            "n": len(bs)}

# ------------------------------------------------------------------------------------------------ 1. test vs full mode

def default_rows()->int:
    "The CLI's default `data generate --rows`."
    from mlops_nb.cli import parser
    return parser().parse_args(["data", "generate", "--out", "unused.parquet"]).rows

def create_store()->float:
    "Create the fresh tracking store in a subprocess (schema migrations); return its wall time."
    return run([PY, "-c", "from mlops_nb.tracking import experiment_id; experiment_id()"])[0]

def bench_training(rows:int, reps:int, work:Path)->dict:
    "Generate data once, then time `mlops-nb train` in test and full mode, interleaved, `reps` times each."
    data = work/f"data-{rows}.parquet"  # the configured problem's generated data, of its default period
    gen = run([CLI, "data", "generate", "--rows", str(rows), "--out", str(data), "--json"])[0]
    out = {"rows": rows, "data_generate_s": gen, "test": [], "full": []}
    t0 = time.perf_counter()
    for i in range(reps):
        if i and time.perf_counter() - t0 > TRAINING_BUDGET_S:
            say(f"training past {TRAINING_BUDGET_S:g} s: no repetition {i+1}")
            break
        for mode in ("test", "full"):
            say(f"train --mode {mode} ({i+1}/{reps})")
            wall, stdout, t0, t1 = run([CLI, "train", "--mode", mode, "--data", str(data), "--quiet", "--json"])
            res = json.loads(stdout)
            out[mode].append(breakdown(res["output_notebook"], res["run_id"], t0, t1))
    for mode in ("test", "full"): out[mode] = median_breakdown(out[mode])
    out["ratio"] = out["test"]["wall"] / out["full"]["wall"]
    return out

# --------------------------------------------------------------------------------------------------- 2. fixed overhead

def write_trivial_notebook(path:Path)->Path:
    "A notebook that follows the run-mode contract and does nothing else."
    import nbformat
    v4 = nbformat.v4
    cells = [v4.new_code_cell('mode = "test"\nseed = 42\nrun_id = ""\nresult_path = ""'),
             v4.new_code_cell("from mlops_nb.params import read_params\nparams = read_params(globals())"),
             v4.new_code_cell("from mlops_nb.train import finish_notebook\n"
                              "finish_notebook(params, {'run_id': params.run_id, 'mode': params.mode, 'metrics': {}, "
                              "'registered_version': None})")]
    cells[0].metadata["tags"] = ["parameters"]
    ks = {"kernelspec": {"name": "python3", "display_name": "python3", "language": "python"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(v4.new_notebook(cells=cells, metadata=ks), path)
    return path

# runs in a fresh interpreter: times the imports, the MLflow import + store setup, then cold and warm notebook runs
OVERHEAD_CHILD = r"""
import json, sys, time
t_start = time.time()
from mlops_nb.params import make_params
from mlops_nb.runner import LocalRunner
t_imported = time.time()
from mlops_nb.tracking import client
client()
t_client = time.time()
calls = []
for _ in range(1 + int(sys.argv[2])):
    t0 = time.time()
    res = LocalRunner(sys.argv[1], progress=False).submit(make_params()).wait()
    calls.append({"t0": t0, "t1": time.time(), "run_id": res.run_id, "output_notebook": res.output_notebook})
print(json.dumps({"t_start": t_start, "t_imported": t_imported, "t_client": t_client, "calls": calls}))
"""

def bench_overhead(work:Path, warm_reps:int)->dict:
    "Time the trivial notebook through `LocalRunner`: fresh process (cold call) and further calls in it (warm)."
    nb = write_trivial_notebook(work/"trivial"/"trivial.ipynb")
    wall, stdout, t0, t1 = run([PY, "-c", OVERHEAD_CHILD, str(nb), str(warm_reps)])
    r = json.loads(stdout)
    cold, *warm = r["calls"]
    cold_b = breakdown(cold["output_notebook"], cold["run_id"], cold["t0"], cold["t1"])
    warm_b = median_breakdown([breakdown(c["output_notebook"], c["run_id"], c["t0"], c["t1"]) for c in warm])
    def kernel_papermill(b):
        return b["phases"]["run created -> notebook start"] + b["phases"]["kernel start/stop + papermill"]
    fresh = {"wall": r["calls"][0]["t1"] - t0, "process_wall_all_calls": wall,
             "interpreter_start": r["t_start"] - t0, "import_mlops_nb_runner": r["t_imported"] - r["t_start"],
             "mlflow_import_and_store": r["t_client"] - r["t_imported"], "call": cold_b,
             "kernel_start_and_papermill": kernel_papermill(cold_b)}
    return {"fresh": fresh, "warm": {**warm_b, "kernel_start_and_papermill": kernel_papermill(warm_b)}}

# ------------------------------------------------------------------------------------------------------- 3. start-up

def bench_startup(reps:int=5)->dict:
    "Fresh-process wall times of `pass`, `import mlops_nb` and `mlops-nb --help` (median of `reps`)."
    out = {"python_pass": fresh_wall([PY, "-c", "pass"], reps),
           "import_mlops_nb": fresh_wall([PY, "-c", "import mlops_nb"], reps),
           "cli_help": fresh_wall([CLI, "--help"], reps), "reps": reps}
    out["import_minus_pass"] = out["import_mlops_nb"] - out["python_pass"]
    return out

# ------------------------------------------------------------------------------------------------------- 4. logging

def bench_logging(n:int=100)->dict:
    "Create `n` runs with the library, log 3 metrics and 2 tags each through `client()`, end them."
    from mlops_nb.core import git_info
    from mlops_nb.params import make_params
    from mlops_nb.tracking import client, create_run, end_run, experiment_id
    with env(MLOPS_NB_EXPERIMENT="bench-logging"):
        c = client()
        experiment_id()  # store opened and experiment created before the clock starts
        t0 = time.perf_counter()
        for i in range(n):
            rid = create_run(make_params(mode="full"), "nbs/train.ipynb")
            for k, v in (("accuracy", 0.8), ("roc_auc", 0.9), ("log_loss", 0.3)): c.log_metric(rid, k, v + i*1e-6)
            c.set_tag(rid, "bench.i", str(i))
            c.set_tag(rid, "bench.kind", "logging")
            end_run(rid)
        total = time.perf_counter() - t0
    git = median([timed(git_info, "nbs/train.ipynb")[0] for _ in range(10)])
    return {"runs": n, "total_s": total, "per_run_ms": 1000*total/n, "git_info_per_call_ms": 1000*git}

# ------------------------------------------------------------------------------------------------------- 5. selection

FINGERPRINTS = ["fp-a", "fp-b", "fp-c", "fp-d", "fp-e"]

def bulk_insert_runs(exp_id:str, n:int, seed:int=0)->list:
    ("Insert `n` finished full-mode runs (tags, params, per-epoch and "
     "final metrics) into the MLflow schema with sqlite3.")
    rng = random.Random(seed)
    with contextlib.closing(sqlite3.connect(db_path())) as con:
        art = con.execute("SELECT artifact_location FROM experiments WHERE experiment_id = ?",
                          (int(exp_id),)).fetchone()[0]
        now = int(time.time()*1000) - n*1000
        runs, metrics, latest, tags, params, truth = [], [], [], [], [], []
        for i in range(n):
            rid, ts = uuid.uuid4().hex, now + i*1000
            fp = FINGERPRINTS[i % len(FINGERPRINTS)]
            final = {"roc_auc": rng.uniform(0.80, 0.95), "log_loss": rng.uniform(0.20, 0.50),
                     "accuracy": rng.uniform(0.8, 0.9)}
            truth.append((rid, fp, final))
            runs.append((rid, f"full-seed{i}", "UNKNOWN", "", "", "bench", "FINISHED", ts, ts + 900, "", "active",
                         f"{art}/{rid}/artifacts", int(exp_id), None))
            for e in range(1, 11):
                for k in ("train_loss", "val_roc_auc"): metrics.append((k, rng.random(), ts + e*10, rid, e, 0))
            for k in ("train_loss", "val_roc_auc"): latest.append((k, rng.random(), ts + 100, 10, 0, rid))
            for k, v in final.items():
                metrics.append((k, v, ts + 200, rid, 0, 0))
                latest.append((k, v, ts + 200, 0, 0, rid))
            for k, v in {"mlops_nb.mode": "full", "mlops_nb.eval_fingerprint": fp,
                         "mlops_nb.data_fingerprint": f"d{i % 7}",
                         "mlops_nb.git_commit": "0"*40, "mlops_nb.git_dirty": "false",
                         "mlops_nb.notebook": "nbs/train.ipynb",
                         "mlflow.runName": f"full-seed{i}", "mlflow.user": "bench",
                         "mlflow.source.name": "nbs/train.ipynb",
                         "mlflow.source.type": "NOTEBOOK"}.items():
                tags.append((k, v, rid))
            for k, v in {"mode": "full", "data_path": "listings.parquet", "sample_frac": "1.0", "epochs": "10",
                         "seed": str(i), "eval_path": ""}.items(): params.append((k, v, rid))
        with con:
            con.executemany("INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, "
                            "status, start_time, end_time, source_version, lifecycle_stage, artifact_uri, "
                            "experiment_id, deleted_time) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", runs)
            con.executemany(
                'INSERT INTO metrics ("key", value, timestamp, run_uuid, step, is_nan) VALUES (?,?,?,?,?,?)', metrics
            )
            con.executemany('INSERT INTO latest_metrics ("key", value, timestamp, step, '
                            'is_nan, run_uuid) VALUES (?,?,?,?,?,?)', latest)
            con.executemany('INSERT INTO tags ("key", value, run_uuid) VALUES (?,?,?)', tags)
            con.executemany('INSERT INTO params ("key", value, run_uuid) VALUES (?,?,?)', params)
    return truth

def time_query(fn, warm_reps:int)->dict:
    "Cold (first) and median warm wall time of `fn()`, and its last result."
    cold, r = timed(fn)
    warm = [timed(fn)[0] for _ in range(warm_reps)]
    return {"cold_s": cold, "warm_s": median(warm), "result": r}

def bench_best_run(n:int, warm_reps:int)->dict:
    "`best_run` over `n` bulk-inserted runs: timings and whether the pick is the true best."
    from mlops_nb.tracking import EVAL_FP_TAG, best_run, experiment_id
    exp = "bench-select"
    t_setup, truth = timed(lambda: bulk_insert_runs(experiment_id(exp), n))
    fp = FINGERPRINTS[1]
    want_auc = max(truth, key=lambda t: t[2]["roc_auc"])
    want_ll = min((t for t in truth if t[1] == fp), key=lambda t: t[2]["log_loss"])
    q_auc = time_query(lambda: best_run("roc_auc", experiment=exp), warm_reps)
    flt = f"tags.`{EVAL_FP_TAG}` = '{fp}'"
    q_ll = time_query(lambda: best_run("log_loss", higher_is_better=False, filter_string=flt, experiment=exp),
                      warm_reps)
    out = {"runs": n, "setup": "bulk SQL insert (sqlite3, MLflow schema)", "setup_s": t_setup, "filter": flt}
    for key, q, want in (("roc_auc", q_auc, want_auc), ("log_loss_filtered", q_ll, want_ll)):
        got = q.pop("result")
        out[key] = {**q, "picked": got.info.run_id if got else None, "true_best": want[0],
                    "check": "OK" if got is not None and got.info.run_id == want[0] else "MISMATCH"}
    with contextlib.closing(sqlite3.connect(db_path())) as con: con.execute("ANALYZE")  # diagnostic: planner statistics
    out["roc_auc_after_analyze"] = {k: v for k,
                                    v in time_query(lambda: best_run("roc_auc", experiment=exp), warm_reps).items()
                                    if k != "result"}
    return out

def quiet_mlflow():
    "Silence MLflow's and sklearn's chatter while logging tiny models."
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

def bench_best_version(n:int, warm_reps:int, budget_s:float=REGISTRY_BUDGET_S)->dict:
    ("`best_version` (no metric given: the problem's primary one and its direction) over `n` versions registered "
     "through the library (tiny models); skipped past `budget_s` of setup.")
    import mlflow, numpy as np
    from sklearn.dummy import DummyClassifier
    from mlops_nb.params import make_params
    from mlops_nb.problem import load_problem
    from mlops_nb.tracking import best_version, create_run, log_data_lineage, register_model
    quiet_mlflow()
    problem = load_problem()
    metric, higher = problem.primary, problem.directions[problem.primary]
    name, rng, truth = "bench-model", random.Random(1), []
    model = DummyClassifier().fit(np.zeros((4, 1)), [0, 1, 0, 1])
    t0 = time.perf_counter()
    with env(MLOPS_NB_EXPERIMENT="bench-registry"):
        for i in range(n):
            if time.perf_counter() - t0 > budget_s:
                return {"versions": i, "setup_s": time.perf_counter() - t0,
                        "skipped": f"setup passed {budget_s:g} s after {i} of {n} versions"}
            rid = create_run(make_params(mode="full", seed=i), "nbs/train.ipynb")
            m = {k: rng.uniform(0.2, 0.95) for k in problem.metric_names}
            with mlflow.start_run(run_id=rid):
                mlflow.log_metrics(m)
                info = mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])
            fp = "e2" if i % 5 == 1 else "e1"
            log_data_lineage(rid, "d1", fp)
            truth.append((register_model(rid, info.model_uri, name), fp, m[metric]))
    setup = time.perf_counter() - t0
    latest_fp = truth[-1][1]
    same = [t for t in truth if t[1] == latest_fp]
    want = (max(same, key=lambda t: (t[2], t[0])) if higher else min(same, key=lambda t: (t[2], -t[0])))[0]
    q = time_query(lambda: best_version(name=name), warm_reps)  # like `mlops-nb models best`: no --metric
    sel = q.pop("result")
    got = sel.version.version
    return {"versions": n, "metric": sel.metric, "problem": problem.name, "setup_s": setup,
            "setup": "library: create_run + log_model (DummyClassifier) + register_model",
            **q, "picked": got, "true_best": want, "check": "OK" if got == want else "MISMATCH"}

# ------------------------------------------------------------------------------------------------------------ report

def s(x): return f"{x:.2f} s" if x < 10 else f"{x:.1f} s"
def ms(x): return f"{1000*x:.0f} ms"

def table_rows(r:dict)->list:
    "(metric, value, target) rows of the final table."
    t, o, u, lg, br = r["training"], r["overhead"], r["startup"], r["logging"], r["best_run"]
    rows = [(f"test-mode run (wall, median of {t['test']['n']})", s(t["test"]["wall"]), ""),
            (f"full-mode run (wall, median of {t['full']['n']})", s(t["full"]["wall"]), ""),
            ("test / full", f"{t['ratio']:.0%}", "<= 10%")]
    for mode in ("test", "full"):
        b = t[mode]
        rows += [(f"  {mode}: notebook execution", s(b["notebook"]), ""),
                 (f"  {mode}: outside the notebook", s(b["outside_notebook"]), "")]
    rows += [("fixed overhead, fresh process (wall)", s(o["fresh"]["wall"]), "<= 3 s"),
             ("  interpreter + import mlops_nb.runner",
              s(o["fresh"]["interpreter_start"] + o["fresh"]["import_mlops_nb_runner"]), ""),
             ("  MLflow import + store setup", s(o["fresh"]["mlflow_import_and_store"]), ""),
             ("  kernel start + papermill", s(o["fresh"]["kernel_start_and_papermill"]), ""),
             ("  notebook cells", s(o["fresh"]["call"]["phases"]["notebook cells"]), ""),
             ("fixed overhead, warm (same process)", s(o["warm"]["wall"]), "<= 3 s"),
             ("  kernel start + papermill", s(o["warm"]["kernel_start_and_papermill"]), ""),
             ("  notebook cells", s(o["warm"]["phases"]["notebook cells"]), ""),
             ("python -c pass", ms(u["python_pass"]), ""),
             ("python -c 'import mlops_nb'", ms(u["import_mlops_nb"]), "<= 0.3 s"),
             ("  import mlops_nb - pass", ms(u["import_minus_pass"]), ""),
             ("mlops-nb --help", ms(u["cli_help"]), "<= 0.3 s"),
             (f"log {lg['runs']} runs (total)", s(lg["total_s"]), ""), ("  per run", f"{lg['per_run_ms']:.0f} ms", ""),
             ("  of which git_info per run", f"{lg['git_info_per_call_ms']:.0f} ms", ""),
             (f"best_run roc_auc, {br['runs']} runs (cold)", ms(br["roc_auc"]["cold_s"]), "<= 1 s"),
             ("  warm (median)", ms(br["roc_auc"]["warm_s"]), "<= 1 s"),
             ("  pick is the true best", br["roc_auc"]["check"], "OK"),
             ("best_run log_loss + fingerprint (cold)", ms(br["log_loss_filtered"]["cold_s"]), "<= 1 s"),
             ("  warm (median)", ms(br["log_loss_filtered"]["warm_s"]), "<= 1 s"),
             ("  pick is the true best", br["log_loss_filtered"]["check"], "OK"),
             ("best_run roc_auc after ANALYZE (warm)", ms(br["roc_auc_after_analyze"]["warm_s"]), "diagnostic")]
    bv = r["best_version"]
    if "skipped" in bv: rows.append(("best_version (primary metric)", "skipped", bv["skipped"]))
    else:
        rows += [(f"best_version ({bv['metric']}), {bv['versions']} versions (cold)", ms(bv["cold_s"]), ""),
                 ("  warm (median)", ms(bv["warm_s"]), ""), ("  pick is the true best", bv["check"], "OK")]
    return rows

def details(r:dict)->str:
    "Where the time goes: the phase split of each measured notebook run and its slowest cells."
    lines = ["where the time goes (seconds; phases from DB run start/end and papermill timestamps):"]
    for label, b in (("train --mode test", r["training"]["test"]), ("train --mode full", r["training"]["full"]),
                     ("trivial notebook, cold call", r["overhead"]["fresh"]["call"]),
                     ("trivial notebook, warm", r["overhead"]["warm"])):
        lines.append(f"  {label}: wall {b['wall']:.2f}")
        lines += [f"    {k:<34} {v:6.2f}" for k, v in b["phases"].items()]
        lines += [f"      cell {c['seconds']:5.2f}  {c['cell']}" for c in b["top_cells"][:3]]
    t = r["training"]
    lines.append(f"  setup: fresh store {r['store_create_s']:.2f} s, data generate ({t['rows']} rows) "
                 f"{t['data_generate_s']:.2f} s; best_run setup: {r['best_run']['setup']} "
                 f"{r['best_run']['setup_s']:.2f} s; best_version setup {r['best_version']['setup_s']:.1f} s")
    return "\n".join(lines)

def machine_note(r:dict)->str:
    "One line on the machine, with a warning when other work was competing for the cores."
    c = r["config"]
    pct = lambda x: "?" if x is None else f"{x:.0%}"
    busy = [x for x in (c["others_busy_start"], r["others_busy_end"]) if x is not None]
    line = (f"machine: {c['cpus']} cores, 1-min load average {c['load_start']:.2f} at start; cores busy with other "
            f"work (1 s sample, bench idle) {pct(c['others_busy_start'])} at start, {pct(r['others_busy_end'])} at "
            f"end; SQLite {c['sqlite']}, MLflow {c['mlflow']}, python {c['python_version']}")
    if busy and max(busy) > 0.15:
        line += "\nWARNING: other work was competing for the cores: timings (full-mode training most) are inflated"
    return line

def render(r:dict)->str:
    "The plain-text report: machine, details, then the final table."
    rows = table_rows(r)
    head = f"{'metric':<42} {'value':<10} target"
    return machine_note(r) + "\n" + details(r) + "\n\n" + "\n".join([head] + [f"{m:<42} {v:<10} {t}".rstrip() for m, v,
                                                                              t in rows])

# -------------------------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    "Command-line options."
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=None,
                   help="rows of generated data for the training runs (default: the CLI's default)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions and a 2 000-run selection setup (CI smoke)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (the table goes to stderr)")
    return p.parse_args(argv)

def main(argv=None):
    "Run every benchmark in one temporary state folder and print the report."
    a = parse_args(argv)
    os.chdir(ROOT)
    work = Path(tempfile.mkdtemp(prefix="mlops_nb_bench_"))
    os.environ.update(MLOPS_NB_HOME=str(work/"state"), MLFLOW_DISABLE_TELEMETRY="true")
    q = a.quick
    cfg = {"rows": a.rows or default_rows(), "quick": q, "train_reps": 1 if q else 2, "warm_reps": 1 if q else 3,
           "select_runs": 2_000 if q else 10_000, "query_warm_reps": 3 if q else 5, "registry_versions": 10 if q
           else 50,
           "state_dir": os.environ["MLOPS_NB_HOME"], "python": PY, "cpus": os.cpu_count(),
           "load_start": os.getloadavg()[0], "others_busy_start": others_busy(),
           "sqlite": sqlite3.sqlite_version, "mlflow": version("mlflow-skinny"),
           "python_version": sys.version.split()[0]}
    t0 = time.perf_counter()
    try:
        r = {"config": cfg}
        say("creating a fresh tracking store")
        r["store_create_s"] = create_store()
        r["training"] = bench_training(cfg["rows"], cfg["train_reps"], work)
        say("fixed overhead (trivial notebook)")
        r["overhead"] = bench_overhead(work, cfg["warm_reps"])
        say("start-up times")
        r["startup"] = bench_startup(5)
        say("logging 100 runs")
        r["logging"] = bench_logging(100)
        say(f"best_run over {cfg['select_runs']} runs")
        r["best_run"] = bench_best_run(cfg["select_runs"], cfg["query_warm_reps"])
        say(f"best_version over {cfg['registry_versions']} versions")
        r["best_version"] = bench_best_version(cfg["registry_versions"], cfg["query_warm_reps"])
        r["bench_wall_s"] = time.perf_counter() - t0
        r["others_busy_end"] = others_busy()
        text = render(r) + f"\n\n(bench wall time {r['bench_wall_s']:.0f} s; state in a temp folder, removed)"
        r["table"] = [{"metric": m.strip(), "value": v, "target": t} for m, v, t in table_rows(r)]
        if a.json:
            print(text, file=sys.stderr)
            print(json.dumps(r, indent=2, default=str))
        else: print(text)
    finally: shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__": main()
