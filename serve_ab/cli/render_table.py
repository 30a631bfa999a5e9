"""The terminal view of an A/B report (``serve-ab report``) and of the run list (``serve-ab runs``).

Each metric is a block: a title naming its test and what its verdict rests on, a small table
of the arms (pooled over splits, descriptive), then one stack of labelled lines per comparison
(the figures of one estimand: units, values, lifts with the verdict's own interval, p-values,
verdict, guardrail, power). A stack instead of one wide row keeps every line within
``WIDTH`` columns. The cell formatters here (``_p``, ``_pct``, ``_lift`` ...) and the comparison
figures (:func:`_comparison_cells`) are shared with the HTML page (``render_html.py``), so both
views show the same figures the same way.
"""

from __future__ import annotations

import math
import textwrap
import time
import unicodedata
from pathlib import Path
from typing import Any

from serve_ab.analysis.report_model import Comparison, Experiment, MetricResult, Report, ShadowResult, Srm
from serve_ab.cli import rollout as cli_rollout

__all__ = ["WIDTH", "render_runs", "render_table"]

WIDTH = 100  # columns: the view must read in a 100-column terminal

# "no significant difference": an interval that covers 0 says the data cannot tell, not that the
# versions are alike (the JSON keeps its value, no_difference).
_VERDICT_TEXT = {"better": "BETTER", "worse": "WORSE", "no_difference": "no significant difference",
                 "not_enough_data": "not enough data"}
_GUARDRAIL_TEXT = {"non_inferior": "non-inferior", "inferior": "INFERIOR", "inconclusive": "inconclusive"}
_LABEL = 11  # width of the labels of a comparison's lines


# --- terminal ------------------------------------------------------------------------------


def render_table(report: Report) -> str:
    """The terminal view: a header, warnings, the SRM check, one block per metric, the shadow."""
    exp, srm = report.experiment, report.srm
    lines = [*_wrap(_headline(report)), *_wrap(f"  {_options(exp)}", indent="    ")]
    units = _units_note(report)
    if units:
        lines += _wrap(f"  {units}", indent="    ")
    for warning in report.warnings:
        lines += _wrap(f"WARNING: {warning}", indent="  ")
    failover = _failover_text(report)
    if failover:
        lines += _wrap(failover, indent="  ")
    lines += _srm_lines(srm)
    srm_flag = _srm_flag(srm)
    for metric in report.metrics:
        lines += ["", *_wrap(_metric_title(metric, exp), indent="  ")]
        lines += _wrap(f"  {_metric_test(metric, exp)}", indent="    ")
        lines += _table(_arm_rows(metric, exp))
        for c in metric.comparisons:
            lines += _comparison_lines(metric, c, srm_flag)
    if report.shadow is not None:
        lines += ["", *_shadow_lines(report.shadow)]
    return "\n".join(lines)


def _headline(report: Report) -> str:
    exp = report.experiment
    running = f"running {cli_rollout._duration(report.elapsed_s)}"
    if not exp.variants:  # one version serves (a shadow's copies are compared below, if any)
        return f"{exp.model}: {exp.control} alone, no variant to compare with it, {running}"
    return f"{exp.model}: control {exp.control} vs {', '.join(exp.variants)}, {running}"


def _units_note(report: Report) -> str | None:
    """What a metric table's "units" count: buckets of users, fewer than the users the SRM line
    and the variants' figures count where two users share a bucket."""
    if not report.metrics:
        return None
    return f"units in the metric tables: each a {report.metrics[0].analysis_unit}"


def _failover_text(report: Report) -> str | None:
    """The requests a fallback answered for a version that could not: each counts as a request of
    both (the failed one's error, the fallback's request), so the versions' requests add up to more
    than were sent; ``serve-ab runs`` counts them once. None when there were none."""
    retried = {name: v.retried for name, v in report.variants.items() if v.retried}
    if not retried:
        return None
    total = sum(v.requests - v.retried for v in report.variants.values())
    served = ", ".join(f"{name} {n:,}" for name, n in retried.items())
    return (f"failover: requests another version could not answer, served by the fallback (retried): {served}; "
            f"each also counts as the failed version's request and error, so {total:,} requests in all")


