"""Design effects for the gates: how much users who send many requests shrink the evidence.

A gate's bounds (:mod:`serve_ab.rollout.gates`) are exact for independent requests, but the
requests of one user are not independent: a user whose requests fail, run slow or get one
class does so again. 2,000 requests from 100 such users carry less evidence than 2,000 from
2,000 users, and a bound that counts requests is too narrow: a candidate at an error-rate
gate's bound passed it 15-35% of the time (alpha 5%) with users sending 20-100 correlated
requests each.

A user's requests share a bucket, and buckets are independent (``STATISTICS.md``); so are
disjoint *groups* of buckets. Routers therefore count each gate figure per group
(``bucket mod NUM_GROUPS``), and the spread of the group totals gives the figure's variance
with the users' correlation in it: the "ultimate cluster" variance of survey sampling, the
delta-method variance of a ratio of sums over independent clusters. A keyless request is a
unit of its own: keyless requests are counted in one extra row, and each enters the
variance as its own cluster (exactly, from the counts), so keyless traffic keeps its exact
bound.

The ratio of that variance to the one the bound assumes (binomial) is the design effect
(Kish 1965), and a bound is computed on ``n / deff`` effective requests:

- a rate: Clopper-Pearson on the effective sample (Korn & Graubard 1998);
- a quantile: Woodruff's (1952) inversion of the bound on the proportion below it, whose
  design effect is read per group at the quantile (:attr:`GroupSums.latency_bins`, a coarse
  histogram per group);
- class drift: the test on each side's counts scaled to its effective sample (the
  first-order Rao-Scott correction, Rao & Scott 1981).

A design effect estimated from k clusters is itself uncertain, so the bounds use its upper
confidence bound (:meth:`DesignEffect.effective`).

The memory is fixed: groups x (2 + latency bins) counters per version, plus the
(group, class) pairs seen, however many users arrive.

``deff`` is at least 1 (independent requests keep their exact bound), and the spread
between groups is not estimated from fewer than two of them: the requests of a window whose
keyed traffic comes from one group count as independent, since nothing in it says how users
differ.

Example::

    sums = GroupSums()
    sums.add_many(units, ok, latency_ms, classes)     # what a router served
    effect = ratio_design_effect(sums.errors, sums.requests)   # DesignEffect(2.7, 87, 87)
    effect.effective(len(units), alpha=0.05)                   # effective requests
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import special

from serve_ab.routing import NUM_BUCKETS

__all__ = ["INDEPENDENT", "LATENCY_EDGES_MS", "NUM_GROUPS", "DesignEffect", "GroupSums", "class_design_effect",
           "effective_counts",
           "groups_of", "quantile_design_effect", "ratio_design_effect"]

#: Groups of buckets. More groups estimate the variance on more degrees of freedom (a
#: design effect from 128 groups is within about 13% of its value at one standard error);
#: each costs a few counters per version in every report.
NUM_GROUPS = 128

#: Upper edges of the per-group latency bins: powers of 2 from 1/32 ms to 2^18 ms (4.4
#: minutes), and one open bin above. The design effect of "latency <= q" changes slowly
#: with q, so a quantile reads it at the edges on either side (the larger of the two).
LATENCY_EDGES_MS = 2.0 ** np.arange(-5, 19)
_LATENCY_BINS = LATENCY_EDGES_MS.size + 1


KEYLESS = NUM_GROUPS  # the row of keyless requests, each a unit of its own
_ROWS = NUM_GROUPS + 1


def groups_of(units: list[int | None]) -> np.ndarray:
    """Each unit's group: its bucket's, or :data:`KEYLESS` for a keyless request (None)."""
    return np.array([KEYLESS if unit is None else (unit % NUM_BUCKETS) % NUM_GROUPS for unit in units],
                    dtype=np.int64)


@dataclass
class GroupSums:
    """One version's gate figures per group of buckets (and keyless requests in the last
    row, :data:`KEYLESS`), for their design effects."""

    requests: np.ndarray = field(default_factory=lambda: np.zeros(_ROWS, dtype=np.int64))
    errors: np.ndarray = field(default_factory=lambda: np.zeros(_ROWS, dtype=np.int64))
    #: Successful requests per group and latency bin (bin i: latency <= LATENCY_EDGES_MS[i]
    #: and above the edge before; the last bin is open).
    latency_bins: np.ndarray = field(
        default_factory=lambda: np.zeros((_ROWS, _LATENCY_BINS), dtype=np.int64))
    #: Predicted classes of successful requests, by (group, class).
    classes: collections.Counter = field(default_factory=collections.Counter)

    def add_many(self, units: list[int | None], ok: np.ndarray, latency_ms: np.ndarray,
                 predicted_classes: list[int | None]) -> None:
        """Requests of ``units`` (None: keyless); ``ok`` marks the successful ones, whose
        latencies are ``latency_ms`` (in the order they appear); ``predicted_classes``: each
        request's class (None: none, or failed)."""
        groups = groups_of(units)
        np.add.at(self.requests, groups, 1)
        np.add.at(self.errors, groups[~ok], 1)
        if latency_ms.size:
            bins = np.searchsorted(LATENCY_EDGES_MS, latency_ms, side="left")
            np.add.at(self.latency_bins, (groups[ok], bins), 1)
        predicted = [(int(g), c) for g, c in zip(groups.tolist(), predicted_classes) if c is not None]
        if predicted:
            self.classes.update(predicted)

    # Pickled sparse, like the latency sketch: dense, a report would carry 27 KB per version.
    def __getstate__(self) -> dict:
        bins = self.latency_bins.ravel()
        used_bins = np.flatnonzero(bins).astype(np.int32)
        used = np.flatnonzero(self.requests).astype(np.int32)
        return {"rows": used, "requests": self.requests[used], "errors": self.errors[used],
                "bins": used_bins, "bin_counts": bins[used_bins], "classes": self.classes}

    def __setstate__(self, state: dict) -> None:
        self.__init__()
        self.requests[state["rows"]] = state["requests"]
        self.errors[state["rows"]] = state["errors"]
        self.latency_bins.ravel()[state["bins"]] = state["bin_counts"]
        self.classes = state["classes"]

    def merge(self, other: GroupSums) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.latency_bins += other.latency_bins
        self.classes.update(other.classes)


