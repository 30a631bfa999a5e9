"""The A/B report of a running experiment: every figure, from one ``ExperimentStats`` snapshot.

Pure: no Ray, no I/O. The controller calls :func:`build_report` every few seconds with the
snapshot (``ExperimentStats.snapshot()``, samples included), the weights it routes by and
the sequential state the previous call returned; ``serve-ab report`` renders the result. The
result is a typed :class:`~serve_ab.analysis.report_model.Report` (its fields are described
there, and its JSON schema is published in docs/report.schema.json). What it holds::

    schema          1
    generated_at_s  the snapshot's now_s; started_at_s, elapsed_s
    experiment      model, control, variants (compared with the control), versions,
                    weights_pct (configured), weights_pct_now (routed by now), alpha, power,
                    correction, sequential, mde_relative, shadow
    variants        {version: requests, assigned, units, errors, error_rate, errors_by_kind,
                     latency_ms {n_sample, count, mean, mean_all, p50, p95, p99, min, max},
                     predictions {class: n}, prediction_share {class: share},
                     feedback {name: {kind, n, value, ...}}, weight_pct, role}
    metrics         [{name, kind, source, test, direction, unit, arms {version: {n, value, ci}},
                      comparisons [see _comparison_dict]}]   error_rate, latency_ms, feedback
    srm             sample-ratio check: applicable, basis (units|assigned), observed,
                    expected, statistic, dof, p_value, threshold_p, mismatch, reason
    shadow          None, or the paired live/shadow comparison (agreement, flips,
                    class_tests, score_diff, drift, latency_ms, confusion)
    plots           latency_histogram {edges_ms, counts, clipped}, timeline {t_s,
                    requests_cumulative, feedback_cumulative}
    warnings        sentences a person should read first

Every float is finite or None (never NaN), so ``report.model_dump(mode="json")`` is plain JSON.

Fixed-horizon p-values (``p_value``, corrected in ``p_adjusted`` across every comparison of
every metric) are only valid at a sample size planned in advance; looked at every minute
they cross alpha by chance. With ``analysis.sequential`` each conversion and mean metric
also carries always-valid mSPRT figures, and its ``verdict`` follows them
(``verdict_basis: "sequential"``); latency (Mann-Whitney) has no sequential version here, so
its verdict stays fixed-horizon.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict
from enum import Enum
from typing import Any

import numpy as np
from scipy import stats as _stats

from serve_ab.analysis import ab, drift, power, sequential
from serve_ab.analysis import shadow as shadow_stats
from serve_ab.analysis.report_model import REPORT_SCHEMA, Report
from serve_ab.analysis.shadow_classes import class_flip_tests
from serve_ab.config.experiment import ExperimentConfig

__all__ = ["REPORT_SCHEMA", "build_report"]

LATENCY_HISTOGRAM_BINS = 40
# The histogram's range stops at this pooled percentile (the tail lands in the last bin):
# one 2-second outlier would otherwise squeeze every other bar into the first bin.
LATENCY_HISTOGRAM_TOP_PCT = 99.5
TOP_FLIPS = 10

_CORRECTIONS = {"holm": ab.Correction.HOLM, "bh": ab.Correction.BENJAMINI_HOCHBERG, "none": None}
_DIRECTIONS = {"increase": ab.Direction.HIGHER_IS_BETTER, "decrease": ab.Direction.LOWER_IS_BETTER}


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
    compared = [v for v in versions if v != control and (weights[v] > 0 or versions[v]["requests"] > 0)]
    warnings: list[str] = []

    variants = {name: _variant_section(name, data, control, weights[name], cfg) for name, data in versions.items()}

    metric_specs = _metric_specs(cfg, versions, warnings)
    metrics: list[dict[str, Any]] = []
    all_comparisons: list[ab.Comparison] = []
    for spec in metric_specs:
        metric, comparisons = _metric(spec, versions, control, compared, alpha)
        metrics.append(metric)
        all_comparisons.extend(comparisons)
        metric["_comparisons"] = comparisons

    correction = _CORRECTIONS[analysis.correction]
    adjusted = ab.adjust(all_comparisons, correction) if correction is not None else list(all_comparisons)
    adjusted_by_key = {(c.metric, c.variant): c for c in adjusted}

    new_state: dict[str, Any] = {}
    seq_results: dict[tuple[str, str], sequential.SequentialResult] = {}
    if analysis.sequential:
        seq_results = _sequential_looks(metrics, versions, control, alpha, sequential_state or {},
                                        new_state, warnings)
    # Always-valid p-values are valid p-values at any look, so the same correction applies.
    seq_keys = [key for key in seq_results if adjusted_by_key[key].verdict is not ab.ABVerdict.NOT_ENOUGH_DATA]
    seq_adjusted = dict(zip(seq_keys, _adjust([seq_results[k].p_value for k in seq_keys], correction)))

    for metric in metrics:
        comparisons = metric.pop("_comparisons")
        spec = metric.pop("_spec")
        plan = _power_plan(spec, versions, control, compared, cfg)
        metric["power_plan"] = plan["summary"]
        metric["comparisons"] = []
        for raw in comparisons:
            key = (raw.metric, raw.variant)
            metric["comparisons"].append(_comparison_dict(
                adjusted_by_key[key], seq_results.get(key), seq_adjusted.get(key), plan, spec, analysis.sequential))

    srm = _srm(versions, weights, cfg)
    if srm["mismatch"]:
        warnings.insert(0, (
            f"sample ratio mismatch: {srm['basis']} per version {srm['observed']} do not fit the weights "
            f"{srm['weights_pct']} (chi-square p = {srm['p_value']:.2g} < {srm['threshold_p']:g}); "
            "the split is broken, so no other figure here can be trusted"))
    if snapshot.get("feedback_unjoined"):
        warnings.append(f"{snapshot['feedback_unjoined']} feedback report(s) could not be joined to a version "
                        "(unknown request id, or a metric reported as the other kind) and are not counted")
    if any("sample_ms" not in v["latency"] for v in versions.values()):
        warnings.append("the snapshot has no latency samples (snapshot(samples=False)); latency percentiles "
                        "and the Mann-Whitney test need them")

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
            "shadow": None if cfg.shadow is None else {"version": cfg.shadow.version,
                                                       "percent": cfg.shadow.percent},
        },
        "variants": variants,
        "metrics": metrics,
        "srm": srm,
        "shadow": _shadow_section(snapshot.get("shadow"), alpha, correction),
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


def _metric_specs(cfg: ExperimentConfig, versions: Mapping[str, Any], warnings: list[str]) -> list[dict[str, Any]]:
    specs = [
        {"name": "error_rate", "kind": "conversion", "source": "requests", "direction": "decrease",
         "unit": "share of requests"},
        {"name": "latency_ms", "kind": "latency", "source": "latency sample", "direction": "decrease",
         "unit": "ms"},
    ]
    configured = {m.name: m for m in cfg.analysis.metrics}
    seen: dict[str, str] = {}
    for data in versions.values():
        for name, totals in (data.get("feedback") or {}).items():
            seen.setdefault(name, totals.get("kind", "mean"))
    names = list(configured) + sorted(set(seen) - set(configured))
    for name in names:
        if name in configured:
            kind, direction = configured[name].kind, configured[name].direction
        else:
            kind, direction = seen[name], "increase"
        specs.append({"name": name, "kind": kind, "source": "feedback", "direction": direction,
                      "unit": "rate" if kind == "conversion" else "value"})
    for name, kind in seen.items():
        if name in configured and configured[name].kind != kind:
            warnings.append(f"feedback {name!r} is configured as {configured[name].kind} under analysis.metrics "
                            f"but arrives as {kind}; its figures are left out")
    return specs


# ---- per variant -----------------------------------------------------------------------------


def _variant_section(name: str, data: Mapping[str, Any], control: str, weight_pct: float,
                     cfg: ExperimentConfig) -> dict[str, Any]:
    requests, errors = int(data["requests"]), int(data["errors"])
    predictions = {str(k): int(v) for k, v in (data.get("predictions") or {}).items()}
    predicted = sum(predictions.values())
    role = "control" if name == control else "variant"
    if cfg.shadow is not None and name == cfg.shadow.version:
        role = "shadow" if weight_pct == 0 and requests == 0 else role + "+shadow"
    feedback = {}
    for metric, totals in sorted((data.get("feedback") or {}).items()):
        feedback[metric] = _feedback_arm(totals)
    return {
        "role": role,
        "weight_pct": weight_pct,
        "requests": requests,
        "assigned": int(data.get("assigned", 0)),
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
    sample = np.asarray(latency.get("sample_ms") or [], dtype=float)
    out: dict[str, Any] = {
        "count": count,
        # Over every successful request (exact), not only the sample.
        "mean_all": 1000.0 * float(latency.get("sum_s", 0.0)) / count if count else None,
        "n_sample": int(sample.size),
    }
    if sample.size:
        p50, p95, p99 = np.percentile(sample, [50, 95, 99])
        out.update(mean=float(sample.mean()), p50=float(p50), p95=float(p95), p99=float(p99),
                   min=float(sample.min()), max=float(sample.max()))
    else:
        out.update(mean=None, p50=None, p95=None, p99=None, min=None, max=None)
    return out


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


def _metric(spec: dict[str, Any], versions: Mapping[str, Any], control: str, compared: list[str],
            alpha: float) -> tuple[dict[str, Any], list[ab.Comparison]]:
    name, kind = spec["name"], spec["kind"]
    direction = _DIRECTIONS[spec["direction"]]
    arms_data: dict[str, Any] = {}
    arms: dict[str, dict[str, Any]] = {}
    for version, data in versions.items():
        if spec["source"] == "requests":
            counts = ab.ConversionCounts(int(data["errors"]), int(data["requests"]))
            arms_data[version] = counts
            arms[version] = _conversion_arm(counts, alpha)
        elif kind == "latency":
            sample = np.asarray(data["latency"].get("sample_ms") or [], dtype=float)
            arms_data[version] = sample
            summary = _latency_summary(data["latency"])
            arms[version] = {"n": int(sample.size), "value": summary["p50"], "ci": None,
                             "mean": summary["mean"], "p95": summary["p95"]}
        else:
            totals = (data.get("feedback") or {}).get(name)
            if totals is not None and totals.get("kind") != kind:
                totals = None  # the other kind: warned about in _metric_specs
            if kind == "conversion":
                counts = ab.ConversionCounts(int(totals["successes"]), int(totals["n"])) if totals \
                    else ab.ConversionCounts(0, 0)
                arms_data[version] = counts
                arms[version] = _conversion_arm(counts, alpha)
            else:
                summary = _mean_summary(totals or {})
                arms_data[version] = summary
                arms[version] = _mean_arm(summary, alpha)
    test = {"conversion": ab.compare_proportions, "mean": ab.compare_means,
            "latency": ab.compare_mann_whitney}[kind]
    subset = {v: arms_data[v] for v in [control, *compared]}
    comparisons = ab.compare_to_control(subset, control=control, metric=name, compare=test, alpha=alpha,
                                        direction=direction)
    test_name = {"conversion": "z_two_proportions", "mean": "welch_t", "latency": "mann_whitney_u"}[kind]
    metric = {"name": name, "kind": kind, "source": spec["source"], "test": test_name,
              "direction": spec["direction"], "unit": spec["unit"],
              "value_is": {"conversion": "rate", "mean": "mean", "latency": "median"}[kind],
              "arms": arms, "_spec": {**spec, "arms_data": arms_data}}
    return metric, comparisons


def _conversion_arm(counts: ab.ConversionCounts, alpha: float) -> dict[str, Any]:
    if counts.trials == 0:
        return {"n": 0, "successes": 0, "value": None, "ci": None}
    return {"n": counts.trials, "successes": counts.conversions, "value": counts.rate,
            "ci": list(shadow_stats.wilson_interval(counts.conversions, counts.trials, 1.0 - alpha))}


def _mean_arm(summary: ab.MeanSummary, alpha: float) -> dict[str, Any]:
    ci = None
    if summary.n > 1:
        half = float(_stats.t.ppf(1.0 - alpha / 2.0, summary.n - 1)) * math.sqrt(summary.variance / summary.n)
        ci = [summary.mean - half, summary.mean + half]
    return {"n": summary.n, "value": summary.mean if summary.n else None,
            "std": math.sqrt(summary.variance) if summary.n > 1 else None, "ci": ci}


def _comparison_dict(c: ab.Comparison, seq: sequential.SequentialResult | None, seq_p_adjusted: float | None,
                     plan: dict[str, Any], spec: dict[str, Any], sequential_on: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "variant": c.variant, "control": c.control, "test": c.test,
        "n_variant": c.n_variant, "n_control": c.n_control,
        "value_variant": c.value_variant, "value_control": c.value_control,
        "abs_lift": c.abs_lift, "abs_ci": list(c.abs_ci), "rel_lift": c.rel_lift, "rel_ci": list(c.rel_ci),
        "p_value": c.p_value, "p_adjusted": c.p_adjusted, "fixed_verdict": c.verdict.value,
        "sequential": None,
    }
    verdict, basis = c.verdict, "fixed_horizon"
    if seq is not None:
        enough = c.verdict is not ab.ABVerdict.NOT_ENOUGH_DATA
        p_adj = seq_p_adjusted if seq_p_adjusted is not None else math.nan
        seq_verdict = _sequential_verdict(p_adj, seq.estimate, seq.alpha, c.direction, enough)
        out["sequential"] = {"p_value": seq.p_value, "p_adjusted": p_adj, "ci": list(seq.ci), "looks": seq.looks,
                             "estimate": seq.estimate, "tau": seq.tau, "verdict": seq_verdict.value}
        verdict, basis = seq_verdict, "sequential"
    elif sequential_on:
        out["sequential_note"] = "no always-valid version of the Mann-Whitney test; the verdict is fixed-horizon"
    out["verdict"], out["verdict_basis"] = verdict.value, basis
    out.update(_power_for(plan, spec, c))
    return out


def _sequential_verdict(p: float, estimate: float, alpha: float, direction: ab.Direction, enough: bool) -> ab.ABVerdict:
    if not enough or math.isnan(p) or math.isnan(estimate):
        return ab.ABVerdict.NOT_ENOUGH_DATA
    if p > alpha or estimate == 0:  # sequential rejects at p <= alpha
        return ab.ABVerdict.NO_DIFFERENCE
    good = estimate > 0 if direction is ab.Direction.HIGHER_IS_BETTER else estimate < 0
    return ab.ABVerdict.BETTER if good else ab.ABVerdict.WORSE


def _adjust(p_values: list[float], correction: ab.Correction | None) -> list[float]:
    if correction is None or not p_values:
        return list(p_values)
    return [float(p) for p in ab.adjust_p_values(p_values, correction)]


# ---- sequential ------------------------------------------------------------------------------


def _sequential_looks(metrics: list[dict[str, Any]], versions: Mapping[str, Any], control: str, alpha: float,
                      state: Mapping[str, Any], new_state: dict[str, Any],
                      warnings: list[str]) -> dict[tuple[str, str], sequential.SequentialResult]:
    results = {}
    reset: list[str] = []
    for metric in metrics:
        spec = metric["_spec"]
        if spec["kind"] not in ("conversion", "mean"):
            continue
        name, arms = spec["name"], spec["arms_data"]
        look = sequential.sequential_proportions if spec["kind"] == "conversion" else sequential.sequential_means
        previous_by_variant = state.get(name) if isinstance(state.get(name), Mapping) else {}
        for comparison in metric["_comparisons"]:
            variant = comparison.variant
            previous = _decode_look(previous_by_variant.get(variant))
            try:
                result = look(arms[variant], arms[control], previous=previous, alpha=alpha)
            except ValueError:
                if previous is None:
                    raise
                # Fewer samples than the last look (the figures restarted) or another alpha.
                reset.append(f"{name}/{variant}")
                result = look(arms[variant], arms[control], previous=None, alpha=alpha)
            results[(name, variant)] = result
            new_state.setdefault(name, {})[variant] = _encode_look(result)
    if reset:
        warnings.append(f"sequential tests restarted for {', '.join(reset)}: the counts went down since the "
                        "last look (the controller's figures restarted) or alpha changed")
    return results


def _encode_look(result: sequential.SequentialResult) -> dict[str, Any]:
    out = asdict(result)
    out["ci"] = list(result.ci)
    return out  # NaN/inf become None in _jsonable


def _decode_look(data: Any) -> sequential.SequentialResult | None:
    if not isinstance(data, Mapping):
        return None
    try:
        lo, hi = data["ci"]
        return sequential.SequentialResult(
            looks=int(data["looks"]), n_variant=int(data["n_variant"]), n_control=int(data["n_control"]),
            estimate=_float(data["estimate"]), tau=_float(data["tau"]),
            likelihood_ratio=_float(data["likelihood_ratio"]), p_value=float(data["p_value"]),
            ci=(-math.inf if lo is None else float(lo), math.inf if hi is None else float(hi)),
            alpha=float(data["alpha"]), reject=bool(data["reject"]),
        )
    except (KeyError, TypeError, ValueError):
        return None  # a state from another layout: start afresh


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


# ---- power -----------------------------------------------------------------------------------


def _power_plan(spec: dict[str, Any], versions: Mapping[str, Any], control: str, compared: list[str],
                cfg: ExperimentConfig) -> dict[str, Any]:
    """One plan per metric: the baseline is always the control's, so every comparison shares it."""
    analysis = cfg.analysis
    arms = spec["arms_data"]
    variants = 1 + len(compared)
    mde = analysis.mde_relative
    out: dict[str, Any] = {"plan": None, "summary": None, "note": None, "kind": spec["kind"]}
    if variants < 2:
        out["note"] = "no variant to compare with the control"
        return out
    try:
        if spec["kind"] == "conversion":
            counts = arms[control]
            if counts.trials < 2:
                raise ValueError("the control has no data yet")
            baseline = counts.rate
            if not 0 < baseline < 1:
                raise ValueError(f"the control's rate is {baseline:g}; a baseline for power must be in (0, 1)")
            signed = mde if spec["direction"] == "increase" else -mde
            if not 0 < baseline * (1 + signed) < 1:
                # The lift is impossible from this baseline (+5% of a 97% rate); the test is
                # two-sided, so plan for a change of the same size the other way.
                signed = -signed
            plan = power.sample_size_conversions(baseline, signed, relative=True, alpha=analysis.alpha,
                                                 power=analysis.power, variants=variants)
            out.update(method="two-proportion z-test (Cohen's h)", baseline=baseline, mde_signed=signed)
        else:
            if spec["kind"] == "latency":
                sample = arms[control]
                summary = ab.MeanSummary.from_samples(sample) if sample.size else ab.MeanSummary(0, math.nan, math.nan)
                out["method"] = "t-test on the latency sample's means (an approximation for Mann-Whitney)"
            else:
                summary = arms[control]
                out["method"] = "t-test (Cohen's d)"
            if summary.n < 2 or not summary.variance > 0:
                raise ValueError("the control has fewer than 2 values or no spread yet")
            if summary.mean == 0:
                raise ValueError("the control's mean is 0, so a relative effect is 0")
            std = math.sqrt(summary.variance)
            mde_abs = mde * abs(summary.mean)
            plan = power.sample_size_means(std, mde_abs, alpha=analysis.alpha, power=analysis.power,
                                           variants=variants)
            out.update(baseline=summary.mean, std=std)
    except ValueError as err:
        out["note"] = f"no power figures: {err}"
        return out
    n_now = {arm: _arm_n(arms[arm]) for arm in [control, *compared]}
    prog = power.progress(plan, n_now)
    out["plan"] = plan
    out["progress"] = prog
    out["summary"] = {
        "method": out["method"], "mde_relative": mde, "mde_abs": plan.mde_abs, "baseline": out["baseline"],
        "target_power": analysis.power, "alpha": analysis.alpha, "alpha_per_comparison": plan.alpha_per_comparison,
        "required_per_arm": plan.n_per_variant, "remaining_per_arm": prog.remaining_per_variant,
        "remaining_total": prog.remaining_total, "power_now": prog.power_now, "complete": prog.complete,
    }
    return out


