"""The HTML report's plots against the report's own figures: each plot is read back from its
matplotlib Figure (``_svg`` swapped for the identity), not from the SVG's text."""

from __future__ import annotations

import matplotlib
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from serve_ab.cli import render_html as render_html_module
from tests.unit.analysis.test_report import Sim, make_cfg
from tests.unit.cli.test_report import report  # noqa: F401 - the report both views' tests read


@pytest.fixture
def plot(monkeypatch):
    """``plot(name, report)``: the Figure ``render_html``'s ``_<name>_plot`` draws, or None."""
    monkeypatch.setattr(render_html_module, "_svg", lambda fig: fig)

    def draw(name: str, *args):
        with matplotlib.rc_context({"text.parse_math": False}):
            return getattr(render_html_module, f"_{name}_plot")(*args, Figure)

    return draw


@pytest.fixture(scope="module")
def control_at_zero():
    """The control has no errors and never converts: no relative lift, yet decisive verdicts."""
    cfg = make_cfg(shadow=None)
    sim = Sim(cfg, seed=1).run(2000, error_rate={"v2": 0.05}, correct={"v1": 0.0, "v2": 0.5},
                               revenue={"v1": 10.0, "v2": 10.0}, cost={"v1": 2.0, "v2": 2.0})
    return sim.report()[0]


def _panel(fig, metric: str):
    (ax,) = [ax for ax in fig.axes if ax.get_title(loc="left").startswith(f"{metric} (")]
    return ax


def test_lift_plot_draws_an_open_interval_to_the_edge(report, plot):
    c = report.metric("error_rate").comparisons[0]
    lo, hi = c.rel_ci
    assert lo is not None and hi is None  # the table prints it as [+34.8, unbounded]
    ax = _panel(plot("lift", report), "error_rate")
    (arrow,) = [a for a in ax.texts if a.arrow_patch is not None]
    # From the lower bound to the panel's right edge, past the point.
    assert arrow.xyann == pytest.approx((lo * 100, 0)) and arrow.xy == (ax.get_xlim()[1], 0)
    assert ax.get_xlim()[1] > c.rel_lift * 100


def test_lift_plot_keeps_a_verdict_whose_control_is_zero(control_at_zero, plot):
    fig = plot("lift", control_at_zero)
    for metric, verdict, said in (("error_rate", "worse", "WORSE"), ("correct", "better", "BETTER")):
        c = control_at_zero.metric(metric).comparisons[0]
        assert c.rel_lift is None and c.value_control == 0 and c.verdict == verdict
        ax = _panel(fig, metric)
        (text,) = [t.get_text() for t in ax.texts]
        lo, hi = (b * 100 for b in c.abs_ci)
        # The difference in percentage points, with the verdict's interval, as the table has it.
        assert text == (f"{said}; no relative lift (the control is 0): "
                        f"abs {c.abs_lift * 100:+.2f} pp [{lo:+.2f}, {hi:+.2f}]")
        assert [t.get_text() for t in ax.get_yticklabels()] == ["v2"] and list(ax.get_xticks()) == []


@pytest.mark.parametrize("count", [2, 8, 9, 12, 20, 21, 40])
def test_every_version_has_its_own_colour(count):
    # Regression: an 8-colour palette repeated, so v1 and v9 were one colour in every legend.
    names = [f"v{i}" for i in range(1, count + 1)]
    colors = render_html_module._colors(names)
    assert list(colors) == names and len(set(colors.values())) == count


def test_a_dozen_versions_are_told_apart_in_the_latency_legend(plot):
    names = [f"v{i}" for i in range(1, 13)]
    weights = {n: 8.33 for n in names[:-1]} | {names[-1]: 8.37}
    cfg = make_cfg(shadow=None, versions=[{"name": n, "path": f"{n}.onnx", "backend": "onnx"} for n in names],
                   weights=weights)
    report = Sim(cfg, seed=3).run(3000).report()[0]
    (ax,) = plot("latency", report).axes
    legend = ax.get_legend()
    shown = {t.get_text(): to_hex(h.get_color())
             for t, h in zip(legend.get_texts(), legend.legend_handles)}
    assert list(shown) == names and len(set(shown.values())) == 12


