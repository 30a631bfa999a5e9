"""Notifications and webhook gates on a real Ray Serve: the controller (a Ray actor on this
machine) sends to a receiver served by this test process on 127.0.0.1."""

from __future__ import annotations

import time

import pytest

from tests.integration.test_rollout import canary, load, wait_for
from tests.unit.rollout.hooks import HookServer


@pytest.fixture
def hooks():
    server = HookServer()
    yield server
    server.close()


def received_in_full(hooks: HookServer, path: str, history: list[dict], timeout_s: float = 30.0) -> list[dict]:
    """The receiver's bodies once it has one per history entry (they are sent in the background)."""
    deadline = time.monotonic() + timeout_s
    while len(hooks.bodies(path)) < len(history):
        assert time.monotonic() < deadline, f"{len(hooks.bodies(path))} of {len(history)} events arrived"
        time.sleep(0.2)
    return hooks.bodies(path)


def test_the_receiver_gets_every_phase_change_of_a_canary_in_order(http, serve_instance, deployed, hooks,
                                                                   model_repo, tmp_path):
    cfg = canary(model_repo, tmp_path)
    cfg["notifications"] = [{"type": "webhook", "url": hooks.url + "/events", "name": "ops"},
                            {"type": "slack", "url": hooks.url + "/slack", "events": ["phase_changed"]}]
    deployed(cfg, "notified")
    status_url = serve_instance.url("/notified/rollout/status?history=true")
    with load(serve_instance, "notified", tmp_path, model_repo):
        status = wait_for(http, status_url, lambda s: s["phase"] == "promoted", "promotion")
    history = status["history"]
    bodies = received_in_full(hooks, "/events", history)
    print(f"\n{len(bodies)} events: {[(b['event'], b['phase']) for b in bodies]}")
    assert [(b["from_phase"], b["phase"], b["reason"]) for b in bodies][:len(history)] == [
        (h["from_phase"], h["to_phase"], h["reason"]) for h in history]
    assert bodies[0]["app"] == "notified" and bodies[0]["model"] == cfg["model"]
    changes = [(b["from_phase"], b["phase"]) for b in bodies if b["event"] == "phase_changed"]
    assert changes[0] == (None, "progressing") and changes[-1] == ("progressing", "promoted")
    slack = hooks.bodies("/slack")
    assert len(slack) == len(changes) and all(set(body) == {"text"} for body in slack)
    metrics = http.get(serve_instance.url("/notified/metrics"))
    if metrics.status_code == 200:  # where reads need no token
        assert 'serve_ab_notifications_failed_total{application="notified",model="digits",receiver="ops"} 0.0' in metrics.text


def test_a_webhook_gate_answering_false_aborts_the_canary(http, serve_instance, deployed, hooks, model_repo, tmp_path):
    hooks.answer("/gate", (200, {"pass": False, "reason": "external suite: 3 of 40 failed"}))
    gates = [{"metric": "error_rate", "max": 0.05},
             {"metric": "webhook", "name": "suite", "url": hooks.url + "/gate", "timeout_s": 2}]
    cfg = canary(model_repo, tmp_path, gates=gates)
    cfg["notifications"] = [{"type": "webhook", "url": hooks.url + "/events"}]
    deployed(cfg, "webhook-gate")
    status_url = serve_instance.url("/webhook-gate/rollout/status?history=true")
    with load(serve_instance, "webhook-gate", tmp_path, model_repo):
        status = wait_for(http, status_url, lambda s: s["phase"] == "aborted", "the abort")
    print(f"\nabort: {status['reason']}")
    assert "webhook[suite]" in status["reason"] and "external suite: 3 of 40 failed" in status["reason"]
    assert status["weights_pct"] == {"v1": 100.0, "v2": 0.0}
    assert hooks.bodies("/gate")[0]["candidate"] == "v2"
    bodies = received_in_full(hooks, "/events", status["history"])
    assert [(b["event"], b["phase"]) for b in bodies][-2:] == [("analysis_failed", "progressing"),
                                                              ("phase_changed", "aborted")]
