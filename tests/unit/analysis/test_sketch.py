"""The log-bucket sketch: quantiles within its stated 1%, exact merges, small on the wire."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from serve_ab.analysis.sketch import MIN_ABS, RELATIVE_ACCURACY, LogHistogram


@pytest.mark.parametrize("seed", range(3))
def test_quantiles_are_within_the_stated_relative_error_of_numpys(seed):
    rng = np.random.default_rng(seed)
    values = rng.lognormal(mean=1.0, sigma=1.2, size=5_000)
    sketch = LogHistogram.of(values)
    for q in (0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999):
        assert sketch.quantile(q) == pytest.approx(np.percentile(values, q * 100), rel=RELATIVE_ACCURACY)
    assert (sketch.count, sketch.min, sketch.max) == (values.size, values.min(), values.max())
    assert sketch.mean == pytest.approx(values.mean(), rel=1e-12)  # the sum is exact


def test_rank_bounds_bracket_the_order_statistic():
    rng = np.random.default_rng(7)
    values = np.sort(rng.exponential(10.0, size=2_000))
    sketch = LogHistogram.of(values)
    for rank in (0, 1, 100, 1_000, 1_900, 1_999):
        lower, upper = sketch.rank_bounds(rank)
        assert lower <= values[rank] <= upper
        assert upper <= lower * (1 + RELATIVE_ACCURACY) ** 2 / (1 - RELATIVE_ACCURACY) ** 2 + 1e-12


def test_negative_zero_and_positive_values_keep_their_order():
    values = np.array([-5.0, -0.5, 0.0, 1e-9, 0.5, 5.0])
    sketch = LogHistogram.of(values)
    ranked = [sketch.value_at_rank(r) for r in range(values.size)]
    assert ranked == sorted(ranked)
    assert ranked[1] == pytest.approx(-0.5, rel=RELATIVE_ACCURACY)
    assert abs(ranked[2]) < MIN_ABS and abs(ranked[3]) < MIN_ABS


def test_merging_equals_sketching_everything_at_once():
    rng = np.random.default_rng(3)
    parts = [rng.gamma(2.0, 3.0, size=n) for n in (10, 500, 3_000)]
    merged = LogHistogram()
    for part in parts:
        merged.merge(LogHistogram.of(part))
    whole = LogHistogram.of(np.concatenate(parts))
    assert np.array_equal(merged.counts, whole.counts) and merged.count == whole.count
    assert merged.total == pytest.approx(whole.total) and (merged.min, merged.max) == (whole.min, whole.max)


def test_add_and_add_many_agree_and_the_wire_form_is_sparse():
    rng = np.random.default_rng(4)
    values = rng.normal(0.0, 3.0, size=1_000)
    one_by_one = LogHistogram()
    for value in values:
        one_by_one.add(float(value))
    assert np.array_equal(one_by_one.counts, LogHistogram.of(values).counts)
    restored = pickle.loads(pickle.dumps(one_by_one))
    assert np.array_equal(restored.counts, one_by_one.counts) and restored.count == 1_000
    # A dense store is 27.6 KB (the sketch module's comment); pickled, only the used buckets travel.
    assert one_by_one.counts.nbytes == 27_640
    assert len(pickle.dumps(one_by_one)) < 12_000
    assert LogHistogram.from_wire(one_by_one.to_wire()).quantile(0.5) == one_by_one.quantile(0.5)


def test_a_wire_form_with_buckets_out_of_range_is_refused():
    with pytest.raises(ValueError, match="out of range"):
        LogHistogram.from_wire({"index": [10**6], "counts": [1], "count": 1, "sum": 1.0, "min": 1.0, "max": 1.0})


# ---- scores: the counts of 1 - x beside those of x ---------------------------------------------


def _empirical_cdf(values: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.sort(values), t, side="right") / values.size


@pytest.mark.parametrize("draw", ["confident", "logits", "latencies"])
def test_scores_know_both_cdfs_exactly_at_every_threshold_they_report(draw):
    rng = np.random.default_rng(11)
    values = {"confident": lambda: rng.beta(40.0, 0.4, 2_000), "logits": lambda: rng.normal(1.0, 3.0, 2_000),
              "latencies": lambda: rng.lognormal(2.0, 0.5, 2_000)}[draw]
    a, b = values(), values() * 0.999
    t, fa, fb = LogHistogram.of(a, complement=True).cdf_points(LogHistogram.of(b, complement=True))
    assert np.all(np.diff(t) >= 0)
    # Exact but for values within float rounding of a threshold (none among these draws).
    assert np.array_equal(fa, _empirical_cdf(a, t)) and np.array_equal(fb, _empirical_cdf(b, t))


def test_scores_near_one_are_resolved_to_a_percent_of_their_distance_from_one():
    values = 1.0 - np.geomspace(1e-4, 1e-2, 500)  # 0.9900 .. 0.9999: three buckets of x
    plain, both = LogHistogram.of(values), LogHistogram.of(values, complement=True)
    assert np.unique(plain.cdf_points(plain)[0]).size <= 8
    t = both.cdf_points(both)[0]
    gaps = np.diff(np.unique(t[(t > 0.99) & (t < 1.0)]))
    assert gaps.max() <= 2 * RELATIVE_ACCURACY * 1e-2 * 1.01  # 2% of the widest distance from 1


def test_merging_keeps_the_complement_only_while_every_part_has_one():
    rng = np.random.default_rng(5)
    parts = [rng.beta(20.0, 0.5, n) for n in (10, 300)]
    merged = LogHistogram(complement=True)
    for part in parts:
        merged.merge(LogHistogram.of(part, complement=True))
    whole = LogHistogram.of(np.concatenate(parts), complement=True)
    assert np.array_equal(merged.complement, whole.complement)
    assert np.array_equal(merged.copy().complement, whole.complement)
    # A histogram that never counted any value adopts the complement it merges.
    empty_plain = LogHistogram()
    empty_plain.merge(whole)
    assert np.array_equal(empty_plain.complement, whole.complement)
    # An old router's sketch (no complement) with values in it: the sum no longer knows 1 - x,
    # whichever side it is merged into, and reads as the sketch of x alone.
    old = LogHistogram.of(rng.beta(20.0, 0.5, 50))
    for first, second in ((whole.copy(), old), (old.copy(), whole)):
        first.merge(second)
        assert first.complement is None and first.count == whole.count + old.count
        plain = LogHistogram()
        plain.counts, plain.count = first.counts.copy(), first.count
        assert np.array_equal(first.cdf_points(first)[0], plain.cdf_points(plain)[0])  # the edges of x only
    # An empty one without a complement changes nothing.
    kept = whole.copy()
    kept.merge(LogHistogram())
    assert np.array_equal(kept.complement, whole.complement)


def test_the_complement_travels_in_keys_the_code_before_ignores():
    rng = np.random.default_rng(6)
    sketch = LogHistogram.of(rng.beta(20.0, 0.5, 400), complement=True)
    restored = pickle.loads(pickle.dumps(sketch))
    assert np.array_equal(restored.complement, sketch.complement) and np.array_equal(restored.counts, sketch.counts)
    assert np.array_equal(LogHistogram.from_wire(sketch.to_wire()).complement, sketch.complement)
    # What the code before read (its keys only) is the same histogram of x: a controller not yet
    # upgraded reads a new router's report as it read the old ones'.
    old_keys = ("index", "counts", "count", "sum", "min", "max")
    for state in (sketch.__getstate__(), sketch.to_wire()):
        assert set(state) == {*old_keys, "complement_index", "complement_counts"}
        as_before = LogHistogram.from_wire({k: state[k] for k in old_keys})
        assert np.array_equal(as_before.counts, sketch.counts) and as_before.complement is None
    # An empty score sketch keeps counting 1 - x after a round trip.
    assert LogHistogram.from_wire(LogHistogram(complement=True).to_wire()).complement is not None


def test_a_complement_that_does_not_count_every_value_is_refused():
    state = LogHistogram.of(np.array([0.5, 0.9]), complement=True).to_wire()
    state["complement_counts"] = [1] * len(state["complement_index"][:1])
    state["complement_index"] = state["complement_index"][:1]
    with pytest.raises(ValueError, match="counts of 1 - x sum to 1, not its count 2"):
        LogHistogram.from_wire(state)
    state["complement_index"] = [10**6]
    with pytest.raises(ValueError, match="out of range"):
        LogHistogram.from_wire(state)


def test_a_malformed_complement_is_refused_with_a_value_error_naming_it():
    # A router's report or a saved row whose counts of 1 - x add up to the count but hold a
    # negative one (or miss the counts) used to be taken: CDFs below 0 and above 1 for the
    # drift gates, or a KeyError where callers catch ValueError.
    good = LogHistogram.of(np.array([0.5, 0.9, 0.99]), complement=True).to_wire()
    assert len(good["complement_index"]) == 3
    negative = {**good, "complement_counts": [-1, 2, 2]}
    with pytest.raises(ValueError, match="counts of 1 - x must not be negative: -1"):
        LogHistogram.from_wire(negative)
    with pytest.raises(ValueError, match="must not be negative"):
        pickle.loads(pickle.dumps(LogHistogram())).__setstate__(negative)
    with pytest.raises(ValueError, match="histogram counts must not be negative"):
        LogHistogram.from_wire({**good, "counts": [-1, 2, 2]})
    for bad in ({k: v for k, v in good.items() if k != "complement_counts"},
                {**good, "complement_counts": [3]}, {**good, "complement_counts": [1, 2]}):
        with pytest.raises(ValueError, match="buckets of 1 - x"):
            LogHistogram.from_wire(bad)
    assert np.array_equal(LogHistogram.from_wire(good).complement,
                          LogHistogram.of(np.array([0.5, 0.9, 0.99]), complement=True).complement)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_histogram_less_a_part_of_its_values_is_the_histogram_of_the_rest(seed):
    rng = np.random.default_rng(seed)
    rest, part = rng.lognormal(2.0, 0.5, 500), rng.lognormal(5.0, 0.3, 60)
    whole = LogHistogram.of(np.concatenate([rest, part]))
    left = whole.without(LogHistogram.of(part))
    alone = LogHistogram.of(rest)
    assert np.array_equal(left.counts, alone.counts) and left.count == alone.count == 500
    assert left.total == pytest.approx(rest.sum(), rel=1e-12)
    for q in (0.0, 0.05, 0.5, 0.95, 1.0):  # the ends too: within 1%, as every other rank
        assert left.quantile(q) == pytest.approx(np.quantile(rest, q), rel=RELATIVE_ACCURACY)
    assert whole.without(LogHistogram()).quantile(0.5) == whole.quantile(0.5)
    assert whole.without(whole).count == 0 and np.isnan(whole.without(whole).quantile(0.5))
    # A "part" that is not one (counts above the whole's) leaves no negative count.
    assert LogHistogram.of(rest).without(LogHistogram.of(part)).count == 500
