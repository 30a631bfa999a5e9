"""units.py: ratio metrics per randomisation unit, the delta method, splits and Fieller.

References: with one request per unit the delta-method variance is the binomial (rates) or
sample (means) variance of the mean, times n / (n - 1); with clustered units it is the
cluster-robust variance of statsmodels' OLS on an intercept; combined over splits that share
buckets its z-scores are standard normal under no effect (checked by simulation). Each arm's
difference's variance in a comparison is at least the pooled one (the score test's); a small
arm with no event yet is the case it is for.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm

from serve_ab.analysis.units import KEYLESS_FIELDS, SplitTotals, compare_ratio, fieller_ratio_interval
from serve_ab.routing import NUM_BUCKETS

VERSIONS = ["v1", "v2"]


def _arms(control_pct: int) -> np.ndarray:
    """Arm index per bucket (0: v1, the control, first; 1: v2) for a split giving v1 ``control_pct``%."""
    return (np.arange(NUM_BUCKETS) >= control_pct * NUM_BUCKETS // 100).astype(int)


HALF = _arms(50)


def _compare(*splits, pre=None):
    return compare_ratio(list(splits), variant="v2", control="v1", versions=VERSIONS, pre=pre)


def _cluster_var(y, groups):
    """statsmodels' cluster-robust variance of the mean of ``y`` (OLS on an intercept)."""
    _, g = np.unique(groups, return_inverse=True)
    fit = sm.OLS(y, np.ones(len(y))).fit(cov_type="cluster", cov_kwds={"groups": g})
    return float(fit.params[0]), float(fit.bse[0] ** 2)


# ---- one request per unit ---------------------------------------------------------------------


@pytest.mark.parametrize("keyless", [False, True], ids=["a bucket each", "keyless"])
def test_a_rate_with_one_request_per_unit_has_the_binomial_variance(keyless):
    rng = np.random.default_rng(1)
    table = SplitTotals()
    outcomes = {"v1": rng.random(3000) < 0.10, "v2": rng.random(4500) < 0.13}
    for version, first in (("v1", 0), ("v2", 5000)):
        for i, y in enumerate(outcomes[version]):
            table.add(None if keyless else first + i, version, float(y))
    ratio = _compare((HALF, table))
    for version, value, var, units in (("v2", ratio.value_variant, ratio.own_var_variant, ratio.units_variant),
                                       ("v1", ratio.value_control, ratio.own_var_control, ratio.units_control)):
        y = outcomes[version]
        n, p = y.size, y.mean()
        assert units == n and value == pytest.approx(p, rel=1e-12)
        assert var == pytest.approx(p * (1 - p) / n * n / (n - 1), rel=1e-9)
    assert ratio.cov == 0.0 and ratio.splits_used == 1


@pytest.mark.parametrize("keyless", [False, True], ids=["a bucket each", "keyless"])
def test_a_mean_with_one_request_per_unit_has_the_sample_variance_of_the_mean(keyless):
    rng = np.random.default_rng(2)
    values = {"v1": rng.lognormal(0.0, 0.5, 2000), "v2": rng.lognormal(0.1, 0.5, 2500)}
    table = SplitTotals()
    for version, first in (("v1", 0), ("v2", 5000)):
        for i, y in enumerate(values[version]):
            table.add(None if keyless else first + i, version, float(y))
    ratio = _compare((HALF, table))
    for version, value, var in (("v2", ratio.value_variant, ratio.own_var_variant),
                                ("v1", ratio.value_control, ratio.own_var_control)):
        y = values[version]
        n = y.size
        assert value == pytest.approx(y.mean(), rel=1e-12)
        # sum (y - mean)^2 / n^2 times n / (n - 1): the ddof=1 variance of the mean
        assert var == pytest.approx(y.var(ddof=0) / n * n / (n - 1), rel=1e-9)
        assert var == pytest.approx(y.var(ddof=1) / n, rel=1e-9)


# ---- clustered units --------------------------------------------------------------------------


def _clustered(rng, users, buckets_of, rate, user_sd=1.0, keyless=0):
    """Requests of users (Poisson many each, a persistent effect each) in the given buckets,
    plus ``keyless`` requests: (bucket or None, outcome) rows."""
    rows = []
    for _ in range(users):
        bucket = int(rng.choice(buckets_of))
        effect = rng.normal(0.0, user_sd)
        p = 1 / (1 + math.exp(-(math.log(rate / (1 - rate)) + effect)))
        for _ in range(1 + rng.poisson(3)):
            rows.append((bucket, float(rng.random() < p)))
    rows += [(None, float(rng.random() < rate)) for _ in range(keyless)]
    return rows


