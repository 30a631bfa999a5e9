"""One variant against the control on one metric: the estimate, its test, its interval, its
verdict, its power, and (for health metrics) its non-inferiority check. Pure.

Every figure of a comparison comes from one estimand and one variance: the difference of
the split-stratified ratios ``D = A - B`` with its delta-method variance per unit
(:mod:`serve_ab.analysis.units`). So:

- the fixed-horizon p-value is the z-test of D, and its interval is D +- z * se at the level
  the correction left that comparison (``alpha * p / p_adjusted``), so the interval excludes
  0 exactly when ``p_adjusted < alpha``;
- the relative lift is (A - B) / |B| (A/B - 1 where B > 0) with Fieller's interval from the
  same variances, which excludes 0 exactly when the absolute interval does;
- the sequential figures are the mSPRT of D (Johari et al.) at ``alpha / m``, m the family
  size fixed from the config (metrics x variants), with the mixing scale tau set from the
  minimum detectable effect; the p-value is a running minimum and the confidence sequence a
  running intersection, so a verdict, once reached, stands (Bonferroni over a fixed family:
  Holm or BH would need every look's intervals again to stay consistent with their p-values),
  unless a look's own sequence misses the intersection: the figures then changed under the
  test (late outcomes), and the sequence starts again from that look (:func:`_sequential_look`).

With ``analysis.sequential`` (the default) the verdict is the sequential one; without it the
fixed-horizon verdict is withheld until the planned sample is reached and then frozen, and with
it the figures of that look's test (the lift, its interval, the p-values): a fixed-horizon test
is read once, so a later look's estimate beside the frozen interval would show a verdict its own
figures no longer support. Units and values stay this look's (their difference is this look's
estimate).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scipy import stats

from serve_ab.analysis import ab, power
from serve_ab.analysis.sequential import confidence_sequence_half_width, log_mixture_likelihood_ratio
from serve_ab.analysis.units import RatioComparison, fieller_ratio_bounds

__all__ = ["Family", "MetricSpec", "judge"]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # "conversion" (a rate) or "mean"
    source: str  # "requests" or "feedback"
    totals: str  # key of the per-split totals: error_rate, latency_ms, feedback/<name>
    direction: str  # "increase" or "decrease": which way is better
    unit: str
    in_family: bool  # configured before the data came: counts towards the family size
    guardrail: tuple[str, float] | None = None  # ("abs" | "relative", margin): non-inferiority

    @property
    def nonnegative(self) -> bool:
        """Rates and latencies cannot be negative (a feedback mean, e.g. a margin, can)."""
        return self.kind == "conversion" or self.totals == "latency_ms"


@dataclass(frozen=True)
class Family:
    """The comparisons one decision rests on, fixed from the config before data arrive."""

    size: int
    alpha: float
    correction: str  # holm | bh | none

    @property
    def alpha_per_comparison(self) -> float:
        return self.alpha / self.size


def _z(alpha: float) -> float:
    return float(stats.norm.ppf(1.0 - alpha / 2.0))


def fixed_p(ratio: RatioComparison) -> float:
    se = math.sqrt(ratio.var_diff)
    return float(2.0 * stats.norm.sf(abs(ratio.diff) / se)) if se > 0 else math.nan


def judge(spec: MetricSpec, ratio: RatioComparison | None, *, variant: str, control: str, family: Family,
          p_adjusted: float, previous: Mapping[str, Any] | None, sequential_on: bool, min_units: int,
          mde_relative: float, target_power: float, allocation_pct: tuple[float, float]
          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The comparison's figures (plain data, for the report model) and its state for the next look."""
    previous = dict(previous or {})
    direction = ab.Direction.HIGHER_IS_BETTER if spec.direction == "increase" else ab.Direction.LOWER_IS_BETTER
    out: dict[str, Any] = {
        "variant": variant, "control": control, "test": "delta_method_z",
        "n_variant": ratio.units_variant if ratio else 0, "n_control": ratio.units_control if ratio else 0,
        "splits_used": ratio.splits_used if ratio else 0,
        "cuped": None if ratio is None or ratio.cuped is None else {
            "theta": ratio.cuped.theta, "variance_reduction": ratio.cuped.variance_reduction,
            "pre_units": ratio.cuped.pre_units, "abs_lift_unadjusted": ratio.cuped.diff_unadjusted,
            "se_unadjusted": math.sqrt(max(ratio.cuped.var_diff_unadjusted, 0.0))},
        "value_variant": ratio.value_variant if ratio else None,
        "value_control": ratio.value_control if ratio else None,
        "abs_lift": ratio.diff if ratio else None, "rel_lift": None,
        "abs_ci": [None, None], "rel_ci": [None, None],
        "p_value": None, "p_adjusted": None, "fixed": None, "sequential": None, "guardrail": None,
        "verdict": "not_enough_data", "verdict_basis": "sequential" if sequential_on else "fixed_horizon",
        "power": None, "power_note": None,
    }
    enough = (ratio is not None and min(ratio.units_variant, ratio.units_control) >= min_units
              and ratio.var_diff > 0 and math.isfinite(ratio.diff))
    state: dict[str, Any] = {}
    if not enough:
        # Keep the whole record: a look with too few units never undoes a verdict or a plan.
        state = dict(previous)
        out["power_note"] = (f"fewer than {min_units} units in an arm, or no spread yet"
                             if ratio is not None else "no split where both arms have 2 units yet")
        if state.get("frozen") is not None and not sequential_on:
            _restore_frozen(out, state["frozen"])
        return _restore_sequential(out, state, family, direction) if state.get("seq") else out, state
    if ratio.value_control != 0:  # relative to the control's size: a margin or a profit may be below 0
        out["rel_lift"] = ratio.diff / abs(ratio.value_control)

    # -- fixed horizon -------------------------------------------------------------------------
    p = fixed_p(ratio)
    se = math.sqrt(ratio.var_diff)
    # The level the correction left this comparison: its interval excludes 0 iff p_adj < alpha.
    level = family.alpha * (p / p_adjusted) if p_adjusted > 0 else family.alpha_per_comparison
    level = min(max(level, 1e-300), family.alpha)
    crit = _z(level)
    fixed_verdict = _verdict(p_adjusted, ratio.diff, family.alpha, direction)
    fixed = {"p_value": p, "p_adjusted": p_adjusted, "level": level,
             "abs_ci": [ratio.diff - crit * se, ratio.diff + crit * se],
             "rel_ci": _rel(ratio, crit, spec.nonnegative), "verdict": fixed_verdict}
    out["p_value"], out["p_adjusted"] = p, p_adjusted

    # -- power ---------------------------------------------------------------------------------
    # tau is fixed at the first look with data: the test must not retune itself to the data.
    tau = previous.get("tau") or _tau(ratio, mde_relative)
    state["tau"] = tau
    plan = _power(ratio, family, sequential_on, mde_relative, target_power, allocation_pct, tau)
    out["power"], out["power_note"] = plan.get("figures"), plan.get("note")

    # -- sequential ----------------------------------------------------------------------------
    seq = _sequential_look(ratio, tau, family.alpha_per_comparison, previous.get("seq"), spec.nonnegative)
    restarted_now = seq.get("restart", {}).get("look") == seq["looks"]
    if restarted_now:
        seq["restart"]["was"] = previous.get("decided") or "no_difference"
    state["seq"] = seq
    guard = None
    if spec.guardrail is not None:
        guard = _guardrail(spec, ratio, family.alpha, previous.get("guard"), direction)
        state["guard"] = guard["state"]
        out["guardrail"] = guard["figures"]

    if previous.get("decided") and not restarted_now:
        state["decided"] = previous["decided"]
    if sequential_on:
        out.update(fixed=fixed)
        out = _restore_sequential(out, state, family, direction)
        outside = _outside_estimates(out)
        if outside:
            _add_note(out, f"at this look {outside}, which intersects every look's sequence: earlier looks "
                           f"bound it, and outcomes reported late for earlier requests can move the estimate "
                           f"more than chance would")
    else:
        frozen = previous.get("frozen")
        if frozen is None and plan.get("complete"):
            frozen = {"verdict": fixed_verdict, "abs_ci": fixed["abs_ci"], "rel_ci": fixed["rel_ci"],
                      "p_adjusted": p_adjusted, "p_value": p, "level": level, "abs_lift": ratio.diff,
                      "rel_lift": out["rel_lift"], "n_variant": ratio.units_variant,
                      "n_control": ratio.units_control}
        if frozen is not None:
            state["frozen"] = frozen
            out.update(fixed=fixed)
            _restore_frozen(out, frozen)
        else:
            out.update(fixed=fixed, abs_ci=fixed["abs_ci"], rel_ci=fixed["rel_ci"], verdict="not_enough_data")
            out["verdict_note"] = ("fixed-horizon verdict withheld until the planned sample is reached "
                                   "(analysis.sequential is off)")
    return out, state