@dataclass(frozen=True)
class DesignEffect:
    """How many times the variance of a figure exceeds what independent requests would give.

    The variance ratio is ``between + within``: ``between`` is estimated from the spread of
    ``groups`` group totals, ``within`` is known exactly (keyless requests, each a unit of its
    own; or the requests of a lone group, counted as independent). ``value`` is the point
    estimate, at least 1.
    """

    value: float = 1.0
    groups: int = 0
    between: float = 0.0
    within: float = 1.0

    def upper(self, alpha: float) -> float:
        """The design effect at the upper ``1 - alpha`` confidence bound of ``between``,
        which from k groups is a chi-square on k - 1 degrees of freedom; at least 1.

        Why the bound and not the estimate: with few users and errors concentrated in some,
        the estimated spread is low exactly when the error rate is (the heavy users did not
        come), so a candidate at an error-rate gate's bound passed 16% of the time at alpha
        5% on the estimate (40 users x 100 requests, ICC 0.1), and 15.5% with Korn &
        Graubard's t-based correction for degrees of freedom."""
        if self.groups < 2 or self.between <= 0.0:
            return _at_least_one(self.between + self.within)
        inflate = (self.groups - 1) / float(special.chdtri(self.groups - 1, 1 - alpha))
        return _at_least_one(self.between * inflate + self.within)

    def effective(self, n: float, alpha: float) -> float:
        """``n`` requests' worth of evidence in independent requests, for a bound at level
        ``alpha``: ``n / upper(alpha)``."""
        return n / self.upper(alpha)

    def describe(self) -> str:
        """For a gate's reason: empty where requests count as independent."""
        if self.value <= 1.0:
            return ""
        return f"; users' requests are correlated (design effect {self.value:.3g} from {self.groups} groups of users)"


INDEPENDENT = DesignEffect()


def _at_least_one(ratio: float) -> float:
    """A variance ratio as a design effect: at least 1, and exactly 1 within rounding (keyless
    requests' ratio is 1 up to the last bit, and should read as independent)."""
    return 1.0 if ratio < 1.0 + 1e-9 else ratio


