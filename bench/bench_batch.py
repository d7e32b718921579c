"""Benchmark of batch scoring and Spark drift (issue 11); prints figures, never asserts on them.

Run from the repository root:  .venv/bin/python bench/bench_batch.py [--quick] [--rows 10000000] [--drift-rows 20000000]

Scoring, side by side in one run, on the same generated rows of the example problem (written once, in chunks, to one
Parquet file with row groups of 250 000 rows) and the same model (10 epochs of 25 trees):
  - local engine: `mlops-nb score` (a process per core, each loading the model once), in its own process;
  - Spark engine `local[2]`: `score_batch(engine="spark")` (mapInPandas, columnar fast path);
  - `mlflow.pyfunc.spark_udf` on the same session: the same rows, keys and the model's output written to Parquet;
  - one `predict_proba` call of the pipeline on a 1 M-row pandas frame (the first million rows), in its own process.
Each is timed from start to the last row written (the Spark session's start and a warm-up job that reads the input
once through Arrow and a Python worker, with no model, are reported apart) and its peak resident memory is the peak of
the sum over its process tree (sampled every 0.1 s: the main process, workers, the JVM). The local engine also scores a
fifth of the rows (a file of its own): its peak memory at both sizes shows whether memory grows with the rows.

Drift: `spark_drift_report` on `local[2]` over --drift-rows rows per side x 50 numeric features (10 discrete), generated
by Spark expressions (no files: each pass recomputes them), the current side drifted on some features; time, seconds
per pass of the report, and peak memory of the driver (the Python process and the JVM, which in local mode also runs
the tasks).
"""
from __future__ import annotations
import argparse, json, os, platform, shutil, subprocess, sys, tempfile, threading, time
from pathlib import Path
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
ROOT = Path(__file__).resolve().parents[1]


class PeakRSS:
    "Peak of the summed resident memory of a process and its descendants, sampled in a thread."
    def __init__(self, pid:int|None=None, every:float=0.1):
        import psutil
        self.proc, self.every, self.peak, self.by_name = psutil.Process(pid or os.getpid()), every, 0, {}
        self._stop = threading.Event()
    def sample(self):
        import psutil
        total, names = 0, {}
        try: procs = [self.proc] + self.proc.children(recursive=True)
        except psutil.Error: return
        for p in procs:
            try: r = p.memory_info().rss
            except psutil.Error: continue
            total += r; n = "java" if "java" in (p.name() or "") else "python"
            names[n] = names.get(n, 0) + r
        if total > self.peak: self.peak, self.by_name = total, names
    def _run(self):
        while not self._stop.is_set(): self.sample(); self._stop.wait(self.every)
    def __enter__(self):
        self._t = threading.Thread(target=self._run, daemon=True); self._t.start(); return self
    def __exit__(self, *a):
        self._stop.set(); self._t.join(); self.sample()


def mb(b): return round(b/2**20, 1)


def train_model(d:Path)->Path:
    "The example's model, 10 epochs of 25 trees, saved as a registered version would be (version 1)."
    from mlops_nb.examples.ottawa import PROBLEM, generate_listings
    from mlops_nb.train import build_model, save_model, split_rows, train_epochs
    tr, ev = split_rows(generate_listings(2021, 20_000, seed=0), PROBLEM, seed=0)
    m = build_model(PROBLEM, seed=0); train_epochs(PROBLEM, m, tr, ev, epochs=10)
    save_model(PROBLEM, m, ev, d)
    (d/"mlops_nb_model.json").write_text(json.dumps({"name": "ottawa-housing-classifier", "version": "1"}))
    return d


def write_rows(path:Path, rows:int, chunk:int)->float:
    "Generated rows of 2022 in one Parquet file, written chunk by chunk (timestamps in microseconds: Spark reads them natively)."
    import pyarrow as pa, pyarrow.parquet as pq
    from mlops_nb.examples.ottawa import generate_listings
    t0, w = time.perf_counter(), None
    for i, start in enumerate(range(0, rows, chunk)):
        df = generate_listings(2022, min(chunk, rows - start), seed=100 + i)
        df["listing_id"] = [f"{i:04d}-{j:07d}" for j in range(len(df))]
        t = pa.Table.from_pandas(df, preserve_index=False)
        if w is None: w = pq.ParquetWriter(path, t.schema, coerce_timestamps="us", allow_truncated_timestamps=True)
        w.write_table(t, row_group_size=250_000)
    w.close()
    return time.perf_counter() - t0


