"""Design effects of the gates' figures, from per-group totals (serve_ab/analysis/clusters.py).

The variance over groups is checked against statsmodels' cluster-robust variance; the gates
are checked on windows folded as a router folds them, where users who send many requests
must not read as independent evidence, and keyless requests must keep their exact bounds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats

from serve_ab.analysis.aggregate import IntervalAggregate
from serve_ab.analysis.clusters import (
    CELLS, KEYLESS, CellCounts, MIN_GROUPS, NUM_GROUPS, DesignEffect, GroupSums, ValueGroups, class_design_effect, groups_of, quantile_design_effect,
    ratio_design_effect, score_design_effect)
from serve_ab.config.rollout import Gate
from serve_ab.rollout.gates import GateVerdict, evaluate_gates
from serve_ab.rollout.windows import GateWindows, window_stats
from serve_ab.routing import NUM_BUCKETS

VERSIONS = ("v1", "v2")


def row(version: str, unit: int | None, *, failed: bool = False, latency_ms: float = 5.0,
        predicted_class: int | None = 0) -> tuple:
    return (version, latency_ms, "error" if failed else None, None if failed else predicted_class, None, unit,
            True, False, 0, None)


def windows_of(rows: list[tuple]):
    aggregate = IntervalAggregate()
    aggregate.served_rows(rows, {})
    return window_stats(aggregate.gates, versions=VERSIONS)


def judge(gate: dict, rows: list[tuple], alpha: float = 0.05):
    windows = windows_of(rows)
    (result,) = evaluate_gates([Gate.model_validate(gate)], windows["v2"], windows["v1"], 1, alpha=alpha)
    return result


def test_a_unit_takes_its_buckets_group_and_keyless_requests_their_own_row():
    assert groups_of([NUM_BUCKETS + 5, 130, None]).tolist() == [5, 130 % NUM_GROUPS, KEYLESS]


def test_the_spread_over_groups_is_statsmodels_cluster_robust_variance():
    rng = np.random.default_rng(3)
    users = rng.integers(0, 2**40, 60)
    rates = rng.beta(0.5, 9.5, 60)  # errors concentrated in some users
    units, failed = [], []
    for unit, rate in zip(users.tolist(), rates):
        for bad in (rng.random(25) < rate).tolist():
            units.append(unit)
            failed.append(bad)
    sums = GroupSums()
    sums.add_many(units, ~np.array(failed), np.full(len(units) - sum(failed), 5.0), [None] * len(units))
    effect = ratio_design_effect(sums.errors, sums.requests)

    y = np.array(failed, dtype=float)
    fit = sm.OLS(y, np.ones_like(y)).fit(cov_type="cluster", cov_kwds={"groups": groups_of(units)})
    p, n = y.mean(), y.size
    assert effect.between * p * (1 - p) / n == pytest.approx(float(fit.cov_params()[0, 0]), rel=1e-9)
    assert effect.within == 0.0 and effect.value > 3  # clustered: the evidence of a third or less


def test_keyless_requests_are_independent_exactly():
    ok = np.array([True] * 970 + [False] * 30)
    sums = GroupSums()
    sums.add_many([None] * 1000, ok, np.full(970, 5.0), [None] * 1000)
    effect = ratio_design_effect(sums.errors, sums.requests)
    assert (effect.value, effect.between) == (1.0, 0.0) and effect.within == pytest.approx(1.0)
    assert effect.effective(1000, 0.05) == pytest.approx(1000)


def test_one_user_per_request_is_close_to_independent():
    rng = np.random.default_rng(4)
    units = rng.integers(0, 2**40, 20_000).tolist()
    ok = rng.random(20_000) > 0.05
    sums = GroupSums()
    sums.add_many(units, ok, np.full(int(ok.sum()), 5.0), [None] * 20_000)
    assert ratio_design_effect(sums.errors, sums.requests).value < 1.3


def test_the_upper_bound_inflates_the_spread_between_groups_by_a_chi_square_bound():
    """On degrees of freedom that shrink with the group totals' kurtosis (Satterthwaite)."""
    rng = np.random.default_rng(5)

    def effect(users: int, per_user: int = 20):
        units = [u for u in rng.integers(0, 2**40, users).tolist() for _ in range(per_user)]
        rates = np.repeat(rng.beta(1, 9, users), per_user)
        ok = rng.random(len(units)) > rates
        sums = GroupSums()
        sums.add_many(units, ok, np.full(int(ok.sum()), 5.0), [None] * len(units))
        return ratio_design_effect(sums.errors, sums.requests)

    few, many = effect(40), effect(2000)
    assert MIN_GROUPS <= few.groups < 40 and 1 <= few.df <= few.groups - 1
    inflate = few.df / stats.chi2.ppf(0.05, few.df)
    assert few.upper(0.05) == pytest.approx(few.between * inflate + few.within)
    assert few.upper(0.05) / few.value > many.upper(0.05) / many.value > 1.0
    one_each = effect(5000, per_user=1)  # independent requests from keyed users: the price of not knowing
    assert 1.0 <= one_each.value < 1.3 and one_each.upper(0.03) < 1.6


def test_keyed_requests_from_fewer_than_twenty_groups_count_one_unit_per_group():
    for users, errors in ((1, 2), (2, 0), (19, 3)):
        sums = GroupSums()
        for user in range(users):
            failed = np.arange(100) < (errors if user == 0 else 0)
            sums.add_many([10_000 * user + user] * 100, ~failed, np.full(int((~failed).sum()), 5.0), [None] * 100)
        sums.add_many([None] * 9, np.ones(9, dtype=bool), np.full(9, 5.0), [None] * 9)
        effect = ratio_design_effect(sums.errors, sums.requests)
        assert effect.effective(100 * users + 9, 0.05) == pytest.approx(users + 9)  # groups and keyless
        assert MIN_GROUPS == 20 and "each group counts as one unit" in effect.describe(0.05)


