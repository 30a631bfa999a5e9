"""serve-ab against plain Ray Serve and the hand-written workaround, in one Ray instance.

    python -m benchmarks.bench_serving --quick   # under 3 minutes; prints one JSON line last
    python -m benchmarks.bench_serving           # about 9 minutes; also writes benchmarks/RESULTS.md

One model (digits v1, ONNX, onnxruntime with one intra-op thread, no batching) is served
side by side, each app under its own route prefix on the same Ray Serve proxy:

    (a)  plain       plain Ray Serve: one deployment, Starlette request -> JSON, by hand
    (a') fastapi     the same by hand, behind a FastAPI ingress (as serve-ab's router is)
    (b)  workaround  an ingress that draws a version with random.choices and calls one
                     deployment per version (v1, v3: both ONNX MLPs) through its handle
    (c)  colocated   serve-ab, v1 and v3 50/50, both held in the router's replica
    (d)  isolated    serve-ab, v1 and v3 50/50, one deployment per version
    (a=) plain_twin  (a) deployed a second time: an A/A, what a ratio reads when nothing differs

Every deployment gets the same Ray options (one replica, num_cpus 0.5,
max_ongoing_requests 256). The HTTP load comes from a closed-loop generator in its own
process (benchmarks.loadgen): N connections, each waiting for its answer before sending
the next request, a batch of one digit per request, a different user id every time.
Handle mode drives each app's ``predict`` through a DeploymentHandle from this process.

Noise from other work on the machine is spread over every candidate: the measurement is
made of short rounds, and in each round every candidate runs once, in an order rotated
from round to round. At concurrency 1 the candidates are interleaved request by request
(A, B, C, ..., then again; over one connection for HTTP), so latency differences are
measured under the same conditions; a candidate's req/s there is its requests over the
time they took.
Ratios are taken within a round (candidate / (a) of the same round) and their median and
range over the rounds are reported; latency percentiles pool every round's latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from benchmarks.cluster import Cluster, deployed, run_standalone
from benchmarks.common import (
    MODELS,
    REPO,
    RESULTS_MD,
    digits_experiment,
    load_now,
    log,
    machine_shared,
    other_ray_instances,
    report_header,
    request_bodies,
    spread,
    version,
)
from benchmarks.loadgen import HttpLoad, handle_alternating, handle_closed_loop

T = TypeVar("T")

# DESIGN.md, "Numbers to reach".
TARGET_COLOCATED_VS_PLAIN = 1.0
TARGET_BATCHED_VS_PLAIN_BATCHED = 1.0  # issue: with batching on, at c16 and c32
TARGET_P50_ADDED_MS = 0.3
TARGET_COLOCATED_VS_WORKAROUND = 1.5
TARGET_ISOLATED_VS_WORKAROUND = 1.0

# The same Ray options for every deployment, baselines and serve-ab alike.
REPLICA_OPTIONS: dict[str, Any] = {
    "num_replicas": 1,
    "ray_actor_options": {"num_cpus": 0.5},
    "max_ongoing_requests": 256,
}
WEIGHTS_PCT = {"v1": 50.0, "v3": 50.0}
BATCH_TEXT = "at most 16 requests per model call, the first waiting up to 2 ms"  # baselines.BATCH_*


@dataclass(frozen=True)
class Mode:
    concurrencies: tuple[int, ...]
    handle_concurrencies: tuple[int, ...]
    rounds: int
    duration_s: float
    handle_duration_s: float
    warmup_s: float
    in_run_warmup_s: float = 0.25


QUICK = Mode(concurrencies=(1, 8), handle_concurrencies=(1, 8), rounds=3, duration_s=1.25,
             handle_duration_s=0.75, warmup_s=1.0)
FULL = Mode(concurrencies=(1, 4, 16, 32), handle_concurrencies=(1, 16), rounds=4,
            duration_s=3.0, handle_duration_s=2.0, warmup_s=3.0)


@dataclass(frozen=True)
class Candidate:
    tag: str          # (a), (b), ...
    app: str          # app name, also its route prefix
    label: str
    http_path: str    # below the route prefix
    handle_key: bool  # its handle's predict takes the assignment key (serve-ab's does)
    # Dynamic batching on: measured over HTTP with requests queued (concurrency > 1) only,
    # where batches can fill; one request at a time would only time the batch wait.
    batched: bool = False
    # Measured only when named with --only (the targets are about the defaults).
    on_request: bool = False


CANDIDATES = [
    Candidate("(a)", "plain", "plain Ray Serve, by hand", "", False),
    Candidate("(a')", "fastapi", "plain, FastAPI ingress", "/predict", False),
    # (a) with the Ray Serve settings serve-ab gives its colocated router (router_settings: one
    # replica loop, metrics moved once a second): (c) against it is serve-ab's path on equal settings.
    Candidate("(aL)", "plain_loop", "plain, the router's Ray settings", "", False, on_request=True),
    Candidate("(b)", "workaround", "workaround: random.choices", "", False),
    # (b) calling its versions over Ray Serve's gRPC, as (d) does by default: the workaround
    # with the same transport, so that (d)'s figure against it is serve-ab's own path alone.
    Candidate("(bG)", "workaround_grpc", "workaround, gRPC to the versions", "", False, on_request=True),
    Candidate("(c)", "colocated", "serve-ab colocated", "/predict", True),
    Candidate("(d)", "isolated", "serve-ab isolated", "/predict", True),
    Candidate("(dL)", "isolated_loop", "serve-ab isolated, versions on one loop", "/predict", True, on_request=True),
    Candidate("(dT)", "isolated_thread", "serve-ab isolated, versions on threads", "/predict", True, on_request=True),
    # (d) with Ray actor calls to the versions, Ray Serve's default transport (and serve-ab's
    # before isolation.transport): what calling them over Ray Serve's gRPC saves.
    Candidate("(dA)", "isolated_actor", "serve-ab isolated, actor calls to the versions", "/predict", True,
              on_request=True),
    Candidate("(a+)", "plain_batch", "plain + @serve.batch", "", False, batched=True),
    Candidate("(c+)", "colocated_batch", "serve-ab colocated, batching on", "/predict", True, batched=True),
    # v1 and v3 50/50 in one plain replica, each with @serve.batch: batching the split (c+)
    # serves, by hand; against (a+), what the split costs Ray Serve's own batching.
    Candidate("(a+2)", "plain_batch_split", "plain + @serve.batch, v1 and v3 50/50", "", False,
              batched=True, on_request=True),
    # Both without Ray Serve's access line (logging_config.enable_access_log: false; serve-ab's
    # router.access_log: false): what the line costs each, and the router's path without it.
    Candidate("(a-)", "plain_quiet", "plain, no access line", "", False, on_request=True),
    Candidate("(c-)", "colocated_quiet", "serve-ab colocated, no access line", "/predict", True, on_request=True),
    # (c) over an experiment that takes feedback (one analysis.metrics entry): every answer
    # carries a feedback token, which (c)'s experiment, naming no feedback, does not mint.
    Candidate("(c*)", "colocated_feedback", "serve-ab colocated, feedback tokens", "/predict", True,
              on_request=True),
    # (c+) with every request on v1, as (a+) serves them: a split gives each version's batcher
    # its share of the requests only, so its batches fill less than one model's would.
    Candidate("(c+1)", "colocated_batch_one", "serve-ab colocated, batching on, all on v1", "/predict", True,
              batched=True, on_request=True),
    # (c) with every request on v1 (weights 100/0), the one model (a) serves: (c) against it is
    # what serving two models from one replica by turns costs, apart from serve-ab's path.
    Candidate("(c1)", "colocated_one", "serve-ab colocated, all on v1", "/predict", True, on_request=True),
    # (a) once more, the same code and options in an app of its own: an A/A. Its ratio to (a)
    # is what the benchmark reads when nothing differs, the floor under every other ratio;
    # the targets against (a) are shown beside it.
    Candidate("(a=)", "plain_twin", "plain again (A/A)", "", False),
]
BY_APP = {c.app: c for c in CANDIDATES}


# -- deploying the candidates --------------------------------------------------------------


def serve_ab_experiment(placement: str, batched: bool = False, access_log: bool = True,
                        takes_feedback: bool = False, weights_pct: dict[str, float] = WEIGHTS_PCT,
                        versions_thread: bool | None = None, **more: Any) -> dict[str, Any]:
    versions = [version("v1"), version("v3")]
    if batched:
        from benchmarks.baselines import BATCH_MAX_SIZE, BATCH_WAIT_TIMEOUT_S

        batching = {"max_batch_size": BATCH_MAX_SIZE, "batch_wait_timeout_s": BATCH_WAIT_TIMEOUT_S}
        versions = [dict(v, batching=batching) for v in versions]
    router = REPLICA_OPTIONS if access_log else dict(REPLICA_OPTIONS, access_log=False)
    if takes_feedback:
        more["analysis"] = {"metrics": [{"name": "correct", "kind": "conversion"}]}
    version_options = None
    if placement == "isolated":
        version_options = REPLICA_OPTIONS if versions_thread is None else dict(REPLICA_OPTIONS,
                                                                               separate_thread=versions_thread)
    return digits_experiment(versions, weights_pct, "bench", router, placement, version_options, **more)


def router_settings(options: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``options`` with the Ray Serve settings serve-ab gives a colocated router
    (``serve_ab.serving.app.build_app``): the replica's code and its handles' calls on Ray
    Serve's one replica loop, and Serve's metrics moved to Ray's recorder once a second."""
    from serve_ab.config.experiment import metrics_export_env, thread_settings, with_env_vars

    return with_env_vars(thread_settings(copy.deepcopy(options), separate_thread=False),
                         metrics_export_env(os.environ))


