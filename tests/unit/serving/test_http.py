"""The router's HTTP routes through FastAPI's TestClient over a core with fakes: no Ray."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serve_ab.config import parse_experiment
from serve_ab.errors import Forbidden
from serve_ab.serving import http as routes
from serve_ab.serving.core.auth import ControlAuth, NamedToken, Role, load_tokens
from serve_ab.serving.core.messages import Action
from serve_ab.serving.core.router import RouterCore
from tests.support.bad_input import BAD_PREDICT, BAD_V2, v2_body
from tests.support.fakes import DIGITS_INPUT, DIGITS_OUTPUT, FakeClock, FakeController, FakeVersion

ROW = [0.0] * 64
TOKEN = "unit-operator-token"
QA_TOKEN = "unit-qa-token-0123"
VIEWER_TOKEN = "unit-viewer-token-01"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def make_app(placement: str, **changes):
    cfg = parse_experiment({
        "model": "digits",
        "versions": [{"name": "v1", "path": "a.onnx", "backend": "onnx"},
                     {"name": "v2", "path": "b.pt2", "backend": "torch"}],
        "weights": {"v1": 50, "v2": 50},
        "assignment": {"key": "json", "field": "user_id", "salt": "unit"},
        "http": {"max_body_bytes": 8192},
        "analysis": {"metrics": [{"name": "correct", "kind": "conversion"}]},
        "feedback": {"token_ttl_s": 60},
        "pin": {"enabled": True},
        **changes,
    })
    controller = FakeController()
    interface = (DIGITS_INPUT, DIGITS_OUTPUT) if placement == "colocated" else None
    clock = FakeClock()
    core = RouterCore(cfg, {"v1": FakeVersion(1), "v2": FakeVersion(2)}, controller,
                      request_id=lambda: "req-1", interface=interface, clock=clock)
    core.use_feedback_key(b"unit-test-feedback-key-32-bytes!")
    controller.clock = clock
    tokens = [NamedToken("operator", Role.OPERATOR, TOKEN), NamedToken("alice-qa", Role.QA, QA_TOKEN),
              NamedToken("dashboards", Role.VIEWER, VIEWER_TOKEN)]
    routes.use_core(routes.Served(core, ControlAuth(cfg.control, tokens)))
    return controller


@pytest.fixture(params=["colocated", "isolated"])
def app(request):
    """The routes over a core whose versions are fakes. Colocated, the interface is known at
    load; isolated, the core asks the versions for it (``describe``) on first use."""
    controller = make_app(request.param)
    try:
        with TestClient(routes.app, raise_server_exceptions=False) as client:
            yield client, controller
    finally:
        routes.use_core(None)


@pytest.fixture
def client_for():
    """A client over an app made with config changes, e.g. client_for(pin={"enabled": False})."""
    def make(**changes):
        make_app("colocated", **changes)
        return TestClient(routes.app, raise_server_exceptions=False)
    yield make
    routes.use_core(None)


def test_predict_names_the_version_in_body_and_header(app):
    client, _ = app
    response = client.post("/predict", json={"inputs": [ROW], "user_id": "alice"})
    assert response.status_code == 200
    body = response.json()
    assert body["version"] == response.headers["x-model-version"] and body["request_id"] == "req-1"
    assert len(body["outputs"][0]) == 10


@pytest.mark.parametrize("encoding, compress", [
    ("gzip", gzip.compress), ("deflate", zlib.compress), ("GZip ", gzip.compress), ("identity", bytes)])
def test_a_compressed_body_is_decoded(app, encoding, compress):
    client, _ = app
    raw = json.dumps({"inputs": [ROW], "user_id": "alice"}).encode()
    plain = client.post("/predict", content=raw).json()
    response = client.post("/predict", content=compress(raw), headers={"content-encoding": encoding})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"] == plain["outputs"]


@pytest.mark.parametrize("encoding, body, status, message", [
    ("br", b"{}", 415, "content-encoding is 'br'; this server decodes request bodies in ['gzip', 'deflate'"),
    ("gzip, deflate", b"{}", 415, "one at a time"),
    ("gzip", b"{not gzip}", 400, "not valid gzip data"),
    ("gzip", gzip.compress(b'{"inputs": []}')[:-12], 400, "cut short"),
    ("gzip", gzip.compress(b'{"inputs": []}') + b"garbage", 400, "not valid gzip data after 34 bytes of valid data"),
    ("gzip", b"", 400, "request body is empty, but content-encoding says gzip"),
    # 8 KiB is the app's http.max_body_bytes: 60 KB of zeros compresses to ~100 bytes.
    ("gzip", gzip.compress(b'{"inputs": [[' + b"0," * 30_000 + b"0]]}"), 413, "decompresses to more than 8192"),
    # Each member copies the rest of the body: 50,000 empty ones held the loop 0.7 s.
    ("gzip", gzip.compress(b"") * 65, 400, "request body has more than 64 gzip members one after another"),
])
def test_a_body_that_cannot_be_decoded_is_a_4xx_naming_why(app, encoding, body, status, message):
    client, _ = app
    response = client.post("/predict", content=body, headers={"content-encoding": encoding})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_a_gzip_body_of_several_members_is_decoded_whole(app):
    # RFC 1952: members one after another; gzip.decompress reads them all, and so must the route.
    client, _ = app
    raw = json.dumps({"inputs": [ROW], "user_id": "alice"}).encode()
    plain = client.post("/predict", content=raw).json()
    for count in (2, 64):  # 64: as many as a body may hold
        cuts = [len(raw) * i // count for i in range(count + 1)]
        members = b"".join(gzip.compress(raw[a:b]) for a, b in zip(cuts, cuts[1:]))
        response = client.post("/predict", content=members, headers={"content-encoding": "gzip"})
        assert response.status_code == 200, response.text
        assert response.json()["outputs"] == plain["outputs"]


def test_predict_takes_a_one_input_models_input_by_name(app):
    client, _ = app
    bare = client.post("/predict", json={"inputs": [ROW], "user_id": "alice"}).json()
    named = client.post("/predict", json={"inputs": {"input": [ROW]}, "user_id": "alice"}).json()
    assert (named["version"], named["outputs"]) == (bare["version"], bare["outputs"])


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


@pytest.mark.parametrize("path, body, status, message", [
    ("/v2/models/digits/infer", {"id": 5, "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                                     "data": ROW}]}, 400, "id: Input should be a valid string (got 5)"),
    ("/v2/models/digits/infer", {"inputs": [{"name": 7, "datatype": "FP32", "shape": [1, 64], "data": ROW}]}, 400,
     "inputs.0.name: Input should be a valid string (got 7)"),
    ("/feedback", {"request_id": 5, "feedback_token": "t", "name": "correct", "converted": True}, 400,
     "request_id: Input should be a valid string (got 5)"),
    ("/feedback", {"request_id": "r", "feedback_token": True, "name": "correct", "converted": True}, 400,
     "feedback_token: Input should be a valid string (got True)"),
    ("/feedback", {"request_id": "r", "feedback_token": "t", "name": "correct", "value": "1e2"}, 400,
     "value: Input should be a valid number (got '1e2')"),
    ("/rollout/pause", {"reason": 5}, 422, "reason: Input should be a valid string (got 5)"),
])
def test_a_json_body_of_the_wrong_type_is_told_so_without_yaml_advice(app, path, body, status, message):
    """A JSON client that sent 5 sent a number: the 4xx names the field and the value, with
    none of the config files' hints ("YAML reads that unquoted value as the number 5 ...
    quote it"), which a tritonclient or curl user cannot act on."""
    client, _ = app
    response = client.post(path, json=body, headers=AUTH)
    assert response.status_code == status, response.text
    assert response.json() == {"error": message}


