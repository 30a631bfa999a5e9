"""How often does a canary rollout promote a good candidate, and abort a bad one? End to end.

    python -m benchmarks.rollout_calibration --quick   # 3 cases x 3 runs: ~40 s on 2 cores; JSON line last
    python -m benchmarks.rollout_calibration           # the README's 8 cases x 40 runs: ~5 minutes
    python -m benchmarks.rollout_calibration --quick --kill-every-s 17   # the controller killed every 17 s

A simulated population sends traffic through a canary rollout driven by the real
controller: :class:`serve_ab.serving.controller.ControllerCore` with a
:class:`~serve_ab.store.state.MemoryStateStore` and a fake clock. Nothing the controller does
is re-implemented here. Each simulated second:

1. the router routes every request by the weights of the controller's latest
   ``snapshot()`` (its epoch and weights), with the router's own :class:`~serve_ab.routing.Assigner`:
   keyed requests by their user's key (``"user-<i>"``, hashed once per user by
   ``assign_unit``; the request goes where ``unit % 10000`` falls in the split table),
   keyless ones to a random bucket (``unit`` None);
2. the second's answers are folded as a router folds the answers it holds
   (:meth:`IntervalAggregate.served_rows`, rows of :data:`~serve_ab.analysis.aggregate.ROW_FIELDS`,
   filed under the split of the epoch they were routed by, then ``next_interval()``, as
   ``ObservationBuffer`` does) and sent as the router's :class:`IntervalReport` to
   ``core.record`` at the end of the second (``controller.report_interval_s`` 1 s);
3. feedback on half the successful answers comes at the same moment, as the controller's
   ``feedback`` method takes a token's (``core.feedback.add`` with the version, unit and
   epoch); only where a gate reads feedback (the ``strict`` gates), since each report costs
   the controller a few microseconds in its windows;
4. ``core.tick()`` half a second later; the phase comes from ``core.status()``, the weights
   the router uses next from ``core.snapshot()``. One tick a second (the controller ticks every
   ``tick_s``, 0.25 s by default; the windows only change when a report comes, and the
   analysis timer and pause timers move on whole seconds here).

A run ends when the rollout is promoted or aborted, or after ``--max-s`` simulated seconds
(unfinished). Aborts are told apart by the history's last reason: a gate ("failed
analysis") or the progress deadline.

**Population** (per repetition, drawn afresh; parameters as :class:`PopulationModel`):
``users = rps * 60`` users (about 10 requests each per 10 minutes), each with an activity
drawn lognormal(0, sigma 1) (a request picks its user with probability proportional to it:
a few users send most requests); an error propensity drawn from a Beta with mean 1% and ICC
0.1 (``a + b = 1 / icc - 1``); a latency effect: latency is lognormal, median 50 ms, sigma 0.5
on the log scale, 30% of the log variance between users; a favourite class among 10 that
70% of its predictions take (the rest uniform); a propensity to be marked "correct" drawn
from a Beta with mean 0.8 and ICC 0.2. Requests per second are Poisson(rps); half of the
successful answers get a ``correct`` feedback event (true with the user's propensity).
``--keyless`` requests carry no key (the same users, routed at random per request).

**Candidates** (:data:`CANDIDATES`): ``good`` (an A/A: the candidate is the stable model),
``err3x`` / ``err10x`` (every user's error propensity times 3 or 10), ``lat1.5x`` (every
latency times 1.5), ``shift`` (30% of predictions moved to class 0), ``fb0.9`` (the
``correct`` propensity times 0.9), ``errmax`` (every request fails with probability 0.05,
``error_rate``'s max: any step it leaves, it leaves on a false pass).

**Rollouts** (:data:`GATE_SETS`): ``readme`` is the README's example with its literal gates
(``error_rate max 0.05``, ``latency_p95_ms max_ratio_to_stable 1.5``, ``drift_js_distance
max 0.3``); ``strict`` adds the example's stricter gates (``latency_p99_ms
max_ratio_to_stable 1.3`` in place of p95, and ``feedback_rate correct min_ratio_to_stable
0.95``). Both: ``analysis: {interval_s: 5, min_samples: 10, failure_limit: 1,
progress_deadline_s: 300, alpha: 0.05}``, steps 5% -> pause 60 s -> 20% -> 60 s -> 50% -> 60 s
-> 100%. Cases named ``..._icc0.1`` add ``max_user_icc: 0.1`` to the analysis (the users'
error ICC is 0.1; their latency's is 0.3 on the log scale, less on the p95 indicator).

Reported per case: promoted / aborted (by a gate, by the deadline) / unfinished rates, each
with its Monte Carlo standard error sqrt(p (1 - p) / reps); the median (and p10, p90) time to
the decision; and, per step's weight and gate, how often that gate said FAIL at least once
while the candidate was at that weight (among the runs that analysed there): for an A/A
candidate every such fail is a false one; and per pause's weight, how many of the runs that
reached it left it for a larger weight (for ``errmax``, every one a false pass). One process, no Ray instance (``ray`` is imported
for the controller module's deployment class only).

``--kill-every-s S`` kills the controller every S simulated seconds: it saves every 5 s as
the deployment does (``save_stats``), a new ``ControllerCore`` starts from the same store,
and the router sends it the reports and feedback the last save lacks, as its ledger does.
Runs with and without kills, from the same seeds, should then decide the same, at the same
second.

``--pause-every-s P`` has an operator pause the rollout for 10 s every P seconds of running,
traffic going on at the step's weights: the gates' window keeps what was served while paused
(the step's timers skip it), so an A/A candidate must fail no more often than without pauses.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import platform
import random
import sys
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from benchmarks.common import load_now
from serve_ab.analysis.aggregate import IntervalAggregate
from serve_ab.config.experiment import ExperimentConfig, parse_experiment
from serve_ab.routing import NUM_BUCKETS, Assigner
from serve_ab.serving.controller import REPORT_INTERVAL_S, ControllerCore
from serve_ab.serving.core.messages import Action, IntervalReport
from serve_ab.store.state import MemoryStateStore

STABLE, CANDIDATE = "v1", "v2"
N_CLASSES = 10
START_S = 1_000_000.0
SAVE_EVERY_S = REPORT_INTERVAL_S  # the controller saves the run's figures with each report refresh
PAUSE_S = 10.0  # how long each operator pause of --pause-every-s lasts

STEPS = [{"set_weight": 5}, {"pause": {"duration": "60s"}},
         {"set_weight": 20}, {"pause": {"duration": "60s"}},
         {"set_weight": 50}, {"pause": {"duration": "60s"}},
         {"set_weight": 100}]
ANALYSIS = {"interval_s": 5, "min_samples": 10, "failure_limit": 1, "progress_deadline_s": 300, "alpha": 0.05}
GATE_SETS: dict[str, list[dict[str, Any]]] = {
    "readme": [{"metric": "error_rate", "max": 0.05},
               {"metric": "latency_p95_ms", "max_ratio_to_stable": 1.5},
               {"metric": "drift_js_distance", "max": 0.3}],
    "strict": [{"metric": "error_rate", "max": 0.05},
               {"metric": "latency_p99_ms", "max_ratio_to_stable": 1.3},
               {"metric": "drift_js_distance", "max": 0.3},
               {"metric": "feedback_rate", "name": "correct", "min_ratio_to_stable": 0.95}],
}


@dataclass(frozen=True)
class Candidate:
    err_mult: float = 1.0
    lat_mult: float = 1.0
    class_shift: float = 0.0  # share of predictions moved to class 0
    correct_mult: float = 1.0
    error_rate: float | None = None  # every request fails with this probability (ICC 0), if set


CANDIDATES = {
    "good": Candidate(),
    "err3x": Candidate(err_mult=3.0),
    "err10x": Candidate(err_mult=10.0),
    "lat1.5x": Candidate(lat_mult=1.5),
    "shift": Candidate(class_shift=0.3),
    "fb0.9": Candidate(correct_mult=0.9),
    # At error_rate's max 0.05 exactly: any step it leaves, it leaves on a false pass.
    "errmax": Candidate(error_rate=0.05),
}


@dataclass(frozen=True)
class PopulationModel:
    users_per_rps: float = 60.0  # users = rps * this: about 10 requests each per 10 minutes
    activity_sigma: float = 1.0  # lognormal activity: a few users send most requests
    error_rate: float = 0.01
    error_icc: float = 0.1
    latency_median_ms: float = 50.0
    latency_sigma: float = 0.5  # log scale
    latency_icc: float = 0.3
    favourite_share: float = 0.7  # predictions that take the user's favourite class
    correct_rate: float = 0.8
    correct_icc: float = 0.2
    feedback_share: float = 0.5  # successful answers that get a feedback event


@dataclass(frozen=True)
class Case:
    name: str
    candidate: str
    rps: float
    keyless: bool = False
    gates: str = "readme"
    max_user_icc: float | None = None  # the rollout's analysis.max_user_icc (None: no assumption)


# Every case a run can ask for (--case NAME); the modes run some of them.
CASES = {case.name: case for case in [
    Case("aa_keyed_100", "good", 100),
    Case("aa_keyed_400", "good", 400),
    Case("aa_keyed_100_icc0.1", "good", 100, max_user_icc=0.1),
    Case("err10x_keyed_100_icc0.1", "err10x", 100, max_user_icc=0.1),
    Case("aa_keyless_100", "good", 100, keyless=True),
    Case("aa_keyless_400", "good", 400, keyless=True),
    Case("err3x_keyed_400", "err3x", 400),
    Case("err10x_keyed_400", "err10x", 400),
    Case("errmax_keyless_400", "errmax", 400, keyless=True),
    Case("errmax_keyed_400", "errmax", 400),
    Case("err10x_keyless_400", "err10x", 400, keyless=True),
    Case("lat1.5x_keyed_400", "lat1.5x", 400),
    Case("shift_keyed_400", "shift", 400),
    # Feedback gates fold every event of the step at every tick: these run slowly.
    Case("aa_keyless_400_strict", "good", 400, keyless=True, gates="strict"),
    Case("fb0.9_keyless_400_strict", "fb0.9", 400, keyless=True, gates="strict"),
    # Keyed, on request: at 400 requests/s the 5% step's p99 and feedback gates stay inconclusive
    # (users' design effects 3-6) until the 300-s deadline, good candidate or not (2026-12-05).
    Case("aa_keyed_400_strict", "good", 400, gates="strict"),
    Case("fb0.9_keyed_400_strict", "fb0.9", 400, gates="strict"),
]}
QUICK_CASES = ["aa_keyless_400", "err10x_keyless_400", "shift_keyed_400"]
FULL_CASES = ["aa_keyed_100", "aa_keyed_400", "aa_keyless_100", "err3x_keyed_400", "shift_keyed_400",
              "aa_keyed_100_icc0.1", "err10x_keyed_100_icc0.1", "errmax_keyless_400"]
QUICK_REPS, FULL_REPS = 3, 40


def beta_with_icc(rng: np.random.Generator, mean: float, icc: float, n: int) -> np.ndarray:
    """Per-user rates of ``mean`` whose intraclass correlation is ``icc`` (a + b = 1/icc - 1)."""
    total = (1.0 - icc) / icc
    return rng.beta(mean * total, (1.0 - mean) * total, n)


class Population:
    """The users of one repetition (see the module docstring)."""

    def __init__(self, rng: np.random.Generator, n_users: int, model: PopulationModel, assigner: Assigner):
        self.model = model
        # Each user's unit, as the router hashes its key.
        self.units = np.array([assigner.assign_unit(f"user-{i}")[1] for i in range(n_users)], dtype=np.uint64)
        self.buckets = (self.units % np.uint64(NUM_BUCKETS)).astype(np.int64)
        activity = rng.lognormal(0.0, model.activity_sigma, n_users)
        self.p_user = activity / activity.sum()
        self.error = beta_with_icc(rng, model.error_rate, model.error_icc, n_users)
        self.latency_user = rng.normal(0.0, model.latency_sigma * math.sqrt(model.latency_icc), n_users)
        self.latency_request_sd = model.latency_sigma * math.sqrt(1.0 - model.latency_icc)
        self.latency_mu = math.log(model.latency_median_ms)
        self.correct = beta_with_icc(rng, model.correct_rate, model.correct_icc, n_users)
        self.favourite = rng.integers(0, N_CLASSES, n_users)


def experiment(case: Case) -> ExperimentConfig:
    return parse_experiment({
        "model": "calibration",
        "versions": [{"name": STABLE, "path": "a.onnx", "backend": "onnx"},
                     {"name": CANDIDATE, "path": "b.onnx", "backend": "onnx"}],
        "weights": {STABLE: 100},
        "rollout": {"strategy": "canary", "stable": STABLE, "candidate": CANDIDATE,
                    "analysis": {**ANALYSIS, "max_user_icc": case.max_user_icc},
                    "gates": GATE_SETS[case.gates], "steps": STEPS, "retire_after_s": 10},
    })


def one_run(case: Case, seed: Any, max_s: float, model: PopulationModel = PopulationModel(),
            kill_every_s: float | None = None, pause_every_s: float | None = None) -> dict[str, Any]:
    """One rollout from its first tick to promoted, aborted or ``max_s`` simulated seconds.

    ``kill_every_s``: the controller saves every :data:`SAVE_EVERY_S` seconds, as the real one
    does, and is killed every ``kill_every_s`` seconds (a new ``ControllerCore`` from the same
    store); the router then sends it again the reports and feedback the last save lacks, as
    its ledger does (``serving/core/ledger.py``).

    ``pause_every_s``: an operator pauses the rollout every ``pause_every_s`` seconds of
    running, for :data:`PAUSE_S` seconds, while traffic goes on at the step's weights (gates
    do not look while paused; their window keeps what was served meanwhile)."""
    rng = np.random.default_rng(seed)
    cand = CANDIDATES[case.candidate]
    t = [START_S]
    store = MemoryStateStore()
    core = ControllerCore(experiment(case), store, lambda: t[0])
    unsaved: list[tuple[IntervalReport, list[tuple]]] = []  # what a router keeps for a restart
    saved_at_s = killed_at_s = resumed_at_s = START_S
    kills = pauses = 0
    paused_at_s: float | None = None
    salt = f"calibration-{int(rng.integers(2**32))}"  # the experiment's salt: users' buckets differ per run
    assigner = Assigner({STABLE: 100.0, CANDIDATE: 0.0}, salt, rng=random.Random(int(rng.integers(2**63))))
    pop = Population(rng, max(int(case.rps * model.users_per_rps), 50), model, assigner)
    aggregate = IntervalAggregate()
    # Feedback only moves feedback gates (and the A/B figures, not read here): sent only
    # where a gate reads it.
    with_feedback = any(gate["metric"].startswith("feedback") for gate in GATE_SETS[case.gates])
    fail_any: dict[tuple[float, str], bool] = {}
    looks: Counter = Counter()
    weights_seen = set()
    last_gates = core.last_analysis  # none yet: the first analysis replaces it
    t[0] = START_S + 0.5
    core.tick()  # the first step's weight
    status = core.status()
    n_requests = 0
    while status.phase not in ("promoted", "aborted") and t[0] - START_S < max_s:
        snapshot = core.snapshot()
        assigner.set_weights(snapshot.weights)
        second = int(t[0] - START_S)
        rows, users = serve_second(rng, pop, int(rng.poisson(case.rps)), cand, assigner, case.keyless,
                                   snapshot.epoch, second)
        n_requests += len(rows)
        t[0] = math.floor(t[0]) + 1.0
        aggregate.served_rows(rows, {snapshot.epoch: dict(snapshot.weights)})
        if aggregate:
            report = IntervalReport("router-1", aggregate)
            core.record(report)
            aggregate = aggregate.next_interval()
            calls = feedback(rng, rows, users, pop, cand, t[0]) if with_feedback else []
            for call in calls:
                add_feedback(core, call)
            unsaved.append((report, calls))
        if kill_every_s is not None:
            if t[0] - saved_at_s >= SAVE_EVERY_S:
                core.save_stats()
                unsaved, saved_at_s = [], t[0]
            if t[0] - killed_at_s >= kill_every_s:
                core = ControllerCore(experiment(case), store, lambda: t[0])
                for report, calls in unsaved:
                    core.record(report)
                    for call in calls:
                        add_feedback(core, call)
                killed_at_s, kills = t[0], kills + 1
                last_gates = core.last_analysis  # the look it saved: its first analysis is a new one
        if pause_every_s is not None and core.status().phase not in ("promoted", "aborted"):
            if paused_at_s is None and t[0] - resumed_at_s >= pause_every_s:
                core.act(Action.PAUSE)
                paused_at_s, pauses = t[0], pauses + 1
            elif paused_at_s is not None and t[0] - paused_at_s >= PAUSE_S:
                core.act(Action.RESUME)
                paused_at_s, resumed_at_s = None, t[0]
        t[0] += 0.5
        weight = status.weights_pct[CANDIDATE]
        weights_seen.add(weight)
        core.tick()
        status = core.status()
        # A new analysis: the controller replaces its list of the last one's gates (plain data,
        # as saved) at each analysis, and keeps it otherwise.
        if core.last_analysis is not last_gates:
            last_gates = core.last_analysis
            looks[weight] += 1
            for gate in last_gates:
                key = (weight, gate["gate"])
                fail_any[key] = fail_any.get(key, False) or gate["verdict"] == "fail"
    history = core.status(history=True).history
    reason = history[-1].reason if history else ""
    cause = None
    if status.phase == "aborted":
        cause = "deadline" if "progress deadline" in reason else "gate" if "failed analysis" in reason else "other"
    return {"phase": status.phase, "t_s": round(t[0] - START_S, 1), "cause": cause, "reason": reason[:300],
            "weight": status.weights_pct[CANDIDATE], "requests": n_requests,
            "fail_any": {f"{w:g}|{g}": v for (w, g), v in fail_any.items()},
            "looks": {f"{w:g}": n for w, n in looks.items()},
            "weights_seen": sorted(weights_seen | {status.weights_pct[CANDIDATE]}), "kills": kills,
            "pauses": pauses}


def serve_second(rng: np.random.Generator, pop: Population, n: int, cand: Candidate, assigner: Assigner,
                 keyless: bool, epoch: int, second: int) -> tuple[list[tuple], np.ndarray]:
    """One second's answers, as the router holds them (ROW_FIELDS) until it folds them, and
    the user of each."""
    if n == 0:
        return [], np.zeros(0, dtype=np.int64)
    users = rng.choice(pop.units.size, size=n, p=pop.p_user)
    if keyless:
        versions = [assigner.assign_unit(None)[0] for _ in range(n)]
        units: list[int | None] = [None] * n
    else:
        table = assigner.table  # assign_unit's bucket of the user's key, hashed once per user
        versions = [table.version_for_bucket(b) for b in pop.buckets[users].tolist()]
        units = pop.units[users].tolist()
    to_candidate = np.array([v == CANDIDATE for v in versions])
    p_error = pop.error[users] * np.where(to_candidate, cand.err_mult, 1.0)
    if cand.error_rate is not None:
        p_error = np.where(to_candidate, cand.error_rate, p_error)
    failed = rng.random(n) < np.minimum(p_error, 1.0)
    latency = np.exp(pop.latency_mu + pop.latency_user[users] + rng.normal(0.0, pop.latency_request_sd, n))
    latency *= np.where(to_candidate, cand.lat_mult, 1.0)
    favourite = rng.random(n) < pop.model.favourite_share
    classes = np.where(favourite, pop.favourite[users], rng.integers(0, N_CLASSES, n))
    if cand.class_shift > 0:
        classes = np.where(to_candidate & (rng.random(n) < cand.class_shift), 0, classes)
    rows = [(version, lat, "model" if bad else None, None if bad else cls, None, unit, True, False, epoch,
             f"{second}-{i}")
            for i, (version, lat, bad, cls, unit) in enumerate(zip(versions, latency.tolist(), failed.tolist(),
                                                                    classes.tolist(), units))]
    return rows, users


def feedback(rng: np.random.Generator, rows: list[tuple], users: np.ndarray, pop: Population,
             cand: Candidate, now_s: float) -> list[tuple]:
    """Feedback with a token on some successful answers: the calls :func:`add_feedback` makes."""
    ok = np.array([row[2] is None for row in rows])
    chosen = np.flatnonzero(ok & (rng.random(len(rows)) < pop.model.feedback_share))
    if not chosen.size:
        return []
    is_candidate = np.array([rows[i][0] == CANDIDATE for i in chosen.tolist()])
    p_correct = pop.correct[users[chosen]] * np.where(is_candidate, cand.correct_mult, 1.0)
    correct = (rng.random(chosen.size) < p_correct).tolist()
    calls = []
    for i, right in zip(chosen.tolist(), correct):
        version, _, _, _, _, unit, _, _, split, request_id = rows[i]
        calls.append((request_id, right, now_s, version, unit, split))
    return calls


def add_feedback(core: ControllerCore, call: tuple) -> None:
    """One feedback, as the controller's ``feedback`` method takes it (the token's version,
    unit and epoch)."""
    request_id, right, now_s, version, unit, split = call
    core.feedback.add(request_id, "correct", None, right, now_s, version, unit=unit, split=split)


# -- summaries -----------------------------------------------------------------------------


def rate(hits: int, n: int) -> dict[str, Any]:
    p = hits / n if n else float("nan")
    return {"rate": round(p, 4), "mc_se": round(math.sqrt(p * (1.0 - p) / n), 4) if n else None,
            "hits": hits, "reps": n}


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": float(np.median(values)), "p10": float(np.percentile(values, 10)),
            "p90": float(np.percentile(values, 90)), "n": len(values)}


def summarise(case: Case, runs: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(runs)
    phases = Counter(run["phase"] for run in runs)
    causes = Counter(run["cause"] for run in runs if run["cause"])
    per_step: dict[str, dict[str, Any]] = {}
    for key in sorted({k for run in runs for k in run["fail_any"]}, key=lambda k: (float(k.split("|")[0]), k)):
        seen = [run["fail_any"][key] for run in runs if key in run["fail_any"]]
        per_step[key] = rate(sum(seen), len(seen))
    looks: Counter = Counter()
    for run in runs:
        looks.update(run["looks"])
    # Per pause's weight: of the runs that reached it, how many left it for a larger one
    # (promotion included): for a candidate at a gate's threshold, every one a false pass.
    left_step = {}
    for weight in (5.0, 20.0, 50.0):
        reached = [run for run in runs if weight in run["weights_seen"]]
        left_step[f"{weight:g}"] = rate(sum(max(run["weights_seen"]) > weight for run in reached), len(reached))
    return {
        **asdict(case), "aa": CANDIDATES[case.candidate] == Candidate(),
        "promoted": rate(phases["promoted"], n),
        "aborted": rate(phases["aborted"], n),
        "aborted_by_gate": rate(causes["gate"], n),
        "aborted_by_deadline": rate(causes["deadline"], n),
        "aborted_other": rate(causes["other"], n),
        "unfinished": rate(n - phases["promoted"] - phases["aborted"], n),
        "t_decision_s": spread([run["t_s"] for run in runs if run["phase"] in ("promoted", "aborted")]),
        "t_promoted_s": spread([run["t_s"] for run in runs if run["phase"] == "promoted"]),
        "t_aborted_s": spread([run["t_s"] for run in runs if run["phase"] == "aborted"]),
        "gate_fail_per_step": per_step,
        "left_step": left_step,
        "mean_analyses_per_step": {w: round(k / n, 1) for w, k in sorted(looks.items(), key=lambda x: float(x[0]))},
        "requests_per_run": spread([run["requests"] for run in runs]),
        "example_aborts": [run["reason"] for run in runs if run["phase"] == "aborted"][:2],
        "wall_s": round(sum(run["wall_s"] for run in runs), 1),
    }


def _r(x: dict[str, Any]) -> str:
    return f"{x['rate']:.3f} ± {x['mc_se']:.3f}"


def print_tables(result: dict[str, Any]) -> None:
    print(f"Rollout calibration ({result['mode']}, {result['reps']} reps per case, seed {result['seed']}): "
          f"canary 5% -> 20% -> 50% -> 100%, 60 s pauses, analysis every 5 s, deadline 300 s")
    print(f"  {'case':<26} {'promoted':>15} {'aborted: gate':>15} {'deadline':>15} {'unfinished':>15} "
          f"{'median t (s)':>12}")
    for name, row in result["cases"].items():
        t = row["t_decision_s"]
        print(f"  {name:<26} {_r(row['promoted']):>15} {_r(row['aborted_by_gate']):>15} "
              f"{_r(row['aborted_by_deadline']):>15} {_r(row['unfinished']):>15} "
              f"{t['median'] if t else float('nan'):>12.1f}")
    print("\nPer pause's weight: runs that left it for a larger weight, among those that reached it")
    for name, row in result["cases"].items():
        print(f"  {name:<26} " + "  ".join(f"{w:>3}%: {_r(r) if r['reps'] else '-':>13}"
                                             for w, r in row["left_step"].items()))
    print("\nPer step's weight and gate: runs where the gate said FAIL at least once at that weight "
          "(A/A: false fails), among the runs that analysed there")
    for name, row in result["cases"].items():
        kind = "A/A: false fails" if row["aa"] else "bad candidate: detections"
        print(f"  {name} ({kind}):")
        for key, r in row["gate_fail_per_step"].items():
            weight, gate = key.split("|", 1)
            print(f"    {weight:>4}%  {gate:<36} {_r(r)}")
    print(f"\nwall time {result['wall_s']:.0f} s", flush=True)


# -- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = args.case or (QUICK_CASES if args.quick else FULL_CASES)
    reps = args.reps or (QUICK_REPS if args.quick else FULL_REPS)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "bench": "rollout_calibration", "mode": "quick" if args.quick else "full",
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__},
        "load_before": load_now(), "seed": args.seed, "reps": reps, "max_s": args.max_s,
        "kill_every_s": args.kill_every_s, "pause_every_s": args.pause_every_s, "pause_s": PAUSE_S,
        "config": {"analysis": ANALYSIS, "steps": STEPS, "gates": GATE_SETS,
                   "population": asdict(PopulationModel()),
                   "candidates": {name: asdict(c) for name, c in CANDIDATES.items()}},
        "cases": {},
    }
    for name in names:
        case = CASES[name]
        runs = []
        for rep in range(reps):
            t0 = time.perf_counter()
            out = one_run(case, np.random.SeedSequence([args.seed, zlib.crc32(name.encode()), rep]), args.max_s,
                          kill_every_s=args.kill_every_s, pause_every_s=args.pause_every_s)
            out["wall_s"] = time.perf_counter() - t0
            runs.append(out)
        result["cases"][name] = summarise(case, runs)
        print(f"{name}: {reps} runs in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    result["load_after"] = load_now()
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke size: {', '.join(QUICK_CASES)}, {QUICK_REPS} reps each (under a minute)")
    parser.add_argument("--reps", type=int, default=None,
                        help=f"repetitions per case (default {QUICK_REPS} quick, {FULL_REPS} full)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every repetition (default 0)")
    parser.add_argument("--case", action="append", choices=sorted(CASES), default=None,
                        help="run this case (repeatable) instead of the mode's")
    parser.add_argument("--max-s", type=float, default=1800.0,
                        help="simulated seconds before a run counts as unfinished (default 1800)")
    parser.add_argument("--kill-every-s", type=float, default=None,
                        help="kill the controller every this many simulated seconds (it saves every "
                             f"{SAVE_EVERY_S:g} s; the router sends again what the last save lacks)")
    parser.add_argument("--pause-every-s", type=float, default=None,
                        help=f"an operator pauses the rollout for {PAUSE_S:g} s every this many seconds of "
                             "running (traffic goes on meanwhile)")
    args = parser.parse_args(argv)
    if args.pause_every_s is not None and not args.pause_every_s > 0:
        parser.error(f"--pause-every-s is {args.pause_every_s}; give seconds above 0, e.g. --pause-every-s 23")
    if args.kill_every_s is not None and not args.kill_every_s > 0:
        parser.error(f"--kill-every-s is {args.kill_every_s}; give seconds above 0, e.g. --kill-every-s 17")
    if args.reps is not None and args.reps < 1:
        parser.error(f"--reps is {args.reps}; give at least 1, e.g. --reps 40")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The controller logs every weight change at INFO on Ray Serve's logger: quiet while we run.
    serve_logger = logging.getLogger("ray.serve")
    level = serve_logger.level
    serve_logger.setLevel(logging.WARNING)
    try:
        result = run(args)
    finally:
        serve_logger.setLevel(level)
    print_tables(result)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
