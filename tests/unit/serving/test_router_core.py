"""The router's request path without Ray: decision, fallback, mirroring, observations,
the routing-table follower and the isolated versions' watchdog, with fakes and a fake clock."""

from __future__ import annotations

import asyncio
import gc
import logging
import pickle

import numpy as np
import pytest

from serve_ab.analysis.aggregate import IntervalAggregate
from serve_ab.analysis.clusters import KEYLESS
from serve_ab.config import parse_experiment
from serve_ab.errors import BadOutput, InvalidInput, ModelFailed, VersionNotServed, VersionUnavailable
from serve_ab.serving.core.decision import key_text
from serve_ab.serving.core.messages import Mirror, RoutingSnapshot
from serve_ab.serving.core.mirror import MAX_IN_FLIGHT, copy_caps
from serve_ab.serving.core.observe import ObservationBuffer
from serve_ab.serving.core.router import RouterCore
from serve_ab.serving.core.versions import check_outputs
from serve_ab.serving.core.watchdog import WatchdogSettings, WatchedVersion
from serve_ab.serving.runtime import LoadedVersion
from tests.unit.backends.python_models import HeldDigits
from tests.support.fakes import DIGITS_INPUT, DIGITS_OUTPUT, FakeClock, FakeController, FakeVersion

ROW = [[0.0] * 64]
PYTHON_MODELS = "tests.unit.backends.python_models"
TAKES_FEEDBACK = {"metrics": [{"name": "correct", "kind": "conversion"}]}


def experiment(**changes):
    cfg = {
        "model": "digits",
        "versions": [{"name": "v1", "path": "a.onnx", "backend": "onnx"},
                     {"name": "v2", "path": "b.onnx", "backend": "onnx"}],
        "weights": {"v1": 50, "v2": 50},
        "assignment": {"key": "json", "field": "user_id", "salt": "unit"},
    }
    cfg.update(changes)
    return parse_experiment(cfg)


def make_core(versions=None, controller=None, clock=None, **changes) -> RouterCore:
    clock = clock or FakeClock()
    return RouterCore(experiment(**changes), versions or {"v1": FakeVersion(1), "v2": FakeVersion(2)},
                      controller or FakeController(), request_id=lambda: "req-1", clock=clock,
                      sleep=clock.sleep)


def run(coro):
    return asyncio.run(coro)


# -- the traffic decision --------------------------------------------------------------------

def test_same_key_same_version_and_shares_near_weights():
    core = make_core()
    first = {f"user-{i}": run(core.serve(ROW, f"user-{i}", None))[0] for i in range(400)}
    again = {f"user-{i}": run(core.serve(ROW, f"user-{i}", None))[0] for i in range(400)}
    assert first == again
    assert 150 < sum(v == "v2" for v in first.values()) < 250


def test_pins_serve_the_pinned_version_and_are_not_assigned():
    core = make_core()
    version, outputs = run(core.serve(ROW, "someone", "v2"))
    assert version == "v2" and int(outputs[0].argmax()) == 2
    interval = core.observations.drain()
    assert (interval.versions["v2"].requests, interval.versions["v2"].assigned) == (1, 0)
    assert interval.splits == {} and interval.gates == {}  # in no comparison and no gate


def test_pinning_an_unknown_version_is_a_domain_error_and_handles_may_pin_with_pins_off():
    core = make_core()
    with pytest.raises(VersionNotServed, match="'v9'.*serves \\['v1', 'v2'\\]"):
        run(core.serve(ROW, None, "v9"))
    # pin.enabled governs the public header (tests/unit/serving/test_http.py); callers inside
    # the cluster (the controller's blue-green validation) pin whatever it says.
    assert run(make_core(pin={"enabled": False}).serve(ROW, None, "v1"))[0] == "v1"


def test_a_request_without_its_key_is_said_once_per_set_of_fields_naming_them(caplog):
    """A misspelt key field ("userid") would send each request of a user to a random version;
    keyless requests may be meant, so they are served, and said in the log. Once per set of
    fields: a live audit's {"user_id": null} first was said (as "without 'user_id'", beside
    a field list holding it), and a misspelt "userid" after it never was."""
    core = make_core()
    with caplog.at_level("WARNING", logger="ray.serve"):
        assert core.decision.key_from({"inputs": ROW, "user_id": None}, None) is None
        assert core.decision.key_from({"inputs": ROW, "userid": "bob"}, None) is None
        assert core.decision.key_from({"inputs": ROW, "userid": "ann"}, None) is None  # the same fields
        assert core.decision.key_from({"inputs": ROW, "user_id": "bob"}, None) == "bob"
    said = [r.getMessage() for r in caplog.records if "assigned at random" in r.getMessage()]
    assert len(said) == 2, said
    assert "came with 'user_id' null (assignment.field); its fields were ['inputs', 'user_id']" in said[0]
    assert "came without 'user_id' (assignment.field); its fields were ['inputs', 'userid']" in said[1]
    assert "said once per set of fields, for the first 8 per replica" in said[1]
    caplog.clear()
    with caplog.at_level("WARNING", logger="ray.serve"):
        core.decision.key_from(None, None)  # no fields at all: a set of its own
        for i in range(20):
            core.decision.key_from({f"field_{i}": 1}, None)
    said = [r.getMessage() for r in caplog.records if "assigned at random" in r.getMessage()]
    assert len(said) == 6 and "its fields were []" in said[0]  # 8 sets in all
    by_header = make_core(assignment={"key": "header", "header": "x-user", "salt": "s"})
    with caplog.at_level("WARNING", logger="ray.serve"):
        assert by_header.decision.key_from({}, {"x-userid": "bob"}) is None
    assert "came without the 'x-user' header (assignment.header)" in caplog.records[-1].getMessage()
    assert "(said once per replica)" in caplog.records[-1].getMessage()


def test_a_bad_key_is_invalid_input():
    core = make_core()
    with pytest.raises(InvalidInput, match="'user_id' must be a string or an integer; got list"):
        core.decision.key_from({"user_id": [1]}, {})
    assert core.decision.key_from({"user_id": 7}, {}) == "7"


@pytest.mark.parametrize("key, text", [("ann", "ann"), (7, "7"), (-3, "-3")])
def test_a_handles_key_is_hashed_as_the_same_user_over_http(key, text):
    assert key_text(key, "key") == text == make_core().decision.key_from({"user_id": key}, {})


@pytest.mark.parametrize("key", [True, 1.5, [1], {"id": 1}, b"ann"])
def test_a_handles_key_of_another_type_is_invalid_input(key):
    with pytest.raises(InvalidInput, match=f"key must be a string or an integer; got {type(key).__name__}"):
        key_text(key, "key")


# -- fallback ----------------------------------------------------------------------------------

def test_an_unavailable_version_is_served_once_more_on_the_stable(caplog):
    down = FakeVersion(2, fail=VersionUnavailable("v2 is down"))
    core = make_core({"v1": FakeVersion(1), "v2": down})
    key = next(k for k in map(str, range(100)) if core.decision.assigner.assign(k) == "v2")
    with caplog.at_level("WARNING", logger="ray.serve"):
        version, _ = run(core.serve(ROW, key, None))
    assert version == "v1" and down.calls == 1
    # The log says why (an outage, or a NaN answer), not only that it retried.
    assert "version v2 could not answer (v2 is down); retrying the request on v1" in caplog.text
    interval = core.observations.drain()
    v1, v2 = interval.versions["v1"], interval.versions["v2"]
    assert (dict(v2.errors), v2.assigned) == ({"unavailable": 1}, 1)
    assert (v1.requests, dict(v1.errors), v1.assigned) == (1, {}, 0)  # the retry: counted, not assigned
    assert set(interval.gates) == {"v2"} and interval.gates["v2"].errors == 1


