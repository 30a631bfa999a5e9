"""A router replica starts and serves without the controller: weights and the feedback key
from the state store, then the controller's snapshot once it answers. No Ray, a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from serve_ab.config import parse_experiment
from serve_ab.errors import ControllerUnavailable
from serve_ab.rollout.machine import Rollout
from serve_ab.serving.core.messages import RoutingSnapshot
from serve_ab.serving.core.router import RouterCore
from serve_ab.serving.core.startup import prepare, settle_feedback_key, start
from serve_ab.store.keys import feedback_key, rollout_key
from serve_ab.store.state import MemoryStateStore
from tests.support.fakes import (
    FakeClock,
    FakeController,
    FakeVersion,
    unreachable_store,
)

ROW = [[0.0] * 64]
KEY_ENV = "SERVE_AB_UNIT_FEEDBACK_KEY"


def canary(**changes):
    cfg = {
        "model": "digits",
        "versions": [{"name": "v1", "path": "a.onnx", "backend": "onnx"},
                     {"name": "v2", "path": "b.onnx", "backend": "onnx"}],
        "weights": {"v1": 100},
        "assignment": {"key": "json", "field": "user_id", "salt": "unit"},
        "feedback": {"key_env": KEY_ENV},
        "analysis": {"metrics": [{"name": "correct", "kind": "conversion"}]},  # takes feedback
        "rollout": {"strategy": "canary", "stable": "v1", "candidate": "v2",
                    "steps": [{"set_weight": 20}, {"set_weight": 100}]},
    }
    cfg.update(changes)
    return parse_experiment(cfg)


def started(cfg, open_store, controller, clock):
    core = RouterCore(cfg, {"v1": FakeVersion(1), "v2": FakeVersion(2)}, controller,
                      request_id=lambda: "req-1", clock=clock, sleep=clock.sleep)
    start(core, prepare(cfg, open_store, clock))
    return core


def shares(core: RouterCore) -> set[str]:
    return {asyncio.run(core.serve(ROW, f"user-{i}", None))[0] for i in range(200)}


@pytest.fixture(autouse=True)
def no_key_in_env(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)


def test_a_router_starts_with_the_saved_rollouts_weights_while_the_controller_is_down():
    clock = FakeClock()
    cfg = canary()
    store = MemoryStateStore()
    saved = Rollout(cfg.rollout, clock)
    saved.state.weights = {"v1": 80.0, "v2": 20.0}
    store.save(rollout_key(cfg), saved.to_dict())
    key = feedback_key(cfg, store)  # the controller made it before it went down
    core = started(cfg, lambda: store, FakeController(fail=True), clock)
    assert core.decision.assigner.table.weights_pct() == {"v1": 80.0, "v2": 20.0}
    assert core.epoch == -1  # rows of an unknown epoch: the controller counts them under its weights now
    assert shares(core) == {"v1", "v2"}
    assert core.signer is not None and core.signer.key == key  # tokens the other replicas accept


def test_an_empty_store_gives_the_configs_weights_and_makes_the_key_once():
    clock = FakeClock()
    store = MemoryStateStore()
    core = started(canary(), lambda: store, FakeController(fail=True), clock)
    assert core.decision.assigner.table.weights_pct() == {"v1": 100.0, "v2": 0.0}
    assert shares(core) == {"v1"}
    other = started(canary(), lambda: store, FakeController(fail=True), clock)
    assert other.signer.key == core.signer.key  # created once, atomically, for every replica
    static = started(canary(rollout=None, weights={"v1": 30, "v2": 70}), lambda: store,
                     FakeController(fail=True), clock)
    assert static.decision.assigner.table.weights_pct() == {"v1": 30.0, "v2": 70.0}


def test_a_saved_rollout_of_another_schema_is_not_trusted():
    clock = FakeClock()
    cfg = canary()
    store = MemoryStateStore()
    store.save(rollout_key(cfg), {"schema": 0, "weights": {"v1": 0.0, "v2": 100.0}})
    core = started(cfg, lambda: store, FakeController(fail=True), clock)
    assert core.decision.assigner.table.weights_pct() == {"v1": 100.0, "v2": 0.0}


def test_the_controllers_snapshot_is_applied_when_it_comes():
    clock = FakeClock()
    controller = FakeController(fail=True)
    core = started(canary(), MemoryStateStore, controller, clock)

    async def go():
        follower = asyncio.get_running_loop().create_task(core.follow())
        for _ in range(10):
            await asyncio.sleep(0)
        assert core.epoch == -1  # still retrying, still serving
        controller.fail = False
        controller.push(RoutingSnapshot(4, {"v1": 50.0, "v2": 50.0}))
        for _ in range(20):
            await asyncio.sleep(0)
        follower.cancel()

    asyncio.run(go())
    assert core.epoch == 4 and core.decision.assigner.table.weights_pct() == {"v1": 50.0, "v2": 50.0}


def test_an_unreachable_store_starts_on_the_config_and_feedback_waits_for_the_key():
    clock = FakeClock()
    controller = FakeController(fail=True)
    core = started(canary(), unreachable_store, controller, clock)
    assert core.decision.assigner.table.weights_pct() == {"v1": 100.0, "v2": 0.0}
    choice, version, _ = asyncio.run(core.serve_choice(ROW, "u", None))
    assert version == "v1" and core.feedback_token_for("req-1", choice) is None  # served, untokened
    with pytest.raises(ControllerUnavailable, match="feedback key"):  # a 503: retry
        core.verify_feedback("any-token", "req-1")

    async def go():
        settling = asyncio.get_running_loop().create_task(
            settle_feedback_key(core, controller, unreachable_store, clock.sleep))
        for _ in range(20):
            await asyncio.sleep(0)
        assert core.signer is None and not settling.done()
        controller.fail = False  # the controller is back: its key
        await settling

    asyncio.run(go())
    assert core.signer.key == b"k" * 32
    assert core.feedback_token_for("req-1", choice) is not None


def test_the_key_from_the_environment_needs_no_store(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "an-environment-key-of-32-bytes!!")
    core = started(canary(), unreachable_store, FakeController(fail=True), FakeClock())
    assert core.signer.key == b"an-environment-key-of-32-bytes!!"


def test_the_controllers_key_wins_over_a_store_of_its_own():
    """A router whose store is not the controller's (a node-local file on another node) made
    a key of its own; once the controller answers, the router signs with the controller's."""
    clock = FakeClock()
    core = started(canary(), MemoryStateStore, FakeController(fail=True), clock)
    assert core.signer.key != b"k" * 32
    asyncio.run(settle_feedback_key(core, FakeController(), MemoryStateStore, clock.sleep))
    assert core.signer.key == b"k" * 32


