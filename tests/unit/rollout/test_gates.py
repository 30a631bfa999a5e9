"""Gate verdicts on hand-built windows: pass, fail, and "no data" that is never a failure."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from serve_ab.analysis import drift
from serve_ab.rollout.gates import (
    ConversionEvent,
    ConversionStats,
    FeedbackEvent,
    FeedbackStats,
    Observation,
    GateVerdict,
    WindowStats,
    build_windows,
    evaluate_gate,
    evaluate_gates,
    overall_verdict,
)
from serve_ab.config.rollout import Gate


def gate(**kwargs) -> Gate:
    return Gate.model_validate(kwargs)


def window(version="v2", n=100, errors=0, latency_ms=10.0, classes=(50, 50), scores=None, **kw) -> WindowStats:
    return WindowStats(
        version=version, request_count=n, error_count=errors,
        latencies_ms=tuple([latency_ms] * (n - errors)), class_counts=tuple(classes),
        scores=tuple(scores if scores is not None else [0.9] * n), **kw,
    )


STABLE = window("v1")


def test_absolute_latency_gate_passes_and_fails_with_value_and_threshold():
    g = gate(metric="latency_p95_ms", max=50)
    ok = evaluate_gate(g, window(latency_ms=30.0), STABLE, min_samples=50)
    assert ok.verdict is GateVerdict.PASS and ok.value == pytest.approx(30.0)
    bad = evaluate_gate(g, window(latency_ms=80.0), STABLE, min_samples=50)
    assert bad.verdict is GateVerdict.FAIL
    assert (bad.value, bad.threshold, bad.bound) == (pytest.approx(80.0), 50.0, "max")
    assert "latency_p95_ms on v2 is 80" in bad.reason and "above max 50" in bad.reason


def test_latency_percentile_is_numpy_percentile():
    latencies = np.linspace(1.0, 100.0, 200)
    w = WindowStats("v2", request_count=200, latencies_ms=latencies)
    result = evaluate_gate(gate(metric="latency_p99_ms", max=1000), w, STABLE, min_samples=10)
    assert result.value == pytest.approx(np.percentile(latencies, 99))


def test_too_few_samples_is_inconclusive_never_fail_and_says_seen_vs_needed():
    g = gate(metric="latency_p95_ms", max=50)
    result = evaluate_gate(g, window(n=3, latency_ms=900.0), STABLE, min_samples=50)
    assert result.verdict is GateVerdict.INCONCLUSIVE
    assert result.value is None
    assert "no data" in result.reason and "candidate v2 has 3" in result.reason and "50 needed" in result.reason


def test_relative_gate_needs_stable_data_in_the_same_window():
    g = gate(metric="latency_p95_ms", max_ratio_to_stable=1.5)
    result = evaluate_gate(g, window(), window("v1", n=10), min_samples=50)
    assert result.verdict is GateVerdict.INCONCLUSIVE
    assert "stable v1 has 10" in result.reason
    # An absolute gate does not care about stable.
    assert evaluate_gate(gate(metric="error_rate", max=0.01), window(), window("v1", n=0), 50).verdict is GateVerdict.PASS


def test_ratio_gate_compares_with_stable():
    g = gate(metric="latency_p95_ms", max_ratio_to_stable=1.5)
    ok = evaluate_gate(g, window(latency_ms=14.0), window("v1", latency_ms=10.0), 50)
    assert ok.verdict is GateVerdict.PASS and ok.value == pytest.approx(1.4)
    bad = evaluate_gate(g, window(latency_ms=16.0), window("v1", latency_ms=10.0), 50)
    assert bad.verdict is GateVerdict.FAIL
    assert (bad.candidate_value, bad.stable_value, bad.value) == (16.0, 10.0, pytest.approx(1.6))
    assert "1.6x stable v1 (10)" in bad.reason and "max_ratio_to_stable 1.5" in bad.reason


def test_ratio_with_zero_on_stable():
    g = gate(metric="error_rate", max_ratio_to_stable=2.0)
    both_zero = evaluate_gate(g, window(errors=0), window("v1", errors=0), 50)
    assert both_zero.verdict is GateVerdict.PASS and both_zero.value == 1.0
    only_candidate = evaluate_gate(g, window(errors=5), window("v1", errors=0), 50)
    assert only_candidate.verdict is GateVerdict.FAIL and math.isinf(only_candidate.value)


def test_ratio_to_negative_stable_is_inconclusive_not_guessed():
    g = gate(metric="feedback_mean", name="profit", min_ratio_to_stable=0.9)
    cand = window(feedback={"profit": FeedbackStats(100, 50.0, 60.0)})
    stab = window("v1", feedback={"profit": FeedbackStats(100, -50.0, 60.0)})
    result = evaluate_gate(g, cand, stab, 50)
    assert result.verdict is GateVerdict.INCONCLUSIVE and "negative" in result.reason


def test_error_rate_gate():
    g = gate(metric="error_rate", max=0.01)
    assert evaluate_gate(g, window(n=200, errors=1), STABLE, 50).verdict is GateVerdict.PASS
    bad = evaluate_gate(g, window(n=200, errors=10), STABLE, 50)
    assert bad.verdict is GateVerdict.FAIL and bad.value == pytest.approx(0.05)


def test_class_drift_gates_use_the_drift_module():
    cand, stab = window(classes=(80, 20)), window("v1", classes=(50, 50))
    js = evaluate_gate(gate(metric="drift_js", max=0.01), cand, stab, 50)
    assert js.value == pytest.approx(jensenshannon([80, 20], [50, 50], base=2) ** 2)
    assert js.verdict is GateVerdict.FAIL and "drift_js of v2 against stable v1" in js.reason
    kl = evaluate_gate(gate(metric="drift_kl", max=1.0), cand, stab, 50)
    assert kl.verdict is GateVerdict.PASS and kl.value == pytest.approx(drift.kl_divergence([80, 20], [50, 50]))
    psi = evaluate_gate(gate(metric="drift_psi", max=0.1), cand, stab, 50)
    assert psi.value == pytest.approx(drift.psi([80, 20], [50, 50]))


def test_score_drift_gates():
    cand, stab = window(scores=[0.6] * 100), window("v1", scores=[0.9] * 100)
    ks = evaluate_gate(gate(metric="drift_ks", max=0.2), cand, stab, 50)
    assert ks.verdict is GateVerdict.FAIL and ks.value == pytest.approx(1.0)
    ws = evaluate_gate(gate(metric="drift_wasserstein", max=0.5), cand, stab, 50)
    assert ws.verdict is GateVerdict.PASS and ws.value == pytest.approx(0.3)
    few = evaluate_gate(gate(metric="drift_ks", max=0.2), cand, window("v1", scores=[0.9] * 5), 50)
    assert few.verdict is GateVerdict.INCONCLUSIVE and "stable v1 has 5 scores" in few.reason


def test_feedback_gates():
    mean_gate = gate(metric="feedback_mean", name="revenue", min_ratio_to_stable=0.95)
    cand = window(feedback={"revenue": FeedbackStats(100, 900.0, 9000.0)})
    stab = window("v1", feedback={"revenue": FeedbackStats(100, 1000.0, 11000.0)})
    result = evaluate_gate(mean_gate, cand, stab, 50)
    assert result.verdict is GateVerdict.FAIL and result.value == pytest.approx(0.9)
    assert "below min_ratio_to_stable 0.95" in result.reason
    rate_gate = gate(metric="feedback_rate", name="conversion", min=0.02)
    assert evaluate_gate(rate_gate, window(conversions={"conversion": ConversionStats(100, 3)}),
                         STABLE, 50).verdict is GateVerdict.PASS
    missing = evaluate_gate(rate_gate, window(), STABLE, 50)
    assert missing.verdict is GateVerdict.INCONCLUSIVE and "'conversion' outcomes" in missing.reason


def test_evaluate_gates_keeps_order_and_overall_verdict():
    gates = [gate(metric="latency_p95_ms", max=50), gate(metric="error_rate", max=0.01)]
    results = evaluate_gates(gates, window(latency_ms=80.0), STABLE, min_samples=50)
    assert [r.metric for r in results] == ["latency_p95_ms", "error_rate"]
    assert overall_verdict(results) is GateVerdict.FAIL
    assert overall_verdict(evaluate_gates(gates, window(n=1), STABLE, 50)) is GateVerdict.INCONCLUSIVE
    assert overall_verdict(evaluate_gates(gates, window(), STABLE, 50)) is GateVerdict.PASS
    assert overall_verdict([]) is GateVerdict.PASS
    with pytest.raises(ValueError, match="min_samples is 0"):
        evaluate_gates(gates, window(), STABLE, min_samples=0)
    assert results[0].to_dict()["verdict"] == "fail"


def test_build_windows_from_observations():
    obs = [
        Observation("v1", 10.0, True, 0, 0.9, t_s=1.0),
        Observation("v1", 12.0, True, 2, 0.8, t_s=2.0),
        Observation("v2", 30.0, True, 1, 0.7, t_s=2.0),
        Observation("v2", 5.0, False, None, None, t_s=3.0),
        Observation("v2", 99.0, True, 1, 0.7, t_s=50.0),  # outside the window
        Observation("v3", 1.0, True, 0, 0.5, t_s=2.0),  # not asked for
    ]
    windows = build_windows(
        obs, versions=("v1", "v2"), start_s=0.0, end_s=10.0,
        feedback=[FeedbackEvent("v2", "revenue", 3.0, 2.0), FeedbackEvent("v2", "revenue", 5.0, 2.5)],
        conversions=[ConversionEvent("v2", "conversion", True, 2.0), ConversionEvent("v2", "conversion", False, 3.0)],
    )
    v1, v2 = windows["v1"], windows["v2"]
    assert (v1.request_count, v1.error_count, v1.class_counts) == (2, 0, (1, 0, 1))
    assert (v2.request_count, v2.error_count, v2.class_counts) == (2, 1, (0, 1, 0))
    assert v2.latencies_ms == (30.0,)  # errors are judged by error_rate, not latency
    assert v2.scores == (0.7,)
    assert v2.feedback["revenue"] == FeedbackStats(2, 8.0, 34.0) and v2.feedback["revenue"].mean == 4.0
    assert v2.conversions["conversion"] == ConversionStats(2, 1)
    assert v1.feedback == {} and "v3" not in windows


def test_build_windows_checks_classes():
    with pytest.raises(ValueError, match="predicted_class 5 is out of range for num_classes=3"):
        build_windows([Observation("v1", 1.0, True, 5)], versions=["v1"], num_classes=3)
    padded = build_windows([Observation("v1", 1.0, True, 0)], versions=["v1"], num_classes=4)
    assert padded["v1"].class_counts == (1, 0, 0, 0)


def test_window_stats_refuses_impossible_counts():
    with pytest.raises(ValueError, match=r"error_count \(5\) must be in \[0, request_count \(3\)\]"):
        WindowStats("v1", request_count=3, error_count=5)
    with pytest.raises(ValueError, match="successes"):
        ConversionStats(trials=1, successes=2)