def _options(exp: Experiment) -> str:
    """How the verdicts are reached: the settings a reader needs to weigh them."""
    options = [f"alpha {exp.alpha:g}", f"correction {exp.correction}",
               "sequential verdicts" if exp.sequential else "fixed-horizon verdicts",
               f"MDE {_pct(exp.mde_relative, 0)}"]
    if exp.variants:  # without one the family has no comparison in it to count
        options.append(f"family of {exp.family_size} comparisons")
    if exp.splits > 1:
        options.append(f"{exp.splits} splits")
    return ", ".join(options)


def _srm_lines(srm: Srm) -> list[str]:
    lines = _wrap(f"SRM: {_srm_text(srm)}", indent="  ")
    earlier = _srm_earlier_text(srm)
    if earlier:
        lines += _wrap(f"SRM under earlier splits: {earlier}", indent="  ")
    return lines


def _srm_text(srm: Srm) -> str:
    """The check under the split routed by now: units per version, and the sample they come from."""
    if not srm.applicable:
        return f"not checked: {srm.reason}"
    if srm.p_value is None:
        return srm.reason or "no traffic yet under the weights routed by now"
    shown = {k: v for k, v in srm.observed.items() if v or srm.weights_pct.get(k, 0.0) > 0}
    # Not "ok": the sequential test needs units before it can flag anything (an arm weighted 50%
    # with none of 300 units is not flagged yet), so its silence is no all-clear.
    state = "MISMATCH" if srm.mismatch else "no mismatch detected"
    empty = [f"{k} has no units at weight {srm.weights_pct[k]:g}%" for k, v in shown.items()
             if not v and srm.weights_pct.get(k, 0.0) > 0]
    if empty:
        state += f"; {', '.join(empty)}: check that the routers send it traffic"
    weights = {k: v for k, v in srm.weights_pct.items() if k in shown}
    fraction = srm.sampled_fraction
    if fraction is not None and fraction < 1:
        # The test counts the sample; the figures shown are its estimates of every unit.
        observed = ", ".join(f"{k} ~{v:,}" for k, v in shown.items())
        digits = 3 if fraction < 0.01 else 1
        basis = f"{srm.basis}: {observed}, estimated from a {_pct(fraction, digits)} sample of users"
    else:
        basis = f"{srm.basis}: " + ", ".join(f"{k} {v:,}" for k, v in shown.items())
    if srm.always_valid_p is None:  # a record from before the sequential test: flagged on the chi-square
        test = f"chi-square p = {_p(srm.p_value)}, flagged below {srm.threshold_p:g}"
    else:
        test = (f"sequential p = {_p(srm.always_valid_p)} (valid at every refresh), flagged below "
                f"{srm.threshold_p:g}; chi-square p at this look {_p(srm.p_value)}")
    return f"{state} ({basis}; weights {_weights_text(weights)}; {test})"


def _srm_earlier_text(srm: Srm) -> str | None:
    """Earlier splits: each mismatch named, the others counted."""
    if not srm.other_splits:
        return None
    bad = [s for s in srm.other_splits if s.mismatch]
    ok = len(srm.other_splits) - len(bad)
    parts = [f"MISMATCH under {s.split} (p = {_p(s.p_value if s.always_valid_p is None else s.always_valid_p)})"
             for s in bad]
    if ok:
        parts.append(f"{ok} with no mismatch detected")
    return "; ".join(parts)


def _srm_flag(srm: Srm) -> str:
    if not srm.applicable or srm.p_value is None:
        return "n/a"
    return "MISMATCH" if srm.mismatch else "ok"


def _metric_title(metric: MetricResult, exp: Experiment) -> str:
    better = "higher" if metric.direction == "increase" else "lower"
    family = "" if metric.in_family else "; exploratory, outside the decision family"
    return f"{metric.name}  ({metric.unit}; {better} is better{family})"


