"""The rollout state stores: a save is whole or absent, and a failed save keeps the old state.

The contract tests run on every store: SQLite, memory and a real Redis (``redis_server``).
"""

from __future__ import annotations

import gc
import os
import warnings

import pytest

from serve_ab.store.state import MemoryStateStore, SqliteStateStore

STORES = ["sqlite", "memory", "redis"]


@pytest.fixture(params=STORES)
def reopen(request, tmp_path):
    """A function returning the store under test; each call opens it anew on the same data
    (as a restarted controller does), except memory's, which has only the one object."""
    if request.param == "sqlite":
        return lambda: SqliteStateStore(tmp_path / "state.sqlite")
    if request.param == "memory":
        store = MemoryStateStore()
        return lambda: store
    from serve_ab.store.redis_store import RedisStateStore

    url = request.getfixturevalue("redis_url")
    return lambda: RedisStateStore.from_url(url)


def test_save_replaces_the_state_and_load_reads_it_back(reopen):
    store = reopen()
    assert store.load("k") is None
    store.save("k", {"revision": 1, "weights": {"v1": 100.0}})
    store.save("k", {"revision": 2, "weights": {"v1": 90.0, "v2": 10.0}})
    assert store.load("k") == {"revision": 2, "weights": {"v1": 90.0, "v2": 10.0}}
    assert reopen().load("k") == {"revision": 2, "weights": {"v1": 90.0, "v2": 10.0}}


def test_a_state_that_cannot_be_written_leaves_the_previous_one(reopen):
    store = reopen()
    store.save("k", {"revision": 1})
    with pytest.raises(TypeError):
        store.save("k", {"revision": 2, "bad": object()})
    assert reopen().load("k") == {"revision": 1}


def test_delete_removes_only_its_key(reopen):
    store = reopen()
    store.save("a", {"n": 1})
    store.save("b", {"n": 2})
    store.delete("a")
    store.delete("never-saved")  # not an error
    assert (store.load("a"), store.load("b")) == (None, {"n": 2})


def test_create_keeps_the_first_row(reopen):
    store = reopen()
    assert store.create("feedback-key:m", {"key_hex": "aa"}) == {"key_hex": "aa"}
    assert reopen().create("feedback-key:m", {"key_hex": "bb"}) == {"key_hex": "aa"}
    assert store.load("feedback-key:m") == {"key_hex": "aa"}


def test_sqlite_closes_its_connections(tmp_path):
    store = SqliteStateStore(tmp_path / "state.sqlite")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)  # an unclosed connection warns when collected
        for revision in range(50):
            store.save("k", {"revision": revision})
            store.load("k")
        gc.collect()
    if os.path.isdir("/proc/self/fd"):
        open_files = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                      if os.path.exists(f"/proc/self/fd/{fd}")]
        assert not [f for f in open_files if f.endswith("state.sqlite")]


def test_the_state_file_is_readable_by_its_owner_only(tmp_path):
    """It holds the feedback tokens' signing key: another local user who could read it could
    forge feedback (the audit of 2026-12-04 found it 0644)."""
    old_umask = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.sqlite"
        SqliteStateStore(fresh).save("k", {"a": 1})
        existing = tmp_path / "existing.sqlite"
        existing.touch(mode=0o644)
        SqliteStateStore(existing)
    finally:
        os.umask(old_umask)
    assert (fresh.stat().st_mode & 0o777, existing.stat().st_mode & 0o777) == (0o600, 0o600)
    assert SqliteStateStore(fresh).load("k") == {"a": 1}


# -- claims: one running app per model and store (serve_ab.store.claim) ---------------------------


def _row(owner: str, beat_s: float, replica: str = "r1") -> dict:
    return {"owner": owner, "app": owner.split("/")[-1], "cluster": "c", "replica": replica, "heartbeat_s": beat_s}


def test_a_claim_is_taken_when_free_renewed_by_its_owner_and_refused_to_others_while_live(reopen):
    store = reopen()
    a = _row("c/a", 100.0)
    assert store.claim("app:m", a, 30.0) == a
    assert reopen().claim("app:m", _row("c/b", 110.0), 30.0) == a  # a wrote 10 s ago: kept
    assert store.load("app:m") == a
    renewed = _row("c/a", 125.0, replica="r2")  # the owner again, another replica: renewed
    assert store.claim("app:m", renewed, 30.0) == renewed
    assert store.claim("app:m", _row("c/b", 155.0), 30.0) == renewed  # 30 s: not yet lapsed


def test_a_claim_not_written_for_the_ttl_lapses_to_the_next_claimant(reopen):
    store = reopen()
    store.claim("app:m", _row("c/a", 100.0), 30.0)
    b = _row("c/b", 130.5)
    assert store.claim("app:m", b, 30.0) == b
    assert reopen().load("app:m") == b


@pytest.mark.parametrize("row", [{"owner": "c/a"}, {"owner": "c/a", "heartbeat_s": "soon"},
                                 {"owner": "c/a", "heartbeat_s": True}, {"key_hex": "aa"}])
def test_a_row_of_another_shape_is_nobodys_claim(reopen, row):
    store = reopen()
    store.save("app:m", row)  # written by hand, or by another tool
    b = _row("c/b", 100.0)
    assert store.claim("app:m", b, 30.0) == b


def test_release_deletes_only_the_claim_of_that_owner_and_replica(reopen):
    store = reopen()
    a = _row("c/a", 100.0, replica="r1")
    store.claim("app:m", a, 30.0)
    store.release("app:m", "c/b", "r1")  # another app
    store.release("app:m", "c/a", "r0")  # the owner's older replica, stopping after r1 took over
    store.release("app:other", "c/a", "r1")  # nothing there: not an error
    assert store.load("app:m") == a
    store.release("app:m", "c/a", "r1")
    assert reopen().load("app:m") is None


@pytest.mark.parametrize("kind", ["sqlite", "redis"])  # the stores two processes share
def test_concurrent_claims_leave_one_owner(kind, request, tmp_path):
    """Eight claimants at once, in threads over their own connections: each is told the
    same owner, the one that is stored."""
    import threading

    if kind == "sqlite":
        reopen = lambda: SqliteStateStore(tmp_path / "state.sqlite")  # noqa: E731
    else:
        from serve_ab.store.redis_store import RedisStateStore

        url = request.getfixturevalue("redis_url")
        reopen = lambda: RedisStateStore.from_url(url)  # noqa: E731

    barrier = threading.Barrier(8)
    told: list[str] = []

    def claim(i: int) -> None:
        store = reopen()
        barrier.wait()
        for round_ in range(20):
            told.append((round_, store.claim(f"app:{round_}", _row(f"c/app{i}", 100.0), 30.0)["owner"]))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = reopen()
    for round_ in range(20):
        owners = {owner for r, owner in told if r == round_}
        assert owners == {store.load(f"app:{round_}")["owner"]}, owners


def test_a_renewal_of_one_replica_does_not_write_over_a_newer_replica_of_its_owner(reopen):
    store = reopen()
    store.claim("app:m", _row("c/a", 100.0, replica="r1"), 30.0)
    newer = _row("c/a", 101.0, replica="r2")
    assert store.claim("app:m", newer, 30.0) == newer  # the owner's new replica: taken at once
    assert store.claim("app:m", _row("c/a", 102.0, replica="r1"), 30.0, same_replica=True) == newer
    assert reopen().load("app:m") == newer
    mine = _row("c/a", 103.0, replica="r2")
    assert store.claim("app:m", mine, 30.0, same_replica=True) == mine
