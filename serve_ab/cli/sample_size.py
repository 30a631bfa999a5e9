"""``serve-ab sample-size``: how many users (randomisation units) and requests each arm needs.

Wiring, for ``serve_ab/cli/command.py``::

    subparsers = parser.add_subparsers(dest="command", required=True)
    cli_sample_size.add_parser(subparsers)
    args = parser.parse_args()
    return args.func(args)          # exit code

Examples::

    serve-ab sample-size --baseline-rate 0.10 --mde 0.02
    serve-ab sample-size --baseline-rate 0.10 --mde 0.15 --relative --variants 3 -o json
    serve-ab sample-size --std 12.5 --mde 1.0 --power 0.9
    serve-ab sample-size --baseline-rate 0.10 --mde 0.02 --requests-per-unit 5 --icc 0.05 --sequential
    serve-ab sample-size --baseline-rate 0.10 --mde 0.02 --allocation 95:5

The plan is for a fixed-horizon test by default (read once, at the planned size); with
``--sequential`` it is for the always-valid mSPRT the report runs, with its mixing scale
tau = the MDE. Without ``--requests-per-unit``, ``--icc``, ``--allocation`` and
``--sequential`` every request is its own unit and the numbers are statsmodels' (Cohen's h
with the z-test for rates, the t-test for means): their power, whose root in the sample size
:mod:`serve_ab.analysis.power` brackets (``solve_power`` returns NaN, or silently a wrong
size, for tiny effects or alphas and lopsided allocations). A unit sending ``M`` requests with
intra-class correlation ``RHO`` counts as ``M / (1 + (M - 1) RHO)`` independent requests
(Kish's design effect).
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import warnings
from dataclasses import asdict
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, TextIO

from serve_ab.cli.options import add_output_option, dump

if TYPE_CHECKING:  # statsmodels takes seconds to import: only the command itself pays
    from serve_ab.analysis import power as _power

__all__ = ["add_parser", "run"]

# A variance needs two observations; no arm is planned with fewer units.
_MIN_UNITS = 2
# The effects planned, in standard deviations of one request (Cohen's h for rates, d for means).
# Below 1e-6 sd a plan needs more than 1e13 units per arm, far beyond any traffic (and near 1e-8
# statsmodels' root finder gives up with NaN). Any effect over about 10 sd needs only the minimum
# of 2 units per arm, and one over 1,000 sd (where scipy's noncentral t starts to return NaN at
# small alphas) is a sign that --std and --mde are in different units.
_MIN_EFFECT_SD = 1e-6
_MAX_EFFECT_SD = 1e3
_MAX_REQUESTS_PER_UNIT = 1e12
# The smallest alpha, and alpha per comparison, planned: below, statsmodels' and scipy's tails fail
# (the t-test's power at alpha 1e-300 claims 2 units suffice).
_MIN_ALPHA = 1e-12
_MIN_ALPHA_PER_COMPARISON = 1e-15


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``sample-size``; sets ``func`` (``args -> exit code``) on the namespace."""
    parser = subparsers.add_parser(
        "sample-size",
        help="users (randomisation units) and requests per arm needed to detect a minimum effect",
        description="Users (randomisation units) and requests per arm for an A/B test: conversions "
        "with --baseline-rate, or means with --std (per request). The default plans a fixed-horizon "
        "test (two-proportion z-test, or t-test); --sequential plans the always-valid mSPRT the report "
        "runs. With more than two variants, each comparison against the control gets alpha/(variants-1).",
    )
    metric = parser.add_mutually_exclusive_group(required=True)
    metric.add_argument("--baseline-rate", type=_open_unit("--baseline-rate", "0.10"), metavar="RATE",
                        help="control conversion rate, in (0, 1), e.g. 0.10")
    metric.add_argument("--std", type=_positive("--std"), metavar="STD",
                        help="standard deviation of the metric per request, > 0, e.g. 12.5")
    parser.add_argument("--mde", type=_nonzero("--mde"), required=True,
                        help="minimum detectable effect: rate points (0.02) or metric units; "
                        "with --relative a fraction of the baseline rate (0.2 = +20%%)")
    parser.add_argument("--relative", action="store_true", help="read --mde relative to --baseline-rate")
    parser.add_argument("--alpha", type=_alpha, default=0.05,
                        help=f"family-wise significance level over the variants-1 comparisons with the control, in "
                        f"[{_MIN_ALPHA:g}, 1) (default: 0.05). The report's family is larger: it runs each comparison "
                        "at analysis.alpha / ((2 + feedback metrics) x compared variants); to plan for that, give it "
                        "here, e.g. --alpha 0.0125 for 0.05 over error rate, latency and two feedback metrics")
    parser.add_argument("--power", type=_open_unit("--power", "0.8"), default=0.8,
                        help="probability of detecting the effect, in (0, 1) (default: 0.8)")
    parser.add_argument("--variants", type=_at_least_two, default=2,
                        help="arms including the control, >= 2 (default: 2)")
    parser.add_argument("--one-sided", action="store_true",
                        help="plan a one-sided fixed-horizon test (default: two-sided)")
    parser.add_argument("--requests-per-unit", type=_at_least_one, default=1.0, metavar="M",
                        help="mean requests per randomisation unit (user), >= 1 (default: 1: each request "
                        "is its own unit)")
    parser.add_argument("--icc", type=_closed_unit, default=0.0, metavar="RHO",
                        help="intra-class correlation of one unit's requests, in [0, 1]; the variance per "
                        "request is multiplied by the design effect 1 + (M - 1) RHO (default: 0)")
    parser.add_argument("--allocation", type=_allocation, default=None, metavar="C:V",
                        help="traffic split control:variant in percent, summing to 100, e.g. 95:5 "
                        "(only with --variants 2; default: equal arms)")
    parser.add_argument("--sequential", action="store_true",
                        help="plan for the always-valid mSPRT the report runs (tau = the MDE), which may "
                        "be read at every look; default: a fixed-horizon test read once")
    add_output_option(parser, "the plan")
    parser.set_defaults(func=functools.partial(run, parser=parser))
    return parser


