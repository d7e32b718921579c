"""mlops_nb.databricks against a fake Databricks workspace, driven by the real databricks-sdk client.

`FakeDatabricks` is an `http.server` on 127.0.0.1 answering what the SDK calls: the host metadata
(/.well-known/databricks-config, naming the OIDC endpoint), OIDC discovery
(/oidc/.well-known/oauth-authorization-server)
and the OAuth M2M token endpoint (client credentials, HTTP Basic), an Entra ID token endpoint for Azure service
principals (under /aad/, reached through the SDK's own `databricks_environment` setting), workspace
mkdirs/import/get-status (notebooks decoded per path, RAW files kept as bytes), the Files API for volumes (HEAD
metadata, PUT directories and files), jobs list, runs/submit and run-now, runs/get (PENDING -> RUNNING -> TERMINATED
with
the scenario's result state), runs/get-output (the notebook's exit value, or error and trace) and runs/cancel, and the
Unity Catalog model registry as MLflow's `databricks-uc` store calls it (registered models, versions created, uploaded
through the Files API under /Models/ and finalized, tags, aliases, search; see `FakeDatabricks.uc`). API calls
need `Bearer TOKEN` or a token the OAuth endpoints issued. `fake.scenario` picks the outcome; `fake.busy` queues
429/503 (or any status) answers for a path. Every request is recorded.
"""
import base64, io, json, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qs

import nbformat, pytest

pytest.importorskip("databricks.sdk")
from databricks.sdk import WorkspaceClient
from databricks.sdk.config import Config
from mlops_nb.core import MlopsNbError, RunFailed
from mlops_nb.params import make_params
from mlops_nb.runner import RunResult
from mlops_nb.databricks import DatabricksRunner, DatabricksError

TOKEN = "dapi-SECRET-token-0123456789"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ME = "jane.doe@example.com"  # the identity the stand-in's tokens belong to
CLIENT_ID, CLIENT_SECRET, TENANT = "sp-0b7c", "dose-SECRET-oauth-9876543210", "tenant-1"
# what GitHub gives a job with `id-token: write` to ask for ID tokens
GH_REQUEST_TOKEN = "ghs-SECRET-actions-request-token"
RESULT = {"run_id": "mlflow-run-1", "mode": "test", "metrics": {"accuracy": 0.81}, "registered_version": None,
          "data_fingerprint": "abc", "train_rows": 100}
TRACE = "Traceback (most recent call last):\n  File \"<cell>\", line 3\n" + "    noise\n" * 50 + ("ValueError: labels "
                                                                                                  "missing")


