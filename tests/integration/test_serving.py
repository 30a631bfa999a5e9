"""Both placements on a real Ray Serve: HTTP (plain JSON and V2), handles, bad input."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from ray import serve

from serve_ab import build_app
from serve_ab.serving.app import build_metrics_app
from serve_ab.routing import Assigner
from serve_ab.errors import Conflict, InvalidInput, Unauthorized, VersionNotServed
from tests.integration.conftest import AUTH, DIGIT_ROW, experiment, router_log_lines
from tests.support.bad_input import BAD_PREDICT, v2_body
from tests.support.polling import wait_for

PLACEMENTS = ["colocated", "isolated"]


@pytest.fixture(scope="module")
def apps(serve_instance, model_repo):
    """Deploys the apps of this module once: one per placement, and one with pinning off."""
    colocated = experiment(model_repo)
    isolated = experiment(model_repo, placement="isolated")
    for version in isolated["versions"]:
        version["deployment"] = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}}
    isolated["versions"][0]["batching"] = {"max_batch_size": 8, "batch_wait_timeout_s": 0.005}
    locked = experiment(
        model_repo, weights={"v1": 0, "v2": 100}, pin={"enabled": False}, http={"metrics_on_app": False},
        assignment={"key": "header", "header": "x-user-id", "salt": "it"},
    )
    serve.run(build_app(colocated), name="colocated", route_prefix="/colocated")
    serve.run(build_app(isolated), name="isolated", route_prefix="/isolated")
    serve.run(build_app(locked), name="locked", route_prefix="/locked")
    yield serve_instance
    for name in ("colocated", "isolated", "locked"):
        serve.delete(name)


def predict(http, apps, placement, body, headers=None):
    return http.post(apps.url(f"/{placement}/predict"), json=body, headers=headers or {})


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_predict_names_the_version_that_served(http, apps, placement):
    response = predict(http, apps, placement, {"inputs": [DIGIT_ROW, DIGIT_ROW], "user_id": "u-1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"] in ("v1", "v2")
    assert response.headers["x-model-version"] == body["version"]
    assert body["request_id"] and response.headers["x-request-id"] == body["request_id"]
    outputs = np.asarray(body["outputs"])
    assert outputs.shape == (2, 10)
    np.testing.assert_allclose(outputs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_rays_access_line_names_the_version_in_both_placements(http, apps, placement):
    # Isolated: the router's code (which notes the version) runs in Ray's user-code thread,
    # while Ray writes the access line on the replica's own loop.
    body = predict(http, apps, placement, {"inputs": [DIGIT_ROW], "user_id": "u-line"}).json()
    called = serve.get_app_handle(placement).predict.remote([DIGIT_ROW], key="u-line").result(timeout_s=60)
    wanted = {body["request_id"]: body["version"], called["request_id"]: called["version"]}

    def lines():
        logged = router_log_lines(placement)
        found = {rid: [ln for ln in logged if rid in ln and " version=" in ln] for rid in wanted}
        return found if all(found.values()) else None

    found = wait_for(lines, f"the access lines of {sorted(wanted)}", timeout_s=30)
    for request_id, version in wanted.items():
        (line,) = found[request_id]
        assert line.endswith(f"ms version={version}"), line


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_assignment_is_sticky_and_matches_the_pure_assigner(http, apps, placement):
    expected = Assigner({"v1": 50, "v2": 50}, salt="it")
    served = {}
    for i in range(60):
        user = f"user-{i}"
        body = predict(http, apps, placement, {"inputs": [DIGIT_ROW], "user_id": user}).json()
        served[user] = body["version"]
        assert body["version"] == expected.assign(user), user
    again = {u: predict(http, apps, placement, {"inputs": [DIGIT_ROW], "user_id": u}).json()["version"]
             for u in list(served)[:20]}
    assert all(served[u] == v for u, v in again.items())
    assert set(served.values()) == {"v1", "v2"}


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_requests_without_key_split_at_random(http, apps, placement):
    counts = Counter(predict(http, apps, placement, {"inputs": [DIGIT_ROW]}).json()["version"]
                     for _ in range(80))
    # 50/50 over 80 requests: each side below 20 has probability < 1e-5.
    assert counts["v1"] >= 20 and counts["v2"] >= 20, counts


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_pin_header_and_unknown_pins(http, apps, placement):
    for version in ("v1", "v2"):
        response = predict(http, apps, placement, {"inputs": [DIGIT_ROW], "user_id": "u"},
                           headers={"x-serve-ab-version": version, **AUTH})
        assert response.json()["version"] == version
    response = predict(http, apps, placement, {"inputs": [DIGIT_ROW]},
                       headers={"x-serve-ab-version": "v9", **AUTH})
    assert response.status_code == 404 and "v9" in response.json()["error"]


def test_pinning_can_be_turned_off_and_header_key(http, apps):
    response = predict(http, apps, "locked", {"inputs": [DIGIT_ROW]}, headers={"x-serve-ab-version": "v1", **AUTH})
    assert response.status_code == 403 and "pin.enabled" in response.json()["error"]
    response = http.post(apps.url("/locked/v2/models/digits/versions/v1/infer"),
                         json=v2_body([DIGIT_ROW]))
    assert response.status_code == 403
    response = predict(http, apps, "locked", {"inputs": [DIGIT_ROW]}, headers={"x-user-id": "abc"})
    assert response.json()["version"] == "v2"  # weights 0/100


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_concurrent_requests_all_answered(http, apps, placement):
    """Isolated v1 batches concurrent requests; every caller still gets its own rows."""
    rows = [[float((i * 7 + j) % 17) for j in range(64)] for i in range(24)]

    def call(i):
        return predict(http, apps, placement, {"inputs": [rows[i]]},
                       headers={"x-serve-ab-version": "v1", **AUTH}).json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, range(len(rows))))
    together = predict(http, apps, placement, {"inputs": rows},
                       headers={"x-serve-ab-version": "v1", **AUTH}).json()["outputs"]
    np.testing.assert_allclose([a["outputs"][0] for a in answers], together, atol=1e-5)


# -- Open Inference Protocol ------------------------------------------------------------------

@pytest.mark.parametrize("placement", PLACEMENTS)
def test_v2_health_and_metadata(http, apps, placement):
    base = apps.url(f"/{placement}/v2")
    assert http.get(base + "/health/live").json() == {"live": True}
    assert http.get(base + "/health/ready").json() == {"ready": True}
    meta = http.get(base + "/models/digits").json()
    assert meta["name"] == "digits" and meta["versions"] == ["v1", "v2"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert http.get(base + "/models/digits/ready").json() == {"name": "digits", "ready": True}
    assert http.get(base + "/models/digits/versions/v2").json()["platform"] == "pytorch_torchexport"


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_v2_infer_routed_and_pinned(http, apps, placement):
    base = apps.url(f"/{placement}/v2/models/digits")
    expected = Assigner({"v1": 50, "v2": 50}, salt="it")
    for user in ("ann", "ben", "cy", "dee"):
        response = http.post(base + "/infer", json=v2_body([DIGIT_ROW], id="req-7",
                                                            parameters={"user_id": user}))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_version"] == expected.assign(user) == response.headers["x-model-version"]
        assert body["id"] == "req-7"
        (output,) = body["outputs"]
        assert output["name"] == "probabilities" and output["shape"] == [1, 10]
        assert output["datatype"] == "FP32" and len(output["data"]) == 10
    for version in ("v1", "v2"):
        body = http.post(base + f"/versions/{version}/infer", json=v2_body([DIGIT_ROW] * 3), headers=AUTH).json()
        assert body["model_version"] == version and body["outputs"][0]["shape"] == [3, 10]


# -- bad input: a clear 4xx, and the replica stays up (each case's status and message: tests/unit/serving/test_http.py)

@pytest.mark.parametrize("placement", PLACEMENTS)
def test_replica_survives_bad_input(http, apps, placement):
    """After every kind of bad request above, the same replica still answers."""
    status = serve.status().applications[placement].deployments
    replicas_before = {name: d.replica_states for name, d in status.items()}
    for _, raw, _, _ in BAD_PREDICT:
        http.post(apps.url(f"/{placement}/predict"), content=raw,
                  headers={"content-type": "application/json"})
    response = predict(http, apps, placement, {"inputs": [DIGIT_ROW], "user_id": "after"})
    assert response.status_code == 200
    status = serve.status().applications[placement].deployments
    assert {name: d.replica_states for name, d in status.items()} == replicas_before
    assert all(d.status == "HEALTHY" for d in status.values())


def test_openapi_documents_the_bodies(http, apps):
    spec = http.get(apps.url("/colocated/openapi.json")).json()
    assert "/predict" in spec["paths"] and "/v2/models/{model}/infer" in spec["paths"]
    assert http.get(apps.url("/colocated/docs")).status_code == 200


# -- Python callers: DeploymentHandle ---------------------------------------------------------

@pytest.mark.parametrize("placement", PLACEMENTS)
def test_handle_predict_with_key_and_pin(apps, placement):
    handle = serve.get_app_handle(placement)
    expected = Assigner({"v1": 50, "v2": 50}, salt="it")
    batch = np.asarray([DIGIT_ROW] * 4, dtype=np.float32)
    for user in ("ann", "ben", "cy"):
        result = handle.predict.remote(batch, key=user).result()
        assert result["version"] == expected.assign(user)
        assert result["outputs"].shape == (4, 10) and result["request_id"]
    assert handle.predict.remote([DIGIT_ROW], version="v2").result()["version"] == "v2"
    # An integer key is that user's digits, as user_id: 7 is over HTTP; anything else a clear error.
    assert handle.predict.remote([DIGIT_ROW], key=7).result()["version"] == expected.assign("7")
    with pytest.raises(InvalidInput, match="key must be a string or an integer; got list"):
        handle.predict.remote([DIGIT_ROW], key=[1]).result()
    with pytest.raises(Exception, match="must have shape"):
        handle.predict.remote([[1.0]], key="ann").result()
    # A Python exception naming the version, not an HTTP status.
    with pytest.raises(VersionNotServed, match="unknown version 'v9'.*serves \\['v1', 'v2'\\]"):
        handle.predict.remote([DIGIT_ROW], version="v9").result()


@serve.deployment(ray_actor_options={"num_cpus": 0.05})
class Caller:
    """Another team's deployment calling the experiment through its app handle."""

    def __init__(self, app_name: str):
        self.app_name = app_name

    async def __call__(self, request) -> dict:
        user = request.query_params["user"]
        result = await serve.get_app_handle(self.app_name).predict.remote([DIGIT_ROW], key=user)
        return {"version": result["version"], "digit": int(np.argmax(result["outputs"][0]))}


