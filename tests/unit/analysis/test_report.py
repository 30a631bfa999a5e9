"""build_report: every figure checked against an independent reference, on data fed through
ExperimentStats (record / record_feedback / snapshot), as the controller feeds it.

The reference for a ratio metric is statsmodels' OLS of the request-level (or report-level)
outcome on an intercept with cluster-robust errors by randomisation unit (bucket; a keyless
request is its own cluster): its estimate is the ratio and its variance, with statsmodels'
G/(G-1) small-sample factor, is exactly the delta-method variance per unit.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats
from scipy.spatial.distance import jensenshannon
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_confint

from serve_ab.analysis import power, shadow
from serve_ab.analysis.aggregate import IntervalAggregate
from serve_ab.analysis.accumulate import ExperimentStats, split_key
from serve_ab.analysis.report import build_report
from serve_ab.analysis.report_model import Report
from serve_ab.analysis.sequential import srm_log_bayes_factor
from serve_ab.analysis.shadow_classes import class_flip_tests
from serve_ab.cli.render_table import _shadow_lines, render_table
from serve_ab.config.experiment import parse_experiment
from serve_ab.routing import NUM_BUCKETS, Assigner, SplitTable

# Relative to the reference (stricter than 1e-6 absolute for small p-values and CIs).
REL = 1e-6
SKETCH_REL = 0.01  # percentiles come from a log-bucket sketch (analysis/sketch.py)
SALT = "sim"
FEEDBACK = ("correct", "revenue", "cost")


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


@dataclass
class Row:
    """One request as the reference sees it."""

    split: int  # index of the split it was assigned under
    version: str
    unit: int | None  # the key's hash; None when keyless
    group: int  # its randomisation unit: the bucket, or a unique negative id when keyless
    assigned: bool
    error: bool
    latency_ms: float | None  # successful requests only
    feedback: dict[str, float] = field(default_factory=dict)


class Sim:
    """Feeds ExperimentStats as the controller does, and keeps every row for the references.

    Users are drawn from a pool of ``users`` keys and assigned by the real ``Assigner`` (the
    same salt and hash as the routers); ``users=None`` sends keyless requests.
    """

    def __init__(self, cfg, seed=0, t0=1000.0, users: int | None = 3000):
        self.cfg = cfg
        self.rng = random.Random(seed)
        self.names = [v.name for v in cfg.versions]
        kinds = {m.name: m.kind for m in cfg.analysis.metrics}
        self.stats = ExperimentStats(self.names, t0, shadow_version=cfg.shadow.version if cfg.shadow else None,
                                     feedback_kinds=kinds)
        self.users = users
        self.t = t0
        self.split = -1
        self.rows: list[Row] = []
        self.requests: Counter = Counter()
        self.errors: Counter = Counter()
        self.latency: dict[str, list[float]] = {n: [] for n in self.names}
        self.pairs: list[tuple[int, int]] = []
        self.score_diffs: list[float] = []
        self.set_split(cfg.weights_pct())

    def set_split(self, weights):
        """The weights the routers route by from now on (a rollout step)."""
        self.weights = {n: float(weights.get(n, 0.0)) for n in self.names}
        self.stats.set_weights(self.weights)
        self.assigner = Assigner(self.weights, SALT, random.Random(self.rng.random()))
        self.split += 1
        return self

    def run(self, n, *, route=None, error_rate=None, latency_scale=None, correct=None, revenue=None, cost=None,
            shadow_share=0.0, flip=0.1, class_bias=None, pinned_share=0.0, extra_requests=None):
        """``n`` visits. ``route``: weights the routers really use, when they differ from the split
        recorded (a broken split); ``pinned_share``: visits pinned to a version (not assigned);
        ``extra_requests``: more requests per visit by version (heavier users)."""
        rng = self.rng
        router = Assigner(route, SALT, random.Random(rng.random())) if route else self.assigner
        error_rate, latency_scale, extra_requests = error_rate or {}, latency_scale or {}, extra_requests or {}
        for _ in range(n):
            self.t += 0.05
            key = None if self.users is None else f"u{rng.randrange(self.users)}"
            v, unit = router.assign_unit(key)
            assigned = not (pinned_share and rng.random() < pinned_share)
            if not assigned:
                v = rng.choice([name for name, w in self.weights.items() if w > 0])
            for _ in range(1 + extra_requests.get(v, 0)):
                self._request(v, unit, assigned, error_rate, latency_scale, correct, revenue, cost,
                              shadow_share, flip, class_bias)
        return self

    def _request(self, v, unit, assigned, error_rate, latency_scale, correct, revenue, cost, shadow_share, flip,
                 class_bias):
        rng = self.rng
        error = "model" if rng.random() < error_rate.get(v, 0.0) else None
        latency = rng.lognormvariate(0.0, 0.4) * latency_scale.get(v, 1.0)
        cls = rng.randrange(10)
        self.stats.record(self.t, v, latency, error, cls, unit, assigned)
        bucket = None if unit is None else unit % NUM_BUCKETS
        own = bucket is not None and self.assigner.table.version_for_bucket(bucket) == v
        row = Row(self.split, v, unit, bucket if own else -(len(self.rows) + 1), assigned, error is not None,
                  None if error else latency)
        self.rows.append(row)
        self.requests[v] += 1
        if error:
            self.errors[v] += 1
            return
        self.latency[v].append(latency)
        for name, arms, draw in (("correct", correct, lambda p: rng.random() < p),
                                 ("revenue", revenue, lambda mu: rng.gauss(mu, 3.0)),
                                 ("cost", cost, lambda mu: rng.expovariate(1.0 / mu))):
            if arms is None:
                continue
            value = draw(arms[v])
            if name == "correct":
                self.stats.record_feedback(self.t, v, name, None, value, unit=unit, assigned=assigned)
            else:
                self.stats.record_feedback(self.t, v, name, value, None, unit=unit, assigned=assigned)
            row.feedback[name] = float(value)
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

    def report(self, weights=None, state=None, cfg=None):
        return build_report(cfg or self.cfg, self.stats.snapshot(self.t), weights or self.weights, state)

    def outcomes(self, metric, version, split=None):
        """The assigned outcomes of ``metric`` on ``version`` and their units: (y, groups)."""
        y, groups = [], []
        for row in self.rows:
            if not row.assigned or row.version != version or (split is not None and row.split != split):
                continue
            if metric == "error_rate":
                value = float(row.error)
            elif metric == "latency_ms":
                value = row.latency_ms
            else:
                value = row.feedback.get(metric)
            if value is not None:
                y.append(value)
                groups.append(row.group)
        return np.asarray(y, float), np.asarray(groups)


def cluster_mean(y, groups):
    """statsmodels' reference: (ratio, its cluster-robust variance, clusters)."""
    _, g = np.unique(groups, return_inverse=True)
    fit = sm.OLS(y, np.ones(len(y))).fit(cov_type="cluster", cov_kwds={"groups": g})
    return float(fit.params[0]), float(fit.bse[0] ** 2), int(g.max() + 1)


def reference(sim, metric, variant="v2", control="v1", split=None):
    """(D, Var D, value_v, value_c, var_v, var_c, units_v, units_c) of one split (or the only one).

    The arms' variances are their own cluster-robust ones, both scaled up when the pooled
    variance of the difference is larger: the cluster-robust variance of both arms' data as
    one sample, times n (1/n_v + 1/n_c)."""
    (y_v, g_v), (y_c, g_c) = sim.outcomes(metric, variant, split), sim.outcomes(metric, control, split)
    value_v, var_v, n_v = cluster_mean(y_v, g_v)
    value_c, var_c, n_c = cluster_mean(y_c, g_c)
    _, var_pooled, n = cluster_mean(np.concatenate([y_v, y_c]), np.concatenate([g_v, g_c]))
    scale = max(1.0, var_pooled * n * (1 / n_v + 1 / n_c) / (var_v + var_c))
    var_v, var_c = var_v * scale, var_c * scale
    return value_v - value_c, var_v + var_c, value_v, value_c, var_v, var_c, n_v, n_c


def pooled_var_diff(sim, metric, variant="v2", control="v1", split=None):
    """The variance of the difference if the arms did not differ: the cluster-robust variance
    of both arms' data as one sample, times n (1/n_v + 1/n_c)."""
    (y_v, g_v), (y_c, g_c) = sim.outcomes(metric, variant, split), sim.outcomes(metric, control, split)
    _, var_pooled, n = cluster_mean(np.concatenate([y_v, y_c]), np.concatenate([g_v, g_c]))
    return var_pooled * n * (1 / len(np.unique(g_v)) + 1 / len(np.unique(g_c)))


def arm_reference(sim, metric, version):
    """(value, cluster-robust variance, clusters) of one arm alone: its own interval's."""
    return cluster_mean(*sim.outcomes(metric, version))


def expected_tau(mde_relative, value_c, var_v, var_c, n_v, n_c):
    """The mSPRT's mixing scale from the reference's figures: the MDE in absolute units, but at
    least a tenth of a unit's SD (pooled over the arms: the delta-method variance times units)."""
    return max(mde_relative * abs(value_c), 0.1 * math.sqrt((var_v * n_v + var_c * n_c) / 2))


