"""Cumulative figures of a running experiment, per version: what the A/B report and the
Prometheus metrics are computed from.

Routers summarise each interval of what they served in an
:class:`~serve_ab.analysis.aggregate.IntervalAggregate`, and the controller merges it
(:meth:`ExperimentStats.merge`); every feedback joined to its version comes one by one
(:meth:`ExperimentStats.record_feedback`). :meth:`ExperimentStats.record` and
:meth:`ExperimentStats.record_pair` fold single rows (tests, simulations). Every figure is
mergeable, and memory stays bounded however long the experiment runs: counts and sums are
exact, latencies are kept as a fixed-bucket histogram (exact counts, for Prometheus) plus a
log-bucket sketch within 1% (``analysis/sketch.py``, for percentiles and the plots), the
timeline coarsens as it grows, and the per-unit
figures the A/B comparisons use are per-bucket sums per split (``analysis/units.py``)
with a bounded uniform sample of users for the sample-ratio check.

:meth:`ExperimentStats.snapshot` returns plain JSON-able data; its layout is documented
there and is the contract between this module, ``analysis/report.py`` and ``metrics.py``.
"""

from __future__ import annotations

import bisect
import collections
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from serve_ab.analysis.clusters import KEYLESS, FlipGroups, ValueGroups
from serve_ab.analysis.sketch import LogHistogram, bucket_indices
from serve_ab.analysis.tasks import PairComparison
from serve_ab.analysis.unit_sample import UnitSample
from serve_ab.analysis.units import SplitTotals
from serve_ab.routing import NUM_BUCKETS, SplitTable

if TYPE_CHECKING:
    from serve_ab.analysis.aggregate import IntervalAggregate

# Prometheus' default latency buckets start at 5 ms; a small model answers in well under
# one, so the buckets start at 0.25 ms. Upper bounds in seconds (base unit).
LATENCY_BUCKETS_S = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                     0.5, 1.0, 2.5, 5.0, 10.0)
# Splits (weights routed by) kept apart for the per-unit figures; a rollout has a handful.
# Past this the oldest is dropped (counted in ``splits_dropped``, and the report warns).
MAX_SPLITS = 32
TIMELINE_BUCKET_S = 10.0
MAX_TIMELINE_POINTS = 360  # past this, neighbouring points merge and the bucket doubles

ERROR_KINDS = ("unavailable", "timeout", "output", "model", "input", "cancelled")


@dataclass
class LatencyStats:
    """Latencies of successful requests: Prometheus' fixed buckets (exact counts) and a
    log-bucket sketch (quantiles within 1%), both mergeable across routers and intervals."""

    bucket_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    count: int = 0
    sum_s: float = 0.0
    sketch: LogHistogram = field(default_factory=LogHistogram)

    def add(self, latency_ms: float) -> None:
        latency_s = latency_ms / 1000.0
        # The first bucket whose upper bound is >= the latency (Prometheus' "le").
        self.bucket_counts[bisect.bisect_left(LATENCY_BUCKETS_S, latency_s)] += 1
        self.count += 1
        self.sum_s += latency_s
        self.sketch.add(latency_ms)

    def add_many(self, latencies_ms: np.ndarray) -> None:
        """:meth:`add` of every latency of a float array (the sums may round differently)."""
        if not latencies_ms.size:
            return
        latencies_s = latencies_ms / 1000.0
        # searchsorted "left" is bisect_left: the first bound >= the latency, as in add().
        per_bucket = np.bincount(np.searchsorted(LATENCY_BUCKETS_S, latencies_s, side="left"),
                                 minlength=len(self.bucket_counts))
        self.bucket_counts = [a + b for a, b in zip(self.bucket_counts, per_bucket.tolist())]
        self.count += int(latencies_ms.size)
        self.sum_s += float(latencies_s.sum())
        self.sketch.add_many(latencies_ms)

    def merge(self, other: LatencyStats) -> None:
        self.bucket_counts = [a + b for a, b in zip(self.bucket_counts, other.bucket_counts)]
        self.count += other.count
        self.sum_s += other.sum_s
        self.sketch.merge(other.sketch)

    def to_dict(self, samples: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "count": self.count,
            "sum_s": self.sum_s,
            # Non-cumulative counts per bucket; the last one is (largest bound, +Inf).
            "buckets_le_s": list(LATENCY_BUCKETS_S),
            "bucket_counts": list(self.bucket_counts),
        }
        if samples:
            out["sketch_ms"] = self.sketch.to_wire()
        return out


@dataclass
class FeedbackTotals:
    kind: str  # "conversion" or "mean"
    n: int = 0
    successes: int = 0  # conversion
    total: float = 0.0  # mean
    total_sq: float = 0.0

    def add(self, value: float | None, converted: bool | None) -> None:
        if self.kind == "conversion":
            self.n += 1
            self.successes += int(bool(converted))
            return
        value = float(value)
        square = value * value
        if not math.isfinite(square):
            # Checked before anything is counted: a value whose square overflows would leave
            # n and the sum counted without it (the router refuses these with a 400 first).
            raise ValueError(f"feedback value {value!r} is too large to count")
        self.n += 1
        self.total += value
        self.total_sq += square

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "conversion":
            return {"kind": "conversion", "n": self.n, "successes": self.successes}
        return {"kind": "mean", "n": self.n, "sum": self.total, "sum_sq": self.total_sq}