_VERDICT_WORDS = {"better": "better", "worse": "WORSE", "no_difference": "no significant difference"}
# What a saved sequence's rel_lo/rel_hi bound: (A - B) / |B|. Bounds saved without it were
# A/B - 1, the opposite sign where B < 0, and are dropped rather than intersected.
REL_LIFT = "diff_over_abs_control"


def _outside(estimate: float, interval: list[float | None]) -> bool:
    lo, hi = interval
    return (lo is not None and estimate < lo) or (hi is not None and estimate > hi)


def _outside_estimates(out: dict[str, Any]) -> str:
    """The estimates shown that lie outside the intervals shown beside them, in words ('' if none)."""
    return " and ".join(f"{what} {estimate:.4g} is outside its interval [{_bound(lo, '-inf')}, {_bound(hi, 'inf')}]"
                        for what, estimate, (lo, hi) in (("the estimate", out["abs_lift"], out["abs_ci"]),
                                                         ("the relative lift", out["rel_lift"], out["rel_ci"]))
                        if estimate is not None and _outside(estimate, [lo, hi]))


def _bound(value: float | None, missing: str) -> str:
    # A relative interval is open on a side where Fieller's set was unbounded (the control's
    # value near 0): its estimate can lie past the other bound.
    return missing if value is None else f"{value:.4g}"


