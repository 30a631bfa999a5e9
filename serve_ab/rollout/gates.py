"""Gate evaluation: one window of observations per version in, one verdict per gate out.

A verdict rests on evidence, not on a point estimate: a gate PASSes only when a confidence
bound says the candidate is within its threshold, FAILs only when the opposite bound says
it is outside, and is INCONCLUSIVE otherwise, which holds the rollout. Ten requests without
an error do not show an error rate below 1%; it takes about 300 (the upper bound of
0 errors in n requests at 95% is about 3 / n). Each bound is one-sided at the level the
caller passes, already spent over the step's analyses (:func:`alpha_for_look`): a fail's
over every analysis of the step (``alpha``), a pass's over those whose pass could end the
step (``pass_alpha``), so a gate falsely fails at any analysis of a step, or falsely ends
it with a pass, with probability at most the configured ``analysis.alpha``. The bounds, per metric:

- rates (``error_rate``, ``feedback_rate``, ``shadow_agreement``): Clopper-Pearson, exact;
- ``feedback_mean``: Student's t, corrected for skewed values, no bound on a skewed tail's
  side before Cochran's rule holds, and none from values that are all the same
  (:func:`_mean_bounds`);
- ``latency_p50/p95/p99_ms``: distribution-free, from binomial order statistics (no normal
  approximation, valid for any latency distribution); the value shown is numpy's linear
  percentile of the sketched latencies (within 1 %, :class:`serve_ab.analysis.sketch.LogHistogram`);
- ``*_ratio_to_stable`` (non-inferiority), on candidate / stable: rates by Katz's log
  interval, means by Fieller's (the long tail's side corrected for skewed values, as a mean's),
  quantiles by combining each arm's bounds at alpha / 2
  (upper = candidate's upper / stable's lower). 0 on both sides has no bounded ratio, and a
  negative stable value no meaningful one: both are INCONCLUSIVE, with the reason.

Users who send many requests: error rates, latency percentiles, class counts, scores,
feedback and shadow agreement are judged on the effective sample, ``n / deff``, where the
design effect comes from the window's per-group totals (:mod:`serve_ab.analysis.clusters`;
``WindowStats.groups``, ``feedback_groups``, ``conversion_groups``, ``shadow_groups``; a
mirrored copy counts under its request's user), taken at its upper confidence bound at the
analysis' level (the groups' spread as a chi-square on degrees of freedom that shrink with
its kurtosis), and never above the ceiling that how many requests each user sent sets
(:meth:`~serve_ab.analysis.clusters.GroupSums.ceiling`: the bound that rare errors left at
thousands is then at most the request-weighted mean of requests per user). That the gate then
errs at most alpha is measured, not proved: ``stats_calibration`` scenario 6. Without groups
(a window built by hand) requests count as independent.

Drift gates are harm detectors, judged like every other gate on evidence: they FAIL only
when a lower confidence bound on the divergence, one-sided at ``alpha``, is above ``max``,
and otherwise PASS. A divergence from a small sample is biased upwards (ten predictions per
side over ten classes give PSI > 0.25 most of the time with no drift at all; a candidate
0.277 from stable in JS distance read above 0.3 in 60-70% of windows of 25-100 predictions,
often with a test rejecting "same distribution"), so neither the estimate nor a test of
*some* difference shows that the divergence exceeds ``max``. They PASS rather than hold
when the bound is not above ``max``: holding would make every drift gate block low traffic,
and the other gates already say when there is too little evidence to advance. The bounds
(:mod:`serve_ab.analysis.drift`), each on the true distributions' divergence, not on a
smoothed estimate:

- class counts (``drift_kl``, ``drift_psi``, ``drift_js``, ``drift_js_distance``): each
  class's share on each side within a Clopper-Pearson interval, alpha shared over the
  classes and sides (Bonferroni, exact for any counts, sparse ones included), each on that
  class's effective sample; the divergence is at least its terms at the intervals' nearest
  corners, and at least that of any two-cell merge of the classes (data processing),
  whichever is larger (:func:`~serve_ab.analysis.drift.class_divergence_lower_bound`);
- scores (``drift_ks``, ``drift_wasserstein``): a Dvoretzky-Kiefer-Wolfowitz band around
  each side's CDF on its effective sample size, alpha shared between the sides; KS is at
  least the observed one less both bands' half-widths, Wasserstein-1 at least the integral
  of the CDFs' gap beyond them (valid for scores of any range). The CDFs come from sketches
  of x and of 1 - x, which know them at thresholds 1% of the distance to 0, or to 1,
  apart: a confident classifier's scores near 1 are as well resolved as scores near 0.

With keyed requests the design effects are taken at their upper ``alpha / 2`` bounds before
the bound spends ``alpha``: by the union bound it then holds at ``1 - 2 alpha`` (and the
Clopper-Pearson intervals on fractional effective counts are approximate); keyless, exactly
at ``1 - alpha``. Measured, it errs far less (no failure in stats_calibration's cases).

These are conservative: a clearly larger divergence (1.5-2x ``max``) needs a few hundred to
a thousand predictions to FAIL (``stats_calibration`` and ``tests/unit/rollout``). The
chi-square test of homogeneity (a Monte Carlo exact test when expected counts are small,
:func:`serve_ab.analysis.drift.class_homogeneity_test`) or the two-sample KS test is still
run and its p-value reported (``GateResult.p_value``), for information: it shows whether
there is any difference, not whether it is above ``max``. Scales: ``drift_js`` is the
Jensen-Shannon divergence in bits, the *square* of the JS distance that scipy and Evidently
report (0.1 is a distance of about 0.32); ``drift_js_distance`` is the distance.

Too few samples is INCONCLUSIVE, never FAIL: "no data" is not "bad data" (Flagger).
A gate relative to stable compares with the stable version in the same window, so both
versions are judged under the same load.

A ``promql`` gate judges a number some Prometheus computed, as given (no bound): the caller
queries it (see :func:`serve_ab.rollout.promql.fetch_promql_values`) and puts the
:class:`PromQLResult` on the candidate's window, keyed by the gate's name. An empty answer is
INCONCLUSIVE, like too few samples; so is a failed query (Prometheus down, a bad query): an
outage is not evidence against the candidate, so it does not roll it back, but it holds the
rollout like missing data, and ``analysis.progress_deadline_s`` aborts a rollout held by an
outage that lasts.

A ``webhook`` gate judges what an external endpoint answered (polled off the tick by
:class:`serve_ab.rollout.webhook.WebhookPoller`, put on the candidate's window as a
:class:`WebhookResult` keyed by the gate's name, else its url): ``{"pass": false}`` FAILs,
quoting the body's ``reason``; with a ``min`` or ``max`` the answered ``value`` is judged as
given, otherwise ``{"pass": true}`` PASSes. No answer (a timeout, a refused connection, a
non-2xx status, a body that is not such JSON) is INCONCLUSIVE, never a pass, exactly like a
failed promql query.

Example::

    windows = build_windows(observations, versions=("v1", "v2"))
    alpha = alpha_for_look(config.analysis.alpha, look)   # look: 1, 2, ... within a step
    results = evaluate_gates(config.gates, windows["v2"], windows["v1"], min_samples=50, alpha=alpha,
                             max_user_icc=config.analysis.max_user_icc)   # None: no assumption
    overall_verdict(results)      # GateVerdict.PASS, FAIL or INCONCLUSIVE
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from scipy import special

from serve_ab.analysis import drift
from serve_ab.analysis.clusters import (
    INDEPENDENT, DesignEffect, GroupSums, ValueGroups, class_design_effect, class_design_effects,
    effective_counts,
    quantile_design_effect, ratio_design_effect, score_design_effect)
from serve_ab.analysis.sketch import LogHistogram, bucket_indices
from serve_ab.config.rollout import Gate, GateMetric, display_url


class GateVerdict(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Observation:
    """One served request as a raw row, for :func:`build_windows` (tests, benchmarks and the
    example below). Routers never send such rows: they report per-interval aggregates
    (:class:`serve_ab.analysis.aggregate.IntervalAggregate`), which the controller folds into
    :class:`WindowStats` directly."""

    version: str
    latency_ms: float
    ok: bool
    predicted_class: int | None = None
    score: float | None = None
    t_s: float = 0.0
    unit: int | None = None  # the user's hash (None: keyless), as the router knows it


@dataclass(frozen=True)
class FeedbackEvent:
    """A numeric business outcome a client reported for a request, e.g. revenue."""

    version: str
    name: str
    value: float
    t_s: float = 0.0
    unit: int | None = None  # the request's user hash or bucket (None: keyless)


@dataclass(frozen=True)
class ConversionEvent:
    """A yes/no outcome a client reported for a request, e.g. whether it converted."""

    version: str
    name: str
    converted: bool
    t_s: float = 0.0
    unit: int | None = None  # the request's user hash or bucket (None: keyless)


@dataclass(frozen=True)
class FeedbackStats:
    """Sufficient statistics of a mean: count, sum and sum of squares."""

    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


@dataclass(frozen=True)
class ConversionStats:
    trials: int = 0
    successes: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.successes <= self.trials:
            raise ValueError(f"successes ({self.successes}) must be in [0, trials ({self.trials})]")

    @property
    def rate(self) -> float | None:
        return self.successes / self.trials if self.trials else None


@dataclass(frozen=True)
class PromQLResult:
    """The answer to one promql gate's query: a value, no data (None), or an error.
    ``asked_at_s``: when it was asked, on the controller's clock, so an answer asked for
    before a step began never decides that step."""

    query: str  # as sent, placeholders substituted
    value: float | None = None
    error: str | None = None  # why the query failed; value is None then
    asked_at_s: float = 0.0
    # The query answered NaN (value is None, as for no samples): e.g. 0/0, a ratio of rates
    # over a range with no requests. Kept apart so the reason says what came back.
    nan: bool = False


@dataclass(frozen=True)
class WebhookResult:
    """What a webhook gate's or a confirm step's endpoint answered, or why it did not.

    ``passed``: the body's ``pass`` (gates) or ``confirm`` (confirm steps); ``value``: its
    ``value``; ``reason``: its ``reason``; ``error``: why there is no usable answer (then
    the rest is None). ``asked_at_s``: when it was asked, on the controller's clock, so an
    answer asked for before a step began never decides that step.
    """

    target: str  # the endpoint, without query string
    passed: bool | None = None
    value: float | None = None
    reason: str | None = None
    error: str | None = None
    asked_at_s: float = 0.0


@dataclass(frozen=True)
class WindowStats:
    """What one version did during one analysis window."""

    version: str
    request_count: int = 0
    error_count: int = 0
    #: Latencies of successful requests; errors are judged by error_rate instead, and a
    #: version that fast-fails would otherwise look quick. A sketch merged from the routers'
    #: reports (values given as a sequence are sketched here).
    latencies_ms: LogHistogram | Sequence[float] | np.ndarray = ()
    #: Predicted-class counts, index = class.
    class_counts: tuple[int, ...] = ()
    scores: LogHistogram | Sequence[float] | np.ndarray = ()
    feedback: Mapping[str, FeedbackStats] = field(default_factory=dict)
    conversions: Mapping[str, ConversionStats] = field(default_factory=dict)
    #: promql gates' answers, by gate name; set on the candidate's window by the caller.
    promql: Mapping[str, PromQLResult] = field(default_factory=dict)
    #: webhook gates' answers, by gate key (name, else url); set on the candidate's window.
    webhooks: Mapping[str, WebhookResult] = field(default_factory=dict)
    #: Copies of live requests this version answered, and on how many it predicted the
    #: class the live version answered (shadow, or blue-green validation on live traffic).
    shadow_pairs: int = 0
    shadow_agreements: int = 0
    #: The pairs' agreements (0 or 1) per group of users, for their design effect; None:
    #: pairs count as independent.
    shadow_groups: ValueGroups | None = None
    #: The requests above per group of users' buckets, for design effects
    #: (:mod:`serve_ab.analysis.clusters`); None: no such figures, requests are independent.
    groups: GroupSums | None = None
    #: Feedback values and outcomes per group of users, by metric name, likewise.
    feedback_groups: Mapping[str, ValueGroups] = field(default_factory=dict)
    conversion_groups: Mapping[str, ValueGroups] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("latencies_ms", "scores"):
            value = getattr(self, name)
            if not isinstance(value, LogHistogram):  # scores with 1 - x, as a router sketches them
                object.__setattr__(self, name, LogHistogram.of(value, complement=name == "scores"))
        if not 0 <= self.error_count <= self.request_count:
            raise ValueError(
                f"{self.version}: error_count ({self.error_count}) must be in "
                f"[0, request_count ({self.request_count})]"
            )
        if any(c < 0 for c in self.class_counts):
            raise ValueError(f"{self.version}: class_counts must be >= 0, got {self.class_counts}")


def build_windows(
    observations: Iterable[Observation],
    *,
    versions: Iterable[str],
    feedback: Iterable[FeedbackEvent] = (),
    conversions: Iterable[ConversionEvent] = (),
    num_classes: int | None = None,
    start_s: float = -math.inf,
    end_s: float = math.inf,
) -> dict[str, WindowStats]:
    """One :class:`WindowStats` per version from raw events with ``start_s <= t_s < end_s``.

    Class-count vectors all get the same length (``num_classes``, or the largest class
    seen plus one) so drift compares like with like. Events of other versions are ignored.
    """
    names = list(versions)
    inside = lambda t_s: start_s <= t_s < end_s  # noqa: E731
    obs = [o for o in observations if o.version in names and inside(o.t_s)]
    classes = [o.predicted_class for o in obs if o.predicted_class is not None]
    if any(c < 0 for c in classes):
        raise ValueError(f"predicted_class must be >= 0, got {min(classes)}")
    width = num_classes if num_classes is not None else (max(classes) + 1 if classes else 0)
    if classes and max(classes) >= width:
        raise ValueError(f"predicted_class {max(classes)} is out of range for num_classes={width}")
    value_groups: dict[str, dict[str, ValueGroups]] = {n: {} for n in names}
    for event in feedback:
        if event.version in names and inside(event.t_s):
            value_groups[event.version].setdefault(event.name, ValueGroups()).add(event.unit, float(event.value))
    outcome_groups: dict[str, dict[str, ValueGroups]] = {n: {} for n in names}
    for event in conversions:
        if event.version in names and inside(event.t_s):
            outcome_groups[event.version].setdefault(event.name, ValueGroups()).add(event.unit, float(event.converted))
    windows = {}
    for name in names:
        mine = [o for o in obs if o.version == name]
        counts = [0] * width
        for o in mine:
            if o.predicted_class is not None:
                counts[o.predicted_class] += 1
        groups = GroupSums()
        if mine:
            ok = np.array([o.ok for o in mine])
            scores = np.array([math.nan if o.score is None else o.score for o in mine], dtype=float)
            buckets = np.full(scores.size, -1, dtype=np.int64)
            scored = np.isfinite(scores)
            buckets[scored] = bucket_indices(scores[scored])
            groups.add_many([o.unit for o in mine], ok, np.array([o.latency_ms for o in mine if o.ok], dtype=float),
                            [o.predicted_class if o.ok else None for o in mine], scores, buckets)
        windows[name] = WindowStats(
            version=name,
            request_count=len(mine),
            error_count=sum(not o.ok for o in mine),
            latencies_ms=tuple(o.latency_ms for o in mine if o.ok),
            class_counts=tuple(counts),
            scores=tuple(o.score for o in mine if o.score is not None and math.isfinite(o.score)),
            feedback=feedback_stats(value_groups[name]),
            conversions=conversion_stats(outcome_groups[name]),
            groups=groups,
            feedback_groups=value_groups[name],
            conversion_groups=outcome_groups[name],
        )
    return windows


def feedback_stats(groups: Mapping[str, ValueGroups]) -> dict[str, FeedbackStats]:
    """Each metric's count, sum and sum of squares, from its per-group sums."""
    return {name: FeedbackStats(int(g.counts.sum()), float(g.sums.sum()), float(g.squares.sum()))
            for name, g in groups.items()}