@dataclass
class VersionStats:
    requests: int = 0
    assigned: int = 0  # chosen by the assignment (not pinned, not a retry elsewhere)
    # Of ``requests``, retries of requests another version could not answer (a fallback's):
    # each is also a request of that version, so a run's client requests are the sum less these.
    retried: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)
    latency: LatencyStats = field(default_factory=LatencyStats)
    predictions: collections.Counter = field(default_factory=collections.Counter)
    feedback: dict[str, FeedbackTotals] = field(default_factory=dict)
    # Of ``latency``, the successful answers the split did not assign (pinned, a fallback's):
    # the arms of the A/B report read the assigned ones' percentiles as ``latency`` less these.
    # Kept as the rare part, so that nothing is added per request where every one is assigned.
    unassigned_latency_ms: LogHistogram = field(default_factory=LogHistogram)

    def __getstate__(self) -> dict:
        # Sent only when some answer was not assigned: an empty sketch pickles to about 100
        # bytes a version in every router's report (1.3% of a two-version one, measured).
        state = dict(self.__dict__)
        unassigned = state.get("unassigned_latency_ms")
        if unassigned is not None and not unassigned.count:
            del state["unassigned_latency_ms"]
        return state

    def __setstate__(self, state: dict) -> None:
        # None sent (every answer assigned), or a router older than ``unassigned_latency_ms``
        # (during a rolling upgrade; its pinned answers' latencies then stay in the arms'
        # percentiles, as they were before): an empty one.
        self.__dict__.update(state)
        if "unassigned_latency_ms" not in state:
            self.unassigned_latency_ms = LogHistogram()

    def add(self, latency_ms: float, error_kind: str | None, predicted_class: int | None,
            assigned: bool) -> None:
        self.requests += 1
        self.assigned += int(assigned)
        if error_kind is not None:
            self.errors[error_kind] += 1
        else:
            self.latency.add(latency_ms)
            if not assigned:
                self.unassigned_latency_ms.add(latency_ms)
            if predicted_class is not None:
                self.predictions[predicted_class] += 1

    def add_many(self, latencies_ms: np.ndarray, error_kinds: list[str], predicted_classes: list[int],
                 requests: int, assigned: int, unassigned_latencies_ms: np.ndarray | None = None) -> None:
        """What :meth:`add` of ``requests`` rows leaves: ``assigned`` of them assigned, the
        failed ones' ``error_kinds``, the successful ones' latencies and predicted classes;
        ``unassigned_latencies_ms``: those of the successful ones not assigned (None: none)."""
        self.requests += requests
        self.assigned += assigned
        self.errors.update(error_kinds)
        self.latency.add_many(latencies_ms)
        if unassigned_latencies_ms is not None:
            self.unassigned_latency_ms.add_many(unassigned_latencies_ms)
        self.predictions.update(predicted_classes)

    def merge(self, other: VersionStats) -> None:
        """Add another router's (or interval's) requests; feedback is merged by the caller."""
        self.requests += other.requests
        self.assigned += other.assigned
        self.retried += other.retried
        self.errors.update(other.errors)
        self.latency.merge(other.latency)
        self.unassigned_latency_ms.merge(other.unassigned_latency_ms)
        self.predictions.update(other.predictions)

    def to_dict(self, samples: bool) -> dict[str, Any]:
        latency = self.latency.to_dict(samples)
        if samples and self.unassigned_latency_ms.count:
            latency["unassigned_sketch_ms"] = self.unassigned_latency_ms.to_wire()
        return {
            "requests": self.requests,
            "assigned": self.assigned,
            "retried": self.retried,
            "errors": sum(self.errors.values()),
            "errors_by_kind": dict(self.errors),
            "latency": latency,
            "predictions": {str(k): v for k, v in sorted(self.predictions.items())},
            "feedback": {name: totals.to_dict() for name, totals in sorted(self.feedback.items())},
        }


def split_key(weights_pct: Mapping[str, float]) -> str:
    """A split's name: the bucket range of every version, e.g. ``v1:0-9500,v2:9500-10000``.
    Two periods with the same ranges route every user alike, so they are one split."""
    ranges = SplitTable.from_weights(weights_pct).ranges()
    return ",".join(f"{v}:{lo}-{hi}" for v, (lo, hi) in ranges.items())