def _metric(report, name):
    return report.metric(name)


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
    assert data["schema"] == 2
    exp = report.experiment
    assert (exp.model, exp.control, exp.variants, exp.versions) == ("digits", "v1", ["v2"], ["v1", "v2", "v3"])
    assert exp.weights_pct == {"v1": 50.0, "v2": 50.0, "v3": 0.0}
    # (error_rate, latency_ms, correct, revenue, cost) x v2, each sequential test at alpha / 5
    assert (exp.family_size, exp.alpha_per_comparison, exp.splits) == (5, pytest.approx(0.01), 1)
    assert [m.name for m in report.metrics] == ["error_rate", "latency_ms", "correct", "revenue", "cost"]
    assert {m.test for m in report.metrics} == {"delta_method_z"}


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
            # From the log-bucket sketch: within its stated 1%.
            assert getattr(lat, key) == pytest.approx(np.percentile(sample, q), rel=SKETCH_REL)
        assert lat.mean == pytest.approx(sample.mean(), rel=REL, abs=1e-12)
        assert lat.mean_all == pytest.approx(sample.mean(), rel=REL, abs=1e-12)
        assert sum(v.predictions.values()) == sample.size
        assert sum(v.prediction_share.values()) == pytest.approx(1.0)
    assert report.variants["v1"].role == "control"
    assert report.variants["v3"].role == "shadow"


def test_units_per_version_are_distinct_users_not_buckets(busy):
    sim, report, _ = busy
    for v in ("v1", "v2"):
        users = {r.unit for r in sim.rows if r.version == v and r.assigned}
        buckets = {r.group for r in sim.rows if r.version == v and r.assigned}
        assert report.variants[v].units == len(users) == report.srm.observed[v]
        # The analysis unit of the metrics is the bucket (users nested in it).
        assert _metric(report, "error_rate").arms[v].n == len(buckets) < len(users)
    assert report.variants["v3"].units == 0


# ---- every metric against its cluster-robust reference ---------------------------------------


@pytest.mark.parametrize("name", ["error_rate", "latency_ms", *FEEDBACK])
def test_each_metric_is_the_ratio_of_its_units_with_the_cluster_robust_variance(busy, name):
    sim, report, _ = busy
    metric = _metric(report, name)
    d, var_d, value_v, value_c, var_v, var_c, n_v, n_c = reference(sim, name)
    z = stats.norm.ppf(1 - report.experiment.alpha / 2)
    for version in ("v2", "v1"):
        value, var, n = arm_reference(sim, name, version)
        arm = metric.arms[version]
        assert arm.n == n and arm.value == pytest.approx(value, rel=REL)
        if metric.kind == "conversion":  # Wilson's, on the trials the per-unit variance is worth
            trials = len(sim.outcomes(name, version)[0])  # at most: a design effect below 1 is noise
            effective = min(value * (1 - value) / var, trials)
            wilson = proportion_confint(value * effective, effective, alpha=report.experiment.alpha, method="wilson")
            assert arm.ci == pytest.approx(list(wilson), rel=REL)
        else:
            assert arm.ci == pytest.approx([value - z * math.sqrt(var), value + z * math.sqrt(var)], rel=REL)
    c = _cmp(report, name)
    assert (c.test, c.n_variant, c.n_control, c.splits_used) == ("delta_method_z", n_v, n_c, 1)
    assert c.value_variant == pytest.approx(value_v, rel=REL) and c.value_control == pytest.approx(value_c, rel=REL)
    assert c.abs_lift == pytest.approx(d, rel=REL, abs=1e-12)
    assert c.rel_lift == pytest.approx(value_v / value_c - 1, rel=REL, abs=1e-12)
    p = 2 * stats.norm.sf(abs(d) / math.sqrt(var_d))
    assert c.p_value == pytest.approx(p, rel=REL, abs=1e-300)
    # The fixed interval is D +- z(level) se at the level the correction left the comparison.
    fixed = c.fixed
    assert fixed.level == pytest.approx(report.experiment.alpha * c.p_value / c.p_adjusted, rel=REL)
    half = stats.norm.ppf(1 - fixed.level / 2) * math.sqrt(var_d)
    assert fixed.abs_ci == pytest.approx([d - half, d + half], rel=REL, abs=1e-12)
    # Fieller's relative interval: its bounds are the roots of (A - rho B)^2 = crit^2 Var(A - rho B).
    crit = stats.norm.ppf(1 - fixed.level / 2)
    for bound in fixed.rel_ci:
        rho = bound + 1
        assert (value_v - rho * value_c) ** 2 == pytest.approx(crit**2 * (var_v + rho**2 * var_c), rel=1e-6)


def test_error_rate_is_worse_and_latency_is_a_slower_mean_with_descriptive_percentiles(busy):
    sim, report, _ = busy
    assert _metric(report, "error_rate").direction == "decrease"
    assert _cmp(report, "error_rate").fixed.verdict == "worse"  # 2% against 1%
    latency = _metric(report, "latency_ms")
    assert latency.value_is == "mean" and latency.unit.startswith("ms per successful")
    c = _cmp(report, "latency_ms")
    assert c.fixed.verdict == "worse" and c.abs_lift > 0  # v2 is 8% slower: lower is better
    for v in ("v1", "v2"):
        arm = latency.arms[v]
        assert arm.value == pytest.approx(np.mean(sim.latency[v]), rel=REL)
        assert arm.p50 == pytest.approx(np.percentile(sim.latency[v], 50), rel=SKETCH_REL)
        assert arm.p95 == pytest.approx(np.percentile(sim.latency[v], 95), rel=SKETCH_REL)
    assert _metric(report, "correct").arms["v1"].p50 is None  # percentiles are latency's only


def test_keyless_requests_are_each_their_own_unit_so_a_rate_is_the_binomial_z_test():
    cfg = make_cfg(shadow=None, analysis={"metrics": []})
    sim = Sim(cfg, seed=12, users=None).run(3000, error_rate={"v1": 0.05, "v2": 0.08})
    report, _ = sim.report()
    c = _cmp(report, "error_rate")
    e = {v: sim.errors[v] for v in ("v1", "v2")}
    n = {v: sim.requests[v] for v in ("v1", "v2")}
    assert (c.n_variant, c.n_control) == (n["v2"], n["v1"])  # a unit per request
    pv, pc = e["v2"] / n["v2"], e["v1"] / n["v1"]
    # Binomial variances, up to the n / (n - 1) of a variance per unit; each at least the score
    # test's, from the rate of both arms pooled.
    units = n["v1"] + n["v2"]
    p = (e["v1"] + e["v2"]) / units
    pooled = p * (1 - p) * units / (units - 1)
    var = max(pv * (1 - pv) / (n["v2"] - 1) + pc * (1 - pc) / (n["v1"] - 1), pooled / n["v2"] + pooled / n["v1"])
    assert c.p_value == pytest.approx(2 * stats.norm.sf(abs(pv - pc) / math.sqrt(var)), rel=REL)
    assert report.variants["v1"].units == n["v1"] and report.srm.observed["v1"] == n["v1"]
    lo, hi = proportion_confint(e["v2"], n["v2"], alpha=0.05, method="wilson")
    arm = _metric(report, "error_rate").arms["v2"]
    assert arm.ci == pytest.approx([lo, hi], rel=1e-3)  # Wilson's, up to n / (n - 1)


def test_pinned_requests_are_counted_but_not_in_the_per_unit_figures():
    cfg = make_cfg(shadow=None)
    sim = Sim(cfg, seed=13).run(2000, correct={"v1": 0.5, "v2": 0.5}, pinned_share=0.3)
    report, _ = sim.report()
    for v in ("v1", "v2"):
        assigned = [r for r in sim.rows if r.version == v and r.assigned]
        variant = report.variants[v]
        assert variant.requests == sim.requests[v] > variant.assigned == len(assigned)
        assert _metric(report, "error_rate").arms[v].total == len(assigned)
        assert _metric(report, "correct").arms[v].total == sum("correct" in r.feedback for r in assigned)
        assert variant.feedback["correct"].n == sum("correct" in r.feedback for r in sim.rows if r.version == v)


@pytest.mark.parametrize("correction, method", [("holm", "holm"), ("bh", "fdr_bh"), ("none", None)])
def test_p_values_are_corrected_over_the_family_fixed_from_the_config(correction, method):
    cfg = make_cfg(weights={"v1": 40, "v2": 30, "v3": 30}, shadow=None,
                   analysis={"correction": correction, "metrics": [{"name": "correct", "kind": "conversion"}]})
    sim = Sim(cfg, seed=3).run(3000, error_rate={"v1": 0.02, "v2": 0.03, "v3": 0.02},
                               correct={"v1": 0.9, "v2": 0.93, "v3": 0.9})
    report, _ = sim.report()
    comparisons = [c for m in report.metrics for c in m.comparisons]
    assert len(comparisons) == 3 * 2  # error_rate, latency, correct x v2, v3
    assert report.experiment.family_size == (6 if method else 1)
    raw = [c.p_value for c in comparisons]
    expected = raw if method is None else multipletests(raw, method=method)[1]
    assert [c.p_adjusted for c in comparisons] == pytest.approx(list(expected), rel=REL, abs=1e-12)
    for c in comparisons:
        # The verdict of the fixed test, and its interval, follow the corrected p-value.
        decided = c.fixed.verdict in ("better", "worse")
        assert decided == (c.p_adjusted < 0.05)
        assert decided == (c.fixed.abs_ci[0] > 0 or c.fixed.abs_ci[1] < 0)