def test_a_request_failed_over_is_one_request_of_the_run_not_two():
    """Live (isolated, a version's replica killed, 2026-12-07): 43 requests failed over to v1
    were counted as requests of both versions, so ``serve-ab runs`` listed 1,163 requests for
    1,120 answered."""
    from serve_ab.analysis.accumulate import ExperimentStats
    from serve_ab.analysis.report import build_report

    down = FakeVersion(2, fail=VersionUnavailable("v2 is down"))
    core = make_core({"v1": FakeVersion(1), "v2": down})
    core.apply(RoutingSnapshot(1, {"v1": 50.0, "v2": 50.0}))
    to_v2 = [k for k in map(str, range(200)) if core.decision.assigner.assign(k) == "v2"][:3]
    to_v1 = [k for k in map(str, range(200)) if core.decision.assigner.assign(k) == "v1"][:2]
    for key in to_v2 + to_v1:
        run(core.serve(ROW, key, None))
    run(core.serve(ROW, None, "v1"))  # pinned: one request, not a retry
    interval = core.observations.drain()
    v1, v2 = interval.versions["v1"], interval.versions["v2"]
    assert (v1.requests, v1.retried, v2.requests, v2.retried) == (6, 3, 3, 0)
    stats = ExperimentStats(["v1", "v2"], 0.0)
    stats.merge(1.0, interval)
    saved = ExperimentStats.from_state(stats.to_state(2.0))  # a restarted controller keeps it
    report, _ = build_report(experiment(), saved.snapshot(2.0), {"v1": 50.0, "v2": 50.0})
    assert report.variants["v1"].retried == 3 and report.variants["v2"].requests == 3
    assert report.run_summary()["requests"] == 6  # the six requests clients sent


def test_each_answered_request_is_told_with_the_version_that_answered_it():
    # What Ray Serve's access line then names (serve_ab.api.access_log): the fallback's name
    # for a retried request, nothing for one no version answered.
    told = []
    down = FakeVersion(2, fail=VersionUnavailable("v2 is down"))
    ids = iter(f"req-{i}" for i in range(10))
    core = RouterCore(experiment(), {"v1": FakeVersion(1), "v2": down}, FakeController(),
                      request_id=lambda: next(ids), on_answer=lambda *told_now: told.append(told_now))
    to_v2 = next(k for k in map(str, range(100)) if core.decision.assigner.assign(k) == "v2")
    run(core.serve(ROW, to_v2, None))
    run(core.serve(ROW, None, "v1"))
    with pytest.raises(VersionUnavailable):
        run(core.serve(ROW, None, "v2"))  # pinned to the version that is down: no answer
    with pytest.raises(InvalidInput):
        run(core.serve([[1.0]], None, None))  # refused before any version
    assert told == [("req-0", "v1"), ("req-1", "v1")]


def test_rows_carry_the_routing_epoch_they_were_assigned_under():
    core = make_core()
    core.apply(RoutingSnapshot(7, {"v1": 50.0, "v2": 50.0}))
    run(core.serve(ROW, "alice", None))
    core.apply(RoutingSnapshot(8, {"v1": 20.0, "v2": 80.0}))
    run(core.serve(ROW, "alice", None))
    splits = core.observations.drain().splits
    assert sorted(splits) == [7, 8]
    assert splits[8].weights_pct == {"v1": 20.0, "v2": 80.0}  # filed under the weights it was routed by


def test_a_fallback_answers_token_names_the_assigned_version_and_its_unit():
    """Intention to treat: the feedback on an answer a fallback served counts for the version
    the split assigned, in the user's bucket and the split it was assigned under."""
    down = FakeVersion(2, fail=VersionUnavailable("v2 is down"))
    core = make_core({"v1": FakeVersion(1), "v2": down}, analysis=TAKES_FEEDBACK)
    core.use_feedback_key(b"k" * 32)
    core.apply(RoutingSnapshot(3, {"v1": 50.0, "v2": 50.0}))
    key = next(k for k in map(str, range(100)) if core.decision.assigner.assign(k) == "v2")
    choice, served_by, _ = run(core.serve_choice(ROW, key, None))
    assert served_by == "v1" and choice.version == "v2"
    proven = core.verify_feedback(core.feedback_token_for("req-1", choice), "req-1")
    _, unit = core.decision.assigner.assign_unit(key)
    assert (proven.version, proven.assigned, proven.bucket, proven.epoch) == ("v2", True, unit % 10_000, 3)
    pinned = run(core.serve_choice(ROW, None, "v1"))[0]
    assert core.verify_feedback(core.feedback_token_for("req-1", pinned), "req-1").assigned is False
    keyless = run(core.serve_choice(ROW, None, None))[0]
    assert core.verify_feedback(core.feedback_token_for("req-1", keyless), "req-1").bucket is None


def test_answers_carry_a_token_only_where_feedback_can_be_sent():
    """With no feedback name (analysis.metrics or a feedback gate) POST /feedback refuses every
    report, so no token is minted; naming one, every answer carries one."""
    silent = make_core()
    silent.use_feedback_key(b"k" * 32)
    choice = run(silent.serve_choice(ROW, "u", None))[0]
    assert silent.feedback_token_for("req-1", choice) is None
    assert not silent.observations.keep_request_ids
    by_gate = make_core(weights={"v1": 100}, rollout={
        "strategy": "canary", "stable": "v1", "candidate": "v2", "steps": [{"set_weight": 10}],
        "gates": [{"metric": "feedback_rate", "name": "correct", "min_ratio_to_stable": 0.9}]})
    by_metric = make_core(analysis=TAKES_FEEDBACK)
    by_id = make_core(analysis=TAKES_FEEDBACK, feedback={"require_token": False})
    for core in (by_gate, by_metric, by_id):
        core.use_feedback_key(b"k" * 32)
    for core in (by_gate, by_metric):
        assert core.verify_feedback(core.feedback_token_for("req-1", choice), "req-1").version == choice.version
    assert by_id.feedback_token_for("req-1", choice) is None and by_id.observations.keep_request_ids


def test_a_request_id_feedback_could_not_name_is_refused_before_it_is_served():
    """Where the experiment takes feedback, an x-request-id longer than POST /feedback's
    request_id allows would get a token nobody could redeem: refused (400), nothing served or
    counted. Where it takes none, the id names nothing of serve-ab's and is served."""
    from serve_ab.errors import InvalidInput
    from serve_ab.api.schemas import MAX_REQUEST_ID_CHARS

    for length, takes_feedback in ((MAX_REQUEST_ID_CHARS + 1, True), (MAX_REQUEST_ID_CHARS, True),
                                   (MAX_REQUEST_ID_CHARS + 1, False)):
        core = make_core(**({"analysis": TAKES_FEEDBACK} if takes_feedback else {}))
        core.request_id = lambda: "r" * length
        if takes_feedback and length > MAX_REQUEST_ID_CHARS:
            with pytest.raises(InvalidInput, match=f"x-request-id is {length} characters long; at most 1024"):
                run(core.serve_choice(ROW, "u", None))
            assert core.observations.drain() is None  # nothing counted
        else:
            assert run(core.serve_choice(ROW, "u", None))[1] in ("v1", "v2")


