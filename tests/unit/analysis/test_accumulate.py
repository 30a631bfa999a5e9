"""ExperimentStats: the cumulative figures behind the report and the metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serve_ab.analysis import accumulate as experiment_stats
from serve_ab.analysis.accumulate import LATENCY_BUCKETS_S, ExperimentStats, split_key
from serve_ab.analysis.sketch import LogHistogram
from serve_ab.analysis.unit_sample import UnitSample
from serve_ab.analysis.units import KEYLESS_FIELDS, SplitTotals
from serve_ab.routing import NUM_BUCKETS

HALF = {"v1": 50.0, "v2": 50.0}
# Units whose bucket (unit % 10,000) the 50/50 split routes to v1 (buckets 0-4999) or v2.
V1_UNIT, V2_UNIT = 3 * NUM_BUCKETS + 17, 5 * NUM_BUCKETS + 7017


def test_requests_errors_latency_and_predictions_are_counted_per_version():
    stats = ExperimentStats(["v1", "v2"], started_at_s=0.0)
    stats.set_weights(HALF)
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
    sketch = LogHistogram.from_wire(v1["latency"]["sketch_ms"])
    assert (sketch.count, sketch.min, sketch.max) == (2, 0.4, 30.0)
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


def test_a_feedback_value_whose_square_overflows_is_refused_before_anything_is_counted():
    stats = ExperimentStats(["v1"], 0.0, feedback_kinds={"revenue": "mean"})
    stats.record_feedback(1.0, "v1", "revenue", 12.5, None)
    with pytest.raises(ValueError, match="too large"):
        stats.record_feedback(1.0, "v1", "revenue", 1e308, None)
    assert stats.snapshot(2.0)["versions"]["v1"]["feedback"]["revenue"] == \
        {"kind": "mean", "n": 1, "sum": 12.5, "sum_sq": 156.25}


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


def test_timeline_coarsens_instead_of_growing(monkeypatch):
    monkeypatch.setattr(experiment_stats, "MAX_TIMELINE_POINTS", 10)
    stats = ExperimentStats(["v1"], 0.0)
    for second in range(0, 1000, 5):
        stats.record(float(second), "v1", 1.0, None, None, None, True)
    timeline = stats.snapshot(1000.0)["timeline"]
    assert len(timeline["points"]) <= 10
    assert timeline["bucket_s"] > experiment_stats.TIMELINE_BUCKET_S
    assert sum(p["requests"]["v1"] for p in timeline["points"]) == 200


# ---- per-unit figures, by split --------------------------------------------------------------


def _split(snapshot, weights):
    """The snapshot's split routed by ``weights``, its totals as SplitTotals."""
    key = split_key(weights)
    (saved,) = [s for s in snapshot["splits"] if s["key"] == key]
    return saved, {name: SplitTotals.from_dict(t) for name, t in saved["metrics"].items()}


def test_assigned_rows_sum_into_their_units_buckets_under_the_split():
    stats = ExperimentStats(["v1", "v2"], 0.0)
    stats.set_weights(HALF)
    stats.record(1.0, "v1", 10.0, None, 1, V1_UNIT, True)
    stats.record(2.0, "v1", 30.0, None, 1, V1_UNIT, True)  # the same user again: the same unit
    stats.record(3.0, "v1", 5.0, "model", None, V1_UNIT, True)
    stats.record(4.0, "v2", 20.0, None, 1, V2_UNIT, True)
    stats.record_feedback(4.0, "v2", "correct", None, True, unit=V2_UNIT)
    snap = stats.snapshot(5.0)
    assert snap["weights_now"] == HALF and len(snap["splits"]) == 1
    saved, totals = _split(snap, HALF)
    assert (saved["first_s"], saved["last_s"], saved["weights_pct"]) == (1.0, 4.0, HALF)
    b1, b2 = V1_UNIT % NUM_BUCKETS, V2_UNIT % NUM_BUCKETS
    errors, latency, correct = totals["error_rate"], totals["latency_ms"], totals["feedback/correct"]
    assert (errors.s[b1], errors.n[b1], errors.s[b2], errors.n[b2]) == (1.0, 3.0, 0.0, 1.0)
    assert (latency.s[b1], latency.n[b1]) == (40.0, 2.0)  # successful requests only
    assert (correct.s[b2], correct.n[b2]) == (1.0, 1.0)
    assert errors.n.sum() == 4 and not errors.keyless
    assert saved["units_kept"] == {"v1": 1, "v2": 1} and saved["units_fraction"] == 1.0
    json.dumps(snap)


