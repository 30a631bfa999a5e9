"""ExperimentStats: the cumulative figures behind the report and the metrics."""

from __future__ import annotations

import json

import numpy as np

from serve_ab.analysis import accumulate as experiment_stats
from serve_ab.analysis.accumulate import LATENCY_BUCKETS_S, ExperimentStats, Reservoir


def test_requests_errors_latency_and_predictions_are_counted_per_version():
    stats = ExperimentStats(["v1", "v2"], started_at_s=0.0)
    stats.record(1.0, "v1", 0.4, None, 3, unit=11, assigned=True)
    stats.record(1.5, "v1", 30.0, None, 3, unit=12, assigned=True)
    stats.record(2.0, "v1", 5.0, "unavailable", None, unit=11, assigned=True)
    stats.record(2.0, "v2", 2.0, None, 7, unit=None, assigned=False)  # pinned: not assigned
    snap = stats.snapshot(now_s=3.0)
    v1, v2 = snap["versions"]["v1"], snap["versions"]["v2"]
    assert (v1["requests"], v1["assigned"], v1["errors"]) == (3, 3, 1)
    assert v1["errors_by_kind"] == {"unavailable": 1}
    assert v1["units"] == 2  # user 11 twice, user 12 once
    assert v1["predictions"] == {"3": 2}
    # Failed calls have no latency sample; 0.4 ms falls in the 0.5 ms bucket, 30 ms in 50 ms.
    assert v1["latency"]["count"] == 2
    counts = v1["latency"]["bucket_counts"]
    assert counts[LATENCY_BUCKETS_S.index(0.0005)] == 1 and counts[LATENCY_BUCKETS_S.index(0.05)] == 1
    assert abs(v1["latency"]["sum_s"] - 0.0304) < 1e-12
    assert sorted(v1["latency"]["sample_ms"]) == [0.4, 30.0]
    assert (v2["requests"], v2["assigned"], v2["units"]) == (1, 0, 0)
    json.dumps(snap)  # plain data all the way down


def test_latency_above_every_bucket_lands_in_the_overflow_bucket():
    stats = ExperimentStats(["v1"], started_at_s=0.0)
    stats.record(1.0, "v1", 60_000.0, None, None, None, True)
    counts = stats.snapshot(2.0)["versions"]["v1"]["latency"]["bucket_counts"]
    assert counts[-1] == 1 and sum(counts) == 1 and len(counts) == len(LATENCY_BUCKETS_S) + 1


def test_feedback_kinds_come_from_the_config_or_the_first_report():
    stats = ExperimentStats(["v1", "v2"], 0.0, feedback_kinds={"revenue": "mean"})
    stats.record_feedback(1.0, "v1", "correct", None, True)
    stats.record_feedback(1.0, "v1", "correct", None, False)
    stats.record_feedback(1.0, "v2", "revenue", 3.0, None)
    stats.record_feedback(1.0, "v2", "revenue", 5.0, None)
    stats.record_feedback(1.0, "v2", "revenue", None, True)  # declared a mean: not mixed in
    stats.count_unjoined(1)  # one never joined to a request
    snap = stats.snapshot(2.0)
    assert snap["versions"]["v1"]["feedback"] == {"correct": {"kind": "conversion", "n": 2, "successes": 1}}
    assert snap["versions"]["v2"]["feedback"] == {"revenue": {"kind": "mean", "n": 2, "sum": 8.0, "sum_sq": 34.0}}
    assert snap["feedback_unjoined"] == 1 and snap["feedback_mismatched"] == 1


def test_shadow_pairs_give_agreement_confusion_and_score_differences():
    stats = ExperimentStats(["v1", "v2"], 0.0, shadow_version="v2")
    stats.record_pair(1.0, "v1", 3, 3, -0.1, 1.0, None)
    stats.record_pair(1.0, "v1", 3, 8, -0.5, 1.0, None)
    stats.record_pair(1.0, "v1", 5, 5, 0.2, 1.0, None)
    stats.record_pair(1.0, "v1", None, None, None, 9.0, "model")
    shadow = stats.snapshot(2.0)["shadow"]
    assert shadow["version"] == "v2"
    assert (shadow["mirrored"], shadow["pairs"], shadow["agree"], shadow["errors"]) == (4, 3, 2, 1)
    assert shadow["confusion"] == [[3, 3, 1], [3, 8, 1], [5, 5, 1]]
    assert shadow["score_diff"]["n"] == 3
    assert abs(shadow["score_diff"]["sum"] - (-0.4)) < 1e-12
    assert abs(shadow["score_diff"]["sum_sq"] - 0.30) < 1e-12


def test_snapshot_without_shadow_has_none():
    assert ExperimentStats(["v1"], 0.0).snapshot(1.0)["shadow"] is None


def test_reservoir_is_bounded_and_uniform():
    reservoir = Reservoir(size=1000)
    for value in range(100_000):
        reservoir.add(float(value))
    assert len(reservoir.values) == 1000 and reservoir.seen == 100_000
    # A uniform sample of 0..99999 has mean ~50000 (sd of the mean ~ 913).
    assert abs(np.mean(reservoir.values) - 50_000) < 5 * 913


def test_timeline_coarsens_instead_of_growing(monkeypatch):
    monkeypatch.setattr(experiment_stats, "MAX_TIMELINE_POINTS", 10)
    stats = ExperimentStats(["v1"], 0.0)
    for second in range(0, 1000, 5):
        stats.record(float(second), "v1", 1.0, None, None, None, True)
    timeline = stats.snapshot(1000.0)["timeline"]
    assert len(timeline["points"]) <= 10
    assert timeline["bucket_s"] > experiment_stats.TIMELINE_BUCKET_S
    assert sum(p["requests"]["v1"] for p in timeline["points"]) == 200


def test_units_past_the_bound_stop_being_counted(monkeypatch):
    monkeypatch.setattr(experiment_stats, "MAX_UNITS", 5)
    stats = ExperimentStats(["v1"], 0.0)
    for unit in range(10):
        stats.record(1.0, "v1", 1.0, None, None, unit, True)
    assert stats.snapshot(2.0)["versions"]["v1"]["units"] is None


def test_figures_survive_a_restart_through_their_saved_state():
    stats = ExperimentStats(["v1", "v2"], 5.0, shadow_version="v2", feedback_kinds={"correct": "conversion"})
    for i in range(50):
        stats.record(10.0 + i, "v1" if i % 2 else "v2", 1.0 + i, "model" if i == 7 else None, i % 3, i % 20, True)
        stats.record_feedback(10.0 + i, "v1", "correct", None, i % 4 != 0)
        stats.record_pair(10.0 + i, "v1", i % 3, (i + i // 10) % 3, 0.01 * i, 2.0, None)
    state = json.loads(json.dumps(stats.to_state(100.0)))  # as the store keeps it
    restored = ExperimentStats.from_state(state, shadow_version="v2", feedback_kinds={"correct": "conversion"})
    assert restored.snapshot(100.0) == stats.snapshot(100.0)
    # ...and it carries on counting the same users once, not again.
    for again in (stats, restored):
        again.record(200.0, "v1", 1.0, None, 0, 3, True)
    assert restored.snapshot(300.0) == stats.snapshot(300.0)