def test_handle_from_another_deployment(http, apps):
    serve.run(Caller.bind("colocated"), name="caller", route_prefix="/caller")
    try:
        expected = Assigner({"v1": 50, "v2": 50}, salt="it")
        for user in ("ann", "ben"):
            body = http.get(apps.url("/caller"), params={"user": user}).json()
            assert body["version"] == expected.assign(user) and 0 <= body["digit"] <= 9
    finally:
        serve.delete("caller")


@serve.deployment(ray_actor_options={"num_cpus": 0.05})
class FeedbackCaller:
    """Another team's deployment: predicts through the handle, then reports whether the
    answer was right through the handle too, and what it caught when it was refused."""

    def __init__(self, app_name: str):
        self.app_name = app_name

    async def __call__(self, request) -> dict:
        handle = serve.get_app_handle(self.app_name)
        user, label = request.query_params["user"], int(request.query_params["label"])
        answer = await handle.predict.remote([DIGIT_ROW], key=user)
        right = np.argmax(answer["outputs"][0]) == label  # an np.bool_, as callers compute it
        fed = await handle.feedback.remote(answer["request_id"], "correct",
                                           feedback_token=answer["feedback_token"], converted=right)
        refused = []
        for token in (None, answer["feedback_token"]):  # none, then a second report of the answer
            try:
                await handle.feedback.remote(answer["request_id"], "correct", feedback_token=token, converted=right)
            except (Unauthorized, Conflict) as err:
                refused.append(f"{type(err.cause).__name__}: {err.message}")
        return {"version": answer["version"], "joined": fed["version"], "right": bool(right), "refused": refused}


