"""Always-valid inference for continuously monitored experiments (mixture SPRT).

A fixed-horizon p-value checked at every look crosses alpha by chance far more often
than alpha (at 50 looks, about one A/A test in three). The mixture sequential probability
ratio test of Johari, Koomen, Pekelis & Walsh ("Peeking at A/B tests", KDD 2017; "Always
valid inference", Operations Research 2022) gives p-values and confidence intervals that
hold at every look, however often and whenever one stops.

For a difference estimate ``d`` with variance ``V`` (Gaussian, or large-sample) and the
alternative mixed over ``theta ~ N(theta0, tau^2)``, the mixture likelihood ratio is::

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 (d - theta0)^2 / (2 V (V + tau^2)))

It is a martingale under H0, so by Ville's inequality P(sup Lambda >= 1/alpha) <= alpha.
The always-valid p-value is the running minimum of 1/Lambda, hence non-increasing over
looks; the confidence sequence is the set of theta0 with Lambda < 1/alpha, intersected
over looks. Variances are plugged in from the data, as in the paper, so validity is
asymptotic; early looks with fewer than ``min_samples`` per arm are skipped.

Mixing parameter: ``tau`` is the spread of effects the test is tuned to find, in the
metric's units. The default is ``DEFAULT_TAU_EFFECT_SIZE = 0.1`` standard deviations of
one observation (pooled over the arms; for conversions sqrt(p(1-p)) of the pooled rate),
i.e. a "small" standardised effect. The test is sharpest around the sample size where
tau^2 is about ten times the variance of the difference (~2,000 per arm for this
default) and loses little for sizes an order of magnitude either side; validity holds
for any tau. Pass ``tau`` explicitly (say, the minimum detectable effect of the plan) to
tune it.

Example::

    state = None
    for look in looks:  # each look: cumulative summaries per arm
        state = sequential_means(look.variant, look.control, previous=state)
        if state.reject:
            break
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln

from serve_ab.analysis.ab import DEFAULT_ALPHA, DEFAULT_MIN_SAMPLES, ConversionCounts, MeanSummary

__all__ = [
    "DEFAULT_TAU_EFFECT_SIZE",
    "SequentialResult",
    "always_valid_p_values",
    "confidence_sequence_half_width",
    "log_mixture_likelihood_ratio",
    "sequential_means",
    "srm_always_valid_p",
    "srm_log_bayes_factor",
    "sequential_proportions",
]

DEFAULT_TAU_EFFECT_SIZE = 0.1
# The Dirichlet prior's concentration of the sequential SRM test: Lindon & Malek's own
# default (their ssrm_test package), sharp for the small imbalances a bucketing bug makes
# once there are some thousands of units.
SRM_DIRICHLET_CONCENTRATION = 10_000.0


@dataclass(frozen=True)
class SequentialResult:
    """State after one look; pass it as ``previous`` to the next look.

    ``p_value`` and ``ci`` are always valid: reject H0 (no difference) as soon as
    ``p_value <= alpha`` and the decision stands whenever one stops. An empty ``ci``
    (lower > upper) can only happen when the plug-in assumptions fail badly.
    """

    looks: int
    n_variant: int
    n_control: int
    estimate: float  # variant minus control at this look
    tau: float  # mixing standard deviation used at this look, in metric units
    likelihood_ratio: float  # this look's Lambda for theta0 = 0; NaN if the look was skipped
    p_value: float
    ci: tuple[float, float]
    alpha: float
    reject: bool


# ---- vectorised cores (also used by simulations) -------------------------------------


def log_mixture_likelihood_ratio(estimate, variance, tau, theta0=0.0):
    """log Lambda of the normal-mixture SPRT; numpy-broadcasting (logs avoid overflow)."""
    d, v, tau2 = np.asarray(estimate, float) - theta0, np.asarray(variance, float), np.square(tau)
    return 0.5 * np.log(v / (v + tau2)) + tau2 * d * d / (2.0 * v * (v + tau2))


def always_valid_p_values(estimates, variances, tau):
    """Running-minimum p-values over looks (the last axis).

    A NaN look (no variance yet) carries no evidence: fmin skips it, so it keeps the
    previous p-value, as :func:`sequential_means` does.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lr = log_mixture_likelihood_ratio(estimates, variances, tau)
    return np.fmin.accumulate(np.fmin(1.0, np.exp(-log_lr)), axis=-1)


