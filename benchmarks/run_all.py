"""Every benchmark, one after the other, in one command.

    python benchmarks/run_all.py --quick   # about 5 minutes on the shared 2-core dev machine (not 3); one JSON line last
    python benchmarks/run_all.py           # about 10-11 minutes; also writes benchmarks/RESULTS.md
    python benchmarks/run_all.py --quick --only memory canary_load

Each part runs as a subprocess of its own (each starts and shuts down its own Ray
instance, so one part's leftovers cannot slow the next): routing, serving, propagation,
memory, canary_load. Their human-readable output is passed through to stderr; the last
stdout line of each (its JSON) is collected, and one combined JSON line is printed last:
the machine, a few headline figures, then every part's own JSON.

In full mode RESULTS.md is written: bench_serving.py writes its tables first, then the
other parts' output is appended, with the machine's description and the load average.
A part that fails is reported (exit code, the end of its stderr) and the others still run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_MD = HERE / "RESULTS.md"
sys.path.insert(0, str(HERE))

# name -> (script, quick arguments, full arguments, timeout s in quick / full mode)
PARTS: dict[str, tuple[str, list[str], list[str], tuple[int, int]]] = {
    "routing": ("bench_routing.py", ["--quick"], [], (60, 120)),
    # Quick: bench_serving's own quick mode (concurrency 1 and 8) with 2 rounds of 1 s, not 3 of 1.25 s.
    "serving": ("bench_serving.py", ["--quick", "--rounds", "2", "--duration", "1.0"], [], (300, 900)),
    # Quick: 3 rounds (2 weight rounds + the abort round), shorter hold and observation.
    "propagation": ("bench_propagation.py", ["--rounds", "3", "--hold", "0.5", "--observe", "0.75"], [],
                    (180, 300)),
    "memory": ("bench_memory.py", ["--quick"], [], (180, 240)),
    # Quick: 0.5 s pauses (2.5 s of canary moves in a 4 s window), not 3 s pauses in 12 s.
    "canary_load": ("bench_canary_load.py", ["--quick", "--pause", "0.5"], [], (180, 300)),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] run_all: {message}", file=sys.stderr, flush=True)


def run_part(name: str, quick: bool) -> dict[str, Any]:
    script, quick_args, full_args, (quick_timeout, full_timeout) = PARTS[name]
    command = [sys.executable, str(HERE / script), *(quick_args if quick else full_args)]
    log(f"{name}: {' '.join(Path(c).name if c.endswith('.py') else c for c in command[1:])}")
    started = time.perf_counter()
    # stderr (progress logs) goes straight through; stdout is kept to find the JSON line.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=None, text=True, cwd=REPO)
    try:
        stdout, _ = proc.communicate(timeout=quick_timeout if quick else full_timeout)
        rc: Any = proc.returncode
    except subprocess.TimeoutExpired:
        # SIGINT first: the part's finally: blocks shut its Ray instance down; then kill.
        log(f"{name}: over its time limit, interrupting it")
        proc.send_signal(signal.SIGINT)
        try:
            stdout, _ = proc.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, _ = proc.communicate()
        rc = "timeout"
    wall = round(time.perf_counter() - started, 1)
    lines = stdout.rstrip("\n").splitlines()
    result: dict[str, Any] = {"rc": rc, "wall_s": wall}
    try:
        result["json"] = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result["json"] = None
    kept = lines[:-1] if result["json"] is not None else lines
    # Ray's own shutdown chatter (e.g. "(raylet) Task ServeController.graceful_shutdown failed")
    # lands on stdout; it is not the part's output.
    kept = [line for line in kept if "(raylet)" not in line]
    text = "\n".join(kept).strip("\n")
    print(text, file=sys.stderr, flush=True)
    result["text"] = text
    log(f"{name}: exit {rc}, {wall:.0f} s")
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
        if concurrency == "1":
            out["serving_c1_p50_added_vs_plain_ms"] = (apps.get("colocated") or {}).get("p50_added_vs_plain_ms")
    prop = get("propagation", "summary_weights_rounds", "propagation_ms") or {}
    out["propagation_median_ms"], out["propagation_max_ms"] = prop.get("median"), prop.get("max")
    out["propagation_errors"] = get("propagation", "errors")
    out["memory_colocated_rss_mib"] = get("memory", "colocated", "total", "rss_mib")
    out["memory_isolated_rss_mib"] = get("memory", "isolated", "total", "rss_mib")
    out["memory_isolated_over_colocated"] = get("memory", "ratio_isolated_over_colocated")
    out["canary_load_ratio"] = get("canary_load", "ratio_canary_over_static")
    out["canary_load_failed"] = get("canary_load", "failed_requests")
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
        f"# Other benchmarks (`python benchmarks/run_all.py`, {report['date']}, {report['wall_s']:.0f} s in all)",
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
    titles = {"routing": "Routing (`bench_routing.py`)", "propagation": "Rollback propagation (`bench_propagation.py`)",
              "memory": "Memory per replica (`bench_memory.py`)",
              "canary_load": "Throughput while a canary moves (`bench_canary_load.py`)"}
    for name, title in titles.items():
        part = parts.get(name)
        if part is None:
            continue
        lines += ["", f"## {title}", "", f"exit {part['rc']}, {part['wall_s']:.0f} s", "", "```",
                  part["text"].strip("\n") or "(no output)", "```"]
    RESULTS_MD.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every part shortened; no RESULTS.md")
    parser.add_argument("--only", nargs="+", choices=list(PARTS), metavar="PART",
                        help=f"run only these parts, of {list(PARTS)} (no RESULTS.md)")
    args = parser.parse_args(argv)
    from bench_serving import describe_machine, load_average, other_ray_instances

    started = time.perf_counter()
    report: dict[str, Any] = {
        "bench": "all",
        "mode": "quick" if args.quick else "full",
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "load_before": [round(x, 2) for x in load_average() or ()],
        "other_ray_instances_before": other_ray_instances(),
    }
    parts: dict[str, dict[str, Any]] = {}
    for name in PARTS:
        if args.only and name not in args.only:
            continue
        parts[name] = run_part(name, args.quick)
    report["load_after"] = [round(x, 2) for x in load_average() or ()]
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["headline"] = headline(parts)
    report["failed_parts"] = [n for n, p in parts.items() if p["rc"] != 0 or p["json"] is None]
    if not args.quick and not args.only:
        append_results(parts, report)
        log(f"wrote {RESULTS_MD.relative_to(REPO)}")
    log(f"done in {report['wall_s']:.0f} s; failed parts: {report['failed_parts'] or 'none'}")
    print(json.dumps(report["headline"], indent=1), file=sys.stderr)
    report["parts"] = {}
    for name, part in parts.items():
        data = dict(part["json"] or {})
        data.pop("machine", None)  # once, at the top
        report["parts"][name] = {"rc": part["rc"], "wall_s": part["wall_s"], "result": data}
    print(json.dumps(report))
    return 1 if report["failed_parts"] else 0


if __name__ == "__main__":
    sys.exit(main())
