"""benchmarks/bench_score_sketch.py runs and measures both sides (shape only: times are not asserted)."""

from __future__ import annotations

from benchmarks import bench_score_sketch


def test_a_few_rounds_measure_each_part_with_and_without_the_complement():
    result = bench_score_sketch.measure(rounds=2)
    assert set(result) == {"fold_per_row", "sketch_per_score", "shadow_pair"}
    for row in result.values():
        assert row["without_min_us"] > 0 and row["with_min_us"] > 0
        assert row["added_min_us"] == row["with_min_us"] - row["without_min_us"]