def run(args: argparse.Namespace, *, parser: argparse.ArgumentParser | None = None,
        out: TextIO | None = None) -> int:
    """Compute and print the plan; invalid combinations go to ``parser.error`` (exit 2)."""
    out = out or sys.stdout
    try:
        with warnings.catch_warnings():
            # statsmodels warns (ConvergenceWarning, RuntimeWarning) where its root finder struggles;
            # the inputs are bounded beforehand and every figure checked after, so the warnings say nothing.
            warnings.simplefilter("ignore")
            plan = _make_plan(args)
    except ValueError as e:
        if parser is None:
            raise
        parser.error(str(e))  # exits with status 2
    print(_table(plan) if args.output == "table" else dump(plan, args.output), file=out)
    return 0


def _make_plan(args: argparse.Namespace) -> dict[str, Any]:
    """The request-level plan (statsmodels), then units per arm for the test and split asked for."""
    from serve_ab.analysis import power as _power
    from serve_ab.analysis.ab import DEFAULT_MIN_SAMPLES

    base = _request_plan(args)
    allocation = getattr(args, "allocation", None)
    sequential = getattr(args, "sequential", False)
    m = getattr(args, "requests_per_unit", 1.0)
    icc = getattr(args, "icc", 0.0)
    if allocation is not None and args.variants != 2:
        raise ValueError(f"argument --allocation: only applies with --variants 2 (got --variants {args.variants} "
                         f"and --allocation {allocation[0]:g}:{allocation[1]:g}); with more variants arms are equal")
    if sequential and args.one_sided:
        raise ValueError("argument --one-sided: not with --sequential: the mSPRT the report runs is two-sided")
    share_c, share_v = allocation or (50.0, 50.0)
    ratio = share_v / share_c  # units in each variant arm per unit in the control arm
    deff = _power.design_effect(m, icc)
    scale = deff / m  # a unit's variance, relative to one request's

    tau = None
    if sequential:
        pooled = None
        if base.kind == "conversion":
            p0, p1 = base.baseline_rate, base.baseline_rate + base.mde_abs
            var_c, var_v = p0 * (1 - p0) * scale, p1 * (1 - p1) * scale
            if ratio != 1:
                # The report floors the difference's variance at the pooled one: planned without it,
                # 5% -> 8% at 10:90 reached power 0.59 through the report (2% -> 1% at 90:10: 0.49).
                # Equal arms: the pooled variance is within a few tenths of a percent of their own.
                rate = (share_c * p0 + share_v * p1) / (share_c + share_v)
                pooled = rate * (1 - rate) * scale
        else:
            var_c = var_v = base.std**2 * scale
        tau = abs(base.mde_abs)
        try:
            up = _power.units_per_arm(base.mde_abs, var_c, var_v, alpha=base.alpha_per_comparison, power=base.power,
                                      sequential=True, tau=tau, allocation=(share_c, share_v),
                                      unit_var_pooled=pooled)
        except ValueError as e:  # no size below the solver's bound reaches the power
            raise ValueError(_unplannable(args, base.effect_size, str(e))) from None
        units_c, units_v, exact_c = up.n_control, up.n_variant, up.n_control_exact
        test = "mSPRT (always valid), normal mixture with tau = the MDE"
    else:
        req_c = base.n_per_variant_exact if ratio == 1 else _fixed_requests_control(args, base, ratio)
        exact_c = req_c * scale
        units_c = max(_MIN_UNITS, math.ceil(exact_c - 1e-9))
        units_v = max(_MIN_UNITS, math.ceil(req_c * ratio * scale - 1e-9))
        test = ("fixed-horizon two-proportion z-test" if base.kind == "conversion"
                else "fixed-horizon two-sample t-test")

    plan = asdict(base)
    del plan["n_per_variant"], plan["n_per_variant_exact"], plan["n_total"]
    variant_arms = base.variants - 1
    plan.update(
        test=test, sequential=sequential, tau=tau,
        requests_per_unit=m, icc=icc, design_effect=deff,
        allocation={"control": share_c, "variant": share_v},
        units_per_arm={"control": units_c, "variant": units_v},
        requests_per_arm={"control": _requests(units_c, m), "variant": _requests(units_v, m)},
        units_total=units_c + variant_arms * units_v,
        requests_total=_requests(units_c, m) + variant_arms * _requests(units_v, m),
        # Kept from the request-level plan: per arm when the arms are equal (now in units), else null.
        n_per_variant=units_c if ratio == 1 else None,
        n_per_variant_exact=exact_c if ratio == 1 else None,
        n_total=units_c + variant_arms * units_v,
        report_min_units_per_arm=DEFAULT_MIN_SAMPLES,
        notes=[],
    )
    if min(units_c, units_v) < DEFAULT_MIN_SAMPLES:
        # The plan is the test's; the report gives no p-value, interval or verdict (not_enough_data)
        # while an arm has fewer units than this, so a plan below it is never read as planned.
        plan["notes"].append(
            f"the report tests from {DEFAULT_MIN_SAMPLES} units in each arm (fewer: not_enough_data); run each "
            f"arm to at least {DEFAULT_MIN_SAMPLES} units")
    return plan