def _power_for(plan: dict[str, Any], spec: dict[str, Any], c: ab.Comparison) -> dict[str, Any]:
    if plan["plan"] is None:
        return {"power": None, "power_note": plan["note"]}
    p: power.SampleSizePlan = plan["plan"]
    n = min(c.n_variant, c.n_control)
    if plan["kind"] == "conversion":
        achieved = power.power_conversions(plan["baseline"], plan["mde_signed"], n, relative=True,
                                           alpha=p.alpha, variants=p.variants)
    else:
        achieved = power.power_means(p.std, p.mde_abs, n, alpha=p.alpha, variants=p.variants)
    remaining = plan["progress"].remaining_per_variant
    return {"power": {
        "achieved": achieved, "target": p.power, "mde_relative": plan["summary"]["mde_relative"],
        "mde_abs": p.mde_abs, "required_per_arm": p.n_per_variant,
        "samples_needed": {c.variant: remaining[c.variant], c.control: remaining[c.control]},
        "complete": remaining[c.variant] == 0 and remaining[c.control] == 0,
    }, "power_note": None}


def _arm_n(data: Any) -> int:
    if isinstance(data, ab.ConversionCounts):
        return data.trials
    if isinstance(data, ab.MeanSummary):
        return data.n
    return int(np.asarray(data).size)


