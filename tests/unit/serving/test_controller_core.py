"""The controller's logic with a fake clock: windows from router reports, feedback joins,
persistence across a restart, control actions. No Ray is started."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import sqlite3

import pytest

from serve_ab.api.status import HistoryEntry, NotificationCounts
from serve_ab.config.experiment import parse_experiment
from serve_ab.rollout.feedback import PENDING_TTL_S, FeedbackJoin
from serve_ab.rollout.machine import Phase, RolloutError
from serve_ab.routing import SplitTable
from serve_ab.serving.controller import EPOCHS_SKIPPED_AT_RESTART, RESTART_SLACK_S, ControllerCore
from serve_ab.serving.core.feedback_token import MAX_TOKEN_EPOCH, FeedbackSigner
from serve_ab.store.keys import rollout_key
from serve_ab.store.state import MemoryStateStore, SqliteStateStore
from serve_ab.api.schemas import ActionRequest
from serve_ab.errors import ActionRefused, Conflict, StoreUnavailable, UnknownAction
from serve_ab.serving.core.messages import Action, Actor, Mirror
from serve_ab.serving.reports import STALE_S
from tests.support.reports import ServedRequest, ShadowPair, report_of
from tests.support.fakes import FailingStore, FakeClock


# Requests per second that make a 5 s window evidence for the gates below: an error_rate
# max 0.05 passes only once its upper confidence bound is under 0.05 (about 60 clean requests
# at the first analysis of a step, more at later ones, which spend less alpha), and a
# feedback_rate min_ratio_to_stable 0.95 only once the ratio's lower bound is over 0.95.
EV_STABLE, EV_CANDIDATE = 150, 60


def experiment(candidate: str = "v2", **rollout_changes):
    rollout = {
        "strategy": "canary", "stable": "v1", "candidate": candidate,
        "analysis": {"interval_s": 5, "min_samples": 10, "failure_limit": 0},
        "gates": [{"metric": "error_rate", "max": 0.05},
                  {"metric": "feedback_rate", "name": "correct", "min_ratio_to_stable": 0.95}],
        "steps": [{"set_weight": 10}, {"pause": {"duration": "10s"}}, {"set_weight": 100}],
        "retire_after_s": 5,
    }
    rollout.update(rollout_changes)
    return parse_experiment({
        "model": "digits",
        "versions": [{"name": "v1", "path": "a.onnx", "backend": "onnx"},
                     {"name": candidate, "path": "b.onnx", "backend": "onnx"}],
        "weights": {"v1": 100},
        "rollout": rollout,
    })


def record(core: ControllerCore, rows=(), pairs=()) -> None:
    """A router's report of ``rows`` and ``pairs``, filed under the controller's epochs."""
    core.record(report_of(rows, pairs, core=core))


_NEXT_USER = itertools.count(1)


def report(core: ControllerCore, clock: FakeClock, version: str, n: int, *, ok: bool = True,
           correct: bool | None = None, users: int | None = None) -> None:
    """``n`` requests of ``version`` this second: each from a user of its own, or from the
    same ``users`` users every second (gates count users, not requests)."""
    units = [i % users for i in range(n)] if users else [next(_NEXT_USER) * 7919 for _ in range(n)]
    rows = [ServedRequest(clock(), version, 3.0, None if ok else "model", 1, 0.9, f"{version}-{clock()}-{i}",
                          unit, True, False) for i, unit in enumerate(units)]
    record(core, rows)
    if correct is not None:
        for row in rows:
            core.feedback.add(row.request_id, "correct", None, correct, clock())


def run_for(core, clock, seconds, per_second):
    for _ in range(int(seconds)):
        clock.advance(1.0)
        for version, (n, kwargs) in per_second.items():
            report(core, clock, version, n, **kwargs)
        core.tick()


def test_canary_promotes_on_good_reports_and_retires_the_old_version():
    clock = FakeClock()
    core = ControllerCore(experiment(), MemoryStateStore(), clock)
    assert core.snapshot().weights == {"v1": 100.0, "v2": 0.0}
    core.tick()
    assert core.snapshot().weights == {"v1": 90.0, "v2": 10.0}
    epoch = core.epoch
    run_for(core, clock, 30, {"v1": (EV_STABLE, {"correct": True}), "v2": (EV_CANDIDATE, {"correct": True})})
    assert core.rollout.phase.value == "promoted"
    assert core.epoch > epoch
    assert core.snapshot().weights == {"v1": 0.0, "v2": 100.0}
    clock.advance(10)
    core.tick()
    assert core.snapshot().retired == ("v1",)
    assert {g.metric: g.verdict for g in core.status().gates} == {
        "error_rate": "pass", "feedback_rate": "pass"}


def test_failing_business_gate_rolls_back_with_the_reason():
    clock = FakeClock()
    core = ControllerCore(experiment("v3"), MemoryStateStore(), clock)
    core.tick()
    run_for(core, clock, 8, {"v1": (20, {"correct": True}), "v3": (5, {"correct": False})})
    status = core.status()
    assert status.phase == "aborted"
    assert status.weights_pct == {"v1": 100.0, "v3": 0.0}
    assert "feedback_rate" in status.reason and "0.95" in status.reason


def test_too_few_reports_hold_the_rollout_without_failing():
    clock = FakeClock()
    core = ControllerCore(experiment(), MemoryStateStore(), clock)
    core.tick()
    run_for(core, clock, 30, {"v1": (20, {"correct": True}), "v2": (1, {"correct": True})})
    status = core.status()
    assert status.phase == "progressing" and status.weights_pct["v2"] == 10.0
    assert status.failures_total == 0
    # Its 10 s pause is over and held for evidence: no time for the next step (it was 0).
    assert status.step == "pause 10s" and status.next_step_in_s is None
    # An analysis reads the whole step, so the trickle adds up to min_samples, but its
    # bounds are still too wide to pass: held, not failed.
    assert "inconclusive" in status.reason


def test_restart_resumes_at_the_same_step_with_the_same_weights(tmp_path):
    clock = FakeClock()
    store = SqliteStateStore(tmp_path / "state.sqlite")
    core = ControllerCore(experiment(), store, clock)
    core.tick()
    run_for(core, clock, 6, {"v1": (EV_STABLE, {"correct": True}), "v2": (EV_CANDIDATE, {"correct": True})})
    before = core.status(history=True)
    assert before.step_index == 1 and before.weights_pct["v2"] == 10.0

    restarted = ControllerCore(experiment(), SqliteStateStore(tmp_path / "state.sqlite"), clock)
    after = restarted.status(history=True)
    assert (after.phase, after.step_index, after.weights_pct) == (
        before.phase, before.step_index, before.weights_pct)
    assert after.history == before.history
    # The pause keeps its original start: 4 more seconds finish it, not 10.
    run_for(restarted, clock, 5, {"v1": (EV_STABLE, {"correct": True}), "v2": (EV_CANDIDATE, {"correct": True})})
    assert restarted.status().weights_pct["v2"] == 100.0


def test_a_restarted_controller_carries_on_with_the_steps_gate_window(tmp_path):
    """The step's gate window is saved with the run's figures (and the report numbers they
    hold), so a controller killed mid-step looks at the same evidence once routers have sent
    again what it had not saved: the same requests, the same verdicts. It used to start the
    step's window from the reports after the restart."""
    def second_of_traffic(core):
        rows = [ServedRequest(clock(), version, 3.0, None if i % 40 else "model", 1, 0.9,
                              f"{version}-{clock()}-{i}", next(_NEXT_USER) * 7919, True, False)
                for version, n in (("v1", EV_STABLE), ("v2", EV_CANDIDATE)) for i in range(n)]
        return report_of(rows, core=core), [row.request_id for row in rows]

    def send(core, traffic):
        core.record(traffic[0])
        for request_id in traffic[1]:
            core.feedback.add(request_id, "correct", None, True, clock())

    clock = FakeClock()
    held = experiment(steps=[{"set_weight": 10}, {"pause": {"duration": "600s"}}, {"set_weight": 100}])
    path = tmp_path / "state.sqlite"
    core = ControllerCore(held, SqliteStateStore(path), clock)
    core.tick()
    for _ in range(8):
        clock.advance(1.0)
        send(core, second_of_traffic(core))
        core.tick()
    core.save_stats()
    unsaved = []
    for _ in range(3):  # merged and looked at, not saved: the routers keep these
        clock.advance(1.0)
        unsaved.append(second_of_traffic(core))
        send(core, unsaved[-1])
        core.tick()
    assert core.status().step_index == 1  # held in the pause, evidence accumulating

    restarted = ControllerCore(held, SqliteStateStore(path), clock)
    for traffic in unsaved:  # what the routers send again (serving/core/ledger.py)
        send(restarted, traffic)
    clock.advance(5.0)  # the next analysis (every interval_s), the same in both
    core.tick()
    restarted.tick()
    assert core.last_window["requests"] == {"v1": 11 * EV_STABLE, "v2": 11 * EV_CANDIDATE}
    assert restarted.last_window == core.last_window
    assert core.status().gates
    assert [(g.metric, g.verdict, g.value) for g in restarted.status().gates] == \
        [(g.metric, g.verdict, g.value) for g in core.status().gates]

    # A save of a release before (no step window): the step's gates start from the reports.
    row = json.loads(sqlite3.connect(path).execute("SELECT state FROM rollout_state WHERE key = ?",
                                                   (f"stats:{core.run_id}",)).fetchone()[0])
    older = MemoryStateStore()
    for key, state in [(k, json.loads(v)) for k, v in sqlite3.connect(path).execute(
            "SELECT key, state FROM rollout_state")]:
        older.save(key, state)
    older.save(f"stats:{core.run_id}", {**row, "gate_step": None})
    fresh = ControllerCore(held, older, clock)
    for traffic in unsaved:
        send(fresh, traffic)
    clock.advance(5.0)
    fresh.tick()
    assert fresh.last_window["requests"] == {"v1": 3 * EV_STABLE, "v2": 3 * EV_CANDIDATE}
    # A damaged one is read as none (a warning), and the controller serves.
    older.save(f"stats:{core.run_id}", {**row, "gate_step": {"since_s": row["gate_step"]["since_s"],
                                                             "totals": {"$obj": ["Popen", {}]}}})
    damaged = ControllerCore(held, older, clock)
    clock.advance(5.0)
    damaged.tick()
    assert damaged.last_window["requests"] == {"v1": 0, "v2": 0}


def test_a_restarted_controller_shows_the_gates_last_look_until_its_next():
    """A paused rollout looks at no gates until resumed, and a finished one never again: a
    restarted controller shows what the last look before the save found, not an empty
    list. A look of an earlier step, or a row that cannot be read, shows nothing."""
    clock = FakeClock()
    store = MemoryStateStore()
    core = ControllerCore(experiment(), store, clock)
    core.tick()
    run_for(core, clock, 6, {"v1": (EV_STABLE, {"correct": True}), "v2": (EV_CANDIDATE, {"correct": True})})
    core.act(Action.PAUSE)
    shown = core.status()
    assert shown.phase == "paused" and shown.gates and shown.window.requests["v2"] > 0
    core.save_stats()

    row = store.load(f"stats:{core.run_id}")
    for look in ({**row["last_look"], "since_s": row["last_look"]["since_s"] - 1.0},
                 {**row["last_look"], "gates": "damaged"}, "damaged"):
        store.save(f"stats:{core.run_id}", {**row, "last_look": look})
        assert ControllerCore(experiment(), store, clock).status().gates == []
    store.save(f"stats:{core.run_id}", row)

    restarted = ControllerCore(experiment(), store, clock)
    clock.advance(5.0)
    restarted.tick()
    assert restarted.status().gates == shown.gates
    assert restarted.status().window == shown.window
    restarted.act(Action.RESUME)
    run_for(restarted, clock, 6, {"v1": (EV_STABLE, {"correct": True}), "v2": (EV_CANDIDATE, {"correct": True})})
    assert restarted.status().window != shown.window  # its own looks from then on