def _metric_test(metric: MetricResult, exp: Experiment) -> str:
    """The test and what the verdict rests on."""
    test = {"delta_method_z": "delta-method z per unit"}.get(metric.test, metric.test)
    splits = f", within each of {metric.splits} splits" if metric.splits > 1 else ""
    basis = _basis(metric, exp)
    return f"test: {test}{splits}; verdict: {basis}"


def _basis(metric: MetricResult, exp: Experiment) -> str:
    bases = {c.verdict_basis for c in metric.comparisons}
    basis = bases.pop() if len(bases) == 1 else ("sequential" if exp.sequential else "fixed_horizon")
    if basis == "sequential":
        alpha = exp.alpha_per_comparison if metric.in_family else exp.alpha
        return f"sequential (mSPRT at alpha {_num(alpha)}, always valid)"
    return "fixed horizon (z-test, read once the planned sample is reached)"


def _kind(metric: MetricResult) -> str:
    if metric.kind == "conversion":
        return "conversion"
    return "latency" if metric.name == "latency_ms" else "mean"


def _arm_rows(metric: MetricResult, exp: Experiment) -> list[list[str]]:
    """The arms (pooled over splits: descriptive); latency adds p50 and p95 of its assigned requests."""
    kind = _kind(metric)
    confidence = f"{1 - exp.alpha:.0%} CI"
    header = ["version", "units", metric.value_is, confidence]
    if kind == "latency":
        header += ["p50", "p95"]
    rows = [header]
    shown = [exp.control, *exp.variants]
    shown += [name for name, arm in metric.arms.items() if name not in shown and arm.n > 0]
    for name in shown:
        arm = metric.arms.get(name)
        if arm is None:
            continue
        label = f"{name} (control)" if name == exp.control else name
        row = [label, _int(arm.n), _value(arm.value, kind), _interval(arm.ci, kind, signed=False)]
        if kind == "latency":
            row += [_value(arm.p50, kind), _value(arm.p95, kind)]
        rows.append(row)
    return rows


def _comparison_cells(metric: MetricResult, c: Comparison) -> dict[str, str]:
    """One comparison's figures as text, for both views."""
    kind = _kind(metric)
    seq = c.sequential
    verdict = _VERDICT_TEXT[c.verdict]
    if c.verdict_note:
        verdict += f" ({c.verdict_note})"
    seq_p = "-" if seq is None else _p(seq.p_adjusted)
    return {
        "label": f"{c.variant} vs {c.control}",
        # No split where both arms have units: none are compared (the arms' own are in their table).
        "units": f"{_int(c.n_variant)} vs {_int(c.n_control)}" if c.splits_used else "-",
        "value": f"{_value(c.value_variant, kind)} vs {_value(c.value_control, kind)}",
        "abs": _lift(c.abs_lift, c.abs_ci, kind),
        "interval": _interval_name(c),
        "rel": _rel(c.rel_lift, c.rel_ci),
        "p": _p(c.p_value),
        "p_adjusted": _p(c.p_adjusted),
        "p_sequential": seq_p,
        "verdict": verdict,
        "verdict_short": _VERDICT_TEXT[c.verdict],
        "guardrail": _guardrail_text(c, kind),
        "cuped": _cuped_text(c, kind),
        "power": _power_text(c),
    }