def test_errors_from_one_heavy_user_do_not_pass_an_error_rate_gate():
    """1% errors in 3,000 requests passes max 2% as independent requests; from 30 users
    where one sent all 30 errors, it is evidence of far less."""
    gate = {"metric": "error_rate", "max": 0.02}
    stable = [row("v1", None) for _ in range(100)]
    users = [10_000 * i + i for i in range(30)]  # 30 distinct buckets, 30 groups
    clustered = [row("v2", unit, failed=unit == users[0] and k < 30) for unit in users for k in range(100)]
    keyless = [row("v2", None, failed=k < 30) for k in range(3000)]

    independent = judge(gate, keyless + stable)
    assert independent.verdict is GateVerdict.PASS
    result = judge(gate, clustered + stable)
    assert result.verdict is GateVerdict.INCONCLUSIVE, result.reason
    assert "design effect" in result.reason and result.upper > independent.upper


def test_a_bad_candidate_still_fails_when_its_users_are_clustered():
    gate = {"metric": "error_rate", "max": 0.02}
    users = [10_000 * i + i for i in range(100)]
    rows = [row("v2", unit, failed=k < 20 and i % 2 == 0) for i, unit in enumerate(users) for k in range(40)]
    result = judge(gate, rows + [row("v1", None) for _ in range(100)])
    assert result.verdict is GateVerdict.FAIL, result.reason  # 10% errors in half the users


def test_users_who_keep_one_class_are_not_drift():
    """100 users a side, 20 requests each, each always predicted one class: the classes are
    equally likely on both sides, and a chance imbalance of users is not a shift."""
    shares_v2 = [14, 6, 10, 10, 10, 10, 10, 10, 10, 10]  # users per class
    rows = []
    for version, shares in (("v2", shares_v2), ("v1", [10] * 10)):
        cls_of_users = [c for c, users in enumerate(shares) for _ in range(users)]
        for i, cls in enumerate(cls_of_users):
            unit = 10_000 * (i + (1000 if version == "v1" else 0)) + i
            rows += [row(version, unit, predicted_class=cls) for _ in range(20)]
    keyless = [row(v, None, predicted_class=r[3]) for r in rows for v in (r[0],)]
    as_requests = judge({"metric": "drift_psi", "max": 0.0}, keyless)
    assert as_requests.verdict is GateVerdict.FAIL  # 2,000 requests a side: a shift shown (lower bound > 0)
    as_users = judge({"metric": "drift_psi", "max": 0.0}, rows)
    assert as_users.verdict is GateVerdict.PASS, as_users.reason
    assert as_users.p_value > 0.05 and "design effects" in as_users.reason


def test_class_design_effect_of_users_with_one_class_is_about_their_request_count():
    sums = GroupSums()
    units = [u * 10_000 + u for u in range(NUM_GROUPS)]
    for unit in units:
        sums.add_many([unit] * 20, np.ones(20, dtype=bool), np.full(20, 5.0), [unit % 10] * 20)
    effect = class_design_effect(sums.classes, 10)
    assert 15 < effect.value < 25  # each group one user, 20 identical requests


def test_latency_bounds_widen_with_slow_and_fast_users_and_not_without_keys():
    rng = np.random.default_rng(6)
    rows, keyless = [], []
    for i in range(40):
        user_ms = 10 * math.exp(rng.normal(0, 0.6))
        latencies = user_ms * np.exp(rng.normal(0, 0.2, 50))
        rows += [row("v2", 10_000 * i + i, latency_ms=float(ms)) for ms in latencies]
        keyless += [row("v2", None, latency_ms=float(ms)) for ms in latencies]
    stable = [row("v1", None) for _ in range(10)]
    gate = {"metric": "latency_p95_ms", "max": 1000.0}
    clustered, independent = judge(gate, rows + stable), judge(gate, keyless + stable)
    assert clustered.value == independent.value
    assert clustered.upper > independent.upper and clustered.lower < independent.lower
    windows = windows_of(rows)
    assert quantile_design_effect(windows["v2"].groups.latency_bins, clustered.value).value > 3


def test_the_controllers_windows_carry_the_groups_of_every_router():
    first, second = IntervalAggregate(), IntervalAggregate()
    first.served_rows([row("v2", 7, failed=True), row("v2", None)], {})
    second.served_rows([row("v2", 7), row("v2", 10_150)], {})
    windows = GateWindows(keep_s=60.0)
    windows.add(1.0, first.gates)
    windows.add(2.0, second.gates)
    gates = windows.window(0.0, step=False).gates
    groups = window_stats(gates, versions=VERSIONS)["v2"].groups
    assert groups.requests[7] == 2 and groups.errors[7] == 1 and groups.requests[KEYLESS] == 1
    assert groups.requests[10_150 % NUM_BUCKETS % NUM_GROUPS] == 1 and groups.requests.sum() == 4


def test_a_report_pickles_only_the_groups_it_touched():
    import pickle

    aggregate = IntervalAggregate()
    aggregate.served_rows([row("v2", 7, failed=True), row("v2", None, latency_ms=12.0, predicted_class=3),
                           row("v2", 10_150, latency_ms=900.0)], {})
    sums = aggregate.gates["v2"].groups
    restored = pickle.loads(pickle.dumps(sums))
    for name in ("requests", "errors", "latency_bins"):
        assert np.array_equal(getattr(restored, name), getattr(sums, name))
    assert restored.classes == sums.classes and sums.classes.as_dict() == {(KEYLESS, 3): 1, (22, 0): 1}
    assert len(pickle.dumps(sums)) < 2_000  # dense, 27 KB