def _request_plan(args: argparse.Namespace) -> _power.SampleSizePlan:
    from serve_ab.analysis import power as _power

    common = {"alpha": args.alpha, "power": args.power, "variants": args.variants, "two_sided": not args.one_sided}
    if args.baseline_rate is None and args.relative:
        raise ValueError(f"argument --relative: only applies with --baseline-rate; with --std give --mde in the "
                         f"metric's units (got --std {args.std} --mde {args.mde})")
    if args.alpha / (args.variants - 1) < _MIN_ALPHA_PER_COMPARISON:
        raise ValueError(f"argument --variants: {args.variants} variants leave each of their {args.variants - 1} "
                         f"comparisons alpha {args.alpha / (args.variants - 1):.2g} (--alpha {args.alpha:g}), below "
                         f"the {_MIN_ALPHA_PER_COMPARISON:g} serve-ab plans for")
    effect_sd = _check_effect(args)
    try:
        if args.baseline_rate is not None:
            plan = _power.sample_size_conversions(args.baseline_rate, args.mde, relative=args.relative, **common)
        else:
            plan = _power.sample_size_means(args.std, args.mde, **common)
    except ValueError as e:
        # The library's messages start with its parameter's name; the user typed an option.
        message = str(e)
        name = message.removeprefix("relative ").split(" ", 1)[0]
        option = f"--{name.replace('_', '-')}"
        if option in _OPTIONS:
            raise ValueError(f"argument {option}: {message}") from None
        raise ValueError(_unplannable(args, effect_sd, message)) from None  # the solver's bounds
    except ArithmeticError as e:  # an overflow inside statsmodels or scipy
        raise ValueError(_unplannable(args, effect_sd, f"{type(e).__name__}: {e}")) from None
    return plan


