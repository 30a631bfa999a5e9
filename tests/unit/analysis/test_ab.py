"""Fixed-horizon A/B statistics, each checked against scipy/statsmodels to 1e-6."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest
from statsmodels.stats.proportion import test_proportions_2indep as wald_test_2indep

from serve_ab.analysis import ab
from serve_ab.analysis.ab import (
    Comparison,
    ConversionCounts,
    Correction,
    Direction,
    MeanSummary,
    ABVerdict,
)

TOL = 1e-6


def close(a, b, tol=TOL):
    return a == pytest.approx(b, rel=tol, abs=tol)


@pytest.fixture
def rng():
    return np.random.default_rng(20240607)


# ---- Welch's t-test --------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_welch_from_samples_matches_scipy(rng, alpha):
    v = rng.normal(10.3, 3.0, size=400)
    c = rng.normal(10.0, 2.0, size=650)
    got = ab.compare_mean_samples(v, c, metric="revenue", alpha=alpha)
    ref = stats.ttest_ind(v, c, equal_var=False)
    ci = ref.confidence_interval(1 - alpha)
    assert close(got.p_value, ref.pvalue)
    assert close(got.abs_lift, v.mean() - c.mean())
    assert close(got.abs_ci[0], ci.low) and close(got.abs_ci[1], ci.high)
    assert (got.n_variant, got.n_control, got.test) == (400, 650, "welch_t")


def test_welch_from_summary_matches_ttest_ind_from_stats():
    v, c = MeanSummary(n=1200, mean=3.21, variance=2.5), MeanSummary(n=900, mean=3.05, variance=1.7)
    got = ab.compare_means(v, c, metric="basket")
    ref = stats.ttest_ind_from_stats(3.21, math.sqrt(2.5), 1200, 3.05, math.sqrt(1.7), 900, equal_var=False)
    assert close(got.p_value, ref.pvalue)
    t, df, p, _ = ab.welch_t_test(3.21, 2.5, 1200, 3.05, 1.7, 900)
    assert close(float(t), ref.statistic) and close(float(p), ref.pvalue)


def test_relative_lift_ci_is_the_delta_method(rng):
    v = rng.normal(5.5, 2.0, size=300)
    c = rng.normal(5.0, 2.0, size=300)
    got = ab.compare_mean_samples(v, c, metric="m", alpha=0.05)
    mean = np.array([v.mean(), c.mean()])
    cov = np.diag([v.var(ddof=1) / v.size, c.var(ddof=1) / c.size])
    grad = optimize.approx_fprime(mean, lambda m: m[0] / m[1] - 1.0, 1e-7)
    half = stats.norm.ppf(0.975) * math.sqrt(grad @ cov @ grad)
    rel = mean[0] / mean[1] - 1
    assert close(got.rel_lift, rel)
    assert got.rel_ci == pytest.approx((rel - half, rel + half), abs=1e-6)


def test_mean_summary_from_samples_uses_sample_variance(rng):
    x = rng.normal(size=50)
    s = MeanSummary.from_samples(x)
    assert (s.n, close(s.mean, x.mean()), close(s.variance, x.var(ddof=1))) == (50, True, True)


# ---- proportions -------------------------------------------------------------------


def test_two_proportion_z_test_matches_statsmodels():
    # Here the arms' own (unpooled) variance is the larger: p and CI are statsmodels' Wald ones.
    v, c = ConversionCounts(conversions=560, trials=5000), ConversionCounts(conversions=480, trials=5100)
    got = ab.compare_proportions(v, c, metric="ctr", alpha=0.05)
    _, p_wald = wald_test_2indep(560, 5000, 480, 5100, method="wald", compare="diff")
    low, high = confint_proportions_2indep(560, 5000, 480, 5100, method="wald", compare="diff", alpha=0.05)
    assert close(got.p_value, p_wald)
    assert close(got.abs_ci[0], low) and close(got.abs_ci[1], high)
    assert close(got.value_variant, 0.112) and close(got.abs_lift, 0.112 - 480 / 5100)
    assert got.verdict is ABVerdict.BETTER and got.significant
    z, _ = proportions_ztest([560, 480], [5000, 5100])
    assert close(float(ab.two_proportion_z_test(560, 5000, 480, 5100)[0]), z)


def test_two_proportions_take_the_pooled_variance_where_it_is_larger():
    # A small arm at a low rate against a large one at a higher rate: the variance under H0
    # is the larger, so p is the pooled z-test's (proportions_ztest) and the CI is as wide.
    got = ab.compare_proportions(ConversionCounts(2, 400), ConversionCounts(600, 20000), metric="ctr", alpha=0.05)
    _, p_pooled = proportions_ztest([2, 600], [400, 20000])
    assert close(got.p_value, p_pooled)
    z = stats.norm.ppf(0.975)
    assert close((got.abs_ci[1] - got.abs_ci[0]) / 2, z * abs(got.abs_lift) / stats.norm.isf(p_pooled / 2))


@pytest.mark.parametrize("seed", range(3))
def test_two_proportions_ci_excludes_zero_exactly_when_significant(seed):
    # One variance for both: the p-value and the CI never disagree. With the pooled variance
    # for p and the unpooled one for the CI, 15/500 against 200/20,000 was significant with 0
    # inside its CI, and 2/400 against 600/20,000 excluded 0 without being significant.
    rng = np.random.default_rng(seed)
    cases = [(15, 500, 200, 20000), (2, 400, 600, 20000)]
    for _ in range(400):
        n_v, n_c = (int(x) for x in rng.integers(50, 20000, size=2))
        cases.append((int(rng.binomial(n_v, rng.uniform(0.001, 0.2))), n_v,
                      int(rng.binomial(n_c, rng.uniform(0.001, 0.2))), n_c))
    for conv_v, n_v, conv_c, n_c in cases:
        got = ab.compare_proportions(ConversionCounts(conv_v, n_v), ConversionCounts(conv_c, n_c), metric="ctr")
        if math.isnan(got.p_value):
            continue
        excludes_zero = got.abs_ci[0] > 0 or got.abs_ci[1] < 0
        assert excludes_zero == (got.p_value < 0.05), (conv_v, n_v, conv_c, n_c, got.p_value, got.abs_ci)


def test_chi_square_matches_chi2_contingency_and_equals_z_test_for_two_arms():
    arms = {"a": ConversionCounts(480, 5100), "b": ConversionCounts(560, 5000), "c": ConversionCounts(515, 4950)}
    table = [[480, 5100 - 480], [560, 5000 - 560], [515, 4950 - 515]]
    statistic, p, dof, _ = stats.chi2_contingency(table, correction=False)
    got = ab.conversion_chi_square(arms)
    assert close(got.statistic, statistic) and close(got.p_value, p) and got.dof == dof == 2

    two = ab.conversion_chi_square({"a": arms["a"], "b": arms["b"]})
    _, z_test_p = ab.two_proportion_z_test(560, 5000, 480, 5100)
    assert close(two.p_value, float(z_test_p))


def test_no_conversions_anywhere_is_not_enough_data():
    got = ab.compare_proportions(ConversionCounts(0, 500), ConversionCounts(0, 500), metric="ctr")
    assert got.verdict is ABVerdict.NOT_ENOUGH_DATA and math.isnan(got.p_value)
    assert math.isnan(ab.conversion_chi_square({"a": ConversionCounts(0, 9), "b": ConversionCounts(0, 9)}).p_value)


# ---- Mann-Whitney U on latency -----------------------------------------------------


def test_mann_whitney_matches_scipy_and_lower_latency_is_better(rng):
    control_ms = rng.lognormal(mean=3.0, sigma=0.5, size=800)
    variant_ms = rng.lognormal(mean=2.9, sigma=0.5, size=700)
    got = ab.compare_mann_whitney(variant_ms, control_ms, metric="latency_ms")
    ref = stats.mannwhitneyu(variant_ms, control_ms, alternative="two-sided")
    assert close(got.p_value, ref.pvalue)
    assert close(got.value_variant, np.median(variant_ms)) and close(got.value_control, np.median(control_ms))
    assert got.direction is Direction.LOWER_IS_BETTER
    assert got.verdict is ABVerdict.BETTER, got
    assert got.abs_ci[0] < got.abs_lift < got.abs_ci[1] < 0

    slower = ab.compare_mann_whitney(control_ms * 1.2, control_ms, metric="latency_ms")
    assert slower.verdict is ABVerdict.WORSE


def test_mann_whitney_small_samples_use_scipy_exact_method():
    v, c = [3.1, 4.5, 2.2, 8.0, 5.5], [1.0, 2.5, 0.7, 1.9, 3.3, 2.8]
    got = ab.compare_mann_whitney(v, c, metric="latency_ms", min_samples=5)
    assert close(got.p_value, stats.mannwhitneyu(v, c, alternative="two-sided").pvalue)


# ---- verdicts ----------------------------------------------------------------------


def test_verdict_follows_direction():
    hi, lo = MeanSummary(1000, 10.5, 4.0), MeanSummary(1000, 10.0, 4.0)
    assert ab.compare_means(hi, lo, metric="m").verdict is ABVerdict.BETTER
    assert ab.compare_means(hi, lo, metric="m", direction=Direction.LOWER_IS_BETTER).verdict is ABVerdict.WORSE
    same = ab.compare_means(MeanSummary(1000, 10.01, 4.0), lo, metric="m")
    assert same.verdict is ABVerdict.NO_DIFFERENCE and not same.significant


def test_too_few_samples_is_not_enough_data():
    got = ab.compare_means(MeanSummary(10, 10.5, 4.0), MeanSummary(1000, 1.0, 4.0), metric="m")
    assert got.verdict is ABVerdict.NOT_ENOUGH_DATA and math.isnan(got.p_value)
    assert ab.compare_means(MeanSummary(10, 10.5, 4.0), MeanSummary(1000, 1.0, 4.0), metric="m",
                            min_samples=5).verdict is ABVerdict.BETTER


def test_compare_to_control_compares_every_other_arm_in_order():
    arms = {"v2": ConversionCounts(60, 1000), "v1": ConversionCounts(50, 1000), "v3": ConversionCounts(40, 1000)}
    results = ab.compare_to_control(arms, control="v1", metric="ctr", compare=ab.compare_proportions)
    assert [(r.variant, r.control) for r in results] == [("v2", "v1"), ("v3", "v1")]
    with pytest.raises(ValueError, match=r"control \('v9'\) is not one of the arms \['v1', 'v2', 'v3'\]"):
        ab.compare_to_control(arms, control="v9", metric="ctr", compare=ab.compare_proportions)


# ---- multiple comparisons ----------------------------------------------------------


@pytest.mark.parametrize("method", [Correction.HOLM, Correction.BENJAMINI_HOCHBERG])
def test_adjusted_p_values_match_multipletests(rng, method):
    p = np.concatenate([rng.uniform(size=12), [0.001, 0.004, 0.0401, 0.0401, 1.0]])
    ref = multipletests(p, method=method.value)[1]
    np.testing.assert_allclose(ab.adjust_p_values(p, method), ref, rtol=TOL, atol=TOL)


def test_untested_comparisons_stay_out_of_the_family():
    p = [0.01, math.nan, 0.04]
    got = ab.adjust_p_values(p, "holm")
    assert math.isnan(got[1])
    np.testing.assert_allclose(got[[0, 2]], multipletests([0.01, 0.04], method="holm")[1], rtol=TOL)


def test_adjust_recomputes_significance_and_verdict():
    arms = {
        "control": MeanSummary(2000, 10.0, 9.0),
        "b": MeanSummary(2000, 10.2, 9.0),  # p ~ 0.035: significant alone, not after Holm over 3
        "c": MeanSummary(2000, 10.5, 9.0),
        "d": MeanSummary(2000, 10.0, 9.0),
    }
    raw = ab.compare_to_control(arms, control="control", metric="m", compare=ab.compare_means)
    assert [r.verdict for r in raw] == [ABVerdict.BETTER, ABVerdict.BETTER, ABVerdict.NO_DIFFERENCE]
    held = ab.adjust(raw, method=Correction.HOLM)
    assert [r.verdict for r in held] == [ABVerdict.NO_DIFFERENCE, ABVerdict.BETTER, ABVerdict.NO_DIFFERENCE]
    np.testing.assert_allclose([r.p_adjusted for r in held], multipletests([r.p_value for r in raw], method="holm")[1])
    assert all(isinstance(r, Comparison) and r.p_value == o.p_value for r, o in zip(held, raw))
    with pytest.raises(ValueError, match=r"correction method \('bonf'\) must be one of 'holm', 'fdr_bh'"):
        ab.adjust(raw, method="bonf")


# ---- sample-ratio mismatch ---------------------------------------------------------


def test_srm_matches_scipy_chisquare_and_accepts_percentages():
    observed = {"a": 5050, "b": 4890, "c": 10060}
    got = ab.check_srm(observed, {"a": 25, "b": 25, "c": 50})
    ref = stats.chisquare([5050, 4890, 10060], [5000, 5000, 10000])
    assert close(got.statistic, ref.statistic) and close(got.p_value, ref.pvalue)
    assert got.dof == 2 and not got.mismatch
    assert got.expected == {"a": 5000.0, "b": 5000.0, "c": 10000.0}
    assert ab.check_srm(observed, {"a": 0.25, "b": 0.25, "c": 0.5}).p_value == pytest.approx(got.p_value)


def test_srm_flags_a_broken_split():
    got = ab.check_srm({"stable": 9620, "canary": 380}, {"stable": 95, "canary": 5})
    assert got.mismatch and got.p_value < ab.SRM_THRESHOLD_P == got.threshold_p
    assert ab.check_srm({"a": 10, "b": 5}, {"a": 1, "b": 0}).mismatch  # zero-weight arm got traffic
    empty = ab.check_srm({"a": 0, "b": 0}, {"a": 1, "b": 1})
    assert math.isnan(empty.p_value) and not empty.mismatch
    with pytest.raises(ValueError, match=r"observed arms \['a'\] and weighted arms \['a', 'b'\]"):
        ab.check_srm({"a": 1}, {"a": 1, "b": 1})


# ---- errors and surface ------------------------------------------------------------


def test_errors_quote_the_value_and_the_rule():
    with pytest.raises(ValueError, match=r"conversions \(12\) must be between 0 and trials \(10\)"):
        ConversionCounts(12, 10)
    with pytest.raises(ValueError, match=r"alpha \(1.5\) must be in \(0, 1\)"):
        ab.compare_means(MeanSummary(50, 1, 1), MeanSummary(50, 1, 1), metric="m", alpha=1.5)
    with pytest.raises(ValueError, match=r"values has 1 NaN/inf values"):
        MeanSummary.from_samples([1.0, float("nan")])


def test_all_names_exist():
    for name in ab.__all__:
        assert hasattr(ab, name), name
