"""Always-valid mSPRT: the formula, its guarantees, and an A/A simulation with peeking."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats
from scipy.special import gammaln

from serve_ab.analysis import ab, sequential
from serve_ab.analysis.ab import ConversionCounts, MeanSummary
from serve_ab.analysis.sequential import (
    DEFAULT_TAU_EFFECT_SIZE,
    always_valid_p_values,
    confidence_sequence_half_width,
    log_mixture_likelihood_ratio,
    sequential_means,
    sequential_proportions,
    srm_always_valid_p,
    srm_log_bayes_factor,
)

ALPHA = 0.05
N_SIMS = 10_000
N_LOOKS = 50


def mc_bound(rate: float, n: int) -> float:
    """rate plus three Monte Carlo standard errors: a one-sided ~0.1% false alarm."""
    return rate + 3.0 * math.sqrt(rate * (1.0 - rate) / n)


# ---- the formula -------------------------------------------------------------------


@pytest.mark.parametrize("estimate, variance, tau", [(0.3, 0.01, 0.1), (-0.02, 4e-4, 0.05), (0.0, 1.0, 2.0)])
def test_likelihood_ratio_is_the_normal_mixture_integral(estimate, variance, tau):
    sd = math.sqrt(variance)
    reach = abs(estimate) + 40.0 * (sd + tau)  # the integrand is ~0 (below 1e-300) beyond this
    numerator, _ = integrate.quad(
        lambda th: stats.norm.pdf(estimate, th, sd) * stats.norm.pdf(th, 0.0, tau), -reach, reach,
        epsabs=0.0, epsrel=1e-12, points=[0.0, estimate], limit=200,
    )
    expected = numerator / stats.norm.pdf(estimate, 0.0, sd)
    assert math.exp(log_mixture_likelihood_ratio(estimate, variance, tau)) == pytest.approx(expected, rel=1e-6)


def test_confidence_sequence_edge_is_where_the_ratio_reaches_one_over_alpha():
    estimate, variance, tau = 0.12, 0.003, 0.05
    half = float(confidence_sequence_half_width(variance, tau, ALPHA))
    for theta0 in (estimate - half, estimate + half):
        assert log_mixture_likelihood_ratio(estimate, variance, tau, theta0) == pytest.approx(math.log(1 / ALPHA))


# ---- one look at a time ------------------------------------------------------------


def _look_summaries(rng, effect_sd: float, n_looks: int, batch: int):
    """Cumulative per-arm summaries of Gaussian data, look by look."""
    v = rng.normal(effect_sd, 1.0, size=n_looks * batch)
    c = rng.normal(0.0, 1.0, size=n_looks * batch)
    for k in range(1, n_looks + 1):
        yield MeanSummary.from_samples(v[: k * batch]), MeanSummary.from_samples(c[: k * batch])


def test_p_values_never_rise_and_intervals_only_shrink():
    rng = np.random.default_rng(7)
    state, states = None, []
    for v, c in _look_summaries(rng, effect_sd=0.0, n_looks=30, batch=50):
        state = sequential_means(v, c, previous=state)
        states.append(state)
    p = [s.p_value for s in states]
    assert all(b <= a for a, b in zip(p, p[1:]))
    assert all(b.ci[0] >= a.ci[0] and b.ci[1] <= a.ci[1] for a, b in zip(states, states[1:]))
    assert states[-1].looks == 30 and states[-1].n_variant == 1500


def test_stateful_updates_equal_the_vectorised_core():
    rng = np.random.default_rng(11)
    looks = list(_look_summaries(rng, effect_sd=0.05, n_looks=20, batch=100))
    state, p_stateful = None, []
    for v, c in looks:
        state = sequential_means(v, c, previous=state)
        p_stateful.append(state.p_value)
    est = np.array([v.mean - c.mean for v, c in looks])
    var = np.array([v.variance / v.n + c.variance / c.n for v, c in looks])
    tau = np.array([DEFAULT_TAU_EFFECT_SIZE * math.sqrt((v.variance + c.variance) / 2) for v, c in looks])
    np.testing.assert_allclose(p_stateful, always_valid_p_values(est, var, tau), rtol=1e-12)


def test_a_real_effect_is_found_and_covered():
    rng = np.random.default_rng(3)
    state = None
    for v, c in _look_summaries(rng, effect_sd=0.25, n_looks=40, batch=50):
        state = sequential_means(v, c, previous=state)
    assert state.reject and state.p_value <= ALPHA
    assert state.ci[0] < 0.25 < state.ci[1] and state.ci[0] > 0


def test_proportions_use_the_pooled_variance_for_the_p_value():
    v, c = ConversionCounts(560, 5000), ConversionCounts(480, 5000)
    got = sequential_proportions(v, c, tau=0.01)
    pooled = 1040 / 10000
    var_h0 = pooled * (1 - pooled) * (2 / 5000)
    assert got.p_value == pytest.approx(min(1.0, math.exp(-log_mixture_likelihood_ratio(0.016, var_h0, 0.01))))
    assert got.ci[0] < 0.016 < got.ci[1]


@pytest.mark.parametrize("variant, control", [
    (ConversionCounts(15, 500), ConversionCounts(200, 20_000)),  # the pooled variance is the smaller
    (ConversionCounts(2, 400), ConversionCounts(600, 20_000)),  # the arms' own is the smaller
])
def test_proportions_reject_exactly_when_the_ci_excludes_zero(variant, control):
    # One look's p-value and CI from one variance: a rejection with 0 inside the CI, or a CI
    # without 0 and no rejection, would be a verdict its own interval contradicts.
    got = sequential_proportions(variant, control)
    assert got.reject == (got.ci[0] > 0 or got.ci[1] < 0)


def test_proportions_verdict_and_ci_agree_at_every_look():
    rng = np.random.default_rng(7)
    for _ in range(200):
        share = rng.choice([0.02, 0.1, 0.5])
        rates = rng.uniform(0.001, 0.2, size=2)
        state, n_v, n_c, x_v, x_c = None, 0, 0, 0, 0
        for _ in range(8):
            more_v, more_c = int(rng.integers(5, 400) * share) + 1, int(rng.integers(5, 400))
            n_v, n_c = n_v + more_v, n_c + more_c
            x_v, x_c = x_v + int(rng.binomial(more_v, rates[0])), x_c + int(rng.binomial(more_c, rates[1]))
            state = sequential_proportions(ConversionCounts(x_v, n_v), ConversionCounts(x_c, n_c), previous=state)
            assert state.reject == (state.ci[0] > 0 or state.ci[1] < 0), (x_v, n_v, x_c, n_c, state)


def test_early_or_empty_looks_carry_no_evidence():
    first = sequential_proportions(ConversionCounts(0, 10), ConversionCounts(3, 10))
    assert (first.p_value, first.ci, first.reject) == (1.0, (-math.inf, math.inf), False)
    none_yet = sequential_proportions(ConversionCounts(0, 500), ConversionCounts(0, 500), previous=first)
    assert none_yet.p_value == 1.0 and none_yet.looks == 2 and math.isnan(none_yet.likelihood_ratio)


def test_misuse_is_refused_with_the_values():
    s = sequential_means(MeanSummary(100, 1.0, 1.0), MeanSummary(100, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"alpha \(0.1\) differs from the previous looks' alpha \(0.05\)"):
        sequential_means(MeanSummary(200, 1.0, 1.0), MeanSummary(200, 1.0, 1.0), previous=s, alpha=0.1)
    with pytest.raises(ValueError, match=r"sample sizes went down \(variant 100 -> 50"):
        sequential_means(MeanSummary(50, 1.0, 1.0), MeanSummary(100, 1.0, 1.0), previous=s)
    with pytest.raises(ValueError, match=r"tau \(-1\) must be > 0"):
        sequential_means(MeanSummary(100, 1.0, 1.0), MeanSummary(100, 1.0, 1.0), tau=-1)


# ---- A/A simulation: peeking ----------------------------------------------------------


def _aa_gaussian_paths(rng, n_sims: int, n_looks: int, batch: int):
    """Cumulative (n, mean, sample variance) per arm at each look, shape (n_sims, n_looks).

    Draws each batch's exact sufficient statistics instead of its raw values (for Gaussian
    data the batch sum is normal and the within-batch sum of squares is sigma^2 chi-square,
    independently): the same distribution at a fraction of the memory and time.
    """
    arms = []
    for _ in range(2):
        batch_sum = rng.normal(0.0, math.sqrt(batch), size=(n_sims, n_looks))
        within_ss = rng.chisquare(batch - 1, size=(n_sims, n_looks))
        n = batch * np.arange(1, n_looks + 1)
        total = np.cumsum(batch_sum, axis=1)
        sum_sq = np.cumsum(within_ss + batch_sum**2 / batch, axis=1)
        mean = total / n
        arms.append((n, mean, (sum_sq - n * mean**2) / (n - 1)))
    return arms


@pytest.mark.parametrize("tau_effect_size", [DEFAULT_TAU_EFFECT_SIZE, 0.02])
def test_aa_means_peeking_fixed_horizon_inflates_sequential_holds(tau_effect_size):
    rng = np.random.default_rng(2017)
    (n, mean_v, var_v), (_, mean_c, var_c) = _aa_gaussian_paths(rng, N_SIMS, N_LOOKS, batch=100)

    _, _, p_fixed, _ = ab.welch_t_test(mean_v, var_v, n, mean_c, var_c, n)
    fixed_fpr = float((p_fixed < ALPHA).any(axis=1).mean())

    tau = tau_effect_size * np.sqrt((var_v + var_c) / 2.0)
    p_seq = always_valid_p_values(mean_v - mean_c, var_v / n + var_c / n, tau)
    assert (np.diff(p_seq, axis=1) <= 0).all()
    seq_fpr = float((p_seq[:, -1] <= ALPHA).mean())

    bound = mc_bound(ALPHA, N_SIMS)
    assert fixed_fpr > 2 * ALPHA, f"fixed-horizon test peeked {N_LOOKS}x: FPR {fixed_fpr:.4f}, expected > {2 * ALPHA}"
    assert seq_fpr <= bound, (
        f"mSPRT A/A FPR {seq_fpr:.4f} over {N_SIMS} sims x {N_LOOKS} looks exceeds alpha {ALPHA} "
        f"+ 3 Monte Carlo SE = {bound:.4f}"
    )


def test_aa_conversions_peeking_fixed_horizon_inflates_sequential_holds():
    rng = np.random.default_rng(2022)
    rate, batch = 0.05, 200
    n = batch * np.arange(1, N_LOOKS + 1)
    conv_v = np.cumsum(rng.binomial(batch, rate, size=(N_SIMS, N_LOOKS)), axis=1)
    conv_c = np.cumsum(rng.binomial(batch, rate, size=(N_SIMS, N_LOOKS)), axis=1)

    _, p_fixed = ab.two_proportion_z_test(conv_v, n, conv_c, n)
    fixed_fpr = float((p_fixed < ALPHA).any(axis=1).mean())

    pooled = (conv_v + conv_c) / (2 * n)
    var_h0 = pooled * (1 - pooled) * (2 / n)
    tau = DEFAULT_TAU_EFFECT_SIZE * np.sqrt(pooled * (1 - pooled))
    p_seq = always_valid_p_values(conv_v / n - conv_c / n, var_h0, tau)
    seq_fpr = float((p_seq[:, -1] <= ALPHA).mean())

    bound = mc_bound(ALPHA, N_SIMS)
    assert fixed_fpr > 2 * ALPHA, f"fixed-horizon z-test peeked {N_LOOKS}x: FPR {fixed_fpr:.4f}, expected > {2 * ALPHA}"
    assert seq_fpr <= bound, (
        f"mSPRT A/A conversion FPR {seq_fpr:.4f} over {N_SIMS} sims x {N_LOOKS} looks exceeds alpha {ALPHA} "
        f"+ 3 Monte Carlo SE = {bound:.4f}"
    )


def test_all_names_exist():
    for name in sequential.__all__:
        assert hasattr(sequential, name), name


# ---- the sequential sample-ratio test ---------------------------------------------------------


def test_srm_bayes_factor_is_lindon_and_maleks_dirichlet_multinomial():
    # Figures from their ssrm_test package (0.1.5; Dirichlet concentration 10,000) on the same counts.
    assert math.exp(srm_log_bayes_factor([5300, 4700], [50, 50])) == pytest.approx(5740.000713, rel=1e-8)
    assert math.exp(srm_log_bayes_factor([8800, 1200], [0.9, 0.1])) == pytest.approx(33155.27233, rel=1e-8)
    assert math.exp(srm_log_bayes_factor([230, 280, 520], [20, 30, 50])) == pytest.approx(1.173857359, rel=1e-8)
    # An arm of weight 0 is left out; one that got units is a mismatch outright.
    assert srm_log_bayes_factor([10, 10, 0], [50, 50, 0]) == srm_log_bayes_factor([10, 10], [50, 50])
    assert srm_log_bayes_factor([10, 10, 1], [50, 50, 0]) == math.inf
    assert srm_always_valid_p(math.inf) == 0.0 and srm_always_valid_p(-0.3) == 1.0
    with pytest.raises(ValueError, match="equally long"):
        srm_log_bayes_factor([1, 2, 3], [50, 50])
    with pytest.raises(ValueError, match="concentration is 0"):
        srm_log_bayes_factor([1, 2], [50, 50], concentration=0)


def test_srm_bayes_factor_crosses_one_over_alpha_at_most_alpha_of_the_time_looked_at_every_unit():
    # Ville's inequality, by simulation: 2,000 healthy 70/30 splits, each looked at after every
    # one of 3,000 units; the factor ever reaches 1/0.05 in at most 5% of them (+ 3 MC SE). A
    # concentration of 10 makes the factor swing early, where the bound is nearly reached (3.75%
    # with this seed; the default 10,000 reaches it in none of these short runs).
    rng = np.random.default_rng(11)
    reps, units, p, concentration = 2000, 3000, np.array([0.7, 0.3]), 10.0
    first = np.cumsum(rng.random((reps, units)) < p[0], axis=1)
    n = np.arange(1, units + 1)
    a = concentration * p
    log_bf = (gammaln(a.sum()) - gammaln(a.sum() + n) + gammaln(a[0] + first) + gammaln(a[1] + n - first)
              - gammaln(a[0]) - gammaln(a[1]) - first * np.log(p[0]) - (n - first) * np.log(p[1]))
    k = int(first[0, -1])
    assert log_bf[0, -1] == pytest.approx(srm_log_bayes_factor([k, units - k], [70, 30], concentration))
    ever = float(np.mean(log_bf.max(axis=1) >= math.log(20)))
    assert 0.01 < ever <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / reps), ever
    # A split that is off (62/38 against 70/30) is found by the end in nearly every run.
    skewed = np.cumsum(rng.random((200, units)) < 0.62, axis=1)[:, -1]
    found = np.mean([srm_log_bayes_factor([k, units - k], [70, 30]) >= math.log(20) for k in skewed])
    assert found > 0.9, found
