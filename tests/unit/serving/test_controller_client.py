"""The router's side of the controller's answers: a routine refusal comes back as a value
(so Ray does not log it as a failed request) and is raised here as the same error."""

from __future__ import annotations

import asyncio

import pytest

from serve_ab.errors import Conflict
from serve_ab.serving.core.messages import Refused
from serve_ab.serving.router import ControllerClient


class _Method:
    def __init__(self, answer):
        self.answer = answer

    def remote(self, *args):
        async def call():
            return self.answer
        return call()


class _Handle:
    def __init__(self, answer):
        self.feedback = self.act = _Method(answer)


def test_a_refusal_answered_by_the_controller_is_raised_as_its_error():
    refused = ControllerClient(_Handle(Refused(Conflict("feedback 'correct' for request 'r1' was reported already"))))
    with pytest.raises(Conflict, match="reported already"):
        asyncio.run(refused.feedback("r1", "correct", None, True))
    assert asyncio.run(ControllerClient(_Handle("v2")).feedback("r1", "correct", None, True)) == "v2"


def test_reads_give_up_before_the_cli_does():
    """`serve-ab status` waits 10 s by default: the router must answer its 503, saying why,
    before that, or the CLI reports the app unreachable while it is up."""
    from serve_ab.cli.rollout import DEFAULT_TIMEOUT_S
    from serve_ab.serving import router

    assert router.READ_TIMEOUT_S < DEFAULT_TIMEOUT_S


def test_a_read_the_controller_does_not_answer_is_a_503_after_its_timeout_and_an_action_waits(monkeypatch):
    """A controller waiting for its store takes handle calls but answers none: reads give up
    with a 503 naming why; actions are not given up on (they could be applied later)."""
    from serve_ab.errors import ControllerUnavailable
    from serve_ab.serving import router

    class Silent:
        def remote(self, *args):
            return asyncio.sleep(3600)

    class Handle:
        status = stats = report = metrics = act = Silent()

    monkeypatch.setattr(router, "READ_TIMEOUT_S", 0.05)
    monkeypatch.setattr(router, "REPORT_TIMEOUT_S", 0.05)
    client = ControllerClient(Handle())
    for read in (client.status(), client.stats(), client.report(), client.metrics()):
        with pytest.raises(ControllerUnavailable, match=r"did not answer within 0.05s \(starting, restarting, "
                                                        r"or waiting for its store"):
            asyncio.run(read)

    async def act_for_a_while():
        task = asyncio.ensure_future(client.act("pause", {}, None))
        await asyncio.sleep(0.2)
        assert not task.done()  # still waiting, not refused
        task.cancel()

    asyncio.run(act_for_a_while())


def test_feedback_and_a_report_the_controller_does_not_answer_give_up_after_their_timeouts(monkeypatch):
    """Feedback held for a whole outage would hold its client's call too: it is a 503 that says
    a retry is safe. A router's report given up on is kept and sent again by its ledger, and the
    failed try is what serve_ab_router_intervals_delayed_total counts."""
    from serve_ab.analysis.aggregate import IntervalAggregate
    from serve_ab.errors import ControllerUnavailable
    from serve_ab.serving import router
    from serve_ab.serving.core.messages import IntervalReport

    class Silent:
        def remote(self, *args, **kwargs):
            return asyncio.sleep(3600)

    class Handle:
        feedback = record = Silent()

    monkeypatch.setattr(router, "FEEDBACK_TIMEOUT_S", 0.05)
    monkeypatch.setattr(router, "RECORD_TIMEOUT_S", 0.05)
    client = ControllerClient(Handle())
    with pytest.raises(ControllerUnavailable, match=r"did not answer within 0.05s .*; send it again later: if this "
                                                    r"one counted after all, the retry is a 409 \(already reported\)"):
        asyncio.run(client.feedback("r1", "correct", None, True))
    with pytest.raises(ControllerUnavailable, match=r"did not answer within 0.05s"):
        asyncio.run(client.record(IntervalReport("router-1", IntervalAggregate())))


# The controller's feedback method of the previous release, as it is bound there (Ray Serve
# passes a handle call's arguments on as they are): a rolling upgrade runs routers of this
# release against it until its replica is replaced.
async def _previous_release_feedback(request_id, name, value, converted, version=None, unit=None, split=-1,
                                     resent=False):
    return {"request_id": request_id, "version": version, "resent": resent}


class _PreviousReleaseController:
    class _Feedback:
        @staticmethod
        def remote(*args, **kwargs):
            return _previous_release_feedback(*args, **kwargs)

    feedback = _Feedback()


def test_feedback_reaches_a_controller_of_the_previous_release_as_it_was_meant():
    """A client's report is not taken for a router's resend there (it would not be counted as a
    repeat), and a resend is not refused for a second value of ``resent`` (it would be dropped)."""
    client = ControllerClient(_PreviousReleaseController())
    first = asyncio.run(client.feedback("r1#n", "correct", None, True, "v2", 7, 3))
    assert first == {"request_id": "r1#n", "version": "v2", "resent": False}
    again = asyncio.run(client.feedback("r1#n", "correct", None, True, "v2", 7, 3, resent=True))
    assert again == {"request_id": "r1#n", "version": "v2", "resent": True}


