"""What shadow traffic costs the clients: the same app with and without a shadow.

Two serve-ab apps, identical but for ``shadow: {version: v2, percent: 100}`` on one, serve
v1 to every client (colocated, one router replica each). Every request to the shadowed app
is also run on v2 (the torch model, slower than v1) in the background, after v1's answer.

- latency: one connection alternates between the two apps request by request
  (``HttpLoad.alternate``), so both see the same machine at the same moment; the figure
  is the ratio of p50 and p99 with the shadow to without, and the p50 difference in ms.
- throughput: each app under a closed loop of ``--concurrency`` connections in turn; the
  shadow's work runs on the same replica, so it costs capacity even though no client waits
  for it: the ratio says how much.
- the shadowed app's controller is asked how many copies it compared, which must be close
  to the requests it served (a check that the shadow really ran).

    python -m benchmarks.bench_shadow [--duration-s 10] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import httpx

from benchmarks.cluster import Cluster, deployed, run_standalone
from benchmarks.common import (
    digits_experiment,
    load_now,
    percentile,
    report_header,
    request_bodies,
    version,
)
from benchmarks.loadgen import HttpLoad
from serve_ab.config.experiment import parse_experiment

MODELS_USED = ("v1/model.onnx", "v2/model.pt2")
ROUTER = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}, "max_ongoing_requests": 256}


def experiment(shadow: bool) -> dict[str, Any]:
    cfg = digits_experiment([version("v1"), version("v2", "torch")], {"v1": 100}, "bench-shadow",
                            ROUTER, placement=None)
    if shadow:
        cfg["shadow"] = {"version": "v2", "percent": 100}
    parse_experiment(cfg)  # a bad benchmark config fails here, not inside Serve
    return cfg


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=10.0, help="per measurement")
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop connections")
    return parser.parse_args(argv)


def run(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    from ray import serve

    from serve_ab import build_app

    started = time.perf_counter()
    header = report_header("shadow", quick=None)
    targets = [serve.RunTarget(build_app(experiment(shadow)), name=name, route_prefix=f"/{name}")
               for name, shadow in (("noshadow", False), ("shadow", True))]
    bodies, _ = request_bodies()
    urls = {name: f"{cluster.base_url}/{name}/predict" for name in ("noshadow", "shadow")}
    load = HttpLoad()
    try:
        with deployed(targets):
            alternated = load.alternate(list(urls.values()), bodies, args.duration_s, warmup_s=1.0)
            latency = {name: alternated[url]["latencies_ms"] for name, url in urls.items()}
            throughput = {name: load.run(url, bodies, args.concurrency, args.duration_s, warmup_s=1.0)
                          for name, url in urls.items()}
            stats = httpx.get(f"{cluster.base_url}/shadow/experiment/stats", timeout=30).json()
    finally:
        load.close()
    errors = {name: alternated[url]["errors"] for name, url in urls.items()}
    if any(errors.values()) or any(t.get("errors") for t in throughput.values()):
        raise RuntimeError(f"requests failed: alternating {errors}, "
                           f"closed loop {[t.get('errors') for t in throughput.values()]}")
    report = {**header, **figures(latency, throughput, stats, args),
              "load_after": load_now(), "wall_s": round(time.perf_counter() - started, 1)}
    print("\n".join(summary_lines(report)))
    return report


def figures(latency: dict[str, list[float]], throughput: dict[str, dict[str, Any]],
            stats: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The report's figures from what was measured: each app's latencies while alternating
    (ms), its closed loop's result, and the shadowed app's ``/experiment/stats``."""
    p50 = {name: statistics.median(values) for name, values in latency.items()}
    p99 = {name: percentile(values, 0.99) for name, values in latency.items()}
    rps = {name: t["throughput_rps"] for name, t in throughput.items()}
    return {
        "requests_alternated_per_app": {name: len(v) for name, v in latency.items()},
        "p50_ms": p50,
        "p99_ms": p99,
        "p50_added_ms": p50["shadow"] - p50["noshadow"],
        "p50_ratio_shadow_to_none": p50["shadow"] / p50["noshadow"],
        "p99_ratio_shadow_to_none": p99["shadow"] / p99["noshadow"],
        "throughput_rps": rps,
        "throughput_ratio_shadow_to_none": rps["shadow"] / rps["noshadow"],
        "concurrency": args.concurrency,
        "shadow_compared": stats["shadow"]["pairs"],
        "shadow_served_by_v1": stats["versions"]["v1"]["requests"],
        "shadow_agreement": stats["shadow"]["agree"] / max(1, stats["shadow"]["pairs"]),
        "duration_s": args.duration_s,
    }


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The report as a reader takes it in (``run_all`` puts these lines in RESULTS.md)."""
    p50, p99, rps = report["p50_ms"], report["p99_ms"], report["throughput_rps"]
    alternated = report["requests_alternated_per_app"]
    apps = (("noshadow", "without a shadow"), ("shadow", "shadow on v2, 100 %"))
    latency = (f"\nLatency: one connection alternating between the apps request by request, "
               f"{report['duration_s']:g} s ({alternated['noshadow']} and {alternated['shadow']} requests)")
    latency_ratio = (f"  with / without: p50 {report['p50_added_ms']:+.2f} ms "
                     f"({report['p50_ratio_shadow_to_none']:.3f}x), p99 {report['p99_ratio_shadow_to_none']:.3f}x")
    throughput = (f"Throughput: closed loop of {report['concurrency']} connections, each app in turn, "
                  f"{report['duration_s']:g} s")
    compared = (f"The shadowed app compared {report['shadow_compared']} answers of the "
                f"{report['shadow_served_by_v1']} v1 served (v2 agreed on {report['shadow_agreement']:.1%})")
    load = (f"load average before {report['load_before']}, after {report['load_after']}; "
            f"wall {report['wall_s']:.0f} s")
    return [latency,
            *(f"  {label:<20} p50 {p50[name]:7.2f} ms  p99 {p99[name]:7.2f} ms" for name, label in apps),
            latency_ratio,
            throughput,
            *(f"  {label:<20} {rps[name]:7.1f} req/s" for name, label in apps),
            f"  with / without: {report['throughput_ratio_shadow_to_none']:.3f}x",
            compared,
            load]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_standalone(run, args, *MODELS_USED)


if __name__ == "__main__":
    sys.exit(main())
