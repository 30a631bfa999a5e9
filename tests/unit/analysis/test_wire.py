"""Routers' reports on the wire: narrowed arrays, counts by (group, value), and their size."""

from __future__ import annotations

import collections
import pickle

import numpy as np
import pytest

from serve_ab.analysis.group_counts import GroupCounts
from serve_ab.analysis.wire import narrow


@pytest.mark.parametrize(("values", "dtype"), [
    (np.array([0.0, 1.0, 255.0]), np.uint8),
    (np.array([3, 256]), np.uint16),
    (np.array([70_000.0]), np.uint32),
    (np.zeros(0), np.uint8),
])
def test_whole_numbers_travel_in_the_narrowest_type_and_read_back_the_same(values, dtype):
    out = narrow(values)
    assert out.dtype == dtype
    back = np.zeros(values.size, dtype=values.dtype)
    back[:] = out  # as a reader assigns them
    assert np.array_equal(back, values)


@pytest.mark.parametrize("values", [
    np.array([0.5, 2.0]), np.array([-1.0, 3.0]), np.array([np.nan, 1.0]), np.array([np.inf]),
    np.array([2.0**32]), np.array([2.0**60]), np.array([-3, 4]),
])
def test_what_a_narrow_type_would_change_stays_as_it_was(values):
    assert narrow(values) is values


def _counter(groups, values) -> collections.Counter:
    return collections.Counter(zip(groups.tolist(), values.tolist()))


def test_group_counts_count_what_a_counter_of_pairs_counts_through_adds_merges_and_pickles():
    rng = np.random.default_rng(5)
    total, reference = GroupCounts(129), collections.Counter()
    for size in (0, 1, 7, 300, 2_000, 300):  # new pairs, the same pairs, a mix
        groups, values = rng.integers(0, 129, size), rng.integers(0, 12 if size < 2_000 else 1_000, size)
        part = GroupCounts(129)
        part.add(groups, values)
        total.merge(pickle.loads(pickle.dumps(part)))  # as a router's report arrives
        reference.update(_counter(groups, values))
    assert total.as_dict() == dict(reference) and total.total() == sum(reference.values())
    assert len(total) == len(reference)
    seen, table = total.table(keep=10)
    assert seen.tolist() == sorted({v for _, v in reference if v < 10})
    for (group, value), count in reference.items():
        if value < 10:
            assert table[group, seen.tolist().index(value)] == count
    assert table.sum() == sum(c for (_, v), c in reference.items() if v < 10)
    assert GroupCounts.from_counter(129, reference) == total  # an older router's Counter


def test_group_counts_refuse_a_state_whose_keys_are_not_sorted():
    with pytest.raises(ValueError, match="not sorted"):
        GroupCounts.from_state(129, {"keys": np.array([5, 3]), "counts": np.array([1, 1])})
    with pytest.raises(ValueError, match="keys but"):
        GroupCounts.from_state(129, {"keys": np.array([3]), "counts": np.array([1, 1])})


def test_a_busy_routers_interval_report_stays_under_rays_inline_argument_size():
    """6,250 requests from 5M users (bench_controller's 100,000 req/s over four routers):
    past 100 KB, Ray passes the report through its object store, which costs the controller
    about 0.4 ms more a report (benchmarks/README.md, "Controller cost vs traffic")."""
    from benchmarks.bench_controller import WEIGHTS, rows
    from serve_ab.analysis.aggregate import IntervalAggregate
    from serve_ab.serving.core.messages import IntervalReport

    aggregate = IntervalAggregate()
    served = rows(0, 6_250)
    aggregate.served_rows([(r["version"], r["latency_ms"], r["error_kind"], r["predicted_class"], r["score"],
                            r["unit"], True, False, 0, r["request_id"]) for r in served], {0: WEIGHTS})
    size = len(pickle.dumps(IntervalReport("router-0", aggregate), protocol=5))
    assert size < 95_000, size  # 251 KB before the arrays were narrowed