def test_handle_feedback_from_another_deployment(http, serve_instance, model_repo):
    """An app that calls serve-ab through handles reports outcomes through them too, and the
    controller counts them for the version that served each answer."""
    cfg = experiment(model_repo)
    cfg["analysis"]["metrics"] = [{"name": "correct", "kind": "conversion"}]
    serve.run(build_app(cfg), name="handle-feedback", route_prefix="/handle-feedback")
    serve.run(FeedbackCaller.bind("handle-feedback"), name="feedback-caller", route_prefix="/feedback-caller")
    try:
        sent = Counter()
        for i in range(12):
            body = http.get(serve_instance.url("/feedback-caller"), params={"user": f"u{i}", "label": 0}).json()
            unauthorized, conflict = body["refused"]
            assert unauthorized.startswith("Unauthorized: feedback needs the feedback_token"), body
            assert conflict.startswith("Conflict: feedback 'correct' for this request was reported already"), body
            sent[body["version"], body["right"]] += 1

        def counted():
            stats = http.get(serve_instance.url("/handle-feedback/experiment/stats")).json()["versions"]
            got = {v: stats[v]["feedback"].get("correct", {}) for v in ("v1", "v2")}
            return got if sum(g.get("n", 0) for g in got.values()) == 12 else None

        got = wait_for(counted, "the 12 handle feedback reports at the controller", timeout_s=60)
        for v in ("v1", "v2"):
            n = sent[v, True] + sent[v, False]
            assert got[v] == ({"kind": "conversion", "n": n, "successes": sent[v, True]} if n else {}), got
    finally:
        serve.delete("feedback-caller")
        serve.delete("handle-feedback")