def srm_log_bayes_factor(observed: Sequence[float], weights: Sequence[float],
                         concentration: float = SRM_DIRICHLET_CONCENTRATION) -> float:
    """log of the Bayes factor of counts per arm against the split ``weights`` (Lindon &
    Malek, "Anytime-valid inference for multinomial count data", NeurIPS 2022).

    The alternative is a Dirichlet-multinomial whose prior is centred on the weights
    (``alpha = concentration * weights / sum``); under the null (counts multinomial with the
    weights) the factor is a martingale in the units as they arrive, so by Ville's inequality
    it ever reaches 1/alpha with probability at most alpha, whenever and however often it is
    looked at. Arms of weight 0 are left out; one that has counts is a mismatch outright
    (+inf).

    >>> round(srm_log_bayes_factor([5000, 5000], [50, 50]), 3)   # a perfect split: evidence for it
    -0.347
    """
    n = np.asarray(observed, dtype=float)
    w = np.asarray(weights, dtype=float)
    if n.shape != w.shape or n.ndim != 1 or np.any(n < 0) or np.any(w < 0) or not w.sum() > 0:
        raise ValueError(f"observed {list(observed)} and weights {list(weights)} must be equally long, "
                         ">= 0, and the weights not all 0")
    if not concentration > 0:
        raise ValueError(f"concentration is {concentration!r}; it must be > 0, e.g. {SRM_DIRICHLET_CONCENTRATION:g}")
    live = w > 0
    if np.any(n[~live] > 0):
        return math.inf
    n, p = n[live], w[live] / w[live].sum()
    a = concentration * p
    log_marginal = float(gammaln(a.sum()) - gammaln(a.sum() + n.sum()) + np.sum(gammaln(a + n) - gammaln(a)))
    return log_marginal - float(np.sum(n * np.log(p)))


def srm_always_valid_p(log_bayes_factor: float) -> float:
    """``min(1, 1 / BF)``: valid at every look, since the factor reaches ``1/p`` under the
    null with probability at most ``p`` (no running minimum needed for the flag: a look
    below the threshold is an event Ville's inequality already covers)."""
    return 1.0 if log_bayes_factor <= 0 else math.exp(-log_bayes_factor)


def confidence_sequence_half_width(variance, tau, alpha):
    """Half-width of {theta0 : Lambda(theta0) < 1/alpha} around the estimate."""
    v, tau2 = np.asarray(variance, float), np.square(tau)
    return np.sqrt(v * (v + tau2) / tau2 * (2.0 * math.log(1.0 / alpha) + np.log((v + tau2) / v)))


# ---- one look at a time --------------------------------------------------------------