def conversion_stats(groups: Mapping[str, ValueGroups]) -> dict[str, ConversionStats]:
    """Each outcome's trials and successes, from its per-group sums (of 0s and 1s)."""
    return {name: ConversionStats(int(g.counts.sum()), int(round(float(g.sums.sum())))) for name, g in groups.items()}


@dataclass(frozen=True)
class GateResult:
    gate: str  # the gate's label, e.g. "latency_p95_ms <= 1.5x stable"
    metric: str
    verdict: GateVerdict
    #: What was compared with the threshold: the metric, or candidate / stable for ratios
    #: (a point estimate; the verdict rests on ``lower`` and ``upper``).
    value: float | None
    threshold: float
    bound: str  # max, min, max_ratio_to_stable or min_ratio_to_stable
    reason: str
    candidate_value: float | None = None
    stable_value: float | None = None
    #: One-sided confidence bounds on ``value``'s scale, each at level ``alpha``; None where
    #: the gate uses no bound (promql, webhook, no data; drift gates use only ``lower``). An
    #: infinite bound: none exists at this sample size.
    lower: float | None = None
    upper: float | None = None
    #: The level this analysis judged at (already spent over the step's analyses).
    alpha: float | None = None
    #: Drift gates: the p-value of the test on the counts or scores (shown, not judged on).
    p_value: float | None = None

    def to_dict(self) -> dict:
        return {
            "gate": self.gate, "metric": self.metric, "verdict": self.verdict.value,
            "value": self.value, "threshold": self.threshold, "bound": self.bound,
            "reason": self.reason, "candidate_value": self.candidate_value,
            "stable_value": self.stable_value, "lower": self.lower, "upper": self.upper,
            "alpha": self.alpha, "p_value": self.p_value,
        }


