"""What the controller knows of its routers from their reports: a router that falls silent
without its last report is counted and logged as lost (no Ray)."""

from __future__ import annotations

import logging

from serve_ab.analysis.aggregate import IntervalAggregate
from serve_ab.serving.core.messages import IntervalReport
from serve_ab.serving.reports import STALE_S, RouterReports


def report(router: str, last: bool = False, failed_versions: dict[str, str] | None = None) -> IntervalReport:
    return IntervalReport(router, IntervalAggregate(), last=last, failed_versions=failed_versions or {})


def test_a_router_silent_without_its_last_report_is_counted_lost_and_logged(caplog):
    reports = RouterReports()
    reports.received(report("crashed"), now_s=1000.0)
    reports.received(report("stopped"), now_s=1000.0)
    reports.received(report("stopped", last=True), now_s=1001.0)
    reports.received(report("alive"), now_s=1000.0 + STALE_S)
    assert reports.seen(1000.0 + STALE_S).routers_lost_total == 0  # silent for a minute, not more
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        reports.received(report("alive"), now_s=1002.0 + STALE_S)
    figures = reports.seen(1002.0 + STALE_S)
    assert figures.routers == 1 and figures.routers_lost_total == 1
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("serve-ab controller: router replica crashed has sent nothing for 62s and no last "
                           "report: it crashed, lost its node, or stopped while its last report could not be "
                           "taken; what it served after its last report (00:16:40 UTC) is not in the figures")


def test_a_router_that_sent_its_last_report_is_not_counted_as_reporting():
    """Seen live: an autoscaled router went from 3 replicas to 1, and status and
    serve_ab_routers_reporting said 4, then 3, then 2, for the minute after each stop."""
    reports = RouterReports()
    for name in ("r1", "r2", "r3"):
        reports.received(report(name), now_s=1000.0)
    assert reports.seen(1000.0).routers == 3
    reports.received(report("r2", last=True), now_s=1001.0)
    reports.received(report("r3", last=True), now_s=1001.0)
    reports.received(report("r1"), now_s=1002.0)
    figures = reports.seen(1002.0)
    assert figures.routers == 1 and figures.routers_lost_total == 0


def test_a_version_failed_only_on_a_stopped_router_is_failed_no_more():
    """A router that could not load v2 and was then replaced (a redeploy, a scale-down): the
    live routers serve v2, so its failure no longer holds v2's weight at 0 for a minute."""
    reports = RouterReports()
    reports.received(report("old", failed_versions={"v2": "OSError: no model.onnx"}), now_s=1000.0)
    reports.received(report("new"), now_s=1000.0)
    assert set(reports.failed_versions(1000.0)) == {"v2"}
    reports.received(report("old", last=True, failed_versions={"v2": "OSError: no model.onnx"}), now_s=1001.0)
    assert reports.failed_versions(1001.0) == {}
    assert reports.seen(1001.0).failed_versions == {}
