"""The rollout state machine, stepped tick by tick with a fake clock (never sleeping)."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from serve_ab.config.rollout import RolloutConfig
from serve_ab.rollout.gates import GateVerdict, WindowStats, alpha_for_look
from serve_ab.rollout.machine import Phase, Rollout, RolloutError
from tests.support.fakes import FakeClock

GATES = [
    {"metric": "latency_p95_ms", "max": 50},
    {"metric": "latency_p95_ms", "max_ratio_to_stable": 1.5},
    {"metric": "error_rate", "max": 0.01},
    {"metric": "drift_js", "max": 0.1},
]
STEPS = [
    {"set_weight": 5},
    {"pause": {"duration": "30s"}},
    {"analysis": {}},
    {"set_weight": 20},
    {"pause": {}},
    {"set_weight": 50},
    {"set_weight": 100},
]


def canary(steps=STEPS, **analysis) -> RolloutConfig:
    settings = {"interval_s": 10, "min_samples": 50, "failure_limit": 0, "progress_deadline_s": 120}
    settings.update(analysis)
    return RolloutConfig.model_validate({
        "strategy": "canary", "stable": "v1", "candidate": "v2", "analysis": settings,
        "gates": GATES, "steps": steps, "retire_after_s": 60,
    })


def blue_green(**settings) -> RolloutConfig:
    bg = {"post_switch_watch_s": 300, "keep_blue_s": 600}
    bg.update(settings)
    return RolloutConfig.model_validate({
        "strategy": "blue_green", "stable": "blue", "candidate": "green",
        "analysis": {"interval_s": 10, "min_samples": 50, "progress_deadline_s": 600},
        "gates": GATES, "blue_green": bg, "retire_after_s": 60,
    })


# Gates judge confidence bounds, so a healthy window must be evidence: 0 errors in 2,000
# requests bounds the error rate below 1% even at the 360th analysis of a step.
def win(version: str, n: int = 2000, latency_ms: float = 10.0, errors: int = 0) -> WindowStats:
    return WindowStats(version, request_count=n, error_count=errors,
                       latencies_ms=(latency_ms,) * (n - errors), class_counts=(n // 2, n - n // 2))


def healthy(stable="v1", candidate="v2") -> dict[str, WindowStats]:
    return {stable: win(stable), candidate: win(candidate)}


def slow(stable="v1", candidate="v2") -> dict[str, WindowStats]:
    return {stable: win(stable), candidate: win(candidate, latency_ms=80.0)}


def no_data(stable="v1", candidate="v2") -> dict[str, WindowStats]:
    return {stable: win(stable), candidate: win(candidate, n=3)}


def run_until(rollout: Rollout, clock: FakeClock, seconds: float, windows, step_s: float = 1.0):
    decision = None
    for _ in range(round(seconds / step_s)):
        clock.advance(step_s)
        decision = rollout.tick(windows)
    return decision


# -- canary ------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [
    [{"set_weight": 5}, {"set_weight": 100}],       # back to back
    [{"set_weight": 10}],                           # the last step below 100: the end promotes
])
def test_no_weight_is_left_for_the_next_without_a_passing_analysis(steps):
    clock = FakeClock(1000.0)
    rollout = Rollout(canary(steps), clock)
    d = rollout.tick(healthy())
    assert d.phase is Phase.PROGRESSING and d.weights["v2"] == steps[0]["set_weight"]
    clock.advance(5)
    d = rollout.tick({"v1": win("v1"), "v2": win("v2", errors=1000)})  # before any analysis: held
    assert d.phase is Phase.PROGRESSING and d.weights["v2"] == steps[0]["set_weight"]
    clock.advance(10)
    d = rollout.tick({"v1": win("v1"), "v2": win("v2", errors=1000)})  # a failing candidate: rolled back
    assert d.phase is Phase.ABORTED and d.weights == {"v1": 100.0, "v2": 0.0}
    healthy_run = Rollout(canary(steps), clock)
    healthy_run.tick(healthy())
    clock.advance(10)
    assert healthy_run.tick(healthy()).phase is Phase.PROMOTED


def test_all_steps_pass_to_promotion_and_old_stable_is_retired_after_the_drain_delay():
    clock = FakeClock(1000.0)
    rollout = Rollout(canary(), clock)
    assert rollout.weights == {"v1": 100.0, "v2": 0.0} and rollout.phase is Phase.PROGRESSING

    first = rollout.tick(healthy())
    assert first.weights_changed and first.weights == {"v1": 95.0, "v2": 5.0}
    assert first.step_index == 1 and "30s left" in first.reason

    clock.advance(10)
    d = rollout.tick(healthy())  # background analysis while the canary has traffic
    assert d.verdict is GateVerdict.PASS and len(d.analysis) == len(GATES) and not d.weights_changed

    d = run_until(rollout, clock, 20, healthy())
    assert d.phase is Phase.ANALYZING and d.step_index == 2 and d.weights == {"v1": 95.0, "v2": 5.0}
    clock.advance(10)
    d = rollout.tick(healthy())  # inline analysis passes -> set_weight 20 -> pause: {}
    assert d.phase is Phase.PAUSED and d.weights == {"v1": 80.0, "v2": 20.0} and d.weights_changed
    assert "waiting for promote (serve-ab promote)" in d.reason

    d = run_until(rollout, clock, 3600, healthy(), step_s=10)  # waits for a human
    assert d.phase is Phase.PAUSED and d.verdict is GateVerdict.PASS and d.step_index == 4

    d = rollout.promote()
    # set_weight 50 is followed by set_weight 100: 50% must see a passing analysis first.
    assert d.phase is Phase.PROGRESSING and d.weights == {"v1": 50.0, "v2": 50.0} and d.weights_changed
    assert any("analysis must pass at this weight" in h["reason"] for h in rollout.to_dict()["history"])
    clock.advance(10)
    d = rollout.tick(healthy())
    assert d.phase is Phase.PROMOTED and d.weights == {"v1": 0.0, "v2": 100.0} and d.weights_changed
    assert d.retire == () and "v1 may be unloaded in 60s" in d.reason
    clock.advance(59.5 - 1 / 3)
    assert rollout.status_line().endswith("v1 may be unloaded in 0.8s")  # to 0.1 s, not 0.833333s
    clock.advance(1 / 3)
    assert rollout.tick(healthy()).retire == ()
    clock.advance(0.5)
    retired = rollout.tick(healthy())
    assert retired.retire == ("v1",) and not retired.weights_changed
    assert [h["to_phase"] for h in rollout.to_dict()["history"]][-1] == "promoted"


def test_failed_gate_rolls_back_to_stable_at_once_naming_gate_value_and_threshold():
    clock = FakeClock(1000.0)
    rollout = Rollout(canary(), clock)
    rollout.tick(slow())
    clock.advance(10)
    d = rollout.tick(slow())
    assert d.phase is Phase.ABORTED and d.verdict is GateVerdict.FAIL
    assert d.weights == {"v1": 100.0, "v2": 0.0} and d.weights_changed
    assert "latency_p95_ms <= 50" in d.reason and "= 80" in d.reason and "max 50" in d.reason
    assert "failure_limit 0" in d.reason
    assert d.retire == ()
    clock.advance(60)
    assert rollout.tick(slow()).retire == ("v2",)
    with pytest.raises(RolloutError, match="already aborted"):
        rollout.promote()


def test_failure_limit_tolerates_that_many_failures_and_a_failure_holds_the_step():
    clock = FakeClock(1000.0)
    rollout = Rollout(canary(failure_limit=2), clock)
    rollout.tick(healthy())
    for failures in (1, 2):
        clock.advance(10)
        d = rollout.tick(slow())
        assert d.verdict is GateVerdict.FAIL and d.phase is Phase.PROGRESSING
        assert d.weights == {"v1": 95.0, "v2": 5.0}
        assert rollout.state.failures_total == failures
    clock.advance(10)  # the pause is over, but the latest run failed: hold
    d = rollout.tick(no_data())
    assert d.phase is Phase.PROGRESSING and d.step_index == 1 and "holding at step 2" in d.reason
    clock.advance(10)
    d = rollout.tick(healthy())
    assert d.phase is Phase.ANALYZING and rollout.state.failures_consecutive == 0
    clock.advance(10)
    d = rollout.tick(slow())  # the third failure in total exceeds the limit
    assert d.phase is Phase.ABORTED and "failed analysis 3 time(s), over failure_limit 2" in d.reason


def test_inconclusive_holds_without_progress_and_says_no_data():
    clock = FakeClock(1000.0)
    rollout = Rollout(canary(progress_deadline_s=None), clock)
    rollout.tick(no_data())
    d = run_until(rollout, clock, 300, no_data(), step_s=5)
    assert d.phase is Phase.PROGRESSING and d.step_index == 1 and d.weights == {"v1": 95.0, "v2": 5.0}
    assert "no data" in d.reason and "candidate v2 has 3" in d.reason and "50 needed" in d.reason
    holds = [h for h in rollout.to_dict()["history"] if "holding" in h["reason"]]
    assert len(holds) == 1  # a hold is recorded once, not every tick
    clock.advance(10)
    assert rollout.tick(healthy()).phase is Phase.ANALYZING  # data arrived: progress resumes


def test_progress_deadline_exceeded_aborts_with_that_reason():
    clock = FakeClock(1000.0)
    rollout = Rollout(canary(progress_deadline_s=60), clock)
    rollout.tick(no_data())
    d = run_until(rollout, clock, 30, no_data())  # pause over at +30, held from then on
    assert d.phase is Phase.PROGRESSING
    d = run_until(rollout, clock, 60, no_data())
    assert d.phase is Phase.PROGRESSING  # exactly at the deadline: not yet exceeded
    clock.advance(1)
    d = rollout.tick(no_data())
    assert d.phase is Phase.ABORTED and d.weights == {"v1": 100.0, "v2": 0.0}
    assert "progress deadline exceeded" in d.reason and "progress_deadline_s 60" in d.reason
    assert "no data" in d.reason


def test_inline_analysis_step_counts_toward_the_deadline_from_its_start():
    clock = FakeClock(1000.0)
    steps = [{"set_weight": 10}, {"analysis": {"min_samples": 5000}}, {"set_weight": 100}]
    rollout = Rollout(canary(steps=steps, progress_deadline_s=45), clock)
    d = rollout.tick(healthy())
    assert d.phase is Phase.ANALYZING  # 2,000 samples, the step wants 5,000
    d = run_until(rollout, clock, 40, healthy(), step_s=10)
    assert d.phase is Phase.ANALYZING and "5000 needed" in d.reason
    d = run_until(rollout, clock, 10, healthy(), step_s=10)
    assert d.phase is Phase.ABORTED and "for a passing analysis" in d.reason


def test_an_open_pause_is_left_by_promote_and_resume_does_not_move_it_on():
    steps = [{"set_weight": 10}, {"pause": {}}, {"set_weight": 30}, {"pause": {}}, {"set_weight": 100}]
    clock = FakeClock(1000.0)
    rollout = Rollout(canary(steps=steps), clock)
    assert rollout.tick(healthy()).phase is Phase.PAUSED
    d = rollout.promote()
    assert d.phase is Phase.PAUSED and d.weights == {"v1": 70.0, "v2": 30.0} and d.weights_changed
    # An operator's pause and resume at the open pause, then a second resume (a retried
    # command, a script): the rollout stays at step 4, 30%, and says what continues it.
    rollout.pause()
    d = rollout.resume()
    assert d.phase is Phase.PAUSED and d.step_index == 3 and d.weights == {"v1": 70.0, "v2": 30.0}
    with pytest.raises(RolloutError, match=r"waits at step 4 \(pause until promote\); resume lifts"):
        rollout.resume()
    rollout.set_weights({"v1": 60, "v2": 40})  # a hand-set split at the open pause: still held
    with pytest.raises(RolloutError, match="promote continues past this step"):
        rollout.resume()
    assert rollout.state.step_index == 3 and rollout.state.weights == {"v1": 60.0, "v2": 40.0}
    d = rollout.promote()
    assert d.phase is Phase.PROMOTED and d.weights == {"v1": 0.0, "v2": 100.0}


def test_promote_skips_a_timed_pause_and_full_promote_jumps_to_100():
    clock = FakeClock(1000.0)
    rollout = Rollout(canary(), clock)
    rollout.tick(healthy())
    d = rollout.promote()
    assert d.phase is Phase.ANALYZING and d.step_index == 2
    d = rollout.promote(full=True)
    assert d.phase is Phase.PROMOTED and d.weights == {"v1": 0.0, "v2": 100.0}
    assert "full" in d.reason


def test_failing_canary_is_rolled_back_even_while_waiting_at_an_open_pause():
    steps = [{"set_weight": 20}, {"pause": {}}, {"set_weight": 100}]
    clock = FakeClock(1000.0)
    rollout = Rollout(canary(steps=steps), clock)
    rollout.tick(healthy())
    clock.advance(10)
    assert rollout.tick(slow()).phase is Phase.ABORTED


def test_operator_abort_and_rollback():
    clock = FakeClock(1000.0)
    rollout = Rollout(canary(), clock)
    rollout.tick(healthy())
    d = rollout.abort("bad dashboards")
    assert d.phase is Phase.ABORTED and d.weights == {"v1": 100.0, "v2": 0.0} and "bad dashboards" in d.reason
    assert rollout.abort().weights_changed is False  # idempotent
    assert rollout.rollback().phase is Phase.ABORTED

    other = Rollout(canary(), FakeClock(1000.0))
    other.tick(healthy())
    d = other.rollback()
    assert d.phase is Phase.ABORTED and d.weights == {"v1": 100.0, "v2": 0.0} and "rolled back" in d.reason


def test_rollback_after_promotion_while_the_old_stable_is_still_loaded():
    clock = FakeClock(1000.0)
    rollout = Rollout(canary(), clock)
    rollout.tick(healthy())
    rollout.promote(full=True)
    clock.advance(30)
    d = rollout.rollback()
    assert d.phase is Phase.ABORTED and d.weights == {"v1": 100.0, "v2": 0.0} and d.weights_changed
    clock.advance(60)
    assert rollout.tick(healthy()).retire == ("v2",)

    late = Rollout(canary(), clock)
    late.tick(healthy())
    late.promote(full=True)
    clock.advance(30.04)
    # Promoted, stable still loaded: abort points to rollback, which can still go back.
    with pytest.raises(RolloutError, match=r"already promoted; use rollback \(serve-ab rollback\) to go back to v1$"):
        late.abort()
    clock.advance(31.0)  # stable released 1.04 s ago (retire_after_s 60)
    # Past it, neither points to the other: the way back is a new rollout. The time is the
    # span since the release, to 0.1 s, not two absolute clock readings.
    released = "v1 was released for unloading 1s ago; to go back to it, start a new rollout with v1 as candidate"
    with pytest.raises(RolloutError) as refused:
        late.rollback()
    assert str(refused.value) == f"cannot roll back: {released}"
    with pytest.raises(RolloutError) as refused:
        late.abort()
    assert str(refused.value) == f"cannot abort: the rollout is already promoted; {released}"


def test_operator_pause_freezes_steps_analysis_and_timers():
    clock = FakeClock(1000.0)
    rollout = Rollout(canary(), clock)
    rollout.tick(healthy())
    clock.advance(15)
    rollout.tick(healthy())
    d = rollout.pause()
    assert d.phase is Phase.PAUSED and "serve-ab resume continues it" in d.reason
    assert rollout.pause().phase is Phase.PAUSED  # idempotent
    d = run_until(rollout, clock, 600, slow(), step_s=10)
    assert d.phase is Phase.PAUSED and d.analysis == ()  # no analysis while an operator holds it
    d = rollout.resume()
    assert d.phase is Phase.PROGRESSING and "15s left" in d.reason  # the pause continues, not restarts
    clock.advance(14)
    assert rollout.tick(healthy()).step_index == 1
    clock.advance(1)
    assert rollout.tick(healthy()).phase is Phase.ANALYZING


def test_a_state_saved_before_window_since_s_keeps_its_window_start_across_a_pause():
    """An upgrade's first resume must not move the gates' window with the step's timers."""
    clock = FakeClock(1000.0)
    rollout = Rollout(canary(), clock)
    rollout.tick(healthy())
    clock.advance(5)
    saved = rollout.to_dict()
    del saved["window_since_s"], saved["confirmed_at_s"]  # as the release before wrote it
    older = Rollout.from_dict(canary(), saved, clock)
    start_s = older.state.step_started_at_s
    older.pause()
    clock.advance(100)
    older.resume()
    assert older.window_since_s == start_s and older.state.step_started_at_s == start_s + 100


