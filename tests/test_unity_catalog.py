"""Unity Catalog models through mlops_nb's own registry code, against the Databricks stand-in.

MLflow's real `databricks-uc` registry store (MLOPS_NB_REGISTRY_URI=databricks-uc, DATABRICKS_HOST/DATABRICKS_TOKEN on
`FakeDatabricks`) does every registry call over HTTP: registered model create/get, version create, the upload of the
version's files through the Files API under /Models/CATALOG/SCHEMA/MODEL/VERSION (the Databricks-SDK artifact
repository, which the stand-in says is enabled), finalize, tags, aliases, search. Tracking stays in the module's local
SQLite store (the runs, their metrics and logged models); the stand-in implements no tracking API.
"""
import mlflow, pytest, yaml

from conftest import ROOT, run_cli
from test_databricks import TOKEN, fake, no_credentials  # noqa: F401  the Databricks stand-in and its fixtures, reused

NAME = "dev.ottawa_housing.ottawa_housing_classifier"
UC_API = "/api/2.0/mlflow/unity-catalog/"


@pytest.fixture
def uc(fake, state, monkeypatch):  # noqa: F811
    "The registry is Unity Catalog on the stand-in (emptied), tracking the module's SQLite store; the model is NAME."
    monkeypatch.setenv("DATABRICKS_HOST", fake.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    monkeypatch.setenv("MLOPS_NB_REGISTRY_URI", "databricks-uc")
    monkeypatch.setenv("MLOPS_NB_MODEL_NAME", NAME)
    for k in ("MLFLOW_ENABLE_UC_NATIVE_MODEL_REGISTRY", "MLFLOW_USE_DATABRICKS_SDK_MODEL_ARTIFACTS_REPO_FOR_UC"):
        monkeypatch.delenv(k, raising=False)  # MLflow's default store and the workspace's own answer about uploads
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    fake.uc.clear()
    fake.uc_page = 1000
    for p in [p for p in fake.files if p.startswith("/Models/")]: del fake.files[p]  # earlier tests' model files
    yield fake
    fake.uc_page = 1000


def _logged(model_dir, roc_auc, signature=True):
    "A full-mode run (local tracking) that logged the example's model and metrics; return (run id, model URI)."
    from mlops_nb.examples.ottawa import PROBLEM, generate_listings
    from mlops_nb.params import make_params
    from mlops_nb.serving import load_runtime
    from mlops_nb.tracking import create_run, log_data_lineage
    from mlops_nb.train import log_model
    rid = create_run(make_params(mode="full"), "nbs/train.ipynb")
    with mlflow.start_run(run_id=rid):
        mlflow.log_metrics({"roc_auc": roc_auc, "accuracy": 0.7, "log_loss": 0.5})
        pipeline = load_runtime(model_dir).pipeline
        if signature: info = log_model(PROBLEM, pipeline, generate_listings(2021, 5, seed=1))
        # no signature
        else: info = mlflow.sklearn.log_model(pipeline, name="model", serialization_format="cloudpickle")
    log_data_lineage(rid, "data-fp", "eval-fp")
    return rid, info.model_uri


def _register(model_dir, roc_auc, name=None):
    from mlops_nb.tracking import register_model
    rid, uri = _logged(model_dir, roc_auc)
    return rid, register_model(rid, uri, name)


def _uc_requests(stand_in, since):
    return [(m, p, q, b) for m, p, q, b, a in stand_in.requests[since:] if p.startswith(UC_API)]


def test_a_unity_catalog_name_round_trips(uc, model_dir):
    ("Register two versions, list them with their tags, point champion at "
     "one then the other, resolve every kind of reference.")
    from mlops_nb import tracking
    n = len(uc.requests)
    (rid1, v1), (rid2, v2) = _register(model_dir, 0.8), _register(model_dir, 0.9)
    assert (v1, v2) == (1, 2)
    m = uc.uc[NAME]
    assert {v: mv["status"] for v, mv in m["versions"].items()} == {"1": "READY", "2": "READY"}
    assert m["versions"]["1"]["run_id"] == rid1 and m["versions"]["1"]["tags"]["mlops_nb.mode"] == "full"
    files = uc.uc_files(NAME, "2")  # the version's own files, uploaded before it was finalized
    assert {"MLmodel", "requirements.txt"} <= set(files) and b"signature:" in files["MLmodel"]
    # the run (local) knows its version
    assert mlflow.MlflowClient().get_run(rid2).data.tags[tracking.VERSION_TAG] == "2"

    uc.uc_page = 1  # one version per search page: list_versions follows the pages
    vs = tracking.list_versions()
    assert [(v.name, v.version, v.run_id) for v in vs] == [(NAME, 2, rid2), (NAME, 1, rid1)]
    # tags read per version
    assert all(v.tags["mlops_nb.gates"] == "passed" and v.eval_fingerprint == "eval-fp" for v in vs)
    assert vs[0].metrics["roc_auc"] == 0.9 and vs[0].uri == f"models:/{NAME}/2"

    assert tracking.version_for_alias("champion") is None
    assert tracking.promote(1) is None and tracking.promote(2) == 1
    assert m["aliases"] == {"champion": "2"}
    assert tracking.version_for_alias("champion") == 2
    assert [v.aliases for v in tracking.list_versions()] == [["champion"], []]
    assert tracking.promote(1, alias="challenger") is None
    for ref, want in (("champion", 2), ("@champion", 2), ("challenger", 1), ("latest", 2), ("1", 1),
                      ("best:roc_auc", 2)):
        assert tracking.resolve_version(ref).version == want, ref
    from mlops_nb.core import RegistryError
    with pytest.raises(RegistryError, match="has no version 7: known versions are 1, 2"): tracking.promote(7)

    # the champion loads for serving: its files come back from the version's folder through the Files API
    from mlops_nb.examples.ottawa import generate_listings
    from mlops_nb.serving import load_runtime
    k = len(uc.requests)
    rt = load_runtime(f"models:/{NAME}@champion")
    assert (rt.info.name, rt.info.version, rt.info.run_id) == (NAME, "2", rid2)
    assert ("GET", f"/api/2.0/fs/files/Models/{NAME.replace('.', '/')}/2/MLmodel") in uc.paths()[k:]
    rows = generate_listings(2021, 3, seed=5)
    assert rt.predict(rows[list(rt.schema)].to_dict("records")).shape == (3, len(rt.labels))

    sent = _uc_requests(uc, n)
    assert sent and {(b or {}).get("name") or q.get("name") for m_, p, q, b in sent if "search" not in p
                     and ":is-" not in p} == {NAME}
    assert {q["filter"] for m_, p, q, b in sent if p.endswith("/model-versions/search")} == {f"name='{NAME}'"}
    # aliases only: no stage is ever read or written (MLflow's UC store has no stage calls; none was attempted)
    assert not [p for m_, p in uc.paths()[n:] if "stage" in p or "latest-versions" in p or "transition" in p]
    assert all(mv.current_stage in (None, "", "None")
               for mv in mlflow.MlflowClient().search_model_versions(f"name='{NAME}'"))
    assert all(a == f"Bearer {TOKEN}" for m_, p, q, b, a in uc.requests[n:] if p.startswith("/api/"))


def test_stages_are_refused_before_any_request(uc, model_dir):
    "What a stage call does with this registry: MLflow's UC store refuses it locally; mlops_nb never makes one."
    from mlflow.exceptions import MlflowException
    from mlops_nb.tracking import client
    _register(model_dir, 0.8)
    n = len(uc.requests)
    with pytest.raises(MlflowException, match="unsupported for models in the Unity Catalog"):
        client().transition_model_version_stage(NAME, "1", "Production")
    with pytest.raises(MlflowException, match="unsupported for models in the Unity Catalog"):
        client().get_latest_versions(NAME, stages=["Production"])
    # reads only (MLflow's client looks the model up first), no stage endpoint, nothing written
    assert not [(m, p) for m, p in uc.paths()[n:] if m != "GET" or "stage" in p or "latest" in p]
    assert uc.uc[NAME]["aliases"] == {}


CALLS = {"register_model": lambda t, n: t.register_model("some-run", "models:/m-1", n), "list_versions": lambda t,
         n: t.list_versions(n),
         "latest_version": lambda t, n: t.latest_version(n), "promote": lambda t, n: t.promote(1, name=n),
         "version_for_alias": lambda t, n: t.version_for_alias("champion", n), "resolve_version": lambda t,
         n: t.resolve_version("champion", n)}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("bad", ["ottawa-housing-classifier", "dev.ottawa_housing", "dev.ottawa-housing.classifier"])
def test_malformed_names_fail_before_any_request(uc, monkeypatch, call, bad):
    "From MLOPS_NB_MODEL_NAME or given: a one-line RegistryError, and not one request."
    from mlops_nb import tracking
    from mlops_nb.core import RegistryError
    n = len(uc.requests)
    for env, given in ((bad, None), (NAME, bad)):
        monkeypatch.setenv("MLOPS_NB_MODEL_NAME", env)
        with pytest.raises(RegistryError) as ei: CALLS[call](tracking, given)
        msg = str(ei.value)
        assert msg.startswith(f"Unity Catalog model name {bad!r} is not catalog.schema.model") and "\n" not in msg
    assert len(uc.requests) == n  # nothing sent, not even for the workspace's metadata


def test_the_cli_says_it_in_one_line(uc):
    "The same through `mlops-nb models` as a process: exit 2, one line, nothing sent."
    import os
    n = len(uc.requests)
    env = {**os.environ, "MLOPS_NB_MODEL_NAME": "ottawa-housing-classifier"}
    for args in (("models", "list"), ("models", "promote", "1")):
        p = run_cli(*args, env=env)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.strip().splitlines() == [p.stderr.strip()] and "is not catalog.schema.model" in p.stderr
    assert len(uc.requests) == n


def test_signatures_are_required(uc, model_dir):
    """A model logged without a signature (pickled, by MLflow alone) never reaches the UC store, which would refuse it
    too: registration first loads it as `mlops-nb serve` does, and mlops_nb serves only skops models of a problem."""
    from mlops_nb.core import RegistrationRefused
    from mlops_nb.tracking import register_model
    rid, uri = _logged(model_dir, 0.8, signature=False)
    n = len(uc.requests)
    with pytest.raises(RegistrationRefused,
                       match="cannot be served, so it cannot be registered: .*serialised as cloudpickle"):
        register_model(rid, uri)
    assert not _uc_requests(uc, n) and NAME not in uc.uc


def _bundle_model_name(target):
    ("The model name the bundle's jobs get for `target` (databricks.yml: "
     "${var.catalog}.${var.schema}.${var.model_name}).")
    doc = yaml.safe_load((ROOT/"databricks.yml").read_text())
    var = {k: v["default"] for k, v in doc["variables"].items()} | doc["targets"][target].get("variables", {})
    return f"{var['catalog']}.{var['schema']}.{var['model_name']}"


def test_profiles_map_to_the_bundles_catalogs(uc, model_dir, monkeypatch):
    ("dev and staging register in their catalogs, under the name the "
     "bundle's target gives its jobs; a version lands there.")
    from mlops_nb import tracking
    from mlops_nb.backends import backend_env, load_profile
    mapped = {}
    for p in sorted((ROOT/"profiles").glob("*.yaml")):
        prof = load_profile(p.stem, ROOT/"profiles") if "${" not in p.read_text() else yaml.safe_load(p.read_text())
        if prof.get("unity_catalog"): mapped[p.stem] = backend_env(prof)
    assert {"dev", "staging"} <= set(mapped)
    for target, env in mapped.items():
        assert env["MLOPS_NB_REGISTRY_URI"] == "databricks-uc" and env["MLOPS_NB_TRACKING_URI"] == "databricks"
        assert env["MLOPS_NB_MODEL_NAME"] == _bundle_model_name(target) and env["MLOPS_NB_MODEL_NAME"].startswith(
            f"{target}."
        )
    staging = mapped["staging"]["MLOPS_NB_MODEL_NAME"]
    # the staging profile's registry settings (tracking stays local here)
    monkeypatch.setenv("MLOPS_NB_MODEL_NAME", staging)
    _, v = _register(model_dir, 0.85)
    assert tracking.promote(v) is None and tracking.version_for_alias("champion") == v
    assert set(uc.uc) == {staging} and uc.uc[staging]["aliases"] == {"champion": "1"}
    assert uc.uc_files(staging, "1") and not uc.uc_files(NAME, "1")
    # a catalog the workspace does not have: the registry's own refusal, as MLflow reports it
    from mlflow.exceptions import MlflowException
    with pytest.raises(MlflowException, match="Catalog 'qa' does not exist"):
        _register(model_dir, 0.85, "qa.ottawa_housing.m")