@pytest.mark.parametrize("keyless", [0, 300])
def test_with_clustered_units_the_variance_is_statsmodels_cluster_robust_variance(keyless):
    rng = np.random.default_rng(3)
    table = SplitTotals()
    groups, ys = {"v1": [], "v2": []}, {"v1": [], "v2": []}
    buckets = {"v1": np.arange(0, 5000), "v2": np.arange(5000, NUM_BUCKETS)}
    for version, rate in (("v1", 0.2), ("v2", 0.25)):
        # More users than buckets' worth: several users share a bucket, as they do in serving.
        for i, (bucket, y) in enumerate(_clustered(rng, 1500, buckets[version][:800], rate, keyless=keyless)):
            table.add(bucket, version, y)
            groups[version].append(bucket if bucket is not None else -1 - i)
            ys[version].append(y)
    ratio = _compare((HALF, table))
    for version, value, var in (("v2", ratio.value_variant, ratio.own_var_variant),
                                ("v1", ratio.value_control, ratio.own_var_control)):
        ref_value, ref_var = _cluster_var(np.asarray(ys[version]), np.asarray(groups[version]))
        assert value == pytest.approx(ref_value, rel=1e-12)
        assert var == pytest.approx(ref_var, rel=1e-6)  # asked: within 1%; it is the same formula
    # The difference against OLS with a treatment dummy, clustered: within 1% (statsmodels'
    # small-sample factor is over all clusters at once, here per arm).
    y = np.concatenate([ys["v1"], ys["v2"]])
    treat = np.concatenate([np.zeros(len(ys["v1"])), np.ones(len(ys["v2"]))])
    g = np.concatenate([groups["v1"], [x - 10**6 if x < 0 else x for x in groups["v2"]]])
    _, g = np.unique(g, return_inverse=True)
    fit = sm.OLS(y, sm.add_constant(treat)).fit(cov_type="cluster", cov_kwds={"groups": g})
    assert ratio.diff == pytest.approx(fit.params[1], rel=1e-10)
    assert ratio.own_var_diff == pytest.approx(fit.bse[1] ** 2, rel=0.01)
    # ...and clustering matters here: treating requests as independent understates it.
    naive = sum(np.var(ys[v], ddof=1) / len(ys[v]) for v in ys)
    assert ratio.own_var_diff > 1.3 * naive


def test_a_mean_per_request_with_clustered_units_is_statsmodels_cluster_robust_too():
    rng = np.random.default_rng(4)
    table = SplitTotals()
    ys, groups = [], []
    for _ in range(800):
        bucket, level = int(rng.integers(0, 5000)), rng.lognormal(0, 0.5)
        for _ in range(1 + rng.poisson(2)):
            y = level * rng.lognormal(0, 0.3)
            table.add(bucket, "v1", y)
            ys.append(y)
            groups.append(bucket)
    for i in range(600):
        table.add(5000 + i, "v2", rng.lognormal(0, 0.5))
    ratio = _compare((HALF, table))
    value, var = _cluster_var(np.asarray(ys), np.asarray(groups))
    assert ratio.value_control == pytest.approx(value, rel=1e-12)
    assert ratio.own_var_control == pytest.approx(var, rel=1e-6)


# ---- splits -----------------------------------------------------------------------------------


def _split_data(rng, arms, base, effect_sd, requests_per_bucket, lift=0.0):
    """One split's totals: every bucket's requests at the split's base rate, with the bucket's
    persistent effect (the same users in it in every split)."""
    logit = math.log(base / (1 - base)) + effect_sd
    p = 1 / (1 + np.exp(-logit))
    p = np.where(arms == 1, np.clip(p * (1 + lift), 0, 1), p)
    n = rng.poisson(requests_per_bucket, NUM_BUCKETS).astype(float)
    s = rng.binomial(n.astype(int), p).astype(float)
    table = SplitTotals()
    table.s, table.n = s, n
    return table


def test_across_splits_that_share_buckets_the_z_scores_are_standard_normal_under_no_effect():
    """A canary at 20% then 50%, the base rate falling between them, each bucket's users with a
    persistent effect: buckets 5000-7999 are in the control first and the variant after, which
    links the arms (a positive covariance, subtracted from the variance of the difference)."""
    rng = np.random.default_rng(5)
    first, second = _arms(80), _arms(50)
    z = []
    reps = 300
    for _ in range(reps):
        effect = rng.normal(0.0, 1.2, NUM_BUCKETS)
        ratio = _compare((first, _split_data(rng, first, 0.4, effect, 1.5)),
                         (second, _split_data(rng, second, 0.2, effect, 1.5)))
        assert ratio.splits_used == 2 and ratio.cov > 0
        z.append(ratio.diff / math.sqrt(ratio.var_diff))
    z = np.asarray(z)
    # Var of a sample variance of 300 normals: sd ~ sqrt(2/300) = 0.08; the mean's sd ~ 0.06.
    assert abs(z.mean()) < 0.2 and 0.75 < z.var() < 1.3, (z.mean(), z.var())


