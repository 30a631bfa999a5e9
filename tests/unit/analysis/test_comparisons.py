"""comparisons.judge: guardrails, the fixed-horizon verdict's wait and freeze, the sequential
verdict's permanence, on hand-built ratio comparisons looked at one after another."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from serve_ab.analysis import power
from serve_ab.analysis.comparisons import Family, MetricSpec, fixed_p, judge
from serve_ab.analysis.sequential import confidence_sequence_half_width
from serve_ab.analysis.units import RatioComparison

ERRORS = MetricSpec("error_rate", "conversion", "requests", "error_rate", "decrease", "errors per request", True,
                    ("abs", 0.01))
LATENCY = MetricSpec("latency_ms", "mean", "requests", "latency_ms", "decrease", "ms per request", True,
                     ("relative", 0.10))
CORRECT = MetricSpec("correct", "conversion", "feedback", "feedback/correct", "increase", "rate per report", True)
FAMILY = Family(size=5, alpha=0.05, correction="holm")


def _ratio(value_v, value_c, var_v, var_c=None, units=1000, cov=0.0):
    return RatioComparison(value_v, value_c, var_v, var_c if var_c is not None else var_v, cov, units, units, 1,
                           (1.0,))


def _rate(p_v, p_c, units):
    """Rates with one request per unit: binomial variances."""
    return _ratio(p_v, p_c, p_v * (1 - p_v) / units, p_c * (1 - p_c) / units, units)


def _look(spec, ratio, previous=None, *, sequential=True, family=FAMILY):
    p = fixed_p(ratio) if ratio is not None and ratio.var_diff > 0 else math.nan
    p_adjusted = 1.0 if math.isnan(p) else min(1.0, p * family.size)
    figures, state = judge(spec, ratio, variant="v2", control="v1", family=family, p_adjusted=p_adjusted,
                           previous=previous, sequential_on=sequential, min_units=30, mde_relative=0.05,
                           target_power=0.8, allocation_pct=(50.0, 50.0))
    return figures, json.loads(json.dumps(state))  # the state travels as JSON


# ---- guardrails -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant, var, status", [
    (0.0105, 1e-8, "non_inferior"),  # half a point up, measured to a hundredth of one: within the margin
    (0.05, 1e-8, "inferior"),  # four points up: past the 1-point margin
    (0.015, 1e-4, "inconclusive"),  # a sequence wider than the margin
])
def test_the_error_rate_guardrail_on_clear_cases(variant, var, status):
    figures, _ = _look(ERRORS, _ratio(variant, 0.01, var))
    guard = figures["guardrail"]
    assert guard["status"] == status and guard["margin_abs"] == 0.01 and guard["alpha"] == 0.05
    lo, hi = guard["ci"]
    assert lo <= variant - 0.01 <= hi
    assert (hi < 0.01) == (status == "non_inferior") and (lo > 0.01) == (status == "inferior")


@pytest.mark.parametrize("variant, status", [(101.0, "non_inferior"), (130.0, "inferior"), (110.0, "inconclusive")])
def test_the_latency_guardrail_is_relative_to_the_controls_mean(variant, status):
    figures, _ = _look(LATENCY, _ratio(variant, 100.0, 0.25))
    guard = figures["guardrail"]
    assert guard["margin_kind"] == "relative" and guard["margin_abs"] == pytest.approx(10.0)
    assert guard["status"] == status


def test_for_a_higher_is_better_metric_the_margin_is_below():
    spec = MetricSpec("correct", "conversion", "feedback", "feedback/correct", "increase", "rate", True, ("abs", 0.02))
    assert _look(spec, _ratio(0.495, 0.5, 1e-7))[0]["guardrail"]["status"] == "non_inferior"
    assert _look(spec, _ratio(0.40, 0.5, 1e-7))[0]["guardrail"]["status"] == "inferior"


def test_a_metric_without_a_margin_has_no_guardrail():
    assert _look(CORRECT, _rate(0.5, 0.5, 5000))[0]["guardrail"] is None


# ---- the fixed-horizon verdict: withheld, then frozen -------------------------------------------


def _fixed_looks():
    """Rates 52% against 50% at growing sizes (the plan needs ~9,000 units per arm at alpha/5),
    then a look whose data would say the opposite."""
    return [_rate(0.52, 0.50, n) for n in (1000, 4000, 20000)] + [_rate(0.48, 0.50, 40000)]


def test_the_fixed_horizon_verdict_is_withheld_until_the_plan_is_complete_then_frozen():
    # Regression: the plan passed tau to the fixed-horizon test, which refuses it, so there was
    # no plan, and the verdict was withheld for ever.
    state = None
    outs = []
    for ratio in _fixed_looks():
        out, state = _look(CORRECT, ratio, state, sequential=False)
        outs.append(out)
    for out in outs:
        assert out["verdict_basis"] == "fixed_horizon" and out["sequential"] is None
        assert out["power"] is not None, out["power_note"]
        assert out["power"]["test"].startswith("z-test")
    before, complete, later = outs[:2], outs[2], outs[3]
    for out in before:
        assert not out["power"]["complete"]
        assert out["verdict"] == "not_enough_data" and "withheld" in out["verdict_note"]
        assert out["fixed"]["p_value"] is not None  # the figures are there, only the verdict waits
    assert complete["power"]["complete"] and complete["verdict"] == complete["fixed"]["verdict"] == "better"
    assert complete["abs_ci"] == complete["fixed"]["abs_ci"] and complete["abs_ci"][0] > 0
    # Frozen: a later look's own data say worse, the verdict and the figures of its test stay.
    assert later["value_variant"] < later["value_control"] and later["fixed"] == complete["fixed"]
    assert later["verdict"] == "better" and later["abs_ci"] == complete["abs_ci"]
    assert later["rel_ci"] == complete["rel_ci"]
    assert state["frozen"]["verdict"] == "better"


def test_a_frozen_fixed_verdict_survives_a_look_without_enough_units():
    state = None
    for ratio in _fixed_looks()[:3]:
        frozen, state = _look(CORRECT, ratio, state, sequential=False)
    assert frozen["verdict"] == "better"
    for ratio in (None, _rate(0.40, 0.50, 10)):  # no split with both arms yet; fewer units than the minimum
        out, after = _look(CORRECT, ratio, state, sequential=False)
        assert after == state  # the whole record carried over, the frozen verdict included
        assert out["verdict"] == "better" and out["abs_ci"] == frozen["abs_ci"] and out["rel_ci"] == frozen["rel_ci"]
    out, _ = _look(CORRECT, _fixed_looks()[3], after, sequential=False)
    assert out["verdict"] == "better" and out["abs_ci"] == frozen["abs_ci"]


def test_beside_a_frozen_fixed_verdict_the_lift_and_p_are_the_frozen_looks_own():
    # Regression: the verdict and intervals were frozen but the lift and p-values kept moving, so
    # "better" sat beside a negative lift outside its own interval.
    state = None
    for ratio in _fixed_looks()[:3]:
        complete, state = _look(CORRECT, ratio, state, sequential=False)
    for ratio in (_fixed_looks()[3], None, _rate(0.40, 0.50, 10)):
        later, state = _look(CORRECT, ratio, state, sequential=False)
        assert later["verdict"] == "better"
        for key in ("abs_lift", "rel_lift", "p_value", "p_adjusted", "abs_ci", "rel_ci", "fixed"):
            assert later[key] == complete[key], key
        assert later["abs_ci"][0] <= later["abs_lift"] <= later["abs_ci"][1]
        assert later["rel_ci"][0] <= later["rel_lift"] <= later["rel_ci"][1]
        assert "planned sample (20,000 vs 20,000 units)" in later["verdict_note"]
    # This look's estimate stays in the values, which are this look's.
    later, _ = _look(CORRECT, _fixed_looks()[3], state, sequential=False)
    assert later["value_variant"] - later["value_control"] == pytest.approx(-0.02)


def test_a_frozen_state_without_its_estimate_says_why_the_estimate_is_outside_the_interval():
    """A state frozen before the look's estimate was saved: this look's estimate stays, with a note."""
    state = None
    for ratio in _fixed_looks()[:3]:
        _, state = _look(CORRECT, ratio, state, sequential=False)
    state["frozen"] = {k: state["frozen"][k] for k in ("verdict", "abs_ci", "rel_ci", "p_adjusted")}
    out, _ = _look(CORRECT, _fixed_looks()[3], state, sequential=False)
    assert out["verdict"] == "better" and out["abs_lift"] == pytest.approx(-0.02)
    assert "outside its interval" in out["verdict_note"] and "frozen at the planned sample" in out["verdict_note"]


def test_a_look_without_enough_units_keeps_the_tau_the_guardrail_and_the_decision():
    decided, state = _look(ERRORS, _rate(0.04, 0.01, 5000))
    assert decided["verdict"] == "worse" and state["decided"] == "worse"
    assert {"tau", "seq", "guard", "decided"} <= state.keys()
    for ratio in (None, _rate(0.01, 0.04, 10)):
        out, after = _look(ERRORS, ratio, state)
        assert after == state
        assert out["verdict"] == "worse" and out["abs_ci"] == decided["abs_ci"]
        assert out["sequential"]["looks"] == 1 and out["sequential"]["tau"] == state["tau"]
    # The next look with data goes on from that record: same tau, second look, same guardrail sequence.
    out, later = _look(ERRORS, _rate(0.04, 0.01, 6000), after)
    assert later["tau"] == state["tau"] and later["guard"]["tau"] == state["guard"]["tau"]
    assert out["sequential"]["looks"] == 2 and later["guard"]["looks"] == 2 and out["verdict"] == "worse"


# ---- the sequential verdict stands --------------------------------------------------------------


def _stream(rng, lift, looks=10, per_look=1000, base=0.5):
    """Cumulative rates of two arms read at ``looks`` looks."""
    conv = np.zeros(2)
    out = []
    for k in range(1, looks + 1):
        conv += rng.binomial(per_look, [base * (1 + lift), base])
        n = k * per_look
        out.append(_rate(conv[0] / n, conv[1] / n, n))
    return out


@pytest.mark.parametrize("lift", [0.0, 0.08, -0.07])
def test_a_sequential_verdict_once_reached_never_flips_back(lift):
    rng = np.random.default_rng(int(abs(lift) * 1000) + (lift < 0))
    decided, streams = 0, 12
    for _ in range(streams):
        state, verdict, last = None, None, None
        for ratio in _stream(rng, lift):
            out, state = _look(CORRECT, ratio, state)
            seq = out["sequential"]
            if last is not None:  # a running minimum and a running intersection
                assert seq["p_value"] <= last["p_value"]
                assert seq["ci"][0] >= last["ci"][0] and seq["ci"][1] <= last["ci"][1]
            last = seq
            if verdict in ("better", "worse"):
                assert out["verdict"] == verdict
            verdict = out["verdict"]
            assert out["abs_ci"] == seq["ci"] and out["verdict"] == seq["verdict"]
        decided += verdict in ("better", "worse")
    if lift == 0.0:
        assert decided <= 2  # at alpha / 5 = 1% per stream
    else:
        assert decided >= streams // 2  # not vacuous: most streams reach a verdict


def test_a_sequential_verdict_survives_a_look_without_enough_units():
    out, state = _look(CORRECT, _rate(0.6, 0.5, 5000))
    assert out["verdict"] == "better"
    out, state = _look(CORRECT, None, state)
    assert out["verdict"] == "better" and out["sequential"]["looks"] == 1
    out, _ = _look(CORRECT, _rate(0.6, 0.5, 6000), state)
    assert out["verdict"] == "better" and out["sequential"]["looks"] == 2


def test_a_look_that_contradicts_the_earlier_ones_starts_the_sequence_again():
    """Once this look's sequence missed the earlier looks' intersection (lo > hi), the first
    verdict stood: a live audit's late feedback (a version's "yes" answers first, its "no"
    answers later) kept BETTER beside a lift of -44 pp at p = 3e-57. Under the model the
    truth is in every look's sequence, so such looks mean the figures changed under it: the
    sequence starts again from this look, and says so. (Before that, an earlier fix had kept
    the first verdict rather than follow the sign of lo + hi, an empty interval's midpoint.)"""
    out, state = _look(CORRECT, _ratio(0.60, 0.50, 1e-4))  # +0.10, Var D = 2e-4
    assert out["verdict"] == "better" and state["decided"] == "better" and "verdict_note" not in out
    # The effect reverses, measured far more precisely.
    out, state = _look(CORRECT, _ratio(0.40, 0.50, 1e-6, units=100_000), state)  # -0.10, Var D = 2e-6
    assert out["verdict"] == out["sequential"]["verdict"] == "worse" and state["decided"] == "worse"
    lo, hi = out["abs_ci"]
    assert out["abs_ci"] == out["sequential"]["ci"] and lo < -0.1 < hi < 0  # this look's sequence alone
    assert out["sequential"]["p_value"] < 1e-10 and out["sequential"]["looks"] == 2
    assert out["verdict_note"].startswith("the sequence started again at look 2 (200,000 units), whose own "
                                          "sequence did not overlap the earlier looks' [")
    assert out["verdict_note"].endswith("the verdict is from the looks since (before it: better)")
    # Later looks intersect from there on, the verdict stands as before, and every report says
    # why (a live check: the note was gone a second after the look that restarted).
    note = out["verdict_note"]
    out, state = _look(CORRECT, _ratio(0.40, 0.50, 1e-6, units=200_000), state)
    assert out["verdict"] == "worse" and out["verdict_note"] == note and out["sequential"]["looks"] == 3
    assert out["abs_ci"][0] >= lo and out["abs_ci"][1] <= hi
    out, state = _look(CORRECT, _ratio(0.40, 0.50, 1e-6, units=10), state)  # too few units: as it stood
    assert out["verdict"] == "worse" and out["verdict_note"] == note
    # A second restart counts both, and names the verdict just before it.
    out, state = _look(CORRECT, _ratio(0.60, 0.50, 1e-6, units=300_000), state)
    assert out["verdict"] == "better" and out["verdict_note"].startswith(
        "the sequence started again at look 4 (600,000 units; 2 restarts in all)")
    assert out["verdict_note"].endswith("(before it: WORSE)")
    # An estimate outside the interval after a restart is said beside the restart, not hidden by it.
    restart_note = out["verdict_note"]
    out, _ = _look(CORRECT, _ratio(0.50, 0.50, 1e-2, units=300_000), state)
    assert out["verdict_note"].startswith(restart_note + "; at this look the estimate 0 is outside its interval")


def test_an_estimate_outside_the_intersected_interval_is_said():
    """Late outcomes can move the estimate outside the intersection of every look's sequence
    without leaving it empty: the audit saw -0.78 pp beside [+1.92, +2.58] and BETTER."""
    out, state = _look(CORRECT, _ratio(0.60, 0.50, 1e-4))  # +0.10 [~+0.03, ~+0.17]
    out, _ = _look(CORRECT, _ratio(0.49, 0.50, 4e-3), state)  # -0.01, a wide sequence that overlaps
    lo, hi = out["abs_ci"]
    assert out["verdict"] == "better" and 0 < lo < hi
    assert out["verdict_note"].startswith(f"at this look the estimate {-0.01:.4g} is outside its interval "
                                          f"[{lo:.4g}, {hi:.4g}]")
    assert "which intersects every look's sequence" in out["verdict_note"]


def test_the_relative_interval_of_a_sequential_verdict_never_contains_zero():
    """The first look rejects while Fieller's set is two rays; for a rate (never below 0) the
    negative ray is impossible, so the look bounds the relative lift from below (>= 2.51),
    and a later, noisier look cannot show an interval that reaches below 0."""
    def look(value_v, value_c, var_v, var_c, previous):
        ratio = _ratio(value_v, value_c, var_v, var_c)
        return judge(CORRECT, ratio, variant="v2", control="v1", family=Family(1, 0.05, "none"),
                     p_adjusted=fixed_p(ratio), previous=previous, sequential_on=True, min_units=30,
                     mde_relative=10.0, target_power=0.8, allocation_pct=(50.0, 50.0))

    # The control's rate is not clearly away from 0: Fieller's set is unbounded, the look rejects.
    out, state = look(0.30, 0.02, 1e-5, 4e-4, None)
    assert out["verdict"] == "better" and out["rel_ci"][1] is None
    # A later, noisier look that does not reject on its own, with a bounded Fieller interval.
    out, _ = look(0.30, 0.10, 8e-3, 1e-5, json.loads(json.dumps(state)))
    assert out["verdict"] == "better" and None not in out["rel_ci"]
    assert out["rel_ci"][0] > 0


REVENUE = MetricSpec("revenue", "mean", "feedback", "feedback/revenue", "increase", "per report", True)


def _in_fieller_set(ratio, rho, crit):
    return (ratio.value_variant - rho * ratio.value_control) ** 2 <= crit * crit * (
        ratio.var_variant - 2 * rho * ratio.cov + rho * rho * ratio.var_control)


def test_a_look_whose_fieller_set_is_unbounded_adds_no_relative_bound():
    # Regression: such a look wrote [0, inf) (or (-inf, 0]) into the relative interval. Here the
    # control's mean (net revenue, refunds included: it can be below 0) is not clearly away from 0,
    # and Fieller's set is two rays, one of them at negative ratios: 0 is no bound of it.
    unbounded = _ratio(0.30, 0.02, 1e-5, 4e-4)
    out, state = _look(REVENUE, unbounded)
    assert out["verdict"] == "better" and out["abs_ci"][0] > 0
    assert out["rel_ci"] == [None, None] == [state["seq"]["rel_lo"], state["seq"]["rel_hi"]]
    half = confidence_sequence_half_width(unbounded.var_diff, state["tau"], FAMILY.alpha_per_comparison)
    crit = half / math.sqrt(unbounded.var_diff)
    control_below_zero = unbounded.value_variant / -0.005  # the ratio if the control's mean were -0.005
    assert _in_fieller_set(unbounded, control_below_zero, crit) and not _in_fieller_set(unbounded, 1.0, crit)

    # After a look with a bounded interval, the unbounded look leaves it as it was.
    first, state = _look(REVENUE, _ratio(0.30, 0.25, 2e-3, 2e-3))
    lo, hi = first["rel_ci"]
    assert first["verdict"] == "no_difference" and lo < 0 < hi
    out, state = _look(REVENUE, unbounded, state)
    assert out["verdict"] == "better" and out["abs_ci"][0] > 0
    assert out["rel_ci"] == [lo, hi]


def test_fewer_units_than_the_minimum_is_not_enough_data():
    out, state = _look(CORRECT, _rate(0.9, 0.5, 20))
    assert out["verdict"] == "not_enough_data" and "fewer than 30 units" in out["power_note"]
    assert state == {} and out["p_value"] is None


# ---- the mixing scale tau, and the power plan ---------------------------------------------------


def _tau(ratio, mde=0.05):
    """The MDE in absolute units, but at least a tenth of a unit's standard deviation (pooled over
    the arms, from the delta-method variances times the units)."""
    per_unit = (ratio.var_variant * ratio.units_variant + ratio.var_control * ratio.units_control) / 2
    return max(mde * abs(ratio.value_control), 0.1 * math.sqrt(per_unit))


@pytest.mark.parametrize("first, later, mde_wins", [
    # A 50% rate: the MDE (0.025) is below a tenth of the unit SD (0.05).
    (_rate(0.50, 0.50, 2000), _rate(0.20, 0.20, 4000), False),
    # A mean of 10 known to a per-unit SD of 0.32: the MDE (0.5) is above the floor (0.032).
    (_ratio(10.0, 10.0, 1e-4), _ratio(20.0, 20.0, 1e-3, units=4000), True),
])
def test_tau_is_the_mde_or_a_tenth_of_the_unit_sd_fixed_at_the_first_look(first, later, mde_wins):
    _, state = _look(CORRECT, first)
    assert (0.05 * first.value_control > 0.1 * math.sqrt(first.var_control * first.units_control)) == mde_wins
    assert state["tau"] == pytest.approx(_tau(first), rel=1e-12) and state["seq"]["tau"] == state["tau"]
    assert _tau(later) != pytest.approx(state["tau"], rel=0.1)
    out, state2 = _look(CORRECT, later, state)
    assert state2["tau"] == state["tau"] and out["sequential"]["tau"] == state["tau"]


@pytest.mark.parametrize("sequential", [True, False])
def test_power_is_planned_for_the_mde_at_alpha_over_the_family(sequential):
    ratio = _rate(0.5, 0.5, 2000)
    out, state = _look(CORRECT, ratio, sequential=sequential)
    effect = 0.05 * 0.5
    tau = state["tau"]
    assert tau == pytest.approx(_tau(ratio)) and tau > effect  # the floor, here
    plan = power.units_per_arm(effect, ratio.var_control * 2000, ratio.var_variant * 2000, alpha=0.01, power=0.8,
                               sequential=sequential, tau=tau if sequential else None, allocation=(50.0, 50.0))
    p = out["power"]
    assert p is not None, out["power_note"]
    assert p["required"] == {"variant": plan.n_variant, "control": plan.n_control}
    assert p["alpha_per_comparison"] == 0.01 and p["mde_abs"] == pytest.approx(effect)
    if sequential:  # the plan of the test that is run: the mSPRT with the test's own tau
        assert p["test"].startswith("mSPRT")
        assert p["achieved"] == pytest.approx(power.sequential_power(effect, ratio.var_diff, tau, 0.01), rel=1e-12)
    else:
        assert p["test"].startswith("z-test")
        assert p["achieved"] == pytest.approx(power.fixed_power(effect, ratio.var_diff, 0.01), rel=1e-12)


def test_the_guardrail_sequence_is_tuned_to_the_margin_fixed_at_the_first_look():
    _, state = _look(ERRORS, _rate(0.012, 0.010, 2000))
    assert state["guard"]["tau"] == 0.01  # the 1-point margin, in absolute units
    _, state = _look(ERRORS, _rate(0.030, 0.020, 4000), state)
    assert state["guard"]["tau"] == 0.01 and state["guard"]["looks"] == 2
    _, state = _look(LATENCY, _ratio(101.0, 100.0, 0.25))
    assert state["guard"]["tau"] == pytest.approx(10.0)  # 10% of the control's mean
    out, state = _look(LATENCY, _ratio(202.0, 200.0, 0.25), state)
    assert out["guardrail"]["margin_abs"] == pytest.approx(20.0) and state["guard"]["tau"] == pytest.approx(10.0)


def test_an_error_rate_below_one_percent_gets_sequences_a_few_points_wide():
    """The review's example: 0.73% errors on the control, 3.08% on the variant, 860 units per arm.
    With tau = the MDE (5% of 0.73% = 0.00037, about 400 times below the noise) the guardrail's
    sequence was [-27, +31] points and the decision's [-34, +38]; tuned to the margin and to a
    tenth of a unit's SD they are a few points wide.

    The plan stays in the millions: a 5% change of a 0.73% rate is tiny, and even the fixed-horizon
    z-test needs 3.3 million units per arm for it at alpha/5. The mSPRT run with the wider tau needs
    more than that (7.8 million; 5.5 million with tau = the MDE), and the plan is for the test run."""
    ratio = _rate(0.0308, 0.0073, 860)
    out, state = _look(ERRORS, ratio)
    diff = 0.0308 - 0.0073
    lo, hi = out["guardrail"]["ci"]
    assert lo <= diff <= hi and hi - lo < 0.05 and out["guardrail"]["status"] == "inconclusive"
    lo, hi = out["sequential"]["ci"]
    assert lo <= diff <= hi and hi - lo < 0.06
    effect = 0.05 * 0.0073
    assert state["tau"] == pytest.approx(_tau(ratio)) and state["tau"] > 30 * effect
    unit_c, unit_v = ratio.var_control * 860, ratio.var_variant * 860
    plan = power.units_per_arm(effect, unit_c, unit_v, alpha=0.01, power=0.8, sequential=True, tau=state["tau"])
    z_test = power.units_per_arm(effect, unit_c, unit_v, alpha=0.01, power=0.8, sequential=False)
    assert out["power"]["required_per_arm"] == max(plan.n_control, plan.n_variant)
    assert z_test.n_control <= out["power"]["required_per_arm"] < 3 * z_test.n_control


def test_an_arm_with_no_spread_says_so_in_the_power_note_not_in_the_planners_words():
    """Every unit of v2 converted: the audit's report read "no power figures: unit_var_variant
    (0.0) must be a finite number > 0: one unit's variance in the variant arm ..."."""
    out, _ = _look(CORRECT, _ratio(1.0, 0.9, 0.0, 1e-4))
    assert out["power"] is None and out["power_note"] == "no power figures: the variant arm has no spread in its values yet"
    out, _ = _look(CORRECT, _ratio(0.8, 0.9, 1e-4, 0.0))
    assert out["power_note"] == "no power figures: the control arm has no spread in its values yet"
    out, _ = _look(CORRECT, _ratio(0.8, 0.9, 0.0, 0.0, cov=-1e-4))  # a spread in D alone, from the covariance
    assert out["power_note"] == "no power figures: neither arm has any spread in its values yet"


def test_a_guardrail_sequence_that_starts_again_says_so():
    figures, state = _look(ERRORS, _ratio(0.05, 0.01, 1e-6))  # four points up: inferior
    assert figures["guardrail"]["status"] == "inferior" and "note" not in figures["guardrail"]
    figures, _ = _look(ERRORS, _ratio(0.0105, 0.01, 1e-8, units=100_000), state)  # contradicts it
    assert figures["guardrail"]["status"] == "non_inferior"
    assert figures["guardrail"]["note"].startswith("the sequence started again at look 2, whose own sequence "
                                                   "did not overlap the earlier looks' [")


def test_relative_bounds_saved_as_a_over_b_minus_one_are_dropped_not_intersected():
    """A state saved before (A - B) / |B| held A/B - 1's bounds, the opposite sign for a
    control below 0; intersected with the new ones they stayed empty for good (a review)."""
    profit = _ratio(-5.0, -10.0, 0.05)
    out, state = _look(REVENUE, profit)
    assert 0.4 < out["rel_ci"][0] < 0.5 < out["rel_ci"][1]
    old = {**state, "seq": {k: v for k, v in state["seq"].items() if k != "rel"}}
    # A/B - 1 = -0.5 here; a wide interval around it still overlaps the new lift's (+0.5).
    old["seq"]["rel_lo"], old["seq"]["rel_hi"] = -0.9, 0.47
    again, _ = _look(REVENUE, _ratio(-5.0, -10.0, 0.025, units=2000), old)
    fresh, _ = _look(REVENUE, _ratio(-5.0, -10.0, 0.025, units=2000))
    assert again["rel_ci"] == fresh["rel_ci"] and again["rel_ci"][0] < 0.5 < again["rel_ci"][1]


def test_relative_bounds_that_stop_overlapping_are_this_looks_not_an_empty_interval():
    out, state = _look(REVENUE, _ratio(0.6, 0.5, 1e-5))  # +20%
    out, _ = _look(REVENUE, _ratio(1.1, 1.0, 1e-6, units=10_000), state)  # +10%: the same +0.1, another base
    lo, hi = out["abs_ci"]
    assert lo < 0.1 < hi and "verdict_note" not in out  # the absolute sequences overlap
    rel_lo, rel_hi = out["rel_ci"]
    assert rel_lo < 0.1 < rel_hi


def test_an_empty_sequence_saved_before_restarts_is_said_at_a_look_with_too_few_units():
    out, state = _look(CORRECT, _ratio(0.60, 0.50, 1e-4))
    state["seq"]["lo"], state["seq"]["hi"] = 0.0486, -0.0944  # as the code before restarts could leave it
    out, _ = _look(CORRECT, _ratio(0.60, 0.50, 1e-4, units=10), state)  # too few units to test
    assert out["verdict"] == "better" and out["abs_ci"] == [0.0486, -0.0944]
    assert out["verdict_note"].startswith("the confidence sequence is empty ([0.0486, -0.0944])")


def test_a_relative_lift_outside_its_intersected_interval_is_said():
    """A live check: -47.3% beside [-46.1, -41.2], the absolute interval holding its estimate:
    the control's value moved between looks, and the relative bounds are intersected too."""
    out, state = _look(CORRECT, _ratio(0.50, 0.90, 1e-5))  # -44%
    out, _ = _look(CORRECT, _ratio(0.45, 0.85, 1e-5), state)  # -0.40 again, -47% of a lower control
    lo, hi = out["abs_ci"]
    assert lo <= -0.40 <= hi
    rel_lo, rel_hi = out["rel_ci"]
    assert not rel_lo <= out["rel_lift"] <= rel_hi
    assert out["verdict_note"].startswith(f"at this look the relative lift {out['rel_lift']:.4g} is outside its "
                                          f"interval [{rel_lo:.4g}, {rel_hi:.4g}]")


def test_a_relative_lift_outside_an_interval_open_on_one_side_is_said_not_raised():
    """A mean near 0 in the control (a margin, a profit) leaves Fieller's set unbounded, so
    the intersected relative interval may keep a lower bound and no upper one. Its estimate
    below that bound was written into the note as [56.4, None]: TypeError at every report
    (45 of 12,000 looks of random walks with such controls)."""
    mean = MetricSpec("margin", "mean", "feedback", "feedback/margin", "increase", "per report", True)
    previous = {"tau": 1e-3, "seq": {"p": 0.5, "lo": -1.0, "hi": 1.0, "looks": 3, "estimate": 0.0, "tau": 1e-3,
                                     "units": 100, "rel_lo": 50.0, "rel_hi": None, "rel": "diff_over_abs_control"}}
    out, state = _look(mean, _ratio(-0.000699, 1e-6, 1e-8), previous)
    assert out["rel_ci"] == [50.0, None] and out["rel_lift"] == pytest.approx(-700.0)
    assert "the relative lift -700 is outside its interval [50, inf]" in out["verdict_note"]
    assert state["seq"]["rel_hi"] is None
