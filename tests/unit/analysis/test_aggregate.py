"""A router's interval aggregate merged at the controller gives the figures that recording
every request there gave: the same counts, per-bucket sums, units and shadow pairs."""

from __future__ import annotations

import numpy as np
import pytest

from serve_ab.analysis.accumulate import ExperimentStats
from serve_ab.analysis.aggregate import ROUTER_MAX_UNITS, IntervalAggregate

from tests.support.aggregates import assert_same

WEIGHTS = {"v1": 80.0, "v2": 20.0}
LATER = {"v1": 50.0, "v2": 50.0}


def traffic(seed: int, n: int):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        version = "v2" if rng.random() < 0.3 else "v1"
        unit = int(rng.integers(0, 2_000)) if rng.random() < 0.9 else None
        kind = rng.choice(["assigned", "pinned", "mirrored"], p=[0.8, 0.1, 0.1])
        error = "model" if rng.random() < 0.05 else None
        weights, split = (WEIGHTS, 1) if rng.random() < 0.6 else (LATER, 2)
        yield dict(version=version, latency_ms=float(rng.lognormal(1.0, 0.5)), error_kind=error,
                   predicted_class=int(rng.integers(0, 10)), score=float(rng.random()),
                   unit=None if kind != "assigned" else unit, assigned=kind == "assigned",
                   mirrored=kind == "mirrored", split=split, weights=weights)


def test_merged_intervals_equal_recording_every_request():
    direct = ExperimentStats(["v1", "v2"], 0.0, shadow_version="v2")
    merged = ExperimentStats(["v1", "v2"], 0.0, shadow_version="v2")
    routers = [IntervalAggregate(), IntervalAggregate(), IntervalAggregate()]
    for i, row in enumerate(traffic(seed=1, n=3_000)):
        if not row["mirrored"]:
            direct.record(1.0, row["version"], row["latency_ms"], row["error_kind"], row["predicted_class"],
                          row["unit"], row["assigned"], split=row["weights"])
        routers[i % 3].served(row["version"], row["latency_ms"], row["error_kind"], row["predicted_class"],
                              row["score"], unit=row["unit"], assigned=row["assigned"], mirrored=row["mirrored"],
                              split=row["split"], weights_pct=row["weights"])
        if row["mirrored"]:
            direct.record_pair(1.0, "v1", 3, row["predicted_class"], 0.1, row["latency_ms"], row["error_kind"])
            routers[i % 3].pair("v1", "v2", 3, row["predicted_class"], 0.1, row["latency_ms"], row["error_kind"])
    for router in routers:
        merged.merge(1.0, router)
    a, b = direct.snapshot(2.0), merged.snapshot(2.0)
    for name in ("v1", "v2"):
        for field in ("requests", "assigned", "errors", "errors_by_kind", "predictions", "units"):
            assert a["versions"][name][field] == b["versions"][name][field], (name, field)
        la, lb = a["versions"][name]["latency"], b["versions"][name]["latency"]
        assert la["bucket_counts"] == lb["bucket_counts"] and la["sum_s"] == pytest.approx(lb["sum_s"])
        assert la["sketch_ms"]["counts"] == lb["sketch_ms"]["counts"]
    assert [s["key"] for s in a["splits"]] == [s["key"] for s in b["splits"]]
    for sa, sb in zip(a["splits"], b["splits"]):
        assert sa["units_kept"] == sb["units_kept"] and sa["units_keyless"] == sb["units_keyless"]
        for metric in sa["metrics"]:
            ma, mb = sa["metrics"][metric], sb["metrics"][metric]
            assert ma["buckets"] == mb["buckets"]
            assert np.allclose(ma["s"], mb["s"]) and np.allclose(ma["n"], mb["n"])
            assert {v: np.round(m, 6).tolist() for v, m in ma["keyless"].items()} == \
                   {v: np.round(m, 6).tolist() for v, m in mb["keyless"].items()}
    sha, shb = a["shadow"], b["shadow"]
    for field in ("mirrored", "errors", "pairs", "agree", "confusion", "pairs_by_live_version"):
        assert sha[field] == shb[field], field


