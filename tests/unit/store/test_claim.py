"""One running app per model and store (serve_ab.store.claim), on a fake clock: who waits,
who is refused at once, and what the refusal says."""

from __future__ import annotations

import asyncio

import pytest

from serve_ab.store.claim import (
    CLAIM_TTL_S,
    FRESH_S,
    WAIT_MARGIN_S,
    Claimant,
    Renewal,
    StoreTaken,
    hold_claim,
    refuse_if_taken,
    renew_claim,
)
from serve_ab.store.state import MemoryStateStore

KEY = "app:digits"
STORE = "controller.state_path '.serve-ab/state.sqlite'"
A = Claimant(app="ab", cluster="c0ffee", replica="ab#Controller#x1")
B = Claimant(app="ab-copy", cluster="c0ffee", replica="ab-copy#Controller#y1")
B_ELSEWHERE = Claimant(app="ab-copy", cluster="beef42", replica="ab-copy#Controller#z1")
A_ELSEWHERE = Claimant(app="ab", cluster="beef42", replica="ab#Controller#z2")


class Clock:
    """Time that passes only when the code under test sleeps."""

    def __init__(self, now_s: float = 1_000.0):
        self.now_s = now_s
        self.slept_s = 0.0

    def __call__(self) -> float:
        return self.now_s

    async def sleep(self, delay_s: float) -> None:
        self.now_s += delay_s
        self.slept_s += delay_s


def running(*names: str):
    async def app_running(name: str) -> bool:
        return name in names
    return app_running


def hold(store, me, clock, app_running) -> None:
    asyncio.run(hold_claim(store, KEY, me, model="digits", store_name=STORE, clock=clock, sleep=clock.sleep,
                           app_running=app_running))


def test_a_free_claim_is_taken_at_once_and_the_owner_takes_it_again_after_a_restart():
    store, clock = MemoryStateStore(), Clock()
    hold(store, A, clock, running())
    assert store.load(KEY)["owner"] == A.owner and clock.slept_s == 0
    restarted = Claimant(A.app, A.cluster, "ab#Controller#x2")  # Serve's new replica of the same app
    hold(store, restarted, clock, running("ab"))
    assert store.load(KEY)["replica"] == restarted.replica and clock.slept_s == 0


def test_another_running_app_on_this_cluster_is_refused_at_once_and_its_claim_is_kept():
    store, clock = MemoryStateStore(), Clock()
    hold(store, A, clock, running())
    clock.now_s += 3.0
    with pytest.raises(StoreTaken) as refused:
        hold(store, B, clock, running("ab", "ab-copy"))
    assert clock.slept_s == 0
    assert store.load(KEY)["owner"] == A.owner
    message = str(refused.value)
    for part in ("model: 'digits'", STORE, "app 'ab' on this cluster", "wrote its claim 3.0s ago",
                 "another model", "its own controller.state_path", "stop app 'ab' first"):
        assert part in message, (part, message)


def test_an_app_being_deleted_is_waited_for_and_its_release_lets_the_next_start():
    store, clock = MemoryStateStore(), Clock()
    hold(store, A, clock, running())

    async def deleting(name: str) -> bool:  # Serve says A is DELETING; it releases 4 s later
        if clock.slept_s >= 4.0:
            store.release(KEY, A.owner, A.replica)
        return False

    hold(store, B, clock, deleting)
    assert store.load(KEY)["owner"] == B.owner
    assert 4.0 <= clock.slept_s <= 6.0


def test_a_crashed_controllers_claim_is_waited_out_and_then_taken():
    store, clock = MemoryStateStore(), Clock()
    hold(store, A, clock, running())
    clock.now_s += 10.0  # A's controller died 10 s ago without releasing
    hold(store, B, clock, running())  # Serve has no app "ab" any more
    assert store.load(KEY)["owner"] == B.owner
    assert CLAIM_TTL_S - 10.0 <= clock.slept_s <= CLAIM_TTL_S - 10.0 + 1.0


def test_an_app_on_another_cluster_that_keeps_writing_is_refused_after_the_wait():
    store, clock = MemoryStateStore(), Clock()
    hold(store, A, clock, running())

    async def other_cluster_keeps_writing(name: str) -> bool:
        raise AssertionError("Serve here cannot know another cluster's apps; it is not asked")

    original_sleep = clock.sleep

    async def sleep(delay_s: float) -> None:  # A renews every 5 s, as a live controller does
        await original_sleep(delay_s)
        if int(clock.slept_s) % 5 == 0:
            renew_claim(store, KEY, A, clock(), model="digits", store_name=STORE)

    clock.sleep = sleep
    with pytest.raises(StoreTaken) as refused:
        hold(store, B_ELSEWHERE, clock, other_cluster_keeps_writing)
    assert CLAIM_TTL_S + WAIT_MARGIN_S <= clock.slept_s <= CLAIM_TTL_S + WAIT_MARGIN_S + 1.0
    assert "on another Ray cluster (c0ffee)" in str(refused.value)
    assert store.load(KEY)["owner"] == A.owner