def test_no_fallback_for_pins_model_errors_or_a_second_outage():
    broken = FakeVersion(2, fail=RuntimeError("model bug"))
    core = make_core({"v1": FakeVersion(1), "v2": broken}, weights={"v1": 0, "v2": 100})
    # A 502 naming the version (was a bare 500), still not retried on v1.
    with pytest.raises(ModelFailed, match="version 'v2' failed to answer: RuntimeError: model bug"):
        run(core.serve(ROW, "u", None))
    assert dict(core.observations.drain().versions["v2"].errors) == {"model": 1}
    down = FakeVersion(fail=VersionUnavailable("down"))
    core = make_core({"v1": FakeVersion(1), "v2": down})
    with pytest.raises(VersionUnavailable):
        run(core.serve(ROW, None, "v2"))  # pinned: answered by its version only
    both_down = make_core({"v1": FakeVersion(fail=VersionUnavailable("a")),
                           "v2": FakeVersion(fail=VersionUnavailable("b"))})
    with pytest.raises(VersionUnavailable):
        run(both_down.serve(ROW, "u", None))
    assert sum(v.requests for v in both_down.observations.drain().versions.values()) == 2


# -- mirroring ---------------------------------------------------------------------------------

def test_mirrored_copies_are_recorded_apart_and_never_answer():
    shadow = FakeVersion(3)
    core = make_core({"v1": FakeVersion(1), "v2": shadow}, weights={"v1": 100})

    async def go():
        core.apply(RoutingSnapshot(1, {"v1": 100.0, "v2": 0.0}, (), (Mirror("v2", 100.0),)))
        answers = [await core.serve(ROW, f"u{i}", None) for i in range(5)]
        await core.mirrors.drain()
        return answers

    answers = run(go())
    assert {v for v, _ in answers} == {"v1"} and shadow.calls == 5
    interval = core.observations.drain()
    assert "v2" not in interval.versions and interval.gates["v2"].requests == 5  # gates only
    assert interval.shadow["v2"].pairs == 5 and dict(interval.shadow["v2"].confusion) == {(1, 3): 5}
    # The copies count under their users, as the live requests do: a user's copies go
    # together, and the candidate's gates judge users, not copies.
    assert interval.gates["v2"].groups.requests[KEYLESS] == 0 and interval.gates["v2"].groups.requests.sum() == 5
    agreements = interval.shadow["v2"].agreement_groups
    assert agreements.counts[KEYLESS] == 0 and agreements.counts.sum() == 5 and agreements.sums.sum() == 0
    assert np.array_equal(np.flatnonzero(agreements.counts), np.flatnonzero(interval.gates["v1"].groups.requests))


def test_a_failing_mirror_is_counted_but_the_client_gets_its_answer():
    core = make_core({"v1": FakeVersion(1), "v2": FakeVersion(fail=VersionUnavailable("down"))},
                     weights={"v1": 100})

    async def go():
        core.apply(RoutingSnapshot(1, {"v1": 100.0}, (), (Mirror("v2", 100.0),)))
        answer = await core.serve(ROW, "u", None)
        await core.mirrors.drain()
        return answer

    assert run(go())[0] == "v1"
    interval = core.observations.drain()
    assert dict(interval.shadow["v2"].errors) == {"unavailable": 1}


def held_shadow() -> LoadedVersion:
    """v2 loaded in this process (colocated), every call held until HeldDigits.RELEASE."""
    cfg = experiment(versions=[{"name": "v1", "path": "a.onnx", "backend": "onnx"},
                               {"name": "v2", "backend": "python", "class": f"{PYTHON_MODELS}:HeldDigits"}])
    HeldDigits.RELEASE.set()  # its warm-up call
    version = LoadedVersion(cfg.versions[1])
    HeldDigits.RELEASE.clear()
    HeldDigits.timed_out = 0
    return version


def test_a_colocated_shadow_answers_its_copies_off_the_event_loop_holding_no_live_request():
    # On the router's event loop, the first copy held every live request behind it (live,
    # a 200 ms shadow took one client's p50 from 11 to 215 ms); the held model would have
    # waited its WAIT_S in vain, counted in timed_out.
    shadow = held_shadow()
    core = make_core({"v1": FakeVersion(1), "v2": shadow}, weights={"v1": 100})

    async def go():
        core.apply(RoutingSnapshot(1, {"v1": 100.0, "v2": 0.0}, (), (Mirror("v2", 100.0),)))
        answers = []
        for i in range(3):
            answers.append(await core.serve(ROW, f"u{i}", None))
            await asyncio.sleep(0)  # the copy's task starts
        HeldDigits.RELEASE.set()  # only now may the copies be answered
        await core.mirrors.drain()
        return answers

    answers = run(go())
    assert [version for version, _ in answers] == ["v1"] * 3 and HeldDigits.timed_out == 0
    interval = core.observations.drain()
    assert (interval.shadow["v2"].mirrored, interval.shadow["v2"].pairs, interval.shadow["v2"].dropped) == (3, 3, 0)
    assert dict(interval.shadow["v2"].confusion) == {(1, 3): 3}


def test_copies_past_those_waiting_for_a_slow_shadow_are_dropped_counted_and_said(caplog):
    shadow = held_shadow()
    core = make_core({"v1": FakeVersion(1), "v2": shadow}, weights={"v1": 100})
    sent = MAX_IN_FLIGHT + 5

    async def go():
        core.apply(RoutingSnapshot(1, {"v1": 100.0, "v2": 0.0}, (), (Mirror("v2", 100.0),)))
        for i in range(sent):
            await core.serve(ROW, f"u{i}", None)
        HeldDigits.RELEASE.set()
        await core.mirrors.drain()

    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        run(go())
    interval = core.observations.drain()
    assert (interval.shadow["v2"].mirrored, interval.shadow["v2"].dropped) == (MAX_IN_FLIGHT, 5)
    assert interval.versions["v1"].requests == sent  # every live request answered
    [warning] = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert warning.startswith("serve-ab router: 1 copy to a mirrored version dropped (since the start: 1; "
                              f"not yet answered now: v2 {MAX_IN_FLIGHT})")
    merged = IntervalAggregate()
    merged.merge(interval)
    assert merged.shadow["v2"].dropped == 5  # reaches the controller's figures


# -- observations and following the controller ------------------------------------------------

def test_an_interval_is_one_aggregate_whose_size_does_not_grow_with_requests():
    clock = FakeClock()
    buffer = ObservationBuffer(clock)
    buffer.routed_by(-1, {"v1": 50.0, "v2": 50.0})
    sizes = []
    for n in (100, 10_000):
        for i in range(n):
            buffer.served("v1", clock() - 0.002, None, np.eye(10)[:1], request_id="r", unit=i % 50,
                          assigned=True)
        assert len(buffer) == n
        interval = buffer.drain()
        assert interval.versions["v1"].latency.count == n
        assert interval.versions["v1"].latency.sketch.quantile(0.5) == pytest.approx(2.0, rel=0.01)
        sizes.append(len(pickle.dumps(interval)))
    assert buffer.drain() is None
    # 100x the requests, the same 50 users: the message is the same size.
    assert sizes[1] < sizes[0] * 1.2, sizes


