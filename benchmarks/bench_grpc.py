"""serve-ab over gRPC against plain Ray Serve over gRPC: the Open Inference Protocol's
``ModelInfer``, as tritonclient and KServe's clients call it, through Serve's gRPC proxy.

Three apps side by side on one cluster (four with ``--plain-loop``), each one replica with
``bench_serving``'s Ray options (num_cpus 0.5, max_ongoing_requests 256):

- (a) ``grpc_plain``: :class:`benchmarks.baselines.OnnxModelGrpc`, ``ModelInfer`` by hand on v1;
- (a=) ``grpc_twin``: the same app again, the A/A that shows the noise floor;
- (c) ``grpc_colocated``: serve-ab colocated, v1 and v3 at 50/50, keyed on ``parameters.user_id``;
- with ``--plain-loop``, (aL) ``grpc_plain_loop``: (a) with the Ray Serve settings serve-ab gives
  its colocated router (``bench_serving.router_settings``: one replica loop), and (c) is also
  read against it, round by round: serve-ab's path on equal settings.

Every request is a digit (a batch of one, raw little-endian float32, as tritonclient sends it)
with a new ``user_id`` in its parameters, the same bytes to every app; Serve's proxy picks the
app by the ``application`` metadata. Per round: at concurrency 1 the apps take turns request by
request on one channel (the same moment of the machine for each); at ``--concurrency`` each app
runs a closed loop of that many calls in turn, in an order rotated between rounds (and reversed
every other round, ``bench_serving.rotated``). Ratios are taken within a round against (a),
then the median (min-max) over rounds.

    python -m benchmarks.bench_grpc [--rounds 4] [--duration-s 3] [--concurrency 16] [--plain-loop]

``benchmarks.run_all`` runs it as its ``grpc`` part, on its shared cluster started with
:func:`benchmarks.cluster.grpc_options`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import numpy as np

from benchmarks.bench_serving import REPLICA_OPTIONS, WEIGHTS_PCT, rotated, router_settings
from benchmarks.cluster import Cluster, deployed, grpc_options, run_standalone
from benchmarks.common import MODELS, digits_experiment, load_now, request_bodies, version

APPS = ("grpc_plain", "grpc_twin", "grpc_colocated")
PLAIN_LOOP = "grpc_plain_loop"  # with --plain-loop
BASELINE = "grpc_plain"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration-s", type=float, default=3.0, help="per app, round and concurrency")
    parser.add_argument("--concurrency", type=int, default=16, help="the closed loop's calls in flight")
    parser.add_argument("--plain-loop", action="store_true",
                        help="also plain on Ray Serve's one replica loop, the settings of serve-ab's router")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration_s <= 0 or args.concurrency < 2:
        parser.error(f"--rounds {args.rounds}, --duration-s {args.duration_s}, --concurrency "
                     f"{args.concurrency}: need at least 1 round, a positive duration, 2 or more calls")
    return args


def apps(args: argparse.Namespace) -> tuple[str, ...]:
    """The apps this run deploys and measures, the baseline first."""
    return APPS + ((PLAIN_LOOP,) if args.plain_loop else ())


def requests(count: int = 256) -> list[bytes]:
    """Serialized ModelInferRequests: real digits, a new user each."""
    from serve_ab.api.grpc import grpc_predict_v2_pb2 as pb

    _, pairs = request_bodies(count)
    out = []
    for batch, user in pairs:
        request = pb.ModelInferRequest(model_name="digits")
        request.parameters["user_id"].string_param = user
        request.inputs.add(name="input", datatype="FP32", shape=list(batch.shape))
        request.raw_input_contents.append(np.ascontiguousarray(batch, dtype="<f4").tobytes())
        out.append(request.SerializeToString())
    return out


def targets(names: tuple[str, ...] = APPS) -> list[Any]:
    from ray import serve

    from benchmarks import baselines
    from serve_ab import build_app

    v1 = str(MODELS / "v1" / "model.onnx")
    experiment = digits_experiment([version("v1"), version("v3")], WEIGHTS_PCT, "bench-grpc",
                                   REPLICA_OPTIONS, "colocated")
    builders = {"grpc_plain": lambda: baselines.plain_grpc_app(v1, REPLICA_OPTIONS),
                "grpc_twin": lambda: baselines.plain_grpc_app(v1, REPLICA_OPTIONS),
                "grpc_colocated": lambda: build_app(experiment),
                PLAIN_LOOP: lambda: baselines.plain_grpc_app(v1, router_settings(REPLICA_OPTIONS))}
    return [serve.RunTarget(builders[name](), name=name, route_prefix=f"/{name}") for name in names]


class Caller:
    """Raw-bytes ModelInfer calls to one app over one channel (grpc.aio)."""

    def __init__(self, channel: Any, app: str):
        self.call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        self.metadata = (("application", app),)

    async def __call__(self, body: bytes) -> float:
        started = time.perf_counter()
        await self.call(body, metadata=self.metadata, timeout=30)
        return (time.perf_counter() - started) * 1000

    async def answer(self, body: bytes) -> Any:
        from serve_ab.api.grpc import grpc_predict_v2_pb2 as pb

        return pb.ModelInferResponse.FromString(await self.call(body, metadata=self.metadata, timeout=30))


async def alternating(callers: dict[str, Caller], bodies: list[bytes], duration_s: float,
                      order: list[str]) -> dict[str, list[float]]:
    """Concurrency 1: the apps take turns request by request; latencies (ms) per app."""
    latencies_ms: dict[str, list[float]] = {app: [] for app in callers}
    n = 0
    deadline = time.perf_counter() + duration_s * len(callers)
    while time.perf_counter() < deadline:
        for app in order:
            latencies_ms[app].append(await callers[app](bodies[n % len(bodies)]))
            n += 1
    return latencies_ms


async def closed_loop(caller: Caller, bodies: list[bytes], concurrency: int,
                      duration_s: float) -> tuple[float, list[float]]:
    """``concurrency`` calls in flight for ``duration_s`` after 0.25 s unmeasured: req/s, latencies."""
    latencies_ms: list[float] = []
    measuring = False
    stop = False

    async def worker(index: int) -> None:
        n = index
        while not stop:
            latency_ms = await caller(bodies[n % len(bodies)])
            if measuring and not stop:
                latencies_ms.append(latency_ms)
            n += concurrency

    workers = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    await asyncio.sleep(0.25)
    measuring, started = True, time.perf_counter()
    await asyncio.sleep(duration_s)
    stop, elapsed_s = True, time.perf_counter() - started
    await asyncio.gather(*workers)
    return len(latencies_ms) / elapsed_s, latencies_ms


def summary(per_round: list[dict[str, float]], latencies_ms: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for app in latencies_ms:
        rps = [r[app] for r in per_round]
        item: dict[str, Any] = {"rps": round(statistics.median(rps), 1), "rps_min": round(min(rps), 1),
                                "rps_max": round(max(rps), 1),
                                "p50_ms": round(statistics.median(latencies_ms[app]), 3)}
        if app != BASELINE:
            item.update(_paired(per_round, latencies_ms, app, BASELINE, "plain"))
        if app == "grpc_colocated" and PLAIN_LOOP in latencies_ms:  # serve-ab on equal settings
            item.update(_paired(per_round, latencies_ms, app, PLAIN_LOOP, "plain_loop"))
        out[app] = item
    return out


def _paired(per_round: list[dict[str, float]], latencies_ms: dict[str, list[float]], app: str, base: str,
            name: str) -> dict[str, float]:
    """``app`` against ``base`` round by round: the median (min-max) of the rounds' ratios, and
    the pooled p50's difference."""
    ratios = [r[app] / r[base] for r in per_round]
    p50_added_ms = statistics.median(latencies_ms[app]) - statistics.median(latencies_ms[base])
    return {f"vs_{name}": round(statistics.median(ratios), 3), f"vs_{name}_min": round(min(ratios), 3),
            f"vs_{name}_max": round(max(ratios), 3), f"p50_added_vs_{name}_ms": round(p50_added_ms, 3)}


