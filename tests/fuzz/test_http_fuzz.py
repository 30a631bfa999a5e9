"""The router's HTTP API fuzzed without Ray: every operation of its OpenAPI schema
(schemathesis, valid and invalid data) and hypothesis-made V2 and feedback bodies, through
the same routes over a core with fakes. Every answer must be below 500."""

from __future__ import annotations

import json
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from fastapi.testclient import TestClient

from serve_ab.serving import http as routes
from tests.support.fuzz import fuzz_openapi
from tests.unit.serving.test_http import ROW, make_app

schemathesis = pytest.importorskip("schemathesis")

EXAMPLES_PER_MODE = 200  # per operation and mode, at most: over 2,000 requests in all
STATEFUL_EXAMPLES = 150  # sequences of up to 6 linked calls


@pytest.fixture
def client():
    make_app("colocated")
    with TestClient(routes.app, raise_server_exceptions=False) as client:
        yield client
    routes.use_core(None)


def test_every_operation_fuzzed_from_the_openapi_schema_gives_no_5xx(client):
    def send(case):
        kwargs = case.as_transport_kwargs(base_url="")
        return client.request(kwargs["method"], kwargs["url"], **{
            k: v for k, v in kwargs.items() if k in ("headers", "params", "json", "content", "data", "cookies")})

    calls, server_errors = fuzz_openapi(client.get("/openapi.json").json(), send, EXAMPLES_PER_MODE)
    print(f"\nschemathesis {schemathesis.__version__}: {calls} requests, {len(server_errors)} server errors")
    assert calls >= 2000
    assert not server_errors, "\n".join(server_errors[:10])
    assert client.post("/predict", json={"inputs": [ROW]}).status_code == 200


def test_stateful_sequences_following_the_openapi_links_give_no_5xx(client):
    """Schemathesis' state machine over the schema's links: a prediction's request id and
    feedback token fed to POST /feedback, V2 metadata to inference, inference to a pinned
    version; interleaved with random calls. (Replays are the controller's to refuse: the
    controller tests check that; here the controller is a fake.)"""
    schema = schemathesis.openapi.from_asgi("/openapi.json", routes.app)
    seen = {"calls": 0, "feedback_202": 0}
    server_errors: list[str] = []

    class Workflow(schema.as_state_machine()):
        def before_call(self, case):
            # Realistic data for about half the predictions (schemathesis' "inject realistic
            # test data"): a random body is almost never a 64-pixel row, and only an answer
            # carries the request id and token the link to /feedback passes on. Chosen from the
            # generated body itself, so hypothesis replays it alike.
            if case.operation.path == "/predict":
                digest = zlib.crc32(json.dumps(case.body, sort_keys=True, default=repr).encode())
                if digest % 2:
                    case.body = {"inputs": [ROW], "user_id": f"user-{digest % 1000}"}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            # The bar here is "no 5xx, ever"; conformance of every 4xx body is not asserted.
            seen["calls"] += 1
            if case.operation.path == "/feedback":
                seen[f"feedback_{response.status_code}"] = seen.get(f"feedback_{response.status_code}", 0) + 1
            if response.status_code >= 500:
                server_errors.append(f"{case.operation.label} -> {response.status_code} {response.text[:200]}")

    Workflow.run(settings=settings(max_examples=STATEFUL_EXAMPLES, stateful_step_count=6, deadline=None,
                                   database=None, derandomize=True, suppress_health_check=list(HealthCheck)))
    print(f"\nstateful: {seen['calls']} requests; feedback answered {dict((k, v) for k, v in seen.items() if k.startswith('feedback'))}")
    assert not server_errors, "\n".join(server_errors[:10])
    # The link was followed: answers' own request ids and tokens made feedback that counts.
    assert seen["feedback_202"] > 0, seen
    assert seen["calls"] >= 500


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
NUMBERS = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=False), st.sampled_from([1e39, -1e39, 0.5]))
TENSOR = st.fixed_dictionaries({
    "name": st.sampled_from(["input", "pixels", ""]),
    "shape": st.lists(st.integers(-2, 70), max_size=3),
    "datatype": st.sampled_from(["FP32", "FP64", "INT32", "BOOL", "BYTES", "FLOAT"]),
    "data": st.lists(NUMBERS | JSON, max_size=70),
}, optional={"parameters": JSON})
V2_BODY = st.fixed_dictionaries({}, optional={
    "id": st.text(max_size=30) | JSON, "parameters": st.dictionaries(st.sampled_from(["user_id", "x"]), JSON),
    "inputs": st.lists(TENSOR | JSON, max_size=3), "outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=8)}) | JSON, max_size=2),
})
FEEDBACK_BODY = st.fixed_dictionaries({}, optional={
    "request_id": st.text(max_size=150) | JSON, "feedback_token": st.text(max_size=300) | JSON,
    "name": st.sampled_from(["correct", "revenue", ""]) | st.text(max_size=70),
    "value": NUMBERS | JSON, "converted": st.booleans() | JSON,
})


@settings(max_examples=400, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(body=V2_BODY)
def test_v2_bodies_give_no_5xx(client, body):
    response = client.post("/v2/models/digits/infer", content=json.dumps(body))
    assert response.status_code < 500, (body, response.text)


@settings(max_examples=400, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(body=FEEDBACK_BODY)
def test_feedback_bodies_give_no_5xx(client, body):
    response = client.post("/feedback", content=json.dumps(body))
    assert response.status_code < 500, (body, response.text)
