"""The controller deployment's feedback call, as routers make it (the class runs here without
Ray, around a ControllerCore on a memory store): a replay of an answer older than the reports
it still remembers is refused, where it was counted a second time; feedback on an answer of the
run before a changed config is not counted in the new one."""

from __future__ import annotations

import asyncio

from serve_ab.errors import Conflict, Forbidden
from serve_ab.serving.controller import RUN_START_SLACK_S, ControllerCore
from serve_ab.serving.core.feedback_token import FeedbackSigner
from serve_ab.serving.core.messages import NotCounted, Refused
from serve_ab.store.state import MemoryStateStore
from tests.support.fakes import FakeClock
from tests.support.reports import ServedRequest, report_of
from tests.unit.serving.test_controller_claim import controller
from tests.unit.serving.test_controller_core import ab_experiment


def test_a_replay_of_a_forgotten_report_is_refused_and_a_routers_resend_is_not():
    c = controller(MemoryStateStore())
    c.core.feedback.max_requests = 3  # stands for 500,000 reports within a token's life
    now_s = c.core.clock()
    c.core.run_started_at_s = now_s - 3600  # a run an hour old: answers 10 s old are its own

    async def scenario():
        for i in range(4):  # the fourth report pushes the first out
            assert await c.feedback(f"a{i}#n", "correct", None, True, "v1", None, -1, answered_after_s=now_s - 10) == "v1"
        replay = await c.feedback("a0#n", "correct", None, True, "v1", None, -1, answered_after_s=now_s - 10)
        assert isinstance(replay, Refused) and isinstance(replay.error, Forbidden)
        assert "can no longer be checked for a repeat" in replay.error.message
        repeat = await c.feedback("a3#n", "correct", None, True, "v1", None, -1, answered_after_s=now_s - 10)
        assert isinstance(repeat, Refused) and isinstance(repeat.error, Conflict)
        # A router sends again what it accepted, to a restarted controller: not refused for its age.
        assert await c.feedback("a9#n", "correct", None, True, "v1", None, -1, answered_after_s=now_s - 10, resent=True) == "v1"

    asyncio.run(scenario())
    assert c.core.stats_snapshot()["versions"]["v1"]["feedback"]["correct"]["n"] == 5


def _answers(core: ControllerCore, signer: FeedbackSigner, clock: FakeClock, n: int, prefix: str):
    """``n`` answers a router of ``core``'s run gave now, one user each, v1 and v2 in turn: reported to
    the controller, and their tokens (request id, token) as the clients hold them."""
    rows, tokens = [], []
    for i in range(n):
        version, unit, request_id = ("v1", "v2")[i % 2], 101 * i + 7, f"{prefix}-{i}"
        rows.append(ServedRequest(clock(), version, 3.0, None, 1, 0.9, request_id, unit, True, False,
                                  split=core.epoch))
        tokens.append((request_id, signer.issue(request_id, version, True, unit, core.epoch)))
    core.record(report_of(rows, core=core))
    return tokens


async def _send(c, signer: FeedbackSigner, tokens, *, not_counted_ok: bool = True) -> list:
    """Each answer's feedback (converted), as a router passes it on once the token is checked."""
    answers = []
    for request_id, token in tokens:
        proven = signer.verify(token, request_id)
        extra = {"not_counted_ok": True} if not_counted_ok else {}  # a router of the previous release: none
        answers.append(await c.feedback(proven.answer_id, "correct", None, True, proven.version, proven.bucket,
                                        proven.epoch, answered_after_s=proven.answered_after_s, **extra))
    return answers


def _feedback_by_split(core: ControllerCore) -> dict[tuple[float, ...], int]:
    """Outcomes filed per split (its v1 and v2 weights) in the per-weight-step analysis."""
    def outcomes(totals) -> int:  # SplitTotals.to_dict: per-bucket counts, and keyless units' moments
        return int(sum(totals["n"]) + sum(moments[0] for moments in totals["keyless"].values()))

    return {(split["weights_pct"].get("v1", 0.0), split["weights_pct"].get("v2", 0.0)):
            outcomes(split["metrics"]["feedback/correct"]) if "feedback/correct" in split["metrics"] else 0
            for split in core.stats_snapshot()["splits"]}