class FakeDatabricks:
    "An in-process stand-in for a Databricks workspace's REST API and its OAuth endpoints."
    def __init__(self):
        self.requests, self.notebooks, self.files, self.runs, self.busy = [], {}, {}, {}, {}
        self.jobs = {}  # job_id -> name, for jobs/list (a deployed bundle's jobs)
        self.job_creators = {}  # job_id -> the user who deployed it (default: ME, the caller)
        # Unity Catalog models: full name -> {"aliases": {alias: version}, "versions": {version: dict}, ...}
        self.uc = {}
        # catalogs that exist; the most versions a search page holds
        self.catalogs, self.uc_page = {"dev", "staging", "prod"}, 1000
        self.issued = []  # access tokens the OAuth endpoints handed out
        self.id_tokens = {}  # GitHub Actions ID tokens the stand-in's /_github/ endpoint issued -> their audience
        self.scenario, self.next_id, self.lock = "SUCCESS", 100, threading.Lock()
        fake = self
        class H(BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def do_GET(self): fake.handle(self, "GET")
            def do_POST(self): fake.handle(self, "POST")
            def do_PUT(self): fake.handle(self, "PUT")
            def do_HEAD(self): fake.handle(self, "HEAD")
            def do_PATCH(self): fake.handle(self, "PATCH")
            def do_DELETE(self): fake.handle(self, "DELETE")
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def client(self, retry=15):
        return WorkspaceClient(config=Config(host=self.url, token=TOKEN, retry_timeout_seconds=retry))

    def paths(self, method=None):
        return [(m, p) for m, p, *_ in self.requests if method in (None, m)]

    def handle(self, h, method):
        u = urlsplit(h.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        n = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(n) if n else b""
        ctype = h.headers.get("Content-Type") or ""
        files = u.path.startswith("/api/2.0/fs/files/")  # file contents are kept as sent, even when they look like JSON
        body = json.loads(raw or b"{}") if not files and ("json" in ctype or raw[:1] == b"{") else raw
        if "form-urlencoded" in ctype: body = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        with self.lock: self.requests.append((method, u.path, q, body, h.headers.get("Authorization")))
        queue = self.busy.get(f"{method} {u.path}") or self.busy.get(u.path)  # "PUT /path" or any method
        if queue:
            code = queue.pop(0)
            err = {"error_code": "REQUEST_LIMIT_EXCEEDED" if code == 429 else "TEMPORARILY_UNAVAILABLE",
                   "message": "slow down"}
            return self.send(h, code, err, {"Retry-After": "1"} if code == 429 else {})
        # discovery and token endpoints: no bearer token
        if u.path.startswith(("/.well-known/", "/oidc/", "/aad/", "/_github/")):
            return self.send(h, *self.oauth(h, method, u.path, body, q))
        if h.headers.get("Authorization") not in {f"Bearer {TOKEN}", *(f"Bearer {t}" for t in self.issued)}:
            return self.send(h, 401, {"error_code": "UNAUTHENTICATED", "message": "bad token"})
        if u.path.startswith("/api/2.0/fs/"):
            return self.send(h, *self.fs(method, u.path, q, body), head=method == "HEAD")
        route = getattr(self, (method + u.path).replace("/", "_").replace(".", "_").replace("-", "_").replace(":", "_"),
                        None)
        if route is None: return self.send(h, 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"no {u.path}"})
        code, out = route(q, body)
        self.send(h, code, out)

    def send(self, h, code, obj, headers={}, head=False):
        raw = isinstance(obj, bytes)  # a file's contents, as stored
        data = obj if raw else json.dumps(obj).encode() if obj is not None else b""
        h.send_response(code)
        h.send_header("Content-Type", "application/octet-stream" if raw else "application/json")
        h.send_header("Content-Length", str(0 if head else len(data)))
        for k, v in headers.items(): h.send_header(k, v)
        h.end_headers()
        if not head: h.wfile.write(data)

    # OAuth: the workspace's metadata, OIDC discovery, the M2M token endpoint; an Entra ID token endpoint under /aad/
    def oauth(self, h, method, path, body, q):
        if path == "/.well-known/databricks-config":
            return 200, {"oidc_endpoint": f"{self.url}/oidc", "workspace_id": "1234"}
        if path == "/oidc/.well-known/oauth-authorization-server":
            return 200, {"authorization_endpoint": f"{self.url}/oidc/v1/authorize",
                         "token_endpoint": f"{self.url}/oidc/v1/token"}
        if path == "/oidc/v1/token" and method == "POST" and body.get("grant_type") == TOKEN_EXCHANGE:
            # workload identity federation: a GitHub ID token for this endpoint, from the service principal's repository
            aud = self.id_tokens.get(body.get("subject_token"))
            if body.get("subject_token_type") != "urn:ietf:params:oauth:token-type:jwt" or aud != (f"{self.url}"
                                                                                                   "/oidc/v1/token"):
                return 401, {"error": "invalid_grant",
                             "error_description": "subject token rejected by the federation policy"}
            if body.get("client_id") != CLIENT_ID:
                return 401, {"error": "invalid_client", "error_description": "no such service principal"}
            return 200, self.token("oidc")
        if path == "/_github/idtoken" and method == "GET":  # GitHub's ACTIONS_ID_TOKEN_REQUEST_URL, played here too
            if h.headers.get("Authorization") != f"Bearer {GH_REQUEST_TOKEN}":
                return 401, {"message": "Bad credentials"}
            claims = {"iss": "https://token.actions.githubusercontent.com", "aud": q.get("audience"),
                      "sub": "repo:team/churn:environment:ci",
                      "exp": int(time.time()) + 300}
            part = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")
            jwt = f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2ln"
            with self.lock: self.id_tokens[jwt] = q.get("audience")
            return 200, {"count": 1, "value": jwt}
        if path == "/oidc/v1/token" and method == "POST":
            basic = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
            if h.headers.get("Authorization") != basic or body.get("grant_type") != "client_credentials":
                return 401, {"error": "invalid_client", "error_description": "Client authentication failed"}
            return 200, self.token("m2m")
        if path == f"/aad/{TENANT}/oauth2/token" and method == "POST":
            if (body.get("client_id"), body.get("client_secret"),
                body.get("grant_type")) != (CLIENT_ID, CLIENT_SECRET, "client_credentials"):
                return 401, {"error": "invalid_client",
                             "error_description": "AADSTS7000215: Invalid client secret provided"}
            return 200, self.token("aad")
        return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"no {path}"}

    def token(self, kind):
        with self.lock:
            t = f"{kind}-access-{len(self.issued)}"
            self.issued.append(t)
        return {"access_token": t, "token_type": "Bearer", "expires_in": 3600}

    # Files API (Unity Catalog volumes, /Models/ for model versions): metadata (HEAD), directories (PUT, HEAD, GET
    # listing: a directory exists while a file is under it), single-shot uploads (PUT) and downloads (GET)
    def fs(self, method, path, q, body):
        if path.startswith("/api/2.0/fs/directories/") and method == "PUT": return 200, {}
        if path.startswith("/api/2.0/fs/directories/"):
            d = path.removeprefix("/api/2.0/fs/directories").rstrip("/")
            under = {p[len(d) + 1:] for p in self.files if p.startswith(d + "/")}
            if not under:
                return 404, None if method == "HEAD" else {"error_code": "NOT_FOUND", "message": f"no directory {d}"}
            if method == "HEAD": return 200, None
            kids = {r.split("/")[0]: "/" in r for r in under}
            return 200, {"contents": [{"path": f"{d}/{k}", "name": k,
                                       "is_directory": sub} | ({} if sub
                                                               else {"file_size": len(self.files[f"{d}/{k}"])})
                                      for k, sub in sorted(kids.items())]}
        if path.startswith("/api/2.0/fs/files/"):
            p = path.removeprefix("/api/2.0/fs/files")
            if method == "HEAD": return (200 if p in self.files else 404), None
            if method == "GET":
                return (200, self.files[p]) if p in self.files else (404,
                                                                     {"error_code": "NOT_FOUND",
                                                                      "message": f"no file {p}"})
            if method == "PUT":
                if p in self.files and q.get("overwrite") != "true":
                    return 409, {"error_code": "ALREADY_EXISTS", "message": "exists"}
                self.files[p] = body
                return 204, None
        return 404, {"error_code": "NOT_FOUND", "message": path}

    # workspace
    def POST_api_2_0_workspace_mkdirs(self, q, b): return 200, {}
    def POST_api_2_0_workspace_import(self, q, b):
        assert b["overwrite"] is True
        if b["format"] == "RAW": self.files[b["path"]] = base64.b64decode(b["content"])
        else:
            assert b["format"] == "JUPYTER"
            self.notebooks[b["path"]] = nbformat.reads(base64.b64decode(b["content"]).decode(), as_version=4)
        return 200, {}
    def GET_api_2_0_workspace_get_status(self, q, b):
        p = q["path"]
        if p in self.files: return 200, {"path": p, "object_type": "FILE"}
        if p in self.notebooks: return 200, {"path": p, "object_type": "NOTEBOOK"}
        return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Path ({p}) doesn't exist."}

    # jobs
    def GET_api_2_2_jobs_list(self, q, b):
        found = [{"job_id": i, "creator_user_name": self.job_creators.get(i, ME), "settings": {"name": n}}
                 for i, n in self.jobs.items() if n.lower() == q.get("name", n).lower()]
        return 200, {"jobs": found, "has_more": False}
    def GET_api_2_0_preview_scim_v2_Me(self, q, b): return 200, {"id": "7", "userName": ME}
    def _new_run(self, kind, body):
        with self.lock:
            self.next_id += 2
            rid = self.next_id
        self.runs[rid] = {"kind": kind, "body": body, "polls": 0, "scenario": self.scenario, "cancelled": False}
        return 200, {"run_id": rid, "number_in_job": 1}
    def POST_api_2_2_jobs_runs_submit(self, q, b): return self._new_run("submit", b)
    def POST_api_2_2_jobs_run_now(self, q, b):
        if b["job_id"] not in self.jobs:
            return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": f"Job {b['job_id']} does not exist."}
        return self._new_run("run-now", b)
    def POST_api_2_2_jobs_runs_cancel(self, q, b):
        self.runs[int(b["run_id"])]["cancelled"] = True
        return 200, {}

    def _state(self, r):
        if r["cancelled"]:
            return {"life_cycle_state": "TERMINATED", "result_state": "CANCELED", "state_message": "Run cancelled."}
        r["polls"] += 1
        if r["polls"] == 1: return {"life_cycle_state": "PENDING", "state_message": "Waiting for cluster"}
        if r["polls"] == 2 or r["scenario"] == "NEVER": return {"life_cycle_state": "RUNNING", "state_message": ""}
        s = r["scenario"]
        if s == "INTERNAL_ERROR":
            return {"life_cycle_state": "INTERNAL_ERROR", "state_message": "Cluster failed to start: quota exceeded"}
        msg = {"SUCCESS": "", "FAILED": "Workload failed, see run output for details",
               "TIMEDOUT": "Run timed out after 3600 seconds",
               "CANCELED": "Run cancelled by user"}[s]
        return {"life_cycle_state": "TERMINATED", "result_state": s, "state_message": msg}

    def GET_api_2_2_jobs_runs_get(self, q, b):
        rid = int(q["run_id"])
        r = self.runs.get(rid)
        if r is None: return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": f"Run {rid} does not exist."}
        url = f"{self.url}/#job/1/run/{rid}"
        return 200, {"run_id": rid, "run_page_url": url, "state": self._state(r),
                     "tasks": [{"run_id": rid + 1, "task_key": "train", "notebook_task": {"notebook_path": "/x"}}]}

    def GET_api_2_2_jobs_runs_get_output(self, q, b):
        task_rid = int(q["run_id"])
        r = self.runs.get(task_rid - 1)
        if r is None: return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "use the task run id"}
        if r["scenario"] == "SUCCESS":
            return 200, {"notebook_output": {"result": json.dumps(RESULT), "truncated": False}}
        if r["scenario"] == "INTERNAL_ERROR": return 200, {"error": "Cluster failed to start"}
        return 200, {"error": "ValueError: labels missing", "error_trace": TRACE}

    # Unity Catalog model registry (/api/2.0/mlflow/unity-catalog/..., the paths of MLflow's UcModelRegistryService
    # protos). Names must have three levels in a catalog of `self.catalogs`; a version is PENDING_REGISTRATION until
    # finalized, and finalizing needs its files (at least MLmodel) uploaded through the Files API under
    # /Models/CATALOG/SCHEMA/MODEL/VERSION, where MLflow's Databricks-SDK artifact repository puts them once the
    # workspace says it is enabled. Search results carry no tags or aliases (MLflow drops them from UC searches anyway);
    # get and alias calls return them.
    @staticmethod
    def _missing(what): return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"{what} does not exist."}

    def _uc_get(self, name, version=None):
        "(model, version dict or None, error answer or None)."
        m = self.uc.get(name)
        if m is None: return None, None, self._missing(f"Registered model '{name}'")
        if version is None: return m, None, None
        mv = m["versions"].get(str(version))
        return m, mv, None if mv is not None else self._missing(f"Model version {version} of '{name}'")

    def _uc_mv(self, m, mv, full=True):
        out = {k: mv[k]
               for k in ("name", "version", "source", "run_id", "status", "creation_timestamp",
                         "last_updated_timestamp",
                                   "user_id", "run_tracking_server_id") if mv.get(k) is not None}
        if full:
            out["aliases"] = [{"alias": a, "version": v} for a, v in sorted(m["aliases"].items()) if v == mv["version"]]
            out["tags"] = [{"key": k, "value": v} for k, v in mv["tags"].items()]
        return out

    def POST_api_2_0_mlflow_unity_catalog_registered_models_create(self, q, b):
        name = b.get("name", "")
        parts = name.split(".")
        if len(parts) != 3 or not all(parts):
            return 400, {"error_code": "INVALID_PARAMETER_VALUE",
                         "message": f"Model name '{name}' is invalid: specify all three levels (catalog.schema.model)."}
        if parts[0] not in self.catalogs:
            return 404, {"error_code": "CATALOG_DOES_NOT_EXIST", "message": f"Catalog '{parts[0]}' does not exist."}
        with self.lock:
            if name in self.uc:
                return 400, {"error_code": "RESOURCE_ALREADY_EXISTS",
                             "message": f"Registered model '{name}' already exists."}
            now = int(time.time() * 1000)
            self.uc[name] = {"name": name, "creation_timestamp": now, "last_updated_timestamp": now, "aliases": {},
                             "versions": {},
                             "tags": {t["key"]: t["value"] for t in b.get("tags") or []}}
        return 200, {"registered_model": {"name": name, "creation_timestamp": now, "last_updated_timestamp": now}}

    def GET_api_2_0_mlflow_unity_catalog_registered_models_get(self, q, b):
        m, _, err = self._uc_get(q.get("name", ""))
        if err: return err
        return 200, {"registered_model": {"name": m["name"], "creation_timestamp": m["creation_timestamp"],
                                          "last_updated_timestamp": m["last_updated_timestamp"],
                                          "aliases": [{"alias": a, "version": v} for a,
                                                      v in sorted(m["aliases"].items())],
                                          "tags": [{"key": k, "value": v} for k, v in m["tags"].items()]}}

    def GET_api_2_0_mlflow_unity_catalog_registered_models_is_databricks_sdk_models_artifact_repository_enabled(
        self, q, b
    ):
        return 200, {"is_databricks_sdk_models_artifact_repository_enabled": True}

    # MLflow reports a download's lineage
    def POST_api_2_0_mlflow_unity_catalog_model_versions_emit_lineage(self, q, b):
        m, mv, err = self._uc_get(b.get("name", ""), b.get("version"))
        return err or (200, {})

    def POST_api_2_0_mlflow_unity_catalog_model_versions_create(self, q, b):
        m, _, err = self._uc_get(b.get("name", ""))
        if err: return err
        now = int(time.time() * 1000)
        with self.lock:
            v = str(len(m["versions"]) + 1)
            mv = m["versions"][v] = {"name": m["name"], "version": v, "source": b.get("source"),
                                     "run_id": b.get("run_id"),
                                     "status": "PENDING_REGISTRATION", "creation_timestamp": now,
                                     "last_updated_timestamp": now,
                                     "user_id": "stand-in@example.com",
                                     "run_tracking_server_id": b.get("run_tracking_server_id"),
                                     "tags": {t["key"]: t["value"] for t in b.get("tags") or []}}
        return 200, {"model_version": self._uc_mv(m, mv)}

    def uc_files(self, name, version):
        "The files uploaded for a version: path under the version's folder -> bytes."
        base = f"/Models/{name.replace('.', '/')}/{version}/"
        return {p.removeprefix(base): d for p, d in self.files.items() if p.startswith(base)}

    def POST_api_2_0_mlflow_unity_catalog_model_versions_finalize(self, q, b):
        m, mv, err = self._uc_get(b.get("name", ""), b.get("version"))
        if err: return err
        if "MLmodel" not in self.uc_files(m["name"], mv["version"]):
            return 400, {"error_code": "INVALID_STATE",
                         "message": f"Model version {mv['version']} has no MLmodel file uploaded."}
        mv["status"], mv["last_updated_timestamp"] = "READY", int(time.time() * 1000)
        return 200, {"model_version": self._uc_mv(m, mv)}

    def GET_api_2_0_mlflow_unity_catalog_model_versions_get(self, q, b):
        m, mv, err = self._uc_get(q.get("name", ""), q.get("version"))
        return err or (200, {"model_version": self._uc_mv(m, mv)})

    def GET_api_2_0_mlflow_unity_catalog_model_versions_search(self, q, b):
        import re
        f = re.fullmatch(r"\s*name\s*=\s*'([^']*)'\s*", q.get("filter", ""))
        if f is None:
            return 400, {"error_code": "INVALID_PARAMETER_VALUE",
                         "message": f"unsupported filter {q.get('filter')!r}: the stand-in takes name='...'"}
        m = self.uc.get(f.group(1))
        vs = [] if m is None else sorted(m["versions"].values(), key=lambda mv: -int(mv["version"]))
        start, size = int(q.get("page_token") or 0), min(int(q.get("max_results") or 100), self.uc_page)
        out = {"model_versions": [self._uc_mv(m, mv, full=False) for mv in vs[start:start + size]]}
        if start + size < len(vs): out["next_page_token"] = str(start + size)
        return 200, out

    def POST_api_2_0_mlflow_unity_catalog_model_versions_set_tag(self, q, b):
        m, mv, err = self._uc_get(b.get("name", ""), b.get("version"))
        if err: return err
        mv["tags"][b["key"]] = b["value"]
        return 200, {}

    def POST_api_2_0_mlflow_unity_catalog_registered_models_alias(self, q, b):
        m, mv, err = self._uc_get(b.get("name", ""), b.get("version"))
        if err: return err
        m["aliases"][b["alias"]] = mv["version"]
        return 200, {}

    def GET_api_2_0_mlflow_unity_catalog_registered_models_alias(self, q, b):
        m, _, err = self._uc_get(q.get("name", ""))
        if err: return err
        if q.get("alias") not in m["aliases"]: return self._missing(f"Alias '{q.get('alias')}' of '{m['name']}'")
        return 200, {"model_version": self._uc_mv(m, m["versions"][m["aliases"][q["alias"]]])}

    def DELETE_api_2_0_mlflow_unity_catalog_registered_models_alias(self, q, b):
        m, _, err = self._uc_get(b.get("name", ""))
        if err: return err
        m["aliases"].pop(b.get("alias"), None)
        return 200, {}


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch):
    "Each test starts with no Databricks credential or setting from the machine's environment."
    for k in ("DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET",
              "ARM_CLIENT_ID",
              "ARM_CLIENT_SECRET", "ARM_TENANT_ID", "DATABRICKS_CONFIG_PROFILE", "DATABRICKS_AUTH_TYPE",
              "MLOPS_NB_DATABRICKS_FOLDER",
              "MLOPS_NB_DATABRICKS_WHEELS", "MLOPS_NB_REGISTRY_URI", "MLOPS_NB_MODEL_NAME"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", "/nonexistent/databrickscfg")  # no ~/.databrickscfg profile either


@pytest.fixture(scope="module")
def fake():
    f = FakeDatabricks()
    yield f
    f.server.shutdown()


@pytest.fixture
def nb(tmp_path):
    "A small training notebook with a `parameters` cell, like nbs/train.ipynb."
    cells = [nbformat.v4.new_code_cell('mode = "test"\ndata_path = ""\nseed = 42\nrun_id = ""\nresult_path = ""'),
             nbformat.v4.new_code_cell("from mlops_nb.params import read_params\nparams = read_params(globals())")]
    cells[0].metadata["tags"] = ["parameters"]
    p = tmp_path/"train.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells,
                                            metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                     "language": "python"}}), p)
    return p