def test_comparisons_not_tested_yet_count_as_p_1_so_the_correction_does_not_loosen():
    cfg = make_cfg(shadow=None, analysis={"metrics": [{"name": "correct", "kind": "conversion"}]})
    sim = Sim(cfg, seed=4).run(2000, error_rate={"v1": 0.02, "v2": 0.04})  # no feedback at all
    report, _ = sim.report()
    tested = [_cmp(report, "error_rate"), _cmp(report, "latency_ms")]
    assert _cmp(report, "correct").p_value is None and _cmp(report, "correct").verdict == "not_enough_data"
    holm = multipletests([c.p_value for c in tested] + [1.0], method="holm")[1]
    assert [c.p_adjusted for c in tested] == pytest.approx(list(holm[:2]), rel=REL)


# ---- power -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["error_rate", "correct", "revenue"])
def test_power_figures_are_the_units_plan_of_the_msprt_run(busy, name):
    sim, report, state = busy
    analysis = sim.cfg.analysis
    c = _cmp(report, name)
    _, var_d, _, value_c, var_v, var_c, n_v, n_c = reference(sim, name)
    effect = analysis.mde_relative * abs(value_c)
    tau = state[name]["v2"]["tau"]
    # The mixing scale: the MDE, but at least a tenth of a unit's SD (a 1% error rate's MDE of
    # 0.05% is far below its noise); the test and the plan use the same one.
    assert tau == pytest.approx(expected_tau(analysis.mde_relative, value_c, var_v, var_c, n_v, n_c), rel=REL)
    assert c.sequential.tau == tau
    assert (tau > effect * (1 + REL)) == (name == "error_rate")
    plan = power.units_per_arm(effect, var_c * n_c, var_v * n_v, alpha=analysis.alpha / 5, power=analysis.power,
                               sequential=True, tau=tau, allocation=(50.0, 50.0))
    p = c.power
    assert p.test.startswith("mSPRT") and p.family_size == 5
    assert p.required == {"variant": plan.n_variant, "control": plan.n_control}
    assert p.required_per_arm == max(plan.n_variant, plan.n_control)
    assert p.units_needed == {"variant": max(0, plan.n_variant - n_v), "control": max(0, plan.n_control - n_c)}
    assert p.achieved == pytest.approx(power.sequential_power(effect, var_d, tau, analysis.alpha / 5), rel=1e-6)
    assert _metric(report, name).power_plan.required_per_arm == p.required_per_arm


def test_fixed_horizon_power_is_statsmodels_normal_power_in_units():
    cfg = make_cfg(shadow=None, analysis={"sequential": False})
    sim = Sim(cfg, seed=6).run(3000, correct={"v1": 0.6, "v2": 0.6})
    report, _ = sim.report()
    c = _cmp(report, "correct")
    _, var_d, _, value_c, var_v, var_c, n_v, n_c = reference(sim, "correct")
    effect = cfg.analysis.mde_relative * value_c
    alpha = cfg.analysis.alpha / report.experiment.family_size
    # Cohen's effect size on the pooled per-unit standard deviation: NormalIndPower's scale.
    es = effect / math.sqrt((var_c * n_c + var_v * n_v) / 2)
    required = NormalIndPower().solve_power(effect_size=es, alpha=alpha, power=cfg.analysis.power, ratio=1.0)
    assert c.power.test.startswith("z-test") and abs(c.power.required_per_arm - math.ceil(required)) <= 1
    z = effect / math.sqrt(var_d)
    crit = stats.norm.isf(alpha / 2)
    assert c.power.achieved == pytest.approx(stats.norm.sf(crit - z) + stats.norm.cdf(-crit - z), rel=1e-9)


def test_power_for_a_zero_error_rate_says_why_there_is_none():
    cfg = make_cfg(shadow=None)
    report, _ = Sim(cfg, seed=1).run(400).report()  # no errors at all
    c = _cmp(report, "error_rate")
    assert c.power is None and c.verdict == "not_enough_data" and "no spread" in c.power_note


# ---- sequential ------------------------------------------------------------------------------


def _msprt(d, v, tau, alpha):
    """Johari et al.'s normal mixture: (p at this look, half-width of the sequence)."""
    t2 = tau * tau
    log_lr = 0.5 * math.log(v / (v + t2)) + t2 * d * d / (2 * v * (v + t2))
    half = math.sqrt(v * (v + t2) / t2 * (2 * math.log(1 / alpha) + math.log((v + t2) / v)))
    return min(1.0, math.exp(-log_lr)), half


def test_sequential_figures_are_the_msprt_of_the_estimate_carried_through_json():
    cfg = make_cfg(shadow=None)
    sim = Sim(cfg, seed=11).run(1500, correct={"v1": 0.90, "v2": 0.93})
    report1, state1 = sim.report()
    d1, v1, _, base, var_v1, var_c1, n_v1, n_c1 = reference(sim, "correct")
    state1 = json.loads(json.dumps(state1))  # the controller may keep it as JSON
    sim.run(1500, correct={"v1": 0.90, "v2": 0.93})
    report2, state2 = sim.report(state=state1)
    d2, v2, *_ = reference(sim, "correct")

    alpha = cfg.analysis.alpha / report1.experiment.family_size
    tau = expected_tau(cfg.analysis.mde_relative, base, var_v1, var_c1, n_v1, n_c1)  # fixed at the first look
    p1, h1 = _msprt(d1, v1, tau, alpha)
    p2, h2 = _msprt(d2, v2, tau, alpha)
    seq1, seq2 = _cmp(report1, "correct").sequential, _cmp(report2, "correct").sequential
    assert seq1.p_value == pytest.approx(p1, rel=REL) and seq1.ci == pytest.approx([d1 - h1, d1 + h1], rel=REL)
    assert seq2.looks == 2 and state2["correct"]["v2"]["seq"]["looks"] == 2 and seq2.tau == pytest.approx(tau)
    assert seq2.p_value == pytest.approx(min(p1, p2), rel=REL)  # a running minimum
    assert seq2.ci == pytest.approx([max(d1 - h1, d2 - h2), min(d1 + h1, d2 + h2)], rel=REL)  # an intersection
    assert seq2.p_adjusted == pytest.approx(min(1.0, seq2.p_value * report2.experiment.family_size), rel=REL)
    c = _cmp(report2, "correct")
    assert c.verdict_basis == "sequential" and c.abs_ci == seq2.ci and c.rel_ci == seq2.rel_ci


def test_with_sequential_off_a_fixed_verdict_is_reached_at_the_planned_sample_then_frozen():
    # Regression: with sequential off there was never a plan (tau passed to the z-test's plan),
    # so the verdict was withheld for ever. Keyless requests, a 50% rate against 80%, MDE 30%.
    cfg = make_cfg(shadow=None, analysis={"sequential": False, "mde_relative": 0.3})
    sim = Sim(cfg, seed=3, users=None).run(1500, correct={"v1": 0.5, "v2": 0.8})
    report, state = sim.report()
    c = _cmp(report, "correct")
    assert c.power is not None and c.power.test.startswith("z-test") and c.power.complete
    assert c.verdict == c.fixed.verdict == "better" and c.abs_ci == c.fixed.abs_ci and c.verdict_note is None
    assert state["correct"]["v2"]["frozen"]["verdict"] == "better"
    # Later traffic says the opposite, enough to turn the fixed figures round: the verdict stays.
    report, _ = sim.run(6000, correct={"v1": 0.5, "v2": 0.2}).report(state=json.loads(json.dumps(state)))
    later = _cmp(report, "correct")
    assert later.value_variant < later.value_control and later.fixed == c.fixed
    assert later.verdict == "better" and later.abs_ci == c.abs_ci and later.rel_ci == c.rel_ci
    assert (later.abs_lift, later.rel_lift, later.p_value) == (c.abs_lift, c.rel_lift, c.p_value)
    assert "reached the planned sample" in later.verdict_note


def test_with_sequential_off_the_fixed_verdict_waits_for_the_planned_sample():
    cfg = make_cfg(shadow=None, analysis={"sequential": False})
    report, _ = Sim(cfg, seed=5).run(500, correct={"v1": 0.9, "v2": 0.9}).report()
    for c in (c for m in report.metrics for c in m.comparisons):
        assert c.sequential is None and c.verdict_basis == "fixed_horizon"
        if c.fixed is not None:  # tested, but far from the plan: withheld
            assert c.verdict == "not_enough_data" and "withheld" in c.verdict_note
            assert c.abs_ci == c.fixed.abs_ci and (c.power is None or not c.power.complete)


def test_sequential_state_restarts_when_counts_go_down(busy):
    # Regression: a state from other data (another run, lost figures) was carried on: running
    # minima and intersections over unrelated looks, and its tau.
    sim, _, state = busy
    fresh = Sim(sim.cfg, seed=2).run(400, correct={"v1": 0.9, "v2": 0.9})
    report2, state2 = fresh.report(state=json.loads(json.dumps(state)))
    alone, _ = fresh.report()
    before = state["correct"]["v2"]["seq"]["units"]
    now = _cmp(report2, "correct").n_variant + _cmp(report2, "correct").n_control
    assert now < before
    assert f"sequential test of correct/v2 restarted: {before} units at the last look, {now} now" in report2.warnings
    assert state2["correct"]["v2"]["seq"]["looks"] == 1
    # Restarted means as if there had been no state: the same tau, sequence and verdict.
    assert state2["correct"]["v2"]["tau"] == pytest.approx(_cmp(alone, "correct").sequential.tau, rel=1e-12)
    assert _cmp(report2, "correct").sequential == _cmp(alone, "correct").sequential
    assert _cmp(report2, "correct").verdict == _cmp(alone, "correct").verdict