def _add_note(out: dict[str, Any], said: str) -> None:
    out["verdict_note"] = f"{out['verdict_note']}; {said}" if out.get("verdict_note") else said


# The frozen look's figures that stand in for this look's beside a frozen fixed-horizon verdict.
_FROZEN_FIGURES = ("verdict", "abs_ci", "rel_ci", "abs_lift", "rel_lift", "p_value", "p_adjusted")


def _restore_frozen(out: dict[str, Any], frozen: Mapping[str, Any]) -> None:
    """Shows the look that reached the planned sample: its verdict with its own estimate, interval
    and p-values (and ``fixed`` becomes that look's test); this look's estimate is the difference
    of the values, which stay this look's."""
    out.update({key: frozen[key] for key in _FROZEN_FIGURES if key in frozen})
    if "level" in frozen and "p_value" in frozen:
        out["fixed"] = {"p_value": frozen["p_value"], "p_adjusted": frozen["p_adjusted"], "level": frozen["level"],
                        "abs_ci": frozen["abs_ci"], "rel_ci": frozen["rel_ci"], "verdict": frozen["verdict"]}
        if (out["n_variant"], out["n_control"]) != (frozen["n_variant"], frozen["n_control"]):
            _add_note(out, f"read once, at the look that reached the planned sample ({frozen['n_variant']:,} vs "
                           f"{frozen['n_control']:,} units): the lift, its interval and the p-values are that "
                           f"look's; units and values are this look's")
        return
    # Frozen before the look's own estimate was saved with it (states saved before 2026-12-06): this look's
    # estimate stays beside the frozen interval, and says so where it lies outside it.
    outside = _outside_estimates(out)
    if outside:
        _add_note(out, f"at this look {outside}, which was frozen at the planned sample: a fixed-horizon verdict is "
                       f"read once there and stands (that look's own estimate was not saved)")


