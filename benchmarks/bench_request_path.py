"""serve-ab's own per-request cost, without Ray: the router's request path against hand-written ones.

Every candidate is called in this process with the same request (one digit, a new
``user_id`` each time) and the same ONNX model (digits v1, onnxruntime, one thread), so only
the code between the request in and the answer out differs. Over HTTP, ASGI apps:

- **plain**: what Ray Serve runs for a hand-written ``__call__`` (``baselines.OnnxModel``):
  a Starlette ``Request``, ``await request.json()``, ``session.run``, the dict as JSON.
- **fastapi**: the same route by hand in a FastAPI app (``baselines.OnnxModelFastAPI``).
- **serve-ab**: ``serve_ab.serving.http.app``, the router's app, over a :class:`RouterCore`
  holding v1 and v3 (ONNX, 50/50, keyed on ``user_id``) and a controller that takes the
  reports and never answers a long poll; the fast inference routes, the version noted for
  Ray Serve's access line, feedback tokens and the interval's aggregate included. The access
  line itself is Ray Serve's, written outside the app for every candidate alike.

Over a DeploymentHandle, the methods a handle call runs:

- **plain-handle**: ``baselines.OnnxModel.predict``: ``np.asarray``, ``session.run``.
- **serve-ab-handle**: the router's own ``Router.predict`` over the same core, with Ray
  Serve's request context set as a replica sets it.
- **serve-ab-handle+token**: the same over an experiment that takes feedback (one
  ``analysis.metrics`` entry), so that every answer carries a feedback token: the token's
  cost. The experiment of the other serve-ab candidates, as ``bench_serving``'s, names no
  feedback, and its answers carry none.

The candidates take turns call by call (so a burst of other work hits them all); the figure
is each one's mean microseconds per request in a round (a mean, so that work done once every
few hundred calls, such as folding the held answers into the aggregate, is counted), the
median over the rounds, and serve-ab's difference to each baseline.

``--cold`` reads a buffer larger than the last-level cache (``--evict-mib``, 64 MiB) before
every call, outside the timing, so each call finds its code and data evicted. That is the
state a replica's request path runs in at low load: between two requests, the proxy, the
caller and Ray's own processes run on the same cores. Warm, in a loop, the router's path
costs tens of microseconds more than plain's; in a replica at concurrency 1 the difference
is several times that (benchmarks/README.md, tenth round), and ``--cold`` reproduces it in
one process, where it can be measured part by part without Ray's noise.

Ray's own request path (proxy, actor calls, body fetch) is the same for every deployment and
is measured by ``bench_serving.py``; this isolates ours.

    python -m benchmarks.bench_request_path            # ~20 s
    python -m benchmarks.bench_request_path --quick    # ~5 s
    python -m benchmarks.bench_request_path --cold     # ~1 minute
"""

# No "from __future__ import annotations": FastAPI reads the route signature below at runtime.

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

import numpy as np

from benchmarks.cluster import missing_models
from benchmarks.common import MODELS, log, report_header, request_bodies


class _QuietController:
    """Takes the router's reports; the long poll never answers (weights stay the config's)."""

    def __init__(self) -> None:
        self.reports = 0

    async def record(self, report: Any) -> None:
        self.reports += 1

    async def wait_for_update(self, known_epoch: int, timeout_s: float = 10.0) -> Any:
        await asyncio.Event().wait()

    async def feedback_key(self) -> bytes:
        return b"k" * 32


