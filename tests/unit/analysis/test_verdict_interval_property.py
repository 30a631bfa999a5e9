"""A verdict never contradicts the interval shown with it (hypothesis, through the real pipeline).

Random experiments (users or keyless requests, rates and means, one to three splits with a
drifting base rate, sometimes a pre-period for CUPED, one or two variants, sequential on or
off, every correction) are fed through ExperimentStats and read by build_report at several
looks, the sequential state carried from look to look as the controller carries it. At every
look, for every metric and comparison:

- better/worse: ``abs_ci`` lies entirely on that side of 0 (given the metric's direction), and
  ``rel_ci``, when both bounds are known, does not contain 0; ``abs_ci`` is empty (lo > hi) only
  for a sequential verdict whose note says its confidence sequence is empty;
- no_difference: ``abs_ci`` contains 0;
- the fixed-horizon verdict is decided exactly when ``p_adjusted < alpha``, and then its own
  interval excludes 0.
"""

from __future__ import annotations

import math
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.analysis.test_report import Sim, make_cfg

DECIDED = ("better", "worse")


def _split_weights(draw, variants: list[str]) -> dict[str, float]:
    control = draw(st.sampled_from([10, 20, 30, 50, 70, 80, 90]))
    if len(variants) == 1:
        return {"v1": control, variants[0]: 100 - control, **({} if "v3" in variants else {"v3": 0})}
    first = draw(st.integers(1, 99 - control))
    return {"v1": control, "v2": first, "v3": 100 - control - first}


@st.composite
def experiments(draw):
    variants = draw(st.sampled_from([["v2"], ["v2", "v3"]]))
    weights = {"v1": 50, "v2": 50} if variants == ["v2"] else {"v1": 40, "v2": 30, "v3": 30}
    cfg = make_cfg(shadow=None, weights=weights, analysis={
        "sequential": draw(st.booleans()), "correction": draw(st.sampled_from(["holm", "bh", "none"])),
        "cuped": draw(st.booleans()), "mde_relative": draw(st.sampled_from([0.05, 0.3])),
        "metrics": [{"name": "correct", "kind": "conversion"}, {"name": "revenue", "kind": "mean"}]})
    splits = [_split_weights(draw, variants) for _ in range(draw(st.integers(1, 3)))]
    if draw(st.booleans()):  # a pre-period: the control alone, before the variants
        splits.insert(0, {"v1": 100, "v2": 0, "v3": 0})
    base = draw(st.floats(0.05, 0.9))
    lift = {v: draw(st.sampled_from([0.0, 0.0, 0.1, -0.1, 0.3, -0.3, 0.6, -0.6])) for v in variants}
    error = draw(st.sampled_from([0.0, 0.01, 0.05]))
    return {
        "cfg": cfg, "seed": draw(st.integers(0, 10**6)),
        "users": draw(st.one_of(st.none(), st.integers(40, 3000))),
        "splits": [(w, draw(st.integers(40, 500)), draw(st.floats(0.6, 1.4))) for w in splits],
        "correct": {"v1": base, **{v: min(0.99, base * (1 + lift[v])) for v in variants}},
        "revenue": {"v1": 10.0, **{v: 10.0 * (1 + lift[v] / 3) for v in variants}},
        "error_rate": {"v1": error, **{v: error * (1 + 2 * abs(lift[v])) for v in variants}},
        "latency_scale": {v: 1 + lift[v] / 3 for v in variants},
    }


def _contains_zero(ci) -> bool:
    lo, hi = ci
    return (lo is None or lo <= 0) and (hi is None or hi >= 0)


def _check(report) -> int:
    """The properties at one look; the number of decided verdicts seen."""
    alpha = report.experiment.alpha
    decided = 0
    for metric in report.metrics:
        for c in metric.comparisons:
            where = (metric.name, c.variant, c.verdict, c.verdict_basis, c.abs_ci, c.rel_ci)
            if c.verdict in DECIDED:
                decided += 1
                up = (c.verdict == "better") == (metric.direction == "increase")  # the effect's sign
                lo, hi = c.abs_ci
                if up:
                    assert lo is not None and lo > 0, where
                else:
                    assert hi is not None and hi < 0, where
                if None not in c.abs_ci and lo > hi:  # looks that disagree beyond their sequences
                    assert c.verdict_basis == "sequential" and "empty" in (c.verdict_note or ""), where
                if None not in c.rel_ci:
                    assert not c.rel_ci[0] <= 0 <= c.rel_ci[1], where
                    assert (c.rel_ci[0] > 0) == up, where
            elif c.verdict == "no_difference":
                assert _contains_zero(c.abs_ci), where
            if c.verdict_basis == "sequential" and c.sequential is not None:
                assert c.abs_ci == c.sequential.ci and c.verdict == c.sequential.verdict, where
            fixed = c.fixed
            if fixed is not None:
                fixed_decided = fixed.verdict in DECIDED
                assert fixed_decided == (fixed.p_adjusted < alpha), (where, fixed)
                assert fixed_decided == (not _contains_zero(fixed.abs_ci)), (where, fixed)
                assert c.p_adjusted == fixed.p_adjusted and c.p_value == fixed.p_value
                if fixed_decided and None not in fixed.rel_ci:
                    assert not fixed.rel_ci[0] <= 0 <= fixed.rel_ci[1], (where, fixed)
                if c.p_adjusted is not None:
                    assert c.p_value <= c.p_adjusted + 1e-12 and math.isfinite(c.p_adjusted)
    return decided


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(experiments())
def test_every_verdict_agrees_with_the_interval_shown_at_every_look(experiment):
    sim = Sim(experiment["cfg"], seed=experiment["seed"], users=experiment["users"])
    _looks(sim, experiment)


def _looks(sim, experiment) -> Counter:
    """Feeds the experiment's splits, two looks each, checking every look; counts the verdicts
    seen by basis (how much a run exercised)."""
    state, seen = None, Counter()
    for weights, visits, drift in experiment["splits"]:
        sim.set_split(weights)
        for share in (0.5, 0.5):
            sim.run(int(visits * share), error_rate=experiment["error_rate"],
                    latency_scale=experiment["latency_scale"],
                    correct={v: min(0.99, p * drift) for v, p in experiment["correct"].items()},
                    revenue={v: m * drift for v, m in experiment["revenue"].items()})
            report, state = sim.report(state=state)
            _check(report)
            seen.update((c.verdict_basis, c.verdict) for m in report.metrics for c in m.comparisons)
    return seen