def test_manual_weights_are_validated_and_pause_the_rollout():
    clock = FakeClock(1000.0)
    rollout = Rollout(canary(), clock)
    rollout.tick(healthy())
    with pytest.raises(ValueError, match="sum to 90%; they must sum to 100"):
        rollout.set_weights({"v1": 80, "v2": 10})
    with pytest.raises(ValueError, match=r"v1 is -20.0; a weight is a percentage in \[0, 100\]"):
        rollout.set_weights({"v1": -20, "v2": 120})
    with pytest.raises(ValueError, match=r"weights name \['v3'\]"):
        rollout.set_weights({"v3": 100})
    d = rollout.set_weights({"v1": 60, "v2": 40})
    assert d.phase is Phase.PAUSED and d.weights == {"v1": 60.0, "v2": 40.0} and d.weights_changed
    clock.advance(100)
    assert rollout.tick(healthy()).weights == {"v1": 60.0, "v2": 40.0}
    d = rollout.resume()  # the pause step still has 30 s to go
    assert d.phase is Phase.PROGRESSING and d.weights == {"v1": 60.0, "v2": 40.0}


def test_restart_mid_pause_resumes_same_step_and_weights_without_restarting_the_pause():
    clock = FakeClock(1000.0)
    rollout = Rollout(canary(), clock)
    rollout.tick(healthy())
    run_until(rollout, clock, 20, healthy(), step_s=10)
    saved = json.loads(json.dumps(rollout.to_dict()))  # what a store would hold
    assert saved["phase"] == "progressing" and saved["step_index"] == 1
    assert saved["weights"] == {"v1": 95.0, "v2": 5.0}

    clock.advance(5)  # the controller was down for 5 s
    restored = Rollout.from_dict(canary(), saved, clock)
    d = restored.tick(healthy())
    assert d.step_index == 1 and d.weights == {"v1": 95.0, "v2": 5.0} and not d.weights_changed
    assert "5s left" in d.reason  # 25 s of the 30 s pause already done
    clock.advance(5)
    d = restored.tick(healthy())
    assert d.phase is Phase.ANALYZING and d.step_index == 2
    steps_applied = [h for h in restored.to_dict()["history"] if "set to 5%" in h["reason"]]
    assert len(steps_applied) == 1  # set_weight 5 was not repeated