def run_targets(candidates: list[Candidate]) -> list[Any]:
    """The apps to deploy, one ``serve.RunTarget`` per candidate, each under its own prefix."""
    from ray import serve

    from benchmarks import baselines

    from serve_ab import build_app

    v1 = str(MODELS / "v1" / "model.onnx")
    v3 = str(MODELS / "v3" / "model.onnx")
    apps = {
        "plain": lambda: baselines.plain_app(v1, REPLICA_OPTIONS),
        "fastapi": lambda: baselines.plain_fastapi_app(v1, REPLICA_OPTIONS),
        "plain_loop": lambda: baselines.plain_app(v1, router_settings(REPLICA_OPTIONS)),
        "workaround": lambda: baselines.random_split_app({"v1": v1, "v3": v3}, WEIGHTS_PCT,
                                                         REPLICA_OPTIONS),
        "workaround_grpc": lambda: baselines.random_split_app({"v1": v1, "v3": v3}, WEIGHTS_PCT,
                                                              REPLICA_OPTIONS, by_reference=False),
        "colocated": lambda: build_app(serve_ab_experiment("colocated")),
        "colocated_one": lambda: build_app(serve_ab_experiment("colocated", weights_pct={"v1": 100.0, "v3": 0.0})),
        "isolated": lambda: build_app(serve_ab_experiment("isolated")),
        "isolated_loop": lambda: build_app(serve_ab_experiment("isolated", versions_thread=False)),
        "isolated_thread": lambda: build_app(serve_ab_experiment("isolated", versions_thread=True)),
        "isolated_actor": lambda: build_app(serve_ab_experiment("isolated", isolation={"transport": "actor"})),
        "plain_batch": lambda: baselines.plain_batched_app(v1, REPLICA_OPTIONS),
        "colocated_batch": lambda: build_app(serve_ab_experiment("colocated", batched=True)),
        "plain_batch_split": lambda: baselines.two_models_batched_app({"v1": v1, "v3": v3}, WEIGHTS_PCT,
                                                                      REPLICA_OPTIONS),
        "colocated_batch_one": lambda: build_app(serve_ab_experiment("colocated", batched=True,
                                                                     weights_pct={"v1": 100.0, "v3": 0.0})),
        "plain_quiet": lambda: baselines.plain_app(v1, dict(REPLICA_OPTIONS,
                                                            logging_config={"enable_access_log": False})),
        "colocated_quiet": lambda: build_app(serve_ab_experiment("colocated", access_log=False)),
        "colocated_feedback": lambda: build_app(serve_ab_experiment("colocated", takes_feedback=True)),
        "plain_twin": lambda: baselines.plain_app(v1, REPLICA_OPTIONS),
    }
    return [serve.RunTarget(apps[c.app](), name=c.app, route_prefix=f"/{c.app}") for c in candidates]