def test_the_sequential_state_carries_on_without_a_warning_while_counts_grow():
    cfg = make_cfg(shadow=None)
    sim = Sim(cfg, seed=4).run(600, correct={"v1": 0.9, "v2": 0.9})
    _, state = sim.report()
    report2, state2 = sim.run(600, correct={"v1": 0.9, "v2": 0.9}).report(state=state)
    assert not any("restarted" in w for w in report2.warnings)
    assert state2["correct"]["v2"]["seq"]["looks"] == 2 and state2["correct"]["v2"]["tau"] == state["correct"]["v2"]["tau"]


# ---- splits ----------------------------------------------------------------------------------


def _canary(drop, seed=21):
    """A canary at 10% then 50%, the base rate falling from 50% to 20% between the two; the
    candidate's rate is (1 - drop) times the control's at every moment."""
    cfg = make_cfg(shadow=None, weights={"v1": 90, "v2": 10},
                   analysis={"metrics": [{"name": "correct", "kind": "conversion"}]})
    sim = Sim(cfg, seed=seed, users=4000)
    sim.run(8000, correct={"v1": 0.5, "v2": 0.5 * (1 - drop)})
    sim.set_split({"v1": 50, "v2": 50})
    sim.run(8000, correct={"v1": 0.2, "v2": 0.2 * (1 - drop)})
    return sim


def _naive(sim, name="correct"):
    """Pooled over both splits, as if the weights had never changed: (difference, z)."""
    value_v, var_v, _ = cluster_mean(*sim.outcomes(name, "v2"))
    value_c, var_c, _ = cluster_mean(*sim.outcomes(name, "v1"))
    return value_v - value_c, (value_v - value_c) / math.sqrt(var_v + var_c)


def test_a_canary_with_a_falling_base_rate_and_equal_arms_gets_no_verdict():
    sim = _canary(drop=0.0)
    report, _ = sim.report()
    c = _cmp(report, "correct")
    naive_d, naive_z = _naive(sim)
    # Pooling calls the candidate far worse: most of its reports came in the low-rate period.
    assert naive_d < -0.1 and naive_z < -10
    assert abs(c.abs_lift) < 0.02 and c.fixed.p_value > 0.01
    assert c.verdict == "no_difference" and c.fixed.verdict == "no_difference"
    assert c.splits_used == 2 and report.experiment.splits == 2
    assert any("weights changed 1 time" in w for w in report.warnings)
    # Each arm's value is the same weighted combination of its two splits' rates, with the
    # inverse of each split's pooled variance of the difference (both arms as one sample).
    per = [reference(sim, "correct", split=s) for s in (0, 1)]
    w = (c.value_variant - per[1][2]) / (per[0][2] - per[1][2])
    assert c.value_control == pytest.approx(w * per[0][3] + (1 - w) * per[1][3], rel=1e-9)
    inverse = [1 / pooled_var_diff(sim, "correct", split=s) for s in (0, 1)]
    assert w == pytest.approx(inverse[0] / sum(inverse), rel=1e-6)


def test_a_real_twenty_percent_drop_across_splits_is_worse():
    sim = _canary(drop=0.2)
    report, _ = sim.report()
    c = _cmp(report, "correct")
    assert c.verdict == "worse" and c.verdict_basis == "sequential"
    assert c.abs_ci[1] < 0 and c.rel_ci[1] < 0
    assert c.rel_lift == pytest.approx(-0.2, abs=0.06)


# ---- sample ratio ----------------------------------------------------------------------------


def test_srm_counts_units_and_flags_a_broken_split_but_not_a_fair_one():
    cfg = make_cfg(shadow=None)
    fair, _ = Sim(cfg, seed=4).run(4000).report()
    skewed, _ = Sim(cfg, seed=4, users=20000).run(8000, route={"v1": 56, "v2": 44, "v3": 0}).report()
    assert fair.srm.mismatch is False and fair.srm.p_value > 0.001 and fair.srm.basis == "units"
    assert fair.srm.sampled_fraction == 1.0 and fair.srm.other_splits == []
    srm = skewed.srm
    assert srm.mismatch is True and srm.basis == "units"
    ref = stats.chisquare([srm.observed["v1"], srm.observed["v2"]])
    assert srm.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert skewed.warnings[0].startswith("sample ratio mismatch")


def test_srm_flags_on_the_sequential_test_and_shows_the_chi_square_beside_it():
    cfg = make_cfg(shadow=None)
    srm = Sim(cfg, seed=4, users=20000).run(8000, route={"v1": 56, "v2": 44, "v3": 0}).report()[0].srm
    observed = [srm.observed["v1"], srm.observed["v2"]]
    assert srm.always_valid_p == pytest.approx(math.exp(-srm_log_bayes_factor(observed, [50, 50])), rel=1e-9)
    assert srm.mismatch is True and srm.always_valid_p < 0.001
    # 52/48 of a few thousand users: the chi-square at this one look is below 0.001, but a
    # report read at every refresh would cross that by chance too often; the flag waits.
    mild = Sim(cfg, seed=4, users=20000).run(7000, route={"v1": 52.5, "v2": 47.5, "v3": 0}).report()[0]
    assert mild.srm.p_value < 0.001 < mild.srm.always_valid_p and mild.srm.mismatch is False


def test_srm_is_about_users_not_requests():
    cfg = make_cfg(shadow=None)
    sim = Sim(cfg, seed=5, users=6000).run(3000, extra_requests={"v2": 2})  # v2's users send 3 requests a visit
    report, _ = sim.report()
    requests = [report.variants["v1"].assigned, report.variants["v2"].assigned]
    assert stats.chisquare(requests).pvalue < 1e-100  # by requests it would be flagged
    assert report.srm.mismatch is False and report.srm.p_value > 0.001


def test_srm_checks_the_current_split_and_lists_the_earlier_ones():
    cfg = make_cfg(shadow=None, weights={"v1": 80, "v2": 20})
    sim = Sim(cfg, seed=6, users=20000).run(4000, route={"v1": 70, "v2": 30, "v3": 0})  # broken at 80/20
    sim.set_split({"v1": 50, "v2": 50}).run(4000)  # fixed at 50/50
    report, _ = sim.report()
    srm = report.srm
    assert srm.mismatch is False and srm.weights_pct["v1"] == 50
    (earlier,) = srm.other_splits
    assert earlier.split == split_key({"v1": 80, "v2": 20, "v3": 0}) and earlier.mismatch is True


def test_srm_past_the_sample_bound_tests_a_uniform_sample_of_users():
    cfg = make_cfg(shadow=None)
    sim = Sim(cfg, seed=8, users=50_000)
    sim.run(1)
    (record,) = sim.stats.splits.values()
    record.units.max_units = 500  # the bound, small enough to pass here
    sim.run(3000)
    report, _ = sim.report()
    srm = report.srm
    kept = record.units.kept(["v1", "v2"])
    assert sum(kept.values()) <= 500 and 0 < srm.sampled_fraction < 1
    assert srm.p_value == pytest.approx(stats.chisquare([kept["v1"], kept["v2"]]).pvalue, rel=1e-9)
    distinct = {v: len({r.group for r in sim.rows if r.version == v}) for v in ("v1", "v2")}
    for v in ("v1", "v2"):  # the estimates of every user, within a few standard errors of the sample
        assert srm.observed[v] == round(kept[v] / srm.sampled_fraction)
        assert abs(srm.observed[v] - distinct[v]) < 5 * math.sqrt(distinct[v] / srm.sampled_fraction)


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


def test_shadow_agreement_from_users_who_send_many_requests_gets_a_wider_interval():
    """1,500 pairs from 30 users, 27 whom the shadow always agrees with and 3 it never does:
    the interval is on the pairs' effective number, as the shadow_agreement gate's bound is."""
    cfg = make_cfg()
    reports = {}
    for keyed in (True, False):
        stats = ExperimentStats(["v1", "v2", "v3"], 0.0, shadow_version="v3")
        for user in range(30):
            for k in range(50):
                stats.record_pair(1.0, "v1", 0, 0 if user < 27 else 1, None, 2.0, None,
                                  unit=10_000 * user + user if keyed else None)
        reports[keyed], _ = build_report(cfg, stats.snapshot(2.0), {"v1": 50, "v2": 50})
    keyed, keyless = reports[True].shadow.agreement, reports[False].shadow.agreement
    assert keyed.rate == keyless.rate == 0.9 and keyed.n == keyless.n == 1500
    assert keyless.design_effect == 1.0
    assert keyless.ci == pytest.approx(list(proportion_confint(1350, 1500, alpha=0.05, method="wilson")), rel=1e-9)
    # ICC 1 within users: every user's 50 pairs say one thing, deff about 50 * 30 / 29.
    assert keyed.design_effect == pytest.approx(50 * 30 / 29, rel=1e-6)
    effective = 1500 / keyed.design_effect
    assert keyed.ci == pytest.approx(list(shadow.wilson_interval(0.9 * effective, effective)), rel=1e-9)
    assert keyed.ci[0] < 0.8 < keyless.ci[0]
    assert "design effect 51.7" in "\n".join(_shadow_lines(reports[True].shadow))


