"""Do serve-ab's verdicts and gates err as often as they claim? Measured through the real pipeline.

    python -m benchmarks.stats_calibration --quick   # smoke size: 18-23 s here; JSON line last
    python -m benchmarks.stats_calibration --score-drift 1000   # scenario 6's score-drift
                                                     # cases alone, 1,000 reps each, also
                                                     # through the wire and GateWindows
    python -m benchmarks.stats_calibration           # about 12 min wall on 2 cores (706 s on
                                                     # 2026-12-06, scenario 9 some 65 s of it;
                                                     # scenario 10, 2026-12-07, an estimated
                                                     # 3 min more;
                                                     # 1,000 A/A reps, 400 power, 200 canary,
                                                     # 400 per CUPED case)

Every simulated request goes where a router's would: ``ExperimentStats.record`` /
``record_feedback`` (per-bucket totals, by split; the same figures as routers' interval
aggregates merged by the controller, which tests/unit/analysis/test_aggregate.py checks)
-> ``snapshot`` -> ``build_report``, read at several looks with the sequential state passed
from one look to the next; gates go through the routers' ``GateAggregate`` ->
``window_stats`` (sketches) -> ``evaluate_gates``. No formula stands in for the pipeline: the
rates below are what the report and the gates said, counted over repetitions, each with its
Monte Carlo standard error sqrt(p (1 - p) / reps).

Users are units: a random 64-bit integer, routed by its bucket (``unit % 10000``) through
``SplitTable.from_weights``, sending 4 requests each. Their outcomes are clustered: a user's
conversion rate is drawn from a Beta with ``a + b = 1 / icc - 1`` (ICC 0.3), and latency and
revenue carry a per-user normal effect holding 30% of the variance (latency on the log
scale). The experiment is configured with ``analysis.mde_relative: 0.2``, the defaults
otherwise (alpha 0.05, Holm, sequential mSPRT verdicts, power 0.8).

1. A/A, clustered users: 250 users per arm (exactly; units drawn until each arm is full), 10
   looks. Per metric (a conversion and a mean feedback metric, error_rate with a per-user
   error rate of mean 5%, latency_ms): the fixed-horizon p-value below 0.05 at the final look,
   the same at any of the 10 looks (peeking, for contrast), any better/worse verdict over the
   10 looks, and, for contrast, the naive request-level test at the final look (two-proportion
   z-test on request counts; Welch's t-test for the means), which ignores the clustering.
2. Power at the planned n: conversion 0.3 against 0.36 (the configured +20%), ICC 0.3. The
   plan is ``power.units_per_arm`` with the true per-unit variances, alpha / family size,
   ``sequential=True``, tau = the effect: what the report itself plans with (its
   ``power.required_per_arm`` at the final look is shown beside). That many users per arm,
   read at 10 looks: how often the verdict is ``better``.
3. Canary epochs: weights v2 5% -> 20% -> 50%, the same number of users (and requests) per
   period, the base conversion rate falling linearly from 0.5 to 0.2 over the three periods,
   equal in both arms at every moment (A/A), then with the candidate 20% below stable at every
   moment; 3 looks per period. The users per period are sized so that the mSPRT read once at
   the end has power 0.8 against the drop. Contrast: the naive request-level z-test on counts
   pooled over the epochs, which confounds the version with time.
4. Gates, one analysis at alpha 0.05 (the machine's first look of a step uses 0.030, later
   ones less) and ``min_samples=1``, so the confidence bounds alone decide: a candidate with
   5% errors against ``{metric: error_rate, max: 0.01}`` at windows of 10, 30, 100 and 1000
   requests; a healthy one (0.1%) at 3000; ``{metric: drift_psi, max: 0.25}`` with 10
   equally likely classes and no drift at 10 and 50 predictions per side.

5. A small arm and a rare event: weights 90/10, a 1% conversion, one request per user,
   20,000 users, 30 looks spaced geometrically (the small arm has a few dozen users at the
   first). A/A: any verdict, and the fixed p below 0.05 at the last look. Then the candidate
   converting at 2%: how often the verdict is ``better``. The small arm often has no event
   at the early looks, where its own variance is 0; the difference's variance is at least the
   pooled one (``analysis/units.py``), without which 23% of these A/A runs got a verdict.

6. Gates where users send many correlated requests (each user's error rate drawn from a
   beta distribution with the given ICC; latency lognormal with a user effect; each user
   always getting one class; feedback outcomes and values with a user effect), folded as a
   router folds them (feedback joined as the controller joins it): a candidate exactly at
   ``error_rate max 0.02``, at ``latency_p95_ms``'s bound, at ``feedback_rate min 0.5``, at
   ``feedback_mean min 10`` or at ``shadow_agreement min 0.9`` (mirrored copies paired as a
   router pairs them) should pass at most alpha of the time, and a ``drift_js`` gate with no
   drift, or a ``drift_ks`` gate between scores with a user effect and no drift, should fail
   at most alpha. The KS gate's power is shown beside it (a shift of 0.3 on the logit scale).
   The same for a confident classifier's scores (logit mean 5: 1 - score mostly 0.001-0.05),
   with ``drift_ks`` and ``drift_wasserstein``, and for logits as the scores (any real): no
   drift, and a candidate whose scores are x0.995 or x0.999 (a drop of confidence), or whose
   logits are up 0.3. Sketches of x alone lumped every score from 0.9975 up, and the gates
   passed the x0.995 drop in 97.8% (``drift_ks``) and 100% (``drift_wasserstein``) of runs;
   they now also count 1 - x (``analysis/sketch.py``) and fail it in every run.
   Counting requests as independent passed the error-rate cases 15-35% of the time, failed
   the drift_js case 85% and the drift_ks cases 38-55%, and passed the shadow_agreement cases
   about 32%; the gates now read each figure's design effect from per-group totals
   (``analysis/clusters.py``). Four error-rate cases have users who send different numbers
   of requests (lognormal activity): there the design effect's ceiling from requests per
   user decides, and users who always or never fail are that ceiling's worst case. Three
   assume ``analysis.max_user_icc: 0.1``: two where users are that alike (checked), one where
   they are 0.3 alike (what a wrong assumption costs; shown, not checked). Feedback outcomes
   and shadow agreements have the same ceiling, from how many each user gave: four cases with
   lognormal activity (users who always or never convert or agree, and an assumed 0.1), and
   a healthy candidate at 0.6 against ``min 0.5`` for the power it buys. Skewed values (lognormal revenue, keyless or per user) at
   ``feedback_mean max`` set at their true mean should pass at most alpha too, where
   Student's t alone passed 7-30%; a candidate at 0.7 of the max shows the price in power.

7. The report's per-class flip tests on a shadow: users who each keep one of 10 classes,
   and a shadow that relabels a share of each user's pairs (beta, mean 0.1, with the ICC)
   as one class of the user's own, so no class's share changes; pairs go through the
   routers' ``IntervalAggregate.pair`` -> ``ExperimentStats.merge`` -> ``snapshot`` -> the
   report's shadow section. Class 0 should be significant at most alpha of the time;
   McNemar's test alone (the same pairs, keyless) found it in 47%. Power: 30% of the users
   flipped to class 0.

8. The sample-ratio check, read at every refresh: users with one request each, routed 50/50
   by their bucket through ``ExperimentStats.record``, the report's SRM section (``_splits``
   -> ``_srm``, what ``build_report`` calls) read at 30 looks from 200 to 10,000 users. A/A:
   how often it flags a healthy split at any look (the sequential test's flag, and the
   chi-square at p < 0.001 beside it, which a report re-read at every refresh used to flag
   on); and, with a bug that loses 5% or 10% of v2's users, how often and how soon each
   finds it within 50,000 users.

9. CUPED with returning users: each user has a revenue level (normal, SD 5) that holds
   most of the variance of their reports (noise SD 3), and sends 2 reports in each of two
   periods, fed as ``record_feedback`` with the period's split; the report is read at 5 looks
   in the second period, once with ``analysis.cuped`` on (the default) and once off, on the
   same figures. ``pre``: v1 alone, then v1/v2 50/50: A/A (any verdict, fixed p < 0.05 at
   the last look) and v2 at +0.5 (how often ``better``, with and without CUPED). ``third``:
   v1/v2 80/20 with v2 at +3, then v3, the same as v1, joins at 34/33/33; v3 against v1
   is an A/A whose buckets v2 partly served before. Adjusting v3 by those buckets' earlier
   figures (v2's effect in them) read it as WORSE in 20 of 20 runs. ``drift_aa``: v1 alone,
   then v1/v2, then v1/v3 (both A/As), every value up by 3 from the second period on (a
   season): a pre-period of the buckets v1 served in v1/v2 gave v1 a covariate from two
   periods and v3 from one, BETTER in 10 of 10. A split counts as pre-period only where the
   control served every bucket the comparison reads. ``late_aa``/``late_lift``: as ``pre_*``,
   with 20% of the first period's outcomes reported during the second (after the weights
   moved) and the requests recorded as routers report them; a late outcome used to extend
   its split's period past the variant's start, and CUPED was then applied in 0 of 30 runs.

10. What users hit that the above do not cover (each through the same pipeline):
   ``whales_*``: an A/A on revenue per report, 90% zeros and the rest lognormal (log SD 2, a
   user effect), and a conversion, from users whose numbers of reports are lognormal (log SD
   1.5 or 2: a few send hundreds); the verdicts (any of 10 looks) and the fixed p at the last.
   ``peek_restarts``: an A/A read at 100 looks, the controller restarted twice (its figures
   and sequential looks through JSON and ``readable_looks``, as its store keeps them).
   ``returning_*``: the same users at every step of a 5 -> 20 -> 50 -> 100% canary (a bucket
   moves from v1 to v2 as the weight grows), conversion and mean trending down alike in both
   arms; and the candidate's conversion 20% lower (power, not checked). ``gate_looks_*``: one
   step analysed 60 times as its window grows, each analysis at ``alpha_for_look(k)`` for a
   fail and a pass: a candidate at ``error_rate``'s or ``latency_p95_ms``'s bound must pass
   at most alpha over the step, one at 0.7 of the max fail at most alpha, and none may both
   pass and fail (flip on noise).

Scenarios 2, 3 and 5 feed the conversion feedback only (no ``record`` of the requests), which
leaves their metric's path through the pipeline unchanged and halves their cost.

Prints one table per scenario, the checks issue #11 asks for, then one JSON line last with
every figure. Needs no Ray; ``--workers`` processes (default 2) share the repetitions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import itertools
import json
import math
import os
import pickle
import platform
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy
from scipy import stats

from benchmarks.common import load_now
from serve_ab.analysis.ab import SRM_THRESHOLD_P
from serve_ab.analysis.accumulate import ExperimentStats
from serve_ab.analysis.power import design_effect, sequential_power, units_per_arm
from serve_ab.analysis.report import _shadow_section, _splits, _srm, build_report
from serve_ab.config.experiment import ExperimentConfig
from serve_ab.config.rollout import Gate
from serve_ab.analysis.sketch import LogHistogram
from serve_ab.analysis.aggregate import GateAggregate, IntervalAggregate
from serve_ab.rollout.feedback import FeedbackJoin
from serve_ab.analysis.saved_looks import readable_looks
from serve_ab.rollout.gates import Observation, alpha_for_look, evaluate_gates
from serve_ab.rollout.windows import GateWindows, window_stats
from serve_ab.routing import NUM_BUCKETS, SplitTable

ALPHA = 0.05
ICC = 0.3
REQUESTS_PER_USER = 4
MDE_RELATIVE = 0.2
TARGET_POWER = 0.8
LOOKS = 10

AA_USERS_PER_ARM = 250
AA_CONVERSION = 0.3
AA_ERROR_RATE = 0.05
AA_LATENCY_MEDIAN_MS = 10.0
AA_LATENCY_LOG_SD = 0.5
AA_REVENUE_MEAN, AA_REVENUE_SD = 10.0, 3.0

POWER_BASE = 0.3

CANARY_SPLITS_PCT = (5.0, 20.0, 50.0)  # v2's weight per period
CANARY_BASE_FROM, CANARY_BASE_TO = 0.5, 0.2
CANARY_DROP = 0.2
CANARY_LOOKS_PER_PERIOD = 3

RARE_WEIGHTS = {"v1": 90.0, "v2": 10.0}
RARE_RATE = 0.01
RARE_LIFT = 1.0  # the candidate converting at 2%
RARE_USERS = 20_000
RARE_LOOKS = 30

GATE_BAD_ERROR_RATE = 0.05
GATE_HEALTHY_ERROR_RATE = 0.001
GATE_ERROR_MAX = 0.01
GATE_BAD_WINDOWS = (10, 30, 100, 1000)
GATE_HEALTHY_WINDOW = 3000
GATE_DRIFT_MAX = 0.25
GATE_DRIFT_CLASSES = 10
GATE_DRIFT_WINDOWS = (10, 50)

# Scenario 6: gates where each user sends many correlated requests (per-user random effects).
CLUSTER_ERROR_MAX = 0.02
CLUSTER_SCORE_SHIFT = 0.3  # the drift_ks power case's shift of the scores' logits
CLUSTER_CASES = {  # case: (metric, users, requests per user, ICC, true rate, or the scores' shift)
    "error_at_bound_100x20_icc0.1": ("error_rate", 100, 20, 0.1, 0.02),
    "error_at_bound_100x20_icc0.3": ("error_rate", 100, 20, 0.3, 0.02),
    "error_at_bound_40x100_icc0.1": ("error_rate", 40, 100, 0.1, 0.02),
    "error_at_bound_20x100_icc0.3": ("error_rate", 20, 100, 0.3, 0.02),
    "error_at_bound_5x400_icc0.3": ("error_rate", 5, 400, 0.3, 0.02),
    "error_healthy_1pct_200x10_icc0.05": ("error_rate", 200, 10, 0.05, 0.01),
    "p95_at_bound_40x50_icc0.3": ("latency_p95_ms", 40, 50, 0.3, 0.0),
    "drift_js_one_class_per_user_100x20": ("drift_js", 100, 20, 1.0, 0.0),
    "feedback_rate_at_bound_100x20_icc0.3": ("feedback_rate", 100, 20, 0.3, 0.5),
    "feedback_mean_at_bound_40x50_icc0.3": ("feedback_mean", 40, 50, 0.3, 0.0),
    "shadow_agreement_at_bound_100x20_icc0.3": ("shadow_agreement", 100, 20, 0.3, 0.9),
    "shadow_agreement_at_bound_40x100_icc0.1": ("shadow_agreement", 40, 100, 0.1, 0.9),
    "drift_ks_no_drift_100x20_icc0.3": ("drift_ks", 100, 20, 0.3, 0.0),
    "drift_ks_no_drift_40x50_icc0.3": ("drift_ks", 40, 50, 0.3, 0.0),
    # A regression's values, 106 +- 2: closer together than a score bin (clusters.py).
    "drift_ks_no_drift_narrow_values_40x50_icc0.3": ("drift_ks", 40, 50, 0.3, 0.0),
    # A power figure, not a check: the candidate's scores shifted by 0.3 on the logit scale.
    "drift_ks_healthy_detects_shift_100x20_icc0.3": ("drift_ks", 100, 20, 0.3, CLUSTER_SCORE_SHIFT),
    # A confident classifier's scores (the logistic of a normal, mean 5, SD 1: 1 - score mostly
    # 0.001-0.05), where a sketch of x alone lumped every score from 0.9975 up; and the
    # candidate's confidence dropped, every score x (1 - 0.005): power figures.
    "drift_ks_no_drift_confident_100x20_icc0.3": ("drift_ks", 100, 20, 0.3, 0.0),
    "drift_ks_healthy_detects_confident_x0.995_100x20_icc0.3": ("drift_ks", 100, 20, 0.3, 0.005),
    "drift_ks_healthy_detects_confident_x0.999_100x20_icc0.3": ("drift_ks", 100, 20, 0.3, 0.001),
    "drift_wasserstein_no_drift_confident_100x20_icc0.3": ("drift_wasserstein", 100, 20, 0.3, 0.0),
    "drift_wasserstein_healthy_detects_confident_x0.995_100x20_icc0.3": ("drift_wasserstein", 100, 20, 0.3, 0.005),
    # Logits as the scores (any real: 1.5 +- 1, across 0 and 1), and shifted by 0.3.
    "drift_ks_no_drift_logits_100x20_icc0.3": ("drift_ks", 100, 20, 0.3, 0.0),
    "drift_ks_healthy_detects_logits_shift_100x20_icc0.3": ("drift_ks", 100, 20, 0.3, CLUSTER_SCORE_SHIFT),
    # Skewed values (revenue) under a max: lognormal, CLUSTER_SKEWED's log SD; keyless (0 users
    # x n: n values with no user) or per user (ICC on the log scale).
    "feedback_mean_skewed_max_at_bound_keyless_200_sigma1": ("feedback_mean", 0, 200, 0.0, 1.0),
    "feedback_mean_skewed_max_at_bound_keyless_1000_sigma1": ("feedback_mean", 0, 1000, 0.0, 1.0),
    "feedback_mean_skewed_max_at_bound_keyless_100_sigma2": ("feedback_mean", 0, 100, 0.0, 1.0),
    "feedback_mean_skewed_max_at_bound_100x20_icc0.3_sigma1": ("feedback_mean", 100, 20, 0.3, 1.0),
    # A power figure: the true mean at 0.7 of the max.
    "feedback_mean_skewed_healthy_0.7_keyless_1000_sigma1": ("feedback_mean", 0, 1000, 0.0, 0.7),
    # Users who send different numbers of requests (lognormal activity, CLUSTER_ACTIVITY_SIGMA;
    # the middle figure is the mean per user): the keyed 5% step of a canary at 100 requests/s,
    # where the design effect's ceiling (clusters.py) decides, and users who always or never
    # fail, the ceiling's own worst case. The heavier-tailed ones: a few users send most requests.
    "error_at_bound_300x6_lognormal1_icc0.1": ("error_rate", 300, 6, 0.1, 0.02),
    "error_at_bound_300x6_lognormal1_icc0.99": ("error_rate", 300, 6, 0.99, 0.02),
    "error_at_bound_100x20_lognormal1.5_icc0.99": ("error_rate", 100, 20, 0.99, 0.02),
    "error_at_bound_1000x3_lognormal2_icc0.99": ("error_rate", 1000, 3, 0.99, 0.02),
    # The rollout assumes users' requests at most 0.1 alike (analysis.max_user_icc): checked
    # where that holds; where they are 0.3 alike, a figure of what a wrong assumption costs.
    "error_at_bound_300x6_lognormal1_icc0.1_assume0.1": ("error_rate", 300, 6, 0.1, 0.02),
    "p95_at_bound_300x6_lognormal1_icc0.1_assume0.1": ("latency_p95_ms", 300, 6, 0.1, 0.0),
    "error_at_bound_300x6_lognormal1_icc0.3_assume0.1_wrong": ("error_rate", 300, 6, 0.3, 0.02),
    # The same ceiling for feedback outcomes and shadow agreements, from how many values each
    # user gave: users who always or never convert (agree), its worst case, and an assumed 0.1.
    "feedback_rate_at_bound_300x6_lognormal1_icc0.99": ("feedback_rate", 300, 6, 0.99, 0.5),
    "feedback_rate_at_bound_100x20_lognormal1.5_icc0.99": ("feedback_rate", 100, 20, 0.99, 0.5),
    "feedback_rate_at_bound_300x6_lognormal1_icc0.1_assume0.1": ("feedback_rate", 300, 6, 0.1, 0.5),
    "shadow_agreement_at_bound_300x6_lognormal1_icc0.99": ("shadow_agreement", 300, 6, 0.99, 0.9),
    # Power figures: a healthy candidate converting at 0.6 against min 0.5, its outcomes
    # correlated within users (ICC 0.3), as in a canary's keyed step.
    "feedback_rate_healthy_0.6_300x6_lognormal1_icc0.3": ("feedback_rate", 300, 6, 0.3, 0.6),
    "feedback_rate_healthy_0.6_300x6_lognormal1_icc0.3_assume0.1": ("feedback_rate", 300, 6, 0.3, 0.6),
}
# Lognormal activity (log SD) of the cases above that have it; the others' users send per_user each.
CLUSTER_ACTIVITY_SIGMA = {case: float(case.split("_lognormal")[1].split("_")[0])
                          for case in CLUSTER_CASES if "_lognormal" in case}
# The analysis.max_user_icc a case's rollout assumes (none for the others).
CLUSTER_ASSUMED_ICC = {case: float(case.split("_assume")[1].split("_")[0])
                       for case in CLUSTER_CASES if "_assume" in case}
# Skewed cases: the values' log SD; the rate slot above is the true mean over the max.
CLUSTER_SKEWED_LOG_SD = {case: 2.0 if case.endswith("sigma2") else 1.0
                         for case in CLUSTER_CASES if "_skewed_" in case}
CLUSTER_FEEDBACK_MIN_RATE = 0.5
CLUSTER_FEEDBACK_MEAN, CLUSTER_FEEDBACK_SD = 10.0, 3.0
CLUSTER_LOG_SD = 0.5  # latency: lognormal, the user's effect and the request's on the log scale
CLUSTER_P95_MAX_MS = AA_LATENCY_MEDIAN_MS * math.exp(1.6448536 * CLUSTER_LOG_SD)  # the true p95
CLUSTER_DRIFT_JS_MAX = 0.01
# Scores: a classifier's top-class probability, the logistic of a normal (mean 1.5, SD 1) with
# a user effect; max 0, so the KS test alone decides whether the gate fails.
CLUSTER_SCORE_LOGIT_MEAN, CLUSTER_SCORE_LOGIT_SD, CLUSTER_DRIFT_KS_MAX = 1.5, 1.0, 0.0
CLUSTER_NARROW_MEAN, CLUSTER_NARROW_SD = 106.0, 2.0  # the "narrow" case's values instead
CLUSTER_CONFIDENT_LOGIT_MEAN = 5.0  # the "confident" cases' (median score 0.9933)

# Scenario 7: the report's per-class flip tests on a shadow, users who each keep one class.
FLIP_CLASSES = 10
FLIP_RATE = 0.1  # the mean share of a user's pairs the shadow labels differently
FLIP_CASES = {  # case: (users, pairs per user, ICC of the flip rate, share of users flipped to class 0, keyless)
    "aa_100x20_icc0.3": (100, 20, 0.3, 0.0, False),
    "aa_40x100_icc0.1": (40, 100, 0.1, 0.0, False),
    "aa_500x4_icc0.3": (500, 4, 0.3, 0.0, False),
    # The same pairs as the first, keyless: what McNemar's test alone reads (a reference).
    "aa_100x20_icc0.3_counted_as_independent": (100, 20, 0.3, 0.0, True),
    # A power figure: 30% of the users not in class 0 are flipped to it, not to a class at random.
    "healthy_detects_shift_300x20_icc0.3": (300, 20, 0.3, 0.3, False),
}

# Scenario 8: the SRM check at every refresh.
SRM_USERS, SRM_LOOKS, SRM_FIRST_LOOK = 10_000, 30, 200
SRM_LOST = (0.05, 0.1)  # shares of v2's users a bug loses (a 2.5% and a 5% imbalance) ...
SRM_LOST_USERS = 50_000  # ... followed to this many users, a quarter of the A/A's reps
LIMIT_SRM_AA = 0.005  # the flag's threshold is p < 0.001; room for the MC noise of a few hundred reps

# What issue #11 asks of each figure.
LIMIT_AA = 0.06
POWER_TOLERANCE = 0.05
LIMIT_GATE = 0.05
# A check misses where the rate's one-sided bound at this confidence is past its limit.
CHECK_CONFIDENCE = 0.99

# Scenario 9: CUPED with returning users.
CUPED_USERS = 2000
CUPED_LEVEL_MEAN, CUPED_LEVEL_SD, CUPED_NOISE_SD = 20.0, 5.0, 3.0
CUPED_REPORTS_PER_PERIOD = 2
CUPED_LOOKS = 5
CUPED_LIFT = 0.5
CUPED_SEASON = 3.0  # drift_aa: every value up by this from the second period on (15%)
CUPED_CASES = {  # case: (each period's weights, the last read at looks; each version's effect; compared; shifts)
    "pre_aa": ([{"v1": 100.0}, {"v1": 50.0, "v2": 50.0}], {}, "v2", ()),
    "pre_lift": ([{"v1": 100.0}, {"v1": 50.0, "v2": 50.0}], {"v2": CUPED_LIFT}, "v2", ()),
    "third_aa": ([{"v1": 80.0, "v2": 20.0}, {"v1": 34.0, "v2": 33.0, "v3": 33.0}], {"v2": 3.0}, "v3", ()),
    "drift_aa": ([{"v1": 100.0}, {"v1": 50.0, "v2": 50.0}, {"v1": 50.0, "v3": 50.0}], {}, "v3",
                 (0.0, CUPED_SEASON, CUPED_SEASON)),
    # As pre_*, with a share of the pre-period's outcomes reported late, during the second period
    # (a purchase reported after the weights moved), and the requests recorded as routers report
    # them, which set each split's period. One late report switched CUPED off (2026-12-07).
    "late_aa": ([{"v1": 100.0}, {"v1": 50.0, "v2": 50.0}], {}, "v2", ()),
    "late_lift": ([{"v1": 100.0}, {"v1": 50.0, "v2": 50.0}], {"v2": CUPED_LIFT}, "v2", ()),
}
CUPED_LATE_SHARE = 0.2  # late_*: the share of the pre-period's reports sent in the second period

# Scenario 10: what users hit that the scenarios above do not cover (2026-12-07).
# Heavy-tailed revenue with whales: 90% of reports 0, the rest lognormal (log SD 2, a user
# effect of 30% of the log variance), a user's reports lognormal in number (log SD 1.5 or 2:
# the top users send hundreds), a conversion beside it (ICC 0.3); A/A, 10 looks.
WHALE_CASES = {  # case: (users, mean reports per user, activity log SD)
    "whales_1000_sigma1.5": (1000, 5.0, 1.5),
    "whales_2000_sigma2": (2000, 5.0, 2.0),
}
WHALE_ZERO_SHARE, WHALE_LOG_SD, WHALE_ICC = 0.9, 2.0, 0.3
# Peeking: an A/A read at PEEK_LOOKS evenly spaced looks (a refresh every few seconds for
# hours) from PEEK_FIRST users on, the controller restarted (figures and sequential looks
# through JSON, as its store keeps them) at each of PEEK_RESTARTS.
PEEK_USERS, PEEK_LOOKS, PEEK_FIRST, PEEK_RESTARTS, PEEK_PER_USER = 10_000, 100, 100, (33, 66), 3
# A canary's steps with the same users returning in each (a bucket moves from v1 to v2 as the
# weight grows), a base conversion falling from 0.5 to 0.2 and a mean falling by 5 over the
# steps; 3 looks a step. A/A, and a 20% drop of the conversion as a power figure.
RETURN_STEPS_PCT, RETURN_USERS, RETURN_VISITS_PER_STEP, RETURN_LOOKS_PER_STEP = (5.0, 20.0, 50.0, 100.0), 6000, 2.0, 3
# Gates read at every analysis of one step (60 analyses, 5 s apart), the window growing by 50
# users x 4 requests a side each time, judged at alpha_for_look(k) for a fail and for a pass
# (a set_weight step ends on its first pass): error_rate max 0.02 (keyed, ICC 0.1; keyless),
# latency_p95_ms at the true p95 (keyed, ICC 0.1). At the bound a pass is false; below it
# (0.7 of the max) a fail is.
GATE_LOOKS, GATE_LOOK_USERS, GATE_LOOK_PER_USER, GATE_LOOK_ERROR_MAX = 60, 50, 4, 0.02
GATE_LOOK_CASES = {  # case: (metric, true value over the max, ICC, keyless)
    "error_at_bound_keyed_icc0.1": ("error_rate", 1.0, 0.1, False),
    "error_at_bound_keyless": ("error_rate", 1.0, 0.0, True),
    "error_healthy_0.7_keyed_icc0.1": ("error_rate", 0.7, 0.1, False),
    "p95_at_bound_keyed_icc0.1": ("latency_p95_ms", 1.0, 0.1, False),
}

VERSIONS = ("v1", "v2")
CONVERSION, MEAN = "converted", "revenue"
FEEDBACK_KINDS = {CONVERSION: "conversion", MEAN: "mean"}
AA_METRICS = ("error_rate", "latency_ms", CONVERSION, MEAN)


@dataclass(frozen=True)
class Mode:
    aa_reps: int
    power_reps: int
    canary_reps: int  # each of A/A and the drop
    gate_reps: int


def default_mode(reps: int) -> Mode:
    """``reps`` is the power scenario's; the A/A runs 2.5x as many (its rates sit near the
    0.05-0.06 limits, where 400 reps' MC SE of 0.011 cannot tell them apart), the costlier
    canary fewer, the cheap gates 2.5x."""
    return Mode(aa_reps=reps * 5 // 2, power_reps=reps, canary_reps=max(2, reps // 2),
                gate_reps=max(4, reps * 5 // 2))


FULL_REPS = 400
QUICK = Mode(aa_reps=12, power_reps=6, canary_reps=4, gate_reps=60)


@dataclass(frozen=True)
class Rate:
    """How often something happened in ``reps`` repetitions, with its Monte Carlo SE."""

    hits: int
    reps: int

    @property
    def value(self) -> float:
        return self.hits / self.reps if self.reps else math.nan

    @property
    def mc_se(self) -> float:
        p = self.value
        return math.sqrt(p * (1 - p) / self.reps) if self.reps else math.nan

    def bounds(self, confidence: float = 0.99) -> tuple[float, float]:
        """One-sided Clopper-Pearson bounds (lower, upper), each at ``confidence``: where the
        true rate may lie given the Monte Carlo noise of ``reps`` repetitions."""
        lower = 0.0 if self.hits == 0 else float(stats.beta.ppf(1 - confidence, self.hits, self.reps - self.hits + 1))
        upper = 1.0 if self.hits == self.reps else float(stats.beta.ppf(confidence, self.hits + 1,
                                                                        self.reps - self.hits))
        return lower, upper

    def to_dict(self) -> dict[str, Any]:
        return {"rate": self.value, "mc_se": self.mc_se, "hits": self.hits, "reps": self.reps}

    def __str__(self) -> str:
        return f"{self.value:6.3f} ± {self.mc_se:.3f}"


def count(flags: Iterable[bool]) -> Rate:
    """The rate of True among one flag per repetition."""
    flags = [bool(f) for f in flags]
    return Rate(sum(flags), len(flags))


# ---- the pipeline ------------------------------------------------------------------------


def experiment(weights_pct: Mapping[str, float], metrics: tuple[str, ...] = (CONVERSION, MEAN)) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "model": "calibration",
        "versions": [{"name": v, "path": f"{v}.onnx", "backend": "onnx"} for v in VERSIONS],
        "weights": dict(weights_pct),
        "analysis": {"mde_relative": MDE_RELATIVE, "alpha": ALPHA, "power": TARGET_POWER,
                     "metrics": [{"name": m, "kind": FEEDBACK_KINDS[m]} for m in metrics]},
    })


def beta_rates(rng: np.random.Generator, mean: np.ndarray | float, size: int) -> np.ndarray:
    """Per-user rates with mean ``mean`` whose requests share the intra-class correlation ICC."""
    concentration = 1.0 / ICC - 1.0  # a + b; the ICC of Beta-Binomial draws is 1 / (a + b + 1)
    mean = np.broadcast_to(np.asarray(mean, dtype=float), (size,))
    return rng.beta(mean * concentration, (1.0 - mean) * concentration)


def fill_arms(rng: np.random.Generator, table: SplitTable, per_arm: Mapping[str, int]) -> tuple[np.ndarray, list[str]]:
    """Random units, each routed by its bucket, until every arm has exactly its quota; shuffled."""
    units: list[int] = []
    arms: list[str] = []
    left = dict(per_arm)
    while any(left.values()):
        for unit in rng.integers(0, 2**63, size=4 * sum(left.values()) + 16):
            version = table.version_for_bucket(int(unit) % NUM_BUCKETS)
            if left.get(version, 0) > 0:
                left[version] -= 1
                units.append(int(unit))
                arms.append(version)
    order = rng.permutation(len(units))
    return np.asarray(units, dtype=np.int64)[order], [arms[i] for i in order]


def route(rng: np.random.Generator, table: SplitTable, count_: int) -> tuple[list[int], list[str]]:
    units = [int(u) for u in rng.integers(0, 2**63, size=count_)]
    return units, [table.version_for_bucket(u % NUM_BUCKETS) for u in units]


def look_bounds(total: int, looks: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, total, looks + 1).round().astype(int)
    return list(itertools.pairwise(edges.tolist()))


def comparison(report, metric: str):
    for m in report.metrics:
        if m.name == metric:
            return m.comparisons[0] if m.comparisons else None
    return None


def decided(c) -> str | None:
    return c.verdict if c is not None and c.verdict in ("better", "worse") else None


def two_proportion_p(x1: int, n1: int, x2: int, n2: int) -> float:
    """The naive test: requests as if independent, pooled two-proportion z-test."""
    if min(n1, n2) == 0:
        return math.nan
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return float(2 * stats.norm.sf(abs(x1 / n1 - x2 / n2) / se)) if se > 0 else math.nan


def naive_p_values(snapshot: Mapping[str, Any]) -> dict[str, float]:
    """Request-level tests on the snapshot's per-version totals (ignoring who sent what)."""
    a, b = (snapshot["versions"][v] for v in VERSIONS)
    out = {"error_rate": two_proportion_p(b["errors"], b["requests"], a["errors"], a["requests"])}
    fa, fb = a["feedback"].get(CONVERSION), b["feedback"].get(CONVERSION)
    if fa and fb:
        out[CONVERSION] = two_proportion_p(fb["successes"], fb["n"], fa["successes"], fa["n"])
    ma, mb = a["feedback"].get(MEAN), b["feedback"].get(MEAN)
    if ma and mb:
        def moments(t):
            mean = t["sum"] / t["n"]
            return mean, math.sqrt(max(t["sum_sq"] - t["sum"] * mean, 0.0) / (t["n"] - 1)), t["n"]
        (m1, s1, n1), (m2, s2, n2) = moments(mb), moments(ma)
        out[MEAN] = float(stats.ttest_ind_from_stats(m1, s1, n1, m2, s2, n2, equal_var=False).pvalue)
    la, lb = (LogHistogram.from_wire(x["latency"].get("sketch_ms")) for x in (a, b))
    if la.count > 1 and lb.count > 1:  # every request's latency, each within 1% (the sketch)
        expand = lambda h: np.repeat(h.values_and_weights()[0], h.values_and_weights()[1].astype(int))  # noqa: E731
        out["latency_ms"] = float(stats.ttest_ind(expand(lb), expand(la), equal_var=False).pvalue)
    return out


