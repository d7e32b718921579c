"""MLflow's own clients against a real `mlops-nb serve`, called exactly as a user calls them:
`ScoringServerClient.invoke` (MLflow's JSON, a missing value as NaN) and
`mlflow.deployments.get_deploy_client(URL).predict(endpoint=...)`. The model is the Ottawa problem with its features
written once (`derive`, no `derive_record`) and one optional input, so the same server also proves the fast path works
from `derive` alone."""
import dataclasses, json, math
import numpy as np
import pytest
from test_server import Server

KEY = "api-key-for-mlflow-clients"


@pytest.fixture(scope="module")
def once(tmp_path_factory, state):
    "(problem, fitted pipeline, model folder as registry version 1): Ottawa, `derive` only, `days_on_market` optional."
    from conftest import save_model
    from mlops_nb.data import ColumnSpec
    from mlops_nb.examples.ottawa import PROBLEM
    inputs = {**PROBLEM.inputs, "days_on_market": ColumnSpec("int", min=0, max=10_000, required=False, default=30)}
    p = dataclasses.replace(PROBLEM, derive_record=None, inputs=inputs)
    d = tmp_path_factory.mktemp("once")/"model"
    model = save_model(d, problem=p)
    named = {"name": "ottawa-housing-classifier", "version": "1", "run_id": "run-1"}
    (d/"mlops_nb_model.json").write_text(json.dumps(named))
    return p, model, d


@pytest.fixture(scope="module")
def server(tmp_path_factory, once):
    s = Server(tmp_path_factory.mktemp("mlflow-clients"), "--model", once[2])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def frame(once):
    "Twelve raw listings as a pandas user holds them, three with no days_on_market (NaN)."
    from mlops_nb.examples.ottawa import generate_listings
    df = generate_listings(2022, 12, seed=8)[list(once[0].inputs)]
    df = df.assign(listing_date=df.listing_date.dt.strftime("%Y-%m-%d")).astype({"days_on_market": "float64"})
    df.loc[[1, 4, 7], "days_on_market"] = np.nan
    return df


@pytest.fixture(scope="module")
def want(once, frame):
    "The model's own probabilities, the gaps given the declared default."
    return once[1].predict_proba(frame.fillna({"days_on_market": 30}))


def test_derive_alone_is_served_on_the_fast_path(server, once, model_dir):
    "The problem declares no derive_record: the server still scores on the fast path, proven equal at load."
    from mlops_nb.package import needs_pandas
    from mlops_nb.serving import FAST_PATH_TOLERANCE, Runtime, load_runtime, read_model_dir
    st, v = server.get("/version")
    assert st == 200 and v["fast_path"] is True and v["fast_path_fallback"] is None, v
    rt = Runtime(once[1], *read_model_dir(once[2]), once[2])
    assert rt.fast is not None and rt.fast.needs_pandas and rt.max_abs_diff <= FAST_PATH_TOLERANCE
    assert needs_pandas(rt) and not needs_pandas(load_runtime(model_dir))  # derive_record: the image leaves pandas out


def test_scoring_server_client_sends_nan_and_gets_the_model_s_predictions(server, frame, want):
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient
    from mlflow.utils.proto_json_utils import dump_input_data
    assert "NaN" in dump_input_data(frame)  # what invoke sends: not strict JSON
    c = ScoringServerClient("127.0.0.1", server.port)
    c.wait_server_ready(timeout=10)
    got = np.asarray(c.invoke(frame).get_predictions(), dtype=float)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-9


def test_params_are_ignored_as_mlflow_ignores_them(server, frame, want):
    ("invoke(data, params=...) sends MLflow's `params`: a model whose signature declares none answers as without them "
     "(MLflow's own server warns and ignores them); params that are not an object are a 400.")
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient
    c = ScoringServerClient("127.0.0.1", server.port)
    got = np.asarray(c.invoke(frame, params={"threshold": 0.3}).get_predictions(), dtype=float)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-9
    body = json.dumps({"inputs": [frame.iloc[0].to_dict()], "params": "x"}, default=str).encode()
    st, out = server.request("POST", "/invocations", body, {"content-type": "application/json"})[:2]
    assert st == 400 and "params must be an object" in json.dumps(out), out


