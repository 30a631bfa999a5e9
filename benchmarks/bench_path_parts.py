"""Where serve-ab's request path spends what plain's does not: each part, taken out.

``bench_request_path`` gives the router's path against plain's as a median of round means,
whose rounds spread by tens of microseconds with the caches cold. This pairs instead: call by
call, the same request goes through serve-ab's app with one part of its path taken out and
with everything in (in alternating order), so that each pair sees the same machine and the
mean of the differences has a standard error of about a microsecond. The first line pairs
serve-ab's whole path with plain's (``bench_request_path``'s ``plain``) the same way, plain
answering each body with the model (v1 or v3) that serve-ab's split gives its user.

A part taken out is replaced by the least that keeps the request answered, so its line is what
that feature costs a request:

- **decision**: the split's choice (the key's keyed BLAKE2b hash, its bucket, the version),
  replaced by the two versions in turn;
- **key hash**: the hash alone (the bucket and version lookup kept);
- **input checks**: ``to_batch`` (booleans, dtype, shape, finiteness, the cast), replaced by
  ``np.asarray(values, dtype=float32)``, what plain runs;
- **output checks**: ``check_outputs`` (one row per input row, the declared shape, finiteness);
- **pin check**: reading the pin header (and, had it been sent, checking the QA token);
- **body deadline**: ``http.body_timeout_s``'s deadline on the body read (HTTP only);
- **access-line note**: noting the version for Ray Serve's access line, which takes it after the
  answer (here: taken after each call, outside the timing, as the line would);
- **observation**: the answer's figures, held for the report;
- **request id**: reading Ray Serve's request id (twice a request).

``--handle`` does the same for a DeploymentHandle's call: the router's own ``Router.predict``
(``bench_request_path``'s ``serve-ab-handle``) against plain's ``predict`` on the same model,
with the same parts but the pin check (a handle's caller pins by argument, checked by type).

The caches are evicted before each call (``--evict-mib``, as ``bench_request_path --cold``): the
state a replica's path runs in at concurrency 1, where the proxy, the client and Ray's other
processes run between two requests. No Ray here; ``bench_serving`` measures the same path in
a replica.

    python -m benchmarks.bench_path_parts            # ~2.5 minutes
    python -m benchmarks.bench_path_parts --quick    # ~30 s
    python -m benchmarks.bench_path_parts --handle   # the handle path, ~2 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.bench_request_path import (
    Evictor,
    call,
    in_request_context,
    plain_app,
    plain_handle,
    serve_ab_core,
    serve_ab_handle,
)
from benchmarks.cluster import missing_models
from benchmarks.common import MODELS, log, report_header, request_bodies

# A part's switch: (take it out, put it back).
Switch = tuple[Callable[[], None], Callable[[], None]]


def _swap(owner: Any, name: str, replacement: Any) -> Switch:
    """Set ``owner.name`` to ``replacement``, and back as it was: a method the class gives (not
    the instance) is given by the class again, not left behind as an instance attribute."""
    own = hasattr(owner, "__dict__") and name in vars(owner)
    original = getattr(owner, name)

    def put_back() -> None:
        if own:
            setattr(owner, name, original)
        else:
            delattr(owner, name)

    return (lambda: setattr(owner, name, replacement)), put_back


def parts(core: Any, handle: bool = False) -> dict[str, Switch]:
    """Each part of ``core``'s path that plain's has no counterpart of, with its switch; over a
    handle (``handle``), all but the pin header's check."""
    from serve_ab.api import http_util
    from serve_ab.serving import http as routes
    from serve_ab.serving.core import router, versions
    from serve_ab.serving.core.decision import Choice

    names = list(core.versions)
    turn = [0]

    def in_turn(key: str | None, pinned: str | None) -> Choice:
        turn[0] += 1
        return Choice(names[turn[0] % len(names)], None, True, core.epoch)

    assigner = core.decision.assigner

    def unhashed(key: str | None) -> tuple[str, int | None]:
        turn[0] += 1
        unit = turn[0] * 7919  # a spread of buckets, without the hash
        return assigner.table.version_for_bucket(unit % 10_000), unit

    switches = {
        "decision": _swap(core, "choose", in_turn),
        "key hash": _swap(assigner, "assign_unit", unhashed),
        "input checks": _swap(router, "to_batch", lambda values, spec, **_: np.asarray(values, dtype=np.float32)),
        "output checks": _swap(versions, "check_outputs", lambda *_: None),
        "pin check": _swap(routes, "_pinned", lambda *_: None),
        # http.body_timeout_s's deadline (serve_ab/api/body_deadline.py): the body read without one.
        "body deadline": _swap(routes, "read_body", lambda request, max_body_bytes, timeout_s=None:
                               http_util.read_body(request, max_body_bytes)),
        "access-line note": _swap(core, "on_answer", None),
        "observation": _swap(core.observations, "served", lambda *_, **__: None),
        "request id": _swap(core, "request_id", lambda: "a-request-id"),
    }
    if handle:
        del switches["pin check"], switches["body deadline"]  # a handle's call has no body to read
        # Router.predict reads the id itself too (serve_ab.serving.router._request_id).
        from serve_ab.serving import router as shell

        switches["request id"] = _both(switches["request id"],
                                       _swap(shell, "_request_id", lambda: "a-request-id"))
    return switches


