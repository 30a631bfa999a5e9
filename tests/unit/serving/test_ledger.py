"""Nothing counted is lost when the controller dies between two saves, and nothing is
counted twice: a real RouterCore reports to a real ControllerCore, which is killed (a new one
starts from its store, as Ray Serve starts a replica after a kill -9) while reports and
feedback it has not saved are in flight. No Ray is started."""

from __future__ import annotations

import asyncio

import pytest

from serve_ab.config import parse_experiment
from serve_ab.errors import ControllerUnavailable, Forbidden, ServeAbError
from serve_ab.serving.controller import ControllerCore
from serve_ab.serving.core.ledger import MAX_KEPT_REPORTS, FeedbackCall, ReportLedger
from serve_ab.serving.core.messages import IntervalReport, NotCounted, Refused, ReportAnswer, RoutingSnapshot
from serve_ab.serving.core.router import RouterCore
from serve_ab.store.state import MemoryStateStore
from tests.support.fakes import FakeClock, FakeVersion
from tests.support.reports import ServedRequest, report_of

ROW = [[0.0] * 64]


def experiment(weights=None):
    return parse_experiment({
        "model": "digits",
        "versions": [{"name": "v1", "path": "a.onnx", "backend": "onnx"},
                     {"name": "v2", "path": "b.onnx", "backend": "onnx"}],
        "weights": weights or {"v1": 50, "v2": 50},
        "assignment": {"key": "json", "field": "user_id", "salt": "unit"},
        "analysis": {"metrics": [{"name": "correct", "kind": "conversion"}]},
    })


class KillableController:
    """The controller deployment's calls over a ControllerCore that :meth:`kill` replaces by a
    new one from the same store, losing whatever was not saved; ``lose_answers`` makes the
    next report calls fail after the controller merged them (an answer lost on the way)."""

    def __init__(self, clock: FakeClock) -> None:
        self.store, self.clock = MemoryStateStore(), clock
        self.core = ControllerCore(experiment(), self.store, clock)
        self.lose_answers = 0
        self.down = False
        self._polls: list[asyncio.Future] = []
        self.feedback_away = False  # feedback calls fail as Ray's errors reach the router

    def kill(self) -> None:
        self.core = ControllerCore(experiment(), self.store, self.clock)
        for poll in self._polls:  # a long poll to the dead replica fails, as Ray's call does
            if not poll.done():
                poll.set_exception(ConnectionError("controller died"))
        self._polls = []

    async def wait_for_update(self, known_epoch: int) -> RoutingSnapshot:
        """The routing long poll: the snapshot at once if its epoch is new, else a wait that
        only a kill ends."""
        if self.down:
            raise ConnectionError("controller restarting")
        snapshot = self.core.snapshot()
        if snapshot.epoch != known_epoch:
            return snapshot
        self._polls.append(poll := asyncio.get_running_loop().create_future())
        return await poll

    async def record(self, report: IntervalReport) -> ReportAnswer:
        if self.down:
            raise ConnectionError("controller restarting")
        answer, _ = self.core.receive(report)
        if self.lose_answers:
            self.lose_answers -= 1
            raise TimeoutError("the answer was lost")
        return answer

    async def feedback(self, request_id, name, value, converted, version=None, unit=None, split=-1,
                       resent=False, answered_after_s=None, not_counted_ok=False):
        if self.down:
            raise ConnectionError("controller restarting")
        if self.feedback_away:
            raise ControllerUnavailable("the controller cannot be reached now (it is restarting)")
        not_counted = None if resent else self.core.answer_of_earlier_run(answered_after_s)
        if not_counted is not None:  # as ExperimentController.feedback
            if not not_counted_ok:
                raise Forbidden(not_counted.reason)
            return not_counted
        try:
            return self.core.feedback.add(request_id, name, value, converted, self.clock(), version,
                                          unit=unit, split=split, count_repeat=not resent,
                                          answered_after_s=None if resent else answered_after_s)
        except ServeAbError as err:
            raise Refused(err).error

    def counts(self) -> tuple[int, int, int]:
        """Requests counted, feedback counted, and client repeats counted."""
        snapshot = self.core.stats_snapshot()
        versions = snapshot["versions"].values()
        return (sum(v["requests"] for v in versions),
                sum(v["feedback"].get("correct", {}).get("n", 0) for v in versions),
                snapshot.get("feedback_duplicates", 0))


