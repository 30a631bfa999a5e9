"""``serve-ab report`` and ``serve-ab runs``: rendering, and the commands against a fake app."""

from __future__ import annotations

import argparse
import json
import math
import re
import socket

import pytest
import yaml

import serve_ab.cli
from serve_ab.analysis.report_model import REPORT_SCHEMA, CupedFigures, Report, read_report
from serve_ab.cli import command as cli, render_html as render_html_module, report as report_cli
from serve_ab.cli.render_html import render_html
from serve_ab.cli import render_table as render_table_module
from serve_ab.cli.render_table import WIDTH, render_table
from serve_ab.store.runs import RunRecorder
from tests.support.fake_http import FakeApp
from tests.unit.analysis.test_report import Sim, make_cfg
from tests.unit.cli.control_api import closed_port


@pytest.fixture(scope="module")
def report():
    cfg = make_cfg()
    sim = Sim(cfg, seed=7).run(
        3000, error_rate={"v1": 0.01, "v2": 0.03}, latency_scale={"v2": 1.1}, correct={"v1": 0.9, "v2": 0.94},
        revenue={"v1": 10.0, "v2": 10.0}, cost={"v1": 2.0, "v2": 2.0}, shadow_share=0.2, flip=0.08)
    return sim.report()[0]


@pytest.fixture(scope="module")
def skewed_report():
    cfg = make_cfg(shadow=None)
    # The routers split 56/44 while the experiment (and its record) says 50/50: a broken split.
    return Sim(cfg, seed=4, users=20000).run(4000, route={"v1": 56, "v2": 44, "v3": 0},
                                             correct={"v1": 0.9, "v2": 0.9}).report()[0]


@pytest.fixture(scope="module")
def canary_report():
    """Two splits, the current one's SRM on a sample of users, the first one's split broken."""
    cfg = make_cfg(shadow=None, weights={"v1": 80, "v2": 20})
    sim = Sim(cfg, seed=6, users=20000).run(3000, route={"v1": 70, "v2": 30, "v3": 0}, correct={"v1": 0.9, "v2": 0.9})
    sim.set_split({"v1": 50, "v2": 50}).run(1, correct={"v1": 0.9, "v2": 0.9})
    (record,) = [r for r in sim.stats.splits.values() if r.weights_pct["v1"] == 50]
    record.units.max_units = 500
    return sim.run(2000, correct={"v1": 0.9, "v2": 0.9}).report()[0]


# --- terminal ------------------------------------------------------------------------------


def _block(text: str, title: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title + "  ("))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def _field(block: list[str], label: str) -> str:
    """The text of a comparison's line ``label`` (with its wrapped continuation)."""
    start = next(i for i, line in enumerate(block) if line[12:].startswith(label + " "))
    text = [block[start][_TEXT_COLUMN:]]
    for line in block[start + 1:]:
        if not line.startswith(" " * _TEXT_COLUMN):
            break
        text.append(line.strip())
    return " ".join(text).strip()


_TEXT_COLUMN = len("  v2 vs v1") + 2 + 11  # the comparison's name, two spaces, an 11-column label


def test_table_has_a_block_per_metric_with_the_figures_of_each_comparison(report):
    text = render_table(report)
    lines = text.splitlines()
    assert lines[0].startswith("digits: control v1 vs v2, running")
    assert "sequential verdicts" in lines[1] and "family of 5 comparisons" in lines[1]
    assert all(len(line) <= WIDTH for line in lines), max(lines, key=len)
    for metric in ("error_rate", "latency_ms", "correct", "revenue", "cost"):
        block = _block(text, metric)
        m = report.metric(metric)
        c = m.comparisons[0]
        assert "test: delta-method z per unit; verdict: sequential (mSPRT at alpha 0.01" in block[1]
        assert block[2].split()[:2] == ["version", "units"] and "95% CI" in block[2]
        assert block[3].lstrip().startswith("v1 (control)") and block[4].lstrip().startswith("v2 ")
        assert f"{m.arms['v1'].n:,}" in block[3]
        assert block[5].startswith("  v2 vs v1  verdict")
        assert _field(block, "units") == f"{c.n_variant:,} vs {c.n_control:,}"
        assert _field(block, "abs lift").endswith("99% confidence sequence")
        assert _field(block, "p").endswith("adjusted") and "sequential" in _field(block, "p")
        power = _field(block, "power")
        # In users (a multiple of those so far), not in buckets, which users come to share.
        multiple = c.power.data_multiple
        assert multiple == pytest.approx(max(c.power.required["variant"] / c.n_variant,
                                             c.power.required["control"] / c.n_control))
        times = (f"{math.ceil(round(multiple, 9)):,}" if multiple >= 10
                 else f"{math.ceil(round(multiple * 100, 9)) / 100:.2f}")
        start = "sample reached" if c.power.complete else f"{times}x the users so far needed"
        assert power.startswith(f"{start} for MDE 5.0% at power 0.8 (mSPRT)"), power
        assert c.power.complete == (multiple <= 1)
        assert ("guardrail" in "\n".join(block)) == (metric in ("error_rate", "latency_ms"))
    errors = _block(text, "error_rate")
    c = report.metric("error_rate").comparisons[0]
    lo, hi = c.abs_ci
    assert _field(errors, "abs lift").startswith(f"{c.abs_lift * 100:+.2f} pp [{lo * 100:+.2f}, {hi * 100:+.2f}]")
    assert _field(errors, "guardrail").startswith(
        {"non_inferior": "non-inferior", "inferior": "INFERIOR", "inconclusive": "inconclusive"}[c.guardrail.status]
        + " (margin +1pp;")
    latency = _block(text, "latency_ms")
    assert latency[2].split()[-2:] == ["p50", "p95"] and "ms" in latency[3]
    assert "(margin +10% = +" in _field(latency, "guardrail")
    correct = report.metric("correct").comparisons[0]
    assert _field(_block(text, "correct"), "verdict") == {"better": "BETTER", "worse": "WORSE",
                                                          "no_difference": "no significant difference"}[correct.verdict]
    rel_lo, rel_hi = correct.rel_ci
    assert _field(_block(text, "correct"), "rel lift") == (
        f"{correct.rel_lift * 100:+.1f}% [{rel_lo * 100:+.1f}, {rel_hi * 100:+.1f}]")
    assert "SRM: no mismatch detected (units: v1 " in text
    assert "shadow v3:" in text and "agreement" in text and "drift       KL" in text


