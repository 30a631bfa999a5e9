"""``serve-ab report`` and ``serve-ab runs``: the A/B report of a running app or a stored run.

Wiring, for ``serve_ab/cli/command.py``::

    subparsers = parser.add_subparsers(dest="command", required=True)
    report_cli.add_parsers(subparsers)
    args = parser.parse_args()
    return args.func(args)          # exit code

Examples::

    serve-ab report                               # GET $SERVE_AB_URL/experiment/report, as tables
    serve-ab report --html report.html            # the same, plus a page with plots
    serve-ab report --json --url http://10.0.0.5:8000
    serve-ab runs --records .serve-ab/runs.sqlite
    serve-ab report --from-record digits-20260101-120000 --html final.html

Exit codes, as the rollout commands: 0 ok; 1 the app answered with an error or could not be
reached, or the record is missing; 2 usage error.

Nothing heavy is imported until a command runs: matplotlib only for ``--html``.
"""

from __future__ import annotations

import argparse
import functools
import html
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from serve_ab.cli import rollout as cli_rollout

__all__ = ["REPORT_PATH", "add_parsers", "render_html", "render_runs", "render_table", "run_report", "run_runs"]

REPORT_PATH = "/experiment/report"
DEFAULT_RECORDS = ".serve-ab/runs.sqlite"  # analysis.records.path's default, relative to serve run's cwd

_VERDICT_TEXT = {"better": "BETTER", "worse": "WORSE", "no_difference": "no difference",
                 "not_enough_data": "not enough data"}
