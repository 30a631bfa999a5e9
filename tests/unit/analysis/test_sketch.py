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