def test_table_flags_srm_mismatch_on_every_verdict(skewed_report):
    text = render_table(skewed_report)
    assert "WARNING: sample ratio mismatch" in text and "SRM: MISMATCH" in text
    verdicts = [line for line in text.splitlines() if line.startswith("  v2 vs v1  verdict")]
    assert len(verdicts) == 5 and all("SRM MISMATCH" in line for line in verdicts)


def test_table_shows_the_sampled_fraction_and_the_earlier_splits_mismatch(canary_report):
    text = render_table(canary_report)
    srm = canary_report.srm
    assert srm.sampled_fraction < 1 and srm.other_splits[0].mismatch
    flat = " ".join(line.strip() for line in text.splitlines())
    assert "sample of users" in flat and f"{srm.sampled_fraction * 100:.1f}%" in flat
    assert f"MISMATCH under {srm.other_splits[0].split}" in flat
    assert "within each of 2 splits" in flat and "(within splits, combined)" in flat
    assert all(len(line) <= WIDTH for line in text.splitlines())


def test_table_with_sequential_off_says_the_verdict_is_withheld():
    cfg = make_cfg(shadow=None, analysis={"sequential": False})
    report, _ = Sim(cfg, seed=5).run(400, correct={"v1": 0.9, "v2": 0.9}).report()
    block = _block(render_table(report), "correct")
    assert "verdict: fixed horizon" in block[1]
    assert _field(block, "verdict").startswith("not enough data (fixed-horizon verdict withheld")
    assert "CI (the level the correction leaves)" in _field(block, "abs lift")


def test_table_shows_the_pre_period_adjustment():
    cfg = make_cfg(shadow=None, weights={"v1": 100, "v2": 0})
    sim = Sim(cfg, seed=7, users=1500).run(1500, correct={"v1": 0.5, "v2": 0.5})
    report, _ = sim.set_split({"v1": 50, "v2": 50}).run(1500, correct={"v1": 0.5, "v2": 0.5}).report()
    c = report.metric("correct").comparisons[0]
    assert c.cuped is not None
    cuped = _field(_block(render_table(report), "correct"), "CUPED")
    change = f"{-c.cuped.variance_reduction * 100:+.0f}"
    assert cuped.startswith(f"variance {'0' if float(change) == 0 else change}% (theta ")
    assert f"{c.cuped.pre_units:,} units seen before); unadjusted abs lift " in cuped and cuped.endswith(" pp)")


def test_table_of_an_empty_experiment_says_not_enough_data():
    from serve_ab.analysis.accumulate import ExperimentStats
    from serve_ab.analysis.report import build_report

    cfg = make_cfg(shadow=None)
    empty, _ = build_report(cfg, ExperimentStats(["v1", "v2", "v3"], 0.0).snapshot(0.0), cfg.weights_pct())
    text = render_table(empty)
    assert "not enough data" in text and "SRM: no traffic yet" in text
    assert "power      - (no split where both arms have 2 units yet)" in text
    assert render_html(empty).count("<svg") == 0  # nothing to plot, and no crash


def test_table_of_one_version_with_a_shadow_says_there_is_no_variant():
    cfg = make_cfg(weights={"v1": 100, "v2": 0})  # v3 in shadow only: nothing to compare v1 with
    text = render_table(Sim(cfg, seed=3).run(400, correct={"v1": 0.9}, shadow_share=0.5, flip=0.1).report()[0])
    assert text.splitlines()[0].startswith("digits: v1 alone, no variant to compare with it, running ")
    assert "vs none" not in text and "family of" not in text
    assert "shadow v3:" in text  # the comparison there is


def test_srm_without_a_mismatch_says_none_was_detected_and_names_an_empty_weighted_arm(no_plots):
    # Regression: "ok" beside v2 at weight 50% with none of 300 units (the sequential test
    # flags it only past ~450), and "no traffic yet (no traffic yet under ...)".
    report = Sim(make_cfg(shadow=None), seed=1, users=100000).run(300, route={"v1": 100, "v2": 0, "v3": 0}).report()[0]
    assert not report.srm.mismatch
    said = "SRM: no mismatch detected; v2 has no units at weight 50%: check that the routers send it traffic (units:"
    assert said in " ".join(render_table(report).replace("\n  ", " ").splitlines())
    assert "Sample ratio check: no mismatch detected; v2 has no units at weight 50%" in render_html(report)
    from serve_ab.analysis.accumulate import ExperimentStats
    from serve_ab.analysis.report import build_report

    cfg = make_cfg(shadow=None)
    empty, _ = build_report(cfg, ExperimentStats(["v1", "v2", "v3"], 0.0).snapshot(0.0), cfg.weights_pct())
    assert "SRM: no traffic yet under the weights routed by now\n" in render_table(empty)


def test_a_comparison_without_a_comparable_split_shows_no_units(no_plots):
    # Regression: "units 0 vs 0" beside an arm with a unit in its table.
    report = Sim(make_cfg(shadow=None), seed=1).run(1, correct={"v1": 0.9, "v2": 0.9}).report()[0]
    block = _block(render_table(report), "error_rate")
    c = report.metric("error_rate").comparisons[0]
    assert c.splits_used == 0 and sum(a.n for a in report.metric("error_rate").arms.values()) == 1
    assert _field(block, "units") == "-"
    assert "<td>v2 vs v1</td><td class='n'>-</td>" in render_html(report)


