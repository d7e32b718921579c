"""Drift from a reference profile against its peers, in one run (issue 17); prints figures, never asserts on them.

Run from the repository root:  .venv/bin/python bench/bench_drift_peers.py [--sizes 1000000x50,100000x1000]
[--skip-evidently]

Per size (rows per side x features, four fifths numeric and one fifth categorical, generated as bench_drift.py does, the
current side drifted on most features), side by side on the same frames:
  - the local engine from a profile: `profile_of(reference)` once (what a training run logs), then
    `profile_drift(profile, current)`: wall and CPU seconds, and rows x features per CPU second (the target: at least
    1 M rows x 50 features a second per core);
  - the local engine from rows: `drift.drift_report(reference, current)`;
  - Evidently's `DataDriftPreset` (0.7, in its own venv made by bench/evidently-venv, never a dependency of mlops_nb) on
    the same two frames, read from Parquet in its own process: seconds of `Report.run` (reading excluded) and the peak
    resident memory of that process.
The load average is printed before each step: on a shared machine, read the ratios, not the seconds.
"""
from __future__ import annotations
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
ROOT = Path(__file__).resolve().parents[1]
EVIDENTLY = """
import json, sys, time
import pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset
ref, cur = pd.read_parquet(sys.argv[1]), pd.read_parquet(sys.argv[2])
t0 = time.perf_counter()
snap = Report([DataDriftPreset()]).run(cur, ref)
secs = time.perf_counter() - t0
try: drifted = snap.dict()["metrics"][0]["value"]["count"]
except Exception: drifted = None
print(json.dumps({"seconds": secs, "drifted": drifted}))
"""


def timed(fn):
    "(result, wall seconds, CPU seconds of this process)."
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def load()->str: return f"load {os.getloadavg()[0]:.1f}"


def run_size(rows:int, feats:int, work:Path, evidently:bool, timeout:float)->dict:
    from bench_batch import PeakRSS, mb
    from bench_drift import make_frame
    from mlops_nb.drift import drift_report
    from mlops_nb.reference import profile_drift, profile_of
    n_cat = feats // 5
    df = make_frame(2 * rows, feats - n_cat, n_cat)
    ref, cur = df.iloc[:rows].reset_index(drop=True), df.iloc[rows:].reset_index(drop=True)
    num, cat = [c for c in df if c.startswith("num_")], [c for c in df if c.startswith("cat_")]
    del df
    out = {"rows": rows, "features": feats}
    print(f"{rows:,} rows per side x {feats} features ({len(num)} numeric, {len(cat)} categorical); {load()}",
          flush=True)
    prof, w, c = timed(lambda: profile_of(ref, numeric=num, categorical=cat))
    out["profile"] = {"seconds": w, "cpu_s": c, "kib": len(json.dumps(prof.as_json())) / 1024}
    rep, w, c = timed(lambda: profile_drift(prof, cur))
    out["from_profile"] = {"seconds": w, "cpu_s": c, "drifted": len(rep.drifted)}
    print(f"  from a profile: {w:.1f} s ({c:.1f} CPU s); {load()}", flush=True)
    rep, w, c = timed(lambda: drift_report(ref, cur, numeric=num, categorical=cat))
    out["from_rows"] = {"seconds": w, "cpu_s": c, "drifted": len(rep.drifted)}
    print(f"  from rows: {w:.1f} s ({c:.1f} CPU s); {load()}", flush=True)
    if evidently:
        ref.to_parquet(work/"ref.parquet")
        cur.to_parquet(work/"cur.parquet")
        del ref, cur
        p = subprocess.Popen([str(ROOT/".venv-evidently/bin/python"), "-c", EVIDENTLY, str(work/"ref.parquet"),
                              str(work/"cur.parquet")],
                             stdout=subprocess.PIPE, text=True)
        with PeakRSS(p.pid) as m:
            try: got, _ = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                got, _ = p.communicate()
        if p.returncode == 0: out["evidently"] = {**json.loads(got.strip().splitlines()[-1]), "peak_rss_mb": mb(m.peak)}
        else: out["evidently"] = {"unfinished_after_s": timeout, "peak_rss_mb": mb(m.peak)}
        print(f"  evidently: {json.dumps(out['evidently'])}; {load()}", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000x50,100000x1000", help="rows per side x features, comma-separated")
    ap.add_argument("--skip-evidently", action="store_true")
    ap.add_argument("--evidently-timeout", type=float, default=1800,
                    help="seconds Evidently may take per size (then stopped)")
    a = ap.parse_args()
    ev = not a.skip_evidently
    if ev: subprocess.run(["bash", str(ROOT/"bench/evidently-venv")], check=True)
    print(f"bench_drift_peers: {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}", flush=True)
    res = []
    with tempfile.TemporaryDirectory(prefix="bench_drift_peers-") as d:
        for s in a.sizes.split(","):
            rows, feats = map(int, s.lower().split("x"))
            res.append(run_size(rows, feats, Path(d), ev, a.evidently_timeout))
    print(f"\n{'rows x features':<20} {'profile_of':>10} {'from profile':>13} {'CPU s':>6} {'cells/CPU s':>12} "
          f"{'from rows':>10} {'Evidently':>10} {'Ev. MB':>7}")
    for r in res:
        fp, ev_ = r["from_profile"], r.get("evidently", {})
        cells = r["rows"] * r["features"] / max(fp["cpu_s"], 1e-9)
        evs = (
            f"{ev_['seconds']:>8.1f} s"
            if "seconds" in ev_
            else f"{'>' + str(int(ev_['unfinished_after_s'])) + ' s' if ev_ else '-':>10}"
        )
        print(f"{r['rows']:,} x {r['features']:<8} {r['profile']['seconds']:>8.1f} s {fp['seconds']:>11.1f} s "
              f"{fp['cpu_s']:>6.1f} {cells/1e6:>10.0f} M {r['from_rows']['seconds']:>8.1f} s {evs} "
              f"{ev_.get('peak_rss_mb', 0):>7,.0f}")
        if "seconds" in ev_:
            print(f"  Evidently / from a profile: {ev_['seconds'] / fp['seconds']:.0f}x the time; from rows / from a "
                  f"profile: {r['from_rows']['seconds'] / fp['seconds']:.1f}x; drifted: profile {fp['drifted']}, rows "
                  f"{r['from_rows']['drifted']}, Evidently {ev_.get('drifted')}")
    print("(target: from a profile, >= 50 M rows x features per CPU second, "
          "i.e. 1 M rows x 50 features a second per core)")


if __name__ == "__main__": main()