def test_kserve_clients_bodies_naming_the_model_are_served(app):
    """KServe's Python client (kserve.InferenceRESTClient, InferRequest.to_rest) puts
    ``model_name`` in every V2 body, JSON or binary; KServe's server reads past it. Refused as
    an unknown key, no KServe client could call serve-ab. It is served, and must name the
    model of the path: a body for another model is a 400 naming both."""
    client, _ = app
    plain = client.post("/v2/models/digits/infer", json=v2_body([ROW], parameters={"user_id": "kim"}))
    # As kserve 0.21 sends it: id, model_name, inputs, parameters.
    kserve = {"id": "0b6f0c1e-5f0e-4a43-9d1c-2f3e4a5b6c7d", "model_name": "digits",
              **v2_body([ROW], parameters={"user_id": "kim"})}
    response = client.post("/v2/models/digits/infer", json=kserve)
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == plain.json()["model_version"]
    assert response.json()["outputs"] == plain.json()["outputs"]
    assert response.json()["id"] == kserve["id"]

    # Its binary form: the JSON (model_name included), then the raw tensor bytes.
    header = json.dumps({"id": "k-2", "model_name": "digits", "parameters": {"user_id": "kim"},
                         "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 256}}]}).encode()
    binary = client.post("/v2/models/digits/infer", content=header + np.asarray([ROW], dtype=np.float32).tobytes(),
                         headers={"inference-header-content-length": str(len(header)),
                                  "content-type": "application/octet-stream"})
    assert binary.status_code == 200, binary.text
    assert binary.json()["outputs"] == plain.json()["outputs"]

    other = client.post("/v2/models/digits/infer", json={**kserve, "model_name": "cats"})
    assert other.status_code == 400, other.text
    assert other.json() == {"error": "the body's model_name 'cats' is not the model in the path, 'digits'; "
                                     "send the path's model name, or none"}
    twice = json.dumps(kserve).replace('"model_name": "digits"', '"model_name": "cats", "model_name": "digits"')
    refused = client.post("/v2/models/digits/infer", content=twice, headers={"content-type": "application/json"})
    assert refused.status_code == 400 and 'duplicate key "model_name"' in refused.json()["error"], refused.text
    wrong_type = client.post("/v2/models/digits/infer", json={**kserve, "model_name": 5})
    assert wrong_type.status_code == 400
    assert wrong_type.json() == {"error": "model_name: Input should be a valid string (got 5)"}


def test_unknown_model_and_version_are_404(app):
    client, _ = app
    for response in (
        client.post("/v2/models/cats/infer", json=v2_body([ROW])),
        client.get("/v2/models/cats"),
        client.get("/v2/models/cats/ready"),
        client.post("/v2/models/digits/versions/v7/infer", json=v2_body([ROW])),
        client.get("/v2/models/digits/versions/v7"),
        client.post("/predict", json={"inputs": [ROW]}, headers={"x-serve-ab-version": "v7", **AUTH}),
    ):
        assert response.status_code == 404, response.text
        assert "unknown" in response.json()["error"]


def test_an_error_quoting_a_huge_client_string_cuts_it(app):
    """A 60-KB version header or model name is named in the 404, cut to 4,096 characters and
    how many more, not echoed whole in every answer to it."""
    client, _ = app
    huge = "v" * 60_000
    for response in (
        client.get(f"/v2/models/{huge}/ready"),
        client.get(f"/v2/models/digits/versions/{huge}"),
        client.post("/predict", json={"inputs": [ROW]}, headers={"x-serve-ab-version": huge, **AUTH}),
        client.get(f"/no-such-route/{huge}"),
    ):
        assert response.status_code == 404, response.text[:300]
        error = response.json()["error"]
        assert len(error) < 4200 and error.endswith("more characters cut)"), error[-200:]


def test_v2_routes(app):
    client, _ = app
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    # Probes that send HEAD (405 before the audit of 2026-12-04).
    assert [client.head(f"/v2/health/{probe}").status_code for probe in ("live", "ready")] == [200, 200]
    meta = client.get("/v2/models/digits").json()
    assert meta["versions"] == ["v1", "v2"] and meta["inputs"][0]["shape"] == [-1, 64]
    assert client.get("/v2/models/digits/versions/v2").json()["platform"] == "pytorch_torchexport"
    assert client.get("/v2/models/other").status_code == 404
    assert client.get("/v2/models/digits/versions/v9").status_code == 404
    tensor = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW}
    response = client.post("/v2/models/digits/versions/v2/infer", json={"id": "x", "inputs": [tensor]},
                           headers={"authorization": f"Bearer {QA_TOKEN}"})
    assert response.status_code == 200 and response.json()["model_version"] == "v2"
    assert response.json()["id"] == "x" and response.json()["outputs"][0]["shape"] == [1, 10]
    # A wrong model is a 404 whatever the body.
    assert client.post("/v2/models/other/infer", content=b"junk").status_code == 404


def test_control_needs_the_token_and_a_strict_body(app):
    client, controller = app
    for response in (client.post("/rollout/promote"),
                     client.post("/rollout/promote", headers={"authorization": "Bearer wrong"})):
        # RFC 9110: a 401 says how to authenticate.
        assert response.status_code == 401 and response.headers["www-authenticate"] == 'Bearer realm="serve-ab"'
    assert client.post("/rollout/explode", headers=AUTH).status_code == 404
    # A string is not a boolean: {"full": "false"} must not promote to 100%.
    response = client.post("/rollout/promote", headers=AUTH, json={"full": "false"})
    assert response.status_code == 422 and "full" in response.json()["error"]
    # A body without content-length (chunked) is read too: its precondition is not lost.
    chunked = client.post("/rollout/promote", headers=AUTH, content=iter([b'{"from_step": ', b"2}"]))
    assert chunked.status_code == 200 and controller.actions[-1][1].from_step == 2
    controller.actions.clear()
    assert client.post("/rollout/weights", headers=AUTH, json={"weights": {"v1": None}}).status_code == 422
    assert client.post("/rollout/promote", headers=AUTH, json={"full": True}).status_code == 200
    assert client.post("/rollout/weights", headers=AUTH, json={"weights": {"v1": 80, "v2": 20}}).status_code == 200
    assert [(a, b.full, b.weights) for a, b in controller.actions] == [
        (Action.PROMOTE, True, None), (Action.WEIGHTS, False, {"v1": 80.0, "v2": 20.0})]


def test_an_app_with_no_token_refuses_every_action_and_pin_whatever_is_sent():
    """No token configured is closed, not open (README, Security): every action and every pin
    is a 401 naming the variable to set, whatever bearer is sent; reads stay open, or closed
    too with protect_reads. Nothing reaches the controller."""
    for protect_reads in (False, True):
        make_app("colocated", control={"protect_reads": protect_reads})
        served = routes.served()
        routes.use_core(routes.Served(served.core, ControlAuth(served.core.cfg.control, [])))
        controller = served.core.controller
        try:
            client = TestClient(routes.app, raise_server_exceptions=False)
            for action in [a.value for a in Action]:
                for headers in ({}, AUTH, {"authorization": "Bearer "}, {"authorization": "bearer anything-at-all-here"}):
                    response = client.post(f"/rollout/{action}", headers=headers, json={})
                    assert response.status_code == 401, (action, headers, response.text)
                    assert "control actions is disabled" in response.json()["error"]
                    assert "SERVE_AB_CONTROL_TOKEN" in response.json()["error"]
            pinned = client.post("/predict", json={"inputs": [ROW], "user_id": "a"},
                                 headers={"x-serve-ab-version": "v2", **AUTH})
            assert pinned.status_code == 401 and "pinning a version is disabled" in pinned.json()["error"]
            assert client.post("/v2/models/digits/versions/v2/infer", headers=AUTH).status_code == 401
            assert client.get("/rollout/status", headers=AUTH).status_code == (401 if protect_reads else 200)
            assert controller.actions == []
        finally:
            routes.use_core(None)


def test_figures_and_openapi(app):
    client, _ = app
    assert client.get("/experiment/report").json() == {"schema": 1}
    assert client.get("/metrics").text.startswith("# no metrics")
    assert client.get("/experiment").json()["weights_pct"] == {"v1": 50.0, "v2": 50.0}
    schema = client.get("/openapi.json").json()
    assert {"PredictRequest", "V2InferRequest", "V2Tensor", "FeedbackRequest", "ActionRequest"} \
        <= set(schema["components"]["schemas"])
    assert "/v2/models/{model}/infer" in schema["paths"]


def test_feedback_needs_the_token_of_the_answer(app):
    client, controller = app
    answer = client.post("/predict", json={"inputs": [ROW], "user_id": "alice"})
    body = answer.json()
    assert answer.headers["x-feedback-token"] == body["feedback_token"]
    feedback = {"request_id": body["request_id"], "feedback_token": body["feedback_token"],
                "name": "correct", "converted": True}
    assert client.post("/feedback", json=feedback).status_code == 202
    answer_id, *rest = controller.feedbacks[-1]
    assert answer_id.startswith(body["request_id"] + "#") and rest == ["correct", None, True, body["version"]]
    # No token, a token of another request, a tampered one, an undeclared metric.
    without = {k: v for k, v in feedback.items() if k != "feedback_token"}
    assert client.post("/feedback", json=without).status_code == 401
    assert client.post("/feedback", json=feedback | {"request_id": "made-up"}).status_code == 403
    other = "v1" if body["version"] == "v2" else "v2"
    forged = feedback | {"feedback_token": other + body["feedback_token"][len(body["version"]):]}
    assert client.post("/feedback", json=forged).status_code == 403
    response = client.post("/feedback", json=feedback | {"name": "made_up_metric"})
    assert response.status_code == 400 and "'correct'" in response.json()["error"]
    response = client.post("/feedback", json=without | {"feedback_tokn": body["feedback_token"]})
    assert response.status_code == 400 and "did you mean 'feedback_token'?" in response.json()["error"]
    # Any id length a header can carry is an id (Ray Serve keeps a client's x-request-id); one
    # that is not this answer's is refused by its token.
    assert client.post("/feedback", json=feedback | {"request_id": "x" * 200}).status_code == 403
    assert client.post("/feedback", json=feedback | {"request_id": ""}).status_code == 400
    assert len(controller.feedbacks) == 1
    # Expired: the fake clock moves past the token's lifetime.
    controller.clock.advance(61)
    response = client.post("/feedback", json=feedback)
    assert response.status_code == 403 and "expired" in response.json()["error"]


def test_a_handle_caller_reports_feedback_by_the_same_rules_without_http(app):
    """``Router.feedback``: a service that calls through a DeploymentHandle gets a
    feedback_token in each answer; it reports the outcome through the handle too, with the
    typed errors of serve_ab.errors where HTTP would answer 4xx."""
    import asyncio

    from serve_ab.errors import Forbidden, InvalidInput, Unauthorized

    client, controller = app
    core = routes.served().core
    body = client.post("/predict", json={"inputs": [ROW], "user_id": "alice"}).json()

    def feedback(**given):
        args = {"request_id": body["request_id"], "name": "correct", "feedback_token": body["feedback_token"],
                "converted": np.bool_(True)} | given  # a numpy comparison's answer, as callers compute it
        return asyncio.run(routes.feedback_from_handle(core, **args))

    assert feedback() == {"request_id": body["request_id"], "version": body["version"]}
    answer_id, *rest = controller.feedbacks[-1]
    assert answer_id.startswith(body["request_id"] + "#") and rest == ["correct", None, True, body["version"]]
    with pytest.raises(Unauthorized, match="feedback_token"):
        feedback(feedback_token=None)
    with pytest.raises(Forbidden):
        feedback(request_id="made-up")
    with pytest.raises(InvalidInput, match="unknown feedback name 'revenue'.*'correct'"):
        feedback(name="revenue")
    with pytest.raises(InvalidInput, match="is a conversion"):
        feedback(converted=None, value=1.0)
    with pytest.raises(InvalidInput, match="converted"):
        feedback(converted="yes")
    assert len(controller.feedbacks) == 1


def test_a_handle_callers_numpy_values_are_read_as_the_python_values_they_hold(client_for):
    """A 0-d array (np.asarray of one outcome) as a scalar: a boolean one is no number (pydantic
    read np.array(True) through float() and counted it as the value 1.0), a numeric one is."""
    import asyncio

    from serve_ab.errors import InvalidInput

    client = client_for(analysis={"metrics": [{"name": "correct", "kind": "conversion"},
                                              {"name": "revenue", "kind": "mean"}]})
    core = routes.served().core
    controller = core.controller
    body = client.post("/predict", json={"inputs": [ROW], "user_id": "alice"}).json()

    def feedback(name, **outcome):
        return asyncio.run(routes.feedback_from_handle(core, body["request_id"], name,
                                                       feedback_token=body["feedback_token"], **outcome))

    for boolean in (np.array(True), np.bool_(True)):
        with pytest.raises(InvalidInput, match="value: Input should be a valid number"):
            feedback("revenue", value=boolean)
    assert controller.feedbacks == []
    assert feedback("revenue", value=np.array(12.5))["version"] == body["version"]
    assert feedback("correct", converted=np.array(True))["version"] == body["version"]
    assert [tuple(f[1:4]) for f in controller.feedbacks] == [("revenue", 12.5, None), ("correct", None, True)]
    assert all(type(f[2]) is float for f in controller.feedbacks[:1]) and type(controller.feedbacks[1][3]) is bool

def test_feedback_tells_the_controller_when_its_answer_was_given(app):
    """So that the controller can refuse feedback on answers older than the reports it still
    remembers, whose repeat it could no longer tell from a first report: once the controller said,
    in a report's answer, that it takes the time (one of the previous release would fail the call)."""
    client, controller = app
    ledger = routes.served().core.ledger
    ledger.heard = ledger.checks_answer_age = True  # as a report answer with it sets
    body = client.post("/predict", json={"inputs": [ROW], "user_id": "alice"}).json()
    controller.clock.advance(30)
    response = client.post("/feedback", json={"request_id": body["request_id"], "feedback_token": body["feedback_token"],
                                              "name": "correct", "converted": True})
    assert response.status_code == 202
    expires_at_s = int(body["feedback_token"].split(".")[1])
    assert controller.feedback_answered_after_s == [expires_at_s - 60 - 1]  # feedback.token_ttl_s: 60


def test_feedback_on_an_answer_of_an_earlier_run_is_accepted_and_not_counted(app):
    """The controller answers NotCounted (the answer came before its run started, under a config
    since changed): the client gets 202 and ``counted: false`` with the reason, as for a pinned
    answer, and the router keeps nothing to send a restarted controller, which would take it
    unchecked. A router of the previous release is not sent a NotCounted, which it could not read."""
    client, controller = app
    core = routes.served().core
    core.ledger.heard = core.ledger.checks_answer_age = core.ledger.answers_not_counted = True  # a report answer sets
    body = client.post("/predict", json={"inputs": [ROW], "user_id": "alice"}).json()
    controller.not_counted_reason = "the answer was given before run digits-1 started"
    feedback = {"request_id": body["request_id"], "feedback_token": body["feedback_token"],
                "name": "correct", "converted": True}
    response = client.post("/feedback", json=feedback)
    assert response.status_code == 202
    assert response.json() == {"request_id": body["request_id"], "version": body["version"], "counted": False,
                               "reason": "the answer was given before run digits-1 started"}
    assert core.ledger.kept() == (0, 0)
    handled = asyncio.run(routes.feedback_from_handle(core, body["request_id"], "correct",
                                                      feedback_token=body["feedback_token"], converted=True))
    assert handled == response.json()
    # A controller that did not say it answers NotCounted (the previous release) is not asked to.
    core.ledger.answers_not_counted = False
    response = client.post("/feedback", json=feedback)
    assert response.status_code == 403 and "before run digits-1 started" in response.json()["error"]


def test_feedback_of_the_wrong_kind_or_size_is_refused_and_leaves_nothing_counted(client_for):
    """A value for a conversion, converted for a mean, a value whose square overflows the
    variance's sums, or a number sent as text: a 400 naming the problem, nothing counted, and
    the right report is still taken afterwards."""
    client = client_for(analysis={"metrics": [{"name": "correct", "kind": "conversion"},
                                              {"name": "revenue", "kind": "mean"}]})
    controller = routes.served().core.controller
    body = client.post("/predict", json={"inputs": [ROW], "user_id": "alice"}).json()
    proof = {"request_id": body["request_id"], "feedback_token": body["feedback_token"]}
    refusals = [
        ({"name": "correct", "value": 1.0}, "is a conversion"),
        ({"name": "revenue", "converted": True}, "is a mean"),
        ({"name": "revenue", "value": 1e308}, "within ±1e+15"),
        ({"name": "revenue", "value": "12"}, "valid number"),
        ({"name": "correct", "converted": 1}, "valid boolean"),
        ({"converted": True}, "name is missing"),
    ]
    for fields, says in refusals:
        response = client.post("/feedback", json=proof | fields)
        assert response.status_code == 400 and says in response.json()["error"], (fields, response.text)
    assert controller.feedbacks == []
    assert client.post("/feedback", json=proof | {"name": "revenue", "value": 12.5}).status_code == 202
    assert client.post("/feedback", json=proof | {"name": "correct", "converted": True}).status_code == 202
    assert [f[1:3] for f in controller.feedbacks] == [("revenue", 12.5), ("correct", None)]


def test_v2_answers_carry_a_feedback_token(app):
    client, _ = app
    tensor = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW}
    response = client.post("/v2/models/digits/infer", json={"id": "mine", "inputs": [tensor]})
    parameters = response.json()["parameters"]
    assert response.json()["id"] == "mine" and parameters["request_id"] == "req-1"
    assert response.headers["x-feedback-token"] == parameters["feedback_token"]