async def check_answers(callers: dict[str, Caller], bodies: list[bytes]) -> None:
    """Before measuring: every app answers ten probabilities a digit, every plain app (its
    twin, on one loop) the same as plain, and serve-ab from both versions of its split (so its
    users were keyed)."""
    versions = set()
    for body in bodies:
        answers = {app: await callers[app].answer(body) for app in callers}
        outputs = {app: np.frombuffer(a.raw_output_contents[0], dtype="<f4") for app, a in answers.items()}
        plain = [o for app, o in outputs.items() if app != "grpc_colocated"]
        if any(len(o) != 10 for o in outputs.values()) or not all(np.array_equal(plain[0], o) for o in plain):
            raise RuntimeError(f"the apps' answers are not ten probabilities alike: {outputs}")
        versions.add(answers["grpc_colocated"].model_version)
    if versions != {"v1", "v3"}:
        raise RuntimeError(f"serve-ab answered from {sorted(versions)} over {len(bodies)} users; expected v1 and v3")


async def measure(grpc_port: int, args: argparse.Namespace) -> dict[str, Any]:
    import grpc

    bodies = requests()
    names = apps(args)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        callers = {app: Caller(channel, app) for app in names}
        await check_answers(callers, bodies[:64])
        for app in names:  # warm-up
            for body in bodies[:50]:
                await callers[app](body)
        results: dict[str, Any] = {}
        by_c: dict[int, tuple[list[dict[str, float]], dict[str, list[float]]]] = {
            1: ([], {a: [] for a in names}), args.concurrency: ([], {a: [] for a in names})}
        for round_index in range(args.rounds):
            order = rotated(list(names), round_index)
            print(f"round {round_index + 1}/{args.rounds}", file=sys.stderr, flush=True)
            lat = await alternating(callers, bodies, args.duration_s, order)
            turn_s = {app: sum(lat[app]) / 1000 for app in names}
            by_c[1][0].append({app: len(lat[app]) / turn_s[app] for app in names})
            for app in names:
                by_c[1][1][app].extend(lat[app])
            rates = {}
            for app in order:
                rates[app], latencies = await closed_loop(callers[app], bodies, args.concurrency, args.duration_s)
                by_c[args.concurrency][1][app].extend(latencies)
            by_c[args.concurrency][0].append(rates)
        for concurrency, (per_round, latencies_ms) in by_c.items():
            results[str(concurrency)] = summary(per_round, latencies_ms)
    return results