def test_renewal_keeps_the_claim_and_says_so_when_another_app_took_it_meanwhile():
    store, clock = MemoryStateStore(), Clock()
    hold(store, A, clock, running())
    found, _ = renew_claim(store, KEY, A, clock() + 5.0, model="digits", store_name=STORE)
    assert found is Renewal.KEPT and store.load(KEY)["heartbeat_s"] == clock() + 5.0
    # A's loop stalled past the TTL, and B claimed the lapsed key.
    clock.now_s += 5.0 + CLAIM_TTL_S + 1.0
    hold(store, B, clock, running())
    found, line = renew_claim(store, KEY, A, clock() + 1.0, model="digits", store_name=STORE)
    assert found is Renewal.TAKEN and "another app took this model's state" in line and "'ab-copy'" in line
    assert store.load(KEY)["owner"] == B.owner  # B keeps it: A is the one that lapsed


def test_a_redeployed_app_takes_the_claim_and_its_stopping_replica_neither_renews_nor_releases_it():
    """Serve starts the new controller replica while the old one drains: the old one's
    heartbeat must not write over the new one's row, nor its release delete it."""
    store, clock = MemoryStateStore(), Clock()
    hold(store, A, clock, running())
    newer = Claimant(A.app, A.cluster, "ab#Controller#x2")
    clock.now_s += 2.0
    hold(store, newer, clock, running("ab"))  # the same app: at once, no wait
    assert clock.slept_s == 0 and store.load(KEY)["replica"] == newer.replica
    found, line = renew_claim(store, KEY, A, clock() + 1.0, model="digits", store_name=STORE)
    assert found is Renewal.SUPERSEDED and newer.replica in line
    store.release(KEY, A.owner, A.replica)
    assert store.load(KEY)["replica"] == newer.replica


def test_the_same_app_on_another_cluster_takes_the_claim_at_once():
    """A RayService upgrade (a new cluster beside the old, one Redis) or a cluster restarted
    beside its Redis: the same app, moved."""
    store, clock = MemoryStateStore(), Clock()
    hold(store, A, clock, running())
    hold(store, A_ELSEWHERE, clock, running())
    assert clock.slept_s == 0 and store.load(KEY)["cluster"] == A_ELSEWHERE.cluster
    found, _ = renew_claim(store, KEY, A, clock() + 5.0, model="digits", store_name=STORE)
    assert found is Renewal.SUPERSEDED  # the old cluster's controller stops writing the claim


def test_a_claim_no_longer_renewed_by_a_running_app_is_waited_out_not_refused():
    """App "ab" is still running (redeployed to another model, say) but its old controller
    stopped writing this claim without releasing it: wait for the lapse, do not refuse."""
    store, clock = MemoryStateStore(), Clock()
    hold(store, A, clock, running())
    clock.now_s += FRESH_S + 1.0
    hold(store, B, clock, running("ab", "ab-copy"))
    assert store.load(KEY)["owner"] == B.owner
    assert CLAIM_TTL_S - FRESH_S - 1.0 <= clock.slept_s <= CLAIM_TTL_S - FRESH_S


def test_a_router_is_refused_only_by_a_live_claim_of_another_running_app_on_this_cluster():
    store, clock = MemoryStateStore(), Clock()
    asked: list[str] = []

    def app_running(name: str) -> bool:
        asked.append(name)
        return name == "ab"

    def check(me: Claimant, now_s: float) -> None:
        refuse_if_taken(store, KEY, me, now_s, model="digits", store_name=STORE, app_running=app_running)

    check(B, clock())  # nobody's
    hold(store, A, clock, running())
    check(A, clock())  # its own app's
    check(B_ELSEWHERE, clock())  # another cluster's: its controller waits and decides
    check(B, clock() + FRESH_S + 1.0)  # no longer renewed: left to the controller
    assert asked == []  # Serve was asked nothing so far
    with pytest.raises(StoreTaken, match="app 'ab' on this cluster"):
        check(B, clock() + 1.0)
    assert asked == ["ab"]
    store.save(KEY, {"owner": A.owner, "app": "gone", "cluster": A.cluster, "replica": "r", "heartbeat_s": clock()})
    check(B, clock())  # Serve has no app "gone" (deleted): left to the controller


def test_the_refusal_names_the_field_that_separates_apps_in_that_kind_of_store():
    store, clock = MemoryStateStore(), Clock()
    hold(store, A, clock, running())
    redis = "controller.store_url 'redis://redis:6379/0' (store_key_prefix 'serve-ab:')"
    with pytest.raises(StoreTaken) as refused:
        asyncio.run(hold_claim(store, KEY, B, model="digits", store_name=redis, clock=clock, sleep=clock.sleep,
                               app_running=running("ab")))
    assert "its own controller.store_key_prefix" in str(refused.value)
    assert "state_path" not in str(refused.value)


def test_a_claim_row_that_is_not_json_is_nobodys():
    store, clock = MemoryStateStore(), Clock()
    store.rows[KEY] = "{written by hand"
    hold(store, B, clock, running("ab"))
    assert store.load(KEY)["owner"] == B.owner and clock.slept_s == 0
