"""Gate evaluation: one window of observations per version in, one verdict per gate out.

Too few samples is INCONCLUSIVE, never FAIL: "no data" is not "bad data" (Flagger).
A gate relative to stable compares with the stable version in the same window, so both
versions are judged under the same load.

A ``promql`` gate judges a number some Prometheus computed: the caller queries it (see
:func:`serve_ab.rollout.promql.fetch_promql_values`) and puts the :class:`PromQLResult` on the
candidate's window, keyed by the gate's name. An empty answer is INCONCLUSIVE, like too few
samples; so is a failed query (Prometheus down, a bad query): an outage is not evidence
against the candidate, so it does not roll it back, but it holds the rollout like missing
data, and ``analysis.progress_deadline_s`` aborts a rollout held by an outage that lasts.

Example::

    windows = build_windows(observations, versions=("v1", "v2"))
    results = evaluate_gates(config.gates, windows["v2"], windows["v1"], min_samples=50)
    overall_verdict(results)      # GateVerdict.PASS, FAIL or INCONCLUSIVE
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from serve_ab.analysis import drift
from serve_ab.config.rollout import Gate, GateMetric


class GateVerdict(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Observation:
    """One served request, as the router reports it."""

    version: str
    latency_ms: float
    ok: bool
    predicted_class: int | None = None
    score: float | None = None
    t_s: float = 0.0


@dataclass(frozen=True)
class FeedbackEvent:
    """A numeric business outcome a client reported for a request, e.g. revenue."""

    version: str
    name: str
    value: float
    t_s: float = 0.0


@dataclass(frozen=True)
class ConversionEvent:
    """A yes/no outcome a client reported for a request, e.g. whether it converted."""

    version: str
    name: str
    converted: bool
    t_s: float = 0.0


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
    """The answer to one promql gate's query: a value, no data (None), or an error."""

    query: str  # as sent, placeholders substituted
    value: float | None = None
    error: str | None = None  # why the query failed; value is None then


@dataclass(frozen=True)
class WindowStats:
    """What one version did during one analysis window."""

    version: str
    request_count: int = 0
    error_count: int = 0
    #: Latencies of successful requests; errors are judged by error_rate instead, and a
    #: version that fast-fails would otherwise look quick.
    latencies_ms: Sequence[float] | np.ndarray = ()
    #: Predicted-class counts, index = class.
    class_counts: tuple[int, ...] = ()
    scores: Sequence[float] | np.ndarray = ()
    feedback: Mapping[str, FeedbackStats] = field(default_factory=dict)
    conversions: Mapping[str, ConversionStats] = field(default_factory=dict)
    #: promql gates' answers, by gate name; set on the candidate's window by the caller.
    promql: Mapping[str, PromQLResult] = field(default_factory=dict)
    #: Copies of live requests this version answered, and on how many it predicted the
    #: class the live version answered (shadow, or blue-green validation on live traffic).
    shadow_pairs: int = 0
    shadow_agreements: int = 0

    def __post_init__(self) -> None:
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
    means: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    for event in feedback:
        if event.version in names and inside(event.t_s):
            means[event.version].setdefault(event.name, []).append(float(event.value))
    rates: dict[str, dict[str, list[bool]]] = {n: {} for n in names}
    for event in conversions:
        if event.version in names and inside(event.t_s):
            rates[event.version].setdefault(event.name, []).append(bool(event.converted))
    windows = {}
    for name in names:
        mine = [o for o in obs if o.version == name]
        counts = [0] * width
        for o in mine:
            if o.predicted_class is not None:
                counts[o.predicted_class] += 1
        windows[name] = WindowStats(
            version=name,
            request_count=len(mine),
            error_count=sum(not o.ok for o in mine),
            latencies_ms=tuple(o.latency_ms for o in mine if o.ok),
            class_counts=tuple(counts),
            scores=tuple(o.score for o in mine if o.score is not None and math.isfinite(o.score)),
            feedback={k: FeedbackStats(len(v), sum(v), sum(x * x for x in v))
                      for k, v in means[name].items()},
            conversions={k: ConversionStats(len(v), sum(v)) for k, v in rates[name].items()},
        )
    return windows


@dataclass(frozen=True)
class GateResult:
    gate: str  # the gate's label, e.g. "latency_p95_ms <= 1.5x stable"
    metric: str
    verdict: GateVerdict
    #: What was compared with the threshold: the metric, or candidate / stable for ratios.
    value: float | None
    threshold: float
    bound: str  # max, min, max_ratio_to_stable or min_ratio_to_stable
    reason: str
    candidate_value: float | None = None
    stable_value: float | None = None

    def to_dict(self) -> dict:
        return {
            "gate": self.gate, "metric": self.metric, "verdict": self.verdict.value,
            "value": self.value, "threshold": self.threshold, "bound": self.bound,
            "reason": self.reason, "candidate_value": self.candidate_value,
            "stable_value": self.stable_value,
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
}
_SCORE_DRIFT = {GateMetric.DRIFT_KS: drift.ks_statistic, GateMetric.DRIFT_WASSERSTEIN: drift.wasserstein}


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
    return window.conversions.get(gate.name, ConversionStats()).trials, f"'{gate.name}' outcomes"