def test_pinning_is_privileged(client_for):
    pinned = {"json": {"inputs": [ROW], "user_id": "alice"}}
    client = client_for()
    unauthenticated = client.post("/predict", **pinned, headers={"x-serve-ab-version": "v2"})  # the fast route
    assert unauthenticated.status_code == 401 and unauthenticated.headers["www-authenticate"].startswith("Bearer")
    viewer = client.post("/predict", **pinned, headers={"x-serve-ab-version": "v2",
                                                        "authorization": f"Bearer {VIEWER_TOKEN}"})
    assert viewer.status_code == 403 and "qa or operator" in viewer.json()["error"]
    for token in (QA_TOKEN, TOKEN):
        response = client.post("/predict", **pinned, headers={"x-serve-ab-version": "v2",
                                                              "authorization": f"Bearer {token}"})
        assert response.status_code == 200 and response.json()["version"] == "v2"
    tensor = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW}
    assert client.post("/v2/models/digits/versions/v2/infer", json={"inputs": [tensor]}).status_code == 401
    off = client_for(pin={"enabled": False})
    response = off.post("/predict", **pinned, headers={"x-serve-ab-version": "v2", **AUTH})
    assert response.status_code == 403 and "pin.enabled: false" in response.json()["error"]


def test_a_bad_query_parameter_is_a_422_in_the_apis_error_shape(client_for):
    response = client_for().get("/rollout/status?history=maybe")
    assert response.status_code == 422
    assert response.json() == {"error": "history: Input should be a valid boolean, unable to interpret "
                                        "input (got 'maybe')"}


