"""Sample size and power for fixed-horizon A/B tests (statsmodels' power solvers).

Conversions use Cohen's h (``proportion_effectsize``, an arcsine transform) with the
normal power of a two-sample z-test; means use Cohen's d with the two-sample t-test
power, the test ``ab.compare_means`` runs. Arms are equal-sized. With more than two
variants each comparison against the control is planned at ``alpha / (variants - 1)``
(Bonferroni), so the plan stays valid under the Holm correction ``ab.adjust`` applies.

Example::

    plan = sample_size_conversions(baseline_rate=0.10, mde=0.02)   # 3,835 per variant
    progress(plan, {"control": 2100, "v2": 2080}).remaining_total   # 3,490 still to go
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from statsmodels.stats.power import NormalIndPower, TTestIndPower
from statsmodels.stats.proportion import proportion_effectsize

__all__ = [
    "Progress",
    "SampleSizePlan",
    "power_conversions",
    "power_means",
    "progress",
    "sample_size_conversions",
    "sample_size_means",
]


# A variance needs two observations; no plan asks for fewer per arm.
_MIN_N_PER_VARIANT = 2


@dataclass(frozen=True)
class SampleSizePlan:
    kind: str  # "conversion" or "mean"
    n_per_variant: int  # rounded up
    n_per_variant_exact: float  # the solver's root, before rounding up
    variants: int  # arms including the control
    n_total: int
    alpha: float  # family-wise, as asked
    alpha_per_comparison: float
    power: float
    two_sided: bool
    effect_size: float  # Cohen's h (conversion) or d (mean)
    mde_abs: float  # in the metric's units (rate points for conversions)
    baseline_rate: float | None = None
    std: float | None = None


@dataclass(frozen=True)
class Progress:
    """Where a running test stands against its plan."""

    required_per_variant: int
    remaining_per_variant: dict[str, int]
    remaining_total: int
    power_now: float  # at the smallest arm's current size
    complete: bool


def sample_size_conversions(
    baseline_rate: float,
    mde: float,
    *,
    relative: bool = False,
    alpha: float = 0.05,
    power: float = 0.8,
    variants: int = 2,
    two_sided: bool = True,
) -> SampleSizePlan:
    """Samples per variant to detect ``baseline_rate -> baseline_rate + mde``.

    ``mde`` is in rate points (0.02: 10% -> 12%), or a fraction of the baseline with
    ``relative=True`` (0.2: 10% -> 12%).
    """
    mde_abs = _conversion_mde_abs(baseline_rate, mde, relative)
    _check_common(alpha, variants)
    _check_power(power, alpha, variants)
    effect = abs(float(proportion_effectsize(baseline_rate + mde_abs, baseline_rate)))
    n = _solve(NormalIndPower(), effect, alpha, power, variants, two_sided)
    return _plan("conversion", n, variants, alpha, power, two_sided, effect, mde_abs, baseline_rate=baseline_rate)


def sample_size_means(
    std: float,
    mde: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    variants: int = 2,
    two_sided: bool = True,
) -> SampleSizePlan:
    """Samples per variant to detect a difference in means of ``mde`` (metric units)."""
    _check_mean_inputs(std, mde)
    _check_common(alpha, variants)
    _check_power(power, alpha, variants)
    effect = abs(mde) / std
    n = _solve(TTestIndPower(), effect, alpha, power, variants, two_sided)
    return _plan("mean", n, variants, alpha, power, two_sided, effect, mde, std=std)


def power_conversions(
    baseline_rate: float,
    mde: float,
    n_per_variant: float,
    *,
    relative: bool = False,
    alpha: float = 0.05,
    variants: int = 2,
    two_sided: bool = True,
) -> float:
    """Power achieved with ``n_per_variant`` samples in each arm."""
    mde_abs = _conversion_mde_abs(baseline_rate, mde, relative)
    _check_common(alpha, variants)
    effect = abs(float(proportion_effectsize(baseline_rate + mde_abs, baseline_rate)))
    return _power("conversion", effect, n_per_variant, alpha / (variants - 1), two_sided)


def power_means(
    std: float,
    mde: float,
    n_per_variant: float,
    *,
    alpha: float = 0.05,
    variants: int = 2,
    two_sided: bool = True,
) -> float:
    """Power achieved with ``n_per_variant`` samples in each arm."""
    _check_mean_inputs(std, mde)
    _check_common(alpha, variants)
    return _power("mean", abs(mde) / std, n_per_variant, alpha / (variants - 1), two_sided)


def progress(plan: SampleSizePlan, n_per_variant_now: Mapping[str, int]) -> Progress:
    """How many more samples each arm of a running test needs, and the power so far."""
    if len(n_per_variant_now) != plan.variants:
        raise ValueError(
            f"the plan has {plan.variants} variants but {len(n_per_variant_now)} arm counts were given: "
            f"{dict(n_per_variant_now)}"
        )
    remaining = {arm: max(0, plan.n_per_variant - int(n)) for arm, n in n_per_variant_now.items()}
    smallest = min(n_per_variant_now.values())
    power_now = _power(plan.kind, plan.effect_size, smallest, plan.alpha_per_comparison, plan.two_sided)
    total = sum(remaining.values())
    return Progress(plan.n_per_variant, remaining, total, power_now, total == 0)


# ---- helpers -------------------------------------------------------------------------


def _solve(solver, effect: float, alpha: float, power: float, variants: int, two_sided: bool) -> float:
    kind = "conversion" if isinstance(solver, NormalIndPower) else "mean"
    if _power(kind, effect, _MIN_N_PER_VARIANT, alpha / (variants - 1), two_sided) >= power:
        # Huge effects: statsmodels' t-test root finder fails below 2 per arm (it returns NaN).
        return float(_MIN_N_PER_VARIANT)
    return float(solver.solve_power(
        effect_size=effect, alpha=alpha / (variants - 1), power=power, ratio=1.0,
        alternative="two-sided" if two_sided else "larger",
    ))


def _power(kind: str, effect: float, n: float, alpha: float, two_sided: bool) -> float:
    if n < _MIN_N_PER_VARIANT:
        return 0.0
    solver = NormalIndPower() if kind == "conversion" else TTestIndPower()
    return float(solver.power(effect_size=effect, nobs1=n, alpha=alpha, ratio=1.0,
                              alternative="two-sided" if two_sided else "larger"))


def _plan(kind, n, variants, alpha, power, two_sided, effect, mde_abs, **extra) -> SampleSizePlan:
    n_per_variant = math.ceil(n - 1e-9)  # a root a hair above an integer is that integer
    return SampleSizePlan(
        kind=kind, n_per_variant=n_per_variant, n_per_variant_exact=n, variants=variants,
        n_total=n_per_variant * variants, alpha=alpha, alpha_per_comparison=alpha / (variants - 1),
        power=power, two_sided=two_sided, effect_size=effect, mde_abs=mde_abs, **extra,
    )


def _conversion_mde_abs(baseline_rate: float, mde: float, relative: bool) -> float:
    if not 0 < baseline_rate < 1:
        raise ValueError(f"baseline_rate ({baseline_rate}) must be in (0, 1), e.g. 0.10 for a 10% rate")
    mde_abs = baseline_rate * mde if relative else mde
    if mde == 0 or not math.isfinite(mde):
        raise ValueError(f"mde ({mde}) must be a non-zero number, e.g. 0.02 (or 0.2 with relative=True)")
    if not 0 < baseline_rate + mde_abs < 1:
        lo, hi = -baseline_rate, 1 - baseline_rate
        if relative:
            raise ValueError(
                f"relative mde ({mde}) moves the rate {baseline_rate} to {baseline_rate + mde_abs:g}; "
                f"it must stay in (0, 1), so mde must be in "
                f"({lo / baseline_rate:g}, {hi / baseline_rate:g}) excluding 0"
            )
        raise ValueError(
            f"mde ({mde}) moves the rate {baseline_rate} to {baseline_rate + mde_abs:g}; it must stay in (0, 1), "
            f"so mde must be in ({lo:g}, {hi:g}) excluding 0"
        )
    return mde_abs


def _check_mean_inputs(std: float, mde: float) -> None:
    if not (std > 0 and math.isfinite(std)):
        raise ValueError(f"std ({std}) must be > 0: the metric's standard deviation per observation")
    if mde == 0 or not math.isfinite(mde):
        raise ValueError(f"mde ({mde}) must be a non-zero number in the metric's units, e.g. 1.0")


def _check_common(alpha: float, variants: int) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha ({alpha}) must be in (0, 1), e.g. 0.05")
    if isinstance(variants, bool) or not isinstance(variants, int) or variants < 2:
        raise ValueError(f"variants ({variants}) must be an integer >= 2 (arms including the control)")


def _check_power(power: float, alpha: float, variants: int) -> None:
    if not 0 < power < 1:
        raise ValueError(f"power ({power}) must be in (0, 1), e.g. 0.8")
    if power <= alpha / (variants - 1):
        raise ValueError(f"power ({power}) must exceed the per-comparison alpha ({alpha / (variants - 1):g})")