def _restore_sequential(out: dict[str, Any], state: dict[str, Any], family: Family,
                        direction: ab.Direction) -> dict[str, Any]:
    seq = state["seq"]
    if out["verdict_basis"] != "sequential":
        return out
    lo, hi = seq["lo"], seq["hi"]
    p_adj = min(1.0, seq["p"] * family.size)
    # Decided by the interval itself (the same event as p <= alpha / m, up to rounding), so
    # the verdict and the interval shown can never disagree; the first decision stands.
    verdict = state.get("decided")
    if verdict is None and (lo is not None and lo > 0) != (hi is not None and hi < 0):
        verdict = _verdict(0.0, lo if lo is not None and lo > 0 else hi, family.alpha, direction)
        state["decided"] = verdict
    if verdict is None:
        verdict = "no_difference"
    restart = seq.get("restart")
    if lo is not None and hi is not None and lo > hi:
        # Only from a state saved before restarts (2026-12-06), read at a look with too few
        # units to test: the next look that tests starts the sequence again.
        out["verdict_note"] = (f"the confidence sequence is empty ([{lo:.4g}, {hi:.4g}]): later looks disagreed "
                               "with earlier ones beyond their uncertainty; the next look with enough units "
                               "starts it again")
    elif restart:
        was = restart.get("was", "no_difference")
        start_lo, start_hi = restart["from"]
        count = int(restart.get("count", 1))
        out["verdict_note"] = (
            f"the sequence started again at look {restart['look']} ({restart['units']:,} units"
            f"{f'; {count} restarts in all' if count > 1 else ''}), whose own "
            f"sequence did not overlap the earlier looks' [{start_lo:.4g}, {start_hi:.4g}]: the figures moved more "
            f"than chance allows (outcomes reported late for earlier requests, or an effect that changes over "
            f"time); the verdict is from the looks since (before it: {_VERDICT_WORDS.get(was, was)})")
    out["sequential"] = {"p_value": seq["p"], "p_adjusted": p_adj, "ci": [lo, hi],
                         "rel_ci": [seq.get("rel_lo"), seq.get("rel_hi")], "looks": seq["looks"],
                         "estimate": seq.get("estimate"), "tau": seq.get("tau"),
                         "alpha_per_comparison": family.alpha_per_comparison, "verdict": verdict}
    out.update(verdict=verdict, abs_ci=[lo, hi], rel_ci=[seq.get("rel_lo"), seq.get("rel_hi")])
    return out


def _verdict(p: float, effect: float, alpha: float, direction: ab.Direction) -> str:
    if math.isnan(p) or p >= alpha or effect == 0 or math.isnan(effect):
        return "no_difference"
    good = effect > 0 if direction is ab.Direction.HIGHER_IS_BETTER else effect < 0
    return "better" if good else "worse"


def _rel(ratio: RatioComparison, crit: float, nonnegative: bool) -> list[float | None]:
    """The interval of the relative lift (A - B) / |B|, from Fieller's for rho = A / B: rho - 1,
    or 1 - rho where the control's value is below 0 (a mean profit), whose lift has the sign
    of the absolute one that way too (-10 to -5 is +50%, not -50%)."""
    lo, hi = fieller_ratio_bounds(ratio.value_variant, ratio.value_control, ratio.var_variant,
                                  ratio.var_control, ratio.cov, crit, nonnegative)
    if ratio.value_control < 0:
        return [None if hi is None else 1.0 - hi, None if lo is None else 1.0 - lo]
    return [None if lo is None else lo - 1.0, None if hi is None else hi - 1.0]


def _tau(ratio: RatioComparison, mde_relative: float) -> float:
    """The mSPRT's mixing scale: the minimum detectable effect, but at least a tenth of a
    unit's standard deviation. An MDE far below the noise (5% of a 0.7% error rate) would make
    the confidence sequence hundreds of times wider than the effects worth seeing."""
    per_unit = (ratio.var_variant * ratio.units_variant + ratio.var_control * ratio.units_control) / 2.0
    floor = 0.1 * math.sqrt(per_unit) if per_unit > 0 else 1e-9
    return max(mde_relative * abs(ratio.value_control), floor)


