"""Where a serving replica's time goes: py-spy on the replica under HTTP load.

Deploys the apps of ``bench_serving.py`` that are asked for (default: plain Ray Serve and
serve-ab colocated), keeps ``--concurrency`` connections busy on one app at a time for
``--duration`` seconds while ``py-spy record`` samples that app's ingress replica, then
prints, per app, the CPU time per request of each of its processes (measured first,
unprofiled, the apps taking turns), the share of the replica's busy samples spent in each part of the request
path (inclusive: a sample counts for every part on its stack) and the functions with the
most samples of their own. Serve's HTTP proxy and serve-ab's controller are sampled at the
same time; the proxy's functions are given in samples per request served meanwhile, since
it serves every app and its shares would not compare between them. The collapsed stacks go
to ``--out`` (one file per app and process), which ``flamegraph.pl`` or speedscope draw as
flame graphs.

    python -m benchmarks.profile_router                        # plain and colocated, c8, 10 s each
    python -m benchmarks.profile_router --apps colocated isolated --concurrency 16
    python -m benchmarks.profile_router --apps plain plain_twin colocated --concurrency 16 --cpu-rounds 8

py-spy ships with Ray's dependencies; it attaches to a process of the same user (no root
needed where ptrace is allowed). ``--nonblocking`` keeps it from pausing the replica, so the
load sees the replica as it runs unprofiled.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.bench_serving import BY_APP, run_targets
from benchmarks.cluster import Cluster, deployed, run_standalone
from benchmarks.common import REPO, log, replica_pids, request_bodies
from benchmarks.loadgen import HttpLoad

# The parts of a request's path, matched against a frame's file: the first that matches the
# frame wins, and a sample counts once per part however many of its frames match.
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("model (onnxruntime session.run)", ("onnxruntime/",)),
    ("serve-ab: routing, checks, observations", ("serve_ab/",)),
    ("FastAPI / Starlette", ("fastapi/", "starlette/")),
    ("pydantic", ("pydantic/", "pydantic_core/")),
    ("Ray Serve: request path (replica, ASGI proxying)", ("ray/serve/",)),
    ("Ray core: actor calls, pickling, gRPC", ("ray/_private/", "ray/_raylet", "ray/actor.py",
                                                "ray/remote_function", "ray/util/", "grpc/")),
    ("logging (access lines, Ray's log formatter)", ("logging/",)),
    ("asyncio / uvloop", ("asyncio/", "uvloop/")),
    ("json encode/decode", ("json/",)),
]
INGRESS = {"plain": "OnnxModel", "fastapi": "OnnxModelFastAPI", "workaround": "RandomSplit",
           "colocated": "Router", "isolated": "Router", "plain_batch": "OnnxModelBatched",
           "colocated_batch": "Router", "plain_twin": "OnnxModel", "isolated_loop": "Router",
           "isolated_actor": "Router", "workaround_grpc": "RandomSplit"}


@dataclass
class Profile:
    app: str
    samples: int
    parts_pct: dict[str, float]
    top_self: list[tuple[str, float]]
    throughput_rps: float
    path: str
    # CPU time per request of each of the app's processes (and Serve's proxy) while loaded:
    # what the app costs the machine, which py-spy's shares of one process do not show.
    cpu_ms_per_request: dict[str, float]
    idle_cpu_ms_per_s: dict[str, float]  # the same processes with no request at all
    # Serve's HTTP proxy, sampled at the same time: its functions' samples per request served
    # meanwhile (the proxy serves every app, so shares of it would not compare between apps).
    proxy_samples_per_request: float = 0.0
    proxy_top_per_request: list[tuple[str, float]] = field(default_factory=list)


def app_processes(app: str) -> dict[str, int]:
    """The app's replica processes and Serve's HTTP proxy, by name: pid."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                title = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if title.startswith(f"ray::ServeReplica:{app}:"):
                # "...:Controller" or, while it serves a call, "...:Controller.handle_request_with_rejection"
                found[title.split(":")[-1].split()[0].split(".")[0]] = int(entry)
            elif title.startswith("ray::ProxyActor"):
                found["(Serve's proxy)"] = int(entry)
    return found


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_collapsed(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw format: ``frame;frame;... count`` per line, the root first."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            stacks.append((stack.split(";"), int(count)))
    return stacks


def summarize(stacks: list[tuple[list[str], int]], top: int = 15) -> tuple[int, dict[str, float], list[tuple[str, float]]]:
    total = sum(count for _, count in stacks)
    parts: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        seen = set()
        for frame in frames:
            for name, markers in PARTS:
                if any(m in frame for m in markers):
                    seen.add(name)
                    break
        for name in seen:
            parts[name] += count
        self_time[_function(frames[-1])] += count
    pct = {name: round(100.0 * parts[name] / total, 1) for name, _ in PARTS} if total else {}
    tops = [(name, round(100.0 * n / total, 1)) for name, n in self_time.most_common(top)] if total else []
    return total, pct, tops


@dataclass
class CpuUse:
    throughput_rps: float
    cpu_ms_per_request: dict[str, float]
    idle_cpu_ms_per_s: dict[str, float]


def measure_cpu(cluster: Cluster, apps: list[str], load: HttpLoad, bodies: list[str], concurrency: int,
                rounds: int, slice_s: float) -> dict[str, CpuUse]:
    """Each app's processes' CPU time, unprofiled (py-spy's sampling costs the sampled process
    CPU too): idle, then per request under load. The apps take turns in short slices, so a
    machine that slows down or speeds up meanwhile (a shared one does) weighs on them all."""
    urls = {app: f"{cluster.base_url}/{app}{BY_APP[app].http_path}" for app in apps}
    processes = {app: app_processes(app) for app in apps}
    for app in apps:
        load.run(urls[app], bodies, concurrency, 2.0, 0.0)  # warm: first requests compile and connect
    idle_s = {app: dict.fromkeys(processes[app], 0.0) for app in apps}
    busy_s = {app: dict.fromkeys(processes[app], 0.0) for app in apps}
    completed = dict.fromkeys(apps, 0)
    measured_s = dict.fromkeys(apps, 0.0)
    for r in range(rounds):
        for app in apps[r % len(apps):] + apps[:r % len(apps)]:
            # Idle first: a Serve replica costs CPU with no request at all (metrics, long polls).
            before = {name: cpu_s(pid) for name, pid in processes[app].items()}
            time.sleep(slice_s / 2)
            after = {name: cpu_s(pid) for name, pid in processes[app].items()}
            for name in before:
                idle_s[app][name] += after[name] - before[name]
            result = load.run(urls[app], bodies, concurrency, slice_s, 0.0)
            done = {name: cpu_s(pid) for name, pid in processes[app].items()}
            for name in after:
                busy_s[app][name] += done[name] - after[name]
            completed[app] += result["completed"]
            measured_s[app] += slice_s
    return {app: CpuUse(
        throughput_rps=round(completed[app] / measured_s[app], 1),
        cpu_ms_per_request={name: round(1000.0 * t / max(1, completed[app]), 3) for name, t in busy_s[app].items()},
        idle_cpu_ms_per_s={name: round(1000.0 * t / (rounds * slice_s / 2), 1) for name, t in idle_s[app].items()},
    ) for app in apps}


def profile_app(cluster: Cluster, app: str, load: HttpLoad, bodies: list[str], concurrency: int,
                duration_s: float, rate_hz: int, out_dir: Path, cpu: CpuUse) -> Profile:
    pids = replica_pids(app, INGRESS[app])
    if not pids:
        raise RuntimeError(f"no replica process of {app}:{INGRESS[app]} found")
    url = f"{cluster.base_url}/{app}{BY_APP[app].http_path}"
    processes = app_processes(app)
    out = out_dir / f"{app}.collapsed.txt"
    spy = _py_spy(pids[0], duration_s, rate_hz, out)
    # serve-ab's controller too, at the same time: what the app's reports cost it.
    controller = processes.get("Controller")
    controller_out = out_dir / f"{app}.controller.collapsed.txt"
    controller_spy = _py_spy(controller, duration_s, rate_hz, controller_out) if controller else None
    proxy = processes.get("(Serve's proxy)")
    proxy_out = out_dir / f"{app}.proxy.collapsed.txt"
    proxy_spy = _py_spy(proxy, duration_s, rate_hz, proxy_out) if proxy else None
    time.sleep(0.5)  # py-spy attaches
    served = load.run(url, bodies, concurrency, duration_s, 0.0)["completed"]
    for process, path in ((spy, out), (controller_spy, controller_out), (proxy_spy, proxy_out)):
        if process is None:
            continue
        _, err = process.communicate(timeout=duration_s + 60)
        if process.returncode != 0 or not path.is_file():
            raise RuntimeError(f"py-spy failed ({process.returncode}): {err.strip()[-500:]}")
    samples, parts, tops = summarize(read_collapsed(out))
    profile = Profile(app, samples, parts, tops, cpu.throughput_rps,
                      str(out.relative_to(REPO)) if out.is_relative_to(REPO) else str(out), cpu.cpu_ms_per_request,
                      cpu.idle_cpu_ms_per_s)
    if proxy_spy is not None and served:
        profile.proxy_samples_per_request, profile.proxy_top_per_request = per_request(
            read_collapsed(proxy_out), served)
    return profile


def per_request(stacks: list[tuple[list[str], int]], served: int,
                top: int = 15) -> tuple[float, list[tuple[str, float]]]:
    """Busy samples per request served, and the functions with the most samples of their
    own, in samples per request: figures that compare between apps for a process that
    serves them all (a share of its samples would not)."""
    total = sum(count for _, count in stacks)
    own: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        own[_function(frames[-1])] += count
    return round(total / served, 3), [(name, round(n / served, 3)) for name, n in own.most_common(top)]


def _function(frame: str) -> str:
    """A frame's function and file, one entry per function: "f (path/to/file.py:12)" -> "f (file.py)"."""
    func, _, where = frame.partition(" (")
    return f"{func} ({Path(where.rstrip(')').rsplit(':', 1)[0]).name})"


def _py_spy(pid: int, duration_s: float, rate_hz: int, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record",
         "--pid", str(pid), "--duration", str(int(duration_s)), "--rate", str(rate_hz),
         "--format", "raw", "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", nargs="+", choices=list(INGRESS), default=["plain", "colocated"])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of sampling per app")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--cpu-rounds", type=int, default=4, help="rounds of the CPU measurement")
    parser.add_argument("--cpu-slice", type=float, default=3.0,
                        help="seconds each app is loaded per round of the CPU measurement (idle: half)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "profiles",
                        help="where the collapsed stacks go")
    return parser.parse_args(argv)