def check_answers(candidates: list[Candidate], base_url: str, body: str) -> None:
    """Each candidate answers 200 with one row of ten probabilities; else stop here."""
    import httpx

    with httpx.Client(timeout=30.0) as client:
        for c in candidates:
            response = client.post(base_url + f"/{c.app}{c.http_path}", content=body,
                                   headers={"content-type": "application/json"})
            if response.status_code != 200:
                raise RuntimeError(f"{c.app} answered {response.status_code}: {response.text[:300]}")
            outputs = np.asarray(response.json()["outputs"])
            if outputs.shape != (1, 10) or abs(outputs.sum() - 1.0) > 1e-4:
                raise RuntimeError(f"{c.app} answered outputs of shape {outputs.shape}: {outputs}")


# -- load ----------------------------------------------------------------------------------


def handle_caller(candidate: Candidate, handle_args: list[tuple[np.ndarray, str]]) -> Callable[[int], Any]:
    from ray import serve

    handle = serve.get_app_handle(candidate.app)
    if candidate.handle_key:
        return lambda n: handle.predict.remote(handle_args[n % len(handle_args)][0],
                                               key=handle_args[n % len(handle_args)][1])
    return lambda n: handle.predict.remote(handle_args[n % len(handle_args)][0])


# -- measuring -----------------------------------------------------------------------------