def test_the_mean_design_effect_of_outcomes_is_the_rates():
    rng = np.random.default_rng(7)
    groups = ValueGroups()
    sums = GroupSums()
    for user in range(80):
        unit = None if user % 4 == 0 else 10_000 * user + user
        rate = rng.beta(1, 3)
        outcomes = rng.random(15) < rate
        for outcome in outcomes.tolist():
            groups.add(unit, float(outcome))
        sums.add_many([unit] * 15, ~outcomes, np.full(int((~outcomes).sum()), 5.0), [None] * 15)
    as_mean, as_rate = groups.design_effect(), ratio_design_effect(sums.errors, sums.requests)
    assert (as_mean.value, as_mean.between, as_mean.within) == pytest.approx(
        (as_rate.value, as_rate.between, as_rate.within), rel=1e-9)


def test_the_mean_design_effect_is_statsmodels_cluster_robust_variance_of_the_mean():
    rng = np.random.default_rng(8)
    units, values = [], []
    for user in range(50):
        user_mean = 10 + rng.normal(0, 2)
        for value in (user_mean + rng.normal(0, 1, 12)).tolist():
            units.append(10_000 * user + user)
            values.append(value)
    groups = ValueGroups()
    for unit, value in zip(units, values):
        groups.add(unit, value)
    effect = groups.design_effect()
    y = np.array(values)
    fit = sm.OLS(y, np.ones_like(y)).fit(cov_type="cluster", cov_kwds={"groups": groups_of(units)})
    assert effect.between * y.var() / y.size == pytest.approx(float(fit.cov_params()[0, 0]), rel=1e-9)
    assert effect.value > 5


def test_feedback_from_few_users_with_their_own_means_does_not_pass_a_feedback_gate():
    """2,000 values with mean 10.4 pass `min 10` as independent values; from 20 users whose
    own means spread by 2, they do not show it."""
    from serve_ab.rollout.feedback import FeedbackJoin

    rng = np.random.default_rng(9)
    user_means = 10.4 + rng.normal(0, 2, 20)
    user_means += 10.4 - user_means.mean()
    gate = Gate.model_validate({"metric": "feedback_mean", "name": "revenue", "min": 10.0})
    verdicts = {}
    for keyed in (False, True):
        join = FeedbackJoin()
        for user, mean in enumerate(user_means):
            for k, value in enumerate((mean + rng.normal(0, 0.5, 100)).tolist()):
                join.add(f"{user}-{k}", "revenue", value, None, 1.0, version="v2",
                         unit=10_000 * user + user if keyed else None)
        feedback, _ = join.events(since_s=0.0)
        assert all((event.unit is not None) == keyed for event in feedback)
        windows = window_stats({}, versions=VERSIONS, feedback=feedback)
        (verdicts[keyed],) = evaluate_gates([gate], windows["v2"], windows["v1"], 1, alpha=0.05)
    assert verdicts[False].verdict is GateVerdict.PASS
    assert verdicts[True].verdict is GateVerdict.INCONCLUSIVE, verdicts[True].reason
    assert "design effect" in verdicts[True].reason


@pytest.mark.parametrize("look", [1, 5, 10])
def test_a_ratio_gate_on_two_users_holds_without_an_error(look):
    """Two groups estimate a spread on one degree of freedom: huge bounds, never a crash."""
    from serve_ab.rollout.gates import alpha_for_look

    rows = [row("v2", unit, failed=unit == 3 and k == 0) for unit in (3, 4) for k in range(100)]
    rows += [row("v1", None, failed=k % 100 == 0) for k in range(5000)]
    result = judge({"metric": "error_rate", "max_ratio_to_stable": 1.5}, rows, alpha=alpha_for_look(0.05, look))
    assert result.verdict is GateVerdict.INCONCLUSIVE and result.upper > 1e6


def test_a_drift_gate_on_two_users_a_side_tests_two_units_a_side():
    rows = [row(v, unit, predicted_class=unit % 3) for v, units in (("v2", (1, 2)), ("v1", (5, 6)))
            for unit in units for _ in range(30)]
    result = judge({"metric": "drift_js", "max": 0.01}, rows)  # classes 1, 2 against 2, 0
    assert result.verdict is GateVerdict.PASS and result.value > 0.3
    assert "v2's 30, v1's 30" in result.reason  # 60 predictions a side, from 2 users each


def test_users_whose_latencies_differ_within_a_factor_of_two_are_seen():
    rng = np.random.default_rng(10)
    rows = []
    for i in range(40):
        level_ms = rng.uniform(4.2, 7.8)
        rows += [row("v2", 10_000 * i + i, latency_ms=float(level_ms * rng.uniform(0.98, 1.02))) for _ in range(50)]
    windows = windows_of(rows + [row("v1", None)])
    p95 = windows["v2"].latencies_ms.quantile(0.95)
    assert quantile_design_effect(windows["v2"].groups.latency_bins, p95).value > 5


def test_heavy_tailed_group_totals_get_fewer_degrees_of_freedom():
    from serve_ab.analysis.clusters import _spread_df

    even = np.array([1.0, -1.0] * 20)
    one_heavy = np.array([10.0] + [-0.25] * 39)
    assert _spread_df(even) == pytest.approx(39)  # kurtosis 1: capped at k - 1
    assert _spread_df(one_heavy) < 3  # one group carries the spread: barely one degree


# ---- scores (drift_ks, drift_wasserstein) and shadow agreement ----------------------------------


