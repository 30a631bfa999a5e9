"""bench_shadow's printed summary: the lines run_all puts in RESULTS.md (no Ray here)."""

from benchmarks import bench_shadow


def report() -> dict:
    return {
        "bench": "shadow", "load_before": [0.5, 0.6, 0.7], "load_after": [1.5, 1.1, 0.9], "wall_s": 41.6,
        "requests_alternated_per_app": {"noshadow": 480, "shadow": 479},
        "p50_ms": {"noshadow": 9.5, "shadow": 10.25}, "p99_ms": {"noshadow": 15.0, "shadow": 18.0},
        "p50_added_ms": 0.75, "p50_ratio_shadow_to_none": 10.25 / 9.5, "p99_ratio_shadow_to_none": 1.2,
        "throughput_rps": {"noshadow": 200.0, "shadow": 186.0}, "throughput_ratio_shadow_to_none": 0.93,
        "concurrency": 8, "duration_s": 10.0, "shadow_compared": 3100, "shadow_served_by_v1": 3102,
        "shadow_agreement": 0.97,
    }


def test_summary_gives_each_apps_figures_and_the_ratios():
    text = "\n".join(bench_shadow.summary_lines(report()))
    assert "10 s (480 and 479 requests)" in text
    assert "without a shadow     p50    9.50 ms  p99   15.00 ms" in text
    assert "shadow on v2, 100 %  p50   10.25 ms  p99   18.00 ms" in text
    assert "p50 +0.75 ms (1.079x), p99 1.200x" in text
    assert "closed loop of 8 connections" in text
    assert "200.0 req/s" in text and "186.0 req/s" in text and "with / without: 0.930x" in text
    assert "compared 3100 answers of the 3102 v1 served (v2 agreed on 97.0%)" in text
    assert "load average before [0.5, 0.6, 0.7], after [1.5, 1.1, 0.9]; wall 42 s" in text


def test_summary_signs_a_shadow_that_reads_faster():
    faster = dict(report(), p50_added_ms=-0.13, p50_ratio_shadow_to_none=0.987)
    assert "p50 -0.13 ms (0.987x)" in "\n".join(bench_shadow.summary_lines(faster))