def test_restart_at_an_open_pause_and_during_a_hold_keeps_waiting_and_deadline():
    steps = [{"set_weight": 10}, {"pause": {}}, {"set_weight": 100}]
    clock = FakeClock(1000.0)
    rollout = Rollout(canary(steps=steps), clock)
    rollout.tick(healthy())
    restored = Rollout.from_dict(canary(steps=steps), rollout.to_dict(), clock)
    assert restored.phase is Phase.PAUSED and restored.state.paused_by == "step"
    assert restored.promote().phase is Phase.PROMOTED

    held = Rollout(canary(progress_deadline_s=60), clock)
    held.tick(no_data())
    run_until(held, clock, 50, no_data())  # held since +30
    again = Rollout.from_dict(canary(progress_deadline_s=60), held.to_dict(), clock)
    clock.advance(41)
    assert again.tick(no_data()).phase is Phase.ABORTED


def test_restore_refuses_a_state_of_another_rollout():
    rollout = Rollout(canary(), FakeClock(1000.0))
    saved = rollout.to_dict()
    other = canary().model_copy(update={"candidate": "v3"})
    with pytest.raises(ValueError, match="start a new rollout or restore the matching config"):
        Rollout.from_dict(other, saved, FakeClock(1000.0))
    with pytest.raises(ValueError, match="schema"):
        Rollout.from_dict(canary(), {**saved, "schema": 99}, FakeClock(1000.0))


# The keys the previous release's RolloutState.from_dict reads (db32c8e, 2026-12-06): it
# refuses a row holding any other, and a rollback to it then failed to start the app's
# controller and routers ("rollout state has unknown keys ['entries_total']", live).
PREVIOUS_RELEASE_KEYS = frozenset({
    "schema", "strategy", "stable", "candidate", "phase", "weights", "started_at_s", "step_index",
    "step_started_at_s", "window_since_s", "failures_total", "failures_consecutive", "last_analysis_at_s",
    "step_verdict", "analyses_in_step", "passes_in_step", "step_verdict_counted", "last_analysis_reason",
    "held_since_s", "paused_by", "paused_at_s", "resume_phase", "validation_passed", "switched_at_s",
    "finished_at_s", "retire_version", "retire_at_s", "confirm_answer", "confirmed_at_s", "restarted_at_s",
    "revision", "history"})


def test_a_saved_rollout_under_max_history_entries_is_one_the_previous_release_reads():
    """A downgrade mid-rollout: the entry count is saved only once the history dropped entries
    (the previous release cannot read it then, and refuses the row by name); before that, the
    row holds only keys the previous release knows, and reads back with the same count."""
    from serve_ab.rollout.machine import MAX_HISTORY

    clock = FakeClock(1000.0)
    rollout = Rollout(canary(), clock)
    rollout.tick(healthy())
    clock.advance(10)
    rollout.pause()
    rollout.resume()
    saved = json.loads(json.dumps(rollout.to_dict()))
    assert set(saved) <= PREVIOUS_RELEASE_KEYS, sorted(set(saved) - PREVIOUS_RELEASE_KEYS)
    assert Rollout.from_dict(canary(), saved, clock).state.entries_total == rollout.state.entries_total >= 3
    for _ in range(MAX_HISTORY + 5):
        rollout.pause(actor={"name": "retry-loop", "role": "operator"})
    saved = json.loads(json.dumps(rollout.to_dict()))
    assert len(saved["history"]) == MAX_HISTORY and saved["entries_total"] == rollout.state.entries_total > MAX_HISTORY
    assert Rollout.from_dict(canary(), saved, clock).state.entries_total == rollout.state.entries_total


def test_actions_that_change_nothing_never_push_out_the_reason_for_the_phase():
    """History keeps its last MAX_HISTORY entries; a script retrying abort on an aborted
    rollout must not make the status forget which gate aborted it."""
    from serve_ab.rollout.machine import MAX_HISTORY

    clock = FakeClock(1000.0)
    rollout = Rollout(canary(), clock)
    rollout.tick(healthy())
    run_until(rollout, clock, 20, slow(), step_s=10)
    assert rollout.phase is Phase.ABORTED
    why = rollout.status_line()
    for _ in range(MAX_HISTORY + 5):
        rollout.abort(actor={"name": "retry-loop", "role": "operator"})
    assert len(rollout.state.history) == MAX_HISTORY
    assert rollout.status_line() == why and "latency_p95_ms" in why