def ratio_design_effect(events: np.ndarray, trials: np.ndarray) -> DesignEffect:
    """The design effect of the proportion p = sum(events) / sum(trials) over the rows of
    :class:`GroupSums` (groups, then keyless requests).

    The variance is the delta method's for a ratio of sums over independent clusters,
    ``sum_c (x_c - p n_c)^2 / N^2``: over the k groups with ``k / (k - 1)`` (fewer than two
    groups: their requests as independent), and over each keyless request as a cluster of
    one, exactly from the counts. It is compared with the binomial ``p (1 - p) / N``.
    """
    x, n = events[:NUM_GROUPS].astype(float), trials[:NUM_GROUPS].astype(float)
    used = n > 0
    x, n = x[used], n[used]
    k = int(n.size)
    keyless_x, keyless_n = float(events[KEYLESS]), float(trials[KEYLESS])
    total = float(n.sum()) + keyless_n
    if total == 0:
        return INDEPENDENT
    p = (float(x.sum()) + keyless_x) / total
    if p <= 0.0 or p >= 1.0:  # no spread to compare: the exact bound of 0 or n events stands
        return DesignEffect(1.0, k)
    scale = total * p * (1.0 - p)  # the binomial variance of the sum
    keyless = (keyless_x * (1.0 - p) ** 2 + (keyless_n - keyless_x) * p * p) / scale
    if k >= 2:
        between, within = k / (k - 1) * float(np.sum((x - p * n) ** 2)) / scale, keyless
    else:
        between, within = 0.0, float(n.sum()) / total + keyless
    return DesignEffect(_at_least_one(between + within), k, between, within)


def quantile_design_effect(latency_bins: np.ndarray, quantile_ms: float) -> DesignEffect:
    """The design effect of the proportion of latencies at or below ``quantile_ms`` (the
    larger of those at the bin edges on either side of it): Woodruff's interval for a
    quantile is the bound on that proportion, inverted."""
    per_group = latency_bins.sum(axis=1)
    below = np.cumsum(latency_bins, axis=1)  # [:, i]: latency <= LATENCY_EDGES_MS[i]
    at = int(np.searchsorted(LATENCY_EDGES_MS, quantile_ms, side="left"))
    candidates = [i for i in (at - 1, at) if 0 <= i < LATENCY_EDGES_MS.size]
    effects = [ratio_design_effect(below[:, i], per_group) for i in candidates]
    return max(effects, key=lambda d: d.value, default=INDEPENDENT)


def class_design_effect(classes: collections.Counter, width: int) -> DesignEffect:
    """A design effect for a vector of class proportions: the mean of each class's,
    weighted by ``1 - p`` (the first-order Rao-Scott correction, Rao & Scott 1981, whose
    chi-square statistic divided by it is referred to the usual distribution)."""
    if not classes:
        return INDEPENDENT
    counts = np.zeros((_ROWS, max(width, 1)), dtype=np.int64)
    for (group, cls), count in classes.items():
        if cls < width:
            counts[group, cls] += count
    per_group = counts.sum(axis=1)
    total = per_group.sum()
    if total == 0:
        return INDEPENDENT
    weights, effects = [], []
    for cls in range(counts.shape[1]):
        share = counts[:, cls].sum() / total
        if 0.0 < share < 1.0:
            weights.append(1.0 - share)
            effects.append(ratio_design_effect(counts[:, cls], per_group))
    if not weights:
        return INDEPENDENT
    between = float(np.average([e.between for e in effects], weights=weights))
    within = float(np.average([e.within for e in effects], weights=weights))
    return DesignEffect(_at_least_one(between + within), effects[0].groups, between, within)


def effective_counts(counts: tuple[int, ...], effect: DesignEffect, alpha: float) -> tuple[int, ...]:
    """Class counts scaled to the effective sample (rounded), for a test on counts."""
    scale = 1.0 / effect.upper(alpha)
    if scale >= 1.0:
        return counts
    return tuple(int(math.floor(c * scale + 0.5)) for c in counts)