def test_an_operators_pause_keeps_the_steps_evidence_across_a_restart():
    """Requests served while paused are evidence at the step's weights: after a resume the
    window still starts where the step's weights began (a pause moves the step's timers,
    not its window), and so it does when the controller restarted while paused. Both used to
    keep only the per-second slots of the last 2 minutes, or nothing after a restart."""
    clock = FakeClock()
    store = MemoryStateStore()
    cfg = experiment(gates=[{"metric": "error_rate", "max": 0.05}],
                     steps=[{"set_weight": 10}, {"pause": {"duration": "1h"}}, {"set_weight": 100}])

    def run(core, seconds):
        run_for(core, clock, seconds, {"v1": (9, {}), "v2": (1, {})})

    core = ControllerCore(cfg, store, clock)
    core.tick()
    run(core, 300)
    since_s, before = core.last_window["since_s"], core.last_window["requests"]
    core.act(Action.PAUSE)
    run(core, 10)
    core.act(Action.RESUME)
    run(core, 6)
    assert core.last_window["since_s"] == since_s
    assert core.last_window["requests"]["v2"] >= before["v2"] + 10
    core.act(Action.PAUSE)
    run(core, 5)
    core.save_stats()
    restarted = ControllerCore(cfg, store, clock)
    restarted.act(Action.RESUME)
    run(restarted, 6)
    assert restarted.last_window["since_s"] == since_s
    assert restarted.last_window["requests"]["v2"] >= before["v2"] + 20


def test_a_look_of_an_earlier_step_is_not_shown_live_or_after_a_restart():
    """The look is stamped with the step it read: one from the step before a step change
    that no look followed yet would show another weight's gates (a pass at 10% as if 50%
    had passed)."""
    clock = FakeClock()
    store = MemoryStateStore()
    cfg = experiment(steps=[{"set_weight": 10}, {"pause": {"duration": "6s"}}, {"set_weight": 50},
                            {"pause": {"duration": "600s"}}, {"set_weight": 100}])
    core = ControllerCore(cfg, store, clock)
    core.tick()
    while core.status().weights_pct["v2"] < 50:
        run_for(core, clock, 1, {"v1": (EV_STABLE, {"correct": True}), "v2": (EV_CANDIDATE, {"correct": True})})
    status = core.status()
    assert core.last_analysis and (status.gates, status.window) == ([], None)  # the 10% step's
    core.save_stats()
    assert ControllerCore(cfg, store, clock).status().gates == []
    run_for(core, clock, 6, {"v1": (EV_STABLE, {"correct": True}), "v2": (EV_CANDIDATE, {"correct": True})})
    status = core.status()
    assert status.gates and status.window.since_s == core.rollout.window_since_s  # 50%'s own look


def test_manual_weights_start_the_window_afresh():
    """Evidence at the old weights does not judge the weights an operator set."""
    clock = FakeClock()
    core = ControllerCore(experiment(steps=[{"set_weight": 10}, {"pause": {"duration": "1h"}},
                                            {"set_weight": 100}]), MemoryStateStore(), clock)
    core.tick()
    run_for(core, clock, 20, {"v1": (9, {}), "v2": (1, {})})
    core.act(Action.WEIGHTS, ActionRequest(weights={"v1": 50, "v2": 50}), OPERATOR)
    changed_s = clock()
    core.act(Action.RESUME)
    run_for(core, clock, 6, {"v1": (5, {}), "v2": (5, {})})
    assert core.last_window["since_s"] == changed_s and 0 < core.last_window["requests"]["v2"] <= 30  # not the 20 s at 10%


def _served(clock: FakeClock, version: str, n: int, epoch: int) -> list[ServedRequest]:
    """``n`` assigned requests of ``version``, each of a user of its own, routed at ``epoch``."""
    return [ServedRequest(clock(), version, 3.0, None, 1, 0.9, f"{version}-{epoch}-{clock()}-{i}",
                          next(_NEXT_USER) * 7919, True, False, split=epoch) for i in range(n)]


def _weights_changed_within_a_second(clock: FakeClock) -> tuple[ControllerCore, int, int]:
    """A canary at 10% for 2 s whose weights an operator then sets to 50/50, 0.3 s into a
    second (as a real change is): the core, and the routing epochs before and after."""
    core = ControllerCore(experiment(steps=[{"set_weight": 10}, {"pause": {"duration": "1h"}},
                                            {"set_weight": 100}]), MemoryStateStore(), clock)
    core.tick()
    before = core.snapshot().epoch
    _seconds_at(core, clock, before, 2)
    clock.advance(0.3)
    core.act(Action.WEIGHTS, ActionRequest(weights={"v1": 50, "v2": 50}), OPERATOR)
    core.act(Action.RESUME)  # the controller's next tick comes 0.25 s later (tick_s)
    return core, before, core.snapshot().epoch


def _seconds_at(core: ControllerCore, clock: FakeClock, epoch: int, seconds: int) -> None:
    for _ in range(seconds):
        clock.advance(1.0)
        core.record(report_of(_served(clock, "v1", 9, epoch) + _served(clock, "v2", 1, epoch), core=core))
        core.tick()


def test_a_report_in_a_steps_first_second_counts_in_its_window():
    """A report that arrives after a change of weights, before the step's first look and in
    the same second, is the step's evidence: the window was summed from whole seconds at
    that look, and dropped it: up to a second of a router's traffic."""
    clock = FakeClock(1_000_000.0)
    core, _, epoch = _weights_changed_within_a_second(clock)
    changed_s = clock()
    clock.advance(0.2)
    core.record(report_of(_served(clock, "v1", 9, epoch) + _served(clock, "v2", 1, epoch), core=core))
    _seconds_at(core, clock, epoch, 5)  # the first look, 5 s into the weights
    assert core.last_window["since_s"] == changed_s
    assert core.last_window["requests"] == {"v1": 6 * 9, "v2": 6 * 1}


def test_a_report_of_the_weights_before_does_not_count_in_the_new_step():
    """What a router served at the old weights and reports as it applies the new ones (or
    sends late, not having heard of them) arrives after the change: filed by arrival, it
    counted in the new weights' window, which it was not served by."""
    clock = FakeClock(1_000_000.0)
    core, before, epoch = _weights_changed_within_a_second(clock)
    clock.advance(0.9)  # in the next second, so not lost with the first one's (above)
    core.record(report_of(_served(clock, "v1", 40, before) + _served(clock, "v2", 4, before), core=core))
    clock.advance(0.05)  # a router that applied 50/50 between two requests: one report of both
    mixed = _served(clock, "v1", 5, before) + _served(clock, "v1", 9, epoch) + _served(clock, "v2", 1, epoch)
    core.record(report_of(mixed, core=core))
    _seconds_at(core, clock, epoch, 5)
    # The mixed report counts whole: the gates' figures do not tell its requests apart by weights.
    assert core.last_window["requests"] == {"v1": 5 + 9 + 5 * 9, "v2": 6 * 1}


def test_feedback_on_an_answer_of_the_weights_before_does_not_count_in_the_new_step():
    """A client's feedback comes seconds after its answer: on answers served just before a
    change of weights, it arrived in the new step and counted in its feedback gate's window,
    though its request is kept out of it (the report of the weights before)."""
    clock = FakeClock(1_000_000.0)
    core, before, epoch = _weights_changed_within_a_second(clock)
    clock.advance(1.5)
    for i, split in enumerate([before] * 3 + [epoch] * 2):
        core.feedback.add(f"v2-answer-{i}", "correct", None, i % 2 == 0, clock(), version="v2",
                          unit=7919 * (i + 1), split=split)
    outcomes = core.gate_windows.window(core.rollout.window_since_s, step=True).outcomes
    assert outcomes["v2"]["correct"].counts.sum() == 2  # the two answers of the new weights
    # The run's figures (the A/B report's, per split) still count all five.
    assert ('serve_ab_feedback_total{application="digits-canary",metric="correct",model="digits",version="v2"} 5.0'
            in core.metrics("digits-canary")[0].decode())


def test_weights_that_move_when_a_failed_router_falls_silent_start_a_new_epoch():
    """A router that could not load the A/B's control sends its share to the variant (weights()
    0/100); it crashes, and a minute later its failure stops counting: the weights are 50/50
    again with no decision and no report. The epoch stayed: routers heard of it only when their
    long poll timed out, under the epoch that had routed 0/100, whose weights were overwritten,
    so feedback on the variant's answers of the 0/100 routing was filed under 50/50."""
    clock = FakeClock(1_000_000.0)
    core = ControllerCore(ab_experiment(), MemoryStateStore(), clock)
    core.tick()
    clock.advance(1.0)
    core.record(report_of([], router="router-2", failed_versions={"v1": "failed to load"}, core=core))
    failed = core.snapshot()
    assert failed.weights == {"v1": 0.0, "v2": 100.0, "v3": 0.0}
    woken = []  # ticks that told the loop to wake the routers' long polls
    for _ in range(int(STALE_S) + 2):  # router-1 reports on; router-2 is silent
        clock.advance(1.0)
        core.record(report_of(_served(clock, "v2", 10, failed.epoch), router="router-1", core=core))
        woken.append(core.tick())
    now = core.snapshot()
    assert now.weights == {"v1": 50.0, "v2": 50.0, "v3": 0.0}
    assert now.epoch != failed.epoch and woken.count(True) == 1
    # Each epoch keeps the one routing it published: the answers of the 0/100 one are its own.
    assert core._split_weights(failed.epoch) == {"v1": 0.0, "v2": 100.0, "v3": 0.0}
    assert core._split_weights(now.epoch) == {"v1": 50.0, "v2": 50.0, "v3": 0.0}


def test_a_stable_a_router_could_not_load_keeps_its_share_and_the_candidate_gets_only_its_step():
    """Moved as any failed version's share is, the stable's went to the candidate: at the 20%
    step one router that could not load v1 gave v2 100% of every router's traffic (and after
    an abort too, a candidate judged bad). The routers that loaded v1 serve it; the one that
    did not serves its share by its fallback, request by request."""
    clock = FakeClock(1_000_000.0)
    core = ControllerCore(experiment(steps=[{"set_weight": 20}, {"pause": {"duration": "1h"}},
                                            {"set_weight": 100}]), MemoryStateStore(), clock)
    core.tick()
    clock.advance(1.0)
    core.record(report_of([], router="router-2", failed_versions={"v1": "failed to load"}, core=core))
    assert core.snapshot().weights == {"v1": 80.0, "v2": 20.0}
    assert core.status().failed_versions == {"v1": "failed to load (router replica router-2)"}
    core.act(Action.ABORT, ActionRequest(reason="v2 is slow"), OPERATOR)
    assert core.snapshot().weights == {"v1": 100.0, "v2": 0.0}


def test_the_unavailable_errors_of_a_stable_a_router_could_not_load_do_not_pass_a_ratio_gate():
    """The router that could not load v1 answers v1's share 'unavailable' (and retries it on
    v2): none of those calls reached v1, so they say nothing of how v1 serves. Counted in its
    gate window, they were half v1's requests, and a v2 with 10x v1's error rate passed an
    error_rate ratio gate of 1.5 (0.39x) and was promoted; kept out, it fails the gate."""
    clock = FakeClock(1_000_000.0)
    core = ControllerCore(experiment(gates=[{"metric": "error_rate", "max_ratio_to_stable": 1.5}],
                                     steps=[{"set_weight": 20}, {"pause": {"duration": "20s"}},
                                            {"set_weight": 100}]), MemoryStateStore(), clock)
    core.tick()
    assert core.snapshot().weights == {"v1": 80.0, "v2": 20.0}
    served = itertools.count()

    def rows(version: str, n: int, errors: int, kind: str) -> list[ServedRequest]:
        return [ServedRequest(clock(), version, 3.0, kind if i < errors else None, 1, 0.9,
                              f"{version}-{next(served)}", next(_NEXT_USER) * 7919, True, False, split=core.epoch)
                for i in range(n)]

    for _ in range(40):
        clock.advance(1.0)
        # router-1 loaded both: v1 errs 2%, v2 20%.
        core.record(report_of(rows("v1", 100, 2, "model") + rows("v2", 25, 5, "model"), core=core))
        # router-2 could not load v1: its share fails there at once, unavailable.
        core.record(report_of(rows("v1", 100, 100, "unavailable") + rows("v2", 25, 5, "model"),
                              router="router-2", failed_versions={"v1": "failed to load"}, core=core))
        core.tick()
        if core.rollout.done:
            break
    status = core.status()
    assert status.phase == "aborted", (status.phase, status.reason)
    assert "error_rate" in status.reason
    assert core.last_window["errors"]["v1"] <= core.last_window["requests"]["v1"] * 0.05