def test_score_differences_of_users_who_send_many_requests_get_a_wider_interval():
    """Each of 40 users' 50 pairs shares a shift of the shadow's score: the paired t interval
    is on the effective number of pairs, with its degrees of freedom."""
    rng = np.random.default_rng(11)
    shifts = rng.normal(0.0, 0.05, 40)
    noise = rng.normal(0.0, 0.02, (40, 50))
    cfg = make_cfg()
    reports = {}
    for keyed in (True, False):
        figures = ExperimentStats(["v1", "v2", "v3"], 0.0, shadow_version="v3")
        for user in range(40):
            for k in range(50):
                figures.record_pair(1.0, "v1", 0, 0, float(shifts[user] + noise[user, k]), 2.0, None,
                                    unit=10_000 * user + user if keyed else None)
        reports[keyed], _ = build_report(cfg, figures.snapshot(2.0), {"v1": 50, "v2": 50})
    keyed, keyless = reports[True].shadow.score_diff, reports[False].shadow.score_diff
    diffs = (shifts[:, None] + noise).ravel()
    assert keyless.design_effect == 1.0 and keyed.mean == pytest.approx(keyless.mean, rel=1e-9)
    ref = stats.ttest_1samp(diffs, 0.0)
    assert keyless.p_value == pytest.approx(ref.pvalue, rel=1e-6)
    # ICC about 0.05^2 / (0.05^2 + 0.02^2) = 0.86: deff near 1 + 49 * 0.86.
    assert 25 < keyed.design_effect < 50
    se = diffs.std(ddof=1) / math.sqrt(diffs.size) * math.sqrt(keyed.design_effect)
    df = int(diffs.size / keyed.design_effect) - 1
    half = stats.t.ppf(0.975, df) * se
    assert keyed.ci == pytest.approx([diffs.mean() - half, diffs.mean() + half], rel=1e-6)
    assert keyed.ci[1] - keyed.ci[0] > 5 * (keyless.ci[1] - keyless.ci[0])
    assert f"design effect {keyed.design_effect:.3g}, users who" in "\n".join(_shadow_lines(reports[True].shadow))


def test_class_flip_tests_agree_with_compare_correctness_on_expanded_pairs():
    rng = np.random.default_rng(0)
    live = rng.integers(0, 4, 300)
    cand = np.where(rng.random(300) < 0.15, rng.integers(0, 4, 300), live)
    cells = Counter(zip(live.tolist(), cand.tolist()))
    tests = class_flip_tests([(a, b, n) for (a, b), n in cells.items()])
    for t in tests:
        ref = shadow.compare_correctness(live == t.cls, cand == t.cls)
        assert t.p_value == pytest.approx(ref.p_value, rel=REL, abs=1e-12) and t.method == ref.method


