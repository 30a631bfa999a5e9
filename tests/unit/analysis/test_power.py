"""Sample size and power, checked against statsmodels' solvers and the textbook formula."""

from __future__ import annotations

import math

import pytest
from scipy import stats
from statsmodels.stats.power import (
    NormalIndPower,
    TTestIndPower,
    tt_ind_solve_power,
    zt_ind_solve_power,
)
from statsmodels.stats.proportion import proportion_effectsize

from serve_ab.analysis import power
from serve_ab.analysis.power import (
    design_effect,
    fixed_power,
    power_conversions,
    power_means,
    progress,
    sample_size_conversions,
    sample_size_means,
    sequential_power,
    units_per_arm,
)

TOL = 1e-6


def test_conversions_match_zt_ind_solve_power_and_the_closed_form():
    plan = sample_size_conversions(0.10, 0.02, alpha=0.05, power=0.8)
    h = proportion_effectsize(0.12, 0.10)
    ref = zt_ind_solve_power(effect_size=h, alpha=0.05, power=0.8, ratio=1.0, alternative="two-sided")
    assert plan.n_per_variant_exact == pytest.approx(ref, rel=TOL)
    # Two-sided z-test, ignoring the far tail: n = 2 (z_{1-a/2} + z_{power})^2 / h^2.
    closed = 2 * (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) ** 2 / h**2
    assert plan.n_per_variant_exact == pytest.approx(closed, rel=1e-4)
    assert (plan.n_per_variant, plan.n_total, plan.kind) == (3835, 7670, "conversion")


def test_relative_mde_is_a_fraction_of_the_baseline():
    rel = sample_size_conversions(0.10, 0.2, relative=True)
    assert rel.mde_abs == pytest.approx(0.02) and rel.n_per_variant == sample_size_conversions(0.10, 0.02).n_per_variant
    down = sample_size_conversions(0.10, -0.1, relative=True)
    ref = NormalIndPower().solve_power(abs(proportion_effectsize(0.09, 0.10)), alpha=0.05, power=0.8)
    assert down.n_per_variant_exact == pytest.approx(ref, rel=TOL)


def test_means_match_the_t_test_solver():
    plan = sample_size_means(12.5, 1.0, alpha=0.05, power=0.9)
    ref = tt_ind_solve_power(effect_size=1.0 / 12.5, alpha=0.05, power=0.9, ratio=1.0, alternative="two-sided")
    assert plan.n_per_variant_exact == pytest.approx(ref, rel=TOL)
    assert plan.n_per_variant == math.ceil(ref) and plan.effect_size == pytest.approx(0.08)


def test_one_sided_and_many_variants_change_alpha_per_comparison():
    one_sided = sample_size_conversions(0.05, 0.01, two_sided=False)
    ref = NormalIndPower().solve_power(proportion_effectsize(0.06, 0.05), alpha=0.05, power=0.8, alternative="larger")
    assert one_sided.n_per_variant_exact == pytest.approx(ref, rel=TOL)

    four = sample_size_means(3.0, 0.5, variants=4)
    assert four.alpha_per_comparison == pytest.approx(0.05 / 3)
    ref = TTestIndPower().solve_power(0.5 / 3.0, alpha=0.05 / 3, power=0.8)
    assert four.n_per_variant_exact == pytest.approx(ref, rel=TOL) and four.n_total == 4 * four.n_per_variant


def test_power_matches_statsmodels_and_brackets_the_plan():
    got = power_conversions(0.10, 0.02, 3000)
    ref = NormalIndPower().power(proportion_effectsize(0.12, 0.10), nobs1=3000, alpha=0.05, ratio=1.0)
    assert got == pytest.approx(ref, rel=TOL)
    assert power_means(12.5, 1.0, 2000) == pytest.approx(TTestIndPower().power(0.08, nobs1=2000, alpha=0.05), rel=TOL)

    plan = sample_size_conversions(0.10, 0.02)
    n = plan.n_per_variant
    assert power_conversions(0.10, 0.02, n) >= 0.8 > power_conversions(0.10, 0.02, n - 1)


