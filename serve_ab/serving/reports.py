"""What the controller knows of its routers from their reports (no Ray).

Each router replica reports once per interval; the controller keeps, per replica, when it
last reported, how many requests its reports covered and how many tries of them failed
before they reached it (the controller was away), and which versions the
replica could not load. A replica silent for ``STALE_S`` is forgotten (scaled down, or its
node is gone), so a version that failed only there stops counting as failed. One forgotten
without having sent its last report (a stopping router's says so; an idle one reports every
``IDLE_REPORT_S``) crashed or lost its node: what it served after its last report is not in
the figures. It is counted (``routers_lost_total``) and logged, since nothing else would say
so. Silence is noticed when another router's report comes, and a restarted controller knows
only the routers that reported to it.

:class:`ReportNumbers` keeps each router's last report merged and saved, so that no report
is merged twice and a restarted controller is sent what its last save lacks;
:class:`RestartCatchUp` holds a restarted controller's ``/metrics`` until it has been sent it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from serve_ab.serving.core.messages import IntervalReport, ReportAnswer
from serve_ab.api.status import RoutersSeen

logger = logging.getLogger("ray.serve")

STALE_S = 60.0


@dataclass
class RouterSeen:
    last_report_s: float
    reports: int = 0
    rows: int = 0
    delayed_intervals: int = 0
    failed_versions: dict[str, str] = field(default_factory=dict)
    stopped: bool = False  # it sent its last report (IntervalReport.last)


class RouterReports:
    def __init__(self) -> None:
        self.routers: dict[str, RouterSeen] = {}
        self.reports_total = 0
        self.rows_total = 0  # requests and mirrored copies the reports covered
        self.delayed_intervals_total = 0
        self.routers_lost_total = 0  # forgotten without their last report

    def received(self, report: IntervalReport, now_s: float) -> bool:
        """Note ``report``; True when the versions failed somewhere changed with it."""
        before = self.failed_versions(now_s)
        seen = self.routers.get(report.router)
        if seen is None:
            seen = self.routers[report.router] = RouterSeen(now_s)
        seen.last_report_s = now_s
        seen.reports += 1
        seen.rows += report.aggregate.rows
        seen.delayed_intervals += report.delayed_intervals
        seen.failed_versions = dict(report.failed_versions)
        seen.stopped = seen.stopped or report.last
        self.reports_total += 1
        self.rows_total += report.aggregate.rows
        self.delayed_intervals_total += report.delayed_intervals
        for name in [n for n, r in self.routers.items() if r.last_report_s < now_s - STALE_S]:
            self._forget(name, now_s)
        return self.failed_versions(now_s) != before

    def _forget(self, name: str, now_s: float) -> None:
        seen = self.routers.pop(name)
        if seen.stopped:
            return
        self.routers_lost_total += 1
        last = time.strftime("%H:%M:%S", time.gmtime(seen.last_report_s))
        logger.warning("serve-ab controller: router replica %s has sent nothing for %.0fs and no last report: it "
                       "crashed, lost its node, or stopped while its last report could not be taken; what it "
                       "served after its last report (%s UTC) is not in the figures (up to "
                       "controller.report_interval_s of its requests, and, had this controller restarted since, "
                       "what its saves lacked)", name, now_s - seen.last_report_s, last)

    def counts(self) -> dict[str, int]:
        """The counters a restarted controller carries on, saved with the run's figures."""
        return {"lost": self.routers_lost_total, "delayed_intervals": self.delayed_intervals_total}

    def restore_counts(self, saved: object) -> None:
        """Carry on the counters :meth:`counts` saved. A restart set them to 0: a router lost
        before it vanished from status, and ``serve_ab_routers_lost_total`` went back from 1
        to 0 (live: a router killed, counted lost 60 s later, then the controller killed),
        though what that router served after its last report is still missing from the
        figures. A save of a release before, or a value that cannot be a count, leaves 0."""
        if not isinstance(saved, Mapping):
            return
        for key, attribute in (("lost", "routers_lost_total"), ("delayed_intervals", "delayed_intervals_total")):
            value = saved.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                setattr(self, attribute, value)

    def failed_versions(self, now_s: float) -> dict[str, str]:
        """Versions some live router could not load, with the first such router's error. One
        that sent its last report serves no more: its failure kept the version's weight at 0
        (and a rollout held) for a minute after a scale-down or a redeploy's restart."""
        out: dict[str, str] = {}
        for name, seen in sorted(self.routers.items()):
            if seen.last_report_s < now_s - STALE_S or seen.stopped:
                continue
            for version, error in seen.failed_versions.items():
                out.setdefault(version, f"{error} (router replica {name})")
        return out

    def live(self, now_s: float) -> set[str]:
        """The routers that reported within ``STALE_S`` and have not sent their last report."""
        return {name for name, seen in self.routers.items()
                if seen.last_report_s >= now_s - STALE_S and not seen.stopped}

    def seen(self, now_s: float) -> RoutersSeen:
        # One that sent its last report (a scale-down, a redeploy) reports no more: counted, it
        # showed 4 routers for a minute after an autoscaled 3 went down to 1.
        return RoutersSeen(routers=len(self.live(now_s)), reports_total=self.reports_total, rows_total=self.rows_total,
                           delayed_intervals_total=self.delayed_intervals_total,
                           routers_lost_total=self.routers_lost_total,
                           failed_versions=self.failed_versions(now_s))