def serve_and_report(router: RouterCore, controller: KillableController, users: range, feedback: bool = True) -> int:
    """Each user's request, and feedback on it proven as a token would; then a flush."""
    async def go() -> int:
        for user in users:
            choice, _, _ = await router.serve_choice(ROW, f"user-{user}", None)
            if feedback:  # (a client's feedback gets a 503 while the controller is down)
                await router.send_feedback(FeedbackCall(f"answer-{user}", "correct", None, user % 3 == 0,
                                                        choice.version, choice.unit, choice.epoch))
        await router.flush_once()
        return len(users)
    return asyncio.run(go())


@pytest.fixture
def pair():
    clock = FakeClock()
    controller = KillableController(clock)
    router = RouterCore(experiment(), {"v1": FakeVersion(1), "v2": FakeVersion(2)}, controller,
                        request_id=lambda: "req", clock=clock, sleep=clock.sleep)
    return router, controller


def test_a_controller_killed_between_saves_loses_no_request_or_feedback(pair):
    router, controller = pair
    serve_and_report(router, controller, range(1000, 1001), feedback=False)  # the router hears of it
    served = 1 + serve_and_report(router, controller, range(0, 40))
    controller.core.save_stats()
    served += serve_and_report(router, controller, range(40, 70))  # merged, answered, not saved
    served += serve_and_report(router, controller, range(70, 90))
    assert controller.counts()[:2] == (91, 90)
    # The save holds the first two reports and the 40 feedback answered before it.
    assert router.ledger.kept() == (2, 50)
    controller.kill()
    assert controller.counts()[:2] == (41, 40)  # as the last save left them
    served += serve_and_report(router, controller, range(90, 100))  # told it restarted: sends again
    assert controller.counts() == (served, served - 1, 0)  # nothing counted twice, no repeat counted
    for _ in range(2):  # saved, then answered: all but the last interval's report and feedback dropped
        controller.core.save_stats()
        served += serve_and_report(router, controller, range(served, served + 1))
    assert router.ledger.kept() == (1, 1)
    controller.kill()
    serve_and_report(router, controller, range(0, 0))  # an idle interval: sends what it kept
    assert controller.counts() == (served, served - 1, 0)
    for _ in range(3):
        controller.core.save_stats()
        serve_and_report(router, controller, range(0, 0))
    assert router.ledger.kept() == (0, 0) and not router.ledger.waiting()


def test_a_report_whose_answer_was_lost_is_sent_again_and_merged_once(pair):
    router, controller = pair
    served = serve_and_report(router, controller, range(0, 10))
    controller.lose_answers = 1
    served += serve_and_report(router, controller, range(10, 30))  # merged, but the router never heard
    assert controller.counts()[0] == 30 and router.ledger.kept()[0] == 2
    served += serve_and_report(router, controller, range(30, 35))
    assert controller.counts()[0] == served == 35


def test_an_outage_keeps_each_interval_and_sends_them_in_order(pair):
    router, controller = pair
    controller.down = True
    served = sum(serve_and_report(router, controller, range(i * 10, i * 10 + 10), feedback=False) for i in range(3))
    assert controller.counts()[0] == 0 and router.ledger.kept()[0] == 3
    controller.down = False
    controller.kill()  # it also restarted meanwhile: a new name, nothing of this router's saved
    served += serve_and_report(router, controller, range(30, 31))
    assert controller.counts()[:2] == (served, 1)
    assert [seq for seq in router.ledger._reports] == [1, 2, 3, 4]  # merged, in order, not saved yet
    assert controller.core.numbers.merged == {router.replica: 4}


def _settled(router, controller) -> None:
    """Two saves, each followed by an idle interval: nothing kept any longer."""
    for _ in range(2):
        controller.core.save_stats()
        serve_and_report(router, controller, range(0, 0))
    assert not router.ledger.waiting()


def test_feedback_sent_again_is_kept_while_the_restarted_controller_is_away_again(pair):
    router, controller = pair
    serve_and_report(router, controller, range(0, 10))  # accepted, not saved
    controller.kill()
    controller.feedback_away = True  # the report's answer says restarted; feedback calls then fail
    serve_and_report(router, controller, range(0, 0))
    assert router.ledger.kept() == (1, 10)
    controller.feedback_away = False
    serve_and_report(router, controller, range(0, 0))
    assert controller.counts() == (10, 10, 0)


def test_feedback_the_new_controller_took_before_the_router_knew_survives_its_death_unsaved(pair):
    router, controller = pair
    serve_and_report(router, controller, range(0, 10))
    _settled(router, controller)
    controller.kill()
    serve_and_report(router, controller, range(10, 11))  # feedback to the new one, then "restarted"
    assert controller.counts() == (11, 11, 0)
    controller.kill()  # before its first save
    serve_and_report(router, controller, range(0, 0))
    assert controller.counts() == (11, 11, 0)