def test_history_entries_name_time_phases_and_reason():
    clock = FakeClock(0.0)
    rollout = Rollout(canary(), clock)
    rollout.tick(healthy())
    clock.advance(10)
    rollout.tick(slow())
    history = rollout.to_dict()["history"]
    assert set(history[-1]) == {"t_s", "from_phase", "to_phase", "step_index", "reason", "weights"}
    assert (history[-1]["t_s"], history[-1]["from_phase"], history[-1]["to_phase"]) == (10.0, "progressing", "aborted")


# -- blue-green --------------------------------------------------------------------------


def test_a_pause_at_100_percent_judges_the_gates_that_need_no_stable_traffic():
    """A bake at 100%: stable has no traffic, so the relative gates (a ratio, drift) are left
    out as after a blue-green switch, instead of holding until the deadline aborts a rollout
    that is fine; the absolute gates still judge, and a failure still rolls back."""
    steps = [{"set_weight": 50}, {"pause": {"duration": "30s"}}, {"set_weight": 100},
             {"pause": {"duration": "60s"}}]
    at_100 = {"v1": win("v1", n=0), "v2": win("v2")}
    clock = FakeClock(1000.0)
    rollout = Rollout(canary(steps), clock)
    d = run_until(rollout, clock, 40, healthy(), step_s=10)
    assert d.weights == {"v1": 0.0, "v2": 100.0} and d.phase is Phase.PROGRESSING
    d = run_until(rollout, clock, 20, at_100, step_s=10)
    assert d.verdict is GateVerdict.PASS
    assert [r.gate for r in d.analysis] == ["latency_p95_ms <= 50", "error_rate <= 0.01"]
    d = run_until(rollout, clock, 60, at_100, step_s=10)
    assert d.phase is Phase.PROMOTED

    failing_run = Rollout(canary(steps), clock)
    run_until(failing_run, clock, 40, healthy(), step_s=10)
    d = run_until(failing_run, clock, 20, {"v1": win("v1", n=0), "v2": win("v2", errors=500)}, step_s=10)
    assert d.phase is Phase.ABORTED and d.weights == {"v1": 100.0, "v2": 0.0} and "error_rate <= 0.01" in d.reason


def test_a_pause_at_100_percent_with_only_gates_that_need_stable_ends_on_time():
    """Where every gate needs stable live, a bake at 100% has nothing to judge: it ends
    when its time is up, not an analysis interval later."""
    steps = [{"set_weight": 10}, {"pause": {"duration": "30s"}}, {"set_weight": 100},
             {"pause": {"duration": "2s"}}]
    config = RolloutConfig.model_validate({
        "strategy": "canary", "stable": "v1", "candidate": "v2",
        "analysis": {"interval_s": 10, "min_samples": 50, "progress_deadline_s": 120},
        "gates": [{"metric": "latency_p95_ms", "max_ratio_to_stable": 1.5}], "steps": steps})
    clock = FakeClock(1000.0)
    rollout = Rollout(config, clock)
    rollout.tick(healthy())
    while rollout.weights["v2"] < 100:
        clock.advance(1.0)
        rollout.tick(healthy())
    at_100_s = clock()
    run_until(rollout, clock, 2, {"v1": win("v1", n=0), "v2": win("v2")})
    assert rollout.phase is Phase.PROMOTED and clock() - at_100_s == 2.0
    assert not any("holding" in h["reason"] for h in rollout.state.history if h["t_s"] >= at_100_s)


def test_at_100_percent_a_shadow_agreement_gate_is_left_out_too():
    """Nothing is mirrored to the version that serves every request, so the agreement gate
    has no pairs at 100% and, like a ratio to stable, is left out instead of holding."""
    config = RolloutConfig.model_validate({
        "strategy": "canary", "stable": "v1", "candidate": "v2",
        "analysis": {"interval_s": 10, "min_samples": 50, "progress_deadline_s": 120},
        "gates": [{"metric": "error_rate", "max": 0.01}, {"metric": "shadow_agreement", "min": 0.9}],
        "steps": [{"set_weight": 50}, {"pause": {"duration": "30s"}}, {"set_weight": 100},
                  {"pause": {"duration": "60s"}}]})
    mirrored = {"v1": win("v1"), "v2": dataclasses.replace(win("v2"), shadow_pairs=500, shadow_agreements=490)}
    clock = FakeClock(1000.0)
    rollout = Rollout(config, clock)
    d = run_until(rollout, clock, 40, mirrored, step_s=10)
    assert d.weights == {"v1": 0.0, "v2": 100.0}
    d = run_until(rollout, clock, 20, {"v1": win("v1", n=0), "v2": win("v2")}, step_s=10)
    assert d.verdict is GateVerdict.PASS and [r.gate for r in d.analysis] == ["error_rate <= 0.01"]
    d = run_until(rollout, clock, 60, {"v1": win("v1", n=0), "v2": win("v2")}, step_s=10)
    assert d.phase is Phase.PROMOTED


def bg_windows(green_latency_ms: float = 10.0, blue_n: int = 0) -> dict[str, WindowStats]:
    return {"blue": win("blue", n=blue_n), "green": win("green", latency_ms=green_latency_ms)}


def test_blue_green_happy_path_switches_once_and_retires_blue_after_keep_blue_s():
    clock = FakeClock(1000.0)
    rollout = Rollout(blue_green(), clock)
    d = rollout.tick(bg_windows())
    assert d.phase is Phase.VALIDATING and d.weights == {"blue": 100.0, "green": 0.0}
    assert "validation on validation_samples" in d.reason
    clock.advance(20)
    d = rollout.report_validation(True, "512 synthetic requests matched")
    assert d.phase is Phase.SWITCHED and d.weights == {"blue": 0.0, "green": 100.0} and d.weights_changed
    switched_at = clock.t_s

    d = run_until(rollout, clock, 290, bg_windows(), step_s=10)
    assert d.phase is Phase.SWITCHED and d.verdict is GateVerdict.PASS
    # Blue gets no traffic now, so relative gates are left out instead of holding the watch.
    assert [r.gate for r in d.analysis] == ["latency_p95_ms <= 50", "error_rate <= 0.01"]
    d = run_until(rollout, clock, 10, bg_windows(), step_s=10)
    assert d.phase is Phase.PROMOTED and d.weights == {"blue": 0.0, "green": 100.0} and not d.weights_changed

    clock.t_s = switched_at + 599
    assert rollout.tick(bg_windows()).retire == ()
    clock.t_s = switched_at + 600
    assert rollout.tick(bg_windows()).retire == ("blue",)


def test_blue_green_post_switch_gate_failure_rolls_back_to_blue():
    clock = FakeClock(1000.0)
    rollout = Rollout(blue_green(), clock)
    rollout.report_validation(True)
    run_until(rollout, clock, 100, bg_windows(), step_s=10)
    clock.advance(10)
    d = rollout.tick(bg_windows(green_latency_ms=90.0))
    assert d.phase is Phase.ABORTED and d.weights == {"blue": 100.0, "green": 0.0} and d.weights_changed
    assert "latency_p95_ms <= 50" in d.reason and "= 90" in d.reason
    clock.advance(60)
    assert rollout.tick(bg_windows()).retire == ("green",)


