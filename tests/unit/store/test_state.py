"""The rollout state stores: a save is whole or absent, and a failed save keeps the old state."""

from __future__ import annotations

import gc
import os
import warnings

import pytest

from serve_ab.store.state import MemoryStateStore, SqliteStateStore


@pytest.mark.parametrize("make", [lambda p: SqliteStateStore(p / "state.sqlite"), lambda p: MemoryStateStore()])
def test_save_replaces_the_state_and_load_reads_it_back(tmp_path, make):
    store = make(tmp_path)
    assert store.load("k") is None
    store.save("k", {"revision": 1, "weights": {"v1": 100.0}})
    store.save("k", {"revision": 2, "weights": {"v1": 90.0, "v2": 10.0}})
    assert store.load("k") == {"revision": 2, "weights": {"v1": 90.0, "v2": 10.0}}


def test_a_state_that_cannot_be_written_leaves_the_previous_one(tmp_path):
    store = SqliteStateStore(tmp_path / "state.sqlite")
    store.save("k", {"revision": 1})
    with pytest.raises(TypeError):
        store.save("k", {"revision": 2, "bad": object()})
    assert SqliteStateStore(tmp_path / "state.sqlite").load("k") == {"revision": 1}


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