@dataclass
class SplitRecord:
    """What was assigned under one split: per-unit totals of every metric, and units seen.

    ``first_s`` and ``last_s`` span the requests routed by it as they were merged: the period
    the split was in force, which CUPED reads to tell a pre-period (analysis/report.py).
    Feedback does not move them: it comes when the client reports, often long after its
    request (a purchase an hour on), and one late report on a pre-period answer made that
    period overlap the variant's and switched CUPED off for the whole comparison.
    """

    weights_pct: dict[str, float]
    first_s: float
    last_s: float
    metrics: dict[str, SplitTotals] = field(default_factory=dict)
    units: UnitSample = field(default_factory=UnitSample)

    def __post_init__(self) -> None:
        self.table = SplitTable.from_weights(self.weights_pct)

    def bucket(self, version: str, unit: int | None) -> int | None:
        """The unit's bucket, or None (its own unit) when keyless, or when the row's version is
        not the one this split routes the bucket to (a row whose split was not known)."""
        if unit is None:
            return None
        bucket = unit % NUM_BUCKETS
        return bucket if self.table.version_for_bucket(bucket) == version else None

    def merge(self, metrics: Mapping[str, SplitTotals], units: UnitSample, t_s: float) -> None:
        """A router's figures of this split (see analysis/aggregate.py)."""
        for name, totals in metrics.items():
            self.totals(name).merge(totals)
        self.units.merge(units)
        self.last_s = max(self.last_s, t_s)

    def totals(self, metric: str) -> SplitTotals:
        table = self.metrics.get(metric)
        if table is None:
            table = self.metrics[metric] = SplitTotals()
        return table

    def arm_of_bucket(self, versions: list[str]) -> np.ndarray:
        """Index in ``versions`` of the version each bucket routes to (-1: another one)."""
        out = np.full(NUM_BUCKETS, -1)
        for version, (lo, hi) in self.table.ranges().items():
            if version in versions:
                out[lo:hi] = versions.index(version)
        return out


