"""Prometheus metrics of one app, rendered from the controller's figures on every scrape.

The router answers ``GET <route_prefix>/metrics`` by asking the app's single controller,
which calls :func:`render` with its :class:`~serve_ab.analysis.accumulate.ExperimentStats`
snapshot and its status. There is one controller replica per app, so every router replica
answers a scrape with the same app-wide counters. Nothing is counted twice: a fresh
registry holds one collector that turns the snapshot into metric families, and no
prometheus_client global state is touched (a replica may serve several apps).

Every series carries ``application`` (the Ray Serve application's name, the label Ray Serve's
own ``ray_serve_*`` series carry) and ``model``; per-version series carry ``version`` (for
shadow metrics, the shadow version). Two apps may serve one model (an A/B test beside a
canary, each with its own state store): scraped by one Prometheus, their series would be the
same but for the scrape's own labels, and a dashboard or a promql gate selecting by model
would add the other app's requests to its own; ``application`` keeps them apart. A restarted
controller carries the counters on from its last save (its ``/metrics`` waits until the routers
sent what that save lacks: serving/reports.py, ``RestartCatchUp``); a new run (a changed
config) starts them from 0, which ``rate()`` and ``increase()`` handle;
``serve_ab_stats_start_time_seconds`` says when the run started.

Per version:

- ``serve_ab_requests_total`` counter: requests served or failed.
- ``serve_ab_assigned_requests_total`` counter: of those, the ones the assignment chose
  (not pinned, not a retry on another version): the sample-ratio figure.
- ``serve_ab_retried_requests_total`` counter: of those, the ones it answered as the fallback
  for a version that could not (counted there too, as a request and an error), so
  ``sum(requests_total) - sum(retried_requests_total)`` counts each request sent once.
- ``serve_ab_errors_total{kind}`` counter, kind in unavailable|output|model|input|cancelled
  (every kind is always present, 0 until it happens, so ``rate()`` has a series).
- ``serve_ab_request_duration_seconds`` histogram: the time the version took to answer each successful
  request (what the latency gates judge), not the request end to end.
- ``serve_ab_predictions_total{class}`` counter: predicted class of successful requests.
- ``serve_ab_feedback_total{metric}`` counter: feedback reports joined to the version.
- ``serve_ab_feedback_conversions_total{metric}`` counter: reports that converted
  (conversion metrics); ``rate(conversions) / rate(feedback)`` is the conversion rate.
- ``serve_ab_feedback_value`` summary (``_sum``, ``_count``){metric}: reported values of
  mean metrics such as revenue; a summary, not a counter, because values may be negative.
- ``serve_ab_traffic_weight_ratio`` gauge: the share of traffic each version is routed now
  (the rollout's current weights, else the config's), 0..1.

Shadow traffic (when the app mirrors to a shadow version; ``version`` is the shadow):

- ``serve_ab_shadow_requests_total`` counter: copies sent.
- ``serve_ab_shadow_dropped_total`` counter: copies not sent, because the router had too
  many waiting for the shadow (serving/core/mirror.py).
- ``serve_ab_shadow_rows_not_compared_total`` counter: rows of the compared requests beyond
  each one's first, which no comparison reads (batched requests).
- ``serve_ab_shadow_errors_total{kind}`` counter.
- ``serve_ab_shadow_comparisons_total{live_version}`` counter: answered pairs compared.
- ``serve_ab_shadow_agreements_total`` counter: pairs whose predicted classes agree;
  ``rate(agreements) / rate(comparisons)`` is the recent agreement ratio.
- ``serve_ab_shadow_agreement_ratio`` gauge: agreement since start (absent before the
  first pair).
- ``serve_ab_shadow_request_duration_seconds`` histogram.

Per app:

- ``serve_ab_feedback_unjoined_total`` counter: feedback that matched no served request.
- ``serve_ab_feedback_duplicates_total`` counter: feedback refused as a repeat (same request, metric).
- ``serve_ab_feedback_previous_run_total`` counter: feedback on answers given before this run
  started (a changed config started a new run), accepted and not counted.
- ``serve_ab_stats_start_time_seconds`` gauge: Unix time the counters started from.
- ``serve_ab_routers_reporting`` gauge: router replicas that reported in the last minute and have not stopped;
  ``serve_ab_router_reports_total`` counter: interval reports merged;
  ``serve_ab_router_intervals_delayed_total`` counter: reports a router sent late because the
  controller was away when they were due, one per failed try (serving/core/ledger.py);
  ``serve_ab_routers_lost_total`` counter: router replicas that fell silent without their
  last report (serving/reports.py).
- ``serve_ab_version_load_failed{version}`` gauge: 1 when some router could not load it.
- ``serve_ab_rollout_info{strategy,stable,candidate}`` gauge, always 1 (rollouts only).
- ``serve_ab_rollout_phase{phase}`` gauge, a state set: one series per phase (``static``
  for an app without rollout, and every rollout phase), 1 for the current one.
- ``serve_ab_rollout_step_index`` gauge: the current canary step, counted from 0;
  ``serve_ab_rollout_steps`` gauge: how many steps there are.
- ``serve_ab_rollout_failures_total`` counter: failed analyses of this rollout;
  ``serve_ab_rollout_failure_limit`` gauge: failures tolerated before an abort.
- ``serve_ab_rollout_window_requests{version}`` gauge: requests in the gates' window at the
  gates' latest analysis (the step so far, or ``window_s``), the evidence they read.

Per notification receiver (``receiver``: its name, else type and host; see
:mod:`serve_ab.rollout.notify`):

- ``serve_ab_notifications_sent_total`` counter: rollout events delivered.
- ``serve_ab_notifications_failed_total`` counter: events given up on after every attempt,
  or dropped because the receiver was too far behind.

Per gate, from the latest analysis (``version`` is the candidate; ``gate`` the gate's label,
e.g. ``latency_p95_ms <= 1.5x stable``; ``metric`` and ``bound`` as configured):

- ``serve_ab_gate_value`` gauge: what was compared with the threshold (absent while the
  gate had no data); ``serve_ab_gate_threshold`` gauge: the threshold.
- ``serve_ab_gate_verdict{verdict}`` gauge, a state set over pass|fail|inconclusive.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from serve_ab.api.status import RolloutStatus
from serve_ab.config.experiment import ExperimentConfig
from serve_ab.analysis.accumulate import ERROR_KINDS
from serve_ab.rollout.gates import GateVerdict
from serve_ab.rollout.machine import Phase

PREFIX = "serve_ab_"
#: ``static``: an app without rollout; then every phase of a canary or blue-green rollout.
PHASES = ("static", *(phase.value for phase in Phase))
VERDICTS = tuple(verdict.value for verdict in GateVerdict)
#: Prometheus' text format 0.0.4: what every Prometheus 2.x scrapes.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


def render(cfg: ExperimentConfig, snapshot: Mapping[str, Any], status: RolloutStatus, app: str) -> tuple[bytes, str]:
    """The body and content type of a ``/metrics`` answer.

    ``snapshot`` is :meth:`ExperimentStats.snapshot` (``samples=False`` is enough);
    ``status`` is the controller's (``ControllerCore.status``); ``app`` the Serve application's
    name, the ``application`` label of every series.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(cfg, snapshot, status, app))
    return generate_latest(registry), CONTENT_TYPE


