"""bench_shadow's figures and printed summary: the lines run_all puts in RESULTS.md (no Ray here)."""

import argparse

from benchmarks import bench_shadow


def report() -> dict:
    """A report as ``run`` builds it, from made-up measurements."""
    latency = {"noshadow": [9.0, 9.5, 10.0] * 160, "shadow": [10.0, 10.25, 18.0] * 159 + [10.25, 18.0]}
    throughput = {"noshadow": {"throughput_rps": 200.0}, "shadow": {"throughput_rps": 186.0}}
    stats = {"shadow": {"pairs": 3100, "agree": 3007}, "versions": {"v1": {"requests": 3102}}}
    args = argparse.Namespace(duration_s=10.0, concurrency=8)
    return {"bench": "shadow", "load_before": [0.5, 0.6, 0.7], "load_after": [1.5, 1.1, 0.9], "wall_s": 41.6,
            **bench_shadow.figures(latency, throughput, stats, args)}


def test_figures_compare_the_shadowed_app_with_the_other():
    figures = report()
    assert figures["requests_alternated_per_app"] == {"noshadow": 480, "shadow": 479}
    assert figures["p50_ms"] == {"noshadow": 9.5, "shadow": 10.25}
    assert figures["p50_added_ms"] == 0.75 and figures["p50_ratio_shadow_to_none"] == 10.25 / 9.5
    assert figures["throughput_ratio_shadow_to_none"] == 0.93
    assert (figures["shadow_compared"], figures["shadow_served_by_v1"]) == (3100, 3102)
    assert figures["shadow_agreement"] == 3007 / 3100


def test_summary_gives_each_apps_figures_under_its_own_label():
    figures = report()
    text = "\n".join(bench_shadow.summary_lines(figures))
    p99 = figures["p99_ms"]
    assert "10 s (480 and 479 requests)" in text
    assert f"without a shadow     p50    9.50 ms  p99 {p99['noshadow']:7.2f} ms" in text
    assert f"shadow on v2, 100 %  p50   10.25 ms  p99 {p99['shadow']:7.2f} ms" in text
    assert f"p50 +0.75 ms (1.079x), p99 {p99['shadow'] / p99['noshadow']:.3f}x" in text
    assert "closed loop of 8 connections" in text
    assert "without a shadow       200.0 req/s" in text
    assert "shadow on v2, 100 %    186.0 req/s" in text
    assert "with / without: 0.930x" in text
    assert "compared 3100 answers of the 3102 v1 served (v2 agreed on 97.0%)" in text
    assert "load average before [0.5, 0.6, 0.7], after [1.5, 1.1, 0.9]; wall 42 s" in text


def test_summary_signs_a_shadow_that_reads_faster():
    faster = dict(report(), p50_added_ms=-0.13, p50_ratio_shadow_to_none=0.987)
    assert "p50 -0.13 ms (0.987x)" in "\n".join(bench_shadow.summary_lines(faster))