def phase_pandas(a):
    "One predict_proba call of the pipeline on the first 1 M rows (a pandas frame)."
    import pyarrow.parquet as pq
    from mlops_nb.serving import load_runtime
    rt = load_runtime(a.model)
    n = min(1_000_000, a.rows)
    df = pq.ParquetFile(a.data).iter_batches(batch_size=n).__next__().to_pandas()[list(rt.schema)]
    with PeakRSS() as m:
        t0 = time.perf_counter(); rt.pipeline.predict_proba(df); secs = time.perf_counter() - t0
    return {"rows": n, "seconds": secs, "peak_rss_mb": mb(m.peak)}


def spark_for_bench():
    "A local[2] session with mlops_nb's settings and 2 GB of driver heap."
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession
    (SparkSession.builder.master("local[2]").appName("bench_batch").config("spark.ui.enabled", "false")
     .config("spark.sql.session.timeZone", "UTC").config("spark.driver.memory", "2g").getOrCreate())
    from mlops_nb.drift_spark import spark_session
    return spark_session()


def phase_spark(a):
    "The Spark engine, then mlflow.pyfunc.spark_udf, on one local[2] session."
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "true"  # MLflow 3 loads skops models only with it (our own model)
    t0 = time.perf_counter(); spark = spark_for_bench(); start = time.perf_counter() - t0
    from mlops_nb.batch import score_batch
    out = {"session_start_s": start}
    t0 = time.perf_counter()  # warm-up, not counted: the JVM's first jobs, the Parquet reader, Arrow, Python workers
    spark.read.parquet(str(a.data)).mapInPandas(lambda it: (b.head(0) for b in it), "listing_id string").count()
    out["warmup_s"] = time.perf_counter() - t0
    with PeakRSS() as m:
        t0 = time.perf_counter()
        res = score_batch(a.model, a.data, Path(a.work)/"spark-out", engine="spark", spark=spark, batch_rows=a.batch_rows)
        out["engine"] = {"rows": res.rows, "seconds": time.perf_counter() - t0, "peak_rss_mb": mb(m.peak), "by_process_mb": {k: mb(v) for k, v in m.by_name.items()}}
    if not a.skip_udf:
        import mlflow.pyfunc
        from pyspark.sql import functions as F
        from mlops_nb.serving import load_runtime
        cols = list(load_runtime(a.model).schema)
        with PeakRSS() as m:
            t0 = time.perf_counter()
            udf = mlflow.pyfunc.spark_udf(spark, model_uri=str(a.model), result_type="array<double>", env_manager="local")
            df = spark.read.parquet(str(a.data)).withColumn("listing_date", F.date_format("listing_date", "yyyy-MM-dd"))
            df.select("listing_id", udf(F.struct(*[F.col(c) for c in cols])).alias("probabilities")).write.parquet(str(Path(a.work)/"udf-out"))
            n = spark.read.parquet(str(Path(a.work)/"udf-out")).count()
            out["spark_udf"] = {"rows": n, "seconds": time.perf_counter() - t0, "peak_rss_mb": mb(m.peak), "by_process_mb": {k: mb(v) for k, v in m.by_name.items()}}
    return out