def rotated(items: list[T], round_index: int) -> list[T]:
    """``items`` in round ``round_index``'s order: rotated by the round, and reversed every
    other round, so that no item always follows the same other one."""
    shift = round_index % len(items)
    order = items[shift:] + items[:shift]
    return order if round_index % 2 == 0 else order[::-1]


def measure(candidates: list[Candidate], mode: Mode, port: int, bodies: list[str],
            handle_args: list[tuple[np.ndarray, str]]) -> dict[str, Any]:
    unbatched = [c for c in candidates if not c.batched]
    base_url = f"http://127.0.0.1:{port}"
    url = {c.app: base_url + f"/{c.app}{c.http_path}" for c in candidates}
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {"http": {}, "handle": {}}
    load = HttpLoad()
    try:
        handle_warmup_s = min(0.5, mode.warmup_s)
        log(f"warm-up: {mode.warmup_s:g} s per candidate over HTTP, {handle_warmup_s:g} s over handles")
        for c in candidates:
            load.run(url[c.app], bodies, max(mode.concurrencies), mode.warmup_s, 0.0)
        callers = {c.app: handle_caller(c, handle_args) for c in unbatched}
        for c in unbatched:
            asyncio.run(handle_closed_loop(callers[c.app], max(mode.handle_concurrencies),
                                            handle_warmup_s, 0.0))

        for r in range(mode.rounds):
            for concurrency in mode.concurrencies:
                log(f"round {r + 1}/{mode.rounds}, HTTP, concurrency {concurrency}")
                if concurrency == 1:
                    # One request in flight: alternate the candidates request by request.
                    order = rotated(unbatched, r)
                    per_url = load.alternate([url[c.app] for c in order], bodies,
                                             mode.duration_s * len(order), mode.in_run_warmup_s)
                    for c in order:
                        result = dict(per_url[url[c.app]], round=r)
                        runs["http"].setdefault(1, {}).setdefault(c.app, []).append(result)
                    continue
                for c in rotated(candidates, r):
                    result = load.run(url[c.app], bodies, concurrency, mode.duration_s,
                                      mode.in_run_warmup_s)
                    result["round"] = r
                    runs["http"].setdefault(concurrency, {}).setdefault(c.app, []).append(result)
            for concurrency in mode.handle_concurrencies:
                log(f"round {r + 1}/{mode.rounds}, handle, concurrency {concurrency}")
                if concurrency == 1:
                    order = rotated(unbatched, r)
                    per_app = asyncio.run(handle_alternating(
                        {c.app: callers[c.app] for c in order},
                        mode.handle_duration_s * len(order), mode.in_run_warmup_s))
                    for app, result in per_app.items():
                        runs["handle"].setdefault(1, {}).setdefault(app, []).append(dict(result, round=r))
                    continue
                for c in rotated(unbatched, r):
                    result = asyncio.run(handle_closed_loop(
                        callers[c.app], concurrency, mode.handle_duration_s, mode.in_run_warmup_s))
                    result["round"] = r
                    runs["handle"].setdefault(concurrency, {}).setdefault(c.app, []).append(result)
    finally:
        load.close()
    return runs


# -- summarising ---------------------------------------------------------------------------


