"""Prediction drift between a candidate and a reference (stable) version.

Class distributions are given as count vectors (index = predicted class); vectors of
different lengths are padded with zeros, since a class one version never predicted has
count 0 there. Scores (e.g. top-class probability) are given as samples.

Scales: ``js_divergence`` is in bits and is the *square* of ``js_distance`` (scipy's
``jensenshannon`` and Evidently report the distance), so a divergence of 0.1 is a distance
of about 0.32. A divergence measured on a small sample is biased upwards (it is never
negative), so a gate also asks :func:`class_homogeneity_test` whether the counts show any
difference at all before it calls a divergence drift.

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
    between the two CDFs at the buckets' edges, which is the statistic of the bucketed
    values (ties within a bucket, so never above the raw values' statistic: conservative),
    and its p-value from scipy's distribution of the two-sample statistic (``kstwo`` at the
    effective size n*m/(n+m), as ``ks_2samp``'s asymptotic method). ``design_effects``: each
    side's, for scores of users who send many requests; the sizes are divided by them."""
    n, m = candidate.count, reference.count
    if not n or not m:
        raise ValueError("drift needs at least one score on each side")
    counts = np.vstack([candidate.counts, reference.counts]).astype(float)
    used = counts.sum(axis=0) > 0
    cdf = np.cumsum(counts[:, used], axis=1) / np.array([[n], [m]], dtype=float)
    statistic = float(np.max(np.abs(cdf[0] - cdf[1])))
    n_eff, m_eff = n / design_effects[0], m / design_effects[1]
    effective_n = max(int(round(n_eff * m_eff / (n_eff + m_eff))), 1)
    return statistic, float(min(max(_scipy_stats().kstwo.sf(statistic, effective_n), 0.0), 1.0))


def ks_statistic_sketched(candidate: LogHistogram, reference: LogHistogram) -> float:
    return ks_test_sketched(candidate, reference)[0]


def wasserstein_sketched(candidate: LogHistogram, reference: LogHistogram) -> float:
    """Earth mover's distance between two sketches, each value at its bucket's representative
    (within 1% of the value)."""
    if not candidate.count or not reference.count:
        raise ValueError("drift needs at least one score on each side")
    (u, u_w), (v, v_w) = candidate.values_and_weights(), reference.values_and_weights()
    return float(_scipy_stats().wasserstein_distance(u, v, u_weights=u_w, v_weights=v_w))
