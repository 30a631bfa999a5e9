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
from typing import Any

import httpx

from benchmarks.cluster import Cluster, deployed, run_standalone
from benchmarks.common import digits_experiment, percentile, request_bodies, version
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
    p50 = {name: statistics.median(values) for name, values in latency.items()}
    p99 = {name: percentile(values, 0.99) for name, values in latency.items()}
    rps = {name: t["throughput_rps"] for name, t in throughput.items()}
    served = stats["versions"]["v1"]["requests"]
    return {
        "bench": "shadow",
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
        "shadow_served_by_v1": served,
        "shadow_agreement": stats["shadow"]["agree"] / max(1, stats["shadow"]["pairs"]),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_standalone(run, args, *MODELS_USED)


if __name__ == "__main__":
    sys.exit(main())