def test_a_version_keeps_its_colour_from_plot_to_plot(plot):
    # Eight versions and a shadow: nine names in the latency legend, eight elsewhere.
    names = [f"v{i}" for i in range(1, 9)]
    cfg = make_cfg(versions=[{"name": n, "path": f"{n}.onnx", "backend": "onnx"} for n in [*names, "s"]],
                   weights={n: 12.5 for n in names}, shadow={"version": "s", "percent": 10})
    report = Sim(cfg, seed=3).run(3000, correct={n: 0.9 for n in names}, shadow_share=0.2).report()[0]
    (latency,) = plot("latency", report).axes
    legend = latency.get_legend()
    seen = {t.get_text(): to_hex(h.get_color()) for t, h in zip(legend.get_texts(), legend.legend_handles)}
    timeline = plot("timeline", report).axes[0]
    seen_again = {line.get_label(): to_hex(line.get_color()) for line in timeline.get_lines()}
    (arms,) = plot("arm", report.metric("correct"), report).axes
    assert "s (shadow)" in seen and all(seen[n] == seen_again[n] for n in names)
    labels = [t.get_text() for t in arms.get_yticklabels()][::-1]  # top row first
    colors = [to_hex(line.get_color()) for line in arms.get_lines() if line.get_marker() == "o"][::-1]
    assert labels[0] == "v1 (control)" and colors == [seen[n] for n in names]


@pytest.fixture(scope="module")
def huge_and_tiny():
    cfg = make_cfg(shadow=None)
    return Sim(cfg, seed=1).run(2000, correct={"v1": 0.9, "v2": 0.9}, revenue={"v1": 1e12, "v2": 1.1e12},
                                cost={"v1": 1e-9, "v2": 2e-9}).report()[0]


@pytest.mark.parametrize("metric", ["revenue", "cost", "latency_ms", "correct"])
def test_arm_plot_labels_each_value_as_the_table_does(huge_and_tiny, plot, metric):
    # Regression: "{value:.2f}" labelled costs of 9.7e-10 and 2.0e-9 both "0.00".
    m = huge_and_tiny.metric(metric)
    (ax,) = plot("arm", m, huge_and_tiny).axes
    labels = {t.get_text().split("  n=")[0] for t in ax.texts}
    v1, v2 = m.arms["v1"].value, m.arms["v2"].value
    expected = {"revenue": {f"{v1:.4g}", f"{v2:.4g}"}, "cost": {f"{v1:.4g}", f"{v2:.4g}"},
                "latency_ms": {f"{v1:.4g} ms", f"{v2:.4g} ms"}, "correct": {f"{v1:.2%}", f"{v2:.2%}"}}[metric]
    assert labels == expected and len(labels) == 2


@pytest.fixture(scope="module")
def canary():
    """5% -> 20% -> 50%, five minutes without traffic between steps, the split never broken."""
    cfg = make_cfg(shadow=None, weights={"v1": 95, "v2": 5})
    sim = Sim(cfg, seed=6, users=20000)
    for weight in (5, 20, 50):
        sim.set_split({"v1": 100 - weight, "v2": weight}).run(2000, correct={"v1": 0.9, "v2": 0.9})
        sim.t += 300
    return sim.report()[0]


def _lines(ax):
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_timeline_share_is_each_buckets_own_beside_the_weight_now(canary, plot):
    assert not canary.srm.mismatch and canary.experiment.weights_pct_now["v2"] == 50
    timeline = canary.plots.timeline
    requests = timeline.requests_cumulative
    ax = plot("timeline", canary).axes[1]
    assert ax.get_title(loc="left") == f"share of each {timeline.bucket_s:g} s's requests (%); dashed: weight now"
    drawn = [y for y in _lines(ax)["v2"].get_ydata() if y == y][:-1]  # NaN: minutes without traffic
    counts = {n: [b - a for a, b in zip([0, *c], c)] for n, c in requests.items()}
    expected = [100 * v2 / (v1 + v2) for v1, v2 in zip(counts["v1"], counts["v2"])]
    assert drawn == pytest.approx(expected)
    # The last step's buckets sit at its weight; the running share (24%) sat half-way below it.
    last = expected[-5:]
    assert 35 < sum(last) / len(last) < 65 and requests["v2"][-1] / (requests["v1"][-1] + requests["v2"][-1]) < 0.3
    gaps = sum(1 for y in _lines(ax)["v2"].get_ydata() if y != y)
    assert gaps == 2  # the two pauses between steps are left blank