def test_a_stopping_routers_last_flush_says_so_even_with_nothing_served():
    controller = FakeController()
    core = make_core(controller=controller)
    run(core.flush_once())
    assert controller.recorded == []  # idle: nothing to say
    run(core.flush_once(last=True))
    [report] = controller.recorded
    assert report.last and report.aggregate.rows == 0
    run(core.serve(ROW, "u", None))
    run(core.flush_once())
    assert not controller.recorded[-1].last


def test_an_idle_router_reports_empty_every_idle_report_s_so_that_it_is_not_counted_lost():
    from serve_ab.serving.core.router import IDLE_REPORT_S
    from serve_ab.serving.reports import STALE_S

    assert IDLE_REPORT_S < STALE_S / 2  # two may fail and it still is not taken for lost
    clock, controller = FakeClock(), FakeController()
    core = make_core(controller=controller, clock=clock)
    clock.advance(IDLE_REPORT_S - 1)
    run(core.flush_once())
    assert controller.recorded == []
    clock.advance(1)
    run(core.flush_once())
    [report] = controller.recorded
    assert report.aggregate.rows == 0 and not report.last
    run(core.serve(ROW, "u", None))
    clock.advance(IDLE_REPORT_S - 1)
    run(core.flush_once())  # traffic: reported anyway, and the idle count starts again
    clock.advance(IDLE_REPORT_S - 1)
    run(core.flush_once())
    assert len(controller.recorded) == 2


def test_flush_sends_and_a_controller_outage_sends_the_interval_again_first_and_late():
    controller = FakeController()
    core = make_core(controller=controller)
    run(core.serve(ROW, "u", None))
    run(core.flush_once())
    assert len(controller.recorded) == 1 and controller.recorded[0].aggregate.rows == 1
    controller.fail = True
    run(core.serve(ROW, "u", None))
    run(core.flush_once())  # logged, not raised: the data path never waits on the control path
    assert len(controller.recorded) == 1 and core.ledger.kept() == (1, 0)  # kept, not dropped
    controller.fail = False
    run(core.serve(ROW, "u", None))
    run(core.flush_once())
    late, now = controller.recorded[1:]
    assert [(r.seq, r.aggregate.rows, r.delayed_intervals) for r in (late, now)] == [(2, 1, 1), (3, 1, 0)]


@pytest.mark.parametrize("interval_s", [0.25, 1.0, 5.0])
def test_reports_go_once_per_report_interval_and_none_while_idle(interval_s):
    controller = FakeController()
    slept_s: list[float] = []

    async def sleep(delay_s: float) -> None:
        slept_s.append(delay_s)
        await asyncio.sleep(0)

    core = RouterCore(experiment(controller={"report_interval_s": interval_s}),
                      {"v1": FakeVersion(1), "v2": FakeVersion(2)}, controller,
                      request_id=lambda: "req-1", clock=FakeClock(), sleep=sleep)

    async def scenario():
        await core.serve(ROW, "u", None)
        flushing = asyncio.get_running_loop().create_task(core.flush())
        for _ in range(20):  # the first interval's report, then idle intervals: nothing to send
            await asyncio.sleep(0)
        flushing.cancel()

    run(scenario())
    assert len(slept_s) > 3 and set(slept_s) == {interval_s}
    assert len(controller.recorded) == 1 and controller.recorded[0].aggregate.rows == 1


def test_the_follower_applies_weights_and_retires_versions():
    clock = FakeClock()
    controller = FakeController(RoutingSnapshot(0, {"v1": 50.0, "v2": 50.0}))
    core = make_core(controller=controller, clock=clock)

    async def go():
        core.apply(await controller.wait_for_update(-1))
        follower = asyncio.get_running_loop().create_task(core.follow())
        controller.push(RoutingSnapshot(1, {"v1": 100.0, "v2": 0.0}, ("v2",)))
        for _ in range(5):
            await asyncio.sleep(0)
        follower.cancel()

    run(go())
    assert core.epoch == 1 and list(core.versions) == ["v1"]
    assert {run(core.serve(ROW, f"u{i}", None))[0] for i in range(50)} == {"v1"}
    with pytest.raises(VersionNotServed):
        run(core.serve(ROW, None, "v2"))


def test_another_configs_routing_is_one_clear_line_applies_nothing_and_what_follows_still_counts(caplog):
    """A redeploy that adds a version: an old replica (v1, v2) meets the new config's controller,
    whose weights list v3 (a live audit, 2026-12-07: "controller unreachable" with a traceback,
    the snapshot's epoch and mirrors taken but not its weights, so the rows served under that
    epoch entered no split)."""
    clock = FakeClock()
    controller = FakeController(RoutingSnapshot(0, {"v1": 50.0, "v2": 50.0}))
    core = make_core(controller=controller, clock=clock)

    async def go():
        core.apply(await controller.wait_for_update(-1))
        follower = asyncio.get_running_loop().create_task(core.follow())
        controller.push(RoutingSnapshot(1, {"v1": 40.0, "v3": 30.0, "v2": 30.0}, (), (Mirror("v3", 50.0),)))
        for _ in range(5):
            await asyncio.sleep(0)
        for i in range(20):
            await core.serve(ROW, f"u{i}", None)
        assert core.epoch == 1 and core.mirrors.mirrors == ()
        assert core.decision.assigner.table.weights_pct() == {"v1": 50.0, "v2": 50.0}
        controller.push(RoutingSnapshot(2, {"v1": 100.0, "v2": 0.0}))  # its own controller, later
        for _ in range(5):
            await asyncio.sleep(0)
        follower.cancel()

    with caplog.at_level("INFO", logger="ray.serve"):
        run(go())
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and not lines[0].exc_info
    assert "does not fit this replica's versions ['v1', 'v2']" in lines[0].getMessage()
    assert "another config" in lines[0].getMessage() and "keeping weights {'v1': 50.0, 'v2': 50.0}" in lines[0].getMessage()
    assert core.epoch == 2 and core.decision.assigner.table.weights_pct() == {"v1": 100.0, "v2": 0.0}
    # The change to epoch 2's weights reported at once what epoch 1 served.
    splits = controller.recorded[0].aggregate.splits
    assert splits[1].units.size() == 20  # the 20 users served under epoch 1, by the weights kept
    assert splits[1].weights_pct == {"v1": 50.0, "v2": 50.0}


def test_another_configs_routing_at_the_epoch_already_held_is_still_said(caplog):
    """Every controller counts epochs from 0: an old replica that holds epoch 0 of the old
    controller meets epoch 0 of the new one, whose weights do not fit. On the parent the line
    was keyed on the epoch alone, so this, the usual redeploy of an A/B test, said nothing."""
    core = make_core()
    core.apply(RoutingSnapshot(0, {"v1": 50.0, "v2": 50.0}))
    with caplog.at_level("INFO", logger="ray.serve"):
        assert core.apply(RoutingSnapshot(0, {"v1": 40.0, "v3": 30.0, "v2": 30.0})) is False
        assert core.apply(RoutingSnapshot(0, {"v1": 40.0, "v3": 30.0, "v2": 30.0})) is False  # the long poll again
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "does not fit this replica's versions ['v1', 'v2']" in lines[0]
    assert core.decision.assigner.table.weights_pct() == {"v1": 50.0, "v2": 50.0}