def _pooled_var_diff(arms, table, units_v, units_c):
    """statsmodels' cluster-robust variance of the split's rate, both arms as one sample, per
    unit, times 1/n_v + 1/n_c: the variance of the difference if the arms did not differ."""
    used = np.flatnonzero(table.n)
    n, s = table.n[used].astype(int), table.s[used].astype(int)
    y = np.concatenate([np.r_[np.ones(k), np.zeros(m - k)] for k, m in zip(s, n)])
    _, var = _cluster_var(y, np.repeat(used, n))
    return var * used.size * (1 / units_v + 1 / units_c)


def test_splits_are_combined_with_pooled_inverse_variance_weights_and_a_thin_split_is_left_out():
    rng = np.random.default_rng(6)
    effect = rng.normal(0.0, 0.5, NUM_BUCKETS)
    first, second = _arms(80), _arms(50)
    t1 = _split_data(rng, first, 0.4, effect, 1.0)
    t2 = _split_data(rng, second, 0.2, effect, 1.0)
    r1, r2, both = _compare((first, t1)), _compare((second, t2)), _compare((first, t1), (second, t2))
    # Each split's weight: the inverse of its pooled variance (not the arms' own, which a
    # chance lack of events in one arm drives to 0).
    w = np.array([1 / _pooled_var_diff(a, t, r.units_variant, r.units_control)
                  for a, t, r in ((first, t1, r1), (second, t2, r2))])
    w /= w.sum()
    assert both.splits_weights == pytest.approx(tuple(w), rel=1e-9)
    assert both.value_variant == pytest.approx(w @ [r1.value_variant, r2.value_variant], rel=1e-12)
    assert both.value_control == pytest.approx(w @ [r1.value_control, r2.value_control], rel=1e-12)
    # A split where one arm has fewer than two units has no variance to weigh it by.
    thin = SplitTotals()
    thin.add(9999, "v2", 1.0)
    thin.add(10, "v1", 1.0)
    thin.add(11, "v1", 0.0)
    assert _compare((first, t1), (second, thin)).splits_used == 1
    assert _compare((second, thin)) is None


def test_totals_merge_and_round_trip_through_plain_data():
    rng = np.random.default_rng(7)
    whole, a, b = SplitTotals(), SplitTotals(), SplitTotals()
    for i in range(500):
        bucket = None if i % 7 == 0 else int(rng.integers(0, NUM_BUCKETS))
        version = "v1" if bucket is None or bucket < 5000 else "v2"
        value = float(rng.random())
        whole.add(bucket, version, value)
        (a if i % 2 else b).add(bucket, version, value)
    a.merge(b)
    again = SplitTotals.from_dict(a.to_dict())
    for table in (a, again):
        assert np.allclose(table.s, whole.s) and np.array_equal(table.n, whole.n)
        assert set(table.keyless) == set(whole.keyless)
        for version, moments in whole.keyless.items():
            assert np.allclose(table.keyless[version], moments) and len(moments) == len(KEYLESS_FIELDS)
    assert len(whole.to_dict()["buckets"]) == np.count_nonzero(whole.n)  # sparse


# ---- Fieller ----------------------------------------------------------------------------------


def test_fiellers_interval_excludes_one_exactly_when_the_test_of_the_difference_rejects():
    rng = np.random.default_rng(8)
    checked = rejected = 0
    for _ in range(5000):
        b = rng.uniform(0.05, 5.0)
        a = b * rng.uniform(0.5, 1.5)
        sd_a, sd_b = a * rng.uniform(0.001, 0.3), b * rng.uniform(0.001, 0.3)
        cov = rng.uniform(-0.9, 0.9) * sd_a * sd_b
        crit = rng.uniform(1.0, 4.0)
        se = math.sqrt(sd_a**2 + sd_b**2 - 2 * cov)
        if rng.random() < 0.3:  # close to the boundary, on either side
            a = b + rng.choice([-1, 1]) * crit * se * rng.uniform(0.98, 1.02)
        interval = fieller_ratio_interval(a, b, sd_a**2, sd_b**2, cov, crit)
        if interval is None:
            assert b * b <= crit * crit * sd_b**2  # the denominator is not clearly away from 0
            continue
        lo, hi = interval
        assert lo <= a / b <= hi
        for rho in (lo, hi):  # the bounds solve (a - rho b)^2 = crit^2 Var(a - rho b)
            assert (a - rho * b) ** 2 == pytest.approx(crit**2 * (sd_a**2 - 2 * rho * cov + rho**2 * sd_b**2),
                                                       rel=1e-6, abs=1e-12)
        excludes_one = not lo <= 1.0 <= hi
        assert excludes_one == (abs(a - b) / se > crit), (a, b, sd_a, sd_b, cov, crit)
        checked += 1
        rejected += excludes_one
    assert checked > 4000 and 0.1 < rejected / checked < 0.9  # both outcomes well represented