def test_feedback_answered_after_a_report_was_sent_waits_for_a_later_answer_to_be_tagged():
    """The controller can count a feedback after it answered a report and began a save, and
    the feedback's answer can reach the router before the report's: that save lacks it."""
    ledger = ReportLedger()
    aggregate = report_of([ServedRequest(0.0, "v1", 3.0, None, 1, 0.9, "r1", 7, True, False)]).aggregate
    first = ledger.stamp(IntervalReport("r", aggregate))
    ledger.add(first)
    ledger.answered(first, ReportAnswer("A", saved_seq=0, captures=3, saved_captures=2), ledger.mark())
    report = ledger.stamp(IntervalReport("r", aggregate))
    ledger.add(report)
    mark = ledger.mark()  # the report goes
    ledger.accepted(FeedbackCall("a1", "correct", None, True), "A")  # answered before the report is
    ledger.answered(report, ReportAnswer("A", saved_seq=0, captures=3, saved_captures=2), mark)
    ledger.answered(report, ReportAnswer("A", saved_seq=0, captures=4, saved_captures=4), mark)  # save 4 done
    assert ledger.kept()[1] == 1  # not tagged by either answer: both were made before it counted
    later = ledger.stamp(IntervalReport("r", report.aggregate))
    ledger.add(later)
    mark = ledger.mark()
    ledger.answered(later, ReportAnswer("A", saved_seq=0, captures=4, saved_captures=4), mark)
    assert ledger.kept()[1] == 1  # tagged for save 5
    ledger.answered(later, ReportAnswer("A", saved_seq=later.seq, captures=5, saved_captures=5), mark)
    assert ledger.kept() == (0, 0)


def test_feedback_taken_before_the_router_heard_of_any_controller_goes_again_to_the_first(pair):
    router, controller = pair
    async def feedback_only() -> None:  # before any report of this router was answered
        choice, _, _ = await router.serve_choice(ROW, "user-9", None)
        await router.send_feedback(FeedbackCall("answer-9", "correct", None, True, choice.version, choice.unit,
                                                choice.epoch))
    asyncio.run(feedback_only())
    controller.kill()  # it took the feedback and the request's report never went
    serve_and_report(router, controller, range(0, 0))
    assert controller.counts() == (1, 1, 0)
    _settled(router, controller)


def test_a_router_of_an_older_release_is_merged_as_it_comes_and_an_older_controller_keeps_nothing():
    clock = FakeClock()
    core = ControllerCore(experiment(), MemoryStateStore(), clock)
    older = report_of([ServedRequest(clock(), "v1", 3.0, None, 1, 0.9, "r1", 7, True, False)], core=core)
    assert older.seq == 0
    for _ in range(2):  # no number: no way to tell a repeat
        answer, _ = core.receive(older)
    # Answered None, as before: an older router cannot unpickle a ReportAnswer, and would
    # take it for a failure and send the report again inside its next one.
    assert core.stats_snapshot()["versions"]["v1"]["requests"] == 2 and answer is None
    ledger = ReportLedger()
    report = ledger.stamp(older)
    ledger.add(report)
    ledger.accepted(FeedbackCall("r1", "correct", None, True), None)
    ledger.answered(report, None, ledger.mark())  # what an older controller's record() returns
    assert ledger.kept() == (0, 0) and not ledger.waiting()


def test_past_the_bound_unsent_intervals_merge_into_the_newest_and_unsaved_ones_are_dropped():
    clock = FakeClock()
    core = ControllerCore(experiment(), MemoryStateStore(), clock)
    ledger = ReportLedger()

    def interval(n: int) -> IntervalReport:
        rows = [ServedRequest(clock(), "v1", 3.0, None, 1, 0.9, f"r{i}", i, True, False) for i in range(n)]
        return ledger.stamp(report_of(rows, core=core))

    for _ in range(MAX_KEPT_REPORTS + 5):  # the controller away: nothing taken
        ledger.add(interval(2))
    assert ledger.kept()[0] == MAX_KEPT_REPORTS
    newest = ledger._reports[max(ledger._reports)][0]
    assert (newest.first_seq, newest.seq, newest.aggregate.rows, newest.delayed_intervals) == (
        MAX_KEPT_REPORTS, MAX_KEPT_REPORTS + 5, 12, 5)
    while (report := ledger.next_unsent()) is not None:  # back, but it never saves
        ledger.answered(report, core.receive(report)[0], ledger.mark())
    assert ledger.kept()[0] == MAX_KEPT_REPORTS
    assert core.stats_snapshot()["versions"]["v1"]["requests"] == 2 * (MAX_KEPT_REPORTS + 5)