def _comparison_lines(metric: MetricResult, c: Comparison, srm_flag: str) -> list[str]:
    cells = _comparison_cells(metric, c)
    verdict = cells["verdict"]
    if srm_flag == "MISMATCH":
        verdict += "  [SRM MISMATCH: do not trust]"
    rows = [("verdict", verdict),
            ("units", cells["units"]),
            ("value", cells["value"] + (" (within splits, combined)" if c.splits_used > 1 else "")),
            ("abs lift", f"{cells['abs']}  {cells['interval']}".rstrip() if c.abs_lift is not None else "-"),
            ("rel lift", cells["rel"]),
            ("p", (f"{cells['p']} fixed horizon, {cells['p_adjusted']} adjusted; "
                   f"sequential {cells['p_sequential']} adjusted"))]
    if c.guardrail is not None:
        rows.append(("guardrail", cells["guardrail"]))
    if c.cuped is not None:
        rows.append(("CUPED", cells["cuped"]))
    rows.append(("power", cells["power"]))
    head = f"  {cells['label']}"
    lines = []
    for i, (label, text) in enumerate(rows):
        prefix = (head if i == 0 else "").ljust(len(head)) + "  " + label.ljust(_LABEL)
        lines += _wrap(prefix + text, indent=" " * len(prefix))
    return lines


def _interval_name(c: Comparison) -> str:
    """What the abs/rel intervals shown are: the verdict's test's own interval."""
    if c.verdict_basis == "sequential":
        if c.sequential is None:
            return ""
        return f"{_conf(c.sequential.alpha_per_comparison)} confidence sequence"
    if c.fixed is None:
        return ""
    if c.verdict != "not_enough_data":
        return "CI frozen at the planned sample"
    return f"{_conf(c.fixed.level)} CI (the level the correction leaves)"


def _guardrail_text(c: Comparison, kind: str) -> str:
    g = c.guardrail
    if g is None:
        return "-"
    if g.margin_kind == "abs":
        margin = f"+{g.margin * 100:g}pp" if kind == "conversion" else f"+{g.margin:g}"
    else:
        unit = " ms" if kind == "latency" else ""
        margin = f"+{g.margin * 100:g}% = +{_num(g.margin_abs)}{unit}"
    note = f"; {g.note}" if g.note else ""
    return f"{_GUARDRAIL_TEXT[g.status]} (margin {margin}; {_conf(g.alpha)} sequence {_interval(g.ci, kind)}{note})"


def _cuped_text(c: Comparison, kind: str) -> str:
    """The pre-period adjustment: what it bought, and the lift without it."""
    cuped = c.cuped
    if cuped is None:
        return "-"
    unit = {"conversion": " pp", "latency": " ms"}.get(kind, "")
    scale = 100.0 if kind == "conversion" else 1.0
    # A reduction below 0 is an increase: "+3%", never "--3%".
    return (f"variance {_signed(-cuped.variance_reduction * 100, '.0f')}% (theta {_num(cuped.theta)}, "
            f"{cuped.pre_units:,} units seen before); unadjusted abs lift "
            f"{_bound(cuped.abs_lift_unadjusted, kind, True)}{unit} (se {cuped.se_unadjusted * scale:.4g}{unit})")


def _power_text(c: Comparison) -> str:
    p = c.power
    if p is None:
        return f"- ({c.power_note})" if c.power_note else "-"
    test = "mSPRT" if p.test.startswith("mSPRT") else "fixed-horizon z"
    achieved = f", {_pct(p.achieved, 0)} now" if p.achieved is not None else ""
    plan = f"for MDE {_pct(p.mde_relative, 1)} at power {p.target:g} ({test})"
    if p.data_multiple is None:  # a record from before the multiple: units alone
        more = max(p.units_needed.values()) if p.units_needed else 0
        tail = "reached" if more == 0 else f"{more:,} more per arm"
        return f"{p.required_per_arm:,} units per arm needed {plan}; {tail}{achieved}"
    # In users, not buckets: users come to share buckets, so a count of buckets misleads.
    # Rounded up: "1.00x" for a plan one unit short read as reached. round() first: 1.1 * 100
    # is 110.00000000000001, which ceil would make "1.11x".
    times = (f"{math.ceil(round(p.data_multiple, 9)):,}" if p.data_multiple >= 10
             else f"{math.ceil(round(p.data_multiple * 100, 9)) / 100:.2f}")
    tail = "sample reached" if p.complete else f"{times}x the users so far needed"
    return f"{tail} {plan}{achieved}"


