"""In-process costs of two request paths; prints figures, never asserts on them.

Run from the repository root:  .venv/bin/python bench/bench_request_paths.py [--quick]
(about 1 minute, --quick about 20 s; one process, no server, nothing written outside a temporary folder)

1. Parsing MLflow's JSON (`serving.mlflow_records`, what /invocations runs before validation): a `dataframe_split`
   body of 1 and of 100 Ottawa listings, strict JSON (orjson alone), the same with one `null` (orjson, then the walk
   that resolves missing values), and with one `NaN` (orjson fails, Python's json parses, the surrogate check, the
   walk): what a body written by MLflow's ScoringServerClient with a gap costs over one without.
2. Features, the three scoring paths of one model (`serving.Runtime.predict`): the Ottawa example's pipeline (3000
   listings, 2 epochs, as tests/conftest.py's `save_model`) scored through the fast path with `derive_record` (one
   dict per record), through the fast path with `derive` alone (one DataFrame per batch: `Features.frame`), and
   through the pipeline (DataFrame, ColumnTransformer, estimator). The two fast paths are FastModels of the same
   fitted pipeline, the second with its `Features.derive_record` removed, so only the features differ. Per request
   of 1 and of 100 records: the whole predict, and the feature matrix alone (`FastModel.matrix`).
Figures: median over repeats of the mean CPU time (this process's, `time.process_time`) of a loop, in microseconds
per call, OpenMP limited to one thread as in the server's model thread: CPU time moves less than wall time with what
else runs on a shared machine. Compare figures of one run only.
"""
from __future__ import annotations
import argparse, copy, json, os, statistics, sys, tempfile, time
from pathlib import Path
os.environ["OMP_NUM_THREADS"] = "1"  # before scikit-learn loads OpenMP: one thread, as the server's model thread
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def per_call(f, repeat:int, number:int)->float:
    "Median over `repeat` runs of the mean CPU microseconds of `number` calls of `f`."
    runs = []
    for _ in range(repeat):
        t0 = time.process_time()
        for _ in range(number): f()
        runs.append((time.process_time() - t0) / number * 1e6)
    return statistics.median(runs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    repeat, number = (3, 50) if a.quick else (7, 200)
    tmp = tempfile.TemporaryDirectory()
    os.environ["MLOPS_NB_HOME"] = tmp.name
    from mlops_nb.examples.ottawa import PROBLEM, generate_listings
    from mlops_nb.serving import FastModel, mlflow_records, load_runtime
    from mlops_nb.train import build_model, save_model, split_rows, train_epochs
    df = generate_listings(2022, 100, seed=3)[list(PROBLEM.inputs)]
    records = df.assign(listing_date=df.listing_date.dt.strftime("%Y-%m-%d")).to_dict("records")

    print("1. MLflow's JSON on /invocations: mlflow_records, microseconds per body")
    print(f"{'rows':>5} {'strict':>9} {'null':>9} {'NaN':>9} {'NaN/strict':>11}")
    for n in (1, 100):
        rows = records[:n]
        split = {"columns": list(rows[0]), "data": [list(r.values()) for r in rows]}
        strict = json.dumps({"dataframe_split": split}).encode()
        gap = {**split,
               "data": [[None if j == 6 and i == 0 else v for j, v in enumerate(r)] for i,
                        r in enumerate(split["data"])]}
        null = json.dumps({"dataframe_split": gap}).encode()
        nan = null.replace(b"null", b"NaN")
        t = [per_call(lambda b=b: mlflow_records(b, "application/json", PROBLEM.inputs), repeat, number * 5)
             for b in (strict, null, nan)]
        print(f"{n:>5} {t[0]:>9.1f} {t[1]:>9.1f} {t[2]:>9.1f} {t[2] / t[0]:>10.1f}x")

    print("\n2. Features: Runtime.predict per request, microseconds (matrix = FastModel.matrix alone)")
    full = generate_listings(2021, 3000, seed=0)
    tr, ev = split_rows(full, PROBLEM, seed=0)
    m = build_model(PROBLEM, seed=0)
    train_epochs(PROBLEM, m, tr, ev, epochs=2)
    rt = load_runtime(save_model(PROBLEM, m, ev, Path(tmp.name)/"model"))
    once_pipe = copy.deepcopy(rt.pipeline)
    once_pipe.steps[0][1].derive_record = None
    per_record, once = rt.fast, FastModel(once_pipe, rt.kind)
    assert per_record.per_record and not once.per_record
    print(f"{'rows':>5} {'derive_record':>14} {'derive (frame)':>15} {'pipeline':>9}   "
          f"{'matrix: record':>15} {'matrix: frame':>14}")
    for n in (1, 100):
        rows = records[:n]
        diff = abs(once.predict(rows) - rt.pipeline_predict(rows)).max()
        assert diff <= 1e-9, diff  # the same numbers, or the figures mean nothing
        k = number if n == 1 else max(number // 10, 10)
        t = [per_call(lambda f=f: f(rows), repeat, k) for f in (per_record.predict, once.predict, rt.pipeline_predict,
                                                                 per_record.matrix, once.matrix)]
        print(f"{n:>5} {t[0]:>14.0f} {t[1]:>15.0f} {t[2]:>9.0f}   {t[3]:>15.0f} {t[4]:>14.0f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