def test_roles_and_protected_reads(client_for):
    client = client_for()
    # The QA and viewer tokens may not act on the rollout; the operator's may.
    assert client.post("/rollout/pause", headers={"authorization": f"Bearer {QA_TOKEN}"}).status_code == 403
    assert client.post("/rollout/pause", headers={"authorization": f"Bearer {VIEWER_TOKEN}"}).status_code == 403
    assert client.post("/rollout/pause", headers=AUTH).status_code == 200
    assert client.get("/rollout/status").status_code == 200  # reads are open by default
    protected = client_for(control={"protect_reads": True})
    for path in ("/rollout/status", "/experiment/report", "/experiment/stats", "/metrics", "/experiment"):
        assert protected.get(path).status_code == 401, path
        assert protected.get(path, headers={"authorization": f"Bearer {VIEWER_TOKEN}"}).status_code == 200, path
    assert protected.get("/v2/health/ready").status_code == 200  # health stays open for probes


def test_who_acted_is_recorded_by_name_never_by_token(app):
    client, controller = app
    assert client.post("/rollout/abort", headers=AUTH, json={"reason": "p95"}).status_code == 200
    actor = controller.actors[-1]
    assert (actor.name, actor.role) == ("operator", "operator") and TOKEN not in repr(actor)


def test_open_answers_show_no_paths(app):
    client, _ = app
    versions = client.get("/experiment").json()["versions"]
    assert versions[0] == {"name": "v1", "backend": "onnx", "file": "a.onnx"}


