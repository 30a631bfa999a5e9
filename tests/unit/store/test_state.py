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
