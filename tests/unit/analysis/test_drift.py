"""Drift measures against scipy and hand-computed values on known inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from serve_ab.analysis import drift


def test_kl_matches_scipy_entropy_of_laplace_smoothed_counts():
    p, q = [30, 50, 20], [40, 40, 20]
    ps = (np.array(p) + 1.0) / (sum(p) + 3)
    qs = (np.array(q) + 1.0) / (sum(q) + 3)
    assert drift.kl_divergence(p, q) == pytest.approx(stats.entropy(ps, qs))
    assert drift.kl_divergence(p, q) == pytest.approx(float(np.sum(ps * np.log(ps / qs))))


def test_kl_by_hand_and_smoothing_keeps_missing_classes_finite():
    # (1 + 1) / 3 = 2/3 against 1/2 and (0 + 1) / 3 = 1/3 against 1/2.
    expected = 2 / 3 * math.log((2 / 3) / 0.5) + 1 / 3 * math.log((1 / 3) / 0.5)
    assert drift.kl_divergence([1, 0], [1, 1]) == pytest.approx(expected)
    assert math.isfinite(drift.kl_divergence([100, 0], [0, 100]))
    assert drift.kl_divergence([5, 5], [5, 5]) == pytest.approx(0.0)


def test_psi_known_value_and_symmetry():
    # p = [0.5, 0.5], q = [0.25, 0.75]: 0.25 ln 2 - 0.25 ln(2/3) = 0.25 ln 3.
    value = drift.psi([50, 50], [25, 75], smoothing=1e-12)
    assert value == pytest.approx(0.25 * math.log(3), rel=1e-9)
    assert drift.psi([25, 75], [50, 50], smoothing=1e-12) == pytest.approx(value)
    assert drift.psi([10, 20, 30], [10, 20, 30]) == pytest.approx(0.0)


def test_js_is_squared_base2_scipy_distance_in_unit_interval():
    p, q = [30, 50, 20], [10, 10, 80]
    assert drift.js_divergence(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2)
    assert drift.js_divergence([7, 3], [70, 30]) == pytest.approx(0.0, abs=1e-12)
    assert drift.js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)


def test_js_distance_is_the_square_root_of_the_divergence():
    p, q = [30, 50, 20], [10, 10, 80]
    assert drift.js_distance(p, q) == pytest.approx(jensenshannon(p, q, base=2))
    assert drift.js_distance(p, q) ** 2 == pytest.approx(drift.js_divergence(p, q))
    assert drift.js_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    # The scales differ most where thresholds live: a divergence of 0.1 is a distance of 0.32.
    assert math.sqrt(0.1) == pytest.approx(0.316, abs=1e-3)


def test_homogeneity_test_is_pearson_chi_square_without_empty_classes():
    p, q = [120, 80, 0, 50], [100, 100, 0, 50]
    result = drift.class_homogeneity_test(p, q)
    statistic, p_value, dof, _ = stats.chi2_contingency([[120, 80, 50], [100, 100, 50]], correction=False)
    assert (result.method, result.classes) == ("chi-square", 3) and dof == 2
    assert result.statistic == pytest.approx(statistic) and result.p_value == pytest.approx(p_value)
    same = drift.class_homogeneity_test([40, 0], [60, 0])
    assert (same.method, same.p_value) == ("none", 1.0) and "nothing to test" in same.describe()


def test_sparse_tables_use_a_seeded_monte_carlo_test():
    p, q = [3, 0, 1, 0, 2, 1, 0, 2, 1, 0], [0, 2, 1, 1, 0, 1, 2, 0, 1, 2]
    result = drift.class_homogeneity_test(p, q, alpha=0.05)
    assert result.method == "Monte Carlo" and result.p_value > 0.05
    assert result.tables < 1999  # p could no longer fall below alpha: the draw stopped early
    assert drift.class_homogeneity_test(list(p), list(q), alpha=0.05) == result  # same counts, same p
    # Against the permutation distribution of the labels, estimated independently.
    totals = np.add(p, q)
    labels = np.repeat(np.arange(10), totals)
    rng = np.random.default_rng(123)
    firsts = np.array([np.bincount(rng.permutation(labels)[:10], minlength=10) for _ in range(4000)])
    expected = totals / 2  # 10 predictions a side
    simulated = (((firsts - expected) ** 2 + (totals - firsts - expected) ** 2) / expected).sum(axis=1)
    assert result.p_value == pytest.approx(np.mean(simulated >= result.statistic - 1e-9), abs=0.03)
    # A small alpha draws enough tables to go below it when the shift is real.
    shifted = drift.class_homogeneity_test([12, 0, 0, 0, 0, 0, 0, 0, 0, 0], [1] * 10 + [2], alpha=1e-4)
    assert shifted.p_value < 1e-4 and shifted.tables > 20_000


def test_monte_carlo_p_values_are_valid_under_no_drift():
    rng = np.random.default_rng(7)
    probs = np.array([0.3, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.03, 0.02])
    p_values = [drift.class_homogeneity_test(rng.multinomial(15, probs), rng.multinomial(15, probs), alpha=0.05,
                                             seed=int(i)).p_value for i in range(300)]
    assert np.mean(np.array(p_values) < 0.05) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 300)


def test_homogeneity_test_refuses_fractional_counts_and_bad_alpha():
    with pytest.raises(ValueError, match="whole numbers"):
        drift.class_homogeneity_test([0.5, 1.5], [1, 1])
    with pytest.raises(ValueError, match="alpha is 0"):
        drift.class_homogeneity_test([1, 1], [1, 1], alpha=0)


def test_ks_test_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.5, 1.0, 300), rng.uniform(0.6, 1.0, 200)
    result = stats.ks_2samp(a, b)
    assert drift.ks_test(a, b) == (pytest.approx(result.statistic), pytest.approx(result.pvalue))


def test_count_vectors_of_different_lengths_are_padded_with_zeros():
    assert drift.js_divergence([5, 5], [5, 5, 0]) == pytest.approx(0.0, abs=1e-12)
    assert drift.kl_divergence([5, 5], [5, 5, 5]) == pytest.approx(drift.kl_divergence([5, 5, 0], [5, 5, 5]))


def test_ks_and_wasserstein_match_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.5, 1.0, 300), rng.uniform(0.6, 1.0, 200)
    assert drift.ks_statistic(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic)
    assert drift.wasserstein(a, b) == pytest.approx(stats.wasserstein_distance(a, b))
    assert drift.ks_statistic([0.1, 0.2], [0.8, 0.9]) == pytest.approx(1.0)
    assert drift.wasserstein([0.5, 0.7], [0.6, 0.8]) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "p, q, match",
    [
        ([], [1], "non-empty"),
        ([1, -1], [1, 1], ">= 0"),
        ([0, 0], [1, 1], "sums to 0"),
        ([[1, 2]], [1, 2], "1-D"),
        ([1, float("nan")], [1, 1], "finite"),
    ],
)
def test_bad_count_vectors_are_refused_with_the_value(p, q, match):
    with pytest.raises(ValueError, match=match):
        drift.kl_divergence(p, q)


def test_bad_scores_and_smoothing_are_refused():
    with pytest.raises(ValueError, match="empty"):
        drift.ks_statistic([], [0.5])
    with pytest.raises(ValueError, match="NaN"):
        drift.wasserstein([0.5, float("nan")], [0.5])
    with pytest.raises(ValueError, match="smoothing is 0"):
        drift.psi([1, 2], [2, 1], smoothing=0)


# ---- on sketches: what the gates read -------------------------------------------------------


def _score_sketch(values: np.ndarray):
    """The scores' sketch of a window built by hand (as a router's GateAggregate sketches them)."""
    from serve_ab.rollout.gates import WindowStats

    return WindowStats(version="v", scores=values).scores


_RNG = np.random.default_rng(2026)
_N = 2_000
# name -> (candidate, reference): scores near 1 (a confident classifier), near 0, logits
# (any real), latencies in ms; shifted, or not.
_SKETCH_CASES = {
    "confident_x0.995": (_RNG.beta(40.0, 0.4, _N) * 0.995, _RNG.beta(40.0, 0.4, _N)),
    "confident_no_drift": (_RNG.beta(40.0, 0.4, _N), _RNG.beta(40.0, 0.4, _N)),
    "confident_one_minus_x1.5": (1 - _RNG.beta(0.4, 40.0, _N) * 1.5, 1 - _RNG.beta(0.4, 40.0, _N)),
    "near_zero_x1.05": (_RNG.beta(0.4, 40.0, _N) * 1.05, _RNG.beta(0.4, 40.0, _N)),
    "logits_plus_0.1": (_RNG.normal(4.0, 2.0, _N) + 0.1, _RNG.normal(4.0, 2.0, _N)),
    "logits_near_1_plus_0.02": (_RNG.normal(1.0, 0.05, _N) + 0.02, _RNG.normal(1.0, 0.05, _N)),
    "latency_ms_x1.05": (_RNG.lognormal(2.0, 0.5, _N) * 1.05, _RNG.lognormal(2.0, 0.5, _N)),
}


@pytest.mark.parametrize("case", sorted(_SKETCH_CASES))
def test_ks_on_score_sketches_is_the_raw_statistic_within_what_falls_between_thresholds(case):
    a, b = _SKETCH_CASES[case]
    raw = stats.ks_2samp(a, b)
    statistic, p_value = drift.ks_test_sketched(_score_sketch(a), _score_sketch(b))
    # Never above the raw statistic (values binned at the thresholds), and close: each
    # threshold within 1% of the distance to 0 or to 1 of its neighbour. Before the counts of
    # 1 - x, confident_x0.995 read 0.05 (p 0.18) where the raw scores read 0.52.
    assert raw.statistic - 0.012 <= statistic <= raw.statistic + 1e-12
    assert (p_value < 1e-6) == (raw.pvalue < 1e-6)


@pytest.mark.parametrize("case", sorted(_SKETCH_CASES))
def test_wasserstein_on_score_sketches_is_within_a_few_percent_and_its_bound_below(case):
    a, b = _SKETCH_CASES[case]
    raw = stats.wasserstein_distance(a, b)
    ca, cb = _score_sketch(a), _score_sketch(b)
    assert drift.wasserstein_sketched(ca, cb) == pytest.approx(raw, rel=0.03)
    # With no band, the bound is what the thresholds leave unknown below the distance itself:
    # for confident_x0.995 it read 0.00009 of 0.0041 before (the buckets of x only).
    lower = drift.wasserstein_lower_sketched(ca, cb, (0.0, 0.0))
    assert lower <= raw * (1 + 1e-9)
    if "no_drift" not in case:
        assert lower >= 0.5 * raw


def test_the_sketched_ks_p_value_of_a_large_window_is_kolmogorovs_limit_not_the_exact_distribution(monkeypatch):
    # scipy's kstwo.sf(d, n) costs about n: 40 ms at n 50,000, 0.4-0.75 s at 500,000 (p under
    # 0.01), on the controller's event loop at every look of a drift gate (1M scores a side
    # held its long polls for 0.38 s). Past KS_EXACT_MAX_N, the limit distribution: its p is
    # never below the exact one and within 2.5% of it there (0.5% past 50,000).
    rng = np.random.default_rng(5)
    a, b = rng.normal(0.0, 1.0, 400_000), rng.normal(0.01, 1.0, 400_000)
    ca, cb = drift.LogHistogram.of(a, complement=True), drift.LogHistogram.of(b, complement=True)
    n = 200_000  # n * m / (n + m)
    statistic = drift.ks_test_sketched(ca, cb)[0]
    exact = stats.kstwo.sf(statistic, n)
    assert 1e-8 < exact < 0.01  # where kstwo is slowest

    def refused(*args, **kwargs):
        raise AssertionError("kstwo.sf evaluated for a large window")

    monkeypatch.setattr(stats.kstwo, "sf", refused)
    statistic, p_value = drift.ks_test_sketched(ca, cb)
    assert exact <= p_value <= exact * 1.005
    # Small windows keep the exact distribution, as ks_2samp's asymptotic method.
    monkeypatch.undo()
    small_a, small_b = a[:2_000], b[:2_000] + 0.1
    statistic, p_value = drift.ks_test_sketched(drift.LogHistogram.of(small_a, complement=True),
                                                drift.LogHistogram.of(small_b, complement=True))
    assert p_value == pytest.approx(stats.kstwo.sf(statistic, 1_000), rel=1e-12)
    for n in (drift.KS_EXACT_MAX_N + 1, 50_000, 500_000):
        for q in (0.5, 0.01, 1e-8):
            d = stats.kstwobign.isf(q) / math.sqrt(n)
            assert stats.kstwo.sf(d, n) <= drift._ks_p_value(d, n) <= stats.kstwo.sf(d, n) * 1.025