def test_named_tokens_from_a_file(tmp_path):
    from serve_ab.config import parse_experiment as parse

    path = tmp_path / "tokens.yaml"
    path.write_text("- {name: alice, role: operator, token: alice-token-0123456}\n"
                    "- {name: grafana, role: viewer, token: grafana-token-01234}\n")
    cfg = parse({"model": "m", "versions": [{"name": "v1", "path": "a.onnx", "backend": "onnx"}],
                 "weights": {"v1": 100}, "control": {"tokens_file": str(path)}})
    tokens = load_tokens(cfg.control, environ={"SERVE_AB_CONTROL_TOKEN": "env-operator-token"})
    assert [(t.name, t.role.value) for t in tokens] == [("operator", "operator"), ("alice", "operator"),
                                                        ("grafana", "viewer")]
    auth = ControlAuth(cfg.control, tokens)
    assert auth.check("Bearer alice-token-0123456").name == "alice"
    path.write_text("- {name: bob, role: admin, token: bob-token-0123456789}\n")
    with pytest.raises(ValueError, match="role 'admin'; valid: \\['viewer', 'qa', 'operator'\\]"):
        load_tokens(cfg.control, environ={})


@pytest.mark.parametrize("raw, words", [
    (b"[" * 8000, "too deeply"),  # 100,000 gave a RecursionError; this app takes 8 KiB bodies
    (b'{"inputs": [[0' + b", 0" * 63 + b']], "user_id": "\\ud800"}', "lone UTF-16 surrogate"),
    (b'{"inputs": [[1e39' + b", 0" * 63 + b"]]}", "beyond FP32's range"),
    (b'{"inputs": [[' + b"9" * 400 + b", 0" * 63 + b"]]}", "beyond FP32's range (one has 400 digits)"),
])
def test_inputs_that_once_gave_a_5xx_are_4xx(app, raw, words):
    client, _ = app
    response = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]
    assert client.post("/predict", json={"inputs": [ROW]}).status_code == 200