# ---- sample-ratio mismatch -------------------------------------------------------------------


def _srm(versions: Mapping[str, Any], weights: dict[str, float], cfg: ExperimentConfig) -> dict[str, Any]:
    live = [v for v in versions if weights[v] > 0]
    by_units = all(versions[v].get("units") is not None and versions[v]["units"] > 0 for v in live)
    basis = "units" if by_units else "assigned"
    observed = {v: int((versions[v].get("units") or 0) if by_units else versions[v].get("assigned", 0))
                for v in versions}
    out: dict[str, Any] = {
        "applicable": True, "basis": basis,
        "basis_note": ("distinct assignment keys (users) per version" if by_units else
                       "requests routed by the assignment (no pinned ones), since some version has no distinct "
                       "key count"),
        "observed": observed, "weights_pct": dict(weights), "expected": None, "statistic": None, "dof": None,
        "p_value": None, "threshold_p": ab.SRM_THRESHOLD_P, "mismatch": False, "reason": None,
    }
    configured = cfg.weights_pct()
    if cfg.rollout is not None or any(abs(configured.get(v, 0.0) - weights[v]) > 1e-9 for v in versions):
        out["applicable"] = False
        out["reason"] = ("weights move during a rollout" if cfg.rollout is not None else
                         f"the weights now {weights} differ from the configured {configured}")
        out["reason"] += "; counts since the start mix several splits, so they cannot be checked against one"
        return out
    result = ab.check_srm(observed, weights)
    out.update(expected=result.expected, statistic=result.statistic, dof=result.dof, p_value=result.p_value,
               mismatch=result.mismatch)
    if sum(observed.values()) == 0:
        out["reason"] = "no traffic yet"
    return out


