"""Bounded fuzzing of the scoring server's own OpenAPI document with schemathesis, over HTTP against the real process.

Every operation of GET /openapi.json gets schemathesis' coverage cases (boundaries, type mutations, missing fields,
undeclared methods) and Hypothesis-generated cases, valid and invalid. No response may be a 5xx, every error response
must be JSON with an "error" key, schemathesis' response checks must pass, and the server must still be up afterwards.

Why not `schemathesis.pytest.from_fixture(...)` + `@schema.parametrize()`: schemathesis 4.32.5's lazy loader reads
`request.node._nodeid`, which pytest 9 no longer has (AttributeError). The schema can only be loaded once the
server runs, so the cases are drawn here with the public `APIOperation.as_strategy()` under `@given`, plus
`schema.iter_coverage_cases()`: the fuzzing and coverage phases of `st run`, deterministic so CI is reproducible.
"""
import collections, json
import pytest, requests, schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from conftest import GOOD
from test_server import Server

SCORE_EXAMPLES = 150  # Hypothesis examples per generation mode for POST /score
OTHER_EXAMPLES = 5    # the GET endpoints take no input: a few are enough

# schemathesis checks as configured for this API (the format of schemathesis.toml)
CONFIG = """
[checks.negative_data_rejection]
# schemathesis' default list plus 413: /score documents 413 ("Body or batch too large") and answers it to more than
# max_rows records, which schemathesis sends as an invalid `maxItems` case
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]

"""

STATS = collections.Counter()  # (phase, mode, operation, method, status) -> responses


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, model_dir, state):
    s = Server(tmp_path_factory.mktemp("fuzz"), "--model", model_dir)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    return schemathesis.openapi.from_url(f"http://127.0.0.1:{fuzz_server.port}/openapi.json",
                                         config=SchemathesisConfig.from_str(CONFIG), timeout=30)


@pytest.fixture(scope="module")
def session():
    with requests.Session() as s: yield s


def operations(schema):
    "The schema's operations (a broken one fails the test)."
    return [r.ok() for r in schema.get_all_operations()]


def takes_input(op):
    "Whether the operation has anything to make invalid (negative data needs a parameter or a body)."
    return any(len(p) for p in (op.body, op.query, op.headers, op.path_parameters, op.cookies))


def server_log_tail(server, n=30, request_id=None):
    "The server's log lines about `request_id` (its error, with the traceback), else the last `n` lines."
    lines = server.log.read_text().splitlines()
    mine = [l for l in lines if request_id and request_id in l]
    return "\n".join(mine or lines[-n:])


def check(case, response, server, phase):
    "Our contract for one response, then schemathesis' response checks."
    mode = case.meta.generation.mode.value if case.meta else "?"
    STATS[(phase, mode, case.operation.label, case.method.upper(), response.status_code)] += 1
    req = response.request
    where = (f"{phase}/{mode}: {req.method} {req.url}\nrequest headers: "
             f"{dict(req.headers)}\nrequest body: {req.body!r:.2000}\n"
             f"response: {response.status_code} {dict(response.headers)}\n{response.text[:2000]}\n"
             f"reproduce: {case.as_curl_command()}\n"
             f"server log:\n{server_log_tail(server, 10, (response.headers.get('x-request-id') or [None])[0])}")
    assert response.status_code < 500, f"server error\n{where}"
    if response.status_code >= 400:
        ctype = (response.headers.get("content-type") or [""])[0]
        assert ctype.startswith("application/json"), f"error response is not JSON\n{where}"
        try: body = json.loads(response.content)
        except ValueError: pytest.fail(f"error response is not valid JSON\n{where}")
        assert isinstance(body, dict) and isinstance(body.get("error"),
                                                     str), f'error response without an "error"\n{where}'
    case.validate_response(response)


def assert_alive(server):
    assert server.proc.poll() is None, f"server exited with {server.proc.returncode}:\n{server_log_tail(server)}"
    assert server.get("/ready") == (200, {"ready": True})
    log = server.log.read_text()
    assert '"event": "error"' not in log and "Traceback" not in log, server_log_tail(server, 60)


def test_coverage_phase(api_schema, fuzz_server, session):
    "schemathesis' deterministic coverage cases, valid and invalid, for every operation."
    n = 0
    for op in operations(api_schema):
        for case in api_schema.iter_coverage_cases(op, generation_modes=list(GenerationMode),
                                                   generation_config=api_schema.config.generation_for(operation=op)):
            check(case, case.call(session=session, timeout=30), fuzz_server, "coverage")
            n += 1
    assert n >= 100  # every operation, both modes: a few hundred cases
    assert_alive(fuzz_server)


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_fuzzing_phase(api_schema, fuzz_server, session, mode):
    "Hypothesis-generated cases (seeded: derandomized) for every operation that has inputs to generate."
    ops = [op for op in operations(api_schema) if mode.is_positive or takes_input(op)]
    assert any(op.label == "POST /score" for op in ops)
    for op in ops:
        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=SCORE_EXAMPLES if op.label == "POST /score" else OTHER_EXAMPLES, deadline=None,
                  derandomize=True, database=None, suppress_health_check=list(HealthCheck))
        def fuzz(case):
            check(case, case.call(session=session, timeout=30), fuzz_server, "fuzzing")
        fuzz()
    assert sum(v for (ph, m, label, *_), v in STATS.items()
               if (ph, m, label) == ("fuzzing", mode.value, "POST /score")) >= 50
    assert_alive(fuzz_server)


def test_server_survived(fuzz_server):
    "After everything above: still alive, still ready, still scoring, nothing logged as an internal error."
    assert_alive(fuzz_server)
    assert fuzz_server.score(GOOD)[0] == 200
    by = collections.Counter()
    for (phase, mode, label, method, status), v in sorted(STATS.items()):
        by[(phase, mode)] += v
        print(f"{phase:9} {mode:9} {label:13} {method:7} {status}: {v}")
    print(f"{sum(STATS.values())} requests:", dict(by))
