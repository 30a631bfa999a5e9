"""Per-unit analysis of ratio metrics: users randomised in buckets, analysed as buckets.

serve-ab assigns ``bucket = hash(salt, key) mod 10000``, so a user's requests all land in
one bucket and buckets are disjoint sets of independent users: independent clusters.
Statistics computed from per-bucket totals are therefore a valid cluster-level analysis,
with memory fixed at buckets x metrics x splits however many users arrive. A request
without a key is its own unit (its bucket was drawn at random per request), so keyless
requests are kept apart as exact unit-level moments.

Every metric here is a ratio of two unit-level sums, ``R = sum(S) / sum(N)``: errors per
request, latency per successful request, conversions per feedback report, revenue per
report. Its variance comes from the delta method (Deng, Knoblich & Lu 2018, "Applying the
Delta Method in Metric Analytics"), written as the influence of each unit on R::

    psi_u = (S_u - R * N_u) / sum(N)            Var(R) ~ sum_u psi_u^2 * n / (n - 1)

With one request per unit this is the usual binomial/Welch variance (a unit test checks).

**Splits.** The comparison is valid only between arms exposed under the same split: a
canary's 5% and 50% periods differ in time as well as in weight, and pooling them confounds
the two (Simpson's paradox). Figures are kept per *split* (the bucket ranges routed by),
compared within each split, and combined with inverse-variance weights fixed per split (the
split's pooled variance, both arms as one sample, so the weights do not follow chance events
in one arm):
``A = sum_e w_e R_variant,e``, ``B = sum_e w_e R_control,e``, ``D = A - B``. A user who
stays in the same bucket across splits links them, so the variance of D is computed from
each bucket's influence summed over splits (its covariance across splits included), not
as if splits were independent.

**Small arms.** The difference's variance is at least what it would be if both arms were one
population (the null hypothesis; for a rate, the score test's pooled ``p(1-p)(1/n_v + 1/n_c)``):
an arm of a few hundred users with no event yet, or none of a heavy tail's large values,
otherwise reads a variance near 0 and makes a chance difference look certain.

Example::

    table = SplitTotals.empty()
    table.add(bucket=17, version="v2", value=1.0, count=1)       # one error on v2
    ratio = compare_ratio([(arm_of_bucket, table)], variant="v2", control="v1")
    ratio.diff, ratio.var_diff, ratio.value_variant
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve_ab.analysis.wire import narrow
from serve_ab.routing import NUM_BUCKETS

__all__ = ["KEYLESS_FIELDS", "RatioComparison", "SplitTotals", "compare_ratio", "fieller_ratio_interval"]

# Past this many buckets used, a pickle lists them as a bitmap (NUM_BUCKETS bits) rather than
# as uint16 indices: the bitmap is then the smaller.
_BITMAP_AFTER = NUM_BUCKETS // 16

# Moments of keyless units, per version: each such request is a unit on its own.
KEYLESS_FIELDS = ("units", "s", "n", "ss", "nn", "sn")


@dataclass
class SplitTotals:
    """One metric under one split: per-bucket sums, and keyless units' moments per version."""

    s: np.ndarray = field(default_factory=lambda: np.zeros(NUM_BUCKETS))
    n: np.ndarray = field(default_factory=lambda: np.zeros(NUM_BUCKETS))
    keyless: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> SplitTotals:
        return cls()

    def add(self, bucket: int | None, version: str, value: float, count: float = 1.0) -> None:
        """``value`` summed into the numerator and ``count`` into the denominator of a unit."""
        if bucket is not None:
            self.s[bucket] += value
            self.n[bucket] += count
            return
        moments = self.keyless.get(version)
        if moments is None:
            moments = self.keyless[version] = np.zeros(len(KEYLESS_FIELDS))
        moments += (1.0, value, count, value * value, count * count, value * count)

    def add_many(self, buckets: np.ndarray, version: str, values: np.ndarray) -> None:
        """:meth:`add` of each ``values[i]`` with a count of 1, in bucket ``buckets[i]``;
        a bucket of -1 is a unit on its own (as ``None`` there)."""
        keyed = buckets >= 0
        if keyed.all():
            np.add.at(self.s, buckets, values)
            np.add.at(self.n, buckets, 1.0)
            return
        np.add.at(self.s, buckets[keyed], values[keyed])
        np.add.at(self.n, buckets[keyed], 1.0)
        alone = values[~keyed]
        moments = self.keyless.get(version)
        if moments is None:
            moments = self.keyless[version] = np.zeros(len(KEYLESS_FIELDS))
        total = float(alone.sum())
        squares = float(alone @ alone)
        moments += (alone.size, total, alone.size, squares, alone.size, total)

    def merge(self, other: SplitTotals) -> None:
        """Add another replica's (or an earlier run's) totals: sums are mergeable."""
        self.s += other.s
        self.n += other.n
        for version, moments in other.keyless.items():
            if version in self.keyless:
                self.keyless[version] = self.keyless[version] + moments
            else:
                self.keyless[version] = moments.copy()

    # Pickled sparse, as arrays (a memory copy to load, where lists would cost a Python float
    # per value): a router's interval touches some of the buckets, 160 KB dense otherwise.
    def __getstate__(self) -> dict[str, Any]:
        # Narrowed (analysis/wire.py): counts (and a rate's numerator) are whole numbers that
        # mostly fit a byte. The buckets used go as their indices (uint16), or past one bucket
        # in 16 as a bitmap of all of them (1,250 bytes): a busy router's interval touches
        # thousands. (A controller of an older release cannot read the bitmap; it cannot
        # read the same report's GroupSums either, clusters.GroupSums.__getstate__.)
        used_mask = (self.n != 0) | (self.s != 0)
        used = np.flatnonzero(used_mask)
        state: dict[str, Any] = {"s": narrow(self.s[used]), "n": narrow(self.n[used]), "keyless": dict(self.keyless)}
        if used.size > _BITMAP_AFTER:
            state["bucket_bitmap"] = np.packbits(used_mask)
        else:
            state["buckets"] = narrow(used)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        restored = SplitTotals.from_dict(state)
        self.s, self.n, self.keyless = restored.s, restored.n, restored.keyless

    def to_dict(self) -> dict[str, Any]:
        """Sparse plain data: only buckets with data."""
        used = np.flatnonzero((self.n != 0) | (self.s != 0))
        return {"buckets": used.tolist(), "s": self.s[used].tolist(), "n": self.n[used].tolist(),
                "keyless": {v: m.tolist() for v, m in self.keyless.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SplitTotals:
        out = cls()
        if "bucket_bitmap" in data:  # only in pickles (__getstate__)
            bitmap = np.asarray(data["bucket_bitmap"], dtype=np.uint8)
            used = np.flatnonzero(np.unpackbits(bitmap, count=NUM_BUCKETS).view(bool))  # as bool: 5x faster
        else:
            used = np.asarray(data.get("buckets", []), dtype=int)
        out.s[used] = np.asarray(data.get("s", []), dtype=float)
        out.n[used] = np.asarray(data.get("n", []), dtype=float)
        out.keyless = {v: np.asarray(m, dtype=float) for v, m in (data.get("keyless") or {}).items()}
        return out


@dataclass(frozen=True)
class ArmSplit:
    """One arm in one split: its ratio and its denominator's total."""

    value: float
    total_n: float
    units: int


@dataclass(frozen=True)
class Cuped:
    """CUPED (Deng, Xu, Kohavi & Walker 2013) on the split-stratified difference: the same
    buckets' ratio in a pre-period (before the variant had traffic) as the covariate.

    ``theta = Cov(D, C) / Var(C)`` from the per-bucket influences, where C is the difference
    the pre-period shows between the buckets later assigned to each arm (0 in expectation:
    the pre-period predates the assignment). ``variance_reduction`` is 1 - Var(D - theta C) /
    Var(D), about the squared correlation of a bucket's pre- and in-period outcomes.
    """

    theta: float
    variance_reduction: float
    pre_units: int  # buckets with pre-period data in either arm
    diff_unadjusted: float
    var_diff_unadjusted: float


@dataclass(frozen=True)
class RatioComparison:
    """Variant against control on one ratio metric, combined over the splits both saw.

    ``value_*`` are the split-weighted ratios A and B (with one split, the plain ratios);
    ``var_*`` and ``cov`` their delta-method (co)variances; ``diff = A - B``.
    """

    value_variant: float
    value_control: float
    var_variant: float
    var_control: float
    cov: float
    units_variant: int  # distinct units (buckets with data plus keyless units) per arm
    units_control: int
    splits_used: int  # splits where both arms had at least two units
    splits_weights: tuple[float, ...]
    cuped: Cuped | None = None  # the pre-period adjustment applied, if any
    #: The arms' own (Wald) variances, before the pooled floor (see the module's "Small arms").
    own_var_variant: float | None = None
    own_var_control: float | None = None

    @property
    def diff(self) -> float:
        return self.value_variant - self.value_control

    @property
    def var_diff(self) -> float:
        return max(self.var_variant + self.var_control - 2.0 * self.cov, 0.0)

    @property
    def own_var_diff(self) -> float:
        """The Wald variance of the difference, from the arms' own variances."""
        var_v = self.var_variant if self.own_var_variant is None else self.own_var_variant
        var_c = self.var_control if self.own_var_control is None else self.own_var_control
        return max(var_v + var_c - 2.0 * self.cov, 0.0)


def _arm(table: SplitTotals, in_arm: np.ndarray, version: str) -> tuple[ArmSplit, np.ndarray]:
    """The arm's ratio in one split, and its keyless moments."""
    s, n = table.s[in_arm], table.n[in_arm]
    k = table.keyless.get(version, np.zeros(len(KEYLESS_FIELDS)))
    total_s, total_n = float(s.sum() + k[1]), float(n.sum() + k[2])
    units = int(np.count_nonzero(n) + k[0])
    value = total_s / total_n if total_n > 0 else math.nan
    return ArmSplit(value, total_n, units), k


def compare_ratio(splits: Sequence[tuple[np.ndarray, SplitTotals]], *, variant: str, control: str,
                  versions: Sequence[str], pre: SplitTotals | None = None) -> RatioComparison | None:
    """Combine ``variant`` against ``control`` over ``splits``: (arm index per bucket, totals).

    ``arm_of_bucket[b]`` is the index in ``versions`` of the version bucket ``b`` routes to
    under that split. A split where either arm has fewer than two units is left out (there
    is no variance to weigh it by). None when no split is usable. ``pre``: per-bucket totals
    of the same metric from before the variant had traffic, for CUPED (see :class:`Cuped`).
    """
    iv, ic = versions.index(variant), versions.index(control)
    per_split = []
    for arm_of_bucket, table in splits:
        mask_v, mask_c = arm_of_bucket == iv, arm_of_bucket == ic
        arm_v, k_v = _arm(table, mask_v, variant)
        arm_c, k_c = _arm(table, mask_c, control)
        if arm_v.units < 2 or arm_c.units < 2:
            continue
        per_split.append((table, mask_v, mask_c, arm_v, arm_c, k_v, k_c))
    if not per_split:
        return None
    # Inverse-variance weights, from each split's pooled variance (both arms as one sample),
    # never the arms' own: a split whose small arm happens to show no event has an own variance
    # near 0, and weighing by it handed that split half the weight and a biased verdict. The
    # pooled variance does not depend on which arm the events fell in. A split without spread
    # at all: weights from the arms' sizes (Cochran-Mantel-Haenszel's for a difference).
    pooled = np.array([_pooled_per_unit(*p) * (1.0 / p[3].units + 1.0 / p[4].units) for p in per_split])
    if (pooled > 0).all():
        raw = 1.0 / pooled
    else:
        raw = np.array([p[3].units * p[4].units / (p[3].units + p[4].units) for p in per_split])
    weights = raw / raw.sum()

    psi_v, psi_c = np.zeros(NUM_BUCKETS), np.zeros(NUM_BUCKETS)
    keyless_var_v = keyless_var_c = 0.0
    value_v = value_c = 0.0
    used_v, used_c = np.zeros(NUM_BUCKETS, bool), np.zeros(NUM_BUCKETS, bool)
    keyless_units_v = keyless_units_c = 0
    for w, (table, mask_v, mask_c, arm_v, arm_c, k_v, k_c) in zip(weights, per_split):
        value_v += w * arm_v.value
        value_c += w * arm_c.value
        psi_v[mask_v] += w * (table.s[mask_v] - arm_v.value * table.n[mask_v]) / arm_v.total_n
        psi_c[mask_c] += w * (table.s[mask_c] - arm_c.value * table.n[mask_c]) / arm_c.total_n
        keyless_var_v += w * w * _keyless_sq(k_v, arm_v.value) / arm_v.total_n ** 2
        keyless_var_c += w * w * _keyless_sq(k_c, arm_c.value) / arm_c.total_n ** 2
        used_v |= mask_v & (table.n != 0)
        used_c |= mask_c & (table.n != 0)
        keyless_units_v += int(k_v[0])
        keyless_units_c += int(k_c[0])
    units_v = int(used_v.sum()) + keyless_units_v
    units_c = int(used_c.sum()) + keyless_units_c
    # n / (n - 1): the sum of squared influences is the variance with the mean known.
    var_v = (float(psi_v @ psi_v) + keyless_var_v) * units_v / max(units_v - 1, 1)
    var_c = (float(psi_c @ psi_c) + keyless_var_c) * units_c / max(units_c - 1, 1)
    # A bucket in the variant under one split and in the control under another links them.
    cov = float(psi_v @ psi_c)
    plain = RatioComparison(value_v, value_c, var_v, var_c, cov, units_v, units_c, len(per_split),
                            tuple(float(w) for w in weights))
    pooled_v, pooled_c = _pooled_arm_vars(weights, per_split, var_v, var_c)
    if pre is None:
        return _at_least_pooled(plain, pooled_v, pooled_c, 1.0)
    adjusted = _cuped(plain, pre, weights, per_split, psi_v, psi_c, keyless_var_v, keyless_var_c)
    kept = adjusted.var_diff / plain.var_diff if adjusted.cuped is not None and plain.var_diff > 0 else 1.0
    return _at_least_pooled(adjusted, pooled_v, pooled_c, kept)


def _pooled_arm_vars(weights: np.ndarray, per_split: list, var_v: float, var_c: float) -> tuple[float, float]:
    """Each arm's variance as if both arms were one population (the null hypothesis): per
    split, the per-unit variance around the pooled ratio of both arms, over this arm's units.

    This is the score test's variance (for a rate, ``p(1-p)/n`` with ``p`` pooled). The arms'
    own (Wald) variances fail where the small arm of an unequal split shows no event, or none
    of a heavy tail's large values: its variance reads 0 or near it, and the difference looks
    certain (an A/A at 90/10 with a 1% rate got a verdict in 23% of runs). A user's covariance
    across splits is taken from the arms' own variances, as in :func:`compare_ratio`.
    """
    within_v = within_c = pooled_v = pooled_c = 0.0
    for w, split in zip(weights, per_split):
        table, mask_v, mask_c, arm_v, arm_c, k_v, k_c = split
        per_unit = _pooled_per_unit(*split)
        pooled_v += w * w * per_unit / arm_v.units
        pooled_c += w * w * per_unit / arm_c.units
        within_v += w * w * _arm_var(table, mask_v, arm_v, k_v)
        within_c += w * w * _arm_var(table, mask_c, arm_c, k_c)
    # What the arms' own variances hold beyond their splits' sum: the same users across splits.
    return pooled_v + max(var_v - within_v, 0.0), pooled_c + max(var_c - within_c, 0.0)


def _pooled_per_unit(table: SplitTotals, mask_v: np.ndarray, mask_c: np.ndarray, arm_v: ArmSplit,
                     arm_c: ArmSplit, k_v: np.ndarray, k_c: np.ndarray) -> float:
    """One split's variance of the ratio per unit, both arms as one sample: the squared
    influence ``(S - r N) / mean N`` around the pooled ratio ``r``, averaged over units."""
    units = arm_v.units + arm_c.units
    total_n = arm_v.total_n + arm_c.total_n
    r = (arm_v.value * arm_v.total_n + arm_c.value * arm_c.total_n) / total_n
    both = mask_v | mask_c
    resid = table.s[both] - r * table.n[both]
    mean_n = total_n / units
    return (float(resid @ resid) + _keyless_sq(k_v, r) + _keyless_sq(k_c, r)) / ((units - 1) * mean_n ** 2)


def _at_least_pooled(ratio: RatioComparison, pooled_v: float, pooled_c: float, kept: float) -> RatioComparison:
    """``ratio`` with the variance of its difference at least the pooled one (times ``kept``,
    the share of the variance CUPED left): a test at level alpha when the arms do not differ
    (the score test's variance), and never narrower than the arms' own (Wald's, which stays
    where it is larger: a small arm that is truly noisier). The arms' variances and their
    covariance are scaled together, so Fieller's interval of the lift widens with it."""
    pooled_diff = (pooled_v + pooled_c) * kept - 2.0 * ratio.cov
    own = dataclasses.replace(ratio, own_var_variant=ratio.var_variant, own_var_control=ratio.var_control)
    if not pooled_diff > ratio.var_diff:
        return own
    if ratio.var_diff <= 0:  # no spread in either arm's own figures: the pooled ones are all there is
        return dataclasses.replace(own, var_variant=pooled_v * kept, var_control=pooled_c * kept)
    scale = pooled_diff / ratio.var_diff
    return dataclasses.replace(own, var_variant=ratio.var_variant * scale, var_control=ratio.var_control * scale,
                               cov=ratio.cov * scale)


def _cuped(plain: RatioComparison, pre: SplitTotals, weights: np.ndarray, per_split: list,
           psi_v: np.ndarray, psi_c: np.ndarray, keyless_var_v: float, keyless_var_c: float) -> RatioComparison:
    """``plain`` adjusted by the pre-period covariate, or ``plain`` when it cannot be."""
    chi_v, chi_c = np.zeros(NUM_BUCKETS), np.zeros(NUM_BUCKETS)
    in_arms = np.zeros(NUM_BUCKETS, bool)
    pre_v = pre_c = 0.0
    for w, (_, mask_v, mask_c, *_rest) in zip(weights, per_split):
        in_arms |= mask_v | mask_c
        n_v, n_c = pre.n[mask_v], pre.n[mask_c]
        if np.count_nonzero(n_v) < 2 or np.count_nonzero(n_c) < 2:
            return plain  # too few of these buckets were seen before: nothing to adjust by
        r_v, r_c = float(pre.s[mask_v].sum() / n_v.sum()), float(pre.s[mask_c].sum() / n_c.sum())
        pre_v += w * r_v
        pre_c += w * r_c
        chi_v[mask_v] += w * (pre.s[mask_v] - r_v * n_v) / n_v.sum()
        chi_c[mask_c] += w * (pre.s[mask_c] - r_c * n_c) / n_c.sum()
    phi_d, phi_c = psi_v - psi_c, chi_v - chi_c
    var_cov = float(phi_c @ phi_c)
    if var_cov <= 0:
        return plain
    theta = float(phi_d @ phi_c) / var_cov
    pooled_pre = (pre_v + pre_c) / 2.0
    adj_v, adj_c = psi_v - theta * chi_v, psi_c - theta * chi_c
    units_v, units_c = plain.units_variant, plain.units_control
    var_v = (float(adj_v @ adj_v) + keyless_var_v) * units_v / max(units_v - 1, 1)
    var_c = (float(adj_c @ adj_c) + keyless_var_c) * units_c / max(units_c - 1, 1)
    adjusted = RatioComparison(
        plain.value_variant - theta * (pre_v - pooled_pre), plain.value_control - theta * (pre_c - pooled_pre),
        var_v, var_c, float(adj_v @ adj_c), units_v, units_c, plain.splits_used, plain.splits_weights)
    reduction = 1.0 - adjusted.var_diff / plain.var_diff if plain.var_diff > 0 else 0.0
    pre_units = int(np.count_nonzero(pre.n[in_arms]))
    return RatioComparison(adjusted.value_variant, adjusted.value_control, var_v, var_c, adjusted.cov, units_v,
                           units_c, plain.splits_used, plain.splits_weights,
                           Cuped(theta, reduction, pre_units, plain.diff, plain.var_diff))


def _arm_var(table: SplitTotals, mask: np.ndarray, arm: ArmSplit, keyless: np.ndarray) -> float:
    resid = table.s[mask] - arm.value * table.n[mask]
    total = float(resid @ resid) + _keyless_sq(keyless, arm.value)
    return total / arm.total_n ** 2 * arm.units / max(arm.units - 1, 1)


def _keyless_sq(k: np.ndarray, r: float) -> float:
    """sum over keyless units of (S - r N)^2, from their moments."""
    if k[0] == 0:
        return 0.0
    return max(float(k[3] - 2.0 * r * k[5] + r * r * k[4]), 0.0)


def fieller_ratio_interval(a: float, b: float, var_a: float, var_b: float, cov: float,
                           crit: float) -> tuple[float, float] | None:
    """Fieller's interval for a / b: every rho with (a - rho b)^2 <= crit^2 Var(a - rho b).

    At rho = 1 the condition is exactly the test of a - b = 0 with the same variance, so the
    interval excludes 1 exactly when that test rejects: a relative lift never contradicts
    the absolute one. None when b is not clearly away from 0 (the set is unbounded).
    """
    c2 = crit * crit
    qa = b * b - c2 * var_b
    if qa <= 0:
        return None
    qb = -2.0 * (a * b - c2 * cov)
    qc = a * a - c2 * var_a
    disc = qb * qb - 4.0 * qa * qc
    if disc < 0:
        return None
    root = math.sqrt(disc)
    return (-qb - root) / (2.0 * qa), (-qb + root) / (2.0 * qa)


def fieller_ratio_bounds(a: float, b: float, var_a: float, var_b: float, cov: float, crit: float,
                         nonnegative: bool) -> tuple[float | None, float | None]:
    """Fieller's set for a / b as (lower, upper), a bound None where the set is unbounded.

    When b is not clearly away from 0 the set is two rays, (-inf, r1] and [r2, inf), or the
    whole line. A ratio of two ``nonnegative`` figures (rates, latencies) cannot be below 0,
    so a ray entirely below 0 is dropped and the other one bounds the ratio on one side.
    """
    bounded = fieller_ratio_interval(a, b, var_a, var_b, cov, crit)
    if bounded is not None:
        return bounded
    c2 = crit * crit
    qa = b * b - c2 * var_b
    qb = -2.0 * (a * b - c2 * cov)
    qc = a * a - c2 * var_a
    disc = qb * qb - 4.0 * qa * qc
    if qa >= 0 or disc <= 0 or not nonnegative:
        return None, None
    root = math.sqrt(disc)
    r1, r2 = sorted(((-qb - root) / (2.0 * qa), (-qb + root) / (2.0 * qa)))
    if r1 < 0:
        return r2, None  # (-inf, r1] holds no ratio of nonnegative figures
    return None, None