def test_nan_in_a_required_field_is_a_422_naming_it(server, frame):
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient
    c = ScoringServerClient("127.0.0.1", server.port)
    with pytest.raises(Exception, match=r"error code 422") as e:
        c.invoke(frame.assign(sqft=frame.sqft.astype(float).where(frame.index != 2)))
    body = json.loads(str(e.value).split("response: ", 1)[1].rstrip(")"))
    assert body["detail"] == [{"loc": [2, "sqft"], "msg": "must not be null"}]
    body = json.dumps({"inputs": [{**frame.iloc[0].to_dict(), "sqft": math.inf}]}).encode()  # written as Infinity
    st, out = server.request("POST", "/invocations", body, {"content-type": "application/json"})[:2]
    assert st == 422 and out["detail"][0]["loc"] == [0, "sqft"] and "finite" in out["detail"][0]["msg"]


@pytest.mark.parametrize("name", ["ottawa-housing-classifier", "ottawa-housing"])
def test_deploy_client_predict_as_a_user_writes_it(server, frame, want, name):
    "get_deploy_client(URL) is MLflow's gateway client: predict(endpoint=NAME, inputs=BODY) posts to that endpoint."
    from mlflow.deployments import get_deploy_client
    client = get_deploy_client(f"http://127.0.0.1:{server.port}")
    assert type(client).__name__ == "MlflowDeploymentClient"
    split = json.loads(frame.to_json(orient="split"))  # gaps as null: the client's requests refuses to send NaN
    out = client.predict(endpoint=name, inputs={"dataframe_split": split})
    assert np.abs(np.asarray(out["predictions"], dtype=float) - want).max() <= 1e-9
    out = client.predict(endpoint=name, inputs={"dataframe_records": json.loads(frame.to_json(orient="records"))})
    assert np.abs(np.asarray(out["predictions"], dtype=float) - want).max() <= 1e-9


def test_deploy_client_errors(server, frame):
    from mlflow.deployments import get_deploy_client
    from requests.exceptions import HTTPError
    client = get_deploy_client(f"http://127.0.0.1:{server.port}")
    with pytest.raises(HTTPError, match="'wine' not found: this server serves ottawa-housing or ottawa-housing-clas"):
        client.predict(endpoint="wine", inputs={"dataframe_records": []})
    with pytest.raises(AttributeError):  # MLflow's own client needs endpoint=: without it, it sends nothing
        client.predict(deployment_name="ottawa-housing", inputs={"dataframe_records": []})
    assert server.request("GET", "/endpoints/ottawa-housing/invocations")[0] == 405


def test_deploy_client_with_an_api_key(tmp_path, once, frame, want, monkeypatch):
    "With an API key (MLOPS_NB_API_KEY), MLFLOW_TRACKING_TOKEN is what MLflow's client sends as the bearer token."
    from mlflow.deployments import get_deploy_client
    from requests.exceptions import HTTPError
    s = Server(tmp_path, "--model", once[2], env={"MLOPS_NB_API_KEY": KEY})
    try:
        client = get_deploy_client(f"http://127.0.0.1:{s.port}")
        body = {"dataframe_split": json.loads(frame.to_json(orient="split"))}
        monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
        with pytest.raises(HTTPError, match="API key required"): client.predict(endpoint="ottawa-housing", inputs=body)
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", KEY)
        out = client.predict(endpoint="ottawa-housing", inputs=body)
        assert np.abs(np.asarray(out["predictions"], dtype=float) - want).max() <= 1e-9
    finally: assert KEY not in s.stop()