# -- found by a second review: saves that fail half-way, a redeploy's two replicas, a late 202 --


class FlakyStore(MemoryStateStore):
    """Saves of keys starting with ``failing`` raise (a store down, or a controller killed
    between two writes); the empty prefix fails every save."""

    def __init__(self) -> None:
        super().__init__()
        self.failing: str | None = None

    def save(self, key: str, state) -> None:
        if self.failing is not None and key.startswith(self.failing):
            raise ConnectionError("store down")
        super().save(key, state)


def flaky_pair():
    clock = FakeClock()
    controller = KillableController(clock)
    controller.store = FlakyStore()
    controller.kill()  # on the flaky store
    router = RouterCore(experiment(), {"v1": FakeVersion(1), "v2": FakeVersion(2)}, controller,
                        request_id=lambda: "req", clock=clock, sleep=clock.sleep)
    serve_and_report(router, controller, range(1000, 1001), feedback=False)  # the router hears of it
    return router, controller, clock


def test_a_kill_between_writing_the_figures_and_the_feedback_keys_counts_nothing_twice():
    router, controller, _ = flaky_pair()
    served = 1 + serve_and_report(router, controller, range(0, 10))
    controller.store.failing = "feedback-reported:"  # the figures are written, then it dies
    with pytest.raises(ConnectionError):
        controller.core.save_stats()
    controller.store.failing = None
    controller.kill()
    serve_and_report(router, controller, range(0, 0))  # the router sends the 10 again: refused
    assert controller.counts() == (served, served - 1, 0)


