"""The gates' windows keep joined feedback as running per-group sums (GateWindows.add_feedback):
the same WindowStats as folding the events again at every look, at a look's cost in metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serve_ab.analysis.aggregate import GateAggregate

from serve_ab.rollout.gates import ConversionEvent, FeedbackEvent
from serve_ab.rollout.windows import GateWindows, feedback_groups, window_stats

VERSIONS = ("v1", "v2")


def _events(rng: np.random.Generator, n: int) -> tuple[list[FeedbackEvent], list[ConversionEvent]]:
    """Feedback sent over 300 s, some joined late (sent earlier than the ones before it)."""
    values, outcomes = [], []
    for i in range(n):
        t_s = float(np.clip(i * 300.0 / n - rng.exponential(2.0), 0.0, None))
        unit = None if i % 7 == 0 else int(rng.integers(0, 2**62))
        version = VERSIONS[i % 2]
        values.append(FeedbackEvent(version, "revenue", float(rng.lognormal(2.0, 1.0)), t_s, unit))
        outcomes.append(ConversionEvent(version, "correct", bool(rng.random() < 0.8), t_s, unit))
    return values, outcomes


def _windows_of(values, outcomes, keep_s: float = 120.0) -> GateWindows:
    windows = GateWindows(keep_s=keep_s)
    for value, outcome in zip(values, outcomes):
        windows.add_feedback(value.t_s, value.version, value.name, value.value, None, value.unit)
        windows.add_feedback(outcome.t_s, outcome.version, outcome.name, None, outcome.converted, outcome.unit)
    return windows


def _same(kept, folded) -> None:
    for version in VERSIONS:
        assert kept[version].feedback.keys() == folded[version].feedback.keys()
        for name in kept[version].feedback:
            a, b = kept[version].feedback[name], folded[version].feedback[name]
            assert a.count == b.count and a.total == pytest.approx(b.total) and a.total_sq == pytest.approx(b.total_sq)
            groups_a, groups_b = kept[version].feedback_groups[name], folded[version].feedback_groups[name]
            assert np.array_equal(groups_a.counts, groups_b.counts)
            assert np.allclose(groups_a.sums, groups_b.sums)
        assert kept[version].conversions == folded[version].conversions
        assert kept[version].conversion_groups["correct"].counts.tolist() == \
            folded[version].conversion_groups["correct"].counts.tolist()


@pytest.mark.parametrize("step_start_s", [0.0, 150.0])
def test_a_steps_running_feedback_is_what_folding_its_events_gives(step_start_s):
    values, outcomes = _events(np.random.default_rng(5), 3_000)
    windows = GateWindows(keep_s=120.0)
    windows.window(step_start_s, step=True)  # the step began: its running total starts
    for value, outcome in zip(values, outcomes):
        windows.add_feedback(value.t_s, value.version, value.name, value.value, None, value.unit)
        windows.add_feedback(outcome.t_s, outcome.version, outcome.name, None, outcome.converted, outcome.unit)
    window = windows.window(step_start_s, step=True)
    kept = window_stats(window.gates, versions=VERSIONS, values=window.values, outcomes=window.outcomes)
    folded = window_stats({}, versions=VERSIONS, feedback=values, conversions=outcomes, start_s=step_start_s)
    _same(kept, folded)
    assert kept["v2"].feedback["revenue"].count == sum(
        1 for v in values if v.version == "v2" and v.t_s >= step_start_s)


def test_a_sliding_window_sums_the_seconds_it_keeps():
    values, outcomes = _events(np.random.default_rng(6), 2_000)
    windows = _windows_of(values, outcomes)
    window = windows.window(250.0, step=False)  # the last 50 s of 300
    kept = window_stats({}, versions=VERSIONS, values=window.values, outcomes=window.outcomes)
    folded = window_stats({}, versions=VERSIONS, feedback=values, conversions=outcomes, start_s=250.0)
    _same(kept, folded)


def test_events_fold_into_the_windows_groups():
    values, outcomes = feedback_groups([FeedbackEvent("v2", "revenue", 3.0, 1.0, None)],
                                       [ConversionEvent("v1", "correct", True, 0.5, 7)], start_s=1.0)
    assert values["v2"]["revenue"].sums.sum() == 3.0 and outcomes == {}  # the outcome came before start_s


def test_a_steps_running_total_carries_on_in_new_windows():
    """What a restarted controller does with the saved step total: the same figures, then
    whatever arrives after, as if the windows had never been rebuilt."""
    def gate(n: int, errors: int) -> GateAggregate:
        g = GateAggregate()
        for i in range(n):
            g.add(2.0 + i % 5, i >= errors, i % 3, 0.5, unit=i * 7)
        return g

    kept = GateWindows()
    kept.add(100.0, {"v1": gate(40, 2), "v2": gate(10, 1)})
    kept.add_feedback(101.0, "v2", "revenue", 3.5, None, unit=14)
    kept.add_feedback(101.0, "v2", "correct", None, True, unit=14)
    kept.add(102.0, {"v2": gate(5, 0)})
    saved = json.loads(json.dumps(kept.step_state(100.0), allow_nan=False))  # before its first look too

    restored = GateWindows()
    assert not GateWindows().restore_step(saved, 150.0)  # the step changed since: not taken
    assert restored.restore_step(saved, 100.0)
    for windows in (kept, restored):
        windows.add(200.0, {"v2": gate(3, 3)})
    a, b = (w.window(100.0, step=True) for w in (kept, restored))
    assert {v: (g.requests, g.errors) for v, g in b.gates.items()} == {"v1": (40, 2), "v2": (18, 4)}
    assert {v: (g.requests, g.errors) for v, g in a.gates.items()} == {"v1": (40, 2), "v2": (18, 4)}
    assert np.array_equal(a.gates["v2"].groups.requests, b.gates["v2"].groups.requests)
    assert b.values["v2"]["revenue"].sums.sum() == 3.5 and b.outcomes["v2"]["correct"].counts.sum() == 1
    assert kept.step_state(150.0)["since_s"] == 150.0  # a step that began later: its own total


def test_a_saved_step_total_of_another_shape_is_refused():
    windows = GateWindows()
    with pytest.raises(ValueError, match="gates\\['v1'\\] is a int"):
        windows.restore_step({"since_s": 5.0, "totals": {"gates": {"v1": 3}, "agreements": {},
                                                         "values": {}, "outcomes": {}}}, 5.0)
    with pytest.raises(ValueError, match="could not be read: KeyError"):
        windows.restore_step({"since_s": 5.0, "totals": {"gates": {}}}, 5.0)
    assert not windows.window(5.0, step=True).gates  # nothing was taken