def _shadow_lines(shadow: ShadowResult) -> list[str]:
    agreement = shadow.agreement
    conf = f"{agreement.confidence:.0%}"
    errors = f"{shadow.errors:,} error{'' if shadow.errors == 1 else 's'}"
    lines = [f"shadow {shadow.version}: {shadow.mirrored:,} mirrored, {shadow.pairs:,} paired, {errors}"
             + (f" ({_pct(shadow.error_rate, 2)})" if shadow.error_rate is not None else "")
             + (f"; {shadow.dropped:,} not sent: the shadow fell behind the live traffic" if shadow.dropped else "")]
    if shadow.rows_not_compared:
        # Every figure below reads a request's first row only: say so where batches hide rows.
        rows = shadow.rows_not_compared
        lines.append(f"  batches     only each request's first row is compared: {rows:,} "
                     f"row{'' if rows == 1 else 's'} of batched requests not compared")
    if agreement.rate is not None:
        lo, hi = agreement.ci or (None, None)
        rule = f" ({shadow.agreement_rule})" if shadow.task != "classification" and shadow.agreement_rule else ""
        clustered = _design_effect_text(agreement.design_effect)
        lines.append(f"  agreement   {_pct(agreement.rate, 2)} [{conf} CI {_pct(lo, 2)}, {_pct(hi, 2)}{clustered}]{rule}")
    if shadow.task != "classification":
        return [wrapped for line in lines + _task_lines(shadow, conf) for wrapped in _wrap(line, indent=" " * 14)]
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
            clustered = any(t.method == "cluster_adjusted" for t in shadow.class_tests)
            test = "McNemar per class" + (", adjusted where flips cluster by user" if clustered else "")
            lines.append(f"  classes     no class predicted significantly more or less often ({test})")
    score = shadow.score_diff
    if score.mean is not None:
        ci_text = f" [{conf} CI {_num(score.ci[0])}, {_num(score.ci[1])}]" if score.ci else ""
        lines.append(f"  score diff  mean {_num(score.mean)}{ci_text}, p {_p(score.p_value)} "
                     f"(shadow minus live, n {score.n:,}{_design_effect_text(score.design_effect)})")
    drift = shadow.drift
    if drift:
        # JS distance too: the gates' drift_js_distance reads it (the divergence is its square).
        lines.append(f"  drift       KL {_num(drift.kl)}, PSI {_num(drift.psi)}, JS divergence {_num(drift.js)} bits, "
                     f"JS distance {_num(drift.js_distance)}")
    latency = shadow.latency_ms
    if latency.p50 is not None:
        lines.append(f"  latency     p50 {_num(latency.p50)} ms, p95 {_num(latency.p95)} ms, "
                     f"p99 {_num(latency.p99)} ms")
    return [wrapped for line in lines for wrapped in _wrap(line, indent=" " * 14)]


def _design_effect_text(design_effect: float) -> str:
    return f"; design effect {design_effect:.3g}, users who send many requests" if design_effect > 1.0 else ""


def _task_lines(shadow: ShadowResult, conf: str) -> list[str]:
    """A regression's or an embedding's shadow figures (a classifier's are flips and classes)."""
    lines = []
    score = shadow.score_diff
    if shadow.task == "regression" and score.mean is not None:
        ci_text = f" [{conf} CI {_num(score.ci[0])}, {_num(score.ci[1])}]" if score.ci else ""
        lines.append(f"  value diff  mean {_num(score.mean)}{ci_text}, mean |diff| {_num(score.mean_abs)}, "
                     f"p {_p(score.p_value)} (shadow minus live, n {score.n:,}"
                     f"{_design_effect_text(score.design_effect)})")
    drift = shadow.value_drift
    if drift is not None:
        lines.append(f"  values      live mean {_num(drift.live_mean)}, shadow mean {_num(drift.shadow_mean)}; "
                     f"drift KS {_num(drift.ks)} (p {_p(drift.ks_p_value)}), Wasserstein {_num(drift.wasserstein)}")
    similarity = shadow.similarity
    if similarity is not None and similarity.mean is not None:
        ci_text = f" [{conf} CI {_num(similarity.ci[0])}, {_num(similarity.ci[1])}]" if similarity.ci else ""
        lines.append(f"  cosine      mean {_num(similarity.mean)}{ci_text}, p5 {_num(similarity.p05)}, "
                     f"min {_num(similarity.min)} (n {similarity.n:,})")
    latency = shadow.latency_ms
    if latency.p50 is not None:
        lines.append(f"  latency     p50 {_num(latency.p50)} ms, p95 {_num(latency.p95)} ms, "
                     f"p99 {_num(latency.p99)} ms")
    return lines