def test_no_difference_reads_as_no_significant_difference(report, no_plots):
    c = report.metric("correct").comparisons[0]
    c = c.model_copy(update={"verdict": "no_difference"})
    metric = report.metric("correct").model_copy(update={"comparisons": [c]})
    shown = report.model_copy(update={"metrics": [metric]})
    assert _field(_block(render_table(shown), "correct"), "verdict").startswith("no significant difference")
    page = render_html(shown)
    assert ">no significant difference</b>" in page and "no significant difference</td>" in page
    assert shown.model_dump(mode="json")["metrics"][0]["comparisons"][0]["verdict"] == "no_difference"


def test_figures_print_zero_without_a_sign_an_open_bound_as_unbounded_and_a_variance_rise_as_plus(report,
                                                                                                    no_plots):
    metric = report.metric("correct")
    c = metric.comparisons[0]
    cuped = CupedFigures(theta=0.5, variance_reduction=-0.03, pre_units=10, abs_lift_unadjusted=-1e-9,
                         se_unadjusted=0.01)
    c = c.model_copy(update={"abs_lift": -1e-9, "abs_ci": [-1e-9, 1e-9], "rel_lift": -1e-9,
                             "rel_ci": [0.348, None], "cuped": cuped})
    shown = report.model_copy(update={"metrics": [metric.model_copy(update={"comparisons": [c]})]})
    block = _block(render_table(shown), "correct")
    assert _field(block, "abs lift").startswith("0.00 pp [0.00, 0.00]")
    assert _field(block, "rel lift") == "0.0% [+34.8, unbounded]"
    assert _field(block, "CUPED").startswith("variance +3% (theta 0.5") and "unadjusted abs lift 0.00 pp" in \
        _field(block, "CUPED")
    assert "0.0% [+34.8, unbounded]" in render_html(shown)


def test_one_shadow_error_is_an_error(report):
    shadow = report.shadow.model_copy(update={"errors": 1})
    assert ", 1 error (" in render_table(report.model_copy(update={"shadow": shadow}))


def test_table_escapes_control_characters_in_names_from_a_record(report):
    # Config refuses them, but a record or another app's report may hold anything: a newline
    # must not break the block, an escape sequence must not reach the terminal.
    metric = report.metric("correct").model_copy(update={"name": "a\nb\x1b[2J\x1b[31mred\x9b"})
    odd = report.model_copy(update={"metrics": [metric], "warnings": ["feedback x\ry is odd"]})
    text = render_table(odd)
    assert "a\\nb\\x1b[2J\\x1b[31mred\\x9b  (rate per report" in text
    assert "WARNING: feedback x\\ry is odd" in text
    assert all(c == "\n" or c.isprintable() for c in text)
    # Invisible ones too: a right-to-left override, a zero-width space, a line separator.
    metric = report.metric("correct").model_copy(update={"name": "ok\u202e2v\u200bx\u2028y"})
    text = render_table(report.model_copy(update={"metrics": [metric]}))
    assert "ok\\u202e2v\\u200bx\\u2028y  (rate per report" in text


def test_shadow_drift_shows_the_js_distance_the_gates_read(report, no_plots):
    drift = report.shadow.drift
    said = (f"drift       KL {drift.kl:.4g}, PSI {drift.psi:.4g}, JS divergence {drift.js:.4g} bits, "
            f"JS distance {drift.js_distance:.4g}")
    assert said in render_table(report) and said in render_html(report)


# --- HTML ----------------------------------------------------------------------------------


def test_html_is_self_contained_with_an_svg_per_plot(report):
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # lift forest, each metric's arms (error_rate, latency_ms, correct, revenue, cost), latency, timeline,
    # shadow flips
    assert page.count("<svg") == page.count("</svg>") == 9
    # nothing fetched from elsewhere: no scripts, stylesheets, images or fonts by URL
    assert "<?xml" not in page and not re.search(r"<script|<link|<img|src=|href=\"http|url\((?!#)", page)
    for text in ("A/B report: digits", "error_rate", "Latency distribution", "Shadow: v3", "WORSE",
                 "<th>sequential p adj.</th>", "<th>guardrail</th>", "the users so far needed for MDE",
                 "delta-method z per unit", "99% confidence sequence"):
        assert text in page, text
    c = report.metric("correct").comparisons[0]
    assert f"<td class='n'>{c.n_variant:,} vs {c.n_control:,}</td>" in page



def test_html_ids_are_unique_and_every_reference_is_to_its_own_plot(report):
    # Live: a page of eight matplotlib plots used 157 ids (figure_1, axes_1, patch_1 ...) more than
    # once each; HTML ids are unique, and #axes_1 or url(#p...) named whichever plot came first.
    from collections import Counter

    page = render_html(report)
    ids = Counter(re.findall(r'\bid="([^"]+)"', page))
    assert ids and max(ids.values()) == 1, [name for name, n in ids.items() if n > 1][:5]
    for svg in re.findall(r"<svg.*?</svg>", page, flags=re.S):
        own = set(re.findall(r'\bid="([^"]+)"', svg))
        used = set(re.findall(r'href="#([^"]+)"', svg)) | set(re.findall(r"url\(#([^)]+)\)", svg))
        assert used and used <= own, used - own


def test_scoping_rewrites_tags_only_not_text_that_reads_like_an_id():
    svg = ('<svg><defs><path id="m1" d="M0 0"/></defs><g id="axes_1"><use xlink:href="#m1"/>'
           '<g clip-path="url(#m1)"/><text>id="m1" url(#m1)</text></g></svg>')
    assert render_html_module._scoped(svg, "plot3") == (
        '<svg><defs><path id="plot3-m1" d="M0 0"/></defs><g id="plot3-axes_1"><use xlink:href="#plot3-m1"/>'
        '<g clip-path="url(#plot3-m1)"/><text>id="m1" url(#m1)</text></g></svg>')