def test_a_promoted_candidate_a_router_could_not_load_keeps_its_share():
    """Promoted, v2 serves everything; v1 is kept for retire_after_s, then retired. One router
    that could not load v2 (a new replica on a node without its file) moved v2's share to the
    config's stable, v1: a silent rollback of every router while status said promoted, and
    after the retire 100% on v1 for every replica started since, while the older ones, which
    unloaded v1, refused the routing as another config's. The promoted candidate keeps its
    share, as a stable does; the router that could not load it serves by its fallback."""
    clock = FakeClock(1_000_000.0)
    core = ControllerCore(experiment(), MemoryStateStore(), clock)
    core.act(Action.PROMOTE, ActionRequest(full=True), OPERATOR)
    assert core.status().phase == "promoted" and core.snapshot().weights == {"v1": 0.0, "v2": 100.0}
    clock.advance(1.0)
    core.record(report_of([], router="router-2", failed_versions={"v2": "failed to load"}, core=core))
    assert core.snapshot().weights == {"v1": 0.0, "v2": 100.0}
    clock.advance(10)
    core.tick()
    core.record(report_of([], router="router-2", failed_versions={"v2": "failed to load"}, core=core))
    snapshot = core.snapshot()
    assert snapshot.weights == {"v1": 0.0, "v2": 100.0} and snapshot.retired == ("v1",)
    assert core.status().failed_versions == {"v2": "failed to load (router replica router-2)"}


def test_reports_of_the_step_before_sent_again_after_a_restart_stay_out_of_the_new_steps_window():
    """The README's claim: what routers served at the old weights and send again to a
    restarted controller (its last save came before the change) is not the new step's evidence."""
    clock = FakeClock(1_000_000.0)
    store = MemoryStateStore()
    held = experiment(steps=[{"set_weight": 10}, {"pause": {"duration": "1h"}}, {"set_weight": 100}])
    core = ControllerCore(held, store, clock)
    core.tick()
    before = core.snapshot().epoch
    _seconds_at(core, clock, before, 2)
    core.save_stats()
    unsaved = []  # what the routers keep until a save holds it, and send again (ledger.py)
    for _ in range(2):
        clock.advance(1.0)
        unsaved.append(report_of(_served(clock, "v1", 9, before) + _served(clock, "v2", 1, before), core=core))
        core.record(unsaved[-1])
    core.act(Action.WEIGHTS, ActionRequest(weights={"v1": 50, "v2": 50}), OPERATOR)
    core.act(Action.RESUME)
    epoch = core.snapshot().epoch
    for _ in range(2):
        clock.advance(1.0)
        unsaved.append(report_of(_served(clock, "v1", 5, epoch) + _served(clock, "v2", 5, epoch), core=core))
        core.record(unsaved[-1])

    restarted = ControllerCore(held, store, clock)
    assert restarted.weights() == {"v1": 50.0, "v2": 50.0}
    for sent_again in unsaved:
        restarted.record(sent_again)
    window = restarted.gate_windows.window(restarted.rollout.window_since_s, step=True)
    assert {v: gate.requests for v, gate in window.gates.items()} == {"v1": 2 * 5, "v2": 2 * 5}


def test_a_weight_the_router_rounds_to_whole_buckets_still_gets_its_reports_into_the_window():
    """The config takes a weight to 1e-6 of a bucket; routers route by whole buckets and name
    their splits by their table's weights (0.5 for 0.500000005). Compared to 1e-9, none of
    their reports was the step's evidence: 0 requests in its window after 10 s."""
    clock = FakeClock(1_000_000.0)
    core = ControllerCore(experiment(steps=[{"set_weight": 0.500000005}, {"pause": {"duration": "1h"}},
                                            {"set_weight": 100}]), MemoryStateStore(), clock)
    core.tick()
    snapshot = core.snapshot()
    routed = SplitTable.from_weights(snapshot.weights).weights_pct()  # as RouterCore.apply names its split
    assert routed == {"v1": 99.5, "v2": 0.5} != snapshot.weights
    for _ in range(10):
        clock.advance(1.0)
        core.record(report_of(_served(clock, "v1", 9, snapshot.epoch) + _served(clock, "v2", 1, snapshot.epoch),
                              weights=routed))
        core.tick()
    assert core.last_window["requests"] == {"v1": 90, "v2": 10}


def test_a_restarted_controller_carries_on_its_counts_of_lost_routers_and_delayed_reports():
    """A router killed, counted lost a minute later, then the controller killed: the new
    controller showed routers_lost_total 0 (live), a counter going back, while what that
    router served after its last report is still missing from the figures."""
    import dataclasses

    clock = FakeClock()
    store = MemoryStateStore()
    core = ControllerCore(experiment(), store, clock)
    core.tick()
    core.record(report_of(router="killed"))
    core.record(dataclasses.replace(report_of(router="alive"), delayed_intervals=2))
    clock.advance(61.0)
    core.record(report_of(router="alive"))
    assert (core.status().routers.routers_lost_total, core.status().routers.delayed_intervals_total) == (1, 2)
    core.save_stats()
    restarted = ControllerCore(experiment(), store, clock)
    restarted.record(dataclasses.replace(report_of(router="alive"), delayed_intervals=1))
    routers = restarted.status().routers
    assert (routers.routers_lost_total, routers.delayed_intervals_total) == (1, 3)
    body = restarted.metrics("digits-canary")[0].decode()
    assert 'serve_ab_routers_lost_total{application="digits-canary",model="digits"} 1.0' in body


def test_feedback_waits_two_report_intervals_for_its_request():
    """With routers reporting every 60 s, one router's report must not expire feedback whose
    request another router reports up to a minute later."""
    clock = FakeClock()
    cfg = experiment()
    cfg = cfg.model_copy(update={"controller": cfg.controller.model_copy(update={"report_interval_s": 60.0})})
    core = ControllerCore(cfg, MemoryStateStore(), clock)
    assert core.feedback.pending_ttl_s == 125.0
    core.feedback.add("late-request", "correct", None, True, clock())
    clock.advance(59.0)
    report(core, clock, "v1", 3)  # another router's interval
    assert core.feedback.counts()["pending"] == 1 and core.stats.feedback_unjoined == 0


def test_a_start_that_fails_on_the_store_leaves_no_notification_threads():
    import threading

    class Down(MemoryStateStore):
        def load(self, key):
            raise ConnectionError("the store is down")

    cfg = experiment()
    cfg = cfg.model_copy(update={"notifications": parse_experiment({
        **cfg.model_dump(mode="json", exclude_none=True),
        "notifications": [{"type": "webhook", "url": "http://127.0.0.1:9/hook"}]}).notifications})
    before = threading.active_count()
    for _ in range(5):
        with pytest.raises(ConnectionError):
            ControllerCore(cfg, Down(), FakeClock())
    assert threading.active_count() == before
    core = ControllerCore(cfg, MemoryStateStore(), FakeClock())
    assert core.notifier is not None
    core.notifier.close(0.5)