def score_rows(rng, version: str, users: int, per_user: int, *, user_sd: float, shift: float = 0.0,
               keyed: bool = True, first_unit: int = 0) -> list[tuple]:
    """A classifier's top-class scores: the logistic of a normal, with a user effect."""
    rows = []
    for i in range(users):
        logit = 1.5 + shift + rng.normal(0, user_sd) + rng.normal(0, 0.5, per_user)
        unit = 10_000 * (first_unit + i) + first_unit + i if keyed else None
        rows += [(version, 5.0, None, 0, float(s), unit, True, False, 0, None) for s in 1 / (1 + np.exp(-logit))]
    return rows


def test_users_whose_scores_run_high_or_low_are_not_score_drift():
    """40 users a side, 50 requests each, the same distribution on both sides; each user's
    scores run high or low. Counted as 2,000 independent scores a side, the users' chance
    imbalance reads as a shift."""
    rng = np.random.default_rng(3)
    rows = score_rows(rng, "v2", 40, 50, user_sd=0.8) + score_rows(rng, "v1", 40, 50, user_sd=0.8, first_unit=40)
    keyless = [r[:5] + (None,) + r[6:] for r in rows]
    gate = {"metric": "drift_ks", "max": 0.0}
    as_requests, as_users = judge(gate, keyless), judge(gate, rows)
    assert as_requests.verdict is GateVerdict.FAIL and as_requests.p_value < 0.01
    assert as_users.verdict is GateVerdict.PASS and as_users.p_value > 0.05, as_users.reason
    assert as_users.value == as_requests.value and "design effects" in as_users.reason
    wasserstein = judge({"metric": "drift_wasserstein", "max": 0.0}, rows)
    assert wasserstein.verdict is GateVerdict.PASS and wasserstein.p_value == as_users.p_value


def test_a_real_score_shift_still_fails_with_clustered_users():
    rng = np.random.default_rng(4)
    rows = (score_rows(rng, "v2", 100, 20, user_sd=0.5, shift=0.6)
            + score_rows(rng, "v1", 100, 20, user_sd=0.5, first_unit=100))
    result = judge({"metric": "drift_ks", "max": 0.05}, rows)
    assert result.verdict is GateVerdict.FAIL and result.p_value < 0.01, result.reason


def test_the_score_design_effect_is_one_for_keyless_scores_and_about_the_users_for_clustered_ones():
    rng = np.random.default_rng(5)
    keyless = windows_of(score_rows(rng, "v2", 500, 4, user_sd=0.8, keyed=False))["v2"].groups
    assert score_design_effect(keyless.score_bins).value == 1.0
    # ICC of the logit 0.8^2 / (0.8^2 + 0.5^2) = 0.72, lower for "score <= t": deff well above 1,
    # at most the 20 requests a user sends.
    clustered = windows_of(score_rows(rng, "v2", 200, 20, user_sd=0.8))["v2"].groups
    effect = score_design_effect(clustered.score_bins)
    assert 5 < effect.value < 20 and effect.groups > 100 and effect.df > 20


def test_a_score_from_a_single_sparse_tail_bin_does_not_inflate_the_effect():
    """A tail bin seen by a few users has a spread on very few degrees of freedom; it must not
    set the whole effect's (once, the fewest of any proportion's: the bound a hundredfold)."""
    rng = np.random.default_rng(8)
    rows = score_rows(rng, "v2", 300, 3, user_sd=0.0)
    rows += [("v2", 5.0, None, 0, 1e-4, 10_000 * 7 + 7, True, False, 0, None)] * 3  # one user, far out
    effect = score_design_effect(windows_of(rows)["v2"].groups.score_bins)
    assert effect.upper(0.05) < 2.0, effect


def pairs_window(users: list[tuple[int, int, int]]):
    """(unit, pairs, agreements) per user, paired as a router pairs mirrored copies."""
    aggregate = IntervalAggregate()
    for unit, pairs, agreements in users:
        for k in range(pairs):
            aggregate.pair("v1", "v2", 0, 0 if k < agreements else 1, None, 5.0, None, unit=unit)
    agreements_ = {version: shadow.agreement_groups for version, shadow in aggregate.shadow.items()}
    return window_stats(aggregate.gates, versions=VERSIONS, agreements=agreements_)


def test_shadow_agreement_from_users_the_candidate_always_gets_wrong_does_not_pass():
    """90% agreement on 1,500 copies, but from 27 users always agreed with and 3 never: the
    copies are evidence about 30 users, not 1,500 independent requests."""
    gate = Gate.model_validate({"metric": "shadow_agreement", "min": 0.85})
    users = [(10_000 * i + i, 50, 50 if i < 27 else 0) for i in range(30)]
    keyless = pairs_window([(None, 50, a) for _, _, a in users])
    (as_requests,) = evaluate_gates([gate], keyless["v2"], keyless["v1"], 1, alpha=0.05)
    assert as_requests.verdict is GateVerdict.PASS  # 1,350 of 1,500: lower bound 0.885
    windows = pairs_window(users)
    assert (windows["v2"].shadow_pairs, windows["v2"].shadow_agreements) == (1500, 1350)
    (as_users,) = evaluate_gates([gate], windows["v2"], windows["v1"], 1, alpha=0.05)
    assert as_users.verdict is GateVerdict.INCONCLUSIVE and as_users.value == 0.9, as_users.reason
    assert "correlated" in as_users.reason and as_users.lower < 0.85


