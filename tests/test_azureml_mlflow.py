"""Azure ML's MLflow plugin (PyPI azureml-mlflow) with mlops_nb's [azureml] extra, offline.

azureml-mlflow requires an older mlflow-skinny than the dev lock's, so this runs in a venv of its own
(scripts/azureml-venv: requirements-azureml.lock, then mlops_nb from the checkout with the extra), with the checkout
first on PYTHONPATH so the code tested is this checkout's. One probe process in that venv: every host name lookup other
than loopback is refused and recorded (nothing leaves the machine), then it
- imports azureml.mlflow, mlflow and mlops_nb;
- resolves a plain azureml:// URI through MLflow's store registries (the plugin's entry points) and constructs an
  MlflowClient on it;
- resolves the repository's prod profile with mlops_nb.backends.activate_profile: the real MLClient against a stand-in
  for ARM on loopback (its transport rewrites management.azure.com, the credential hands out a fake token), then
  builds the stores and an MlflowClient on the URIs mlops_nb.core reports, as mlops_nb.tracking.client() does.
Also, in the same venv, the training notebook's own cells in full mode on a local SQLite store: mlops_nb logs, registers
and loads its model with the extra's MLflow (mlflow-skinny 3.15.0, older than the dev lock's).
Not exercised: anything that talks to a workspace's MLflow endpoint (client() itself searches experiments, so it is not
called), authentication against Entra ID, artifact uploads; tests/test_live.py covers the URI against a real workspace
when credentials are set.
"""
import json, os, subprocess, sys, tomllib
import pytest
from conftest import ROOT, side_venv

WS = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"
ARM_URI = "azureml://canadacentral.api.azureml.ms/mlflow/v1.0" + WS  # mlFlowTrackingUri as ARM reports it
RAW = "azureml://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/s0/resourceGroups/rg0/providers/Microsoft.MachineLearningServices/workspaces/ws0"  # noqa: E501
PLUGIN = "azureml.mlflow._store."
TRACKING_STORE, REGISTRY_STORE = (
    PLUGIN + "tracking.store.AzureMLRestStore",
    PLUGIN + "model_registry.model_registry.AzureMLflowModelRegistry",
)

PROBE = r'''
import json, os, socket, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
outbound = []  # every lookup of a host other than loopback: recorded and refused, so nothing leaves the machine
_getaddrinfo = socket.getaddrinfo
def _guard(host, *a, **kw):
    if host not in ("127.0.0.1", "localhost", "::1"):
        outbound.append(str(host)); raise socket.gaierror(socket.EAI_NONAME, f"offline test: no lookup of {host}")
    return _getaddrinfo(host, *a, **kw)
socket.getaddrinfo = _guard
WS, ARM_URI, RAW = sys.argv[1:4]
out = {}
def name(o): return f"{type(o).__module__}.{type(o).__qualname__}"
def context(store):
    sc = store.service_context
    return {k: getattr(sc, k, None) for k in ("subscription_id", "resource_group_name", "workspace_name", "host_url")}

t0 = time.time()
import importlib.metadata as m
import mlflow, azureml.mlflow, mlops_nb, mlops_nb.backends
from mlflow.tracking._tracking_service.utils import _get_store
from mlflow.tracking._model_registry.utils import _get_store as _get_registry_store
out["import_s"], out["mlops_nb_file"] = round(time.time() - t0, 1), mlops_nb.__file__
out["versions"] = {p: m.version(p) for p in ("azureml-mlflow", "mlflow-skinny", "azure-ai-ml", "azure-identity")}
out["entry_points"] = {g: sorted(f"{e.name}={e.value}" for e in m.entry_points(group=g))
                       for g in ("mlflow.tracking_store", "mlflow.model_registry_store", "mlflow.artifact_repository")}

# 1. a plain azureml:// URI (as a user would set it by hand)
mlflow.set_tracking_uri(RAW); mlflow.set_registry_uri(RAW)
store, reg = _get_store(), _get_registry_store()
c = mlflow.MlflowClient(tracking_uri=RAW, registry_uri=RAW)
out["raw"] = dict(tracking_uri=mlflow.get_tracking_uri(), registry_uri=mlflow.get_registry_uri(), tracking_store=name(store),
                  registry_store=name(reg), client_store=name(c._tracking_client.store), client_uris=[c.tracking_uri, c._registry_uri],
                  context=context(store), outbound=outbound[:])
del outbound[:]

# 2. the prod profile, through mlops_nb: MLClient against ARM on loopback
seen = []
class ARM(BaseHTTPRequestHandler):
    def do_GET(self):
        seen.append(self.path)
        ok = self.path.startswith(WS + "?")
        b = json.dumps({"id": WS, "name": "ws", "location": "canadacentral", "kind": "Default", "properties": {"mlFlowTrackingUri": ARM_URI}}
                       if ok else {"error": {"code": "ResourceNotFound", "message": "not found"}}).encode()
        self.send_response(200 if ok else 404); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(b))); self.end_headers(); self.wfile.write(b)
    def log_message(self, *a): pass
srv = ThreadingHTTPServer(("127.0.0.1", 0), ARM); threading.Thread(target=srv.serve_forever, daemon=True).start()
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import RequestsTransport
class Cred:
    def get_token(self, *scopes, **kw): return AccessToken("fake-token", int(time.time()) + 3600)
class Loopback(RequestsTransport):
    def send(self, request, **kw):
        request.url = request.url.replace("https://management.azure.com", f"http://127.0.0.1:{srv.server_address[1]}")
        return super().send(request, **kw)
cred = Cred()
os.environ.update(AZURE_SUBSCRIPTION_ID="s1", AZUREML_RESOURCE_GROUP="rg", AZUREML_WORKSPACE="ws")
prof = mlops_nb.backends.activate_profile("prod", credential=cred, transport=Loopback())
from mlops_nb.core import tracking_uri, registry_uri
t, r = tracking_uri(), registry_uri()
mlflow.set_tracking_uri(t); mlflow.set_registry_uri(r)  # as mlops_nb.tracking.client() does, without its first request
store, reg = _get_store(), _get_registry_store()
c = mlflow.MlflowClient(tracking_uri=t, registry_uri=r)
out["profile"] = dict(backend=prof["backend"], experiment=os.environ.get("MLOPS_NB_EXPERIMENT"), arm_paths=seen, tracking_uri=t,
                      registry_uri=r, tracking_store=name(store), registry_store=name(reg), client_store=name(c._tracking_client.store),
                      client_uris=[c.tracking_uri, c._registry_uri], context=context(store),
                      same_credential=store.service_context._auth is cred, outbound=outbound[:])
srv.shutdown()
print(json.dumps(out))
'''  # noqa: E501