def test_feedback_on_an_answer_of_the_previous_run_is_not_counted_in_the_new_one():
    """A changed config starts a new run, whose routing epochs are numbered from 0 again; the old
    run's tokens stay valid for their hour (same key, same model). Their feedback was counted in
    the new run, with none of its requests, and filed under the new run's epoch 0: the 50/50
    run's outcomes in the 90/10 split's analysis. It belongs to the run that served the answer."""
    cfg = ab_experiment(analysis={"metrics": [{"name": "correct", "kind": "conversion"}]})
    changed = ab_experiment(analysis={"metrics": [{"name": "correct", "kind": "conversion"}]},
                            weights={"v1": 90, "v2": 10})
    store, clock = MemoryStateStore(), FakeClock()
    signer = FeedbackSigner(b"k" * 32, 3600.0, clock, "digits")  # the key is the model's, in the store
    run_1 = ControllerCore(cfg, store, clock)
    old_tokens = _answers(run_1, signer, clock, 30, "run1")
    run_1.save_stats()
    clock.advance(600.0)  # the redeploy, ten minutes later: the tokens have 50 minutes to live
    run_2 = ControllerCore(changed, store, clock)
    assert run_2.run_id != run_1.run_id and run_2.epoch == run_1.epoch == 0  # the tokens' epoch names both
    c = controller(MemoryStateStore())  # the deployment's class, around run 2's core
    c.core = run_2

    clock.advance(30.0)
    answers = asyncio.run(_send(c, signer, old_tokens[:10], not_counted_ok=False))
    # A router of the previous release cannot read a NotCounted: refused, 403, saying why.
    assert all(isinstance(a, Refused) and isinstance(a.error, Forbidden) for a in answers), answers
    assert f"before run {run_2.run_id} started" in answers[0].error.message
    answers = asyncio.run(_send(c, signer, old_tokens[10:]))
    assert all(isinstance(a, NotCounted) for a in answers), answers
    snapshot = run_2.stats_snapshot()
    assert {v: s["feedback"] for v, s in snapshot["versions"].items()} == {"v1": {}, "v2": {}, "v3": {}}
    assert _feedback_by_split(run_2) in ({}, {(90.0, 10.0): 0})
    assert snapshot["feedback_previous_run"] == 30 and snapshot["feedback_duplicates"] == 0
    # Not remembered as reported: sent again, it is answered the same way, not as a repeat.
    assert isinstance(asyncio.run(_send(c, signer, old_tokens[:1]))[0], NotCounted)

    # The new run's own answers count, under its own split.
    new_tokens = _answers(run_2, signer, clock, 20, "run2")
    assert asyncio.run(_send(c, signer, new_tokens[:10])) == ["v1", "v2"] * 5
    assert _feedback_by_split(run_2) == {(90.0, 10.0): 10}
    # A restart of the same run keeps its start: feedback on answers given before the restart counts.
    run_2.save_stats()
    clock.advance(120.0)
    again = ControllerCore(changed, store, clock)
    assert (again.run_id, again.run_started_at_s) == (run_2.run_id, run_2.run_started_at_s)
    c.core = again
    assert asyncio.run(_send(c, signer, new_tokens[10:])) == ["v1", "v2"] * 5
    assert isinstance(asyncio.run(_send(c, signer, old_tokens[1:2]))[0], NotCounted)
    snapshot = again.stats_snapshot()
    assert snapshot["versions"]["v1"]["feedback"]["correct"]["n"] + snapshot["versions"]["v2"]["feedback"]["correct"]["n"] == 20
    assert _feedback_by_split(again) == {(90.0, 10.0): 20}
    assert snapshot["feedback_previous_run"] == 32  # kept across the restart, with the figures


def test_an_answer_within_the_clock_slack_of_the_runs_start_counts():
    """A router's clock (which dates the token) may run behind the controller's (which dates the
    run), and a new config's router may answer a moment before its controller started."""
    c = controller(MemoryStateStore())
    started_s = c.core.run_started_at_s

    async def scenario():
        assert await c.feedback("a#n", "correct", None, True, "v1", None, -1,
                                answered_after_s=started_s - RUN_START_SLACK_S, not_counted_ok=True) == "v1"
        assert isinstance(await c.feedback("b#n", "correct", None, True, "v1", None, -1,
                                           answered_after_s=started_s - RUN_START_SLACK_S - 1,
                                           not_counted_ok=True), NotCounted)
        # A router's resend to a restarted controller is of feedback it accepted once: never refused for its age.
        assert await c.feedback("c#n", "correct", None, True, "v1", None, -1, resent=True) == "v1"

    asyncio.run(scenario())
    assert c.core.stats_snapshot()["feedback_previous_run"] == 1