# ---- 1. A/A, clustered users ----------------------------------------------------------------


def aa_rep(seed: np.random.SeedSequence) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    weights = {"v1": 50.0, "v2": 50.0}
    cfg = experiment(weights)
    table = SplitTable.from_weights(weights)
    units, arms = fill_arms(rng, table, {v: AA_USERS_PER_ARM for v in VERSIONS})
    users = len(units)
    conversion = beta_rates(rng, AA_CONVERSION, users)
    errors = beta_rates(rng, AA_ERROR_RATE, users)
    latency_user = rng.normal(0.0, math.sqrt(ICC) * AA_LATENCY_LOG_SD, users)
    revenue_user = rng.normal(AA_REVENUE_MEAN, math.sqrt(ICC) * AA_REVENUE_SD, users)
    within_latency_sd, within_revenue_sd = math.sqrt(1 - ICC) * AA_LATENCY_LOG_SD, math.sqrt(1 - ICC) * AA_REVENUE_SD

    st = ExperimentStats(VERSIONS, 0.0, feedback_kinds=FEEDBACK_KINDS)
    st.set_weights(weights)
    state = None
    verdict_any = dict.fromkeys(AA_METRICS, False)
    fixed_any = dict.fromkeys(AA_METRICS, False)
    fixed_final = dict.fromkeys(AA_METRICS, False)
    for look, (lo, hi) in enumerate(look_bounds(users, LOOKS), start=1):
        for i in range(lo, hi):
            unit, version = int(units[i]), arms[i]
            failed = rng.random(REQUESTS_PER_USER) < errors[i]
            latency = np.exp(math.log(AA_LATENCY_MEDIAN_MS) + latency_user[i]
                             + rng.normal(0.0, within_latency_sd, REQUESTS_PER_USER))
            converted = rng.random(REQUESTS_PER_USER) < conversion[i]
            revenue = revenue_user[i] + rng.normal(0.0, within_revenue_sd, REQUESTS_PER_USER)
            for r in range(REQUESTS_PER_USER):
                if failed[r]:
                    st.record(look, version, 0.0, "model", None, unit, True, split=weights)
                    continue  # no answer, so no feedback on it
                st.record(look, version, float(latency[r]), None, 1, unit, True, split=weights)
                st.record_feedback(look, version, CONVERSION, None, bool(converted[r]), unit=unit, split=weights)
                st.record_feedback(look, version, MEAN, float(revenue[r]), None, unit=unit, split=weights)
        snapshot = st.snapshot(float(look))
        report, state = build_report(cfg, snapshot, weights, state)
        for metric in AA_METRICS:
            c = comparison(report, metric)
            verdict_any[metric] |= decided(c) is not None
            significant = c is not None and c.p_value is not None and c.p_value < ALPHA
            fixed_any[metric] |= significant
            fixed_final[metric] = significant
    naive = naive_p_values(snapshot)
    return {"verdict_any": verdict_any, "fixed_any": fixed_any, "fixed_final": fixed_final,
            "naive_final": {m: not math.isnan(p) and p < ALPHA for m, p in naive.items()}}