def test_blue_green_validation_on_mirrored_traffic_and_manual_switch():
    clock = FakeClock(1000.0)
    rollout = Rollout(blue_green(validation_min_samples=64, auto_switch=False), clock)
    rollout.report_validation(True)
    d = rollout.tick(bg_windows(blue_n=100))
    assert d.phase is Phase.VALIDATING and "gates on mirrored traffic" in d.reason
    clock.advance(10)
    d = rollout.tick({"blue": win("blue"), "green": win("green", n=40)})
    assert d.phase is Phase.VALIDATING and "green has 40" in d.reason and "64 needed" in d.reason
    clock.advance(10)
    d = rollout.tick(bg_windows(blue_n=100))
    assert d.phase is Phase.VALIDATED and d.weights == {"blue": 100.0, "green": 0.0}
    d = run_until(rollout, clock, 3600, bg_windows(blue_n=100), step_s=60)
    assert d.phase is Phase.VALIDATED  # waiting for a human is not a deadline
    assert rollout.state.analyses_in_step > 0  # validation's analyses on mirrored traffic
    d = rollout.promote()
    assert d.phase is Phase.SWITCHED and d.weights == {"blue": 0.0, "green": 100.0}
    assert rollout.state.analyses_in_step == 0  # the watch spends its own alpha


def test_blue_green_failed_validation_aborts_and_deadline_applies():
    clock = FakeClock(1000.0)
    rollout = Rollout(blue_green(), clock)
    d = rollout.report_validation(False, "3 of 512 answers differ")
    assert d.phase is Phase.ABORTED and "3 of 512 answers differ" in d.reason
    assert d.weights == {"blue": 100.0, "green": 0.0} and not d.weights_changed

    waiting = Rollout(blue_green(), clock)
    d = run_until(waiting, clock, 601, bg_windows(), step_s=60.1)
    assert d.phase is Phase.ABORTED and "for validation (progress_deadline_s 600)" in d.reason
    assert "step" not in d.reason  # blue-green has no steps to name
    with pytest.raises(RolloutError, match="for blue_green"):
        Rollout(canary(), clock).report_validation(True)


def test_blue_green_restart_mid_watch_keeps_the_switch_time():
    clock = FakeClock(1000.0)
    rollout = Rollout(blue_green(), clock)
    rollout.report_validation(True)
    run_until(rollout, clock, 200, bg_windows(), step_s=10)
    restored = Rollout.from_dict(blue_green(), json.loads(json.dumps(rollout.to_dict())), clock)
    d = run_until(restored, clock, 90, bg_windows(), step_s=10)
    assert d.phase is Phase.SWITCHED and "10s left" in d.reason
    assert run_until(restored, clock, 10, bg_windows(), step_s=10).phase is Phase.PROMOTED


# -- evidence, preconditions, who acted -----------------------------------------------------

SHORT_PAUSES = [{"set_weight": 10}, {"pause": {"duration": "2s"}}, {"set_weight": 50},
                {"pause": {"duration": "2s"}}, {"set_weight": 100}]


def failing(stable="v1", candidate="v2") -> dict[str, WindowStats]:
    return {stable: win(stable), candidate: win(candidate, errors=100)}


def test_a_pause_shorter_than_the_interval_waits_for_a_passing_analysis():
    clock = FakeClock()
    rollout = Rollout(canary(SHORT_PAUSES), clock)
    rollout.tick(healthy())
    run_until(rollout, clock, 9, healthy())
    # The 2 s pause is long over, but no analysis has run at 10%: not analysed is no pass.
    assert rollout.weights["v2"] == 10.0
    assert "no analysis in this step yet" in rollout.status_line()
    run_until(rollout, clock, 1, healthy())  # the first analysis at 10% passes
    assert rollout.weights["v2"] == 50.0
    run_until(rollout, clock, 9, healthy())
    assert rollout.weights["v2"] == 50.0  # each weight gets its own analysis
    run_until(rollout, clock, 1, healthy())
    assert rollout.phase is Phase.PROMOTED


@pytest.mark.parametrize("windows, failure_limit, ended_by", [
    (failing, 0, "over failure_limit 0"),
    (failing, 99, "progress deadline exceeded"),  # failures tolerated: held until the deadline
    (no_data, 0, "progress deadline exceeded"),
])
def test_a_candidate_without_a_passing_analysis_never_reaches_100_percent(windows, failure_limit, ended_by):
    clock = FakeClock()
    rollout = Rollout(canary(SHORT_PAUSES, failure_limit=failure_limit), clock)
    seen = set()
    for _ in range(400):
        clock.advance(1.0)
        seen.add(rollout.tick(windows()).weights["v2"])
    assert seen <= {0.0, 10.0}
    assert rollout.phase is Phase.ABORTED and ended_by in rollout.status_line()


def test_a_pause_without_gates_or_candidate_traffic_needs_no_analysis():
    clock = FakeClock()
    config = RolloutConfig.model_validate({
        "strategy": "canary", "stable": "v1", "candidate": "v2", "analysis": {"interval_s": 10},
        "steps": [{"pause": {"duration": "2s"}}, {"set_weight": 10}, {"pause": {"duration": "2s"}}],
    })
    rollout = Rollout(config, clock)
    run_until(rollout, clock, 5, {})
    assert rollout.phase is Phase.PROMOTED


def test_preconditions_refuse_a_retried_promote_and_a_stale_revision():
    clock = FakeClock()
    rollout = Rollout(canary(), clock)
    run_until(rollout, clock, 10, healthy())
    at = rollout.state.step_index
    rollout.require(from_step=at, revision=0)
    rollout.promote()
    # Step numbers as people count them (status, --from-step) beside from_step's index.
    with pytest.raises(RolloutError, match=rf"from_step is {at} \(step {at + 1}\) but the rollout is at step "
                                           rf"{at + 2} \(.*; from_step {at + 1}\).*already left step {at + 1}.*"
                                           rf"send from_step {at + 1} \(--from-step {at + 2} on"):
        rollout.require(from_step=at)
    rollout.state.revision = 7
    with pytest.raises(RolloutError, match="revision is 6 but .* revision 7"):
        rollout.require(revision=6)
    with pytest.raises(RolloutError, match="has not reached"):
        rollout.require(from_step=at + 5)
    # An ended rollout acts at no step: no from_step is suggested (one would be refused too).
    rollout.abort("by hand")
    with pytest.raises(RolloutError, match="it has ended, so no step takes actions") as refused:
        rollout.require(from_step=at)
    assert "send from_step" not in str(refused.value)


def test_actions_record_what_who_and_from_where_and_a_no_op_is_recorded_too():
    clock = FakeClock()
    rollout = Rollout(canary(), clock)
    alice = {"name": "alice", "role": "operator", "address": "10.0.0.7"}
    rollout.pause(actor=alice)
    rollout.pause(actor=alice)  # already paused: nothing changes, the request is still recorded
    rollout.abort("p95 up", actor={"name": "bob", "role": "operator", "address": None})
    entries = [h for h in rollout.state.history if h.get("action")]
    assert [(h["action"], h["actor"]["name"]) for h in entries] == [
        ("pause", "alice"), ("pause", "alice"), ("abort", "bob")]
    assert entries[0]["actor"]["address"] == "10.0.0.7" and entries[0]["to_phase"] == "paused"
    assert "nothing to change" in entries[1]["reason"] and "p95 up" in entries[2]["reason"]
    assert "action" not in rollout.state.history[0]  # the rollout's own start is nobody's action
    restored = Rollout.from_dict(canary(), json.loads(json.dumps(rollout.to_dict())), clock)
    assert restored.state.history == rollout.state.history