def test_a_keyless_request_is_its_own_unit():
    stats = ExperimentStats(["v1", "v2"], 0.0)
    stats.set_weights(HALF)
    for latency in (1.0, 2.0, 4.0):
        stats.record(1.0, "v2", latency, None, None, None, True)
    stats.record(1.0, "v2", 9.0, "model", None, None, True)
    snap = stats.snapshot(2.0)
    saved, totals = _split(snap, HALF)
    moments = dict(zip(KEYLESS_FIELDS, totals["latency_ms"].keyless["v2"]))
    assert moments == {"units": 3, "s": 7.0, "n": 3.0, "ss": 21.0, "nn": 3.0, "sn": 7.0}
    assert dict(zip(KEYLESS_FIELDS, totals["error_rate"].keyless["v2"]))["units"] == 4
    assert totals["error_rate"].n.sum() == 0  # no bucket: each its own unit
    assert saved["units_keyless"] == {"v2": 4} and snap["versions"]["v2"]["units"] == 4


def test_pinned_and_unassigned_rows_are_counted_but_not_per_unit():
    stats = ExperimentStats(["v1", "v2"], 0.0)
    stats.set_weights(HALF)
    stats.record(1.0, "v2", 1.0, None, 1, V1_UNIT, assigned=False)  # pinned to v2
    stats.record_feedback(1.0, "v2", "correct", None, True, unit=V1_UNIT, assigned=False)
    snap = stats.snapshot(2.0)
    v2 = snap["versions"]["v2"]
    assert (v2["requests"], v2["assigned"], v2["units"]) == (1, 0, 0)
    assert v2["feedback"]["correct"]["n"] == 1  # in the version's own totals
    assert snap["splits"] == []  # nothing entered a split


def test_a_row_on_a_version_its_bucket_is_not_routed_to_counts_as_its_own_unit():
    stats = ExperimentStats(["v1", "v2"], 0.0)
    stats.set_weights(HALF)
    stats.record(1.0, "v2", 1.0, None, 1, V1_UNIT, True)  # v1's bucket, served by v2
    _, totals = _split(stats.snapshot(2.0), HALF)
    assert totals["error_rate"].n.sum() == 0 and totals["error_rate"].keyless["v2"][0] == 1


def test_without_weights_there_is_no_split_to_count_under():
    stats = ExperimentStats(["v1", "v2"], 0.0)
    stats.record(1.0, "v1", 1.0, None, 1, V1_UNIT, True)
    stats.set_weights({"v1": 60, "v2": 30})  # not 100 in all: no router routes by it
    stats.record(2.0, "v1", 1.0, None, 1, V1_UNIT, True)
    snap = stats.snapshot(3.0)
    assert snap["splits"] == [] and snap["versions"]["v1"]["assigned"] == 2


def test_each_weighting_is_its_own_split_and_rows_count_under_the_one_they_were_routed_by():
    stats = ExperimentStats(["v1", "v2"], 0.0)
    stats.set_weights({"v1": 90, "v2": 10})
    stats.record(1.0, "v1", 1.0, None, 1, V1_UNIT, True)
    stats.set_weights(HALF)
    stats.record(2.0, "v2", 1.0, None, 1, V2_UNIT, True)
    # A late row routed under the old weights counts there, not under the weights now.
    stats.record(3.0, "v1", 1.0, "model", None, V1_UNIT + 1, True, split={"v1": 90, "v2": 10})
    stats.set_weights({"v1": 50.00001, "v2": 49.99999})  # the same bucket ranges: the same split
    stats.record(4.0, "v2", 1.0, None, 1, V2_UNIT, True)
    snap = stats.snapshot(5.0)
    assert [s["key"] for s in snap["splits"]] == [split_key({"v1": 90, "v2": 10}), split_key(HALF)]
    old, old_totals = _split(snap, {"v1": 90, "v2": 10})
    new, new_totals = _split(snap, HALF)
    assert old_totals["error_rate"].n.sum() == 2 and old_totals["error_rate"].s.sum() == 1
    assert new_totals["error_rate"].n.sum() == 2 and (new["first_s"], new["last_s"]) == (2.0, 4.0)
    assert old["units_kept"] == {"v1": 2, "v2": 0} and new["units_kept"] == {"v1": 0, "v2": 1}


