"""The terminal view of an A/B report (``serve-ab report``) and of the run list (``serve-ab runs``).

The cell formatters here (``_p``, ``_pct``, ``_lift`` ...) and the per-metric rows are shared
with the HTML page (``render_html.py``), so both views show the same figures the same way.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from serve_ab.analysis.report_model import Comparison, Experiment, MetricResult, Report, ShadowResult, Srm
from serve_ab.cli import rollout as cli_rollout

__all__ = ["render_runs", "render_table"]

_VERDICT_TEXT = {"better": "BETTER", "worse": "WORSE", "no_difference": "no difference",
                 "not_enough_data": "not enough data"}


# --- terminal ------------------------------------------------------------------------------


def render_table(report: Report) -> str:
    """The terminal view: a header, warnings, one table per metric, then the shadow comparison."""
    exp, srm = report.experiment, report.srm
    lines = [_headline(report)]
    for warning in report.warnings:
        lines.append(f"WARNING: {warning}")
    lines.append(f"SRM: {_srm_text(srm)}")
    srm_flag = _srm_flag(srm)
    for metric in report.metrics:
        lines += ["", _metric_title(metric, exp)]
        lines += _table(_metric_rows(metric, exp, srm_flag))
        note = _power_plan_note(metric)
        if note:
            lines.append(f"  {note}")
    if report.shadow is not None:
        lines += ["", *_shadow_lines(report.shadow)]
    return "\n".join(lines)


def _headline(report: Report) -> str:
    exp = report.experiment
    variants = ", ".join(exp.variants) or "none"
    elapsed = cli_rollout._duration(report.elapsed_s)
    options = [f"alpha {exp.alpha}", f"correction {exp.correction}",
               "sequential" if exp.sequential else "fixed horizon",
               f"MDE {_pct(exp.mde_relative, 0)}"]
    return f"{exp.model}: control {exp.control} vs {variants}, running {elapsed} ({', '.join(options)})"


def _srm_text(srm: Srm) -> str:
    observed = ", ".join(f"{k} {v:,}" for k, v in srm.observed.items())
    if not srm.applicable:
        return f"not checked: {srm.reason}"
    if srm.p_value is None:
        return f"no traffic yet ({srm.basis})"
    state = "MISMATCH" if srm.mismatch else "ok"
    return (f"{state} ({srm.basis}: {observed}; weights {_weights_text(srm.weights_pct)}; "
            f"chi-square p = {_p(srm.p_value)}, flagged below {srm.threshold_p})")


def _srm_flag(srm: Srm) -> str:
    if not srm.applicable or srm.p_value is None:
        return "n/a"
    return "MISMATCH" if srm.mismatch else "ok"


def _metric_title(metric: MetricResult, exp: Experiment) -> str:
    better = "higher" if metric.direction == "increase" else "lower"
    test = {"z_two_proportions": "two-proportion z-test", "welch_t": "Welch's t-test",
            "mann_whitney_u": "Mann-Whitney U"}[metric.test]
    basis = "sequential (always valid)" if exp.sequential and metric.kind != "latency" else "fixed horizon"
    return f"{metric.name}  ({metric.value_is}, {better} is better; {test}; verdict: {basis})"


def _metric_rows(metric: MetricResult, exp: Experiment, srm_flag: str) -> list[list[str]]:
    kind = metric.kind
    confidence = f"{1 - exp.alpha:.0%}"
    header = ["variant", "n", metric.value_is, f"lift [{confidence} CI]",
              f"rel lift [{confidence} CI]", "p (adj.)", "p (always valid)", "verdict", "SRM", "power / needed"]
    rows = [header]
    control = exp.control
    if control in metric.arms:
        arm = metric.arms[control]
        rows.append([f"{control} (control)", _int(arm.n), _value(arm.value, kind), "", "", "", "", "", srm_flag, ""])
    for c in metric.comparisons:
        rows.append([
            c.variant, _int(c.n_variant), _value(c.value_variant, kind),
            _lift(c.abs_lift, c.abs_ci, kind),
            _rel(c.rel_lift, c.rel_ci),
            _p(c.p_adjusted),
            _p(c.sequential.p_adjusted) if c.sequential else "-",
            _VERDICT_TEXT[c.verdict],
            srm_flag,
            _power_text(c),
        ])
    return rows


def _power_text(c: Comparison) -> str:
    p = c.power
    if p is None:
        return "-"
    more = max(p.samples_needed.values()) if p.samples_needed else 0
    tail = "enough samples" if more == 0 else f"{more:,} more per arm"
    return f"{_pct(p.achieved, 0)} / {tail}"


def _power_plan_note(metric: MetricResult) -> str | None:
    plan = metric.power_plan
    if plan:
        return (f"power: {plan.required_per_arm:,} per arm to detect {_pct(plan.mde_relative, 1)} "
                f"(abs {_num(plan.mde_abs)}) at power {plan.target_power:g}; {plan.method}")
    notes = {c.power_note for c in metric.comparisons if c.power_note}
    return "; ".join(sorted(notes)) or None


def _shadow_lines(shadow: ShadowResult) -> list[str]:
    agreement = shadow.agreement
    conf = f"{agreement.confidence:.0%}"
    lines = [f"shadow {shadow.version}: {shadow.mirrored:,} mirrored, {shadow.pairs:,} paired, {shadow.errors:,} errors"
             + (f" ({_pct(shadow.error_rate, 2)})" if shadow.error_rate is not None else "")]
    if agreement.rate is not None:
        lo, hi = agreement.ci or (None, None)
        lines.append(f"  agreement   {_pct(agreement.rate, 2)} [{conf} CI {_pct(lo, 2)}, {_pct(hi, 2)}]")
    flips = shadow.flips
    if flips.top:
        top = ", ".join(f"{f.live}->{f.shadow} x{f.n}" for f in flips.top[:5])
        lines.append(f"  flips       {flips.total:,} ({_pct(flips.rate, 2)}); most: {top}")
    significant = [t for t in shadow.class_tests if t.significant]
    if shadow.class_tests:
        if significant:
            parts = [f"class {t.class_}: live {t.live_count:,} -> shadow {t.shadow_count:,} "
                     f"(p {_p(t.p_adjusted)})" for t in significant]
            lines.append("  classes     shifted: " + "; ".join(parts))
        else:
            lines.append("  classes     no class predicted significantly more or less often (McNemar per class)")
    score = shadow.score_diff
    if score.mean is not None:
        ci_text = f" [{conf} CI {_num(score.ci[0])}, {_num(score.ci[1])}]" if score.ci else ""
        lines.append(f"  score diff  mean {_num(score.mean)}{ci_text}, p {_p(score.p_value)} "
                     f"(shadow minus live, n {score.n:,})")
    drift = shadow.drift
    if drift:
        lines.append(f"  drift       KL {_num(drift.kl)}, PSI {_num(drift.psi)}, JS {_num(drift.js)}")
    latency = shadow.latency_ms
    if latency.p50 is not None:
        lines.append(f"  latency     p50 {_num(latency.p50)} ms, p95 {_num(latency.p95)} ms, "
                     f"p99 {_num(latency.p99)} ms")
    return lines


def render_runs(summaries: list[Any], path: Path | str | None = None) -> str:
    """The ``serve-ab runs`` table."""
    if not summaries:
        return f"no run records in {path}" if path else "no run records"
    rows = [["run id", "model", "started", "updated", "versions", "control", "requests", "SRM"]]
    for s in summaries:
        srm = "n/a" if s.srm_mismatch is None else ("MISMATCH" if s.srm_mismatch else "ok")
        rows.append([s.run_id, s.model or "-", _when(s.started_at_s), _when(s.updated_at_s),
                     ",".join(s.versions) or "-", s.control or "-", _int(s.requests), srm])
    return "\n".join(_table(rows, indent=""))


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    numeric = {1}  # n column right-aligned
    out = []
    for row in rows:
        cells = [cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        out.append((indent + "  ".join(cells)).rstrip())
    return out


# --- formatting ----------------------------------------------------------------------------


def _value(value: Any, kind: str | None) -> str:
    if value is None:
        return "-"
    if kind == "conversion":
        return _pct(value, 2)
    if kind == "latency":
        return f"{value:.3g} ms"
    return _num(value)


def _lift(lift: Any, ci: Any, kind: str | None) -> str:
    if lift is None:
        return "-"
    if kind == "conversion":
        text = f"{lift * 100:+.2f} pp"
        if ci and None not in ci:
            text += f" [{ci[0] * 100:+.2f}, {ci[1] * 100:+.2f}]"
        return text
    unit = " ms" if kind == "latency" else ""
    text = f"{lift:+.4g}{unit}"
    if ci and None not in ci:
        text += f" [{ci[0]:+.4g}, {ci[1]:+.4g}]"
    return text


def _rel(rel: Any, ci: Any) -> str:
    if rel is None:
        return "-"
    text = f"{rel * 100:+.1f}%"
    if ci and None not in ci:
        text += f" [{ci[0] * 100:+.1f}, {ci[1] * 100:+.1f}]"
    return text


def _p(p: Any) -> str:
    if p is None:
        return "-"
    p = float(p)
    return "<1e-99" if p < 1e-99 else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def _pct(value: Any, digits: int) -> str:
    return "-" if value is None else f"{float(value) * 100:.{digits}f}%"


def _num(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4g}"


def _int(value: Any) -> str:
    return "-" if value is None else f"{int(value):,}"


def _weights_text(weights: Any) -> str:
    return ", ".join(f"{k} {float(v):g}%" for k, v in (weights or {}).items())


def _when(t_s: Any) -> str:
    return "-" if t_s is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t_s)))