def runner(fake, nb, **kw):
    kw = {"folder": "/Shared/t",
          "cluster": {"spark_version": "15.4.x-gpu-ml-scala2.12", "node_type_id": "g5.xlarge", "num_workers": 0},
          "poll_s": 0.05, **kw}
    return DatabricksRunner(nb, client=fake.client(), **kw)


def test_success_returns_notebook_result(fake, nb):
    fake.scenario = "SUCCESS"
    h = runner(fake, nb, branch="feature/a").submit(make_params(mode="test", seed=7))
    res = h.wait(30)
    assert isinstance(res, RunResult)
    assert (res.run_id, res.mode, res.metrics, res.registered_version) == ("mlflow-run-1", "test", {"accuracy": 0.81},
                                                                           None)
    assert res.output_notebook.endswith(f"/run/{h.run_id}")
    assert res.extra["data_fingerprint"] == "abc" and res.extra["databricks_run_id"] == h.run_id
    sub = fake.runs[h.run_id]["body"]
    task = sub["tasks"][0]
    assert task["notebook_task"]["notebook_path"] == "/Shared/t/integration/feature-a/train"
    assert (
        task["notebook_task"]["base_parameters"]["seed"] == "7"
        and task["notebook_task"]["base_parameters"]["run_id"] == ""
    )
    assert task["new_cluster"] == {"spark_version": "15.4.x-gpu-ml-scala2.12", "node_type_id": "g5.xlarge",
                                   "num_workers": 0,
                                   # tracked in the workspace's MLflow
                                   "spark_env_vars": {"MLOPS_NB_TRACKING_URI": "databricks"}}
    # the SDK polled through PENDING and RUNNING, and read the task's output (not the job run's)
    assert ("GET", "/api/2.2/jobs/runs/get-output") in fake.paths()
    assert [q["run_id"] for m, p, q, *_ in fake.requests if p.endswith("get-output")][-1] == str(h.run_id + 1)


