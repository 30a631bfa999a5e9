"""The HTML view of an A/B report (``serve-ab report --html FILE``): one self-contained page.

Headline cards, warnings, the tables of ``render_table.py`` and inline SVG plots drawn with
matplotlib (imported only when a page is rendered; no pyplot, so no global state or GUI).
"""

from __future__ import annotations

import html
import io
import math
import re
from typing import Any

from serve_ab.analysis.report_model import Experiment, MetricResult, Report
from serve_ab.cli.render_table import (
    _VERDICT_TEXT, _arm_rows, _comparison_cells, _failover_text, _headline, _int, _kind, _metric_test, _metric_title,
    _num, _options, _p, _pct, _rel, _shadow_lines, _signed, _srm_earlier_text, _srm_flag, _srm_text, _units_note,
    _value, _when_text,
)

__all__ = ["render_html"]

_VERDICT_COLOR = {"better": "#1a7f37", "worse": "#cf222e", "no_difference": "#57606a", "not_enough_data": "#9a6700"}

_CSS = """
body{font:14px/1.45 -apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#1f2328;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #d0d7de;padding-bottom:.2em}
.sub{color:#57606a}.warn{background:#fff8c5;border:1px solid #d4a72c;padding:.6em 1em;border-radius:6px;margin:.5em 0}
.bad{background:#ffebe9;border-color:#cf222e}.ok{color:#1a7f37}
table{border-collapse:collapse;margin:.6em 0}td,th{padding:.3em .7em;border-bottom:1px solid #d0d7de;text-align:left}
th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}
.verdict{font-weight:600}.plot{margin:1em 0}.plot svg{max-width:100%;height:auto}
.cards{display:flex;flex-wrap:wrap;gap:.8em}.card{border:1px solid #d0d7de;border-radius:6px;padding:.6em 1em;min-width:12em}
.card b{font-size:1.3em;display:block}
"""