def sequential_means(
    variant: MeanSummary,
    control: MeanSummary,
    *,
    previous: SequentialResult | None = None,
    alpha: float = DEFAULT_ALPHA,
    tau: float | None = None,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> SequentialResult:
    """Update the always-valid test of ``mean_variant - mean_control`` with a new look.

    ``variant``/``control`` are cumulative summaries since the start of the experiment.
    """
    _check_tau(tau)
    estimate = variant.mean - control.mean
    variance = _var(variant.variance, variant.n) + _var(control.variance, control.n)
    if tau is None and min(variant.n, control.n) >= 2:
        tau = DEFAULT_TAU_EFFECT_SIZE * math.sqrt((variant.variance + control.variance) / 2.0)
    enough = min(variant.n, control.n) >= max(min_samples, 2)
    return _advance(previous, variant.n, control.n, estimate, variance, tau, alpha, enough)


def sequential_proportions(
    variant: ConversionCounts,
    control: ConversionCounts,
    *,
    previous: SequentialResult | None = None,
    alpha: float = DEFAULT_ALPHA,
    tau: float | None = None,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> SequentialResult:
    """Update the always-valid test of ``rate_variant - rate_control`` with a new look.

    The p-value and the CI use one variance, the larger of the pooled one (the variance under
    H0, as the z-test's: it keeps early looks at low rates from overstating evidence) and the
    unpooled one (the arms' own: a small arm that is truly noisier), as the report's
    comparisons do (``analysis/units.py``). With the pooled one for the p-value and the
    unpooled one for the CI, a look could reject with 0 inside its CI (15/500 against
    200/20,000), or keep a CI that excludes 0 without rejecting (2/400 against 600/20,000).
    """
    _check_tau(tau)
    n_v, n_c = variant.trials, control.trials
    enough = min(n_v, n_c) >= max(min_samples, 1)
    if not enough:
        return _advance(previous, n_v, n_c, math.nan, math.nan, tau, alpha, False)
    p_v, p_c = variant.rate, control.rate
    pooled = (variant.conversions + control.conversions) / (n_v + n_c)
    var_h0 = pooled * (1 - pooled) * (1 / n_v + 1 / n_c)
    var_own = p_v * (1 - p_v) / n_v + p_c * (1 - p_c) / n_c
    # One variance for both figures, so that the CI excludes 0 exactly when p <= alpha.
    variance = max(var_h0, var_own)
    if tau is None:
        tau = DEFAULT_TAU_EFFECT_SIZE * math.sqrt(pooled * (1 - pooled))
    return _advance(previous, n_v, n_c, p_v - p_c, variance, tau, alpha, True)


def _advance(previous, n_v, n_c, estimate, variance, tau, alpha, enough) -> SequentialResult:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha ({alpha}) must be in (0, 1), e.g. 0.05")
    if previous is not None and previous.alpha != alpha:
        # The running minimum and intersection are only valid for one alpha throughout.
        raise ValueError(f"alpha ({alpha}) differs from the previous looks' alpha ({previous.alpha}); keep it fixed")
    if previous is not None and (n_v < previous.n_variant or n_c < previous.n_control):
        raise ValueError(
            f"sample sizes went down (variant {previous.n_variant} -> {n_v}, control {previous.n_control} -> {n_c}); "
            "each look takes cumulative summaries since the start of the experiment"
        )
    p_prev = previous.p_value if previous else 1.0
    lo_prev, hi_prev = previous.ci if previous else (-math.inf, math.inf)
    looks = (previous.looks if previous else 0) + 1
    # Zero variance or zero tau carries no evidence (e.g. no conversions yet): skip the look.
    usable = enough and tau and variance > 0
    if not usable:
        return SequentialResult(looks, n_v, n_c, estimate, tau if tau is not None else math.nan, math.nan,
                                p_prev, (lo_prev, hi_prev), alpha, p_prev <= alpha)
    log_lr = float(log_mixture_likelihood_ratio(estimate, variance, tau))
    p = min(p_prev, 1.0, math.exp(-log_lr))
    half = float(confidence_sequence_half_width(variance, tau, alpha))
    ci = (max(lo_prev, estimate - half), min(hi_prev, estimate + half))
    return SequentialResult(looks, n_v, n_c, estimate, tau, math.exp(min(log_lr, 700.0)), p, ci, alpha, p <= alpha)


def _check_tau(tau: float | None) -> None:
    if tau is not None and not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau ({tau}) must be > 0, in the metric's units, e.g. the minimum detectable effect")


def _var(variance: float, n: int) -> float:
    return variance / n if n else math.nan
