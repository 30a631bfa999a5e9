"""build_report: every figure checked against scipy/statsmodels on data fed through ExperimentStats."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower, TTestIndPower
from statsmodels.stats.proportion import (
    proportion_confint,
    proportion_effectsize,
    proportions_ztest,
)

from serve_ab.analysis import sequential, shadow
from serve_ab.analysis.ab import ConversionCounts
from serve_ab.analysis.report import build_report
from serve_ab.analysis.report_model import Report
from serve_ab.analysis.shadow_classes import class_flip_tests
from serve_ab.config.experiment import parse_experiment
from serve_ab.analysis.accumulate import ExperimentStats

# Relative to the reference (stricter than 1e-6 absolute for small p-values and CIs).
REL = 1e-6


def make_cfg(**overrides):
    args = {
        "model": "digits",
        "versions": [{"name": n, "path": f"{n}.onnx", "backend": "onnx"} for n in ("v1", "v2", "v3")],
        "weights": {"v1": 50, "v2": 50},
        "shadow": {"version": "v3", "percent": 10},
        "analysis": {"metrics": [{"name": "correct", "kind": "conversion"},
                                 {"name": "revenue", "kind": "mean"},
                                 {"name": "cost", "kind": "mean", "direction": "decrease"}]},
    }
    for key, value in overrides.items():
        if value is None:
            args.pop(key, None)
        elif isinstance(value, dict) and isinstance(args.get(key), dict):
            args[key] = {**args[key], **value}
        else:
            args[key] = value
    return parse_experiment(args)


class Sim:
    """Feeds ExperimentStats and keeps the raw values, for reference computations."""

    def __init__(self, cfg, seed=0, t0=1000.0):
        self.cfg = cfg
        self.rng = random.Random(seed)
        names = [v.name for v in cfg.versions]
        kinds = {m.name: m.kind for m in cfg.analysis.metrics}
        self.stats = ExperimentStats(names, t0, shadow_version=cfg.shadow.version if cfg.shadow else None,
                                     feedback_kinds=kinds)
        self.t = t0
        self.latency = {n: [] for n in names}
        self.errors = Counter()
        self.requests = Counter()
        self.feedback = {n: {} for n in names}
        self.pairs: list[tuple[int, int]] = []
        self.score_diffs: list[float] = []

    def run(self, n, *, split=None, error_rate=None, latency_scale=None, correct=None, revenue=None,
            cost=None, shadow_share=0.0, flip=0.1, class_bias=None, units=True):
        split = split or {"v1": 0.5, "v2": 0.5}
        error_rate = error_rate or {}
        latency_scale = latency_scale or {}
        rng = self.rng
        names, weights = list(split), list(split.values())
        for i in range(n):
            self.t += 0.05
            v = rng.choices(names, weights)[0]
            error = "model" if rng.random() < error_rate.get(v, 0.0) else None
            latency = rng.lognormvariate(0.0, 0.4) * latency_scale.get(v, 1.0)
            cls = rng.randrange(10)
            self.stats.record(self.t, v, latency, error, cls, rng.randrange(10**9) if units else None, True)
            self.requests[v] += 1
            if error:
                self.errors[v] += 1
                continue
            self.latency[v].append(latency)
            if correct is not None:
                ok = rng.random() < correct[v]
                self.stats.record_feedback(self.t, v, "correct", None, ok)
                self.feedback[v].setdefault("correct", []).append(ok)
            if revenue is not None:
                value = rng.gauss(revenue[v], 3.0)
                self.stats.record_feedback(self.t, v, "revenue", value, None)
                self.feedback[v].setdefault("revenue", []).append(value)
            if cost is not None:
                value = rng.expovariate(1.0 / cost[v])
                self.stats.record_feedback(self.t, v, "cost", value, None)
                self.feedback[v].setdefault("cost", []).append(value)
            if rng.random() < shadow_share:
                other = cls
                if rng.random() < flip:
                    other = rng.randrange(10)
                if class_bias is not None and rng.random() < class_bias[1]:
                    other = class_bias[0]
                diff = rng.gauss(0.01, 0.05)
                self.stats.record_pair(self.t, v, cls, other, diff, rng.lognormvariate(0, 0.3), None)
                self.pairs.append((cls, other))
                self.score_diffs.append(diff)
        return self

    def report(self, weights=None, state=None, cfg=None):
        cfg = cfg or self.cfg
        return build_report(cfg, self.stats.snapshot(self.t), weights or cfg.weights_pct(), state)


def _metric(report, name):
    return next(m for m in report.metrics if m.name == name)


def _cmp(report, name, variant="v2"):
    return next(c for c in _metric(report, name).comparisons if c.variant == variant)


@pytest.fixture(scope="module")
def busy():
    cfg = make_cfg()
    sim = Sim(cfg, seed=7).run(
        6000, error_rate={"v1": 0.01, "v2": 0.02}, latency_scale={"v2": 1.08},
        correct={"v1": 0.90, "v2": 0.92}, revenue={"v1": 10.0, "v2": 10.3}, cost={"v1": 2.0, "v2": 1.9},
        shadow_share=0.2, flip=0.08, class_bias=(4, 0.03),
    )
    report, state = sim.report()
    return sim, report, state


# ---- the JSON contract -----------------------------------------------------------------------


def test_report_is_plain_json_without_nan(busy):
    _, report, state = busy
    data = report.model_dump(mode="json")
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert Report.model_validate(data) == report  # the JSON parses back into the same report
    json.dumps(state, allow_nan=False)
    assert set(data) == {"schema", "run_id", "generated_at_s", "started_at_s", "elapsed_s", "experiment", "variants",
                         "metrics", "srm", "shadow", "plots", "warnings"}
    exp = report.experiment
    assert (exp.model, exp.control, exp.variants, exp.versions) == ("digits", "v1", ["v2"],
                                                                                 ["v1", "v2", "v3"])
    assert exp.weights_pct == {"v1": 50.0, "v2": 50.0, "v3": 0.0}
    assert [m.name for m in report.metrics] == ["error_rate", "latency_ms", "correct", "revenue", "cost"]


def test_variant_figures_come_from_the_counts_and_the_sample(busy):
    sim, report, _ = busy
    for name in ("v1", "v2"):
        v = report.variants[name]
        assert v.requests == sim.requests[name] and v.errors == sim.errors[name]
        assert v.error_rate == pytest.approx(sim.errors[name] / sim.requests[name], abs=1e-12)
        sample = np.asarray(sim.latency[name])
        lat = v.latency_ms
        assert lat.n_sample == sample.size == lat.count
        for key, q in (("p50", 50), ("p95", 95), ("p99", 99)):
            assert getattr(lat, key) == pytest.approx(np.percentile(sample, q), rel=REL, abs=1e-12)
        assert lat.mean == pytest.approx(sample.mean(), rel=REL, abs=1e-12)
        assert lat.mean_all == pytest.approx(sample.mean(), rel=REL, abs=1e-12)
        assert sum(v.predictions.values()) == sample.size
        assert sum(v.prediction_share.values()) == pytest.approx(1.0)
    assert report.variants["v1"].role == "control"
    assert report.variants["v3"].role == "shadow"


# ---- every test against its reference --------------------------------------------------------


def test_error_rate_is_statsmodels_two_proportion_z_test_with_wald_and_delta_method_cis(busy):
    sim, report, _ = busy
    c = _cmp(report, "error_rate")
    e = [sim.errors["v2"], sim.errors["v1"]]
    n = [sim.requests["v2"], sim.requests["v1"]]
    _, p_ref = proportions_ztest(e, n)
    assert c.p_value == pytest.approx(p_ref, rel=REL, abs=1e-12)
    pv, pc = e[0] / n[0], e[1] / n[1]
    z = stats.norm.ppf(0.975)
    var_v, var_c = pv * (1 - pv) / n[0], pc * (1 - pc) / n[1]
    half = z * math.sqrt(var_v + var_c)
    assert c.abs_lift == pytest.approx(pv - pc, rel=REL, abs=1e-12)
    assert c.abs_ci == pytest.approx([pv - pc - half, pv - pc + half], rel=REL, abs=1e-12)
    rel_se = math.sqrt(var_v / pc**2 + pv**2 * var_c / pc**4)
    assert c.rel_lift == pytest.approx(pv / pc - 1, rel=REL, abs=1e-12)
    assert c.rel_ci == pytest.approx([pv / pc - 1 - z * rel_se, pv / pc - 1 + z * rel_se], rel=REL, abs=1e-12)
    # Lower is better for errors: a significantly higher rate is WORSE.
    assert c.fixed_verdict == "worse" and _metric(report, "error_rate").direction == "decrease"
    arm = _metric(report, "error_rate").arms["v2"]
    lo, hi = proportion_confint(e[0], n[0], alpha=0.05, method="wilson")
    assert arm.ci == pytest.approx([lo, hi], rel=REL, abs=1e-12)


def test_two_arm_conversion_p_value_equals_chi_square_without_correction(busy):
    sim, report, _ = busy
    c = _cmp(report, "correct")
    ok_v, ok_c = sum(sim.feedback["v2"]["correct"]), sum(sim.feedback["v1"]["correct"])
    n_v, n_c = len(sim.feedback["v2"]["correct"]), len(sim.feedback["v1"]["correct"])
    _, p_z = proportions_ztest([ok_v, ok_c], [n_v, n_c])
    _, p_chi, _, _ = stats.chi2_contingency([[ok_v, n_v - ok_v], [ok_c, n_c - ok_c]], correction=False)
    assert c.p_value == pytest.approx(p_z, rel=REL, abs=1e-12) == pytest.approx(p_chi, rel=REL, abs=1e-12)
    assert (c.n_variant, c.n_control) == (n_v, n_c)
    assert c.value_variant == pytest.approx(ok_v / n_v, abs=1e-12)


def test_mean_metric_is_scipy_welch_from_n_sum_sum_sq(busy):
    sim, report, _ = busy
    for name in ("revenue", "cost"):
        c = _cmp(report, name)
        xv, xc = np.asarray(sim.feedback["v2"][name]), np.asarray(sim.feedback["v1"][name])
        ref = stats.ttest_ind_from_stats(xv.mean(), xv.std(ddof=1), xv.size, xc.mean(), xc.std(ddof=1), xc.size,
                                         equal_var=False)
        assert c.p_value == pytest.approx(ref.pvalue, rel=REL, abs=1e-12)
        assert ref.pvalue == pytest.approx(stats.ttest_ind(xv, xc, equal_var=False).pvalue, rel=REL, abs=1e-12)
        assert c.abs_lift == pytest.approx(xv.mean() - xc.mean(), rel=REL, abs=1e-12)
        se = math.sqrt(xv.var(ddof=1) / xv.size + xc.var(ddof=1) / xc.size)
        df = se**4 / ((xv.var(ddof=1) / xv.size) ** 2 / (xv.size - 1) + (xc.var(ddof=1) / xc.size) ** 2 / (xc.size - 1))
        half = stats.t.ppf(0.975, df) * se
        assert c.abs_ci == pytest.approx([c.abs_lift - half, c.abs_lift + half], rel=REL, abs=1e-12)
        arm = _metric(report, name).arms["v2"]
        assert arm.std == pytest.approx(xv.std(ddof=1), rel=REL, abs=1e-12)
        t_half = stats.t.ppf(0.975, xv.size - 1) * xv.std(ddof=1) / math.sqrt(xv.size)
        assert arm.ci == pytest.approx([xv.mean() - t_half, xv.mean() + t_half], rel=REL, abs=1e-12)
    # cost: lower is better and v2 costs less, so the verdict is BETTER once the corrected p allows it
    cost = _cmp(report, "cost")
    assert cost.abs_lift < 0
    assert cost.fixed_verdict == ("better" if cost.p_adjusted < 0.05 else "no_difference")


def test_latency_is_scipy_mann_whitney_on_the_samples(busy):
    sim, report, _ = busy
    c = _cmp(report, "latency_ms")
    ref = stats.mannwhitneyu(sim.latency["v2"], sim.latency["v1"], alternative="two-sided")
    assert c.p_value == pytest.approx(ref.pvalue, rel=REL, abs=1e-12)
    assert c.value_variant == pytest.approx(np.median(sim.latency["v2"]), rel=REL, abs=1e-12)
    assert c.fixed_verdict == "worse"  # v2 is 8% slower: lower is better
    assert c.sequential is None and c.verdict_basis == "fixed_horizon"


@pytest.mark.parametrize("correction, method", [("holm", "holm"), ("bh", "fdr_bh"), ("none", None)])
def test_p_values_are_corrected_across_every_metric_and_variant(correction, method):
    cfg = make_cfg(weights={"v1": 40, "v2": 30, "v3": 30}, shadow=None,
                   analysis={"correction": correction, "metrics": [{"name": "correct", "kind": "conversion"}]})
    sim = Sim(cfg, seed=3).run(3000, split={"v1": 0.4, "v2": 0.3, "v3": 0.3},
                               error_rate={"v1": 0.02, "v2": 0.03, "v3": 0.02},
                               correct={"v1": 0.9, "v2": 0.93, "v3": 0.9})
    report, _ = sim.report()
    comparisons = [c for m in report.metrics for c in m.comparisons]
    assert len(comparisons) == 3 * 2  # error_rate, latency, correct x v2, v3
    raw = [c.p_value for c in comparisons]
    expected = raw if method is None else multipletests(raw, method=method)[1]
    assert [c.p_adjusted for c in comparisons] == pytest.approx(list(expected), rel=REL, abs=1e-12)


def test_power_and_samples_needed_match_statsmodels(busy):
    sim, report, _ = busy
    cfg = sim.cfg
    mde, alpha, target = cfg.analysis.mde_relative, cfg.analysis.alpha, cfg.analysis.power
    c = _cmp(report, "correct")
    base = c.value_control
    effect = abs(proportion_effectsize(base * (1 + mde), base))
    n = min(c.n_variant, c.n_control)
    assert c.power.achieved == pytest.approx(
        NormalIndPower().power(effect_size=effect, nobs1=n, alpha=alpha, ratio=1.0), rel=REL, abs=1e-12)
    required = math.ceil(NormalIndPower().solve_power(effect_size=effect, alpha=alpha, power=target, ratio=1.0))
    assert c.power.required_per_arm == required
    assert c.power.samples_needed == {"v2": max(0, required - c.n_variant),
                                            "v1": max(0, required - c.n_control)}
    # means: Cohen's d from the control's standard deviation, t-test power
    r = _cmp(report, "revenue")
    xc = np.asarray(sim.feedback["v1"]["revenue"])
    d = mde * abs(xc.mean()) / xc.std(ddof=1)
    n = min(r.n_variant, r.n_control)
    assert r.power.achieved == pytest.approx(TTestIndPower().power(effect_size=d, nobs1=n, alpha=alpha), rel=REL, abs=1e-12)
    assert r.power.required_per_arm == math.ceil(TTestIndPower().solve_power(effect_size=d, alpha=alpha,
                                                                                    power=target))


def test_power_for_a_zero_error_rate_says_why_there_is_none():
    cfg = make_cfg(shadow=None)
    report, _ = Sim(cfg, seed=1).run(400).report()  # no errors at all
    c = _cmp(report, "error_rate")
    assert c.power is None and "rate is 0" in c.power_note


def test_power_near_a_rate_of_one_plans_for_the_same_change_downwards():
    cfg = make_cfg(shadow=None)
    report, _ = Sim(cfg, seed=3).run(2000, correct={"v1": 0.97, "v2": 0.97}).report()
    c = _cmp(report, "correct")
    base = c.value_control
    assert base * (1 + cfg.analysis.mde_relative) > 1  # +5% of ~97% is impossible
    effect = abs(proportion_effectsize(base * (1 - cfg.analysis.mde_relative), base))
    required = math.ceil(NormalIndPower().solve_power(effect_size=effect, alpha=cfg.analysis.alpha,
                                                      power=cfg.analysis.power, ratio=1.0))
    assert c.power.required_per_arm == required


# ---- sequential ------------------------------------------------------------------------------


def test_sequential_figures_are_the_msprt_of_the_same_counts_carried_through_json(busy):
    cfg = make_cfg(shadow=None)
    sim = Sim(cfg, seed=11).run(1500, correct={"v1": 0.90, "v2": 0.93})
    report1, state1 = sim.report()
    first_counts = {v: ConversionCounts(sum(sim.feedback[v]["correct"]), len(sim.feedback[v]["correct"]))
                    for v in ("v1", "v2")}
    state1 = json.loads(json.dumps(state1))  # the controller may keep it as JSON
    sim.run(1500, correct={"v1": 0.90, "v2": 0.93})
    report2, state2 = sim.report(state=state1)

    first = sequential.sequential_proportions(first_counts["v2"], first_counts["v1"])
    now = {v: ConversionCounts(sum(sim.feedback[v]["correct"]), len(sim.feedback[v]["correct"]))
           for v in ("v1", "v2")}
    ref = sequential.sequential_proportions(now["v2"], now["v1"], previous=first)
    assert _cmp(report1, "correct").sequential.p_value == pytest.approx(first.p_value, rel=REL, abs=1e-12)
    seq = _cmp(report2, "correct").sequential
    assert seq.looks == 2 and state2["correct"]["v2"]["looks"] == 2
    assert seq.p_value == pytest.approx(ref.p_value, rel=REL, abs=1e-12)
    assert seq.ci == pytest.approx(list(ref.ci), rel=REL, abs=1e-12)
    assert seq.p_value <= _cmp(report1, "correct").sequential.p_value  # never goes up
    assert _cmp(report2, "correct").verdict_basis == "sequential"


def test_sequential_state_restarts_when_counts_go_down(busy):
    sim, _, state = busy
    fresh = Sim(sim.cfg, seed=2).run(200, correct={"v1": 0.9, "v2": 0.9}, revenue={"v1": 10, "v2": 10},
                                     cost={"v1": 2, "v2": 2})
    report2, state2 = fresh.report(state=state)
    assert any("sequential tests restarted" in w for w in report2.warnings)
    assert state2["correct"]["v2"]["looks"] == 1


def test_sequential_off_returns_empty_state_and_fixed_verdicts():
    cfg = make_cfg(shadow=None, analysis={"sequential": False})
    report, state = Sim(cfg, seed=5).run(500, correct={"v1": 0.9, "v2": 0.9}).report()
    assert state == {}
    assert all(c.sequential is None and c.verdict_basis == "fixed_horizon"
               for m in report.metrics for c in m.comparisons)


# ---- sample ratio ----------------------------------------------------------------------------


def test_srm_flags_a_skewed_split_and_not_a_fair_one():
    cfg = make_cfg(shadow=None)
    fair, _ = Sim(cfg, seed=4).run(4000).report()
    skewed_sim = Sim(cfg, seed=4).run(4000, split={"v1": 0.55, "v2": 0.45})
    skewed, _ = skewed_sim.report()
    assert fair.srm.mismatch is False and fair.srm.p_value > 0.001
    srm = skewed.srm
    assert srm.mismatch is True and srm.basis == "units"
    ref = stats.chisquare([srm.observed["v1"], srm.observed["v2"]])
    assert srm.p_value == pytest.approx(ref.pvalue, abs=1e-12)
    assert skewed.warnings[0].startswith("sample ratio mismatch")


def test_srm_falls_back_to_assigned_requests_without_units():
    cfg = make_cfg(shadow=None)
    report, _ = Sim(cfg, seed=4).run(1000, units=False).report()
    srm = report.srm
    assert srm.basis == "assigned"
    assert srm.observed == {"v1": report.variants["v1"].assigned,
                               "v2": report.variants["v2"].assigned, "v3": 0}


def test_srm_is_not_checked_when_weights_moved():
    cfg = make_cfg(shadow=None)
    sim = Sim(cfg, seed=4).run(1000, split={"v1": 0.8, "v2": 0.2})
    report, _ = sim.report(weights={"v1": 80, "v2": 20})
    assert report.srm.applicable is False and report.srm.mismatch is False
    assert "differ from the configured" in report.srm.reason


# ---- shadow ----------------------------------------------------------------------------------


def test_shadow_agreement_flips_and_class_tests_match_statsmodels(busy):
    sim, report, _ = busy
    sh = report.shadow
    live = np.array([a for a, _ in sim.pairs])
    cand = np.array([b for _, b in sim.pairs])
    agree = int((live == cand).sum())
    assert (sh.pairs, sh.agreement.agree) == (len(sim.pairs), agree)
    lo, hi = proportion_confint(agree, live.size, alpha=0.05, method="wilson")
    assert sh.agreement.ci == pytest.approx([lo, hi], rel=REL, abs=1e-12)
    flips = Counter((int(a), int(b)) for a, b in sim.pairs if a != b)
    top = flips.most_common()
    assert [f.n for f in sh.flips.top] == [n for _, n in top[: len(sh.flips.top)]]
    assert sh.flips.total == sum(flips.values())
    for t in sh.class_tests:
        k = t.class_
        a = int(((live == k) & (cand == k)).sum())
        b = int(((live == k) & (cand != k)).sum())
        c = int(((live != k) & (cand == k)).sum())
        d = live.size - a - b - c
        ref = mcnemar([[a, b], [c, d]], exact=(b + c) < 25, correction=True)
        assert (t.to_other, t.from_other) == (b, c)
        assert t.p_value == pytest.approx(ref.pvalue, rel=REL, abs=1e-12)
        assert t.method == ("exact_binomial" if b + c < 25 else "mcnemar_chi2")
    assert [t.p_adjusted for t in sh.class_tests] == pytest.approx(
        list(multipletests([t.p_value for t in sh.class_tests], method="holm")[1]), rel=REL, abs=1e-12)
    # the shadow leans towards class 4: its test is the one that stands out
    by_class = {t.class_: t for t in sh.class_tests}
    assert by_class[4].from_other > by_class[4].to_other and by_class[4].significant


def test_class_flip_tests_agree_with_compare_correctness_on_expanded_pairs():
    rng = np.random.default_rng(0)
    live = rng.integers(0, 4, 300)
    cand = np.where(rng.random(300) < 0.15, rng.integers(0, 4, 300), live)
    cells = Counter(zip(live.tolist(), cand.tolist()))
    tests = class_flip_tests([(a, b, n) for (a, b), n in cells.items()])
    for t in tests:
        ref = shadow.compare_correctness(live == t.cls, cand == t.cls)
        assert t.p_value == pytest.approx(ref.p_value, rel=REL, abs=1e-12) and t.method == ref.method


def test_class_flip_tests_reject_bad_cells():
    with pytest.raises(ValueError, match=r"confusion cell 0 .* count -1"):
        class_flip_tests([(1, 2, -1)])
    with pytest.raises(ValueError, match="expected \\(live_class, shadow_class, count\\)"):
        class_flip_tests([(1, 2)])


def test_shadow_score_difference_is_scipy_one_sample_t_and_drift_is_on_the_marginals(busy):
    sim, report, _ = busy
    sh = report.shadow
    d = np.asarray(sim.score_diffs)
    ref = stats.ttest_1samp(d, 0.0)
    assert sh.score_diff.mean == pytest.approx(d.mean(), rel=REL, abs=1e-12)
    assert sh.score_diff.p_value == pytest.approx(ref.pvalue, rel=REL, abs=1e-12)
    ci = ref.confidence_interval(0.95)
    assert sh.score_diff.ci == pytest.approx([ci.low, ci.high], rel=REL, abs=1e-12)
    ref2 = shadow.score_differences(np.zeros_like(d), d)
    assert sh.score_diff.std == pytest.approx(ref2.std_diff, rel=REL, abs=1e-12)

    live = np.bincount([a for a, _ in sim.pairs], minlength=10).astype(float)
    cand = np.bincount([b for _, b in sim.pairs], minlength=10).astype(float)
    assert sh.drift.live_counts == live.tolist() and sh.drift.shadow_counts == cand.tolist()
    p, q = (cand + 1) / (cand + 1).sum(), (live + 1) / (live + 1).sum()
    assert sh.drift.kl == pytest.approx(stats.entropy(p, q), rel=REL, abs=1e-12)
    assert sh.drift.psi == pytest.approx(float(np.sum((p - q) * np.log(p / q))), rel=REL, abs=1e-12)
    assert sh.drift.js == pytest.approx(jensenshannon(cand, live, base=2) ** 2, rel=REL, abs=1e-12)


# ---- small, empty and odd data ---------------------------------------------------------------


def test_no_traffic_gives_not_enough_data_and_no_nan():
    cfg = make_cfg()
    stats_ = ExperimentStats(["v1", "v2", "v3"], 0.0, shadow_version="v3")
    report, state = build_report(cfg, stats_.snapshot(0.0), cfg.weights_pct())
    json.dumps(report.model_dump(mode="json"), allow_nan=False)
    json.dumps(state, allow_nan=False)
    for m in report.metrics:
        for c in m.comparisons:
            assert c.verdict == "not_enough_data" and c.p_value is None
    assert report.srm.p_value is None and report.srm.mismatch is False
    assert report.shadow.agreement.rate is None and report.shadow.drift is None
    assert report.plots.latency_histogram is None


def test_headline_metrics_are_flat_and_finite_and_the_run_summary_counts_requests(busy):
    _, report, _ = busy
    metrics = report.headline_metrics()
    v1 = report.variants["v1"]
    assert metrics["v1.requests"] == v1.requests and metrics["v1.latency_p95_ms"] == v1.latency_ms.p95
    c = _cmp(report, "correct")
    assert metrics["correct.v2.p_value"] == c.p_value and metrics["correct.v2.p_sequential"] == c.sequential.p_value
    assert metrics["srm.p_value"] == report.srm.p_value and metrics["shadow.pairs"] == report.shadow.pairs
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert report.run_summary() == {"versions": ["v1", "v2", "v3"], "control": "v1",
                                    "requests": sum(v.requests for v in report.variants.values()),
                                    "srm_mismatch": report.srm.mismatch}


def test_headline_metrics_leave_out_what_is_missing():
    cfg = make_cfg()
    report, _ = build_report(cfg, ExperimentStats(["v1", "v2", "v3"], 0.0, shadow_version="v3").snapshot(0.0),
                             cfg.weights_pct())
    metrics = report.headline_metrics()
    assert metrics["v1.requests"] == 0.0
    assert "v1.error_rate" not in metrics and "error_rate.v2.p_value" not in metrics  # None, never NaN
    assert "shadow.agreement" not in metrics and metrics["shadow.pairs"] == 0.0


def test_a_handful_of_requests_is_not_enough_data():
    cfg = make_cfg(shadow=None)
    report, _ = Sim(cfg, seed=9).run(20, error_rate={"v2": 0.5}, correct={"v1": 0.5, "v2": 0.9}).report()
    json.dumps(report.model_dump(mode="json"), allow_nan=False)
    assert {c.verdict for m in report.metrics for c in m.comparisons} == {"not_enough_data"}


def test_unconfigured_feedback_takes_its_kind_from_the_snapshot_and_direction_increase():
    cfg = make_cfg(shadow=None, analysis={"metrics": []})
    sim = Sim(cfg, seed=8).run(600, correct={"v1": 0.5, "v2": 0.6})
    report, _ = sim.report()
    m = _metric(report, "correct")
    assert (m.kind, m.direction, m.test) == ("conversion", "increase", "z_two_proportions")


def test_decrease_direction_turns_a_significant_rise_into_worse():
    up = make_cfg(shadow=None, analysis={"metrics": [{"name": "correct", "kind": "conversion"}]})
    down = make_cfg(shadow=None, analysis={"metrics": [{"name": "correct", "kind": "conversion",
                                                        "direction": "decrease"}]})
    sim = Sim(up, seed=8).run(3000, correct={"v1": 0.5, "v2": 0.6})
    assert _cmp(sim.report()[0], "correct").verdict == "better"
    assert _cmp(sim.report(cfg=down)[0], "correct").verdict == "worse"


def test_plot_data_histograms_and_cumulative_timeline(busy):
    sim, report, _ = busy
    hist = report.plots.latency_histogram
    assert len(hist.edges_ms) == len(hist.counts["v1"]) + 1
    assert sum(hist.counts["v1"]) == len(sim.latency["v1"])
    assert sum(hist.counts["v3 (shadow)"]) == report.shadow.latency_ms.n_sample
    timeline = report.plots.timeline
    assert timeline.requests_cumulative["v2"][-1] == sim.requests["v2"]
    assert timeline.t_s == sorted(timeline.t_s)
    series = timeline.feedback_cumulative["v1"]
    assert all(a <= b for a, b in itertools.pairwise(series))


def test_bad_inputs_name_the_value_and_what_is_valid():
    cfg = make_cfg(shadow=None)
    snap = ExperimentStats(["v1", "v2", "v3"], 0.0).snapshot(1.0)
    with pytest.raises(ValueError, match=r"weights_pct names \['v9'\]"):
        build_report(cfg, snap, {"v1": 50, "v9": 50})
    with pytest.raises(ValueError, match="control version 'v1' is not in the snapshot"):
        build_report(cfg, ExperimentStats(["v2", "v3"], 0.0).snapshot(1.0), {"v2": 100})
    with pytest.raises(ValueError, match="non-empty 'versions'"):
        build_report(cfg, {"now_s": 1.0}, {"v1": 100})
    with pytest.raises(ValueError, match="all 0"):
        build_report(cfg, snap, {"v1": 0, "v2": 0})
    with pytest.raises(ValueError, match="weights_pct\\['v2'\\] is -5.0"):
        build_report(cfg, snap, {"v1": 100, "v2": -5})
    with pytest.raises(ValueError, match="sequential_state must be None or the mapping .* got list"):
        build_report(cfg, snap, {"v1": 100}, [1])