def test_an_action_that_changes_nothing_is_recorded_but_keeps_the_reason_of_the_phase():
    """The audit: after a gate aborted the canary, `rollback` and `abort --reason test` showed
    "abort: nothing to change" as the status's reason; the gate failure was in the history only."""
    clock = FakeClock(1000.0)
    rollout = Rollout(canary(), clock)
    rollout.tick(healthy())
    aborted = run_until(rollout, clock, 10, slow())
    assert aborted.phase is Phase.ABORTED and "failed analysis" in aborted.reason
    clock.advance(5)
    why = rollout.status_line()
    assert why.startswith("v2 failed analysis") and why.endswith("v2 may be unloaded in 55s")
    bob = {"name": "bob", "role": "operator", "address": None}
    for d in (rollout.rollback(actor=bob), rollout.abort("test", actor=bob)):
        assert d.changed is False and d.phase is Phase.ABORTED and not d.weights_changed
        assert d.reason == why
    assert rollout.status_line() == why
    noops = rollout.state.history[-2:]  # each request is still in the history, marked
    assert [(h["action"], h["reason"], h["changed"], h["to_phase"]) for h in noops] == [
        ("rollback", "rollback: nothing to change", False, "aborted"),
        ("abort", "abort: nothing to change", False, "aborted")]
    with pytest.raises(RolloutError, match=r"cannot promote: rollout is already aborted \(v2 failed analysis"):
        rollout.promote()
    # A restored rollout reads the same; entries saved before they were marked are known by
    # their reason, so a status already showing "abort: nothing to change" shows the gate again.
    saved = json.loads(json.dumps(rollout.to_dict()))
    assert Rollout.from_dict(canary(), saved, clock).status_line() == why
    for entry in saved["history"]:
        entry.pop("changed", None)
    assert Rollout.from_dict(canary(), saved, clock).status_line() == why
    # A pause of a paused rollout changes nothing either; a first pause does.
    other = Rollout(canary(), clock)
    assert other.pause().changed is True and other.pause().changed is False
    assert "changed" not in other.state.history[-2] and other.state.history[-1]["changed"] is False


def test_copy_is_independent_and_state_without_a_revision_still_loads():
    clock = FakeClock()
    rollout = Rollout(canary(), clock)
    draft = rollout.copy()
    draft.abort()
    assert rollout.phase is Phase.PROGRESSING and draft.phase is Phase.ABORTED
    old = rollout.to_dict()
    del old["revision"]
    assert Rollout.from_dict(canary(), old, clock).state.revision == 0


# -- alpha spent over the analyses of a step ---------------------------------------------

TWO_ANALYSES = [{"set_weight": 10}, {"analysis": {}}, {"set_weight": 50}, {"analysis": {}}, {"set_weight": 100}]


def borderline(stable="v1", candidate="v2") -> dict[str, WindowStats]:
    # 1% errors against error_rate max 0.01: the bounds straddle max, so it stays inconclusive.
    return {stable: win(stable), candidate: win(candidate, errors=20)}


def test_each_analysis_of_a_step_spends_alpha_and_the_next_step_starts_over():
    clock = FakeClock()
    rollout = Rollout(canary(TWO_ANALYSES, alpha=0.1), clock)
    rollout.tick(borderline())
    for look in (1, 2, 3):
        clock.advance(10)
        d = rollout.tick(borderline())
        assert d.verdict is GateVerdict.INCONCLUSIVE and rollout.state.analyses_in_step == look
        assert {r.alpha for r in d.analysis} == {alpha_for_look(0.1, look)}
    clock.advance(10)
    rollout.tick(no_data())  # no gate could judge: nothing spent
    assert rollout.state.analyses_in_step == 3
    rollout.pause()
    rollout.resume()  # an operator's pause buys a held candidate no fresh alpha
    assert rollout.state.analyses_in_step == 3
    clock.advance(10)
    d = rollout.tick(healthy())
    assert d.verdict is GateVerdict.PASS and d.analysis[0].alpha == alpha_for_look(0.1, 4)
    assert rollout.state.step_index == 3 and rollout.state.analyses_in_step == 0
    clock.advance(10)
    d = rollout.tick(borderline())
    assert d.analysis[0].alpha == alpha_for_look(0.1, 1) and rollout.state.analyses_in_step == 1


def test_a_window_that_passes_a_first_look_does_not_pass_a_later_one():
    # 0 errors in 400 requests: error_rate's upper bound is 0.0087 at the first look's alpha
    # (0.030) but 0.0166 at the fifth's (0.0012), above max 0.01.
    small = {"v1": win("v1"), "v2": win("v2", n=400)}
    clock = FakeClock()
    first = Rollout(canary(TWO_ANALYSES), clock)
    first.tick(small)
    clock.advance(10)
    assert first.tick(small).verdict is GateVerdict.PASS and first.state.step_index == 3

    held = Rollout(canary(TWO_ANALYSES), clock)
    held.tick(borderline())
    run_until(held, clock, 40, borderline(), step_s=10)
    clock.advance(10)
    d = held.tick(small)
    assert d.verdict is GateVerdict.INCONCLUSIVE and held.state.step_index == 1
    assert "error_rate on v2: 0 errors in 400 requests, upper 99.88% bound 0.01664 is not below max 0.01" in d.reason


def test_the_analysis_count_is_saved_and_a_state_saved_without_it_loads():
    clock = FakeClock()
    rollout = Rollout(canary(TWO_ANALYSES), clock)
    rollout.tick(borderline())
    run_until(rollout, clock, 20, borderline(), step_s=10)
    saved = json.loads(json.dumps(rollout.to_dict()))
    assert saved["analyses_in_step"] == 2
    restored = Rollout.from_dict(canary(TWO_ANALYSES), saved, clock)
    clock.advance(10)
    assert restored.tick(borderline()).analysis[0].alpha == alpha_for_look(0.05, 3)
    del saved["analyses_in_step"]  # written before alpha spending
    assert Rollout.from_dict(canary(TWO_ANALYSES), saved, clock).state.analyses_in_step == 0


# -- a pass spends alpha only where it could end the step --------------------------------

PAUSED = [{"set_weight": 10}, {"pause": {"duration": "60s"}}, {"set_weight": 100}]


def test_a_timed_pause_judges_its_pass_at_the_first_analysis_that_could_end_it():
    # 0 errors in 400 requests passes at the first look's alpha (upper bound 0.0087 < max 0.01)
    # but not at the sixth's. The pause's first five analyses (10-50 s) are replaced before
    # its 60 s are up, so the analysis at 60 s is the first that could end it.
    small = {"v1": win("v1"), "v2": win("v2", n=400)}
    clock = FakeClock()
    rollout = Rollout(canary(PAUSED), clock)
    rollout.tick(small)
    assert rollout.state.step_index == 1
    for look in range(1, 6):
        clock.advance(10)
        d = rollout.tick(small)
        assert (rollout.state.analyses_in_step, rollout.state.passes_in_step) == (look, 0)
        assert d.verdict is GateVerdict.PASS and rollout.state.step_index == 1  # its time is not up
    clock.advance(10)
    d = rollout.tick(small)
    errors = next(r for r in d.analysis if r.metric == "error_rate")
    assert d.verdict is GateVerdict.PASS and errors.alpha == alpha_for_look(0.05, 1)
    assert rollout.phase is Phase.PROMOTED


def test_a_held_pause_spends_pass_alpha_from_its_first_analysis_that_could_end_it():
    clock = FakeClock()
    rollout = Rollout(canary(PAUSED, interval_s=7), clock)
    rollout.tick(borderline())
    run_until(rollout, clock, 56, borderline())  # analyses at 7, 14, ..., 56
    # 56 + 7 > 60: the analysis at 56 is the latest when the 60 s are up; it counts.
    assert (rollout.state.analyses_in_step, rollout.state.passes_in_step) == (8, 1)
    d = run_until(rollout, clock, 7, borderline())
    assert (rollout.state.analyses_in_step, rollout.state.passes_in_step) == (9, 2)
    assert d.verdict is GateVerdict.INCONCLUSIVE and rollout.state.step_index == 1
    errors = next(r for r in d.analysis if r.metric == "error_rate")
    assert errors.alpha == alpha_for_look(0.05, 2)  # the pass's level: inconclusive there
    saved = json.loads(json.dumps(rollout.to_dict()))
    assert saved["passes_in_step"] == 2
    del saved["passes_in_step"]  # written before a pass's own spending: every analysis counts
    assert Rollout.from_dict(canary(PAUSED, interval_s=7), saved, clock).state.passes_in_step == 9