def render_runs(summaries: list[Any], path: Path | str | None = None) -> str:
    """The ``serve-ab runs`` table.

    A record file is read as it is found (edited by hand, written by another tool): a cell that
    does not hold what its column should is shown as ``?<value>`` and counted in a note below,
    and the rest of the table is drawn.
    """
    if not summaries:
        return f"no run records in {path}" if path else "no run records"
    # The app column only where a record names its app (records of older releases do not).
    with_app = any(getattr(s, "app", None) is not None for s in summaries)
    rows = [["run id", *(["app"] if with_app else []), "model", "started", "updated", "versions", "control",
             "requests", "SRM"]]
    bad: list[str] = []

    def cell(run_id: Any, column: str, value: Any, show) -> str:
        try:
            return show(value)
        except (TypeError, ValueError, OverflowError, OSError):  # OSError: time_t out of range on some platforms
            bad.append(f"run {run_id!r}, {column} = {_short(value)}")
            return f"?{_short(value)}"

    unreadable: list[str] = []
    for s in summaries:
        run = s.run_id
        row = [str(run), *([cell(run, "app", s.app, _text_cell)] if with_app else []),
               cell(run, "model", s.model, _text_cell), cell(run, "started", s.started_at_s, _when),
               cell(run, "updated", s.updated_at_s, _when)]
        if s.problem is not None:
            unreadable.append(f"run {run!r}, {s.problem}")
            row += ["?", "?", "?", "?"]
        else:
            row += [cell(run, "versions", s.versions, _versions_cell), cell(run, "control", s.control, _text_cell),
                    cell(run, "requests", s.requests, _count_cell), cell(run, "SRM", s.srm_mismatch, _srm_cell)]
        rows.append(row)
    lines = _table(rows, indent="", numeric=(7 if with_app else 6,))
    where = f" in {path}" if path else ""
    if bad:
        lines += ["", *_wrap(f"note: {len(bad)} value(s){where} are not what their column should hold "
                             "(shown as ?value), as if written by something other than serve-ab:", "  ")]
        lines += [f"  {problem}" for problem in bad]
    if unreadable:
        lines += ["", *_wrap(f"note: the summary of {len(unreadable)} record(s){where} cannot be read (versions, "
                             "control, requests and SRM shown as ?); repair or delete the record:", "  ")]
        lines += [f"  {problem}" for problem in unreadable]
    return "\n".join(lines)


def _short(value: Any, width: int = 24) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _text_cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def _versions_cell(value: Any) -> str:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(value)
    return ",".join(value) or "-"


def _count_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 0:
        raise ValueError(value)
    return f"{int(value):,}"


def _srm_cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if not isinstance(value, bool):
        raise TypeError(value)
    # Not "ok", as the report's SRM line says: a sequential test that has not flagged yet may
    # lack the units to, so its silence is no all-clear.
    return "MISMATCH" if value else "not detected"