@pytest.mark.parametrize("name", ["$\\foo$", "cost $ per $"])
def test_html_draws_a_metric_name_with_dollars_as_written(name):
    # Regression: matplotlib read "$...$" in a title as mathtext, and "$\foo$" crashed the page.
    cfg = make_cfg(shadow=None, analysis={"metrics": [{"name": name, "kind": "conversion"}]})
    sim = Sim(cfg, seed=3)
    for i in range(400):
        sim.t += 0.05
        version, unit = sim.assigner.assign_unit(f"u{i}")
        sim.stats.record(sim.t, version, 1.0, None, 1, unit, True)
        sim.stats.record_feedback(sim.t, version, name, None, i % 3 == 0, unit=unit)
    page = render_html(sim.report()[0])
    svgs = "".join(re.findall(r"<svg.*?</svg>", page, flags=re.S))
    # As one text element (mathtext draws glyph by glyph, naming the text only in a comment).
    assert f">{name} (higher is better)</text>" in svgs and f">{name} (%)</text>" in svgs


@pytest.fixture
def no_plots(monkeypatch):
    """For tests of the page's text: matplotlib takes a second or more per page."""
    monkeypatch.setattr(render_html_module, "_plots", lambda report: {})


def test_html_marks_a_mismatch_in_red(skewed_report, no_plots):
    page = render_html(skewed_report)
    assert "class='warn bad'><b>Sample ratio mismatch.</b>" in page
    assert "(SRM MISMATCH)" in page


def test_html_shows_the_earlier_splits_and_the_sampled_fraction(canary_report, no_plots):
    page = render_html(canary_report)
    assert "Under earlier splits: MISMATCH under" in page and "sample of users" in page


def test_html_shows_the_shadows_mirrored_requests_and_errors(report, no_plots):
    # Regression: the page dropped the shadow's first line, its only count of mirrored requests and errors.
    shadow = report.shadow
    headline = f"shadow {shadow.version}: {shadow.mirrored:,} mirrored, {shadow.pairs:,} paired, {shadow.errors:,} "
    assert shadow.mirrored > 0 and headline in render_table(report) and headline in render_html(report)


def test_html_latency_table_shows_the_shadows_copies_not_a_row_of_zeros(report, no_plots):
    shadow = report.shadow
    assert report.variants[shadow.version].role == "shadow" and report.variants[shadow.version].requests == 0
    page = render_html(report)
    assert f"<td>{shadow.version} (shadow)</td>" not in page
    assert f"<td>{shadow.version} (shadow copies)</td><td class='n'>{shadow.mirrored:,}</td>" in page



def _failed_over(report, served: int):
    """``report`` after v2 failed ``served`` of its requests and v1 answered them as the fallback:
    each a request of both, v1's retried and v2's error (as /experiment/stats counts them live)."""
    variants = dict(report.variants)
    v1, v2 = variants["v1"], variants["v2"]
    variants["v1"] = v1.model_copy(update={"requests": v1.requests + served, "retried": served})
    variants["v2"] = v2.model_copy(update={"errors": v2.errors + served})
    return report.model_copy(update={"variants": variants})


def test_table_and_html_say_how_many_requests_a_fallback_served_and_the_total_counted_once(report, no_plots):
    # Live (isolated, v2's replica killed under load): v1 1,069 requests of which 252 retried, v2 783,
    # 1,600 sent; the page's requests column added up to 1,852 and neither view showed `retried`.
    failed = _failed_over(report, 40)
    sent = sum(v.requests for v in report.variants.values())
    said = f"served by the fallback (retried): v1 40; each also counts as the failed version"
    table = render_table(failed)
    assert said in " ".join(line.strip() for line in table.splitlines())
    assert f"so {sent:,} requests in all" in " ".join(line.strip() for line in table.splitlines())
    assert sent == failed.run_summary()["requests"]  # what serve-ab runs lists
    page = render_html(failed)
    v1 = failed.variants["v1"]
    assert "<th>of them retried</th>" in page
    assert f"<td>v1 (control)</td><td class='n'>{v1.requests:,}</td><td class='n'>40</td>" in page
    assert f"so {sent:,} requests in all" in page


def test_no_failover_line_or_column_without_retries(report, no_plots):
    assert all(v.retried == 0 for v in report.variants.values())
    assert "failover" not in render_table(report) and "retried" not in render_html(report)


# --- the commands against a fake app -------------------------------------------------------


@pytest.fixture(scope="module")
def _server():
    fake = FakeApp()
    yield fake
    fake.close()


@pytest.fixture
def app(_server, report, monkeypatch):
    monkeypatch.setenv("SERVE_AB_URL", _server.url)
    _server.requests.clear()
    _server.bearer = None
    _server.responses = {("GET", "/experiment/report"): (200, report.model_dump(mode="json"))}
    return _server