def test_the_blue_green_watch_judges_its_pass_at_the_first_analysis_that_could_end_it():
    clock = FakeClock()
    rollout = Rollout(blue_green(post_switch_watch_s=60), clock)
    rollout.report_validation(True)
    rollout.tick(healthy("blue", "green"))
    assert rollout.phase is Phase.SWITCHED
    run_until(rollout, clock, 50, {"blue": win("blue", n=0), "green": win("green")}, step_s=10)
    assert (rollout.state.analyses_in_step, rollout.state.passes_in_step) == (5, 0)
    run_until(rollout, clock, 10, {"blue": win("blue", n=0), "green": win("green")}, step_s=10)
    assert rollout.phase is Phase.PROMOTED and rollout.state.passes_in_step == 1


def test_a_held_blue_green_watch_names_its_phase_not_an_internal_step():
    """A blue-green rollout has no steps (its step_index is internal): a watch held past its
    time for want of evidence says 'holding in phase switched', not 'holding at step 2'."""
    clock = FakeClock()
    rollout = Rollout(blue_green(post_switch_watch_s=20), clock)
    rollout.report_validation(True)
    rollout.tick(healthy("blue", "green"))
    assert rollout.phase is Phase.SWITCHED
    thin = {"blue": win("blue", n=0), "green": win("green", n=10)}  # under min_samples: no verdict
    run_until(rollout, clock, 40, thin, step_s=10)
    held = rollout.status_line()
    assert rollout.phase is Phase.SWITCHED and held.startswith("holding in phase switched for "), held
    assert "step" not in held.split(":")[0]
    assert any(h["reason"].startswith("holding in phase switched: ") for h in rollout.state.history)


def test_a_pass_from_before_an_operators_pause_does_not_end_the_wait_it_could_not_end():
    # The analyses at 10-50 s pass (at the first look's level) but are not counted: the 60-s
    # pause could not end on them. Paused at 55 s and resumed at 100 s, the pause ends at 105 s,
    # before the next analysis (110 s): the 50-s pass is then the latest, and must not end it.
    small = {"v1": win("v1"), "v2": win("v2", n=400)}
    clock = FakeClock()
    rollout = Rollout(canary(PAUSED), clock)
    rollout.tick(small)
    run_until(rollout, clock, 50, small, step_s=10)
    assert rollout.state.step_verdict is GateVerdict.PASS and rollout.state.passes_in_step == 0
    clock.advance(5)
    rollout.pause()
    clock.advance(45)
    rollout.resume()
    run_until(rollout, clock, 9, small)  # to 109 s: its time is up, but no counted pass yet
    assert rollout.state.step_index == 1 and rollout.phase is not Phase.PROMOTED
    assert "the latest analysis passed before this wait's last 10s" in rollout.status_line()
    assert rollout.state.passes_in_step == 0
    run_until(rollout, clock, 1, small)  # 110 s: a counted analysis passes and ends it
    assert rollout.phase is Phase.PROMOTED


def test_the_blue_green_watch_does_not_end_on_a_pass_from_before_a_pause():
    clock = FakeClock()
    rollout = Rollout(blue_green(post_switch_watch_s=60), clock)
    rollout.report_validation(True)
    green = {"blue": win("blue", n=0), "green": win("green")}
    rollout.tick(healthy("blue", "green"))
    run_until(rollout, clock, 50, green, step_s=10)
    clock.advance(5)
    rollout.pause()
    clock.advance(45)
    rollout.resume()
    run_until(rollout, clock, 9, green)
    assert rollout.phase is Phase.SWITCHED and rollout.state.passes_in_step == 0
    run_until(rollout, clock, 1, green)
    assert rollout.phase is Phase.PROMOTED and rollout.state.passes_in_step == 1


# -- blue-green: one switch, and what an operator's actions say ------------------------------


def test_blue_green_refuses_a_split_in_every_phase():
    """A split would send live users to a green not validated yet, or watch a split and then
    switch without watching 100%: blue-green moves traffic in one switch."""
    clock = FakeClock()
    rollout = Rollout(blue_green(auto_switch=False), clock)
    phases = []
    for then in (lambda: None, lambda: rollout.report_validation(True), rollout.promote, rollout.pause):
        then()
        phases.append(rollout.phase)
        then = (r"green has all traffic; serve-ab rollback sends it back to blue" if rollout.state.switched_at_s
                else r"serve-ab promote switches to green, serve-ab abort keeps everything on blue")
        with pytest.raises(RolloutError, match=r"cannot set weights: a blue-green rollout moves all traffic "
                                               rf"in one switch, and this one is {rollout.phase.value}; {then}"):
            rollout.set_weights({"blue": 50, "green": 50})
    assert phases == [Phase.VALIDATING, Phase.VALIDATED, Phase.SWITCHED, Phase.PAUSED]
    assert rollout.weights == {"blue": 0.0, "green": 100.0}
    assert not any(h.get("action") == "weights" for h in rollout.state.history)


def test_a_promote_during_validation_says_what_it_skipped():
    clock = FakeClock()
    rollout = Rollout(blue_green(validation_min_samples=64), clock)
    rollout.tick(bg_windows(blue_n=100))
    clock.advance(10)
    rollout.tick({"blue": win("blue"), "green": win("green", n=40)})  # too few mirrored answers
    d = rollout.promote()
    assert d.phase is Phase.SWITCHED
    reason = rollout.state.history[-1]["reason"]
    assert reason.startswith("promoted by operator: switched to green before its validation ended (skipped: "
                             "validation on validation_samples and gates on mirrored traffic (latest "
                             "inconclusive: "), reason
    assert "green has 40" in reason
    # Once validated, a promote is the switch it waits for: nothing skipped.
    validated = Rollout(blue_green(auto_switch=False), clock)
    validated.report_validation(True)
    validated.promote()
    assert validated.state.history[-1]["reason"] == "promoted by operator: switched to green"


def test_blue_green_refusals_name_the_phase_not_an_internal_step():
    clock = FakeClock()
    rollout = Rollout(blue_green(), clock)
    rollout.report_validation(True)
    assert rollout.phase is Phase.SWITCHED
    with pytest.raises(RolloutError) as refused:
        rollout.require(from_step=0)
    text = str(refused.value)
    assert text.startswith("refused: from_step is 0 (validation, --from-step 1) but the rollout is in phase "
                           "switched (the post-switch watch; from_step 1, --from-step 2), revision 0; it has "
                           "already left validation"), text
    assert "send revision 0 (--revision 0)" in text and not re.search(r"(?<!from_)(?<!from-)step \d", text)
    with pytest.raises(RolloutError, match=r"revision is 3 but the rollout is in phase switched \(the post-switch"):
        rollout.require(revision=3)


def test_an_abort_that_moves_traffic_says_it_went_back_to_stable():
    clock = FakeClock()
    rollout = Rollout(blue_green(), clock)
    rollout.report_validation(True)
    clock.advance(10)
    d = rollout.tick(bg_windows(green_latency_ms=90.0))
    assert d.phase is Phase.ABORTED, d.reason
    assert rollout.state.history[-1]["reason"].endswith("; all traffic back to blue")
    # Nothing to say where the candidate had no traffic: an abort during validation.
    waiting = Rollout(blue_green(), clock)
    assert waiting.abort().reason.startswith("aborted by operator")
    assert "traffic back" not in waiting.state.history[-1]["reason"]