_PERCENTILES = {
    GateMetric.LATENCY_P50_MS: 50.0,
    GateMetric.LATENCY_P95_MS: 95.0,
    GateMetric.LATENCY_P99_MS: 99.0,
}
_CLASS_DRIFT = {
    GateMetric.DRIFT_KL: drift.kl_divergence,
    GateMetric.DRIFT_PSI: drift.psi,
    GateMetric.DRIFT_JS: drift.js_divergence,
    GateMetric.DRIFT_JS_DISTANCE: drift.js_distance,
}
_SCORE_DRIFT = {GateMetric.DRIFT_KS: drift.ks_statistic_sketched,
                GateMetric.DRIFT_WASSERSTEIN: drift.wasserstein_sketched}
_RATES = frozenset({GateMetric.ERROR_RATE, GateMetric.FEEDBACK_RATE, GateMetric.SHADOW_AGREEMENT})


def alpha_for_look(alpha: float, look: int) -> float:
    """The level of the ``look``-th analysis (1, 2, ...) of a step: ``alpha * 6 / (pi^2 k^2)``.

    These sum to ``alpha`` over k = 1, 2, ... (the sum of 1/k^2 is pi^2/6), so by the union
    bound a gate passes a candidate outside its threshold at any analysis of the step with
    probability at most ``alpha``, however long the step holds; likewise for failing one
    inside it. The first look gets 0.61 alpha, the tenth 0.006 alpha.

    >>> round(alpha_for_look(0.05, 1), 4), round(alpha_for_look(0.05, 10), 6)
    (0.0304, 0.000304)
    """
    if look < 1:
        raise ValueError(f"look is {look}; analyses of a step are counted from 1")
    _check_alpha(alpha)
    return alpha * 6.0 / (math.pi ** 2 * look ** 2)


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha is {alpha!r}; it must be in (0, 0.5), e.g. 0.05")


def sample_count(gate: Gate, window: WindowStats) -> int:
    """How many samples ``window`` holds for the gate's metric (requests, predictions, ...)."""
    return _samples(gate, window)[0]


def _samples(gate: Gate, window: WindowStats) -> tuple[int, str]:
    """How many samples ``window`` holds for the gate's metric, and what a sample is."""
    metric = gate.metric
    if metric in _PERCENTILES:
        return len(window.latencies_ms), "successful requests"
    if metric is GateMetric.ERROR_RATE:
        return window.request_count, "requests"
    if metric in _CLASS_DRIFT:
        return int(sum(window.class_counts)), "predictions"
    if metric in _SCORE_DRIFT:
        return len(window.scores), "scores"
    if metric is GateMetric.FEEDBACK_MEAN:
        return window.feedback.get(gate.name, FeedbackStats()).count, f"'{gate.name}' feedback values"
    if metric is GateMetric.SHADOW_AGREEMENT:
        return window.shadow_pairs, "requests compared with the live answer"
    if metric is GateMetric.PROMQL:  # the query's own range is its window; one value or none
        answer = window.promql.get(gate.name)
        return int(answer is not None and answer.value is not None), "query values"
    if metric is GateMetric.WEBHOOK:
        answer = window.webhooks.get(gate.key)
        return int(answer is not None and answer.error is None), "answers"
    return window.conversions.get(gate.name, ConversionStats()).trials, f"'{gate.name}' outcomes"


# -- confidence bounds, each one-sided at level alpha ---------------------------------------


def _rate_counts(gate: Gate, window: WindowStats) -> tuple[int, int, str]:
    """Successes, trials, and the two in words, for a rate metric."""
    if gate.metric is GateMetric.ERROR_RATE:
        x, n = window.error_count, window.request_count
        return x, n, f"{x} errors in {n} requests"
    if gate.metric is GateMetric.SHADOW_AGREEMENT:
        x, n = window.shadow_agreements, window.shadow_pairs
        return x, n, f"{x} agreements in {n} requests compared with the live answer"
    stats_ = window.conversions[gate.name]
    x, n = stats_.successes, stats_.trials
    return x, n, f"{x} successes in {n} '{gate.name}' outcomes"


def _rate_effect(gate: Gate, window: WindowStats, icc: float = 1.0) -> DesignEffect:
    """The design effect of a rate gate's proportion, from its counts per group of users
    (none kept: independent)."""
    if gate.metric is GateMetric.ERROR_RATE and window.groups is not None:
        return _with_ceiling(ratio_design_effect(window.groups.errors, window.groups.requests), window,
                             window.request_count, icc)
    if gate.metric is GateMetric.FEEDBACK_RATE and gate.name in window.conversion_groups:
        return _values_effect(window.conversion_groups[gate.name], icc)
    if gate.metric is GateMetric.SHADOW_AGREEMENT and window.shadow_groups is not None:
        return _values_effect(window.shadow_groups, icc)
    return INDEPENDENT


def _mean_effect(gate: Gate, window: WindowStats, icc: float = 1.0) -> DesignEffect:
    groups = window.feedback_groups.get(gate.name)
    return INDEPENDENT if groups is None else _values_effect(groups, icc)