def table(results: dict[str, Any]) -> list[str]:
    """The figures as the benchmark README gives them: req/s and p50 per app, and the ratios."""
    lines = [f"{'concurrency':>11}  {'app':<15} {'req/s (min-max)':>22} {'p50 ms':>8}  vs plain (min-max), p50 added"]
    for concurrency, by_app in results.items():
        for app, item in by_app.items():
            row = (f"{concurrency:>11}  {app:<15} {item['rps']:>8.1f} ({item['rps_min']:.1f}-{item['rps_max']:.1f})"
                   f" {item['p50_ms']:>8.2f}")
            for base, tag in (("plain", ""), ("plain_loop", "; vs plain_loop ")):
                if f"vs_{base}" in item:
                    row += (f"{tag or '  '}{item[f'vs_{base}']:.3f} ({item[f'vs_{base}_min']:.3f}-"
                            f"{item[f'vs_{base}_max']:.3f}), {item[f'p50_added_vs_{base}_ms']:+.2f} ms")
            lines.append(row.rstrip())
    return lines


def run(c: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    if c.grpc_port is None:
        raise RuntimeError("bench_grpc needs a cluster started with Serve's gRPC proxy (grpc_options())")
    load_before = load_now()
    with deployed(targets(apps(args))):
        print("deployed", file=sys.stderr, flush=True)
        results = asyncio.run(measure(c.grpc_port, args))
    load_after = load_now()
    also = f"; {PLAIN_LOOP} is plain with the router's Ray settings" if args.plain_loop else ""
    print(f"\nModelInfer over Serve's gRPC proxy, {args.rounds} rounds of {args.duration_s:g} s per app "
          f"(median of the rounds' ratios; {APPS[1]} is plain again, the A/A{also})")
    print("\n".join(table(results)))
    print(f"load average before {load_before}, after {load_after}")
    return {"bench": "grpc", "rounds": args.rounds, "duration_s": args.duration_s,
            "concurrency": [1, args.concurrency], "results": results,
            "load_before": load_before, "load_after": load_after}


def main(argv: list[str] | None = None) -> int:
    return run_standalone(run, parse_args(argv), "v1/model.onnx", "v3/model.onnx", grpc_options=grpc_options())


if __name__ == "__main__":
    sys.exit(main())
