"""Two apps serving one model from one state store, on a real Ray Serve: the second is
refused, naming the first; the first serves on with its state untouched; once the first is
deleted (its controller releases the claim), the second deploys without waiting."""

from __future__ import annotations

import re
import time
import uuid

import pytest
from ray import serve

from serve_ab import build_app
from serve_ab.serving.app_claim import cluster_id
from serve_ab.store.state import SqliteStateStore
from tests.integration.conftest import DIGIT_ROW, experiment

CLAIM_KEY = "app:digits"


def test_a_second_app_on_the_same_model_and_store_is_refused_and_harms_nothing(serve_instance, http, model_repo,
                                                                                tmp_path):
    state_path = tmp_path / "state.sqlite"
    cfg = experiment(model_repo, controller={"state_path": str(state_path)})
    suffix = uuid.uuid4().hex[:6]
    first, second = f"claim-first-{suffix}", f"claim-second-{suffix}"
    store = SqliteStateStore(state_path)
    try:
        serve.run(build_app(cfg), name=first, route_prefix=f"/{first}")
        body = {"inputs": [DIGIT_ROW], "user_id": "u-1"}
        assert http.post(serve_instance.url(f"/{first}/predict"), json=body).status_code == 200
        claim = store.load(CLAIM_KEY)
        assert claim is not None and claim["app"] == first
        # The cluster's id, the same in the replica as here (not an address string, which
        # differs between nodes that joined by different names).
        assert claim["cluster"] == cluster_id() and re.fullmatch(r"[0-9a-f]{56}", claim["cluster"]), claim
        run_before = store.load("run:digits")

        started = time.monotonic()
        with pytest.raises(RuntimeError) as refused:
            serve.run(build_app(cfg), name=second, route_prefix=f"/{second}")
        refused_after_s = time.monotonic() - started
        assert "failed" in str(refused.value)
        # What `serve status` shows: each of its deployments names the app and the store.
        deployments = serve.status().applications[second].deployments
        expected = f"is already served from controller.state_path {str(state_path)!r} by app {first!r} on this cluster"
        for name in ("Controller", "Router"):
            assert expected in deployments[name].message, (name, deployments[name].message)
        print(f"second app refused after {refused_after_s:.1f}s")

        # The first app is untouched: it serves, and its claim and run are the ones it wrote.
        assert http.post(serve_instance.url(f"/{first}/predict"), json=body).status_code == 200
        assert store.load(CLAIM_KEY)["app"] == first
        assert store.load("run:digits")["run_id"] == run_before["run_id"]
        status = http.get(serve_instance.url(f"/{first}/experiment"))
        assert status.status_code == 200, status.text
    finally:
        serve.delete(second)
        serve.delete(first)

    # Deleted, the first app's controller released its claim: the second starts at once.
    assert store.load(CLAIM_KEY) is None
    try:
        serve.run(build_app(cfg), name=second, route_prefix=f"/{second}")
        assert store.load(CLAIM_KEY)["app"] == second
        assert http.post(serve_instance.url(f"/{second}/predict"),
                         json={"inputs": [DIGIT_ROW], "user_id": "u-2"}).status_code == 200
    finally:
        serve.delete(second)


def test_an_app_started_while_its_redis_is_down_comes_up_once_redis_answers(serve_instance, http, model_repo,
                                                                           redis_server):
    """The controller waits for a store it cannot reach (it used to raise, and Serve gave up
    on it after three tries: the app never recovered). Routers serve meanwhile."""
    import redis

    redis_server.stop()
    app = f"redis-late-{uuid.uuid4().hex[:6]}"
    cfg = experiment(model_repo, controller={"store_url": redis_server.url, "store_key_prefix": f"{app}:"})
    body = {"inputs": [DIGIT_ROW], "user_id": "u-1"}
    try:
        serve._run(build_app(cfg), _blocking=False, name=app, route_prefix=f"/{app}")
        deadline_s = time.monotonic() + 120
        while time.monotonic() < deadline_s:  # the router serves without its controller
            try:
                if http.post(serve_instance.url(f"/{app}/predict"), json=body, timeout=5).status_code == 200:
                    break
            except Exception:  # noqa: BLE001 - not routed yet
                pass
            time.sleep(0.5)
        else:
            pytest.fail("the router never served while Redis was down")
        time.sleep(5)  # the controller asks again, and is still waiting, not failed
        assert serve.status().applications[app].status != "DEPLOY_FAILED"

        redis_server.start()
        deadline_s = time.monotonic() + 90
        while time.monotonic() < deadline_s:
            answer = http.get(serve_instance.url(f"/{app}/experiment/stats"), timeout=40)
            if answer.status_code == 200:
                break
            time.sleep(1.0)
        assert answer.status_code == 200, answer.text
        assert redis.Redis.from_url(redis_server.url).get(f"{app}:state:run:digits") is not None
    finally:
        serve.delete(app)