def _values_effect(groups: ValueGroups, icc: float) -> DesignEffect:
    """The design effect of feedback or shadow agreements, capped as the requests' are
    (:func:`_with_ceiling`), by how many values each user gave."""
    return groups.design_effect().capped(groups.ceiling(icc), icc, of="values")


def _rate_bounds(x: float, n: float, alpha: float, effect: DesignEffect = INDEPENDENT) -> tuple[float, float]:
    """Clopper-Pearson (exact binomial) one-sided bounds on a proportion, on the effective
    sample ``n / deff`` with the same proportion (Korn & Graubard 1998)."""
    n_eff = effect.effective(n, alpha)
    if n_eff < n:
        x, n = x / n * n_eff, n_eff
    # Beta quantiles via betaincinv: scipy.stats.beta.ppf, 50x slower (simulations call this).
    lower = 0.0 if x == 0 else float(special.betaincinv(x, n - x + 1, alpha))
    upper = 1.0 if x == n else float(special.betaincinv(x + 1, n - x, 1 - alpha))
    return lower, upper


def _percentile(latencies: LogHistogram, percentile: float) -> float:
    """numpy's default (linear) percentile of the sketched values, within 1%."""
    return latencies.quantile(percentile / 100)


def _quantile_effect(window: WindowStats, quantile_ms: float, icc: float = 1.0) -> DesignEffect:
    if window.groups is None:
        return INDEPENDENT
    return _with_ceiling(quantile_design_effect(window.groups.latency_bins, quantile_ms), window,
                         window.latencies_ms.count, icc)


def _with_ceiling(effect: DesignEffect, window: WindowStats, n: int, icc: float = 1.0) -> DesignEffect:
    """``effect`` capped by the most a figure over ``n`` of the window's requests can have,
    by how many requests each user sent and how alike they may be (``icc``, the rollout's
    ``analysis.max_user_icc``; 1: no assumption), :meth:`~serve_ab.analysis.clusters.GroupSums.ceiling`."""
    if window.groups is None:
        return effect
    # The assumption's ceiling holds even where the groups' estimate reads more: that estimate
    # is noisy exactly where errors cluster, and letting it overrule the assumption (tried)
    # cut the false passes under a wrong one from 9.0 +- 2.0% to 8.0 +- 1.9% while aborting a
    # 10x-error candidate by its gate in 1 of 40 rollouts instead of 12 (rollout_calibration).
    return effect.capped(window.groups.ceiling(n, icc), icc)


def _quantile_bounds(latencies: LogHistogram, q: float, alpha: float,
                     effect: DesignEffect = INDEPENDENT) -> tuple[float, float]:
    """Distribution-free bounds on the q-quantile from order statistics.

    The number of samples below the true quantile is Binomial(n, q) (at most so with
    ties, which only makes these bounds conservative), so the smallest order statistic
    x_(u) with P(Binomial <= u - 1) >= 1 - alpha is an upper bound, and the largest x_(l)
    with P(Binomial >= l) >= 1 - alpha a lower one. From the sketch, each order statistic is
    replaced by the edge of its bucket on the safe side (at most 2% wider). Too few samples
    for a bound gives inf (upper) or 0 (lower: latencies are never negative).

    With a design effect, the ranks are found for ``n / deff`` effective samples and read at
    the same fraction of the n (Woodruff 1952: the bound on the proportion below, inverted).
    """
    n = latencies.count
    n_eff = min(int(effect.effective(n, alpha)), n)
    u_eff = _binomial_quantile(1 - alpha, n_eff, q)  # 0-based index of x_(u) among n_eff
    l_eff = _binomial_quantile(alpha, n_eff, q, strictly=True)  # 1-based rank of x_(l) among n_eff
    if n_eff == n:
        u, low = u_eff, l_eff - 1
    else:  # the same fractions of n, rounded outwards
        u = math.ceil((u_eff + 1) * n / n_eff) - 1 if n_eff else n
        low = math.floor(l_eff * n / n_eff) - 1 if n_eff else -1
    upper = latencies.rank_bounds(u)[1] if u < n else math.inf
    lower = latencies.rank_bounds(low)[0] if low >= 0 else 0.0
    return lower, upper


def _binomial_quantile(y: float, n: int, q: float, *, strictly: bool = False) -> int:
    """The least k in [0, n] with P(Binomial(n, q) <= k) >= y (> y if ``strictly``).

    bdtrik inverts the cdf in k continuously; a few exact steps from there make it the
    integer answer, in microseconds rather than a cdf over all n + 1 counts.
    """
    def reached(k: int) -> bool:
        cdf = special.bdtr(k, n, q)
        return cdf > y if strictly else cdf >= y

    guess = special.bdtrik(y, n, q)
    k = int(min(max(math.ceil(guess), 0), n)) if math.isfinite(guess) else 0
    while k > 0 and reached(k - 1):
        k -= 1
    while k < n and not reached(k):
        k += 1
    return k


def _mean_moments(stats_: FeedbackStats, effect: DesignEffect = INDEPENDENT,
                  effect_alpha: float = 0.05) -> tuple[float, float, int]:
    """The mean, the variance of the mean (inf with one value) and its degrees of freedom:
    with a design effect, the variance times the effect's upper bound at ``effect_alpha``
    and the effective sample's degrees of freedom (none below two units' worth)."""
    n, mean = stats_.count, stats_.mean
    if n < 2:
        return mean, math.inf, 0
    variance = max(stats_.total_sq - n * mean * mean, 0.0) / (n - 1)
    inflate = effect.upper(effect_alpha)
    if n / inflate < 2:  # one unit's worth (one user, say): no variance to bound the mean with
        return mean, math.inf, 0
    return mean, variance / n * inflate, min(n - 1, int(n / inflate) - 1)


#: Cochran's rule for a t interval on a skewed mean, n > 25 g^2 (g the values' skewness):
#: the mean's own skewness, g / sqrt(n), at most 0.2.
MAX_MEAN_SKEWNESS = 0.2
#: The bound on the long tail's side takes the first-order Cornish-Fisher correction of the
#: t quantile, q + k g (2 q^2 + 1) / 6 (Johnson 1978), for k = 3 times the skewness seen: a
#: window that missed the tail's rare values reads both the mean and the skewness low
#: (lognormal values with sigma 1, 1,000 of them: median sample skewness 4.3 against the
#: true 6.2). Measured at a max set at the true mean, 35,000-100,000 samples per case, as a
#: multiple of alpha at 0.05, 0.0034 and 0.0003 (a step's first, third and tenth look):
#: Student's t 1.1-18.7x; Hall's transform as published 1.0-3.9x; k = 2, 0.85-2.2x; k = 3,
#: 0.10-0.91x across lognormal, Pareto, exponential and mostly-zero values of 300-3,000, at
#: a power within 8 points of Student's. (Hall's transform with twice the skewness held
#: at 0.05 but cost up to 80% of the power at small alphas: its cubic runs away there.)
LONG_TAIL_SKEWNESS_FACTOR = 3.0


def _mean_skewness(gate: Gate, window: WindowStats) -> float:
    groups = window.feedback_groups.get(gate.name)
    return 0.0 if groups is None else groups.mean_skewness()


