"""Properties of assignment over many keys (as in Ray's consistent-hash router tests)."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter

import pytest

from serve_ab.routing import NUM_BUCKETS, Assigner, SplitTable, bucket_of

N_KEYS = 100_000
KEYS = [f"user-{i}" for i in range(N_KEYS)]


def shares(assigner: Assigner, keys=KEYS) -> dict[str, float]:
    counts = Counter(assigner.assign(k) for k in keys)
    return {v: 100.0 * c / len(keys) for v, c in counts.items()}


def test_same_key_same_version():
    assigner = Assigner({"v1": 50, "v2": 30, "v3": 20}, salt="exp")
    first = [assigner.assign(k) for k in KEYS[:5000]]
    again = [assigner.assign(k) for k in KEYS[:5000]]
    assert first == again


@pytest.mark.parametrize(
    "weights",
    [{"v1": 50, "v2": 50}, {"v1": 95, "v2": 5}, {"v1": 50, "v2": 30, "v3": 20}, {"a": 33.33, "b": 33.33, "c": 33.34}],
)
def test_shares_within_one_point_of_weights(weights):
    got = shares(Assigner(weights, salt="exp"))
    for version, weight_pct in weights.items():
        assert abs(got.get(version, 0.0) - weight_pct) < 1.0, (version, got)


def test_weight_zero_gets_nothing():
    got = shares(Assigner({"v1": 60, "v2": 0, "v3": 40}, salt="s"))
    assert "v2" not in got


def test_raising_candidate_weight_moves_only_stable_users_to_candidate():
    steps = [0, 5, 20, 50, 100]
    previous = None
    for step_pct in steps:
        assigner = Assigner({"stable": 100 - step_pct, "canary": step_pct}, salt="exp")
        current = {k: assigner.assign(k) for k in KEYS}
        if previous is not None:
            moved = [(previous[k], current[k]) for k in KEYS if previous[k] != current[k]]
            # Only stable -> canary moves, never the reverse...
            assert all(move == ("stable", "canary") for move in moved)
            # ...and only as many as the weight change demands (within sampling noise).
            prev_canary = sum(v == "canary" for v in previous.values())
            now_canary = sum(v == "canary" for v in current.values())
            assert len(moved) == now_canary - prev_canary
        previous = current


def test_lowering_candidate_weight_moves_only_candidate_users_back():
    before = Assigner({"stable": 50, "canary": 50}, salt="exp")
    after = Assigner({"stable": 80, "canary": 20}, salt="exp")
    moves = Counter((before.assign(k), after.assign(k)) for k in KEYS)
    assert moves[("stable", "canary")] == 0
    assert 29_000 < moves[("canary", "stable")] < 31_000


def test_salt_reshuffles_users():
    a = Assigner({"v1": 50, "v2": 50}, salt="one")
    b = Assigner({"v1": 50, "v2": 50}, salt="two")
    same = sum(a.assign(k) == b.assign(k) for k in KEYS[:20_000])
    assert 9_000 < same < 11_000  # independent: about half agree


def test_same_buckets_in_a_fresh_process():
    """Not Python's per-process hash(): another interpreter (other PYTHONHASHSEED) agrees."""
    sample = KEYS[:: N_KEYS // 200]
    code = (
        "import sys, json; from serve_ab.routing import bucket_of; "
        "print(json.dumps([bucket_of(k, 'exp') for k in json.loads(sys.argv[1])]))"
    )
    import json

    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(sample)],
        check=True, capture_output=True, text=True, env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert json.loads(out.stdout) == [bucket_of(k, "exp") for k in sample]


def test_known_bucket_values_never_change():
    # Pinned values: a change here reshuffles every running experiment's users.
    assert [bucket_of(k, "serve-ab") for k in ("alice", "bob", "user-1")] == KNOWN_BUCKETS
    # The router's assigner hashes from a keyed state it copies: the same buckets.
    assigner = Assigner({"v1": 100.0}, "serve-ab")
    assert [assigner.assign_unit(k)[1] % NUM_BUCKETS for k in ("alice", "bob", "user-1")] == KNOWN_BUCKETS
    assert all(assigner.assign_unit(k)[1] % NUM_BUCKETS == bucket_of(k, "serve-ab") for k in KEYS[:2000])


KNOWN_BUCKETS = [92, 368, 168]


def test_requests_without_key_split_by_weight():
    assigner = Assigner({"v1": 70, "v2": 30}, salt="s", rng=random.Random(7))
    counts = Counter(assigner.assign(None) for _ in range(N_KEYS))
    assert abs(100.0 * counts["v2"] / N_KEYS - 30) < 1.0


def test_split_table_bounds_and_ranges():
    table = SplitTable.from_weights({"a": 12.5, "b": 0, "c": 87.5})
    assert table.upper_bounds == (1250, 1250, NUM_BUCKETS)
    assert table.ranges() == {"a": (0, 1250), "b": (1250, 1250), "c": (1250, NUM_BUCKETS)}
    assert table.version_for_bucket(1249) == "a"
    assert table.version_for_bucket(1250) == "c"
    assert table.weights_pct() == {"a": 12.5, "b": 0.0, "c": 87.5}


@pytest.mark.parametrize("weights, message", [
    ({}, "empty"),
    ({"a": 50, "b": 40}, "sum to 90"),
    ({"a": 110, "b": -10}, "must be >= 0"),
])
def test_split_table_rejects_bad_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        SplitTable.from_weights(weights)