def test_timeline_names_feedback_reports_of_every_metric_not_a_sample_size(report, plot):
    fig = plot("timeline", report)
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles[2:] == ["feedback reports (cumulative, 3 metrics together)",
                          "feedback reports per request (cumulative, 3 metrics together)"]
    # Three reports a request: 3x each metric's own count of reports.
    v1 = report.plots.timeline.feedback_cumulative["v1"][-1]
    assert v1 == sum(report.variants["v1"].feedback[m].n for m in ("correct", "revenue", "cost"))


def test_timeline_keeps_a_weighted_version_that_got_no_requests(plot):
    cfg = make_cfg(shadow=None)
    report = Sim(cfg, seed=1).run(1000, route={"v1": 100, "v2": 0, "v3": 0}).report()[0]
    assert report.variants["v2"].requests == 0 and report.experiment.weights_pct_now["v2"] == 50
    requests, share = plot("timeline", report).axes[:2]
    assert set(_lines(requests)) == {"v1", "v2"} and set(_lines(requests)["v2"].get_ydata()) == {0}
    assert {y for y in _lines(share)["v2"].get_ydata() if y == y} == {0.0}
    assert 50.0 in {line.get_ydata()[0] for line in share.get_lines() if line.get_linestyle() == "--"}


def test_latency_plot_marks_every_median_it_draws_the_shadows_too(report, plot):
    (ax,) = plot("latency", report).axes
    legend = ax.get_legend()
    colors = {t.get_text(): to_hex(h.get_color()) for t, h in zip(legend.get_texts(), legend.legend_handles)}
    medians = {to_hex(line.get_color()): line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"}
    expected = {"v1": report.variants["v1"].latency_ms.p50, "v2": report.variants["v2"].latency_ms.p50,
                "v3 (shadow)": report.shadow.latency_ms.p50}
    assert list(colors) == list(expected) and None not in expected.values()
    assert {name: medians.get(color) for name, color in colors.items()} == expected


def test_latency_caption_says_the_last_bin_holds_the_tail(report, monkeypatch):
    hist = report.plots.latency_histogram
    assert sum(hist.clipped.values()) > 0  # the last bin's bump is partly the tail
    monkeypatch.setattr(render_html_module, "_plots", lambda report: {"latency": "<svg></svg>"})
    page = render_html_module.render_html(report)
    note = "values above the pooled p99.5 ({:.3g} ms) are counted in the last bin".format(hist.edges_ms[-1])
    assert note in hist.note and f"(successful requests): {note}" in page


def test_shadow_counts_are_dark_on_pale_cells_and_white_on_dark_ones(plot):
    # A shadow that answers class 3 for nearly every request: the diagonal is pale but for class 3.
    cfg = make_cfg()
    report = Sim(cfg, seed=2).run(3000, shadow_share=0.5, class_bias=(3, 0.98)).report()[0]
    counts = report.shadow.confusion.counts
    darkest = max(max(row) for row in counts)
    ax = plot("shadow", report).axes[0]
    for text in ax.texts:
        j, i = (round(v) for v in text.get_position())
        n = counts[i][j]
        assert text.get_text() == str(n)
        dark = (1 + n) > (1 + darkest) ** 0.5  # past half of the log scale
        expected = "#ffffff" if dark else ("#1f2328" if i == j else "#cf222e")
        assert to_hex(text.get_color()) == expected, (i, j, n)
    assert any(counts[i][i] and (1 + counts[i][i]) ** 2 < 1 + darkest for i in range(len(counts)))
