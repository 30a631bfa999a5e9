"""Live vs shadow paired statistics, checked against statsmodels/scipy to 1e-6."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from serve_ab.analysis import shadow
from serve_ab.analysis.shadow import (
    agreement,
    class_counts,
    compare_correctness,
    flip_table,
    score_differences,
    wilson_interval,
)

TOL = 1e-6


@pytest.fixture
def rng():
    return np.random.default_rng(42)


@pytest.mark.parametrize("successes, n", [(0, 20), (7, 20), (20, 20), (9_870, 10_000)])
@pytest.mark.parametrize("confidence", [0.95, 0.99])
def test_wilson_interval_matches_statsmodels(successes, n, confidence):
    ref = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    assert wilson_interval(successes, n, confidence) == pytest.approx(ref, abs=TOL)


def test_agreement_counts_equal_labels():
    live = ["cat", "dog", "dog", "cat", "bird", "dog"]
    shadow_ = ["cat", "dog", "cat", "cat", "bird", "bird"]
    got = agreement(live, shadow_)
    assert (got.n, got.n_agree, got.rate) == (6, 4, pytest.approx(4 / 6))
    assert got.ci == pytest.approx(proportion_confint(4, 6, method="wilson"), abs=TOL)


def test_flip_table_and_class_counts():
    live = np.array([0, 1, 1, 2, 2, 2, 1])
    shadow_ = np.array([0, 1, 2, 2, 1, 2, 1])
    table = flip_table(live, shadow_)
    assert table.classes == (0, 1, 2)
    assert table.counts == ((1, 0, 0), (0, 2, 1), (0, 1, 2))
    assert table.flips() == {(1, 2): 1, (2, 1): 1}
    assert table.flip_rate_by_live_class() == {0: 0.0, 1: pytest.approx(1 / 3), 2: pytest.approx(1 / 3)}

    counts = class_counts(live, shadow_, classes=[2, 1, 0, 3])
    assert (counts.classes, counts.live, counts.shadow) == ((2, 1, 0, 3), (3, 3, 1, 0), (3, 3, 1, 0))
    with pytest.raises(ValueError, match=r"shadow label 'x' is not in classes \['a'\]"):
        class_counts(["a"], ["a", "x"], classes=["a"])


def test_mcnemar_chi2_matches_statsmodels(rng):
    live = rng.uniform(size=2000) < 0.90
    shadow_ = np.where(rng.uniform(size=2000) < 0.08, ~live, live)  # ~8% of requests change correctness
    got = compare_correctness(live, shadow_)
    b, c = int((live & ~shadow_).sum()), int((~live & shadow_).sum())
    ref = mcnemar([[int((live & shadow_).sum()), b], [c, int((~live & ~shadow_).sum())]], exact=False, correction=True)
    assert got.method == "mcnemar_chi2" and b + c >= shadow.EXACT_BELOW_DISCORDANT
    assert got.statistic == pytest.approx(ref.statistic, rel=TOL) and got.p_value == pytest.approx(ref.pvalue, rel=TOL)
    assert got.accuracy_live == pytest.approx(live.mean()) and got.accuracy_shadow == pytest.approx(shadow_.mean())
    # The paired Wald CI is the normal CI of the mean per-request difference in {-1, 0, 1}.
    d = shadow_.astype(int) - live.astype(int)
    half = stats.norm.ppf(0.975) * d.std(ddof=0) / math.sqrt(d.size)
    assert got.diff_ci == pytest.approx((d.mean() - half, d.mean() + half), abs=TOL)


def test_few_discordant_pairs_use_the_exact_binomial():
    live = np.array([1] * 40 + [1] * 2 + [0] * 9 + [0] * 4, dtype=bool)
    shadow_ = np.array([1] * 40 + [0] * 2 + [1] * 9 + [0] * 4, dtype=bool)
    got = compare_correctness(live, shadow_)
    assert got.method == "exact_binomial" and (got.live_only_correct, got.shadow_only_correct) == (2, 9)
    assert got.p_value == pytest.approx(stats.binomtest(2, 11, 0.5).pvalue, rel=TOL)
    same = compare_correctness([1, 0, 1], [1, 0, 1])
    assert (same.p_value, same.diff) == (1.0, 0.0)


def test_score_differences_match_the_paired_t_test(rng):
    live = rng.uniform(0.5, 1.0, size=500)
    shadow_ = np.clip(live + rng.normal(0.01, 0.05, size=500), 0, 1)
    got = score_differences(live, shadow_, confidence=0.9)
    ref = stats.ttest_rel(shadow_, live)
    ci = ref.confidence_interval(0.9)
    assert got.mean_diff == pytest.approx(np.mean(shadow_ - live), rel=TOL)
    assert got.ci == pytest.approx((ci.low, ci.high), abs=TOL)
    assert got.p_value == pytest.approx(ref.pvalue, rel=TOL)
    assert got.max_abs_diff == pytest.approx(np.abs(shadow_ - live).max())


def test_unpaired_inputs_are_refused_with_both_lengths():
    with pytest.raises(ValueError, match=r"paired by request: got 3 live and 2 shadow"):
        agreement([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match=r"correctness flags must be booleans or 0/1"):
        compare_correctness([1, 2], [1, 0])


def test_all_names_exist():
    for name in shadow.__all__:
        assert hasattr(shadow, name), name
