"""How much traffic one controller absorbs: routers' aggregates vs a row per request.

    python -m benchmarks.bench_controller --quick   # about 2 minutes; one JSON line last
    python -m benchmarks.bench_controller           # more rates, longer at each

Simulated routers (plain Ray actors, no model) feed one controller actor at rising
*represented* request rates, for two designs side by side in the same run:

    aggregates   serve-ab now: each router sends one IntervalReport per interval (0.25 s, a
                 short controller.report_interval_s: four times the default's reports),
                 whatever the requests it covers; the controller is the real ControllerCore
                 (canary rollout, gate windows, statistics) and merges it.
    per_request  the design before (the baseline): each router sends a row per request and
                 the controller folds them one by one into the same ExperimentStats, a gate
                 window deque and the feedback join's request-id map, as it did.

Each router prepares its interval's message once (real rows folded through the router's own
IntervalAggregate, from 5M simulated users) and sends it every interval; only the
controller's side is measured. At each rate: the controller process's CPU seconds per
interval (getrusage, deserialising included), and each report's lag from send to merged.
The controller keeps up while the p95 lag stays under one interval. Reported: the highest
rate each design kept up with, their ratio, and the aggregates' CPU per interval at the
highest rate over the lowest (flat means the cost does not grow with traffic).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import resource
import statistics
import sys
import time
from typing import Any

import numpy as np

from benchmarks.common import load_now, log, other_ray_instances, report_header

INTERVAL_S = 0.25  # a short controller.report_interval_s (the default is 1 s): more to merge
TICK_S = 0.25  # the controller's default tick_s
ROUTERS = 4
USERS = 5_000_000
QUICK_RATES = (1_000, 10_000, 100_000)
FULL_RATES = (1_000, 3_000, 10_000, 30_000, 100_000, 1_000_000)
# The baseline is not run past the rate at which it fell this far behind (it would only queue).
GIVE_UP_LAG_INTERVALS = 8


def experiment() -> dict[str, Any]:
    return {
        "model": "bench",
        "versions": [{"name": "v1", "path": "a.onnx", "backend": "onnx"},
                     {"name": "v2", "path": "b.onnx", "backend": "onnx"}],
        "weights": {"v1": 100},
        "rollout": {"strategy": "canary", "stable": "v1", "candidate": "v2",
                    "analysis": {"interval_s": 1, "min_samples": 10**9},  # held: never moves on
                    "gates": [{"metric": "error_rate", "max": 0.05}, {"metric": "latency_p95_ms", "max": 100}],
                    "steps": [{"set_weight": 20}, {"pause": {}}]},
    }


WEIGHTS = {"v1": 80.0, "v2": 20.0}


def rows(seed: int, n: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, USERS, n)
    versions = np.where(users % 10_000 < 8_000, "v1", "v2")
    latency = rng.lognormal(1.5, 0.4, n)
    errors = rng.random(n) < 0.01
    classes = rng.integers(0, 10, n)
    return [{"version": str(v), "latency_ms": float(lat), "error_kind": "model" if err else None,
             "predicted_class": None if err else int(c), "score": None if err else 0.9, "unit": int(u),
             "request_id": f"r{seed}-{i}"}
            for i, (v, lat, err, c, u) in enumerate(zip(versions, latency, errors, classes, users))]


# -- the two controllers ------------------------------------------------------------------------


def _make_aggregates_controller():
    import ray

    @ray.remote(num_cpus=0)
    class AggregatesController:
        def __init__(self) -> None:
            from serve_ab.config.experiment import parse_experiment
            from serve_ab.serving.controller import ControllerCore
            from serve_ab.store.state import MemoryStateStore

            self.core = ControllerCore(parse_experiment(experiment()), MemoryStateStore())
            self._ticking = None

        async def record(self, report: Any, sent_s: float) -> float:
            self.core.record(report)
            return time.time() - sent_s

        async def tick(self) -> None:
            """Start the controller's loop: a look at the gate windows every tick, as deployed."""
            async def loop() -> None:
                while True:
                    self.core.tick()
                    await asyncio.sleep(TICK_S)
            self._ticking = asyncio.get_running_loop().create_task(loop())

        def cpu_s(self) -> float:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return usage.ru_utime + usage.ru_stime

    return AggregatesController


