"""``serve-ab report`` and ``serve-ab runs``: rendering, and the commands against a fake app."""

from __future__ import annotations

import argparse
import json
import re
import socket

import pytest

import serve_ab.cli
from serve_ab.analysis.report_model import Report
from serve_ab.cli import command as cli, report as report_cli
from serve_ab.cli.render_html import render_html
from serve_ab.cli.render_table import render_table
from serve_ab.store.runs import RunRecorder
from tests.support.fake_http import FakeApp
from tests.unit.analysis.test_report import Sim, make_cfg


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
    return Sim(cfg, seed=4).run(4000, split={"v1": 0.56, "v2": 0.44}, correct={"v1": 0.9, "v2": 0.9}).report()[0]


# --- terminal ------------------------------------------------------------------------------


def _block(text: str, title: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title + "  ("))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def test_table_has_a_block_per_metric_with_the_columns(report):
    text = render_table(report)
    assert text.splitlines()[0].startswith("digits: control v1 vs v2")
    for metric in ("error_rate", "latency_ms", "correct", "revenue", "cost"):
        block = _block(text, metric)
        header = block[1]
        for column in ("variant", "n", "lift [95% CI]", "rel lift", "p (adj.)", "p (always valid)", "verdict",
                       "SRM", "power / needed"):
            assert column in header, (metric, column)
        assert block[2].lstrip().startswith("v1 (control)") and block[3].lstrip().startswith("v2 ")
    errors = _block(text, "error_rate")
    c = report.metric("error_rate").comparisons[0]
    assert f"{c.abs_lift * 100:+.2f} pp" in errors[3] and "WORSE" in errors[3]
    assert f"{report.variants['v2'].requests:,}" in errors[3]
    assert "SRM: ok (units:" in text
    assert "shadow v3:" in text and "agreement" in text and "drift       KL" in text


def test_table_flags_srm_mismatch_on_every_row(skewed_report):
    text = render_table(skewed_report)
    assert "WARNING: sample ratio mismatch" in text and "SRM: MISMATCH" in text
    rows = _block(text, "correct")[2:4]  # control and variant
    assert [row.split()[0] for row in rows] == ["v1", "v2"] and all("MISMATCH" in row for row in rows)


def test_table_of_an_empty_experiment_says_not_enough_data():
    from serve_ab.analysis.report import build_report
    from serve_ab.analysis.accumulate import ExperimentStats

    cfg = make_cfg(shadow=None)
    empty, _ = build_report(cfg, ExperimentStats(["v1", "v2", "v3"], 0.0).snapshot(0.0), cfg.weights_pct())
    text = render_table(empty)
    assert "not enough data" in text and "SRM: no traffic yet" in text
    assert render_html(empty).count("<svg") == 0  # nothing to plot, and no crash


# --- HTML ----------------------------------------------------------------------------------


def test_html_is_self_contained_with_an_svg_per_plot(report):
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # lift forest, error_rate/correct/revenue/cost per arm, latency, timeline, shadow flips
    assert page.count("<svg") == page.count("</svg>") == 8
    # nothing fetched from elsewhere: no scripts, stylesheets, images or fonts by URL
    assert "<?xml" not in page and not re.search(r"<script|<link|<img|src=|href=\"http|url\((?!#)", page)
    for text in ("A/B report: digits", "error_rate", "Latency distribution", "Shadow: v3", "WORSE"):
        assert text in page


def test_html_marks_a_mismatch_in_red(skewed_report):
    page = render_html(skewed_report)
    assert "class='warn bad'><b>Sample ratio mismatch.</b>" in page


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


def test_report_html_writes_the_page(app, report, capsys, tmp_path):
    target = tmp_path / "report.html"
    code, out, err = _run(["report", "--html", str(target)], capsys)
    assert code == 0 and f"wrote {target}" in err and "error_rate" in out
    assert target.read_text().count("<svg") == 8


def test_app_without_the_endpoint_is_a_clear_error(app, capsys):
    app.responses = {}
    code, out, err = _run(["report"], capsys)
    assert code == 1 and out == ""
    assert "error: 404 Not Found" in err and "has no /experiment/report" in err


def test_unreachable_app_is_a_clear_error(app, capsys, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("SERVE_AB_URL", f"http://127.0.0.1:{port}")
    code, out, err = _run(["report"], capsys)
    assert code == 1 and out == ""
    assert f"error: cannot reach http://127.0.0.1:{port}" in err


def test_app_answering_garbage_is_a_clear_error(app, capsys):
    app.responses = {("GET", "/experiment/report"): (200, b"<html>proxy</html>")}
    code, _, err = _run(["report"], capsys)
    assert code == 1 and "answered 200 but not with JSON" in err


@pytest.mark.parametrize("argv, message", [
    (["report", "--url", "localhost:8000"], "is not an http(s) URL"),
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
    assert lines[1].startswith("digits-1") and "v1,v2,v3" in lines[1] and " ok" in lines[1]
    code, out, _ = _run(["runs", "--records", str(path), "--json"], capsys)
    assert code == 0 and json.loads(out)[0]["run_id"] == "digits-1"


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
    app.responses = {("GET", "/experiment/report"): (200, {**report.model_dump(mode="json"), "extra": 1})}
    code, out, err = _run(["report"], capsys)
    assert code == 1 and out == ""
    assert "/experiment/report does not fit the report layout" in err and "  extra: Extra inputs" in err


def test_serve_ab_wires_report_and_runs(app, capsys, monkeypatch):
    # The real sample-size parser imports statsmodels (seconds); its wiring has its own tests.
    stub = argparse.Namespace(add_parser=lambda sub: None)
    monkeypatch.setattr(serve_ab.cli, "sample_size", stub, raising=False)
    assert cli.main(["report", "--json"]) == 0
    assert Report.model_validate_json(capsys.readouterr().out).experiment.model == "digits"