@dataclass
class ShadowStats:
    """Paired answers: the live version's and the shadow's, on the same requests.

    What "agree" means is the task's (:mod:`serve_ab.analysis.tasks`): the same class, a value
    within tolerance, or a cosine at least the threshold. Classifiers fill ``confusion``;
    regressions ``live_values``/``shadow_values`` (the predicted values, for numeric drift)
    and ``score_diff`` with shadow - live; embeddings ``similarity`` (cosine per pair).
    """

    mirrored: int = 0  # copies sent (answered or not)
    #: Copies not sent: the router had too many waiting for the version (serving/core/mirror.py).
    #: A state pickled before it reads the class's 0.
    dropped: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)
    pairs: int = 0
    agree: int = 0
    #: Rows of the paired requests beyond their first: batched requests' rows that no figure
    #: below compares (only a request's first row is; analysis/tasks.py). A state pickled
    #: before it reads the class's 0.
    rows_not_compared: int = 0
    # (live_class, shadow_class) -> count; the diagonal is agreement.
    confusion: collections.Counter = field(default_factory=collections.Counter)
    # Shadow's minus live's score for the class live predicted, per pair.
    score_diff_n: int = 0
    score_diff_sum: float = 0.0
    score_diff_sum_sq: float = 0.0
    score_diff_sketch: LogHistogram = field(default_factory=LogHistogram)
    score_diff_abs_sum: float = 0.0  # sum of |shadow - live|: the mean absolute difference
    latency: LatencyStats = field(default_factory=LatencyStats)
    by_live_version: collections.Counter = field(default_factory=collections.Counter)
    # Embeddings: cosine similarity per pair.
    similarity_n: int = 0
    similarity_sum: float = 0.0
    similarity_sum_sq: float = 0.0
    #: 1 - cosine per pair. A log sketch holds a value within 1% of its size: near cosine 1,
    #: where agreement thresholds sit (0.99), 1% of the cosine is the whole gap to the
    #: threshold (a p5 of 0.9938 read 0.9949, above the mean), while 1% of 1 - cosine is 1%
    #: of that gap.
    dissimilarity_sketch: LogHistogram = field(default_factory=LogHistogram)
    # Regressions: the values live and shadow predicted, for numeric drift (KS, Wasserstein).
    # With 1 - x too, as the gates' scores: a KS test fine near 1 as near 0 (analysis/sketch.py).
    live_values: LogHistogram = field(default_factory=lambda: LogHistogram(complement=True))
    shadow_values: LogHistogram = field(default_factory=lambda: LogHistogram(complement=True))
    #: Pairs and agreements (values 0 and 1) per group of the users whose requests were
    #: copied: a user whose requests the shadow answers differently does so again, and the
    #: shadow_agreement gate judges on the effective sample (analysis/clusters.py).
    agreement_groups: ValueGroups = field(default_factory=ValueGroups)
    #: The score differences and similarities per group of users likewise, for the report's
    #: paired intervals.
    score_diff_groups: ValueGroups = field(default_factory=ValueGroups)
    similarity_groups: ValueGroups = field(default_factory=ValueGroups)
    #: Class flips per group of users, for the report's per-class flip tests.
    flips: FlipGroups = field(default_factory=FlipGroups)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A router older than the per-group figures (during a rolling upgrade, Serve replaces
        # routers and the controller one by one): its pairs count as keyless.
        self.__dict__.update(state)
        if "agreement_groups" not in state:
            self.agreement_groups = _restored_groups(None, self.pairs, self.agree, self.agree)
        if "score_diff_groups" not in state:
            self.score_diff_groups = _restored_groups(None, self.score_diff_n, self.score_diff_sum,
                                                      self.score_diff_sum_sq)
        if "similarity_groups" not in state:
            self.similarity_groups = _restored_groups(None, self.similarity_n, self.similarity_sum,
                                                      self.similarity_sum_sq)
        if "flips" not in state:
            self.flips = FlipGroups.keyless_from(self.confusion)
        # ``similarity_sketch`` (cosines) is only ever for the old code: a router that sketched
        # the cosine itself, or the copy __getstate__ adds beside the new sketch.
        cosines = self.__dict__.pop("similarity_sketch", None)
        if "dissimilarity_sketch" not in state:
            self.dissimilarity_sketch = dissimilarity_from_similarity(cosines)

    def __getstate__(self) -> dict[str, Any]:
        # A controller of the code before dissimilarity_sketch (a rolling upgrade replaces
        # routers and the controller one by one) merges other.similarity_sketch, a sketch of
        # the cosines: without one, its merge raised AttributeError halfway, leaving pairs
        # and agreements merged and the report failed, so the router sent it again.
        state = dict(self.__dict__)
        if "dissimilarity_sketch" in state:
            state["similarity_sketch"] = _reflected(state["dissimilarity_sketch"])
        return state

    def add(self, live_version: str, live_class: int | None, shadow_class: int | None,
            score_diff: float | None, shadow_latency_ms: float, error_kind: str | None,
            comparison: PairComparison | None = None, unit: int | None = None) -> None:
        """One copy sent to the shadow version, with both answers when the shadow answered;
        ``comparison``: the task's verdict (None: a classifier's classes); ``unit``: the
        request's user (None: keyless)."""
        self.mirrored += 1
        if error_kind is not None:
            self.errors[error_kind] += 1
            return
        self.latency.add(shadow_latency_ms)
        if comparison is not None:
            agree = comparison.agree
        else:
            agree = None if live_class is None or shadow_class is None else live_class == shadow_class
        if agree is None:
            return
        self.pairs += 1
        self.by_live_version[live_version] += 1
        self.agree += int(agree)
        if comparison is not None:
            self.rows_not_compared += comparison.rows - 1
        self.agreement_groups.add(unit, float(agree))
        if live_class is not None and shadow_class is not None:
            self.confusion[(live_class, shadow_class)] += 1
            if live_class != shadow_class:
                self.flips.add(unit, live_class, shadow_class)
        if score_diff is not None and math.isfinite(score_diff):
            self.score_diff_n += 1
            self.score_diff_sum += score_diff
            self.score_diff_sum_sq += score_diff * score_diff
            self.score_diff_abs_sum += abs(score_diff)
            self.score_diff_sketch.add(score_diff)
            self.score_diff_groups.add(unit, score_diff)
        if comparison is None:
            return
        if comparison.similarity is not None and math.isfinite(comparison.similarity):
            self.similarity_n += 1
            self.similarity_sum += comparison.similarity
            self.similarity_sum_sq += comparison.similarity * comparison.similarity
            self.dissimilarity_sketch.add(1.0 - comparison.similarity)
            self.similarity_groups.add(unit, comparison.similarity)
        if comparison.live_value is not None and comparison.shadow_value is not None:
            self.live_values.add(comparison.live_value)
            self.shadow_values.add(comparison.shadow_value)

    def merge(self, other: ShadowStats) -> None:
        self.mirrored += other.mirrored
        self.dropped += other.dropped
        self.errors.update(other.errors)
        self.pairs += other.pairs
        self.agree += other.agree
        self.rows_not_compared += other.rows_not_compared
        self.confusion.update(other.confusion)
        self.score_diff_n += other.score_diff_n
        self.score_diff_sum += other.score_diff_sum
        self.score_diff_sum_sq += other.score_diff_sum_sq
        self.score_diff_sketch.merge(other.score_diff_sketch)
        self.score_diff_abs_sum += other.score_diff_abs_sum
        self.latency.merge(other.latency)
        self.by_live_version.update(other.by_live_version)
        self.similarity_n += other.similarity_n
        self.similarity_sum += other.similarity_sum
        self.similarity_sum_sq += other.similarity_sum_sq
        self.dissimilarity_sketch.merge(other.dissimilarity_sketch)
        self.live_values.merge(other.live_values)
        self.shadow_values.merge(other.shadow_values)
        self.agreement_groups.merge(other.agreement_groups)
        self.score_diff_groups.merge(other.score_diff_groups)
        self.similarity_groups.merge(other.similarity_groups)
        self.flips.merge(other.flips)

    def to_dict(self, samples: bool) -> dict[str, Any]:
        out = {
            "mirrored": self.mirrored,
            "dropped": self.dropped,
            "errors": sum(self.errors.values()),
            "errors_by_kind": dict(self.errors),
            "pairs": self.pairs,
            "agree": self.agree,
            "rows_not_compared": self.rows_not_compared,
            "confusion": [[int(a), int(b), n] for (a, b), n in sorted(self.confusion.items())],
            "score_diff": {"n": self.score_diff_n, "sum": self.score_diff_sum,
                           "sum_sq": self.score_diff_sum_sq, "abs_sum": self.score_diff_abs_sum,
                           "groups": self.score_diff_groups.to_wire()},
            "latency": self.latency.to_dict(samples),
            "pairs_by_live_version": dict(self.by_live_version),
            "similarity": {"n": self.similarity_n, "sum": self.similarity_sum,
                           "sum_sq": self.similarity_sum_sq, "groups": self.similarity_groups.to_wire()},
            "agreement_groups": self.agreement_groups.to_wire(),
            "flips": self.flips.to_wire(),
        }
        if samples:
            out["score_diff"]["sketch"] = self.score_diff_sketch.to_wire()
            out["similarity"]["dissimilarity_sketch"] = self.dissimilarity_sketch.to_wire()
            out["values"] = {"live": self.live_values.to_wire(), "shadow": self.shadow_values.to_wire()}
        return out


def _restored_groups(wire: dict | None, count: int, total: float, total_sq: float) -> ValueGroups:
    """Saved per-group values; absent from states saved before they were kept, where the
    values (``count``, their sum and sum of squares) then count as keyless, independent."""
    if wire:
        return ValueGroups.from_wire(wire)
    groups = ValueGroups()
    groups.counts[KEYLESS], groups.sums[KEYLESS], groups.squares[KEYLESS] = count, total, total_sq
    groups.cubes[KEYLESS] = math.nan  # not kept then
    return groups


class ExperimentStats:
    """Everything the report and the metrics need, accumulated since the controller started."""

    def __init__(self, versions: Iterable[str], started_at_s: float,
                 shadow_version: str | None = None, feedback_kinds: dict[str, str] | None = None):
        self.started_at_s = started_at_s
        self.versions: dict[str, VersionStats] = {name: VersionStats() for name in versions}
        self.shadow_version = shadow_version
        self.shadow = ShadowStats()
        self.feedback_kinds = dict(feedback_kinds or {})
        self.feedback_unjoined = 0  # feedback that never found the request it is about
        self.feedback_mismatched = 0  # a conversion for a metric that is a mean, or vice versa
        self.feedback_duplicates = 0  # a second report of the same request and metric, refused
        self.feedback_previous_run = 0  # on an answer given before this run started: not counted
        self.timeline_bucket_s = TIMELINE_BUCKET_S
        # bucket start -> [requests per version, feedback per version]
        self._timeline: dict[float, dict[str, collections.Counter]] = {}
        # Per-unit figures, by split (see analysis/units.py); the split routed by now is
        # the one a row without a known split counts under.
        self.splits: dict[str, SplitRecord] = {}
        self._split_keys: dict[tuple[float, ...], str] = {}  # weights -> split_key, a cache
        self.splits_dropped = 0
        self.units_all = UnitSample()  # distinct users per version over the whole run
        self.weights_now: dict[str, float] = {}
        # When the controller stopped routing by each split it published (None: it routes by it
        # now). Data says less: an answer chosen under the old weights that one router reports
        # after another router's first report under the new ones (a request in flight at the
        # switch) arrives after the new split began, and CUPED then read no pre-period.
        self._routed_until: dict[str, float | None] = {}

    def set_weights(self, weights_pct: Mapping[str, float], now_s: float | None = None) -> None:
        """The weights the routers route by now (percent, every version of this experiment);
        ``now_s``: when the controller published them, which ends the split routed by before."""
        new = {name: float(weights_pct.get(name, 0.0)) for name in self.versions}
        if now_s is not None:
            try:
                key = split_key(new)
            except ValueError:
                key = None  # weights that do not sum to 100: not a split
            try:
                old = split_key(self.weights_now) if self.weights_now else None
            except ValueError:
                old = None
            if old is not None and old != key and old in self._routed_until:
                self._routed_until[old] = now_s
            if key is not None:
                self._routed_until[key] = None
                if len(self._routed_until) > 4 * MAX_SPLITS:  # keep those of the splits kept
                    self._routed_until = {k: t for k, t in self._routed_until.items()
                                          if k in self.splits or k == key}
        self.weights_now = new

    def _split(self, t_s: float, weights_pct: Mapping[str, float] | None,
               served: bool = True) -> SplitRecord | None:
        """The record of the split ``weights_pct`` (None: the weights now); ``served``: the
        caller holds requests routed by it at ``t_s``, which extend its period (feedback does
        not: see :class:`SplitRecord`)."""
        weights = weights_pct if weights_pct is not None else self.weights_now
        if not weights:
            return None
        weights = {name: float(weights.get(name, 0.0)) for name in self.versions}
        # Every row asks: the key (a bucket table built from the weights) is worked out once
        # per distinct weighting, not once per request.
        seen = tuple(weights.values())
        key = self._split_keys.get(seen)
        if key is None:
            try:
                key = self._split_keys[seen] = split_key(weights)
            except ValueError:
                return None  # weights that do not sum to 100: not a split a router used
        record = self.splits.get(key)
        if record is None:
            if len(self.splits) >= MAX_SPLITS:
                self.splits.pop(next(iter(self.splits)))
                self.splits_dropped += 1
            record = self.splits[key] = SplitRecord(weights, t_s, t_s)
        if served:
            record.last_s = max(record.last_s, t_s)
        return record

    # -- inputs ----------------------------------------------------------------------------

    def count_unjoined(self, n: int) -> None:
        """Feedback dropped before it found the request it is about."""
        self.feedback_unjoined += n

    def count_duplicate(self) -> None:
        """Feedback refused because its request and metric were reported already."""
        self.feedback_duplicates += 1

    def count_previous_run(self) -> None:
        """Feedback on an answer of an earlier run (before a changed config), not counted here."""
        self.feedback_previous_run += 1

    def record(self, t_s: float, version: str, latency_ms: float, error_kind: str | None,
               predicted_class: int | None, unit: int | None, assigned: bool,
               split: Mapping[str, float] | None = None) -> None:
        """One request the router served (or failed to) on ``version``.

        Only ``assigned`` rows (routed by the split: not pinned, not a fallback retry) enter
        the per-unit figures, under ``split`` (the weights the router routed by; None: the
        weights now): intention to treat.
        """
        stats = self.versions.get(version)
        if stats is None:
            return  # a version this experiment does not serve (an old config's report)
        stats.add(latency_ms, error_kind, predicted_class, assigned)
        if assigned:
            self.units_all.add(version, unit)
            record = self._split(t_s, split)
            if record is not None:
                bucket = record.bucket(version, unit)
                record.units.add(version, unit)
                record.totals("error_rate").add(bucket, version, float(error_kind is not None))
                if error_kind is None:
                    record.totals("latency_ms").add(bucket, version, latency_ms)
        self._point(t_s)["requests"][version] += 1

    def record_pair(self, t_s: float, live_version: str, live_class: int | None,
                    shadow_class: int | None, score_diff: float | None, shadow_latency_ms: float,
                    error_kind: str | None, comparison: PairComparison | None = None,
                    unit: int | None = None) -> None:
        """One copy of a request of ``unit`` (None: keyless) sent to the shadow version, with
        both answers when the shadow answered."""
        self.shadow.add(live_version, live_class, shadow_class, score_diff, shadow_latency_ms, error_kind,
                        comparison=comparison, unit=unit)

    def merge(self, t_s: float, aggregate: IntervalAggregate) -> None:
        """What a router served in one interval (``analysis/aggregate.py``), merged at ``t_s``:
        the same figures as recording each of its requests, at a cost that does not depend on
        how many requests it holds."""
        for version, theirs in aggregate.versions.items():
            stats = self.versions.get(version)
            if stats is None:
                continue  # a version this experiment does not serve
            stats.merge(theirs)
            self._point(t_s)["requests"][version] += theirs.requests
        for split in aggregate.splits.values():
            mine = {name: weights for name, weights in split.weights_pct.items() if name in self.versions}
            record = self._split(t_s, mine)
            if record is not None:
                record.merge(split.metrics, split.units, t_s)
            self.units_all.merge(split.units)
        shadow = aggregate.shadow.get(self.shadow_version) if self.shadow_version is not None else None
        if shadow is not None:
            self.shadow.merge(shadow)

    def record_feedback(self, t_s: float, version: str, name: str, value: float | None,
                        converted: bool | None, unit: int | None = None,
                        split: Mapping[str, float] | None = None, assigned: bool = True) -> None:
        """Feedback joined to the version its request was assigned to; ``unit`` and ``split``
        are that request's (None: keyless, and the weights now)."""
        if version not in self.versions:
            self.feedback_unjoined += 1
            return
        kind = self.feedback_kinds.get(name) or ("conversion" if converted is not None else "mean")
        totals = self.versions[version].feedback.get(name)
        if totals is None:
            totals = self.versions[version].feedback[name] = FeedbackTotals(kind)
        if (totals.kind == "conversion") != (converted is not None):
            # A metric declared (or first seen) as one kind, reported as the other: not mixed in.
            self.feedback_mismatched += 1
            return
        totals.add(value, converted)
        if assigned:
            record = self._split(t_s, split, served=False)
            if record is not None:
                outcome = float(bool(converted)) if converted is not None else float(value)
                record.totals(f"feedback/{name}").add(record.bucket(version, unit), version, outcome)
        self._point(t_s)["feedback"][version] += 1

    # -- output ----------------------------------------------------------------------------

    def snapshot(self, now_s: float, samples: bool = True) -> dict[str, Any]:
        """Plain data::

            {"started_at_s", "now_s",
             "versions": {name: {"requests", "assigned", "retried", "errors", "errors_by_kind",
                                 "latency": {"count", "sum_s", "buckets_le_s", "bucket_counts",
                                             "sketch_ms" (when samples: LogHistogram.to_wire()),
                                             "unassigned_sketch_ms" (when samples and some were: of
                                                 those, the answers the split did not assign)},
                                 "predictions": {class: n}, "units": distinct keys or None,
                                 "feedback": {name: {"kind": "conversion", "n", "successes"}
                                                  | {"kind": "mean", "n", "sum", "sum_sq"}}}},
             "shadow": None | {"version", "mirrored", "dropped", "errors", "errors_by_kind", "pairs", "agree",
                               "confusion": [[live_class, shadow_class, n]],
                               "flips": {"net": [[group, class, n]], "keyless": [[class, n]]},
                               "score_diff": {"n", "sum", "sum_sq", "abs_sum", "sketch" (when samples)},
                               "latency": {...}, "pairs_by_live_version": {name: n},
                               "similarity": {"n", "sum", "sum_sq", "dissimilarity_sketch" (1 - cosine,
                                              when samples)},
                               "values": {"live", "shadow"} (sketches, when samples)},
             "feedback_unjoined": n, "feedback_mismatched": n, "feedback_duplicates": n,
             "feedback_previous_run": n,
             "timeline": {"bucket_s", "points": [{"t_s", "requests": {v: n}, "feedback": {v: n}}]},
             "weights_now": {v: pct},
             "splits": [{"key", "weights_pct", "first_s", "last_s", "routed_now", "routed_until_s",
                         "metrics": {"error_rate" | "latency_ms" | "feedback/<name>": SplitTotals.to_dict()},
                         "units_kept": {v: n}, "units_fraction", "units_keyless": {v: n}}],
             "splits_dropped": n}

        ``units`` per version estimates the distinct users assigned to it over the run
        (a uniform sample past ``unit_sample.MAX_SAMPLED_UNITS``; see analysis/unit_sample.py).
        """
        shadow = None
        if self.shadow_version is not None:
            shadow = {"version": self.shadow_version, **self.shadow.to_dict(samples)}
        units = self.units_all.estimates(self.versions)
        return {
            "started_at_s": self.started_at_s,
            "now_s": now_s,
            "versions": {name: {**stats.to_dict(samples), "units": units[name]}
                         for name, stats in self.versions.items()},
            "shadow": shadow,
            "feedback_unjoined": self.feedback_unjoined,
            "feedback_mismatched": self.feedback_mismatched,
            "feedback_duplicates": self.feedback_duplicates,
            "feedback_previous_run": self.feedback_previous_run,
            "timeline": {
                "bucket_s": self.timeline_bucket_s,
                "points": [
                    {"t_s": t_s, "requests": dict(point["requests"]), "feedback": dict(point["feedback"])}
                    for t_s, point in sorted(self._timeline.items())
                ],
            },
            "weights_now": dict(self.weights_now),
            "splits": [
                {"key": key, "weights_pct": dict(record.weights_pct), "first_s": record.first_s,
                 "last_s": record.last_s,
                 # The controller's own account of when it routed by the split, where it gave one.
                 "routed_now": key in self._routed_until and self._routed_until[key] is None,
                 "routed_until_s": self._routed_until.get(key),
                 "metrics": {name: totals.to_dict() for name, totals in record.metrics.items()},
                 "units_kept": record.units.kept(self.versions), "units_fraction": record.units.fraction,
                 "units_keyless": dict(record.units.keyless)}
                for key, record in self.splits.items()
            ],
            "splits_dropped": self.splits_dropped,
        }

    # -- surviving a controller restart --------------------------------------------------------

    def to_state(self, now_s: float) -> dict[str, Any]:
        """The snapshot plus the sampled users, enough to carry on after a restart."""
        state = self.snapshot(now_s, samples=True)
        state["unit_samples"] = {"all": self.units_all.to_dict(),
                                 "splits": {key: r.units.to_dict() for key, r in self.splits.items()}}
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any], shadow_version: str | None = None,
                   feedback_kinds: dict[str, str] | None = None) -> ExperimentStats:
        """Figures saved by :meth:`to_state`, for the versions this experiment serves."""
        stats = cls(state["versions"], state["started_at_s"], shadow_version, feedback_kinds)
        for name, saved in state["versions"].items():
            version = stats.versions[name]
            version.requests, version.assigned = saved["requests"], saved["assigned"]
            version.retried = saved.get("retried", 0)  # absent from states saved before it
            version.errors.update(saved["errors_by_kind"])
            _restore_latency(version.latency, saved["latency"])
            if version.latency.sketch.count:  # the part of a whole restored (not one saved with other buckets)
                version.unassigned_latency_ms = LogHistogram.from_wire(saved["latency"].get("unassigned_sketch_ms"))
            version.predictions.update({int(k): n for k, n in saved["predictions"].items()})
            for metric, totals in saved["feedback"].items():
                restored = version.feedback[metric] = FeedbackTotals(totals["kind"], totals["n"])
                restored.successes = totals.get("successes", 0)
                restored.total, restored.total_sq = totals.get("sum", 0.0), totals.get("sum_sq", 0.0)
        shadow = state.get("shadow")
        if shadow is not None and shadow["version"] == shadow_version:
            s = stats.shadow
            s.mirrored, s.pairs, s.agree = shadow["mirrored"], shadow["pairs"], shadow["agree"]
            s.dropped = shadow.get("dropped", 0)  # absent from states saved before it
            s.rows_not_compared = shadow.get("rows_not_compared", 0)  # likewise
            s.errors.update(shadow["errors_by_kind"])
            s.confusion.update({(a, b): n for a, b, n in shadow["confusion"]})
            diff = shadow["score_diff"]
            s.score_diff_n, s.score_diff_sum, s.score_diff_sum_sq = diff["n"], diff["sum"], diff["sum_sq"]
            s.score_diff_sketch = _restore_sketch(diff.get("sketch"), diff.get("sample"))
            s.score_diff_abs_sum = diff.get("abs_sum", 0.0)  # absent from states saved before it
            s.score_diff_groups = _restored_groups(diff.get("groups"), s.score_diff_n, s.score_diff_sum,
                                                   s.score_diff_sum_sq)
            similarity = shadow.get("similarity") or {}
            s.similarity_n = similarity.get("n", 0)
            s.similarity_sum, s.similarity_sum_sq = similarity.get("sum", 0.0), similarity.get("sum_sq", 0.0)
            if similarity.get("dissimilarity_sketch") is not None:
                s.dissimilarity_sketch = LogHistogram.from_wire(similarity["dissimilarity_sketch"])
            else:  # a state saved when the cosine itself was sketched
                s.dissimilarity_sketch = dissimilarity_from_similarity(_restore_sketch(similarity.get("sketch"), None))
            s.similarity_groups = _restored_groups(similarity.get("groups"), s.similarity_n, s.similarity_sum,
                                                   s.similarity_sum_sq)
            values = shadow.get("values") or {}
            s.live_values = _restore_sketch(values.get("live"), None)
            s.shadow_values = _restore_sketch(values.get("shadow"), None)
            _restore_latency(s.latency, shadow["latency"])
            s.by_live_version.update(shadow["pairs_by_live_version"])
            s.agreement_groups = _restored_groups(shadow.get("agreement_groups"), s.pairs, s.agree, s.agree)
            flips = shadow.get("flips")  # absent from states saved before: every pair keyless
            s.flips = FlipGroups.from_wire(flips) if flips is not None else FlipGroups.keyless_from(s.confusion)
        samples = state.get("unit_samples") or {}
        if samples.get("all"):
            stats.units_all = UnitSample.from_dict(samples["all"])
        stats.weights_now = {k: float(v) for k, v in (state.get("weights_now") or {}).items() if k in stats.versions}
        for saved in state.get("splits") or []:
            weights = {name: float(saved["weights_pct"].get(name, 0.0)) for name in stats.versions}
            try:
                if split_key(weights) != saved["key"]:
                    continue  # saved by an experiment with other versions: not this one's split
            except ValueError:
                continue  # its weights do not sum to 100 over these versions: another layout
            record = stats.splits[saved["key"]] = SplitRecord(weights, saved["first_s"], saved["last_s"])
            if saved.get("routed_now"):
                stats._routed_until[saved["key"]] = None
            elif saved.get("routed_until_s") is not None:
                stats._routed_until[saved["key"]] = float(saved["routed_until_s"])
            record.metrics = {name: SplitTotals.from_dict(t) for name, t in saved["metrics"].items()}
            packed = (samples.get("splits") or {}).get(saved["key"])
            if packed:
                record.units = UnitSample.from_dict(packed)
        stats.splits_dropped = state.get("splits_dropped", 0)
        stats.feedback_unjoined = state.get("feedback_unjoined", 0)
        stats.feedback_mismatched = state.get("feedback_mismatched", 0)
        stats.feedback_duplicates = state.get("feedback_duplicates", 0)
        stats.feedback_previous_run = state.get("feedback_previous_run", 0)
        stats.timeline_bucket_s = state["timeline"]["bucket_s"]
        for point in state["timeline"]["points"]:
            stats._timeline[point["t_s"]] = {"requests": collections.Counter(point["requests"]),
                                             "feedback": collections.Counter(point["feedback"])}
        return stats

    def _point(self, t_s: float) -> dict[str, collections.Counter]:
        start_s = math.floor(t_s / self.timeline_bucket_s) * self.timeline_bucket_s
        point = self._timeline.get(start_s)
        if point is None:
            if len(self._timeline) >= MAX_TIMELINE_POINTS:
                self._coarsen()
                return self._point(t_s)
            point = self._timeline[start_s] = {"requests": collections.Counter(),
                                               "feedback": collections.Counter()}
        return point

    def _coarsen(self) -> None:
        self.timeline_bucket_s *= 2
        merged: dict[float, dict[str, collections.Counter]] = {}
        for t_s, point in self._timeline.items():
            start_s = math.floor(t_s / self.timeline_bucket_s) * self.timeline_bucket_s
            into = merged.setdefault(start_s, {"requests": collections.Counter(),
                                               "feedback": collections.Counter()})
            into["requests"].update(point["requests"])
            into["feedback"].update(point["feedback"])
        self._timeline = merged


