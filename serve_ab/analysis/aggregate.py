"""What one router served in one interval, summarised so the controller only merges.

A router folds every request into an :class:`IntervalAggregate` (a few hundred at a time,
:mod:`serve_ab.serving.core.observe`) and sends the aggregate once per interval; the
controller merges it into the run's figures (:meth:`ExperimentStats.merge
<serve_ab.analysis.accumulate.ExperimentStats.merge>`) and into the gates' windows
(:class:`GateAggregate`). Its size depends on versions, splits and
the buckets the interval touched, never on how many requests it holds, so the controller's
cost per interval is routers x versions x metrics whatever the request rate. Every part
merges exactly (sums, counts, log-bucket sketches, per-bucket sums, unit samples): a report
that could not be sent is merged into the next one, and nothing is lost but time.

Routers fold the answers they hold a few hundred at a time, as arrays
(:meth:`IntervalAggregate.served_rows`: a few numpy calls per version and split, not a
dozen Python calls per answer); :meth:`IntervalAggregate.served` folds one, the same way.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from serve_ab.analysis.accumulate import ShadowStats, VersionStats
from serve_ab.analysis.clusters import KEYLESS, GroupSums
from serve_ab.analysis.sketch import LogHistogram, bucket_indices
from serve_ab.analysis.tasks import PairComparison
from serve_ab.analysis.unit_sample import UnitSample
from serve_ab.analysis.units import SplitTotals
from serve_ab.routing import NUM_BUCKETS, SplitTable

__all__ = ["ROUTER_MAX_UNITS", "ROW_FIELDS", "GateAggregate", "IntervalAggregate", "SplitAggregate"]

# Distinct units a router sends per split and interval: past it, its sample's theta halves
# (and stays halved), so a report stays small under any number of users. The controller's
# sample (analysis/unit_sample.py) is a uniform sample at the smallest theta it merged.
ROUTER_MAX_UNITS = 1024

# What a router holds of each answer until it folds it in (IntervalAggregate.served_rows): a
# plain tuple in this order, the cheapest record to build once per request.
ROW_FIELDS = ("version", "latency_ms", "error_kind", "predicted_class", "score", "unit", "assigned",
              "mirrored", "split", "request_id")


@dataclass
class GateAggregate:
    """What one version did for the gates (requests the split assigned, and mirrored copies);
    ``groups``: the same per group of buckets, for the design effects of users who send many
    requests (:mod:`serve_ab.analysis.clusters`)."""

    requests: int = 0
    errors: int = 0
    latency_ms: LogHistogram = field(default_factory=LogHistogram)  # successful requests
    class_counts: collections.Counter = field(default_factory=collections.Counter)
    # With 1 - x too: the drift gates read the CDF near 1 from it (analysis/sketch.py).
    scores: LogHistogram = field(default_factory=lambda: LogHistogram(complement=True))
    groups: GroupSums = field(default_factory=GroupSums)

    def __setstate__(self, state: dict) -> None:
        # A router older than the per-group figures (during a rolling upgrade): its requests
        # and errors count as keyless; it has no latency, class or score per group.
        self.__dict__.update(state)
        if "groups" not in state:
            self.groups = GroupSums()
            self.groups.requests[KEYLESS], self.groups.errors[KEYLESS] = self.requests, self.errors
            self.groups.cells.complete = False  # keyed or not, nobody knows: no ceiling

    def add(self, latency_ms: float, ok: bool, predicted_class: int | None, score: float | None,
            unit: int | None = None) -> None:
        """One request of ``unit`` (None: keyless)."""
        self.add_many(np.array([latency_ms], dtype=float), np.array([ok]), [predicted_class],
                      np.array([math.nan if score is None else score], dtype=float), [unit])

    def add_many(self, latency_ms: np.ndarray, ok: np.ndarray, predicted_classes: Sequence[int | None],
                 scores: np.ndarray, units: Sequence[int | None]) -> None:
        """What :meth:`add` of each request leaves: every argument has one entry per request
        (a failed request's latency, class and score are not counted; a NaN score is none)."""
        good = latency_ms[ok]
        classes = [c if fine else None for c, fine in zip(predicted_classes, ok.tolist())]
        self.requests += int(ok.size)
        self.errors += int(ok.size - good.size)
        self.latency_ms.add_many(good)
        self.class_counts.update(c for c in classes if c is not None)
        scored = ok & np.isfinite(scores)
        buckets = np.full(ok.size, -1, dtype=np.int64)
        if scored.any():
            buckets[scored] = bucket_indices(scores[scored])
            self.scores.add_many(scores[scored], buckets[scored])
        self.groups.add_many(list(units), ok, good, classes, scores, buckets)

    def merge(self, other: GateAggregate) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.latency_ms.merge(other.latency_ms)
        self.class_counts.update(other.class_counts)
        self.scores.merge(other.scores)
        self.groups.merge(other.groups)


@dataclass
class SplitAggregate:
    """Requests a router assigned under one split (the weights it routed by)."""

    weights_pct: dict[str, float]
    metrics: dict[str, SplitTotals] = field(default_factory=dict)
    units: UnitSample = field(default_factory=lambda: UnitSample(max_units=ROUTER_MAX_UNITS))

    def __post_init__(self) -> None:
        self._table = SplitTable.from_weights(self.weights_pct)

    def bucket(self, version: str, unit: int | None) -> int | None:
        """The unit's bucket when this split routes it to ``version`` (an assigned request's
        always is); else None, a unit on its own, as the controller files such rows."""
        if unit is None:
            return None
        bucket = unit % NUM_BUCKETS
        return bucket if self._table.version_for_bucket(bucket) == version else None

    def buckets(self, version: str, units: list[int | None]) -> np.ndarray:
        """:meth:`bucket` of many units at once, with -1 for None."""
        out = np.full(len(units), -1, dtype=np.int64)
        keyed = [i for i, unit in enumerate(units) if unit is not None]
        if not keyed or version not in self._table.versions:
            return out
        buckets = (np.array([units[i] for i in keyed], dtype=np.uint64) % np.uint64(NUM_BUCKETS)).astype(np.int64)
        # searchsorted "right" is the table's bisect_right: the version owning each bucket.
        owners = np.searchsorted(self._table.upper_bounds, buckets, side="right")
        routed_here = owners == self._table.versions.index(version)
        out[np.array(keyed)[routed_here]] = buckets[routed_here]
        return out

    def totals(self, metric: str) -> SplitTotals:
        table = self.metrics.get(metric)
        if table is None:
            table = self.metrics[metric] = SplitTotals()
        return table


@dataclass
class IntervalAggregate:
    """One router's interval. ``versions``: every request not mirrored (the A/B figures);
    ``gates``: assigned and mirrored requests (the rollout's windows); ``splits``: assigned
    requests per routing epoch; ``shadow``: mirrored copies per shadow version;
    ``feedback_ids``: (request id, version, unit, epoch) of assigned answers, only when
    feedback comes without tokens (the controller must then join it by request id)."""

    versions: dict[str, VersionStats] = field(default_factory=dict)
    gates: dict[str, GateAggregate] = field(default_factory=dict)
    splits: dict[int, SplitAggregate] = field(default_factory=dict)
    shadow: dict[str, ShadowStats] = field(default_factory=dict)
    feedback_ids: list[tuple[str, str, int | None, int]] = field(default_factory=list)
    rows: int = 0  # requests and copies folded in
    # Each split's unit-sample theta once it halved: kept from interval to interval.
    unit_thetas: dict[int, int] = field(default_factory=dict)

    def served(self, version: str, latency_ms: float, error_kind: str | None, predicted_class: int | None,
               score: float | None, *, unit: int | None, assigned: bool, mirrored: bool, split: int,
               weights_pct: Mapping[str, float] | None, request_id: str | None = None,
               keep_request_id: bool = False) -> None:
        """One answer (or failure) of ``version``; ``weights_pct``: the weights of ``split``.

        Every answer enters ``versions`` unless mirrored; ``gates`` if assigned or mirrored;
        the split's per-bucket sums and unit sample if assigned and its weights are known.
        Routers fold many at once (:meth:`served_rows`); this is the same for one.
        """
        self.served_rows([(version, latency_ms, error_kind, predicted_class, score, unit, assigned, mirrored,
                           split, request_id)],
                         {} if weights_pct is None else {split: weights_pct}, keep_request_id)

    def served_rows(self, rows: Sequence[tuple], weights_by_split: Mapping[int, Mapping[str, float]],
                    keep_request_ids: bool = False) -> None:
        """Many answers at once, in the order they were served, each a tuple of
        :data:`ROW_FIELDS`: what :meth:`served` of each row leaves (the sums of floats may
        round differently), at a fraction of the cost, as arrays. ``weights_by_split``: the
        weights each split routed by (the rows of a split not in it enter no per-split figure)."""
        if not rows:
            return
        self.rows += len(rows)
        versions, latencies, error_kinds, classes, scores, units, assigned, mirrored, splits, request_ids = zip(*rows)
        latency_ms = np.array(latencies, dtype=float)
        ok = np.array([kind is None for kind in error_kinds])
        assigned_mask = np.array(assigned, dtype=bool)
        mirrored_mask = np.array(mirrored, dtype=bool)
        by_version: dict[str, list[int]] = {}
        for i, version in enumerate(versions):
            by_version.setdefault(version, []).append(i)
        for version, indices in by_version.items():
            index = np.array(indices)
            gated = index[assigned_mask[index] | mirrored_mask[index]]
            if gated.size:
                gate = self.gates.get(version)
                if gate is None:
                    gate = self.gates[version] = GateAggregate()
                rows_ = gated.tolist()
                gated_scores = np.array([math.nan if scores[i] is None else scores[i] for i in rows_], dtype=float)
                gate.add_many(latency_ms[gated], ok[gated], [classes[i] for i in rows_], gated_scores,
                              [units[i] for i in rows_])
            live = index[~mirrored_mask[index]]
            if live.size:
                stats = self.versions.get(version)
                if stats is None:
                    stats = self.versions[version] = VersionStats()
                good_index = live[ok[live]]
                good = good_index.tolist()
                live_assigned = int(assigned_mask[live].sum())
                unassigned = good_index[~assigned_mask[good_index]] if live_assigned < live.size else None
                stats.add_many(latency_ms[good], [error_kinds[i] for i in live.tolist() if error_kinds[i] is not None],
                               [classes[i] for i in good if classes[i] is not None], int(live.size),
                               live_assigned, None if unassigned is None else latency_ms[unassigned])
        # Per split, in the order splits were first served (as row by row): assigned answers.
        by_split: dict[int, dict[str, list[int]]] = {}
        for i in np.flatnonzero(assigned_mask & ~mirrored_mask).tolist():
            if splits[i] in weights_by_split:
                by_split.setdefault(splits[i], {}).setdefault(versions[i], []).append(i)
        for split, split_rows in by_split.items():
            record = self._split(split, weights_by_split[split])
            for version, indices in split_rows.items():
                index = np.array(indices)
                split_units = [units[i] for i in indices]
                keyed = [unit for unit in split_units if unit is not None]
                record.units.add_many(version, keyed, keyless=len(split_units) - len(keyed))
                buckets = record.buckets(version, split_units)
                good = ok[index]
                record.totals("error_rate").add_many(buckets, version, (~good).astype(float))
                if good.any():
                    record.totals("latency_ms").add_many(buckets[good], version, latency_ms[index[good]])
        if keep_request_ids:
            self.feedback_ids.extend(
                (request_ids[i], versions[i], units[i], splits[i]) for i in range(len(rows))
                if assigned[i] and not mirrored[i] and splits[i] in weights_by_split and request_ids[i])

    def _split(self, split: int, weights_pct: Mapping[str, float]) -> SplitAggregate:
        record = self.splits.get(split)
        if record is None:
            units = UnitSample(max_units=ROUTER_MAX_UNITS)
            if split in self.unit_thetas:
                units.theta = self.unit_thetas[split]
            record = self.splits[split] = SplitAggregate(dict(weights_pct), units=units)
        return record

    def pair(self, live_version: str, shadow_version: str, live_class: int | None, shadow_class: int | None,
             score_diff: float | None, shadow_latency_ms: float, error_kind: str | None,
             comparison: PairComparison | None = None, unit: int | None = None) -> None:
        """A mirrored copy's answer beside the live one; ``comparison``: the task's verdict on
        the pair (:mod:`serve_ab.analysis.tasks`; None: classes compared as a classifier's);
        ``unit``: the request's user (None: keyless)."""
        self.rows += 1
        shadow = self.shadow.get(shadow_version)
        if shadow is None:
            shadow = self.shadow[shadow_version] = ShadowStats()
        shadow.add(live_version, live_class, shadow_class, score_diff, shadow_latency_ms, error_kind,
                   comparison=comparison, unit=unit)

    def dropped(self, shadow_version: str) -> None:
        """A copy to ``shadow_version`` the router did not send (too many were waiting)."""
        self.rows += 1  # so that an interval of nothing else is still reported
        shadow = self.shadow.get(shadow_version)
        if shadow is None:
            shadow = self.shadow[shadow_version] = ShadowStats()
        shadow.dropped += 1

    def retried(self, version: str) -> None:
        """One of ``version``'s rows (served or to be) retried a request another version could
        not answer."""
        self.versions.setdefault(version, VersionStats()).retried += 1

    def merge(self, other: IntervalAggregate) -> None:
        """Fold a later (or an unsent) interval into this one."""
        for version, theirs in other.versions.items():
            self.versions.setdefault(version, VersionStats()).merge(theirs)
        for version, gate in other.gates.items():
            self.gates.setdefault(version, GateAggregate()).merge(gate)
        for epoch, split in other.splits.items():
            mine = self.splits.setdefault(epoch, SplitAggregate(dict(split.weights_pct)))
            for name, totals in split.metrics.items():
                mine.totals(name).merge(totals)
            mine.units.merge(split.units)
        for epoch, theta in other.unit_thetas.items():
            self.unit_thetas[epoch] = min(theta, self.unit_thetas.get(epoch, theta))
        for version, shadow in other.shadow.items():
            self.shadow.setdefault(version, ShadowStats()).merge(shadow)
        self.feedback_ids.extend(other.feedback_ids)
        self.rows += other.rows

    def next_interval(self) -> IntervalAggregate:
        """An empty aggregate that keeps each split's unit-sample theta (see ROUTER_MAX_UNITS)."""
        thetas = dict(self.unit_thetas)
        thetas.update({epoch: split.units.theta for epoch, split in self.splits.items()
                       if split.units.theta < thetas.get(epoch, split.units.theta + 1)})
        # A router sees a handful of epochs; keep the latest few.
        return IntervalAggregate(unit_thetas=dict(sorted(thetas.items())[-16:]))

    def __bool__(self) -> bool:
        return self.rows > 0