def _merge(bound: float | None, new: float, pick) -> float:
    return new if bound is None else pick(bound, new)


def _sequential_look(ratio: RatioComparison, tau: float, alpha: float,
                     previous: Mapping[str, Any] | None, nonnegative: bool = False) -> dict[str, Any]:
    """One mSPRT look at D: running-minimum p-value, running intersection of the sequence."""
    prev = dict(previous or {})
    v = ratio.var_diff
    log_lr = float(log_mixture_likelihood_ratio(ratio.diff, v, tau))
    p = min(prev.get("p", 1.0), 1.0, math.exp(-min(log_lr, 700.0)))
    half = float(confidence_sequence_half_width(v, tau, alpha))
    lo = _merge(prev.get("lo"), ratio.diff - half, max)
    hi = _merge(prev.get("hi"), ratio.diff + half, min)
    if prev.get("rel") != REL_LIFT:  # bounds saved as A/B - 1 (before 2026-12-06): not this lift's
        prev = {k: v for k, v in prev.items() if k not in ("rel_lo", "rel_hi")}
    restarted_from = None
    if lo > hi:
        # This look's sequence and the earlier looks' intersection do not overlap: under the
        # test's model the truth lies in both, so the figures moved more than chance allows:
        # outcomes that arrive late and not at random (a purchase reported an hour on, a
        # "no" sent later than a "yes"), or an effect that changes over time. The earlier
        # looks' interval and decision rest on figures that have since changed; they are
        # dropped, and the sequence starts again from this look. Under the model this needs a
        # sequence that missed the truth, so an A/A has already had its (false) verdict and
        # its rate of verdicts does not grow.
        restarted_from = [prev.get("lo"), prev.get("hi")]
        restarts = int((prev.get("restart") or {}).get("count", 0)) + 1
        lo, hi = ratio.diff - half, ratio.diff + half
        p = min(1.0, math.exp(-min(log_lr, 700.0)))
        prev = {"looks": prev.get("looks", 0)}
    out = {"p": p, "lo": lo, "hi": hi, "looks": int(prev.get("looks", 0)) + 1, "estimate": ratio.diff,
           "tau": tau, "units": ratio.units_variant + ratio.units_control,
           "rel_lo": prev.get("rel_lo"), "rel_hi": prev.get("rel_hi"), "rel": REL_LIFT}
    # The last restart stays in the state, so every later report can say why its sequence
    # begins where it does (a restart seen only at its own look was gone a second later).
    if restarted_from is not None:
        out["restart"] = {"look": out["looks"], "units": out["units"], "from": restarted_from, "count": restarts}
    elif prev.get("restart"):
        out["restart"] = prev["restart"]
    # Fieller's interval with the sequence's own critical value at this look: at rho = 1 it
    # is the look's test of D = 0, so the relative interval excludes 0 iff the absolute does.
    rel = _rel(ratio, half / math.sqrt(v), nonnegative)
    # Fieller's set unbounded (the control's ratio not clearly away from 0): no bound this look.
    if rel[0] is not None:
        out["rel_lo"] = _merge(prev.get("rel_lo"), rel[0], max)
    if rel[1] is not None:
        out["rel_hi"] = _merge(prev.get("rel_hi"), rel[1], min)
    if out["rel_lo"] is not None and out["rel_hi"] is not None and out["rel_lo"] > out["rel_hi"]:
        # The absolute sequences overlap but the relative ones do not (the control's value
        # moved): this look's alone, rather than an empty interval beside the lift.
        out["rel_lo"], out["rel_hi"] = rel
    return out


