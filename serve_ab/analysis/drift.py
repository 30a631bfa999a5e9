"""Prediction drift between a candidate and a reference (stable) version.

Class distributions are given as count vectors (index = predicted class); vectors of
different lengths are padded with zeros, since a class one version never predicted has
count 0 there. Scores (e.g. top-class probability) are given as samples.

Scales: ``js_divergence`` is in bits and is the *square* of ``js_distance`` (scipy's
``jensenshannon`` and Evidently report the distance), so a divergence of 0.1 is a distance
of about 0.32. A divergence measured on a small sample is biased upwards (it is never
negative), so a gate judges a lower confidence bound on it instead
(:func:`class_divergence_lower_bound`, :func:`ks_lower_bound`,
:func:`wasserstein_lower_sketched`); :func:`class_homogeneity_test` and :func:`ks_test_sketched`
say whether there is any difference at all.

    >>> round(js_divergence([50, 50], [50, 50]), 6)
    0.0
    >>> round(js_distance([80, 20], [50, 50]) ** 2 - js_divergence([80, 20], [50, 50]), 12)
    0.0
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from serve_ab.analysis.sketch import LogHistogram


def _scipy_stats():
    """scipy.stats, imported on first use: a router imports this module (through the rollout's
    gates) but never runs a test, and scipy.stats costs a process ~55 MB and a second to import."""
    from scipy import stats

    return stats

ArrayLike = Sequence[float] | np.ndarray


def _counts(counts: ArrayLike, what: str) -> np.ndarray:
    array = np.asarray(counts, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D vector of counts, got shape {array.shape}")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"{what} must be finite and >= 0, got {array.tolist()}")
    if array.sum() <= 0:
        raise ValueError(f"{what} sums to 0; a distribution needs at least one observation")
    return array


def _aligned(candidate: ArrayLike, reference: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p = _counts(candidate, "candidate counts")
    q = _counts(reference, "reference counts")
    if p.size == q.size:
        return p, q
    size = max(p.size, q.size)
    return np.pad(p, (0, size - p.size)), np.pad(q, (0, size - q.size))


def _smoothed(counts: np.ndarray, smoothing: float) -> np.ndarray:
    # Additive smoothing keeps a class seen on one side only from making the value infinite.
    if not smoothing > 0:
        raise ValueError(f"smoothing is {smoothing!r}; it must be > 0, e.g. 1.0 (Laplace) or 0.5")
    smoothed = counts + smoothing
    return smoothed / smoothed.sum()


def kl_divergence(candidate: ArrayLike, reference: ArrayLike, *, smoothing: float = 1.0) -> float:
    """KL(candidate || reference) in nats, on class counts with additive smoothing."""
    p, q = _aligned(candidate, reference)
    p, q = _smoothed(p, smoothing), _smoothed(q, smoothing)
    return float(np.sum(p * np.log(p / q)))  # scipy.stats.entropy(p, q), without its overhead


def psi(candidate: ArrayLike, reference: ArrayLike, *, smoothing: float = 1.0) -> float:
    """Population stability index, ``sum((p - q) * ln(p / q))``; symmetric in its arguments.

    Rule of thumb: below 0.1 stable, 0.1 to 0.25 moderate shift, above 0.25 large shift.
    """
    p, q = _aligned(candidate, reference)
    p, q = _smoothed(p, smoothing), _smoothed(q, smoothing)
    return float(np.sum((p - q) * np.log(p / q)))


def js_divergence(candidate: ArrayLike, reference: ArrayLike) -> float:
    """Jensen-Shannon divergence in bits, in [0, 1]; finite without smoothing.

    scipy returns the JS *distance* (the square root), so it is squared here.
    """
    p, q = _aligned(candidate, reference)
    from scipy.spatial.distance import jensenshannon  # scipy on first use, as _scipy_stats

    return float(jensenshannon(p, q, base=2) ** 2)


def js_distance(candidate: ArrayLike, reference: ArrayLike) -> float:
    """Jensen-Shannon distance with base-2 logs, in [0, 1]: the square root of
    :func:`js_divergence`, and a metric (it obeys the triangle inequality)."""
    p, q = _aligned(candidate, reference)
    from scipy.spatial.distance import jensenshannon

    return float(jensenshannon(p, q, base=2))


#: Cochran's rule for the chi-square approximation: no expected count below 1 and at most
#: 20% below 5; a sparser table is tested by Monte Carlo instead.
_SPARSE_EXPECTED = 20.0  # below this many expected per cell, the Monte Carlo test
_MC_MIN_TABLES, _MC_MAX_TABLES, _MC_FIRST_BATCH = 1999, 199_999, 499
_MC_BATCH_CELLS = 2_000_000  # memory of one batch of simulated tables, in counts


@dataclass(frozen=True)
class HomogeneityTest:
    """A test that two class-count vectors come from one distribution."""

    statistic: float  # Pearson's chi-square on the 2 x classes table
    p_value: float
    classes: int  # classes seen on either side; all-zero columns are dropped
    method: str  # "chi-square", "Monte Carlo" or "none" (fewer than two classes seen)
    tables: int = 0  # Monte Carlo only: tables simulated

    def describe(self) -> str:
        if self.method == "none":
            return "one class seen on both sides, nothing to test"
        if self.method == "Monte Carlo":
            return (f"Monte Carlo chi-square test, {self.classes} classes, {self.tables} tables, "
                    f"p = {self.p_value:.3g}")
        return f"chi-square test on {self.classes} classes, p = {self.p_value:.3g}"


def class_homogeneity_test(candidate: ArrayLike, reference: ArrayLike, *, alpha: float = 0.05,
                           seed: int = 0) -> HomogeneityTest:
    """Pearson's chi-square test of homogeneity on the 2 x classes table of counts.

    Classes neither side predicted are dropped (they carry no information). When expected
    counts are small (any below 20, stricter than Cochran's rule) the chi-square
    distribution is a poor guide, so the p-value is a Monte Carlo exact test instead:
    tables with the same row and column totals are drawn from the multivariate
    hypergeometric distribution (the permutation distribution of the class labels) and
    p = (1 + tables at least as extreme) / (1 + tables). This is valid for any number of
    tables and needs no merging of sparse classes, which would hide a shift into a rare
    class. ``alpha`` sets how many tables are drawn (enough that p can fall well below it,
    1,999 to 199,999); the draw stops early once p cannot fall below ``alpha`` (the p-value
    reported is then that of the tables drawn, also >= alpha), so the verdict at ``alpha``
    is the full draw's. The seed is fixed, so the same counts always get the same p-value.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha is {alpha!r}; it must be in (0, 1), e.g. 0.05")
    p, q = _aligned(candidate, reference)
    for counts, what in ((p, "candidate"), (q, "reference")):
        if not np.all(counts == np.round(counts)):
            raise ValueError(f"{what} counts must be whole numbers for a test, got {counts.tolist()}")
    return _homogeneity(tuple(int(c) for c in p), tuple(int(c) for c in q), float(alpha), seed)


@functools.lru_cache(maxsize=256)  # every class-drift gate of one analysis asks the same
def _homogeneity(p: tuple[int, ...], q: tuple[int, ...], alpha: float, seed: int) -> HomogeneityTest:
    table = np.array([p, q], dtype=float)
    table = table[:, table.sum(axis=0) > 0]
    classes = table.shape[1]
    if classes < 2:
        return HomogeneityTest(0.0, 1.0, classes, "none")
    rows, cols = table.sum(axis=1), table.sum(axis=0)
    expected = np.outer(rows, cols) / table.sum()
    statistic = float(np.sum((table - expected) ** 2 / expected))
    # Stricter than Cochran's rule: at 5 expected per cell (50 per side, 10 classes) the
    # chi-square approximation rejected 5.2-5.8% of identical distributions at alpha 0.05; the
    # Monte Carlo test is exact at any size and cheap at these sizes.
    sparse = expected.min() < _SPARSE_EXPECTED
    if not sparse:
        return HomogeneityTest(statistic, float(_scipy_stats().chi2.sf(statistic, classes - 1)), classes,
                               "chi-square")
    tables = int(min(max(_MC_MIN_TABLES, math.ceil(20 / alpha)), _MC_MAX_TABLES))
    rng = np.random.default_rng(seed)
    most = max(1, _MC_BATCH_CELLS // classes)
    # With both margins fixed, chi-square is an increasing function of sum(a_j^2 / c_j) over
    # the first row a and the column totals c, so tables are ranked by that.
    observed = float(np.sum(table[0] ** 2 / cols))
    at_least = observed - 1e-9 * max(1.0, observed)  # ties (common when sparse) count as extreme
    extreme = drawn = 0
    while drawn < tables:
        # Batches double, so a table far from significance (most tables without drift) stops
        # after the first one.
        size = min(max(_MC_FIRST_BATCH, drawn), most, tables - drawn)
        first = rng.multivariate_hypergeometric(cols.astype(np.int64), int(rows[0]), size=size,
                                                method="count")
        extreme += int(np.sum((first * first / cols).sum(axis=1) >= at_least))
        drawn += size
        if (1 + extreme) / (1 + tables) >= alpha:  # p can no longer fall below alpha
            break
    return HomogeneityTest(statistic, (1 + extreme) / (1 + drawn), classes, "Monte Carlo", drawn)


def ks_test(candidate: ArrayLike, reference: ArrayLike) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and p-value (scipy's ``ks_2samp``, exact for
    small samples, conservative with ties)."""
    result = _scipy_stats().ks_2samp(_scores(candidate, "candidate scores"),
                                     _scores(reference, "reference scores"))
    return float(result.statistic), float(result.pvalue)


def _scores(scores: ArrayLike, what: str) -> np.ndarray:
    array = np.asarray(scores, dtype=float).ravel()
    if array.size == 0:
        raise ValueError(f"{what} are empty; drift needs at least one score on each side")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contain NaN or infinity; drop them before comparing")
    return array


def ks_statistic(candidate: ArrayLike, reference: ArrayLike) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two CDFs, in [0, 1]."""
    return float(_scipy_stats().ks_2samp(_scores(candidate, "candidate scores"),
                                _scores(reference, "reference scores")).statistic)


def wasserstein(candidate: ArrayLike, reference: ArrayLike) -> float:
    """Earth mover's distance between two score samples, in the scores' own unit."""
    return float(_scipy_stats().wasserstein_distance(_scores(candidate, "candidate scores"),
                                            _scores(reference, "reference scores")))


# -- on sketches: what the gates read, merged from every router's intervals ----------------------


def ks_test_sketched(candidate: LogHistogram, reference: LogHistogram,
                     design_effects: tuple[float, float] = (1.0, 1.0)) -> tuple[float, float]:
    """Kolmogorov-Smirnov on two log-bucket sketches (``analysis/sketch.py``): the largest gap
    between the two CDFs at the thresholds where the sketches know both exactly (the edges
    of their buckets of x and, for scores, of 1 - x: :meth:`LogHistogram.cdf_points`), which
    is the statistic of values binned at those thresholds (never above the raw values'
    statistic: conservative, by what falls between two thresholds, 1% of the distance to 0
    or to 1, whichever is nearer), and its p-value from scipy's distribution of the
    two-sample statistic (``kstwo`` at the effective size n*m/(n+m), as ``ks_2samp``'s
    asymptotic method). ``design_effects``: each side's, for scores of users who send many
    requests; the sizes are divided by them."""
    n, m = candidate.count, reference.count
    if not n or not m:
        raise ValueError("drift needs at least one score on each side")
    _, cdf1, cdf2 = candidate.cdf_points(reference)
    statistic = float(np.max(np.abs(cdf1 - cdf2)))
    n_eff, m_eff = n / design_effects[0], m / design_effects[1]
    effective_n = max(int(round(n_eff * m_eff / (n_eff + m_eff))), 1)
    return statistic, _ks_p_value(statistic, effective_n)


# Past this effective size the KS p-value is Kolmogorov's limit: scipy's kstwo.sf costs about
# n (40 ms at 50,000, 0.4-0.75 s at 500,000 where p < 0.01), paid on the controller's event
# loop at every look of a drift gate; the limit's p is never below kstwo's and within 2.5% of
# it here (0.5% past 50,000), and the gates' verdicts do not read it (their DKW bounds do).
KS_EXACT_MAX_N = 10_000


def _ks_p_value(statistic: float, effective_n: int) -> float:
    """P(D_n >= statistic) for the one-sample KS distribution at ``effective_n``."""
    stats = _scipy_stats()
    if effective_n > KS_EXACT_MAX_N:
        p_value = stats.kstwobign.sf(statistic * math.sqrt(effective_n))
    else:
        p_value = stats.kstwo.sf(statistic, effective_n)
    return float(min(max(p_value, 0.0), 1.0))


def ks_statistic_sketched(candidate: LogHistogram, reference: LogHistogram) -> float:
    return ks_test_sketched(candidate, reference)[0]


def wasserstein_sketched(candidate: LogHistogram, reference: LogHistogram) -> float:
    """Earth mover's distance between two sketches, the integral of |F_1 - F_2|, each CDF
    taken as the straight line between the thresholds where the sketches know it
    (:meth:`LogHistogram.cdf_points`: each value then within 1% of its distance from 0, or
    from 1 for scores, of where it is)."""
    if not candidate.count or not reference.count:
        raise ValueError("drift needs at least one score on each side")
    t, f1, f2 = candidate.cdf_points(reference)
    # The gap at each cell's middle: the straight lines' (exact where they do not cross).
    middle = np.abs((f1[1:] + f1[:-1]) - (f2[1:] + f2[:-1])) / 2
    return float(np.sum(np.diff(t) * middle))


# -- lower confidence bounds: what a drift gate FAILs on ------------------------------------------
#
# A divergence estimated from a sample is biased upwards, so "the estimate exceeds max" is
# no evidence that the divergence does, even when a test shows *some* difference (a real
# but harmless shift): a candidate 0.277 from stable in JS distance failed ``max: 0.3`` in
# 60-70% of windows of 25-100 predictions at alpha 0.03. A gate FAILs only when a lower
# confidence bound on the divergence itself is above max, and these are those bounds.


def _split_alpha(alpha: float, width) -> tuple[float, float]:
    """alpha shared between the two sides, a_1 + a_2 = alpha, to make the sum of the two sides'
    bound widths (``width(i, a_i)``) about the smallest. Chosen from the sample sizes alone,
    before the data are looked at, so each side's bound keeps its level."""
    fractions = np.linspace(0.05, 0.95, 19)
    best = min(fractions, key=lambda f: width(0, f * alpha) + width(1, (1 - f) * alpha))
    return float(best * alpha), float((1 - best) * alpha)


def dkw_band(n_eff: tuple[float, float], alpha: float) -> tuple[float, float]:
    """Half-widths ``(eps_1, eps_2)`` of a confidence band for each side's CDF, holding on
    both sides together with probability at least ``1 - alpha``: by the
    Dvoretzky-Kiefer-Wolfowitz inequality with Massart's constant,
    P(sup |F_hat - F| > eps) <= 2 exp(-2 n eps^2), so eps_i = sqrt(ln(2 / a_i) / (2 n_i)) with
    a_1 + a_2 = alpha. Valid for any distribution, ties and discrete values included;
    ``n_eff``: each side's (effective) sample size."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha is {alpha!r}; it must be in (0, 1)")
    if min(n_eff) <= 0:
        return 1.0, 1.0

    def eps(i: int, a: float) -> float:
        return math.sqrt(math.log(2.0 / a) / (2.0 * n_eff[i]))

    a1, a2 = _split_alpha(alpha, eps)
    return min(eps(0, a1), 1.0), min(eps(1, a2), 1.0)


def ks_lower_bound(statistic: float, band: tuple[float, float]) -> float:
    """A lower confidence bound on the Kolmogorov-Smirnov distance sup |F_1 - F_2| of the two
    distributions, from the sample's and a :func:`dkw_band`: where both true CDFs lie within
    their bands, |F_1 - F_2| >= |F_hat_1 - F_hat_2| - eps_1 - eps_2 at every point."""
    return max(statistic - band[0] - band[1], 0.0)


def wasserstein_lower_sketched(candidate: LogHistogram, reference: LogHistogram,
                               band: tuple[float, float]) -> float:
    """A lower confidence bound on the Wasserstein-1 distance, the integral of |F_1 - F_2|,
    from two sketches and a :func:`dkw_band`: the integral of (|F_hat_1 - F_hat_2| - eps_1 -
    eps_2)+, which never exceeds it where both CDFs lie in their bands (for any values,
    bounded or not). The sketches know each empirical CDF exactly at some thresholds
    (:meth:`LogHistogram.cdf_points`); between two, where the values' CDFs rise by an
    unknown path, it counts only the gap both paths must leave (conservative by at most the
    cells' width, 2% of the distance to 0, or to 1 for scores)."""
    if not candidate.count or not reference.count:
        raise ValueError("drift needs at least one score on each side")
    t, f1, f2 = candidate.cdf_points(reference)
    eps = band[0] + band[1]
    # In the cell from t[i] to t[i + 1] each CDF runs from its value at one end to the other's.
    inside_gap = np.maximum(np.maximum(f1[:-1] - f2[1:], f2[:-1] - f1[1:]) - eps, 0.0)
    return float(np.sum(np.diff(t) * inside_gap))


def _clopper_pearson(x: np.ndarray, n: np.ndarray, tail: float) -> tuple[np.ndarray, np.ndarray]:
    """Each proportion's two-sided Clopper-Pearson interval, ``tail`` in each tail; ``x`` and
    ``n`` may be fractional (effective counts)."""
    from scipy import special

    with np.errstate(all="ignore"):
        lower = np.where(x > 0, special.betaincinv(np.maximum(x, 1e-300), n - x + 1, tail), 0.0)
        upper = np.where(x < n, special.betaincinv(x + 1, np.maximum(n - x, 1e-300), 1 - tail), 1.0)
    return np.nan_to_num(lower, nan=0.0), np.nan_to_num(upper, nan=1.0)


def _term(kind: str, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Each class's term of a divergence, written so that every term is >= 0, 0 where p = q,
    and increasing in |p - q| (away from the diagonal in either argument) for any p, q >= 0:
    KL as sum p ln(p/q) - p + q (equal to KL where both sum to 1), PSI as (p - q) ln(p/q),
    JS as (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2, in bits."""
    from scipy import special

    with np.errstate(all="ignore"):
        if kind == "kl":
            return special.kl_div(p, q)
        if kind == "psi":
            return np.where(p == q, 0.0, (p - q) * np.log(p / q))
        m = (p + q) / 2
        return (special.rel_entr(p, m) + special.rel_entr(q, m)) / (2 * math.log(2))


def class_divergence_lower_bound(kind: str, candidate: ArrayLike, reference: ArrayLike, alpha: float,
                                 design_effects: tuple[ArrayLike, ArrayLike] | None = None) -> float:
    """A lower confidence bound, at level ``1 - alpha``, on the divergence between the two
    *true* class distributions behind two count vectors: ``kind`` "kl" (KL(candidate ||
    reference), nats), "psi" (nats), "js" (Jensen-Shannon divergence, bits) or
    "js_distance" (its square root). Smoothing plays no part: it is the population's
    divergence that is bounded, not the smoothed estimate's.

    Method: every class's proportion on each side gets a two-sided Clopper-Pearson interval,
    with alpha shared Bonferroni-wise over the classes and the two sides (a_1 + a_2 = alpha,
    each side's a_i split evenly over its classes), so all of them hold together with
    probability at least 1 - alpha, exactly, however sparse the counts. Each divergence is a
    sum over classes of a term that is >= 0 and grows as p and q move apart (:func:`_term`),
    so the smallest it can be while all intervals hold is at least the sum over classes of
    the term at the intervals' nearest corners (0 where they overlap); dropping the
    constraint that each side sums to 1 only lowers it. Conservative, never liberal.

    ``design_effects``: each class's design effect on each side (users who keep getting one
    class), each class then counted on its effective sample ``count / deff`` of ``n / deff``.
    """
    p, q = _aligned(candidate, reference)
    classes = p.size
    d1 = np.ones(classes) if design_effects is None else np.resize(np.asarray(design_effects[0], float), classes)
    d2 = np.ones(classes) if design_effects is None else np.resize(np.asarray(design_effects[1], float), classes)
    n1, n2 = p.sum() / d1, q.sum() / d2
    x1, x2 = p / d1, q / d2
    sizes = (float(np.mean(n1)), float(np.mean(n2)))
    stats = _scipy_stats()

    def width(i: int, a: float) -> float:  # a normal interval's width, to share alpha by
        return float(stats.norm.isf(a / (2 * classes))) / math.sqrt(sizes[i])

    a1, a2 = _split_alpha(alpha, width)
    low1, up1 = _clopper_pearson(x1, n1, a1 / (2 * classes))
    low2, up2 = _clopper_pearson(x2, n2, a2 / (2 * classes))
    base = "js" if kind == "js_distance" else kind
    above, below = low1 > up2, low2 > up1  # candidate's share clearly above stable's, or below
    # (1) every class's term at its intervals' nearest corners.
    bounds = [float(np.sum(_term(base, low1[above], up2[above])) + np.sum(_term(base, up1[below], low2[below])))]
    # (2) Merging classes never raises an f-divergence (the data-processing inequality), and
    # a two-cell split keeps what (1) drops, that each side sums to 1: for a class, or the
    # classes clearly above (or below), the share of the cell on each side is bounded by the
    # cell's intervals and its complement's. A shift into one class from all the others is
    # seen whole this way, where (1) sees it spread thin. Any split is valid where all the
    # intervals hold, so the largest of these bounds is one too.
    def binary(p_low: float, q_up: float) -> float:  # the two-cell divergence at its corner
        if p_low <= q_up:
            return 0.0
        cells = _term(base, np.array([p_low, 1 - p_low]), np.array([q_up, 1 - q_up]))
        return float(np.sum(cells))

    for j in np.flatnonzero(above):
        bounds.append(binary(low1[j], up2[j]))
    for j in np.flatnonzero(below):  # the cell's complement is clearly above
        bounds.append(binary(1 - up1[j], 1 - low2[j]))
    def share(low: np.ndarray, up: np.ndarray, cell: np.ndarray) -> tuple[float, float]:
        """Bounds on a cell's share from its classes' intervals and its complement's."""
        return (max(float(low[cell].sum()), 1 - float(up[~cell].sum())),
                min(float(up[cell].sum()), 1 - float(low[~cell].sum())))

    if above.any() and not above.all():
        bounds.append(binary(share(low1, up1, above)[0], share(low2, up2, above)[1]))
    if below.any() and not below.all():  # its complement is clearly above
        bounds.append(binary(1 - share(low1, up1, below)[1], 1 - share(low2, up2, below)[0]))
    total = max(bounds)
    return math.sqrt(total) if kind == "js_distance" else total
