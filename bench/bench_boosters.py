"""Serving LightGBM and XGBoost models beside scikit-learn's default: `mlops-nb serve` on the same tables, 1-row
requests, req/s at concurrency 32 and p50 at concurrency 1; prints figures, never asserts on them.

Run from the repository root (needs lightgbm and xgboost, `pip install -e '.[boosting]'`, and wrk):
  .venv/bin/python bench/bench_boosters.py [--tables breast-cancer,wine,diabetes] [--quick] [--json]
(about 1 minute per problem, --quick about 30 s; three problems per table: scikit-learn, LightGBM, XGBoost).

It reuses bench/bench_serve.py for everything but the list of problems: each model is trained like a full run
(10 epochs: 250 trees or rounds; `mlops_nb.examples.boosters` declares the LightGBM and XGBoost problems), saved as an
MLflow model folder, served alone by `mlops-nb serve` (this checkout's mlops_nb, with the interpreter running the
benchmark), checked equal to the in-process pipeline on 200 records, then measured with wrk (a discarded warm-up run,
then the measured run). GET /version tells whether it scored through the fast path or the pipeline fallback, and why.
"""
from __future__ import annotations
import argparse, json, os, shutil, sys, tempfile, time
from importlib.metadata import version
from pathlib import Path

# bench_serve, this checkout
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
import bench_serve as B  # noqa: E402

TABLES = ("breast-cancer", "wine", "diabetes")
LIBRARIES = {"scikit-learn": "mlops_nb.examples.sklearn_tables:{TABLE}",
             "lightgbm": "mlops_nb.examples.boosters:{TABLE}_LIGHTGBM",
             "xgboost": "mlops_nb.examples.boosters:{TABLE}_XGBOOST"}


def problem_rows(problem)->tuple:
    "(rows to train on, rows to check equality with) of a table problem, whatever library its name carries."
    from mlops_nb.examples.sklearn_tables import table
    df = table(problem.name if problem.name in TABLES else problem.name.rsplit("-", 1)[0])
    return df, df.sample(n=min(B.CHECK_ROWS, len(df)), random_state=3)


def server_env(name:str, home:Path, case)->dict:
    "bench_serve's environment, with this checkout first on the path: the server runs the mlops_nb being measured."
    env = _server_env(name, home, case)
    env["PYTHONPATH"] = str(B.ROOT)
    return env


_server_env = B.server_env
B.server_env, B.problem_rows = server_env, problem_rows
B.BIN = Path(sys.executable).parent  # the interpreter running the benchmark (a worktree has no .venv of its own)


def main(argv=None):
    "Train and serve each problem in turn; print one row of figures per problem."
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tables", default="breast-cancer,diabetes", help="comma-separated tables of: " + ", ".join(TABLES))
    p.add_argument("--quick", action="store_true",
                   help="4 s per scenario after 1 s of warm-up (default: 10 s after 2 s)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON on stdout (the table goes to stderr)")
    a = p.parse_args(argv)
    if not (shutil.which("wrk") or Path("/usr/bin/wrk").exists()):
        raise SystemExit("bench_boosters: wrk is missing (apt-get install -y wrk)")
    work = Path(tempfile.mkdtemp(prefix="mlops_nb_bench_boosters_"))
    (work/"state").mkdir()
    os.environ.update(MLOPS_NB_HOME=str(work/"state"), MLFLOW_DISABLE_TELEMETRY="true")
    cfg = {"servers": ["ours"], "scenarios": B.ALL_SCENARIOS, "duration_s": 4 if a.quick else 10, "warmup_s": 1
           if a.quick else 2,
           "cold_reps": 1, "memory": False}
    load0, rows = os.getloadavg()[0], []
    try:
        for table in a.tables.split(","):
            for lib, ref in LIBRARIES.items():
                name = f"{table}-{lib}"
                B.PROBLEMS[name] = ref.format(TABLE=table.upper().replace("-", "_"))
                t0 = time.perf_counter()
                try: r = B.run_problem(name, work, cfg)
                except Exception as e:
                    rows.append({"problem": name, "error": f"{type(e).__name__}: {e}"})
                    continue
                finally:
                    for srv in list(B.LIVE): B.stop(srv)
                row = B.problem_row(name, r, ["ours"])
                row.update(library=lib, table=table, wall_s=time.perf_counter() - t0)
                rows.append(row)
    finally: shutil.rmtree(work, ignore_errors=True)
    lines = [f"Serving LightGBM / XGBoost beside scikit-learn ({'quick' if a.quick else 'full'}): {os.cpu_count()} "
             f"CPUs, load avg {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end; mlops-nb serve, 1 worker; 1-row "
             f"requests, wrk {cfg['duration_s']} s per scenario; versions: scikit-learn {version('scikit-learn')}, "
             f"lightgbm {version('lightgbm')}, xgboost "
             f"{version('xgboost') if _has('xgboost') else version('xgboost-cpu')}",
             f"{'problem':26}|{'req/s c=32':>11} |{'p50 c=1':>9} |{'p99 c=32':>9} | equal | scoring path"]
    lines.append("-" * len(lines[-1]))
    for row in rows:
        if "error" in row:
            lines.append(f"{row['problem']:26}| FAILED: {row['error']}")
            continue
        f = lambda v, fmt: format(v, fmt) if v is not None else "n/a"
        lines.append(f"{row['problem']:26}|{f(row['ours_rps_c32'], '11.0f')} |"
                     f"{f(row['ours_p50_c1_ms'], '6.2f') + ' ms':>9} |{f(row['ours_p99_c32_ms'], '6.1f') + ' ms':>9} | "
                     f"{'yes' if row['equal'] else 'NO':5} | {row['scoring_path']}"
                     + (f"  (errors: {row['load_errors']} {row['server_errors'] or ''})" if row["load_errors"]
                        or row["server_errors"] else ""))
    text = "\n".join(lines)
    if a.json:
        print(text, file=sys.stderr)
        print(json.dumps(rows, indent=2, default=str))
    else: print(text)


def _has(dist:str)->bool:
    "Whether distribution `dist` is installed."
    try:
        version(dist)
        return True
    except Exception: return False


if __name__ == "__main__": main()