def phase_drift(a):
    "spark_drift_report over generated rows x 50 numeric features on local[2]."
    t0 = time.perf_counter(); spark = spark_for_bench(); start = time.perf_counter() - t0
    from pyspark.sql import functions as F
    from mlops_nb.drift_spark import spark_drift_report
    def table(rows, drift):
        cols = []
        for i in range(50):
            u = ((F.col("id")*(7919 + 104729*i) + 13*i) % 1_000_003)/1_000_003.0  # cheap, deterministic, uniform in [0, 1)
            shift = 0.02*(i % 6) if drift else 0.0
            x = (u + shift) if i >= 10 else F.floor((u + shift)*7)  # ten discrete features, forty continuous
            cols.append(x.cast("double").alias(f"f{i:02d}"))
        return spark.range(rows).select(*cols)
    feats = [f"f{i:02d}" for i in range(50)]
    import mlops_nb.drift_spark as ds
    parts = {}  # seconds in each of the report's Spark passes (wrapped module functions it calls), for whoever tunes them
    def timed(name, fn):
        def run(*args, **kw):
            t0 = time.perf_counter()
            try: return fn(*args, **kw)
            finally: parts[name] = parts.get(name, 0.0) + time.perf_counter() - t0
        return run
    for name in ("finite_counts", "numeric_edges", "bin_counts", "sample_frame"): setattr(ds, name, timed(name, getattr(ds, name)))
    with PeakRSS() as m:
        t0 = time.perf_counter()
        rep = spark_drift_report(table(a.drift_rows, False), table(a.drift_rows, True), numeric=feats, categorical=[])
        secs = time.perf_counter() - t0
    return {"rows_per_side": a.drift_rows, "features": 50, "seconds": secs, "session_start_s": start, "peak_rss_mb": mb(m.peak),
            "by_process_mb": {k: mb(v) for k, v in m.by_name.items()}, "drifted": len(rep.drifted),
            "exact_edges": sum(rep.exact_edges.values()), "timings": {k: round(v, 1) for k, v in rep.timings.items()},
            "passes_s": {k: round(v, 1) for k, v in parts.items()}}


def run_phase(name:str, a)->dict:
    "Run one phase in a fresh process; return its JSON figures (and its tree's peak RSS as seen from here)."
    cmd = [sys.executable, __file__, "--phase", name, "--model", str(a.model), "--data", str(a.data), "--work", str(a.work),
           "--rows", str(a.rows), "--drift-rows", str(a.drift_rows), "--batch-rows", str(a.batch_rows)] + (["--skip-udf"] if a.skip_udf else [])
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    with PeakRSS(p.pid) as m: out, _ = p.communicate()
    if p.returncode: raise SystemExit(f"phase {name} failed ({p.returncode})")
    return {**json.loads(out.strip().splitlines()[-1]), "tree_peak_rss_mb": mb(m.peak)}