def test_a_boolean_in_a_utf16_body_is_refused_too(app):
    """json.loads reads UTF-16 JSON, where the byte search for true finds nothing."""
    client, _ = app
    raw = json.dumps({"inputs": [[True] + ROW[1:]]}).encode("utf-16")
    response = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400 and "holds booleans among its numbers" in response.json()["error"]


def test_a_surrogate_in_a_v2_id_is_refused_not_echoed(app):
    client, _ = app
    raw = (b'{"id": "\\udc00", "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0'
           + b", 0" * 63 + b"]}]}")
    response = client.post("/v2/models/digits/infer", content=raw)
    assert response.status_code == 400 and "surrogate" in response.json()["error"]


def test_feedback_on_a_pinned_answer_is_accepted_and_not_counted(app):
    client, controller = app
    answer = client.post("/predict", json={"inputs": [ROW]}, headers={"x-serve-ab-version": "v2", **AUTH}).json()
    response = client.post("/feedback", json={"request_id": answer["request_id"], "name": "correct",
                                              "feedback_token": answer["feedback_token"], "converted": False})
    assert response.status_code == 202 and response.json()["counted"] is False
    assert controller.feedbacks == []


def test_a_control_body_that_does_not_fit_is_422(app):
    client, controller = app
    response = client.post("/rollout/promote", headers=AUTH, json={"full": "false"})
    assert response.status_code == 422 and "full" in response.json()["error"]
    assert client.post("/rollout/abort", headers=AUTH, json={"why": "x"}).status_code == 422
    # A reason goes into the history, the log and Slack: a line break could fake a line there.
    response = client.post("/rollout/abort", headers=AUTH, json={"reason": "p95\r\n12:00 promoted by operator"})
    assert response.status_code == 422
    assert response.json()["error"].startswith("reason: holds a control character ('\\r') at position 3; "
                                                "send one line of text")
    for reason in ("p95\x85forged", "p95\u2028forged", "p95\x9b", "p95 \u202eed kcab"):  # NEL, LS, C1, RLO
        assert client.post("/rollout/abort", headers=AUTH, json={"reason": reason}).status_code == 422, reason
    assert controller.actions == []


def test_a_key_sent_twice_is_a_400_naming_it_on_the_control_and_feedback_routes(app):
    """The last of two keys won before: {"from_step": 99, "from_step": 1} promoted past the
    from_step guard, and "converted": false, "converted": true counted a conversion."""
    client, controller = app
    json_type = {"content-type": "application/json"}
    response = client.post("/rollout/promote", headers=AUTH | json_type, content=b'{"from_step": 99, "from_step": 1}')
    assert response.status_code == 400
    assert response.json()["error"] == 'duplicate key "from_step" in the JSON body; send each key once'
    nested = client.post("/rollout/weights", headers=AUTH | json_type,
                         content=b'{"weights": {"v1": 100, "v2": 0, "v2": 100}}')
    assert nested.status_code == 400 and 'duplicate key "v2"' in nested.json()["error"]
    assert controller.actions == []
    answer = client.post("/predict", json={"inputs": [ROW], "user_id": "alice"}).json()
    proof = (f'"request_id": {json.dumps(answer["request_id"])}, '
             f'"feedback_token": {json.dumps(answer["feedback_token"])}, "name": "correct"')
    response = client.post("/feedback", headers=json_type,
                           content=f'{{{proof}, "converted": false, "converted": true}}'.encode())
    assert response.status_code == 400 and 'duplicate key "converted"' in response.json()["error"]
    assert controller.feedbacks == []
    # Each key once: taken as before.
    assert client.post("/rollout/promote", headers=AUTH | json_type, content=b'{"from_step": 1}').status_code == 200
    assert controller.actions[-1][1].from_step == 1
    response = client.post("/feedback", headers=json_type, content=f'{{{proof}, "converted": false}}'.encode())
    assert response.status_code == 202 and controller.feedbacks[-1][1:4] == ("correct", None, False)


def test_each_answer_is_its_own_feedback_unit_even_when_request_ids_repeat(app):
    client, controller = app  # the fake core gives every answer the request id "req-1"
    tokens = [client.post("/predict", json={"inputs": [ROW]}).json()["feedback_token"] for _ in range(2)]
    for token in tokens:
        response = client.post("/feedback", json={"request_id": "req-1", "feedback_token": token,
                                                  "name": "correct", "converted": True})
        assert response.status_code == 202
    assert len({f[0] for f in controller.feedbacks}) == 2


def test_tokens_of_another_app_sharing_the_key_are_refused():
    from serve_ab.serving.core.feedback_token import FeedbackSigner

    clock = FakeClock()
    key = b"a-key-shared-by-two-apps-32bytes"
    token = FeedbackSigner(key, 60, clock, scope="digits").issue("r1", "v1")
    assert FeedbackSigner(key, 60, clock, scope="digits").verify(token, "r1").version == "v1"
    with pytest.raises(Forbidden):
        FeedbackSigner(key, 60, clock, scope="other-model").verify(token, "r1")
    with pytest.raises(Forbidden, match="malformed"):  # "²" is a digit to str.isdigit, not to int()
        FeedbackSigner(key, 60, clock, scope="digits").verify("v1.²³.a.abc.def", "r1")


def test_metrics_off_the_app_is_a_404_naming_the_setting(client_for):
    client = client_for(http={"max_body_bytes": 8192, "metrics_on_app": False})
    response = client.get("/metrics")
    assert response.status_code == 404 and "metrics_on_app" in response.json()["error"]


# -- what an audit of the routes found (2026-12-05) --------------------------------------------


def _model_calls() -> int:
    return sum(version.calls for version in routes.served().core.versions.values())


