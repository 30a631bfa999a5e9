"""Every benchmark, one after the other, in one command, on one Ray instance.

    python -m benchmarks.run_all --quick   # about 4.5 minutes on the shared 2-core dev machine; one JSON line last
    python -m benchmarks.run_all           # about 15 minutes; also writes benchmarks/RESULTS.md
    python -m benchmarks.run_all --quick --only memory canary_load

The parts (routing, serving, grpc, propagation, memory, canary_load, controller; shadow in
full mode) run in this process, one after the other, on ONE Ray instance and Serve proxy
started here (routing needs neither); the proxy serves gRPC too when the grpc part runs.
Starting Ray and Serve once instead of once per part is most of what makes --quick fit
in about 4.5 minutes. Each part deploys its own apps and deletes them when it ends; the deletion
overlaps the next part's deployment, and a part measures only once the previous part's
apps are gone (cluster.deployed). Apps a failed part leaves behind are deleted here.

Each part's human-readable output goes to stderr as it runs and is kept; its figures are
collected, and one combined JSON line is printed last: the machine, a few headline
figures, what --quick shortened, then every part's own figures. A part that fails or runs
over its time limit is reported (its error) and the others still run.

In full mode RESULTS.md is written: bench_serving writes its tables first, then the
other parts' output is appended, with the machine's description and the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from benchmarks.cluster import DELETED_APPS, cluster, grpc_options, missing_models
from benchmarks.common import REPO, RESULTS_MD, load_now, other_ray_instances, report_header


@dataclass(frozen=True)
class Part:
    module: str                     # below the benchmarks package
    quick_args: list[str]
    full_args: list[str]
    time_limit_s: tuple[int, int]   # quick, full
    quick_note: str                 # what --quick shortens, against full
    needs_cluster: bool = True
    in_quick: bool = True           # False: full mode (or --only) only, to keep --quick short


PARTS: dict[str, Part] = {
    "routing": Part("bench_routing", ["--quick"], [], (60, 120),
                    "10 turns of 10000 calls (full: 40 of 20000)", needs_cluster=False),
    "serving": Part("bench_serving", ["--quick", "--rounds", "3", "--duration", "1.0", "--warmup", "0.5"],
                    [], (240, 900),
                    "concurrency 1 and 8 (HTTP and handles), 3 rounds of 1 s per candidate, 0.5 s "
                    "warm-up (full: HTTP 1/4/16/32 and handles 1/16, 4 rounds of 3 s / 2 s, 3 s warm-up)"),
    "grpc": Part("bench_grpc", ["--rounds", "2", "--duration-s", "1.0"], [], (150, 300),
                 "2 rounds of 1 s per app at concurrency 1 and 16 (full: 4 rounds of 3 s)"),
    "propagation": Part("bench_propagation", ["--rounds", "3", "--hold", "0.5", "--observe", "0.75"], [],
                        (120, 300), "2 weight rounds + the abort round, hold 0.5 s, observe 0.75 s "
                        "(full: 9 + abort, hold 1 s, observe 1.5 s)"),
    "memory": Part("bench_memory", ["--quick"], [], (120, 240),
                   "20 requests per app, 3 readings (full: 200, 10)"),
    "canary_load": Part("bench_canary_load", ["--quick", "--pause", "0.5"], [], (120, 300),
                        "pauses 0.5 s, windows 4 s (full: pauses 3 s, windows 12 s)"),
    "controller": Part("bench_controller", ["--quick"], [], (180, 420),
                       "1k/10k/100k req/s represented, 3 s each (full: 1k to 1M, 8 s each)"),
    # Not one of the figures: what a shadow costs clients. Left out of --quick (two
    # more apps to deploy, some 40 s); --only shadow runs it quickly.
    "shadow": Part("bench_shadow", ["--duration-s", "2"], [], (120, 240),
                   "not run by --quick (with --only shadow: 2 s per measurement; full: 10 s)",
                   in_quick=False),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] run_all: {message}", file=sys.stderr, flush=True)


class PartTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise PartTimeout in this (the main) thread after ``seconds``: the part's own
    finally: blocks then close its load generator and delete its apps."""

    def expire(signum: int, frame: Any) -> None:
        raise PartTimeout(f"over its time limit of {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class Tee(io.TextIOBase):
    """Writes to every stream: the part's output is shown as it comes and kept."""

    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def delete_leftover_apps(part: str) -> None:
    """Apps a failed part left deployed (parts delete their own: see cluster.deployed)."""
    from ray import serve

    for name, app in serve.status().applications.items():
        if name not in DELETED_APPS and app.status != "DELETING":
            log(f"{part}: app {name!r} was left deployed; deleting it")
            serve.delete(name, _blocking=False)


def run_part(name: str, quick: bool, cluster: Any, extra_args: list[str]) -> dict[str, Any]:
    part = PARTS[name]
    argv = [*(part.quick_args if quick else part.full_args), *extra_args]
    log(f"{name}: python -m benchmarks.{part.module} {' '.join(argv)}".rstrip())
    started = time.perf_counter()
    kept = io.StringIO()
    result: dict[str, Any] = {"rc": 0, "json": None}
    with contextlib.redirect_stdout(Tee(kept, sys.stderr)):
        try:
            module = importlib.import_module(f"benchmarks.{part.module}")
            args = module.parse_args(argv)
            with time_limit(part.time_limit_s[0 if quick else 1]):
                result["json"] = module.run(cluster, args) if part.needs_cluster else module.run(args)
        except PartTimeout as err:
            result.update(rc="timeout", error=str(err))
        except Exception as err:  # noqa: BLE001 - one part failing must not stop the others
            result.update(rc=1, error=f"{type(err).__name__}: {err}")
            traceback.print_exc(file=sys.stdout)
    if part.needs_cluster and cluster is not None:
        delete_leftover_apps(name)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    # Ray's own shutdown chatter (e.g. "(raylet) Task ServeController.graceful_shutdown
    # failed") may land on stdout; it is not the part's output.
    result["text"] = "\n".join(line for line in kept.getvalue().splitlines()
                               if "(raylet)" not in line).strip("\n")
    log(f"{name}: {'ok' if result['rc'] == 0 else result.get('error')}, {result['wall_s']:.0f} s")
    return result


def headline(parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A few figures from each part, for a quick look; the parts' JSON has everything."""
    out: dict[str, Any] = {}

    def get(part: str, *keys: str) -> Any:
        value: Any = (parts.get(part) or {}).get("json")
        for key in keys:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value

    out["routing_assign_key_us"] = get("routing", "v2", "assign_key_us")
    out["routing_vs_random_choices"] = get("routing", "v2", "assign_key_vs_baseline")
    http = get("serving", "http") or {}
    for concurrency, apps in http.items():
        out[f"serving_c{concurrency}_colocated_vs_plain"] = (apps.get("colocated") or {}).get("vs_plain")
        out[f"serving_c{concurrency}_colocated_vs_workaround"] = (apps.get("colocated") or {}).get("vs_workaround")
        out[f"serving_c{concurrency}_isolated_vs_workaround"] = (apps.get("isolated") or {}).get("vs_workaround")
        if "colocated_batch" in apps:
            out[f"serving_c{concurrency}_batching_vs_serve_batch"] = apps["colocated_batch"].get("vs_plain_batch")
        # The A/A: plain's twin against plain, what the figures above read when nothing differs.
        out[f"serving_c{concurrency}_a_a_vs_plain"] = (apps.get("plain_twin") or {}).get("vs_plain")
        if concurrency == "1":
            out["serving_c1_p50_added_vs_plain_ms"] = (apps.get("colocated") or {}).get("p50_added_vs_plain_ms")
            out["serving_c1_a_a_p50_added_ms"] = (apps.get("plain_twin") or {}).get("p50_added_vs_plain_ms")
    for concurrency, apps in (get("serving", "handle") or {}).items():
        out[f"serving_handle_c{concurrency}_colocated_vs_plain"] = (apps.get("colocated") or {}).get("vs_plain")
        out[f"serving_handle_c{concurrency}_a_a_vs_plain"] = (apps.get("plain_twin") or {}).get("vs_plain")
        if concurrency == "1":
            out["serving_handle_c1_p50_added_vs_plain_ms"] = (apps.get("colocated") or {}).get(
                "p50_added_vs_plain_ms")
            out["serving_handle_c1_a_a_p50_added_ms"] = (apps.get("plain_twin") or {}).get(
                "p50_added_vs_plain_ms")
    for concurrency, apps in (get("grpc", "results") or {}).items():
        out[f"grpc_c{concurrency}_colocated_vs_plain"] = (apps.get("grpc_colocated") or {}).get("vs_plain")
        out[f"grpc_c{concurrency}_a_a_vs_plain"] = (apps.get("grpc_twin") or {}).get("vs_plain")
        if concurrency == "1":
            out["grpc_c1_p50_added_vs_plain_ms"] = (apps.get("grpc_colocated") or {}).get("p50_added_vs_plain_ms")
            out["grpc_c1_a_a_p50_added_ms"] = (apps.get("grpc_twin") or {}).get("p50_added_vs_plain_ms")
    prop = get("propagation", "summary_weights_rounds", "propagation_ms") or {}
    out["propagation_median_ms"], out["propagation_max_ms"] = prop.get("median"), prop.get("max")
    out["propagation_errors"] = get("propagation", "errors")
    out["controller_rate_ratio_vs_per_request"] = get("controller", "rate_ratio_aggregates_over_per_request")
    out["controller_cpu_100x_rate"] = get("controller", "aggregates_cpu_100x_rate_over_lowest")
    out["memory_colocated_rss_mib"] = get("memory", "colocated", "total", "rss_mib")
    out["memory_isolated_rss_mib"] = get("memory", "isolated", "total", "rss_mib")
    out["memory_isolated_over_colocated"] = get("memory", "ratio_isolated_over_colocated")
    out["canary_load_ratio"] = get("canary_load", "ratio_canary_over_static")
    out["canary_load_failed"] = get("canary_load", "failed_requests")
    if get("shadow", "bench"):
        out["shadow_p50_added_ms"] = get("shadow", "p50_added_ms")
        out["shadow_p99_ratio"] = get("shadow", "p99_ratio_shadow_to_none")
        out["shadow_throughput_ratio"] = get("shadow", "throughput_ratio_shadow_to_none")
    return out


def append_results(parts: dict[str, dict[str, Any]], report: dict[str, Any]) -> None:
    serving_ok = (parts.get("serving") or {}).get("rc") == 0
    if serving_ok and RESULTS_MD.is_file():
        lines = RESULTS_MD.read_text().rstrip("\n").splitlines()
    else:
        lines = ["# Benchmark results", "",
                 ("bench_serving.py did not complete in this run: no serving tables "
                 "(see the run's output).")]
    m = report["machine"]
    lines += [
        "",
        f"# Other benchmarks (`python -m benchmarks.run_all`, {report['date']}, {report['wall_s']:.0f} s in all)",
        "",
        ("Every part ran in one process on one Ray instance and Serve proxy "
         f"(started in {report.get('cluster_start_s', 0):.0f} s"
         f"{', serving gRPC too for the grpc part' if 'grpc' in parts else ''}), each deploying its own apps "
         "and deleting them when done."),
        "",
        "## Machine, for every part",
        "",
        f"- {m.get('cores')} cores, {m.get('cpu_model')}, {m.get('memory_gib')} GiB, {m.get('os')}",
        (f"- Python {m.get('python')}, Ray {m.get('ray')}, torch {m.get('torch')}, onnxruntime "
        f"{m.get('onnxruntime')}, FastAPI {m.get('fastapi')}, numpy {m.get('numpy')}"),
        (f"- load average before / after the whole run: {report['load_before']} / {report['load_after']}; "
        "the machine is shared with other engineers' work, so absolute times are noisy; "
        "each part compares with a baseline measured in the same run"),
        "",
        "## Headline figures",
        "",
        "```",
        json.dumps(report["headline"], indent=1),
        "```",
    ]
    titles = {"routing": "Routing (`bench_routing.py`)", "grpc": "The gRPC ingress (`bench_grpc.py`)",
              "propagation": "Rollback propagation (`bench_propagation.py`)",
              "memory": "Memory per replica (`bench_memory.py`)",
              "controller": "Controller cost vs traffic (`bench_controller.py`)",
              "canary_load": "Throughput while a canary moves (`bench_canary_load.py`)",
              "shadow": "What a shadow costs clients (`bench_shadow.py`)"}
    for name, title in titles.items():
        part = parts.get(name)
        if part is None:
            continue
        lines += ["", f"## {title}", "", f"exit {part['rc']}{': ' + part['error'] if 'error' in part else ''}, {part['wall_s']:.0f} s", "", "```",
                  part["text"].strip("\n") or "(no output)", "```"]
    RESULTS_MD.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every part shortened; no RESULTS.md")
    parser.add_argument("--only", nargs="+", choices=list(PARTS), metavar="PART",
                        help=f"run only these parts, of {list(PARTS)} (no RESULTS.md)")
    args = parser.parse_args(argv)
    missing = missing_models("v1/model.onnx", "v2/model.pt2", "v3/model.onnx", "samples.json")
    if missing:
        print(missing, file=sys.stderr)
        return 2
    if args.only:
        names = [name for name in PARTS if name in args.only]
    else:
        names = [name for name in PARTS if PARTS[name].in_quick or not args.quick]
    started = time.perf_counter()
    report = report_header("all", args.quick)
    if args.quick:
        report["quick_shortens"] = {name: PARTS[name].quick_note for name in names}
        log("--quick: every part shortened, fewer rounds and shorter runs than full mode:")
        for name in names:
            log(f"  {name}: {PARTS[name].quick_note}")
    parts: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        # Only the JSON line goes to stdout: Ray's own messages (e.g. "(raylet) Task
        # ServeController.graceful_shutdown failed" at shutdown) go to stderr with the rest.
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        shared = None
        if any(PARTS[name].needs_cluster for name in names):
            log("starting one Ray instance and Serve proxy for every part")
            # Serve's gRPC proxy only where the grpc part runs: it shares the HTTP proxy's process,
            # and a run without it keeps the proxy every other part was measured on before.
            shared = stack.enter_context(cluster(num_cpus=8, grpc_options=grpc_options() if "grpc" in names else None))
            report["cluster_start_s"] = round(time.perf_counter() - started, 1)
            # Counted once ours runs: other_ray_instances() leaves one raylet out, ours.
            report["other_ray_instances"] = other_ray_instances()
            log(f"Serve on port {shared.port}, started in {report['cluster_start_s']:.0f} s")
        for name in names:
            # bench_serving writes RESULTS.md in full mode; with --only, run_all writes none.
            extra = ["--no-results-md"] if name == "serving" and args.only else []
            parts[name] = run_part(name, args.quick, shared, extra)
        shutdown_from = time.perf_counter()
    report["cluster_shutdown_s"] = round(time.perf_counter() - shutdown_from, 1)
    report["load_after"] = load_now()
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["headline"] = headline(parts)
    report["failed_parts"] = [n for n, p in parts.items() if p["rc"] != 0 or p["json"] is None]
    if not args.quick and not args.only:
        append_results(parts, report)
        log(f"wrote {RESULTS_MD.relative_to(REPO)}")
    per_part = ", ".join(f"{n} {p['wall_s']:.0f} s" for n, p in parts.items())
    log(f"done in {report['wall_s']:.0f} s ({per_part}); "
        f"load average before {report['load_before']}, after {report['load_after']}; "
        f"failed parts: {report['failed_parts'] or 'none'}")
    print(json.dumps(report["headline"], indent=1), file=sys.stderr)
    report["parts"] = {}
    for name, part in parts.items():
        data = dict(part["json"] or {})
        data.pop("machine", None)  # once, at the top
        entry = {"rc": part["rc"], "wall_s": part["wall_s"], "result": data}
        if "error" in part:
            entry["error"] = part["error"]
        report["parts"][name] = entry
    print(json.dumps(report))
    return 1 if report["failed_parts"] else 0


if __name__ == "__main__":
    sys.exit(main())