def test_the_controllers_windows_carry_each_routers_shadow_agreements():
    import pickle

    first, second = IntervalAggregate(), IntervalAggregate()
    first.pair("v1", "v2", 0, 0, None, 5.0, None, unit=7)
    first.pair("v1", "v2", 0, 1, None, 5.0, None, unit=None)
    second.pair("v1", "v2", 0, 0, None, 5.0, None, unit=7)
    windows = GateWindows(keep_s=60.0)
    for t_s, aggregate in ((1.0, first), (2.0, second)):
        sent = pickle.loads(pickle.dumps(aggregate))  # as a report travels
        windows.add(t_s, sent.gates, {v: s.agreement_groups for v, s in sent.shadow.items()})
    agreements = windows.window(0.0, step=False).agreements
    window = window_stats({}, versions=VERSIONS, agreements=agreements)["v2"]
    assert (window.shadow_pairs, window.shadow_agreements) == (3, 2)
    assert window.shadow_groups.counts[7] == 2 and window.shadow_groups.sums[7] == 2
    assert window.shadow_groups.counts[KEYLESS] == 1 and window.shadow_groups.sums[KEYLESS] == 0
    assert len(pickle.dumps(first.shadow["v2"].agreement_groups)) < 1_000  # dense, 3 KB


def test_the_reason_says_when_only_the_upper_bound_sees_a_design_effect():
    seen = DesignEffect(2.5, 100, 2.4, 0.1, 99.0)
    unseen = DesignEffect(1.0, 100, 0.9, 0.0, 99.0)  # the groups vary less than binomially
    assert "design effect 2.5 from 100 groups" in seen.describe(0.05)
    said = unseen.describe(0.05)
    assert "no design effect seen in 100 groups" in said and "design effect 1 " not in said
    assert f"up to {unseen.upper(0.05):.3g} at its upper bound" in said


def test_scores_closer_together_than_a_bin_take_the_mean_scores_design_effect():
    """A regression's values of 106 +- 6 fall within a score bin or two: no bin edge inside
    their middle 80% says how users differ, so the mean value's design effect stands in
    (once none: a KS gate with no drift failed 17-33% of such windows)."""
    rng = np.random.default_rng(12)
    rows = []
    for version, first in (("v2", 0), ("v1", 40)):
        for i in range(first, first + 40):
            values = 106 + 2 * (rng.normal(0, math.sqrt(0.3)) + rng.normal(0, math.sqrt(0.7), 50))
            rows += [(version, 5.0, None, 0, float(v), 10_000 * i + i, True, False, 0, None) for v in values]
    windows = windows_of(rows)
    groups = windows["v2"].groups
    effect = score_design_effect(groups.score_bins, groups.score_values)
    assert effect == groups.score_values.design_effect() and 8 < effect.value < 30  # about 1 + 49 * 0.3
    assert score_design_effect(groups.score_bins).value == 1.0  # what the bins alone say
    result = judge({"metric": "drift_ks", "max": 0.0}, rows)
    assert "design effects" in result.reason and result.p_value > 0.05, result.reason


def test_an_older_routers_report_without_groups_counts_its_requests_and_pairs_as_keyless():
    """During a rolling upgrade Serve replaces routers and the controller one by one: a report
    pickled by a router older than the per-group figures must merge, not crash the controller."""
    import pickle

    aggregate = IntervalAggregate()
    aggregate.served_rows([row("v2", 7), row("v2", None, failed=True)], {})
    aggregate.pair("v1", "v2", 0, 1, 0.2, 5.0, None, unit=7)
    del aggregate.gates["v2"].__dict__["groups"]  # as the older code's objects had none
    for name in ("agreement_groups", "score_diff_groups", "similarity_groups"):
        del aggregate.shadow["v2"].__dict__[name]
    old = pickle.loads(pickle.dumps(aggregate))
    groups = old.gates["v2"].groups
    assert (groups.requests[KEYLESS], groups.errors[KEYLESS], groups.requests.sum()) == (2, 1, 2)
    assert groups.ceiling(2) == math.inf  # whether they were keyed is not known: no ceiling
    assert old.shadow["v2"].agreement_groups.counts[KEYLESS] == 1 and old.shadow["v2"].agreement_groups.sums.sum() == 0
    assert old.shadow["v2"].score_diff_groups.sums[KEYLESS] == pytest.approx(0.2)
    windows = GateWindows(keep_s=60.0)
    windows.add(1.0, old.gates, {v: s.agreement_groups for v, s in old.shadow.items()})
    gates, agreements, _, _ = windows.window(0.0, step=False)
    window = window_stats(gates, versions=VERSIONS, agreements=agreements)["v2"]
    assert (window.request_count, window.error_count, window.shadow_pairs) == (2, 1, 1)
    new = IntervalAggregate()
    new.served_rows([row("v2", 7)], {})
    new.pair("v1", "v2", 0, 0, 0.0, 5.0, None, unit=7)
    new.merge(old)  # an upgraded router's interval with an unsent older one
    assert new.gates["v2"].groups.requests.sum() == 3 and new.shadow["v2"].agreement_groups.counts.sum() == 2


def test_the_mean_skewness_of_keyless_values_is_their_unbiased_skewness_over_root_n():
    """Cumulants of independent values add: the mean's skewness is G1 / sqrt(n), G1 being
    scipy's bias-corrected sample skewness; a constant added to every value changes nothing."""
    values = np.random.default_rng(21).lognormal(0, 1, 300)
    for offset in (0.0, 1_000.0):
        groups = ValueGroups()
        for value in (values + offset).tolist():
            groups.add(None, value)
        expected = stats.skew(values, bias=False) / math.sqrt(values.size)
        assert groups.mean_skewness() == pytest.approx(expected, rel=1e-6)