def test_a_change_of_weights_reports_what_the_old_weights_served_at_once():
    controller = FakeController(RoutingSnapshot(0, {"v1": 50.0, "v2": 50.0}))
    core = make_core(controller=controller)

    async def go():
        core.apply(await controller.wait_for_update(-1))
        follower = asyncio.get_running_loop().create_task(core.follow())
        for i in range(20):
            await core.serve(ROW, f"u{i}", None)
        controller.push(RoutingSnapshot(1, {"v1": 50.0, "v2": 50.0}))  # same weights: nothing sent
        for _ in range(5):
            await asyncio.sleep(0)
        assert controller.recorded == []
        controller.push(RoutingSnapshot(2, {"v1": 80.0, "v2": 20.0}))
        for _ in range(5):
            await asyncio.sleep(0)
        follower.cancel()

    run(go())  # no flush loop runs: only the change of weights sent this report
    assert len(controller.recorded) == 1 and controller.recorded[0].aggregate.rows == 20
    assert len(core.observations) == 0


def test_a_slow_report_at_a_change_of_weights_never_holds_up_the_next_change():
    class SlowToRecord(FakeController):
        async def record(self, report):
            await asyncio.Event().wait()  # never answers

    controller = SlowToRecord(RoutingSnapshot(0, {"v1": 50.0, "v2": 50.0}))
    core = make_core(controller=controller)

    async def go():
        core.apply(await controller.wait_for_update(-1))
        follower = asyncio.get_running_loop().create_task(core.follow())
        await core.serve(ROW, "u", None)
        controller.push(RoutingSnapshot(1, {"v1": 80.0, "v2": 20.0}))  # its report hangs
        for _ in range(5):
            await asyncio.sleep(0)
        controller.push(RoutingSnapshot(2, {"v1": 100.0, "v2": 0.0}))  # the rollback
        for _ in range(5):
            await asyncio.sleep(0)
        follower.cancel()
        return core.epoch

    assert run(go()) == 2


def test_the_follower_keeps_the_last_weights_while_the_controller_is_away():
    clock = FakeClock()
    controller = FakeController(fail=True)
    core = make_core(controller=controller, clock=clock, weights={"v1": 100})

    async def go():
        follower = asyncio.get_running_loop().create_task(core.follow())
        for _ in range(10):
            await asyncio.sleep(0)
        follower.cancel()

    run(go())
    assert clock() > 1_000_000.0  # it retried on the fake clock, never on the wall clock
    assert run(core.serve(ROW, "u", None))[0] == "v1"


def test_a_controller_restart_is_one_line_in_the_routers_log_not_a_traceback_a_retry(caplog):
    from serve_ab.errors import ControllerUnavailable

    clock = FakeClock()
    controller = FakeController(RoutingSnapshot(1, {"v1": 100.0, "v2": 0.0}))
    core = make_core(controller=controller, clock=clock, weights={"v1": 100})
    calls = {"n": 0}
    answer = controller.wait_for_update

    async def restarting(known_epoch, timeout_s=10.0):
        calls["n"] += 1
        if calls["n"] <= 5:
            raise ControllerUnavailable("the controller cannot be reached now (restarting)")
        return await answer(known_epoch, timeout_s)

    controller.wait_for_update = restarting

    async def go():
        follower = asyncio.get_running_loop().create_task(core.follow())
        for _ in range(20):
            await asyncio.sleep(0)
        follower.cancel()

    with caplog.at_level("INFO", logger="ray.serve"):
        run(go())
    lines = [r for r in caplog.records if "controller" in r.getMessage()]
    assert [r.getMessage() for r in lines] == [
        "serve-ab router: controller unreachable (the controller cannot be reached now (restarting)); keeping weights",
        "serve-ab router: controller reachable again after 2.5s"]
    assert not lines[0].exc_info


# -- the watchdog of isolated versions ---------------------------------------------------------

class FakeCall:
    """A call in flight that the test resolves, fails, or leaves hanging."""

    def __init__(self):
        self.future = asyncio.get_running_loop().create_future()
        self.cancelled = False

    def __await__(self):
        return self.future.__await__()

    def cancel(self):
        self.cancelled = True
        if not self.future.done():
            self.future.set_exception(RuntimeError("cancelled by its caller"))


class FakeCalls:
    """An isolated deployment whose replicas answer, stall, or come back."""

    name = "deployment 'version-v2'"
    call_class = FakeCall  # what a call is (RayLikeCalls: one that ends as Ray's cancelled calls do)

    def __init__(self):
        self.stalled = False
        self.predicts: list[FakeCall] = []
        self.probes: list[FakeCall] = []

    def predict(self, batch):
        call = self.call_class()
        self.predicts.append(call)
        if not self.stalled:
            call.future.set_result(np.eye(10, dtype=np.float32)[:len(batch)])
        return call

    def describe(self):
        call = self.call_class()
        self.probes.append(call)
        if not self.stalled:
            call.future.set_result((DIGITS_INPUT, DIGITS_OUTPUT))
        return call


def test_watchdog_down_probe_recovered_cycle_on_a_fake_clock():
    clock = FakeClock()
    calls = FakeCalls()
    settings = WatchdogSettings(interval_s=0.25, stall_s=1.0, probe_timeout_s=2.0, idle_exit_s=30.0)

    async def go():
        version = WatchedVersion("v2", calls, lambda err: False, settings, sleep=clock.sleep, clock=clock)
        batch = np.zeros((1, 64), np.float32)
        await version.predict(batch)  # starts the watchdog
        await asyncio.sleep(0)
        await version.predict(batch)  # seen answering while watched: may now be declared down
        calls.stalled = True
        waiting = asyncio.get_running_loop().create_task(version.predict(batch))
        started = clock()
        for _ in range(10_000):
            if version.down_reason is not None:
                break
            await asyncio.sleep(0)
        down_after_s = clock() - started
        with pytest.raises(VersionUnavailable, match="no call completed for"):
            await waiting  # the stalled call was cancelled and failed over, not left waiting
        with pytest.raises(VersionUnavailable):
            await version.predict(batch)  # new calls fail at once while down
        calls.stalled = False
        for _ in range(10_000):
            if version.down_reason is None:
                break
            await asyncio.sleep(0)
        answer = await version.predict(batch)
        return down_after_s, answer

    down_after_s, answer = run(go())
    # Stalled for stall_s, then a probe that timed out after probe_timeout_s: all fake time.
    assert settings.stall_s <= down_after_s <= settings.stall_s + settings.probe_timeout_s + 2 * settings.interval_s
    assert answer.shape == (1, 10)
    assert calls.predicts[2].cancelled


def test_a_version_never_seen_answering_is_not_declared_down():
    clock = FakeClock()
    calls = FakeCalls()
    calls.stalled = True  # e.g. scaling up from zero replicas

    async def go():
        version = WatchedVersion("v2", calls, lambda err: False, sleep=clock.sleep, clock=clock)
        waiting = asyncio.get_running_loop().create_task(version.predict(np.zeros((1, 64), np.float32)))
        for _ in range(200):
            await asyncio.sleep(0)
        assert version.down_reason is None and not waiting.done()
        calls.predicts[0].future.set_result(np.eye(10)[:1])
        return await waiting

    assert run(go()).shape == (1, 10)


class RequestCancelled(Exception):
    """Ray Serve's RequestCancelledError: what awaiting a cancelled DeploymentResponse raises."""