def _lock():
    pins = {}
    for line in (ROOT/"requirements-azureml.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            k, v = line.split("==")
            pins[k.strip().lower()] = v.strip()
    return pins


def test_extra_ranges_hold_the_lock():
    "pyproject's [azureml] extra (and mlops_nb's own requirements) admit every pin of requirements-azureml.lock."
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    project = tomllib.loads((ROOT/"pyproject.toml").read_text())["project"]
    extras, pins = project["optional-dependencies"], {canonicalize_name(k): v for k, v in _lock().items()}
    # never in the dev environment (its lock conflicts)
    assert "azureml" in extras and not any("azureml" in r for r in extras["dev"])
    reqs = [Requirement(r) for r in project["dependencies"] + extras["azureml"] + extras["azure"]]
    assert {"azureml-mlflow", "mlflow-skinny"} <= {canonicalize_name(r.name) for r in reqs}
    for r in reqs:
        if canonicalize_name(r.name) == "mlops-nb": continue
        v = pins.get(canonicalize_name(r.name))
        assert v is not None, f"{r.name} is required but not pinned in requirements-azureml.lock"
        assert r.specifier.contains(v, prereleases=True), f"requirements-azureml.lock pins {r.name}=={v}, outside {r}"


@pytest.fixture(scope="module")
def azureml_python():
    "The python of the plugin's venv (built once per machine, then instant)."
    return side_venv("azureml-venv", "the azureml-mlflow venv")


@pytest.fixture(scope="module")
def probe(azureml_python, tmp_path_factory):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLOPS_NB_", "MLFLOW_", "AZURE", "AZUREML_", "ARM_", "DATABRICKS_"))
           and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=str(ROOT), MLOPS_NB_HOME=str(tmp_path_factory.mktemp("azureml-home")),
               MLFLOW_DISABLE_TELEMETRY="true")
    p = subprocess.run([azureml_python, "-c", PROBE, WS, ARM_URI, RAW], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"\nazureml-mlflow {out['versions']['azureml-mlflow']} with mlflow-skinny {out['versions']['mlflow-skinny']}"
          f", azure-ai-ml {out['versions']['azure-ai-ml']}: imports in {out['import_s']} s", file=sys.stderr)
    return out