#: A router's last report number is kept this long after its last report: routers come and go
#: with their replicas, and one silent this long has nothing left to send again.
NUMBERS_KEPT_S = 3600.0


class ReportNumbers:
    """The last report merged from each router and the last the controller's saves hold: what
    a router needs to drop what it keeps, and a restarted controller to merge each report once
    (serving/core/ledger.py)."""

    def __init__(self, clock: Callable[[], float], restored: Mapping[str, int] | None = None) -> None:
        self.clock = clock
        self.merged: dict[str, int] = {str(r): int(seq) for r, seq in (restored or {}).items()}
        self.saved: dict[str, int] = dict(self.merged)
        self._seen_s = {router: clock() for router in self.merged}
        self.captures = 0  # saves begun
        self.saved_captures = 0  # saves done

    def is_new(self, report: IntervalReport) -> bool:
        """Whether ``report`` is to be merged: numbered past the last merged from its router, or
        not numbered (a router of an older release). Noted as merged when it is."""
        self._seen_s[report.router] = self.clock()
        if not report.seq:
            return True
        if report.seq <= self.merged.get(report.router, 0):
            return False  # merged already: a report sent again whose first answer was lost
        self.merged[report.router] = report.seq
        return True

    def capture(self) -> tuple[int, dict[str, int]]:
        """A save begins: its number, and the numbers it holds (taken with the figures)."""
        old = self.clock() - NUMBERS_KEPT_S
        for router in [r for r, seen_s in self._seen_s.items() if seen_s < old]:
            del self._seen_s[router]
            self.merged.pop(router, None)
        self.captures += 1
        return self.captures, dict(self.merged)

    def done(self, number: int, merged: Mapping[str, int]) -> None:
        """Save ``number``, which held ``merged``, is written."""
        if number > self.saved_captures:
            self.saved_captures, self.saved = number, dict(merged)

    def answer(self, controller: str, router: str, restarted: bool = False) -> ReportAnswer:
        """``restarted``: the router's reports up to the last this controller's saves hold are
        what it has for good. (Merged here but not saved, the rest go again: merged once more
        only by a controller that has not, and a replica that lost its claim to a redeploy's
        new one merges but no longer saves.)"""
        saved = self.saved.get(router, 0)
        return ReportAnswer(controller, saved, self.captures, self.saved_captures,
                            restarted=restarted, restored_seq=saved if restarted else 0, checks_answer_age=True,
                            answers_not_counted=True)


#: The longest a restarted controller holds /metrics for routers that have not caught up: an
#: idle router reports every IDLE_REPORT_S (20 s), and one that died never does.
CATCH_UP_MAX_S = 30.0


class RestartCatchUp:
    """Which routers have yet to send a restarted controller what its last save lacked.

    The figures a controller restores are its last save's; the routers send it the rest
    (serving/core/ledger.py) at their next report, then the feedback they kept. A scrape in
    between read counters below the previous scrape's (live: 3,727 requests, then 3,559 two
    seconds later, then 3,770), which Prometheus takes for a counter reset: ``rate()`` over
    every window holding that scrape counted the whole run again (146 requests a second for
    30 s, against 14 sent). So ``/metrics`` waits until each router the save knew has sent a
    report made after it heard of this controller (not ``resent``: a router sends its reports
    again and its feedback in one flush, so its next report comes after all of it), has
    stopped, or ``CATCH_UP_MAX_S`` went by.

    The routers waited for are the ones live at the save (:meth:`RouterReports.live`, saved
    as ``routers_live``), not every router whose report number the save keeps: those stay an
    hour (``NUMBERS_KEPT_S``), and a router scaled down, replaced by a redeploy or crashed
    before the save never reports again (measured: one such router held every restart's
    ``/metrics`` the whole 30 s while the live one had caught up in 2 s). A router that
    crashed less than ``STALE_S`` before the save still counts as live there (an idle one
    reports only every 20 s), so that restart waits ``CATCH_UP_MAX_S`` for it.
    """

    def __init__(self, routers: Iterable[str], now_s: float, max_s: float = CATCH_UP_MAX_S) -> None:
        self.waiting = set(routers)
        self.until_s = now_s + max_s
        self.started_s = now_s

    def pending(self, now_s: float) -> set[str]:
        """The routers still waited for (none once ``CATCH_UP_MAX_S`` went by)."""
        return set(self.waiting) if now_s < self.until_s else set()

    def received(self, report: IntervalReport, controller: str) -> None:
        """A report this controller took (merged, or known already)."""
        if report.router in self.waiting and (report.last or (report.controller_seen == controller
                                                              and not report.resent)):
            self.waiting.discard(report.router)

    def holding(self, now_s: float) -> str | None:
        """Why /metrics must wait now, or None."""
        if not self.waiting or now_s >= self.until_s:
            self.waiting.clear()
            return None
        return (f"the controller restarted {now_s - self.started_s:.0f}s ago from its last save, and "
                f"{len(self.waiting)} router replica(s) have not sent it again what that save lacks: counters "
                "read now would be lower than before the restart, which Prometheus takes for a reset; retry in "
                "a few seconds")