def test_a_resumed_window_that_a_look_fails_on_is_dropped(monkeypatch):
    """A saved window that reads back as figures but breaks a look must not fail every tick
    of the step: the first failure drops it, and the next tick looks at the reports alone."""
    import serve_ab.serving.controller as controller_module

    clock = FakeClock()
    store = MemoryStateStore()
    core = ControllerCore(experiment(), store, clock)
    core.tick()
    run_for(core, clock, 3, {"v1": (EV_STABLE, {}), "v2": (EV_CANDIDATE, {})})
    core.save_stats()
    restarted = ControllerCore(experiment(), store, clock)
    real = controller_module.window_stats
    monkeypatch.setattr(controller_module, "window_stats", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        restarted.tick()
    monkeypatch.setattr(controller_module, "window_stats", real)
    clock.advance(5.0)
    report(restarted, clock, "v2", 7)
    restarted.tick()
    assert restarted.last_window["requests"] == {"v1": 0, "v2": 7}  # the resumed 3 s are gone
    # A controller's own window is never dropped so: the same failure now just raises.
    monkeypatch.setattr(controller_module, "window_stats", lambda *a, **k: 1 / 0)
    clock.advance(5.0)
    with pytest.raises(ZeroDivisionError):
        restarted.tick()
    monkeypatch.setattr(controller_module, "window_stats", real)
    restarted.tick()
    assert restarted.last_window["requests"] == {"v1": 0, "v2": 7}


def test_a_save_just_after_a_step_change_keeps_the_new_steps_window():
    """A save between the tick that moved to a step and that step's first look holds the new
    step's window (its reports are saved, so routers will not send them again)."""
    clock = FakeClock()
    cfg = experiment(analysis={"interval_s": 1, "min_samples": 10, "failure_limit": 0},
                     steps=[{"set_weight": 10}, {"pause": {"duration": "5s"}}, {"set_weight": 50},
                            {"pause": {"duration": "600s"}}])
    store = MemoryStateStore()
    core = ControllerCore(cfg, store, clock)
    core.tick()
    run_for(core, clock, 5, {"v1": (EV_STABLE, {"correct": True}), "v2": (EV_CANDIDATE, {"correct": True})})
    assert core.status().step_index == 3  # moved on at the last tick: 50%, held
    assert core.rollout.state.step_started_at_s == clock()
    for _ in range(2):  # the new step's reports, before its first look
        clock.advance(0.4)
        report(core, clock, "v1", 20)
        report(core, clock, "v2", 20)
    core.save_stats()
    restarted = ControllerCore(cfg, store, clock)
    clock.advance(2 * cfg.controller.report_interval_s + RESTART_SLACK_S)  # its first look waits for resent reports
    core.tick()
    restarted.tick()
    assert restarted.last_window == core.last_window
    assert core.last_window["requests"]["v2"] >= 40  # (and what came in the second of the change)


def test_a_new_candidate_starts_a_fresh_rollout(tmp_path):
    clock = FakeClock()
    store = SqliteStateStore(tmp_path / "state.sqlite")
    first = ControllerCore(experiment(), store, clock)
    first.act(Action.PROMOTE, ActionRequest(full=True))
    assert first.status().phase == "promoted"
    second = ControllerCore(experiment("v3"), store, clock)
    assert rollout_key(second.cfg) != rollout_key(first.cfg)
    assert second.status().phase == "progressing"
    assert second.snapshot().weights == {"v1": 100.0, "v3": 0.0}


def test_actions_bump_the_epoch_and_refuse_what_the_phase_does_not_allow():
    clock = FakeClock()
    core = ControllerCore(experiment(), MemoryStateStore(), clock)
    core.tick()
    epoch = core.epoch
    core.act(Action.WEIGHTS, ActionRequest(weights={"v1": 70, "v2": 30}))
    assert core.snapshot().weights == {"v1": 70.0, "v2": 30.0} and core.epoch == epoch + 1
    core.act(Action.ABORT, ActionRequest(reason="operator saw errors"))
    assert core.snapshot().weights == {"v1": 100.0, "v2": 0.0}
    assert "operator saw errors" in core.status().reason
    with pytest.raises(RolloutError):
        core.act(Action.PAUSE)
    with pytest.raises(UnknownAction):
        core.act("explode")


def test_feedback_before_the_report_waits_for_it_and_expires():
    unjoined = []
    join = FeedbackJoin(on_unjoined=unjoined.append)
    assert join.add("r1", "correct", None, True, now_s=10.0) is None  # report not in yet
    join.remember("r1", "v2", 10.1)
    values, conversions = join.events(since_s=0.0)
    assert [(c.version, c.converted) for c in conversions] == [("v2", True)]
    assert join.add("r1", "revenue", 12.5, None, now_s=11.0) == "v2"
    assert [(v.version, v.value) for v in join.events(since_s=0.0)[0]] == [("v2", 12.5)]
    join.add("lost", "correct", None, False, now_s=20.0)
    join.add("other", "correct", None, False, now_s=20.0 + PENDING_TTL_S + 1)
    assert join.counts()["pending"] == 1  # "lost" expired, "other" still waits
    assert unjoined == [1]  # and "lost" was counted as never joined


def test_feedback_that_never_joins_counts_as_unjoined_at_the_next_report_without_more_feedback():
    """It used to be counted only when more feedback came, which may be never."""
    clock = FakeClock()
    core = ControllerCore(experiment(), MemoryStateStore(), clock)
    core.feedback.add("no-such-request", "correct", None, True, clock())
    assert core.feedback.counts()["pending"] == 1
    clock.advance(PENDING_TTL_S + 1)
    report(core, clock, "v1", 3)  # a router's interval: no feedback in it
    assert core.feedback.counts()["pending"] == 0
    assert core.stats.feedback_unjoined == 1


def test_feedback_memory_is_bounded():
    join = FeedbackJoin(max_requests=100)
    for i in range(1000):
        join.remember(f"r{i}", "v1", float(i))
    assert join.counts()["requests_remembered"] == 100
    assert join.add("r0", "correct", None, True, now_s=1000.0) is None


def test_blue_green_mirrors_live_traffic_to_green_while_it_validates():
    clock = FakeClock()
    cfg = experiment(**{"strategy": "blue_green", "steps": [],
                        "blue_green": {"validation_min_samples": 10, "validation_mirror_pct": 25,
                                       "post_switch_watch_s": 5, "keep_blue_s": 10}})
    core = ControllerCore(cfg, MemoryStateStore(), clock)
    core.tick()
    assert core.snapshot().mirrors == (Mirror("v2", 25.0),)
    assert core.snapshot().weights == {"v1": 100.0, "v2": 0.0}
    core.act(Action.PAUSE)  # a pause stops timers, not evidence: green is still mirrored to
    assert core.status().phase == "paused" and core.snapshot().mirrors == (Mirror("v2", 25.0),)
    core.act(Action.RESUME)
    core.rollout.report_validation(True, "sample set passed")
    # Green's mirrored answers fill its window; the gates judge them against blue's.
    run_for(core, clock, 8, {"v1": (EV_STABLE, {"correct": True}), "v2": (EV_CANDIDATE, {"correct": True})})
    assert core.status().phase in ("switched", "promoted")
    assert core.snapshot().mirrors == ()
    assert core.snapshot().weights == {"v1": 0.0, "v2": 100.0}


def ab_experiment(**changes):
    return parse_experiment({
        "model": "digits",
        "versions": [{"name": "v1", "path": "a.onnx", "backend": "onnx"},
                     {"name": "v2", "path": "b.onnx", "backend": "onnx"},
                     {"name": "v3", "path": "c.onnx", "backend": "onnx"}],
        "weights": {"v1": 50, "v2": 50},
        **changes,
    })


def test_without_a_rollout_the_weights_are_the_configs_and_actions_are_refused():
    clock = FakeClock()
    core = ControllerCore(ab_experiment(), MemoryStateStore(), clock)
    assert core.snapshot().weights == {"v1": 50.0, "v2": 50.0, "v3": 0.0}
    assert core.snapshot().mirrors == ()
    assert core.tick() is False
    status = core.status()
    assert status.phase == "static" and status.strategy is None
    with pytest.raises(RolloutError, match="no rollout"):
        core.act(Action.PROMOTE)


def test_served_requests_and_joined_feedback_reach_the_experiment_stats():
    clock = FakeClock()
    core = ControllerCore(ab_experiment(), MemoryStateStore(), clock)
    report(core, clock, "v1", 4, correct=True)
    report(core, clock, "v2", 2, ok=False)
    # A mirrored copy feeds the gate windows only, never the A/B figures.
    record(core, [ServedRequest(clock(), "v2", 1.0, None, 1, 0.9, None, None, False, True)])
    versions = core.stats_snapshot()["versions"]
    assert (versions["v1"]["requests"], versions["v1"]["units"]) == (4, 4)
    assert versions["v1"]["feedback"] == {"correct": {"kind": "conversion", "n": 4, "successes": 4}}
    assert (versions["v2"]["requests"], versions["v2"]["errors"]) == (2, 2)
    # Without a rollout no gate reads windows, so none are kept.
    window = core.gate_windows.window(0.0, step=False)
    assert window.gates == {} and window.outcomes == {} and window.values == {}


def test_a_configured_shadow_is_mirrored_and_its_pairs_recorded():
    clock = FakeClock()
    core = ControllerCore(ab_experiment(shadow={"version": "v3", "percent": 10}), MemoryStateStore(), clock)
    assert core.snapshot().mirrors == (Mirror("v3", 10.0),)
    record(core, [], [ShadowPair(clock(), "v1", "v3", 4, 4, 0.01, 2.0, None),
                                                  ShadowPair(clock(), "v2", "v3", 4, 9, -0.3, 2.0, None),
                                                  # not the shadow: ignored
                                                  ShadowPair(clock(), "v1", "v2", 4, 9, -0.3, 2.0, None)])
    shadow = core.stats_snapshot()["shadow"]
    assert (shadow["version"], shadow["pairs"], shadow["agree"]) == ("v3", 2, 1)
    assert shadow["pairs_by_live_version"] == {"v1": 1, "v2": 1}


def test_a_restarted_controller_continues_the_same_run_and_a_new_config_starts_another():
    store = MemoryStateStore()
    first = ControllerCore(ab_experiment(), store, FakeClock())
    again = ControllerCore(ab_experiment(), store, FakeClock(2_000_000.0))
    assert again.run_id == first.run_id and again.run_started_at_s == first.run_started_at_s
    changed = ControllerCore(ab_experiment(weights={"v1": 40, "v2": 60}), store, FakeClock(3_000_000.0))
    assert changed.run_id != first.run_id


def test_a_run_is_the_config_apart_from_its_defaults_and_an_older_releases_run_continues():
    # Only what the config sets apart from the defaults is compared, so a field that a later
    # release adds with a default leaves the run as it was.
    store = MemoryStateStore()
    first = ControllerCore(ab_experiment(), store, FakeClock())
    saved = json.loads(store.load("run:digits")["fingerprint"])
    assert saved == {"model": "digits", "weights": {"v1": 50.0, "v2": 50.0},
                     "versions": [{"name": name, "path": path, "backend": "onnx"}
                                  for name, path in (("v1", "a.onnx"), ("v2", "b.onnx"), ("v3", "c.onnx"))]}
    spelled = ab_experiment(router={"num_replicas": 1, "max_ongoing_requests": 256, "access_log": True})
    assert ControllerCore(spelled, store, FakeClock(2_000_000.0)).run_id == first.run_id
    # A run saved by a release that fingerprinted the whole config, defaults included, and
    # had fewer fields: the same config continues it, and its fingerprint is left as saved
    # (a rollback to that release continues it too).
    isolated = {"placement": "isolated", "versions": [
        {"name": name, "path": path, "backend": "onnx", "deployment": {"num_replicas": 2}}
        for name, path in (("v1", "a.onnx"), ("v2", "b.onnx"), ("v3", "c.onnx"))]}
    whole = ControllerCore(ab_experiment(**isolated), MemoryStateStore(), FakeClock()).cfg.model_dump(mode="json")
    for version in whole["versions"]:
        del version["deployment"]["separate_thread"]  # a field that release did not have
    del whole["router"]["access_log"]
    older = json.dumps(whole, sort_keys=True)
    store = MemoryStateStore()
    store.save("run:digits", {"run_id": "digits-old-run", "started_at_s": 5.0, "fingerprint": older})
    again = ControllerCore(ab_experiment(**isolated), store, FakeClock(2_000_000.0))
    assert (again.run_id, again.run_started_at_s) == ("digits-old-run", 5.0)
    assert store.load("run:digits")["fingerprint"] == older
    changed = ControllerCore(ab_experiment(**isolated, weights={"v1": 40, "v2": 60}), store, FakeClock(4_000_000.0))
    assert changed.run_id != "digits-old-run"
    # A fingerprint that is not a config of today's schema (or not JSON) is another run.
    for saved in ("{not json", json.dumps({"model": "digits"}), None):
        store = MemoryStateStore()
        store.save("run:digits", {"run_id": "digits-old-run", "started_at_s": 5.0, "fingerprint": saved})
        assert ControllerCore(ab_experiment(), store, FakeClock(2_000_000.0)).run_id != "digits-old-run"


def test_a_restarted_controller_carries_on_with_the_runs_figures():
    store = MemoryStateStore()
    clock = FakeClock()
    first = ControllerCore(ab_experiment(), store, clock)
    report(first, clock, "v1", 5, correct=True)
    first.save_stats()
    again = ControllerCore(ab_experiment(), store, clock)
    assert again.stats_snapshot() == first.stats_snapshot()
    fresh = ControllerCore(ab_experiment(weights={"v1": 40, "v2": 60}), store, clock)  # a new run
    assert fresh.stats_snapshot()["versions"]["v1"]["requests"] == 0


def test_redeploys_that_change_the_config_leave_the_store_no_larger():
    # Each changed config starts a new run; the run it replaced is never continued. Its figures'
    # row and its minutes of counted feedback used to stay in the store for good: a row more
    # and a few more KB at every redeploy.
    store = MemoryStateStore()
    clock = FakeClock()

    def serve_minutes(core, minutes):
        for _ in range(minutes * 6):
            report(core, clock, "v1", 5, correct=True)
            clock.advance(10.0)
            core.save_stats()

    sizes, previous = [], None
    for deploy in range(6):
        core = ControllerCore(ab_experiment(weights={"v1": 50 + deploy, "v2": 50 - deploy}), store, clock)
        if previous is not None:
            # Until the old controller has surely stopped (its saves stopped when this one took
            # the claim), the previous run's rows stay.
            core.save_stats()
            assert store.load(f"stats:{previous}") is not None
        serve_minutes(core, 3)
        if previous is not None:
            assert [key for key in store.rows if previous in key] == []
        sizes.append((len(store.rows), sum(map(len, store.rows.values()))))
        previous = core.run_id
    assert {rows for rows, _ in sizes} == {sizes[0][0]}, sizes
    assert max(size for _, size in sizes) < 1.5 * sizes[0][1], sizes
    # A previous run saved by a release before reported_from_minute: its minutes' rows go too.
    old_stats = store.load(f"stats:{previous}")
    del old_stats["reported_from_minute"]
    store.save(f"stats:{previous}", old_stats)
    serve_minutes(ControllerCore(ab_experiment(weights={"v1": 90, "v2": 10}), store, clock), 2)
    assert [key for key in store.rows if previous in key] == []
    assert len(store.rows) <= sizes[0][0]


def _rows_of(store, run_id):
    return sorted(key for key in store.rows if run_id in key and not key.startswith("run:"))


def _served_for(core, clock, seconds):
    for _ in range(int(seconds // 10)):
        report(core, clock, "v1", 5, correct=True)
        clock.advance(10.0)
        core.save_stats()


def test_the_previous_runs_rows_go_even_if_the_new_runs_controller_restarts_before_it_dropped_them():
    # The drop waits a minute after the start; a controller restarted before that (Serve
    # restarting a crashed replica, a constructor tried again while the store flapped)
    # continues the new run and used to forget the run it replaced: its rows stayed for good.
    store, clock = MemoryStateStore(), FakeClock()
    old = ControllerCore(ab_experiment(), store, clock)
    _served_for(old, clock, 120)
    assert _rows_of(store, old.run_id)
    new = ControllerCore(ab_experiment(weights={"v1": 40, "v2": 60}), store, clock)
    _served_for(new, clock, 30)
    assert _rows_of(store, old.run_id)  # not yet: the old controller may still be stopping
    again = ControllerCore(ab_experiment(weights={"v1": 40, "v2": 60}), store, clock)
    assert again.run_id == new.run_id
    _served_for(again, clock, 30)
    assert _rows_of(store, old.run_id)  # a minute after this controller's own start
    _served_for(again, clock, 40)
    assert _rows_of(store, old.run_id) == []
    assert store.load(f"stats:{again.run_id}") is not None
    # A later restart finds nothing of it left, and keeps its own run's rows.
    later = ControllerCore(ab_experiment(weights={"v1": 40, "v2": 60}), store, clock)
    _served_for(later, clock, 70)
    assert _rows_of(store, old.run_id) == []
    assert store.load(f"stats:{later.run_id}")["versions"]["v1"]["requests"] == 5 * 17  # 170 s of the run


class _FlakyStore(MemoryStateStore):
    """Loads and deletes of keys naming ``run_id`` fail while ``down`` (a Redis connection
    dropped between two calls, a multi-MB load past the client's timeout)."""

    def __init__(self):
        super().__init__()
        self.down, self.run_id = False, None

    def _check(self, key):
        if self.down and self.run_id and self.run_id in key:
            raise ConnectionError("store went away")

    def load(self, key):
        self._check(key)
        return super().load(key)

    def delete(self, key):
        self._check(key)
        super().delete(key)


def test_a_store_failing_while_the_previous_run_is_dropped_is_not_a_failed_save():
    # The figures were saved; only the clean-up after them failed. It used to raise out of
    # save_stats: status said the saves failed (not_saved) and the round's report and run
    # record were skipped. The drop is tried again at the next save.
    store, clock = _FlakyStore(), FakeClock()
    old = ControllerCore(ab_experiment(), store, clock)
    _served_for(old, clock, 60)
    new = ControllerCore(ab_experiment(weights={"v1": 40, "v2": 60}), store, clock)
    store.run_id, store.down = old.run_id, True
    clock.advance(61.0)
    report(new, clock, "v1", 5)
    new.save_stats()  # does not raise
    assert new.status().not_saved is None
    assert store.load(f"stats:{new.run_id}")["versions"]["v1"]["requests"] == 5
    store.down = False
    assert _rows_of(store, old.run_id)
    new.save_stats()
    assert _rows_of(store, old.run_id) == []


def test_a_run_row_with_an_empty_run_id_never_drops_the_current_runs_rows():
    # stats:{run_id or self.run_id}: an empty previous id named the current run's own rows.
    store, clock = MemoryStateStore(), FakeClock()
    store.save("run:digits", {"run_id": "", "started_at_s": 5.0, "fingerprint": "{}"})
    core = ControllerCore(ab_experiment(), store, clock)
    _served_for(core, clock, 50)
    counted = set(_rows_of(store, core.run_id))
    assert f"stats:{core.run_id}" in counted and len(counted) >= 2
    for _ in range(3):  # past the minute: each save is the drop's turn
        clock.advance(5.0)
        core.save_stats()
        # Right after the save (a controller stopped now restarts from these): the figures'
        # row, and every minute's row of counted feedback, so that none is counted twice.
        assert counted <= set(_rows_of(store, core.run_id))


def test_a_shadow_agreement_gate_judges_the_candidates_copies_of_live_requests():
    clock = FakeClock()
    base = experiment(steps=[{"set_weight": 10}, {"pause": {"duration": "60s"}}, {"set_weight": 100}])
    # Beside its 10% of traffic, v2 answers copies of all of v1's requests.
    rollout = {**base.rollout.model_dump(mode="json", exclude_none=True),
               "gates": [{"metric": "shadow_agreement", "min": 0.9}]}
    cfg = parse_experiment({**base.model_dump(mode="json", exclude_none=True),
                            "shadow": {"version": "v2", "percent": 100}, "rollout": rollout})
    core = ControllerCore(cfg, MemoryStateStore(), clock)
    assert Mirror("v2", 100.0) in core.snapshot().mirrors
    for second in range(12):
        clock.advance(1.0)
        report(core, clock, "v1", 10)
        report(core, clock, "v2", 1)
        # v2 answers the copies with another class 3 times in 10: agreement 0.7 < 0.9.
        record(core, [], [ShadowPair(clock(), "v1", "v2", 1, 1 if i < 7 else 2, 0.0, 1.0, None) for i in range(10)])
        core.tick()
    status = core.status()
    assert status.phase == "aborted", status
    assert "shadow_agreement" in status.reason
    gate = next(g for g in status.gates if g.metric == "shadow_agreement")
    assert gate.verdict == "fail" and abs(gate.value - 0.7) < 1e-9


# -- strict, idempotent control --------------------------------------------------------------

OPERATOR = Actor("alice", "operator", "10.0.0.7")


def paused_canary(store=None):
    clock = FakeClock()
    cfg = experiment(steps=[{"set_weight": 10}, {"pause": {}}, {"set_weight": 50}, {"pause": {}},
                            {"set_weight": 100}])
    core = ControllerCore(cfg, store or MemoryStateStore(), clock)
    core.tick()
    assert core.status().step_index == 1 and core.status().phase == "paused"
    return core, clock


def test_a_retried_promote_with_from_step_is_refused_not_a_second_step():
    core, _ = paused_canary()
    core.act(Action.PROMOTE, ActionRequest(from_step=1), OPERATOR)
    assert core.status().step_index == 3 and core.snapshot().weights["v2"] == 50.0
    epoch, revision = core.epoch, core.status().revision
    with pytest.raises(ActionRefused, match=r"from_step is 1 \(step 2\) but the rollout is at step 4 \(.*from_step 3\)"):
        core.act(Action.PROMOTE, ActionRequest(from_step=1), OPERATOR)  # the client's retry
    assert core.status().step_index == 3 and core.snapshot().weights["v2"] == 50.0
    assert (core.epoch, core.status().revision) == (epoch, revision)


def test_revision_grows_with_every_saved_change_and_is_a_precondition():
    store = MemoryStateStore()
    core, _ = paused_canary(store)
    revision = core.status().revision
    assert store.load(core.key)["revision"] == revision > 0
    with pytest.raises(ActionRefused, match=f"revision is {revision - 1} but .*revision {revision}"):
        core.act(Action.ABORT, ActionRequest(revision=revision - 1), OPERATOR)
    assert core.status().phase == "paused"
    core.act(Action.PAUSE, ActionRequest(revision=revision), OPERATOR)
    assert core.status().revision == store.load(core.key)["revision"] == revision + 1


def test_analyses_that_decide_nothing_keep_the_revision_an_operator_read():
    """Every analysis saves its timers and verdict; that used to bump the revision every
    interval_s, so `serve-ab promote --revision N` from a status read seconds before was
    refused with 409. A held pause's analyses keep it; the step change moves it."""
    clock = FakeClock()
    store = MemoryStateStore()
    core = ControllerCore(experiment(steps=[{"set_weight": 10}, {"pause": {"duration": "60s"}},
                                            {"set_weight": 100}]), store, clock)
    core.tick()
    run_for(core, clock, 6, {"v1": (EV_STABLE, {"correct": True}), "v2": (EV_CANDIDATE, {"correct": True})})
    read, looks = core.status(), core.rollout.state.analyses_in_step
    assert read.step_index == 1 and read.gates
    run_for(core, clock, 30, {"v1": (EV_STABLE, {"correct": True}), "v2": (EV_CANDIDATE, {"correct": True})})
    assert core.rollout.state.analyses_in_step > looks  # it looked again, and saved
    assert store.load(core.key)["analyses_in_step"] == core.rollout.state.analyses_in_step
    assert core.status().revision == store.load(core.key)["revision"] == read.revision
    core.act(Action.PROMOTE, ActionRequest(revision=read.revision), OPERATOR)  # no 409
    assert core.status().phase == "promoted" and core.status().revision > read.revision


def test_an_action_that_changes_nothing_keeps_the_revision_and_the_reason():
    """The audit: after an abort, `rollback` and `abort --reason test` bumped the revision
    7 -> 8 -> 9, failing other operators' revision-guarded commands with 409."""
    store = MemoryStateStore()
    core, _ = paused_canary(store)
    assert core.act(Action.PAUSE, ActionRequest(), OPERATOR) is True
    epoch, revision = core.epoch, core.status().revision  # what another operator read
    assert core.act(Action.PAUSE, ActionRequest(), OPERATOR) is False  # already paused
    assert (core.epoch, core.status().revision, store.load(core.key)["revision"]) == (epoch, revision, revision)
    assert core.act(Action.RESUME, ActionRequest(revision=revision), OPERATOR) is True  # no 409
    assert core.status().revision == revision + 1 and core.epoch == epoch + 1

    assert core.act(Action.ABORT, ActionRequest(reason="p95 up on v2"), OPERATOR) is True
    before = core.status()
    epoch, revision = core.epoch, before.revision
    assert core.act(Action.ROLLBACK, ActionRequest(), OPERATOR) is False
    assert core.act(Action.ABORT, ActionRequest(reason="test", revision=revision), OPERATOR) is False
    after = core.status(history=True)
    assert (after.revision, after.reason, core.epoch) == (revision, before.reason, epoch)
    assert "p95 up on v2" in after.reason
    # Saved, history included: a restarted controller has both requests, at the same revision.
    saved = store.load(core.key)
    assert saved["revision"] == revision and [HistoryEntry(**h) for h in saved["history"]] == after.history
    assert [(h["action"], h["reason"]) for h in saved["history"][-2:]] == [
        ("rollback", "rollback: nothing to change"), ("abort", "abort: nothing to change")]


def test_every_action_records_who_what_when_and_from_where_never_a_token():
    core, clock = paused_canary()
    core.act(Action.WEIGHTS, ActionRequest(weights={"v1": 70, "v2": 30}), OPERATOR)
    core.act(Action.ABORT, ActionRequest(reason="errors on v2"), Actor("ci", "operator", None))
    acted = [h for h in core.status(history=True).history if h.action]
    assert [(h.action, h.actor, h.t_s) for h in acted] == [
        ("weights", {"name": "alice", "role": "operator", "address": "10.0.0.7"}, clock()),
        ("abort", {"name": "ci", "role": "operator", "address": None}, clock())]
    assert "errors on v2" in acted[1].reason
    assert "token" not in str(acted)


# -- persist, then apply ---------------------------------------------------------------------


def test_a_failed_save_refuses_the_action_and_changes_nothing():
    store = FailingStore()
    core, _ = paused_canary(store)
    before = (core.status(history=True), core.snapshot(), core.epoch, store.load(core.key))
    store.failing = True
    for action, body in [(Action.ABORT, ActionRequest()), (Action.PROMOTE, ActionRequest(from_step=1)),
                         (Action.WEIGHTS, ActionRequest(weights={"v1": 0, "v2": 100}))]:
        step = core.status().step_index  # as people count it, and as from_step
        with pytest.raises(StoreUnavailable, match=f"nothing was changed \\(still at step {step + 1} \\(.*; from_step "
                                                   f"{step}\\), revision .*try again"):
            core.act(action, body, OPERATOR)
    status = core.status(history=True)
    # Status says the store is failing (the reason alone would not); nothing else changed.
    assert status.not_saved.error == "OSError: [Errno 28] No space left on device"
    assert before[0].not_saved is None
    unsaved = status.model_copy(update={"not_saved": None})
    assert (unsaved, core.snapshot(), core.epoch, store.load(core.key)) == before
    store.failing = False
    core.act(Action.ABORT, ActionRequest(), OPERATOR)  # the retry goes through
    assert core.status().not_saved is None
    assert store.load(core.key)["phase"] == "aborted" and core.snapshot().weights["v2"] == 0.0
    assert core.epoch == before[2] + 1


def test_a_finished_rollout_says_its_store_failed_until_a_save_of_the_figures_works():
    # An ended rollout's ticks save nothing, so the figures' save (every few seconds) is what
    # says the store is back; it failing says the store is down too.
    store = FailingStore()
    core, _ = paused_canary(store)
    core.act(Action.ABORT, ActionRequest(), OPERATOR)
    store.failing = True
    with pytest.raises(StoreUnavailable):
        core.act(Action.ROLLBACK, ActionRequest(), OPERATOR)
    assert core.status().not_saved.error == "OSError: [Errno 28] No space left on device"
    store.failing = False
    core.save_stats()
    assert core.status().not_saved is None
    store.failing = True
    with pytest.raises(OSError):
        core.save_stats()
    assert core.status().not_saved is not None


def test_a_failed_save_during_a_tick_applies_nothing_and_the_next_tick_retries():
    store = FailingStore()
    clock = FakeClock()
    core = ControllerCore(experiment(), store, clock)
    store.failing = True
    with pytest.raises(StoreUnavailable):
        core.tick()  # would set v2 to 10%
    clock.advance(3.0)
    with pytest.raises(StoreUnavailable):
        core.tick()
    not_saved = core.status().not_saved
    assert not_saved.for_s == 3.0 and not_saved.since_s == clock() - 3.0  # since the first failure
    snapshot = core.snapshot()
    assert (snapshot.epoch, snapshot.weights) == (0, {"v1": 100.0, "v2": 0.0})
    assert core.status().revision == store.load(core.key)["revision"] == 1
    store.failing = False
    assert core.tick() is True
    assert core.snapshot().weights["v2"] == 10.0 and store.load(core.key)["weights"]["v2"] == 10.0
    assert core.epoch == 1


def blue_green_experiment(**settings):
    bg = {"post_switch_watch_s": 5, "keep_blue_s": 10, **settings}
    return experiment(strategy="blue_green", steps=[], blue_green=bg,
                      analysis={"interval_s": 5, "min_samples": 10, "progress_deadline_s": 60})


def test_the_blue_green_switch_is_saved_first_and_pushed_with_a_new_epoch():
    store = FailingStore()
    clock = FakeClock()
    core = ControllerCore(blue_green_experiment(), store, clock)
    epoch = core.epoch
    store.failing = True
    with pytest.raises(StoreUnavailable):
        core.report_validation(True, "sample set passed")
    assert core.status().phase == "validating" and core.epoch == epoch
    store.failing = False
    core.report_validation(True, "sample set passed")
    assert core.status().phase == "switched" and core.epoch == epoch + 1
    assert core.snapshot().weights == {"v1": 0.0, "v2": 100.0}
    assert store.load(core.key)["phase"] == "switched"


def test_validation_of_a_green_that_never_answers_fails_within_the_deadline():
    import asyncio

    clock = FakeClock()
    core = ControllerCore(blue_green_experiment(), MemoryStateStore(), clock)
    clock.advance(50)
    assert 0 < core.validation_timeout_s() <= 10  # what is left of the 60 s deadline
    pinned = []

    async def never(inputs):
        pinned.append(inputs.shape)
        await asyncio.Event().wait()

    async def interface():
        return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]}

    async def answers(inputs):
        return {"outputs": [[0.1, 0.9]]}

    passed, reason = asyncio.run(core.validate_green(never, interface, timeout_s=0.01))
    assert passed is False and "no answer within 0.01s" in reason and pinned == [(1, 64)]
    assert asyncio.run(core.validate_green(answers, interface, timeout_s=1.0))[0] is True


# -- one clock, assigned traffic only --------------------------------------------------------


def test_a_router_clock_6s_behind_still_fills_the_windows():
    clock = FakeClock()
    core = ControllerCore(experiment(), MemoryStateStore(), clock)
    core.tick()
    for _ in range(30):
        clock.advance(1.0)
        for version, n in (("v1", EV_STABLE), ("v2", EV_CANDIDATE)):
            rows = [ServedRequest(clock() - 6.0, version, 3.0, None, 1, 0.9, f"{version}-{clock()}-{i}",
                                  next(_NEXT_USER) * 7919, True, False) for i in range(n)]
            record(core, rows)
            for row in rows:
                core.feedback.add(row.request_id, "correct", None, True, clock())
        core.tick()
    status = core.status()
    assert status.phase == "promoted", status.reason


def test_the_rollouts_max_user_icc_reaches_the_gates():
    """40 users who send the candidate 2 requests a second each: the error gate's design effect
    is at most Kish's 1 + 0.05 (m - 1) under the configured assumption, and says so."""
    gates = [{"metric": "error_rate", "max": 0.05}]
    reasons = {}
    for icc in (None, 0.05):
        clock = FakeClock()
        analysis = {"interval_s": 5, "min_samples": 10, "failure_limit": 0, "max_user_icc": icc}
        core = ControllerCore(experiment(gates=gates, analysis=analysis), MemoryStateStore(), clock)
        core.tick()
        for second in range(12):
            clock.advance(1.0)
            rows = [ServedRequest(clock(), "v2", 3.0, "model" if (i == 0 and second % 3 == 0) else None, 1, 0.9,
                                  f"v2-{second}-{i}", 10_000 * (i + 1) + 7, True, False) for i in range(80)]
            rows += [ServedRequest(clock(), "v1", 3.0, None, 1, 0.9, f"v1-{second}-{i}", None, True, False)
                     for i in range(100)]
            record(core, rows)
            core.tick()
        (gate,) = core.status().gates
        reasons[icc] = gate.reason
    assert "max_user_icc 0.05" in reasons[0.05] and "max_user_icc" not in reasons[None], reasons


def test_pinned_failing_traffic_to_the_candidate_moves_no_gate():
    clock = FakeClock()
    core = ControllerCore(experiment(), MemoryStateStore(), clock)
    core.tick()
    for _ in range(30):
        clock.advance(1.0)
        report(core, clock, "v1", EV_STABLE, correct=True)
        report(core, clock, "v2", EV_CANDIDATE, correct=True)
        # A tester pins v2 and every pinned request fails: not assigned, not mirrored.
        record(core, [ServedRequest(clock(), "v2", 900.0, "model", None, None, None, None,
                                                False, False) for _ in range(50)])
        core.tick()
    status = core.status()
    assert status.phase == "promoted" and status.failures_total == 0, status.reason


def test_pinned_traffic_alone_is_no_evidence():
    clock = FakeClock()
    core = ControllerCore(experiment(), MemoryStateStore(), clock)
    core.tick()
    for _ in range(20):
        clock.advance(1.0)
        report(core, clock, "v1", 20, correct=True)
        record(core, [ServedRequest(clock(), "v2", 3.0, None, 1, 0.9, None, None, False, False)
                                  for _ in range(50)])
        core.tick()
    status = core.status()
    assert status.weights_pct["v2"] == 10.0 and "no data" in status.reason


# -- no step is left without evidence --------------------------------------------------------


@pytest.mark.parametrize("ok, phase", [(True, "promoted"), (False, "aborted")])
def test_a_canary_with_pauses_shorter_than_the_interval_waits_for_a_passing_analysis(ok, phase):
    clock = FakeClock()
    cfg = experiment(steps=[{"set_weight": 10}, {"pause": {"duration": "1s"}}, {"set_weight": 50},
                            {"pause": {"duration": "1s"}}, {"set_weight": 100}])
    core = ControllerCore(cfg, MemoryStateStore(), clock)
    core.tick()
    highest = 0.0
    for _ in range(40):
        clock.advance(1.0)
        report(core, clock, "v1", EV_STABLE, correct=True)
        report(core, clock, "v2", EV_CANDIDATE, ok=ok, correct=True)
        core.tick()
        if core.status().phase != "promoted":
            highest = max(highest, core.snapshot().weights["v2"])
    assert core.status().phase == phase
    assert highest == (50.0 if ok else 10.0)


def test_weights_without_weights_is_invalid_input():
    from serve_ab.errors import InvalidInput

    core = ControllerCore(experiment(), MemoryStateStore(), FakeClock())
    with pytest.raises(InvalidInput, match="weights"):
        core.act(Action.WEIGHTS, ActionRequest())


@pytest.mark.parametrize("action, body, message", [
    # The audit's two cases: the first set 1e-08% (shown, yet no bucket), the second ignored full.
    (Action.WEIGHTS, {"weights": {"v1": 99.99999999, "v2": 1e-08}}, "v1 is 99.99999999; weights resolve to 0.01% steps"),
    (Action.WEIGHTS, {"weights": {"v2": 100.0}, "full": True}, "weights takes no 'full' (full is for promote)"),
    (Action.PAUSE, {"weights": {"v2": 100.0}}, "pause takes no 'weights' (weights is for weights)"),
])
def test_an_action_refuses_what_it_would_ignore_or_could_not_route(action, body, message):
    from serve_ab.errors import InvalidInput

    core = ControllerCore(experiment(), MemoryStateStore(), FakeClock())
    before = core.status()
    with pytest.raises(InvalidInput, match=re.escape(message)):
        core.act(action, ActionRequest(**body))
    assert core.status() == before


def _row(clock, version, unit, split, *, request_id=None, assigned=True, ok=True):
    # Not assigned and not pinned: a fallback's answer.
    return ServedRequest(clock(), version, 3.0, None if ok else "model", 1, 0.9, request_id, unit, assigned,
                         False, False, split)


def test_an_analysis_reads_the_whole_step():
    """Evidence accumulates while a step is held: a trickle too thin for one interval passes
    once the step as a whole is evidence."""
    clock = FakeClock()
    core = ControllerCore(experiment(steps=[{"set_weight": 10}, {"pause": {}}]), MemoryStateStore(), clock)
    core.tick()
    seen = []
    for _ in range(40):
        run_for(core, clock, 1, {"v1": (EV_STABLE, {"correct": True}), "v2": (12, {"correct": True})})
        gates = core.status().gates
        if gates:
            seen.append((gates[0].verdict, gates[0].reason))
    # 12 requests/s: 60 per 5 s interval is too few for error_rate max 0.05 at a later look,
    # 480 over the step is plenty.
    assert seen[-1][0] == "pass", seen[-1]
    assert core._window_s() == float("inf")  # the whole step, by default


def test_the_same_trickle_from_twelve_users_holds_as_twelve_units():
    """480 requests from 12 users say little of how users differ: one unit per user."""
    clock = FakeClock()
    core = ControllerCore(experiment(steps=[{"set_weight": 10}, {"pause": {}}]), MemoryStateStore(), clock)
    core.tick()
    run_for(core, clock, 40, {"v1": (EV_STABLE, {"correct": True}), "v2": (12, {"correct": True, "users": 12})})
    gate = core.status().gates[0]
    assert gate.verdict == "inconclusive" and "fewer than 20" in gate.reason, gate


def test_rows_and_their_feedback_count_under_the_split_their_router_assigned_them_by():
    """Rows arrive after the weights moved on; each counts under its routing epoch's weights,
    and feedback joins the unit and split of the request it is about."""
    clock = FakeClock()
    core = ControllerCore(ab_experiment(), MemoryStateStore(), clock)
    first = core.snapshot().epoch
    v1_unit = next(u for u in range(100) if u < 5000)  # bucket < 5000: v1 under 50/50
    record(core, [_row(clock, "v1", v1_unit, first, request_id="r1")])
    # The weights change, as a promote would: a new epoch with its own weights.
    core._epoch_weights[first + 1] = {"v1": 20.0, "v2": 80.0, "v3": 0.0}
    record(core, [_row(clock, "v2", 9999, first + 1, request_id="r2")])
    core.feedback.add("r1", "correct", None, True, clock())
    core.feedback.add("r2", "correct", None, False, clock())
    splits = {s["key"]: s for s in core.stats_snapshot()["splits"]}
    assert set(splits) == {"v1:0-5000,v2:5000-10000,v3:10000-10000", "v1:0-2000,v2:2000-10000,v3:10000-10000"}
    early = splits["v1:0-5000,v2:5000-10000,v3:10000-10000"]["metrics"]
    late = splits["v1:0-2000,v2:2000-10000,v3:10000-10000"]["metrics"]
    assert early["error_rate"]["buckets"] == [v1_unit] and late["error_rate"]["buckets"] == [9999]
    assert early["feedback/correct"]["s"] == [1.0] and late["feedback/correct"]["n"] == [1.0]


def test_feedback_on_a_fallback_answer_counts_for_the_assigned_version():
    """Intention to treat: the failed assigned row names the request; the fallback's answer
    (not assigned) is not what the feedback joins."""
    clock = FakeClock()
    core = ControllerCore(ab_experiment(), MemoryStateStore(), clock)
    epoch = core.snapshot().epoch
    record(core, [_row(clock, "v2", 7777, epoch, request_id="r", ok=False),
                              _row(clock, "v1", 7777, epoch, request_id="r", assigned=False)])
    assert core.feedback.add("r", "correct", None, True, clock()) == "v2"
    versions = core.stats_snapshot()["versions"]
    assert versions["v2"]["feedback"]["correct"]["n"] == 1 and not versions["v1"]["feedback"]


def test_a_replay_after_a_controller_restart_is_still_refused(tmp_path):
    """The answers' feedback counted lately is saved with the figures; a restarted controller
    refuses a token's second report as the first controller would have."""
    clock = FakeClock(1_000_000.0)
    store = SqliteStateStore(tmp_path / "state.sqlite")
    core = ControllerCore(ab_experiment(), store, clock)
    core.feedback.add("answer-1#n1", "correct", None, True, clock(), version="v1")
    clock.advance(70)  # into the next minute: both rows are saved
    core.feedback.add("answer-2#n2", "correct", None, False, clock(), version="v2")
    core.save_stats()
    restarted = ControllerCore(ab_experiment(), SqliteStateStore(tmp_path / "state.sqlite"), clock)
    for answer in ("answer-1#n1", "answer-2#n2"):
        with pytest.raises(Conflict):
            restarted.feedback.add(answer, "correct", None, True, clock(), version="v1")
    assert restarted.feedback.add("answer-3#n3", "correct", None, True, clock(), version="v1") == "v1"
    # Rows older than a token's life are dropped as time goes on.
    clock.advance(restarted.feedback.request_ttl_s + 300)
    restarted.save_stats()
    with sqlite3.connect(tmp_path / "state.sqlite") as db:
        rows = db.execute("SELECT key FROM rollout_state WHERE key LIKE 'feedback-reported:%'").fetchall()
    assert rows == [], rows


def test_a_candidate_a_router_could_not_load_gets_no_traffic_and_its_canary_aborts_with_the_error():
    clock = FakeClock()
    core = ControllerCore(experiment(), MemoryStateStore(), clock)
    core.tick()
    assert core.weights() == {"v1": 90.0, "v2": 10.0}
    epoch = core.epoch
    assert core.record(report_of(failed_versions={"v2": "failed to load: ValueError: bad file"}, core=core))
    assert core.epoch == epoch + 1  # routers hear of it at once
    assert core.status().failed_versions == {"v2": "failed to load: ValueError: bad file (router replica router-1)"}
    core.tick()
    assert core.rollout.phase is Phase.ABORTED and core.weights() == {"v1": 100.0, "v2": 0.0}
    assert "candidate v2 failed to load: ValueError: bad file" in core.status().reason
    # A router that stops reporting for a minute is forgotten, and so is what failed there.
    clock.advance(61.0)
    record(core, [ServedRequest(clock(), "v1", 1.0, None, 1, 0.9, None, 5, True, False)])
    assert core.status().failed_versions == {}


def test_a_static_ab_gives_a_failed_variants_share_to_the_first_version_that_loaded():
    clock = FakeClock()
    core = ControllerCore(ab_experiment(), MemoryStateStore(), clock)
    before = core.weights()
    core.record(report_of(failed_versions={"v2": "failed to load: x"}, core=core))
    after = core.weights()
    assert after["v2"] == 0.0 and sum(after.values()) == pytest.approx(100.0) and after["v1"] > before["v1"]


# -- notifications, webhook gates (a real receiver on a loopback socket) ---------------------

def with_receiver(cfg, url: str):
    from serve_ab.config.rollout import NotificationReceiver

    return cfg.model_copy(update={"notifications": [NotificationReceiver(type="webhook", url=url, name="ops")]})


def test_a_canarys_phase_changes_and_actions_reach_the_receiver_in_order():
    from tests.unit.rollout.hooks import HookServer

    hooks = HookServer()
    clock = FakeClock()
    steps = [{"set_weight": 10}, {"pause": {"duration": "10s"}}, {"pause": {}}, {"set_weight": 100}]
    core = ControllerCore(with_receiver(experiment(steps=steps), hooks.url + "/events"), MemoryStateStore(), clock,
                          app="shop")
    try:
        core.tick()
        run_for(core, clock, 30, {"v1": (EV_STABLE, {"correct": True}), "v2": (EV_CANDIDATE, {"correct": True})})
        assert core.rollout.phase is Phase.PAUSED
        core.act(Action.PROMOTE, ActionRequest(), Actor("alice", "operator", "10.0.0.7"))
        assert core.rollout.phase is Phase.PROMOTED
        assert core.notifier.flush(10)
        history = core.status(history=True).history
        bodies = hooks.bodies("/events")
        assert [(b["from_phase"], b["phase"], b["reason"]) for b in bodies] == [
            (h.from_phase, h.to_phase, h.reason) for h in history]
        phases = [(b["phase"], b["action"]) for b in bodies if b["event"] == "phase_changed"]
        # promote's entries that moved the phase are phase changes too, naming the action
        assert phases == [("progressing", None), ("paused", None), ("progressing", "promote"),
                          ("promoted", "promote")]
        actions = [b for b in bodies if b["action"] is not None]
        assert actions[-1]["phase"] == "promoted" and actions[-1]["actor"]["name"] == "alice"
        assert actions[-1]["weights_pct"] == {"v1": 0.0, "v2": 100.0}
        assert {b["app"] for b in bodies} == {"shop"} and bodies[0]["rollout"] == "digits:canary:v1->v2"
        revisions = [b["revision"] for b in bodies]
        assert revisions == sorted(revisions) and revisions[-1] == core.rollout.state.revision
        assert core.status().notifications == {"ops": NotificationCounts(sent=len(bodies), failed=0)}
    finally:
        core.notifier.close()
        hooks.close()


def test_each_event_has_an_id_a_receiver_can_drop_a_repeated_delivery_by():
    # One decision's entries share t_s and revision, and an action that changed nothing keeps
    # the revision; the retry after a timeout that reached the receiver delivers an event twice
    # (live: a 5-s receiver at timeout_s 5 got each event 5 times), so nothing told them apart.
    from tests.unit.rollout.hooks import HookServer

    hooks = HookServer()
    clock = FakeClock()
    steps = [{"set_weight": 10}, {"pause": {"duration": "10s"}}, {"pause": {}}, {"set_weight": 100}]
    core = ControllerCore(with_receiver(experiment(steps=steps), hooks.url + "/events"), MemoryStateStore(), clock)
    try:
        core.tick()
        run_for(core, clock, 30, {"v1": (EV_STABLE, {"correct": True}), "v2": (EV_CANDIDATE, {"correct": True})})
        alice = Actor("alice", "operator", "10.0.0.7")
        core.act(Action.PAUSE, ActionRequest(), alice)
        revision = core.rollout.state.revision
        assert not core.act(Action.PAUSE, ActionRequest(), alice)  # nothing to change: same revision
        assert core.rollout.state.revision == revision
        core.act(Action.PROMOTE, ActionRequest(), alice)
        assert core.notifier.flush(10)
        bodies = hooks.bodies("/events")
        entries = core.status(history=True).history
        assert len(bodies) == len(entries) and len(entries) >= 6
        assert [b["seq"] for b in bodies] == list(range(1, len(bodies) + 1))
        assert [b["event_id"] for b in bodies] == [f"digits:canary:v1->v2#{i}" for i in range(1, len(bodies) + 1)]
        assert bodies[-2]["revision"] == bodies[-1]["revision"]  # promote's two entries: one decision
        # A restarted controller numbers on from the saved count, not from 1 again.
        store = MemoryStateStore()
        store.save(core.key, core.rollout.to_dict())
        again = ControllerCore(with_receiver(experiment(steps=steps), hooks.url + "/restarted"), store, clock)
        again.act(Action.ROLLBACK, ActionRequest(), alice)
        assert again.notifier.flush(10)
        assert [b["seq"] for b in hooks.bodies("/restarted")] == [len(bodies) + 1]
        again.notifier.close()
    finally:
        core.notifier.close()
        hooks.close()


def test_the_controller_warns_at_start_of_each_unset_hook_variable(monkeypatch, caplog):
    # Found only mid-rollout before; a warning, not a failure: a gate only holds.
    monkeypatch.delenv("AUDIT_CHECKS_TOKEN", raising=False)
    monkeypatch.delenv("AUDIT_APPROVALS_URL", raising=False)
    cfg = experiment(gates=[{"metric": "webhook", "url": "http://checks:8080/canary",
                             "headers_from_env": {"Authorization": "AUDIT_CHECKS_TOKEN"}}],
                     steps=[{"set_weight": 20}, {"confirm": {"url_from_env": "AUDIT_APPROVALS_URL"}},
                            {"set_weight": 100}])
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        core = ControllerCore(cfg, MemoryStateStore(), FakeClock())
    assert core.rollout is not None
    assert ("rollout.gates[0].headers_from_env.Authorization names environment variable AUDIT_CHECKS_TOKEN, "
            "which is not set") in caplog.text
    assert "rollout.steps[1].confirm.url_from_env names environment variable AUDIT_APPROVALS_URL" in caplog.text


async def drive_with_webhooks(core: ControllerCore, clock: FakeClock, seconds: int) -> None:
    """``seconds`` of traffic (v1 20 and v2 5 requests a second), each second's webhook answers
    in hand before the tick, until the rollout ends."""
    from serve_ab.rollout.webhook import WebhookPoller

    poller = WebhookPoller(core.cfg.rollout, core.cfg.model)
    for _ in range(seconds):
        clock.advance(1.0)
        report(core, clock, "v1", 20)
        report(core, clock, "v2", 5)
        poller.poll(clock(), core.rollout)
        while poller.refreshing:  # a test's shortcut: the controller never waits
            await asyncio.sleep(0.01)
        core.tick(None, poller.poll(clock(), core.rollout))
        if core.rollout.done:
            return


def test_a_webhook_gate_named_like_a_confirm_key_does_not_confirm_the_step():
    # Gates' and confirm steps' answers shared one dict keyed by strings ("confirm@1" for step
    # 1's): a passing gate of that name confirmed the step, and the canary was promoted
    # without its confirm endpoint ever being asked.
    from tests.unit.rollout.hooks import HookServer

    hooks = HookServer()
    hooks.answer("/gate", (200, {"pass": True}))
    hooks.answer("/confirm", (200, {"confirm": False, "reason": "change freeze"}))
    clock = FakeClock()
    cfg = experiment(gates=[{"metric": "webhook", "url": hooks.url + "/gate", "name": "confirm@1"}],
                     steps=[{"set_weight": 20}, {"confirm": {"url": hooks.url + "/confirm", "interval_s": 5}},
                            {"set_weight": 100}])
    core = ControllerCore(cfg, MemoryStateStore(), clock)
    try:
        asyncio.run(drive_with_webhooks(core, clock, 30))
    finally:
        hooks.close()
    assert core.rollout.phase.value == "progressing" and core.rollout.state.step_index == 1
    assert "answered confirm: false: 'change freeze'" in core.status().reason
    assert hooks.bodies("/confirm") and hooks.bodies("/gate")


def test_a_webhook_gate_answering_false_aborts_the_canary_with_its_reason():
    from tests.unit.rollout.hooks import HookServer

    hooks = HookServer()
    hooks.answer("/gate", (200, {"pass": False, "reason": "integration suite: 3 of 40 failed"}))
    clock = FakeClock()
    gates = [{"metric": "webhook", "url": hooks.url + "/gate", "name": "suite", "timeout_s": 2}]
    cfg = with_receiver(experiment(gates=gates), hooks.url + "/events")
    core = ControllerCore(cfg, MemoryStateStore(), clock)
    try:
        asyncio.run(drive_with_webhooks(core, clock, 20))
        status = core.status()
        assert status.phase == "aborted" and status.weights_pct == {"v1": 100.0, "v2": 0.0}
        assert "webhook[suite]" in status.reason and "'integration suite: 3 of 40 failed'" in status.reason
        assert hooks.bodies("/gate")[0]["candidate"] == "v2"
        assert core.notifier.flush(10)
        events = [(b["event"], b["phase"]) for b in hooks.bodies("/events")]
        assert events[-2:] == [("analysis_failed", "progressing"), ("phase_changed", "aborted")]
    finally:
        core.notifier.close()
        hooks.close()


def test_a_controller_down_across_the_watchs_end_judges_the_downtime_before_it_promotes():
    """The watch is wall-clock (green served all traffic while no controller ran), but the
    verdict saved before the controller went down must not end it: the routers' reports of
    the downtime, sent again to the new controller, are judged first."""
    clock = FakeClock()
    store = MemoryStateStore()
    cfg = blue_green_experiment(post_switch_watch_s=20, keep_blue_s=120)
    core = ControllerCore(cfg, store, clock)
    core.tick()
    core.report_validation(True, "sample set passed")
    run_for(core, clock, 18, {"v2": (EV_CANDIDATE, {})})  # analyses at 5, 10 and 15 s pass
    assert core.status().phase == "switched" and core.last_analysis[0]["verdict"] == "pass"
    core.save_stats()
    clock.advance(60)  # down across the watch's end, green failing meanwhile
    restarted = ControllerCore(cfg, store, clock)
    restarted.tick()
    status = restarted.status()
    assert status.phase == "switched", status.reason
    assert "no analysis since the controller restarted" in status.reason
    run_for(restarted, clock, 5, {"v2": (EV_CANDIDATE, {"ok": False})})
    status = restarted.status(history=True)
    assert status.phase == "aborted" and status.weights_pct == {"v1": 100.0, "v2": 0.0}
    assert status.history[-1].reason.endswith("; all traffic back to v1")


def test_feedback_after_a_restart_counts_under_the_split_its_request_was_routed_by():
    """A pre-period answer (v2 at 0) whose outcome is reported after the weights moved to
    50/50 and the controller restarted: its token names the pre-period's epoch. The restarted
    controller numbered its epochs from 0 again, so that epoch meant its own weights (or, not
    published by it, the weights now): 40 of 40 such reports were filed under the 50/50 split,
    pre-period outcomes counted as v1's in the comparison. Epochs are kept with the figures
    and a restarted controller numbers on past them."""
    cfg = parse_experiment({
        "model": "digits",
        "versions": [{"name": "v1", "path": "a.onnx", "backend": "onnx"},
                     {"name": "v2", "path": "b.onnx", "backend": "onnx"}],
        "weights": {"v1": 100}, "analysis": {"metrics": [{"name": "revenue", "kind": "mean"}]},
        "rollout": {"strategy": "canary", "stable": "v1", "candidate": "v2", "steps": [{"pause": {}}]}})
    store, clock = MemoryStateStore(), FakeClock()
    core = ControllerCore(cfg, store, clock)
    core.tick()
    epochs = {core.snapshot().epoch}
    pre_epoch = core.snapshot().epoch
    record(core, [ServedRequest(clock(), "v1", 3.0, None, 1, 0.9, f"pre-{i}", 4000 + i, True, False, split=pre_epoch)
                  for i in range(40)])
    core.act(Action.WEIGHTS, ActionRequest(weights={"v1": 50, "v2": 50}))
    epochs.add(core.snapshot().epoch)
    clock.advance(1.0)
    core.save_stats()
    for _ in range(2):  # restarted twice: each numbers past every epoch before it
        core = ControllerCore(cfg, store, clock)
        core.tick()
        assert core.snapshot().epoch not in epochs
        epochs.add(core.snapshot().epoch)
        core.save_stats()
    for i in range(40):
        core.feedback.add(f"pre-{i}", "revenue", 10.0, None, clock(), version="v1", unit=4000 + i, split=pre_epoch)
    counted = {split["key"]: split["metrics"].get("feedback/revenue", {}).get("n", []) for split in
               core.stats_snapshot()["splits"]}
    assert sum(counted["v1:0-10000,v2:10000-10000"]) == 40
    assert sum(counted.get("v1:0-5000,v2:5000-10000", [])) == 0


def test_a_restarted_controller_carries_on_with_the_reports_sequential_tests():
    """The report's always-valid figures are a running minimum and a running intersection over
    looks, with tau fixed at the first: a controller killed and started again began them
    afresh (live: 10 looks -> 2, the conversion's sequential p 0.47 -> 1, tau 0.044 -> 0.030).
    They are saved with the figures now, and the next look carries on from them."""
    from serve_ab.analysis.report import build_report

    cfg = ab_experiment(analysis={"metrics": [{"name": "correct", "kind": "conversion"}]})
    store, clock = MemoryStateStore(), FakeClock()
    core = ControllerCore(cfg, store, clock)

    def look(c: ControllerCore):
        for correct in (True, False):  # another second each: request ids name it
            clock.advance(1.0)
            for version, share in (("v1", 20), ("v2", 28)):
                report(c, clock, version, share if correct else 40 - share, correct=correct)
        built, c.sequential_state = build_report(c.cfg, c.stats_snapshot(samples=True), c.weights(),
                                                 getattr(c, "sequential_state", None), c.run_id)
        return next(x for m in built.metrics if m.name == "correct" for x in m.comparisons if x.variant == "v2")

    before = [look(core) for _ in range(3)]
    core.save_stats()
    restarted = ControllerCore(cfg, store, clock)
    after = look(restarted)
    assert after.sequential.looks == before[-1].sequential.looks + 1
    assert after.sequential.tau == before[0].sequential.tau  # fixed at the first look
    assert after.sequential.p_value <= before[-1].sequential.p_value  # a running minimum
    lo, hi = before[-1].sequential.ci
    assert lo <= after.sequential.ci[0] and after.sequential.ci[1] <= hi  # a running intersection


_FROZEN = {"verdict": "better", "abs_ci": [0.01, 0.2], "rel_ci": [0.02, 0.4], "p_adjusted": 0.01, "p_value": 0.005,
           "level": 0.025, "abs_lift": 0.1, "rel_lift": 0.25, "n_variant": 150, "n_control": 150}


def _seq(**changes):
    return {"tau": 0.05, "seq": {"p": 0.5, "lo": -0.5, "hi": 0.5, "looks": 3, "estimate": 0.0, "tau": 0.05,
                                 "units": 10, **changes}}


def _saved_conversion_run(sequential_on: bool = True):
    """A run with a conversion metric, 200 reports on each of v1 and v2 (80 and 100 converted),
    saved: (cfg, store, clock, core, the saved figures' row)."""
    cfg = ab_experiment(analysis={"sequential": sequential_on, "metrics": [{"name": "correct", "kind": "conversion"}]})
    store, clock = MemoryStateStore(), FakeClock()
    core = ControllerCore(cfg, store, clock)
    clock.advance(1.0)
    for version, converted in (("v1", 80), ("v2", 100)):
        report(core, clock, version, converted, correct=True)
        clock.advance(1.0)  # request ids name the second
        report(core, clock, version, 200 - converted, correct=False)
    core.save_stats()
    return cfg, store, clock, core, store.load(f"stats:{core.run_id}")


@pytest.mark.parametrize("sequential_on, look", [
    # Each fitted the restart's check, and the report raised at every look after it (TypeError,
    # ValidationError, KeyError, OverflowError): a None where the report formats a number, a
    # key present with None (the report tests the key), a level the report's schema refuses.
    (True, _seq(restart={"look": 2, "units": 5, "from": [None, 0.1], "count": 1})),
    (True, _seq(lo=None, hi=-1.0)),  # this look restarts from it, and saves from: [None, -1.0]
    (True, {**_seq(), "tau": 1e200}),  # squared: OverflowError
    (False, {"frozen": {**_FROZEN, "level": None}}),
    (False, {"frozen": {**_FROZEN, "level": float("nan")}}),
    (False, {"frozen": {k: v for k, v in {**_FROZEN, "p_value": None}.items() if k != "n_variant"}}),
    (False, {"frozen": {"verdict": "better", "abs_ci": None}}),
])
def test_a_saved_look_the_report_cannot_read_is_dropped_though_it_looks_like_one(sequential_on, look, caplog):
    from serve_ab.analysis.report import build_report

    cfg, store, clock, core, row = _saved_conversion_run(sequential_on)
    whole = _seq() if sequential_on else {"frozen": _FROZEN}  # the same look undamaged: kept, and read
    for saved, dropped in ((whole, False), (look, True)):
        caplog.clear()
        store.save(f"stats:{core.run_id}", {**row, "sequential": json.loads(json.dumps({"correct": {"v2": saved}}))})
        with caplog.at_level(logging.WARNING, logger="ray.serve"):
            restarted = ControllerCore(cfg, store, clock)
        build_report(restarted.cfg, restarted.stats_snapshot(samples=True), restarted.weights(),
                     restarted.sequential_state, restarted.run_id)
        assert ("could not read the saved sequential tests" in caplog.text) is dropped


def test_figures_saved_by_a_release_without_sequential_state_say_the_tests_start_afresh(caplog):
    """An upgrade from a release that saved no sequential state (db32c8e): the figures carry on
    and the report's sequential tests start over. That was silent: live, the report's looks
    went from 13 to 1 and tau changed at the upgrade with nothing in the log to say why."""
    cfg, store, clock, core, row = _saved_conversion_run()
    # As db32c8e wrote it (live): none of the keys added since.
    older = {k: v for k, v in row.items()
             if k not in ("sequential", "epochs", "routers_live", "reported_from_minute", "feedback_previous_run")}
    for saved, said in ((row, False), ({**row, "sequential": None}, False), (older, True)):
        caplog.clear()
        store.save(f"stats:{core.run_id}", saved)
        with caplog.at_level(logging.WARNING, logger="ray.serve"):
            restarted = ControllerCore(cfg, store, clock)
        assert ("hold no sequential tests" in caplog.text) is said, caplog.text
        assert restarted.stats_snapshot()["versions"]["v2"]["feedback"]["correct"]["n"] == 200


class _DecisionDuringCreate(MemoryStateStore):
    """A store whose ``create`` of the rollout's row answers with the older row it holds and,
    before the controller's next call, takes a newer decision (the loop's save, racing the
    figures' save in its thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.race: tuple[str, dict] | None = None

    def create(self, key, state):
        held = super().create(key, state)
        if self.race is not None and key == self.race[0]:
            self.save(*self.race)
            self.race = None
        return held


def test_a_rollout_row_written_back_never_overwrites_a_decision_saved_meanwhile():
    """The figures' save writes the rollout's row back over an older revision (a failover lost
    the last decision) only if, read again under the decisions' lock, the store still holds an
    older one: a decision the loop saved between the two would otherwise be undone."""
    clock = FakeClock()
    store = _DecisionDuringCreate()
    core = ControllerCore(experiment(), store, clock)
    core.tick()
    older = store.load(core.key)
    core.act(Action.PAUSE)
    store.save(core.key, older)  # lost in a failover
    newer = {**core.rollout.to_dict(), "revision": core.rollout.state.revision + 1}
    store.race = (core.key, newer)
    core.save_stats()
    assert store.load(core.key) == newer


@pytest.mark.parametrize("epochs", [{"last": None, "weights": []}, {"last": 3, "weights": [[1, {"v1": "x"}]]},
                                    [1, 2], "damaged"])
def test_a_saved_row_whose_epochs_cannot_be_read_does_not_keep_the_controller_down(epochs, caplog):
    """The routing epochs saved with the figures, damaged (a hand edit, a bug of another
    release): the restarted controller raised in its constructor, and as the row stays in the
    store, every restart after it did too. It logs what it could not read and numbers on."""
    cfg = ab_experiment()
    store, clock = MemoryStateStore(), FakeClock()
    core = ControllerCore(cfg, store, clock)
    core.save_stats()
    row = store.load(f"stats:{core.run_id}")
    store.save(f"stats:{core.run_id}", {**row, "epochs": epochs})
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        restarted = ControllerCore(cfg, store, clock)
    assert "could not read the saved routing epochs" in caplog.text
    assert restarted.snapshot().epoch >= EPOCHS_SKIPPED_AT_RESTART
    assert restarted.snapshot().weights == {"v1": 50.0, "v2": 50.0, "v3": 0.0}


def test_routing_epochs_stay_within_what_a_feedback_token_can_name():
    """Each restart numbers on a million past the last save's epoch; tokens name an epoch in 12
    digits. Past them (a million restarts, or a damaged row) a router's tokens would all be
    refused as malformed: the controller numbers from 0 again, and the restart after that
    numbers on from there, clear of the epochs it kept from before."""
    cfg = ab_experiment()
    store, clock = MemoryStateStore(), FakeClock()
    core = ControllerCore(cfg, store, clock)
    core.save_stats()
    row = store.load(f"stats:{core.run_id}")
    high = MAX_TOKEN_EPOCH - 10
    store.save(f"stats:{core.run_id}", {**row, "epochs": {"last": high, "weights": [[high, {"v1": 50, "v2": 50}]]}})
    restarted = ControllerCore(cfg, store, clock)
    assert restarted.snapshot().epoch < EPOCHS_SKIPPED_AT_RESTART
    signer = FeedbackSigner(b"k" * 32, 60, clock, scope="digits")
    assert signer.verify(signer.issue("r1", "v1", True, 7, restarted.snapshot().epoch), "r1").epoch == \
        restarted.snapshot().epoch
    assert restarted._split_weights(high) == {"v1": 50.0, "v2": 50.0}  # tokens of before still file right
    restarted.save_stats()
    again = ControllerCore(cfg, store, clock)
    assert restarted.snapshot().epoch < again.snapshot().epoch < 2 * EPOCHS_SKIPPED_AT_RESTART


@pytest.mark.parametrize("sequential", [
    "damaged", [1, 2], {"correct": [1]}, {"correct": {"v2": [1, 2]}},
    # A look of the right outer shape, damaged within: build_report raised on the first two,
    # and the report's schema refused the third's verdict.
    {"correct": {"v2": {"seq": "x"}}},
    {"correct": {"v2": {"tau": 0.01, "seq": {"p": "0.2", "lo": -0.1, "hi": 0.3, "looks": 4, "units": 400}}}},
    {"correct": {"v2": {"decided": "maybe"}}},
])
def test_a_saved_sequential_state_that_cannot_be_read_starts_the_tests_afresh(sequential, caplog):
    """The report's sequential state saved with the figures, of another shape (a hand edit, a
    bug): build_report refused it, so after the restart every report (GET /experiment/report)
    and every run record failed, for as long as the row stayed. It is logged and dropped."""
    from serve_ab.analysis.report import build_report

    cfg, store, clock, core, row = _saved_conversion_run()
    store.save(f"stats:{core.run_id}", {**row, "sequential": sequential})
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        restarted = ControllerCore(cfg, store, clock)
    assert "could not read the saved sequential tests" in caplog.text
    built, restarted.sequential_state = build_report(restarted.cfg, restarted.stats_snapshot(samples=True),
                                                     restarted.weights(), restarted.sequential_state,
                                                     restarted.run_id)
    compared = next(x for m in built.metrics if m.name == "correct" for x in m.comparisons if x.variant == "v2")
    assert compared.sequential.looks == 1