class RayLikeCall(FakeCall):
    """A call that ends as Ray Serve's DeploymentResponse does once it was cancelled
    (``__await__`` in ray/serve/handle.py): with RequestCancelledError, an exception, rather
    than as a cancelled task."""

    def __await__(self):
        try:
            return (yield from self.future.__await__())
        except asyncio.CancelledError:
            if self.cancelled:
                raise RequestCancelled("request was cancelled") from None
            raise

    def cancel(self):
        self.cancelled = True
        self.future.cancel()


class RayLikeCalls(FakeCalls):
    call_class = RayLikeCall


@pytest.mark.parametrize("calls_class", ["FakeCalls", "RayLikeCalls"])
def test_a_call_whose_caller_gave_up_is_no_sign_of_life(calls_class):
    # Live (2 cores under load, 2026-12-07): the stable v1 scaled to zero replicas (min 0) while
    # the app deployed; its new replica took 24 s to start, the first callers' clients timed out
    # at 10 s, and their cancelled calls counted as v1 "seen answering": the next calls stalled
    # 1 s, no replica answered the probe, and v1 (nowhere to fail over to) answered 298 requests
    # 503 for 14 s, until its replica had started and served.
    clock = FakeClock()
    calls = {"FakeCalls": FakeCalls, "RayLikeCalls": RayLikeCalls}[calls_class]()
    calls.stalled = True  # scaling up from zero replicas
    settings = WatchdogSettings(interval_s=0.25, stall_s=1.0, probe_timeout_s=2.0, idle_exit_s=30.0)
    batch = np.zeros((1, 64), np.float32)

    async def go():
        loop = asyncio.get_running_loop()
        version = WatchedVersion("v1", calls, lambda err: False, settings, sleep=clock.sleep, clock=clock)
        first = loop.create_task(version.predict(batch))
        await asyncio.sleep(0)
        if calls_class == "RayLikeCalls":
            calls.predicts[0].cancel()  # Ray Serve cancels a cancelled request's own calls too
        first.cancel()  # its client gave up
        with pytest.raises((asyncio.CancelledError, RequestCancelled)):
            await first
        waiting = loop.create_task(version.predict(batch))
        started_s = clock()
        # Past stall_s and a probe's timeout, many times over: still waiting for the replica.
        while clock() - started_s < 10 * (settings.stall_s + settings.probe_timeout_s):
            await clock.sleep(settings.interval_s)
        assert version.down_reason is None and not waiting.done()
        calls.predicts[1].future.set_result(np.eye(10, dtype=np.float32)[:1])
        return await waiting

    assert run(go()).shape == (1, 10)


class TaskOfPython310(asyncio.Task):
    """asyncio's task as Python 3.10 (pyproject's requires-python) has it: without 3.11's
    cancelling() and uncancel()."""

    def __getattribute__(self, name):
        if name in ("cancelling", "uncancel"):
            raise AttributeError(f"'_asyncio.Task' object has no attribute {name!r}")
        return super().__getattribute__(name)


def test_a_failed_call_is_read_as_such_on_python_3_10():
    # On Python 3.10 every failed call of an isolated version raised AttributeError
    # ('_asyncio.Task' object has no attribute 'cancelling') from the watchdog's check for a
    # cancelled caller: a dead replica's call was a 502 never served by the fallback, and a
    # model's error was reported as that AttributeError.
    class ReplicaDied(Exception):
        pass

    calls = FakeCalls()
    calls.stalled = True  # each call ends as the test says
    settings = WatchdogSettings(interval_s=0.25, stall_s=1.0, probe_timeout_s=2.0, idle_exit_s=30.0)
    clock = FakeClock()
    batch = np.zeros((1, 64), np.float32)

    async def go():
        loop = asyncio.get_running_loop()
        loop.set_task_factory(lambda loop, coro, **kwargs: TaskOfPython310(coro, loop=loop, **kwargs))
        return await loop.create_task(serve_two_calls())  # a request's task, as 3.10 has it

    async def serve_two_calls():
        loop = asyncio.get_running_loop()
        version = WatchedVersion("v1", calls, lambda err: isinstance(err, ReplicaDied), settings,
                                 sleep=clock.sleep, clock=clock)

        async def fails_with(err):
            call = loop.create_task(version.predict(batch))
            await asyncio.sleep(0)
            calls.predicts[-1].future.set_exception(err)
            with pytest.raises(BaseException) as raised:
                await call
            return raised.value

        assert isinstance(asyncio.current_task(), TaskOfPython310)
        died = await fails_with(ReplicaDied("the actor died"))
        model = await fails_with(ValueError("the model's own error"))
        return died, model

    died, model = run(go())
    assert isinstance(died, VersionUnavailable), died  # served by the fallback
    assert isinstance(model, ValueError) and str(model) == "the model's own error"


def test_a_probe_that_timed_out_leaves_no_unread_error_for_asyncio_to_log():
    # Live (a version's model stalled 30 s, 2026-12-07): the router's stderr held 13
    # "Task exception was never retrieved ... RequestCancelledError" tracebacks, one per probe
    # the watchdog gave up on, read by nobody since the probe's task ended after the check.
    clock = FakeClock()
    calls = RayLikeCalls()
    unread: list[str] = []

    async def go():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: unread.append(
            f"{context['message']}: {context.get('exception')!r}"))
        version = WatchedVersion("v2", calls, lambda err: False, WatchdogSettings(), sleep=clock.sleep, clock=clock)
        batch = np.zeros((1, 64), np.float32)
        await version.predict(batch)  # starts the watchdog
        await asyncio.sleep(0)
        await version.predict(batch)  # seen answering while watched
        calls.stalled = True
        waiting = loop.create_task(version.predict(batch))
        for _ in range(10_000):
            if version.down_reason is not None:
                break
            await asyncio.sleep(0)
        with pytest.raises(VersionUnavailable):
            await waiting
        for _ in range(20):  # the cancelled probes end
            await asyncio.sleep(0)
        gc.collect()  # an ended task whose exception nobody read is reported as it is collected
        await asyncio.sleep(0)
        return version.down_reason

    assert run(go()) is not None
    assert any(p.cancelled for p in calls.probes)  # probes timed out and were cancelled
    assert unread == []


def test_replica_failures_become_version_unavailable_and_request_errors_pass_through():
    clock = FakeClock()

    class Dead(Exception):
        pass

    class Failing(FakeCalls):
        def __init__(self, err):
            super().__init__()
            self.err = err

        def predict(self, batch):
            call = FakeCall()
            call.future.set_exception(self.err)
            return call

    async def go(err):
        version = WatchedVersion("v2", Failing(err), lambda e: isinstance(e, Dead), sleep=clock.sleep, clock=clock)
        await version.predict(np.zeros((1, 64), np.float32))

    with pytest.raises(VersionUnavailable, match="could not serve the request: Dead"):
        run(go(Dead()))
    with pytest.raises(InvalidInput):
        run(go(InvalidInput("bad shape")))


def test_a_non_finite_answer_is_a_version_error_served_elsewhere():
    class NaNVersion(FakeVersion):
        async def predict(self, batch):
            out = await super().predict(batch)
            out[:, 0] = np.nan
            return out

    core = make_core({"v1": FakeVersion(1), "v2": NaNVersion(2)})
    key = next(k for k in map(str, range(100)) if core.decision.assigner.assign(k) == "v2")
    version, outputs = run(core.serve(ROW, key, None))
    assert version == "v1" and np.isfinite(outputs).all()
    interval = core.observations.drain()
    assert dict(interval.versions["v2"].errors) == {"output": 1} and interval.versions["v1"].requests == 1
    with pytest.raises(BadOutput, match="NaN or infinity"):
        run(core.serve(ROW, None, "v2"))  # pinned: no fallback, a 502 over HTTP