def _mean_bounds(stats_: FeedbackStats, alpha: float, effect: DesignEffect = INDEPENDENT,
                 skewness: float = 0.0) -> tuple[float, float]:
    """One-sided bounds on a mean: Student's t, corrected for the mean's ``skewness``: on
    the long tail's side by :data:`LONG_TAIL_SKEWNESS_FACTOR` times the first-order
    Cornish-Fisher term, on the short side by Hall's (1992) transformation (monotone: the
    Cornish-Fisher term there overshoots at small alphas, 30-760x alpha). Where the skewness
    is beyond :data:`MAX_MEAN_SKEWNESS`, no bound on the long tail's side (inf) until more
    values come; where every value is the same, no bound at all (n equal values say nothing
    of how far a rarer one may lie: a mostly-zero metric's window of zeros).

    Why: the values a gate judges (revenue, basket size, time spent) are often right-skewed,
    and a window that missed the rare large values has a low mean *and* a low spread, so
    Student's upper bound falls short. At a ``max`` set at the true mean, 200 independent
    lognormal values (sigma 1) passed 9.6% of windows at alpha 5% (sigma 2: 30% at 100
    values). ``stats_calibration`` scenario 6 measures the bounds through the pipeline."""
    mean, var_mean, df = _mean_moments(stats_, effect, alpha)
    if not math.isfinite(var_mean) or _no_spread(stats_):
        return -math.inf, math.inf
    quantile, se = float(special.stdtrit(df, 1 - alpha)), math.sqrt(var_mean)
    long_side = quantile + LONG_TAIL_SKEWNESS_FACTOR * abs(skewness) * (2 * quantile * quantile + 1) / 6
    if skewness > 0:
        lower = mean - _hall_pivot(quantile, skewness) * se
        upper = math.inf if skewness > MAX_MEAN_SKEWNESS else mean + long_side * se
    elif skewness < 0:
        lower = -math.inf if skewness < -MAX_MEAN_SKEWNESS else mean - long_side * se
        upper = mean - _hall_pivot(-quantile, skewness) * se
    else:
        lower, upper = mean - quantile * se, mean + quantile * se
    return lower, upper


def _no_spread(stats_: FeedbackStats) -> bool:
    """Every value the same, within rounding of their sum of squares."""
    if stats_.count < 2:
        return False
    spread = stats_.total_sq - stats_.count * stats_.mean * stats_.mean
    return spread <= 1e-12 * max(1.0, abs(stats_.total_sq))


def _hall_pivot(quantile: float, skewness: float) -> float:
    """The t statistic ``(mean - mu) / se`` whose Hall transform is ``quantile``. Hall's
    transform ``T + g T^2 / 3 + g^2 T^3 / 27 + g / 6`` (g the mean's skewness) removes the
    skewness of T's distribution to first order; it is increasing, so it inverts in closed
    form (Hall 1992, JRSS B 54; Zhou & Dinh 2005 compare it with Johnson's)."""
    if skewness == 0.0:
        return quantile
    inner = 1.0 + skewness * (quantile - skewness / 6.0)
    return 3.0 / skewness * (math.copysign(abs(inner) ** (1.0 / 3.0), inner) - 1.0)


def _describe_skewness(skewness: float, stats_: FeedbackStats) -> str:
    """For a feedback_mean gate's reason: empty where the values' skewness hardly matters."""
    if _no_spread(stats_):
        return (f"; every value is {_fmt(stats_.mean)}, which bounds nothing: a rarer value may lie anywhere, "
                "so the gate waits for values that differ")
    if abs(skewness) > MAX_MEAN_SKEWNESS:
        side = "upper" if skewness > 0 else "lower"
        return (f"; the values are too skewed for a bound on the mean's {side} side yet (the mean's skewness "
                f"{skewness:.2g}, at most {MAX_MEAN_SKEWNESS} by Cochran's rule: about 25 x the values' "
                f"skewness squared values), so that bound waits for more")
    if abs(skewness) >= 0.02:
        return f"; skewed values (the mean's skewness {skewness:.2g}), bounds corrected for it"
    return ""


def _describe_both(effects: tuple[DesignEffect, DesignEffect], candidate: WindowStats,
                   stable: WindowStats, effect_alpha: float) -> str:
    said = [f"{w.version}'s {e.upper(effect_alpha):.3g}" for e, w in zip(effects, (candidate, stable))
            if e.upper(effect_alpha) > 1.0]
    return (f" (design effects of correlated users' requests, at their upper bounds: {', '.join(said)})"
            if said else "")


def _rate_ratio_bounds(x1: float, n1: float, x2: float, n2: float, alpha: float) -> tuple[float, float]:
    """Katz's log interval on the ratio of two proportions.

    With a zero cell (no events, or only events) Katz's variance is zero or undefined, so
    then 0.5 is added to every cell of the 2 x 2 table (Haldane-Anscombe); a ratio with one
    side at 0 events then gets a wide interval instead of a certain one.
    """
    if 0 in (x1, n1 - x1, x2, n2 - x2):
        x1, n1, x2, n2 = x1 + 0.5, n1 + 1.0, x2 + 0.5, n2 + 1.0
    log_ratio = math.log((x1 / n1) / (x2 / n2))
    se = math.sqrt(1 / x1 - 1 / n1 + 1 / x2 - 1 / n2)
    z = float(special.ndtri(1 - alpha))
    # A handful of effective requests can make se huge: the bounds are then 0 and inf.
    return _exp(log_ratio - z * se), _exp(log_ratio + z * se)


def _exp(value: float) -> float:
    return math.inf if value > 700.0 else math.exp(value)


def _mean_ratio_bounds(cand: FeedbackStats, stab: FeedbackStats, alpha: float,
                       effects: tuple[DesignEffect, DesignEffect] = (INDEPENDENT, INDEPENDENT),
                       skewness: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float]:
    """Fieller's bounds on candidate mean / stable mean (stable's mean > 0), each one-sided.

    The ratio r is below the upper bound where (m1 - r m2) / sqrt(v1 + r^2 v2) >= -c_up, and
    above the lower one where it is <= c_low; t has min(n1, n2) - 1 degrees of freedom, a
    conservative stand-in for Welch's. Without skewness c_up = c_low = t (Fieller's set). With
    the means' ``skewness`` (each arm's, :meth:`ValueGroups.mean_skewness`), the pivot's numerator
    m1 - r m2 has its own, and the long tail's side is corrected for it as :func:`_mean_bounds`
    corrects a mean's: at a canary's 5/95 split the candidate's mean dominates it, and
    lognormal values (sigma 1, 200 against 3,800 values) at ``max_ratio_to_stable`` set at the
    true ratio passed 1.8x alpha with Fieller's t alone (sigma 1.5, 100 against 1,900: 4.6x).
    When stable's mean is not clearly above 0 (m2^2 <= c^2 v2) that side is unbounded.
    """
    # Each arm's design effect at alpha / 2: both hold together.
    m1, v1, df1 = _mean_moments(cand, effects[0], alpha / 2)
    m2, v2, df2 = _mean_moments(stab, effects[1], alpha / 2)
    df = min(df1, df2)
    if df < 1:
        return -math.inf, math.inf
    t = float(special.stdtrit(df, 1 - alpha))
    if m2 * m2 - t * t * v2 <= 0:
        return -math.inf, math.inf
    # Only the long tail's side is widened. Hall's transform on the short side, as a mean's
    # bounds take it, read the ratio's skewness at the estimate and made that side err: a
    # candidate at min_ratio_to_stable 0.9 passed 1.25x alpha (lognormal, 200 against 3,800).
    g = _difference_skewness(m1 / m2, v1, v2, skewness)
    # Past Cochran's rule that side has no bound, as a mean's: the gate waits for more values.
    # At a canary's 5/95 that costs power: max 1.1 on a candidate at 0.5x stable passed 0.41
    # of windows at 200 against 3,800 lognormal (sigma 1) values, 0.88 at 1,000 against 19,000.
    long_side = t + LONG_TAIL_SKEWNESS_FACTOR * abs(g) * (2 * t * t + 1) / 6
    if abs(g) > MAX_MEAN_SKEWNESS:
        long_side = math.inf
    # m1 - r m2 skewed to the right (g > 0): the pivot's lower tail is the long one, and it
    # bounds the ratio from above.
    c_up, c_low = (long_side, t) if g > 0 else ((t, long_side) if g < 0 else (t, t))
    return _fieller_root(m1, m2, v1, v2, c_low, -1.0), _fieller_root(m1, m2, v1, v2, c_up, 1.0)