def summarize(runs_by_app: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per candidate: throughput, pooled latency percentiles, ratios paired by round."""
    out: dict[str, dict[str, Any]] = {}
    for app, runs in runs_by_app.items():
        pooled = np.concatenate([np.asarray(r["latencies_ms"], dtype=float) for r in runs])
        p50, p99 = (np.percentile(pooled, [50, 99]) if pooled.size else (float("nan"),) * 2)
        round_p50 = [float(np.percentile(r["latencies_ms"], 50)) for r in runs if r["latencies_ms"]]
        errors: dict[str, int] = {}
        for r in runs:
            for kind, count in r["errors"].items():
                errors[kind] = errors.get(kind, 0) + count
        out[app] = {
            "rps": spread([r["throughput_rps"] for r in runs]),
            "p50_ms": float(p50),
            "p99_ms": float(p99),
            "round_p50_ms": spread(round_p50) if round_p50 else None,
            "requests": int(sum(r["completed"] for r in runs)),
            "errors": errors,
        }

    def paired(app: str, base: str) -> dict[str, Any] | None:
        if app not in runs_by_app or base not in runs_by_app:
            return None
        base_by_round = {r["round"]: r for r in runs_by_app[base]}
        ratios, p50_deltas = [], []
        for r in runs_by_app[app]:
            b = base_by_round.get(r["round"])
            if b is None or not b["throughput_rps"]:
                continue
            ratios.append(r["throughput_rps"] / b["throughput_rps"])
            if r["latencies_ms"] and b["latencies_ms"]:
                p50_deltas.append(float(np.percentile(r["latencies_ms"], 50)
                                        - np.percentile(b["latencies_ms"], 50)))
        return {
            "rps_ratio": spread(ratios) if ratios else None,
            "p50_added_ms": out[app]["p50_ms"] - out[base]["p50_ms"],
            "round_p50_added_ms": spread(p50_deltas) if p50_deltas else None,
        }

    for app, item in out.items():
        item["vs_plain"] = paired(app, "plain")
        if app in ("colocated", "isolated", "isolated_loop", "isolated_thread", "isolated_actor"):
            item["vs_workaround"] = paired(app, "workaround")
        if app == "isolated":
            item["vs_workaround_grpc"] = paired(app, "workaround_grpc")
        if app in ("isolated_loop", "isolated_thread", "isolated_actor"):  # one setting against the default
            item["vs_isolated"] = paired(app, "isolated")
        if app == "colocated":  # both FastAPI ingresses: what serve-ab itself adds
            item["vs_fastapi"] = paired(app, "fastapi")
            item["vs_plain_loop"] = paired(app, "plain_loop")  # both with the router's Ray settings
        if app in ("colocated_batch", "colocated_batch_one"):  # both batching, with the same settings
            item["vs_plain_batch"] = paired(app, "plain_batch")
        if app == "colocated_batch_one":  # what the 50/50 split costs batching
            item["vs_colocated_batch"] = paired(app, "colocated_batch")
        if app == "plain_batch_split":  # what the same split costs @serve.batch
            item["vs_plain_batch"] = paired(app, "plain_batch")
        if app == "colocated_batch":  # both batching the same 50/50 split
            item["vs_plain_batch_split"] = paired(app, "plain_batch_split")
        if app == "colocated_quiet":  # both without access lines
            item["vs_plain_quiet"] = paired(app, "plain_quiet")
        if app in ("colocated_feedback", "colocated_one"):  # a token per answer; one model, not two
            item["vs_colocated"] = paired(app, "colocated")
    return out


def _ratio_text(paired: dict[str, Any] | None) -> str:
    if not paired or not paired["rps_ratio"]:
        return "-"
    s = paired["rps_ratio"]
    return f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f})"


def table(summary: dict[str, dict[str, Any]], markdown: bool) -> list[str]:
    header = ["", "candidate", "req/s (min-max)", "p50 ms", "p99 ms",
              "vs (a) req/s", "p50 vs (a) ms", "vs (b) req/s", "p50 vs (b) ms", "errors"]
    rows = []
    for c in CANDIDATES:
        s = summary.get(c.app)
        if s is None:
            continue
        vs_a, vs_b = s.get("vs_plain"), s.get("vs_workaround")
        rows.append([
            c.tag, c.label,
            f"{s['rps']['median']:.0f} ({s['rps']['min']:.0f}-{s['rps']['max']:.0f})",
            f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}",
            _ratio_text(vs_a) if c.app != "plain" else "1.00x",
            f"{vs_a['p50_added_ms']:+.2f}" if vs_a and c.app != "plain" else "-",
            _ratio_text(vs_b),
            f"{vs_b['p50_added_ms']:+.2f}" if vs_b else "-",
            str(sum(s["errors"].values())) if s["errors"] else "0",
        ])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return lines
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    return ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()
            for row in [header, *rows]]


# The notes under each concurrency's table: (app, its pairing in the summary, what it reads).
PAIR_NOTES = [
    ("colocated", "vs_fastapi", "(c) vs (a'), both behind FastAPI"),
    ("colocated", "vs_plain_loop", "(c) vs (aL), both with the router's Ray settings (one loop)"),
    ("plain_loop", "vs_plain", "(aL) vs (a), plain with the router's Ray settings against Ray's defaults"),
    ("colocated_batch", "vs_plain_batch", f"(c+) vs (a+), both batching ({BATCH_TEXT})"),
    ("colocated_batch_one", "vs_plain_batch", "(c+1) vs (a+), both batching, one version's traffic"),
    ("colocated_batch_one", "vs_colocated_batch", "(c+1) vs (c+), all on v1 against a 50/50 split"),
    ("plain_batch_split", "vs_plain_batch", "(a+2) vs (a+), @serve.batch on a 50/50 split against one version"),
    ("colocated_batch", "vs_plain_batch_split", "(c+) vs (a+2), both batching the same 50/50 split"),
    ("colocated_quiet", "vs_plain_quiet", "(c-) vs (a-), both without access lines"),
    ("colocated_feedback", "vs_colocated", "(c*) vs (c), a feedback token in every answer"),
    ("colocated_one", "vs_colocated", "(c1) vs (c), all on v1 against the 50/50 split"),
    ("plain_twin", "vs_plain", "(a=) vs (a), the same app twice (A/A, the noise floor)"),
    ("isolated_loop", "vs_workaround", "(dL) vs (b), versions on one loop"),
    ("isolated_thread", "vs_workaround", "(dT) vs (b), versions on Ray's threads"),
    ("isolated_loop", "vs_isolated", "(dL) vs (d), versions on one loop against the default"),
    ("isolated_thread", "vs_isolated", "(dT) vs (d), versions on Ray's threads against the default"),
    ("isolated_actor", "vs_workaround", "(dA) vs (b), actor calls to the versions"),
    ("isolated_actor", "vs_isolated", "(dA) vs (d), actor calls to the versions against gRPC"),
    ("isolated", "vs_workaround_grpc", "(d) vs (bG), both calling the versions over gRPC"),
]


def fastapi_note(summary: dict[str, dict[str, Any]]) -> str | None:
    """The pairs other than against (a) and (b): (c) against (a'), both FastAPI ingresses, is
    what serve-ab's own code adds; the others as PAIR_NOTES says."""
    notes = []
    for app, pairing, text in PAIR_NOTES:
        paired = summary.get(app, {}).get(pairing)
        if paired and paired["rps_ratio"]:
            notes.append(f"{text}: {_ratio_text(paired)} req/s, p50 {paired['p50_added_ms']:+.2f} ms")
    return "\n".join(notes) or None


def verdicts(http: dict[int, dict[str, Any]], handle: dict[int, dict[str, Any]] | None = None
             ) -> list[dict[str, Any]]:
    """DESIGN.md's serving targets, checked at every measured concurrency, over HTTP and
    (colocated vs plain) over handles. A target against plain also gets ``a_a``: the same
    figure for (a=), plain's twin, in the same run (None when it did not run): what the
    figure reads when nothing differs."""
    checks = []
    wanted = [
        ("colocated", "vs_plain", "rps", "colocated vs plain, req/s", ">=", TARGET_COLOCATED_VS_PLAIN),
        ("colocated", "vs_plain", "p50", "colocated p50 added over plain, ms", "<=", TARGET_P50_ADDED_MS),
        ("colocated", "vs_workaround", "rps", "colocated vs workaround, req/s", ">=",
         TARGET_COLOCATED_VS_WORKAROUND),
        ("isolated", "vs_workaround", "rps", "isolated vs workaround, req/s", ">=",
         TARGET_ISOLATED_VS_WORKAROUND),
        ("colocated_batch", "vs_plain_batch", "rps", "colocated batching vs @serve.batch, req/s", ">=",
         TARGET_BATCHED_VS_PLAIN_BATCHED),
    ]
    over_handles = [w[:3] + ("handle: " + w[3],) + w[4:] for w in wanted[:2]]
    tables = [(c, s, wanted) for c, s in sorted(http.items())]
    tables += [(c, s, over_handles) for c, s in sorted((handle or {}).items())]
    for concurrency, summary, wanted_here in tables:
        items = []
        for app, base, figure, what, op, target in wanted_here:
            if figure == "p50" and concurrency != 1:
                continue  # with requests queued, p50 follows throughput; latency added is at 1
            paired = summary.get(app, {}).get(base)
            if not paired or not paired["rps_ratio"]:
                continue  # a candidate left out with --only
            value = paired["rps_ratio"]["median"] if figure == "rps" else paired["p50_added_ms"]
            twin = summary.get("plain_twin", {}).get(base) if base == "vs_plain" else None
            a_a = None
            if twin and twin["rps_ratio"]:
                a_a = round(twin["rps_ratio"]["median"] if figure == "rps" else twin["p50_added_ms"], 3)
            items.append((what, value, op, target, a_a))
        for what, value, op, target, a_a in items:
            met = value >= target if op == ">=" else value <= target
            checks.append({"concurrency": concurrency, "what": what, "value": round(value, 3),
                           "target": f"{op} {target}", "met": bool(met), "a_a": a_a})
    return checks


def compact(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The figures for the JSON line, rounded."""
    out: dict[str, Any] = {}
    for app, s in summary.items():
        item: dict[str, Any] = {
            "rps": round(s["rps"]["median"], 1),
            "rps_min": round(s["rps"]["min"], 1),
            "rps_max": round(s["rps"]["max"], 1),
            "p50_ms": round(s["p50_ms"], 3),
            "p99_ms": round(s["p99_ms"], 3),
            "errors": sum(s["errors"].values()),
        }
        for base in ("plain", "workaround", "fastapi", "plain_batch", "plain_quiet", "plain_loop"):
            paired = s.get(f"vs_{base}")
            if paired and app != base and paired["rps_ratio"]:
                item[f"vs_{base}"] = round(paired["rps_ratio"]["median"], 3)
                item[f"vs_{base}_min"] = round(paired["rps_ratio"]["min"], 3)
                item[f"vs_{base}_max"] = round(paired["rps_ratio"]["max"], 3)
                item[f"p50_added_vs_{base}_ms"] = round(paired["p50_added_ms"], 3)
        out[app] = item
    return out


def write_results_md(report: dict[str, Any], http: dict[int, Any], handle: dict[int, Any],
                     checks: list[dict[str, Any]], mode: Mode) -> None:
    m = report["machine"]
    written = (f"Written by `python -m benchmarks.bench_serving` on {report['date']} (full mode, "
               f"{report['wall_s']:.0f} s). See `benchmarks/README.md` for what each row is.")
    versions = (f"- Python {m['python']}, Ray {m['ray']}, torch {m['torch']}, "
                f"onnxruntime {m['onnxruntime']}, FastAPI {m['fastapi']}, numpy {m['numpy']}")
    shared = ("; the machine was shared with other work: absolute figures are noisy, ratios "
              "less so" if report["shared"] else "")
    load = (f"- load average before / after: {report['load_before']} / {report['load_after']}; "
            f"other Ray instances on the machine (most seen): {report['other_ray_instances']}{shared}")
    model = ("- model: digits v1 (ONNX MLP 64-64-10), a batch of one per request, no dynamic "
             "batching but in (a+) and (c+) (" + BATCH_TEXT + ", measured with requests queued "
             "only); the split candidates serve v1 and v3 (ONNX MLP 64-16-10) at 50/50")
    rounds = (f"- {mode.rounds} rounds; per round and concurrency every candidate runs "
              f"{mode.duration_s:g} s over HTTP ({mode.handle_duration_s:g} s over handles) after "
              f"{mode.in_run_warmup_s:g} s unmeasured, in an order rotated between rounds; at "
              "concurrency 1 the candidates take turns request by request on one connection")
    figures = ("- req/s: median over rounds (min-max); ratios: per-round ratio to (a) or (b) of "
               "the same round, median (min-max); p50/p99: over all rounds' latencies pooled")
    lines = [
        "# Serving benchmark results", "", written, "",
        "## Machine", "",
        f"- {m['cores']} cores, {m['cpu_model']}, {m['memory_gib']} GiB, {m['os']}",
        versions, load, "",
        "## Settings", "",
        model,
        f"- every deployment: {json.dumps(REPLICA_OPTIONS)}, onnxruntime intra_op threads 1",
        rounds, figures, "",
    ]
    for concurrency, summary in sorted(http.items()):
        lines += [f"## HTTP, {concurrency} concurrent connection{'s' * (concurrency != 1)}", ""]
        lines += table(summary, markdown=True) + [""]
        note = fastapi_note(summary)
        lines += [note, ""] if note else []
    for concurrency, summary in sorted(handle.items()):
        plural = "s" * (concurrency != 1)
        lines += [f"## DeploymentHandle from a driver, {concurrency} concurrent call{plural}", ""]
        lines += table(summary, markdown=True) + [""]
        note = fastapi_note(summary)
        lines += [note, ""] if note else []
    lines += ["## Targets (DESIGN.md)", "",
              "A/A: the same figure for (a=), plain deployed a second time, in this run: what it "
              "reads when nothing differs.", "",
              "| concurrency | what | measured | target | met | A/A |", "|---|---|---|---|---|---|"]
    lines += [f"| {c['concurrency']} | {c['what']} | {c['value']} | {c['target']} | "
              f"{'yes' if c['met'] else 'no'} | {'-' if c['a_a'] is None else c['a_a']} |" for c in checks]
    RESULTS_MD.write_text("\n".join(lines) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="concurrency 1 and 8, 3 short rounds, no RESULTS.md (under 3 minutes)")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--duration", type=float, help="override the seconds per run")
    parser.add_argument("--warmup", type=float, help="override the unmeasured seconds per candidate first")
    parser.add_argument("--only", nargs="+", choices=list(BY_APP), metavar="APP",
                        help=f"measure only these candidates, of {list(BY_APP)}")
    parser.add_argument("--no-results-md", action="store_true", help="never write RESULTS.md")
    return parser.parse_args(argv)


def chosen(only: list[str] | None) -> list[Candidate]:
    """The candidates named with --only, or else every one not measured only on request."""
    if only:
        return [c for c in CANDIDATES if c.app in only]
    return [c for c in CANDIDATES if not c.on_request]


def run(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    """Deploy the candidates on ``cluster``, measure them, print the tables; the report."""
    candidates = chosen(args.only)
    mode = QUICK if args.quick else FULL
    if args.rounds or args.duration or args.warmup:
        mode = Mode(mode.concurrencies, mode.handle_concurrencies, args.rounds or mode.rounds,
                    args.duration or mode.duration_s, args.duration or mode.handle_duration_s,
                    args.warmup or mode.warmup_s)
    started = time.perf_counter()
    report = report_header("serving", args.quick, rounds=mode.rounds, duration_s=mode.duration_s,
                           warmup_s=mode.warmup_s, handle_duration_s=mode.handle_duration_s)
    bodies, handle_args = request_bodies()
    log(f"deploying {', '.join(c.app for c in candidates)}")
    with deployed(run_targets(candidates)):
        log("deployed")
        check_answers(candidates, cluster.base_url, bodies[0])
        others_before = other_ray_instances()
        runs = measure(candidates, mode, cluster.port, bodies, handle_args)
        report["other_ray_instances"] = max(others_before, other_ray_instances())
    report["load_after"] = load_now()
    report["shared"] = machine_shared(report["other_ray_instances"], report["load_before"])

    http = {c: summarize(by_app) for c, by_app in runs["http"].items()}
    handle = {c: summarize(by_app) for c, by_app in runs["handle"].items()}
    checks = verdicts(http, handle)
    report["wall_s"] = time.perf_counter() - started

    for concurrency, summary in sorted(http.items()):
        print(f"\nHTTP, concurrency {concurrency} ({mode.rounds} rounds x {mode.duration_s:g} s)")
        print("\n".join(table(summary, markdown=False)))
        note = fastapi_note(summary)
        if note:
            print(note)
    for concurrency, summary in sorted(handle.items()):
        print(f"\nDeploymentHandle from the driver, concurrency {concurrency} "
              f"({mode.rounds} rounds x {mode.handle_duration_s:g} s)")
        print("\n".join(table(summary, markdown=False)))
        note = fastapi_note(summary)
        if note:
            print(note)
    print("\nTargets (DESIGN.md)")
    for c in checks:
        a_a = "" if c["a_a"] is None else f"  (A/A {c['a_a']})"
        print(f"  c={c['concurrency']:<3} {c['what']:<38} {c['value']:>8}  target {c['target']:<7} "
              f"{'met' if c['met'] else 'NOT met'}{a_a}")
    print(f"load average before {report['load_before']}, after {report['load_after']}; "
          f"other Ray instances on the machine: {report['other_ray_instances']}; "
          f"{'shared' if report['shared'] else 'not shared'}; "
          f"wall {report['wall_s']:.0f} s")
    if not args.quick and not args.only and not args.no_results_md:
        write_results_md(report, http, handle, checks, mode)
        print(f"wrote {RESULTS_MD.relative_to(REPO)}")

    report["wall_s"] = round(report["wall_s"], 1)
    report["http"] = {str(c): compact(s) for c, s in sorted(http.items())}
    report["handle"] = {str(c): compact(s) for c, s in sorted(handle.items())}
    report["targets"] = checks
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_standalone(run, args, "v1/model.onnx", "v3/model.onnx", num_cpus=8)


if __name__ == "__main__":
    sys.exit(main())