class Misshapen(FakeVersion):
    """A version answering ``shape(rows)`` instead of one row of 10 per input row."""

    def __init__(self, shape):
        super().__init__(2)
        self.shape = shape

    async def predict(self, batch):
        return np.zeros(self.shape(len(batch)), dtype=np.float32)


@pytest.mark.parametrize("shape, message", [
    (lambda rows: (rows + 1, 10), "answered 3 rows for 2 input rows"),
    (lambda rows: (rows - 1, 10), "answered 1 rows for 2 input rows"),
    (lambda rows: (rows, 3), r"answered shape \[2, 3\], but declares \[-1, 10\]"),
    (lambda rows: (), "answered ndarray, not an array of one row per input row"),
])
def test_outputs_not_as_declared_are_a_version_error_served_elsewhere(shape, message):
    """Before, these were served as 200s: a client got a shape it was not promised, or (with
    batching) another request's rows."""
    core = make_core({"v1": FakeVersion(1), "v2": Misshapen(shape)})
    two_rows = ROW * 2
    key = next(k for k in map(str, range(100)) if core.decision.assigner.assign(k) == "v2")
    version, outputs = run(core.serve(two_rows, key, None))
    assert version == "v1" and outputs.shape == (2, 10)
    assert dict(core.observations.drain().versions["v2"].errors) == {"output": 1}
    with pytest.raises(BadOutput, match=f"version 'v2' {message}"):
        run(core.serve(two_rows, None, "v2"))


def test_a_dict_answer_from_a_one_output_model_is_a_version_error():
    class Named(FakeVersion):
        async def predict(self, batch):
            return {"wrong": await super().predict(batch)}

    core = make_core({"v1": FakeVersion(1), "v2": Named(2)})
    with pytest.raises(BadOutput, match=r"answered \{name: array\} for outputs \['wrong'\], but this model has one "
                                        r"output, 'probabilities'"):
        run(core.serve(ROW, None, "v2"))


def test_a_mirrored_copy_answering_another_shape_is_its_error_not_a_pair():
    core = make_core({"v1": FakeVersion(1), "v2": Misshapen(lambda rows: (rows, 3))}, weights={"v1": 100})

    async def go():
        core.apply(RoutingSnapshot(1, {"v1": 100.0, "v2": 0.0}, (), (Mirror("v2", 100.0),)))
        await core.serve(ROW, "u1", None)
        await core.mirrors.drain()

    run(go())
    interval = core.observations.drain()
    assert interval.gates["v2"].requests == 1 and interval.gates["v2"].errors == 1


def test_a_static_ab_tests_fallback_is_its_control_not_the_next_version_listed():
    """The audit's case: weights v1 40 / v3 30 / v4 30, v4 answering NaN, its users were
    served by v3; they go to the control (analysis.control, else the first version)."""
    configs = [{"name": n, "path": f"{n}.onnx", "backend": "onnx"} for n in ("v1", "v3", "v4")]
    fakes = {"v1": FakeVersion(1), "v3": FakeVersion(3), "v4": FakeVersion(fail=BadOutput("NaN"))}
    for changes, control in (({}, "v1"), ({"analysis": {"control": "v3"}}, "v3")):
        core = RouterCore(experiment(versions=configs, weights={"v1": 40, "v3": 30, "v4": 30}, **changes),
                          dict(fakes), FakeController(), request_id=lambda: "req-1", clock=FakeClock())
        key = next(k for k in map(str, range(200)) if core.decision.assigner.assign(k) == "v4")
        assert run(core.serve(ROW, key, None))[0] == control


def test_a_width_only_seen_once_is_not_enforced():
    """A python model that declares no outputs is described by one call's answer; a width
    that varies by input (padded token ids, top-k) must not be refused as a bad answer."""
    from serve_ab.backends.base import OutputSpec

    seen = OutputSpec("output", np.dtype("float32"), (-1, 10), declared=False)
    check_outputs("v1", np.zeros((2, 12), np.float32), 2, seen)
    with pytest.raises(BadOutput, match="answered 3 rows for 2 input rows"):
        check_outputs("v1", np.zeros((3, 12), np.float32), 2, seen)  # rows are always checked
    with pytest.raises(BadOutput, match=r"answered shape \[2, 12\], but declares \[-1, 10\]"):
        check_outputs("v1", np.zeros((2, 12), np.float32), 2, OutputSpec("output", np.dtype("float32"), (-1, 10)))


def test_an_isolated_shadows_copies_are_capped_too_and_the_tail_of_a_burst_is_said(caplog, monkeypatch):
    # 1,000 copies could wait for an isolated shadow answering 4 at a time (live: 825 waited
    # out call_timeout_s and counted as its errors); and drops after the first warning of a
    # minute were never said when no drop followed.
    from serve_ab.serving.core import mirror

    class Held(FakeVersion):
        async def predict(self, batch):
            await release.wait()
            return await super().predict(batch)

    release = None
    core = make_core({"v1": FakeVersion(1), "v2": Held(3)}, weights={"v1": 100})
    now_s = iter([0.0, 1.0, 61.0, 62.0, 63.0])  # the drops, the flush, the flush at the end
    monkeypatch.setattr(mirror, "_monotonic", lambda: next(now_s))

    async def go():
        nonlocal release
        release = asyncio.Event()
        core.apply(RoutingSnapshot(1, {"v1": 100.0, "v2": 0.0}, (), (Mirror("v2", 100.0),)))
        for i in range(MAX_IN_FLIGHT + 2):  # two dropped: one said at once, one within the minute
            await core.serve(ROW, f"u{i}", None)
        await core.flush_once()  # a minute on: the second said
        release.set()
        await core.mirrors.drain()

    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        run(go())
    said = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert [line.split(" (")[0] for line in said] == ["serve-ab router: 1 copy to a mirrored version dropped"] * 2
    assert "since the start: 2" in said[1]
    assert core.mirrors.dropped == 2


def test_an_isolated_versions_copies_may_fill_what_its_replicas_take_at_once():
    # 32 copies for any isolated version dropped copies to a fast shadow with room to spare
    # (a review: 340 of 500 at 50 ms a copy); its cap is its replicas' capacity, at least 32.
    cfg = experiment(placement="isolated", versions=[
        {"name": "v1", "path": "a.onnx", "backend": "onnx"},
        {"name": "v2", "path": "b.onnx", "backend": "onnx",
         "deployment": {"num_replicas": 3, "max_ongoing_requests": 40}},
        {"name": "v3", "path": "c.onnx", "backend": "onnx",
         "deployment": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 2}, "max_ongoing_requests": 4}}],
        weights={"v1": 100})
    assert copy_caps(cfg) == {"v1": 256, "v2": 120, "v3": 8}
    assert copy_caps(experiment()) == {}  # colocated: the copy thread's MAX_IN_FLIGHT