def _guardrail(spec: MetricSpec, ratio: RatioComparison, alpha: float,
               previous: Mapping[str, Any] | None, direction: ab.Direction) -> dict[str, Any]:
    """Non-inferiority on a confidence sequence at alpha (outside the decision family): the
    variant is not worse than the control by more than the margin. The sequence is tuned to
    effects of the margin's size (tau = margin, fixed at the first look)."""
    kind, margin = spec.guardrail
    margin_abs = margin if kind == "abs" else margin * abs(ratio.value_control)
    tau = (previous or {}).get("tau") or margin_abs or _tau(ratio, 0.0)
    seq = _sequential_look(ratio, tau, alpha, previous)
    lo, hi = seq["lo"], seq["hi"]
    # "Worse" is up for a lower-is-better metric; the margin is on that side.
    if direction is ab.Direction.LOWER_IS_BETTER:
        status = "non_inferior" if hi < margin_abs else ("inferior" if lo > margin_abs else "inconclusive")
    else:
        status = "non_inferior" if lo > -margin_abs else ("inferior" if hi < -margin_abs else "inconclusive")
    figures = {"margin": margin, "margin_kind": kind, "margin_abs": margin_abs, "alpha": alpha,
               "ci": [lo, hi], "status": status}
    restart = seq.get("restart")
    if restart:  # started again, as the verdict's does
        figures["note"] = (f"the sequence started again at look {restart['look']}, whose own sequence did not "
                           f"overlap the earlier looks' [{restart['from'][0]:.4g}, {restart['from'][1]:.4g}]")
    return {"figures": figures, "state": seq}


def _power(ratio: RatioComparison, family: Family, sequential_on: bool, mde_relative: float,
           target_power: float, allocation_pct: tuple[float, float], tau: float) -> dict[str, Any]:
    baseline = ratio.value_control
    if baseline == 0:
        return {"note": "the control's value is 0, so a relative effect is 0: no power figures"}
    effect = mde_relative * abs(baseline)
    unit_var_v = ratio.var_variant * ratio.units_variant
    unit_var_c = ratio.var_control * ratio.units_control
    alpha = family.alpha_per_comparison
    flat = [arm for arm, var in (("variant", unit_var_v), ("control", unit_var_c)) if not var > 0]
    if flat:  # every unit alike so far (all converted, one value): no spread to plan with
        which = "neither arm has any" if len(flat) > 1 else f"the {flat[0]} arm has no"
        return {"note": f"no power figures: {which} spread in its values yet"}
    try:
        plan = power.units_per_arm(effect, unit_var_c, unit_var_v, alpha=alpha, power=target_power,
                                   sequential=sequential_on, tau=tau if sequential_on else None,
                                   allocation=allocation_pct)
    except ValueError as err:
        return {"note": f"no power figures: {err}"}
    if sequential_on:
        achieved = power.sequential_power(effect, ratio.var_diff, tau, alpha)
    else:
        achieved = power.fixed_power(effect, ratio.var_diff, alpha)
    needed_c = max(0, plan.n_control - ratio.units_control)
    needed_v = max(0, plan.n_variant - ratio.units_variant)
    # The plan counts buckets of users, whose number stops growing as users come to share them
    # (5,000 per arm at 50/50), while each one's data grows: a count of buckets can plan more
    # than an arm will ever have. Its ratio to the buckets so far is the variance's ratio, the
    # same in users: the users still needed are the users so far times (multiple - 1).
    multiple = max(plan.n_variant / ratio.units_variant, plan.n_control / ratio.units_control)
    figures = {
        "test": "mSPRT (always valid)" if sequential_on else "z-test (fixed horizon)",
        "achieved": achieved, "target": target_power, "mde_relative": mde_relative, "mde_abs": effect,
        "alpha_per_comparison": alpha, "family_size": family.size,
        "required_per_arm": max(plan.n_control, plan.n_variant),
        "required": {"variant": plan.n_variant, "control": plan.n_control},
        "units_needed": {"variant": needed_v, "control": needed_c},
        "data_multiple": multiple,
        "complete": needed_c == 0 and needed_v == 0,
    }
    return {"figures": figures, "complete": figures["complete"]}
