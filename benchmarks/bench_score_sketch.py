"""What counting 1 - x beside x costs a router: its fold of answers with and without it.

The gates' score sketches also count ``1 - score`` (``analysis/sketch.py``: the CDF near 1 is
otherwise lost in a few buckets). Routers fold answers 256 at a time
(``IntervalAggregate.served_rows``); this times that fold on the same rows with the gates'
score sketches counting 1 - x and not, in turns, in one process (no Ray), and the shadow's
per-pair sketches of a regression's values (``ShadowStats.add``'s two ``LogHistogram.add``)
likewise. Per row of rows with a score (a classifier's answers, 90/10 over two versions, each
with a user), the minimum and median over rounds, and what it adds: the difference of the
minimums (the least disturbed rounds; on a loaded machine the paired medians wander by more
than the difference) and the median of the paired differences.

    python -m benchmarks.bench_score_sketch            # ~10 s
    python -m benchmarks.bench_score_sketch --quick    # ~2 s
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from serve_ab.analysis.aggregate import GateAggregate, IntervalAggregate
from serve_ab.analysis.sketch import LogHistogram

BATCH = 256  # the router's fold (serving/core/observe.py)
BATCHES = 10
WEIGHTS = {0: {"v1": 90.0, "v2": 10.0}}


def _rows(rng: np.random.Generator) -> list[list[tuple]]:
    units = rng.integers(0, 2**62, BATCH * BATCHES)
    return [[("v2" if i % 10 == 0 else "v1", 3.0, None, 1, float(rng.beta(40.0, 0.4)), int(units[b * BATCH + i]),
              True, False, 0, None) for i in range(BATCH)] for b in range(BATCHES)]


def fold_us(rows: list[list[tuple]], complement: bool) -> float:
    """One round: every batch folded into a fresh interval, per row."""
    aggregate = IntervalAggregate()
    for version in ("v1", "v2"):
        aggregate.gates[version] = GateAggregate(scores=LogHistogram(complement=complement))
    start = time.perf_counter()
    for batch in rows:
        aggregate.served_rows(batch, WEIGHTS)
    return (time.perf_counter() - start) / (BATCH * len(rows)) * 1e6


def sketch_us(batches: list[np.ndarray], complement: bool) -> float:
    """One round of the part that changed alone: the score sketch's add_many, per score."""
    sketch = LogHistogram(complement=complement)
    start = time.perf_counter()
    for batch in batches:
        sketch.add_many(batch)
    return (time.perf_counter() - start) / (BATCH * len(batches)) * 1e6


def pair_us(values: list[float], complement: bool) -> float:
    """One round of a shadow's value sketches: live's and the shadow's value per pair."""
    live, shadow = LogHistogram(complement=complement), LogHistogram(complement=complement)
    start = time.perf_counter()
    for value in values:
        live.add(value)
        shadow.add(value)
    return (time.perf_counter() - start) / len(values) * 1e6


def measure(rounds: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(0)
    rows = _rows(rng)
    values = rng.normal(100.0, 10.0, 2_000).tolist()
    out = {}
    scores = [np.array([row[4] for row in batch]) for batch in rows]
    for name, run, arg in (("fold_per_row", fold_us, rows), ("sketch_per_score", sketch_us, scores),
                           ("shadow_pair", pair_us, values)):
        run(arg, True), run(arg, False)  # warm
        with_, without = [], []
        for _ in range(rounds):  # in turns, so that both see the same machine
            with_.append(run(arg, True))
            without.append(run(arg, False))
        diffs = np.array(with_) - np.array(without)
        out[name] = {"without_min_us": min(without), "with_min_us": min(with_),
                     "without_median_us": float(np.median(without)), "with_median_us": float(np.median(with_)),
                     "added_min_us": min(with_) - min(without), "added_median_us": float(np.median(diffs)),
                     "ratio_min": min(with_) / min(without)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="21 rounds instead of 201")
    args = parser.parse_args()
    result = measure(21 if args.quick else 201)
    labels = {"fold_per_row": f"router fold, per answer with a score ({BATCH} at a time)",
              "sketch_per_score": "of which the score sketch's add_many, per score",
              "shadow_pair": "shadow, per pair of regression values"}
    print(f"{'':54} {'without 1 - x':>14} {'with':>9} {'added':>9} {'(paired median)':>16} {'ratio':>6}")
    for name, row in result.items():
        print(f"{labels[name]:54} {row['without_min_us']:>11.3f} µs {row['with_min_us']:>6.3f} µs "
              f"{row['added_min_us']:>6.3f} µs {row['added_median_us']:>13.3f} µs {row['ratio_min']:>6.2f}")
    print(json.dumps({"bench_score_sketch": result}))


if __name__ == "__main__":
    main()