def render_html(report: Report) -> str:
    """One self-contained page: headline cards, warnings, plots (inline SVG) and the tables."""
    exp, srm = report.experiment, report.srm
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>serve-ab report: {esc(exp.model)}</title><style>{_CSS}</style></head><body>",
        f"<h1>A/B report: {esc(exp.model)}</h1>",
        (f"<p class='sub'>{esc(_headline(report))}<br>{esc(_options(exp))}<br>"
         + (f"{esc(units)}<br>" if (units := _units_note(report)) else "")
         + f"generated {esc(_when_text(report.generated_at_s))}</p>"),
    ]
    if srm.mismatch:
        parts.append(f"<div class='warn bad'><b>Sample ratio mismatch.</b> {esc(_srm_text(srm))}: the split is "
                     "broken, so no other figure here can be trusted.</div>")
    for warning in report.warnings:
        if srm.mismatch and warning.startswith("sample ratio mismatch"):
            continue
        parts.append(f"<div class='warn'>{esc(warning)}</div>")
    parts.append(_verdict_cards(report))

    plots = _plots(report)
    parts.append("<h2>Verdicts</h2>")
    if "lift" in plots:
        parts.append(_figure(plots["lift"], "Relative lift of each variant over the control, with confidence "
                                            "intervals; colour is the verdict"))
    for metric in report.metrics:
        parts.append(f"<h3>{esc(_metric_title(metric, exp))}</h3>")
        parts.append(f"<p class='sub'>{esc(_metric_test(metric, exp))}</p>")
        parts.append(_html_table(_arm_rows(metric, exp)))
        if metric.comparisons:
            parts.append(_html_table(_comparison_rows(metric, exp, _srm_flag(srm)), verdict_col=6,
                                     numeric=(1, 4, 5)))
        if f"metric:{metric.name}" in plots:
            parts.append(_figure(plots[f"metric:{metric.name}"], f"{metric.name} per version with "
                                                                     "confidence intervals"))
    parts.append("<h2>Latency</h2>")
    if "latency" in plots:
        # The note says the last bin holds the tail past the pooled p99.5: without it that bin's
        # bump reads as a second mode.
        note = report.plots.latency_histogram.note if report.plots.latency_histogram else ""
        parts.append(_figure(plots["latency"], f"Latency distribution per version (successful requests): {note}"))
    retried = any(v.retried for v in report.variants.values())
    parts.append(_html_table(_latency_rows(report, retried), numeric=(1, 2) if retried else (1,)))
    if retried:
        parts.append(f"<p class='sub'>{esc(_failover_text(report) or '')}</p>")
    parts.append("<h2>Traffic and sample size over time</h2>")
    parts.append(f"<p>Sample ratio check: {esc(_srm_text(srm))}</p>")
    earlier = _srm_earlier_text(srm)
    if earlier:
        parts.append(f"<p>Under earlier splits: {esc(earlier)}</p>")
    if "timeline" in plots:
        parts.append(_figure(plots["timeline"], "Cumulative requests and feedback per version"))
    else:
        parts.append("<p class='sub'>no traffic recorded yet</p>")
    shadow = report.shadow
    if shadow is not None:
        parts.append(f"<h2>Shadow: {esc(str(shadow.version))}</h2>")
        parts.append("<pre>" + esc("\n".join(_shadow_lines(shadow))) + "</pre>")
        if "shadow" in plots:
            parts.append(_figure(plots["shadow"], "Live class vs shadow class on the same requests "
                                                  "(off-diagonal cells are flips)"))
        tests = shadow.class_tests
        if tests:
            rows = [["class", "live", "shadow", "live->other", "other->shadow class", "p (adj.)", "test"]]
            rows += [[str(t.class_), _int(t.live_count), _int(t.shadow_count), _int(t.to_other),
                      _int(t.from_other), _p(t.p_adjusted), t.method] for t in tests]
            parts.append(_html_table(rows))
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def _verdict_cards(report: Report) -> str:
    cards = []
    for metric in report.metrics:
        for c in metric.comparisons:
            verdict = c.verdict
            color = _VERDICT_COLOR[verdict]
            cards.append(
                f"<div class='card'><span class='sub'>{html.escape(metric.name)}: {html.escape(c.variant)} vs "
                f"{html.escape(c.control)}</span><b style='color:{color}'>{_VERDICT_TEXT[verdict]}</b>"
                f"{html.escape(_rel(c.rel_lift, c.rel_ci))}</div>")
    return "<div class='cards'>" + "".join(cards) + "</div>" if cards else ""


def _comparison_rows(metric: MetricResult, exp: Experiment, srm_flag: str) -> list[list[str]]:
    """One row per comparison: the figures of its one estimand, the verdict's own interval."""
    rows = [["comparison", "units", "value", "abs lift [interval]", "p (fixed) / adj.", "sequential p adj.",
             "verdict", "rel lift [interval]", "guardrail", "CUPED", "power"]]
    for c in metric.comparisons:
        cells = _comparison_cells(metric, c)
        verdict = cells["verdict_short"] + (" (SRM MISMATCH)" if srm_flag == "MISMATCH" else "")
        interval = f" ({cells['interval']})" if cells["interval"] and c.abs_lift is not None else ""
        note = f" — {c.verdict_note}" if c.verdict_note else ""
        rows.append([cells["label"], cells["units"], cells["value"], cells["abs"] + interval,
                     f"{cells['p']} / {cells['p_adjusted']}", cells["p_sequential"], verdict + note, cells["rel"],
                     cells["guardrail"], cells["cuped"], cells["power"]])
    return rows