def _table(rows: list[list[str]], indent: str = "  ", numeric: tuple[int, ...] = (1,)) -> list[str]:
    rows = [[_visible(cell) for cell in row] for row in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        out.append((indent + "  ".join(cells)).rstrip())
    return out


def _wrap(text: str, indent: str = "") -> list[str]:
    """``text`` broken at spaces into lines of at most WIDTH columns; the lines after the first
    start with ``indent`` (a word longer than a line stays whole)."""
    text = _visible(text)
    if len(text) <= WIDTH:
        return [text]
    return textwrap.wrap(text, width=WIDTH, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False)


# Control characters, invisible format characters (a right-to-left override would show
# "v2" where the bytes say otherwise, a zero-width space makes two names look alike) and the line and
# paragraph separators some terminals break lines at.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def _visible(text: str) -> str:
    """``text`` with each control or invisible character escaped as Python would write it
    ('\\n', '\\x1b', '\\u202e'): a name from a record or an older config must not break a line,
    send the terminal an escape sequence or read as another (config refuses control
    characters; records and reports from elsewhere may hold anything)."""
    if text.isprintable():
        return text
    return "".join(repr(c)[1:-1] if unicodedata.category(c) in _ESCAPED_CATEGORIES else c for c in text)


# --- formatting ----------------------------------------------------------------------------


def _value(value: Any, kind: str | None) -> str:
    if value is None:
        return "-"
    if kind == "conversion":
        return _pct(value, 2)
    if kind == "latency":
        return f"{value:.4g} ms"
    return _num(value)


def _signed(value: float, spec: str) -> str:
    """``value`` with its sign, except a value that prints as 0: '0.00', never '-0.00' or '+0.00'."""
    text = f"{value:+{spec}}"
    return text[1:] if float(text) == 0 else text


def _bound(value: Any, kind: str | None, signed: bool) -> str:
    if value is None:
        return "-"
    if kind == "conversion":
        return _signed(value * 100, ".2f") if signed else f"{value * 100:.2f}%"
    return _signed(value, ".4g") if signed else f"{value:.4g}"


def _interval(ci: Any, kind: str | None, signed: bool = True) -> str:
    """``[lo, hi]`` in the metric's units (a bound not known yet is '-'); differences are
    signed, in percentage points for rates."""
    if not ci:
        return "-"
    unit = {"conversion": " pp" if signed else "", "latency": " ms"}.get(kind or "", "")
    return f"[{_bound(ci[0], kind, signed)}, {_bound(ci[1], kind, signed)}]{unit}"


def _lift(lift: Any, ci: Any, kind: str | None) -> str:
    """A difference and its interval: ``+1.54 pp [+0.51, +2.58]``."""
    if lift is None:
        return "-"
    unit = {"conversion": " pp", "latency": " ms"}.get(kind or "", "")
    text = f"{_bound(lift, kind, True)}{unit}"
    if ci and any(b is not None for b in ci):
        text += f" [{_bound(ci[0], kind, True)}, {_bound(ci[1], kind, True)}]"
    return text


def _rel(rel: Any, ci: Any) -> str:
    if rel is None:
        return "-"
    text = f"{_signed(rel * 100, '.1f')}%"
    if ci and any(b is not None for b in ci):
        # One bound alone: Fieller's set is unbounded on the other side (the control's value
        # is not clearly away from 0).
        bounds = ["unbounded" if b is None else _signed(b * 100, ".1f") for b in ci]
        text += f" [{bounds[0]}, {bounds[1]}]"
    return text


def _conf(alpha: float) -> str:
    """The confidence of a level ``alpha``: 0.05 -> '95%', 0.01/3 -> '99.67%'."""
    return f"{(1.0 - float(alpha)) * 100:.4g}%"


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


def _when_text(t_s: Any) -> str:
    """:func:`_when`, or ``?<value>`` for a value that is not a time (a record may hold anything)."""
    try:
        return _when(t_s)
    except (TypeError, ValueError, OverflowError, OSError):
        return f"?{_short(t_s)}"


def _when(t_s: Any) -> str:
    """Local time of seconds since the epoch; raises ValueError, OverflowError or OSError for one
    that is not a time (a text, NaN, 1e20)."""
    if t_s is None:
        return "-"
    if isinstance(t_s, (str, bytes, bool)):  # float("1e9") would read a text as a time
        raise TypeError(t_s)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t_s)))
