"""Paired comparison of live and shadow outputs on the same requests.

Every statistic here pairs request i of the live model with request i of the shadow
model, which removes request-to-request variation: far fewer requests are needed than
for an unpaired A/B comparison. Divergences between class distributions (KL, PSI, JS)
belong to the drift module; :func:`class_counts` hands it aligned counts.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar

__all__ = [
    "EXACT_BELOW_DISCORDANT",
    "Agreement",
    "ClassCounts",
    "FlipTable",
    "PairedCorrectness",
    "ScoreDifference",
    "agreement",
    "class_counts",
    "compare_correctness",
    "flip_table",
    "score_differences",
    "wilson_interval",
]

# The chi-square McNemar test is a normal approximation to the binomial on discordant
# pairs; below ~25 of them it is poor, so the exact binomial test is used instead.
EXACT_BELOW_DISCORDANT = 25


@dataclass(frozen=True)
class Agreement:
    n: int
    n_agree: int
    rate: float
    ci: tuple[float, float]  # Wilson score interval; stays inside [0, 1] even at rate 1
    confidence: float


@dataclass(frozen=True)
class FlipTable:
    """``counts[i][j]``: requests where live said ``classes[i]`` and shadow ``classes[j]``."""

    classes: tuple[Hashable, ...]
    counts: tuple[tuple[int, ...], ...]

    def flips(self) -> dict[tuple[Hashable, Hashable], int]:
        """Non-zero off-diagonal cells: ``(live_class, shadow_class) -> count``."""
        return {
            (a, b): n
            for i, a in enumerate(self.classes)
            for j, b in enumerate(self.classes)
            if i != j and (n := self.counts[i][j])
        }

    def flip_rate_by_live_class(self) -> dict[Hashable, float]:
        """Share of each live class that the shadow labels differently."""
        rates = {}
        for i, cls in enumerate(self.classes):
            row = self.counts[i]
            total = sum(row)
            rates[cls] = (total - row[i]) / total if total else math.nan
        return rates


@dataclass(frozen=True)
class ClassCounts:
    """Aligned per-class counts of the two outputs, for the drift module."""

    classes: tuple[Hashable, ...]
    live: tuple[int, ...]
    shadow: tuple[int, ...]


@dataclass(frozen=True)
class PairedCorrectness:
    """Accuracy of live vs shadow on the same labelled requests (McNemar)."""

    n: int
    both_correct: int
    live_only_correct: int
    shadow_only_correct: int
    both_wrong: int
    accuracy_live: float
    accuracy_shadow: float
    diff: float  # accuracy_shadow - accuracy_live
    diff_ci: tuple[float, float]  # Wald interval for paired proportions
    statistic: float
    p_value: float
    method: str  # "exact_binomial" or "mcnemar_chi2" (continuity-corrected)


@dataclass(frozen=True)
class ScoreDifference:
    """Paired differences ``shadow - live`` of a per-request score."""

    n: int
    mean_diff: float
    ci: tuple[float, float]  # paired t interval
    p_value: float  # paired t-test, H0: mean difference 0
    std_diff: float
    mean_abs_diff: float
    max_abs_diff: float


def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (as statsmodels ``method="wilson"``)."""
    _check_confidence(confidence)
    if n == 0:
        return math.nan, math.nan
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def agreement(live_labels, shadow_labels, *, confidence: float = 0.95) -> Agreement:
    """Share of requests where the shadow's label equals the live one."""
    live, shadow = _paired(live_labels, shadow_labels, "labels")
    n = live.size
    n_agree = int((live == shadow).sum())
    return Agreement(n, n_agree, n_agree / n if n else math.nan, wilson_interval(n_agree, n, confidence), confidence)


def flip_table(live_labels, shadow_labels) -> FlipTable:
    live, shadow = _paired(live_labels, shadow_labels, "labels")
    classes, codes = np.unique(np.concatenate([live, shadow]), return_inverse=True)
    k = classes.size
    counts = np.bincount(codes[: live.size] * k + codes[live.size:], minlength=k * k).reshape(k, k)
    return FlipTable(tuple(classes.tolist()), tuple(tuple(int(c) for c in row) for row in counts))


def class_counts(live_labels, shadow_labels, *, classes: Sequence[Hashable] | None = None) -> ClassCounts:
    """Counts per class of each output, over ``classes`` (default: every label seen).

    The two sequences need not be paired or of equal length. Passing ``classes`` fixes
    the order and includes classes neither output produced (count 0); a label outside
    ``classes`` is an error, since dropping it would hide exactly the drift to detect.
    """
    live, shadow = np.asarray(live_labels), np.asarray(shadow_labels)
    if classes is None:
        classes = np.unique(np.concatenate([live, shadow])).tolist()
    index = {c: i for i, c in enumerate(classes)}
    if len(index) != len(classes):
        raise ValueError(f"classes must be distinct, got {list(classes)}")
    counts = []
    for name, labels in (("live", live), ("shadow", shadow)):
        values, n = np.unique(labels, return_counts=True)
        row = [0] * len(classes)
        for value, count in zip(values.tolist(), n.tolist()):
            if value not in index:
                raise ValueError(f"{name} label {value!r} is not in classes {list(classes)}")
            row[index[value]] = int(count)
        counts.append(tuple(row))
    return ClassCounts(tuple(classes), counts[0], counts[1])