_OPTIONS = ("--baseline-rate", "--std", "--mde", "--alpha", "--power", "--variants")


def _check_effect(args: argparse.Namespace) -> float:
    """The effect in standard deviations of one request; refuses effects too small or too large
    to plan, in terms of the flags given.

    Runs before the solvers, which return NaN (with warnings) outside about 1e-8 to 1e10 sd.
    """
    if args.baseline_rate is not None:
        p0 = args.baseline_rate
        mde_abs = args.mde * p0 if args.relative else args.mde
        if not 0 < p0 + mde_abs < 1:
            return math.nan  # the library names the range --mde must be in
        effect_sd = abs(2 * math.asin(math.sqrt(p0 + mde_abs)) - 2 * math.asin(math.sqrt(p0)))
        if effect_sd == 0:  # p0 + mde rounds to p0: h by its slope at p0 instead
            effect_sd = abs(mde_abs) / math.sqrt(p0 * (1 - p0))
        # Near p0, Cohen's h is mde / sqrt(p0 (1 - p0)).
        smallest = _MIN_EFFECT_SD * math.sqrt(p0 * (1 - p0)) / (p0 if args.relative else 1.0)
        given, what = f"{args.mde:g}", "standard deviations of the rate (Cohen's h)"
    else:
        effect_sd = abs(args.mde) / args.std
        smallest = _MIN_EFFECT_SD * args.std
        given, what = f"{args.mde:g} with --std {args.std:g}", "standard deviations"
    if effect_sd < _MIN_EFFECT_SD:
        alpha = args.alpha / (args.variants - 1) / (2 if not args.one_sided else 1)
        z = -NormalDist().inv_cdf(alpha) + NormalDist().inv_cdf(args.power)
        # The normal approximation, per arm. Under about 1e-154 sd it passes what a float holds,
        # and under about 1e-162 sd the square underflows to 0 (a division by zero).
        square = effect_sd**2
        about = 2 * z * z / square if square > 0 else math.inf
        need = f"about {about:.1e}" if math.isfinite(about) else "more than 1e+308"
        raise ValueError(f"argument --mde: {given} is too small to plan: it is {effect_sd:.2g} {what}, which would "
                         f"need {need} units per arm; serve-ab plans effects of at least "
                         f"{_MIN_EFFECT_SD:g} sd (here |--mde| >= {smallest:.2g})")
    if effect_sd > _MAX_EFFECT_SD:  # only means: a rate's h is at most pi
        raise ValueError(f"argument --mde: {given} is too large to plan: it is {effect_sd:.2g} {what}; serve-ab "
                         f"plans effects of at most {_MAX_EFFECT_SD:g} sd (here |--mde| <= "
                         f"{_MAX_EFFECT_SD * args.std:.2g}), and any effect over about 10 sd needs only "
                         f"{_MIN_UNITS} units per arm; are --std and --mde in the same units?")
    return effect_sd