def _restore_latency(latency: LatencyStats, saved: dict[str, Any]) -> None:
    if list(saved["buckets_le_s"]) != list(LATENCY_BUCKETS_S):
        return  # saved with other buckets: start the histogram afresh rather than misfile it
    latency.bucket_counts = list(saved["bucket_counts"])
    latency.count, latency.sum_s = saved["count"], saved["sum_s"]
    latency.sketch = _restore_sketch(saved.get("sketch_ms"), saved.get("sample_ms"))


def dissimilarity_from_similarity(sketch: LogHistogram | Mapping[str, Any] | None) -> LogHistogram:
    """1 - cosine from a sketch of the cosines (as states and routers kept them before): each
    bucket's representative, so within 1% of the cosine, as that sketch was."""
    if isinstance(sketch, Mapping):
        sketch = LogHistogram.from_wire(sketch)
    return _reflected(sketch)


def _reflected(sketch: LogHistogram | None) -> LogHistogram:
    """A sketch of 1 - x from a sketch of x, bucket by bucket (each bucket's representative
    value moved, with its count: no array of one value per pair); min and max exact."""
    out = LogHistogram()
    if sketch is None or not sketch.count:
        return out
    values, weights = sketch.values_and_weights()
    np.add.at(out.counts, bucket_indices(1.0 - values), weights.astype(np.int64))
    out.count = sketch.count
    out.total = sketch.count - sketch.total  # the sum of 1 - x, exact
    out.min, out.max = 1.0 - sketch.max, 1.0 - sketch.min  # exact, as the cosines' were
    return out


def _restore_sketch(sketch: Mapping[str, Any] | None, sample: list[float] | None) -> LogHistogram:
    """A saved sketch; from a state saved before sketches, the sample it kept instead."""
    if sketch is not None:
        return LogHistogram.from_wire(sketch)
    return LogHistogram.of(sample or [])
