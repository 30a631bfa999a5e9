"""The A/B report of a running experiment: every figure, from one ``ExperimentStats`` snapshot.

Pure: no Ray, no I/O. The controller calls :func:`build_report` every few seconds with the
snapshot (``ExperimentStats.snapshot()``, samples included), the weights it routes by and
the sequential state the previous call returned; ``serve-ab report`` renders the result. The
result is a typed :class:`~serve_ab.analysis.report_model.Report` (its fields are described
there, and its JSON schema is published in docs/report.schema.json). What it holds::

    schema          2
    generated_at_s  the snapshot's now_s; started_at_s, elapsed_s
    experiment      model, control, variants (compared with the control), versions,
                    weights_pct (configured), weights_pct_now (routed by now), alpha, power,
                    correction, sequential, mde_relative, family_size, alpha_per_comparison,
                    splits, shadow
    variants        {version: requests, assigned, units, errors, error_rate, errors_by_kind,
                     latency_ms {...}, predictions, prediction_share, feedback, weight_pct, role}
    metrics         [{name, kind, test, direction, in_family, arms {version: {n units, total,
                      value, ci, p50, p95}}, power_plan, comparisons [comparisons.judge]}]
                    error_rate, latency_ms (mean per request), then each feedback metric
    srm             units per version under the weights routed by now (a uniform sample of
                    them past 100,000 per split), and earlier splits' results
    shadow          None, or the paired live/shadow comparison (agreement, flips,
                    class_tests, score_diff, drift, latency_ms, confusion)
    plots           latency_histogram {edges_ms, counts, clipped}, timeline {t_s,
                    requests_cumulative, feedback_cumulative}
    warnings        sentences a person should read first

Every float is finite or None (never NaN), so ``report.model_dump(mode="json")`` is plain JSON.

Every metric is analysed per randomisation unit (``analysis/units.py``), within each split
of traffic and combined across splits; each comparison has one estimand and one test
(``analysis/comparisons.py``): the always-valid mSPRT by default (``analysis.sequential``),
safe to read at every refresh, or a fixed-horizon z-test withheld until the planned sample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
from scipy import stats as _stats

from serve_ab.analysis import ab, comparisons, drift
from serve_ab.analysis import shadow as shadow_stats
from serve_ab.analysis.accumulate import dissimilarity_from_similarity, split_key
from serve_ab.analysis.clusters import FlipGroups, ValueGroups
from serve_ab.analysis.sketch import LogHistogram
from serve_ab.analysis.units import KEYLESS_FIELDS, RatioComparison, SplitTotals, compare_ratio
from serve_ab.analysis.report_model import REPORT_SCHEMA, Report
from serve_ab.analysis.sequential import srm_always_valid_p, srm_log_bayes_factor
from serve_ab.analysis.shadow_classes import class_flip_tests
from serve_ab.analysis.tasks import CLASSIFICATION, TaskRule
from serve_ab.config.experiment import ExperimentConfig
from serve_ab.routing import NUM_BUCKETS, SplitTable

__all__ = ["REPORT_SCHEMA", "build_report"]

LATENCY_HISTOGRAM_BINS = 40
# The histogram's range stops at this pooled percentile (the tail lands in the last bin):
# one 2-second outlier would otherwise squeeze every other bar into the first bin.
LATENCY_HISTOGRAM_TOP_PCT = 99.5
TOP_FLIPS = 10

_CORRECTIONS = {"holm": ab.Correction.HOLM, "bh": ab.Correction.BENJAMINI_HOCHBERG, "none": None}


def build_report(
    cfg: ExperimentConfig,
    snapshot: Mapping[str, Any],
    weights_pct: Mapping[str, float],
    sequential_state: Mapping[str, Any] | None = None,
    run_id: str | None = None,
) -> tuple[Report, dict[str, Any]]:
    """The report of ``snapshot``, and the sequential state to pass to the next call.

    ``weights_pct`` are the weights the routers use now (percent; a version left out has 0).
    ``sequential_state`` is what the previous call returned (None at the first call); it is
    plain JSON-able data, ``{metric: {variant: look}}``. A state that no longer fits the data
    (fewer samples than last time: the figures restarted; another alpha) starts afresh, and the
    report's ``warnings`` say so. ``run_id`` names the run record the report belongs to.
    """
    if sequential_state is not None and not isinstance(sequential_state, Mapping):
        raise ValueError(f"sequential_state must be None or the mapping the previous build_report returned, "
                         f"got {type(sequential_state).__name__}")
    versions = _versions(snapshot)
    control = cfg.control_version()
    if control not in versions:
        raise ValueError(f"the control version {control!r} is not in the snapshot's versions {list(versions)}; "
                         "the snapshot must come from this experiment's ExperimentStats")
    weights = _weights(weights_pct, versions)
    analysis = cfg.analysis
    alpha = analysis.alpha
    # Compared: what the split routes to now or routed to (assigned) before. Not a version
    # only pinned (QA's requests to a shadow made it a variant "not enough data" beside v1).
    compared = [v for v in versions if v != control and (weights[v] > 0 or versions[v]["assigned"] > 0)]
    warnings: list[str] = []

    variants = {name: _variant_section(name, data, control, weights[name], cfg) for name, data in versions.items()}

    family = _family(cfg, control)
    specs = _metric_specs(cfg, versions, warnings)
    splits = _splits(snapshot, list(versions), warnings)
    previous = sequential_state or {}
    metrics, new_state = _metrics(specs, splits, versions, control, compared, family, weights, cfg, previous,
                                  warnings)
    correction = _CORRECTIONS[analysis.correction]
    srm = _srm(splits, weights)
    if srm["mismatch"]:
        warnings.insert(0, (
            f"sample ratio mismatch: {srm['basis']} per version {srm['observed']} do not fit the weights "
            f"{srm['weights_pct']} (sequential p = {srm['always_valid_p']:.2g} < {srm['threshold_p']:g}, valid "
            "however often this report is read); "
            "the split is broken, so no other figure here can be trusted"))
    if snapshot.get("feedback_unjoined"):
        warnings.append(f"{snapshot['feedback_unjoined']} feedback report(s) could not be joined to a version "
                        "(unknown request id, or a metric reported as the other kind) and are not counted")
    if any("sketch_ms" not in v["latency"] for v in versions.values()):
        warnings.append("the snapshot has no latency samples (snapshot(samples=False)); latency percentiles "
                        "need them")

    started_at_s = float(snapshot.get("started_at_s", 0.0))
    now_s = float(snapshot.get("now_s", started_at_s))
    report = {
        "schema": REPORT_SCHEMA,
        "run_id": run_id,
        "generated_at_s": now_s,
        "started_at_s": started_at_s,
        "elapsed_s": now_s - started_at_s,
        "experiment": {
            "model": cfg.model,
            "control": control,
            "variants": compared,
            "versions": list(versions),
            "weights_pct": cfg.weights_pct(),
            "weights_pct_now": weights,
            "alpha": alpha,
            "power": analysis.power,
            "correction": analysis.correction,
            "sequential": analysis.sequential,
            "mde_relative": analysis.mde_relative,
            "min_samples": ab.DEFAULT_MIN_SAMPLES,
            "family_size": family.size,
            "alpha_per_comparison": family.alpha_per_comparison,
            "splits": len(splits),
            "shadow": None if cfg.shadow is None else {"version": cfg.shadow.version,
                                                       "percent": cfg.shadow.percent},
        },
        "variants": variants,
        "metrics": metrics,
        "srm": srm,
        "shadow": _shadow_section(snapshot.get("shadow"), alpha, correction, _shadow_task(cfg)),
        "plots": {
            "latency_histogram": _latency_histogram(versions, snapshot.get("shadow")),
            "timeline": _timeline(snapshot, list(versions)),
        },
        "warnings": warnings,
    }
    # Built as plain data, then typed once: the model checks every figure is finite or None.
    return Report.model_validate(_jsonable(report)), _jsonable(new_state)


# ---- inputs ----------------------------------------------------------------------------------


def _versions(snapshot: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    versions = snapshot.get("versions") if isinstance(snapshot, Mapping) else None
    if not isinstance(versions, Mapping) or not versions:
        raise ValueError("snapshot must be ExperimentStats.snapshot() output with a non-empty 'versions' "
                         f"mapping; got keys {sorted(snapshot) if isinstance(snapshot, Mapping) else snapshot!r}")
    return {str(name): data for name, data in versions.items()}


def _weights(weights_pct: Mapping[str, float], versions: Mapping[str, Any]) -> dict[str, float]:
    unknown = sorted(set(weights_pct) - set(versions))
    if unknown:
        raise ValueError(f"weights_pct names {unknown}, which the snapshot does not serve; versions: {list(versions)}")
    out = {}
    for name in versions:
        weight = float(weights_pct.get(name, 0.0))
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"weights_pct[{name!r}] is {weight}; a weight is a percentage >= 0, e.g. 50")
        out[name] = weight
    if sum(out.values()) <= 0:
        raise ValueError(f"weights_pct {dict(weights_pct)} are all 0; at least one version must get traffic")
    return out


def _family(cfg: ExperimentConfig, control: str) -> comparisons.Family:
    """The decision family, from the config alone: (error_rate, latency_ms, each configured
    feedback metric) x (each version other than the control that the config gives traffic,
    or a rollout's candidate). Fixed before any data, so a verdict never flips because a
    metric or a variant turned up later."""
    configured = cfg.weights_pct()
    variants = {v.name for v in cfg.versions if v.name != control and configured.get(v.name, 0.0) > 0}
    if cfg.rollout is not None and cfg.rollout.candidate != control:
        variants.add(cfg.rollout.candidate)
    size = (2 + len(cfg.analysis.metrics)) * max(len(variants), 1)
    if cfg.analysis.correction == "none":
        size = 1
    return comparisons.Family(size=size, alpha=cfg.analysis.alpha, correction=cfg.analysis.correction)


def _metric_specs(cfg: ExperimentConfig, versions: Mapping[str, Any],
                  warnings: list[str]) -> list[comparisons.MetricSpec]:
    guard = cfg.analysis.guardrails
    specs = [
        comparisons.MetricSpec("error_rate", "conversion", "requests", "error_rate", "decrease",
                               "errors per assigned request", True, ("abs", guard.error_rate_margin_abs)),
        comparisons.MetricSpec("latency_ms", "mean", "requests", "latency_ms", "decrease",
                               "ms per successful assigned request", True,
                               ("relative", guard.latency_margin_relative)),
    ]
    configured = {m.name: m for m in cfg.analysis.metrics}
    seen: dict[str, str] = {}
    for data in versions.values():
        for name, totals in (data.get("feedback") or {}).items():
            seen.setdefault(name, totals.get("kind", "mean"))
    for name in list(configured) + sorted(set(seen) - set(configured)):
        if name in configured:
            kind, direction, in_family = configured[name].kind, configured[name].direction, True
        else:
            # Not configured: reported, but outside the family (exploratory).
            kind, direction, in_family = seen[name], "increase", False
        specs.append(comparisons.MetricSpec(name, kind, "feedback", f"feedback/{name}", direction,
                                            "rate per report" if kind == "conversion" else "mean per report",
                                            in_family))
    for name, kind in seen.items():
        if name in configured and configured[name].kind != kind:
            warnings.append(f"feedback {name!r} is configured as {configured[name].kind} under analysis.metrics "
                            f"but arrives as {kind}; its figures are left out")
    unplanned = sorted(set(seen) - set(configured))
    if unplanned:
        warnings.append(f"feedback metric(s) {unplanned} are not listed under analysis.metrics: they are "
                        "reported as exploratory, outside the decision family, each at alpha on its own")
    return specs


# ---- per variant -----------------------------------------------------------------------------


def _variant_section(name: str, data: Mapping[str, Any], control: str, weight_pct: float,
                     cfg: ExperimentConfig) -> dict[str, Any]:
    requests, errors = int(data["requests"]), int(data["errors"])
    predictions = {str(k): int(v) for k, v in (data.get("predictions") or {}).items()}
    predicted = sum(predictions.values())
    role = "control" if name == control else "variant"
    if cfg.shadow is not None and name == cfg.shadow.version:
        # A shadow the split never routed to is the shadow alone, even with requests pinned
        # to it (QA): as in the versions compared, only assigned requests make it a variant.
        role = "shadow" if weight_pct == 0 and int(data.get("assigned", 0)) == 0 else role + "+shadow"
    feedback = {}
    for metric, totals in sorted((data.get("feedback") or {}).items()):
        feedback[metric] = _feedback_arm(totals)
    return {
        "role": role,
        "weight_pct": weight_pct,
        "requests": requests,
        "assigned": int(data.get("assigned", 0)),
        "retried": int(data.get("retried", 0)),
        "units": data.get("units"),
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "errors_by_kind": dict(data.get("errors_by_kind") or {}),
        "latency_ms": _latency_summary(data["latency"]),
        "predictions": predictions,
        "prediction_share": {k: v / predicted for k, v in predictions.items()} if predicted else {},
        "feedback": feedback,
    }


def _latency_summary(latency: Mapping[str, Any]) -> dict[str, Any]:
    count = int(latency.get("count", 0))
    sketch = _sketch(latency)
    out: dict[str, Any] = {
        "count": count,
        # Over every successful request (exact), not only the sample.
        "mean_all": 1000.0 * float(latency.get("sum_s", 0.0)) / count if count else None,
        "n_sample": sketch.count,
    }
    if sketch.count:
        # Quantiles within 1% of the values' own (a log-bucket sketch of every request).
        out.update(mean=sketch.mean, p50=sketch.quantile(0.50), p95=sketch.quantile(0.95),
                   p99=sketch.quantile(0.99), min=sketch.min, max=sketch.max)
    else:
        out.update(mean=None, p50=None, p95=None, p99=None, min=None, max=None)
    return out


def _sketch(latency: Mapping[str, Any] | None) -> LogHistogram:
    return LogHistogram.from_wire((latency or {}).get("sketch_ms"))


def _feedback_arm(totals: Mapping[str, Any]) -> dict[str, Any]:
    n = int(totals.get("n", 0))
    if totals.get("kind") == "conversion":
        successes = int(totals.get("successes", 0))
        return {"kind": "conversion", "n": n, "successes": successes, "value": successes / n if n else None}
    summary = _mean_summary(totals)
    return {"kind": "mean", "n": n, "value": summary.mean if n else None,
            "std": math.sqrt(summary.variance) if n > 1 else None}


def _mean_summary(totals: Mapping[str, Any]) -> ab.MeanSummary:
    """Count, mean and sample variance (ddof=1) from n, sum and sum of squares."""
    n = int(totals.get("n", 0))
    total, total_sq = float(totals.get("sum", 0.0)), float(totals.get("sum_sq", 0.0))
    if n == 0:
        return ab.MeanSummary(0, math.nan, math.nan)
    mean = total / n
    # sum_sq - sum^2/n cancels badly when the spread is tiny next to the mean; clamp the
    # rounding error that can make it slightly negative.
    variance = max((total_sq - total * mean) / (n - 1), 0.0) if n > 1 else math.nan
    return ab.MeanSummary(n, mean, variance)


# ---- metrics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Split:
    key: str
    weights_pct: dict[str, float]
    first_s: float
    last_s: float
    arm_of_bucket: np.ndarray
    totals: dict[str, SplitTotals]
    units_kept: dict[str, int]
    units_fraction: float
    units_keyless: dict[str, int]
    routed_now: bool = False  # the controller routes by it now
    routed_until_s: float | None = None  # when the controller stopped routing by it (None: not said)

    @property
    def ended_s(self) -> float:
        """When routing by this split ended: the controller's account where it gave one, else
        the last of its requests to arrive; infinite while it is routed by."""
        if self.routed_now:
            return math.inf
        return self.routed_until_s if self.routed_until_s is not None else self.last_s


def _splits(snapshot: Mapping[str, Any], names: list[str], warnings: list[str]) -> list[_Split]:
    out = []
    for saved in snapshot.get("splits") or []:
        weights = {name: float(saved["weights_pct"].get(name, 0.0)) for name in names}
        arm = np.full(NUM_BUCKETS, -1)
        for version, (lo, hi) in SplitTable.from_weights(weights).ranges().items():
            arm[lo:hi] = names.index(version)
        out.append(_Split(saved["key"], weights, float(saved.get("first_s", 0.0)), float(saved.get("last_s", 0.0)),
                          arm,
                          {m: SplitTotals.from_dict(t) for m, t in (saved.get("metrics") or {}).items()},
                          dict(saved.get("units_kept") or {}), float(saved.get("units_fraction", 1.0)),
                          dict(saved.get("units_keyless") or {}), bool(saved.get("routed_now", False)),
                          saved.get("routed_until_s")))
    if len(out) > 1:
        warnings.append(f"the weights changed {len(out) - 1} time(s): every comparison is made within each "
                        "split of traffic and combined across them (each split weighted by the inverse of its pooled "
                        "variance, or by the arms' sizes where a split has no spread yet), never pooled across "
                        "splits, which would confound the versions with time")
    if snapshot.get("splits_dropped"):
        warnings.append(f"{snapshot['splits_dropped']} early split(s) were dropped from the per-unit figures "
                        "(more than 32 different weightings)")
    return out


def _metrics(specs: list[comparisons.MetricSpec], splits: list[_Split], versions: Mapping[str, Any],
             control: str, compared: list[str], family: comparisons.Family, weights: Mapping[str, float],
             cfg: ExperimentConfig, previous: Mapping[str, Any],
             warnings: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    analysis = cfg.analysis
    names = list(versions)
    ratios: dict[tuple[str, str], RatioComparison | None] = {}
    for spec in specs:
        tables = [(s.arm_of_bucket, s.totals[spec.totals]) for s in splits if spec.totals in s.totals]
        for variant in compared:
            pre = _pre_period(splits, spec.totals, variant, control, names) if analysis.cuped else None
            ratios[(spec.name, variant)] = compare_ratio(tables, variant=variant, control=control, versions=names,
                                                         pre=pre)
    # Fixed-horizon p-values corrected over the family fixed from the config: comparisons not
    # tested yet count as p = 1, so the correction does not loosen while data trickle in.
    family_keys = [(spec.name, v) for spec in specs if spec.in_family for v in compared]
    p_raw = {key: _fixed_p(ratios[key], analysis) for key in ratios}
    family_p = [p_raw[k] for k in family_keys]
    padded = [1.0 if math.isnan(p) else p for p in family_p]
    padded += [1.0] * max(0, family.size - len(padded))
    correction = _CORRECTIONS[analysis.correction]
    adjusted = _adjust(padded, correction)[:len(family_keys)]
    p_adjusted = dict(zip(family_keys, adjusted))

    metrics, new_state = [], {}
    for spec in specs:
        tables = [(s.arm_of_bucket, s.totals[spec.totals]) for s in splits if spec.totals in s.totals]
        metric = {"name": spec.name, "kind": spec.kind, "source": spec.source, "test": "delta_method_z",
                  "direction": spec.direction, "unit": spec.unit, "in_family": spec.in_family,
                  "value_is": "rate" if spec.kind == "conversion" else "mean",
                  "analysis_unit": ("bucket of users (users hash into 10,000 buckets, so two may share one and "
                                    "the counts here can be below the distinct users; keyless requests "
                                    "each their own)"),
                  "splits": len(tables),
                  "arms": {v: _ratio_arm(tables, names.index(v), v, analysis.alpha,
                                         versions[v]["latency"] if spec.name == "latency_ms" else None,
                                         _range_of(spec))
                           for v in names},
                  "comparisons": []}
        state_metric = previous.get(spec.name) if isinstance(previous.get(spec.name), Mapping) else {}
        for variant in compared:
            key = (spec.name, variant)
            p = p_raw[key]
            p_adj = p_adjusted.get(key, p)  # outside the family: on its own at alpha
            own_family = family if spec.in_family else comparisons.Family(1, family.alpha, "none")
            total = weights.get(control, 0.0) + weights.get(variant, 0.0)
            allocation = ((weights.get(control, 0.0), weights.get(variant, 0.0)) if total > 0 else (50.0, 50.0))
            before = state_metric.get(variant) if isinstance(state_metric, Mapping) else None
            ratio = ratios[key]
            seen_before = ((before or {}).get("seq") or {}).get("units", 0)
            if ratio is not None and seen_before > ratio.units_variant + ratio.units_control:
                # Fewer units than at the last look: the figures restarted (another run's state,
                # or lost figures). Running minima from other data would be meaningless.
                warnings.append(f"sequential test of {spec.name}/{variant} restarted: {seen_before} units at "
                                f"the last look, {ratio.units_variant + ratio.units_control} now")
                before = None
            figures, state = comparisons.judge(
                spec, ratio, variant=variant, control=control, family=own_family,
                p_adjusted=p_adj if not math.isnan(p_adj) else 1.0,
                previous=before,
                sequential_on=analysis.sequential, min_units=ab.DEFAULT_MIN_SAMPLES,
                mde_relative=analysis.mde_relative, target_power=analysis.power,
                allocation_pct=_allocation(allocation))
            metric["comparisons"].append(figures)
            new_state.setdefault(spec.name, {})[variant] = state
        metric["power_plan"] = _power_summary(metric["comparisons"])
        metrics.append(metric)
    return metrics, new_state


def _pre_period(splits: list[_Split], metric: str, variant: str, control: str,
                names: list[str]) -> SplitTotals | None:
    """Per-bucket totals of ``metric`` from before ``variant`` first had traffic, for CUPED;
    None without such a period.

    A split counts only where the control served every bucket the comparison reads (both
    arms', in every split since the variant had traffic): the covariate must be the same
    measurement, under the same treatment and over the same time, for both arms. Two ways
    it was not, each found by simulation through the report:
    - a version joining a running test (v1/v2, then v1/v2/v3) takes buckets v2 served; their
      earlier figures carry v2's effect, and an A/A v3 read WORSE in 20 of 20 runs;
    - with only the control's buckets of such a split counted, v3's covariate came from an
      earlier period than v1's, and a seasonal drift of 15% between the periods read an A/A
      v3 as BETTER in 10 of 10 (v1 alone, then v1/v2, then v1/v3).
    A split is before the variant's when routing by it ended (:attr:`_Split.ended_s`) by the
    time the variant's first requests arrived: an answer of the old split that a second router
    reports late, after the first router's first report under the new weights, does not end it
    later (it switched CUPED off: variance -54% read as none).
    """
    exposed = [s for s in splits if s.weights_pct.get(variant, 0.0) > 0]
    if not exposed:
        return None
    start_s = min(s.first_s for s in exposed)
    on_control, on_variant = names.index(control), names.index(variant)
    read = np.zeros(NUM_BUCKETS, bool)
    for split in exposed:
        read |= (split.arm_of_bucket == on_control) | (split.arm_of_bucket == on_variant)
    before = [s for s in splits if s.weights_pct.get(variant, 0.0) == 0 and s.weights_pct.get(control, 0.0) > 0
              and s.ended_s <= start_s and metric in s.totals and bool((s.arm_of_bucket[read] == on_control).all())]
    if not before:
        return None
    pre = SplitTotals()
    for split in before:
        pre.s += split.totals[metric].s
        pre.n += split.totals[metric].n
    return pre


def _allocation(pair: tuple[float, float]) -> tuple[float, float]:
    control, variant = pair
    if control <= 0 or variant <= 0:
        return 50.0, 50.0  # one arm at 0 now (a promoted or rolled-back rollout): plan as if even
    return 100.0 * control / (control + variant), 100.0 * variant / (control + variant)


def _fixed_p(ratio: RatioComparison | None, analysis) -> float:
    if ratio is None or min(ratio.units_variant, ratio.units_control) < ab.DEFAULT_MIN_SAMPLES:
        return math.nan
    return comparisons.fixed_p(ratio)


def _power_summary(comparisons_: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The metric's plan: the largest per-arm requirement over its comparisons."""
    planned = [c["power"] for c in comparisons_ if c.get("power")]
    if not planned:
        return None
    worst = max(planned, key=lambda p: p["required_per_arm"])
    return {"test": worst["test"], "mde_relative": worst["mde_relative"], "mde_abs": worst["mde_abs"],
            "target_power": worst["target"], "alpha_per_comparison": worst["alpha_per_comparison"],
            "family_size": worst["family_size"], "required_per_arm": worst["required_per_arm"],
            "data_multiple": max(p["data_multiple"] for p in planned),
            "power_now": min(p["achieved"] for p in planned),
            "complete": all(p["complete"] for p in planned)}


def _range_of(spec: Any) -> tuple[float, float]:
    """Where a metric's values can lie: a rate in [0, 1], a non-negative mean from 0."""
    if spec.kind == "conversion":
        return 0.0, 1.0
    return (0.0 if spec.nonnegative else -math.inf), math.inf


def _ratio_arm(tables: list[tuple[np.ndarray, SplitTotals]], index: int, version: str, alpha: float,
               latency: Mapping[str, Any] | None, value_range: tuple[float, float] = (-math.inf, math.inf)
               ) -> dict[str, Any]:
    """One version over every split it was assigned in (descriptive: pooled over time, unlike
    the comparisons): its ratio, units and a delta-method interval per unit, kept within the
    values the metric can take (an error rate of 3.7% over 27 users is not [-3.6%, 11.0%]).
    A rate's is Wilson's on the effective number of trials (:func:`_rate_interval`)."""
    s = np.zeros(NUM_BUCKETS)
    n = np.zeros(NUM_BUCKETS)
    keyless = np.zeros(len(KEYLESS_FIELDS))
    for arm, table in tables:
        mask = arm == index
        s[mask] += table.s[mask]
        n[mask] += table.n[mask]
        if version in table.keyless:
            keyless += table.keyless[version]
    total_s, total_n = float(s.sum() + keyless[1]), float(n.sum() + keyless[2])
    units = int(np.count_nonzero(n) + keyless[0])
    out: dict[str, Any] = {"n": units, "total": total_n, "value": None, "ci": None, "p50": None, "p95": None}
    if latency is not None:
        # The answers the split assigned it, as the value's: the version's sketch less its
        # pinned and fallback answers' (pooled over the splits, descriptive like the value).
        sketch = _sketch(latency).without(LogHistogram.from_wire(latency.get("unassigned_sketch_ms")))
        if sketch.count:
            out.update(p50=sketch.quantile(0.50), p95=sketch.quantile(0.95))
    if total_n <= 0:
        return out
    value = total_s / total_n
    out["value"] = value
    if units >= 2:
        resid = s - value * n
        sq = float(resid @ resid) + max(float(keyless[3] - 2 * value * keyless[5] + value * value * keyless[4]), 0.0)
        se = math.sqrt(sq * units / (units - 1)) / total_n
        low, high = value_range
        if (low, high) == (0.0, 1.0):
            out["ci"] = _rate_interval(value, se, total_n, alpha)
        else:
            half = float(_stats.norm.ppf(1.0 - alpha / 2.0)) * se
            out["ci"] = [max(value - half, low), min(value + half, high)]
    return out


def _rate_interval(rate: float, se: float, trials: float, alpha: float) -> list[float]:
    """A rate's interval: Wilson's on the effective number of trials, rate (1 - rate) / se^2,
    which counts a user's correlated requests as the per-unit variance says (never more
    than the trials: a design effect below 1 is noise). At a rate of 0 or 1 the delta method's
    interval is [0, 0], "no errors" read as "an error rate of exactly 0"; with no spread to
    measure a design effect by, every trial counts, as with one error the estimate would:
    0 errors in 1,200 requests give [0, 0.32%], and one error a wider interval, never a
    narrower one (counting a user as one trial at 0 made 0 errors read wider than 1)."""
    effective = rate * (1.0 - rate) / (se * se) if se > 0 and 0.0 < rate < 1.0 else trials
    effective = min(max(effective, 1.0), trials)
    low, high = shadow_stats.wilson_interval(rate * effective, effective, 1.0 - alpha)
    return [min(low, rate), max(high, rate)]  # a rounding error never leaves the rate outside


def _adjust(p_values: list[float], correction: ab.Correction | None) -> list[float]:
    if correction is None or not p_values:
        return list(p_values)
    return [float(p) for p in ab.adjust_p_values(p_values, correction)]


# ---- sample-ratio mismatch -------------------------------------------------------------------


def _srm(splits: list[_Split], weights: dict[str, float]) -> dict[str, Any]:
    """Units per version under the split routed by now, against its weights.

    Keyed units come from a uniform sample of units (see analysis/unit_sample.py); keyless
    requests, each its own unit, are tested apart. A report is built at every refresh, so
    the flag is the sequential test's (:func:`~serve_ab.analysis.sequential.srm_log_bayes_factor`,
    the two samples' Bayes factors multiplied): a chi-square at p < 0.001 re-read at every
    refresh flagged a healthy 50/50 split in 1.3 +- 0.4% of runs over 40 looks. The
    chi-square (the two added: independent samples, degrees of freedom added) is shown
    beside it, as the figure at this one look."""
    out: dict[str, Any] = {
        "applicable": True, "basis": "units",
        "basis_note": "distinct users per version under the current weights (a uniform sample of them past "
                      "100,000), plus keyless requests, each its own unit",
        "observed": {}, "weights_pct": dict(weights), "expected": None, "statistic": None, "dof": None,
        "p_value": None, "always_valid_p": None, "threshold_p": ab.SRM_THRESHOLD_P, "mismatch": False,
        "reason": None,
        "sampled_fraction": None, "other_splits": [],
    }
    try:
        now_key = split_key(weights)
    except ValueError:
        now_key = None
    current = next((s for s in splits if s.key == now_key), None)
    for split in splits:
        if split is current:
            continue
        result = _srm_split(split)
        if result is not None:
            out["other_splits"].append({"split": split.key, "p_value": result.p_value,
                                        "always_valid_p": result.always_valid_p, "mismatch": result.mismatch})
    if current is None:
        out["reason"] = "no traffic yet under the weights routed by now"
        return out
    result = _srm_split(current)
    names = list(weights)
    out["observed"] = {v: round(current.units_kept.get(v, 0) / current.units_fraction)
                       + current.units_keyless.get(v, 0) for v in names}
    out["sampled_fraction"] = current.units_fraction
    if result is None:
        out["reason"] = "no traffic yet under the weights routed by now"
        return out
    out.update(expected=result.expected, statistic=result.statistic, p_value=result.p_value, dof=result.dof,
               always_valid_p=result.always_valid_p, mismatch=result.mismatch)
    return out


@dataclass(frozen=True)
class _SrmFigures:
    expected: dict[str, float]
    statistic: float
    p_value: float  # the chi-square's, at this look
    dof: int
    always_valid_p: float  # the sequential test's, valid at every look: the flag's
    mismatch: bool


def _srm_split(split: _Split) -> _SrmFigures | None:
    weights = split.weights_pct
    expected: dict[str, float] = dict.fromkeys(weights, 0.0)
    statistic, dof, log_bf, any_data, outright = 0.0, 0, 0.0, False, False
    for counts in (split.units_kept, split.units_keyless):
        observed = {v: int(counts.get(v, 0)) for v in weights}
        if sum(observed.values()) == 0:
            continue
        any_data = True
        result = ab.check_srm(observed, weights)
        for v, e in result.expected.items():
            expected[v] += e
        if math.isinf(result.statistic):
            outright = True
        else:
            statistic += result.statistic
            dof += result.dof
            # Independent samples: their factors multiply, and the product stays a martingale.
            log_bf += srm_log_bayes_factor([observed[v] for v in weights], list(weights.values()))
    if not any_data:
        return None
    if outright:
        return _SrmFigures(expected, math.inf, 0.0, dof, 0.0, True)
    p = float(_stats.chi2.sf(statistic, dof)) if dof > 0 else 1.0
    always_valid_p = srm_always_valid_p(log_bf)
    return _SrmFigures(expected, statistic, p, dof, always_valid_p, always_valid_p < ab.SRM_THRESHOLD_P)


# ---- shadow ----------------------------------------------------------------------------------


def _shadow_task(cfg: ExperimentConfig) -> TaskRule:
    """The task the shadow's answers are compared by (the versions of one experiment share it)."""
    if cfg.shadow is None:
        return CLASSIFICATION
    return TaskRule.of(cfg.version(cfg.shadow.version))


def _agreement_rule(task: TaskRule) -> str:
    if task.task == "regression":
        return f"|shadow - live| <= {task.tolerance:g}"
    if task.task == "embedding":
        return f"cosine(shadow, live) >= {task.threshold:g}"
    return "the same argmax class"


def _value_drift(shadow: Mapping[str, Any]) -> dict[str, Any] | None:
    """The shadow's predicted values against live's on the same requests (regression)."""
    values = shadow.get("values") or {}
    live, mirrored = LogHistogram.from_wire(values.get("live")), LogHistogram.from_wire(values.get("shadow"))
    if not live.count or not mirrored.count:
        return None
    statistic, p_value = drift.ks_test_sketched(mirrored, live)
    return {"n": live.count, "live_mean": live.mean, "shadow_mean": mirrored.mean,
            "live_p50": live.quantile(0.5), "shadow_p50": mirrored.quantile(0.5),
            "ks": statistic, "ks_p_value": p_value, "wasserstein": drift.wasserstein_sketched(mirrored, live)}


def _similarity(shadow: Mapping[str, Any], threshold: float, confidence: float) -> dict[str, Any] | None:
    """Cosine similarity of the shadow's vectors with live's on the same requests (embedding)."""
    totals = shadow.get("similarity") or {}
    if not totals.get("n"):
        return None
    summary = _paired_mean(totals, confidence)
    # 1 - cosine is sketched (its 1% is 1% of the gap to a threshold near 1; see
    # ShadowStats.dissimilarity_sketch); a snapshot from before sketched the cosine.
    if totals.get("dissimilarity_sketch"):
        sketch = LogHistogram.from_wire(totals["dissimilarity_sketch"])
    else:
        sketch = dissimilarity_from_similarity(totals.get("sketch"))
    known = sketch.count > 0
    return {**summary, "threshold": threshold,
            "p05": 1.0 - sketch.quantile(0.95) if known else None,
            "min": 1.0 - sketch.max if known else None}


def _shadow_section(shadow: Mapping[str, Any] | None, alpha: float,
                    correction: ab.Correction | None, task: TaskRule = CLASSIFICATION) -> dict[str, Any] | None:
    if shadow is None:
        return None
    confidence = 1.0 - alpha
    pairs, agree = int(shadow.get("pairs", 0)), int(shadow.get("agree", 0))
    mirrored, errors = int(shadow.get("mirrored", 0)), int(shadow.get("errors", 0))
    cells = [(int(a), int(b), int(n)) for a, b, n in shadow.get("confusion") or []]
    flips = sorted(((a, b, n) for a, b, n in cells if a != b and n > 0), key=lambda cell: (-cell[2], cell[0], cell[1]))
    # The flips per group of users; absent from a snapshot taken before they were kept, whose
    # pairs then count as independent.
    flip_groups = FlipGroups.from_wire(shadow["flips"]) if shadow.get("flips") is not None else None
    tests = class_flip_tests(cells, flip_groups)
    p_adjusted = _adjust([t.p_value for t in tests], correction)
    classes = sorted({c for a, b, _ in cells for c in (a, b)})
    index = {c: i for i, c in enumerate(classes)}
    matrix = [[0] * len(classes) for _ in classes]
    for a, b, n in cells:
        matrix[index[a]][index[b]] += n
    live_counts = [sum(row) for row in matrix]
    shadow_counts = [sum(matrix[i][j] for i in range(len(classes))) for j in range(len(classes))]
    drift_section = None
    if pairs > 0 and sum(live_counts) > 0:
        # Candidate (shadow) against reference (live), on the same requests.
        drift_section = {"classes": classes, "live_counts": live_counts, "shadow_counts": shadow_counts,
                         "kl": drift.kl_divergence(shadow_counts, live_counts),
                         "psi": drift.psi(shadow_counts, live_counts),
                         "js": drift.js_divergence(shadow_counts, live_counts)}
        js = drift_section["js"]
        drift_section["js_distance"] = math.sqrt(max(js, 0.0)) if js is not None and math.isfinite(js) else None
    return {
        "version": shadow.get("version"),
        "mirrored": mirrored,
        "dropped": int(shadow.get("dropped", 0)),
        "errors": errors,
        "errors_by_kind": dict(shadow.get("errors_by_kind") or {}),
        "error_rate": errors / mirrored if mirrored else None,
        "pairs": pairs,
        "rows_not_compared": int(shadow.get("rows_not_compared", 0)),
        "pairs_by_live_version": dict(shadow.get("pairs_by_live_version") or {}),
        "agreement": _agreement(shadow, pairs, agree, confidence),
        "flips": {"total": pairs - agree, "rate": (pairs - agree) / pairs if pairs else None,
                  "top": [{"live": a, "shadow": b, "n": n, "share_of_pairs": n / pairs}
                          for a, b, n in flips[:TOP_FLIPS]]},
        "class_tests": [
            {"class": t.cls, "live_count": t.live_count, "shadow_count": t.shadow_count, "to_other": t.to_other,
             "from_other": t.from_other, "diff": t.diff, "statistic": t.statistic, "p_value": t.p_value,
             "p_adjusted": p_adj, "method": t.method, "design_effect": t.design_effect,
             "significant": not math.isnan(p_adj) and p_adj <= alpha}
            for t, p_adj in zip(tests, p_adjusted)
        ],
        "score_diff": {**_paired_mean(shadow.get("score_diff") or {}, confidence),
                       "mean_abs": _mean_abs(shadow.get("score_diff") or {})},
        "drift": drift_section,
        "latency_ms": _latency_summary(shadow.get("latency") or {}),
        "confusion": {"classes": classes, "counts": matrix},
        "task": task.task,
        "agreement_rule": _agreement_rule(task),
        "value_drift": _value_drift(shadow) if task.task == "regression" else None,
        "similarity": _similarity(shadow, task.threshold, confidence) if task.task == "embedding" else None,
    }


def _agreement(shadow: Mapping[str, Any], pairs: int, agree: int, confidence: float) -> dict[str, Any]:
    """The share of pairs that agree, its Wilson interval on the pairs' effective number: a
    user whose requests the shadow answers differently does so again, so the pairs of users who
    send many requests carry less evidence than as many independent ones (the design effect of
    the per-group agreements; the shadow_agreement gate uses its upper bound)."""
    groups = ValueGroups.from_wire(shadow.get("agreement_groups"))
    effect = groups.design_effect().value if pairs and int(groups.counts.sum()) == pairs else 1.0
    effective = pairs / effect
    ci = list(shadow_stats.wilson_interval(agree / pairs * effective, effective, confidence)) if pairs else None
    return {"n": pairs, "agree": agree, "rate": agree / pairs if pairs else None, "ci": ci,
            "confidence": confidence, "design_effect": effect}


def _mean_abs(totals: Mapping[str, Any]) -> float | None:
    n = int(totals.get("n") or 0)
    return float(totals["abs_sum"]) / n if n and totals.get("abs_sum") is not None else None


def _paired_mean(totals: Mapping[str, Any], confidence: float) -> dict[str, Any]:
    """Mean of shadow-minus-live score differences, paired t CI and p-value, from n/sum/sum_sq;
    with the values per group of users (``groups``), the variance times their design effect
    and the effective sample's degrees of freedom (as the feedback_mean gate, but with the
    point estimate where the gate takes its upper bound)."""
    summary = _mean_summary(totals)
    groups = ValueGroups.from_wire(totals.get("groups"))
    effect = groups.design_effect().value if summary.n and int(groups.counts.sum()) == summary.n else 1.0
    out = {"n": summary.n, "mean": summary.mean if summary.n else None, "std": None, "ci": None,
           "p_value": None, "confidence": confidence, "design_effect": effect}
    if summary.n < 2:
        return out
    out["std"] = math.sqrt(summary.variance)
    if summary.n / effect < 2:  # one unit's worth (one user, say): nothing to bound the mean with
        return out
    se = math.sqrt(summary.variance / summary.n * effect)
    df = min(summary.n - 1, int(summary.n / effect) - 1)
    if se > 0:
        half = float(_stats.t.ppf(0.5 + confidence / 2.0, df)) * se
        out["ci"] = [summary.mean - half, summary.mean + half]
        out["p_value"] = float(2.0 * _stats.t.sf(abs(summary.mean) / se, df))
    else:  # the same difference on every pair: as shadow.score_differences
        out["ci"] = [summary.mean, summary.mean]
        out["p_value"] = 1.0 if summary.mean == 0 else 0.0
    return out


# ---- plot data -------------------------------------------------------------------------------


def _latency_histogram(versions: Mapping[str, Any], shadow: Mapping[str, Any] | None) -> dict[str, Any] | None:
    sketches = {name: _sketch(data["latency"]) for name, data in versions.items()}
    if shadow is not None:
        sketches[f"{shadow.get('version')} (shadow)"] = _sketch(shadow.get("latency"))
    pooled = LogHistogram()
    for sketch in sketches.values():
        pooled.merge(sketch)
    if pooled.count == 0:
        return None
    lo = pooled.min
    hi = pooled.quantile(LATENCY_HISTOGRAM_TOP_PCT / 100)
    if hi <= lo:
        hi = lo + max(abs(lo) * 0.01, 1e-3)
    edges = np.linspace(lo, hi, LATENCY_HISTOGRAM_BINS + 1)
    counts, clipped = {}, {}
    for name, sketch in sketches.items():
        counts[name] = sketch.histogram(edges).tolist() if sketch.count else [0] * LATENCY_HISTOGRAM_BINS
        values, weights = sketch.values_and_weights()
        clipped[name] = int(weights[values > hi].sum())
    return {"edges_ms": edges.tolist(), "counts": counts, "clipped": clipped,
            "note": f"values above the pooled p{LATENCY_HISTOGRAM_TOP_PCT:g} ({hi:.3g} ms) are counted in the "
                    "last bin; each value is placed within 1% (a log-bucket sketch)"}


def _timeline(snapshot: Mapping[str, Any], names: list[str]) -> dict[str, Any]:
    timeline = snapshot.get("timeline") or {}
    bucket_s = float(timeline.get("bucket_s") or 0.0)
    now_s = float(snapshot.get("now_s", 0.0))
    t_s: list[float] = []
    requests = {name: [] for name in names}
    feedback = {name: [] for name in names}
    running_r = dict.fromkeys(names, 0)
    running_f = dict.fromkeys(names, 0)
    for point in sorted(timeline.get("points") or [], key=lambda p: p["t_s"]):
        # A point counts its bucket; the cumulative total holds at the bucket's end.
        t_s.append(min(float(point["t_s"]) + bucket_s, now_s) if now_s else float(point["t_s"]) + bucket_s)
        for name in names:
            running_r[name] += int((point.get("requests") or {}).get(name, 0))
            running_f[name] += int((point.get("feedback") or {}).get(name, 0))
            requests[name].append(running_r[name])
            feedback[name].append(running_f[name])
    return {"bucket_s": bucket_s, "t_s": t_s, "requests_cumulative": requests, "feedback_cumulative": feedback}


# ---- JSON ------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Plain JSON types only: NaN and infinities become None, tuples lists, numpy scalars Python ones."""
    if isinstance(value, Mapping):
        return {str(k.value if isinstance(k, Enum) else k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value