def _ratio_skewness(cand: FeedbackStats, stab: FeedbackStats, alpha: float,
                    effects: tuple[DesignEffect, DesignEffect], skewness: tuple[float, float]) -> float:
    """The skewness :func:`_mean_ratio_bounds` corrects for, for the gate's reason (0 where it
    has none to correct)."""
    m1, v1, _ = _mean_moments(cand, effects[0], alpha / 2)
    m2, v2, _ = _mean_moments(stab, effects[1], alpha / 2)
    if not m2 > 0 or not math.isfinite(m1 / m2):
        return 0.0
    return _difference_skewness(m1 / m2, v1, v2, skewness)


def _describe_ratio_skewness(g: float) -> str:
    """For a feedback_mean ratio gate's reason: why a side of the ratio is unbounded, or that
    the bounds were corrected; empty where the skewness hardly matters."""
    if abs(g) > MAX_MEAN_SKEWNESS:
        side = "upper" if g > 0 else "lower"
        return (f"; the values are too skewed for a bound on the ratio's {side} side yet (skewness {g:.2g} of "
                f"the candidate's mean less the ratio times stable's, at most {MAX_MEAN_SKEWNESS} by Cochran's "
                "rule), so that bound waits for more values")
    if abs(g) >= 0.02:
        return f"; skewed values (skewness {g:.2g} of the means' difference at the ratio), bounds corrected for it"
    return ""


def _difference_skewness(ratio: float, v1: float, v2: float, skewness: tuple[float, float]) -> float:
    """The skewness of m1 - r m2 at r = ``ratio``, from each mean's: third cumulants add
    (the second's with the sign and cube of -r), over the variance to the power 1.5."""
    third = skewness[0] * v1 ** 1.5 - ratio ** 3 * skewness[1] * v2 ** 1.5
    return third / (v1 + ratio * ratio * v2) ** 1.5


def _fieller_root(m1: float, m2: float, v1: float, v2: float, crit: float, side: float) -> float:
    """The root of (m1 - r m2)^2 = crit^2 (v1 + r^2 v2) on ``side`` (+1 the upper, -1 the
    lower); +-inf where crit is infinite or m2 is not clearly away from 0 at it."""
    if math.isinf(crit):
        return side * math.inf
    a = m2 * m2 - crit * crit * v2
    if a <= 0:
        return side * math.inf
    b, c = m1 * m2, m1 * m1 - crit * crit * v1
    return (b + side * math.sqrt(max(b * b - a * c, 0.0))) / a


def _ratio(numerator: float, denominator: float, empty: float) -> float:
    """numerator / denominator for bounds of non-negative quantities; ``empty`` for 0/0."""
    if denominator == 0:
        return empty if numerator == 0 else math.inf
    return numerator / denominator


# -- verdicts --------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _confidence(alpha: float) -> str:
    """1 - alpha as a percentage with enough digits to show alpha: 97.0%, 99.9924%."""
    digits = max(1, 1 - math.floor(math.log10(100 * alpha)))
    return f"{100 * (1 - alpha):.{digits}f}%"


def _judge(gate: Gate, lower: float, upper: float, alpha: float, of: str = "") -> tuple[GateVerdict, str]:
    """PASS when the bound on the threshold's side is within it, FAIL when the other bound is
    beyond it, INCONCLUSIVE otherwise; and the comparison in words."""
    level, limit = _confidence(alpha), f"{gate.bound} {_fmt(gate.threshold)}"
    if gate.bound.startswith("max"):
        if upper < gate.threshold:
            return GateVerdict.PASS, f"upper {level} bound{of} {_fmt(upper)} is below {limit}: pass"
        if lower > gate.threshold:
            return GateVerdict.FAIL, f"lower {level} bound{of} {_fmt(lower)} is above {limit}: fail"
        return GateVerdict.INCONCLUSIVE, f"upper {level} bound{of} {_fmt(upper)} is not below {limit}: inconclusive"
    if lower > gate.threshold:
        return GateVerdict.PASS, f"lower {level} bound{of} {_fmt(lower)} is above {limit}: pass"
    if upper < gate.threshold:
        return GateVerdict.FAIL, f"upper {level} bound{of} {_fmt(upper)} is below {limit}: fail"
    return GateVerdict.INCONCLUSIVE, f"lower {level} bound{of} {_fmt(lower)} is not above {limit}: inconclusive"


def evaluate_gate(gate: Gate, candidate: WindowStats, stable: WindowStats, min_samples: int, *,
                  alpha: float = 0.05, pass_alpha: float | None = None,
                  max_user_icc: float | None = None) -> GateResult:
    """Judge one gate on the candidate's window, with stable's window where the gate needs it.

    ``alpha`` is this analysis' level, already spent over the step's analyses by the caller
    (:func:`alpha_for_look`); the default suits a single look. ``pass_alpha`` (None:
    ``alpha``; never below it) is the level a PASS is judged at, where fewer of the step's
    analyses could end it than could fail it (a timed pause ends on the analysis current when
    its time is up, :mod:`serve_ab.rollout.machine`): the gate FAILs only on evidence at
    ``alpha``, and PASSes on evidence at ``pass_alpha``; a FAIL seen only at ``pass_alpha``
    is INCONCLUSIVE. Drift gates, which pass whenever they do not fail, judge at ``alpha``
    alone. ``max_user_icc``: the rollout's ``analysis.max_user_icc``, an assumed ceiling on
    how alike a user's requests are (None: no assumption).
    """
    _check_alpha(alpha)
    if pass_alpha is None or pass_alpha == alpha:
        return _evaluate_gate(gate, candidate, stable, min_samples, alpha, max_user_icc)
    _check_alpha(pass_alpha)
    if pass_alpha < alpha:
        raise ValueError(f"pass_alpha is {pass_alpha!r}, below alpha {alpha!r}; a pass is never "
                         "judged more strictly than a fail")
    judged = _evaluate_gate(gate, candidate, stable, min_samples, alpha, max_user_icc)
    if judged.verdict is not GateVerdict.INCONCLUSIVE or gate.metric in _CLASS_DRIFT or gate.metric in _SCORE_DRIFT:
        return judged
    passing = _evaluate_gate(gate, candidate, stable, min_samples, pass_alpha, max_user_icc)
    return judged if passing.verdict is GateVerdict.FAIL else passing