def test_not_counted_ok_is_named_only_when_the_router_reads_a_not_counted_answer():
    """Named, it reaches the controller's parameter of that name; a controller of the previous
    release has none, so it is left out unless the router's ledger said the controller takes it."""
    sent = []

    class Handle:
        class feedback:  # noqa: N801 - as a DeploymentHandle's method
            @staticmethod
            def remote(*args, **kwargs):
                sent.append(kwargs)
                return _previous_release_feedback(*args)

    client = ControllerClient(Handle())
    asyncio.run(client.feedback("r1#n", "correct", None, True, "v2", 7, 3, answered_after_s=940.0))
    asyncio.run(client.feedback("r2#n", "correct", None, True, "v2", 7, 3, answered_after_s=940.0,
                                not_counted_ok=True))
    assert sent == [{"answered_after_s": 940.0}, {"answered_after_s": 940.0, "not_counted_ok": True}]


def test_calls_for_clients_past_half_the_routers_places_are_refused_at_once_and_predictions_keep_the_rest():
    """Live (2026-12-07): the controller's node lost with no node to restart it on, feedback
    at 7.5 calls a second, each waiting its 8 s, held 60 of the router's 64 places, and the
    predictions queued behind them in Ray's proxy: 25 req/s fell to 4, waiting up to 49 s.
    Past max_waiting, a client's call is a 503 at once and the controller is not called; the
    router's own calls (reports, the long poll, feedback sent again) are not held back."""
    from serve_ab.analysis.aggregate import IntervalAggregate
    from serve_ab.errors import ControllerUnavailable
    from serve_ab.serving.core.messages import IntervalReport

    class Silent:
        def __init__(self):
            self.calls = 0

        def remote(self, *args, **kwargs):
            self.calls += 1
            return asyncio.sleep(3600)

    class Handle:
        def __init__(self):
            self.feedback, self.status, self.stats, self.report = Silent(), Silent(), Silent(), Silent()
            self.metrics, self.act, self.record, self.wait_for_update = Silent(), Silent(), Silent(), Silent()

    async def go():
        handle = Handle()
        client = ControllerClient(handle, max_waiting=2)
        waiting = [asyncio.ensure_future(client.feedback("r1", "correct", None, True)),
                   asyncio.ensure_future(client.status())]
        await asyncio.sleep(0)
        for call in (client.feedback("r2", "correct", None, True), client.stats(), client.report(),
                     client.metrics(), client.act("pause", {}, None)):
            with pytest.raises(ControllerUnavailable, match=r"2 calls of this router replica wait on it already "
                                                            r"\(at most 2, half of router.max_ongoing_requests.*not sent to it"):
                await call
        called = (handle.feedback.calls, handle.status.calls, handle.stats.calls, handle.report.calls,
                  handle.metrics.calls, handle.act.calls)
        # The router's own calls still go.
        own = [asyncio.ensure_future(client.record(IntervalReport("router-1", IntervalAggregate()))),
               asyncio.ensure_future(client.wait_for_update(3)),
               asyncio.ensure_future(client.feedback("r3", "correct", None, True, resent=True))]
        await asyncio.sleep(0)
        own_called = (handle.record.calls, handle.wait_for_update.calls, handle.feedback.calls)
        waiting[0].cancel()  # one place frees: a client's call goes to the controller again
        for _ in range(5):
            await asyncio.sleep(0)
        again = asyncio.ensure_future(client.stats())
        await asyncio.sleep(0)
        for task in (*waiting, *own, again):
            task.cancel()
        return called, own_called, handle.stats.calls

    called, own_called, stats_calls = asyncio.run(go())
    assert called == (1, 1, 0, 0, 0, 0)  # the refused calls never reached the controller
    assert own_called == (1, 1, 2)
    assert stats_calls == 1


def test_a_burst_of_client_calls_to_a_controller_that_answers_is_not_refused_for_its_number():
    """max_waiting is for a controller that is away: with a live one, many feedback calls in
    flight at once (a burst, the controller busy for a moment) are traffic. One refused there
    was a 503 'the controller is not answering' for feedback the controller would have taken."""
    from serve_ab.errors import ControllerUnavailable

    now_s = [100.0]

    class Held:
        """Answers each call when told to."""

        def __init__(self):
            self.calls, self.release = 0, asyncio.Event()

        def remote(self, *args, **kwargs):
            self.calls += 1

            async def answer():
                await self.release.wait()
                return "v2"
            return answer()

    class Handle:
        def __init__(self):
            self.feedback = Held()

    async def go():
        handle = Handle()
        client = ControllerClient(handle, max_waiting=2)
        client.clock = lambda: now_s[0]
        handle.feedback.release.set()
        assert await client.feedback("r0", "correct", None, True) == "v2"  # the controller answers
        handle.feedback.release.clear()
        now_s[0] += 0.5
        burst = [asyncio.ensure_future(client.feedback(f"r{i}", "correct", None, True)) for i in range(1, 6)]
        await asyncio.sleep(0)
        handle.feedback.release.set()
        answers = await asyncio.gather(*burst, return_exceptions=True)
        # Away since: no answer for ANSWERED_RECENTLY_S, and past max_waiting a call is refused again.
        handle.feedback.release.clear()
        now_s[0] += 5.0
        stuck = [asyncio.ensure_future(client.feedback(f"s{i}", "correct", None, True)) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(ControllerUnavailable, match="2 calls of this router replica wait on it already"):
            await client.feedback("s2", "correct", None, True)
        for task in stuck:
            task.cancel()
        return answers, handle.feedback.calls

    answers, calls = asyncio.run(go())
    assert answers == ["v2"] * 5
    assert calls == 1 + 5 + 2
