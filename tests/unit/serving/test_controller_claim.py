"""The controller while it does not hold its model's claim (serve_ab.store.claim): it saves
nothing, refuses actions with a 503, fails its health check only when another app holds the
claim, and takes the claim back once it is free. The deployment's class runs here without
Ray: built around a ControllerCore on a memory store, its claim written at a short interval."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

import serve_ab.serving.controller as controller_module
from serve_ab.api.schemas import ActionRequest
from serve_ab.errors import StoreUnavailable
from serve_ab.serving.controller import ControllerCore, ExperimentController
from serve_ab.serving.core.messages import Action, Refused
from serve_ab.store.claim import CLAIM_TTL_S, Claimant
from serve_ab.store.keys import claim_key, rollout_key
from serve_ab.store.state import MemoryStateStore
from tests.support.reports import ServedRequest, report_of
from tests.unit.serving.test_controller_core import experiment

ME = Claimant(app="ab", cluster="c0ffee", replica="ab#Controller#r1")
NEWER = Claimant(app="ab", cluster="c0ffee", replica="ab#Controller#r2")
OTHER = Claimant(app="other", cluster="c0ffee", replica="other#Controller#o1")
BEAT_S = 0.01


def controller(store: MemoryStateStore) -> ExperimentController:
    # The class under Serve's deployment wrapper, without its async __del__ (Serve's shutdown
    # hook), which the garbage collector would call here and leave unawaited.
    cls = type("Controller", (ExperimentController.func_or_class,), {"__del__": lambda self: None})
    c = cls.__new__(cls)
    c.core = ControllerCore(experiment(), store)
    c._claimant = ME
    c._not_holding = None
    c._claim_lost = None
    c._changed = asyncio.Event()
    return c


async def beats(c: ExperimentController, count: int = 3) -> None:
    task = asyncio.get_running_loop().create_task(c._keep_claim())
    await asyncio.sleep(BEAT_S * count + 0.05)
    task.cancel()


@pytest.fixture(autouse=True)
def short_heartbeat(monkeypatch):
    monkeypatch.setattr(controller_module, "HEARTBEAT_S", BEAT_S)


def test_while_a_newer_replica_holds_the_claim_it_saves_nothing_and_stays_healthy():
    store = MemoryStateStore()
    key = claim_key(experiment())
    store.claim(key, ME.row(time.time()), CLAIM_TTL_S)
    c = controller(store)

    async def scenario():
        await beats(c)
        assert c._not_holding is None
        store.claim(key, NEWER.row(time.time()), CLAIM_TTL_S)  # a redeploy's new replica
        await beats(c)
        assert c._not_holding is not None and NEWER.replica in c._not_holding
        c.check_health()  # healthy: it is only stopping
        saved = store.load(rollout_key(experiment()))
        answer = await c.act(Action.PAUSE, ActionRequest())
        assert isinstance(answer, Refused) and isinstance(answer.error, StoreUnavailable)
        assert "retry" in answer.error.message
        assert store.load(rollout_key(experiment())) == saved  # the pause was not saved
        assert store.load(key)["replica"] == NEWER.replica  # its heartbeat did not write over r2's
        store.release(key, NEWER.owner, NEWER.replica)  # r2 is gone: r1 takes the claim again
        await beats(c)
        assert c._not_holding is None and store.load(key)["replica"] == ME.replica
        answer = await c.act(Action.PAUSE, ActionRequest())
        assert not isinstance(answer, Refused)

    asyncio.run(scenario())


def test_when_another_app_took_the_claim_the_health_check_fails():
    store = MemoryStateStore()
    key = claim_key(experiment())
    c = controller(store)
    store.save(key, OTHER.row(time.time()))  # another app claimed it while this one stalled

    async def scenario():
        await beats(c)

    asyncio.run(scenario())
    with pytest.raises(RuntimeError, match="another app took this model's state"):
        c.check_health()
    assert store.load(key)["owner"] == OTHER.owner


def test_figures_are_not_saved_once_a_newer_replica_holds_the_claim_even_before_the_heartbeat_says():
    """A redeploy's new controller takes the claim and reads the saved figures as it starts;
    the old one learns of it only at its next heartbeat. Saving meanwhile would tell routers
    that reports were saved which the new one never read, and they would drop them."""
    store = MemoryStateStore()
    key = claim_key(experiment())
    store.claim(key, ME.row(time.time()), CLAIM_TTL_S)
    c = controller(store)
    row = ServedRequest(0.0, "v1", 3.0, None, 1, 0.9, "r1", 7, True, False)
    sent = report_of([row], core=c.core)
    c.core.receive(dataclasses.replace(sent, seq=1, first_seq=1))
    assert c._save_if_holding(c.core.checkpoint())
    assert c.core.numbers.saved == {"router-1": 1}
    c.core.receive(dataclasses.replace(sent, seq=2, first_seq=2, controller_seen=c.core.name))
    store.claim(key, NEWER.row(time.time()), CLAIM_TTL_S)  # r2 starts and reads the store
    saved = store.load(c.core._stats_key())
    assert not c._save_if_holding(c.core.checkpoint())
    assert store.load(c.core._stats_key()) == saved and c.core.numbers.saved == {"router-1": 1}
    assert c._not_holding is None  # the heartbeat says so later; only the save is held back