def _evaluate_gate(gate: Gate, candidate: WindowStats, stable: WindowStats, min_samples: int,
                   alpha: float, max_user_icc: float | None) -> GateResult:
    """:func:`evaluate_gate` with both bounds at ``alpha``."""
    icc = 1.0 if max_user_icc is None else max_user_icc
    metric = gate.metric.value + (f"[{gate.name}]" if gate.name else "")

    def result(verdict: GateVerdict, reason: str, value=None, cand=None, stab=None, *,
               lower=None, upper=None, p_value=None, level=alpha) -> GateResult:
        return GateResult(gate.label, gate.metric.value, verdict, value, gate.threshold,
                          gate.bound, reason, cand, stab, lower, upper, level, p_value)

    if gate.metric is GateMetric.PROMQL:
        return _evaluate_promql(gate, candidate, result)
    if gate.metric is GateMetric.WEBHOOK:
        return _evaluate_webhook(gate, candidate, result)

    sides = [(candidate, "candidate")] + ([(stable, "stable")] if gate.needs_stable else [])
    for window, role in sides:
        seen, unit = _samples(gate, window)
        if seen < min_samples:
            return result(GateVerdict.INCONCLUSIVE,
                          f"no data for {metric}: {role} {window.version} has {seen} {unit} in "
                          f"this window, {min_samples} needed; is it receiving traffic?")

    if gate.metric in _CLASS_DRIFT or gate.metric in _SCORE_DRIFT:
        return _evaluate_drift(gate, metric, candidate, stable, alpha, result, icc)
    if gate.needs_stable:
        return _evaluate_ratio(gate, metric, candidate, stable, alpha, result, icc)

    if gate.metric in _PERCENTILES:
        latencies = candidate.latencies_ms
        percentile = _PERCENTILES[gate.metric]
        value = _percentile(latencies, percentile)
        effect = _quantile_effect(candidate, value, icc)
        lower, upper = _quantile_bounds(latencies, percentile / 100, alpha, effect)
        seen = f"p{percentile:g} of {latencies.count} successful requests is {_fmt(value)} ms{effect.describe(alpha)}"
    elif gate.metric in _RATES:
        x, n, seen = _rate_counts(gate, candidate)
        value = x / n
        effect = _rate_effect(gate, candidate, icc)
        lower, upper = _rate_bounds(x, n, alpha, effect)
        seen += effect.describe(alpha)
    else:  # feedback_mean
        stats_ = candidate.feedback[gate.name]
        value = stats_.mean
        effect, skewness = _mean_effect(gate, candidate, icc), _mean_skewness(gate, candidate)
        lower, upper = _mean_bounds(stats_, alpha, effect, skewness)
        seen = (f"mean {_fmt(value)} of {stats_.count} '{gate.name}' values{effect.describe(alpha)}"
                f"{_describe_skewness(skewness, stats_)}")
    verdict, judged = _judge(gate, lower, upper, alpha)
    return result(verdict, f"{metric} on {candidate.version}: {seen}, {judged}", value, value,
                  lower=lower, upper=upper)


def _evaluate_ratio(gate: Gate, metric: str, candidate: WindowStats, stable: WindowStats, alpha: float,
                    result, icc: float = 1.0) -> GateResult:
    """Non-inferiority to stable: a confidence interval on candidate / stable."""
    (seen_cand, unit), (seen_stab, _) = _samples(gate, candidate), _samples(gate, stable)
    sizes = f"{seen_cand} and {seen_stab} {unit}"
    if gate.metric in _PERCENTILES:
        percentile = _PERCENTILES[gate.metric]
        arms = [w.latencies_ms for w in (candidate, stable)]
        cand, stab = (_percentile(a, percentile) for a in arms)
    elif gate.metric in _RATES:
        (x1, n1, _), (x2, n2, _) = _rate_counts(gate, candidate), _rate_counts(gate, stable)
        cand, stab = x1 / n1, x2 / n2
    else:  # feedback_mean
        cand_stats, stab_stats = candidate.feedback[gate.name], stable.feedback[gate.name]
        cand, stab = cand_stats.mean, stab_stats.mean

    if stab < 0 or (stab == 0 and cand < 0):
        return result(GateVerdict.INCONCLUSIVE,
                      f"{metric}: a ratio to stable {stable.version}'s {_fmt(stab)} is not "
                      "meaningful for negative values; use an absolute min or max gate",
                      None, cand, stab)
    if cand == stab == 0:
        # 0 / 0 reads as a ratio of 1, but no sample size bounds it: zero events on both
        # sides say nothing about how much more often the candidate would have them.
        return result(GateVerdict.INCONCLUSIVE,
                      f"{metric}: {candidate.version} and stable {stable.version} are both 0 ({sizes}), "
                      f"so their ratio cannot be bounded; judge such a metric with an absolute gate, "
                      f"e.g. {{metric: {gate.metric.value}, max: 0.01}}", 1.0, cand, stab)
    value = cand / stab if stab > 0 else math.inf

    if gate.metric in _PERCENTILES:
        effects = (_quantile_effect(candidate, cand, icc), _quantile_effect(stable, stab, icc))
    elif gate.metric in _RATES:
        effects = (_rate_effect(gate, candidate, icc), _rate_effect(gate, stable, icc))
    else:
        effects = (_mean_effect(gate, candidate, icc), _mean_effect(gate, stable, icc))
    if gate.metric in _PERCENTILES:
        # Each arm's bound at alpha / 2: both hold together with probability >= 1 - alpha.
        (cand_low, cand_up), (stab_low, stab_up) = (
            _quantile_bounds(a, percentile / 100, alpha / 2, e) for a, e in zip(arms, effects))
        lower = 0.0 if math.isinf(stab_up) else _ratio(cand_low, stab_up, 0.0)
        upper = _ratio(cand_up, stab_low, math.inf)
    elif gate.metric in _RATES:
        # Each arm's design effect at alpha / 2: both hold together.
        n1_eff, n2_eff = effects[0].effective(n1, alpha / 2), effects[1].effective(n2, alpha / 2)
        lower, upper = _rate_ratio_bounds(x1 / n1 * n1_eff, n1_eff, x2 / n2 * n2_eff, n2_eff, alpha)
    else:
        skewness = (_mean_skewness(gate, candidate), _mean_skewness(gate, stable))
        lower, upper = _mean_ratio_bounds(cand_stats, stab_stats, alpha, effects, skewness)
    verdict, judged = _judge(gate, lower, upper, alpha, " on the ratio")
    if math.isinf(lower) and math.isinf(upper):
        judged += f" ({stable.version}'s mean is not clearly above 0)"
    elif gate.metric not in _PERCENTILES and gate.metric not in _RATES:
        judged += _describe_ratio_skewness(_ratio_skewness(cand_stats, stab_stats, alpha, effects, skewness))
    reason = (f"{metric} on {candidate.version} is {_fmt(cand)}, {_fmt(value)}x stable "
              f"{stable.version} ({_fmt(stab)}), from {sizes}{_describe_both(effects, candidate, stable, alpha / 2)}; "
              f"{judged}")
    return result(verdict, reason, value, cand, stab, lower=lower, upper=upper)


def _evaluate_drift(gate: Gate, metric: str, candidate: WindowStats, stable: WindowStats, alpha: float,
                    result, icc: float = 1.0) -> GateResult:
    """A harm detector: FAIL only when a lower confidence bound on the divergence is above max,
    PASS otherwise (never INCONCLUSIVE: see the module's docstring)."""
    if gate.metric in _CLASS_DRIFT:
        value = _CLASS_DRIFT[gate.metric](candidate.class_counts, stable.class_counts)
        # Each side's counts on its effective sample (Rao-Scott's first-order correction):
        # users who keep getting one class would otherwise read as a shift of the classes.
        effects = (_class_effect(candidate, icc), _class_effect(stable, icc))
        counts = [effective_counts(w.class_counts, e, alpha / 2) for w, e in zip((candidate, stable), effects)]
        described = _describe_both(effects, candidate, stable, alpha / 2)
        if min(sum(c) for c in counts) == 0:  # nothing left to test on one side: no difference shown
            p_value = 1.0
            tested = f"too few predictions from distinct users to test{described}"
        else:
            test = drift.class_homogeneity_test(counts[0], counts[1], alpha=alpha)
            p_value, tested = test.p_value, test.describe() + described
        # The bound, each class's interval on its own design effect (a class users keep more
        # than others is less certain than the average effect says), at its upper bound.
        width = max(len(candidate.class_counts), len(stable.class_counts))
        per_class = tuple(_class_effects(w, width, alpha / 2, icc) for w in (candidate, stable))
        lower = drift.class_divergence_lower_bound(_CLASS_KIND[gate.metric], candidate.class_counts,
                                                   stable.class_counts, alpha, per_class)
    else:
        # Each side's sample on its design effect: users whose scores run high or low would
        # otherwise read as a shift of the scores.
        effects = (_score_effect(candidate, icc), _score_effect(stable, icc))
        deffs = tuple(e.upper(alpha / 2) for e in effects)
        statistic, p_value = drift.ks_test_sketched(candidate.scores, stable.scores, deffs)
        band = drift.dkw_band((len(candidate.scores) / deffs[0], len(stable.scores) / deffs[1]), alpha)
        if gate.metric is GateMetric.DRIFT_KS:
            value, lower = statistic, drift.ks_lower_bound(statistic, band)
        else:
            value = _SCORE_DRIFT[gate.metric](candidate.scores, stable.scores)
            lower = drift.wasserstein_lower_sketched(candidate.scores, stable.scores, band)
        tested = (f"KS test on {len(candidate.scores)} and {len(stable.scores)} scores, p = {p_value:.3g}"
                  f"{_describe_both(effects, candidate, stable, alpha / 2)}")
    what = f"{metric} of {candidate.version} against stable {stable.version} is {_fmt(value)} ({tested})"
    limit, level = f"max {_fmt(gate.threshold)}", _confidence(alpha)
    if lower > gate.threshold:
        verdict, judged = GateVerdict.FAIL, f"lower {level} bound {_fmt(lower)} is above {limit}: fail"
    else:
        verdict, judged = GateVerdict.PASS, f"lower {level} bound {_fmt(lower)} is not above {limit}: pass"
    return result(verdict, f"{what}; {judged}", value, lower=lower, p_value=p_value)