def test_metrics_on_a_separate_route_prefix(http, apps):
    """With http.metrics_on_app false the experiment answers 404 on /metrics, and a metrics
    app on its own prefix serves them, asking the controller across apps."""
    serve.run(build_metrics_app({"app": "locked"}), name="locked-metrics", route_prefix="/internal/locked")
    try:
        assert predict(http, apps, "locked", {"inputs": [DIGIT_ROW]}, headers={"x-user-id": "m"}).status_code == 200
        scraped = http.get(apps.url("/internal/locked/metrics"))
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
        assert 'serve_ab_requests_total{' in scraped.text and 'version="v2"' in scraped.text
        hidden = http.get(apps.url("/locked/metrics"))
        assert hidden.status_code == 404 and "metrics_on_app" in hidden.json()["error"]
    finally:
        serve.delete("locked-metrics")


def test_isolated_versions_are_their_own_deployments(apps):
    deployments = serve.status().applications["isolated"].deployments
    assert set(deployments) == {"Router", "Controller", "version-v1", "version-v2"}
    # Colocated: the versions live in the router's replicas; the controller only keeps figures.
    assert set(serve.status().applications["colocated"].deployments) == {"Router", "Controller"}


def test_a_batching_versions_batch_sizes_reach_rays_metrics_agent(http, apps):
    """serve-ab's batcher is not @serve.batch, so Ray's serve_actual_batch_size says nothing
    of it: each batch's size goes through Ray Serve's metrics API as serve_ab_batch_size."""
    import ray

    rows = [{"inputs": [DIGIT_ROW], "user_id": f"batch-{i}"} for i in range(40)]
    with ThreadPoolExecutor(8) as pool:  # concurrent, so that batches of several form
        codes = list(pool.map(lambda body: predict(http, apps, "isolated", body).status_code, rows))
    assert codes == [200] * 40
    port = ray._private.worker._global_node.metrics_export_port

    def exported():
        text = http.get(f"http://127.0.0.1:{port}/metrics").text
        return [line for line in text.splitlines() if line.startswith("ray_serve_ab_batch_size_count{")
                and 'application="isolated"' in line and 'deployment="version-v1"' in line]

    lines = wait_for(exported, "ray_serve_ab_batch_size of isolated's v1 on Ray's metrics agent", timeout_s=60)
    assert 'version="v1"' in lines[0] and float(lines[0].rsplit(" ", 1)[1]) >= 1
