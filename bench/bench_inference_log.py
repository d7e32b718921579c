"""The inference log's cost: p99 latency at concurrency 32 with every request logged (and with a shadow model too)
against the same server without the log, measured in the same run; prints figures, never asserts on them.

Run from the repository root:  .venv/bin/python bench/bench_inference_log.py [--quick]
(needs .venv and wrk from Debian; about 2 minutes, --quick about 1)

Target (the live-traffic issue): p99 at c=32 with 100% sampling <= 1.2x without. Each configuration runs alone, with
one worker, alternating with the baseline (off, on, off, on, ...) so a slow minute of this shared machine hits both;
the ratio of medians is printed. The model is the Ottawa example's (10 epochs x 25 rounds, as a full run)."""
from __future__ import annotations
import argparse, json, os, signal, statistics, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import wrk, say, free_port  # the serving benchmark's wrk runner (bench/wrk_post.lua) and helpers

BIN = Path(sys.executable).parent


class Server:
    "`mlops-nb serve` in its own process group, ready when /ready answers; `stop()` always kills the group."
    def __init__(self, args:list, cwd:Path):
        self.port = free_port()
        self.proc = subprocess.Popen([str(BIN/"mlops-nb"), "serve", "--port", str(self.port), *args], cwd=cwd,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ready", timeout=2).status == 200: return
            except Exception: time.sleep(0.2)
        self.stop()
        raise RuntimeError("the server did not become ready")

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try: self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def model(tmp:Path)->Path:
    "The Ottawa example's model as a folder."
    from mlops_nb.examples.ottawa import PROBLEM, generate_listings
    from mlops_nb.train import build_model, split_rows, train_epochs, save_model
    tr, ev = split_rows(generate_listings(2021, 20_000, seed=0), PROBLEM, seed=0)
    m = build_model(PROBLEM, seed=0)
    train_epochs(PROBLEM, m, tr, ev, epochs=10)
    return save_model(PROBLEM, m, ev, tmp/"model")


def main(argv=None)->int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 rounds of 4 s instead of 3 of 10 s")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    a = p.parse_args(argv)
    rounds, secs = (2, 4) if a.quick else (3, 10)
    from mlops_nb.examples.ottawa import EXAMPLE
    with tempfile.TemporaryDirectory() as t:
        t = Path(t)
        os.environ["MLOPS_NB_HOME"] = str(t/"state")
        os.environ["MLOPS_NB_PROBLEM"] = "mlops_nb.examples.ottawa:PROBLEM"
        say("training the example's model (20 000 rows, 10 epochs)")
        m = model(t)
        body = t/"one.json"
        body.write_text(json.dumps(EXAMPLE))
        configs = {"no log": [], "log 100%": ["--log-dir", str(t/"log")],
                   "log 100% + shadow": ["--log-dir", str(t/"log2"), "--shadow", str(m)]}
        res = {k: [] for k in configs}
        try:
            for r in range(rounds):
                for name, extra in configs.items():
                    srv = Server(["--model", str(m), *extra], cwd=t)
                    try:
                        wrk(srv.port, "/score", body, 32, 2, 2)  # warm-up, discarded
                        w = wrk(srv.port, "/score", body, 32, 2, secs)
                        res[name].append(w)
                        say(f"round {r + 1} {name:18} {w['rps']:7.0f} req/s  p50 {w['p50_ms']:6.2f} ms  p99 "
                            f"{w['p99_ms']:6.2f} ms  errors {w['non2xx'] + w['socket_errors']}")
                    finally: srv.stop()
        finally: pass
        rows = list(Path(t/"log").glob("*.parquet"))
        logged = sum(__import__("pyarrow.parquet", fromlist=["x"]).read_metadata(f).num_rows for f in rows)
    med = {k: {m_: statistics.median(w[m_] for w in v) for m_ in ("rps", "p50_ms", "p99_ms")} for k, v in res.items()}
    base = med["no log"]
    out = {k: {**v, "p99_ratio": v["p99_ms"] / base["p99_ms"], "rps_ratio": v["rps"] / base["rps"]} for k,
           v in med.items()}
    out["rows_logged_by_the_last_log_run"] = logged
    if a.json:
        print(json.dumps(out, indent=2))
        return 0
    print("\n| configuration | req/s at c=32 | p50 ms | p99 ms | p99 / no log (target <= 1.2) |")
    print("|---|---|---|---|---|")
    for k, v in out.items():
        if isinstance(v, dict):
            print(f"| {k} | {v['rps']:.0f} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v['p99_ratio']:.2f}x |")
    print(f"\n(medians of {rounds} runs of {secs} s each; the last 100% log run wrote {logged} rows)")
    return 0


if __name__ == "__main__": sys.exit(main())