@pytest.mark.parametrize("flags", [
    {"parameters": {"binary_data_output": "yes"}},
    {"outputs": [{"name": "probabilities", "parameters": {"binary_data": 1}}]},
])
def test_a_v2_request_refused_for_its_output_flags_runs_no_model(app, flags):
    client, _ = app
    before = _model_calls()
    body = v2_body([ROW]) | flags
    response = client.post("/v2/models/digits/infer", json=body)
    assert response.status_code == 400 and "must be true or false" in response.json()["error"], response.text
    assert _model_calls() == before  # refused before the model ran: nothing served, nothing counted
    assert client.post("/v2/models/digits/infer", json=v2_body([ROW])).status_code == 200


def test_a_huge_binary_header_length_is_a_400(app):
    client, _ = app
    response = client.post("/v2/models/digits/infer", content=b"{}",
                           headers={"inference-header-content-length": "9" * 5000})
    assert response.status_code == 400 and "a number of 5000 digits, but the whole body is only 2 bytes" in \
        response.json()["error"]
    # Zeros in front are no digits of the number: 5,000 of them and a 2 is 2.
    raw = json.dumps(v2_body([ROW])).encode()
    padded = "0" * 5000 + str(len(raw))
    response = client.post("/v2/models/digits/infer", content=raw, headers={"inference-header-content-length": padded})
    assert response.status_code == 200, response.text


def test_a_weight_past_a_doubles_range_reaches_the_controller_as_inf(app):
    """It raised OverflowError (a 500); as 1e400 it is inf, which the controller's check of the
    weights names ("v1 is inf; a weight is a percentage in [0, 100]")."""
    client, controller = app
    response = client.post("/rollout/weights", content=b'{"weights": {"v1": 1' + b"0" * 400 + b"}}",
                           headers=AUTH | {"content-type": "application/json"})
    assert response.status_code == 200, response.text  # the fake controller takes any weights
    (action, body), = controller.actions
    assert (action, body.weights) == (Action.WEIGHTS, {"v1": float("inf")})


def test_a_null_body_on_a_control_route_is_refused_not_read_as_no_body(app):
    client, controller = app
    response = client.post("/rollout/pause", content=b"null", headers=AUTH)
    assert response.status_code == 422 and "JSON object" in response.json()["error"], response.text
    assert controller.actions == []
    assert client.post("/rollout/pause", headers=AUTH).status_code == 200  # no body at all: fine


def test_routes_and_methods_that_do_not_exist_answer_in_the_apis_error_shape(app):
    client, _ = app
    response = client.put("/predict", json={})
    assert response.status_code == 405 and response.json()["error"] == "Method Not Allowed: PUT /predict"
    assert response.headers["allow"] == "POST"
    assert client.get("/nope").json() == {"error": "Not Found: GET /nope"}
    response = client.post("/rollout/status", headers=AUTH)
    assert response.status_code == 405 and response.headers["allow"] == "GET"
    # An action that does not exist is named without a token (the actions are public).
    response = client.post("/rollout/launch")
    assert response.status_code == 404 and "unknown action 'launch'" in response.json()["error"]


def test_content_encoding_over_two_header_lines_is_read_as_one_list(app):
    client, _ = app
    raw = json.dumps({"inputs": [ROW]}).encode()
    response = client.post("/predict", content=gzip.compress(gzip.compress(raw)),
                           headers=[("content-encoding", "gzip"), ("content-encoding", "gzip")])
    assert response.status_code == 415 and "one at a time" in response.json()["error"], response.text


def test_feedback_is_taken_for_any_request_id_the_router_signed(client_for):
    client = client_for()
    long_id = "trace-" + "x" * 1000  # a client's x-request-id, which Ray Serve keeps as the request's id
    routes.served().core.request_id = lambda: long_id
    body = client.post("/predict", json={"inputs": [ROW], "user_id": "alice"}).json()
    assert body["request_id"] == long_id
    response = client.post("/feedback", json={"request_id": long_id, "feedback_token": body["feedback_token"],
                                              "name": "correct", "converted": True})
    assert response.status_code == 202, response.text
    response = client.post("/feedback", json={"request_id": "x" * 1025, "name": "correct", "converted": True,
                                              "feedback_token": body["feedback_token"]})
    assert response.status_code == 400 and "at most 1024 characters" in response.json()["error"]


@pytest.mark.parametrize("path, headers", [("/feedback", {}), ("/rollout/pause", AUTH)])
def test_a_client_gone_mid_body_on_a_fastapi_route_is_no_server_error(app, path, headers):
    import asyncio

    sent: list[dict] = []
    messages = [{"type": "http.request", "body": b'{"request_id": ', "more_body": True}, {"type": "http.disconnect"}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()], "client": ("127.0.0.1", 1),
             "server": ("testserver", 80)}
    asyncio.run(routes.app(scope, receive, send))  # raised ClientDisconnect out of the app before
    assert sent[0]["status"] == 499


def test_a_predict_body_that_sends_a_key_it_reads_twice_is_refused_and_serves_nothing(app, client_for):
    """orjson keeps the last of two keys: {"user_id": "alice", "user_id": "bob"} was served
    and counted as bob's while the client's own record read alice's."""
    client, _ = app
    json_type = {"content-type": "application/json"}
    before = _model_calls()
    row = json.dumps(ROW)
    for raw, key in [
        (f'{{"inputs": [{row}], "user_id": "alice", "user_id": "bob"}}', "user_id"),
        (f'{{"inputs": {{"input": [{row}], "input": [{row}]}}, "user_id": "alice"}}', "input"),  # by name
        (f'{{"inputs": [{row}], "user\\u005fid": "alice", "user_id": "bob"}}', "user_id"),  # one escaped
    ]:
        response = client.post("/predict", content=raw.encode(), headers=json_type)
        assert response.status_code == 400, raw
        assert response.json()["error"] == f'duplicate key "{key}" in the JSON body; send each key once'
    assert _model_calls() == before  # refused before the model ran: nothing served, nothing counted
    # One key in several objects is no repeat; a user id in \u escapes is the same user.
    plain = client.post("/predict", json={"inputs": [ROW], "user_id": "élise"}).json()
    escaped = client.post("/predict", content=json.dumps({"inputs": [ROW], "user_id": "élise",
                                                          "meta": {"user_id": 1}}).encode(), headers=json_type)
    assert escaped.status_code == 200 and escaped.json()["version"] == plain["version"]
    # Keyed on a header, the body's field is nobody's key: only "inputs" is read.
    header_keyed = client_for(assignment={"key": "header", "header": "x-user", "salt": "unit"})
    response = header_keyed.post("/predict", content=f'{{"inputs": [{row}], "note": 1, "note": 2}}'.encode(),
                                 headers=json_type | {"x-user": "alice"})
    assert response.status_code == 200