# ---- 2. power at the planned n ----------------------------------------------------------------


def unit_variance(rate: float) -> float:
    """Variance one user adds to its arm's per-request rate: p (1 - p) x design effect / m."""
    return rate * (1 - rate) * design_effect(REQUESTS_PER_USER, ICC) / REQUESTS_PER_USER


def family_size(cfg: ExperimentConfig) -> int:
    # As the report fixes it from the config: (error_rate, latency_ms, feedback metrics) x variants.
    return 2 + len(cfg.analysis.metrics)


def power_plan() -> dict[str, Any]:
    cfg = experiment({"v1": 50.0, "v2": 50.0})
    effect = MDE_RELATIVE * POWER_BASE
    alpha = ALPHA / family_size(cfg)
    plan = units_per_arm(effect, unit_variance(POWER_BASE), unit_variance(POWER_BASE + effect), alpha=alpha,
                         power=TARGET_POWER, sequential=True, tau=effect)
    return {"base": POWER_BASE, "variant": POWER_BASE + effect, "effect_abs": effect,
            "alpha_per_comparison": alpha, "family_size": family_size(cfg), "tau": effect,
            "n_control": plan.n_control, "n_variant": plan.n_variant,
            "power_at_plan_one_look": plan.power_at_plan}


def power_rep(seed: np.random.SeedSequence, n_control: int, n_variant: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    weights = {"v1": 50.0, "v2": 50.0}
    cfg = experiment(weights)
    units, arms = fill_arms(rng, SplitTable.from_weights(weights), {"v1": n_control, "v2": n_variant})
    effect = MDE_RELATIVE * POWER_BASE
    means = np.where(np.asarray(arms) == "v2", POWER_BASE + effect, POWER_BASE)
    rates = beta_rates(rng, means, len(units))
    st = ExperimentStats(VERSIONS, 0.0, feedback_kinds=FEEDBACK_KINDS)
    st.set_weights(weights)
    state, verdict, looks_to_verdict, c = None, None, None, None
    for look, (lo, hi) in enumerate(look_bounds(len(units), LOOKS), start=1):
        converted = rng.random((hi - lo, REQUESTS_PER_USER)) < rates[lo:hi, None]
        for i in range(lo, hi):
            unit, version = int(units[i]), arms[i]
            for outcome in converted[i - lo]:
                st.record_feedback(look, version, CONVERSION, None, bool(outcome), unit=unit, split=weights)
        report, state = build_report(cfg, st.snapshot(float(look)), weights, state)
        c = comparison(report, CONVERSION)
        if verdict is None and decided(c):
            verdict, looks_to_verdict = decided(c), look
    return {"verdict": verdict, "looks_to_verdict": looks_to_verdict,
            "report_required_per_arm": c.power.required_per_arm if c is not None and c.power else None}


# ---- 3. canary epochs with a drifting base rate -------------------------------------------------


def canary_base(t: np.ndarray) -> np.ndarray:
    """The base conversion rate at time t in [0, periods): linear from 0.5 to 0.2."""
    return CANARY_BASE_FROM + (CANARY_BASE_TO - CANARY_BASE_FROM) * t / len(CANARY_SPLITS_PCT)


def canary_users_per_period() -> dict[str, Any]:
    """Users per period for the mSPRT read once at the end to have power 0.8 against the drop,
    from the true per-split variances combined by inverse variance (as the report combines)."""
    cfg = experiment({"v1": 100 - CANARY_SPLITS_PCT[0], "v2": CANARY_SPLITS_PCT[0]}, metrics=(CONVERSION,))
    alpha = ALPHA / family_size(cfg)
    # The report fixes tau at its first look with a baseline: mde_relative x the control's rate then.
    tau = MDE_RELATIVE * float(canary_base(np.array(0.5 / CANARY_LOOKS_PER_PERIOD)))

    def figures(users: float) -> tuple[float, float, float]:
        info = weighted = 0.0
        for k, share_pct in enumerate(CANARY_SPLITS_PCT):
            base = float(canary_base(np.array(k + 0.5)))
            share = share_pct / 100.0
            var = unit_variance(base) / ((1 - share) * users) + unit_variance(base * (1 - CANARY_DROP)) / (share * users)
            info += 1.0 / var
            weighted += -CANARY_DROP * base / var
        effect, var = weighted / info, 1.0 / info
        return effect, var, sequential_power(effect, var, tau, alpha)

    lo, hi = 10.0, 10.0
    while figures(hi)[2] < TARGET_POWER:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if figures(mid)[2] < TARGET_POWER else (lo, mid)
    users = math.ceil(hi)
    effect, var, achieved = figures(users)
    return {"users_per_period": users, "alpha_per_comparison": alpha, "family_size": family_size(cfg),
            "tau_approx": tau, "combined_effect_abs": effect, "combined_se": math.sqrt(var),
            "power_one_look": achieved}


def canary_rep(seed: np.random.SeedSequence, users_per_period: int, drop: float) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    first = {"v1": 100 - CANARY_SPLITS_PCT[0], "v2": CANARY_SPLITS_PCT[0]}
    cfg = experiment(first, metrics=(CONVERSION,))
    st = ExperimentStats(VERSIONS, 0.0, feedback_kinds=FEEDBACK_KINDS)
    state, verdict, look = None, None, 0
    for period, share_pct in enumerate(CANARY_SPLITS_PCT):
        weights = {"v1": 100.0 - share_pct, "v2": share_pct}
        st.set_weights(weights)
        units, arms = route(rng, SplitTable.from_weights(weights), users_per_period)
        t = period + np.sort(rng.random(users_per_period))  # arrival times within the period
        base = canary_base(t)
        means = np.where(np.asarray(arms) == "v2", base * (1 - drop), base)
        rates = beta_rates(rng, means, users_per_period)
        converted = rng.random((users_per_period, REQUESTS_PER_USER)) < rates[:, None]
        for lo, hi in look_bounds(users_per_period, CANARY_LOOKS_PER_PERIOD):
            for i in range(lo, hi):
                t_s = 1000.0 * float(t[i])
                for outcome in converted[i]:
                    st.record_feedback(t_s, arms[i], CONVERSION, None, bool(outcome), unit=units[i], split=weights)
            look += 1
            snapshot = st.snapshot(1000.0 * float(t[hi - 1]))
            report, state = build_report(cfg, snapshot, weights, state)
            if verdict is None:
                verdict = decided(comparison(report, CONVERSION))
    pooled = naive_p_values(snapshot).get(CONVERSION, math.nan)
    a, b = (snapshot["versions"][v]["feedback"][CONVERSION] for v in VERSIONS)
    return {"verdict": verdict, "naive_pooled_significant": not math.isnan(pooled) and pooled < ALPHA,
            "naive_pooled_lower": b["successes"] / b["n"] < a["successes"] / a["n"]}


# ---- 5. a small arm and a rare event ------------------------------------------------------------------


def rare_rep(seed: np.random.SeedSequence, lift: float) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    cfg = experiment(RARE_WEIGHTS, metrics=(CONVERSION,))
    units, arms = route(rng, SplitTable.from_weights(RARE_WEIGHTS), RARE_USERS)
    rates = np.where(np.asarray(arms) == "v2", RARE_RATE * (1 + lift), RARE_RATE)
    converted = rng.random(RARE_USERS) < rates
    st = ExperimentStats(VERSIONS, 0.0, feedback_kinds=FEEDBACK_KINDS)
    st.set_weights(RARE_WEIGHTS)
    edges = np.unique(np.geomspace(RARE_USERS / 40, RARE_USERS, RARE_LOOKS).astype(int))
    state, verdict, c, lo = None, None, None, 0
    for look, hi in enumerate(edges.tolist(), start=1):
        for i in range(lo, hi):
            st.record_feedback(float(look), arms[i], CONVERSION, None, bool(converted[i]), unit=units[i],
                               split=RARE_WEIGHTS)
        lo = hi
        report, state = build_report(cfg, st.snapshot(float(look)), RARE_WEIGHTS, state)
        c = comparison(report, CONVERSION)
        verdict = verdict or decided(c)
    return {"verdict": verdict, "fixed_final": c is not None and c.p_value is not None and c.p_value < ALPHA}


# ---- 4. gates at small windows --------------------------------------------------------------------


def _gate_alpha_kwargs() -> dict[str, float]:
    # evaluate_gates takes alpha= since gates have three outcomes; older versions took none.
    return {"alpha": ALPHA} if "alpha" in inspect.signature(evaluate_gates).parameters else {}


def judge_window(gate: Gate, candidate: list[Observation], stable: list[Observation]) -> str:
    gates: dict[str, GateAggregate] = {}
    for o in candidate + stable:  # what routers fold per request, merged as the controller does
        gates.setdefault(o.version, GateAggregate()).add(o.latency_ms, o.ok, o.predicted_class, o.score)
    windows = window_stats(gates, versions=VERSIONS)
    (result,) = evaluate_gates([gate], windows["v2"], windows["v1"], 1, **_gate_alpha_kwargs())
    return result.verdict.value


def requests(rng: np.random.Generator, version: str, count_: int, error_rate: float) -> list[Observation]:
    failed = rng.random(count_) < error_rate
    return [Observation(version, 5.0, not bad, None if bad else 0) for bad in failed]


def predictions(rng: np.random.Generator, version: str, count_: int) -> list[Observation]:
    return [Observation(version, 5.0, True, int(c)) for c in rng.integers(0, GATE_DRIFT_CLASSES, count_)]


def gates_rep(seed: np.random.SeedSequence) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    error_gate = Gate.model_validate({"metric": "error_rate", "max": GATE_ERROR_MAX})
    drift_gate = Gate.model_validate({"metric": "drift_psi", "max": GATE_DRIFT_MAX})
    out: dict[str, Any] = {}
    for n in GATE_BAD_WINDOWS:
        out[f"bad_{n}"] = judge_window(error_gate, requests(rng, "v2", n, GATE_BAD_ERROR_RATE),
                                       requests(rng, "v1", n, GATE_HEALTHY_ERROR_RATE))
    n = GATE_HEALTHY_WINDOW
    out[f"healthy_{n}"] = judge_window(error_gate, requests(rng, "v2", n, GATE_HEALTHY_ERROR_RATE),
                                       requests(rng, "v1", n, GATE_HEALTHY_ERROR_RATE))
    for n in GATE_DRIFT_WINDOWS:
        out[f"drift_{n}"] = judge_window(drift_gate, predictions(rng, "v2", n), predictions(rng, "v1", n))
    return out


# ---- 6. gates with clustered users ----------------------------------------------------------------


def _user_rows(rng: np.random.Generator, version: str, users: int) -> list[int]:
    """Distinct user hashes, as the router's units."""
    return [int(u) for u in rng.integers(0, 2**62, users)]


def cluster_rows(rng: np.random.Generator, version: str, case: str) -> list[tuple]:
    """One window of ``version``'s requests for a case, as router rows (``ROW_FIELDS``)."""
    metric, users, per_user, icc, rate = CLUSTER_CASES[case]
    rows = []
    units = _user_rows(rng, version, users)
    if metric == "error_rate":
        shape = (1 - icc) / icc
        user_rates = rng.beta(rate * shape, (1 - rate) * shape, users)
        for unit, user_rate, sent in zip(units, user_rates, _activity(rng, case, users, per_user)):
            for failed in (rng.random(sent) < user_rate).tolist():
                rows.append((version, 5.0, "error" if failed else None, None if failed else 0, None, unit,
                             True, False, 0, None))
    elif metric == "latency_p95_ms":
        sd_user, sd_request = CLUSTER_LOG_SD * math.sqrt(icc), CLUSTER_LOG_SD * math.sqrt(1 - icc)
        for unit, sent in zip(units, _activity(rng, case, users, per_user)):
            log_ms = math.log(AA_LATENCY_MEDIAN_MS) + rng.normal(0, sd_user) + rng.normal(0, sd_request, sent)
            rows += [(version, float(ms), None, 0, None, unit, True, False, 0, None) for ms in np.exp(log_ms)]
    elif metric in ("drift_ks", "drift_wasserstein"):
        # The candidate's scores shifted by ``rate`` on the logit scale; a confident classifier's
        # multiplied by 1 - rate instead.
        confident = "confident" in case
        shift = rate if version == "v2" and not confident else 0.0
        factor = 1.0 - rate if version == "v2" and confident else 1.0
        mean = CLUSTER_CONFIDENT_LOGIT_MEAN if confident else CLUSTER_SCORE_LOGIT_MEAN
        sd_user, sd_request = CLUSTER_SCORE_LOGIT_SD * math.sqrt(icc), CLUSTER_SCORE_LOGIT_SD * math.sqrt(1 - icc)
        for unit in units:
            logit = mean + shift + rng.normal(0, sd_user) + rng.normal(0, sd_request, per_user)
            if "narrow" in case:
                scores = CLUSTER_NARROW_MEAN + CLUSTER_NARROW_SD * (logit - CLUSTER_SCORE_LOGIT_MEAN)
            elif "logits" in case:
                scores = logit
            else:
                scores = factor / (1.0 + np.exp(-logit))
            rows += [(version, 5.0, None, 0, float(score), unit, True, False, 0, None) for score in scores]
    else:  # each user always gets one class, equally likely overall: no drift
        for unit, cls in zip(units, rng.integers(0, GATE_DRIFT_CLASSES, users).tolist()):
            rows += [(version, 5.0, None, cls, None, unit, True, False, 0, None)] * per_user
    return rows


def _activity(rng: np.random.Generator, case: str, users: int, per_user: int) -> list[int]:
    """Requests per user: ``per_user`` each, or ``users * per_user`` spread by lognormal activity."""
    if case not in CLUSTER_ACTIVITY_SIGMA:
        return [per_user] * users
    activity = rng.lognormal(0.0, CLUSTER_ACTIVITY_SIGMA[case], users)
    return rng.multinomial(users * per_user, activity / activity.sum()).tolist()


def cluster_pairs(rng: np.random.Generator, case: str) -> IntervalAggregate:
    """The candidate's mirrored copies beside the live answers for a case, paired as a router
    pairs them (each user's agreement rate drawn from a beta distribution with the ICC)."""
    _, users, per_user, icc, rate = CLUSTER_CASES[case]
    aggregate = IntervalAggregate()
    shape = (1 - icc) / icc
    for unit, user_rate, sent in zip(_user_rows(rng, "v2", users), rng.beta(rate * shape, (1 - rate) * shape, users),
                                     _activity(rng, case, users, per_user)):
        for agree in (rng.random(sent) < user_rate).tolist():
            aggregate.pair("v1", "v2", 0, 0 if agree else 1, None, 5.0, None, unit=unit)
    return aggregate


def cluster_feedback(rng: np.random.Generator, case: str) -> tuple[list, list]:
    """The candidate's feedback for a case, joined as the controller joins it (a token's
    version and unit), as the events the gates' windows read."""
    metric, users, per_user, icc, rate = CLUSTER_CASES[case]
    join = FeedbackJoin()
    request = 0
    if case in CLUSTER_SKEWED_LOG_SD:
        return _skewed_feedback(rng, case, join)
    for unit, sent in zip(_user_rows(rng, "v2", users), _activity(rng, case, users, per_user)):
        if metric == "feedback_rate":
            shape = (1 - icc) / icc
            outcomes = rng.random(sent) < rng.beta(rate * shape, (1 - rate) * shape)
            reports = [(CONVERSION, None, bool(o)) for o in outcomes.tolist()]
        else:
            user_mean = CLUSTER_FEEDBACK_MEAN + rng.normal(0, CLUSTER_FEEDBACK_SD * math.sqrt(icc))
            values = user_mean + rng.normal(0, CLUSTER_FEEDBACK_SD * math.sqrt(1 - icc), sent)
            reports = [(MEAN, float(v), None) for v in values.tolist()]
        for name, value, converted in reports:
            join.add(f"r{request}", name, value, converted, 1.0, version="v2", unit=unit)
            request += 1
    return join.events(since_s=0.0)


def _skewed_feedback(rng: np.random.Generator, case: str, join: FeedbackJoin) -> tuple[list, list]:
    """Lognormal values whose true mean is ``rate`` x the max (CLUSTER_FEEDBACK_MEAN), each
    user's log-values sharing an effect with the case's ICC; keyless where users is 0."""
    _, users, per_user, icc, mean_over_max = CLUSTER_CASES[case]
    log_sd = CLUSTER_SKEWED_LOG_SD[case]
    scale = mean_over_max * CLUSTER_FEEDBACK_MEAN / math.exp(log_sd * log_sd / 2)
    units = _user_rows(rng, "v2", users) if users else [None]
    request = 0
    for unit in units:
        shared = rng.normal(0, log_sd * math.sqrt(icc))
        for value in (scale * np.exp(shared + rng.normal(0, log_sd * math.sqrt(1 - icc), per_user))).tolist():
            join.add(f"r{request}", MEAN, float(value), None, 1.0, version="v2", unit=unit)
            request += 1
    return join.events(since_s=0.0)


def cluster_gate(case: str) -> Gate:
    metric = CLUSTER_CASES[case][0]
    if case in CLUSTER_SKEWED_LOG_SD:
        return Gate.model_validate({"metric": metric, "name": MEAN, "max": CLUSTER_FEEDBACK_MEAN})
    if metric == "feedback_rate":
        return Gate.model_validate({"metric": metric, "name": CONVERSION, "min": CLUSTER_FEEDBACK_MIN_RATE})
    if metric == "feedback_mean":
        return Gate.model_validate({"metric": metric, "name": MEAN, "min": CLUSTER_FEEDBACK_MEAN})
    if metric == "shadow_agreement":
        return Gate.model_validate({"metric": metric, "min": CLUSTER_CASES[case][4]})
    limit = {"error_rate": CLUSTER_ERROR_MAX, "latency_p95_ms": CLUSTER_P95_MAX_MS,
             "drift_js": CLUSTER_DRIFT_JS_MAX, "drift_ks": CLUSTER_DRIFT_KS_MAX,
             "drift_wasserstein": CLUSTER_DRIFT_KS_MAX}[metric]
    return Gate.model_validate({"metric": metric, "max": limit})


def clustered_gates_rep(seed: np.random.SeedSequence, cases: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Each case once (``cases``: those only): the candidate's and stable's rows folded as a
    router folds them (``IntervalAggregate.served_rows``), then the controller's
    ``window_stats`` and the gate."""
    rng = np.random.default_rng(seed)
    out = {}
    for case, (metric, *_) in CLUSTER_CASES.items():
        if cases is not None and case not in cases:
            continue
        aggregate = IntervalAggregate()
        feedback: tuple[list, list] = ([], [])
        if metric.startswith("feedback"):
            feedback = cluster_feedback(rng, case)
        elif metric == "shadow_agreement":
            aggregate = cluster_pairs(rng, case)
        else:
            aggregate.served_rows(cluster_rows(rng, "v2", case) + cluster_rows(rng, "v1", case), {})
        agreements = {version: shadow.agreement_groups for version, shadow in aggregate.shadow.items()}
        windows = window_stats(aggregate.gates, versions=VERSIONS, agreements=agreements,
                               feedback=feedback[0], conversions=feedback[1])
        assumed = {"max_user_icc": CLUSTER_ASSUMED_ICC[case]} if case in CLUSTER_ASSUMED_ICC else {}
        (result,) = evaluate_gates([cluster_gate(case)], windows["v2"], windows["v1"], 1, **_gate_alpha_kwargs(),
                                   **assumed)
        out[case] = result.verdict.value
    return out


# ---- 7. the report's per-class flip tests on a shadow ----------------------------------------------


def flip_pairs(rng: np.random.Generator, case: str) -> IntervalAggregate:
    """A shadow beside the live version, paired as a router pairs them: each user always gets
    one class from live; the shadow labels a share of the user's pairs (beta with the case's
    ICC, mean FLIP_RATE) as one other class of the user's own. With no preference that class
    is drawn at random, so no class's share changes on average: an A/A for every class."""
    users, per_user, icc, prefer_0, keyless = FLIP_CASES[case]
    shape = (1 - icc) / icc
    aggregate = IntervalAggregate()
    for unit in _user_rows(rng, "v2", users):
        live = int(rng.integers(FLIP_CLASSES))
        others = [c for c in range(FLIP_CLASSES) if c != live]
        other = 0 if live != 0 and rng.random() < prefer_0 else int(rng.choice(others))
        for flipped in (rng.random(per_user) < rng.beta(FLIP_RATE * shape, (1 - FLIP_RATE) * shape)).tolist():
            aggregate.pair("v1", "v2", live, other if flipped else live, None, 5.0, None,
                           unit=None if keyless else unit)
    return aggregate


def shadow_flips_rep(seed: np.random.SeedSequence) -> dict[str, Any]:
    """Each case once: router pairs -> the controller's ExperimentStats -> its snapshot -> the
    report's shadow section; whether class 0's flip test is significant at alpha."""
    rng = np.random.default_rng(seed)
    out = {}
    for case in FLIP_CASES:
        stats_ = ExperimentStats(VERSIONS, 0.0, shadow_version="v2")
        stats_.merge(1.0, flip_pairs(rng, case))
        section = _shadow_section(stats_.snapshot(2.0, samples=False)["shadow"], ALPHA, None)
        tests = {t["class"]: t for t in section["class_tests"]}
        out[case] = 0 in tests and tests[0]["p_value"] < ALPHA
    return out


# ---- 8. the SRM check at every refresh ----------------------------------------------------------


def srm_rep(seed: np.random.SeedSequence, lost: float, users: int) -> dict[str, Any]:
    """``users`` arriving one request each, 50/50 by bucket; a share ``lost`` of v2's never
    recorded (a bug); the report's SRM section at SRM_LOOKS geometric looks."""
    rng = np.random.default_rng(seed)
    weights = {"v1": 50.0, "v2": 50.0}
    units, arms = route(rng, SplitTable.from_weights(weights), users)
    kept = [not (arm == "v2" and rng.random() < lost) for arm in arms]
    st = ExperimentStats(VERSIONS, 0.0)
    st.set_weights(weights)
    edges = np.unique(np.geomspace(SRM_FIRST_LOOK, users, SRM_LOOKS).astype(int)).tolist()
    found: dict[str, int | None] = {"sequential": None, "chi_square": None}
    lo = 0
    for hi in edges:
        for i in range(lo, hi):
            if kept[i]:
                st.record(1.0, arms[i], 5.0, None, 0, units[i], True, split=weights)
        lo = hi
        srm = _srm(_splits(st.snapshot(1.0, samples=False), list(VERSIONS), []), weights)
        flags = {"sequential": srm["mismatch"],
                 "chi_square": srm["p_value"] is not None and srm["p_value"] < SRM_THRESHOLD_P}
        for test, flagged in flags.items():
            if flagged and found[test] is None:
                found[test] = hi
    return {"found_at_users": found, "final": flags}


# ---- 9. CUPED with returning users -------------------------------------------------------------------


def cuped_rep(seed: np.random.SeedSequence, case: str) -> dict[str, Any]:
    """The same users in each of the case's periods (splits); the report with CUPED on and off,
    read at CUPED_LOOKS looks over the last period, on the same figures."""
    periods, effect, variant, shift = CUPED_CASES[case]
    second = periods[-1]
    names = ("v1", "v2", "v3") if any("v3" in p for p in periods) else ("v1", "v2")  # no idle v3 in the family
    rng = np.random.default_rng(seed)
    units = [int(u) for u in rng.integers(0, 2**63, size=CUPED_USERS)]
    level = rng.normal(CUPED_LEVEL_MEAN, CUPED_LEVEL_SD, CUPED_USERS)
    st = ExperimentStats(names, 0.0, feedback_kinds={MEAN: "mean"})
    configs = {on: ExperimentConfig.model_validate({
        "model": "calibration",
        "versions": [{"name": v, "path": f"{v}.onnx", "backend": "onnx"} for v in names],
        "weights": {v: second.get(v, 0.0) for v in names},
        "analysis": {"mde_relative": MDE_RELATIVE, "alpha": ALPHA, "cuped": on,
                     "metrics": [{"name": MEAN, "kind": "mean"}]}}) for on in (True, False)}
    verdict: dict[bool, str | None] = {True: None, False: None}
    state: dict[bool, Any] = {True: None, False: None}
    last: dict[bool, Any] = {}
    late_share = CUPED_LATE_SHARE if case.startswith("late_") else 0.0
    held: list[tuple[str, int, float, dict[str, float]]] = []  # late_*: (arm, unit, value, split) reported later
    for period, weights in enumerate(periods):
        final = period == len(periods) - 1
        weights = {v: weights.get(v, 0.0) for v in names}
        st.set_weights(weights)
        table = SplitTable.from_weights(weights)
        arms = [table.version_for_bucket(u % NUM_BUCKETS) for u in units]
        moved = shift[period] if period < len(shift) else 0.0
        values = rng.normal(level[:, None] + moved + np.array([effect.get(a, 0.0) for a in arms])[:, None],
                            CUPED_NOISE_SD, (CUPED_USERS, CUPED_REPORTS_PER_PERIOD))
        late = rng.random(values.shape) < late_share if not final else np.zeros(values.shape, bool)
        bounds = look_bounds(CUPED_USERS, CUPED_LOOKS) if final else [(0, CUPED_USERS)]
        for look, (lo, hi) in enumerate(bounds):
            now_s = 100.0 * period + look
            if final and look == 1:  # the earlier periods' late outcomes, once the variant has served
                for arm, unit, value, split in held:
                    st.record_feedback(now_s, arm, MEAN, value, None, unit=unit, split=split)
            for i in range(lo, hi):
                for value, is_late in zip(values[i].tolist(), late[i].tolist()):
                    if late_share:  # the request, as a router reports it: it sets the split's period
                        st.record(now_s, arms[i], 5.0, None, 0, units[i], True, split=weights)
                    if is_late:
                        held.append((arms[i], units[i], value, weights))
                    else:
                        st.record_feedback(now_s, arms[i], MEAN, value, None, unit=units[i], split=weights)
            if final:
                snapshot = st.snapshot(now_s + 0.5)
                for on in (True, False):
                    report, state[on] = build_report(configs[on], snapshot, weights, state[on])
                    c = next(c for m in report.metrics if m.name == MEAN for c in m.comparisons if c.variant == variant)
                    verdict[on] = verdict[on] or decided(c)
                    last[on] = c
    return {str(on).lower(): {"verdict": verdict[on],
                              "fixed_final": last[on].p_value is not None and last[on].p_value < ALPHA,
                              "cuped_applied": last[on].cuped is not None,
                              "variance_reduction": last[on].cuped.variance_reduction if last[on].cuped else 0.0,
                              "abs_lift": last[on].abs_lift}
            for on in (True, False)}


# ---- 10. what users hit: whales, peeking across restarts, returning users, gates at every look ----------


def _feedback_config(weights_pct: Mapping[str, float]) -> ExperimentConfig:
    return experiment(weights_pct)  # a conversion and a mean: a family of 4


def _verdicts(report, out: dict[str, Any]) -> None:
    """Per feedback metric: a verdict at any look so far, and the fixed p < alpha at this one."""
    for metric in (CONVERSION, MEAN):
        c = comparison(report, metric)
        out[f"{metric}_verdict_any"] = out.get(f"{metric}_verdict_any", False) or decided(c) is not None
        out[f"{metric}_fixed_p_final"] = c is not None and c.p_value is not None and c.p_value < ALPHA
        out[f"{metric}_fixed_p_any"] = out.get(f"{metric}_fixed_p_any", False) or out[f"{metric}_fixed_p_final"]


def whales_rep(seed: np.random.SeedSequence, case: str) -> dict[str, Any]:
    """A/A on skewed revenue per report and a conversion, from users whose numbers of reports
    are lognormal (a few whales send most), at 10 looks over the reports in time order."""
    users, mean_reports, activity_sd = WHALE_CASES[case]
    rng = np.random.default_rng(seed)
    weights = {"v1": 50.0, "v2": 50.0}
    cfg = _feedback_config(weights)
    units, arms = route(rng, SplitTable.from_weights(weights), users)
    reports = np.maximum(1, np.round(rng.lognormal(math.log(mean_reports) - activity_sd ** 2 / 2, activity_sd,
                                                   users))).astype(int)
    concentration = 1.0 / WHALE_ICC - 1.0
    buys = rng.beta((1 - WHALE_ZERO_SHARE) * concentration, WHALE_ZERO_SHARE * concentration, users)
    user_log = rng.normal(-WHALE_LOG_SD ** 2 / 2, math.sqrt(WHALE_ICC) * WHALE_LOG_SD, users)
    who = np.repeat(np.arange(users), reports)
    who = who[rng.permutation(who.size)]  # arrivals in time order
    bought = rng.random(who.size) < buys[who]
    revenue = np.where(bought, np.exp(user_log[who] + rng.normal(0, math.sqrt(1 - WHALE_ICC) * WHALE_LOG_SD,
                                                                  who.size)), 0.0)
    st = ExperimentStats(VERSIONS, 0.0, feedback_kinds=FEEDBACK_KINDS)
    st.set_weights(weights)
    state, out = None, {}
    for look, (lo, hi) in enumerate(look_bounds(who.size, LOOKS), start=1):
        for i, did_buy, value in zip(who[lo:hi].tolist(), bought[lo:hi].tolist(), revenue[lo:hi].tolist()):
            st.record_feedback(look, arms[i], CONVERSION, None, did_buy, unit=units[i], split=weights)
            st.record_feedback(look, arms[i], MEAN, value, None, unit=units[i], split=weights)
        report, state = build_report(cfg, st.snapshot(float(look)), weights, state)
        _verdicts(report, out)
    return out


def _restarted(st: ExperimentStats, state: dict[str, Any] | None, now_s: float) -> tuple[ExperimentStats, Any]:
    """A controller restart: the figures and the sequential looks through JSON, read back as
    the controller reads them (``readable_looks``)."""
    figures = ExperimentStats.from_state(json.loads(json.dumps(st.to_state(now_s))), feedback_kinds=FEEDBACK_KINDS)
    looks, dropped = readable_looks(json.loads(json.dumps(state))) if state is not None else (None, [])
    if dropped:
        raise AssertionError(f"a saved look could not be read back: {dropped}")
    return figures, looks


def peek_rep(seed: np.random.SeedSequence) -> dict[str, Any]:
    """A/A read at PEEK_LOOKS looks, restarted at PEEK_RESTARTS; users of ICC 0.3."""
    rng = np.random.default_rng(seed)
    weights = {"v1": 50.0, "v2": 50.0}
    cfg = _feedback_config(weights)
    units, arms = route(rng, SplitTable.from_weights(weights), PEEK_USERS)
    conversion = beta_rates(rng, AA_CONVERSION, PEEK_USERS)
    level = rng.normal(AA_REVENUE_MEAN, math.sqrt(ICC) * AA_REVENUE_SD, PEEK_USERS)
    converted = rng.random((PEEK_USERS, PEEK_PER_USER)) < conversion[:, None]
    revenue = level[:, None] + rng.normal(0, math.sqrt(1 - ICC) * AA_REVENUE_SD, (PEEK_USERS, PEEK_PER_USER))
    st = ExperimentStats(VERSIONS, 0.0, feedback_kinds=FEEDBACK_KINDS)
    st.set_weights(weights)
    edges = [0, *np.linspace(PEEK_FIRST, PEEK_USERS, PEEK_LOOKS).round().astype(int).tolist()]
    state, out = None, {}
    for look, (lo, hi) in enumerate(itertools.pairwise(edges), start=1):
        for i in range(lo, hi):
            for did, value in zip(converted[i].tolist(), revenue[i].tolist()):
                st.record_feedback(look, arms[i], CONVERSION, None, did, unit=units[i], split=weights)
                st.record_feedback(look, arms[i], MEAN, value, None, unit=units[i], split=weights)
        if look in PEEK_RESTARTS:
            st, state = _restarted(st, state, float(look))
        report, state = build_report(cfg, st.snapshot(float(look)), weights, state)
        _verdicts(report, out)
    return out


def returning_rep(seed: np.random.SeedSequence, drop: float) -> dict[str, Any]:
    """The same users at every step of RETURN_STEPS_PCT, conversion and mean trending down
    over time alike in both arms (the candidate's conversion ``drop`` lower)."""
    rng = np.random.default_rng(seed)
    cfg = _feedback_config({"v1": 100 - RETURN_STEPS_PCT[0], "v2": RETURN_STEPS_PCT[0]})
    units = [int(u) for u in rng.integers(0, 2**63, size=RETURN_USERS)]
    logit_user = rng.normal(0.0, 1.0, RETURN_USERS)  # a user's propensity, kept at every step
    level_user = rng.normal(0.0, 2.0, RETURN_USERS)
    steps = len(RETURN_STEPS_PCT)
    st = ExperimentStats(VERSIONS, 0.0, feedback_kinds=FEEDBACK_KINDS)
    state, out = None, {}
    for step, share in enumerate(RETURN_STEPS_PCT):
        weights = {"v1": 100.0 - share, "v2": share}
        st.set_weights(weights, float(step))
        table = SplitTable.from_weights(weights)
        arms = [table.version_for_bucket(u % NUM_BUCKETS) for u in units]
        who = np.repeat(np.arange(RETURN_USERS), rng.poisson(RETURN_VISITS_PER_STEP, RETURN_USERS))
        t = step + rng.random(who.size)
        order = np.argsort(t)
        who, t = who[order], t[order]
        base = CANARY_BASE_FROM + (CANARY_BASE_TO - CANARY_BASE_FROM) * t / steps
        rate = 1.0 / (1.0 + np.exp(-(np.log(base / (1 - base)) + logit_user[who])))
        rate = np.where(np.array([arms[i] == "v2" for i in who.tolist()]), rate * (1 - drop), rate)
        converted = rng.random(who.size) < rate
        revenue = AA_REVENUE_MEAN - 5.0 * t / steps + level_user[who] + rng.normal(0, AA_REVENUE_SD, who.size)
        for lo, hi in look_bounds(who.size, RETURN_LOOKS_PER_STEP):
            for i, t_s, did, value in zip(who[lo:hi].tolist(), t[lo:hi].tolist(), converted[lo:hi].tolist(),
                                          revenue[lo:hi].tolist()):
                st.record_feedback(t_s, arms[i], CONVERSION, None, did, unit=units[i], split=weights)
                st.record_feedback(t_s, arms[i], MEAN, value, None, unit=units[i], split=weights)
            report, state = build_report(cfg, st.snapshot(float(t[hi - 1])), weights, state)
            _verdicts(report, out)
            c = comparison(report, CONVERSION)
            out["conversion_worse"] = out.get("conversion_worse", False) or decided(c) == "worse"
    return out


def gate_looks_rep(seed: np.random.SeedSequence) -> dict[str, Any]:
    """Each GATE_LOOK_CASES case once: one step's analyses, the window growing; whether the
    gate ever passed, ever failed, and both."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for case, (metric, over_max, icc, keyless) in GATE_LOOK_CASES.items():
        if metric == "error_rate":
            gate = Gate.model_validate({"metric": metric, "max": GATE_LOOK_ERROR_MAX})
        else:
            gate = Gate.model_validate({"metric": metric, "max": CLUSTER_P95_MAX_MS / over_max})
        aggregate = IntervalAggregate()
        seen = {"pass": False, "fail": False}
        for look in range(1, GATE_LOOKS + 1):
            rows: list[tuple] = []
            for version, rate in (("v2", GATE_LOOK_ERROR_MAX * over_max), ("v1", GATE_LOOK_ERROR_MAX / 2)):
                for unit in _user_rows(rng, version, GATE_LOOK_USERS):
                    unit_or_none = None if keyless else unit
                    if metric == "error_rate":
                        user_rate = rng.beta(rate * (1 - icc) / icc, (1 - rate) * (1 - icc) / icc) if icc else rate
                        rows += [(version, 5.0, "error" if failed else None, None if failed else 0, None, unit_or_none,
                                  True, False, 0, None)
                                 for failed in (rng.random(GATE_LOOK_PER_USER) < user_rate).tolist()]
                    else:
                        log_ms = (math.log(AA_LATENCY_MEDIAN_MS) + rng.normal(0, CLUSTER_LOG_SD * math.sqrt(icc))
                                  + rng.normal(0, CLUSTER_LOG_SD * math.sqrt(1 - icc), GATE_LOOK_PER_USER))
                        rows += [(version, float(ms), None, 0, None, unit_or_none, True, False, 0, None)
                                 for ms in np.exp(log_ms)]
            aggregate.served_rows(rows, {})
            windows = window_stats(aggregate.gates, versions=VERSIONS)
            alpha = alpha_for_look(ALPHA, look)
            (result,) = evaluate_gates([gate], windows["v2"], windows["v1"], 10, alpha=alpha, pass_alpha=alpha)
            seen[result.verdict.value] = True
        out[case] = {"pass_any": seen["pass"], "fail_any": seen["fail"], "both": seen["pass"] and seen["fail"]}
    return out


# ---- running the repetitions -------------------------------------------------------------------------

SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "rare": rare_rep,
    "aa": aa_rep, "power": power_rep, "canary": canary_rep, "gates": gates_rep,
    "clustered_gates": clustered_gates_rep, "shadow_flips": shadow_flips_rep, "srm": srm_rep,
    "cuped": cuped_rep, "whales": whales_rep, "peek": peek_rep, "returning": returning_rep,
    "gate_looks": gate_looks_rep,
}


def _task(job: tuple[str, np.random.SeedSequence, dict[str, Any]]) -> dict[str, Any]:
    name, seed, kwargs = job
    return SCENARIOS[name](seed, **kwargs)


def run_reps(pool: ProcessPoolExecutor | None, name: str, index: int, reps: int, seed: int,
             **kwargs: Any) -> list[dict[str, Any]]:
    """``reps`` repetitions of a scenario; repetition r always gets the same seed, however split."""
    jobs = [(name, np.random.SeedSequence(seed, spawn_key=(index, r)), kwargs) for r in range(reps)]
    if pool is None:
        return [_task(job) for job in jobs]
    return list(pool.map(_task, jobs, chunksize=max(1, reps // 32)))


# ---- summaries and checks -------------------------------------------------------------------------


def summarise_aa(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    rows = {}
    for metric in AA_METRICS:
        rows[metric] = {
            "fixed_p_lt_alpha_final": count(o["fixed_final"][metric] for o in outcomes),
            "fixed_p_lt_alpha_any_look": count(o["fixed_any"][metric] for o in outcomes),
            "verdict_any_look": count(o["verdict_any"][metric] for o in outcomes),
            "naive_request_level_final": count(o["naive_final"].get(metric, False) for o in outcomes),
        }
    return rows


def summarise_power(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    looks = [o["looks_to_verdict"] for o in outcomes if o["verdict"] == "better"]
    required = [o["report_required_per_arm"] for o in outcomes if o["report_required_per_arm"] is not None]
    return {"better": count(o["verdict"] == "better" for o in outcomes),
            "worse": count(o["verdict"] == "worse" for o in outcomes),
            "median_looks_to_verdict": float(np.median(looks)) if looks else None,
            "report_required_per_arm_median": float(np.median(required)) if required else None,
            "report_required_per_arm_range": [min(required), max(required)] if required else None}


def summarise_canary(aa: list[dict[str, Any]], drop: list[dict[str, Any]]) -> dict[str, Any]:
    return {"aa_any_verdict": count(o["verdict"] is not None for o in aa),
            "aa_naive_pooled_significant": count(o["naive_pooled_significant"] for o in aa),
            "aa_naive_pooled_candidate_lower": count(o["naive_pooled_lower"] for o in aa),
            "drop_worse": count(o["verdict"] == "worse" for o in drop),
            "drop_better": count(o["verdict"] == "better" for o in drop),
            "drop_naive_pooled_significant": count(o["naive_pooled_significant"] for o in drop)}


def summarise_rare(aa: list[dict[str, Any]], lifted: list[dict[str, Any]]) -> dict[str, Any]:
    return {"aa_any_verdict": count(o["verdict"] is not None for o in aa),
            "aa_fixed_p_lt_alpha_final": count(o["fixed_final"] for o in aa),
            "lift_better": count(o["verdict"] == "better" for o in lifted),
            "lift_worse": count(o["verdict"] == "worse" for o in lifted)}


def summarise_srm(by_case: Mapping[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out = {}
    for case, outcomes in by_case.items():
        row = {}
        for test in ("sequential", "chi_square"):
            found = [o["found_at_users"][test] for o in outcomes if o["found_at_users"][test] is not None]
            row[test] = {"any_look": count(o["found_at_users"][test] is not None for o in outcomes),
                         "last_look": count(o["final"][test] for o in outcomes),
                         "median_users_when_found": float(np.median(found)) if found else None}
        out[case] = row
    return out


def summarise_cuped(by_case: Mapping[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out = {}
    for case, outcomes in by_case.items():
        row = {}
        for on in ("true", "false"):
            runs = [o[on] for o in outcomes]
            row["cuped_" + ("on" if on == "true" else "off")] = {
                "better": count(r["verdict"] == "better" for r in runs),
                "worse": count(r["verdict"] == "worse" for r in runs),
                "fixed_p_lt_alpha_final": count(r["fixed_final"] for r in runs),
                "applied": count(r["cuped_applied"] for r in runs),
                "mean_variance_reduction": float(np.mean([r["variance_reduction"] for r in runs])),
                "mean_abs_lift": float(np.mean([r["abs_lift"] for r in runs]))}
        out[case] = row
    return out


def summarise_users_hit(by_case: Mapping[str, list[dict[str, Any]]],
                        gate_looks: list[dict[str, Any]]) -> dict[str, dict[str, Rate]]:
    """Every flag of scenario 10's cases as a rate over its repetitions."""
    rows = {case: {flag: count(o[flag] for o in outcomes) for flag in outcomes[0]}
            for case, outcomes in by_case.items()}
    for case in GATE_LOOK_CASES:
        rows[f"gate_looks_{case}"] = {flag: count(o[case][flag] for o in gate_looks) for flag in gate_looks[0][case]}
    return rows


def users_hit_checks(rows: Mapping[str, Mapping[str, Rate]]) -> list[dict[str, Any]]:
    """Scenario 10's checks: an A/A's verdicts at most alpha, its fixed p at the last look at
    most LIMIT_AA; a gate at its bound passes, and below it fails, at most alpha over a step."""
    out = []
    for case, row in rows.items():
        if case == "returning_drop":
            continue  # a power figure, shown in its table
        if case.startswith("gate_looks_"):
            name = case.removeprefix("gate_looks_")
            flag = "fail_any" if "healthy" in name else "pass_any"
            limits = {flag: ALPHA, "both": ALPHA}
        else:
            name = case
            limits = {f"{m}_{f}": limit for m in (CONVERSION, MEAN)
                      for f, limit in (("verdict_any", ALPHA), ("fixed_p_final", LIMIT_AA))}
        for flag, limit in limits.items():
            ok, point = judge_rate(row[flag], at_most=limit)
            out.append({"check": f"{case}: {flag}", "limit": f"<= {limit}", **row[flag].to_dict(),
                        "bounds_99": list(row[flag].bounds(CHECK_CONFIDENCE)), "within": ok, "point_within": point})
    return out


def summarise_gates(outcomes: list[dict[str, Any]]) -> dict[str, dict[str, Rate]]:
    return {case: {verdict: count(o[case] == verdict for o in outcomes)
                   for verdict in ("pass", "fail", "inconclusive")}
            for case in outcomes[0]}


def judge_rate(rate: Rate, *, at_most: float | None = None, at_least: float | None = None,
               exact: float | None = None) -> tuple[bool, bool]:
    """(within, point_within): whether ``rate`` keeps its limits up to Monte Carlo error (its
    one-sided CHECK_CONFIDENCE Clopper-Pearson bound on the limit's side of it), and whether its
    point estimate does. ``exact``: a figure with no noise to allow (every run applied CUPED)."""
    if exact is not None:
        return rate.value == exact, rate.value == exact
    lower, upper = rate.bounds(CHECK_CONFIDENCE)
    within = (at_most is None or lower <= at_most) and (at_least is None or upper >= at_least)
    point = (at_most is None or rate.value <= at_most) and (at_least is None or rate.value >= at_least)
    return within, point


def checks(aa: dict[str, Any], power: dict[str, Any], canary: dict[str, Any],
           gates: dict[str, dict[str, Rate]], rare: dict[str, Any],
           clustered: dict[str, dict[str, Rate]], flips: dict[str, Rate],
           srm: dict[str, dict[str, Any]], cuped: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """What issue #11 asks, figure by figure: each rate against its limit, up to Monte Carlo
    error. ``within`` is false (MISS) only where the rate's one-sided 99% Clopper-Pearson bound
    is past the limit, i.e. the repetitions show the limit broken, not merely a point estimate
    a hit or two past it: at the quick mode's 12 A/A reps one false positive is 8.3%, over a
    6% limit, and six such "misses" came up in quick runs where 2,000-4,000 reps of the same
    cases put each rate at or below its limit (2026-12-07: the 90/10 A/A's fixed p 3.0 +- 0.3%,
    CUPED's 5.3 +- 0.5%). ``point_within`` is the point estimate's own reading ("ok~" where
    only Monte Carlo noise puts it past the limit)."""
    out = []

    def check(what: str, rate: Rate, limit: str, at_most: float | None = None, at_least: float | None = None,
              exact: float | None = None) -> None:
        ok, point = judge_rate(rate, at_most=at_most, at_least=at_least, exact=exact)
        out.append({"check": what, "limit": limit, **rate.to_dict(), "bounds_99": list(rate.bounds(CHECK_CONFIDENCE)),
                    "within": ok, "point_within": point})

    for metric, row in aa.items():
        for key, label in (("fixed_p_lt_alpha_final", "fixed p < 0.05 at the final look"),
                           ("verdict_any_look", "any verdict over 10 looks")):
            check(f"A/A {metric}: {label}", row[key], f"<= {LIMIT_AA}", at_most=LIMIT_AA)
    better = power["better"]
    check("power at the planned n (better)", better, f"{TARGET_POWER} ± {POWER_TOLERANCE}",
          at_most=TARGET_POWER + POWER_TOLERANCE, at_least=TARGET_POWER - POWER_TOLERANCE)
    check("canary A/A: any verdict", canary["aa_any_verdict"], f"<= {ALPHA}", at_most=ALPHA)
    worse = canary["drop_worse"]
    check("canary 20% drop: WORSE", worse, f">= {TARGET_POWER - POWER_TOLERANCE} (sized for power {TARGET_POWER})",
          at_least=TARGET_POWER - POWER_TOLERANCE)
    check("90/10, 1% rate, A/A: any verdict over 30 looks", rare["aa_any_verdict"], f"<= {ALPHA}", at_most=ALPHA)
    check("90/10, 1% rate, A/A: fixed p < 0.05 at the last look", rare["aa_fixed_p_lt_alpha_final"],
          f"<= {LIMIT_AA}", at_most=LIMIT_AA)
    for n in GATE_BAD_WINDOWS:
        rate = gates[f"bad_{n}"]["pass"]
        check(f"gate error_rate <= {GATE_ERROR_MAX}, 5% errors, window {n}: pass", rate, f"<= {LIMIT_GATE}",
              at_most=LIMIT_GATE)
    for n in GATE_DRIFT_WINDOWS:
        rate = gates[f"drift_{n}"]["fail"]
        check(f"gate drift_psi <= {GATE_DRIFT_MAX}, no drift, {n} per side: fail", rate, f"<= {LIMIT_GATE}",
              at_most=LIMIT_GATE)
    for case, (metric, users, per_user, icc, _) in CLUSTER_CASES.items():
        if "healthy" in case or case.endswith("_wrong"):
            continue  # a power figure, or what a wrong assumption costs: shown in its table
        wrong = "fail" if metric.startswith("drift") else "pass"
        rate = clustered[case][wrong]
        what = "no drift" if metric.startswith("drift") else "at its bound"
        if "narrow" in case:
            what += f", values {CLUSTER_NARROW_MEAN:g} +- {CLUSTER_NARROW_SD:g}"
        if "confident" in case:
            what += f", a confident classifier's scores (logit {CLUSTER_CONFIDENT_LOGIT_MEAN:g} +- 1)"
        if "logits" in case:
            what += ", logits as the scores"
        if case in CLUSTER_SKEWED_LOG_SD:
            what = f"max at the mean, lognormal sigma {CLUSTER_SKEWED_LOG_SD[case]:g}"
        sample = f"{per_user} keyless" if users == 0 else f"{users} users x {per_user}, ICC {icc:g}"
        if case in CLUSTER_ACTIVITY_SIGMA:
            sample = (f"{users} users x {per_user} on average (lognormal activity, sigma "
                      f"{CLUSTER_ACTIVITY_SIGMA[case]:g}), ICC {icc:g}")
        if case in CLUSTER_ASSUMED_ICC:
            sample += f", max_user_icc {CLUSTER_ASSUMED_ICC[case]:g}"
        # At most alpha up to Monte Carlo error (DESIGN.md): a case where the gate is exact (the
        # assumed max_user_icc true) sits at alpha itself, 0.046 +- 0.002 in 12,000 reps.
        check(f"gate {metric}, {what}, {sample}: {wrong}", rate, f"<= {ALPHA}", at_most=ALPHA)
    for case, (users, per_user, icc, _, keyless) in FLIP_CASES.items():
        if case.startswith("aa_") and not keyless:
            check(f"shadow flip test, no shift, {users} users x {per_user}, ICC {icc:g}: class 0 significant",
                  flips[case], f"<= {ALPHA}", at_most=ALPHA)
    flagged = srm["aa"]["sequential"]["any_look"]
    check(f"SRM, healthy 50/50, read at {SRM_LOOKS} looks to {SRM_USERS:,} users: flagged at any look", flagged,
          f"<= {LIMIT_SRM_AA} (threshold p < {SRM_THRESHOLD_P})", at_most=LIMIT_SRM_AA)
    for case, label in (("pre_aa", "after v1 alone"), ("third_aa", "v3 joining v1/v2, v2 at +3"),
                        ("drift_aa", f"v1, v1/v2, v1/v3, +{CUPED_SEASON:g} from the 2nd period"),
                        ("late_aa", f"{CUPED_LATE_SHARE:.0%} of v1 alone's outcomes late")):
        on = cuped[case]["cuped_on"]
        any_verdict = Rate(on["better"].hits + on["worse"].hits, on["better"].reps)
        check(f"CUPED A/A, {label}: any verdict over {CUPED_LOOKS} looks", any_verdict, f"<= {ALPHA}",
              at_most=ALPHA)
        check(f"CUPED A/A, {label}: fixed p < 0.05 at the last look", on["fixed_p_lt_alpha_final"],
              f"<= {LIMIT_AA}", at_most=LIMIT_AA)
    for case in ("late_aa", "late_lift"):  # late outcomes of the pre-period keep it a pre-period
        applied = cuped[case]["cuped_on"]["applied"]
        check(f"CUPED, {CUPED_LATE_SHARE:.0%} of the pre-period's outcomes late ({case}): applied", applied,
              "= 1", exact=1.0)
    return out


# ---- output --------------------------------------------------------------------------------------


def print_tables(result: dict[str, Any]) -> None:
    aa = result["aa"]
    print(f"\n1. A/A, clustered users ({AA_USERS_PER_ARM} users per arm, {REQUESTS_PER_USER} requests each, "
          f"ICC {ICC}, {LOOKS} looks; {aa['reps']} reps; rate ± MC SE)")
    header = ("metric", "fixed p<.05 final", "fixed p<.05 any look", "verdict any look", "naive request-level")
    print(f"  {header[0]:<12} {header[1]:>18} {header[2]:>21} {header[3]:>17} {header[4]:>20}")
    for metric, row in aa["metrics"].items():
        print(f"  {metric:<12} {_r(row['fixed_p_lt_alpha_final']):>18} {_r(row['fixed_p_lt_alpha_any_look']):>21} "
              f"{_r(row['verdict_any_look']):>17} {_r(row['naive_request_level_final']):>20}")

    p = result["power"]
    plan = p["plan"]
    print(f"\n2. Power at the planned n ({plan['base']} vs {plan['variant']:.2f}, ICC {ICC}, {LOOKS} looks; "
          f"{p['reps']} reps)")
    print(f"  plan: units_per_arm(effect {plan['effect_abs']:.3g}, alpha {plan['alpha_per_comparison']:.4g} "
          f"= 0.05/{plan['family_size']}, mSPRT, tau {plan['tau']:.3g}) = {plan['n_control']} per arm "
          f"(power read once at the end {plan['power_at_plan_one_look']:.3f})")
    print(f"  the report's own plan at the final look: median {p['report_required_per_arm_median']}, "
          f"range {p['report_required_per_arm_range']} per arm")
    print(f"  verdict better: {_r(p['better'])}  (target {TARGET_POWER}); worse: {_r(p['worse'])}; "
          f"median look of the verdict: {p['median_looks_to_verdict']}")

    c = result["canary"]
    size = c["sizing"]
    print(f"\n3. Canary epochs (v2 at {' -> '.join(f'{s:g}%' for s in CANARY_SPLITS_PCT)}, "
          f"{size['users_per_period']} users per period, base rate {CANARY_BASE_FROM} -> {CANARY_BASE_TO}, "
          f"{CANARY_LOOKS_PER_PERIOD} looks per period; {c['reps']} reps per case)")
    print(f"  A/A  any verdict:                    {_r(c['aa_any_verdict'])}   (alpha {ALPHA})")
    print(f"  A/A  naive pooled z-test p<.05:       {_r(c['aa_naive_pooled_significant'])}   "
          f"(candidate looks lower: {_r(c['aa_naive_pooled_candidate_lower'])})")
    print(f"  -20% WORSE:                          {_r(c['drop_worse'])}   (sized for power {TARGET_POWER}; "
          f"read once at the end: {size['power_one_look']:.3f})")
    print(f"  -20% better (wrong side):            {_r(c['drop_better'])}")

    g = result["gates"]
    print(f"\n4. Gates (one analysis at alpha {ALPHA}, min_samples 1; {g['reps']} reps; "
          f"evaluate_gates alpha= keyword: {g['alpha_keyword']})")
    print(f"  {'case':<46} {'pass':>15} {'fail':>15} {'inconclusive':>15}")
    labels = {**{f"bad_{n}": f"error_rate<=0.01, 5% errors, {n} requests" for n in GATE_BAD_WINDOWS},
              f"healthy_{GATE_HEALTHY_WINDOW}": f"error_rate<=0.01, 0.1% errors, {GATE_HEALTHY_WINDOW} requests",
              **{f"drift_{n}": f"drift_psi<=0.25, no drift, {n} per side" for n in GATE_DRIFT_WINDOWS}}
    for case, row in g["cases"].items():
        print(f"  {labels[case]:<46} {_r(row['pass']):>15} {_r(row['fail']):>15} {_r(row['inconclusive']):>15}")

    r = result["rare"]
    print(f"\n5. A small arm and a rare event (weights {RARE_WEIGHTS['v1']:g}/{RARE_WEIGHTS['v2']:g}, "
          f"conversion {RARE_RATE:g}, {RARE_USERS:,} users with one request, {RARE_LOOKS} looks; "
          f"{r['reps']} reps per case)")
    print(f"  A/A  any verdict:                    {_r(r['aa_any_verdict'])}   (alpha {ALPHA})")
    print(f"  A/A  fixed p<.05 at the last look:   {_r(r['aa_fixed_p_lt_alpha_final'])}")
    print(f"  candidate at {RARE_RATE * (1 + RARE_LIFT):g}: better {_r(r['lift_better'])}, "
          f"worse {_r(r['lift_worse'])}")

    c6 = result["clustered_gates"]
    print(f"\n6. Gates with clustered users (one analysis at alpha {ALPHA}; each user's requests share a "
          f"random effect; {c6['reps']} reps)")
    width = max(map(len, c6["cases"]))
    print(f"  {'case':<{width}} {'pass':>15} {'fail':>15} {'inconclusive':>15}")
    for case, row in c6["cases"].items():
        print(f"  {case:<{width}} {_r(row['pass']):>15} {_r(row['fail']):>15} {_r(row['inconclusive']):>15}")

    f7 = result["shadow_flips"]
    print(f"\n7. The report's per-class flip tests on a shadow (users who each keep one of {FLIP_CLASSES} classes; "
          f"the shadow relabels a share of each user's pairs, mean {FLIP_RATE:g}, as one class of the user's own; "
          f"{f7['reps']} reps): class 0 significant at alpha {ALPHA}")
    width = max(map(len, f7["significant"]))
    for case, rate in f7["significant"].items():
        print(f"  {case:<{width}} {_r(rate):>15}")

    s8 = result["srm"]
    print(f"\n8. The sample-ratio check read at every refresh (50/50, users with one request each, {SRM_LOOKS} looks "
          f"from {SRM_FIRST_LOOK}: A/A to {SRM_USERS:,} users, {s8['reps']} reps; a bug losing v2's users to "
          f"{SRM_LOST_USERS:,}, {s8['lost_reps']} reps; flagged below p {SRM_THRESHOLD_P})")
    print(f"  {'case':<22} {'test':<11} {'flagged at any look':>20} {'at the last look':>17} {'median users when found':>24}")
    for case, row in s8["cases"].items():
        for test, figures in row.items():
            median = figures["median_users_when_found"]
            print(f"  {case:<22} {test:<11} {_r(figures['any_look']):>20} {_r(figures['last_look']):>17} "
                  f"{'-' if median is None else f'{median:,.0f}':>24}")

    c9 = result["cuped"]
    print(f"\n9. CUPED with returning users ({CUPED_USERS:,} users, revenue level SD {CUPED_LEVEL_SD:g} and noise SD "
          f"{CUPED_NOISE_SD:g}, {CUPED_REPORTS_PER_PERIOD} reports per period, {CUPED_LOOKS} looks in the second; "
          f"{c9['reps']} reps; the same figures with analysis.cuped on and off)")
    print(f"  {'case':<10} {'cuped':<5} {'better':>15} {'WORSE':>15} {'fixed p<.05 last':>17} {'applied':>15} "
          f"{'variance cut':>12} {'mean lift':>10}")
    for case, row in c9["cases"].items():
        for key, f in row.items():
            print(f"  {case:<10} {key.removeprefix('cuped_'):<5} {_r(f['better']):>15} {_r(f['worse']):>15} "
                  f"{_r(f['fixed_p_lt_alpha_final']):>17} {_r(f['applied']):>15} "
                  f"{f['mean_variance_reduction']:>12.2f} {f['mean_abs_lift']:>+10.3f}")

    c10 = result["users_hit"]
    print(f"\n10. What users hit: A/A revenue with whales (90% zeros, lognormal sigma {WHALE_LOG_SD:g}; "
          f"{c10['reps']['whales']} reps), {PEEK_LOOKS} looks with restarts at {list(PEEK_RESTARTS)} ({c10['reps']['peek']} reps), returning "
          f"users at {'/'.join(f'{w:g}' for w in RETURN_STEPS_PCT)}% with a trend ({c10['reps']['returning']} reps), "
          f"gates at each of {GATE_LOOKS} analyses of a step ({c10['reps']['gate_looks']} reps)")
    print(f"  {'case':<42} {'figure':<26} {'rate':>15}")
    for case, row in c10["cases"].items():
        for flag, rate in row.items():
            print(f"  {case:<42} {flag:<26} {_r(rate):>15}")
            case = ""

    print("\nChecks (issue #11):")
    for item in result["checks"]:
        # "ok~": the point estimate is past the limit by less than the Monte Carlo error.
        mark = ("ok  " if item["point_within"] else "ok~ ") if item["within"] else "MISS"
        print(f"  {mark} {item['check']:<62} {item['rate']:.3f} ± {item['mc_se']:.3f}  ({item['limit']})")
    print(f"\nwall time {result['wall_s']:.0f} s with {result['workers']} worker(s)", flush=True)


def _r(rate: dict[str, Any]) -> str:
    return f"{rate['rate']:.3f} ± {rate['mc_se']:.3f}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Rate):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run(args: argparse.Namespace) -> dict[str, Any]:
    mode = QUICK if args.quick and args.reps is None else default_mode(args.reps or FULL_REPS)
    started = time.perf_counter()
    header = {"bench": "stats_calibration", "mode": "quick" if args.quick else "full",
              "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                          "numpy": np.__version__, "scipy": scipy.__version__},
              "load_before": load_now(), "seed": args.seed, "workers": args.workers}
    plan = power_plan()
    sizing = canary_users_per_period()
    pool = ProcessPoolExecutor(max_workers=args.workers) if args.workers > 1 else None
    try:
        aa = run_reps(pool, "aa", 1, mode.aa_reps, args.seed)
        power = run_reps(pool, "power", 2, mode.power_reps, args.seed,
                         n_control=plan["n_control"], n_variant=plan["n_variant"])
        canary_aa = run_reps(pool, "canary", 3, mode.canary_reps, args.seed,
                             users_per_period=sizing["users_per_period"], drop=0.0)
        canary_drop = run_reps(pool, "canary", 4, mode.canary_reps, args.seed,
                               users_per_period=sizing["users_per_period"], drop=CANARY_DROP)
        gates = run_reps(pool, "gates", 5, mode.gate_reps, args.seed)
        rare_aa = run_reps(pool, "rare", 6, mode.canary_reps, args.seed, lift=0.0)
        rare_lift = run_reps(pool, "rare", 7, mode.canary_reps, args.seed, lift=RARE_LIFT)
        clustered = run_reps(pool, "clustered_gates", 8, mode.canary_reps, args.seed)
        flips = run_reps(pool, "shadow_flips", 9, mode.gate_reps, args.seed)
        srm = {"aa": run_reps(pool, "srm", 10, mode.power_reps, args.seed, lost=0.0, users=SRM_USERS),
               **{f"v2_loses_{lost:g}": run_reps(pool, "srm", 11 + i, max(2, mode.power_reps // 4), args.seed,
                                                 lost=lost, users=SRM_LOST_USERS)
                  for i, lost in enumerate(SRM_LOST)}}
        cuped = {case: run_reps(pool, "cuped", 13 + i, mode.power_reps, args.seed, case=case)
                 for i, case in enumerate(CUPED_CASES)}
        users_hit = {
            **{case: run_reps(pool, "whales", 20 + i, mode.power_reps, args.seed, case=case)
               for i, case in enumerate(WHALE_CASES)},
            "peek_restarts": run_reps(pool, "peek", 23, mode.canary_reps, args.seed),
            "returning_aa": run_reps(pool, "returning", 24, mode.canary_reps, args.seed, drop=0.0),
            "returning_drop": run_reps(pool, "returning", 25, max(2, mode.canary_reps // 2), args.seed,
                                       drop=CANARY_DROP),
        }
        gate_looks = run_reps(pool, "gate_looks", 26, mode.power_reps, args.seed)
    finally:
        if pool is not None:
            pool.shutdown()
    aa_rows = summarise_aa(aa)
    power_rows = summarise_power(power)
    canary_rows = summarise_canary(canary_aa, canary_drop)
    gate_rows = summarise_gates(gates)
    rare_rows = summarise_rare(rare_aa, rare_lift)
    clustered_rows = summarise_gates(clustered)
    flip_rows = {case: count(o[case] for o in flips) for case in FLIP_CASES}
    srm_rows = summarise_srm(srm)
    cuped_rows = summarise_cuped(cuped)
    users_hit_rows = summarise_users_hit(users_hit, gate_looks)
    result = {
        **header,
        "config": {"alpha": ALPHA, "icc": ICC, "requests_per_user": REQUESTS_PER_USER,
                   "mde_relative": MDE_RELATIVE, "target_power": TARGET_POWER, "looks": LOOKS},
        "aa": {"reps": mode.aa_reps, "users_per_arm": AA_USERS_PER_ARM, "metrics": aa_rows},
        "power": {"reps": mode.power_reps, "plan": plan, **power_rows},
        "canary": {"reps": mode.canary_reps, "sizing": sizing, **canary_rows},
        "gates": {"reps": mode.gate_reps, "alpha": ALPHA, "min_samples": 1,
                  "alpha_keyword": bool(_gate_alpha_kwargs()), "cases": gate_rows},
        "rare": {"reps": mode.canary_reps, "weights_pct": RARE_WEIGHTS, "rate": RARE_RATE, "lift": RARE_LIFT,
                 "users": RARE_USERS, "looks": RARE_LOOKS, **rare_rows},
        "clustered_gates": {"reps": mode.canary_reps, "alpha": ALPHA, "cases": clustered_rows},
        "shadow_flips": {"reps": mode.gate_reps, "alpha": ALPHA, "classes": FLIP_CLASSES, "flip_rate": FLIP_RATE,
                         "significant": flip_rows},
        "srm": {"reps": mode.power_reps, "users": SRM_USERS, "looks": SRM_LOOKS,
                "lost_reps": max(2, mode.power_reps // 4), "lost_users": SRM_LOST_USERS, "cases": srm_rows},
        "cuped": {"reps": mode.power_reps, "users": CUPED_USERS, "looks": CUPED_LOOKS, "lift": CUPED_LIFT,
                  "cases": cuped_rows},
        "users_hit": {"reps": {"whales": mode.power_reps, "peek": mode.canary_reps, "returning": mode.canary_reps,
                               "gate_looks": mode.power_reps}, "cases": users_hit_rows},
        "checks": checks(aa_rows, power_rows, canary_rows, gate_rows, rare_rows, clustered_rows, flip_rows,
                         srm_rows, cuped_rows) + users_hit_checks(users_hit_rows),
        "load_after": load_now(),
    }
    result["wall_s"] = time.perf_counter() - started
    return _jsonable(result)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke size for CI (under 30 s); rates are noisy")
    parser.add_argument("--reps", type=int, default=None,
                        help=f"A/A and power repetitions (default {FULL_REPS}); each canary case runs half as many, "
                             "the gates 5/2 times as many")
    parser.add_argument("--seed", type=int, default=0, help="seed of every repetition (default 0)")
    parser.add_argument("--workers", type=int, default=2, help="processes sharing the repetitions (default 2)")
    parser.add_argument("--score-drift", type=int, default=0, metavar="REPS",
                        help="run only scenario 6's score-drift cases, REPS times, through the wire and the "
                             "controller's windows too (e.g. 1000: about 3 min on 2 quiet cores)")
    args = parser.parse_args(argv)
    if args.reps is not None and args.reps < 2:
        parser.error(f"--reps is {args.reps}; give at least 2, e.g. --reps 400")
    if args.score_drift and args.score_drift < 2:
        parser.error(f"--score-drift is {args.score_drift}; give at least 2 repetitions, e.g. --score-drift 1000")
    if args.workers < 1:
        parser.error(f"--workers is {args.workers}; give at least 1, e.g. --workers 2")
    return args


#: Scenario 6's score-drift cases, which ``--score-drift N`` runs alone.
SCORE_DRIFT_CASES = tuple(case for case, (metric, *_) in CLUSTER_CASES.items()
                          if metric in ("drift_ks", "drift_wasserstein"))


def run_score_drift(reps: int, seed: int, workers: int) -> dict[str, Any]:
    """Scenario 6's score-drift cases alone, ``reps`` times each, with each window's reports
    also through the wire and the controller's windows (pickled, then ``GateWindows``)."""
    started = time.perf_counter()
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        outcomes = run_reps(pool, "score_drift", 8, reps, seed)
    finally:
        if pool is not None:
            pool.shutdown()
    return _jsonable({"bench": "stats_calibration", "mode": "score_drift", "reps": reps, "alpha": ALPHA,
                      "seed": seed, "cases": summarise_gates(outcomes), "load_after": load_now(),
                      "wall_s": time.perf_counter() - started})


def score_drift_rep(seed: np.random.SeedSequence) -> dict[str, Any]:
    """:func:`clustered_gates_rep` of the score-drift cases, each window's aggregate pickled
    (a router's report) and merged by the controller's ``GateWindows`` before the gate."""
    rng = np.random.default_rng(seed)
    out = {}
    for case in SCORE_DRIFT_CASES:
        aggregate = IntervalAggregate()
        aggregate.served_rows(cluster_rows(rng, "v2", case) + cluster_rows(rng, "v1", case), {})
        windows = GateWindows()
        windows.add(1.0, pickle.loads(pickle.dumps(aggregate)).gates)
        stats_ = window_stats(windows.window(0.0, step=True).gates, versions=VERSIONS)
        (result,) = evaluate_gates([cluster_gate(case)], stats_["v2"], stats_["v1"], 1, **_gate_alpha_kwargs())
        out[case] = result.verdict.value
    return out


SCENARIOS["score_drift"] = score_drift_rep


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.score_drift:
        result = run_score_drift(args.score_drift, args.seed, args.workers)
        width = max(map(len, result["cases"]))
        print(f"Scenario 6's score-drift cases, {result['reps']} reps, alpha {ALPHA} (rate ± MC SE)")
        print(f"  {'case':<{width}} {'pass':>15} {'fail':>15}")
        for case, row in result["cases"].items():
            print(f"  {case:<{width}} {_r(row['pass']):>15} {_r(row['fail']):>15}")
        print(json.dumps(result), flush=True)
        return 0
    result = run(args)
    print_tables(result)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