def test_a_router_sends_a_bounded_sample_of_units_and_keeps_its_theta():
    aggregate = IntervalAggregate()
    for unit in range(50_000):  # 50,000 distinct users in one interval
        aggregate.served("v1", 1.0, None, None, None, unit=unit, assigned=True, mirrored=False, split=0,
                         weights_pct={"v1": 100.0})
    sample = aggregate.splits[0].units
    assert sample.size() <= ROUTER_MAX_UNITS and sample.theta < 2**64
    # An unbiased estimate of the users, from the sample.
    assert sample.estimates(["v1"])["v1"] == pytest.approx(50_000, rel=0.1)
    following = aggregate.next_interval()
    following.served("v1", 1.0, None, None, None, unit=1, assigned=True, mirrored=False, split=0,
                     weights_pct={"v1": 100.0})
    assert following.splits[0].units.theta == sample.theta


def test_an_unsent_interval_merges_into_the_next():
    first, second = IntervalAggregate(), IntervalAggregate()
    for aggregate, n in ((first, 3), (second, 4)):
        for i in range(n):
            aggregate.served("v1", 2.0, None, 1, 0.9, unit=i, assigned=True, mirrored=False, split=0,
                             weights_pct={"v1": 100.0})
    second.merge(first)
    assert second.rows == 7 and second.versions["v1"].requests == 7 and second.gates["v1"].requests == 7
    assert second.splits[0].metrics["error_rate"].n.sum() == 7


def test_five_million_users_keep_the_state_bounded_and_srm_still_runs():
    """Routers' intervals of 100,000 new users each, 5M in all, merged by the controller: the
    saved state stops growing once the unit samples are full, the estimate of users stays
    close, and the sample-ratio check runs on the sampled users."""
    import json

    from serve_ab.analysis.accumulate import ExperimentStats
    from serve_ab.analysis.aggregate import SplitAggregate
    from serve_ab.analysis.unit_sample import MAX_SAMPLED_UNITS
    from serve_ab.routing import SplitTable

    weights = {"v1": 50.0, "v2": 50.0}
    table = SplitTable.from_weights(weights)
    stats = ExperimentStats(["v1", "v2"], 0.0)
    stats.set_weights(weights)
    router = IntervalAggregate()
    sizes = {}
    for interval in range(50):
        split = SplitAggregate(dict(weights))
        if 0 in router.unit_thetas:
            split.units.theta = router.unit_thetas[0]
        start = interval * 100_000
        for unit in range(start, start + 100_000):  # what served() adds per assigned request
            split.units.add(table.version_for_bucket(unit % 10_000), unit)
        router.splits[0], router.rows = split, 100_000
        stats.merge(float(interval), router)
        router = router.next_interval()
        if (interval + 1) % 5 == 0:
            sizes[(interval + 1) * 100_000] = len(json.dumps(stats.to_state(float(interval))))
    # Two unit samples (the split's, the run's) of at most MAX_SAMPLED_UNITS 8-byte units,
    # base64 in JSON: a bound set by the cap, not by the users. Exact sets of 5M users would
    # take about 55 MB.
    bound = 2 * MAX_SAMPLED_UNITS * 12 + 200_000
    assert max(sizes.values()) <= bound, sizes
    assert sizes[5_000_000] < 0.05 * 5_000_000 * 11, sizes
    assert stats.units_all.size() <= MAX_SAMPLED_UNITS
    users = stats.units_all.estimates(["v1", "v2"])
    assert sum(users.values()) == pytest.approx(5_000_000, rel=0.02)
    kept = stats.snapshot(50.0)["splits"][0]["units_kept"]
    from scipy import stats as scipy_stats

    p_value = scipy_stats.chisquare([kept["v1"], kept["v2"]]).pvalue
    # 100,000 new users per router interval is extreme: each router sends 1,024 of them (theta
    # 1/128), which still leaves the check tens of thousands of users.
    assert sum(kept.values()) > 20_000 and p_value > 1e-4, (kept, p_value)


