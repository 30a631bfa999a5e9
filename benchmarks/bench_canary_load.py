"""Throughput while a canary moves, vs the same app with static weights.

    python -m benchmarks.bench_canary_load --quick   # about 1 minute; one JSON line last
    python -m benchmarks.bench_canary_load           # longer pauses and windows

One serve-ab colocated app (v1 stable, v3 candidate, both ONNX, held in one router
replica: num_cpus 0.5, max_ongoing_requests 256, as in bench_serving) with a
``rollout:`` (canary, no gates, a ``state_path`` in a temporary directory, a random control
token given to the replicas through the environment Ray starts from). Its steps:

    [{pause: {}}, {set_weight: 5}, {pause: {duration: P}}, {set_weight: 20},
     {pause: {duration: P}}, {set_weight: 50}, {pause: {duration: P}}, {set_weight: 100}]

The first, manual pause holds the app at static weights (v1 100 %). The closed-loop load
generator (benchmarks.loadgen, its own process, N keep-alive connections, a new user id
per request) then measures, each for W seconds after 0.1 s unmeasured:

1. **static, before**: v1 100 %, the rollout paused;
2. **canary**: ``POST /rollout/promote`` ends the manual pause just before the window opens;
   the canary goes 5 % -> 20 % -> 50 % -> 100 % inside the window (W > 3 P), v1 retiring
   ``retire_after_s`` after the promotion;
3. **static, after**: v3 100 %, promoted.

Reported: req/s of each window, the ratio canary / mean(static before, static after) (and
to each), failed requests (non-200 answers or connection errors, in the windows; the
loadgen does not count its 0.1 s warm-up), p50/p99, and the step times from the
controller's history relative to the canary window.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.cluster import Cluster, deployed, run_standalone
from benchmarks.common import (
    digits_experiment,
    load_now,
    log,
    other_ray_instances,
    percentile,
    report_header,
    request_bodies,
    version,
)
from benchmarks.loadgen import HttpLoad

ROUTER_OPTIONS: dict[str, Any] = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5},
                                  "max_ongoing_requests": 256}


def experiment(state_path: Path, pause_s: float, retire_after_s: float) -> dict[str, Any]:
    pause = {"pause": {"duration": f"{pause_s:g}s"}}
    return digits_experiment(
        [version("v1"), version("v3")], {"v1": 100}, "canaryload", ROUTER_OPTIONS,
        rollout={
            "strategy": "canary", "stable": "v1", "candidate": "v3",
            "steps": [{"pause": {}}, {"set_weight": 5}, pause, {"set_weight": 20}, pause,
                      {"set_weight": 50}, pause, {"set_weight": 100}],
            "retire_after_s": retire_after_s,
        },
        controller={"state_path": str(state_path), "tick_s": 0.1},
    )


def window(result: dict[str, Any]) -> dict[str, Any]:
    latencies = result.pop("latencies_ms", [])

    def at(fraction: float) -> float | None:
        return round(percentile(latencies, fraction), 2) if latencies else None

    return {"rps": round(result["throughput_rps"], 1), "completed": result["completed"],
            "failed": sum(result["errors"].values()), "errors": result["errors"],
            "p50_ms": at(0.5), "p99_ms": at(0.99)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 s pauses, 5 s windows")
    parser.add_argument("--concurrency", type=int, default=8, help="keep-alive connections (default 8)")
    parser.add_argument("--pause", type=float, help="seconds of each timed pause (quick 1, full 3)")
    return parser.parse_args(argv)


def run(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    pause_s = args.pause or (1.0 if args.quick else 3.0)
    retire_after_s = 0.5 if args.quick else 1.0
    window_s = round(3 * pause_s + retire_after_s + 2.0, 2)

    import httpx
    from ray import serve

    from serve_ab import build_app

    started = time.perf_counter()
    app = f"canaryload{secrets.token_hex(3)}"
    report = report_header("canary_load", args.quick, dated=False, concurrency=args.concurrency,
                           pause_s=pause_s, window_s=window_s, retire_after_s=retire_after_s)
    bodies, _ = request_bodies()
    base = f"{cluster.base_url}/{app}"
    with tempfile.TemporaryDirectory(prefix="bench-canary-load-") as tmp, \
            httpx.Client(timeout=30.0, headers={"authorization": f"Bearer {cluster.token}"}) as control:
        log(f"deploying {app}: colocated v1 + v3, canary held at its first (manual) pause")
        target = serve.RunTarget(
            build_app(experiment(Path(tmp) / "state.sqlite", pause_s, retire_after_s)),
            name=app, route_prefix=f"/{app}")
        load: HttpLoad | None = None
        with deployed([target]):
            try:
                status = control.get(f"{base}/rollout/status").json()
                log(f"phase {status['phase']}, weights {status['weights_pct']}")
                load = HttpLoad()
                url = f"{base}/predict"
                load.run(url, bodies, args.concurrency, 1.0, 0.5)  # warm-up, unmeasured
                log(f"static (before): {window_s:g} s at concurrency {args.concurrency}")
                before = window(load.run(url, bodies, args.concurrency, window_s, 0.1))
                response = control.post(f"{base}/rollout/promote", json={})
                if response.status_code != 200:
                    raise RuntimeError(f"promote answered {response.status_code}: {response.text[:300]}")
                t_open = time.time() + 0.1  # the loadgen's 0.1 s unmeasured, roughly
                log(f"canary: {window_s:g} s, pauses {pause_s:g} s")
                during = window(load.run(url, bodies, args.concurrency, window_s, 0.1))
                t_close = time.time()
                deadline = time.monotonic() + 60
                while True:
                    status = control.get(f"{base}/rollout/status?history=true").json()
                    if (status["phase"] == "promoted" and "v1" in status.get("retired", [])) \
                            or time.monotonic() > deadline:
                        break
                    time.sleep(0.25)
                report["phase_after_canary_window"] = status["phase"]
                log(f"static (after): phase {status['phase']}, weights {status['weights_pct']}, "
                    f"retired {status.get('retired')}")
                after = window(load.run(url, bodies, args.concurrency, window_s, 0.1))
            finally:
                if load is not None:
                    load.close()
        history = status.get("history", [])
        report["steps"] = [
            {"to_phase": h.get("to_phase"), "step_index": h.get("step_index"),
             "t_from_window_open_s": round(h["t_s"] - t_open, 2) if "t_s" in h else None,
             "reason": h.get("reason")}
            for h in history
        ]
        report["window_close_s"] = round(t_close - t_open, 2)
        report["final"] = {"phase": status["phase"], "weights_pct": status["weights_pct"],
                           "retired": status.get("retired")}
        report["other_ray_instances"] = other_ray_instances()

    static = (before["rps"] + after["rps"]) / 2
    report.update({
        "static_before": before, "canary": during, "static_after": after,
        "ratio_canary_over_static": round(during["rps"] / static, 3) if static else None,
        "ratio_canary_over_before": round(during["rps"] / before["rps"], 3) if before["rps"] else None,
        "ratio_canary_over_after": round(during["rps"] / after["rps"], 3) if after["rps"] else None,
        "failed_requests": before["failed"] + during["failed"] + after["failed"],
        "failed_during_canary": during["failed"],
        "load_after": load_now(),
        "wall_s": round(time.perf_counter() - started, 1),
    })
    print(f"\nClosed loop, concurrency {args.concurrency}, {window_s:g} s per window")
    for name, w in (("static, before (v1 100%)", before), ("canary 5->20->50->100%", during),
                    ("static, after (v3 100%)", after)):
        print(f"  {name:<26} {w['rps']:7.1f} req/s  p50 {w['p50_ms']} ms  p99 {w['p99_ms']} ms  "
              f"failed {w['failed']}")
    print(f"canary / static (mean of before and after): {report['ratio_canary_over_static']}x "
          f"(vs before {report['ratio_canary_over_before']}x, vs after {report['ratio_canary_over_after']}x); "
          f"failed requests {report['failed_requests']}")
    for step in report.get("steps", []):
        print(f"  {step['t_from_window_open_s']!s:>7} s  -> {step['to_phase']} (step {step['step_index']}): {step['reason']}")
    print(f"canary window closed at {report.get('window_close_s')} s; final {report.get('final')}")
    print(f"load average before {report['load_before']}, after {report['load_after']}; wall {report['wall_s']:.0f} s")
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_standalone(run, args, "v1/model.onnx", "v3/model.onnx")


if __name__ == "__main__":
    sys.exit(main())