def test_a_redis_that_is_down_is_one_line_in_the_log_and_anything_else_a_traceback(caplog):
    """A store that cannot be reached says all there is in its error: each router would
    otherwise log a 60-line traceback per read at start. A store that fails otherwise
    keeps its traceback, and a refused password is not taken for an outage."""
    import logging
    import socket

    import redis

    from serve_ab.store.redis_store import RedisStateStore
    from serve_ab.store.state import store_unreachable

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = RedisStateStore.from_url(f"redis://127.0.0.1:{port}/0", timeout_s=0.5)
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        start_ = prepare(canary(), lambda: down, FakeClock())
    assert start_.source == "config"
    lines = [r for r in caplog.records if "serve-ab router" in r.getMessage()]
    assert lines and all(r.exc_info is None and "ConnectionError" in r.getMessage() for r in lines)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        prepare(canary(), unreachable_store, FakeClock())  # an OSError: not Redis, so its traceback
    assert any(r.exc_info is not None for r in caplog.records)
    assert store_unreachable(redis.ConnectionError("down")) and store_unreachable(redis.TimeoutError("slow"))
    assert not store_unreachable(redis.AuthenticationError("invalid password"))
    assert not store_unreachable(OSError(5, "Input/output error"))
    import ssl

    try:  # rediss:// to a server without TLS: redis-py wraps the handshake's error
        raise redis.ConnectionError("network") from ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    except redis.ConnectionError as tls:
        assert not store_unreachable(tls)


def test_a_refused_redis_password_is_one_line_naming_where_the_password_comes_from(redis_server, caplog):
    """A wrong password stays wrong until the config changes: the controller fails the deploy
    naming it, and each router said it in three tracebacks at start; now one line a read."""
    import logging

    import redis

    from serve_ab.store.redis_store import RedisStateStore

    admin = redis.Redis.from_url(redis_server.url)
    admin.config_set("requirepass", "s3cret")
    try:
        wrong = RedisStateStore.from_url(redis_server.url.replace("redis://", "redis://:wrong@"), timeout_s=0.5)
        with caplog.at_level(logging.WARNING, logger="ray.serve"):
            start_ = prepare(canary(), lambda: wrong, FakeClock())
    finally:
        redis.Redis.from_url(redis_server.url, password="s3cret").config_set("requirepass", "")
    assert start_.source == "config" and start_.feedback_key is None
    lines = [r for r in caplog.records if "serve-ab router" in r.getMessage()]
    assert len(lines) == 2 and all(r.exc_info is None for r in lines), [r.getMessage() for r in lines]
    assert all("AuthenticationError" in r.getMessage() and "controller.store_password_env" in r.getMessage()
               and "wrong" not in r.getMessage() for r in lines)