def _run(argv, capsys):
    parser = argparse.ArgumentParser(prog="serve-ab")
    report_cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = args.func(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_report_prints_the_table_from_the_endpoint(app, report, capsys):
    code, out, err = _run(["report"], capsys)
    assert code == 0 and err == ""
    assert app.paths() == ["/experiment/report"]
    assert out.rstrip("\n") == render_table(report)


def test_report_json_prints_the_report(app, report, capsys):
    code, out, _ = _run(["report", "--json", "--url", app.url + "/"], capsys)
    assert code == 0 and json.loads(out) == report.model_dump(mode="json")
    assert Report.model_validate_json(out) == report


def test_report_yaml_is_the_same_data_as_json(app, report, capsys):
    code, out, _ = _run(["report", "-o", "yaml"], capsys)
    assert code == 0 and Report.model_validate(yaml.safe_load(out)) == report


def test_report_html_writes_the_page(app, report, capsys, tmp_path):
    target = tmp_path / "report.html"
    code, out, err = _run(["report", "--html", str(target)], capsys)
    assert code == 0 and f"wrote {target}" in err and "error_rate" in out
    assert target.read_text().count("<svg") == 9


def test_app_without_the_endpoint_is_a_clear_error(app, capsys):
    app.responses = {}
    code, out, err = _run(["report"], capsys)
    assert code == 1 and out == ""
    assert "error: 404 Not Found" in err and "has no /experiment/report" in err


def test_unreachable_app_is_a_clear_error_exit_4(app, capsys, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("SERVE_AB_URL", f"http://127.0.0.1:{port}")
    code, out, err = _run(["report"], capsys)
    assert code == 4 and out == ""
    assert f"error: cannot reach http://127.0.0.1:{port}" in err


def test_app_answering_garbage_is_a_clear_error(app, capsys):
    app.responses = {("GET", "/experiment/report"): (200, b"<html>proxy</html>")}
    code, _, err = _run(["report"], capsys)
    assert code == 1 and "answered 200 but not with JSON" in err


def test_report_of_an_open_app_sends_no_token(app, capsys):
    assert _run(["report"], capsys)[0] == 0
    assert app.requests[0]["authorization"] is None


@pytest.mark.parametrize("source", ["--token", "SERVE_AB_VIEWER_TOKEN", "SERVE_AB_CONTROL_TOKEN"])
def test_report_of_a_protected_app_sends_the_token(app, report, capsys, monkeypatch, source):
    app.bearer = "viewer-token-1234"
    argv = ["report", "-o", "json"]
    if source == "--token":
        argv += ["--token", "viewer-token-1234"]
    else:
        monkeypatch.setenv(source, "viewer-token-1234")
    code, out, err = _run(argv, capsys)
    assert code == 0 and json.loads(out) == report.model_dump(mode="json"), err
    assert app.requests[0]["authorization"] == "Bearer viewer-token-1234"


def test_a_refused_report_says_what_a_read_needs_and_never_prints_the_token(app, capsys):
    app.bearer = "the-right-one"
    code, out, err = _run(["report"], capsys)
    assert code == 1 and out == "" and "error: 401 reading this app's figures: a bearer token is needed" in err
    assert ("hint: reading this app (control.protect_reads) needs a viewer, QA or operator token: set "
            "SERVE_AB_VIEWER_TOKEN (or SERVE_AB_QA_TOKEN, SERVE_AB_CONTROL_TOKEN) or pass --token (no token was sent)") in err
    # A proxy's error page that echoes the header must not show it either.
    app.bearer = None
    app.responses = {("GET", "/experiment/report"): (401, {"error": "refused Bearer wrong-token-5678"})}
    code, out, err = _run(["report", "--token", "wrong-token-5678"], capsys)
    assert code == 1 and "refused Bearer ***" in err and "(the token sent, from --token, was refused)" in err
    assert "wrong-token-5678" not in out + err


@pytest.mark.parametrize("argv, message", [
    (["report", "--url", "localhost:8000"], "is not an http(s) URL"),
    (["report", "--from-record", "r1", "--token", "t"], "argument --token: only applies when reading a running app"),
    (["report", "--token", "s3cr3t\n"], "argument --token holds a character that cannot go in an HTTP header"),
    (["report", "--from-record", "r1", "--url", "http://x:1"], "cannot be combined with --url"),
    (["report", "--records", "x.sqlite"], "only applies with --from-record"),
])
def test_usage_errors_exit_2(app, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        _run(argv, capsys)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_from_record_and_runs_work_without_an_app(report, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SERVE_AB_URL", "http://127.0.0.1:9")  # never asked
    path = tmp_path / "runs.sqlite"
    RunRecorder(path).save("digits-1", {"model": "digits"}, report.model_dump(mode="json"), 1000.0, 1200.0,
                           summary=report.run_summary(), metrics=report.headline_metrics())
    code, out, _ = _run(["report", "--from-record", "digits-1", "--records", str(path), "--json"], capsys)
    assert code == 0 and Report.model_validate_json(out) == report
    code, out, _ = _run(["runs", "--records", str(path)], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["run", "id", "model"]
    assert lines[1].startswith("digits-1") and "v1,v2,v3" in lines[1] and lines[1].endswith(" not detected")
    code, out, _ = _run(["runs", "--records", str(path), "--json"], capsys)
    assert code == 0 and json.loads(out)[0]["run_id"] == "digits-1"
    code, out, _ = _run(["runs", "--records", str(path), "-o", "yaml"], capsys)
    assert code == 0 and yaml.safe_load(out)[0]["run_id"] == "digits-1"


def test_runs_names_the_app_of_each_record(report, capsys, tmp_path):
    """Live (multi47): an A/B app and a canary app of model digits, started by one `serve run`,
    kept their records in one file (analysis.records.path's default) under run ids that
    differed only by the config's digest (digits-20261207T135433Z-73e1c7cf and -1658b170), and
    `serve-ab runs` could not say which app ran which."""
    path = tmp_path / "runs.sqlite"
    for run_id, app in (("digits-1-aaaa", "digits-ab"), ("digits-1-bbbb", "digits-canary")):
        RunRecorder(path).save(run_id, {"model": "digits"}, report.model_dump(mode="json"), 1000.0, 1200.0,
                               summary=report.run_summary(app=app), metrics=report.headline_metrics())
    RunRecorder(path).save("digits-0", {"model": "digits"}, report.model_dump(mode="json"), 900.0, 1100.0,
                           summary=report.run_summary())  # an older release's: no app
    code, out, _ = _run(["runs", "--records", str(path)], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:4] == ["run", "id", "app", "model"]
    shown = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert shown == {"digits-1-aaaa": "digits-ab", "digits-1-bbbb": "digits-canary", "digits-0": "-"}
    code, out, _ = _run(["runs", "--records", str(path), "--json"], capsys)
    assert code == 0 and {r["run_id"]: r["app"] for r in json.loads(out)} == {
        "digits-1-aaaa": "digits-ab", "digits-1-bbbb": "digits-canary", "digits-0": None}


def test_missing_record_and_missing_file_exit_1(report, capsys, tmp_path):
    path = tmp_path / "runs.sqlite"
    code, _, err = _run(["runs", "--records", str(path)], capsys)
    assert code == 1 and "no run records at" in err
    RunRecorder(path).save("digits-1", {"model": "digits"}, report.model_dump(mode="json"), 1000.0, 1200.0)
    code, _, err = _run(["report", "--from-record", "nope", "--records", str(path)], capsys)
    assert code == 1 and "no run record 'nope'" in err and "digits-1" in err


def test_a_record_of_another_layout_is_a_clear_error_naming_the_run(report, capsys, tmp_path):
    path = tmp_path / "runs.sqlite"
    old = report.model_dump(mode="json")
    del old["plots"]
    old["srm"]["mismatch"] = "maybe"
    RunRecorder(path).save("digits-0", {"model": "digits"}, old, 1000.0, 1200.0)
    code, out, err = _run(["report", "--from-record", "digits-0", "--records", str(path)], capsys)
    assert code == 1 and out == "" and "Traceback" not in err
    assert f"error: the report of run record 'digits-0' in {path} does not fit the report layout" in err
    assert "  plots: Field required" in err and "  srm.mismatch: Input should be a valid boolean" in err
    assert "hint: a record written by an older serve-ab" in err


def test_an_app_answering_another_layout_is_a_clear_error(app, report, capsys):
    data = {**report.model_dump(mode="json"), "schema": REPORT_SCHEMA + 1, "extra": 1}
    app.responses = {("GET", "/experiment/report"): (200, data)}
    code, out, err = _run(["report"], capsys)
    assert code == 1 and out == ""
    assert "/experiment/report does not fit the report layout" in err and "  extra: Extra inputs" in err


def _newer(report) -> dict:
    """``report`` as a newer serve-ab of the same layout sends it: fields added since, at the top,
    in a version, in a list's item and in a member of a tagged union (a feedback figure)."""
    data = report.model_dump(mode="json")
    data["added_at_top"] = {"a": 1}
    data["variants"]["v2"]["failed_over_ms"] = 12.5
    data["metrics"][0]["comparisons"][0]["new_test"] = "x"
    data["variants"]["v2"]["feedback"]["correct"]["new_figure"] = 3
    return data


def test_a_newer_app_of_the_same_layout_is_rendered_without_the_fields_this_cli_does_not_know(app, report, capsys):
    # A report of this schema with fields added since (a newer app) was refused whole: an old CLI
    # could not read a new app's report at all once per-version `retried` came.
    app.responses = {("GET", "/experiment/report"): (200, _newer(report))}
    code, out, err = _run(["report"], capsys)
    assert code == 0, err
    assert out.rstrip("\n") == render_table(report)
    assert "4 field(s) this serve-ab does not know, from a newer serve-ab" in err
    for path in ("added_at_top", "variants.v2.failed_over_ms", "metrics.0.comparisons.0.new_test",
                 "variants.v2.feedback.correct.new_figure"):
        assert path in err
    assert "upgrade serve-ab" in err and "Traceback" not in err


def test_json_of_a_newer_report_keeps_the_fields_this_cli_does_not_know(app, report, capsys):
    newer = _newer(report)
    app.responses = {("GET", "/experiment/report"): (200, newer)}
    code, out, err = _run(["report", "-o", "json"], capsys)
    assert code == 0 and json.loads(out) == newer
    assert "does not know" in err


def test_a_newer_record_of_the_same_layout_is_rendered(report, capsys, tmp_path):
    path = tmp_path / "runs.sqlite"
    RunRecorder(path).save("digits-9", {"model": "digits"}, _newer(report), 1000.0, 1200.0)
    page = tmp_path / "page.html"
    code, out, err = _run(["report", "--from-record", "digits-9", "--records", str(path), "--html", str(page)],
                          capsys)
    assert code == 0 and out.rstrip("\n") == render_table(report)
    assert "run record 'digits-9'" in err and "does not know" in err
    assert "failed_over_ms" not in page.read_text()


def test_a_newer_report_with_a_field_that_does_not_fit_is_still_refused(app, report, capsys):
    newer = _newer(report)
    newer["srm"]["mismatch"] = "maybe"  # not an addition: a changed field
    app.responses = {("GET", "/experiment/report"): (200, newer)}
    code, out, err = _run(["report"], capsys)
    assert code == 1 and out == ""
    assert "srm.mismatch: Input should be a valid boolean" in err and "added_at_top: Extra inputs" in err


def test_read_report_leaves_the_data_as_it_came(report):
    newer = _newer(report)
    before = json.dumps(newer, sort_keys=True)
    read, dropped = read_report(newer)
    assert read == report and len(dropped) == 4
    assert json.dumps(newer, sort_keys=True) == before
    assert read_report(report.model_dump(mode="json")) == (report, [])


def test_a_newer_feedback_field_named_as_its_kind_is_dropped_not_walked_into(report):
    """pydantic names a tagged union's member in the error's path (feedback.correct.conversion.x).
    A newer figure of that very name (``mean`` on a mean's feedback) was taken for the path and
    walked into: a number raised AttributeError (a traceback in place of the report), an object
    had the whole report refused."""
    newer = report.model_dump(mode="json")
    feedback = newer["variants"]["v2"]["feedback"]
    conversion, mean = (next(name for name, figure in feedback.items() if figure["kind"] == kind)
                        for kind in ("conversion", "mean"))
    feedback[mean]["mean"] = 10.5
    feedback[conversion]["conversion"] = {"rate": 0.9}
    read, dropped = read_report(newer)
    assert read == report
    assert sorted(dropped) == sorted([f"variants.v2.feedback.{mean}.mean",
                                      f"variants.v2.feedback.{conversion}.conversion"])


def test_a_field_the_error_path_does_not_lead_to_is_refused_not_guessed():
    """A loc that names no object of the data is the strict model's error, never an exception of
    the walk (KeyError, AttributeError) nor a field dropped somewhere else."""
    from serve_ab.analysis.report_model import _drop

    data = {"a": [{"b": 1}], "c": 2}
    assert _drop(data, ("a", 5, "x")) is None and _drop(data, ("c", "x")) is None
    assert _drop(data, ("a", 0, "b")) == "a.0.b" and data == {"a": [{}], "c": 2}


def test_serve_ab_wires_report_and_runs(app, capsys, monkeypatch):
    # The real sample-size parser imports statsmodels (seconds); its wiring has its own tests.
    stub = argparse.Namespace(add_parser=lambda sub: None)
    monkeypatch.setattr(serve_ab.cli, "sample_size", stub, raising=False)
    assert cli.main(["report", "--json"]) == 0
    assert Report.model_validate_json(capsys.readouterr().out).experiment.model == "digits"


# --- records as found: odd values and corrupt JSON -----------------------------------------------


def _edit(path, sql: str, *params) -> None:
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute(sql, params)


def _two_runs(report, path) -> None:
    for run_id, updated in (("good", 1300.0), ("odd", 1200.0)):
        RunRecorder(path).save(run_id, {"model": "digits"}, report.model_dump(mode="json"), 1000.0, updated,
                               summary=report.run_summary(), metrics=report.headline_metrics())


@pytest.mark.parametrize("started, summary, shown", [
    ("yesterday", None, "?'yesterday'"),
    (1e20, None, "?1e+20"),
    (float("inf"), None, "?inf"),
    (1000.0, {"versions": ["v1"], "requests": "lots", "control": 5, "srm_mismatch": "x"}, "?'lots'"),
    (1000.0, {"versions": 5, "requests": 3}, "?5"),
])
def test_runs_renders_what_it_can_and_marks_the_bad_cells(report, capsys, tmp_path, started, summary, shown):
    path = tmp_path / "runs.sqlite"
    _two_runs(report, path)
    _edit(path, "UPDATE runs SET started_at_s = ? WHERE run_id = 'odd'", started)
    if summary is not None:
        _edit(path, "UPDATE runs SET summary_json = ? WHERE run_id = 'odd'", json.dumps(summary))
    code, out, err = _run(["runs", "--records", str(path)], capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[1].startswith("good ") and "v1,v2,v3" in lines[1] and "?" not in lines[1]
    assert lines[2].startswith("odd ") and shown in lines[2]
    note = " ".join(line.strip() for line in lines[4:6])
    assert f"value(s) in {path} are not what their column should hold (shown as ?value)" in note
    assert any(line.startswith("  run 'odd', ") for line in lines)
    assert all(len(line) <= WIDTH for line in lines)
    if summary is not None and "control" in summary:
        assert "  run 'odd', control = 5" in lines and "  run 'odd', SRM = 'x'" in lines


@pytest.mark.parametrize("cell, problem", [
    ("'{bad summary'",
     "column summary_json: not JSON: Expecting property name enclosed in double quotes at line 1, column 2"),
    ("'[1, 2]'", "column summary_json: holds a JSON array ([1, 2]), not an object"),
    ("'null'", "column summary_json: holds a JSON null (null), not an object"),
    ("x'80'", "column summary_json: not UTF-8 text (invalid start byte at byte 0)"),
])
def test_runs_lists_every_record_and_names_the_one_whose_summary_is_not_json(report, capsys, tmp_path, cell,
                                                                             problem):
    path = tmp_path / "runs.sqlite"
    _two_runs(report, path)
    _edit(path, f"UPDATE runs SET summary_json = {cell} WHERE run_id = 'odd'")
    code, out, err = _run(["runs", "--records", str(path)], capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    # One damaged record no longer hides the others: the good one is listed whole.
    assert lines[1].startswith("good ") and "v1,v2,v3" in lines[1] and "?" not in lines[1]
    assert lines[2].startswith("odd ") and lines[2].split()[-4:] == ["?", "?", "?", "?"]
    note = " ".join(line.strip() for line in lines[4:])
    assert f"note: the summary of 1 record(s) in {path} cannot be read" in note
    assert f"run 'odd', {problem}" in note
    code, out, err = _run(["runs", "--records", str(path), "-o", "json"], capsys)
    assert code == 0 and err == ""
    listed = {run["run_id"]: run for run in json.loads(out)}
    assert listed["good"]["problem"] is None and listed["good"]["versions"] == ["v1", "v2", "v3"]
    assert listed["odd"]["problem"] == problem and listed["odd"]["versions"] == []


def _strict_json(text: str):
    """``text`` parsed as JSON proper: Python's json reads NaN and Infinity, which JSON has not."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_runs_prints_null_for_a_number_that_is_not_finite(report, capsys, tmp_path, output):
    path = tmp_path / "runs.sqlite"
    _two_runs(report, path)
    _edit(path, "UPDATE runs SET started_at_s = ? WHERE run_id = 'odd'", float("inf"))
    _edit(path, "UPDATE runs SET summary_json = ? WHERE run_id = 'good'",
          '{"versions": ["v1"], "requests": NaN, "srm_mismatch": false}')
    code, out, err = _run(["runs", "--records", str(path), "-o", output], capsys)
    assert code == 0 and err == ""
    listed = {run["run_id"]: run for run in (_strict_json(out) if output == "json" else yaml.safe_load(out))}
    assert listed["odd"]["started_at_s"] is None and listed["odd"]["updated_at_s"] == 1200.0
    assert listed["good"]["requests"] is None and listed["good"]["versions"] == ["v1"]


@pytest.mark.parametrize("column", ["report_json", "config_json"])
def test_from_record_names_the_column_of_corrupt_json(report, capsys, tmp_path, column):
    path = tmp_path / "runs.sqlite"
    _two_runs(report, path)
    _edit(path, f"UPDATE runs SET {column} = '{{\"cut\": ' WHERE run_id = 'odd'")
    code, out, err = _run(["report", "--from-record", "odd", "--records", str(path)], capsys)
    assert (code, out) == (1, "")
    assert f"error: run record 'odd' in {path} cannot be read: column {column}: not JSON: Expecting value" in err
    assert "hint: repair or delete that record" in err
    code, _, err = _run(["report", "--from-record", "good", "--records", str(path), "--json"], capsys)
    assert code == 0 and err == ""


def test_html_of_a_record_whose_time_is_not_a_time_still_renders(report):
    odd = report.model_copy(update={"generated_at_s": 1e20})
    assert "generated ?1e+20" in render_html(odd)


@pytest.mark.parametrize("output", ["json", "yaml"])
@pytest.mark.parametrize("column", ["run_id", "model", "mlflow_run_id"])
def test_runs_prints_a_blob_as_the_table_shows_it(report, capsys, tmp_path, output, column):
    path = tmp_path / "runs.sqlite"
    _two_runs(report, path)
    _edit(path, f"UPDATE runs SET {column} = ? WHERE run_id = 'odd'", b"\xff\xfe")
    code, out, err = _run(["runs", "--records", str(path), "-o", output], capsys)
    assert code == 0 and err == ""
    listed = _strict_json(out) if output == "json" else yaml.safe_load(out)
    assert [run[column] for run in listed].count("b'\\xff\\xfe'") == 1
    if column != "mlflow_run_id":  # a column the table does not show
        code, out, _ = _run(["runs", "--records", str(path)], capsys)
        assert code == 0 and "b'\\xff\\xfe'" in out  # the table's spelling of the same cell


def test_report_of_a_missing_record_names_the_known_ones_even_a_blob(report, capsys, tmp_path):
    path = tmp_path / "runs.sqlite"
    _two_runs(report, path)
    _edit(path, "UPDATE runs SET run_id = ? WHERE run_id = 'odd'", b"\xff\xfe")
    code, out, err = _run(["report", "--from-record", "nope", "--records", str(path)], capsys)
    assert (code, out) == (1, "")
    assert "no run record 'nope'" in err and "b'\\xff\\xfe'" in err and "TypeError" not in err


# --- --store: Redis only, and its exit codes ------------------------------------------------


@pytest.mark.parametrize("url", ["bogus://x", "sqlite:///.serve-ab/runs.sqlite", "runs.sqlite"])
def test_store_refuses_what_is_not_redis_and_suggests_only_what_it_takes(capsys, url):
    with pytest.raises(SystemExit) as exit_info:
        _run(["runs", "--store", url], capsys)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"argument --store: {url!r} is not a Redis URL; --store takes redis://HOST[:PORT][/DB]" in err
    assert "for a SQLite file use --records PATH" in err and "sqlite:///" not in err.replace(url, "")


@pytest.mark.parametrize("url, message", [
    ("redis://h:99999/0", "store URL 'redis://h:99999/0' cannot be read (Port out of range 0-65535); valid: redis://"),
    ("redis://h/0?db=1", "has a query or fragment, which serve-ab does not read; valid: redis://"),
])
def test_a_bad_redis_store_url_is_told_the_redis_form(capsys, url, message):
    with pytest.raises(SystemExit) as exit_info:
        _run(["runs", "--store", url], capsys)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "sqlite" not in err


@pytest.mark.parametrize("argv", [["runs"], ["report", "--from-record", "r1"]])
def test_an_unset_store_password_env_is_a_usage_error(capsys, monkeypatch, argv):
    monkeypatch.delenv("SERVE_AB_TEST_NO_SUCH_PASSWORD", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        _run([*argv, "--store", "redis://127.0.0.1:9/0", "--store-password-env", "SERVE_AB_TEST_NO_SUCH_PASSWORD"],
             capsys)
    assert exit_info.value.code == 2
    assert ("argument --store-password-env: names 'SERVE_AB_TEST_NO_SUCH_PASSWORD', which is not set"
            in capsys.readouterr().err)


@pytest.mark.parametrize("argv", [["runs"], ["report", "--from-record", "r1"]])
def test_records_naming_a_directory_is_a_usage_error(capsys, argv, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        _run([*argv, "--records", str(tmp_path)], capsys)
    assert exit_info.value.code == 2
    assert f"argument --records: {str(tmp_path)!r} is a directory; give the run-record file" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["runs"], ["report", "--from-record", "r1"]])
def test_a_password_given_for_its_variables_name_is_refused_and_never_printed(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        _run([*argv, "--store", "redis://127.0.0.1:9/0", "--store-password-env", "hunter2!pw"], capsys)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "must be the NAME of an environment variable" in err and "hunter2" not in err


@pytest.mark.parametrize("argv", [["runs"], ["report", "--from-record", "r1"], ["report"]])
@pytest.mark.parametrize("flag", ["--store-password-env", "--store-key-prefix"])
def test_a_store_flag_without_store_is_a_usage_error_not_ignored(capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        _run([*argv, flag, "REDIS_PASSWORD"], capsys)
    assert exit_info.value.code == 2
    assert f"argument {flag}: only read with --store redis://" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["runs"], ["report", "--from-record", "r1"]])
def test_a_redis_that_cannot_be_reached_exits_4(capsys, argv):
    url = f"redis://127.0.0.1:{closed_port()}/0"
    code, out, err = _run([*argv, "--store", url], capsys)
    assert (code, out) == (4, "") and f"error: cannot read run records at {url} (key prefix 'serve-ab:'): ConnectionError:" in err


def test_table_shows_a_guardrails_note(report):
    note = "the sequence started again at look 3, whose own sequence did not overlap the earlier looks' [0.01, 0.02]"
    metric = report.metric("error_rate")
    c = metric.comparisons[0]
    noted = c.model_copy(update={"guardrail": c.guardrail.model_copy(update={"note": note})})
    edited = report.model_copy(update={"metrics": [m.model_copy(update={"comparisons": [noted]}) if m is metric else m
                                                   for m in report.metrics]})
    assert _field(_block(render_table(edited), "error_rate"), "guardrail").endswith(f"; {note})")
    assert "started again" not in _field(_block(render_table(report), "error_rate"), "guardrail")


def test_both_views_say_the_metric_tables_count_buckets_of_users(report, no_plots):
    # "units" read as users beside the SRM line's users, which a bucket shared by two users
    # leaves below the distinct users (a live audit: 1,273 units, 1,463 users).
    note = "units in the metric tables: each a bucket of users (users hash into 10,000 buckets"
    assert note in " ".join(render_table(report).split())
    assert note in " ".join(render_html(report).split())


@pytest.mark.parametrize("multiple, shown", [(1.0033, "1.01x the users so far needed"), (2.5, "2.50x the"),
                                             (1.1, "1.10x the"), (12.01, "13x the"), (12.0, "12x the")])
def test_the_multiple_still_needed_is_rounded_up(report, multiple, shown):
    c = report.metrics[0].comparisons[0]
    power = c.power.model_copy(update={"data_multiple": multiple, "complete": False})
    assert render_table_module._power_text(c.model_copy(update={"power": power})).startswith(shown)
