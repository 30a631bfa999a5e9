"""Sample size and power, checked against statsmodels' solvers and the textbook formula."""

from __future__ import annotations

import math

import pytest
from scipy import stats
from statsmodels.stats.power import NormalIndPower, TTestIndPower, tt_ind_solve_power, zt_ind_solve_power
from statsmodels.stats.proportion import proportion_effectsize

from serve_ab.analysis import power
from serve_ab.analysis.power import (
    power_conversions,
    power_means,
    progress,
    sample_size_conversions,
    sample_size_means,
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
