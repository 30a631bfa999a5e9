"""``serve-ab sample-size``: how many requests per variant a fixed-horizon test needs.

Wiring, for ``serve_ab/cli/command.py``::

    subparsers = parser.add_subparsers(dest="command", required=True)
    cli_sample_size.add_parser(subparsers)
    args = parser.parse_args()
    return args.func(args)          # exit code

Examples::

    serve-ab sample-size --baseline-rate 0.10 --mde 0.02
    serve-ab sample-size --baseline-rate 0.10 --mde 0.15 --relative --variants 3 --json
    serve-ab sample-size --std 12.5 --mde 1.0 --power 0.9
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import asdict
from typing import TextIO

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # statsmodels takes seconds to import: only the command itself pays
    from serve_ab.analysis import power as _power

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``sample-size``; sets ``func`` (``args -> exit code``) on the namespace."""
    parser = subparsers.add_parser(
        "sample-size",
        help="samples per variant needed to detect a minimum effect",
        description="Samples per variant for a fixed-horizon A/B test: conversions (two-proportion "
        "z-test) with --baseline-rate, or means (t-test) with --std. With more than two variants, "
        "each comparison against the control gets alpha/(variants-1).",
    )
    metric = parser.add_mutually_exclusive_group(required=True)
    metric.add_argument("--baseline-rate", type=_open_unit("--baseline-rate", "0.10"), metavar="RATE",
                        help="control conversion rate, in (0, 1), e.g. 0.10")
    metric.add_argument("--std", type=_positive("--std"), metavar="STD",
                        help="standard deviation of the metric per observation, > 0, e.g. 12.5")
    parser.add_argument("--mde", type=_nonzero("--mde"), required=True,
                        help="minimum detectable effect: rate points (0.02) or metric units; "
                        "with --relative a fraction of the baseline rate (0.2 = +20%%)")
    parser.add_argument("--relative", action="store_true", help="read --mde relative to --baseline-rate")
    parser.add_argument("--alpha", type=_open_unit("--alpha", "0.05"), default=0.05,
                        help="family-wise significance level, in (0, 1) (default: 0.05)")
    parser.add_argument("--power", type=_open_unit("--power", "0.8"), default=0.8,
                        help="probability of detecting the effect, in (0, 1) (default: 0.8)")
    parser.add_argument("--variants", type=_at_least_two, default=2,
                        help="arms including the control, >= 2 (default: 2)")
    parser.add_argument("--one-sided", action="store_true", help="plan a one-sided test (default: two-sided)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(func=functools.partial(run, parser=parser))
    return parser


def run(args: argparse.Namespace, *, parser: argparse.ArgumentParser | None = None,
        out: TextIO | None = None) -> int:
    """Compute and print the plan; invalid combinations go to ``parser.error`` (exit 2)."""
    out = out or sys.stdout
    try:
        plan = _make_plan(args)
    except ValueError as e:
        if parser is None:
            raise
        parser.error(str(e))  # exits with status 2
    if args.json:
        print(json.dumps(asdict(plan), indent=2, sort_keys=True), file=out)
    else:
        print(_table(plan), file=out)
    return 0


def _make_plan(args: argparse.Namespace) -> _power.SampleSizePlan:
    from serve_ab.analysis import power as _power

    common = dict(alpha=args.alpha, power=args.power, variants=args.variants, two_sided=not args.one_sided)
    if args.baseline_rate is None and args.relative:
        raise ValueError(f"argument --relative: only applies with --baseline-rate; with --std give --mde in the "
                         f"metric's units (got --std {args.std} --mde {args.mde})")
    try:
        if args.baseline_rate is not None:
            return _power.sample_size_conversions(args.baseline_rate, args.mde, relative=args.relative, **common)
        return _power.sample_size_means(args.std, args.mde, **common)
    except ValueError as e:
        # The library's messages start with its parameter's name; the user typed an option.
        message = str(e)
        name = message.removeprefix("relative ").split(" ", 1)[0]
        option = f"--{name.replace('_', '-')}"
        raise ValueError(f"argument {option}: {message}" if option in _OPTIONS else message) from None


_OPTIONS = ("--baseline-rate", "--std", "--mde", "--alpha", "--power", "--variants")


def _table(plan: _power.SampleSizePlan) -> str:
    if plan.kind == "conversion":
        target = plan.baseline_rate + plan.mde_abs
        head = "conversions, two-proportion z-test"
        rows = [("baseline rate", f"{plan.baseline_rate:.4g}"),
                ("minimum effect", f"{plan.mde_abs:+.4g} ({plan.mde_abs / plan.baseline_rate:+.1%}) -> {target:.4g}")]
    else:
        head = "means, two-sample t-test"
        rows = [("std dev", f"{plan.std:.4g}"), ("minimum effect", f"{plan.mde_abs:+.4g} ({plan.effect_size:.3g} sd)")]
    comparisons = plan.variants - 1
    rows += [
        ("alpha", f"{plan.alpha:g} ({'two' if plan.two_sided else 'one'}-sided"
                  + (f", {plan.alpha_per_comparison:.3g} per comparison x {comparisons})" if comparisons > 1 else ")")),
        ("power", f"{plan.power:g}"),
        ("per variant", f"{plan.n_per_variant:,}"),
        (f"total ({plan.variants} variants)", f"{plan.n_total:,}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"sample size ({head})"] + [f"  {k:<{width}}  {v}" for k, v in rows])


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
        if value == 0 or value != value or abs(value) == float("inf"):
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


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