def test_cuped_on_a_pre_period_keeps_z_standard_normal_and_cuts_the_variance():
    """The same buckets' figures from before the variant had traffic (all in the control) as the
    covariate: under no effect the adjusted z-scores stay standard normal, and with persistent
    bucket effects the variance of the difference falls."""
    rng = np.random.default_rng(9)
    everyone, half = _arms(100), _arms(50)
    z, reduction = [], []
    for _ in range(200):
        effect = rng.normal(0.0, 1.5, NUM_BUCKETS)
        pre = _split_data(rng, everyone, 0.3, effect, 3.0)
        ratio = _compare((half, _split_data(rng, half, 0.3, effect, 3.0)), pre=pre)
        assert ratio.cuped is not None and ratio.cuped.pre_units > 9000
        assert ratio.var_diff < ratio.cuped.var_diff_unadjusted
        z.append(ratio.diff / math.sqrt(ratio.var_diff))
        reduction.append(ratio.cuped.variance_reduction)
    z = np.asarray(z)
    assert abs(z.mean()) < 0.25 and 0.7 < z.var() < 1.35, (z.mean(), z.var())
    assert 0.1 < np.mean(reduction) < 0.9  # about 0.2 here (1,500 runs)


def test_a_small_arm_with_no_event_yet_gets_the_pooled_variance_not_zero():
    """0 of 187 against 14 of 1,597 (a 1% rate at 90/10): the arm's own variance is 0, which
    made the difference look certain (z = -3.7); the pooled one is the score test's (z ~ -1.3,
    Fisher's exact test p ~ 0.4)."""
    table = SplitTotals()
    for i in range(187):
        table.add(9000 + i, "v2", 0.0)
    for i in range(1597):
        table.add(i, "v1", 1.0 if i < 14 else 0.0)
    ratio = _compare((_arms(90), table))
    assert ratio.own_var_variant == 0.0 and ratio.value_variant == 0.0
    units = 187 + 1597
    p = 14 / units
    pooled = p * (1 - p) * units / (units - 1)
    assert ratio.own_var_diff == pytest.approx(ratio.own_var_control, rel=1e-12)
    assert ratio.var_diff == pytest.approx(pooled / 187 + pooled / 1597, rel=1e-9)
    z = ratio.diff / math.sqrt(ratio.var_diff)
    assert -1.5 < z < -1.1


@pytest.mark.parametrize("used", [3, 700, NUM_BUCKETS])
def test_totals_pickle_narrow_and_read_back_exactly_listed_or_as_a_bitmap(used):
    """A report lists a few buckets by index and many as a bitmap; counts and a rate's
    numerator travel as small integers, a latency's sums as they are."""
    import pickle

    rng = np.random.default_rng(used)
    rate, latency = SplitTotals(), SplitTotals()
    buckets = rng.choice(NUM_BUCKETS, used, replace=False)
    for bucket in buckets.tolist():
        for _ in range(int(rng.integers(1, 4))):
            rate.add(bucket, "v1", float(rng.random() < 0.1))
            latency.add(bucket, "v1", float(rng.lognormal(1.5, 0.4)))
    rate.add(None, "v2", 1.0)
    for table in (rate, latency):
        state = table.__getstate__()
        assert ("bucket_bitmap" in state) == (used > NUM_BUCKETS // 16)
        assert state["n"].dtype == np.uint8
        back = pickle.loads(pickle.dumps(table))
        assert np.array_equal(back.s, table.s) and np.array_equal(back.n, table.n)
        assert back.s.dtype == back.n.dtype == np.float64
        assert back.keyless.keys() == table.keyless.keys()
    assert rate.__getstate__()["s"].dtype == np.uint8 and latency.__getstate__()["s"].dtype == np.float64
