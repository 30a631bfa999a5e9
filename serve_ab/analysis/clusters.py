"""Design effects for the gates: how much users who send many requests shrink the evidence.

A gate's bounds (:mod:`serve_ab.rollout.gates`) are exact for independent requests, but the
requests of one user are not independent: a user whose requests fail, run slow or get one
class does so again. 2,000 requests from 100 such users carry less evidence than 2,000 from
2,000 users, and a bound that counts requests is too narrow: a candidate at an error-rate
gate's bound passed it 15-35% of the time (alpha 5%) with users sending 20-100 correlated
requests each.

A user's requests share a bucket, and buckets are independent; so are
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
  first-order Rao-Scott correction, Rao & Scott 1981);
- scores (the KS test of ``drift_ks`` and ``drift_wasserstein``): each side's size over
  the design effect of the proportions below each score bin's edge, averaged with weights
  F (1 - F) (:func:`score_design_effect`; :attr:`GroupSums.score_bins`);
- feedback: the controller joins each report to its request's user, and keeps the values
  and outcomes per group likewise (:class:`ValueGroups`): a rate as above, a mean by
  Student's t with its variance times the design effect;
- shadow agreement: a mirrored copy counts under its request's user, and each pair's
  agreement (0 or 1) is kept per group (``ShadowStats.agreement_groups``), a rate as above.

A design effect estimated from k clusters is itself uncertain, so the bounds use its upper
confidence bound (:meth:`DesignEffect.effective`). When errors are rare, that bound says
little: a few groups hold every error, the spread's degrees of freedom fall to 1 or 2, and at
the small alphas of a step's later analyses the bound read thousands where the estimate read
2-5 (a keyed A/A canary at 400 requests/s ran out its deadline in 7 of 40 runs,
``rollout_calibration.py``; 1 of 40 with the ceiling). So
the bound is also capped by a ceiling that needs no estimate (:meth:`GroupSums.ceiling`):
n requests whose users sent n_u each can have a design effect of at most
``sum(n_u^2) / n``, the one users who always agree with themselves would give (Kish's
``1 + (m - 1) rho`` at rho = 1, with m the request-weighted mean of n_u). It holds whatever
the correlation within a user, as long as a user's propensity is not tied to how many
requests they send. Routers count requests per cell of users (:data:`CELLS`, by the key's
hash), so the sum is of cells, which holds whole users: at least the users' sum, and within
a few percent of it while a window has under ~3,000 requests of the version; with more, the
estimated bound is the smaller one anyway. Feedback and shadow agreements
(:class:`ValueGroups`) count their values per bucket of users (all a feedback token names),
for the same ceiling over how many values each user gave (:meth:`ValueGroups.ceiling`).

The memory is fixed: groups x (2 + latency bins) counters per version, plus the
(group, class) and (group, score bin) pairs seen, however many users arrive.

``deff`` is at least 1, and keyless requests keep their exact bound. Keyed requests from
fewer than :data:`MIN_GROUPS` groups say too little of how users differ: each group counts
as one unit (so does a canary whose weight owns fewer than 20 buckets, 0.2%). Independent
requests of keyed users pay for the uncertainty of the estimated spread: at 128 groups their
evidence shrinks by a fifth to a third.

Example::

    sums = GroupSums()
    sums.add_many(units, ok, latency_ms, classes)     # what a router served
    effect = ratio_design_effect(sums.errors, sums.requests)   # effect.value 2.7, .groups 87
    effect.effective(len(units), alpha=0.05)                   # effective requests
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import special

from serve_ab.analysis.group_counts import GroupCounts
from serve_ab.analysis.wire import narrow
from serve_ab.routing import NUM_BUCKETS

__all__ = ["CELLS", "INDEPENDENT", "MIN_GROUPS", "class_design_effects", "ValueGroups", "mean_design_effect", "LATENCY_EDGES_MS", "NUM_GROUPS", "DesignEffect", "GroupSums", "class_design_effect",
           "effective_counts",
           "groups_of", "quantile_design_effect", "ratio_design_effect", "score_design_effect",
           "SCORE_BIN_BUCKETS"]

#: Groups of buckets. More groups estimate the variance on more degrees of freedom (a
#: design effect from 128 groups is within about 13% of its value at one standard error);
#: each costs a few counters per version in every report.
NUM_GROUPS = 128

#: Cells of users for the concentration ceiling (:meth:`GroupSums.ceiling`): a keyed request's
#: cell is ``(unit // NUM_BUCKETS) % CELLS``, bits of its key's hash apart from its bucket's,
#: so one user's requests share a cell and users spread over them. Two users in one cell make
#: the ceiling larger (safe), by about n / CELLS for n requests.
CELLS = 1 << 16

#: Below this many groups of keyed requests, the spread between them is not estimated:
#: each group counts as one unit (a cluster-level analysis). With 2-20 users the spread of
#: their totals said too little: a candidate at an error-rate gate's bound passed 15-60%
#: of the time (alpha 5%), often on windows with no error at all; from 20 groups up, with
#: the kurtosis' degrees of freedom, at most about alpha (stats_calibration scenario 6).
MIN_GROUPS = 20

#: Upper edges of the per-group latency bins: powers of 2^(1/4) (19% apart) from 1/32 ms to
#: 2^18 ms (4.4 minutes), and one open bin above. A quantile reads the design effect of
#: "latency <= q" at the edges on either side of it (the larger of the two); bins a factor
#: 2 wide missed users whose latencies differed within one bin (4-8 ms, say).
LATENCY_EDGES_MS = 2.0 ** np.arange(-5, 18.01, 0.25)
_LATENCY_BINS = LATENCY_EDGES_MS.size + 1


#: Score bins per group: this many consecutive buckets of the scores' sketch (each 2% wide,
#: analysis/sketch.py) make one, a factor of about 1.17, as fine as the latency bins. The KS
#: test's design effect averages those of "score <= edge" over the bins' edges
#: (:func:`score_design_effect`); one bucket a bin would pickle an interval 2x larger and
#: hold 8x more (group, bin) pairs in the controller's windows.
SCORE_BIN_BUCKETS = 8
#: Below this F (1 - F) at every bin edge (no edge within the middle 80% of the scores: they
#: span less than a bin or so), the edges cannot say how users' scores differ, and the
#: design effect of the mean score stands in.
_MIN_EDGE_WEIGHT = 0.09

KEYLESS = NUM_GROUPS  # the row of keyless requests, each a unit of its own
_ROWS = NUM_GROUPS + 1


def groups_of(units: list[int | None]) -> np.ndarray:
    """Each unit's group: its bucket's, or :data:`KEYLESS` for a keyless request (None)."""
    return np.array([KEYLESS if unit is None else (unit % NUM_BUCKETS) % NUM_GROUPS for unit in units],
                    dtype=np.int64)


class CellCounts:
    """Keyed requests per cell of users (:data:`CELLS`), for :meth:`GroupSums.ceiling`.

    Sparse (the cells touched, uint16, and their counts, int32: 6 bytes a cell) while under
    half the cells are touched, dense (one int32 counter per cell, 256 KB) past that: a
    controller keeps one per version in each second's slot of its windows, where a dict of a
    busy second's cells would cost some 100 bytes a cell, and one running total per step,
    which a busy stable fills. A router appends its requests' cells and counts them every
    :data:`_PENDING_MAX` requests and when its report is pickled.

    ``complete`` is False where some keyed requests were counted without their cells (a
    router of an older release sent them): then there is no ceiling."""

    __slots__ = ("_new", "_keys", "_counts", "_dense", "complete")

    def __init__(self, complete: bool = True) -> None:
        self._new: list[int] = []  # cells of requests not yet counted
        self._keys = np.zeros(0, dtype=np.uint16)
        self._counts = np.zeros(0, dtype=np.int32)
        self._dense: np.ndarray | None = None
        self.complete = complete

    def add(self, cells: list[int]) -> None:
        self._new.extend(cells)
        if len(self._new) > _PENDING_MAX:
            self._settle()

    def sparse(self) -> tuple[np.ndarray, np.ndarray]:
        """The cells with requests (uint16) and their counts (int32)."""
        self._settle()
        if self._dense is not None:
            keys = np.flatnonzero(self._dense).astype(np.uint16)
            return keys, self._dense[keys]
        return self._keys, self._counts

    def merge(self, other: CellCounts) -> None:
        keys, counts = other.sparse()
        self._settle()
        self._fold(keys, counts)
        self.complete = self.complete and other.complete

    def total(self) -> int:
        return int(self.sparse()[1].sum(dtype=np.int64))

    def square_sum(self) -> float:
        counts = self.sparse()[1].astype(np.float64)  # squares of int32 counts overflow int32
        return float(np.dot(counts, counts))

    def __len__(self) -> int:
        return int(self.sparse()[0].size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CellCounts):
            return NotImplemented
        (keys, counts), (other_keys, other_counts) = self.sparse(), other.sparse()
        return (self.complete == other.complete and np.array_equal(keys, other_keys)
                and np.array_equal(counts, other_counts))

    def as_dict(self) -> dict[int, int]:
        keys, counts = self.sparse()
        return dict(zip(keys.tolist(), counts.tolist()))

    def _settle(self) -> None:
        if self._new:
            keys, counts = np.unique(np.array(self._new, dtype=np.uint16), return_counts=True)
            self._new = []
            self._fold(keys, counts.astype(np.int32))

    def _fold(self, keys: np.ndarray, counts: np.ndarray) -> None:
        if not keys.size:
            return
        if self._dense is None and self._keys.size + keys.size > _DENSE_AFTER:
            self._dense = np.zeros(CELLS, dtype=np.int32)
            self._dense[self._keys] = self._counts
        if self._dense is not None:
            self._dense[keys] += counts  # keys are distinct: a plain fancy add is exact
            return
        merged, inverse = np.unique(np.concatenate([self._keys, keys.astype(np.uint16)]), return_inverse=True)
        summed = np.bincount(inverse, weights=np.concatenate([self._counts, counts]), minlength=merged.size)
        self._keys, self._counts = merged, summed.astype(np.int32)

    # Pickled as plain arrays inside GroupSums' state (GroupSums.__getstate__), so that a
    # controller of the previous release still reads a newer router's report.
    def to_state(self) -> dict:
        keys, counts = self.sparse()
        return {"cells": keys, "cell_counts": narrow(counts), "cells_complete": self.complete}

    @classmethod
    def from_state(cls, state: dict) -> CellCounts:
        """From :meth:`to_state`'s keys in ``state``; without them (an older router's), an
        incomplete one."""
        if "cells" not in state:
            return cls(complete=False)
        out = cls(complete=bool(state.get("cells_complete", True)))
        out._fold(np.asarray(state["cells"]).astype(np.uint16), np.asarray(state["cell_counts"]).astype(np.int32))
        return out


#: Past this many cells touched, a :class:`CellCounts` keeps one counter per cell (sparse, it
#: would then take more than the dense array's 256 KB).
_DENSE_AFTER = CELLS // 2
#: Requests' cells a router holds before counting them (a list of ints until then).
_PENDING_MAX = 4096


@dataclass
class GroupSums:
    """One version's gate figures per group of buckets (and keyless requests in the last
    row, :data:`KEYLESS`), for their design effects."""

    requests: np.ndarray = field(default_factory=lambda: np.zeros(_ROWS, dtype=np.int64))
    errors: np.ndarray = field(default_factory=lambda: np.zeros(_ROWS, dtype=np.int64))
    #: Successful requests per group and latency bin (bin i: latency <= LATENCY_EDGES_MS[i]
    #: and above the edge before; the last bin is open).
    latency_bins: np.ndarray = field(
        default_factory=lambda: np.zeros((_ROWS, _LATENCY_BINS), dtype=np.int32))
    #: Predicted classes of successful requests, by (group, class).
    classes: GroupCounts = field(default_factory=lambda: GroupCounts(_ROWS))
    #: Scores of successful requests, by (group, score bin): bin b holds the sketch buckets
    #: b * SCORE_BIN_BUCKETS to (b + 1) * SCORE_BIN_BUCKETS - 1.
    score_bins: GroupCounts = field(default_factory=lambda: GroupCounts(_ROWS))
    #: The same scores' count, sum and sum of squares per group (for scores too close together
    #: for the bins).
    score_values: ValueGroups = field(default_factory=lambda: ValueGroups())
    #: Keyed requests per cell of users (:data:`CELLS`), for :meth:`ceiling`.
    cells: CellCounts = field(default_factory=CellCounts)

    def add_many(self, units: list[int | None], ok: np.ndarray, latency_ms: np.ndarray,
                 predicted_classes: list[int | None], scores: np.ndarray | None = None,
                 score_buckets: np.ndarray | None = None) -> None:
        """Requests of ``units`` (None: keyless); ``ok`` marks the successful ones, whose
        latencies are ``latency_ms`` (in the order they appear); ``predicted_classes``: each
        request's class (None: none, or failed); ``scores`` and ``score_buckets``: each
        request's score and its sketch bucket (:func:`~serve_ab.analysis.sketch.bucket_indices`;
        -1: no score)."""
        groups = groups_of(units)
        np.add.at(self.requests, groups, 1)
        self.cells.add([(unit // NUM_BUCKETS) % CELLS for unit in units if unit is not None])
        np.add.at(self.errors, groups[~ok], 1)
        if latency_ms.size:
            bins = np.searchsorted(LATENCY_EDGES_MS, latency_ms, side="left")
            np.add.at(self.latency_bins, (groups[ok], bins), 1)
        predicted = [i for i, c in enumerate(predicted_classes) if c is not None]
        if predicted:
            self.classes.add(groups[predicted], np.array([predicted_classes[i] for i in predicted], dtype=np.int64))
        if score_buckets is not None:
            scored = score_buckets >= 0
            if scored.any():
                self.score_bins.add(groups[scored], score_buckets[scored] // SCORE_BIN_BUCKETS)
                self.score_values.add_many(groups[scored], scores[scored])

    # Pickled sparse, like the latency sketch: dense, a report would carry 50 KB per version.
    # (int32 bins: a window would need 2 billion requests of one group in one bin to overflow.)
    # Classes and score bins go as arrays under new names ("class_pairs", "score_pairs"; they
    # were Counters under "classes" and "score_bins"): a controller of the release before
    # fails to read such a report, and the router sends its figures with the next interval,
    # once the controller has been replaced too (router.flush_once). Read as Counters, they
    # would have been read wrong.
    def __getstate__(self) -> dict:
        bins = self.latency_bins.ravel()
        used_bins = np.flatnonzero(bins)
        used = np.flatnonzero(self.requests)
        return {"rows": narrow(used), "requests": narrow(self.requests[used]), "errors": narrow(self.errors[used]),
                "bins": narrow(used_bins), "bin_counts": narrow(bins[used_bins]), "class_pairs": self.classes.to_state(),
                "score_pairs": self.score_bins.to_state(), "score_values": self.score_values, **self.cells.to_state()}

    def __setstate__(self, state: dict) -> None:
        self.__init__()
        self.requests[state["rows"]] = state["requests"]
        self.errors[state["rows"]] = state["errors"]
        self.latency_bins.ravel()[state["bins"]] = state["bin_counts"]
        if "class_pairs" in state:
            self.classes = GroupCounts.from_state(_ROWS, state["class_pairs"])
            self.score_bins = GroupCounts.from_state(_ROWS, state["score_pairs"])
        else:  # an older router's Counters; before the score bins, its scores show no design effect
            self.classes = GroupCounts.from_counter(_ROWS, state["classes"])
            self.score_bins = GroupCounts.from_counter(_ROWS, state.get("score_bins") or collections.Counter())
        self.score_values = state.get("score_values") or ValueGroups()
        # Absent from an older router's pickle too: then no ceiling (:meth:`ceiling`).
        self.cells = CellCounts.from_state(state)

    def merge(self, other: GroupSums) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.latency_bins += other.latency_bins
        self.classes.merge(other.classes)
        self.score_bins.merge(other.score_bins)
        self.score_values.merge(other.score_values)
        self.cells.merge(other.cells)

    def ceiling(self, n: int, max_icc: float = 1.0) -> float:
        """The largest design effect that a figure over ``n`` of these requests (all of them,
        or the successful ones) can have: ``sum(n_c^2) / n`` over cells of users, each keyless
        request a cell of one (module docstring); with users' requests at most ``max_icc``
        alike, Kish's ``1 + max_icc (m - 1)`` with m that ratio. Infinite (no ceiling) where
        some keyed requests were not counted in cells (a router of an older release sent them)."""
        return _cells_ceiling(self.cells, self.requests, n, max_icc)


def _cells_ceiling(cells: CellCounts, counts: np.ndarray, n: int, max_icc: float) -> float:
    """:meth:`GroupSums.ceiling` over ``cells`` of the keyed ones among ``counts`` (per group,
    keyless last); infinite where some keyed ones were not counted in cells."""
    keyed = int(counts[:NUM_GROUPS].sum())
    if n <= 0 or not cells.complete or cells.total() != keyed:
        return math.inf
    weighted_mean = max((cells.square_sum() + float(counts[KEYLESS])) / n, 1.0)
    return 1.0 + max_icc * (weighted_mean - 1.0)


@dataclass(frozen=True)
class DesignEffect:
    """How many times the variance of a figure exceeds what independent requests would give.

    The variance ratio is ``between + within``: ``between`` is estimated from the spread of
    ``groups`` group totals, ``within`` is known exactly (keyless requests, each a unit of its
    own). ``value`` is the point estimate, at least 1. With fewer than :data:`MIN_GROUPS`
    groups nothing is estimated: each group counts as one unit, ``value`` = requests / units.
    """

    value: float = 1.0
    groups: int = 0
    between: float = 0.0
    within: float = 1.0
    #: Degrees of freedom of ``between``: k - 1, fewer where the group totals are heavy-tailed.
    df: float = 0.0
    #: The most the design effect can be, from how many requests each user sent
    #: (:meth:`GroupSums.ceiling`); infinite where not known.
    ceiling: float = math.inf
    #: The ``max_user_icc`` the ceiling assumed (1: none).
    ceiling_icc: float = 1.0
    #: What the ceiling counted per user, for the gate's reason ("requests", "values").
    ceiling_of: str = "requests"

    def capped(self, ceiling: float, icc: float = 1.0, of: str = "requests") -> DesignEffect:
        """This effect with a ceiling (the smaller of the two, where it had one), which
        ``icc`` (below 1) assumed, from how many ``of`` each user sent."""
        if ceiling >= self.ceiling:
            return self
        return replace(self, ceiling=ceiling, ceiling_icc=icc, ceiling_of=of)

    @property
    def estimated(self) -> bool:
        """Whether the spread between groups was estimated (and is uncertain)."""
        return self.groups >= MIN_GROUPS and self.between > 0.0

    def upper(self, alpha: float) -> float:
        """The design effect with ``between`` at its upper ``1 - alpha`` confidence bound (a
        variance from k groups is a chi-square on k - 1 degrees of freedom); at least 1.

        Why a bound and not the estimate: with few users and errors concentrated in some,
        the estimated spread is low exactly when the error rate is (the heavy users did not
        come), so a candidate at an error-rate gate's bound passed 16% of the time at alpha
        5% on the estimate (40 users x 100 requests, ICC 0.1), and 15.5% with Korn &
        Graubard's t-based correction for degrees of freedom."""
        return min(self._estimated_upper(alpha), self.ceiling)

    def _estimated_upper(self, alpha: float) -> float:
        if not self.estimated:
            return self.value
        df = self.df or self.groups - 1
        inflate = df / float(special.chdtri(df, 1 - alpha))
        return _at_least_one(self.between * inflate + self.within)

    def effective(self, n: float, alpha: float) -> float:
        """``n`` requests' worth of evidence in independent requests, for a bound at level
        ``alpha``: ``n / upper(alpha)``."""
        return n / self.upper(alpha)

    def describe(self, alpha: float) -> str:
        """For a gate's reason: empty where requests count as independent."""
        upper = self.upper(alpha)
        if upper <= 1.0:
            return ""
        reason = f"how many {self.ceiling_of} each user sent" + (
            f" and max_user_icc {self.ceiling_icc:g}" if self.ceiling_icc < 1.0 else "")
        if upper < self._estimated_upper(alpha):
            seen = f"{self.value:.3g} from {self.groups} groups of users" if self.value > 1.0 else "none seen"
            return (f"; users' requests may be correlated (design effect {seen}; at most {upper:.3g} for "
                    f"{reason}, which the gate uses)")
        if self.groups < MIN_GROUPS:
            return (f"; keyed requests came from {self.groups} group(s) of users, fewer than {MIN_GROUPS}, "
                    f"so each group counts as one unit (design effect {upper:.3g})")
        if self.value <= 1.0:  # the estimate shows none; the bound still allows some
            return (f"; users' requests may be correlated (no design effect seen in {self.groups} groups of "
                    f"users, but up to {upper:.3g} at its upper bound, which the gate uses)")
        return (f"; users' requests are correlated (design effect {self.value:.3g} from {self.groups} groups "
                f"of users, {upper:.3g} at its upper bound, which the gate uses)")