def _metric(gate: Gate, window: WindowStats) -> float:
    """The gate's metric on one window that has enough samples (drift excepted)."""
    metric = gate.metric
    if metric in _PERCENTILES:
        return float(np.percentile(np.asarray(window.latencies_ms, dtype=float), _PERCENTILES[metric]))
    if metric is GateMetric.ERROR_RATE:
        return window.error_count / window.request_count
    if metric is GateMetric.FEEDBACK_MEAN:
        return window.feedback[gate.name].mean
    if metric is GateMetric.SHADOW_AGREEMENT:
        return window.shadow_agreements / window.shadow_pairs
    return window.conversions[gate.name].rate


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def evaluate_gate(gate: Gate, candidate: WindowStats, stable: WindowStats, min_samples: int) -> GateResult:
    """Judge one gate on the candidate's window, with stable's window where the gate needs it."""
    metric = gate.metric.value + (f"[{gate.name}]" if gate.name else "")

    def result(verdict: GateVerdict, reason: str, value=None, cand=None, stab=None) -> GateResult:
        return GateResult(gate.label, gate.metric.value, verdict, value, gate.threshold,
                          gate.bound, reason, cand, stab)

    if gate.metric is GateMetric.PROMQL:
        return _evaluate_promql(gate, candidate, result)

    sides = [(candidate, "candidate")] + ([(stable, "stable")] if gate.needs_stable else [])
    for window, role in sides:
        seen, unit = _samples(gate, window)
        if seen < min_samples:
            return result(GateVerdict.INCONCLUSIVE,
                          f"no data for {metric}: {role} {window.version} has {seen} {unit} in "
                          f"this window, {min_samples} needed; is it receiving traffic?")

    if gate.metric in _CLASS_DRIFT or gate.metric in _SCORE_DRIFT:
        if gate.metric in _CLASS_DRIFT:
            value = _CLASS_DRIFT[gate.metric](candidate.class_counts, stable.class_counts)
        else:
            value = _SCORE_DRIFT[gate.metric](candidate.scores, stable.scores)
        what = f"{metric} of {candidate.version} against stable {stable.version} is {_fmt(value)}"
        cand = stab = None
    elif gate.needs_stable:
        cand, stab = _metric(gate, candidate), _metric(gate, stable)
        if stab < 0 or (stab == 0 and cand < 0):
            return result(GateVerdict.INCONCLUSIVE,
                          f"{metric}: a ratio to stable {stable.version}'s {_fmt(stab)} is not "
                          "meaningful for negative values; use an absolute min or max gate",
                          None, cand, stab)
        # Equal zeros (e.g. no errors on either side) are a ratio of 1, not a division by zero.
        value = 1.0 if cand == stab else (cand / stab if stab > 0 else math.inf)
        what = (f"{metric} on {candidate.version} is {_fmt(cand)}, {_fmt(value)}x stable "
                f"{stable.version} ({_fmt(stab)})")
    else:
        value = cand = _metric(gate, candidate)
        stab = None
        what = f"{metric} on {candidate.version} is {_fmt(value)}"

    upper = gate.bound.startswith("max")
    passed = value <= gate.threshold if upper else value >= gate.threshold
    if passed:
        return result(GateVerdict.PASS, f"{what}, within {gate.bound} {_fmt(gate.threshold)}", value, cand, stab)
    side = "above" if upper else "below"
    return result(GateVerdict.FAIL, f"{what}, {side} {gate.bound} {_fmt(gate.threshold)}", value, cand, stab)


def _evaluate_promql(gate: Gate, candidate: WindowStats, result) -> GateResult:
    """A promql gate: min_samples does not apply, the query's range decides what it sees."""
    metric = f"promql[{gate.name}]"
    answer = candidate.promql.get(gate.name)
    if answer is None:
        return result(GateVerdict.INCONCLUSIVE, f"no data for {metric}: not queried yet for {candidate.version}")
    if answer.error is not None:
        return result(GateVerdict.INCONCLUSIVE, f"{metric} query failed, so {candidate.version} cannot be "
                                            f"judged on it: {answer.error}; query: {answer.query}")
    if answer.value is None:
        return result(GateVerdict.INCONCLUSIVE, f"no data for {metric}: the query returned no samples; is "
                                            f"{candidate.version} receiving traffic? query: {answer.query}")
    value = answer.value
    what = f"{metric} on {candidate.version} is {_fmt(value)}"
    upper = gate.bound == "max"
    if (value <= gate.threshold) if upper else (value >= gate.threshold):
        return result(GateVerdict.PASS, f"{what}, within {gate.bound} {_fmt(gate.threshold)}", value, value)
    side = "above" if upper else "below"
    return result(GateVerdict.FAIL, f"{what}, {side} {gate.bound} {_fmt(gate.threshold)}; query: {answer.query}",
                  value, value)


def evaluate_gates(
    gates: Sequence[Gate], candidate: WindowStats, stable: WindowStats, min_samples: int
) -> list[GateResult]:
    """One :class:`GateResult` per gate, in the order the gates are configured."""
    if min_samples < 1:
        raise ValueError(f"min_samples is {min_samples}; it must be >= 1")
    return [evaluate_gate(gate, candidate, stable, min_samples) for gate in gates]


def overall_verdict(results: Iterable[GateResult]) -> GateVerdict:
    """FAIL if any gate failed, else INCONCLUSIVE if any lacked data, else PASS (also when empty)."""
    verdicts = {r.verdict for r in results}
    if GateVerdict.FAIL in verdicts:
        return GateVerdict.FAIL
    if GateVerdict.INCONCLUSIVE in verdicts:
        return GateVerdict.INCONCLUSIVE
    return GateVerdict.PASS