@pytest.mark.parametrize("outage_s", [30, 180])
def test_after_a_store_outage_the_first_save_writes_every_minute_of_feedback_keys(outage_s):
    router, controller, clock = flaky_pair()
    calls: list[FeedbackCall] = []
    send = router.send_feedback

    async def spy(call: FeedbackCall):
        calls.append(call)
        return await send(call)

    router.send_feedback = spy
    served = 1 + serve_and_report(router, controller, range(0, 10))
    controller.store.failing = ""
    for _ in range(outage_s // 5):
        clock.advance(5.0)
        with pytest.raises(ConnectionError):
            controller.core.save_stats()
    controller.store.failing = None
    controller.core.save_stats()  # back: the figures count the 10, and their keys are written
    controller.kill()  # before the router heard of that save: it sends the 10 again
    serve_and_report(router, controller, range(0, 0))
    assert controller.counts() == (served, served - 1, 0)
    router.send_feedback = send
    for call in calls:  # and a client's replay within the token's life is a repeat
        with pytest.raises(ServeAbError):
            asyncio.run(router.send_feedback(call))
    assert controller.counts() == (served, served - 1, 10)


class TwoReplicas:
    """A redeploy's overlap: the old replica ``a`` (its claim taken: it merges and answers,
    but saves no more) and the new one ``b``; each record call goes where ``route`` says."""

    def __init__(self, clock: FakeClock) -> None:
        self.a = KillableController(clock)
        self.b: ControllerCore | None = None
        self.route: list[str] = []

    async def record(self, report: IntervalReport):
        core = self.a.core if (self.route.pop(0) if self.route else "a") == "a" else self.b
        return core.receive(report)[0]

    async def feedback(self, *args, resent: bool = False, answered_after_s: float | None = None, **kwargs):
        return await self.a.feedback(*args, resent=resent, answered_after_s=answered_after_s, **kwargs)


def test_a_report_only_the_old_replica_of_a_redeploy_merged_reaches_the_new_one():
    clock = FakeClock()
    both = TwoReplicas(clock)
    router = RouterCore(experiment(), {"v1": FakeVersion(1), "v2": FakeVersion(2)}, both,
                        request_id=lambda: "req", clock=clock, sleep=clock.sleep)

    async def serve(n: int, route: str) -> None:
        for user in range(n):
            await router.serve_choice(ROW, f"user-{user}", None)
        both.route = list(route)
        await router.flush_once()

    asyncio.run(serve(5, "a"))
    both.a.core.save_stats()
    both.b = ControllerCore(experiment(), both.a.store, clock)  # it starts, reads the store
    asyncio.run(serve(7, "a"))  # merged by the old one only
    asyncio.run(serve(3, "bab"))  # the new one says restarted; the old one too, for what it saved
    asyncio.run(serve(0, "bbbb"))
    assert sum(v["requests"] for v in both.b.stats_snapshot()["versions"].values()) == 15


def test_a_202_from_the_old_controller_that_lands_after_the_router_heard_of_the_new_one_goes_again():
    clock = FakeClock()
    controller = KillableController(clock)
    router = RouterCore(experiment(), {"v1": FakeVersion(1), "v2": FakeVersion(2)}, controller,
                        request_id=lambda: "req", clock=clock, sleep=clock.sleep)
    serve_and_report(router, controller, range(1000, 1001), feedback=False)

    async def scenario() -> None:
        landed = asyncio.Event()
        take = controller.feedback

        async def slow(*args, **kwargs):
            version = await take(*args, **kwargs)  # the old controller counts it...
            await landed.wait()  # ...and its answer is on its way
            return version

        controller.feedback = slow
        choice, _, _ = await router.serve_choice(ROW, "user-1", None)
        sending = asyncio.get_running_loop().create_task(router.send_feedback(
            FeedbackCall("answer-1", "correct", None, True, choice.version, choice.unit, choice.epoch)))
        await asyncio.sleep(0)
        controller.kill()  # it dies unsaved
        await router.flush_once()  # the router hears of the new one
        landed.set()
        await sending
        controller.feedback = take
        for _ in range(3):
            controller.core.save_stats()
            await router.flush_once()

    asyncio.run(scenario())
    assert controller.counts() == (2, 1, 0) and router.ledger.kept() == (0, 0)


def test_the_answers_age_goes_only_to_a_controller_whose_report_answer_says_it_takes_it():
    """A controller of the previous release has no answered_after_s: named in its call, every
    token-proven feedback would fail there during a rolling upgrade."""
    clock = FakeClock()
    sent: list[dict] = []

    class Controller:
        answer: ReportAnswer | None = None

        async def record(self, report: IntervalReport) -> ReportAnswer | None:
            return self.answer

        async def feedback(self, *args, resent: bool = False, answered_after_s: float | None = None):
            sent.append((args[0], resent, answered_after_s))
            return "v2"

    controller = Controller()
    router = RouterCore(experiment(), {"v1": FakeVersion(1), "v2": FakeVersion(2)}, controller,
                        request_id=lambda: "req", clock=clock, sleep=clock.sleep)

    async def feedback(answer_id: str) -> None:
        await router.send_feedback(FeedbackCall(answer_id, "correct", None, True, "v2", None, -1, 940.0))

    async def scenario() -> None:
        await feedback("a1#n")  # no report answered yet
        await router.flush_once()  # answered by the previous release: None
        await feedback("a2#n")
        controller.answer = ReportAnswer("c1", 0, 0, 0, checks_answer_age=True)
        await router.flush_once()
        await feedback("a3#n")

    asyncio.run(scenario())
    # a2 goes again to the first controller that answered (one it has is refused): without its
    # age, as a resend is not checked for it.
    assert sent == [("a1#n", False, None), ("a2#n", False, None), ("a2#n", True, None), ("a3#n", False, 940.0)]


def test_feedback_on_an_answer_before_the_run_is_not_kept_for_a_restarted_controller(pair):
    """A restarted controller takes a resent call unchecked for its answer's age (the router
    accepted it once): feedback the controller answered NotCounted (its answer came before the
    run started) must not be kept and sent again, or the restart would count it after all.
    The restarted controller continues the run, so an answer of the run before the restart counts."""
    router, controller = pair
    serve_and_report(router, controller, range(1000, 1001), feedback=False)  # the router hears of it
    assert router.ledger.answers_not_counted
    started_s = controller.core.run_started_at_s

    async def scenario() -> list:
        return [await router.send_feedback(FeedbackCall(answer_id, "correct", None, True, "v1", None, 0, after_s))
                for answer_id, after_s in (("earlier-run#n", started_s - 600.0), ("this-run#n", started_s + 1.0))]

    old, new = asyncio.run(scenario())
    assert isinstance(old, NotCounted) and new == "v1"
    assert router.ledger.kept()[1] == 1  # only the counted one, until a save holds it
    controller.kill()  # before the save: the router sends again what it kept
    controller.clock.advance(60.0)
    serve_and_report(router, controller, range(0), feedback=False)
    serve_and_report(router, controller, range(0), feedback=False)
    assert controller.counts()[1] == 1
    assert controller.core.stats_snapshot()["feedback_previous_run"] == 0  # counted by the killed one, unsaved


def test_not_counted_ok_goes_only_to_a_controller_whose_report_answer_says_it_answers_not_counted():
    """A router of this release reads NotCounted; one of the previous release could not unpickle it,
    and a controller of the previous release has no not_counted_ok parameter."""
    clock = FakeClock()
    sent: list[dict] = []

    class Controller:
        answer: ReportAnswer | None = None

        async def record(self, report: IntervalReport) -> ReportAnswer | None:
            return self.answer

        async def feedback(self, *args, **kwargs):
            sent.append(kwargs)
            return "v2"

    controller = Controller()
    router = RouterCore(experiment(), {"v1": FakeVersion(1), "v2": FakeVersion(2)}, controller,
                        request_id=lambda: "req", clock=clock, sleep=clock.sleep)

    async def scenario() -> None:
        for i, answer in enumerate((ReportAnswer("c1", 0, 0, 0, checks_answer_age=True),
                                    ReportAnswer("c1", 0, 0, 0, checks_answer_age=True, answers_not_counted=True))):
            controller.answer = answer
            await router.serve_choice(ROW, "user-1", None)  # a report to answer
            await router.flush_once()
            await router.send_feedback(FeedbackCall(f"a{i}#n", "correct", None, True, "v2", None, -1, 940.0))

    asyncio.run(scenario())
    assert [kwargs for kwargs in sent if not kwargs.get("resent")] == [
        {"answered_after_s": 940.0}, {"answered_after_s": 940.0, "not_counted_ok": True}]


def test_a_redeploy_of_a_changed_config_counts_no_request_or_feedback_of_the_old_routers_twice(pair, caplog):
    # Live (serve deploy of new weights under 25 req/s, 2 router replicas): the old routers went
    # on serving for seconds after the new config's controller started its run, were told
    # "restarted", and sent it everything they kept for the old controller, whose last save
    # already held it: the runs' records summed 4,628 requests for 4,265 answered.
    router, controller = pair
    served = serve_and_report(router, controller, range(0, 30))
    served += serve_and_report(router, controller, range(30, 40))
    controller.core.save_stats()  # the old controller's last save, as it stops (Controller.__del__)
    old = controller.core
    assert controller.counts()[:2] == (served, served) and router.ledger.kept() != (0, 0)
    # Serve starts the changed config's controller from the same store: a new run.
    controller.core = ControllerCore(experiment({"v1": 60, "v2": 40}), controller.store, controller.clock)
    assert controller.core.run_id != old.run_id
    late = serve_and_report(router, controller, range(40, 45), feedback=False)  # the old replica's last
    for _ in range(2):
        controller.core.save_stats()
        serve_and_report(router, controller, range(0, 0))
    assert controller.counts() == (0, 0, 0)  # nothing of the old config's run in the new one
    assert "reports wait for a controller of its own config" in caplog.text
    after = serve_and_report(router, controller, range(45, 48), feedback=False)  # it serves on until it stops
    asyncio.run(router.flush_once(last=True))
    assert controller.counts() == (0, 0, 0)
    assert f"stopping with {late + after} requests served under a config the controller no longer runs" \
        in caplog.text
    # The old run keeps what it counted, once: its saved figures, read as a restart of it would.
    again = ControllerCore(experiment(), controller.store, controller.clock)
    assert again.run_id == old.run_id
    assert sum(v["requests"] for v in again.stats_snapshot()["versions"].values()) == served


def test_a_new_replica_that_meets_the_old_config_controller_first_loses_nothing_of_the_new_run(pair):
    # During the same redeploy a new router replica may report before Serve has stopped the
    # old config's controller: the new run must still get all of it, once.
    router, controller = pair
    old = controller.core
    controller.core = ControllerCore(experiment({"v1": 60, "v2": 40}), MemoryStateStore(), controller.clock)
    early = serve_and_report(router, controller, range(0, 20), feedback=False)
    early += serve_and_report(router, controller, range(20, 30), feedback=False)
    assert controller.counts() == (0, 0, 0) and router.ledger.waiting()  # the old one merged none
    assert controller.core.run_id != old.run_id
    controller.core = old  # the new config's controller (the fixture's config) starts
    later = serve_and_report(router, controller, range(30, 35), feedback=False)
    assert controller.counts() == (early + later, 0, 0)
    for _ in range(2):  # saved, then answered: nothing left waiting, nothing counted twice
        controller.core.save_stats()
        serve_and_report(router, controller, range(0, 0))
    assert controller.counts() == (early + later, 0, 0) and not router.ledger.waiting()


def test_a_new_routers_first_feedback_on_an_answer_of_the_run_before_is_not_counted(pair):
    """Right after a redeploy, new router replicas take feedback on the previous run's answers
    before any report of theirs was answered, which is what tells them the controller checks an
    answer's age: the router asks first (an empty report), or such feedback went without
    answered_after_s and counted in the new run (and under its split of the same epoch number)."""
    router, controller = pair
    started_s = controller.core.run_started_at_s
    controller.clock.advance(30.0)  # a run 30 s old; feedback on an answer of 10 min before it

    async def scenario():
        return await router.send_feedback(FeedbackCall("earlier-run#n", "correct", None, True, "v1", None, 0,
                                                       started_s - 600.0))

    answer = asyncio.run(scenario())
    assert isinstance(answer, NotCounted), answer
    assert controller.core.stats_snapshot()["feedback_previous_run"] == 1
    assert router.ledger.kept() == (0, 0)  # the empty report asked nothing to be kept


def test_a_new_router_asks_the_controller_once_and_feedback_goes_on_while_it_is_away():
    """The ask is one empty report, whatever the feedback calls meanwhile: with the controller
    away (its record call fails), each call would wait a report's timeout before its own. What
    was not heard goes as to the previous release, until the next interval's report is answered."""
    clock = FakeClock()
    records: list[int] = []
    sent: list[dict] = []

    class Controller:
        away = True

        async def record(self, report: IntervalReport) -> ReportAnswer:
            records.append(report.seq)
            if self.away:
                raise ControllerUnavailable("the controller cannot be reached now")
            return ReportAnswer("c1", 0, 0, 0, checks_answer_age=True, answers_not_counted=True)

        async def feedback(self, *args, **kwargs):
            sent.append(kwargs)
            return "v2"

    controller = Controller()
    router = RouterCore(experiment(), {"v1": FakeVersion(1), "v2": FakeVersion(2)}, controller,
                        request_id=lambda: "req", clock=clock, sleep=clock.sleep)

    async def feedback(i: int) -> None:
        await router.send_feedback(FeedbackCall(f"a{i}#n", "correct", None, True, "v2", None, -1, 940.0))

    async def scenario() -> None:
        await asyncio.gather(*(feedback(i) for i in range(5)))
        controller.away = False
        await router.flush_once()  # the interval's report: the empty one kept goes now
        await feedback(5)

    asyncio.run(scenario())
    # Asked once (1); the interval's flush sent it again, answered, and its own (2: the 5 kept wait).
    assert records == [1, 1, 2]
    assert [kwargs for kwargs in sent if not kwargs.get("resent")] == (
        [{"answered_after_s": None}] * 5 + [{"answered_after_s": 940.0, "not_counted_ok": True}])


# -- /metrics across a restart --------------------------------------------------------------------

def scraped_requests(controller: KillableController) -> float | None:
    """serve_ab_requests_total summed over versions, as a scrape reads it; None: the scrape
    failed (503), which Prometheus records as a gap."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        body, _ = controller.core.metrics("digits-ab")
    except ControllerUnavailable:
        return None
    return sum(sample.value for family in text_string_to_metric_families(body.decode())
               for sample in family.samples if sample.name == "serve_ab_requests_total")


def test_a_restarted_controller_answers_no_scrape_below_the_last_until_its_routers_sent_again(pair):
    """Live (2 routers, 14 req/s, save every 30 s): the first scrape after a controller's kill
    read 3,559 requests where the one before read 3,727, and the next 3,770: Prometheus took
    the dip for a counter reset, and rate() gave 146 requests a second for 30 s. The restarted
    controller's /metrics now fails (503, a gap in Prometheus) until each router it knew has
    sent again what its last save lacked; no scrape it answers reads fewer than before."""
    router, controller = pair
    serve_and_report(router, controller, range(1000, 1001), feedback=False)
    served = 1 + serve_and_report(router, controller, range(0, 40))
    controller.core.save_stats()
    served += serve_and_report(router, controller, range(40, 90))  # merged, not saved
    before = scraped_requests(controller)
    assert before == served == 91
    controller.kill()
    assert controller.core.stats_snapshot()["versions"]["v1"]["requests"] + \
        controller.core.stats_snapshot()["versions"]["v2"]["requests"] == 41  # the save's figures
    assert scraped_requests(controller) is None
    with pytest.raises(ControllerUnavailable, match=r"1 router replica\(s\) have not sent it again"):
        controller.core.metrics("digits-ab")
    # The router's next report is answered "restarted": it sends its reports again, then its
    # feedback, all in that flush; only a report made after it is news of the next interval.
    served += serve_and_report(router, controller, range(90, 95))
    assert controller.counts()[0] == served and scraped_requests(controller) is None
    served += serve_and_report(router, controller, range(95, 96))
    assert scraped_requests(controller) == served >= before


def test_a_router_that_never_reports_again_holds_metrics_at_most_catch_up_max_s(pair):
    from serve_ab.serving.reports import CATCH_UP_MAX_S

    router, controller = pair
    serve_and_report(router, controller, range(0, 10))
    controller.core.save_stats()
    controller.kill()  # and the router is never heard of again (its replica died with it)
    assert scraped_requests(controller) is None
    controller.clock.advance(CATCH_UP_MAX_S - 1)
    assert scraped_requests(controller) is None
    controller.clock.advance(1)
    assert scraped_requests(controller) == 10


def test_a_controller_without_a_save_to_restore_answers_metrics_at_once(pair):
    router, controller = pair
    assert scraped_requests(controller) == 0
    serve_and_report(router, controller, range(0, 3))
    assert scraped_requests(controller) == 3
    controller.kill()  # nothing saved: nothing the routers could lower
    assert scraped_requests(controller) == 0


def test_a_router_that_stopped_before_the_save_does_not_hold_a_restarted_controllers_metrics(pair):
    """The save keeps a router's report number an hour after its last report (NUMBERS_KEPT_S),
    and the restarted controller waited for every router numbered there: one scaled down (its
    last report sent) five minutes before the save held /metrics the whole CATCH_UP_MAX_S (30
    s on the fake clock) while the live router had caught up in 2 s, at every restart."""
    router, controller = pair
    gone = RouterCore(experiment(), {"v1": FakeVersion(1), "v2": FakeVersion(2)}, controller,
                      request_id=lambda: "req", clock=controller.clock, sleep=controller.clock.sleep)
    gone.replica = "router-scaled-down"
    served = serve_and_report(router, controller, range(0, 10), feedback=False)
    served += serve_and_report(gone, controller, range(10, 20), feedback=False)
    asyncio.run(gone.flush_once(last=True))  # the replica stops
    controller.clock.advance(300)
    served += serve_and_report(router, controller, range(20, 30), feedback=False)
    controller.core.save_stats()
    served += serve_and_report(router, controller, range(30, 40), feedback=False)
    controller.kill()
    assert scraped_requests(controller) is None  # the live router has yet to send its last 10
    served += serve_and_report(router, controller, range(40, 41), feedback=False)  # answered "restarted"
    controller.clock.advance(1)
    served += serve_and_report(router, controller, range(41, 42), feedback=False)
    assert scraped_requests(controller) == served == 42


def test_an_idle_router_lets_a_restarted_controller_answer_metrics_within_a_few_intervals(pair):
    """An idle router whose reports the last save holds reports every IDLE_REPORT_S (20 s):
    it was heard by a restarted controller only at that heartbeat, and sent the report made
    for it (not one sent again, which RestartCatchUp waits for) only at the heartbeat after,
    so a quiet app's /metrics answered 503 the whole CATCH_UP_MAX_S (30 s) after every
    controller restart. The router now reports as soon as its long poll reaches the new
    controller, and once more at the next interval after sending the rest again."""
    router, controller = pair
    interval_s = router.cfg.controller.report_interval_s

    async def go() -> float:
        router.apply(await controller.wait_for_update(-1))
        follower = asyncio.get_running_loop().create_task(router.follow())
        for user in range(15):
            await router.serve_choice(ROW, f"user-{user}", None)
        await router.flush_once()
        controller.core.save_stats()
        await controller.clock.sleep(interval_s)
        await router.flush_once()  # hears that the save has it all: nothing waits to be sent again
        assert scraped_requests(controller) == 15 and not router.ledger.waiting()
        controller.kill()
        killed_s = controller.clock()
        while scraped_requests(controller) is None and controller.clock() - killed_s < 60:
            await controller.clock.sleep(interval_s)  # idle: the router's flush loop, one interval
            await router.flush_once()
        follower.cancel()
        return controller.clock() - killed_s

    released_after_s = asyncio.run(go())
    assert scraped_requests(controller) == 15
    assert released_after_s <= 3 * interval_s + 1.0  # the long poll's retry, then two intervals