@pytest.mark.parametrize("alpha, effect", [(1e-4, 0.1), (1e-8, 0.05), (1e-12, 0.3)])
def test_small_alphas_get_the_size_that_reaches_the_power(alpha, effect):
    # statsmodels' solve_power returned 3,787 per arm at alpha 1e-4, d 0.1: power 0.68, not 0.8.
    plan = sample_size_means(1.0, effect, alpha=alpha, power=0.8)
    assert power_means(1.0, effect, plan.n_per_variant, alpha=alpha) >= 0.8
    assert power_means(1.0, effect, plan.n_per_variant - 1, alpha=alpha) < 0.8


def test_a_lopsided_split_reaches_the_power_in_both_arms():
    plan = sample_size_conversions(0.10, 0.02)
    n_c = power.n_control_exact(plan, 0.25)  # a variant arm a quarter of the control's
    assert NormalIndPower().power(effect_size=plan.effect_size, nobs1=n_c, alpha=0.05, ratio=0.25) == \
        pytest.approx(0.8, abs=1e-9)
    assert n_c > plan.n_per_variant_exact  # fewer variant samples: more control samples


def test_huge_effects_need_the_minimum_of_two_per_arm():
    plan = sample_size_means(1.0, 10.0)
    assert plan.n_per_variant == 2 and power_means(1.0, 10.0, 2) >= 0.8


