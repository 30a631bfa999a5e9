"""What the controller knows of its routers from their reports (no Ray).

Each router replica reports once per interval; the controller keeps, per replica, when it
last reported, how many requests its reports covered and how many intervals reached it
late (merged into a later report while the controller was away), and which versions the
replica could not load. A replica silent for ``STALE_S`` is forgotten (scaled down, or its
node is gone), so a version that failed only there stops counting as failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serve_ab.serving.core.messages import IntervalReport

STALE_S = 60.0


@dataclass
class RouterSeen:
    last_report_s: float
    reports: int = 0
    rows: int = 0
    delayed_intervals: int = 0
    failed_versions: dict[str, str] = field(default_factory=dict)


class RouterReports:
    def __init__(self) -> None:
        self.routers: dict[str, RouterSeen] = {}
        self.reports_total = 0
        self.rows_total = 0  # requests and mirrored copies the reports covered
        self.delayed_intervals_total = 0

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
        self.reports_total += 1
        self.rows_total += report.aggregate.rows
        self.delayed_intervals_total += report.delayed_intervals
        for name in [n for n, r in self.routers.items() if r.last_report_s < now_s - STALE_S]:
            del self.routers[name]
        return self.failed_versions(now_s) != before

    def failed_versions(self, now_s: float) -> dict[str, str]:
        """Versions some live router could not load, with the first such router's error."""
        out: dict[str, str] = {}
        for name, seen in sorted(self.routers.items()):
            if seen.last_report_s < now_s - STALE_S:
                continue
            for version, error in seen.failed_versions.items():
                out.setdefault(version, f"{error} (router replica {name})")
        return out

    def to_dict(self, now_s: float) -> dict[str, object]:
        live = [seen for seen in self.routers.values() if seen.last_report_s >= now_s - STALE_S]
        return {"routers": len(live), "reports_total": self.reports_total, "rows_total": self.rows_total,
                "delayed_intervals_total": self.delayed_intervals_total,
                "failed_versions": self.failed_versions(now_s)}
