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

Scores (``LogHistogram(complement=True)``) also count ``1 - x`` in the same buckets. 1% of
``x`` is 1% of the gap to 1 only far from 1: a confident classifier's scores, 0.99-0.9999,
fall in two or three buckets of ``x`` (everything from 0.9975 up shares the last below 1),
and a drop of its confidence by x0.995 read KS 0.05 where the raw scores give 0.52. The
buckets of ``1 - x`` hold each score within 1% of its distance from 1, so the two together
know each side's CDF exactly at every edge of either (:meth:`cdf_points`), fine near 0 and
near 1, for any real ``x`` (logits too). Merging adds both; a histogram merged with one
that did not count ``1 - x`` (a router of the code before, in a rolling upgrade) no longer
knows it (``complement`` None) and reads as before.

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

    __slots__ = ("counts", "count", "total", "min", "max", "complement")

    def __init__(self, complement: bool = False) -> None:
        self.counts = np.zeros(_SIZE, dtype=np.int64)
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf
        #: Counts of ``1 - x`` in the same buckets (see the module's docstring); None where
        #: not kept (latencies) or no longer known for every value (merged with one without).
        self.complement: np.ndarray | None = np.zeros(_SIZE, dtype=np.int64) if complement else None

    @classmethod
    def of(cls, values: Iterable[float], complement: bool = False) -> LogHistogram:
        """A histogram of ``values`` (finite ones; callers drop NaN before)."""
        out = cls(complement)
        array = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float).ravel()
        if array.size:
            out.add_many(array)
        return out

    def add(self, value: float) -> None:
        self.counts[_index(value)] += 1
        if self.complement is not None:
            self.complement[_index(1.0 - value)] += 1
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
        if self.complement is not None:
            np.add.at(self.complement, bucket_indices(1.0 - values), 1)
        self.count += int(values.size)
        self.total += float(values.sum())
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))

    def merge(self, other: LogHistogram) -> None:
        if other.complement is not None and (self.complement is not None or not self.count):
            if self.complement is None:  # nothing counted here yet: nothing unknown either
                self.complement = np.zeros(_SIZE, dtype=np.int64)
            self.complement += other.complement
        elif other.count:  # values whose 1 - x nobody counted: the complement is no longer whole
            self.complement = None
        self.counts += other.counts
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def without(self, part: LogHistogram) -> LogHistogram:
        """The values of this histogram that are not ``part``'s, where ``part`` counted a subset
        of them (the same buckets everywhere make the difference exact, bucket by bucket): e.g.
        a version's latencies less its pinned answers'. Its minimum and maximum are the
        representatives of its lowest and highest buckets, within the sketch's 1% as every
        other rank (the exact ones may have been ``part``'s); the counts of 1 - x are dropped.
        A ``part`` that is not a subset (counts above this one's) leaves 0 in those buckets."""
        out = LogHistogram()
        if not part.count:
            out.merge(self)
            out.complement = None
            return out
        out.counts = np.maximum(self.counts - part.counts, 0)
        out.count = int(out.counts.sum())
        if out.count:
            used = np.flatnonzero(out.counts)
            ends = _representative(np.array([used[0], used[-1]]))
            out.min = min(max(float(ends[0]), self.min), self.max)
            out.max = min(max(float(ends[1]), self.min), self.max)
            # The sum less the part's, unless the part was not a subset (then the buckets' own).
            out.total = self.total - part.total if out.count == self.count - part.count else \
                float(_representative(used) @ out.counts[used])
        return out

    def copy(self) -> LogHistogram:
        out = LogHistogram(self.complement is not None)
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

    def cdf_points(self, other: LogHistogram) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Thresholds ``t`` (ascending) at which both histograms know their values' empirical
        CDF exactly, and the two CDFs there: the edges of every bucket either uses, and, where
        both count ``1 - x``, one minus the edges of those buckets too (the finer of the two
        near 1). Between consecutive thresholds each CDF rises by a path the histograms do not
        know. Ties at an edge's exact value count on either side, as the buckets file them."""
        if not self.count or not other.count:
            raise ValueError("a CDF needs at least one value on each side")
        sizes = np.array([[self.count], [other.count]], dtype=float)
        counts = np.vstack([self.counts, other.counts])
        used = np.flatnonzero(counts.sum(axis=0) > 0)
        lower, upper = _edges(used)
        after = np.cumsum(counts[:, used], axis=1)
        before = after - counts[:, used]
        points = [(lower, before), (upper, after)]
        if self.complement is not None and other.complement is not None:
            # x <= 1 - e exactly where 1 - x >= e: the counts of 1 - x from the top down.
            reflected = np.vstack([self.complement, other.complement])
            used = np.flatnonzero(reflected.sum(axis=0) > 0)
            lower, upper = _edges(used)
            at_or_above = sizes.astype(np.int64) - np.cumsum(reflected[:, used], axis=1) + reflected[:, used]
            points += [(1.0 - lower, at_or_above), (1.0 - upper, at_or_above - reflected[:, used])]
        t = np.concatenate([p[0] for p in points])
        cdf = np.hstack([p[1] for p in points]) / sizes
        # By threshold, then by CDF, so that tied thresholds stay in CDF order.
        order = np.lexsort((cdf[0] + cdf[1], t))
        return t[order], cdf[0, order], cdf[1, order]

    # -- the wire and the store -----------------------------------------------------------------

    # Pickled sparse: a router's report would otherwise carry 27.6 KB (3,455 int64 counts) per
    # histogram.
    # The counts of 1 - x ride as two more keys, which the code before ignores (from_wire
    # reads the keys it knows): a controller of either release reads either router's.
    def __getstate__(self) -> dict[str, Any]:
        used = np.flatnonzero(self.counts)
        state = {"index": narrow(used), "counts": narrow(self.counts[used]), "count": self.count, "sum": self.total,
                 "min": self.min if self.count else None, "max": self.max if self.count else None}
        if self.complement is not None:
            used = np.flatnonzero(self.complement)
            state["complement_index"], state["complement_counts"] = narrow(used), narrow(self.complement[used])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        restored = LogHistogram.from_wire(state)
        for name in self.__slots__:
            setattr(self, name, getattr(restored, name))

    def to_wire(self) -> dict[str, Any]:
        """Sparse plain data: a few hundred non-empty buckets at most, for any number of values."""
        used = np.flatnonzero(self.counts)
        wire = {"index": used.tolist(), "counts": self.counts[used].tolist(), "count": self.count,
                "sum": self.total, "min": self.min if self.count else None,
                "max": self.max if self.count else None}
        if self.complement is not None:
            used = np.flatnonzero(self.complement)
            wire["complement_index"], wire["complement_counts"] = used.tolist(), self.complement[used].tolist()
        return wire

    @classmethod
    def from_wire(cls, data: Mapping[str, Any] | None) -> LogHistogram:
        """What :meth:`to_wire` (or the pickled state) holds; one written before the counts
        of 1 - x were kept reads without them. ValueError for indices out of range, or
        counts of 1 - x that are not one per value."""
        out = cls(complement=bool(data) and "complement_index" in data)
        if not data or not data.get("count"):
            return out
        index, counts = _checked_buckets(data["index"], data["counts"], "")
        out.counts[index] = counts
        if out.complement is not None:
            index, counts = _checked_buckets(data["complement_index"], data.get("complement_counts"), " of 1 - x")
            out.complement[index] = counts
            if int(out.complement.sum()) != int(data["count"]):
                raise ValueError(f"histogram counts of 1 - x sum to {int(out.complement.sum())}, "
                                 f"not its count {int(data['count'])}")
        out.count = int(data["count"])
        out.total = float(data["sum"])
        out.min, out.max = float(data["min"]), float(data["max"])
        return out


def _checked_index(index: Any) -> np.ndarray:
    array = np.asarray(index, dtype=np.int64)
    if array.size and (array.min() < 0 or array.max() >= _SIZE):
        raise ValueError(f"histogram bucket index out of range [0, {_SIZE}): {array.min()}..{array.max()}")
    return array


def _checked_buckets(index: Any, counts: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Bucket indices and their counts, one each, none negative: a negative count that the
    sum check lets through (-1 and 2 for one value) would put a CDF below 0 or above 1."""
    if counts is None:
        raise ValueError(f"histogram buckets{what}: indices without their counts")
    indices, numbers = _checked_index(index), np.asarray(counts, dtype=np.int64)
    if indices.shape != numbers.shape or indices.ndim != 1:
        raise ValueError(f"histogram buckets{what}: {indices.size} indices and {numbers.size} counts; "
                         "they must be one count per index")
    if numbers.size and numbers.min() < 0:
        raise ValueError(f"histogram counts{what} must not be negative: {int(numbers.min())}")
    return indices, numbers
