"""Cost of one routing decision, against what the usual workaround does per request.

    python -m benchmarks.bench_routing            # about 10 s
    python -m benchmarks.bench_routing --quick    # about 2 s

Times ``Assigner.assign`` with a key (BLAKE2b of salt and key, then a bisect over the
bucket bounds) and without one (a random bucket), and, in the same run, the baseline
``random.choices(versions, weights)``: what a hand-written ingress does to split traffic
(not sticky, no key). The candidates take turns in short timeit runs; each figure is the
best run (the median is shown beside it as the spread), also as a ratio to the baseline.
Prints a table and, last, one JSON line. Needs no Ray.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import random
import statistics
import sys
import timeit
from collections.abc import Callable

from serve_ab.routing import Assigner

TARGET_US = 5.0


def _weights(num_versions: int) -> dict[str, float]:
    # Equal shares in 1/100 % steps; the last version takes the rounding remainder.
    share_pct = round(100.0 / num_versions, 2)
    weights = {f"v{i + 1}": share_pct for i in range(num_versions - 1)}
    weights[f"v{num_versions}"] = round(100.0 - share_pct * (num_versions - 1), 2)
    return weights


def measure(num_versions: int, number: int, repeat: int) -> dict[str, dict[str, float]]:
    """Best and median microseconds per call of each candidate.

    The candidates take turns, ``number`` calls each, ``repeat`` times, so that a burst of
    other work on the machine slows them all alike rather than one of them.
    """
    weights = _weights(num_versions)
    assigner = Assigner(weights, salt="bench-salt")
    names, shares = list(weights), list(weights.values())
    # A different key on every call, as in real traffic.
    keys = itertools.cycle([f"user-{i:08d}" for i in range(4096)])
    assign = assigner.assign
    choices = random.choices
    next_key = keys.__next__

    candidates: dict[str, Callable[[], object]] = {
        "random.choices (baseline)": lambda: choices(names, shares)[0],
        "assign(key)": lambda: assign(next_key()),
        "assign(None)": lambda: assign(None),
        # The key iterator alone, so its share of "assign(key)" is visible.
        "next key only (overhead)": lambda: next_key(),
    }
    timers = {name: timeit.Timer(fn) for name, fn in candidates.items()}
    for timer in timers.values():
        timer.timeit(number=1000)  # warm up caches and the adaptive interpreter
    per_call_us: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeat):
        for name, timer in timers.items():
            per_call_us[name].append(timer.timeit(number=number) / number * 1e6)
    return {name: {"best_us": min(runs), "median_us": statistics.median(runs)}
            for name, runs in per_call_us.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (about 2 s)")
    parser.add_argument("--versions", type=int, nargs="+", default=[2, 5],
                        help="numbers of versions to split between (default: 2 5)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, object]:
    """Print the table; return the figures."""
    number, repeat = (10_000, 10) if args.quick else (20_000, 40)

    print(f"routing decision cost, Python {platform.python_version()} on {platform.machine()}, "
          f"{number} calls x {repeat} turns each, best (median) per call")
    print(f"{'versions':>8}  {'what':<28}{'us/call':>10}{'median':>10}{'vs baseline':>13}")
    summary: dict[str, object] = {"bench": "routing", "target_us": TARGET_US, "number": number,
                                  "repeat": repeat, "python": platform.python_version()}
    all_ok = True
    for num_versions in args.versions:
        results = measure(num_versions, number, repeat)
        base_us = results["random.choices (baseline)"]["best_us"]
        for name, r in results.items():
            ratio = r["best_us"] / base_us
            print(f"{num_versions:>8}  {name:<28}{r['best_us']:>10.3f}{r['median_us']:>10.3f}{ratio:>12.2f}x")
        keyed, unkeyed = results["assign(key)"]["best_us"], results["assign(None)"]["best_us"]
        all_ok &= keyed < TARGET_US and unkeyed < TARGET_US
        summary[f"v{num_versions}"] = {
            "assign_key_us": round(keyed, 3),
            "assign_no_key_us": round(unkeyed, 3),
            "random_choices_us": round(base_us, 3),
            "key_iter_overhead_us": round(results["next key only (overhead)"]["best_us"], 3),
            "assign_key_vs_baseline": round(keyed / base_us, 2),
            "assign_no_key_vs_baseline": round(unkeyed / base_us, 2),
        }
    summary["under_target"] = bool(all_ok)
    print(f"target: one decision under {TARGET_US:g} us -> {'met' if all_ok else 'NOT met'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    print(json.dumps(run(parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