def test_a_pause_in_a_timed_wait_says_how_much_of_it_resume_gives_back():
    clock = FakeClock()
    rollout = Rollout(blue_green(post_switch_watch_s=60), clock)
    rollout.report_validation(True)
    clock.advance(25)
    rollout.pause()
    clock.advance(100)  # paused time does not count
    assert rollout.status_line() == ("paused by operator in the post-switch watch of green, 35s of it left; "
                                     "serve-ab resume continues it")
    canary_rollout = Rollout(canary(), clock)
    canary_rollout.tick(healthy())  # step 1 sets 5%, step 2 pauses 30s
    clock.advance(12)
    canary_rollout.pause()
    clock.advance(50)
    assert canary_rollout.status_line() == ("paused by operator at step 2 (pause 30s), 18s of it left; "
                                            "serve-ab resume continues it")
    validating = Rollout(blue_green(), clock)
    validating.pause()
    assert validating.status_line().startswith("paused by operator in phase validating;")


def test_a_restart_waits_for_an_analysis_before_ending_a_wait():
    """A controller that restarts after a watch's time ran out must not end it on the
    verdict saved before it went down: the routers' reports of the downtime come after."""
    clock = FakeClock()
    rollout = Rollout(blue_green(post_switch_watch_s=60), clock)
    rollout.report_validation(True)
    green = {"blue": win("blue", n=0), "green": win("green")}
    run_until(rollout, clock, 56, green, step_s=7)  # analyses at 14, 28, 42 and 56 s: the last can end it
    assert rollout.state.step_verdict is GateVerdict.PASS and rollout.state.step_verdict_counted
    clock.advance(120)  # down across the watch's end
    restored = Rollout.from_dict(blue_green(post_switch_watch_s=60), rollout.to_dict(), clock)
    restored.restarted(reports_in_s=4.0)
    d = restored.tick(green)
    assert d.phase is Phase.SWITCHED and d.analysis == ()
    assert "no analysis since the controller restarted 0s ago; the next, due in 4s, reads" in d.reason, d.reason
    clock.advance(3.5)
    assert restored.tick(green).analysis == ()  # the routers' reports may not all be in yet
    clock.advance(0.5)
    d = restored.tick(bg_windows(green_latency_ms=90.0))  # the downtime's reports
    assert d.phase is Phase.ABORTED and d.analysis


def test_a_restart_near_the_deadline_waits_for_its_analysis_before_aborting():
    clock = FakeClock()
    rollout = Rollout(canary([{"set_weight": 10}, {"analysis": {}}, {"set_weight": 100}],
                             progress_deadline_s=120), clock)
    thin = {"v1": win("v1"), "v2": win("v2", n=3)}  # too few samples: held, inconclusive
    run_until(rollout, clock, 110, thin, step_s=10)
    assert rollout.phase is Phase.ANALYZING
    clock.advance(25)  # down past the deadline (held since 10 s, deadline 120 s)
    restored = Rollout.from_dict(rollout.config, rollout.to_dict(), clock)
    restored.restarted(reports_in_s=4.0)
    d = restored.tick(healthy())
    assert d.phase is Phase.ANALYZING and "no analysis since the controller restarted" in d.reason, d.reason
    clock.advance(4)
    d = restored.tick(healthy())  # the downtime's reports pass: no abort for the wait
    assert d.phase is Phase.PROMOTED and restored.weights["v2"] == 100.0


def test_a_restart_loop_shorter_than_the_interval_still_analyses():
    """Restarts every 8 s with interval_s 10: each first analysis waits for the reports
    (4 s), not a whole interval, so a failing candidate is still rolled back."""
    clock = FakeClock()
    config = blue_green(post_switch_watch_s=60)
    rollout = Rollout(config, clock)
    rollout.report_validation(True)
    for _ in range(3):
        for _ in range(8):
            clock.advance(1)
            rollout.tick(bg_windows(green_latency_ms=90.0))
            if rollout.done:
                break
        if rollout.done:
            break
        rollout = Rollout.from_dict(config, rollout.to_dict(), clock)
        rollout.restarted(reports_in_s=4.0)
    assert rollout.phase is Phase.ABORTED


def test_blue_green_refusals_of_a_stage_it_lacks_or_after_it_ended():
    clock = FakeClock()
    rollout = Rollout(blue_green(), clock)
    with pytest.raises(RolloutError, match=r"from_step is 5 \(--from-step 6\), but a blue-green rollout has "
                                           r"from_step 0 \(--from-step 1: validation\) and 1 \(--from-step 2: the "
                                           r"post-switch watch\) only; it is in phase validating"):
        rollout.require(from_step=5)
    rollout.abort()
    with pytest.raises(RolloutError) as refused:
        rollout.require(from_step=1)
    assert str(refused.value).startswith("refused: from_step is 1 (the post-switch watch, --from-step 2) but the "
                                         "rollout is in phase aborted, revision 0; it has not reached the "
                                         "post-switch watch")
    assert str(refused.value).endswith("it has ended, so it takes no actions")


def test_a_full_promote_during_validation_names_the_validation_it_skipped():
    clock = FakeClock()
    rollout = Rollout(blue_green(), clock)
    rollout.promote(full=True)
    assert rollout.phase is Phase.PROMOTED
    assert rollout.state.history[-1]["reason"] == ("promoted by operator (full: validation (validation on "
                                                  "validation_samples) and the post-switch watch skipped)")


def test_a_pause_while_held_past_a_waits_end_says_so_not_0s_left():
    clock = FakeClock()
    rollout = Rollout(blue_green(post_switch_watch_s=20), clock)
    rollout.report_validation(True)
    thin = {"blue": win("blue", n=0), "green": win("green", n=10)}  # no verdict: held past 20 s
    run_until(rollout, clock, 40, thin, step_s=10)
    rollout.pause()
    assert rollout.status_line() == ("paused by operator in the post-switch watch of green; its time was up, "
                                     "holding for a passing analysis; serve-ab resume continues it")


def test_a_restart_waits_for_the_reports_also_when_interval_s_is_shorter():
    """interval_s 1 s, reports due 5 s after the restart: no analysis before them, also when
    an operator pauses and resumes in between; a promote meanwhile says its verdict is from
    before the restart."""
    clock = FakeClock()
    config = RolloutConfig.model_validate({
        "strategy": "blue_green", "stable": "blue", "candidate": "green",
        "analysis": {"interval_s": 1, "min_samples": 50, "progress_deadline_s": 600},
        "gates": GATES, "blue_green": {"post_switch_watch_s": 300, "keep_blue_s": 600,
                                       "validation_min_samples": 64, "auto_switch": False},
    })
    rollout = Rollout(config, clock)
    run_until(rollout, clock, 3, bg_windows(blue_n=100))
    assert rollout.state.step_verdict is GateVerdict.PASS
    restored = Rollout.from_dict(config, rollout.to_dict(), clock)
    restored.restarted(reports_in_s=5.0)
    analysed = []
    for second in range(1, 6):
        clock.advance(1)
        if second == 2:
            restored.pause()
        if second == 3:
            restored.resume()
        analysed.append(bool(restored.tick(bg_windows(blue_n=100)).analysis))
    assert analysed == [False, False, False, False, True]
    again = Rollout.from_dict(config, rollout.to_dict(), clock)
    again.restarted(reports_in_s=5.0)
    again.promote()
    assert "(latest before the controller restarted pass: " in again.state.history[-1]["reason"]


def test_entries_are_counted_past_the_kept_history_and_in_a_state_saved_before_the_count():
    # The count numbers notification events (event_id); the history keeps only the last 500.
    clock = FakeClock()
    rollout = Rollout(canary(), clock=clock)
    rollout.tick(healthy())  # to step 2's timed pause, where a resume writes one entry
    at_start = rollout.state.entries_total
    assert at_start == len(rollout.state.history) == 2
    for _ in range(260):
        rollout.pause()
        rollout.resume()
    assert len(rollout.state.history) == 500 and rollout.state.entries_total == at_start + 520
    saved = rollout.to_dict()
    assert Rollout.from_dict(canary(), saved, clock).state.entries_total == at_start + 520
    del saved["entries_total"]  # written before entries were counted
    assert Rollout.from_dict(canary(), saved, clock).state.entries_total == 500
