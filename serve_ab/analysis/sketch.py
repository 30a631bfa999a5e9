"""A mergeable histogram with a stated relative error: latencies and scores in fixed memory.

Routers summarise what they served per interval and the controller merges the summaries
(see ``analysis/aggregate.py``), so quantiles cannot come from raw values. This is the
log-bucketed sketch of DDSketch (Masson, Rim & Lee 2019) with a dense store over a fixed
range: bucket ``k > 0`` holds the values in ``(MIN_ABS * g^(k-1), MIN_ABS * g^k]`` with
``g = (1 + a) / (1 - a)``, negative values mirror it, and values below ``MIN_ABS`` in
magnitude share bucket 0. Every value in a bucket is within ``RELATIVE_ACCURACY`` (1%) of
the bucket's representative value, so any quantile read from it is within 1% of the
sample's own. The buckets are the same on every replica: merging is adding counts, exact
and associative, so a window merged from any number of routers and intervals is the same.

Rank-based confidence bounds stay valid: the k-th order statistic lies inside the bucket
that holds rank k, so an upper bound takes that bucket's upper edge and a lower bound its
lower edge (conservative by at most the bucket's width, 2%).

Example::

    h = LogHistogram()
    h.add(12.5); h.add(3.0)
    h.quantile(0.5), h.count, h.mean
    h.merge(other)                 # another router's interval
    LogHistogram.from_wire(h.to_wire())
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from serve_ab.analysis.wire import narrow

__all__ = ["MAX_ABS", "MIN_ABS", "RELATIVE_ACCURACY", "LogHistogram", "bucket_indices"]

RELATIVE_ACCURACY = 0.01
_GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_LOG_GAMMA = math.log(_GAMMA)
MIN_ABS = 1e-6  # below this magnitude, values share the zero bucket (1 ns as a latency in ms)
MAX_ABS = 1e9  # above it, values are counted in the last bucket (11 days as a latency in ms)
_K = math.ceil(math.log(MAX_ABS / MIN_ABS) / _LOG_GAMMA)  # buckets per sign: 1,727
_SIZE = 2 * _K + 1  # negative buckets, zero, positive buckets, in value order


def _index(value: float) -> int:
    """The dense index of ``value``'s bucket (``_K`` is zero; lower indices are negative)."""
    magnitude = abs(value)
    if magnitude < MIN_ABS:
        return _K
    k = min(max(math.ceil(math.log(magnitude / MIN_ABS) / _LOG_GAMMA), 1), _K)
    return _K + k if value > 0 else _K - k


def bucket_indices(values: np.ndarray) -> np.ndarray:
    """The dense bucket index of each value of a float array (:func:`_index`, vectorised)."""
    magnitude = np.abs(values)
    with np.errstate(divide="ignore"):
        k = np.clip(np.ceil(np.log(np.maximum(magnitude, MIN_ABS) / MIN_ABS) / _LOG_GAMMA), 1, _K)
    k = np.where(magnitude < MIN_ABS, 0, k).astype(np.int64)
    return _K + np.sign(values).astype(np.int64) * k