def reference_served(aggregate: IntervalAggregate, row: tuple, weights_by_split: dict, keep: bool) -> None:
    """The fold of one answer, row by row, with the per-row methods: what served_rows must equal."""
    from serve_ab.analysis.aggregate import GateAggregate, SplitAggregate
    from serve_ab.analysis.accumulate import VersionStats
    from serve_ab.analysis.unit_sample import UnitSample

    version, latency_ms, error_kind, predicted_class, score, unit, assigned, mirrored, split, request_id = row
    aggregate.rows += 1
    if assigned or mirrored:
        aggregate.gates.setdefault(version, GateAggregate()).add(latency_ms, error_kind is None, predicted_class, score,
                                                                 unit)
    if mirrored:
        return
    aggregate.versions.setdefault(version, VersionStats()).add(latency_ms, error_kind, predicted_class, assigned)
    weights = weights_by_split.get(split)
    if not assigned or weights is None:
        return
    if split not in aggregate.splits:
        units = UnitSample(max_units=ROUTER_MAX_UNITS)
        units.theta = aggregate.unit_thetas.get(split, units.theta)
        aggregate.splits[split] = SplitAggregate(dict(weights), units=units)
    record = aggregate.splits[split]
    bucket = record.bucket(version, unit)
    record.units.add(version, unit)
    record.totals("error_rate").add(bucket, version, float(error_kind is not None))
    if error_kind is None:
        record.totals("latency_ms").add(bucket, version, latency_ms)
    if keep and request_id:
        aggregate.feedback_ids.append((request_id, version, unit, split))


def random_rows(rng: np.random.Generator, n: int, users: int) -> list[tuple]:
    rows = []
    for i in range(n):
        version = str(rng.choice(["v1", "v2", "v3"], p=[0.6, 0.3, 0.1]))
        kind = str(rng.choice(["assigned", "pinned", "mirrored"], p=[0.8, 0.1, 0.1]))
        unit = int(rng.integers(0, users)) * 7_919_003 if rng.random() < 0.85 else None  # spread over buckets
        error = str(rng.choice(["model", "unavailable"])) if rng.random() < 0.07 else None
        score = float(rng.choice([rng.random(), np.nan, np.inf])) if rng.random() < 0.9 else None
        predicted = int(rng.integers(0, 10)) if rng.random() < 0.9 else None
        rows.append((version, float(rng.lognormal(0.5, 1.0)), error, predicted, score, unit, kind == "assigned",
                     kind == "mirrored", int(rng.choice([1, 2, 3])), f"r{i}" if rng.random() < 0.95 else None))
    return rows


@pytest.mark.parametrize("seed", range(6))
def test_folding_many_rows_at_once_equals_folding_them_one_by_one(seed):
    """Routers fold a few hundred held answers at once, as arrays: every count, sketch,
    per-bucket sum, unit sample (halving included) and feedback id is what folding each
    answer by itself gives, over intervals of any size, some splits without weights."""
    rng = np.random.default_rng(seed)
    weights = {1: {"v1": 50.0, "v2": 50.0}, 2: {"v1": 34.0, "v2": 33.0, "v3": 33.0}}  # split 3: not known
    keep = seed % 2 == 0
    batched, reference = IntervalAggregate(), IntervalAggregate()
    for interval in range(3):
        for size in (1, 7, 256, int(rng.integers(2, 2_000))):
            rows = random_rows(rng, size, users=5_000 if seed < 3 else 300)
            batched.served_rows(rows, weights, keep)
            for row in rows:
                reference_served(reference, row, weights, keep)
        assert_same(batched, reference)
        batched, reference = batched.next_interval(), reference.next_interval()
    assert_same(batched, reference)


def test_many_distinct_units_halve_the_batched_sample_as_one_by_one():
    rows = [("v1", 1.0, None, 1, 0.5, unit * 104_729, True, False, 0, None) for unit in range(20_000)]
    batched, reference = IntervalAggregate(), IntervalAggregate()
    batched.served_rows(rows, {0: {"v1": 100.0}})
    for row in rows:
        reference_served(reference, row, {0: {"v1": 100.0}}, False)
    assert batched.splits[0].units.theta < 2**64
    assert_same(batched, reference)