_CLASS_KIND = {GateMetric.DRIFT_KL: "kl", GateMetric.DRIFT_PSI: "psi", GateMetric.DRIFT_JS: "js",
               GateMetric.DRIFT_JS_DISTANCE: "js_distance"}


def _class_effects(window: WindowStats, width: int, alpha: float, icc: float = 1.0) -> list[float]:
    """Each class's design effect at its upper ``1 - alpha`` bound (1 without groups)."""
    if window.groups is None:
        return [1.0] * width
    effects = class_design_effects(window.groups.classes, width)
    n = sum(window.class_counts)
    return [_with_ceiling(effects[c], window, n, icc).upper(alpha) if c in effects else 1.0 for c in range(width)]


def _score_effect(window: WindowStats, icc: float = 1.0) -> DesignEffect:
    if window.groups is None:
        return INDEPENDENT
    return _with_ceiling(score_design_effect(window.groups.score_bins, window.groups.score_values), window,
                         len(window.scores), icc)


def _class_effect(window: WindowStats, icc: float = 1.0) -> DesignEffect:
    if window.groups is None:
        return INDEPENDENT
    return _with_ceiling(class_design_effect(window.groups.classes, len(window.class_counts)), window,
                         sum(window.class_counts), icc)


def _evaluate_promql(gate: Gate, candidate: WindowStats, result) -> GateResult:
    """A promql gate: min_samples does not apply, the query's range decides what it sees."""
    metric = f"promql[{gate.name}]"
    answer = candidate.promql.get(gate.name)
    result = functools.partial(result, level=None)  # a number judged as given: no level
    if answer is None:
        return result(GateVerdict.INCONCLUSIVE, f"no data for {metric}: not queried yet for {candidate.version}")
    if answer.error is not None:
        return result(GateVerdict.INCONCLUSIVE, f"{metric} query failed, so {candidate.version} cannot be "
                                            f"judged on it: {answer.error}; query: {answer.query}")
    if answer.value is None and answer.nan:
        return result(GateVerdict.INCONCLUSIVE, f"no data for {metric}: the query returned NaN (e.g. 0/0: a "
                                            f"ratio over a range with no requests); is {candidate.version} "
                                            f"receiving traffic? query: {answer.query}")
    if answer.value is None:
        return result(GateVerdict.INCONCLUSIVE, f"no data for {metric}: the query returned no samples; is "
                                            f"{candidate.version} receiving traffic? query: {answer.query}")
    return _against_bound(gate, f"{metric} on {candidate.version}", answer.value, result,
                          failed_also=f"; query: {answer.query}")


def _evaluate_webhook(gate: Gate, candidate: WindowStats, result) -> GateResult:
    """A webhook gate: the endpoint's pass, or its value against min / max, as given."""
    metric = f"webhook[{gate.name or display_url(gate.url or '')}]"
    answer = candidate.webhooks.get(gate.key)
    result = functools.partial(result, level=None)  # an external verdict: no level
    if answer is None:
        return result(GateVerdict.INCONCLUSIVE, f"no answer from {metric} yet for {candidate.version}")
    if answer.error is not None:
        return result(GateVerdict.INCONCLUSIVE, f"{metric} gave no usable answer, so {candidate.version} cannot "
                                            f"be judged on it (held, not failed): {answer.error}")
    said = f": {answer.reason!r}" if answer.reason else ""
    if answer.passed is False:
        value = answer.value if answer.value is not None else 0.0
        return result(GateVerdict.FAIL, f"{metric} answered pass: false for {candidate.version}{said}",
                      value, value)
    if gate.bound == "pass":
        if answer.passed is True:
            return result(GateVerdict.PASS, f"{metric} answered pass: true for {candidate.version}{said}",
                          1.0, 1.0)
        return result(GateVerdict.INCONCLUSIVE, f"{metric} answered no pass for {candidate.version} (only a "
                                            f"value, and the gate has no min or max to judge it){said}")
    if answer.value is None:
        return result(GateVerdict.INCONCLUSIVE, f"{metric} answered no value for {candidate.version}; the "
                                            f"gate judges value against {gate.bound} {_fmt(gate.threshold)}{said}")
    return _against_bound(gate, f"{metric} on {candidate.version}", answer.value, result, said=said)


def _against_bound(gate: Gate, what: str, value: float, result, *, said: str = "",
                   failed_also: str = "") -> GateResult:
    """An external number (a query's, an endpoint's) judged against the gate's min or max as
    given: PASS within it, FAIL past it. ``said``: the endpoint's reason, on either verdict;
    ``failed_also``: more for a failure only (the query, to rerun it)."""
    judged = f"{what} is {_fmt(value)}"
    upper = gate.bound == "max"
    if (value <= gate.threshold) if upper else (value >= gate.threshold):
        return result(GateVerdict.PASS, f"{judged}, within {gate.bound} {_fmt(gate.threshold)}{said}", value, value)
    side = "above" if upper else "below"
    return result(GateVerdict.FAIL, f"{judged}, {side} {gate.bound} {_fmt(gate.threshold)}{said}{failed_also}",
                  value, value)


def evaluate_gates(
    gates: Sequence[Gate], candidate: WindowStats, stable: WindowStats, min_samples: int, *,
    alpha: float = 0.05, pass_alpha: float | None = None, max_user_icc: float | None = None,
) -> list[GateResult]:
    """One :class:`GateResult` per gate, in the order the gates are configured; ``alpha``,
    ``pass_alpha`` and ``max_user_icc`` as for :func:`evaluate_gate`."""
    if min_samples < 1:
        raise ValueError(f"min_samples is {min_samples}; it must be >= 1")
    _check_alpha(alpha)
    return [evaluate_gate(gate, candidate, stable, min_samples, alpha=alpha, pass_alpha=pass_alpha,
                          max_user_icc=max_user_icc)
            for gate in gates]


def overall_verdict(results: Iterable[GateResult]) -> GateVerdict:
    """FAIL if any gate failed, else INCONCLUSIVE if any lacked data, else PASS (also when empty)."""
    verdicts = {r.verdict for r in results}
    if GateVerdict.FAIL in verdicts:
        return GateVerdict.FAIL
    if GateVerdict.INCONCLUSIVE in verdicts:
        return GateVerdict.INCONCLUSIVE
    return GateVerdict.PASS