INDEPENDENT = DesignEffect()


def _at_least_one(ratio: float) -> float:
    """A variance ratio as a design effect: at least 1, and exactly 1 within rounding (keyless
    requests' ratio is 1 up to the last bit, and should read as independent)."""
    return 1.0 if ratio < 1.0 + 1e-9 else ratio


def ratio_design_effect(events: np.ndarray, trials: np.ndarray) -> DesignEffect:
    """The design effect of the proportion p = sum(events) / sum(trials) over the rows of
    :class:`GroupSums` (groups, then keyless requests).

    The variance is the delta method's for a ratio of sums over independent clusters,
    ``sum_c (x_c - p n_c)^2 / N^2``: over the k groups with ``k / (k - 1)``, and over each
    keyless request as a cluster of one, exactly from the counts. It is compared with the
    binomial ``p (1 - p) / N``. Keyed requests from fewer than MIN_GROUPS groups: one unit each.
    """
    x, n = events[:NUM_GROUPS].astype(float), trials[:NUM_GROUPS].astype(float)
    used = n > 0
    x, n = x[used], n[used]
    k = int(n.size)
    keyless_x, keyless_n = float(events[KEYLESS]), float(trials[KEYLESS])
    total = float(n.sum()) + keyless_n
    if total == 0:
        return INDEPENDENT
    if k and float(n.sum()) > k and k < MIN_GROUPS:
        return _few_groups(total, keyless_n, k)
    p = (float(x.sum()) + keyless_x) / total
    if p <= 0.0 or p >= 1.0:
        # No spread to compare: the exact bound of 0 or n events stands. (Taking the ceiling
        # here was tried: the false passes of an error gate at its bound, with 100 users of
        # whom a few send most and who always or never fail, went from 16.5% to 1.5% at alpha
        # 5%, but a healthy canary with 0 errors in 1,376 requests from some 100 users of a
        # test could no longer pass within 120 s: 0 errors from that few users bound nothing
        # below 5% at a held step's small alphas, while one error more read the same.)
        return DesignEffect(1.0, k)
    scale = total * p * (1.0 - p)  # the binomial variance of the sum
    keyless = (keyless_x * (1.0 - p) ** 2 + (keyless_n - keyless_x) * p * p) / scale
    if k < MIN_GROUPS:  # no keyed group with more than one request: units like keyless ones
        return DesignEffect(1.0, k)
    residuals = x - p * n
    between = k / (k - 1) * float(np.sum(residuals ** 2)) / scale
    return DesignEffect(_at_least_one(between + keyless), k, between, keyless, _spread_df(residuals))


