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


# ---- score drift through the pipeline: router -> pickle -> controller's windows -> gate --------


def _routed(rng: np.random.Generator, scores_by_version: dict[str, np.ndarray], users: int = 200):
    """One router interval of every version's scores (assigned requests of ``users`` users),
    as the controller receives it: pickled."""
    import pickle

    from serve_ab.analysis.aggregate import IntervalAggregate

    aggregate = IntervalAggregate()
    units = rng.integers(0, 2**62, users)
    rows = [(version, 5.0, None, 0, float(score), int(units[i % users]), True, False, 0, None)
            for version, scores in scores_by_version.items() for i, score in enumerate(scores)]
    aggregate.served_rows(rows, {})
    return pickle.loads(pickle.dumps(aggregate))


def _judged(windows: GateWindows, metric: str, limit: float):
    from serve_ab.config.rollout import Gate
    from serve_ab.rollout.gates import evaluate_gate

    stats = window_stats(windows.window(0.0, step=True).gates, versions=VERSIONS)
    return evaluate_gate(Gate.model_validate({"metric": metric, "max": limit}), stats["v2"], stats["v1"], 50)


def test_a_confident_classifier_losing_confidence_fails_the_score_drift_gates():
    """Scores near 1 (beta(40, 0.4): 1 - score mostly 0.0001-0.03) multiplied by 0.995, over
    two routers' intervals: raw KS 0.52. The sketches of x alone lumped every score from
    0.9975 up into a few buckets and read KS 0.05 (lower bound 0): both gates passed."""
    rng = np.random.default_rng(21)
    windows = GateWindows()
    for t_s in (1.0, 2.0):  # two reports
        windows.add(t_s, _routed(rng, {"v1": rng.beta(40.0, 0.4, 1_000),
                                       "v2": rng.beta(40.0, 0.4, 1_000) * 0.995}).gates)
    ks = _judged(windows, "drift_ks", 0.2)
    assert ks.verdict.value == "fail" and ks.value > 0.45 and ks.lower > 0.3
    assert ks.p_value < 1e-20
    wasserstein = _judged(windows, "drift_wasserstein", 0.002)  # the raw distance is about 0.004
    assert wasserstein.verdict.value == "fail" and wasserstein.lower > 0.002


def test_score_drift_reads_a_window_with_an_old_routers_report_as_before():
    """A rolling upgrade: an old router's sketches count no 1 - x, so a window holding its
    report reads from the sketches of x alone (coarse near 1), neither failing nor crashing;
    the next step, with new routers only, reads fine again."""
    rng = np.random.default_rng(22)
    from serve_ab.analysis.sketch import LogHistogram

    new = _routed(rng, {"v1": rng.beta(40.0, 0.4, 1_000), "v2": rng.beta(40.0, 0.4, 1_000) * 0.995})
    old = _routed(rng, {"v1": rng.beta(40.0, 0.4, 500), "v2": rng.beta(40.0, 0.4, 500) * 0.995})
    for gate in old.gates.values():  # what a router of the code before sends: no complement keys
        state = gate.scores.__getstate__()
        gate.scores = LogHistogram.from_wire({k: v for k, v in state.items() if not k.startswith("complement")})
    mixed = GateWindows()
    mixed.add(1.0, new.gates)
    mixed.add(2.0, old.gates)
    assert mixed.window(0.0, step=True).gates["v2"].scores.complement is None
    assert _judged(mixed, "drift_ks", 0.2).value < 0.1  # the x-only reading, as before the fix
    fresh = GateWindows()
    fresh.add(3.0, new.gates)
    assert _judged(fresh, "drift_ks", 0.2).verdict.value == "fail"


def test_a_saved_step_window_keeps_the_scores_complement_and_reads_one_saved_before_it():
    rng = np.random.default_rng(23)
    windows = GateWindows()
    windows.add(1.0, _routed(rng, {"v1": rng.beta(40.0, 0.4, 800), "v2": rng.beta(40.0, 0.4, 800) * 0.995}).gates)
    saved = json.loads(json.dumps(windows.step_state(0.0)))
    restored = GateWindows()
    assert restored.restore_step(saved, 0.0)
    assert _judged(restored, "drift_ks", 0.2).value == pytest.approx(_judged(windows, "drift_ks", 0.2).value)
    # A state saved by the code before: the LogHistogram states hold no complement keys.
    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if not k.startswith("complement")}
        return [strip(v) for v in node] if isinstance(node, list) else node

    before = GateWindows()
    assert before.restore_step(strip(saved), 0.0)
    assert before.window(0.0, step=True).gates["v2"].scores.complement is None
    assert _judged(before, "drift_ks", 0.2).value < 0.1