def test_imported_notebook_has_injected_parameters(fake, nb):
    fake.scenario = "SUCCESS"
    runner(fake, nb, branch="feature/a").submit(make_params(mode="full", seed=3, epochs=2)).wait(30)
    imported = fake.notebooks["/Shared/t/integration/feature-a/train"]
    cell = next(c for c in imported.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert 'mode = "full"' in cell.source and "seed = 3" in cell.source and "epochs = 2" in cell.source
    assert 'run_id = ""' in cell.source and 'result_path = ""' in cell.source
    assert imported.cells.index(cell) == 1  # right after the `parameters` cell
    mk = [b for m, p, q, b, a in fake.requests if p == "/api/2.0/workspace/mkdirs"]
    assert {"path": "/Shared/t/integration/feature-a"} in mk


def test_branches_import_to_different_paths_and_main_to_main(fake, nb):
    fake.scenario = "SUCCESS"
    for b in ("pr/1-x", "pr/2-y", "main", None):
        runner(fake, nb, branch=b).submit(make_params()).wait(30)
    assert {"/Shared/t/integration/pr-1-x/train", "/Shared/t/integration/pr-2-y/train",
            "/Shared/t/main/train"} <= set(fake.notebooks)
    subs = [r["body"]["tasks"][0]["notebook_task"]["notebook_path"] for r in list(fake.runs.values())[-4:]]
    assert subs == ["/Shared/t/integration/pr-1-x/train", "/Shared/t/integration/pr-2-y/train", "/Shared/t/main/train",
                    "/Shared/t/main/train"]


def test_run_now_with_job_id(fake, nb):
    "A deployed job runs as deployed: no notebook import, no upload, the parameters as notebook parameters."
    fake.scenario, fake.jobs[42] = "SUCCESS", "some job"
    n = len(fake.requests)
    h = runner(fake, nb, job=42, cluster=None).submit(make_params(seed=5))
    assert h.wait(30).metrics == {"accuracy": 0.81}
    body = fake.runs[h.run_id]["body"]
    assert fake.runs[h.run_id]["kind"] == "run-now" and body["job_id"] == 42 and body["notebook_params"]["seed"] == "5"
    assert not [p for m, p in fake.paths()[n:] if p.startswith("/api/2.0/workspace") or p.startswith("/api/2.0/fs")]


def test_existing_cluster(fake, nb):
    fake.scenario = "SUCCESS"
    h = runner(fake, nb, cluster=None, existing_cluster_id="0101-abc").submit(make_params())
    h.wait(30)
    task = fake.runs[h.run_id]["body"]["tasks"][0]
    assert task["existing_cluster_id"] == "0101-abc" and "new_cluster" not in task


@pytest.mark.parametrize("state,msg", [("FAILED", "Workload failed"), ("TIMEDOUT", "Run timed out after 3600 seconds"),
                                       ("CANCELED", "Run cancelled by user"),
                                       ("INTERNAL_ERROR", "Cluster failed to start: quota exceeded")])
def test_failure_states_raise_run_failed(fake, nb, state, msg):
    fake.scenario = state
    h = runner(fake, nb).submit(make_params())
    with pytest.raises(RunFailed) as ei:
        h.wait(30)
    m = str(ei.value)
    assert "\n" not in m
    assert f"Databricks run {h.run_id} {state}" in m and msg in m and f"/run/{h.run_id}" in m
    if state != "INTERNAL_ERROR":
        assert "error: ValueError: labels missing" in m and "trace:" in m and "noise | noise | ValueError" in m
        assert len(m) < 1500 and ei.value.error_trace.endswith("ValueError: labels missing")
    assert ei.value.result_state == (None if state == "INTERNAL_ERROR" else state)
    assert TOKEN not in m


def test_timeout_cancels_run(fake, nb):
    fake.scenario = "NEVER"
    h = runner(fake, nb).submit(make_params())
    t = time.monotonic()
    with pytest.raises(RunFailed, match=r"timed out after 0.5 s and was cancelled"):
        h.wait(0.5)
    assert time.monotonic() - t < 5
    cancels = [b for m, p, q, b, a in fake.requests if p == "/api/2.2/jobs/runs/cancel"]
    assert {"run_id": h.run_id} in cancels and fake.runs[h.run_id]["cancelled"]


def test_keyboard_interrupt_cancels_and_reraises(fake, nb):
    fake.scenario = "NEVER"
    h = runner(fake, nb).submit(make_params())
    def stop(s): raise KeyboardInterrupt
    h._sleep = stop
    with pytest.raises(KeyboardInterrupt):
        h.wait(30)
    assert fake.runs[h.run_id]["cancelled"]


def test_survives_429_and_503(fake, nb):
    fake.scenario = "SUCCESS"
    fake.busy["/api/2.2/jobs/runs/submit"] = [429, 503]
    fake.busy["/api/2.2/jobs/runs/get"] = [503, 429]
    n = len(fake.requests)
    res = runner(fake, nb).submit(make_params()).wait(60)
    assert res.run_id == "mlflow-run-1"
    got = [p for m, p, *_ in fake.requests[n:]]
    assert got.count("/api/2.2/jobs/runs/submit") == 3 and got.count("/api/2.2/jobs/runs/get") >= 5
    assert not fake.busy["/api/2.2/jobs/runs/submit"] and not fake.busy["/api/2.2/jobs/runs/get"]


def test_polling_gives_up_when_retry_budget_spent(fake, nb):
    "Beyond the SDK's retry budget the handle backs off a few times, then cancels and names the run page."
    fake.scenario = "SUCCESS"
    r = DatabricksRunner(nb, client=fake.client(retry=1), folder="/Shared/t", existing_cluster_id="c", poll_s=0.01)
    h = r.submit(make_params())
    h.max_poll_errors = 1
    fake.busy["/api/2.2/jobs/runs/get"] = [503] * 50
    with pytest.raises(DatabricksError, match="lost contact with Databricks while following run"):
        h.wait(60)
    fake.busy.pop("/api/2.2/jobs/runs/get")
    assert fake.runs[h.run_id]["cancelled"]


def test_missing_host_is_one_line(monkeypatch, nb):
    monkeypatch.delenv("DATABRICKS_HOST", raising=False)
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    with pytest.raises(DatabricksError) as ei:
        DatabricksRunner(nb, cluster={"num_workers": 0})
    assert str(ei.value).startswith("DATABRICKS_HOST is not set: set it to the workspace URL") and "\n" not in str(
        ei.value
    )
    assert TOKEN not in str(ei.value) and isinstance(ei.value, MlopsNbError)


def test_missing_credentials(monkeypatch, nb):
    "No token, no OAuth pair, no Azure service principal: one line naming all three, before anything is contacted."
    monkeypatch.setenv("DATABRICKS_HOST", "http://127.0.0.1:9")
    with pytest.raises(DatabricksError) as ei:
        DatabricksRunner(nb, cluster={"num_workers": 0})
    m = str(ei.value)
    assert (
        m.startswith("no Databricks credentials: set DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET")
        and "\n" not in m
    )
    assert "DATABRICKS_TOKEN" in m and "ARM_CLIENT_ID, ARM_CLIENT_SECRET and ARM_TENANT_ID" in m


def test_env_host_and_token_used_and_token_never_shown(fake, monkeypatch, nb):
    "Host and token from the environment; a rejected request names the failure, never the token."
    monkeypatch.setenv("DATABRICKS_HOST", f"http://127.0.0.1:{fake.port}")
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    fake.scenario = "FAILED"
    r = DatabricksRunner(nb, folder="/Shared/t", existing_cluster_id="c", poll_s=0.05, retry_timeout_s=15)
    assert TOKEN not in repr(r)
    with pytest.raises(RunFailed) as ei: r.submit(make_params()).wait(30)
    assert TOKEN not in str(ei.value)
    assert fake.requests[-1][4] == f"Bearer {TOKEN}"
    bad = DatabricksRunner(nb, folder="/Shared/t", existing_cluster_id="c", token="wrong-" + TOKEN, retry_timeout_s=15)
    with pytest.raises(DatabricksError) as ei: bad.submit(make_params())
    m = str(ei.value)
    assert m.startswith("Databricks mkdirs failed (UNAUTHENTICATED): bad token") and "\n" not in m
    assert TOKEN not in m and "wrong-" not in m


def test_default_folder_from_env(fake, monkeypatch, nb):
    monkeypatch.setenv("MLOPS_NB_DATABRICKS_FOLDER", "/Users/me@x.com/mlops")
    r = DatabricksRunner(nb, client=fake.client(), branch="pr/9", existing_cluster_id="c")
    assert r.notebook_path == "/Users/me@x.com/mlops/integration/pr-9/train"
    monkeypatch.delenv("MLOPS_NB_DATABRICKS_FOLDER")
    assert DatabricksRunner(nb, client=fake.client(),
                            existing_cluster_id="c").notebook_path == "/Shared/mlops_nb/main/train"


def test_missing_notebook(fake, tmp_path):
    r = DatabricksRunner(tmp_path/"nope.ipynb", client=fake.client(), existing_cluster_id="c")
    with pytest.raises(DatabricksError, match="training notebook not found at .*: pass --notebook PATH"):
        r.submit(make_params())


def test_cli_train_runner_databricks(fake, state, checkout_wheel):
    ("`mlops-nb train --runner databricks --wheel` as a real process against the "
     "fake workspace: PR folder, its own wheel, cluster env, result.")
    import os
    from conftest import ROOT, run_cli
    env = {**os.environ, "DATABRICKS_HOST": f"http://127.0.0.1:{fake.port}", "DATABRICKS_TOKEN": TOKEN}
    args = ["train", "--mode", "test", "--runner", "databricks", "--branch", "feature/new-model", "--poll-s", "0.05",
            "--cluster",
            json.dumps({"spark_version": "15.4.x-cpu-ml-scala2.12", "node_type_id": "Standard_DS3_v2",
                        "num_workers": 1})]
    fake.scenario = "SUCCESS"
    p = run_cli(*args, "--wheel", "--json", env=env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert (
        out["run_id"] == RESULT["run_id"]
        and out["metrics"] == RESULT["metrics"]
        and out["output_notebook"].startswith("http://127.0.0.1")
    )
    assert "/Shared/mlops_nb/integration/feature-new-model/train" in fake.notebooks
    submit = [body for method, path, q, body, auth in fake.requests if path.endswith("/jobs/runs/submit")][-1]
    assert submit["tasks"][0]["new_cluster"]["spark_env_vars"]["MLOPS_NB_TRACKING_URI"] == "databricks"
    whl = submit["tasks"][0]["libraries"][0]["whl"]
    assert whl.startswith("/Workspace/Shared/mlops_nb/integration/feature-new-model/wheels/") and whl.endswith(
        "/" + checkout_wheel.name
    )
    import zipfile
    with zipfile.ZipFile(io.BytesIO(fake.files[whl.removeprefix("/Workspace")])) as z:  # built from this checkout
        assert z.read("mlops_nb/databricks.py") == (ROOT/"mlops_nb"/"databricks.py").read_bytes()
    assert TOKEN not in p.stderr + p.stdout
    fake.scenario = "FAILED"
    p = run_cli(*args, env=env)
    assert p.returncode == 1 and "FAILED" in p.stderr and "Traceback" not in p.stderr and TOKEN not in p.stderr


# --- the pull request's own wheel -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkout_wheel(state):
    "This checkout's wheel, as `--wheel` builds it (once per module; the CLI test finds it in the same state folder)."
    from conftest import ROOT
    from mlops_nb.databricks import build_wheel
    return build_wheel(ROOT)


def tiny_wheel(folder, name="tiny", content=b"x = 1\n"):
    "A small valid wheel file."
    import zipfile
    p = folder/f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr(f"{name}/__init__.py", content)
        z.writestr(f"{name}-1.0.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    return p


def test_pr_run_uploads_and_attaches_its_own_wheel(fake, nb, checkout_wheel):
    ("The checkout's wheel (its own databricks.py inside) goes to the PR's folder "
     "before the run starts, and is installed on its cluster.")
    import zipfile
    from conftest import ROOT
    fake.scenario = "SUCCESS"
    n = len(fake.requests)
    h = runner(fake, nb, branch="pr/7-wheel", wheel=ROOT).submit(make_params())
    h.wait(30)
    uploaded = {p: b for p, b in fake.files.items() if p.startswith("/Shared/t/integration/pr-7-wheel/wheels/")}
    assert len(uploaded) == 1
    path, data = next(iter(uploaded.items()))
    assert (
        path.endswith("/" + checkout_wheel.name)
        and checkout_wheel.name.startswith("mlops_nb-")
        and data == checkout_wheel.read_bytes()
    )
    with zipfile.ZipFile(io.BytesIO(data)) as z:  # the pull request's library code, not a release
        assert z.read("mlops_nb/databricks.py") == (ROOT/"mlops_nb"/"databricks.py").read_bytes()
    task = fake.runs[h.run_id]["body"]["tasks"][0]
    assert task["libraries"] == [{"whl": "/Workspace" + path}]
    order = [p for m, p in fake.paths()[n:]]
    # uploaded before the run starts
    assert order.index("/api/2.0/workspace/import") < order.index("/api/2.2/jobs/runs/submit")
    # again, same sources: the same bytes at the same path, found there and not sent again
    n = len(fake.requests)
    h = runner(fake, nb, branch="pr/7-wheel", wheel=ROOT).submit(make_params())
    h.wait(30)
    imports = [b["path"] for m, p, q, b, a in fake.requests[n:] if p == "/api/2.0/workspace/import"]
    assert imports == ["/Shared/t/integration/pr-7-wheel/train"]  # the notebook only
    assert fake.runs[h.run_id]["body"]["tasks"][0]["libraries"] == [{"whl": "/Workspace" + path}]


def test_libraries_requirements_wheels_and_a_volume(fake, nb, tmp_path):
    ("--library: a local wheel is uploaded (to a Unity Catalog volume here), "
     "a requirement and a remote wheel pass as they are.")
    fake.scenario = "SUCCESS"
    w = tiny_wheel(tmp_path)
    remote = "/Volumes/main/ml/shared/other-2.0-py3-none-any.whl"
    h = runner(fake, nb, branch="pr/8", wheel_folder="/Volumes/main/ml/wheels",
               libraries=[str(w), "scikit-learn>=1.4", remote]).submit(make_params())
    h.wait(30)
    path = next(p for p in fake.files if p.startswith("/Volumes/main/ml/wheels/integration/pr-8/wheels/"))
    assert path.endswith("/tiny-1.0-py3-none-any.whl") and fake.files[path] == w.read_bytes()
    assert fake.runs[h.run_id]["body"]["tasks"][0]["libraries"] == [{"whl": path},
                                                                    {"pypi": {"package": "scikit-learn>=1.4"}},
                                                                    {"whl": remote}]
    assert ("PUT", "/api/2.0/fs/directories" + path.rsplit("/", 1)[0]) in fake.paths()


@pytest.mark.parametrize("where,path", [("workspace", "/api/2.0/workspace/import"), ("volume", "/api/2.0/fs/files")])
def test_uploads_survive_429_and_503(fake, nb, tmp_path, where, path):
    fake.scenario = "SUCCESS"
    w = tiny_wheel(tmp_path, content=f"# {where}\n".encode())
    folder = "/Volumes/main/ml/wheels" if where == "volume" else None
    dest = runner(fake, nb, wheel_folder=folder).folder if folder is None else None
    target = None
    if where == "volume":
        from mlops_nb.databricks import wheel_path
        target = "/api/2.0/fs/files" + wheel_path("/Volumes/main/ml/wheels/main", w)
    key = ("PUT " if target else "POST ") + (target or path)
    fake.busy[key] = [429, 503]
    n = len(fake.requests)
    h = runner(fake, nb, libraries=[str(w)], wheel_folder=folder).submit(make_params())
    h.wait(30)
    sent = [p for m, p, q, b, a in fake.requests[n:] if p == (target or path) and m in ("POST", "PUT")
            and (target or b["path"].endswith(".whl"))]
    assert len(sent) == 3 and not fake.busy[key]  # two refusals, then the upload
    stored = [p for p in fake.files if p.endswith("/tiny-1.0-py3-none-any.whl") and fake.files[p] == w.read_bytes()]
    assert stored and (dest is None or stored[0].startswith(dest + "/wheels/"))


def test_a_failed_upload_fails_before_any_cluster_starts(fake, nb, tmp_path):
    "An upload the workspace refuses (or that never gets through) stops the run with the reason; nothing is submitted."
    fake.scenario = "SUCCESS"
    w = tiny_wheel(tmp_path, content=b"# refused\n")
    fake.busy["/api/2.0/workspace/import"] = [403]
    n = len(fake.requests)
    with pytest.raises(DatabricksError) as ei:
        runner(fake, nb, branch="pr/9", libraries=[str(w)]).submit(make_params())
    m = str(ei.value)
    assert (
        m.startswith("Databricks upload of tiny-1.0-py3-none-any.whl to /Shared/t/integration/pr-9/wheels failed (")
        and "\n" not in m
    )
    assert not [p for m_, p in fake.paths()[n:] if "/jobs/" in p]
    # a volume that keeps answering 503 beyond the retry budget: the same, once the budget is spent
    r = DatabricksRunner(nb, client=fake.client(retry=1), folder="/Shared/t", existing_cluster_id="c",
                         libraries=[str(w)],
                         wheel_folder="/Volumes/main/ml/wheels")
    from mlops_nb.databricks import wheel_path
    fake.busy["/api/2.0/fs/files" + wheel_path("/Volumes/main/ml/wheels/main", w)] = [503] * 100
    with pytest.raises(DatabricksError, match="^Databricks upload of tiny-1.0-py3-none-any.whl to "
                                              "/Volumes/main/ml/wheels/main/wheels failed"):
        r.submit(make_params())
    fake.busy.clear()
    assert not [p for m_, p in fake.paths()[n:] if "/jobs/" in p]


def test_a_cancelled_pr_run_removes_nothing(fake, nb, tmp_path):
    "Two branches' wheels; one branch's run is cancelled: no delete request, the other branch's files untouched."
    fake.scenario = "NEVER"
    a, b = tiny_wheel(tmp_path, "alpha"), tiny_wheel(tmp_path, "beta")
    runner(fake, nb, branch="pr/10", libraries=[str(a)]).submit(make_params())
    before = dict(fake.files)
    n = len(fake.requests)
    h = runner(fake, nb, branch="pr/11", libraries=[str(b)]).submit(make_params())
    with pytest.raises(RunFailed, match="was cancelled"): h.wait(0.3)
    assert fake.runs[h.run_id]["cancelled"]
    assert not [p for m, p in fake.paths()[n:] if "delete" in p or m == "DELETE"]
    assert all(fake.files[p] == v for p, v in before.items())


# --- authentication ---------------------------------------------------------------------------------------------------

def test_oauth_m2m_obtains_and_uses_a_token(fake, nb, monkeypatch):
    "Client id and secret: OIDC discovery, a client-credentials token, and every API call with that token."
    monkeypatch.setenv("DATABRICKS_HOST", fake.url)
    monkeypatch.setenv("DATABRICKS_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("DATABRICKS_CLIENT_SECRET", CLIENT_SECRET)
    fake.scenario = "SUCCESS"
    n = len(fake.requests)
    r = DatabricksRunner(nb, folder="/Shared/t", existing_cluster_id="c", poll_s=0.05, retry_timeout_s=15)
    assert CLIENT_SECRET not in repr(r)
    res = r.submit(make_params()).wait(30)
    assert res.run_id == "mlflow-run-1"
    reqs = fake.requests[n:]
    paths = [p for m, p, *_ in reqs]
    assert paths[:3] == ["/.well-known/databricks-config", "/oidc/.well-known/oauth-authorization-server",
                         "/oidc/v1/token"]
    token_req = next(b for m, p, q, b, a in reqs if p == "/oidc/v1/token")
    # the secret travels in the Basic header only
    assert token_req == {"grant_type": "client_credentials", "scope": "all-apis"}
    api = [a for m, p, q, b, a in reqs if p.startswith("/api/")]
    assert api and set(api) == {"Bearer m2m-access-%d" % fake.issued.index(api[0].split()[1])}
    assert all(TOKEN not in (a or "") for a in api)


def _github_job(monkeypatch, fake, request_token=GH_REQUEST_TOKEN):
    ("The environment of a GitHub Actions job with `id-token: write`, as "
     "the generated workflows set it: no Databricks secret.")
    for k in ("DATABRICKS_TOKEN", "DATABRICKS_CLIENT_SECRET", "ARM_CLIENT_ID", "ARM_CLIENT_SECRET", "ARM_TENANT_ID",
              "DATABRICKS_CONFIG_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("DATABRICKS_HOST", fake.url)
    monkeypatch.setenv("DATABRICKS_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("DATABRICKS_AUTH_TYPE", "github-oidc")
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", f"{fake.url}/_github/idtoken?api-version=2.0")
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", request_token)


def test_github_oidc_federation_exchanges_the_job_token(fake, nb, monkeypatch):
    """GitHub's OIDC federation (the generated GitHub workflows' default): the SDK asks GitHub for the job's ID token
    with the workspace's token endpoint as audience, exchanges it there (RFC 8693 token exchange, no client secret)
    and calls the API with the Databricks token it got."""
    from mlops_nb.databricks import credential_kind
    _github_job(monkeypatch, fake)
    assert credential_kind() == "github-oidc"
    fake.scenario = "SUCCESS"
    n = len(fake.requests)
    res = DatabricksRunner(nb, folder="/Shared/t", existing_cluster_id="c", poll_s=0.05,
                           retry_timeout_s=15).submit(make_params()).wait(30)
    assert res.run_id == "mlflow-run-1"
    reqs = fake.requests[n:]
    ask = [(q, a) for m, p, q, b, a in reqs if p == "/_github/idtoken"]
    assert ask and all(q["audience"] == f"{fake.url}/oidc/v1/token" and a == f"Bearer {GH_REQUEST_TOKEN}" for q,
                       a in ask)
    grant = next(b for m, p, q, b, a in reqs if p == "/oidc/v1/token")
    assert (
        grant["grant_type"] == TOKEN_EXCHANGE
        and grant["client_id"] == CLIENT_ID
        and grant["subject_token"] in fake.id_tokens
    )
    assert not grant.get("client_secret")  # nothing stored to leak or rotate
    api = {a for m, p, q, b, a in reqs if p.startswith("/api/")}
    assert api and all(a.startswith("Bearer oidc-access-") for a in api)


def test_github_oidc_refused_is_one_line_and_secret_free(fake, nb, monkeypatch):
    "A job without a valid request token (no `id-token: write`): one line saying what to set, no token in it."
    _github_job(monkeypatch, fake, request_token="ghs-SECRET-wrong")
    with pytest.raises(DatabricksError) as ei:
        DatabricksRunner(nb, folder="/Shared/t", existing_cluster_id="c", retry_timeout_s=15).submit(make_params())
    m = str(ei.value)
    assert m.startswith("Databricks authentication failed:") and "\n" not in m and "id-token: write" in m
    assert "ghs-SECRET" not in m and GH_REQUEST_TOKEN not in m, m


def test_m2m_wrong_secret_is_one_line_and_secret_free(fake, nb, monkeypatch):
    monkeypatch.setenv("DATABRICKS_HOST", fake.url)
    monkeypatch.setenv("DATABRICKS_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("DATABRICKS_CLIENT_SECRET", "wrong-" + CLIENT_SECRET)
    r = DatabricksRunner(nb, folder="/Shared/t", existing_cluster_id="c", retry_timeout_s=15)
    with pytest.raises(DatabricksError) as ei: r.submit(make_params())
    m = str(ei.value)
    assert m.startswith("Databricks authentication failed:") and "invalid_client" in m and "\n" not in m
    assert CLIENT_SECRET not in m and "wrong-" not in m and "DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET" in m


def test_azure_service_principal(fake, nb, monkeypatch):
    ("ARM_CLIENT_ID/SECRET/TENANT_ID through unified auth: Entra ID tokens "
     "(the workspace's and the management one) on every call.")
    from databricks.sdk.environments import AzureEnvironment, Cloud, DatabricksEnvironment
    from mlops_nb.databricks import credential_kind, workspace_client
    monkeypatch.setenv("ARM_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("ARM_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("ARM_TENANT_ID", TENANT)
    assert credential_kind() == "azure-client-secret"
    login = f"{fake.url}/aad/"  # the Entra ID endpoints, on the stand-in (the SDK's own setting for sovereign clouds)
    env = DatabricksEnvironment(Cloud.AZURE, ".azuredatabricks.net",
                                azure_application_id="2ff814a6-3304-4ab8-85cb-cd0e6f879c1d",
                                azure_environment=AzureEnvironment("PUBLIC", f"{fake.url}/mgmt/", f"{fake.url}/arm/",
                                                                   login))
    n = len(fake.requests)
    w = workspace_client(fake.url, retry_timeout_s=15, databricks_environment=env)
    assert w.config.auth_type == "azure-client-secret"
    fake.scenario = "SUCCESS"
    res = DatabricksRunner(nb, client=w, folder="/Shared/t", existing_cluster_id="c",
                           poll_s=0.05).submit(make_params()).wait(30)
    assert res.run_id == "mlflow-run-1"
    grants = [b for m, p, q, b, a in fake.requests[n:] if p == f"/aad/{TENANT}/oauth2/token"]
    assert {g["resource"] for g in grants} == {"2ff814a6-3304-4ab8-85cb-cd0e6f879c1d", f"{fake.url}/mgmt/"}
    api = {a for m, p, q, b, a in fake.requests[n:] if p.startswith("/api/")}
    assert api and all(a.startswith("Bearer aad-access-") for a in api)


def test_cli_m2m_never_prints_the_secret(fake, state, nb):
    "The CLI as a process with the OAuth pair: a failed run and a rejected secret never show the secret."
    import os
    from conftest import run_cli
    base = {k: v for k, v in os.environ.items() if k not in ("DATABRICKS_TOKEN",)}
    env = {**base, "DATABRICKS_HOST": fake.url, "DATABRICKS_CLIENT_ID": CLIENT_ID,
           "DATABRICKS_CLIENT_SECRET": CLIENT_SECRET}
    args = ["train", "--mode", "test", "--runner", "databricks", "--notebook", str(nb), "--existing-cluster-id", "c",
            "--poll-s", "0.05",
            "--databricks-folder", "/Shared/t"]
    out = []
    for scenario, secret in (("FAILED", CLIENT_SECRET), ("SUCCESS", "wrong-" + CLIENT_SECRET)):
        fake.scenario = scenario
        p = run_cli(*args, env={**env, "DATABRICKS_CLIENT_SECRET": secret})
        out.append(p)
        assert CLIENT_SECRET not in p.stdout + p.stderr and "Traceback" not in p.stderr
    assert [p.returncode for p in out] == [1, 2]
    assert "Databricks run" in out[0].stderr and "FAILED" in out[0].stderr
    assert "Databricks authentication failed:" in out[1].stderr and "invalid_client" in out[1].stderr


# --- jobs declared in the bundle --------------------------------------------------------------------------------------

def _bundle_project(root, name):
    "A project whose bundle declares job `retrain` named `name`; return its training notebook."
    (root/"resources").mkdir()
    (root/"nbs").mkdir()
    (root/"resources"/"retrain.yml").write_text(f"resources:\n  jobs:\n    retrain:\n      name: {name}\n")
    (root/"nbs"/"train.ipynb").write_text("{}")
    (root/"pyproject.toml").write_text("")
    return root/"nbs"/"train.ipynb"


def test_run_now_a_bundle_job_by_key_name_or_id(fake, tmp_path):
    "`job` as the bundle's key, the job's name, or its id; a name that matches nothing or several is one line."
    book = _bundle_project(tmp_path, "churn-retrain")
    fake.jobs.update({501: "churn-retrain", 502: "twin", 503: "twin"})
    fake.scenario = "SUCCESS"
    for ref in ("retrain", "churn-retrain", "501", 501):
        h = DatabricksRunner(book, client=fake.client(), job=ref, poll_s=0.05).submit(make_params(mode="full"))
        assert h.wait(30).run_id == "mlflow-run-1" and fake.runs[h.run_id]["body"]["job_id"] == 501
        assert fake.runs[h.run_id]["body"]["notebook_params"]["mode"] == "full"
    with pytest.raises(DatabricksError, match=r"^no job named 'nope' in the workspace: deploy the bundle first"):
        DatabricksRunner(book, client=fake.client(), job="nope").submit(make_params())
    with pytest.raises(DatabricksError, match=r"^2 jobs are named 'twin' \(ids 502, 503\): pass the id"):
        DatabricksRunner(book, client=fake.client(), job="twin").submit(make_params())


def test_run_now_finds_the_callers_development_copy(fake, tmp_path):
    "A bundle's development target deploys `[dev USER] NAME`: the caller's own copy is run, never a colleague's."
    book = _bundle_project(tmp_path, "wine-retrain")
    fake.jobs.update({601: "[dev john_roe] wine-retrain", 602: "[dev jane_doe] wine-retrain",
                      603: "[dev jane_doe] wine-other"})
    fake.job_creators.update({601: "john.roe@example.com"})
    fake.scenario = "SUCCESS"
    assert not [n for n in fake.jobs.values() if n == "wine-retrain"]  # only development copies (the fake is shared)
    for ref in ("retrain", "wine-retrain"):
        h = DatabricksRunner(book, client=fake.client(), job=ref, poll_s=0.05).submit(make_params())
        assert h.wait(30).run_id == "mlflow-run-1" and fake.runs[h.run_id]["body"]["job_id"] == 602
    fake.job_creators[602] = "john.roe@example.com"  # nobody's copy is the caller's: none is guessed
    with pytest.raises(DatabricksError,
                       match=r"^no job named 'retrain' in the workspace: .*counts only when you deployed it\)$"):
        DatabricksRunner(book, client=fake.client(), job="retrain").submit(make_params())
    for i in (601, 602, 603): del fake.jobs[i]


def test_unity_catalog_names_checked_before_anything_is_sent(fake, nb, monkeypatch):
    from mlops_nb.core import RegistryError
    monkeypatch.setenv("MLOPS_NB_REGISTRY_URI", "databricks-uc")
    monkeypatch.setenv("MLOPS_NB_MODEL_NAME", "churn-model")
    r = runner(fake, nb)
    n = len(fake.requests)
    with pytest.raises(RegistryError, match="^Unity Catalog model name 'churn-model' is not catalog.schema.model"):
        r.submit(make_params())
    assert len(fake.requests) == n
    monkeypatch.setenv("MLOPS_NB_MODEL_NAME", "dev.mlops.churn_model")
    fake.scenario = "SUCCESS"
    h = runner(fake, nb).submit(make_params())
    h.wait(30)
    assert fake.runs[h.run_id]["body"]["tasks"][0]["new_cluster"]["spark_env_vars"] == {
        "MLOPS_NB_TRACKING_URI": "databricks", "MLOPS_NB_REGISTRY_URI": "databricks-uc",
        "MLOPS_NB_MODEL_NAME": "dev.mlops.churn_model"}
