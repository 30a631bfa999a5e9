"""Prediction drift between a candidate and a reference (stable) version.

Class distributions are given as count vectors (index = predicted class); vectors of
different lengths are padded with zeros, since a class one version never predicted has
count 0 there. Scores (e.g. top-class probability) are given as samples.

    >>> round(js_divergence([50, 50], [50, 50]), 6)
    0.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats
from scipy.spatial.distance import jensenshannon

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
    return float(stats.entropy(_smoothed(p, smoothing), _smoothed(q, smoothing)))


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
    return float(jensenshannon(p, q, base=2) ** 2)


def _scores(scores: ArrayLike, what: str) -> np.ndarray:
    array = np.asarray(scores, dtype=float).ravel()
    if array.size == 0:
        raise ValueError(f"{what} are empty; drift needs at least one score on each side")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contain NaN or infinity; drop them before comparing")
    return array


def ks_statistic(candidate: ArrayLike, reference: ArrayLike) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two CDFs, in [0, 1]."""
    return float(stats.ks_2samp(_scores(candidate, "candidate scores"),
                                _scores(reference, "reference scores")).statistic)


def wasserstein(candidate: ArrayLike, reference: ArrayLike) -> float:
    """Earth mover's distance between two score samples, in the scores' own unit."""
    return float(stats.wasserstein_distance(_scores(candidate, "candidate scores"),
                                            _scores(reference, "reference scores")))