def test_the_mean_skewness_of_keyed_values_is_read_from_the_groups_totals():
    """One user per group and one value each: the group totals are the values, so the figure
    is the keyless one; many values per user, it follows the users' totals."""
    rng = np.random.default_rng(22)
    values = rng.lognormal(0, 1, NUM_GROUPS)
    keyed, keyless = ValueGroups(), ValueGroups()
    for group, value in enumerate(values.tolist()):
        keyed.add(group, value)
        keyless.add(None, value)
    assert keyed.mean_skewness() == pytest.approx(keyless.mean_skewness(), rel=1e-9)
    # Each user's 20 values share one lognormal effect: the totals are as skewed as the effects.
    users = ValueGroups()
    effects = rng.lognormal(0, 1, NUM_GROUPS)
    for group, effect in enumerate(effects.tolist()):
        for value in (effect * rng.uniform(0.9, 1.1, 20)).tolist():
            users.add(group, value)
    assert users.mean_skewness() == pytest.approx(
        stats.skew(effects, bias=False) / math.sqrt(NUM_GROUPS), rel=0.05)


def test_the_mean_skewness_is_zero_where_it_cannot_be_read():
    few, equal, far, unknown = ValueGroups(), ValueGroups(), ValueGroups(), ValueGroups()
    few.add(None, 1.0), few.add(None, 5.0)  # two units
    for _ in range(50):
        equal.add(None, 3.0)
    # Values 1e6 +- 1: their cubes' sum loses the third moment to rounding.
    for value in (1e6 + np.random.default_rng(23).normal(0, 1, 500)).tolist():
        far.add(None, value)
    for value in (1.0, 2.0, 40.0, 3.0):
        unknown.add(None, value)
    unknown = ValueGroups.from_wire({k: v for k, v in unknown.to_wire().items() if k != "cubes"})
    assert [g.mean_skewness() for g in (few, equal, far, unknown)] == [0.0, 0.0, 0.0, 0.0]
    # The rounding grows with the number of values: 10,000 values 1e5 +- 1 or 1e7 +- 1, no skew.
    for centre in (1e5, 1e7):
        many = ValueGroups()
        for value in (centre + np.random.default_rng(24).normal(0, 1, 10_000)).tolist():
            many.add(None, value)
        assert abs(many.mean_skewness()) < 0.01
    # Keyed groups' skewness survives keyless values whose third moment is lost to rounding.
    mixed = ValueGroups()
    for group, value in enumerate(np.random.default_rng(25).lognormal(0, 1, NUM_GROUPS).tolist()):
        mixed.add(group, value)
    keyed_only = mixed.mean_skewness()
    mixed.add(None, float(mixed.sums.sum() / mixed.counts.sum()))  # one keyless value at the mean
    assert mixed.mean_skewness() == pytest.approx(keyed_only, rel=0.05) and keyed_only > 0.2


def test_skewed_feedback_holds_a_max_gate_a_t_bound_would_pass():
    """85 revenues of 1 and five large ones: Student's t would pass `max 2.25` (mean 1.58,
    t upper bound 2.15); the mean's skewness (0.82, Cochran's rule asks at most 0.2) says its
    upper bound cannot be read yet, and the gate holds, saying why."""
    from serve_ab.rollout.feedback import FeedbackJoin

    values = [1.0] * 85 + [5.0, 6.0, 7.0, 9.0, 30.0]
    join = FeedbackJoin()
    for k, value in enumerate(values):
        join.add(f"r{k}", "revenue", value, None, 1.0, version="v2", unit=None)
    feedback, _ = join.events(since_s=0.0)
    windows = window_stats({}, versions=VERSIONS, feedback=feedback)
    gate = Gate.model_validate({"metric": "feedback_mean", "name": "revenue", "max": 2.25})
    t_upper = np.mean(values) + stats.t.ppf(0.95, len(values) - 1) * stats.sem(values)
    assert t_upper < 2.25
    (result,) = evaluate_gates([gate], windows["v2"], windows["v1"], 1, alpha=0.05)
    assert result.verdict is GateVerdict.INCONCLUSIVE and result.upper == math.inf, result.reason
    assert "too skewed for a bound on the mean's upper side" in result.reason
    # Its lower bound still stands: `min 1` passes on it.
    low = Gate.model_validate({"metric": "feedback_mean", "name": "revenue", "min": 1.0})
    (result,) = evaluate_gates([low], windows["v2"], windows["v1"], 1, alpha=0.05)
    assert result.verdict is GateVerdict.PASS, result.reason


# -- the ceiling: how many requests each user sent ------------------------------------------------