# ---- shadow ----------------------------------------------------------------------------------


def _shadow_section(shadow: Mapping[str, Any] | None, alpha: float,
                    correction: ab.Correction | None) -> dict[str, Any] | None:
    if shadow is None:
        return None
    confidence = 1.0 - alpha
    pairs, agree = int(shadow.get("pairs", 0)), int(shadow.get("agree", 0))
    mirrored, errors = int(shadow.get("mirrored", 0)), int(shadow.get("errors", 0))
    cells = [(int(a), int(b), int(n)) for a, b, n in shadow.get("confusion") or []]
    flips = sorted(((a, b, n) for a, b, n in cells if a != b and n > 0), key=lambda cell: (-cell[2], cell[0], cell[1]))
    tests = class_flip_tests(cells)
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
    return {
        "version": shadow.get("version"),
        "mirrored": mirrored,
        "errors": errors,
        "errors_by_kind": dict(shadow.get("errors_by_kind") or {}),
        "error_rate": errors / mirrored if mirrored else None,
        "pairs": pairs,
        "pairs_by_live_version": dict(shadow.get("pairs_by_live_version") or {}),
        "agreement": {"n": pairs, "agree": agree, "rate": agree / pairs if pairs else None,
                      "ci": list(shadow_stats.wilson_interval(agree, pairs, confidence)) if pairs else None,
                      "confidence": confidence},
        "flips": {"total": pairs - agree, "rate": (pairs - agree) / pairs if pairs else None,
                  "top": [{"live": a, "shadow": b, "n": n, "share_of_pairs": n / pairs}
                          for a, b, n in flips[:TOP_FLIPS]]},
        "class_tests": [
            {"class": t.cls, "live_count": t.live_count, "shadow_count": t.shadow_count, "to_other": t.to_other,
             "from_other": t.from_other, "diff": t.diff, "statistic": t.statistic, "p_value": t.p_value,
             "p_adjusted": p_adj, "method": t.method, "significant": not math.isnan(p_adj) and p_adj <= alpha}
            for t, p_adj in zip(tests, p_adjusted)
        ],
        "score_diff": _paired_mean(shadow.get("score_diff") or {}, confidence),
        "drift": drift_section,
        "latency_ms": _latency_summary(shadow.get("latency") or {}),
        "confusion": {"classes": classes, "counts": matrix},
    }