def test_progress_of_a_running_test():
    plan = sample_size_conversions(0.10, 0.02)
    got = progress(plan, {"control": 2100, "v2": 2080})
    assert got.remaining_per_variant == {"control": 1735, "v2": 1755} and got.remaining_total == 3490
    assert got.power_now == pytest.approx(power_conversions(0.10, 0.02, 2080), rel=TOL)
    assert not got.complete
    done = progress(plan, {"control": 4000, "v2": 3900})
    assert done.complete and done.remaining_total == 0 and done.power_now > 0.8
    with pytest.raises(ValueError, match=r"the plan has 2 variants but 3 arm counts"):
        progress(plan, {"a": 1, "b": 1, "c": 1})


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: sample_size_conversions(1.2, 0.02), r"baseline_rate \(1.2\) must be in \(0, 1\)"),
        (lambda: sample_size_conversions(0.9, 0.2), r"mde \(0.2\) moves the rate 0.9 to 1.1.*\(-0.9, 0.1\)"),
        (lambda: sample_size_conversions(0.5, 2.0, relative=True), r"relative mde \(2.0\).*\(-1, 1\)"),
        (lambda: sample_size_conversions(0.1, 0.0), r"mde \(0.0\) must be a non-zero number"),
        (lambda: sample_size_means(-1.0, 1.0), r"std \(-1.0\) must be > 0"),
        (lambda: sample_size_means(1.0, 1.0, power=1.0), r"power \(1.0\) must be in \(0, 1\)"),
        (lambda: sample_size_means(1.0, 1.0, alpha=0.0), r"alpha \(0.0\) must be in \(0, 1\)"),
        (lambda: sample_size_means(1.0, 1.0, variants=1), r"variants \(1\) must be an integer >= 2"),
    ],
)
def test_invalid_inputs_quote_the_value_and_the_valid_range(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_all_names_exist():
    for name in power.__all__:
        assert hasattr(power, name), name


# ---- units, design effect, the test actually run -------------------------------------


@pytest.mark.parametrize("ratio", [1.0, 0.5, 5.0 / 95.0, 3.0])
def test_fixed_power_is_normal_ind_power_with_its_ratio(ratio):
    h, n1 = 0.07, 1800.0
    ref = NormalIndPower().power(h, nobs1=n1, alpha=0.05, ratio=ratio)
    assert fixed_power(h, 1 / n1 + 1 / (ratio * n1), 0.05) == pytest.approx(ref, rel=1e-12)
    assert fixed_power(-h, 1 / n1 + 1 / (ratio * n1), 0.01) == pytest.approx(
        NormalIndPower().power(h, nobs1=n1, alpha=0.01, ratio=ratio), rel=1e-12)
    assert fixed_power(0.0, 1.0, 0.05) == pytest.approx(0.05)  # no effect: the test's size


@pytest.mark.parametrize("p0, p1, power_", [(0.10, 0.12, 0.8), (0.30, 0.27, 0.9), (0.02, 0.025, 0.8)])
def test_units_per_arm_fixed_matches_normal_ind_power_for_a_proportion(p0, p1, power_):
    var_c, var_v = p0 * (1 - p0), p1 * (1 - p1)
    plan = units_per_arm(p1 - p0, var_c, var_v, power=power_, sequential=False)
    # The unpooled normal approximation as a standardised effect for NormalIndPower:
    # var_diff = (var_c + var_v)/n = 2 sigma^2/n with sigma^2 the mean of the two.
    es = abs(p1 - p0) / math.sqrt((var_c + var_v) / 2)
    ref = NormalIndPower().solve_power(es, alpha=0.05, power=power_, ratio=1.0)
    assert plan.n_control_exact == pytest.approx(ref, rel=1e-8)
    assert abs(plan.n_control - ref) <= 1 and plan.n_control == plan.n_variant == math.ceil(ref)
    assert plan.power_at_plan >= power_ and plan.tau is None and not plan.sequential


@pytest.mark.parametrize("allocation", [(95.0, 5.0), (80.0, 20.0), (30.0, 70.0)])
def test_units_per_arm_unequal_allocation_matches_the_ratio_argument(allocation):
    sd, delta = 12.5, 1.0
    plan = units_per_arm(delta, sd**2, alpha=0.01, power=0.9, sequential=False, allocation=allocation)
    ratio = allocation[1] / allocation[0]
    ref = NormalIndPower().solve_power(delta / sd, alpha=0.01, power=0.9, ratio=ratio)
    assert plan.n_control_exact == pytest.approx(ref, rel=1e-8)
    assert plan.n_control == math.ceil(ref) and plan.n_variant == math.ceil(ref * ratio)
    assert plan.allocation_pct == allocation and plan.n_total == plan.n_control + plan.n_variant
    assert plan.var_diff_at_plan == pytest.approx(sd**2 / plan.n_control + sd**2 / plan.n_variant)
    # Rounding each arm up keeps the power at or above the target, one unit fewer does not.
    assert fixed_power(delta, plan.var_diff_at_plan, 0.01) >= 0.9
    assert fixed_power(delta, sd**2 / (plan.n_control - 1) + sd**2 / ((plan.n_control - 1) * ratio), 0.01) < 0.9


def test_sequential_power_is_the_mixture_lr_threshold():
    from serve_ab.analysis.sequential import log_mixture_likelihood_ratio

    v, tau, alpha = 0.3, 1.0, 0.05
    c2 = 2 * (v + tau**2) / tau**2 * (math.log(1 / alpha) + 0.5 * math.log((v + tau**2) / v))
    # At |d| = c sqrt(V) the report's Lambda is exactly 1/alpha.
    assert log_mixture_likelihood_ratio(math.sqrt(c2 * v), v, tau) == pytest.approx(math.log(1 / alpha))
    effect = 1.2
    z = effect / math.sqrt(v)
    expected = stats.norm.sf(math.sqrt(c2) - z) + stats.norm.cdf(-math.sqrt(c2) - z)
    assert sequential_power(effect, v, tau, alpha) == pytest.approx(expected, rel=1e-12)
    assert sequential_power(-effect, v, tau, alpha) == pytest.approx(expected, rel=1e-12)
    # Always valid costs power: below the fixed test at the same variance, and below alpha under H0.
    assert sequential_power(effect, v, tau, alpha) < fixed_power(effect, v, alpha)
    assert sequential_power(0.0, v, tau, alpha) < alpha


def test_units_per_arm_sequential_solves_sequential_power_with_tau_the_effect():
    plan = units_per_arm(0.02, 0.09, 0.12 * 0.88)
    assert plan.sequential and plan.tau == pytest.approx(0.02)
    exact_var = (0.09 + 0.12 * 0.88) / plan.n_control_exact
    assert sequential_power(0.02, exact_var, 0.02, 0.05) == pytest.approx(0.8, abs=1e-9)
    assert plan.power_at_plan >= 0.8
    fixed = units_per_arm(0.02, 0.09, 0.12 * 0.88, sequential=False)
    assert 1.5 < plan.n_control / fixed.n_control < 2.5  # the price of valid-at-every-look
    wide = units_per_arm(0.02, 0.09, 0.12 * 0.88, tau=0.05)
    assert wide.tau == 0.05 and wide.n_control != plan.n_control


def test_units_per_arm_huge_effect_needs_two_per_arm():
    plan = units_per_arm(100.0, 1.0, sequential=False, allocation=(95, 5))
    assert (plan.n_control, plan.n_variant) == (38, 2)  # the variant arm holds >= 2 units
    assert units_per_arm(100.0, 1.0).n_control == 2


def test_design_effect_is_kish():
    assert design_effect(1, 0.7) == 1.0
    assert design_effect(5, 0.05) == pytest.approx(1.2)
    assert design_effect(11, 1.0) == 11.0 and design_effect(3.5, 0.0) == 1.0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: design_effect(0.5, 0.1), r"requests_per_unit \(0.5\) must be a finite number >= 1"),
        (lambda: design_effect(2, 1.5), r"icc \(1.5\) must be in \[0, 1\]"),
        (lambda: design_effect(2, -0.1), r"icc \(-0.1\) must be in \[0, 1\]"),
        (lambda: design_effect(2, float("nan")), r"icc \(nan\)"),
        (lambda: fixed_power(0.1, 0.0, 0.05), r"var_diff \(0.0\) must be a finite number > 0"),
        (lambda: fixed_power(0.1, 1.0, 1.0), r"alpha \(1.0\) must be in \(0, 1\)"),
        (lambda: sequential_power(0.1, 1.0, 0.0, 0.05), r"tau \(0.0\) must be a finite number > 0"),
        (lambda: units_per_arm(0.0, 1.0), r"effect_abs \(0.0\) must be a non-zero finite number"),
        (lambda: units_per_arm(1.0, -1.0), r"unit_var_control \(-1.0\) must be a finite number > 0"),
        (lambda: units_per_arm(1.0, 1.0, 0.0), r"unit_var_variant \(0.0\) must be a finite number > 0"),
        (lambda: units_per_arm(1.0, 1.0, power=1.0), r"power \(1.0\) must be in \(0, 1\)"),
        (lambda: units_per_arm(1.0, 1.0, power=0.04, sequential=False), r"power \(0.04\) must exceed alpha"),
        (lambda: units_per_arm(1.0, 1.0, allocation=(90, 5)), r"allocation \(\(90, 5\)\).*summing to 100"),
        (lambda: units_per_arm(1.0, 1.0, allocation=(100, 0)), r"allocation .* percentages > 0"),
        (lambda: units_per_arm(1.0, 1.0, allocation=(50,)), r"allocation \(\(50,\)\) must be two percentages"),
        (lambda: units_per_arm(1.0, 1.0, tau=-1.0), r"tau \(-1.0\) must be a finite number > 0"),
        (lambda: units_per_arm(1.0, 1.0, tau=1.0, sequential=False), r"tau \(1.0\) only applies with sequential"),
    ],
)
def test_invalid_unit_inputs_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_units_per_arm_plans_with_the_pooled_floor_only_where_it_binds():
    from serve_ab.analysis.power import units_per_arm

    own_c, own_v = 0.05 * 0.95, 0.08 * 0.92
    plain = units_per_arm(0.03, own_c, own_v, allocation=(10, 90))
    rate = 0.1 * 0.05 + 0.9 * 0.08
    floored = units_per_arm(0.03, own_c, own_v, allocation=(10, 90), unit_var_pooled=rate * (1 - rate))
    assert floored.n_control > 1.3 * plain.n_control and floored.power_at_plan >= 0.8
    # Where the pooled variance is below the arms' own, the plan is the same.
    low = units_per_arm(0.03, own_c, own_v, allocation=(10, 90), unit_var_pooled=0.01)
    assert (low.n_control, low.n_variant) == (plain.n_control, plain.n_variant)
    with pytest.raises(ValueError, match=r"unit_var_pooled \(0\) must be a finite number > 0 or None"):
        units_per_arm(0.03, own_c, own_v, unit_var_pooled=0)