def run_local(a, data=None, out="local-out")->dict:
    "The local engine through the CLI, in its own process tree."
    cmd = [str(Path(sys.executable).parent/"mlops-nb"), "score", "--model", str(a.model), "--input", str(data or a.data),
           "--output", str(Path(a.work)/out), "--batch-rows", str(a.batch_rows), "--overwrite", "--json"]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    with PeakRSS(p.pid) as m: out, _ = p.communicate()
    secs = time.perf_counter() - t0
    if p.returncode: raise SystemExit(f"local engine failed ({p.returncode})")
    res = json.loads(out)
    return {"rows": res["rows"], "seconds": secs, "peak_rss_mb": mb(m.peak), "fast_path": res["fast_path"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="development sizes: 200 000 rows to score, 250 000 drift rows per side")
    ap.add_argument("--rows", type=int, default=10_000_000, help="rows to score (default: 10 000 000)")
    ap.add_argument("--drift-rows", type=int, default=20_000_000, help="drift rows per side (default: 20 000 000)")
    ap.add_argument("--batch-rows", type=int, default=100_000, help="rows per slice / Arrow batch (default: 100 000)")
    ap.add_argument("--skip", action="append", default=[], help="skip a phase: local, spark, pandas, drift (repeatable)")
    ap.add_argument("--skip-udf", action="store_true", help="skip mlflow.pyfunc.spark_udf")
    ap.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one, removed at the end)")
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase:
        print(json.dumps({"pandas": phase_pandas, "spark": phase_spark, "drift": phase_drift}[a.phase](a), default=float)); return
    if a.quick: a.rows, a.drift_rows = min(a.rows, 200_000), min(a.drift_rows, 250_000)
    work = Path(a.keep or tempfile.mkdtemp(prefix="bench_batch-")); work.mkdir(parents=True, exist_ok=True)
    a.work, a.model, a.data = work, work/"model", work/f"rows-{a.rows}.parquet"
    print(f"bench_batch: {platform.node()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; work folder {work}", flush=True)
    try:
        if not (a.model/"MLmodel").exists(): train_model(a.model)
        small = work/f"rows-{a.rows//5}.parquet"
        for path, n in ((a.data, a.rows), (small, a.rows//5)):
            if not path.exists():
                print(f"writing {n:,} generated rows ...", flush=True)
                print(f"  {write_rows(path, n, 1_000_000):.0f} s, {path.stat().st_size/2**20:.0f} MB of Parquet", flush=True)
        res = {}
        for name in ("pandas", "local", "spark", "drift"):
            if name in a.skip: continue
            if name == "drift" and a.drift_rows <= 0: continue
            print(f"running {name} (load average {os.getloadavg()[0]:.1f}) ...", flush=True)
            res[name] = run_local(a) if name == "local" else run_phase(name, a)
            print("  " + json.dumps(res[name], default=float), flush=True)
            if name == "local":
                res["local_small"] = run_local(a, small, "local-out-small")
                print("  a fifth of the rows: " + json.dumps(res["local_small"], default=float), flush=True)
        report(res, a)
    finally:
        if not a.keep: shutil.rmtree(work, ignore_errors=True)


def report(res:dict, a):
    "The figures against the issue's targets."
    rate = lambda d: d["rows"]/d["seconds"]
    print(f"\nscoring {a.rows:,} rows, --batch-rows {a.batch_rows:,} (load average now {os.getloadavg()[0]:.1f}; {os.cpu_count()} cores)")
    print(f"{'':40} {'rows/s':>10} {'seconds':>8} {'peak RSS MB':>12}")
    rows = [(f"one predict_proba call, {res['pandas']['rows']:,} rows" if res.get("pandas") else "", res.get("pandas")), ("local engine (mlops-nb score)", res.get("local")),
            ("Spark engine local[2]", (res.get("spark") or {}).get("engine")), ("mlflow spark_udf, same session", (res.get("spark") or {}).get("spark_udf"))]
    for name, d in rows:
        if d: print(f"{name:40} {rate(d):>10,.0f} {d['seconds']:>8.1f} {d['peak_rss_mb']:>12,.0f}")
    if res.get("spark"): print(f"(Spark session start {res['spark']['session_start_s']:.1f} s and warm-up {res['spark']['warmup_s']:.1f} s, not counted)")
    if res.get("local") and res.get("pandas"):
        r = rate(res["local"])/rate(res["pandas"])
        print(f"local engine / one pandas call, per row: {r:.2f}x (target >= 1.5x: {'met' if r >= 1.5 else 'missed'}); "
              f"peak RSS {res['local']['peak_rss_mb']:,.0f} MB at {res['local']['rows']:,} rows (target <= 1024 MB: "
              f"{'met' if res['local']['peak_rss_mb'] <= 1024 else 'missed'})")
    if res.get("local") and res.get("local_small"):
        s, l = res["local_small"], res["local"]
        print(f"local engine peak RSS: {s['peak_rss_mb']:,.0f} MB at {s['rows']:,} rows, {l['peak_rss_mb']:,.0f} MB at {l['rows']:,} rows "
              f"({l['peak_rss_mb']/s['peak_rss_mb']:.2f}x for {l['rows']/s['rows']:.0f}x the rows)")
    s = res.get("spark") or {}
    if s.get("engine") and s.get("spark_udf"):
        r = rate(s["engine"])/rate(s["spark_udf"])
        print(f"Spark engine / spark_udf: {r:.2f}x (target >= 2x: {'met' if r >= 2 else 'missed'})")
    if res.get("drift"):
        d = res["drift"]
        print(f"\ndrift on Spark local[2]: {d['rows_per_side']:,} rows per side x {d['features']} features in {d['seconds']:.0f} s "
              f"(session start {d['session_start_s']:.0f} s apart); peak driver memory {d['peak_rss_mb']:,.0f} MB "
              f"({', '.join(f'{k} {v:,.0f} MB' for k, v in d['by_process_mb'].items())}); {d['drifted']} features drifted; "
              f"exact edges for {d['exact_edges']} of 50\n  seconds per pass: {', '.join(f'{k} {v:.0f}' for k, v in d['passes_s'].items())}")


if __name__ == "__main__": main()