def _unplannable(args: argparse.Namespace, effect_sd: float, why: str) -> str:
    """A plan the solvers could not make although the effect is within bounds (e.g. a lopsided
    --allocation with a tiny --mde)."""
    flags = [f"--mde {args.mde:g}", f"--alpha {args.alpha:g}", f"--power {args.power:g}"]
    if getattr(args, "allocation", None) is not None:
        flags.append(f"--allocation {args.allocation[0]:g}:{args.allocation[1]:g}")
    return (f"argument --mde: cannot plan {', '.join(flags)} (an effect of {effect_sd:.2g} sd): {why}; "
            "a larger --mde or --alpha, a smaller --power or a more even --allocation needs fewer units")


def _fixed_requests_control(args: argparse.Namespace, base: _power.SampleSizePlan, ratio: float) -> float:
    """Control-arm requests for the fixed test with ``ratio`` variant requests per control request.

    Rates: the test the report runs (:func:`~serve_ab.analysis.power.rates_power`: each arm's
    own variance, at least the pooled one). Cohen's h gives both arms one variance, right for
    equal arms but not for a lopsided split: at 90:10 its plans had power 0.73 (5% -> 8%),
    0.68 (1% -> 2%, 95:5) or 0.74 (2% -> 1%) under that test, not 0.8. Means: the t-test, one
    standard deviation for both arms.
    """
    from serve_ab.analysis import power as _power

    try:
        if base.kind == "conversion":
            return _rates_requests_control(base, ratio)
        return _power.n_control_exact(base, ratio)
    except ValueError as e:  # no size below the solver's bound reaches the power
        raise ValueError(_unplannable(args, base.effect_size, str(e))) from None


def _rates_requests_control(base: _power.SampleSizePlan, ratio: float) -> float:
    """The root in the control arm's size of :func:`~serve_ab.analysis.power.rates_power`."""
    from scipy import optimize

    from serve_ab.analysis import power as _power

    p0, p1 = base.baseline_rate, base.baseline_rate + base.mde_abs

    def short(n_c: float) -> float:
        return _power.rates_power(p0, p1, n_c, n_c * ratio, base.alpha_per_comparison, base.two_sided) - base.power

    lo = _MIN_UNITS * max(1.0, 1.0 / ratio)  # both arms hold >= 2
    if short(lo) >= 0:
        return lo
    hi = 2 * lo
    while short(hi) < 0:
        hi *= 2
        if hi > 1e18:
            raise ValueError(f"no sample size below 1e+18 reaches power {base.power:g}")
    return float(optimize.brentq(short, hi / 2, hi, xtol=1e-9, rtol=1e-13))


def _requests(units: int, m: float) -> int:
    return math.ceil(units * m - 1e-9)  # expected requests, rounded up


def _table(plan: dict[str, Any]) -> str:
    mde = plan["mde_abs"]
    if plan["kind"] == "conversion":
        base_rate = plan["baseline_rate"]
        head = "conversions, " + ("mSPRT on the difference in rates" if plan["sequential"]
                                  else "two-proportion z-test")
        rows = [("baseline rate", f"{base_rate:.4g}"),
                ("minimum effect", f"{mde:+.4g} ({_relative(mde, base_rate)}) -> {base_rate + mde:.4g}")]
    else:
        head = "means, " + ("mSPRT on the difference in means" if plan["sequential"] else "two-sample t-test")
        rows = [("std dev", f"{plan['std']:.4g} per request"),
                ("minimum effect", f"{mde:+.4g} ({plan['effect_size']:.3g} sd)")]
    comparisons = plan["variants"] - 1
    rows += [
        ("alpha", f"{plan['alpha']:g} ({'two' if plan['two_sided'] else 'one'}-sided"
                  + (f", {plan['alpha_per_comparison']:.3g} per comparison x {comparisons})"
                     if comparisons > 1 else ")")),
        ("power", f"{plan['power']:g}"),
    ]
    if plan["sequential"]:
        test = f"mSPRT, valid at every look (tau {plan['tau']:.4g}); power at the final look, more if monitored"
        rows.append(("test", test))
    else:
        rows.append(("test", "fixed horizon: read once, at the planned size"))
    clustering = f"{plan['requests_per_unit']:g} (ICC {plan['icc']:g}, design effect {plan['design_effect']:.4g})"
    rows.append(("requests per unit", clustering))
    units, requests = plan["units_per_arm"], plan["requests_per_arm"]
    if plan["n_per_variant"] is not None:
        rows.append(("per variant", f"{units['control']:,} units, {requests['control']:,} requests"))
    else:
        share = plan["allocation"]
        rows.append(("allocation", f"{share['control']:g}:{share['variant']:g} (control:variant)"))
        rows.append(("control", f"{units['control']:,} units, {requests['control']:,} requests"))
        rows.append(("variant", f"{units['variant']:,} units, {requests['variant']:,} requests"))
    rows.append((f"total ({plan['variants']} variants)",
                 f"{plan['units_total']:,} units, {plan['requests_total']:,} requests"))
    rows += [("note", note) for note in plan["notes"]]
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"sample size ({head})"] + [f"  {k:<{width}}  {v}" for k, v in rows])


