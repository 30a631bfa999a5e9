"""Per-class flips between live and shadow labels, from the paired confusion counts.

For each class ``k`` the pairs form a 2x2 table of ``live == k`` against ``shadow == k``;
only its discordant cells carry evidence that the shadow predicts ``k`` more or less often
than the live model on the same requests (McNemar's test, as ``shadow.compare_correctness``
does for correctness flags). Working from counts keeps this cheap however many pairs
there are: the controller recomputes it every few seconds.

A user whose requests the shadow labels differently does so again, so flips cluster by
user and McNemar's test, which counts pairs as independent, finds shifts that are not
there. Given the flips per group of users (:class:`FlipGroups`), a class with any keyed
flip is tested by the cluster-adjusted McNemar statistic of Durkalski et al. (2003, Stat
Med 22), ``(C - B)^2 / sum over units of (net flips)^2`` (units: keyed groups and keyless
pairs), on F(1, df) with df from the units' kurtosis (``clusters.spread_df``, as the design
effects' spread): a rare class kept by a handful of users has a few large units and few
degrees of freedom, where chi-square(1) found 8.6% of 50 classes shifted with no shift.
One whose flips are all keyless takes McNemar's test as before. A self-normalised sum
cannot exceed its number of units with a net flip, so a handful of users is never
significant. ``stats_calibration`` scenario 7 measures it through the pipeline: users who
each keep one class and a shadow that relabels some users' pairs as a class of their own,
no class's share changed; McNemar's test found class 0 shifted in 47% of runs (100 users x
20 pairs, ICC 0.3).

Example::

    confusion = [(3, 3, 480), (3, 8, 25), (8, 3, 4), (8, 8, 491)]   # (live, shadow, n)
    tests = class_flip_tests(confusion)
    tests[0].cls, tests[0].to_other, tests[0].from_other, tests[0].p_value
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from scipy import special
from statsmodels.stats.contingency_tables import mcnemar

from serve_ab.analysis.clusters import FlipGroups, FlipSpread
from serve_ab.analysis.shadow import EXACT_BELOW_DISCORDANT

__all__ = ["ClassFlipTest", "class_flip_tests"]


@dataclass(frozen=True)
class ClassFlipTest:
    """Class ``cls``: pairs where live said it and shadow did not (``to_other``), and back.

    ``diff`` is the shadow's share of pairs labelled ``cls`` minus the live one's.
    """

    cls: Hashable
    both: int  # live and shadow both said cls
    to_other: int  # live said cls, shadow another class
    from_other: int  # live another class, shadow said cls
    neither: int
    live_count: int
    shadow_count: int
    diff: float
    statistic: float
    p_value: float
    #: "exact_binomial" or "mcnemar_chi2" (continuity-corrected); "cluster_adjusted" (Durkalski's
    #: statistic) where keyed pairs flip; "none" without pairs.
    method: str
    #: The net flips' variance over independent pairs' (1 with McNemar's test).
    design_effect: float = 1.0


def class_flip_tests(confusion: Iterable[tuple[Hashable, Hashable, int]],
                     flips: FlipGroups | None = None) -> list[ClassFlipTest]:
    """One McNemar test per class seen on either side, in sorted class order.

    ``confusion`` holds ``(live_class, shadow_class, count)`` cells (repeats add up), as
    ``ExperimentStats.snapshot()["shadow"]["confusion"]`` gives them. The exact binomial
    test is used below ``EXACT_BELOW_DISCORDANT`` discordant pairs, else the
    continuity-corrected chi-square; with no discordant pair the p-value is 1. With
    ``flips`` (the same pairs' flips per group of users), a class with keyed flips takes the
    cluster-adjusted test instead (module docstring). Not only where they spread more than
    independent pairs would: a rare class that no user keeps sees its flips come in one
    at a time from many users, which looks independent although whether a user who keeps
    it came is the variation that counts; McNemar's test then found 39% of such classes
    shifted with no shift (50 classes, 200 users x 20 pairs; the review of 4d0171a).
    """
    cells: dict[tuple[Hashable, Hashable], int] = {}
    for index, cell in enumerate(confusion):
        try:
            live, shadow, count = cell
        except (TypeError, ValueError):
            raise ValueError(
                f"confusion cell {index} is {cell!r}; expected (live_class, shadow_class, count), e.g. (3, 8, 25)"
            ) from None
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"confusion cell {index} ({live!r}, {shadow!r}) has count {count!r}; "
                             "counts are integers >= 0")
        cells[(live, shadow)] = cells.get((live, shadow), 0) + count
    spreads = flips.spreads() if flips is not None else {}
    total = sum(cells.values())
    classes = sorted({c for pair in cells for c in pair}, key=_sort_key)
    out = []
    for k in classes:
        both = cells.get((k, k), 0)
        live_count = sum(n for (a, _), n in cells.items() if a == k)
        shadow_count = sum(n for (_, b), n in cells.items() if b == k)
        to_other, from_other = live_count - both, shadow_count - both
        neither = total - both - to_other - from_other
        discordant = to_other + from_other
        exact = discordant < EXACT_BELOW_DISCORDANT
        effect = 1.0
        if total == 0:
            statistic, p, method = math.nan, math.nan, "none"
        elif discordant == 0:
            statistic, p = 0.0, 1.0  # the same count of k on both sides, pair by pair
            method = "exact_binomial" if exact else "mcnemar_chi2"
        elif k in spreads and spreads[k].keyed:
            statistic, p, method = _cluster_adjusted(from_other - to_other, spreads[k])
            effect = spreads[k].sum_of_squares / discordant
        else:
            result = mcnemar([[both, to_other], [from_other, neither]], exact=exact, correction=True)
            statistic, p = float(result.statistic), float(result.pvalue)
            method = "exact_binomial" if exact else "mcnemar_chi2"
        diff = (from_other - to_other) / total if total else math.nan
        out.append(ClassFlipTest(k, both, to_other, from_other, neither, live_count, shadow_count, diff,
                                 statistic, p, method, effect))
    return out


def _cluster_adjusted(net: int, spread: FlipSpread) -> tuple[float, float, str]:
    """Durkalski's statistic (as published, no continuity correction) on F(1, df), df from
    the units' kurtosis."""
    if spread.sum_of_squares == 0.0:  # every group's flips in and out cancel: nothing moved
        return 0.0, 1.0, "cluster_adjusted"
    statistic = float(net) ** 2 / spread.sum_of_squares
    return statistic, float(special.fdtrc(1, spread.df, statistic)), "cluster_adjusted"


def _sort_key(value: Hashable) -> tuple[int, object]:
    # Classes are ints in practice; anything else sorts after them by its text.
    return (0, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, str(value))