def compare_correctness(
    live_correct,
    shadow_correct,
    *,
    confidence: float = 0.95,
    exact: bool | None = None,
) -> PairedCorrectness:
    """McNemar's test of paired correctness flags (ground truth known).

    Only discordant pairs carry evidence. ``exact=None`` picks the exact binomial test
    on them below ``EXACT_BELOW_DISCORDANT`` discordant pairs, else the continuity-corrected
    chi-square. The same test on paired binary *predictions* (not correctness) tests a
    shift in the positive rate.
    """
    _check_confidence(confidence)
    live, shadow = _paired(live_correct, shadow_correct, "correctness flags")
    if not (np.isin(live, (0, 1)).all() and np.isin(shadow, (0, 1)).all()):
        raise ValueError("correctness flags must be booleans or 0/1, one per request")
    live, shadow = live.astype(bool), shadow.astype(bool)
    n = live.size
    both = int((live & shadow).sum())
    live_only = int((live & ~shadow).sum())
    shadow_only = int((~live & shadow).sum())
    neither = n - both - live_only - shadow_only
    discordant = live_only + shadow_only
    if exact is None:
        exact = discordant < EXACT_BELOW_DISCORDANT
    if n == 0:
        statistic, p = math.nan, math.nan
    elif discordant == 0:
        # Identical correctness on every request: no evidence of a difference.
        statistic, p = 0.0, 1.0
    else:
        result = mcnemar([[both, live_only], [shadow_only, neither]], exact=exact, correction=True)
        statistic, p = float(result.statistic), float(result.pvalue)
    if n == 0:
        acc_live = acc_shadow = diff = math.nan
        ci = (math.nan, math.nan)
    else:
        acc_live, acc_shadow = (both + live_only) / n, (both + shadow_only) / n
        diff = (shadow_only - live_only) / n
        # Variance of the mean of per-request differences in {-1, 0, 1}.
        se = math.sqrt(max(discordant / n - diff * diff, 0.0) / n)
        half = float(stats.norm.ppf(0.5 + confidence / 2.0)) * se
        ci = (diff - half, diff + half)
    return PairedCorrectness(
        n, both, live_only, shadow_only, neither, acc_live, acc_shadow, diff, ci, statistic, p,
        "exact_binomial" if exact else "mcnemar_chi2",
    )


def score_differences(live_scores, shadow_scores, *, confidence: float = 0.95) -> ScoreDifference:
    """Paired differences of a per-request score (e.g. the top-class probability)."""
    _check_confidence(confidence)
    live, shadow = _paired(live_scores, shadow_scores, "scores")
    live, shadow = live.astype(float), shadow.astype(float)
    if not (np.isfinite(live).all() and np.isfinite(shadow).all()):
        raise ValueError("scores contain NaN/inf; drop or impute them first")
    d = shadow - live
    n = d.size
    if n < 2:
        mean = float(d.mean()) if n else math.nan
        abs_d = np.abs(d)
        return ScoreDifference(n, mean, (math.nan, math.nan), math.nan, math.nan,
                               float(abs_d.mean()) if n else math.nan, float(abs_d.max()) if n else math.nan)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    if se > 0:
        half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * se
        p = float(2.0 * stats.t.sf(abs(mean) / se, n - 1))
    else:  # identical differences everywhere: the CI collapses and the t-test is undefined
        half, p = 0.0, (1.0 if mean == 0 else 0.0)
    abs_d = np.abs(d)
    return ScoreDifference(n, mean, (mean - half, mean + half), p, sd, float(abs_d.mean()), float(abs_d.max()))


def _paired(live, shadow, what: str) -> tuple[np.ndarray, np.ndarray]:
    live, shadow = np.asarray(live), np.asarray(shadow)
    if live.ndim != 1 or shadow.ndim != 1:
        raise ValueError(
            f"live and shadow {what} must be 1-D, one per request; got shapes {live.shape}, {shadow.shape}"
        )
    if live.size != shadow.size:
        raise ValueError(
            f"live and shadow {what} must be paired by request: got {live.size} live and {shadow.size} shadow"
        )
    return live, shadow


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence ({confidence}) must be in (0, 1), e.g. 0.95")
