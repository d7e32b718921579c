"""Local deploy test: serve a model with `mlops-nb serve` on a free loopback port, score one listing, stop the server."""
import argparse, json, os, signal, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

LISTING = {"list_price": 650000, "bedrooms": 3, "bathrooms": 2.0, "sqft": 1800, "lot_size": 3000, "year_built": 1995,
           "days_on_market": 12, "neighbourhood": "Glebe", "property_type": "detached", "listing_date": "2024-05-01"}

def _free_port()->int:
    "A free TCP port on loopback."
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def _get(url:str, data:bytes|None=None, timeout:float=5):
    "Status and body of a GET (or a JSON POST with `data`), or (None, error) when nothing answers."
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r: return r.status, r.read()
    except urllib.error.HTTPError as e: return e.code, e.read()
    except OSError as e: return None, str(e).encode()

def main(argv=None)->int:
    "Serve `--model` (default: the champion), wait for /ready, score one listing, check the answer, stop the server."
    p = argparse.ArgumentParser(prog="python pipelines/smoke.py", description=main.__doc__)
    p.add_argument("--model", default="champion", help="model reference or folder (default: champion)")
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait for /ready (default: 120)")
    a = p.parse_args(argv)
    port, exe = _free_port(), Path(sys.executable).parent/"mlops-nb"
    url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile("w+", prefix="smoke-", suffix=".log", delete=False)
    srv = subprocess.Popen([str(exe) if exe.exists() else "mlops-nb", "serve", "--model", a.model, "--port", str(port)],
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + a.timeout
        while time.time() < deadline and srv.poll() is None and _get(url + "/ready")[0] != 200: time.sleep(0.2)
        if _get(url + "/ready")[0] != 200:
            print(f"error: the server for {a.model} did not become ready at {url} within {a.timeout:g} s; "
                  f"its log: {log.name}", file=sys.stderr); return 1
        status, body = _get(url + "/score", json.dumps(LISTING).encode(), timeout=30)
        preds = json.loads(body).get("predictions") if status == 200 else None
        if not preds or not 0 <= preds[0].get("probability", -1) <= 1:
            print(f"error: POST /score answered {status}: {body[:300]!r}", file=sys.stderr); return 1
        print(json.dumps({"url": url, "model": a.model, "prediction": preds[0]}))
        return 0
    finally:
        try: os.killpg(srv.pid, signal.SIGTERM); srv.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired): os.killpg(srv.pid, signal.SIGKILL)

if __name__ == "__main__": sys.exit(main())