def _make_per_request_controller():
    import ray

    @ray.remote(num_cpus=0)
    class PerRequestController:
        """The per-request design this replaced: every row folded one by one."""

        def __init__(self) -> None:
            from serve_ab.analysis.accumulate import ExperimentStats
            from serve_ab.rollout.feedback import FeedbackJoin

            self.stats = ExperimentStats(["v1", "v2"], time.time())
            self.stats.set_weights(WEIGHTS)
            self.windows: collections.deque = collections.deque(maxlen=200_000)
            self.feedback = FeedbackJoin(keep_events=True)
            self._ticking = None

        async def record(self, batch: list[tuple], sent_s: float) -> float:
            from serve_ab.rollout.gates import Observation

            now = time.time()
            for version, latency_ms, error_kind, predicted_class, score, unit, request_id in batch:
                self.windows.append(Observation(version, latency_ms, error_kind is None, predicted_class, score, now))
                self.stats.record(now, version, latency_ms, error_kind, predicted_class, unit, True, WEIGHTS)
                self.feedback.remember(request_id, version, now, unit=unit, split=0)
            return time.time() - sent_s

        async def tick(self) -> None:
            """Its loop: every tick, the gate windows built from the rows kept (as it did)."""
            from serve_ab.rollout.gates import build_windows

            async def loop() -> None:
                while True:
                    build_windows(self.windows, versions=("v1", "v2"), start_s=time.time() - 60.0)
                    await asyncio.sleep(TICK_S)
            self._ticking = asyncio.get_running_loop().create_task(loop())

        def cpu_s(self) -> float:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return usage.ru_utime + usage.ru_stime

    return PerRequestController


def _make_router():
    import ray

    @ray.remote(num_cpus=0)
    class SimulatedRouter:
        def __init__(self, design: str, seed: int, per_interval: int) -> None:
            from serve_ab.analysis.aggregate import IntervalAggregate
            from serve_ab.serving.core.messages import IntervalReport

            served = rows(seed, per_interval)
            if design == "aggregates":
                aggregate = IntervalAggregate()
                for r in served:  # the router's own request path, done once here
                    aggregate.served(r["version"], r["latency_ms"], r["error_kind"], r["predicted_class"],
                                     r["score"], unit=r["unit"], assigned=True, mirrored=False, split=0,
                                     weights_pct=WEIGHTS)
                self.message = IntervalReport(f"router-{seed}", aggregate)
            else:
                self.message = [(r["version"], r["latency_ms"], r["error_kind"], r["predicted_class"], r["score"],
                                 r["unit"], r["request_id"]) for r in served]

        async def run(self, controller: Any, duration_s: float) -> list[float]:
            """One message per interval for ``duration_s``; the lag of each (send to merged)."""
            lags: list[float] = []
            pending: list[Any] = []
            started = time.monotonic()
            while time.monotonic() - started < duration_s:
                pending.append(controller.record.remote(self.message, time.time()))
                await asyncio.sleep(INTERVAL_S)
            for ref in pending:
                lags.append(await ref)
            return lags

    return SimulatedRouter


# -- the run ------------------------------------------------------------------------------------