def _paired_mean(totals: Mapping[str, Any], confidence: float) -> dict[str, Any]:
    """Mean of shadow-minus-live score differences, paired t CI and p-value, from n/sum/sum_sq."""
    summary = _mean_summary(totals)
    out = {"n": summary.n, "mean": summary.mean if summary.n else None, "std": None, "ci": None,
           "p_value": None, "confidence": confidence}
    if summary.n < 2:
        return out
    se = math.sqrt(summary.variance / summary.n)
    out["std"] = math.sqrt(summary.variance)
    if se > 0:
        half = float(_stats.t.ppf(0.5 + confidence / 2.0, summary.n - 1)) * se
        out["ci"] = [summary.mean - half, summary.mean + half]
        out["p_value"] = float(2.0 * _stats.t.sf(abs(summary.mean) / se, summary.n - 1))
    else:  # the same difference on every pair: as shadow.score_differences
        out["ci"] = [summary.mean, summary.mean]
        out["p_value"] = 1.0 if summary.mean == 0 else 0.0
    return out


# ---- plot data -------------------------------------------------------------------------------


def _latency_histogram(versions: Mapping[str, Any], shadow: Mapping[str, Any] | None) -> dict[str, Any] | None:
    samples = {name: np.asarray(data["latency"].get("sample_ms") or [], dtype=float) for name, data in versions.items()}
    if shadow is not None:
        samples[f"{shadow.get('version')} (shadow)"] = np.asarray(
            (shadow.get("latency") or {}).get("sample_ms") or [], dtype=float)
    pooled = np.concatenate([s for s in samples.values()]) if samples else np.array([])
    if pooled.size == 0:
        return None
    lo = float(pooled.min())
    hi = float(np.percentile(pooled, LATENCY_HISTOGRAM_TOP_PCT))
    if hi <= lo:
        hi = lo + max(abs(lo) * 0.01, 1e-3)
    edges = np.linspace(lo, hi, LATENCY_HISTOGRAM_BINS + 1)
    counts, clipped = {}, {}
    for name, sample in samples.items():
        counts[name] = np.histogram(np.minimum(sample, hi), bins=edges)[0].tolist()
        clipped[name] = int((sample > hi).sum())
    return {"edges_ms": edges.tolist(), "counts": counts, "clipped": clipped,
            "note": f"values above the pooled p{LATENCY_HISTOGRAM_TOP_PCT:g} ({hi:.3g} ms) are counted in the last bin"}


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