def _latency_rows(report: Report, retried: bool = False) -> list[list[str]]:
    """Per version; with ``retried``, a column of the requests each served for a version that
    failed them (counted under both: without it the requests column adds up to more than were sent)."""
    extra = ["of them retried"] if retried else []
    rows = [["version", "requests", *extra, "errors", "error rate", "p50 ms", "p95 ms", "p99 ms", "mean ms"]]
    for name, v in report.variants.items():
        if v.role == "shadow" and not v.requests:
            continue  # no live request: its copies' row below
        lat = v.latency_ms
        rows.append([f"{name} ({v.role})", _int(v.requests), *([_int(v.retried)] if retried else []),
                     _int(v.errors), _pct(v.error_rate, 2), _num(lat.p50), _num(lat.p95), _num(lat.p99),
                     _num(lat.mean)])
    shadow = report.shadow
    if shadow is not None and shadow.mirrored:
        # Its copies, timed as the live requests are: a shadow with no live traffic of its own
        # read as a row of zeros and dashes, its latency only in the shadow's section.
        lat = shadow.latency_ms
        rows.append([f"{shadow.version} (shadow copies)", _int(shadow.mirrored), *(["-"] if retried else []),
                     _int(shadow.errors), _pct(shadow.error_rate, 2), _num(lat.p50), _num(lat.p95), _num(lat.p99),
                     _num(lat.mean)])
    return rows


