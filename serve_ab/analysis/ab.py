"""Fixed-horizon comparisons of N variants against a control, and the sample-ratio check.

Each test assumes the sample size was fixed before the data were looked at (see
``power``). Looking at these p-values again and again while data arrive inflates false
positives; a continuously monitored experiment uses ``sequential`` instead.

Example::

    arms = {"v1": ConversionCounts(conversions=480, trials=5000),
            "v2": ConversionCounts(conversions=560, trials=5000)}
    results = compare_to_control(arms, control="v1", metric="ctr", compare=compare_proportions)
    results = adjust(results + latency_results, method=Correction.HOLM)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_MIN_SAMPLES",
    "SRM_THRESHOLD_P",
    "ChiSquareResult",
    "Comparison",
    "ConversionCounts",
    "Correction",
    "Direction",
    "MeanSummary",
    "SrmResult",
    "ABVerdict",
    "adjust",
    "adjust_p_values",
    "check_srm",
    "compare_mann_whitney",
    "compare_mean_samples",
    "compare_means",
    "compare_proportions",
    "compare_to_control",
    "conversion_chi_square",
    "welch_t_test",
    "two_proportion_z_test",
]

DEFAULT_ALPHA = 0.05
# Below ~30 per arm the normal approximations behind every test here are poor, and a
# verdict from a handful of requests is noise; such arms report NOT_ENOUGH_DATA.
DEFAULT_MIN_SAMPLES = 30
# SRM is checked at every look of every experiment, so the bar is strict: a real
# bucketing bug drives p far below 1e-3 within hours, while chance alone rarely does. The
# report flags on the sequential test's p (analysis/sequential.py: srm_log_bayes_factor),
# which stays valid however often it is read; check_srm's chi-square is the one-look figure.
SRM_THRESHOLD_P = 0.001
# The median's standard error (McKean-Schrader) is built from a 95% order-statistic
# interval whatever alpha the caller uses; the construction, not the test level.
_MEDIAN_SE_Z = float(stats.norm.ppf(0.975))


class Direction(str, Enum):
    """Which way is good for a metric; decides BETTER vs WORSE, never the p-value."""

    HIGHER_IS_BETTER = "higher_is_better"  # conversion, accuracy, revenue
    LOWER_IS_BETTER = "lower_is_better"  # latency, error rate, cost


class ABVerdict(str, Enum):
    BETTER = "better"
    WORSE = "worse"
    # Not significant at alpha: absence of evidence, not evidence of equality; read the
    # CI and the achieved power (``power``) before calling two variants equivalent.
    NO_DIFFERENCE = "no_difference"
    # Too few samples (or no variation at all) to test; "no data" is not "bad data".
    NOT_ENOUGH_DATA = "not_enough_data"


class Correction(str, Enum):
    HOLM = "holm"  # family-wise error rate; for gates that must not fire by chance
    BENJAMINI_HOCHBERG = "fdr_bh"  # false discovery rate; for exploratory reports


@dataclass(frozen=True)
class MeanSummary:
    """Summary statistics of one arm: count, mean and sample variance (ddof=1)."""

    n: int
    mean: float
    variance: float

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n ({self.n}) must be >= 0, e.g. MeanSummary(n=1200, mean=3.1, variance=2.5)")
        if self.variance < 0:
            raise ValueError(f"variance ({self.variance}) must be >= 0 (the sample variance, ddof=1)")

    @classmethod
    def from_samples(cls, values: Sequence[float] | np.ndarray) -> MeanSummary:
        x = _as_1d_float(values, "values")
        n = x.size
        mean = float(x.mean()) if n else math.nan
        variance = float(x.var(ddof=1)) if n > 1 else math.nan
        return cls(n=n, mean=mean, variance=variance)


@dataclass(frozen=True)
class ConversionCounts:
    """Binary outcome of one arm: ``conversions`` successes out of ``trials``."""

    conversions: int
    trials: int

    def __post_init__(self) -> None:
        if not 0 <= self.conversions <= self.trials:
            raise ValueError(
                f"conversions ({self.conversions}) must be between 0 and trials ({self.trials}), "
                "e.g. ConversionCounts(conversions=48, trials=1000)"
            )

    @property
    def rate(self) -> float:
        return self.conversions / self.trials if self.trials else math.nan


@dataclass(frozen=True)
class Comparison:
    """One metric, one variant against the control.

    ``abs_lift`` is variant minus control and ``rel_lift`` is ``abs_lift / control``, each
    with a two-sided ``1 - alpha`` CI (relative by the delta method). CIs are not widened
    by ``adjust``; ``p_adjusted`` is the p-value after it (equal to ``p_value`` until then)
    and ``significant``/``verdict`` follow ``p_adjusted``.
    """

    metric: str
    variant: str
    control: str
    test: str
    direction: Direction
    alpha: float
    n_variant: int
    n_control: int
    value_variant: float
    value_control: float
    abs_lift: float
    abs_ci: tuple[float, float]
    rel_lift: float
    rel_ci: tuple[float, float]
    p_value: float
    p_adjusted: float
    significant: bool
    verdict: ABVerdict
    # The sign that says which arm the test found ahead (+1 variant, -1 control). It is
    # the sign of abs_lift except for rank tests, where medians can tie while ranks differ.
    effect_sign: int = 0


@dataclass(frozen=True)
class ChiSquareResult:
    statistic: float
    dof: int
    p_value: float


@dataclass(frozen=True)
class SrmResult:
    """Sample-ratio mismatch: observed arm counts against the configured weights.

    ``mismatch`` means the split itself is broken (bucketing, filtering, crashes that
    drop one arm's logs), so every other result of the experiment is suspect.
    """

    observed: dict[str, int]
    expected: dict[str, float]
    statistic: float
    dof: int
    p_value: float
    threshold_p: float
    mismatch: bool


# ---- vectorised cores (also used by simulations) -------------------------------------


def welch_t_test(mean_v, var_v, n_v, mean_c, var_c, n_c):
    """Welch's t-test from summary statistics; numpy-broadcasting.

    Returns ``(t, df, p_two_sided, se)`` for variant minus control.
    """
    mean_v, var_v, n_v, mean_c, var_c, n_c = map(np.asarray, (mean_v, var_v, n_v, mean_c, var_c, n_c))
    with np.errstate(divide="ignore", invalid="ignore"):
        sv, sc = var_v / n_v, var_c / n_c
        se = np.sqrt(sv + sc)
        t = (mean_v - mean_c) / se
        df = (sv + sc) ** 2 / (sv**2 / (n_v - 1) + sc**2 / (n_c - 1))
        p = 2.0 * stats.t.sf(np.abs(t), df)
    return t, df, p, se


def two_proportion_z_test(conv_v, n_v, conv_c, n_c):
    """Pooled two-proportion z-test (as statsmodels ``proportions_ztest``); broadcasting.

    Returns ``(z, p_two_sided)`` for variant minus control. The pooled variance is the
    variance under H0, which keeps the test's size right at small rates.
    """
    conv_v, n_v, conv_c, n_c = (np.asarray(a, dtype=float) for a in (conv_v, n_v, conv_c, n_c))
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = (conv_v + conv_c) / (n_v + n_c)
        se0 = np.sqrt(pooled * (1.0 - pooled) * (1.0 / n_v + 1.0 / n_c))
        z = (conv_v / n_v - conv_c / n_c) / se0
        p = 2.0 * stats.norm.sf(np.abs(z))
    return z, p


# ---- per-metric comparisons ----------------------------------------------------------


def compare_means(
    variant: MeanSummary,
    control: MeanSummary,
    *,
    metric: str,
    variant_name: str = "variant",
    control_name: str = "control",
    alpha: float = DEFAULT_ALPHA,
    direction: Direction = Direction.HIGHER_IS_BETTER,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> Comparison:
    """Welch's t-test (unequal variances) on the difference of means, from summaries."""
    _check_alpha(alpha)
    diff = variant.mean - control.mean
    t, df, p, se = (float(x) for x in welch_t_test(
        variant.mean, variant.variance, variant.n, control.mean, control.variance, control.n))
    enough = min(variant.n, control.n) >= max(min_samples, 2) and se > 0
    if enough:
        half = float(stats.t.ppf(1.0 - alpha / 2.0, df)) * se
        abs_ci = (diff - half, diff + half)
    else:
        p, abs_ci = math.nan, (math.nan, math.nan)
    var_of_mean_v = variant.variance / variant.n if enough else math.nan
    var_of_mean_c = control.variance / control.n if enough else math.nan
    rel, rel_ci = _relative_lift(variant.mean, var_of_mean_v, control.mean, var_of_mean_c, alpha)
    return _comparison(
        metric, variant_name, control_name, "welch_t", direction, alpha, variant.n, control.n,
        variant.mean, control.mean, diff, abs_ci, rel, rel_ci, p, enough, _sign(diff),
    )


def compare_mean_samples(
    variant_values: Sequence[float] | np.ndarray,
    control_values: Sequence[float] | np.ndarray,
    **options: Any,
) -> Comparison:
    """Welch's t-test from raw samples; same options as :func:`compare_means`."""
    return compare_means(MeanSummary.from_samples(variant_values), MeanSummary.from_samples(control_values), **options)


def compare_proportions(
    variant: ConversionCounts,
    control: ConversionCounts,
    *,
    metric: str,
    variant_name: str = "variant",
    control_name: str = "control",
    alpha: float = DEFAULT_ALPHA,
    direction: Direction = Direction.HIGHER_IS_BETTER,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> Comparison:
    """Two-proportion z-test and CI for the difference, from one variance.

    The variance is the larger of the pooled one (the variance under H0, as statsmodels'
    ``proportions_ztest``: it keeps the test's size right at low rates) and the unpooled one
    (the arms' own, as a Wald CI: a small arm that is truly noisier), as the report's
    comparisons (``analysis/units.py``) and ``sequential_proportions`` take it. With the
    pooled one for the p-value and the unpooled one for the CI, a result could be
    significant with 0 inside its CI (15/500 against 200/20,000) or exclude 0 without being
    significant (2/400 against 600/20,000). Where the pooled variance is the larger, the
    p-value equals the chi-square test of the 2x2 table without continuity correction
    (:func:`conversion_chi_square` is the omnibus test over N arms).
    """
    _check_alpha(alpha)
    p_v, p_c = variant.rate, control.rate
    diff = p_v - p_c
    n_v, n_c = variant.trials, control.trials
    enough = min(n_v, n_c) >= max(min_samples, 1)
    if enough:
        pooled = (variant.conversions + control.conversions) / (n_v + n_c)
        var_v, var_c = p_v * (1 - p_v) / n_v, p_c * (1 - p_c) / n_c
        se = math.sqrt(max(pooled * (1 - pooled) * (1 / n_v + 1 / n_c), var_v + var_c))
        # Zero conversions in both arms (pooled rate 0): no spread, nothing to test yet.
        enough = se > 0
    if enough:
        p = float(2.0 * stats.norm.sf(abs(diff) / se))
        half = float(stats.norm.ppf(1.0 - alpha / 2.0)) * se
        abs_ci = (diff - half, diff + half)
    else:
        var_v = var_c = math.nan
        p, abs_ci = math.nan, (math.nan, math.nan)
    rel, rel_ci = _relative_lift(p_v, var_v, p_c, var_c, alpha)
    return _comparison(
        metric, variant_name, control_name, "z_two_proportions", direction, alpha,
        variant.trials, control.trials, p_v, p_c, diff, abs_ci, rel, rel_ci, p, enough, _sign(diff),
    )


def compare_mann_whitney(
    variant_values: Sequence[float] | np.ndarray,
    control_values: Sequence[float] | np.ndarray,
    *,
    metric: str,
    variant_name: str = "variant",
    control_name: str = "control",
    alpha: float = DEFAULT_ALPHA,
    direction: Direction = Direction.LOWER_IS_BETTER,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> Comparison:
    """Mann-Whitney U on raw samples (latency: skewed, heavy-tailed, outliers).

    The p-value is scipy's two-sided ``mannwhitneyu`` (tie-corrected). Values and lifts
    are medians (p50); the median-difference CI combines McKean-Schrader standard errors
    of each median. The verdict's direction comes from the rank statistic
    (P(variant > control) vs 1/2), so it agrees with the p-value even when medians tie.
    Direction defaults to LOWER_IS_BETTER because this test is used for latency.
    """
    _check_alpha(alpha)
    v = np.sort(_as_1d_float(variant_values, "variant_values"))
    c = np.sort(_as_1d_float(control_values, "control_values"))
    enough = min(v.size, c.size) >= max(min_samples, 1)
    med_v = float(np.median(v)) if v.size else math.nan
    med_c = float(np.median(c)) if c.size else math.nan
    diff = med_v - med_c
    if not enough:
        return _comparison(
            metric, variant_name, control_name, "mann_whitney_u", direction, alpha, v.size, c.size,
            med_v, med_c, diff, (math.nan, math.nan), *_relative_lift(med_v, math.nan, med_c, math.nan, alpha),
            math.nan, False, 0,
        )
    result = stats.mannwhitneyu(v, c, alternative="two-sided")
    # U counts pairs where variant > control (ties half); above n_v*n_c/2 means variant ranks higher.
    effect_sign = _sign(float(result.statistic) - v.size * c.size / 2.0)
    var_v, var_c = _median_se(v) ** 2, _median_se(c) ** 2
    half = float(stats.norm.ppf(1.0 - alpha / 2.0)) * math.sqrt(var_v + var_c)
    rel, rel_ci = _relative_lift(med_v, var_v, med_c, var_c, alpha)
    return _comparison(
        metric, variant_name, control_name, "mann_whitney_u", direction, alpha, v.size, c.size,
        med_v, med_c, diff, (diff - half, diff + half), rel, rel_ci, float(result.pvalue), True, effect_sign,
    )


def compare_to_control(
    arms: Mapping[str, Any],
    *,
    control: str,
    metric: str,
    compare: Callable[..., Comparison],
    **options: Any,
) -> list[Comparison]:
    """Compare every arm but ``control`` against it with ``compare`` (one of the above).

    ``arms`` maps arm name to what ``compare`` takes (MeanSummary, ConversionCounts or raw
    samples); results keep the mapping's order. Correct them with :func:`adjust`.
    """
    if control not in arms:
        raise ValueError(f"control ({control!r}) is not one of the arms {sorted(arms)}; pass control=<arm name>")
    return [
        compare(data, arms[control], metric=metric, variant_name=name, control_name=control, **options)
        for name, data in arms.items()
        if name != control
    ]


def conversion_chi_square(arms: Mapping[str, ConversionCounts]) -> ChiSquareResult:
    """Omnibus chi-square test of independence on the arms x {converted, not} table.

    Answers "does any arm differ?" in one test; no continuity correction, so with two arms
    the p-value equals the two-proportion z-test's.
    """
    if len(arms) < 2:
        raise ValueError(f"need at least 2 arms for a chi-square test, got {len(arms)}: {sorted(arms)}")
    table = np.array([[a.conversions, a.trials - a.conversions] for a in arms.values()], dtype=float)
    if (table.sum(axis=0) == 0).any() or (table.sum(axis=1) == 0).any():
        # An empty row or column makes the expected counts zero: nothing to test yet.
        return ChiSquareResult(statistic=math.nan, dof=len(arms) - 1, p_value=math.nan)
    statistic, p, dof, _ = stats.chi2_contingency(table, correction=False)
    return ChiSquareResult(statistic=float(statistic), dof=int(dof), p_value=float(p))


# ---- multiple comparisons -----------------------------------------------------------


def adjust_p_values(p_values: Sequence[float] | np.ndarray, method: Correction | str) -> np.ndarray:
    """Holm or Benjamini-Hochberg adjusted p-values (as statsmodels ``multipletests``).

    NaN p-values (comparisons without enough data) were not tested: they stay NaN and do
    not count towards the family size.
    """
    method = _parse_correction(method)
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    tested = ~np.isnan(p)
    m = int(tested.sum())
    if m == 0:
        return out
    order = np.argsort(p[tested], kind="stable")
    ranked = p[tested][order]
    rank = np.arange(1, m + 1)
    if method is Correction.HOLM:
        adjusted = np.maximum.accumulate((m - rank + 1) * ranked)
    else:
        adjusted = np.minimum.accumulate((m / rank * ranked)[::-1])[::-1]
    unsorted = np.empty(m)
    unsorted[order] = np.minimum(adjusted, 1.0)
    out[tested] = unsorted
    return out


def adjust(comparisons: Sequence[Comparison], method: Correction | str = Correction.HOLM) -> list[Comparison]:
    """Correct a family of comparisons (all metrics x variants of one decision) together.

    Returns new comparisons whose ``p_adjusted``, ``significant`` and ``verdict`` follow
    the adjusted p-value, each at its own ``alpha``.
    """
    adjusted = adjust_p_values([c.p_value for c in comparisons], method)
    out = []
    for c, p_adj in zip(comparisons, adjusted):
        enough = c.verdict is not ABVerdict.NOT_ENOUGH_DATA
        verdict = _verdict(float(p_adj), c.effect_sign, c.alpha, c.direction, enough)
        out.append(replace(c, p_adjusted=float(p_adj), significant=verdict in (ABVerdict.BETTER, ABVerdict.WORSE),
                           verdict=verdict))
    return out


# ---- sample-ratio mismatch ----------------------------------------------------------


def check_srm(
    observed: Mapping[str, int],
    weights: Mapping[str, float],
    *,
    threshold_p: float = SRM_THRESHOLD_P,
) -> SrmResult:
    """Chi-square goodness of fit of observed arm counts against configured weights.

    ``weights`` may be fractions or percentages (they are normalised). An arm with weight
    0 that still received traffic is a mismatch outright (p = 0). With no traffic at all
    the p-value is NaN and ``mismatch`` is False: no data is not bad data.
    """
    if set(observed) != set(weights):
        raise ValueError(
            f"observed arms {sorted(observed)} and weighted arms {sorted(weights)} must be the same set"
        )
    if not 0 < threshold_p < 1:
        raise ValueError(f"threshold_p ({threshold_p}) must be in (0, 1), e.g. 0.001")
    bad = {k: v for k, v in weights.items() if not (v >= 0 and math.isfinite(v))}
    if bad or sum(weights.values()) <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {dict(weights)}")
    neg = {k: v for k, v in observed.items() if v < 0}
    if neg:
        raise ValueError(f"observed counts must be >= 0, got {neg}")
    names = list(weights)
    total = sum(observed.values())
    weight_sum = sum(weights.values())
    expected = {k: total * weights[k] / weight_sum for k in names}
    live = [k for k in names if weights[k] > 0]
    dof = len(live) - 1
    if total == 0:
        return SrmResult(dict(observed), expected, math.nan, dof, math.nan, threshold_p, False)
    if any(observed[k] > 0 for k in names if weights[k] == 0):
        return SrmResult(dict(observed), expected, math.inf, dof, 0.0, threshold_p, True)
    if dof == 0:  # one arm takes everything: counts cannot disagree with the weights
        return SrmResult(dict(observed), expected, 0.0, 0, 1.0, threshold_p, False)
    statistic, p = stats.chisquare([observed[k] for k in live], [expected[k] for k in live])
    return SrmResult(dict(observed), expected, float(statistic), dof, float(p), threshold_p, bool(p < threshold_p))


# ---- helpers -------------------------------------------------------------------------


def _comparison(metric, variant, control, test, direction, alpha, n_v, n_c, value_v, value_c,
                diff, abs_ci, rel, rel_ci, p, enough, effect_sign) -> Comparison:
    direction = Direction(direction)
    verdict = _verdict(p, effect_sign, alpha, direction, enough)
    return Comparison(
        metric=metric, variant=variant, control=control, test=test, direction=direction, alpha=alpha,
        n_variant=int(n_v), n_control=int(n_c), value_variant=float(value_v), value_control=float(value_c),
        abs_lift=float(diff), abs_ci=(float(abs_ci[0]), float(abs_ci[1])), rel_lift=float(rel),
        rel_ci=(float(rel_ci[0]), float(rel_ci[1])), p_value=float(p), p_adjusted=float(p),
        significant=verdict in (ABVerdict.BETTER, ABVerdict.WORSE), verdict=verdict, effect_sign=effect_sign,
    )


def _verdict(p: float, effect_sign: int, alpha: float, direction: Direction, enough: bool) -> ABVerdict:
    if not enough or math.isnan(p):
        return ABVerdict.NOT_ENOUGH_DATA
    if p >= alpha or effect_sign == 0:
        return ABVerdict.NO_DIFFERENCE
    good_sign = 1 if direction is Direction.HIGHER_IS_BETTER else -1
    return ABVerdict.BETTER if effect_sign == good_sign else ABVerdict.WORSE


def _relative_lift(est_v: float, var_v: float, est_c: float, var_c: float, alpha: float):
    """``est_v / est_c - 1`` with a delta-method CI (the two estimates independent)."""
    if est_c == 0 or math.isnan(est_c) or math.isnan(est_v):
        return math.nan, (math.nan, math.nan)
    rel = est_v / est_c - 1.0
    se = math.sqrt(var_v / est_c**2 + est_v**2 * var_c / est_c**4)
    half = float(stats.norm.ppf(1.0 - alpha / 2.0)) * se
    return rel, (rel - half, rel + half)


def _median_se(sorted_x: np.ndarray) -> float:
    """McKean-Schrader (1984) standard error of the median from two order statistics."""
    n = sorted_x.size
    c = int(round((n + 1) / 2.0 - _MEDIAN_SE_Z * math.sqrt(n / 4.0)))
    c = min(max(c, 1), n)
    return float(sorted_x[n - c] - sorted_x[c - 1]) / (2.0 * _MEDIAN_SE_Z)


def _sign(x: float) -> int:
    return 0 if (x == 0 or math.isnan(x)) else (1 if x > 0 else -1)


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha ({alpha}) must be in (0, 1), e.g. 0.05")


def _parse_correction(method: Correction | str) -> Correction:
    try:
        return Correction(method)
    except ValueError:
        valid = ", ".join(repr(c.value) for c in Correction)
        raise ValueError(f"correction method ({method!r}) must be one of {valid}") from None


def _as_1d_float(values, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} has {int((~np.isfinite(x)).sum())} NaN/inf values; drop or impute them first")
    return x