def _session(path: str) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def plain_app(path: str) -> Any:
    """Ray Serve's shape for a plain ``__call__``: a Starlette request in, a dict out as JSON."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    session = _session(path)
    name = session.get_inputs()[0].name

    async def app(scope: dict, receive: Any, send: Any) -> None:
        body = await Request(scope, receive).json()
        (outputs,) = session.run(None, {name: np.asarray(body["inputs"], dtype=np.float32)})
        await JSONResponse({"outputs": outputs.tolist()})(scope, receive, send)

    return app


def fastapi_app(path: str) -> Any:
    from fastapi import FastAPI, Request

    session = _session(path)
    name = session.get_inputs()[0].name
    api = FastAPI()

    @api.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        body = await request.json()
        (outputs,) = session.run(None, {name: np.asarray(body["inputs"], dtype=np.float32)})
        return {"outputs": outputs.tolist()}

    return api


def serve_ab_core(takes_feedback: bool = False) -> Any:
    """A router's core holding v1 and v3 (ONNX, 50/50, keyed), as a replica builds it.
    ``takes_feedback``: the experiment names a feedback metric, so every answer carries a
    feedback token (as in ``bench_serving``, by default it names none, and mints none)."""
    from serve_ab.api.access_log import VersionsAnswered
    from serve_ab.config import parse_experiment
    from serve_ab.serving.core.router import RouterCore
    from serve_ab.serving.router import _request_id
    from serve_ab.serving.runtime import load_versions

    from benchmarks.common import digits_experiment, version

    more = {"analysis": {"metrics": [{"name": "correct", "kind": "conversion"}]}} if takes_feedback else {}
    cfg = parse_experiment(digits_experiment([version("v1"), version("v3")], {"v1": 50.0, "v3": 50.0},
                                             "bench", {"num_replicas": 1}, **more))
    # The request id as a replica reads it (Ray Serve's request context, set per call by
    # measure); versions are noted as in a replica, and with no access line to take them,
    # the oldest go.
    core = RouterCore(cfg, load_versions(cfg.versions), _QuietController(),
                      request_id=_request_id, on_answer=VersionsAnswered().note)
    core.use_feedback_key(b"bench-feedback-key-of-32-bytes!!")
    return core


def serve_ab_app() -> tuple[Any, Any]:
    """The router's app over a core of its own; returns the app and the core."""
    from serve_ab.serving import http as routes
    from serve_ab.serving.core.auth import ControlAuth

    core = serve_ab_core()
    routes.use_core(routes.Served(core, ControlAuth(core.cfg.control, [])))
    return routes.app, core


async def call(app: Any, path: str, body: bytes) -> int:
    """One POST through an ASGI app, as Serve's replica hands it over; the status."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    sent = False
    status = 0

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def plain_handle(path: str) -> Any:
    """``baselines.OnnxModel.predict``, the method a plain deployment's handle call runs."""
    session = _session(path)
    name = session.get_inputs()[0].name

    async def predict(batch: Any) -> np.ndarray:
        (outputs,) = session.run(None, {name: np.asarray(batch, dtype=np.float32)})
        return outputs

    return predict


def serve_ab_handle(core: Any) -> Any:
    """The router's ``predict`` method as a handle call runs it, over ``core``."""
    from types import SimpleNamespace

    from serve_ab.serving.router import Router

    replica = SimpleNamespace(core=core)
    method = Router.func_or_class.predict

    async def predict(batch: Any, key: str) -> dict[str, Any]:
        return await method(replica, batch, key=key)

    return predict


def in_request_context(request_id: str) -> None:
    """Ray Serve's request context, as a replica sets it before calling the method."""
    from ray.serve import context

    context._serve_request_context.set(context._RequestContext(request_id=request_id))