def run(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    args.out.mkdir(parents=True, exist_ok=True)
    bodies, _ = request_bodies()
    profiles = []
    with deployed(run_targets([BY_APP[a] for a in args.apps])):
        load = HttpLoad()
        try:
            apps = list(dict.fromkeys(args.apps))
            log(f"CPU per process: {args.cpu_rounds} rounds, each app {args.cpu_slice:g} s idle and "
                f"{args.cpu_slice:g} s loaded per round, taking turns")
            cpu = measure_cpu(cluster, apps, load, bodies, args.concurrency, args.cpu_rounds, args.cpu_slice)
            for app in apps:
                log(f"profiling {app}: concurrency {args.concurrency}, {args.duration:g} s")
                profiles.append(profile_app(cluster, app, load, bodies, args.concurrency, args.duration,
                                            args.rate, args.out, cpu[app]))
        finally:
            load.close()
    for p in profiles:
        print(f"\n{p.app}: {p.samples} busy samples, {p.throughput_rps} req/s (CPU measurement); stacks in {p.path}",
              file=sys.stderr)
        for name, pct in sorted(p.parts_pct.items(), key=lambda kv: -kv[1]):
            print(f"  {pct:5.1f} %  {name}", file=sys.stderr)
        print(f"  CPU per request, all of the app's processes and the proxy: {sum(p.cpu_ms_per_request.values()):.2f} ms",
              file=sys.stderr)
        print("  CPU per request: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in p.cpu_ms_per_request.items())
              + " (unprofiled, apps taking turns)", file=sys.stderr)
        print("  CPU while idle, per second: " + ", ".join(f"{name} {ms:.1f} ms"
                                                          for name, ms in p.idle_cpu_ms_per_s.items()),
              file=sys.stderr)
        print("  most samples of their own:", file=sys.stderr)
        for name, pct in p.top_self:
            print(f"  {pct:5.1f} %  {name}", file=sys.stderr)
        if p.proxy_top_per_request:
            print(f"  Serve's proxy meanwhile: {p.proxy_samples_per_request:.3f} busy samples a request; "
                  "most of their own, samples a request:", file=sys.stderr)
            for name, samples in p.proxy_top_per_request:
                print(f"  {samples:6.3f}  {name}", file=sys.stderr)
    return {"bench": "profile_router", "concurrency": args.concurrency, "duration_s": args.duration,
            "profiles": [p.__dict__ for p in profiles]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_standalone(run, args, "v1/model.onnx", "v3/model.onnx", num_cpus=8)


if __name__ == "__main__":
    sys.exit(main())
