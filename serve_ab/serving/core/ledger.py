"""What a router sent the controller that the controller has not saved yet (no Ray).

The controller keeps the run's figures in memory and saves them every few seconds
(``ControllerCore.save_stats``). A controller killed between two saves (``kill -9``, the OOM
killer, a lost node) used to take the figures of its last seconds with it: the requests of
the reports it had merged and the feedback it had answered 202. Ray Serve starts a new
controller, which carried on from the last save, a few seconds short.

So each router keeps what it sent until the controller says it is saved:

- **Reports** carry a number, one up per report (``IntervalReport.seq``). The controller
  merges a router's report only if its number is past the last it merged from that router,
  saves that last number with its figures, and answers each report with the last number
  its saves hold (:class:`~serve_ab.serving.core.messages.ReportAnswer`). The router drops
  the reports up to it. A report whose call failed is kept as it is and sent again, first,
  at the next flush: if the controller had merged it and only its answer was lost, the
  number says so and it is not merged twice.
- **Feedback** the controller accepted is kept until the controller's next save after that.
  Saves are counted: the answer to the first report sent after the feedback was answered
  gives the count of saves begun (``captures``; the next save holds it), and a later answer
  the count done.
- Each answer names the controller (a new name per start). A report stamped with the
  previous name gets, from a new controller, ``restarted`` and the last number it restored.
  The router then sends again, in order, the reports after that number, and all the feedback
  it kept. The new controller merges only reports numbered past what it has, and refuses as a
  repeat any feedback that it has already (restored, or sent to it since); such feedback is
  kept as if accepted. Feedback accepted before a router's first answer (it had heard of no
  controller yet) is sent again to the first controller that answers it, likewise.

What is kept is bounded (:data:`MAX_KEPT_REPORTS`, :data:`MAX_KEPT_FEEDBACK`): while the
controller cannot be reached, new intervals are merged into the newest unsent report past
the bound; while it cannot save (its store is down), the oldest are dropped, logged once, and
would be lost only if the controller also died before saving again. Feedback a router sent
by request id alone (``feedback.require_token: false``) is not covered: a restarted controller
knows the requests it joins to only from reports that came after its last save, so such
feedback on an earlier request, or still waiting for its request's report, is lost at a kill.

Example (the router's flush, :meth:`RouterCore.flush_once`)::

    ledger.add(ledger.stamp(IntervalReport(replica, aggregate)))
    while (report := ledger.next_unsent()) is not None:   # oldest first
        mark = ledger.mark()
        ledger.answered(report, await controller.record(report), mark)
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from serve_ab.analysis.aggregate import IntervalAggregate
from serve_ab.serving.core.messages import IntervalReport, ReportAnswer

__all__ = ["MAX_KEPT_FEEDBACK", "MAX_KEPT_REPORTS", "FeedbackCall", "ReportLedger"]

logger = logging.getLogger("ray.serve")

#: Reports kept at most, unsent and unsaved each: 2 minutes of the default 1-s interval (the
#: controller saves every ``controller.save_interval_s``, at most 30 intervals, so up to 30 are
#: kept while it and its store answer, and a failed save or two drop none).
MAX_KEPT_REPORTS = 120
#: Feedback calls kept at most (each a few hundred bytes).
MAX_KEPT_FEEDBACK = 100_000


@dataclass
class _Kept:
    """A feedback call the controller accepted, until a save holds it."""

    number: int  # in the order this router's calls were accepted
    controller: str | None  # the controller this router knew of then (None: none yet)
    save: int | None  # the save that holds it, once a report's answer says (None: not yet)
    call: FeedbackCall


@dataclass(frozen=True)
class FeedbackCall:
    """The arguments of one feedback call the controller accepted (``ControllerApi.feedback``)."""

    request_id: str
    name: str
    value: float | None
    converted: bool | None
    version: str | None = None
    unit: int | None = None
    split: int = -1
    answered_after_s: float | None = None  # the answer came after this, where its token says

    def args(self) -> tuple[Any, ...]:
        # Not answered_after_s: sent by name, to a controller that takes it (ReportLedger.checks_answer_age).
        return (self.request_id, self.name, self.value, self.converted, self.version, self.unit, self.split)


class ReportLedger:
    """One router's numbering of its reports, and what it keeps until the controller saves it."""

    def __init__(self) -> None:
        self.next_seq = 1
        self.controller: str | None = None  # the controller last heard from
        # It takes feedback's answered_after_s (ReportAnswer.checks_answer_age); until a report
        # is answered (the router asks with an empty one: RouterCore.send_feedback), or from a
        # controller of the previous release, feedback goes without it.
        self.checks_answer_age = False
        # It answers feedback of an earlier run with NotCounted where asked to (not_counted_ok,
        # ReportAnswer.answers_not_counted); a controller of the previous release does not.
        self.answers_not_counted = False
        # Whether any report was answered (by a controller of either release): until then the
        # two flags above are unknown, and the router asks before passing feedback on.
        self.heard = False
        # Reports not saved yet, by number: each with whether the controller heard from now
        # has it (False: to send, or to send again).
        self._reports: dict[int, tuple[IntervalReport, bool]] = {}
        self._feedback: deque[_Kept] = deque()  # accepted, in that order
        self._accepted = 0  # feedback calls accepted so far
        self._feedback_again: deque[FeedbackCall] = deque()  # to send again, after a restart
        self._warned = False
        self._warned_other_config = False

    def stamp(self, report: IntervalReport) -> IntervalReport:
        """``report`` with the next number."""
        seq = self.next_seq
        self.next_seq += 1
        return dataclasses.replace(report, first_seq=seq, seq=seq, controller_seen=self.controller)

    def add(self, report: IntervalReport) -> None:
        """A stamped report, to send. Past :data:`MAX_KEPT_REPORTS` unsent (the controller has
        been away for minutes), it is merged into the newest unsent one instead, which then
        covers both numbers."""
        unsent = [seq for seq, (_, has) in self._reports.items() if not has]
        if len(unsent) < MAX_KEPT_REPORTS:
            self._reports[report.seq] = (report, False)
            return
        newest = self._reports.pop(max(unsent))[0]
        both = IntervalAggregate()
        both.merge(newest.aggregate)
        both.merge(report.aggregate)
        self._reports[report.seq] = (dataclasses.replace(
            report, aggregate=both, first_seq=newest.first_seq,
            delayed_intervals=newest.delayed_intervals + report.delayed_intervals + 1), False)

    def next_unsent(self) -> IntervalReport | None:
        """The oldest report the controller heard from now lacks, stamped for it; None: none."""
        unsent = [seq for seq, (_, has) in self._reports.items() if not has]
        if not unsent:
            return None
        return dataclasses.replace(self._reports[min(unsent)][0], controller_seen=self.controller)

    def not_taken(self, report: IntervalReport) -> None:
        """Its call failed: it is sent again first at the next flush, one interval late."""
        if report.seq in self._reports:
            self._reports[report.seq] = (dataclasses.replace(report, delayed_intervals=report.delayed_intervals + 1),
                                         False)

    def mark(self) -> int:
        """Taken just before a report is sent: the feedback accepted by then. Its calls were
        answered, so the controller had them before the report, and the report's answer
        counts the save that holds them; feedback accepted after the mark may have reached
        the controller after the answer was made."""
        return self._accepted

    def answered(self, report: IntervalReport, answer: ReportAnswer | None, mark: int) -> None:
        """The controller's answer to ``report``, sent at ``mark`` (:meth:`mark`)."""
        self.heard = True
        self.checks_answer_age = answer is not None and answer.checks_answer_age
        # getattr: a ReportAnswer pickled by a controller of the previous release lacks the field.
        self.answers_not_counted = answer is not None and getattr(answer, "answers_not_counted", False)
        if answer is None:  # a controller of an older release: it neither numbers nor saves them
            self._reports.pop(report.seq, None)
            self._feedback.clear()
            self._feedback_again.clear()
            return
        if answer.other_config:
            self._wait_for_own_config(report)
            return
        if answer.restarted and answer.controller != self.controller:
            # A new controller, with our reports up to restored_seq (its last save): the
            # others, this one included, go again in order, and every feedback kept.
            self.controller = answer.controller
            self._reports = {seq: (dataclasses.replace(sent, resent=True), False)
                             for seq, (sent, _) in self._reports.items() if seq > answer.restored_seq}
            self._feedback_again.extend(kept.call for kept in self._feedback)
            self._feedback.clear()
            self._bound_feedback()
            return
        if self.controller is None:
            # The first controller this router hears from: feedback accepted before may have
            # gone to one that died since, unsaved. Sent again: one it has is refused, and kept.
            self._feedback_again.extend(kept.call for kept in self._feedback if kept.controller is None)
            self._feedback = deque(kept for kept in self._feedback if kept.controller is not None)
        self.controller = answer.controller
        if report.aggregate:
            self._reports[report.seq] = (report, True)  # merged now, or had been
        else:  # an empty one (sent to hear what was saved) has nothing to send again
            self._reports.pop(report.seq, None)
        self._saved(answer, mark)

    def _wait_for_own_config(self, report: IntervalReport) -> None:
        """The controller that answered serves another config: a redeploy changed it, and its
        controller runs another run. Which run this replica's reports belong to, the answer
        cannot tell: an old replica, serving on until Ray Serve stops it, meets the new config's
        controller (its reports are the previous run's, whose controller saved what it merged as
        it stopped: merged here they would count twice, and in a run of another config); a new
        replica may meet the old controller before Serve stops it (its reports are the new
        run's, which must get them). So the report is not taken, and nothing kept is dropped:
        all of it waits for a controller of this replica's own config, and goes to it as to a
        controller that was away. A new replica's comes within seconds; an old replica's never
        does, and as it stops (its last report made) its log says how many requests it served
        that no run counts."""
        self.not_taken(report)
        unsent = [sent for sent, has in self._reports.values() if not has]
        if any(sent.last for sent in unsent):
            waiting = sum(sent.aggregate.rows for sent in unsent)
            if waiting:
                logger.warning("serve-ab router: stopping with %d requests served under a config the controller "
                               "no longer runs (a redeploy changed it); they are counted in neither run", waiting)
        elif not self._warned_other_config:
            self._warned_other_config = True
            logger.warning("serve-ab router: the controller runs another config (a redeploy changed it); this "
                           "replica's reports wait for a controller of its own config, and if it is the old "
                           "replica, stopping soon, it will say as it stops how many no run counts")

    def _saved(self, answer: ReportAnswer, mark: int) -> None:
        """Drop what the controller's saves now hold, and tag the feedback accepted before
        ``mark`` with the save that will hold it."""
        for seq in [seq for seq, (_, has) in self._reports.items() if has and seq <= answer.saved_seq]:
            del self._reports[seq]
        for kept in self._feedback:
            if kept.save is None and kept.number < mark:
                kept.save = answer.captures + 1  # the saves begun so far may not hold it; the next does
        self._feedback = deque(kept for kept in self._feedback
                               if kept.save is None or kept.save > answer.saved_captures)
        merged = [seq for seq, (_, has) in self._reports.items() if has]
        for seq in merged[:max(len(merged) - MAX_KEPT_REPORTS, 0)]:
            del self._reports[seq]
            self._warn("reports")

    def accepted(self, call: FeedbackCall, sent_to: str | None) -> None:
        """The controller accepted ``call`` (answered 202), or refused it sent again as one it
        has: kept until it is saved. ``sent_to``: the controller this router knew of when it
        sent the call; if it has heard of a new one since (a restart, the answer on its way),
        the call goes again to the new one."""
        if sent_to != self.controller:
            self._feedback_again.append(call)
        else:
            self._feedback.append(_Kept(self._accepted, self.controller, None, call))
            self._accepted += 1
        self._bound_feedback()

    def _bound_feedback(self) -> None:
        while len(self._feedback) + len(self._feedback_again) > MAX_KEPT_FEEDBACK:
            (self._feedback or self._feedback_again).popleft()
            self._warn("feedback reports")

    def next_feedback_resend(self) -> FeedbackCall | None:
        """The next feedback to send a restarted controller again (taken off the list: once
        it accepts it, :meth:`accepted` keeps it as any other; :meth:`not_resent` puts back
        one whose controller was away)."""
        return self._feedback_again.popleft() if self._feedback_again else None

    def not_resent(self, call: FeedbackCall) -> None:
        self._feedback_again.appendleft(call)

    def waiting(self) -> bool:
        """Whether something kept waits for a report's answer (to be sent, tagged or dropped)."""
        return bool(self._reports or self._feedback or self._feedback_again)

    def kept(self) -> tuple[int, int]:
        """Reports and feedback calls kept now."""
        return len(self._reports), len(self._feedback) + len(self._feedback_again)

    def _warn(self, what: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("serve-ab router: the controller has not saved its figures for a long time "
                           "(is its state store down?); dropping the oldest %s kept for it. They are lost "
                           "only if the controller also restarts before it saves again", what)