_VERDICT_COLOR = {"better": "#1a7f37", "worse": "#cf222e", "no_difference": "#57606a", "not_enough_data": "#9a6700"}


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``report`` and ``runs``; each sets ``func`` (``args -> exit code``)."""
    report = subparsers.add_parser(
        "report", help="the A/B report: lifts, p-values, verdicts, SRM, power (tables, --json or --html)",
        description="Fetch the running app's A/B report (GET /experiment/report) or read a stored run "
        "record, and print a table per metric; --json prints the report as JSON, --html FILE also writes "
        "a self-contained page with plots.",
    )
    report.add_argument("--url", type=cli_rollout._url, default=None,
                        help=f"the app's base URL (default: ${cli_rollout.URL_ENV} or {cli_rollout.DEFAULT_URL})")
    report.add_argument("--timeout-s", type=cli_rollout._timeout_s, default=cli_rollout.DEFAULT_TIMEOUT_S,
                        metavar="SECONDS",
                        help=f"seconds to wait for the app (default: {cli_rollout.DEFAULT_TIMEOUT_S:g})")
    report.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    report.add_argument("--html", type=Path, default=None, metavar="FILE",
                        help="also write the report with plots to FILE (one self-contained HTML page)")
    report.add_argument("--from-record", default=None, metavar="RUN_ID",
                        help="render a stored run record instead of asking a running app (see serve-ab runs)")
    report.add_argument("--records", type=Path, default=None, metavar="PATH",
                        help=f"run record file for --from-record (default: {DEFAULT_RECORDS})")
    report.set_defaults(func=functools.partial(run_report, parser=report))

    runs = subparsers.add_parser(
        "runs", help="list stored run records (configuration and final results of each experiment)",
        description="List the run records in the SQLite file experiments write (analysis.records.path).",
    )
    runs.add_argument("--records", type=Path, default=Path(DEFAULT_RECORDS), metavar="PATH",
                      help=f"run record file (default: {DEFAULT_RECORDS})")
    runs.add_argument("--json", action="store_true", help="print the list as JSON")
    runs.set_defaults(func=run_runs)


def run_report(args: argparse.Namespace, *, parser: argparse.ArgumentParser | None = None,
               out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        if args.from_record is not None and args.url is not None:
            raise ValueError("argument --from-record: renders a stored record; it cannot be combined with --url")
        if args.from_record is None and args.records is not None:
            raise ValueError("argument --records: only applies with --from-record RUN_ID")
        url = None if args.from_record is not None else (args.url or cli_rollout._env_url())
    except ValueError as e:
        if parser is None:
            raise
        parser.error(str(e))  # exits with status 2
    if args.from_record is not None:
        report = _report_from_record(args.from_record, args.records or Path(DEFAULT_RECORDS), err)
    else:
        report = _report_from_app(url, args.timeout_s, err)
    if report is None:
        return 1
    if args.html is not None:
        try:
            args.html.write_text(render_html(report), encoding="utf-8")
        except OSError as e:
            print(f"error: cannot write {args.html}: {e.strerror or e}", file=err)
            return 1
        print(f"wrote {args.html}", file=err)
    print(json.dumps(report, indent=2) if args.json else render_table(report), file=out)
    return 0


def run_runs(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    from serve_ab.store.runs import RunRecorder

    try:
        summaries = RunRecorder(args.records).list()
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=err)
        return 1
    except Exception as e:  # noqa: BLE001 - sqlite3.DatabaseError: not a database, locked, ...
        print(f"error: cannot read run records at {args.records}: {type(e).__name__}: {e}", file=err)
        return 1
    if args.json:
        from dataclasses import asdict

        print(json.dumps([asdict(s) for s in summaries], indent=2), file=out)
    else:
        print(render_runs(summaries, args.records), file=out)
    return 0


def _report_from_app(url: str, timeout_s: float, err: TextIO) -> dict[str, Any] | None:
    try:
        return cli_rollout._send(url, "GET", REPORT_PATH, body=None, token=None, timeout_s=timeout_s, params=None)
    except cli_rollout._Failure as failure:
        for line in failure.lines:
            print(line, file=err)
        if failure.lines[0].startswith("error: 404"):
            print(f"hint: {url} has no {REPORT_PATH}: is it a serve-ab app, and one recent enough to report? "
                  "(GET /rollout/status answers on every serve-ab app)", file=err)
        return None


def _report_from_record(run_id: str, path: Path, err: TextIO) -> dict[str, Any] | None:
    from serve_ab.store.runs import RunRecorder

    try:
        return RunRecorder(path).load(run_id).report
    except KeyError as e:
        print(f"error: {e.args[0]}", file=err)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=err)
    except Exception as e:  # noqa: BLE001 - sqlite3.DatabaseError and the like
        print(f"error: cannot read run records at {path}: {type(e).__name__}: {e}", file=err)
    return None


# --- terminal ------------------------------------------------------------------------------


def render_table(report: dict[str, Any]) -> str:
    """The terminal view: a header, warnings, one table per metric, then the shadow comparison."""
    exp = report.get("experiment") or {}
    srm = report.get("srm") or {}
    lines = [_headline(report)]
    for warning in report.get("warnings") or []:
        lines.append(f"WARNING: {warning}")
    lines.append(f"SRM: {_srm_text(srm)}")
    srm_flag = _srm_flag(srm)
    for metric in report.get("metrics") or []:
        lines += ["", _metric_title(metric, exp)]
        lines += _table(_metric_rows(metric, exp, srm_flag))
        note = _power_plan_note(metric)
        if note:
            lines.append(f"  {note}")
    shadow = report.get("shadow")
    if shadow:
        lines += ["", *_shadow_lines(shadow)]
    return "\n".join(lines)


def _headline(report: dict[str, Any]) -> str:
    exp = report.get("experiment") or {}
    variants = ", ".join(exp.get("variants") or []) or "none"
    elapsed = cli_rollout._duration(report.get("elapsed_s") or 0.0)
    options = [f"alpha {exp.get('alpha')}", f"correction {exp.get('correction')}",
               "sequential" if exp.get("sequential") else "fixed horizon",
               f"MDE {_pct(exp.get('mde_relative'), 0)}"]
    return (f"{exp.get('model', '?')}: control {exp.get('control', '?')} vs {variants}, running {elapsed} "
            f"({', '.join(options)})")


def _srm_text(srm: dict[str, Any]) -> str:
    if not srm:
        return "-"
    observed = ", ".join(f"{k} {v:,}" for k, v in (srm.get("observed") or {}).items())
    if not srm.get("applicable", True):
        return f"not checked: {srm.get('reason')}"
    if srm.get("p_value") is None:
        return f"no traffic yet ({srm.get('basis')})"
    state = "MISMATCH" if srm.get("mismatch") else "ok"
    return (f"{state} ({srm.get('basis')}: {observed}; weights {_weights_text(srm.get('weights_pct'))}; "
            f"chi-square p = {_p(srm.get('p_value'))}, flagged below {srm.get('threshold_p')})")


def _srm_flag(srm: dict[str, Any]) -> str:
    if not srm or not srm.get("applicable", True) or srm.get("p_value") is None:
        return "n/a"
    return "MISMATCH" if srm.get("mismatch") else "ok"


def _metric_title(metric: dict[str, Any], exp: dict[str, Any]) -> str:
    better = "higher" if metric.get("direction") == "increase" else "lower"
    test = {"z_two_proportions": "two-proportion z-test", "welch_t": "Welch's t-test",
            "mann_whitney_u": "Mann-Whitney U"}.get(metric.get("test"), metric.get("test"))
    value = {"rate": "rate", "mean": "mean", "median": "median"}.get(metric.get("value_is"), "value")
    basis = "sequential (always valid)" if exp.get("sequential") and metric.get("kind") != "latency" \
        else "fixed horizon"
    return f"{metric.get('name')}  ({value}, {better} is better; {test}; verdict: {basis})"


def _metric_rows(metric: dict[str, Any], exp: dict[str, Any], srm_flag: str) -> list[list[str]]:
    kind = metric.get("kind")
    confidence = f"{1 - float(exp.get('alpha') or 0.05):.0%}"
    header = ["variant", "n", metric.get("value_is") or "value", f"lift [{confidence} CI]",
              f"rel lift [{confidence} CI]", "p (adj.)", "p (always valid)", "verdict", "SRM", "power / needed"]
    rows = [header]
    control = exp.get("control")
    arms = metric.get("arms") or {}
    if control in arms:
        arm = arms[control]
        rows.append([f"{control} (control)", _int(arm.get("n")), _value(arm.get("value"), kind),
                     "", "", "", "", "", srm_flag, ""])
    for c in metric.get("comparisons") or []:
        seq = c.get("sequential")
        rows.append([
            c["variant"], _int(c.get("n_variant")), _value(c.get("value_variant"), kind),
            _lift(c.get("abs_lift"), c.get("abs_ci"), kind),
            _rel(c.get("rel_lift"), c.get("rel_ci")),
            _p(c.get("p_adjusted")),
            _p(seq.get("p_adjusted")) if seq else "-",
            _VERDICT_TEXT.get(c.get("verdict"), str(c.get("verdict"))),
            srm_flag,
            _power_text(c),
        ])
    return rows


def _power_text(c: dict[str, Any]) -> str:
    p = c.get("power")
    if not p:
        return "-"
    needed = p.get("samples_needed") or {}
    more = max(needed.values()) if needed else 0
    tail = "enough samples" if more == 0 else f"{more:,} more per arm"
    return f"{_pct(p.get('achieved'), 0)} / {tail}"


def _power_plan_note(metric: dict[str, Any]) -> str | None:
    plan = metric.get("power_plan")
    if plan:
        return (f"power: {plan['required_per_arm']:,} per arm to detect {_pct(plan['mde_relative'], 1)} "
                f"(abs {_num(plan['mde_abs'])}) at power {plan['target_power']:g}; {plan['method']}")
    notes = {c.get("power_note") for c in metric.get("comparisons") or [] if c.get("power_note")}
    return "; ".join(sorted(notes)) or None


def _shadow_lines(shadow: dict[str, Any]) -> list[str]:
    agreement = shadow.get("agreement") or {}
    conf = f"{float(agreement.get('confidence') or 0.95):.0%}"
    lines = [f"shadow {shadow.get('version')}: {shadow.get('mirrored', 0):,} mirrored, "
             f"{shadow.get('pairs', 0):,} paired, {shadow.get('errors', 0):,} errors"
             + (f" ({_pct(shadow.get('error_rate'), 2)})" if shadow.get("error_rate") is not None else "")]
    if agreement.get("rate") is not None:
        lo, hi = agreement.get("ci") or (None, None)
        lines.append(f"  agreement   {_pct(agreement['rate'], 2)} [{conf} CI {_pct(lo, 2)}, {_pct(hi, 2)}]")
    flips = shadow.get("flips") or {}
    if flips.get("top"):
        top = ", ".join(f"{f['live']}->{f['shadow']} x{f['n']}" for f in flips["top"][:5])
        lines.append(f"  flips       {flips.get('total', 0):,} ({_pct(flips.get('rate'), 2)}); most: {top}")
    significant = [t for t in shadow.get("class_tests") or [] if t.get("significant")]
    if shadow.get("class_tests"):
        if significant:
            parts = [f"class {t['class']}: live {t['live_count']:,} -> shadow {t['shadow_count']:,} "
                     f"(p {_p(t['p_adjusted'])})" for t in significant]
            lines.append("  classes     shifted: " + "; ".join(parts))
        else:
            lines.append("  classes     no class predicted significantly more or less often (McNemar per class)")
    score = shadow.get("score_diff") or {}
    if score.get("mean") is not None:
        ci = score.get("ci")
        ci_text = f" [{conf} CI {_num(ci[0])}, {_num(ci[1])}]" if ci else ""
        lines.append(f"  score diff  mean {_num(score['mean'])}{ci_text}, p {_p(score.get('p_value'))} "
                     f"(shadow minus live, n {score['n']:,})")
    drift = shadow.get("drift")
    if drift:
        lines.append(f"  drift       KL {_num(drift['kl'])}, PSI {_num(drift['psi'])}, JS {_num(drift['js'])}")
    latency = shadow.get("latency_ms") or {}
    if latency.get("p50") is not None:
        lines.append(f"  latency     p50 {_num(latency['p50'])} ms, p95 {_num(latency['p95'])} ms, "
                     f"p99 {_num(latency['p99'])} ms")
    return lines


def render_runs(summaries: list[Any], path: Path | str | None = None) -> str:
    """The ``serve-ab runs`` table."""
    if not summaries:
        return f"no run records in {path}" if path else "no run records"
    rows = [["run id", "model", "started", "updated", "versions", "control", "requests", "SRM"]]
    for s in summaries:
        srm = "n/a" if s.srm_mismatch is None else ("MISMATCH" if s.srm_mismatch else "ok")
        rows.append([s.run_id, s.model or "-", _when(s.started_at_s), _when(s.updated_at_s),
                     ",".join(s.versions), s.control or "-", f"{s.requests:,}", srm])
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


# --- HTML ----------------------------------------------------------------------------------


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


def render_html(report: dict[str, Any]) -> str:
    """One self-contained page: headline cards, warnings, plots (inline SVG) and the tables."""
    exp = report.get("experiment") or {}
    srm = report.get("srm") or {}
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>serve-ab report: {esc(str(exp.get('model', '')))}</title><style>{_CSS}</style></head><body>",
        f"<h1>A/B report: {esc(str(exp.get('model', '?')))}</h1>",
        f"<p class='sub'>{esc(_headline(report))}<br>generated {esc(_when(report.get('generated_at_s')))}</p>",
    ]
    if srm.get("mismatch"):
        parts.append(f"<div class='warn bad'><b>Sample ratio mismatch.</b> {esc(_srm_text(srm))}: the split is "
                     "broken, so no other figure here can be trusted.</div>")
    for warning in report.get("warnings") or []:
        if srm.get("mismatch") and warning.startswith("sample ratio mismatch"):
            continue
        parts.append(f"<div class='warn'>{esc(warning)}</div>")
    parts.append(_verdict_cards(report))

    plots = _plots(report)
    parts.append("<h2>Verdicts</h2>")
    if "lift" in plots:
        parts.append(_figure(plots["lift"], "Relative lift of each variant over the control, with confidence "
                                            "intervals; colour is the verdict"))
    for metric in report.get("metrics") or []:
        parts.append(f"<h3>{esc(_metric_title(metric, exp))}</h3>")
        parts.append(_html_table(_metric_rows(metric, exp, _srm_flag(srm)), verdict_col=7))
        note = _power_plan_note(metric)
        if note:
            parts.append(f"<p class='sub'>{esc(note)}</p>")
        if f"metric:{metric['name']}" in plots:
            parts.append(_figure(plots[f"metric:{metric['name']}"], f"{metric['name']} per version with "
                                                                     "confidence intervals"))
    parts.append("<h2>Latency</h2>")
    if "latency" in plots:
        parts.append(_figure(plots["latency"], "Latency distribution per version (successful requests, sampled)"))
    parts.append(_html_table(_latency_rows(report)))
    parts.append("<h2>Traffic and sample size over time</h2>")
    parts.append(f"<p>Sample ratio check: {esc(_srm_text(srm))}</p>")
    if "timeline" in plots:
        parts.append(_figure(plots["timeline"], "Cumulative requests and feedback per version"))
    else:
        parts.append("<p class='sub'>no traffic recorded yet</p>")
    shadow = report.get("shadow")
    if shadow:
        parts.append(f"<h2>Shadow: {esc(str(shadow.get('version')))}</h2>")
        parts.append("<pre>" + esc("\n".join(_shadow_lines(shadow)[1:])) + "</pre>")
        if "shadow" in plots:
            parts.append(_figure(plots["shadow"], "Live class vs shadow class on the same requests "
                                                  "(off-diagonal cells are flips)"))
        tests = shadow.get("class_tests") or []
        if tests:
            rows = [["class", "live", "shadow", "live->other", "other->shadow class", "p (adj.)", "test"]]
            rows += [[str(t["class"]), _int(t["live_count"]), _int(t["shadow_count"]), _int(t["to_other"]),
                      _int(t["from_other"]), _p(t["p_adjusted"]), t["method"]] for t in tests]
            parts.append(_html_table(rows))
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def _verdict_cards(report: dict[str, Any]) -> str:
    cards = []
    for metric in report.get("metrics") or []:
        for c in metric.get("comparisons") or []:
            verdict = c.get("verdict") or "not_enough_data"
            color = _VERDICT_COLOR.get(verdict, "#57606a")
            cards.append(
                f"<div class='card'><span class='sub'>{html.escape(metric['name'])}: {html.escape(c['variant'])} vs "
                f"{html.escape(c['control'])}</span><b style='color:{color}'>{_VERDICT_TEXT.get(verdict, verdict)}</b>"
                f"{html.escape(_rel(c.get('rel_lift'), c.get('rel_ci')))}</div>")
    return "<div class='cards'>" + "".join(cards) + "</div>" if cards else ""


def _latency_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = [["version", "requests", "errors", "error rate", "p50 ms", "p95 ms", "p99 ms", "mean ms"]]
    for name, v in (report.get("variants") or {}).items():
        lat = v.get("latency_ms") or {}
        rows.append([f"{name} ({v.get('role')})", _int(v.get("requests")), _int(v.get("errors")),
                     _pct(v.get("error_rate"), 2), _num(lat.get("p50")), _num(lat.get("p95")), _num(lat.get("p99")),
                     _num(lat.get("mean"))])
    return rows


def _html_table(rows: list[list[str]], verdict_col: int | None = None) -> str:
    esc = html.escape
    out = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in rows[0]) + "</tr>"]
    reverse = {v: k for k, v in _VERDICT_TEXT.items()}
    for row in rows[1:]:
        cells = []
        for i, cell in enumerate(row):
            if i == verdict_col and cell:
                color = _VERDICT_COLOR.get(reverse.get(cell, ""), "#1f2328")
                cells.append(f"<td class='verdict' style='color:{color}'>{esc(cell)}</td>")
            else:
                cells.append(f"<td class='n'>{esc(cell)}</td>" if i == 1 else f"<td>{esc(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def _figure(svg: str, caption: str) -> str:
    return f"<figure class='plot'>{svg}<figcaption class='sub'>{html.escape(caption)}</figcaption></figure>"


def _plots(report: dict[str, Any]) -> dict[str, str]:
    """Inline SVGs by name; a plot without data is left out."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    out: dict[str, str] = {}
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "serve-ab", "font.size": 9,
                                "axes.spines.top": False, "axes.spines.right": False}):
        lift = _lift_plot(report, Figure)
        if lift:
            out["lift"] = lift
        for metric in report.get("metrics") or []:
            if metric.get("kind") in ("conversion", "mean"):
                svg = _arm_plot(metric, report, Figure)
                if svg:
                    out[f"metric:{metric['name']}"] = svg
        latency = _latency_plot(report, Figure)
        if latency:
            out["latency"] = latency
        timeline = _timeline_plot(report, Figure)
        if timeline:
            out["timeline"] = timeline
        shadow = _shadow_plot(report, Figure)
        if shadow:
            out["shadow"] = shadow
    return out


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    # No metadata: a date in every plot would make two renderings of one report differ.
    fig.savefig(buffer, format="svg", bbox_inches="tight",
                metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: inline SVG needs neither


def _colors(names: list[str]) -> dict[str, str]:
    palette = ["#0969da", "#bf3989", "#1a7f37", "#9a6700", "#8250df", "#cf222e", "#57606a", "#0550ae"]
    return {name: palette[i % len(palette)] for i, name in enumerate(dict.fromkeys(names))}


def _lift_plot(report: dict[str, Any], Figure: Any) -> str | None:
    # One panel per metric, each with its own scale: a +300% error rate must not flatten a +2% conversion.
    panels = []
    for metric in report.get("metrics") or []:
        rows = [c for c in metric.get("comparisons") or [] if c.get("rel_lift") is not None]
        if rows:
            panels.append((metric, rows))
    if not panels:
        return None
    heights = [len(rows) + 0.8 for _, rows in panels]
    fig = Figure(figsize=(7.5, 0.42 * sum(heights) + 0.6))
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (metric, rows) in zip(axes, panels):
        arrow = "higher is better" if metric.get("direction") == "increase" else "lower is better"
        for y, c in enumerate(reversed(rows)):
            color = _VERDICT_COLOR.get(c.get("verdict"), "#57606a")
            ci = c.get("rel_ci")
            if ci and None not in ci:
                ax.plot([ci[0] * 100, ci[1] * 100], [y, y], color=color, linewidth=3, alpha=0.55,
                        solid_capstyle="butt")
            ax.plot([c["rel_lift"] * 100], [y], "o", color=color)
            ax.annotate(f"{c['rel_lift'] * 100:+.1f}%  {_VERDICT_TEXT.get(c.get('verdict'), '')}",
                        (c["rel_lift"] * 100, y), textcoords="offset points", xytext=(0, 6), ha="center",
                        fontsize=8, color=color)
        ax.axvline(0, color="#1f2328", linewidth=0.8)
        ax.set_ylim(-0.6, len(rows) - 0.2)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([c["variant"] for c in reversed(rows)])
        ax.set_title(f"{metric['name']} ({arrow})", loc="left", fontsize=9)
    axes[-1].set_xlabel("relative lift over the control (%), with its confidence interval")
    fig.tight_layout()
    return _svg(fig)


def _arm_plot(metric: dict[str, Any], report: dict[str, Any], Figure: Any) -> str | None:
    arms = [(name, arm) for name, arm in (metric.get("arms") or {}).items() if arm.get("value") is not None]
    if not arms:
        return None
    control = (report.get("experiment") or {}).get("control")
    scale = 100.0 if metric.get("kind") == "conversion" else 1.0
    colors = _colors((report.get("experiment") or {}).get("versions") or [name for name, _ in arms])
    fig = Figure(figsize=(7.5, 0.5 * len(arms) + 1.0))
    ax = fig.add_subplot()
    for y, (name, arm) in enumerate(reversed(arms)):
        value, ci = arm["value"] * scale, arm.get("ci")
        color = colors.get(name, "#57606a")
        if ci and None not in ci:
            # max(0, ...): a Wilson bound at a rate of 0 or 1 can sit a rounding error past the rate.
            xerr = [[max(value - ci[0] * scale, 0.0)], [max(ci[1] * scale - value, 0.0)]]
            ax.errorbar([value], [y], xerr=xerr, fmt="o",
                        color=color, capsize=4)
        else:
            ax.plot([value], [y], "o", color=color)
        ax.annotate(f"{value:.2f}{'%' if scale == 100 else ''}  n={arm.get('n', 0):,}", (value, y),
                    textcoords="offset points", xytext=(6, 6), fontsize=8)
    if control is not None and (metric.get("arms") or {}).get(control, {}).get("value") is not None:
        ax.axvline(metric["arms"][control]["value"] * scale, color="#8c959f", linestyle="--", linewidth=0.8)
    ax.set_yticks(range(len(arms)))
    ax.set_yticklabels([f"{n} (control)" if n == control else n for n, _ in reversed(arms)])
    ax.set_xlabel(f"{metric['name']} ({'%' if scale == 100 else metric.get('value_is', 'value')})")
    return _svg(fig)


def _latency_plot(report: dict[str, Any], Figure: Any) -> str | None:
    hist = (report.get("plots") or {}).get("latency_histogram")
    if not hist or not any(sum(c) for c in hist["counts"].values()):
        return None
    edges = hist["edges_ms"]
    names = [n for n, c in hist["counts"].items() if sum(c)]
    colors = _colors([*((report.get("experiment") or {}).get("versions") or []), *hist["counts"]])
    variants = report.get("variants") or {}
    fig = Figure(figsize=(7.5, 3.4))
    ax = fig.add_subplot()
    for name in names:
        counts = hist["counts"][name]
        total = sum(counts)
        density = [c / total for c in counts]
        ax.stairs(density, edges, label=name, color=colors[name], linewidth=1.6)
        p50 = ((variants.get(name) or {}).get("latency_ms") or {}).get("p50")
        if p50 is not None:
            ax.axvline(p50, color=colors[name], linestyle=":", linewidth=1)
    ax.set_xlabel("latency (ms); dotted: median")
    ax.set_ylabel("share of requests")
    ax.legend(frameon=False)
    return _svg(fig)


def _timeline_plot(report: dict[str, Any], Figure: Any) -> str | None:
    timeline = (report.get("plots") or {}).get("timeline") or {}
    t_s = timeline.get("t_s") or []
    if not t_s:
        return None
    start = report.get("started_at_s") or t_s[0]
    minutes = [0.0] + [(t - start) / 60.0 for t in t_s]  # every count starts at 0
    requests = {k: [0, *v] for k, v in (timeline.get("requests_cumulative") or {}).items()}
    feedback = {k: [0, *v] for k, v in (timeline.get("feedback_cumulative") or {}).items()}
    colors = _colors(list(requests))
    weights = (report.get("experiment") or {}).get("weights_pct_now") or {}
    has_feedback = any(series[-1] for series in feedback.values())
    fig = Figure(figsize=(7.5, 3.0 * (2 if has_feedback else 1) + 0.3))
    axes = fig.subplots(2 if has_feedback else 1, 2, squeeze=False)
    served = [n for n, series in requests.items() if series[-1]]
    for name in served:
        axes[0][0].step(minutes, requests[name], where="post", label=name, color=colors[name])
    axes[0][0].set_title("requests (cumulative)", loc="left", fontsize=9)
    axes[0][0].legend(frameon=False)
    totals = [sum(requests[n][i] for n in requests) for i in range(len(minutes))]
    for name in served:
        share = [100.0 * r / t if t else None for r, t in zip(requests[name], totals)]
        axes[0][1].step(minutes[1:], share[1:], where="post", label=name, color=colors[name])
        if name in weights:
            axes[0][1].axhline(weights[name], color=colors[name], linestyle="--", linewidth=0.8)
    axes[0][1].set_title("share of requests (%); dashed: weight", loc="left", fontsize=9)
    axes[0][1].set_ylim(0, 100)
    if has_feedback:
        fed = [n for n, series in feedback.items() if series[-1]]
        for name in fed:
            axes[1][0].step(minutes, feedback[name], where="post", label=name, color=colors[name])
        axes[1][0].set_title("feedback = sample size (cumulative)", loc="left", fontsize=9)
        rates = {n: [f / r if r else None for f, r in zip(feedback[n], requests[n])] for n in fed}
        for name in fed:
            axes[1][1].step(minutes[1:], rates[name][1:], where="post", color=colors[name])
        axes[1][1].set_title("feedback per request", loc="left", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("minutes since start")
    fig.tight_layout()
    return _svg(fig)


def _shadow_plot(report: dict[str, Any], Figure: Any) -> str | None:
    confusion = ((report.get("shadow") or {}).get("confusion")) or {}
    classes, counts = confusion.get("classes") or [], confusion.get("counts") or []
    if not classes or not any(any(row) for row in counts):
        return None
    fig = Figure(figsize=(4.8, 4.2))
    ax = fig.add_subplot()
    # Log colour scale: the diagonal dwarfs the flips that matter.
    shown = [[math.log10(1 + n) for n in row] for row in counts]
    image = ax.imshow(shown, cmap="Blues")
    for i, row in enumerate(counts):
        for j, n in enumerate(row):
            if n:
                ax.text(j, i, f"{n}", ha="center", va="center", fontsize=7,
                        color="white" if i == j else ("#cf222e" if n else "#1f2328"))
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels([str(c) for c in classes])
    ax.set_yticks(range(len(classes)))
    ax.set_yticklabels([str(c) for c in classes])
    ax.set_xlabel("shadow class")
    ax.set_ylabel("live class")
    fig.colorbar(image, ax=ax, label="log10(1 + pairs)")
    return _svg(fig)