def test_flips_of_users_who_keep_relabelling_take_durkalskis_cluster_adjusted_test():
    """40 users who each always get one of 4 classes; the shadow relabels some users' pairs as
    a class of the user's own. Keyless, McNemar's test sees 40 x 30 independent pairs; keyed,
    the net flips into each class per group of users give Durkalski's statistic
    (sum of net flips)^2 / (sum of their squares), on F(1, df), computed here from the pairs."""
    rng = np.random.default_rng(12)
    cfg = make_cfg()
    units = [10_000 * user + user for user in range(40)]
    live = rng.integers(0, 4, 40)
    other = (live + rng.integers(1, 4, 40)) % 4
    rates = rng.beta(0.3, 2.7, 40)
    pairs = [(int(live[u]), int(other[u]) if rng.random() < rates[u] else int(live[u])) for u in range(40)
             for _ in range(30)]
    reports = {}
    for keyed in (True, False):
        figures = ExperimentStats(["v1", "v2", "v3"], 0.0, shadow_version="v3")
        for index, (a, b) in enumerate(pairs):
            figures.record_pair(1.0, "v1", a, b, None, 2.0, None, unit=units[index // 30] if keyed else None)
        reports[keyed], _ = build_report(cfg, figures.snapshot(2.0), {"v1": 50, "v2": 50})
    groups = [(u % NUM_BUCKETS) % 128 for u in units]
    for cls in range(4):
        keyed = next(t for t in reports[True].shadow.class_tests if t.class_ == cls)
        keyless = next(t for t in reports[False].shadow.class_tests if t.class_ == cls)
        net = Counter()
        for index, (a, b) in enumerate(pairs):
            net[groups[index // 30]] += (b == cls) - (a == cls)
        discordant = keyless.to_other + keyless.from_other
        squares = sum(n * n for n in net.values())
        assert keyless.method in ("mcnemar_chi2", "exact_binomial") and keyless.design_effect == 1.0
        assert keyed.method == "cluster_adjusted"
        assert keyed.design_effect == pytest.approx(squares / discordant, rel=1e-12)
        assert keyed.statistic == pytest.approx(sum(net.values()) ** 2 / squares, rel=1e-12)
        # On F(1, df): df from the units' kurtosis (Satterthwaite), k - 1 for normal units.
        units = np.array([n for n in net.values() if n], dtype=float)
        k, kurtosis = units.size, units.size * np.sum(units ** 4) / np.sum(units ** 2) ** 2
        df = min(max(2 / (2 / (k - 1) + max(kurtosis - 3, 0) / k), 1), k - 1)
        assert keyed.p_value == pytest.approx(stats.f.sf(keyed.statistic, 1, df), rel=1e-9)
        assert keyed.p_value > keyless.p_value
    # The shadow prefers no class; McNemar's test, counting pairs as independent, finds three shifted.
    assert sum(t.significant for t in reports[False].shadow.class_tests) == 3
    assert not any(t.significant for t in reports[True].shadow.class_tests)
    assert "adjusted where flips cluster by user" in " ".join(" ".join(_shadow_lines(reports[True].shadow)).split())


def test_one_user_flipping_every_pair_shifts_no_class():
    """One user whose 200 pairs the shadow all relabels 0 -> 1, among 300 users it agrees with:
    McNemar's test reads 200 discordant pairs one way; adjusted, it is one unit, and a sum of
    one unit over its own square root is 1, never significant."""
    figures = ExperimentStats(["v1", "v2", "v3"], 0.0, shadow_version="v3")
    for user in range(301):
        for _ in range(200 if user == 0 else 3):
            figures.record_pair(1.0, "v1", 0, 1 if user == 0 else 0, None, 2.0, None, unit=10_000 * user + user)
    report, _ = build_report(make_cfg(), figures.snapshot(2.0), {"v1": 50, "v2": 50})
    tests = {t.class_: t for t in report.shadow.class_tests}
    assert tests[0].method == tests[1].method == "cluster_adjusted"
    assert tests[0].statistic == pytest.approx(1.0) and not tests[0].significant and not tests[1].significant


def test_a_state_saved_before_the_flip_groups_tests_its_pairs_as_independent():
    import pickle

    figures = ExperimentStats(["v1", "v2", "v3"], 0.0, shadow_version="v3")
    for user in range(20):
        for _ in range(10):
            figures.record_pair(1.0, "v1", 0, 1 if user < 4 else 0, None, 2.0, None, unit=10_000 * user + user)
    state = figures.to_state(2.0)
    del state["shadow"]["flips"]
    restored = ExperimentStats.from_state(state, shadow_version="v3")
    report, _ = build_report(make_cfg(), restored.snapshot(2.0), {"v1": 50, "v2": 50})
    reference = class_flip_tests([(0, 0, 160), (0, 1, 40)])
    assert [t.p_value for t in report.shadow.class_tests] == [t.p_value for t in reference]
    # A router older than the groups: its pickled pairs count as keyless too.
    old = figures.shadow
    del old.__dict__["flips"]
    assert pickle.loads(pickle.dumps(old)).flips.keyless == Counter({0: 40, 1: 40})


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


# ---- restarts --------------------------------------------------------------------------------


def test_a_restarted_controller_reports_the_same_as_one_that_kept_running():
    cfg = make_cfg(shadow=None)
    sim = Sim(cfg, seed=9).run(1500, correct={"v1": 0.8, "v2": 0.85}, revenue={"v1": 10, "v2": 10})
    sim.set_split({"v1": 30, "v2": 70}).run(1500, correct={"v1": 0.8, "v2": 0.85}, revenue={"v1": 10, "v2": 10})
    kinds = {m.name: m.kind for m in cfg.analysis.metrics}
    restored = ExperimentStats.from_state(json.loads(json.dumps(sim.stats.to_state(sim.t))), feedback_kinds=kinds)
    before, _ = sim.report()
    after, _ = build_report(cfg, restored.snapshot(sim.t), sim.weights)
    assert after == before


# ---- small, empty and odd data ---------------------------------------------------------------


def test_no_traffic_gives_not_enough_data_and_no_nan():
    cfg = make_cfg()
    stats_ = ExperimentStats(["v1", "v2", "v3"], 0.0, shadow_version="v3")
    report, state = build_report(cfg, stats_.snapshot(0.0), cfg.weights_pct())
    json.dumps(report.model_dump(mode="json"), allow_nan=False)
    json.dumps(state, allow_nan=False)
    for m in report.metrics:
        for c in m.comparisons:
            assert c.verdict == "not_enough_data" and c.p_value is None and c.abs_ci == [None, None]
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
    assert metrics["correct.v2.units_variant"] == c.n_variant
    assert metrics["srm.p_value"] == report.srm.p_value and metrics["shadow.pairs"] == report.shadow.pairs
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert report.run_summary() == {"versions": ["v1", "v2", "v3"], "control": "v1",
                                    "requests": sum(v.requests for v in report.variants.values()),
                                    "srm_mismatch": report.srm.mismatch}


def test_headline_metrics_count_the_requests_a_fallback_served_and_the_requests_sent_once(busy):
    # Live (isolated, a replica killed): v1 1,069 requests of which 252 retried, v2 783 (252 of them
    # failed over), 1,600 sent; MLflow had v1.requests and v2.requests only, which add up to 1,852.
    _, report, _ = busy
    variants = dict(report.variants)
    variants["v1"] = variants["v1"].model_copy(update={"requests": variants["v1"].requests + 25, "retried": 25})
    failed = report.model_copy(update={"variants": variants})
    metrics = failed.headline_metrics()
    assert metrics["v1.retried"] == 25.0 and metrics["v2.retried"] == 0.0
    assert metrics["requests_total"] == sum(v.requests for v in report.variants.values())
    assert metrics["requests_total"] == failed.run_summary()["requests"]


def test_headline_metrics_leave_out_what_is_missing():
    cfg = make_cfg()
    report, _ = build_report(cfg, ExperimentStats(["v1", "v2", "v3"], 0.0, shadow_version="v3").snapshot(0.0),
                             cfg.weights_pct())
    metrics = report.headline_metrics()
    assert metrics["v1.requests"] == 0.0
    assert "v1.error_rate" not in metrics and "error_rate.v2.p_value" not in metrics  # None, never NaN
    assert "shadow.agreement" not in metrics and metrics["shadow.pairs"] == 0.0


def test_a_handful_of_units_is_not_enough_data():
    cfg = make_cfg(shadow=None)
    report, _ = Sim(cfg, seed=9).run(20, error_rate={"v2": 0.5}, correct={"v1": 0.5, "v2": 0.9}).report()
    json.dumps(report.model_dump(mode="json"), allow_nan=False)
    assert {c.verdict for m in report.metrics for c in m.comparisons} == {"not_enough_data"}
    assert all("fewer than 30 units" in c.power_note or "no split where both arms" in c.power_note
               for m in report.metrics for c in m.comparisons)


def test_unconfigured_feedback_is_exploratory_with_its_kind_from_the_snapshot():
    cfg = make_cfg(shadow=None, analysis={"metrics": []})
    sim = Sim(cfg, seed=8).run(600, correct={"v1": 0.5, "v2": 0.6})
    report, _ = sim.report()
    m = _metric(report, "correct")
    assert (m.kind, m.direction, m.test, m.in_family) == ("conversion", "increase", "delta_method_z", False)
    assert report.experiment.family_size == 2  # error_rate and latency_ms only
    c = m.comparisons[0]
    assert c.p_adjusted == c.p_value and c.sequential.alpha_per_comparison == cfg.analysis.alpha
    assert any("exploratory" in w for w in report.warnings)


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


def test_an_arms_interval_stays_within_the_values_its_metric_can_take():
    """A 3% error rate over a few dozen users: the delta-method interval would reach below 0."""
    cfg = make_cfg(shadow=None)
    report, _ = Sim(cfg, seed=3).run(80, error_rate={"v1": 0.03, "v2": 0.03}).report()
    clipped = 0
    for metric in report.metrics:
        for arm in metric.arms.values():
            if arm.ci is None:
                continue
            low, high = arm.ci
            if metric.kind == "conversion":
                assert 0.0 <= low <= arm.value <= high <= 1.0, (metric.name, arm)
                clipped += low == 0.0
            elif metric.name == "latency_ms":
                assert low >= 0.0
    assert clipped  # the case this is for occurred


# ---- CUPED's pre-period --------------------------------------------------------------------


def _returning_users(periods: list[dict[str, float]], effect: dict[str, float], seed: int,
                     shift: tuple[float, ...] = (), users: int = 3000) -> ExperimentStats:
    """The same users in each split of ``periods``, two revenue reports each per split, a
    persistent per-user level (what CUPED exploits) plus each version's effect, and every
    value of period i moved by ``shift[i]`` (a season)."""
    rng = np.random.default_rng(seed)
    units = rng.choice(2**62, users, replace=False)
    level = rng.normal(20.0, 5.0, users)
    stats = ExperimentStats(["v1", "v2", "v3"], 0.0, feedback_kinds={"revenue": "mean"})
    for t, weights in enumerate(periods):
        weights = {v: weights.get(v, 0.0) for v in ("v1", "v2", "v3")}
        stats.set_weights(weights)
        assigner = SplitTable.from_weights(weights)
        moved = shift[t] if t < len(shift) else 0.0
        for unit, mu in zip(units.tolist(), level.tolist()):
            version = assigner.version_for_bucket(unit % NUM_BUCKETS)
            for value in rng.normal(mu + effect.get(version, 0.0) + moved, 3.0, 2).tolist():
                stats.record_feedback(float(t), version, "revenue", value, None, unit=unit, split=weights)
    return stats


def _v3_against_v1(stats: ExperimentStats, weights: dict[str, float]):
    cfg = make_cfg(weights=weights, shadow=None, analysis={"metrics": [{"name": "revenue", "kind": "mean"}]})
    full = {v: weights.get(v, 0.0) for v in ("v1", "v2", "v3")}
    return _cmp(build_report(cfg, stats.snapshot(9.0), full)[0], "revenue", "v3")


def test_cuped_reads_no_pre_period_where_another_version_served_the_arms_buckets():
    """v1/v2 with v2 at +3, then v3 (the same as v1) joins: v3's buckets were v2's. Their
    earlier figures carry v2's effect, and adjusting v3 by them read it as WORSE in 20 of 20
    simulated runs (lift about -1.4). The comparison is now the plain one."""
    for first in ({"v1": 50.0, "v2": 50.0}, {"v1": 80.0, "v2": 20.0}):  # v3's buckets all or partly v2's
        stats = _returning_users([first, {"v1": 34.0, "v2": 33.0, "v3": 33.0}], {"v2": 3.0}, seed=1)
        c = _v3_against_v1(stats, {"v1": 34, "v2": 33, "v3": 33})
        assert c.cuped is None and c.verdict == "no_difference", (first, c.abs_lift)
        assert abs(c.abs_lift) < 0.5 and c.fixed.abs_ci[0] < 0 < c.fixed.abs_ci[1], (c.abs_lift, c.fixed.abs_ci)


def test_cuped_reads_both_arms_pre_period_from_the_same_splits():
    """v1 alone, then v1/v2 (an A/A), then v1/v3 (an A/A), every value up by 3 from the second
    period on (15%: a season). Counting only the buckets v1 served in v1/v2 gave v1 a covariate
    from both earlier periods and v3 one from the first alone: BETTER in 10 of 10 runs. Only the
    split where v1 served every bucket the comparison reads counts: no verdict, and CUPED still
    cuts the variance."""
    periods = [{"v1": 100.0}, {"v1": 50.0, "v2": 50.0}, {"v1": 50.0, "v3": 50.0}]
    stats = _returning_users(periods, {}, seed=2, shift=(0.0, 3.0, 3.0))
    c = _v3_against_v1(stats, {"v1": 50, "v2": 0, "v3": 50})
    assert c.cuped is not None and c.cuped.variance_reduction > 0.3
    # The first period's buckets only: v1 served them all.
    assert c.cuped.pre_units > 0.9 * (c.n_variant + c.n_control)
    assert c.verdict == "no_difference" and abs(c.abs_lift) < 0.3, (c.abs_lift, c.fixed.p_value)


def _v2_after_v1_alone(late_s: float | None, served_again_s: float | None = None):
    """v1 alone (t 0), then v1/v2 (t 1), the same users; a pre-period answer's feedback
    arriving at ``late_s``; v1 alone routed by again at ``served_again_s`` (a rollback)."""
    pre = {"v1": 100.0, "v2": 0.0, "v3": 0.0}
    stats = _returning_users([pre, {"v1": 50.0, "v2": 50.0}], {}, seed=5)
    if late_s is not None:  # the client reports an outcome of a pre-period answer late
        stats.record_feedback(late_s, "v1", "revenue", 20.0, None, unit=12345, split=pre)
    if served_again_s is not None:
        stats.record(served_again_s, "v1", 3.0, None, 1, 12345, True, split=pre)
    cfg = make_cfg(weights={"v1": 50, "v2": 50}, shadow=None,
                   analysis={"metrics": [{"name": "revenue", "kind": "mean"}]})
    return _cmp(build_report(cfg, stats.snapshot(9.0), {"v1": 50.0, "v2": 50.0, "v3": 0.0})[0], "revenue")


def test_late_feedback_on_a_pre_period_answer_keeps_cuped():
    """An outcome reported after the weights moved (a purchase an hour on) counts in the split
    its request was routed by, the pre-period; it used to extend that split's period past the
    variant's start, and one such report of 6,000 switched CUPED off for the whole comparison
    (live: variance reduction 0.73 before, none after 5 late reports of 400)."""
    on_time = _v2_after_v1_alone(None)
    late = _v2_after_v1_alone(late_s=5.0)
    assert on_time.cuped is not None and on_time.cuped.variance_reduction > 0.5
    assert late.cuped is not None
    assert late.cuped.variance_reduction == pytest.approx(on_time.cuped.variance_reduction, abs=0.01)
    # A split routed by again after the variant had traffic (a rollback to v1 alone) is not a
    # pre-period: its later requests may carry the variant's effect on the users it had.
    assert _v2_after_v1_alone(None, served_again_s=5.0).cuped is None


def test_the_relative_lift_of_a_metric_below_zero_has_the_sign_of_the_absolute_one():
    """A mean profit of -10 against -5: +50% relative to the control's size, not -50%."""
    cfg = make_cfg(shadow=None, analysis={"metrics": [{"name": "revenue", "kind": "mean"}]})
    rng = np.random.default_rng(4)
    stats = ExperimentStats(["v1", "v2", "v3"], 0.0, feedback_kinds={"revenue": "mean"})
    weights = {"v1": 50.0, "v2": 50.0, "v3": 0.0}
    assigner = SplitTable.from_weights(weights)
    for unit in rng.choice(2**62, 400, replace=False).tolist():
        version = assigner.version_for_bucket(unit % NUM_BUCKETS)
        stats.record_feedback(0.0, version, "revenue", float(rng.normal(-10.0 if version == "v1" else -5.0, 2.0)),
                              None, unit=unit, split=weights)
    c = _cmp(build_report(cfg, stats.snapshot(1.0), weights)[0], "revenue", "v2")
    assert c.verdict == "better" and c.abs_lift > 0
    assert c.rel_lift == pytest.approx(c.abs_lift / abs(c.value_control), rel=1e-12)
    assert 0.4 < c.rel_lift < 0.6
    assert 0 < c.rel_ci[0] < c.rel_lift < c.rel_ci[1]
    assert 0 < c.fixed.rel_ci[0] < c.rel_lift < c.fixed.rel_ci[1]


def test_copies_the_routers_could_not_send_are_said_in_the_shadow_line_and_survive_a_restart():
    # A slow shadow's dropped copies appeared nowhere (a live audit: 265 of 1,421).
    figures = ExperimentStats(["v1", "v2", "v3"], 0.0, shadow_version="v3")
    interval = IntervalAggregate()
    for _ in range(7):
        interval.dropped("v3")
    interval.pair("v1", "v3", 0, 0, None, 2.0, None, unit=1)
    figures.merge(1.0, interval)
    restored = ExperimentStats.from_state(json.loads(json.dumps(figures.to_state(2.0))), shadow_version="v3")
    report, _ = build_report(make_cfg(), restored.snapshot(2.0), {"v1": 50, "v2": 50})
    assert (report.shadow.mirrored, report.shadow.dropped) == (1, 7)
    assert "shadow v3: 1 mirrored, 1 paired, 0 errors (0.00%); 7 not sent: the shadow fell behind the live " \
           "traffic" in " ".join(render_table(report).split())  # as one line, however wrapped


def test_requests_pinned_to_the_shadow_make_it_no_variant_of_the_test():
    # QA pinning v3 (the shadow, weight 0) turned "v1 alone" into "control v1 vs v3", with
    # "not enough data" verdicts for a version the split never routed to (a live audit).
    figures = ExperimentStats(["v1", "v2", "v3"], 0.0, shadow_version="v3")
    for i in range(40):
        figures.record(1.0, "v1", 2.0, None, 0, unit=i, assigned=True)
        figures.record(1.0, "v3", 2.0, None, 0, unit=i, assigned=False)  # pinned
    report, _ = build_report(make_cfg(), figures.snapshot(2.0), {"v1": 100, "v2": 0, "v3": 0})
    assert report.experiment.variants == []
    assert {c.variant for m in report.metrics for c in m.comparisons} == set()
    assert report.variants["v3"].role == "shadow"  # not variant+shadow: only pinned requests


def test_an_arms_latency_percentiles_are_its_assigned_answers_not_its_pinned_or_fallback_ones():
    # They came from the version's whole sketch: 40 slow pinned answers in 340 made v1's p95
    # the pinned ones' 200 ms beside a value (the mean per assigned request) of about 11.
    rng = np.random.default_rng(5)
    weights = {"v1": 50, "v2": 50}
    interval = IntervalAggregate()
    assigned = {"v1": rng.uniform(10.0, 12.0, 300), "v2": rng.uniform(20.0, 22.0, 300)}
    rows = [(v, float(ms), None, 0, None, (0 if v == "v1" else NUM_BUCKETS // 2) + i % 97, True, False, 0, None)
            for v in ("v1", "v2") for i, ms in enumerate(assigned[v])]
    rows += [("v1", 200.0 + i, None, 0, None, i, False, False, 0, None) for i in range(40)]  # QA's, pinned
    rows += [("v2", 500.0, None, 0, None, i, False, False, 0, None) for i in range(5)]  # a fallback's retries
    interval.served_rows(rows, {0: weights})
    figures = ExperimentStats(["v1", "v2"], 0.0)
    figures.merge(1.0, interval)
    # Through a save and a restart, as the controller's report after one reads it.
    restored = ExperimentStats.from_state(json.loads(json.dumps(figures.to_state(2.0))))
    report, _ = build_report(make_cfg(shadow=None, weights=weights), restored.snapshot(2.0), weights)
    arms = _metric(report, "latency_ms").arms
    for v in ("v1", "v2"):
        for q in (50, 95):
            assert getattr(arms[v], f"p{q}") == pytest.approx(np.percentile(assigned[v], q), rel=SKETCH_REL), (v, q)
    # The version's own figures still count every answer it gave.
    assert report.variants["v1"].latency_ms.p95 == pytest.approx(np.percentile(
        np.concatenate([assigned["v1"], 200.0 + np.arange(40)]), 95), rel=SKETCH_REL)


def test_an_arm_with_no_errors_gets_an_interval_above_zero_and_one_error_a_wider_one():
    # The delta method gave "0 errors in 683 users" the interval [0, 0], drawn as no bar (an
    # audit of the HTML plots). With no spread to measure a design effect by, every request
    # counts: Wilson's bound z^2 / (n + z^2). One error (no clustering to see either) widens it;
    # one trial per user at 0 read 0.95% with no error against 0.47% with one (the review).
    def v1_arm(errors_in_users):
        figures = ExperimentStats(["v1", "v2"], 0.0)
        for user in range(400):  # at 50/50 buckets 0-4999 are v1's, 5000-9999 v2's
            for version, unit in (("v1", user), ("v2", NUM_BUCKETS // 2 + user)):
                for request in range(3):
                    error = "model" if version == "v1" and user in errors_in_users and request == 0 else None
                    figures.record(1.0, version, 2.0, error, 0, unit=unit, assigned=True, split={"v1": 50, "v2": 50})
        report, _ = build_report(make_cfg(shadow=None, weights={"v1": 50, "v2": 50}), figures.snapshot(2.0),
                                 {"v1": 50, "v2": 50})
        return report, _metric(report, "error_rate").arms["v1"]

    report, none = v1_arm(set())
    assert none.value == 0.0 and none.n == 400 and none.total == 1200
    z = stats.norm.ppf(1 - report.experiment.alpha / 2)
    assert none.ci == pytest.approx([0.0, z * z / (1200 + z * z)], rel=1e-9)
    arms = [v1_arm(set(range(k)))[1] for k in (0, 1, 5, 40)]
    assert [a.n for a in arms] == [400] * 4
    highs = [a.ci[1] for a in arms]
    assert highs == sorted(highs) and len(set(highs)) == 4  # more errors, never a lower upper bound
    low, high = arms[-1].ci
    assert 0.0 < low < arms[-1].value < high < 1.0


@pytest.mark.parametrize("users, visits", [(2_000, 3_000), (40_000, 60_000)])
def test_the_plan_in_users_holds_as_users_come_to_share_buckets(users, visits):
    # The plan counts buckets: with 15,000 users an arm at 50/50 fills its 5,000 buckets three
    # deep and the count of buckets planned fell below a third of the users needed (an audit:
    # 8,290 then 1,747 "per arm" for one 8,478-user plan). data_multiple times the users so far
    # is the per-user plan however full the buckets are.
    cfg = make_cfg(shadow=None, analysis={"sequential": False, "metrics": [{"name": "correct", "kind": "conversion"}]})
    sim = Sim(cfg, seed=21, users=users).run(visits, correct={"v1": 0.6, "v2": 0.6})
    report, _ = sim.report()
    c = _cmp(report, "correct")
    p = c.power
    # The reference: each user a cluster (not their bucket), statsmodels' cluster-robust
    # variance and NormalIndPower's users per arm at the report's alpha and effect.
    per_user, seen = [], []
    for version in ("v1", "v2"):
        y, _ = sim.outcomes("correct", version)
        units = [r.unit for r in sim.rows if r.assigned and r.version == version and "correct" in r.feedback]
        _, var, clusters = cluster_mean(y, np.asarray(units))
        per_user.append(var * clusters)
        seen.append(clusters)
    es = p.mde_abs / math.sqrt(sum(per_user) / 2)
    needed = NormalIndPower().solve_power(effect_size=es, alpha=p.alpha_per_comparison, power=p.target, ratio=1.0)
    assert p.data_multiple * max(seen) == pytest.approx(needed, rel=0.1)
    buckets_full = users > NUM_BUCKETS
    assert (p.required_per_arm < 0.5 * needed) == buckets_full  # what the buckets alone said


def test_the_report_counts_the_rows_of_batched_requests_that_no_shadow_figure_compares():
    """Only a request's first row is compared (analysis/tasks.py). A shadow that differs from
    live on rows 2..8 of every batch of 8 agrees on every pair: the report must say how many
    rows it never compared, through a router's interval, the controller's figures, a restart
    and the table."""
    from serve_ab.analysis.tasks import CLASSIFICATION

    live = np.tile(np.eye(10)[3], (8, 1))
    shadow = live.copy()
    shadow[1:] = np.eye(10)[0]  # every row but the first answers another class
    interval = IntervalAggregate()
    for _ in range(5):
        pair = CLASSIFICATION.compare(live, shadow)
        interval.pair("v1", "v3", pair.live_class, pair.shadow_class, pair.score_diff, 2.0, None, comparison=pair)
    single = CLASSIFICATION.compare(live[:1], shadow[:1])
    interval.pair("v1", "v3", single.live_class, single.shadow_class, single.score_diff, 2.0, None, comparison=single)
    figures = ExperimentStats(["v1", "v2", "v3"], 0.0, shadow_version="v3")
    figures.merge(1.0, interval)
    restored = ExperimentStats.from_state(figures.to_state(2.0), shadow_version="v3")
    for stats_ in (figures, restored):
        report, _ = build_report(make_cfg(), stats_.snapshot(2.0), {"v1": 50, "v2": 50})
        assert (report.shadow.pairs, report.shadow.agreement.agree) == (6, 6)
        assert report.shadow.rows_not_compared == 5 * 7
    text = " ".join(" ".join(_shadow_lines(report.shadow)).split())
    assert "only each request's first row is compared: 35 rows of batched requests not compared" in text


def test_single_row_requests_leave_no_row_uncompared_and_say_nothing_of_batches():
    from serve_ab.analysis.tasks import TaskRule

    figures = ExperimentStats(["v1", "v2", "v3"], 0.0, shadow_version="v3")
    rule = TaskRule("regression", tolerance=5.0)
    for value in (100.0, 120.0):
        pair = rule.compare(np.array([[value]]), np.array([[value + 1.0]]))
        figures.record_pair(1.0, "v1", None, None, pair.score_diff, 2.0, None, comparison=pair)
    report, _ = build_report(make_cfg(), figures.snapshot(2.0), {"v1": 50, "v2": 50})
    assert report.shadow.rows_not_compared == 0
    assert "first row" not in " ".join(_shadow_lines(report.shadow))


def test_an_embedding_shadows_cosine_p5_and_min_are_read_where_thresholds_sit():
    """Cosines near 1 (here 0.9938-0.9950, threshold 0.99): a log sketch of the cosine itself
    holds each within 1% of 1, the whole gap to the threshold, and read a p5 of 0.9949, above
    the mean (live, drift46). 1 - cosine is sketched, so p5 is within 1% of its gap to 1."""
    from serve_ab.analysis.tasks import TaskRule

    rule = TaskRule("embedding", threshold=0.99)
    rng = np.random.default_rng(7)
    cosines = rng.uniform(0.9938, 0.9950, 400)
    figures = ExperimentStats(["v1", "v2", "v3"], 0.0, shadow_version="v3")
    live = np.array([[1.0, 0.0]])
    for c in cosines:
        pair = rule.compare(live, np.array([[c, math.sqrt(1 - c * c)]]))
        figures.record_pair(1.0, "v1", None, None, None, 2.0, None, comparison=pair)
    cfg = make_cfg(versions=[{"name": n, "path": f"{n}.onnx", "backend": "onnx", "task": "embedding"}
                             for n in ("v1", "v2", "v3")])
    for stats_ in (figures, ExperimentStats.from_state(figures.to_state(2.0), shadow_version="v3")):
        similarity = build_report(cfg, stats_.snapshot(2.0), {"v1": 50, "v2": 50})[0].shadow.similarity
        true_p05 = float(np.quantile(cosines, 0.05))
        assert abs((1 - similarity.p05) - (1 - true_p05)) <= 0.02 * (1 - true_p05)
        assert similarity.p05 < similarity.mean
        assert similarity.min == pytest.approx(cosines.min(), abs=1e-12)


def test_a_router_or_state_that_sketched_the_cosine_itself_is_still_read():
    import pickle

    from serve_ab.analysis.sketch import LogHistogram

    figures = ExperimentStats(["v1", "v2", "v3"], 0.0, shadow_version="v3")
    old = figures.shadow
    cosines = [0.5, 0.8, 0.9]
    old.__dict__.pop("dissimilarity_sketch")
    old.__dict__["similarity_sketch"] = LogHistogram.of(cosines)  # as an older router pickled it
    restored = pickle.loads(pickle.dumps(old))
    assert restored.dissimilarity_sketch.count == 3 and "similarity_sketch" not in vars(restored)
    assert 1 - restored.dissimilarity_sketch.max == pytest.approx(0.5)
    state = ExperimentStats(["v1", "v2", "v3"], 0.0, shadow_version="v3").to_state(2.0)
    state["shadow"]["similarity"] = {"n": 3, "sum": sum(cosines), "sum_sq": sum(c * c for c in cosines),
                                     "sketch": LogHistogram.of(cosines).to_wire()}
    back = ExperimentStats.from_state(state, shadow_version="v3")
    assert back.shadow.dissimilarity_sketch.count == 3
    assert 1 - back.shadow.dissimilarity_sketch.max == pytest.approx(0.5)


def test_a_router_pickle_carries_the_cosine_sketch_a_controller_of_the_code_before_merges():
    # A rolling upgrade replaces routers before the controller: the old controller's merge
    # reads other.similarity_sketch (cosines). Without it the merge raised AttributeError after
    # merging pairs and agreements (checked with the code of a2c6a3e: pairs 200 merged, then the raise).
    import pickle

    from serve_ab.analysis.tasks import TaskRule

    figures = ExperimentStats(["v1", "v2", "v3"], 0.0, shadow_version="v3")
    rule = TaskRule("embedding", threshold=0.9)
    live = np.array([[1.0, 0.0]])
    cosines = np.linspace(0.5, 0.999, 200)
    for c in cosines:
        figures.record_pair(1.0, "v1", None, None, None, 2.0, None,
                            comparison=rule.compare(live, np.array([[c, math.sqrt(1 - c * c)]])))
    _, _, state, *_ = figures.shadow.__reduce_ex__(2)
    cosine_sketch = state["similarity_sketch"]  # what the old __setstate__ and merge read
    assert cosine_sketch.count == 200
    assert cosine_sketch.min == pytest.approx(0.5) and cosine_sketch.max == pytest.approx(0.999)
    true_p05 = float(np.quantile(cosines, 0.05))
    assert abs(cosine_sketch.quantile(0.05) - true_p05) <= 0.02 * true_p05
    # The new code reads the new sketch and drops the copy for the old one.
    restored = pickle.loads(pickle.dumps(figures.shadow))
    assert "similarity_sketch" not in vars(restored)
    assert restored.dissimilarity_sketch.counts.tolist() == figures.shadow.dissimilarity_sketch.counts.tolist()


def _two_routers_at_the_switch(straggler_s: float | None, rollback_s: float | None = None):
    """v1 alone, then v1/v2 published at t 10, two router replicas: the first reports its
    first 50/50 answers at t 11; the second reports an answer chosen under v1 alone (in flight
    at the switch) at ``straggler_s``. ``rollback_s``: v1 alone published again then, with an
    answer under it."""
    rng = np.random.default_rng(3)
    units = rng.choice(2**62, 2000, replace=False).tolist()
    level = rng.normal(20.0, 5.0, 2000)
    pre, post = {"v1": 100.0, "v2": 0.0, "v3": 0.0}, {"v1": 50.0, "v2": 50.0, "v3": 0.0}
    stats = ExperimentStats(["v1", "v2", "v3"], 0.0, feedback_kinds={"revenue": "mean"})
    for weights, published_s, reported_s in ((pre, 0.0, 1.0), (post, 10.0, 11.0)):
        stats.set_weights(weights, published_s)
        table = SplitTable.from_weights(weights)
        aggregate = IntervalAggregate()
        for unit, mu in zip(units, level.tolist()):
            version = table.version_for_bucket(unit % NUM_BUCKETS)
            aggregate.served(version, 1.0, None, 1, 0.9, unit=unit, assigned=True, mirrored=False, split=0,
                             weights_pct=weights)
            stats.record_feedback(reported_s, version, "revenue", float(rng.normal(mu, 3.0)), None, unit=unit,
                                  split=weights)
        stats.merge(reported_s, aggregate)
    late = [(straggler_s, None)] if straggler_s is not None else []
    if rollback_s is not None:
        stats.set_weights(pre, rollback_s)
        late.append((rollback_s + 1.0, None))
    for at_s, _ in late:
        aggregate = IntervalAggregate()
        aggregate.served("v1", 1.0, None, 1, 0.9, unit=units[0], assigned=True, mirrored=False, split=0,
                         weights_pct=pre)
        stats.merge(at_s, aggregate)
    cfg = make_cfg(weights={"v1": 50, "v2": 50}, shadow=None,
                   analysis={"metrics": [{"name": "revenue", "kind": "mean"}]})
    return _cmp(build_report(cfg, stats.snapshot(30.0), post)[0], "revenue")


def test_a_pre_period_answer_reported_late_by_another_router_keeps_cuped():
    """The pre-period ends when the controller published the new weights, not when the last of
    its answers arrived: a second router's answer in flight at the switch, reported 0.4 s after
    the first router's first 50/50 report, switched CUPED off (variance -54% read as none)."""
    on_time = _two_routers_at_the_switch(None)
    late = _two_routers_at_the_switch(11.4)
    assert on_time.cuped is not None and on_time.cuped.variance_reduction > 0.4
    assert late.cuped is not None
    assert late.cuped.variance_reduction == pytest.approx(on_time.cuped.variance_reduction, abs=0.01)
    # v1 alone routed by again after v2 had traffic (a rollback): no longer a pre-period.
    assert _two_routers_at_the_switch(None, rollback_s=20.0).cuped is None
