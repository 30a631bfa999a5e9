"""The router's HTTP routes through FastAPI's TestClient over a core with fakes: no Ray."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from serve_ab.config import parse_experiment
from serve_ab.serving import http as routes
from serve_ab.serving.core.auth import ControlAuth
from serve_ab.serving.core.messages import Action
from serve_ab.serving.core.router import RouterCore
from tests.support.bad_input import BAD_PREDICT, BAD_V2, v2_body
from tests.support.fakes import DIGITS_INPUT, DIGITS_OUTPUT, FakeController, FakeVersion

ROW = [0.0] * 64
TOKEN = "unit-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(params=["colocated", "isolated"])
def app(request):
    """The routes over a core whose versions are fakes. Colocated, the interface is known at
    load; isolated, the core asks the versions for it (``describe``) on first use."""
    cfg = parse_experiment({
        "model": "digits",
        "versions": [{"name": "v1", "path": "a.onnx", "backend": "onnx"},
                     {"name": "v2", "path": "b.pt2", "backend": "torch"}],
        "weights": {"v1": 50, "v2": 50},
        "assignment": {"key": "json", "field": "user_id", "salt": "unit"},
        "http": {"max_body_bytes": 8192},
    })
    controller = FakeController()
    interface = (DIGITS_INPUT, DIGITS_OUTPUT) if request.param == "colocated" else None
    core = RouterCore(cfg, {"v1": FakeVersion(1), "v2": FakeVersion(2)}, controller,
                      request_id=lambda: "req-1", interface=interface)
    routes.use_core(routes.Served(core, ControlAuth(cfg.control, TOKEN)))
    try:
        with TestClient(routes.api, raise_server_exceptions=False) as client:
            yield client, controller
    finally:
        routes.use_core(None)


def test_predict_names_the_version_in_body_and_header(app):
    client, _ = app
    response = client.post("/predict", json={"inputs": [ROW], "user_id": "alice"})
    assert response.status_code == 200
    body = response.json()
    assert body["version"] == response.headers["x-model-version"] and body["request_id"] == "req-1"
    assert len(body["outputs"][0]) == 10


@pytest.mark.parametrize("case, raw, status, message", BAD_PREDICT, ids=[c[0] for c in BAD_PREDICT])
def test_bad_predict_input(app, case, raw, status, message):
    client, _ = app
    response = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize("case, body, message", BAD_V2, ids=[c[0] for c in BAD_V2])
def test_bad_v2_input(app, case, body, message):
    client, _ = app
    response = client.post("/v2/models/digits/infer", json=body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_unknown_model_and_version_are_404(app):
    client, _ = app
    for response in (
        client.post("/v2/models/cats/infer", json=v2_body([ROW])),
        client.get("/v2/models/cats"),
        client.get("/v2/models/cats/ready"),
        client.post("/v2/models/digits/versions/v7/infer", json=v2_body([ROW])),
        client.get("/v2/models/digits/versions/v7"),
        client.post("/predict", json={"inputs": [ROW]}, headers={"x-serve-ab-version": "v7"}),
    ):
        assert response.status_code == 404, response.text
        assert "unknown" in response.json()["error"]


def test_v2_routes(app):
    client, _ = app
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2/models/digits").json()
    assert meta["versions"] == ["v1", "v2"] and meta["inputs"][0]["shape"] == [-1, 64]
    assert client.get("/v2/models/digits/versions/v2").json()["platform"] == "pytorch_torchexport"
    assert client.get("/v2/models/other").status_code == 404
    assert client.get("/v2/models/digits/versions/v9").status_code == 404
    tensor = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW}
    response = client.post("/v2/models/digits/versions/v2/infer", json={"id": "x", "inputs": [tensor]})
    assert response.status_code == 200 and response.json()["model_version"] == "v2"
    assert response.json()["id"] == "x" and response.json()["outputs"][0]["shape"] == [1, 10]
    # A wrong model is a 404 whatever the body.
    assert client.post("/v2/models/other/infer", content=b"junk").status_code == 404


def test_control_needs_the_token_and_a_strict_body(app):
    client, controller = app
    assert client.post("/rollout/promote").status_code == 401
    assert client.post("/rollout/promote", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/rollout/explode", headers=AUTH).status_code == 404
    # A string is not a boolean: {"full": "false"} must not promote to 100%.
    response = client.post("/rollout/promote", headers=AUTH, json={"full": "false"})
    assert response.status_code == 400 and "full" in response.json()["error"]
    assert client.post("/rollout/weights", headers=AUTH, json={}).status_code == 400
    assert client.post("/rollout/weights", headers=AUTH, json={"weights": {"v1": None}}).status_code == 400
    assert client.post("/rollout/promote", headers=AUTH, json={"full": True}).status_code == 200
    assert client.post("/rollout/weights", headers=AUTH, json={"weights": {"v1": 80, "v2": 20}}).status_code == 200
    assert [(a, b.full, b.weights) for a, b in controller.actions] == [
        (Action.PROMOTE, True, None), (Action.WEIGHTS, False, {"v1": 80.0, "v2": 20.0})]


def test_figures_and_openapi(app):
    client, _ = app
    assert client.get("/experiment/report").json() == {"schema": 1}
    assert client.get("/metrics").text.startswith("# no metrics")
    assert client.get("/experiment").json()["weights_pct"] == {"v1": 50.0, "v2": 50.0}
    schema = client.get("/openapi.json").json()
    assert {"PredictRequest", "V2InferRequest", "V2Tensor", "FeedbackRequest", "ActionRequest"} \
        <= set(schema["components"]["schemas"])
    assert "/v2/models/{model}/infer" in schema["paths"]