def _spread_df(residuals: np.ndarray) -> float:
    """Degrees of freedom of a variance from k group residuals, by their kurtosis: the
    variance of a sample variance is about ``s^4 (2 / (k - 1) + (kurtosis - 3) / k)``, and a
    chi-square with ``2 s^4 / Var(s^2)`` degrees of freedom matches it (Satterthwaite).
    Errors concentrated in a few users make the totals heavy-tailed and the spread far less
    certain than k - 1 degrees of freedom say."""
    squares = residuals ** 2
    return spread_df(residuals.size, float(squares.sum()), float(np.sum(squares ** 2)))


def spread_df(k: int, sum_of_squares: float, sum_of_fourth_powers: float) -> float:
    """:func:`_spread_df` from the residuals' count and power sums."""
    if k < 2 or sum_of_squares <= 0.0:
        return float(max(k - 1, 1))
    kurtosis = k * sum_of_fourth_powers / sum_of_squares ** 2
    return float(min(max(2.0 / (2.0 / (k - 1) + max(kurtosis - 3.0, 0.0) / k), 1.0), k - 1))


def _few_groups(total: float, keyless_n: float, groups: int) -> DesignEffect:
    """Keyed requests from fewer than MIN_GROUPS groups: one unit per group, beside the
    keyless requests (a cluster-level analysis; conservative when users are independent)."""
    return DesignEffect(_at_least_one(total / (keyless_n + groups)), groups, 0.0, 1.0)


