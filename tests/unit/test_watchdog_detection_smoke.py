"""benchmarks/watchdog_detection.py runs, and its figures move the way the README says."""

from __future__ import annotations

from benchmarks.watchdog_detection import measure


def test_a_stall_is_marked_down_always_when_replicas_are_kept_and_by_traffic_when_they_may_go():
    kept = measure(rate_hz=2.0, scales_to_zero=False, stalls=8, after_s=6.0)
    assert kept.marked_down == kept.stalls and 2.9 <= kept.median_s <= 4.5  # virtual seconds
    sparse = measure(rate_hz=1.0, scales_to_zero=True, stalls=8, after_s=6.0)
    dense = measure(rate_hz=50.0, scales_to_zero=True, stalls=8, after_s=6.0)
    assert sparse.marked_down < dense.marked_down == dense.stalls