def test_splits_past_the_bound_drop_the_oldest_and_say_so(monkeypatch):
    monkeypatch.setattr(experiment_stats, "MAX_SPLITS", 3)
    stats = ExperimentStats(["v1", "v2"], 0.0)
    for i, pct in enumerate((10, 20, 30, 40, 50)):
        stats.set_weights({"v1": 100 - pct, "v2": pct})
        stats.record(float(i), "v1", 1.0, None, None, None, True)
    snap = stats.snapshot(9.0)
    assert [s["weights_pct"]["v2"] for s in snap["splits"]] == [30, 40, 50] and snap["splits_dropped"] == 2


def test_units_past_the_sample_bound_are_estimated_from_a_uniform_sample():
    stats = ExperimentStats(["v1", "v2"], 0.0)
    stats.set_weights(HALF)
    stats.units_all = UnitSample(max_units=1000)
    rng = np.random.default_rng(3)
    units = rng.integers(0, 2**63, 20_000)
    for unit in units.tolist():
        version = "v1" if unit % NUM_BUCKETS < 5000 else "v2"
        stats.record(1.0, version, 1.0, None, None, unit, True)
    estimated = stats.snapshot(2.0)["versions"]
    exact = int((units % NUM_BUCKETS < 5000).sum())
    # ~1,000 kept of 20,000: each estimate within a few binomial standard errors
    fraction = stats.units_all.fraction
    assert stats.units_all.size() <= 1000 and fraction < 0.1
    for version, true in (("v1", exact), ("v2", units.size - exact)):
        assert abs(estimated[version]["units"] - true) < 4 * np.sqrt(true / fraction)


