"""The gates' windows keep joined feedback as running per-group sums (GateWindows.add_feedback):
the same WindowStats as folding the events again at every look, at a look's cost in metrics."""

from __future__ import annotations

import numpy as np
import pytest

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