def test_a_v2_body_that_sends_a_key_it_reads_twice_is_refused_and_serves_nothing(app):
    """The same over the Open Inference Protocol: the key field in "parameters", or a
    top-level key, twice; in the JSON of a binary request too."""
    client, _ = app
    before = _model_calls()
    tensor = json.dumps(v2_body([ROW])["inputs"])
    for raw, key in [
        (f'{{"inputs": {tensor}, "parameters": {{"user_id": "alice", "user_id": "bob"}}}}', "user_id"),
        (f'{{"inputs": {tensor}, "inputs": {tensor}}}', "inputs"),
        (f'{{"id": "a", "id": "b", "inputs": {tensor}}}', "id"),
    ]:
        response = client.post("/v2/models/digits/infer", content=raw.encode(),
                               headers={"content-type": "application/json"})
        assert response.status_code == 400, raw
        assert response.json()["error"] == f'duplicate key "{key}" in the JSON body; send each key once'
    data = np.asarray([ROW], dtype="<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(data)}}],
                         "parameters": {"user_id": "alice"}})
    twice = header.replace('"user_id": "alice"', '"user_id": "alice", "user_id": "bob"').encode()
    response = client.post("/v2/models/digits/infer", content=twice + data,
                           headers={"inference-header-content-length": str(len(twice))})
    assert response.status_code == 400 and 'duplicate key "user_id"' in response.json()["error"]
    assert _model_calls() == before
    # A tensor's own "parameters" beside the request's is no repeat.
    response = client.post("/v2/models/digits/infer", content=header.encode() + data,
                           headers={"inference-header-content-length": str(len(header))})
    assert response.status_code == 200, response.text


def test_a_v2_body_repeating_a_tensors_key_or_the_request_parameters_is_refused(app):
    """Every key the V2 route reads, once per object that holds it: a tensor's "data" twice,
    or the request's "parameters" twice (the second, empty, would have served it keyless)."""
    client, _ = app
    before = _model_calls()
    row = json.dumps(ROW)
    for raw, key in [
        (f'{{"inputs": [{{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [{row}], '
         f'"data": [{row}]}}]}}', "data"),
        (f'{{"inputs": {json.dumps(v2_body([ROW])["inputs"])}, "parameters": {{"user_id": "alice"}}, '
         f'"parameters": {{}}}}', "parameters"),
    ]:
        response = client.post("/v2/models/digits/infer", content=raw.encode(),
                               headers={"content-type": "application/json"})
        assert response.status_code == 400, raw
        assert response.json()["error"] == f'duplicate key "{key}" in the JSON body; send each key once'
    assert _model_calls() == before
    # Two tensors' own keys, each once, and the request's and an output's parameters: no repeat.
    ok = v2_body([ROW], parameters={"user_id": "alice"},
                 outputs=[{"name": "probabilities", "parameters": {"binary_data": False}}])
    assert client.post("/v2/models/digits/infer", json=ok).status_code == 200


async def _asgi_call(app, method: str, path: str, headers: dict[str, str],
                     first_chunk: bytes) -> tuple[int, bytes, dict[str, str]]:
    """One request straight through the ASGI app whose body stops after ``first_chunk``: the
    client keeps its connection and sends nothing more (a slowloris)."""
    stalled = asyncio.Event()  # never set
    sent_first = False

    async def receive():
        nonlocal sent_first
        if not sent_first:
            sent_first = True
            return {"type": "http.request", "body": first_chunk, "more_body": True}
        await stalled.wait()

    answer: dict = {"status": None, "body": b"", "headers": {}}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    await app(scope, receive, send)
    return answer["status"], answer["body"], answer["headers"]


@pytest.mark.parametrize("path, headers", [
    ("/predict", {}),
    ("/v2/models/digits/infer", {}),
    ("/v2/models/digits/versions/v2/infer", AUTH),
    ("/feedback", {}),
    ("/rollout/pause", AUTH),
])
def test_a_body_that_stops_arriving_is_a_408_that_frees_the_request(path, headers):
    """Ray's proxy hands a request to the router once its headers came. Clients that then sent
    nothing more held one of router.max_ongoing_requests each for as long as they kept their
    connections (live: 270 such connections, over the router's 256, left /predict and
    /v2/health/live unanswered); the body now has http.body_timeout_s to arrive."""
    make_app("colocated", http={"max_body_bytes": 8192, "body_timeout_s": 0.05})
    try:
        status, body, answered_headers = asyncio.run(asyncio.wait_for(_asgi_call(
            routes.app, "POST", path, {"content-type": "application/json", "content-length": "1000", **headers},
            b'{"inputs": '), timeout=30))
    finally:
        routes.use_core(None)
    assert status == 408, (status, body)
    message = json.loads(body)["error"]
    assert "http.body_timeout_s" in message and "11 bytes came of the 1000 declared" in message
    # RFC 9110 15.5.9: the connection closes; its 989 bytes still to come are no next request.
    assert answered_headers.get("connection") == "close"


def test_a_request_cancelled_while_its_body_comes_stays_cancelled():
    """The body's timer cancels the request's task; a cancel from elsewhere (Ray's, when the
    client went away) is not taken for the timeout."""
    from serve_ab.api.http_util import read_body

    class Stalled:
        headers = {"content-length": "10"}

        async def receive(self):
            await asyncio.Event().wait()

    async def main():
        reading = asyncio.ensure_future(read_body(Stalled(), 8192, timeout_s=3600))
        await asyncio.sleep(0)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading

    asyncio.run(main())