class _SnapshotCollector(Collector):
    def __init__(self, cfg: ExperimentConfig, snapshot: Mapping[str, Any], status: RolloutStatus, app: str):
        self.model = cfg.model
        self.app = app
        self.snapshot = snapshot
        self.status = status

    def collect(self) -> Iterator[Metric]:
        # The label is added here, once, rather than in each family's label list: no family
        # can be left without it.
        for family in self._families():
            family.samples = [sample._replace(labels={"application": self.app, **sample.labels})
                              for sample in family.samples]
            yield family

    def _families(self) -> Iterator[Metric]:
        yield from self._versions()
        yield from self._shadow()
        yield from self._app()
        yield from self._rollout()
        yield from self._gates()

    # -- per version -----------------------------------------------------------------------

    def _versions(self) -> Iterator[Metric]:
        model, versions = self.model, self.snapshot["versions"]
        labels = ["model", "version"]
        requests = CounterMetricFamily(PREFIX + "requests_total", "Requests served or failed, per version.",
                                       labels=labels)
        assigned = CounterMetricFamily(
            PREFIX + "assigned_requests_total",
            "Requests whose version the assignment chose (not pinned, not retried elsewhere).",
            labels=labels)
        retried = CounterMetricFamily(
            PREFIX + "retried_requests",
            "Of the requests, those the version answered as the fallback for a version that could not "
            "(counted there too): sum(requests) - sum(retried) counts each request once.", labels=labels)
        errors = CounterMetricFamily(PREFIX + "errors_total", "Failed requests, per version and kind.",
                                     labels=[*labels, "kind"])
        duration = HistogramMetricFamily(PREFIX + "request_duration_seconds",
                                         "Time the version took to answer a successful request (its model call; isolated: the call to "
                                         "its deployment), in seconds; not the HTTP request end to end.", labels=labels)
        predictions = CounterMetricFamily(PREFIX + "predictions_total",
                                          "Predicted class of successful requests.", labels=[*labels, "class"])
        feedback = CounterMetricFamily(PREFIX + "feedback_total", "Feedback reports joined to the version.",
                                       labels=[*labels, "metric"])
        conversions = CounterMetricFamily(PREFIX + "feedback_conversions_total",
                                          "Feedback reports of a conversion metric that converted.",
                                          labels=[*labels, "metric"])
        values = SummaryMetricFamily(PREFIX + "feedback_value",
                                     "Values reported for a mean feedback metric (e.g. revenue).",
                                     labels=[*labels, "metric"])
        for version, stats in versions.items():
            ids = [model, version]
            requests.add_metric(ids, stats["requests"])
            assigned.add_metric(ids, stats["assigned"])
            retried.add_metric(ids, stats.get("retried", 0))
            by_kind = stats["errors_by_kind"]
            for kind in (*ERROR_KINDS, *sorted(set(by_kind) - set(ERROR_KINDS))):
                errors.add_metric([*ids, kind], by_kind.get(kind, 0))
            _add_histogram(duration, ids, stats["latency"])
            for cls, n in stats["predictions"].items():
                predictions.add_metric([*ids, str(cls)], n)
            for name, totals in stats["feedback"].items():
                feedback.add_metric([*ids, name], totals["n"])
                if totals["kind"] == "conversion":
                    conversions.add_metric([*ids, name], totals["successes"])
                else:
                    values.add_metric([*ids, name], count_value=totals["n"], sum_value=totals["sum"])
        yield from (requests, assigned, retried, errors, duration, predictions, feedback, conversions, values)

        weights = GaugeMetricFamily(PREFIX + "traffic_weight_ratio",
                                    "Share of traffic per version routed now (the rollout's current weights), 0..1.", labels=labels)
        for version, weight_pct in self.status.weights_pct.items():
            weights.add_metric([model, version], float(weight_pct) / 100.0)
        yield weights

    # -- shadow ----------------------------------------------------------------------------

    def _shadow(self) -> Iterator[Metric]:
        shadow = self.snapshot.get("shadow")
        if not shadow:
            return
        ids = [self.model, shadow["version"]]
        labels = ["model", "version"]
        mirrored = CounterMetricFamily(PREFIX + "shadow_requests_total", "Copies sent to the shadow version.",
                                       labels=labels)
        mirrored.add_metric(ids, shadow["mirrored"])
        dropped = CounterMetricFamily(
            PREFIX + "shadow_dropped", "Copies not sent to the shadow version: the router had too many "
            "waiting for it (it answers slower than live requests come).", labels=labels)
        dropped.add_metric(ids, shadow.get("dropped", 0))
        rows = CounterMetricFamily(
            PREFIX + "shadow_rows_not_compared", "Rows of the compared requests beyond each one's first: only a "
            "request's first row is compared, so no comparison reads these rows of batched requests.", labels=labels)
        rows.add_metric(ids, shadow.get("rows_not_compared", 0))
        errors = CounterMetricFamily(PREFIX + "shadow_errors_total", "Copies the shadow version failed.",
                                     labels=[*labels, "kind"])
        by_kind = shadow["errors_by_kind"]
        for kind in (*ERROR_KINDS, *sorted(set(by_kind) - set(ERROR_KINDS))):
            errors.add_metric([*ids, kind], by_kind.get(kind, 0))
        comparisons = CounterMetricFamily(
            PREFIX + "shadow_comparisons_total",
            "Live and shadow answers compared, per live version.", labels=[*labels, "live_version"])
        for live_version, n in shadow["pairs_by_live_version"].items():
            comparisons.add_metric([*ids, live_version], n)
        agreements = CounterMetricFamily(PREFIX + "shadow_agreements_total",
                                         "Compared pairs whose predicted classes agree.", labels=labels)
        agreements.add_metric(ids, shadow["agree"])
        duration = HistogramMetricFamily(PREFIX + "shadow_request_duration_seconds",
                                         "Latency of the shadow version's answers, in seconds.", labels=labels)
        _add_histogram(duration, ids, shadow["latency"])
        yield from (mirrored, dropped, rows, errors, comparisons, agreements, duration)
        if shadow["pairs"]:
            ratio = GaugeMetricFamily(PREFIX + "shadow_agreement_ratio",
                                      "Share of compared pairs that agree, since the counters started.",
                                      labels=labels)
            ratio.add_metric(ids, shadow["agree"] / shadow["pairs"])
            yield ratio

    # -- per app ---------------------------------------------------------------------------

    def _app(self) -> Iterator[Metric]:
        unjoined = CounterMetricFamily(PREFIX + "feedback_unjoined_total",
                                       "Feedback that matched no request served.", labels=["model"])
        unjoined.add_metric([self.model], self.snapshot.get("feedback_unjoined", 0))
        duplicates = CounterMetricFamily(PREFIX + "feedback_duplicates_total",
                                         "Feedback refused: its request and metric were reported already.",
                                         labels=["model"])
        duplicates.add_metric([self.model], self.snapshot.get("feedback_duplicates", 0))
        previous_run = CounterMetricFamily(PREFIX + "feedback_previous_run_total",
                                           "Feedback not counted: its answer was given before this run started "
                                           "(a changed config started a new run).", labels=["model"])
        previous_run.add_metric([self.model], self.snapshot.get("feedback_previous_run", 0))
        started = GaugeMetricFamily(PREFIX + "stats_start_time_seconds",
                                    "Unix time the counters started from (the controller's start).",
                                    labels=["model"])
        started.add_metric([self.model], self.snapshot["started_at_s"])
        yield from (unjoined, duplicates, previous_run, started)
        yield from self._routers()

    def _routers(self) -> Iterator[Metric]:
        """What the routers' interval reports say: how many report, what reached the
        controller late (merged into a later report while it was away), what failed to load."""
        routers = self.status.routers
        model = self.model
        live = GaugeMetricFamily(PREFIX + "routers_reporting",
                                 "Router replicas that reported in the last minute and have not stopped.", labels=["model"])
        live.add_metric([model], routers.routers)
        reports = CounterMetricFamily(PREFIX + "router_reports_total",
                                      "Interval reports the controller merged, from every router.", labels=["model"])
        reports.add_metric([model], routers.reports_total)
        delayed = CounterMetricFamily(
            PREFIX + "router_intervals_delayed_total",
            "Reports a router could not send when due (the controller was away) and sent later, one per failed try.",
            labels=["model"])
        delayed.add_metric([model], routers.delayed_intervals_total)
        lost = CounterMetricFamily(
            PREFIX + "routers_lost",
            "Router replicas that fell silent for a minute without their last report (crashed, or their node "
            "was lost): what each served after its last report is not counted.", labels=["model"])
        lost.add_metric([model], routers.routers_lost_total)
        failed = GaugeMetricFamily(PREFIX + "version_load_failed",
                                   "1 when some router replica could not load the version: it gets no traffic, unless it is "
                                   "the rollout's stable (or promoted candidate), whose share that router serves by its fallback.",
                                   labels=["model", "version"])
        broken = self.status.failed_versions
        for version in self.snapshot["versions"]:
            failed.add_metric([model, version], float(version in broken))
        yield from (live, reports, delayed, lost, failed)

    def _rollout(self) -> Iterator[Metric]:
        status, model = self.status, self.model
        current = status.phase
        phase = GaugeMetricFamily(PREFIX + "rollout_phase",
                                  "Rollout phase as a state set: 1 for the current phase, 0 for the others.",
                                  labels=["model", "phase"])
        for name in (*PHASES, *([current] if current not in PHASES else [])):
            phase.add_metric([model, name], float(name == current))
        yield phase
        if not status.strategy:
            return
        info = GaugeMetricFamily(PREFIX + "rollout_info", "The rollout: strategy, stable and candidate.",
                                 labels=["model", "strategy", "stable", "candidate"])
        info.add_metric([model, status.strategy, status.stable or "", status.candidate or ""], 1.0)
        yield info
        for key, name, doc in (
            ("step_index", "rollout_step_index", "Current canary step, counted from 0."),
            ("steps_total", "rollout_steps", "Number of canary steps."),
            ("failure_limit", "rollout_failure_limit", "Failed analyses tolerated before an abort."),
        ):
            if getattr(status, key) is not None:
                gauge = GaugeMetricFamily(PREFIX + name, doc, labels=["model"])
                gauge.add_metric([model], getattr(status, key))
                yield gauge
        if status.failures_total is not None:
            failures = CounterMetricFamily(PREFIX + "rollout_failures_total", "Failed analyses of this rollout.",
                                           labels=["model"])
            failures.add_metric([model], status.failures_total)
            yield failures
        window = status.window
        if window is not None:
            requests = GaugeMetricFamily(PREFIX + "rollout_window_requests",
                                         "Requests in the gates' window at their latest analysis (the step so far, or "
                                         "its last window_s), per version.", labels=["model", "version"])
            for version, n in window.requests.items():
                requests.add_metric([model, version], n)
            yield requests
        receivers = status.notifications
        if receivers:
            sent = CounterMetricFamily(PREFIX + "notifications_sent_total", "Rollout events delivered, per receiver.",
                                       labels=["model", "receiver"])
            failed = CounterMetricFamily(PREFIX + "notifications_failed_total",
                                         "Rollout events not delivered after every attempt, or dropped, per receiver.",
                                         labels=["model", "receiver"])
            for receiver, counts in receivers.items():
                sent.add_metric([model, receiver], counts.sent)
                failed.add_metric([model, receiver], counts.failed)
            yield from (sent, failed)

    def _gates(self) -> Iterator[Metric]:
        results = self.status.gates
        if not results:
            return
        labels = ["model", "version", "gate", "metric", "bound"]
        value = GaugeMetricFamily(PREFIX + "gate_value",
                                  "Latest value each gate compared with its threshold.", labels=labels)
        threshold = GaugeMetricFamily(PREFIX + "gate_threshold", "Each gate's threshold.", labels=labels)
        verdict = GaugeMetricFamily(PREFIX + "gate_verdict",
                                    "Latest verdict per gate as a state set over pass, fail, inconclusive.",
                                    labels=[*labels, "verdict"])
        seen: dict[str, int] = {}
        for result in results:
            # Two gates with the same label (e.g. configured twice) must not become one series.
            seen[result.gate] = seen.get(result.gate, 0) + 1
            gate = result.gate + (f" #{seen[result.gate]}" if seen[result.gate] > 1 else "")
            ids = [self.model, self.status.candidate or "", gate, result.metric, result.bound]
            if result.value is not None and not math.isnan(result.value):
                value.add_metric(ids, result.value)
            threshold.add_metric(ids, result.threshold)
            for name in VERDICTS:
                verdict.add_metric([*ids, name], float(result.verdict == name))
        yield from (value, threshold, verdict)


def _add_histogram(family: HistogramMetricFamily, labels: list[str], latency: Mapping[str, Any]) -> None:
    """Non-cumulative bucket counts (the snapshot's) to Prometheus' cumulative ``le`` buckets."""
    bounds, counts = latency["buckets_le_s"], latency["bucket_counts"]
    if len(counts) != len(bounds) + 1:
        raise ValueError(f"latency has {len(counts)} bucket counts for {len(bounds)} bounds; "
                         f"expected {len(bounds) + 1} (the last one is +Inf)")
    cumulative, buckets = 0, []
    for bound, count in zip([*bounds, math.inf], counts):
        cumulative += count
        buckets.append((floatToGoString(bound), cumulative))
    family.add_metric(labels, buckets, sum_value=latency["sum_s"])
