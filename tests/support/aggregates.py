"""Two interval aggregates compared field by field: counts, sketch buckets and unit samples
exactly, sums of floats to the last few digits (folding many answers at once adds them in
another order than folding each by itself)."""

from __future__ import annotations

import numpy as np
import pytest

from serve_ab.analysis.aggregate import IntervalAggregate


def assert_same(a: IntervalAggregate, b: IntervalAggregate) -> None:
    assert a.rows == b.rows and a.feedback_ids == b.feedback_ids and a.unit_thetas == b.unit_thetas
    assert a.gates.keys() == b.gates.keys() and a.versions.keys() == b.versions.keys()
    assert list(a.splits) == list(b.splits)  # the order splits were first served in, too
    for name, ga in a.gates.items():
        gb = b.gates[name]
        assert (ga.requests, ga.errors, ga.class_counts) == (gb.requests, gb.errors, gb.class_counts)
        sa, sb = ga.groups, gb.groups
        assert sa.classes == sb.classes
        for name_ in ("requests", "errors", "latency_bins"):
            assert np.array_equal(getattr(sa, name_), getattr(sb, name_)), name_
        for ha, hb in ((ga.latency_ms, gb.latency_ms), (ga.scores, gb.scores)):
            assert np.array_equal(ha.counts, hb.counts) and (ha.count, ha.min, ha.max) == (hb.count, hb.min, hb.max)
            assert ha.total == pytest.approx(hb.total, rel=1e-12)
    for name, va in a.versions.items():
        vb = b.versions[name]
        assert (va.requests, va.assigned, va.errors, va.predictions) == \
               (vb.requests, vb.assigned, vb.errors, vb.predictions)
        assert va.latency.bucket_counts == vb.latency.bucket_counts and va.latency.count == vb.latency.count
        assert va.latency.sum_s == pytest.approx(vb.latency.sum_s, rel=1e-12)
        assert np.array_equal(va.latency.sketch.counts, vb.latency.sketch.counts)
    for split, sa in a.splits.items():
        sb = b.splits[split]
        assert sa.weights_pct == sb.weights_pct and list(sa.metrics) == list(sb.metrics)
        assert (sa.units.theta, sa.units.units, sa.units.keyless) == (sb.units.theta, sb.units.units, sb.units.keyless)
        for metric, ta in sa.metrics.items():
            tb = sb.metrics[metric]
            assert np.allclose(ta.s, tb.s, rtol=1e-12) and np.array_equal(ta.n, tb.n)
            assert ta.keyless.keys() == tb.keyless.keys()
            for version in ta.keyless:
                assert np.allclose(ta.keyless[version], tb.keyless[version], rtol=1e-12)