def _edges(index: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """The (lower, upper) edge of each bucket; the zero bucket spans (-MIN_ABS, MIN_ABS)."""
    k = np.asarray(index) - _K
    magnitude_hi = MIN_ABS * _GAMMA ** np.abs(k).astype(float)
    magnitude_lo = np.where(np.abs(k) > 0, magnitude_hi / _GAMMA, 0.0)
    lower = np.where(k > 0, magnitude_lo, np.where(k < 0, -magnitude_hi, -MIN_ABS))
    upper = np.where(k > 0, magnitude_hi, np.where(k < 0, -magnitude_lo, MIN_ABS))
    return lower, upper


def _representative(index: np.ndarray | int) -> np.ndarray:
    """The value within RELATIVE_ACCURACY of every value in the bucket (0 for the zero bucket)."""
    k = np.asarray(index) - _K
    magnitude = MIN_ABS * 2.0 * _GAMMA ** np.abs(k).astype(float) / (_GAMMA + 1.0)
    return np.where(k == 0, 0.0, np.sign(k) * magnitude)


class LogHistogram:
    """Counts of values in log buckets, plus their exact count, sum, minimum and maximum."""

    __slots__ = ("counts", "count", "total", "min", "max")

    def __init__(self) -> None:
        self.counts = np.zeros(_SIZE, dtype=np.int64)
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    @classmethod
    def of(cls, values: Iterable[float]) -> LogHistogram:
        """A histogram of ``values`` (finite ones; callers drop NaN before)."""
        out = cls()
        array = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float).ravel()
        if array.size:
            out.add_many(array)
        return out

    def add(self, value: float) -> None:
        self.counts[_index(value)] += 1
        self.count += 1
        self.total += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def add_many(self, values: np.ndarray, indices: np.ndarray | None = None) -> None:
        """:meth:`add` of every value of a float array (the sum may round differently);
        ``indices``: their :func:`bucket_indices`, where the caller has them already."""
        if not values.size:
            return
        np.add.at(self.counts, bucket_indices(values) if indices is None else indices, 1)
        self.count += int(values.size)
        self.total += float(values.sum())
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))

    def merge(self, other: LogHistogram) -> None:
        self.counts += other.counts
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def copy(self) -> LogHistogram:
        out = LogHistogram()
        out.merge(self)
        return out

    def __len__(self) -> int:
        return self.count

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    # -- order statistics ----------------------------------------------------------------------

    def _bucket_of_rank(self, rank: int) -> int:
        """The dense index of the bucket holding the ``rank``-th smallest value (0-based)."""
        cumulative = np.cumsum(self.counts)
        return int(np.searchsorted(cumulative, rank, side="right"))

    def value_at_rank(self, rank: int) -> float:
        """The ``rank``-th smallest value (0-based), within RELATIVE_ACCURACY; the exact
        minimum and maximum at the ends."""
        if rank <= 0:
            return self.min
        if rank >= self.count - 1:
            return self.max
        value = float(_representative(self._bucket_of_rank(rank)))
        return min(max(value, self.min), self.max)

    def rank_bounds(self, rank: int) -> tuple[float, float]:
        """Values certain to lie at or below, and at or above, the ``rank``-th smallest value."""
        index = self._bucket_of_rank(rank)
        lower, upper = _edges(index)
        return max(float(lower), self.min), min(float(upper), self.max)

    def quantile(self, q: float) -> float:
        """The q-quantile as numpy's default (linear) percentile would give on the raw values,
        within RELATIVE_ACCURACY. NaN when empty."""
        if not self.count:
            return math.nan
        h = (self.count - 1) * q
        below = math.floor(h)
        low = self.value_at_rank(below)
        if h == below:
            return low
        high = self.value_at_rank(below + 1)
        return low + (h - below) * (high - low)

    def values_and_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Each non-empty bucket's representative value and count (for weighted statistics)."""
        used = np.flatnonzero(self.counts)
        return _representative(used).astype(float), self.counts[used].astype(float)

    def histogram(self, edges: np.ndarray) -> np.ndarray:
        """Counts in the bins ``edges`` defines (as numpy.histogram), by representative value;
        values beyond the last edge are counted in the last bin."""
        values, weights = self.values_and_weights()
        values = np.minimum(values, edges[-1])
        return np.histogram(values, bins=edges, weights=weights)[0].astype(int)

    # -- the wire and the store -----------------------------------------------------------------

    # Pickled sparse: a router's report would otherwise carry 27.6 KB (3,455 int64 counts) per
    # histogram.
    def __getstate__(self) -> dict[str, Any]:
        used = np.flatnonzero(self.counts)
        return {"index": narrow(used), "counts": narrow(self.counts[used]), "count": self.count, "sum": self.total,
                "min": self.min if self.count else None, "max": self.max if self.count else None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        restored = LogHistogram.from_wire(state)
        for name in self.__slots__:
            setattr(self, name, getattr(restored, name))

    def to_wire(self) -> dict[str, Any]:
        """Sparse plain data: a few hundred non-empty buckets at most, for any number of values."""
        used = np.flatnonzero(self.counts)
        return {"index": used.tolist(), "counts": self.counts[used].tolist(), "count": self.count,
                "sum": self.total, "min": self.min if self.count else None,
                "max": self.max if self.count else None}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any] | None) -> LogHistogram:
        out = cls()
        if not data or not data.get("count"):
            return out
        index = np.asarray(data["index"], dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= _SIZE):
            raise ValueError(f"histogram bucket index out of range [0, {_SIZE}): {index.min()}..{index.max()}")
        out.counts[index] = np.asarray(data["counts"], dtype=np.int64)
        out.count = int(data["count"])
        out.total = float(data["sum"])
        out.min, out.max = float(data["min"]), float(data["max"])
        return out