def test_figures_survive_a_restart_through_their_saved_state():
    kinds = {"correct": "conversion"}
    stats = ExperimentStats(["v1", "v2"], 5.0, shadow_version="v2", feedback_kinds=kinds)
    stats.set_weights({"v1": 80, "v2": 20})
    rng = np.random.default_rng(1)
    users = rng.integers(0, 2**63, 40).tolist()

    def feed(into, t, user):
        version = "v1" if user % NUM_BUCKETS < into.weights_now["v1"] * 100 else "v2"
        into.record(t, version, 1.0 + t % 7, "model" if user % 11 == 0 else None, user % 3, user, True)
        into.record_feedback(t, version, "correct", None, user % 4 != 0, unit=user)
        into.record(t, version, 2.0, None, 1, None, True)  # a keyless one
        into.record_pair(t, "v1", user % 3, (user // 7) % 3, 0.01, 2.0, None, unit=user)

    for i, user in enumerate(users):
        if i == 20:
            stats.set_weights(HALF)
        feed(stats, 10.0 + i, user)
    state = json.loads(json.dumps(stats.to_state(100.0)))  # as the store keeps it
    restored = ExperimentStats.from_state(state, shadow_version="v2", feedback_kinds=kinds)
    assert restored.snapshot(100.0) == stats.snapshot(100.0)
    assert restored.shadow.agreement_groups.counts.sum() == 40 and restored.shadow.agreement_groups.counts[-1] == 0
    assert len(restored.snapshot(100.0)["splits"]) == 2 and restored.weights_now == HALF
    assert restored.units_all.units == stats.units_all.units
    for key, record in stats.splits.items():
        assert restored.splits[key].units.units == record.units.units
        assert restored.splits[key].units.keyless == record.units.keyless
    # ...and it carries on counting the same users once, not again.
    for again in (stats, restored):
        for i, user in enumerate(users[:10]):
            feed(again, 200.0 + i, user)
    assert restored.snapshot(300.0) == stats.snapshot(300.0)


def test_a_sampled_unit_sample_survives_a_restart_with_its_threshold():
    stats = ExperimentStats(["v1", "v2"], 0.0)
    stats.set_weights(HALF)
    stats.record(0.0, "v1", 1.0, None, None, V1_UNIT, True)
    (record,) = stats.splits.values()
    record.units.max_units = 50
    for unit in np.random.default_rng(2).integers(0, 2**63, 500).tolist():
        stats.record(1.0, "v1" if unit % NUM_BUCKETS < 5000 else "v2", 1.0, None, None, unit, True)
    restored = ExperimentStats.from_state(json.loads(json.dumps(stats.to_state(2.0))))
    again = restored.splits[split_key(record.weights_pct)].units
    assert record.units.theta < 2**64 and again.theta == record.units.theta
    assert again.units == record.units.units
    assert restored.snapshot(2.0)["splits"] == stats.snapshot(2.0)["splits"]


@pytest.mark.parametrize("weights", [{"v1": 100, "v2": 0}, {"v1": 0, "v2": 100}])
def test_a_version_at_zero_weight_gets_no_buckets(weights):
    stats = ExperimentStats(["v1", "v2"], 0.0)
    stats.set_weights(weights)
    served = "v1" if weights["v1"] else "v2"
    stats.record(1.0, served, 1.0, None, None, V1_UNIT, True)
    _, totals = _split(stats.snapshot(2.0), weights)
    assert totals["error_rate"].n[V1_UNIT % NUM_BUCKETS] == 1


def test_a_state_saved_before_agreements_were_kept_per_user_restores_them_as_keyless():
    stats = ExperimentStats(["v1", "v2"], 5.0, shadow_version="v2")
    for i in range(10):
        stats.record_pair(10.0 + i, "v1", 1, 1 if i < 7 else 2, None, 2.0, None, unit=1000 + i)
    state = json.loads(json.dumps(stats.to_state(100.0)))
    del state["shadow"]["agreement_groups"]
    groups = ExperimentStats.from_state(state, shadow_version="v2").shadow.agreement_groups
    assert (groups.counts[-1], groups.sums[-1], groups.counts.sum()) == (10, 7, 10)


def test_a_report_whose_answers_were_all_assigned_carries_no_unassigned_sketch():
    """The rare part is sent only when some answer was not assigned: an empty sketch pickled
    in every version of every router's report cost about 100 bytes a version (1.3% of a
    two-version report of 500 rows); unpickled, the version has an empty one to merge."""
    import pickle

    from serve_ab.analysis.aggregate import IntervalAggregate

    rows = [("v1", 10.0 + i, None, 0, None, i, True, False, 0, None) for i in range(50)]
    assigned = IntervalAggregate()
    assigned.served_rows(rows, {0: {"v1": 100}})
    sent = pickle.dumps(assigned)
    assert b"unassigned_latency_ms" not in sent
    received = pickle.loads(sent)
    assert received.versions["v1"].unassigned_latency_ms.count == 0
    pinned = IntervalAggregate()
    pinned.served_rows([*rows, ("v1", 90.0, None, 0, None, 7, False, False, 0, None)], {0: {"v1": 100}})
    figures = ExperimentStats(["v1"], 0.0)
    figures.merge(1.0, received)
    figures.merge(2.0, pickle.loads(pickle.dumps(pinned)))
    latency = figures.snapshot(3.0)["versions"]["v1"]["latency"]
    assert latency["count"] == 101 and latency["unassigned_sketch_ms"]["count"] == 1
    assert latency["unassigned_sketch_ms"]["max"] == 90.0


def test_an_older_routers_version_figures_without_unassigned_latencies_merge_as_all_assigned():
    """During a rolling upgrade a router older than ``unassigned_latency_ms`` sends versions
    pickled without it: merged, not a crash of the controller; its pinned answers' latencies
    are then not known apart (the arms' percentiles count them, as that release's did)."""
    import pickle

    from serve_ab.analysis.aggregate import IntervalAggregate

    aggregate = IntervalAggregate()
    aggregate.served_rows([("v1", 10.0, None, 0, None, 3, True, False, 0, None),
                           ("v1", 90.0, None, 0, None, 4, False, False, 0, None)], {0: {"v1": 100}})
    assert aggregate.versions["v1"].unassigned_latency_ms.count == 1
    del aggregate.versions["v1"].__dict__["unassigned_latency_ms"]  # as the older code's had none
    old = pickle.loads(pickle.dumps(aggregate))
    figures = ExperimentStats(["v1"], 0.0)
    figures.merge(1.0, old)
    latency = figures.snapshot(2.0)["versions"]["v1"]["latency"]
    assert latency["count"] == 2 and "unassigned_sketch_ms" not in latency