def measure(design: str, rate: int, duration_s: float) -> dict[str, Any]:
    import ray

    per_interval = max(int(rate * INTERVAL_S / ROUTERS), 1)
    make = _make_aggregates_controller() if design == "aggregates" else _make_per_request_controller()
    controller = make.remote()
    router_class = _make_router()
    routers = [router_class.remote(design, seed, per_interval) for seed in range(ROUTERS)]
    ray.get([r.__ray_ready__.remote() for r in routers] + [controller.__ray_ready__.remote()])
    ray.get(controller.tick.remote())
    cpu_before = ray.get(controller.cpu_s.remote())
    wall_before = time.monotonic()
    lags = [lag for part in ray.get([r.run.remote(controller, duration_s) for r in routers]) for lag in part]
    wall_s = time.monotonic() - wall_before
    cpu_s = ray.get(controller.cpu_s.remote()) - cpu_before
    for actor in routers + [controller]:
        ray.kill(actor)
    intervals = wall_s / INTERVAL_S
    lags_sorted = sorted(lags)
    p95 = lags_sorted[min(int(0.95 * len(lags_sorted)), len(lags_sorted) - 1)]
    return {"design": design, "rate_rps": rate, "requests_per_report": per_interval, "reports": len(lags),
            "cpu_s_per_interval": cpu_s / intervals, "cpu_share": cpu_s / wall_s,
            "lag_p50_ms": 1000 * statistics.median(lags), "lag_p95_ms": 1000 * p95,
            "kept_up": p95 < INTERVAL_S, "wall_s": wall_s}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="three rates, 3 s at each")
    parser.add_argument("--duration", type=float, default=None, help="seconds at each rate")
    return parser.parse_args(argv)


def run(_cluster: Any, args: argparse.Namespace) -> dict[str, Any]:
    rates = QUICK_RATES if args.quick else FULL_RATES
    duration_s = args.duration or (3.0 if args.quick else 8.0)
    load_before = load_now()
    results: list[dict[str, Any]] = []
    for design in ("aggregates", "per_request"):
        for rate in rates:
            result = measure(design, rate, duration_s)
            results.append(result)
            log(f"{design:<12} {rate:>8,} req/s  cpu {result['cpu_s_per_interval'] * 1000:8.2f} ms/interval "
                f"({result['cpu_share']:.0%})  lag p95 {result['lag_p95_ms']:9.1f} ms  "
                f"{'kept up' if result['kept_up'] else 'BEHIND'}")
            if result["lag_p95_ms"] > GIVE_UP_LAG_INTERVALS * INTERVAL_S * 1000:
                break  # higher rates would only queue further

    def highest(design: str) -> int:
        kept = [r["rate_rps"] for r in results if r["design"] == design and r["kept_up"]]
        return max(kept, default=0)

    aggregates = {r["rate_rps"]: r["cpu_s_per_interval"] for r in results if r["design"] == "aggregates"}
    # DESIGN.md's figure: CPU per interval as the represented rate grows 100x.
    flat = aggregates[rates[0] * 100] / aggregates[rates[0]]
    flat_full = aggregates[rates[-1]] / aggregates[rates[0]]
    best_aggregates, best_rows = highest("aggregates"), highest("per_request")
    # The rate the baseline kept up with is a lower bound on what it absorbs; when it kept
    # up with none of them, the lowest rate tried is the (generous) bound.
    baseline = best_rows or rates[0]
    report = {
        **report_header("bench_controller", args.quick),
        "routers": ROUTERS, "interval_s": INTERVAL_S, "simulated_users": USERS,
        "results": results,
        "highest_rate_kept_up_rps": {"aggregates": best_aggregates, "per_request": best_rows},
        "rate_ratio_aggregates_over_per_request": best_aggregates / baseline,
        "rate_ratio_is_lower_bound": best_aggregates == rates[-1],
        "aggregates_cpu_100x_rate_over_lowest": flat,
        "aggregates_cpu_highest_over_lowest_rate": flat_full,
        "rate_span": rates[-1] / rates[0],
        "load_before": load_before, "load_after": load_now(), "other_ray_instances": other_ray_instances(),
    }
    print(f"aggregates kept up to {best_aggregates:,} req/s, per-request to {best_rows:,} req/s: "
          f"{report['rate_ratio_aggregates_over_per_request']:.0f}x"
          f"{' (at least: the highest rate tried)' if report['rate_ratio_is_lower_bound'] else ''}; "
          f"aggregates' CPU per interval at {rates[0] * 100:,} vs {rates[0]:,} req/s: {flat:.2f}x "
          f"(at {rates[-1]:,}: {flat_full:.2f}x)")
    return report


def main(argv: list[str] | None = None) -> int:
    import ray

    args = parse_args(argv)
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        report = run(None, args)
    finally:
        ray.shutdown()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