@pytest.mark.parametrize("scales_to_zero", [True, False])
def test_a_version_that_may_scale_to_zero_is_waited_for_after_an_idle_moment(scales_to_zero):
    # Live (quiet machine, 2026-12-07): v1 (autoscaling, min_replicas 0) answered one call and
    # Ray scaled it to zero 0.6 s later; the load that followed waited for its new replica, and
    # v1, taken as seen answering, was marked down after 3 s: 598 of 1,354 requests got a 503.
    clock = FakeClock()
    calls = FakeCalls()
    settings = WatchdogSettings(interval_s=0.25, stall_s=1.0, probe_timeout_s=2.0, idle_exit_s=30.0,
                                scales_to_zero=scales_to_zero)
    batch = np.zeros((1, 64), np.float32)

    async def go():
        version = WatchedVersion("v1", calls, lambda err: False, settings, sleep=clock.sleep, clock=clock)
        await version.predict(batch)  # starts the watchdog
        await asyncio.sleep(0)
        await version.predict(batch)  # answered while watched
        idle_until_s = clock() + 0.6  # nothing in flight: Ray takes its last replica away
        while clock() < idle_until_s:
            await clock.sleep(settings.interval_s)
        calls.stalled = True  # the next calls wait for a replica to start
        waiting = asyncio.get_running_loop().create_task(version.predict(batch))
        started_s = clock()
        while clock() - started_s < 10 * (settings.stall_s + settings.probe_timeout_s) and not waiting.done():
            await clock.sleep(settings.interval_s)
        if not scales_to_zero:  # a version that keeps a replica: its stall is an outage
            with pytest.raises(VersionUnavailable, match="no call completed for"):
                await waiting
            return None
        assert version.down_reason is None and not waiting.done()
        calls.predicts[-1].future.set_result(np.eye(10, dtype=np.float32)[:1])
        return await waiting

    answer = run(go())
    assert (answer is not None and answer.shape == (1, 10)) if scales_to_zero else answer is None


def test_only_a_version_whose_autoscaling_may_reach_zero_replicas_is_taken_to_scale_to_zero():
    def settings(**deployment):
        cfg = parse_experiment({
            "model": "digits", "placement": "isolated", "isolation": {"call_timeout_s": 7},
            "versions": [{"name": "v1", "path": "a.onnx", "backend": "onnx", **deployment},
                         {"name": "v2", "path": "b.onnx", "backend": "onnx"}],
            "weights": {"v1": 50, "v2": 50},
        })
        return WatchdogSettings.of(cfg, cfg.versions[0])

    assert settings(deployment={"autoscaling_config": {"min_replicas": 0, "max_replicas": 2}}).scales_to_zero
    assert not settings(deployment={"autoscaling_config": {"min_replicas": 1, "max_replicas": 2}}).scales_to_zero
    assert not settings(deployment={"num_replicas": 1}).scales_to_zero
    assert not settings().scales_to_zero and settings().call_timeout_s == 7


def test_a_version_with_nowhere_to_fail_over_to_is_never_held_down(caplog):
    # Live (2026-12-07, the autoscaling test on a quiet machine): the canary's stable v1 at
    # 100 %, scaled to zero by Ray while calls flowed, was marked down as its new replica
    # started: 585 of 1,570 requests got a 503 where plain Ray Serve's callers would have waited.
    clock = FakeClock()
    calls = FakeCalls()
    settings = WatchdogSettings(interval_s=0.25, stall_s=1.0, probe_timeout_s=2.0, idle_exit_s=30.0)
    batch = np.zeros((1, 64), np.float32)
    fallback = {"there": False}

    async def go():
        version = WatchedVersion("v1", calls, lambda err: False, settings, sleep=clock.sleep, clock=clock)
        version.has_fallback = lambda: fallback["there"]
        await version.predict(batch)  # starts the watchdog
        await asyncio.sleep(0)
        await version.predict(batch)  # seen answering while watched
        calls.stalled = True
        loop = asyncio.get_running_loop()
        waiting = loop.create_task(version.predict(batch))
        started_s = clock()
        while clock() - started_s < 10 * (settings.stall_s + settings.probe_timeout_s):
            await clock.sleep(settings.interval_s)
        assert version.down_reason is None and not waiting.done()  # it waits, as on plain Ray Serve
        fallback["there"] = True  # the weights moved: another version can serve for it
        while version.down_reason is None and clock() - started_s < 60:
            await clock.sleep(settings.interval_s)
        assert version.down_reason is not None
        with pytest.raises(VersionUnavailable):
            await waiting  # cut, for the router to serve on the other version
        fallback["there"] = False  # e.g. promoted to 100 % while down: its calls wait again
        while version.down_reason is not None and clock() - started_s < 120:
            await clock.sleep(settings.interval_s)
        assert version.down_reason is None
        calls.stalled = False
        return await version.predict(batch)

    assert run(go()).shape == (1, 10)
    assert "no longer held down: no other version can serve its requests" in caplog.text


def test_the_router_tells_each_watched_version_whether_another_can_serve_for_it():
    settings = WatchdogSettings()
    versions = {name: WatchedVersion(name, FakeCalls(), lambda err: False, settings) for name in ("v1", "v2")}
    core = make_core(versions, weights={"v1": 100, "v2": 0},
                     rollout={"strategy": "canary", "stable": "v1", "candidate": "v2", "steps": [{"set_weight": 20}]})
    core._agreed.update(versions)  # both answered describe() with the experiment's interface
    assert not versions["v1"].has_fallback()  # the stable at 100 %: nowhere else to go
    assert versions["v2"].has_fallback()  # the candidate falls back on the stable
    core.decision.assigner.set_weights({"v1": 80, "v2": 20})
    assert versions["v1"].has_fallback()


def test_a_version_whose_fallback_is_held_down_is_not_held_down_too():
    # An A/B test's two isolated versions stall together (a lost node; both scaled to zero by
    # Ray while calls flowed): each was the other's fallback, both were held down, and every
    # request got a 503, the retry on the other version failing at once. The first held down
    # is served on the other, whose calls wait for its replicas.
    clock = FakeClock()
    settings = WatchdogSettings(interval_s=0.25, stall_s=1.0, probe_timeout_s=2.0, idle_exit_s=30.0)
    batch = np.zeros((1, 64), np.float32)
    calls = {name: FakeCalls() for name in ("v1", "v2")}

    async def go():
        versions = {name: WatchedVersion(name, calls[name], lambda err: False, settings,
                                         sleep=clock.sleep, clock=clock) for name in calls}
        core = make_core(versions, clock=clock)  # 50/50, v1 the control
        core._agreed.update(versions)
        for version in versions.values():
            await version.predict(batch)  # starts the watchdog
        await asyncio.sleep(0)
        for version in versions.values():
            await version.predict(batch)  # seen answering while watched
        for fake in calls.values():
            fake.stalled = True
        loop = asyncio.get_running_loop()
        waiting = {name: loop.create_task(version.predict(batch)) for name, version in versions.items()}
        started_s = clock()
        while clock() - started_s < 10 * (settings.stall_s + settings.probe_timeout_s):
            await clock.sleep(settings.interval_s)
        down = sorted(name for name, version in versions.items() if version.down_reason is not None)
        assert len(down) == 1, down  # not both: the one held down is served on the other
        up = "v2" if down == ["v1"] else "v1"
        assert not waiting[up].done() and not versions[up].has_fallback()  # its calls wait
        assert versions[down[0]].has_fallback()
        for fake in calls.values():
            fake.stalled = False
        waiting[up].cancel()
        while versions[down[0]].down_reason is not None and clock() - started_s < 120:
            await clock.sleep(settings.interval_s)
        return [(await version.predict(batch)).shape for version in versions.values()]

    assert run(go()) == [(1, 10), (1, 10)]