def test_imports_with_mlops_nb_as_locked(probe):
    pins = _lock()
    assert {k: probe["versions"][k]
            for k in ("azureml-mlflow", "mlflow-skinny")} == {k: pins[k] for k in ("azureml-mlflow", "mlflow-skinny")}
    # the checkout's code, not the copy installed in the venv
    assert probe["mlops_nb_file"] == str(ROOT/"mlops_nb"/"__init__.py")
    ep = "azureml=azureml.mlflow.entry_point_loaders:azureml_"
    assert probe["entry_points"] == {"mlflow.tracking_store": [ep + "store_builder"],
                                     "mlflow.model_registry_store": [ep + "model_registry_builder"],
                                     "mlflow.artifact_repository": [ep + "artifacts_builder"]}


def test_azureml_uri_resolves_to_the_plugin(probe):
    raw = probe["raw"]
    assert raw["tracking_uri"] == raw["registry_uri"] == RAW and raw["client_uris"] == [RAW, RAW]
    assert raw["tracking_store"] == raw["client_store"] == TRACKING_STORE and raw["registry_store"] == REGISTRY_STORE
    assert raw["context"] == {"subscription_id": "s0", "resource_group_name": "rg0", "workspace_name": "ws0",
                              "host_url": "https://westeurope.api.azureml.ms"}
    # with no cloud named (AZUREML_CURRENT_CLOUD), the plugin asks ARM for cloud metadata; refused here, it falls back
    # to its built-in clouds and builds the store anyway
    assert set(raw["outbound"]) <= {"management.azure.com"}, raw["outbound"]


def test_prod_profile_resolves_and_a_client_is_built(probe):
    prof = probe["profile"]
    assert prof["backend"] == "azureml" and prof["experiment"] == "ottawa-housing"
    # one GET of the workspace
    assert prof["arm_paths"] == [prof["arm_paths"][0]] and prof["arm_paths"][0].startswith(WS + "?api-version=")
    # with the plugin installed, azure-ai-ml hands the URI to it: MLflow 3 gets the /mlflow/v2.0 form of ARM's URI
    want = ARM_URI.replace("/mlflow/v1.0/", "/mlflow/v2.0/")
    assert prof["tracking_uri"] == prof["registry_uri"] == want and prof["client_uris"] == [want, want]
    assert prof["tracking_store"] == prof["client_store"] == TRACKING_STORE and prof["registry_store"] == REGISTRY_STORE
    assert prof["context"] == {"subscription_id": "s1", "resource_group_name": "rg", "workspace_name": "ws",
                               "host_url": "https://canadacentral.api.azureml.ms"}
    # the store authenticates with the credential mlops_nb gave MLClient (no interactive fallback)
    assert prof["same_credential"]
    assert prof["outbound"] == []   # MLClient named the cloud, so the plugin asked nothing of the network


def test_mlops_nb_trains_registers_and_loads_with_this_mlflow(azureml_python, tmp_path):
    "nbs/train.ipynb's code cells (full mode, a 10% sample, one epoch) on a local SQLite store in the plugin's venv."
    cells = [c["source"] for c in json.loads((ROOT/"nbs"/"train.ipynb").read_text())["cells"]
             if c["cell_type"] == "code"]
    src = [("".join(c) if isinstance(c, list) else c) for c in cells]
    script = "\n".join([src[0], 'mode, sample_frac, epochs = "full", 0.1, 1', *src[1:], """
import json
from mlops_nb.tracking import registered_name, list_versions
m = mlflow.pyfunc.load_model(f"models:/{registered_name()}/{registered_version}")
print(json.dumps({"mlflow": mlflow.__version__, "version": registered_version,
                  "versions": [v.version for v in list_versions()], "predicted": len(m.predict(m.input_example)),
                  "tracking_uri": mlflow.get_tracking_uri()}))
"""])  # the parameters cell, then the values papermill would inject after it, then the rest
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_NB_", "MLFLOW_", "AZURE", "AZUREML_"))
           and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=str(ROOT), MLOPS_NB_HOME=str(tmp_path/"state"), MLFLOW_DISABLE_TELEMETRY="true")
    p = subprocess.run([azureml_python, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-3000:])
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["mlflow"] == _lock()["mlflow-skinny"] and out["tracking_uri"].startswith(
        "sqlite:///" + str(tmp_path / "state")
    )
    assert out["version"] == 1 and out["versions"] == [1] and out["predicted"] > 0
