"""The protocols clients already speak, on the same fast path as /score, through the real client libraries: MLflow's
scoring protocol (its own ScoringServerClient, and every payload shape plus CSV), Azure ML's online-endpoint payloads,
and the Open Inference Protocol v2 (tritonclient, JSON and binary tensors). Same numbers as /score, same 4xx errors."""
import json
import numpy as np
import pytest
from test_server import Server, ADMIN


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_dir, state):
    s = Server(tmp_path_factory.mktemp("proto"), "--model", model_dir, env={"MLOPS_NB_ADMIN_TOKEN": ADMIN})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def records():
    "Twelve raw listings as a client sends them (dates as text), and /score's probabilities for them."
    from mlops_nb.examples.ottawa import PROBLEM, generate_listings
    df = generate_listings(2022, 12, seed=8)
    return json.loads(
        df[list(PROBLEM.inputs)].assign(listing_date=df.listing_date.dt.strftime("%Y-%m-%d")).to_json(orient="records")
    )


@pytest.fixture(scope="module")
def want(server, records):
    st, body = server.score(records)
    assert st == 200
    return np.array([[a["probabilities"]["at_or_below_asking"], a["probabilities"]["above_asking"]]
                     for a in body["predictions"]])


def post(server, path, body, ctype="application/json", headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return server.request("POST", path, data, {"content-type": ctype, **(headers or {})})[:2]


def test_mlflow_scoring_client(server, records, want):
    "MLflow's own client: it waits on /ping and posts dataframe_split to /invocations."
    import pandas as pd
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient
    c = ScoringServerClient("127.0.0.1", server.port)
    c.wait_server_ready(timeout=10)
    got = c.invoke(pd.DataFrame(records)).get_predictions()
    assert np.abs(np.asarray(got, dtype=float) - want).max() <= 1e-9


@pytest.mark.parametrize("shape",
                         ["dataframe_split", "dataframe_records", "instances", "inputs-records", "inputs-columns",
                          "csv"])
def test_mlflow_payloads(server, records, want, shape):
    cols = list(records[0])
    body, ctype = {
        "dataframe_split": ({"dataframe_split": {"columns": cols, "data": [[r[c] for c in cols] for r in records]}},
                            "application/json"),
        "dataframe_records": ({"dataframe_records": records}, "application/json"),
        "instances": ({"instances": records}, "application/json"),
        "inputs-records": ({"inputs": records}, "application/json"),
        "inputs-columns": ({"inputs": {c: [r[c] for r in records] for c in cols}}, "application/json"),
        "csv": (("\n".join([",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in records]) + "\n").encode(),
                "text/csv"),
    }[shape]
    st, out = post(server, "/invocations", body, ctype)
    assert st == 200, out
    assert np.abs(np.asarray(out["predictions"], dtype=float) - want).max() <= 1e-9


def test_mlflow_errors_name_the_field(server, records):
    st, out = post(server, "/invocations", {"dataframe_records": [{**records[0], "sqft": -5}]})
    assert st == 422 and out["detail"][0]["loc"] == [0, "sqft"] and "must be >= 1" in out["detail"][0]["msg"]
    st, out = post(server, "/invocations", {"records": records})
    assert st == 400 and "exactly one of dataframe_split" in json.dumps(out)
    assert post(server, "/invocations", b"x", "text/plain")[0] == 415
    assert server.get("/ping")[0] == 200


def test_azure_ml_payloads(server, records, want):
    cols = list(records[0])
    for body in ({"input_data": {"columns": cols, "index": list(range(len(records))),
                                 "data": [[r[c] for c in cols] for r in records]}},
                 {"data": records}):
        st, out = post(server, "/score", body)
        assert st == 200, out
        got = np.array([[a["probabilities"]["at_or_below_asking"], a["probabilities"]["above_asking"]]
                        for a in out["predictions"]])
        assert np.abs(got - want).max() <= 1e-9
    st, out = post(server, "/score",
                   {"input_data": {"columns": cols, "data": [[r[c] for c in cols][:-1] for r in records]}})
    assert st == 400 and "must be a list of" in json.dumps(out)


@pytest.mark.parametrize("binary", [True, False], ids=["binary tensors", "json tensors"])
def test_open_inference_protocol_with_tritonclient(server, records, want, binary):
    tc = pytest.importorskip("tritonclient.http")
    c = tc.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    name = "ottawa-housing-classifier"
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(name)
    meta = c.get_model_metadata(name)
    assert meta["versions"] == ["1"] and {i["name"]: i["datatype"] for i in meta["inputs"]}["bedrooms"] == "INT64"
    assert meta["outputs"] == [{"name": "predictions", "datatype": "FP64", "shape": [-1, 2]}]
    inputs = []
    for spec in meta["inputs"]:
        col = [r[spec["name"]] for r in records]
        arr = (
            np.array(col, dtype=object)
            if spec["datatype"] == "BYTES"
            else np.array(col, dtype={"INT64": np.int64, "FP64": np.float64}[spec["datatype"]])
        )
        t = tc.InferInput(spec["name"], [len(records)], spec["datatype"])
        t.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(t)
    res = c.infer(name, inputs, model_version="1", request_id="abc",
                  outputs=[tc.InferRequestedOutput("predictions", binary_data=False)])
    assert res.get_response()["id"] == "abc"
    assert np.abs(res.as_numpy("predictions") - want).max() <= 1e-9


def test_open_inference_protocol_errors(server, records):
    st, out = server.request("GET", "/v2/models/nope")[:2]
    assert st == 404 and "not found" in out["error"]
    st, out = server.request("GET", "/v2/models/ottawa-housing-classifier/versions/7")[:2]
    assert st == 404
    body = {"inputs": [{"name": c, "shape": [1], "datatype": "BYTES" if isinstance(v, str) else "FP64", "data": [v]}
                       for c, v in {**records[0], "sqft": -5}.items()]}
    st, out = post(server, "/v2/models/ottawa-housing-classifier/infer", body)
    assert st == 422 and out["detail"][0]["loc"] == [0, "sqft"]
    st, out = post(server, "/v2/models/ottawa-housing-classifier/infer",
                   {"inputs": [{"name": "sqft", "shape": [2], "datatype": "FP64", "data": [1.0]}]})
    assert st == 400 and "does not fit" in out["error"]
    assert server.get("/v2/health/live") == (200, {"live": True}) and server.get("/v2/health/ready")[0] == 200
    assert server.request("GET", "/v2/models/ottawa-housing-classifier/infer")[0] == 405


def test_malformed_requests_are_400s_never_500s(server, records):
    ("Found by bench/bench_protocols.py: binary tensors whose sizes do not "
     "fit were 500s; a BOM broke the first CSV column.")
    url = "/v2/models/ottawa-housing-classifier/infer"
    for size, blob in ((7, b"\0" * 7), ("abc", b"\0" * 8), (1.5, b"\0" * 8), (-1, b""), (10**9, b"\0" * 8)):
        head = json.dumps({"inputs": [{"name": "bedrooms", "shape": [1], "datatype": "INT64",
                                       "parameters": {"binary_data_size": size}}]}).encode()
        st, out = server.request("POST", url, head + blob, {"content-type": "application/octet-stream",
                                                            "inference-header-content-length": str(len(head))})[:2]
        assert st == 400 and "bedrooms" in out["error"], (size, st, out)
    st, out = post(server, url,
                   {"id": {"a": 1}, "inputs": [{"name": "sqft", "shape": [1], "datatype": "FP64", "data": [1.0]}]})
    assert st == 400 and "'id' must be a string" in out["error"]
    cols = list(records[0])
    st, out = post(server, "/score",
                   {"input_data": {"columns": cols, "index": [0, 1, 2], "data": [[records[0][c] for c in cols]]}})
    assert st == 400 and "index must be a list with one entry per row" in json.dumps(out)
    csv = ",".join(cols) + "\n" + ",".join(str(records[0][c]) for c in cols) + "\n"
    plain = post(server, "/invocations", csv.encode(), "text/csv")
    assert plain[0] == 200 and post(server, "/invocations", b"\xef\xbb\xbf" + csv.encode(), "text/csv") == plain


def test_the_second_audits_protocol_bodies_are_4xx(server, records):
    """Audit 2, finding 1: a 400-digit CSV number, a v2 tensor whose `parameters` is a list, text or a number, and a
    header length of '²' were 500s; a duplicate v2 tensor or CSV column silently used the last value."""
    url = "/v2/models/ottawa-housing-classifier/infer"
    cols = list(records[0])
    row = [str(records[0][c]) for c in cols]
    huge = ",".join(cols) + "\n" + ",".join("1" * 400 if c == "bedrooms" else v for c, v in zip(cols, row)) + "\n"
    st, out = post(server, "/invocations", huge.encode(), "text/csv")
    assert st == 422 and "bedrooms" in json.dumps(out) and "between -1e15 and 1e15" in json.dumps(out), (st, out)
    for params in ([1, 2], "binary", 7):
        st, out = post(server, url,
                       {"inputs": [{"name": "sqft", "shape": [1], "datatype": "FP64", "data": [1.0],
                                    "parameters": params}]})
        assert st == 400 and "parameters must be an object" in out["error"], (params, st, out)
    head = json.dumps({"inputs": [{"name": "sqft", "shape": [1], "datatype": "FP64", "data": [1.0]}]}).encode()
    st, out = server.request("POST", url, head,
                             {"content-type": "application/json", "inference-header-content-length": "²"})[:2]
    assert st == 400 and "is not a byte count" in out["error"], (st, out)
    tensors = [{"name": c, "shape": [1], "datatype": "BYTES" if isinstance(v, str) else "FP64", "data": [v]} for c,
               v in records[0].items()]
    st, out = post(server, url, {"inputs": tensors + [{**tensors[0], "data": [records[1][tensors[0]["name"]]]}]})
    assert st == 400 and "is sent twice" in out["error"], (st, out)
    twice = ",".join(cols + [cols[0]]) + "\n" + ",".join(row + [row[0]]) + "\n"
    st, out = post(server, "/invocations", twice.encode(), "text/csv")
    assert st == 400 and "more than once" in json.dumps(out), (st, out)
    st, out = post(server, "/invocations", {"dataframe_split": {"columns": cols + [cols[0]], "data": [row + [row[0]]]}})
    assert st == 400 and "more than once" in json.dumps(out), (st, out)