def test_the_ceiling_is_the_users_sum_of_squared_requests_over_n():
    """Users who sent 1, 2 and 5 requests and 3 keyless requests: at most (1 + 4 + 25 + 3) / 11,
    what users who always agree with themselves would give."""
    users = {NUM_BUCKETS * 1 + 3: 1, NUM_BUCKETS * 2 + 3: 2, NUM_BUCKETS * 3 + 9: 5}  # distinct cells
    rows = [row("v2", unit) for unit, n in users.items() for _ in range(n)] + [row("v2", None)] * 3
    groups = windows_of(rows)["v2"].groups
    assert {(unit // NUM_BUCKETS) % CELLS for unit in users} == set(groups.cells.as_dict())
    assert groups.ceiling(11) == pytest.approx(33 / 11)
    assert groups.ceiling(10) == pytest.approx(3.3)  # over the successful ones, say: all of them counted
    assert groups.ceiling(0) == math.inf
    keyless = windows_of([row("v2", None)] * 5)["v2"].groups
    assert keyless.ceiling(5) == 1.0 and not len(keyless.cells)


def test_two_users_in_one_cell_raise_the_ceiling_never_lower_it():
    same_cell = [NUM_BUCKETS * 7 + 1, NUM_BUCKETS * (7 + CELLS) + 2]  # other buckets, one cell
    groups = windows_of([row("v2", unit) for unit in same_cell for _ in range(3)])["v2"].groups
    assert groups.ceiling(6) == pytest.approx(36 / 6)  # (3 + 3)^2, above the users' 9 + 9


def test_the_ceiling_caps_a_design_effect_whose_estimate_is_uncertain():
    """Rare errors from a few of 400 users who sent 5 requests each: the spread's bound reads
    far above 5, but no correlation within a user can make it more than 5."""
    gate = {"metric": "error_rate", "max": 0.05}
    users = [NUM_BUCKETS * i + i % NUM_BUCKETS for i in range(1, 401)]
    rows = [row("v2", unit, failed=(i < 2 and k < 3)) for i, unit in enumerate(users) for k in range(5)]
    rows += [row("v1", None) for _ in range(100)]
    window = windows_of(rows)["v2"]
    effect = _rate_effect_of(window)
    assert effect.ceiling == pytest.approx(5.0)
    assert effect._estimated_upper(0.001) > 5.0 and effect.upper(0.001) == pytest.approx(5.0)
    result = judge(gate, rows, alpha=0.001)
    assert result.verdict is GateVerdict.PASS, result.reason
    assert "at most 5 for how many requests each user sent" in result.reason
    window.groups.cells = CellCounts()  # as if a router had not counted cells: no ceiling
    assert window.groups.ceiling(window.request_count) == math.inf


def _rate_effect_of(window):
    from serve_ab.rollout.gates import _rate_effect

    return _rate_effect(Gate.model_validate({"metric": "error_rate", "max": 0.05}), window)


def test_cells_travel_in_a_report_and_an_older_routers_groups_have_no_ceiling():
    import pickle

    aggregate = IntervalAggregate()
    aggregate.served_rows([row("v2", NUM_BUCKETS * 5 + 1)] * 3 + [row("v2", None)], {})
    sums = aggregate.gates["v2"].groups
    assert b"CellCounts" not in pickle.dumps(sums)  # plain arrays: an older controller reads the report
    restored = pickle.loads(pickle.dumps(sums))
    assert restored.cells == sums.cells and sums.cells.as_dict() == {5: 3} and restored.ceiling(4) == pytest.approx(10 / 4)
    state = sums.__getstate__()
    del state["cells"]  # pickled by a router of the previous release
    older = GroupSums.__new__(GroupSums)
    older.__setstate__(state)
    assert older.ceiling(4) == math.inf
    restored.merge(older)  # merged with an upgraded router's: its keyed requests are not in cells
    assert restored.ceiling(8) == math.inf


def test_an_older_routers_counters_of_classes_and_score_bins_read_as_the_same_counts():
    """Routers of the release before sent (group, class) and (group, score bin) Counters."""
    import collections
    import pickle

    aggregate = IntervalAggregate()
    scored = [("v2", 5.0, None, i % 3, 0.5 + 0.1 * (i % 5), NUM_BUCKETS * i + i % 7, True, False, 0, None)
              for i in range(40)]
    aggregate.served_rows(scored + [row("v2", None, predicted_class=9)], {})
    sums = aggregate.gates["v2"].groups
    state = sums.__getstate__()
    assert b"Counter" not in pickle.dumps(state)
    classes, score_bins = state.pop("class_pairs"), state.pop("score_pairs")
    state["classes"] = collections.Counter(sums.classes.as_dict())
    state["score_bins"] = collections.Counter(sums.score_bins.as_dict())
    older = GroupSums.__new__(GroupSums)
    older.__setstate__(state)
    assert older.classes == sums.classes and older.score_bins == sums.score_bins and sums.score_bins
    assert sums.classes.as_dict()[(KEYLESS, 9)] == 1 and sums.classes.total() == 41
    assert class_design_effect(older.classes, 10) == class_design_effect(sums.classes, 10)
    del state["score_bins"]  # older still: no score bins
    oldest = GroupSums.__new__(GroupSums)
    oldest.__setstate__(state)
    assert not oldest.score_bins and score_design_effect(oldest.score_bins).value == 1.0
    assert classes["keys"].dtype == np.uint16 and score_bins["counts"].dtype == np.uint8  # narrowed


def test_cell_counts_turn_dense_when_many_cells_are_touched_and_count_the_same():
    import pickle

    rng = np.random.default_rng(3)
    reports = [rng.integers(0, CELLS, size).tolist() for size in (5, 300, 9_000, 20_000, 60_000)]
    total = CellCounts()
    for cells in reports:
        sums = GroupSums()
        sums.cells.add(cells)  # past _PENDING_MAX, counted as they come
        sent = pickle.loads(pickle.dumps(sums))  # as a report travels: plain arrays
        total.merge(sent.cells)
    reference = np.bincount(np.concatenate(reports), minlength=CELLS)
    assert total._dense is not None  # past CELLS // 2 cells touched
    assert total.total() == reference.sum() and total.square_sum() == float(np.dot(reference, reference))
    assert len(total) == int(np.count_nonzero(reference)) and total.complete
    small = GroupSums()
    small.cells.add(reports[1])
    assert len(pickle.dumps(small.cells.to_state())) < 6 * len(small.cells) + 400  # sent sparse, 6 bytes a cell


# -- the same ceiling for feedback and shadow agreements: how many values each user gave ----------


def _outcomes_window(outcomes: list[tuple[int | None, bool]]):
    """Outcomes of 'correct' for v2 (and one keyless one for v1), as the controller files them."""
    windows = GateWindows()
    for unit, converted in outcomes:
        windows.add_feedback(1.0, "v2", "correct", None, converted, unit)
    windows.add_feedback(1.0, "v1", "correct", None, True, None)
    window = windows.window(0.0, step=True)
    return window_stats(window.gates, versions=VERSIONS, agreements=window.agreements,
                        values=window.values, outcomes=window.outcomes)


def test_feedback_values_have_the_ceiling_of_how_many_each_user_gave():
    """Users who gave 1, 2 and 5 values and 3 keyless values: at most (1 + 4 + 25 + 3) / 11."""
    users = {NUM_BUCKETS * 1 + 3: 1, NUM_BUCKETS * 2 + 4: 2, NUM_BUCKETS * 3 + 9: 5}  # three buckets
    groups = ValueGroups()
    for unit, n in users.items():
        for k in range(n):
            groups.add(unit, float(k))
    for _ in range(3):
        groups.add(None, 1.0)
    assert groups.ceiling() == pytest.approx(33 / 11)
    assert groups.ceiling(0.1) == pytest.approx(1 + 0.1 * (33 / 11 - 1))
    assert ValueGroups().ceiling() == math.inf  # nothing to bound
    import pickle

    assert pickle.loads(pickle.dumps(groups)).ceiling() == pytest.approx(33 / 11)  # a router's report
    state = groups.__getstate__()
    del state["cells"]  # pickled by a router of the previous release: no ceiling
    older = ValueGroups.__new__(ValueGroups)
    older.__setstate__(state)
    assert older.ceiling() == math.inf
    assert ValueGroups.from_wire(groups.to_wire()).ceiling() == math.inf  # a saved state keeps no cells
    unknown = ValueGroups()
    unknown.add_many(np.array([3, 3]), np.array([1.0, 0.0]))  # keyed, users not known
    assert unknown.ceiling() == math.inf


def test_feedback_knows_users_by_the_bucket_its_token_names_and_two_in_one_bucket_count_as_one():
    """A feedback token carries the user's bucket, not the key's whole hash: the values' cells
    are buckets. Users apart in buckets are apart in the ceiling, as with their full hashes;
    two users of one bucket count as one user who gave both their values (a higher ceiling)."""
    from serve_ab.serving.core.feedback_token import FeedbackSigner

    signer = FeedbackSigner(b"k" * 32, 60.0, lambda: 0.0, scope="digits")
    users = [NUM_BUCKETS * (7 * i + 1) + 13 * i for i in range(1, 301)]  # 300 distinct buckets
    by_token, by_hash = ValueGroups(), ValueGroups()
    for i, unit in enumerate(users):
        for k in range(1 + i % 3):  # 1, 2 or 3 outcomes each
            proven = signer.verify(signer.issue(f"r{i}-{k}", "v2", True, unit, 0), f"r{i}-{k}")
            by_token.add(proven.bucket, 1.0)
            by_hash.add(unit, 1.0)
    assert by_token.ceiling() == pytest.approx(by_hash.ceiling()) == pytest.approx(
        sum((1 + i % 3) ** 2 for i in range(300)) / sum(1 + i % 3 for i in range(300)))
    shared = ValueGroups()
    for unit in (NUM_BUCKETS * 1 + 5, NUM_BUCKETS * 2 + 5):  # other users, one bucket
        shared.add(unit, 1.0)
    assert shared.ceiling() == pytest.approx(2.0)


def test_a_feedback_rate_gate_is_capped_by_how_many_outcomes_each_user_gave():
    """Two of 400 users who gave 5 outcomes each were not converted on 3: the spread's bound
    reads far above 5 (a few groups hold every 0), but no correlation within a user makes it
    more than 5, and the gate decides; with max_user_icc 0.1, at most 1.4."""
    users = [NUM_BUCKETS * i + i % NUM_BUCKETS for i in range(1, 401)]
    stats_ = _outcomes_window([(unit, not (i < 2 and k < 3)) for i, unit in enumerate(users) for k in range(5)])
    effect = stats_["v2"].conversion_groups["correct"].design_effect()
    assert effect._estimated_upper(0.001) > 5.0
    gate = Gate.model_validate({"metric": "feedback_rate", "name": "correct", "min": 0.95})
    (result,) = evaluate_gates([gate], stats_["v2"], stats_["v1"], 1, alpha=0.001)
    assert result.verdict is GateVerdict.PASS, result.reason
    assert "at most 5 for how many values each user sent" in result.reason
    (result,) = evaluate_gates([gate], stats_["v2"], stats_["v1"], 1, alpha=0.001, max_user_icc=0.1)
    assert result.verdict is GateVerdict.PASS, result.reason
    assert "at most 1.4 for how many values each user sent and max_user_icc 0.1" in result.reason


def test_a_shadow_agreement_gate_is_capped_and_its_cells_travel_in_the_report():
    import pickle

    from serve_ab.analysis.accumulate import ShadowStats

    users = [NUM_BUCKETS * i + i % NUM_BUCKETS for i in range(1, 401)]
    shadow = ShadowStats()
    for i, unit in enumerate(users):
        for k in range(5):
            live = 1
            shadow.add("v1", live, live if not (i < 2 and k < 3) else 2, None, 3.0, None, unit=unit)
    sent = pickle.loads(pickle.dumps(shadow))  # a router's report
    assert sent.agreement_groups.ceiling() == pytest.approx(5.0)
    windows = GateWindows()
    windows.add(1.0, {}, {"v2": sent.agreement_groups})
    window = windows.window(0.0, step=True)
    stats_ = window_stats(window.gates, versions=VERSIONS, agreements=window.agreements,
                          values=window.values, outcomes=window.outcomes)
    gate = Gate.model_validate({"metric": "shadow_agreement", "min": 0.95})
    (result,) = evaluate_gates([gate], stats_["v2"], stats_["v1"], 1, alpha=0.001)
    assert result.verdict is GateVerdict.PASS, result.reason
    assert "at most 5 for how many values each user sent" in result.reason