# ---- argparse types: each names its option, the value, and what is valid -----------------


def _alpha(text: str) -> float:
    value = _float(text)
    if not _MIN_ALPHA <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not in [{_MIN_ALPHA:g}, 1); e.g. --alpha 0.05")
    return value


def _open_unit(option: str, example: str):
    def parse(text: str) -> float:
        value = _float(text)
        if not 0 < value < 1:
            raise argparse.ArgumentTypeError(f"{text} is not in (0, 1); e.g. {option} {example}")
        return value
    return parse


def _positive(option: str):
    def parse(text: str) -> float:
        value = _float(text)
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"{text} must be a number > 0; e.g. {option} 12.5")
        return value
    return parse


def _nonzero(option: str):
    def parse(text: str) -> float:
        value = _float(text)
        if value == 0 or math.isnan(value) or abs(value) == float("inf"):
            raise argparse.ArgumentTypeError(f"{text} must be a non-zero number; e.g. {option} 0.02")
        return value
    return parse


def _at_least_two(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; e.g. --variants 3") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"{value} must be >= 2 (arms including the control); e.g. --variants 2")
    return value


def _at_least_one(text: str) -> float:
    value = _float(text)
    if not 1 <= value <= _MAX_REQUESTS_PER_UNIT:
        raise argparse.ArgumentTypeError(f"{text} must be a number >= 1 and <= {_MAX_REQUESTS_PER_UNIT:g} (mean "
                                         f"requests per randomisation unit); e.g. --requests-per-unit 5")
    return value


def _closed_unit(text: str) -> float:
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1] (the intra-class correlation of one unit's "
                                         f"requests); e.g. --icc 0.05")
    return value


def _allocation(text: str) -> tuple[float, float]:
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        share_c, share_v = float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not C:V (control:variant percentages summing to 100); "
                                         f"e.g. --allocation 95:5") from None
    if not (0 < share_c < 100 and 0 < share_v < 100):
        raise argparse.ArgumentTypeError(f"{text}: each share must be > 0 and < 100 (control:variant percentages "
                                         f"summing to 100); e.g. --allocation 95:5")
    if abs(share_c + share_v - 100) > 1e-6:
        raise argparse.ArgumentTypeError(f"{text} sums to {share_c + share_v:g}, not 100 (control:variant "
                                         f"percentages); e.g. --allocation 95:5")
    return share_c, share_v


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _relative(mde: float, base_rate: float) -> str:
    """The effect as a share of the baseline: +20.0%; -0.01% (three digits below 0.1%); or
    in powers of ten past what a percentage shows readably (a baseline rate of 1e-300 makes
    0.02 some 1e300 times it)."""
    share = mde / base_rate
    if 0 < abs(share) < 1e-3:  # one decimal of a percent would read as 0.0%
        return f"{100 * share:+.3g}%"
    if abs(share) < 1e4:
        return f"{share:+.1%}"
    return f"{share:+.3g}x the baseline" if math.isfinite(share) else "over 1e308x the baseline"
