"""The router's HTTP API fuzzed without Ray: every operation of its OpenAPI schema
(schemathesis, valid and invalid data) and hypothesis-made V2 and feedback bodies, through
the same routes over a core with fakes. Every answer must be below 500."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from fastapi.testclient import TestClient

from serve_ab.serving import http as routes
from tests.support.fuzz import fuzz_openapi
from tests.unit.serving.test_http import ROW, make_app

schemathesis = pytest.importorskip("schemathesis")

EXAMPLES_PER_MODE = 200  # per operation and mode, at most: over 2,000 requests in all


@pytest.fixture
def client():
    make_app("colocated")
    with TestClient(routes.api, raise_server_exceptions=False) as client:
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