class Evictor:
    """Reads ``mib`` MiB before each call, evicting the caches (``--cold``); or nothing.

    A read, not a write: written lines would leave the cache dirty, and the timed call would
    pay for writing them back as it evicts them."""

    def __init__(self, mib: int):
        self.buffer = np.ones(mib * 2**20 // 8) if mib > 0 else None

    def __call__(self) -> None:
        if self.buffer is not None:
            self.buffer.sum()


# A candidate: given the call's number, one request through it; raises if it was not answered.
Candidate = Any


def http_candidate(app: Any, path: str, bodies: list[bytes]) -> Candidate:
    async def one(i: int) -> None:
        status = await call(app, path, bodies[i % len(bodies)])
        if status != 200:
            raise RuntimeError(f"{path} answered {status}")
    return one


def handle_candidate(method: Any, args: list[tuple[np.ndarray, str]], keyed: bool) -> Candidate:
    async def one(i: int) -> None:
        batch, key = args[i % len(args)]
        outputs = await (method(batch, key) if keyed else method(batch))
        if outputs is None:
            raise RuntimeError("no answer")
    return one


async def measure(candidates: dict[str, Candidate], calls_per_round: int, rounds: int,
                  evict: Evictor) -> dict[str, list[float]]:
    """Per candidate, the mean microseconds per call of each round; they take turns call by call."""
    per_round: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    call_number = 0
    for r in range(rounds):
        times: dict[str, list[float]] = {name: [] for name in candidates}
        order = names[r % len(names):] + names[:r % len(names)]
        for _ in range(calls_per_round):
            call_number += 1
            for name in order:
                await asyncio.sleep(0)  # the loop's other tasks (the cores' report loops) run, as in a replica
                in_request_context(f"req-{name}-{call_number}")
                evict()
                started = time.perf_counter()
                await candidates[name](call_number)
                times[name].append((time.perf_counter() - started) * 1e6)
        for name in candidates:
            per_round[name].append(statistics.fmean(times[name]))
    return per_round


# serve-ab's candidate -> the baselines it is compared with.
COMPARED = {"serve-ab": ("plain", "fastapi"), "serve-ab-handle": ("plain-handle",)}
# What minting a feedback token adds, where the experiment takes feedback.
TOKEN = ("serve-ab-handle+token", "serve-ab-handle")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="5 rounds of 400 calls (default 15 of 1000); with --cold, 3 of 60 (default 7 of 150)")
    parser.add_argument("--cold", action="store_true", help="evict the caches before every call")
    parser.add_argument("--evict-mib", type=int, default=64, metavar="MIB",
                        help="how much --cold reads before each call (default 64: more than this "
                             "machine's 32 MiB last-level cache)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cold and args.evict_mib < 1:
        print(f"--evict-mib is {args.evict_mib}; give at least 1 (MiB read before each call)", file=sys.stderr)
        return 2
    missing = missing_models("v1/model.onnx", "v3/model.onnx")
    if missing:
        print(missing, file=sys.stderr)
        return 2
    return _main(args)


def _main(args: argparse.Namespace) -> int:
    if args.cold:
        rounds, calls = (3, 60) if args.quick else (7, 150)
    else:
        rounds, calls = (5, 400) if args.quick else (15, 1000)
    evict_mib = args.evict_mib if args.cold else 0
    report = report_header("request_path", args.quick, rounds=rounds, calls_per_round=calls,
                           cold=args.cold, evict_mib=evict_mib)
    json_bodies, handle_args = request_bodies()
    bodies = [b.encode() for b in json_bodies]
    v1 = str(MODELS / "v1" / "model.onnx")
    serve_ab, core = serve_ab_app()
    handle_core = serve_ab_core()  # its own, so that neither candidate folds the other's answers
    token_core = serve_ab_core(takes_feedback=True)  # the same, minting a feedback token per answer
    candidates = {
        "plain": http_candidate(plain_app(v1), "/", bodies),
        "fastapi": http_candidate(fastapi_app(v1), "/predict", bodies),
        "serve-ab": http_candidate(serve_ab, "/predict", bodies),
        "plain-handle": handle_candidate(plain_handle(v1), handle_args, keyed=False),
        "serve-ab-handle": handle_candidate(serve_ab_handle(handle_core), handle_args, keyed=True),
        "serve-ab-handle+token": handle_candidate(serve_ab_handle(token_core), handle_args, keyed=True),
    }

    async def run() -> dict[str, list[float]]:
        loop = asyncio.get_running_loop()
        flushes = [loop.create_task(c.flush()) for c in (core, handle_core, token_core)]  # reports go out, as in a replica
        try:
            await measure(candidates, 200, 1, Evictor(0))  # warm-up
            return await measure(candidates, calls, rounds, Evictor(evict_mib))
        finally:
            for flush in flushes:
                flush.cancel()

    log(f"{rounds} rounds of {calls} calls per candidate, taking turns"
        + (f", {evict_mib} MiB read before each call" if args.cold else ""))
    try:
        per_round = asyncio.run(run())
    finally:
        from serve_ab.serving import http as routes

        routes.use_core(None)  # the module's one core slot: left as found
    out = {name: round(statistics.median(values), 1) for name, values in per_round.items()}
    added = {(ours, base): [s - b for s, b in zip(per_round[ours], per_round[base])]
             for ours, bases in [*COMPARED.items(), (TOKEN[0], (TOKEN[1],))] for base in bases}
    token = added.pop(TOKEN)
    state = "cold (caches evicted before each call)" if args.cold else "warm"
    print(f"\nmicroseconds per request, {state}, median of {rounds} round means (min-max of the rounds):",
          file=sys.stderr)
    for name, values in per_round.items():
        print(f"  {name:<16} {out[name]:7.1f}  ({min(values):.1f}-{max(values):.1f})", file=sys.stderr)
    for (ours, base), deltas in [*added.items(), (TOKEN, token)]:
        print(f"  {ours} - {base:<13} {statistics.median(deltas):+7.1f}  "
              f"({min(deltas):+.1f} to {max(deltas):+.1f})", file=sys.stderr)
    report.update(us_per_request=out,
                  token_added_us=round(statistics.median(token), 1),
                  token_added_us_range=[round(min(token), 1), round(max(token), 1)],
                  serve_ab_added_us={base: round(statistics.median(d), 1) for (_, base), d in added.items()},
                  serve_ab_added_us_range={base: [round(min(d), 1), round(max(d), 1)]
                                           for (_, base), d in added.items()})
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