def _both(first: Switch, second: Switch) -> Switch:
    """Two switches turned as one (put back in the reverse order)."""
    def take_out() -> None:
        first[0]()
        second[0]()

    def put_back() -> None:
        second[1]()
        first[1]()

    return take_out, put_back


def plain_for_each(core: Any, keys: list[str], handle: bool) -> list[Any]:
    """Plain's app (``handle``: its ``predict``) for each key, on the model serve-ab's split
    gives that user, so that the whole path's line compares the paths and not v1 with v3."""
    make_plain = plain_handle if handle else plain_app
    plains = {name: make_plain(str(MODELS / name / "model.onnx")) for name in core.versions}
    return [plains[core.decision.assigner.assign(key)] for key in keys]


def _nothing() -> None:
    return None


async def paired(first: Callable[[int], Any], second: Callable[[int], Any], pairs: int,
                 evict: Evictor, between: Callable[[int], None],
                 switch: Switch = (_nothing, _nothing)) -> tuple[float, float, float, float]:
    """``first`` - ``second`` in microseconds over ``pairs`` pairs of calls of one request each,
    taking turns which goes first: the differences' mean and standard error, each one's mean.
    ``switch`` is turned before ``second``'s call and back after it, outside the timing."""
    times: dict[int, list[float]] = {0: [], 1: []}
    for i in range(pairs):
        for side in ((0, 1) if i % 2 else (1, 0)):
            await asyncio.sleep(0)  # the loop's other tasks (the core's report loop) run, as in a replica
            in_request_context(f"req-{i}-{side}")
            if side == 1:
                # Before the eviction, which then empties the caches of what turning it touched:
                # turned after it, the switch warmed its own module's globals for that call only
                # (every part read 2-6 us dearer, 20:48).
                switch[0]()
            try:
                evict()
                started = time.perf_counter()
                await (first if side == 0 else second)(i)
                elapsed_us = (time.perf_counter() - started) * 1e6
            finally:
                if side == 1:
                    switch[1]()
            times[side].append(elapsed_us)
        between(i)
    deltas = [a - b for a, b in zip(times[0], times[1])]
    return (statistics.fmean(deltas), statistics.stdev(deltas) / len(deltas) ** 0.5,
            statistics.fmean(times[0]), statistics.fmean(times[1]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 pairs per line (default 1500)")
    parser.add_argument("--handle", action="store_true",
                        help="a DeploymentHandle's call (Router.predict) instead of HTTP's /predict")
    parser.add_argument("--pairs", type=int, default=None, metavar="N", help="pairs per line (overrides --quick)")
    parser.add_argument("--evict-mib", type=int, default=64, metavar="MIB",
                        help="how much is read before each call (default 64: more than this machine's "
                             "32 MiB last-level cache); 0 runs warm")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.pairs is not None and args.pairs < 2:
        print(f"--pairs is {args.pairs}; give at least 2 (a standard error needs two)", file=sys.stderr)
        return 2
    if args.evict_mib < 0:
        print(f"--evict-mib is {args.evict_mib}; give 0 (warm) or more (MiB read before each call)",
              file=sys.stderr)
        return 2
    missing = missing_models("v1/model.onnx", "v3/model.onnx")
    if missing:
        print(missing, file=sys.stderr)
        return 2
    from serve_ab.api.access_log import VersionsAnswered
    from serve_ab.serving import http as routes
    from serve_ab.serving.core.auth import ControlAuth

    pairs = args.pairs or (300 if args.quick else 1500)
    report = report_header("path_parts", args.quick, pairs=pairs, evict_mib=args.evict_mib,
                           way_in="handle" if args.handle else "http")
    json_bodies, handle_args = request_bodies()
    bodies = [b.encode() for b in json_bodies]
    notes = VersionsAnswered()
    core = serve_ab_core()
    core.on_answer = notes.note
    routes.use_core(routes.Served(core, ControlAuth(core.cfg.control, [])))
    # Plain answers each body with the model serve-ab's split gives its user, so that the
    # first line compares the paths and not v1's model with v3's.
    plain_for = plain_for_each(core, [key for _, key in handle_args], args.handle)
    router_predict = serve_ab_handle(core)

    async def serve_ab(i: int) -> None:
        if args.handle:
            batch, key = handle_args[i % len(handle_args)]
            if (await router_predict(batch, key))["outputs"] is None:
                raise RuntimeError("serve-ab's Router.predict gave no outputs")
        elif await call(routes.app, "/predict", bodies[i % len(bodies)]) != 200:
            raise RuntimeError("serve-ab's /predict did not answer 200")

    async def plain_call(i: int) -> None:
        if args.handle:
            if await plain_for[i % len(handle_args)](handle_args[i % len(handle_args)][0]) is None:
                raise RuntimeError("plain's predict gave no outputs")
        elif await call(plain_for[i % len(bodies)], "/", bodies[i % len(bodies)]) != 200:
            raise RuntimeError("plain did not answer 200")

    def take_notes(i: int) -> None:
        # Ray Serve's access line takes each request's note once the answer has left.
        for side in (0, 1):
            notes.take(f"req-{i}-{side}")

    async def run() -> dict[str, tuple[float, float, float, float]]:
        flush = asyncio.get_running_loop().create_task(core.flush())  # reports go out, as in a replica
        evict = Evictor(args.evict_mib)
        try:
            for i in range(300):  # warm-up
                await serve_ab(i)
                await plain_call(i)
            results = {"serve-ab - plain": await paired(serve_ab, plain_call, pairs, evict, take_notes)}
            for name, switch in parts(core, args.handle).items():
                # everything in - the part taken out: what the part costs
                results[name] = await paired(serve_ab, serve_ab, pairs, evict, take_notes, switch)
                log(f"{name}: {results[name][0]:+.1f} ± {results[name][1]:.1f} us")
            return results
        finally:
            flush.cancel()

    log(f"{'Router.predict' if args.handle else '/predict'}: {pairs} pairs of calls per line, "
        f"{args.evict_mib} MiB read before each call")
    try:
        results = asyncio.run(run())
    finally:
        routes.use_core(None)  # the module's one core slot: left as found
    print(f"\nmicroseconds per request, {'cold' if args.evict_mib else 'warm'}: mean difference "
          f"± its standard error over {pairs} pairs", file=sys.stderr)
    for name, (mean, se, a, b) in results.items():
        label = name if name == "serve-ab - plain" else f"  {name}"
        print(f"  {label:<22} {mean:+7.1f} ± {se:.1f}   ({a:.1f} vs {b:.1f})", file=sys.stderr)
    report["added_us"] = {name: {"mean": round(mean, 1), "se": round(se, 1)}
                          for name, (mean, se, _, _) in results.items()}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