def _html_table(rows: list[list[str]], verdict_col: int | None = None, numeric: tuple[int, ...] = (1,)) -> str:
    esc = html.escape
    out = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in rows[0]) + "</tr>"]
    for row in rows[1:]:
        cells = []
        for i, cell in enumerate(row):
            if i == verdict_col and cell:
                verdict = next((k for k, text in _VERDICT_TEXT.items() if cell.startswith(text)), "")
                color = _VERDICT_COLOR.get(verdict, "#1f2328")
                cells.append(f"<td class='verdict' style='color:{color}'>{esc(cell)}</td>")
            else:
                cells.append(f"<td class='n'>{esc(cell)}</td>" if i in numeric else f"<td>{esc(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def _figure(svg: str, caption: str) -> str:
    return f"<figure class='plot'>{svg}<figcaption class='sub'>{html.escape(caption)}</figcaption></figure>"


def _plots(report: Report) -> dict[str, str]:
    """Inline SVGs by name; a plot without data is left out."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    out: dict[str, str] = {}
    # parse_math off: names come from the config, and one such as "cost $ per $" or "$\foo$" is
    # drawn as written rather than read (or refused) as mathtext.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "serve-ab", "font.size": 9,
                                "axes.spines.top": False, "axes.spines.right": False, "text.parse_math": False}):
        lift = _lift_plot(report, Figure)
        if lift:
            out["lift"] = lift
        for metric in report.metrics:
            if metric.kind in ("conversion", "mean"):
                svg = _arm_plot(metric, report, Figure)
                if svg:
                    out[f"metric:{metric.name}"] = svg
        latency = _latency_plot(report, Figure)
        if latency:
            out["latency"] = latency
        timeline = _timeline_plot(report, Figure)
        if timeline:
            out["timeline"] = timeline
        shadow = _shadow_plot(report, Figure)
        if shadow:
            out["shadow"] = shadow
    return {name: _scoped(svg, f"plot{i}") for i, (name, svg) in enumerate(out.items())}


_TAG = re.compile(r"<[^<>]+>")
_ID = re.compile(r'\bid="([^"]+)"')


def _scoped(svg: str, scope: str) -> str:
    """``svg`` with each element id, and each reference to one, prefixed with ``scope-``.

    Every matplotlib SVG numbers its elements from 1 (``figure_1``, ``axes_1``, ``patch_1``):
    six plots inline made one page with a hundred ids each used several times, which HTML
    forbids and which leaves ``#axes_1`` or a clip path's ``url(#...)`` to whichever plot comes
    first. Only tags are rewritten: a name drawn as text that reads ``id="x"`` stays as written.
    """
    ids = set(_ID.findall(svg))
    if not ids:
        return svg

    reference = re.compile(r'(\bid="|href="#|url\(#)([^")]+)')

    def tag(match: re.Match) -> str:
        return reference.sub(lambda m: m.group(1) + (f"{scope}-{m.group(2)}" if m.group(2) in ids else m.group(2)),
                             match.group(0))

    return _TAG.sub(tag, svg)


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    # No metadata: a date in every plot would make two renderings of one report differ.
    fig.savefig(buffer, format="svg", bbox_inches="tight",
                metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: inline SVG needs neither


def _colors(names: list[str]) -> dict[str, str]:
    """A colour per name, no two alike: a legend that gives two versions one colour tells them apart by nothing."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    names = list(dict.fromkeys(names))
    palette = ["#0969da", "#bf3989", "#1a7f37", "#9a6700", "#8250df", "#cf222e", "#57606a", "#0550ae"]
    if len(names) > len(palette):
        # tab20's twenty, then hues spread evenly: neighbours grow alike, but none is the same.
        palette = ([to_hex(c) for c in colormaps["tab20"].colors] if len(names) <= 20 else
                   [to_hex(colormaps["turbo"](i / (len(names) - 1))) for i in range(len(names))])
    return {name: palette[i] for i, name in enumerate(names)}


def _report_colors(report: Report) -> dict[str, str]:
    """Every plot's colours, from one list: a version keeps its colour from plot to plot."""
    hist = report.plots.latency_histogram
    return _colors([*report.experiment.versions, *report.variants, *(hist.counts if hist else ()),
                    *report.plots.timeline.requests_cumulative])


def _lift_plot(report: Report, Figure: Any) -> str | None:
    # One panel per metric, each with its own scale: a +300% error rate must not flatten a +2% conversion.
    panels = []
    for metric in report.metrics:
        # A comparison without a relative lift (the control at 0, e.g. no errors) keeps its row when
        # it has a verdict: a candidate that brings errors to an error-free control is the worst case.
        rows = [c for c in metric.comparisons if c.rel_lift is not None or c.verdict != "not_enough_data"]
        if rows:
            panels.append((metric, rows))
    if not panels:
        return None
    heights = [len(rows) + 0.8 for _, rows in panels]
    fig = Figure(figsize=(7.5, 0.42 * sum(heights) + 0.6))
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (metric, rows) in zip(axes, panels):
        arrow = "higher is better" if metric.direction == "increase" else "lower is better"
        open_ended = []  # (y, bound, side, color): Fieller's set is unbounded on that side
        for y, c in enumerate(reversed(rows)):
            color = _VERDICT_COLOR[c.verdict]
            if c.rel_lift is None:
                why = "no data" if c.value_control is None else "the control is 0"
                ax.annotate(f"{_VERDICT_TEXT[c.verdict]}; no relative lift ({why}): "
                            f"abs {_comparison_cells(metric, c)['abs']}", (0.01, y), xycoords=("axes fraction", "data"),
                            va="center", fontsize=8, color=color)
                continue
            ci = c.rel_ci
            if ci and None not in ci:
                ax.plot([ci[0] * 100, ci[1] * 100], [y, y], color=color, linewidth=3, alpha=0.55,
                        solid_capstyle="butt")
            elif ci and any(b is not None for b in ci):
                bound = next(b for b in ci if b is not None) * 100
                ax.plot([bound, c.rel_lift * 100], [y, y], color=color, linewidth=3, alpha=0.55,
                        solid_capstyle="butt")
                open_ended.append((y, bound, "upper" if ci[1] is None else "lower", color))
            ax.plot([c.rel_lift * 100], [y], "o", color=color)
            ax.annotate(f"{_signed(c.rel_lift * 100, '.1f')}%  {_VERDICT_TEXT[c.verdict]}",
                        (c.rel_lift * 100, y), textcoords="offset points", xytext=(0, 6), ha="center",
                        fontsize=8, color=color)
        if all(c.rel_lift is None for c in rows):
            ax.set_xticks([])  # words only: an x axis would read as a lift of 0 to 1%
        else:
            ax.axvline(0, color="#1f2328", linewidth=0.8)
        left, right = ax.get_xlim()
        for y, bound, side, color in open_ended:
            # Drawn to the panel's edge, with an arrowhead: the interval goes on past it.
            ax.annotate("", xy=(right if side == "upper" else left, y), xytext=(bound, y),
                        arrowprops={"arrowstyle": "-|>", "color": color, "alpha": 0.55, "linewidth": 3,
                                    "shrinkA": 0, "shrinkB": 0})
        ax.set_xlim(left, right)
        ax.set_ylim(-0.6, len(rows) - 0.2)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([c.variant for c in reversed(rows)])
        ax.set_title(f"{metric.name} ({arrow})", loc="left", fontsize=9)
    axes[-1].set_xlabel("relative lift over the control (%), with its confidence interval (an arrow: unbounded "
                        "on that side)")
    fig.tight_layout()
    return _svg(fig)


def _arm_plot(metric: MetricResult, report: Report, Figure: Any) -> str | None:
    arms = [(name, arm) for name, arm in metric.arms.items() if arm.value is not None]
    if not arms:
        return None
    control = report.experiment.control
    scale = 100.0 if metric.kind == "conversion" else 1.0
    colors = _report_colors(report)
    fig = Figure(figsize=(7.5, 0.5 * len(arms) + 1.0))
    ax = fig.add_subplot()
    for y, (name, arm) in enumerate(reversed(arms)):
        value, ci = arm.value * scale, arm.ci
        color = colors.get(name, "#57606a")
        if ci and None not in ci:
            # max(0, ...): a Wilson bound at a rate of 0 or 1 can sit a rounding error past the rate.
            xerr = [[max(value - ci[0] * scale, 0.0)], [max(ci[1] * scale - value, 0.0)]]
            ax.errorbar([value], [y], xerr=xerr, fmt="o",
                        color=color, capsize=4)
        else:
            ax.plot([value], [y], "o", color=color)
        # The table's words (4 significant digits for means): a cost of 9.7e-10 is not "0.00".
        ax.annotate(f"{_value(arm.value, _kind(metric))}  n={arm.n:,}", (value, y),
                    textcoords="offset points", xytext=(6, 6), fontsize=8)
    control_arm = metric.arms.get(control)
    if control_arm is not None and control_arm.value is not None:
        ax.axvline(control_arm.value * scale, color="#8c959f", linestyle="--", linewidth=0.8)
    ax.set_yticks(range(len(arms)))
    ax.set_yticklabels([f"{n} (control)" if n == control else n for n, _ in reversed(arms)])
    ax.set_xlabel(f"{metric.name} ({'%' if scale == 100 else metric.value_is})")
    return _svg(fig)


def _latency_plot(report: Report, Figure: Any) -> str | None:
    hist = report.plots.latency_histogram
    if hist is None or not any(sum(c) for c in hist.counts.values()):
        return None
    edges = hist.edges_ms
    names = [n for n, c in hist.counts.items() if sum(c)]
    colors = _report_colors(report)
    medians = {name: v.latency_ms.p50 for name, v in report.variants.items()}
    if report.shadow is not None:  # the histogram's label for the shadow's own answers
        medians[f"{report.shadow.version} (shadow)"] = report.shadow.latency_ms.p50
    fig = Figure(figsize=(7.5, 3.4))
    ax = fig.add_subplot()
    for name in names:
        counts = hist.counts[name]
        total = sum(counts)
        density = [c / total for c in counts]
        ax.stairs(density, edges, label=name, color=colors[name], linewidth=1.6)
        p50 = medians.get(name)
        if p50 is not None:
            ax.axvline(p50, color=colors[name], linestyle=":", linewidth=1)
    ax.set_xlabel("latency (ms); dotted: median")
    ax.set_ylabel("share of requests")
    ax.legend(frameon=False)
    return _svg(fig)


def _timeline_plot(report: Report, Figure: Any) -> str | None:
    timeline = report.plots.timeline
    t_s = timeline.t_s
    if not t_s:
        return None
    start = report.started_at_s or t_s[0]
    minutes = [0.0] + [(t - start) / 60.0 for t in t_s]  # every count starts at 0
    requests = {k: [0, *v] for k, v in timeline.requests_cumulative.items()}
    feedback = {k: [0, *v] for k, v in timeline.feedback_cumulative.items()}
    colors = _report_colors(report)
    weights = report.experiment.weights_pct_now
    has_feedback = any(series[-1] for series in feedback.values())
    fig = Figure(figsize=(7.5, 3.0 * (2 if has_feedback else 1) + 0.3))
    axes = fig.subplots(2 if has_feedback else 1, 2, squeeze=False)
    # A version weighted now but never served stays in: its flat 0 beside its weight is the finding.
    served = [n for n, series in requests.items() if series[-1] or weights.get(n)]
    for name in served:
        axes[0][0].step(minutes, requests[name], where="post", label=name, color=colors[name])
    axes[0][0].set_title("requests (cumulative)", loc="left", fontsize=9)
    axes[0][0].legend(frameon=False)
    # Each bucket's own share, not the running one: after a canary's 5% -> 20% -> 50% the running
    # share sits far below the weight now, which looks like a broken split where there is none.
    in_bucket = {n: [b - a for a, b in zip(series, series[1:])] for n, series in requests.items()}
    totals = [sum(counts) for counts in zip(*in_bucket.values())]
    bucket_min = timeline.bucket_s / 60.0
    starts, end = [], 0.0
    for t in minutes[1:]:  # only the last bucket can be cut short (by now): it starts where the one before ended
        starts.append(max(t - bucket_min, end))
        end = t
    for name in served:
        x, y, end = [], [], 0.0
        for start, t, r, total in zip(starts, minutes[1:], in_bucket[name], totals):
            if start > end + 1e-9:  # minutes without traffic: a gap in the line, not the next bucket's share
                x.append(end)
                y.append(math.nan)
            x.append(start)
            y.append(100.0 * r / total if total else math.nan)
            end = t
        axes[0][1].step([*x, end], [*y, y[-1]], where="post", label=name, color=colors[name])
        if name in weights:
            axes[0][1].axhline(weights[name], color=colors[name], linestyle="--", linewidth=0.8)
    axes[0][1].set_title(f"share of each {timeline.bucket_s:g} s's requests (%); dashed: weight now", loc="left",
                         fontsize=9)
    axes[0][1].set_ylim(0, 100)
    if has_feedback:
        # The timeline counts reports of every feedback metric together: with three metrics a
        # request brings up to three, so neither panel is one metric's sample size.
        count = sum(1 for m in report.metrics if m.source == "feedback")
        every = f", {count} metrics together" if count > 1 else ""
        fed = [n for n, series in feedback.items() if series[-1]]
        for name in fed:
            axes[1][0].step(minutes, feedback[name], where="post", label=name, color=colors[name])
        axes[1][0].set_title(f"feedback reports (cumulative{every})", loc="left", fontsize=9)
        rates = {n: [f / r if r else None for f, r in zip(feedback[n], requests[n])] for n in fed}
        for name in fed:
            axes[1][1].step(minutes[1:], rates[name][1:], where="post", color=colors[name])
        axes[1][1].set_title(f"feedback reports per request (cumulative{every})", loc="left", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("minutes since start")
    fig.tight_layout()
    return _svg(fig)


def _shadow_plot(report: Report, Figure: Any) -> str | None:
    if report.shadow is None:
        return None
    classes, counts = report.shadow.confusion.classes, report.shadow.confusion.counts
    if not classes or not any(any(row) for row in counts):
        return None
    fig = Figure(figsize=(4.8, 4.2))
    ax = fig.add_subplot()
    # Log colour scale: the diagonal dwarfs the flips that matter.
    shown = [[math.log10(1 + n) for n in row] for row in counts]
    image = ax.imshow(shown, cmap="Blues")
    darkest = max(max(row) for row in shown)
    for i, row in enumerate(counts):
        for j, n in enumerate(row):
            if n:
                # White on the dark half of the scale only: a shadow that flips most answers leaves
                # its diagonal pale, where white counts could not be read.
                dark = shown[i][j] > darkest / 2
                ax.text(j, i, f"{n}", ha="center", va="center", fontsize=7,
                        color="white" if dark else ("#1f2328" if i == j else "#cf222e"))
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels([str(c) for c in classes])
    ax.set_yticks(range(len(classes)))
    ax.set_yticklabels([str(c) for c in classes])
    ax.set_xlabel("shadow class")
    ax.set_ylabel("live class")
    fig.colorbar(image, ax=ax, label="log10(1 + pairs)")
    return _svg(fig)