@dataclass
class ValueGroups:
    """One feedback metric's values per group of users' buckets (keyless in the last row):
    how many, their sum, sum of squares and sum of cubes (the cubes give the skewness of
    keyless values, :meth:`mean_skewness`). Outcomes (converted or not) are values of 0 and 1."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(_ROWS, dtype=np.int64))
    sums: np.ndarray = field(default_factory=lambda: np.zeros(_ROWS, dtype=float))
    squares: np.ndarray = field(default_factory=lambda: np.zeros(_ROWS, dtype=float))
    cubes: np.ndarray = field(default_factory=lambda: np.zeros(_ROWS, dtype=float))
    #: Keyed values per bucket of users, for :meth:`ceiling`. Buckets, not the finer cells of
    #: :attr:`GroupSums.cells`: feedback knows its user only by the bucket its token names
    #: (``unit % NUM_BUCKETS``), so users who share a bucket count as one, which only raises
    #: the ceiling (10,000 buckets: with 50,000 users, five a bucket).
    cells: CellCounts = field(default_factory=CellCounts)

    def add(self, unit: int | None, value: float) -> None:
        if unit is None:
            row = KEYLESS
        else:
            bucket = unit % NUM_BUCKETS
            row = bucket % NUM_GROUPS
            self.cells.add([bucket])
        self.counts[row] += 1
        self.sums[row] += value
        self.squares[row] += value * value
        self.cubes[row] += value * value * value

    def ceiling(self, max_icc: float = 1.0) -> float:
        """The largest design effect the mean of these values can have, from how many each
        user gave (:meth:`GroupSums.ceiling`, over values instead of requests); infinite
        where keyed values were added without their users (:meth:`add_many`, an older
        router's pickle, a saved state)."""
        return _cells_ceiling(self.cells, self.counts, int(self.counts.sum()), max_icc)

    def add_many(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Values in the given rows (:func:`groups_of`'s); their users are not known, so a
        keyed one leaves these values without a :meth:`ceiling`."""
        np.add.at(self.counts, rows, 1)
        np.add.at(self.sums, rows, values)
        squares = values * values
        np.add.at(self.squares, rows, squares)
        np.add.at(self.cubes, rows, squares * values)

    def design_effect(self) -> DesignEffect:
        """The design effect of the mean of the values (for outcomes, of the rate)."""
        return mean_design_effect(self.sums, self.counts, self.squares)

    def mean_skewness(self) -> float:
        """The skewness of the mean of the values (:func:`mean_skewness`)."""
        return mean_skewness(self.sums, self.counts, self.squares, self.cubes)

    def merge(self, other: ValueGroups) -> None:
        self.counts += other.counts
        self.sums += other.sums
        self.squares += other.squares
        self.cubes += other.cubes
        self.cells.merge(other.cells)

    def to_wire(self) -> dict:
        """Sparse plain data (the controller's saved state, the report's snapshot), without
        the buckets, which only the gates' windows read (up to 10,000 a version)."""
        used = np.flatnonzero(self.counts)
        return {"rows": used.tolist(), "counts": self.counts[used].tolist(), "sums": self.sums[used].tolist(),
                "squares": self.squares[used].tolist(), "cubes": self.cubes[used].tolist()}

    @classmethod
    def from_wire(cls, data: dict | None) -> ValueGroups:
        """From :meth:`to_wire`'s data; saved before the cubes were kept, the cubes read as
        unknown (NaN), and the mean's skewness with them where keyless values are used."""
        out = cls()  # the wire keeps no cells: keyed values read from it leave no ceiling
        if data:
            rows = np.asarray(data["rows"], dtype=np.int64)
            if rows.size and (rows.min() < 0 or rows.max() >= _ROWS):
                raise ValueError(f"group rows out of range [0, {_ROWS}): {rows.min()}..{rows.max()}")
            out.counts[rows] = data["counts"]
            out.sums[rows], out.squares[rows] = data["sums"], data["squares"]
            out.cubes[rows] = data.get("cubes", math.nan)
        return out

    # Pickled sparse: routers send shadow agreements in every report (a few groups in a
    # small interval, 3 KB dense).
    def __getstate__(self) -> dict:
        used = np.flatnonzero(self.counts)
        return {"rows": narrow(used), "counts": narrow(self.counts[used]), "sums": self.sums[used], "squares": self.squares[used],
                "cubes": self.cubes[used], **self.cells.to_state()}

    def __setstate__(self, state: dict) -> None:
        self.__init__()
        rows = state["rows"]
        self.counts[rows], self.sums[rows], self.squares[rows] = state["counts"], state["sums"], state["squares"]
        # A router older than the cubes: unknown, as from_wire's.
        self.cubes[rows] = state.get("cubes", math.nan)
        # Older than the cells: no ceiling.
        self.cells = CellCounts.from_state(state)


@dataclass(frozen=True)
class FlipSpread:
    """One class's net flips over units: the sum of their squares (the variance of the net
    flips under "no change in the class's share", Durkalski et al. 2003; for independent
    pairs the discordant count, McNemar's denominator), its degrees of freedom
    (:func:`spread_df`: few where a few units carry most of it, a rare class kept by a
    handful of users), and whether any keyed pair flipped (and did not cancel in its group)."""

    sum_of_squares: float
    df: float
    keyed: bool


@dataclass
class FlipGroups:
    """A shadow's class flips per group of users, for the report's per-class flip tests.

    For a class, each pair adds ``[shadow said it] - [live said it]``: +1 or -1 on a
    discordant pair involving the class, 0 otherwise. ``net`` sums that per (keyed group's
    row, class); a keyless pair is a unit of its own, so ``keyless`` only counts, per class,
    the keyless discordant pairs involving it (each adds 1 to the sum of squares). Both add
    up across routers and intervals; only discordant pairs touch them.
    """

    net: collections.Counter = field(default_factory=collections.Counter)  # (row, class) -> net flips in
    keyless: collections.Counter = field(default_factory=collections.Counter)  # class -> pairs

    def add(self, unit: int | None, live_class: int, shadow_class: int) -> None:
        if live_class == shadow_class:
            return
        if unit is None:
            self.keyless[live_class] += 1
            self.keyless[shadow_class] += 1
            return
        row = (unit % NUM_BUCKETS) % NUM_GROUPS
        self.net[(row, shadow_class)] += 1
        self.net[(row, live_class)] -= 1

    def merge(self, other: FlipGroups) -> None:
        self.net.update(other.net)  # Counter.update adds, negative counts included
        self.keyless.update(other.keyless)

    def spreads(self) -> dict[int, FlipSpread]:
        """Per class, the spread of its net flips over units (keyed groups, keyless pairs),
        in one pass over the groups (a report of 1,000 classes reads each once)."""
        powers: dict[int, list[float]] = {}  # class -> [keyed units, sum of squares, of fourth powers]
        for (_, c), n in self.net.items():
            if n:
                acc = powers.setdefault(c, [0.0, 0.0, 0.0])
                acc[0] += 1
                acc[1] += float(n) * n
                acc[2] += float(n) ** 4
        out = {}
        for c in set(powers) | set(self.keyless):
            keyed_units, squares, fourth = powers.get(c, (0.0, 0.0, 0.0))
            keyless = float(self.keyless.get(c, 0))
            out[c] = FlipSpread(squares + keyless, spread_df(int(keyed_units + keyless), squares + keyless,
                                                             fourth + keyless), keyed_units > 0)
        return out

    def to_wire(self) -> dict:
        return {"net": [[int(row), int(c), int(n)] for (row, c), n in sorted(self.net.items()) if n],
                "keyless": [[int(c), int(n)] for c, n in sorted(self.keyless.items()) if n]}

    @classmethod
    def from_wire(cls, data: dict | None) -> FlipGroups:
        out = cls()
        for row, c, n in (data or {}).get("net", []):
            if not 0 <= int(row) < NUM_GROUPS:
                raise ValueError(f"flip group row {row} out of range [0, {NUM_GROUPS})")
            out.net[(int(row), int(c))] += int(n)
        for c, n in (data or {}).get("keyless", []):
            out.keyless[int(c)] += int(n)
        return out

    @classmethod
    def keyless_from(cls, confusion: collections.Counter) -> FlipGroups:
        """Every pair keyless: for a state or a router older than the groups."""
        out = cls()
        for (live, shadow), n in confusion.items():
            if live != shadow and n:
                out.keyless[live] += n
                out.keyless[shadow] += n
        return out


def mean_design_effect(sums: np.ndarray, counts: np.ndarray, squares: np.ndarray) -> DesignEffect:
    """The design effect of the mean ``R = sum(sums) / sum(counts)`` over the rows of a
    :class:`ValueGroups`: as :func:`ratio_design_effect`, against the variance of the mean of
    independent values ``s^2 / N`` (``s^2`` the values' own variance, ``squares`` giving it).
    For values of 0 and 1 the two functions agree."""
    s, n = sums[:NUM_GROUPS].astype(float), counts[:NUM_GROUPS].astype(float)
    used = n > 0
    s, n = s[used], n[used]
    k = int(n.size)
    keyless_s, keyless_n, keyless_ss = float(sums[KEYLESS]), float(counts[KEYLESS]), float(squares[KEYLESS])
    total = float(n.sum()) + keyless_n
    if total < 2:
        return DesignEffect(1.0, k)
    if k and float(n.sum()) > k and k < MIN_GROUPS:
        return _few_groups(total, keyless_n, k)
    mean = (float(s.sum()) + keyless_s) / total
    spread = float(np.sum(squares)) - total * mean * mean  # sum of squared deviations of the values
    if not math.isfinite(spread):  # values whose squares overflow (1e200): no spread to read
        return DesignEffect(1.0, k)
    if spread <= 1e-12 * max(1.0, float(np.sum(squares))):  # all values equal: nothing to compare
        return DesignEffect(1.0, k)
    keyless = max((keyless_ss - 2.0 * mean * keyless_s + mean * mean * keyless_n) / spread, 0.0)
    if k < MIN_GROUPS:
        return DesignEffect(1.0, k)
    residuals = s - mean * n
    between = k / (k - 1) * float(np.sum(residuals ** 2)) / spread
    return DesignEffect(_at_least_one(between + keyless), k, between, keyless, _spread_df(residuals))


def mean_skewness(sums: np.ndarray, counts: np.ndarray, squares: np.ndarray, cubes: np.ndarray) -> float:
    """The skewness of the mean ``R = sum(sums) / sum(counts)``: its third cumulant over its
    variance to the power 1.5, each summed over independent units, a keyed group's total
    or a keyless value (cumulants of independent parts add, so users' correlation counts
    as it is). Each unit's deviation from R: ``sums - R counts`` for a group; for keyless
    values from their power sums. With the usual small-sample corrections (k units:
    k / (k - 1) on the second, k^2 / ((k - 1) (k - 2)) on the third).

    For n independent values this is the values' skewness over sqrt(n), and Cochran's rule
    for a t interval on a skewed mean, n > 25 g^2, reads: at most 0.2. 0 where it cannot
    be read: fewer than 3 units, or no spread. Keyless values' third moment counts as 0
    where their cubes are unknown (saved before they were kept) or lost to rounding: values
    far from 0 against their spread (1e6 +- 1, say), whose power sums carry rounding of
    about n ulps of their largest term."""
    n = counts[:NUM_GROUPS].astype(float)
    used = n > 0
    keyless_n = float(counts[KEYLESS])
    units = int(used.sum()) + int(keyless_n)
    if units < 3:
        return 0.0
    with np.errstate(all="ignore"):  # values near the float range (1e200): no skewness to read
        mean = float(np.sum(sums)) / (float(n.sum()) + keyless_n)
        residuals = sums[:NUM_GROUPS][used] - mean * n[used]
        second, third = float(np.sum(residuals ** 2)), float(np.sum(residuals ** 3))
        if keyless_n:
            s, q, c = (np.float64(x) for x in (sums[KEYLESS], squares[KEYLESS], cubes[KEYLESS]))
            m = np.float64(mean)
            terms = np.array([c, -3.0 * m * q, 3.0 * m * m * s, -(m ** 3) * keyless_n])
            keyless_third = float(terms.sum())
            rounding = float(keyless_n * np.finfo(float).eps * np.abs(terms).sum())
            second += max(float(q - 2.0 * m * s + m * m * keyless_n), 0.0)
            if math.isfinite(keyless_third) and abs(keyless_third) > rounding:
                third += keyless_third
    if not (math.isfinite(second) and math.isfinite(third)) or second <= 0.0:
        return 0.0
    variance = units / (units - 1) * second
    third_cumulant = units * units / ((units - 1) * (units - 2)) * third
    return third_cumulant / variance ** 1.5


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


def score_design_effect(score_bins: GroupCounts, score_values: ValueGroups | None = None) -> DesignEffect:
    """A design effect for the KS test on scores: those of the proportions of scores at or
    below each score bin's edge, averaged with the weight of each proportion's variance
    F (1 - F), as the first-order Rao-Scott correction averages over classes (but over the
    cumulative proportions the KS statistic is made of). Read at the statistic's own edge,
    it was biased high: under no drift, the largest gap falls where the users' spread made
    one, and the test rejected 0.5% of the time at alpha 5% (100 users x 20, ICC 0.3).

    Scores that span about a bin or less (a regression's values of 106 +- 6, say) leave no
    edge within their middle 80%: then the design effect of the mean score (``score_values``)
    stands in, which with users whose scores run high or low is at least the proportions'.
    Without it, such scores showed none, and a KS gate with no drift failed 17-33% of windows."""
    if not score_bins:
        return INDEPENDENT
    _, counts = score_bins.table()  # a column per score bin seen, in order
    below = np.cumsum(counts, axis=1)  # [:, i]: scores in the bins seen up to the i-th
    per_group = below[:, -1]
    total = float(per_group.sum())
    weights, effects = [], []
    for edge in range(below.shape[1] - 1):
        share = below[:, edge].sum() / total
        if 0.0 < share < 1.0:
            weights.append(share * (1.0 - share))
            effects.append(ratio_design_effect(below[:, edge], per_group))
    if max(weights, default=0.0) < _MIN_EDGE_WEIGHT and score_values is not None:
        return score_values.design_effect()
    return _weighted(effects, weights)


def _weighted(effects: list[DesignEffect], weights: list[float]) -> DesignEffect:
    """The average of several proportions' design effects (from the same groups)."""
    if not weights:
        return INDEPENDENT
    if not effects[0].estimated and effects[0].groups < MIN_GROUPS and effects[0].value > 1.0:
        return effects[0]  # few groups: one unit each, whichever proportion
    between = float(np.average([e.between for e in effects], weights=weights))
    within = float(np.average([e.within for e in effects], weights=weights))
    # Degrees of freedom of the average of the spreads, as if they were perfectly correlated
    # (neighbouring proportions nearly are), the fewest it can have: its 1 / sqrt(df) is the
    # average of theirs, weighted by their share of it (Satterthwaite). The fewest of any one
    # was too few: a rare class or a tail bin with a few users' scores in it has df near 1,
    # and inflated the whole effect a hundredfold.
    shares = np.array([w * e.between for w, e in zip(weights, effects)])
    if shares.sum() <= 0.0:
        return DesignEffect(_at_least_one(between + within), effects[0].groups, between, within, 0.0)
    root = float(np.average([1.0 / math.sqrt(e.df or max(e.groups - 1, 1)) for e in effects], weights=shares))
    return DesignEffect(_at_least_one(between + within), effects[0].groups, between, within, 1.0 / root ** 2)


def class_design_effect(classes: GroupCounts, width: int) -> DesignEffect:
    """A design effect for a vector of class proportions: the mean of each class's,
    weighted by ``1 - p`` (the first-order Rao-Scott correction, Rao & Scott 1981, whose
    chi-square statistic divided by it is referred to the usual distribution)."""
    table = _class_table(classes, width)
    if table is None:
        return INDEPENDENT
    _, counts, per_group = table
    total = per_group.sum()
    weights, effects = [], []
    for cls in range(counts.shape[1]):
        share = counts[:, cls].sum() / total
        if 0.0 < share < 1.0:
            weights.append(1.0 - share)
            effects.append(ratio_design_effect(counts[:, cls], per_group))
    return _weighted(effects, weights)


def class_design_effects(classes: GroupCounts, width: int) -> dict[int, DesignEffect]:
    """Each class's own design effect (of its proportion), by class index; classes no group
    predicted are absent (independent). For per-class confidence bounds, where the average
    of :func:`class_design_effect` would make a class that users keep more than others look
    more certain than it is."""
    table = _class_table(classes, width)
    if table is None:
        return {}
    present, counts, per_group = table
    return {cls: ratio_design_effect(counts[:, i], per_group) for i, cls in enumerate(present)}


def _class_table(classes: GroupCounts, width: int) -> tuple[list[int], np.ndarray, np.ndarray] | None:
    """The classes in ``[0, width)`` seen (the table's columns), a (groups x those classes)
    table of counts, and each group's total; None when no class in range was seen."""
    present, counts = classes.table(keep=width)
    if not present.size:
        return None
    per_group = counts.sum(axis=1)
    return None if per_group.sum() == 0 else (present.tolist(), counts, per_group)


def effective_counts(counts: tuple[int, ...], effect: DesignEffect, alpha: float) -> tuple[int, ...]:
    """Class counts scaled to the effective sample (rounded), for a test on counts."""
    scale = 1.0 / effect.upper(alpha)
    if scale >= 1.0:
        return counts
    return tuple(int(math.floor(c * scale + 0.5)) for c in counts)
