"""Local deploy test: serve a model with `mlops-nb serve` on a free loopback port, score the example its API declares,
stop the server."""
import argparse, json, os, signal, subprocess, sys, tempfile, urllib.request
from mlops_nb.core import MlopsNbError
from mlops_nb.server import free_port, start_server

def _post(url:str, data:bytes, timeout:float=30):
    "Status and body of a JSON POST."
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r: return r.status, r.read()
    except urllib.error.HTTPError as e: return e.code, e.read()

def main(argv=None)->int:
    ("Serve `--model` (default: the champion), wait for /ready, score the example "
     "of its OpenAPI document, check the answer, stop the server.")
    p = argparse.ArgumentParser(prog="python pipelines/smoke.py", description=main.__doc__)
    p.add_argument("--model", default="champion", help="model reference or folder (default: champion)")
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait for /ready (default: 120)")
    a = p.parse_args(argv)
    log = tempfile.NamedTemporaryFile("w+", prefix="smoke-", suffix=".log", delete=False).name
    try: srv, url = start_server(a.model, free_port(), log=log, timeout=a.timeout)
    except MlopsNbError as e:
        print(f"error: {a.model}: {e}", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url + "/openapi.json", timeout=30) as r: api = json.loads(r.read())
        record = api["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"][0].get(
            "example"
        )
        if record is None:
            print("error: the served model declares no example record to score", file=sys.stderr)
            return 1
        status, body = _post(url + "/score", json.dumps(record).encode())
        preds = json.loads(body).get("predictions") if status == 200 else None
        if not preds or not ("value" in preds[0]
                             or 0 <= preds[0].get("probabilities", {}).get(preds[0].get("label"), -1) <= 1):
            print(f"error: POST /score answered {status}: {body[:300]!r}", file=sys.stderr)
            return 1
        print(json.dumps({"url": url, "model": a.model, "prediction": preds[0]}))
        return 0
    finally:
        try:
            os.killpg(srv.pid, signal.SIGTERM)
            srv.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired): os.killpg(srv.pid, signal.SIGKILL)

if __name__ == "__main__": sys.exit(main())
