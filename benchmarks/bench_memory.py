"""Resident memory per replica: two versions colocated vs the same two versions isolated.

    python -m benchmarks.bench_memory --quick   # about 1 minute; one JSON line last
    python -m benchmarks.bench_memory           # the same, more requests and samples

One Ray instance (its own, or run_all's; Serve on a free port, never 8000) runs, side by side:

    colocated  serve-ab, placement colocated: ONE router replica holding v1 (ONNX) and
               v2 (torch, model.pt2) in its own process
    isolated   serve-ab, placement isolated: a router replica plus one replica of
               version-v1 and one of version-v2, each a process of its own
    bare       a Serve deployment that does nothing (the cost of a replica process alone)

After a few requests to each app (so both versions have answered), the replica processes
are found by the titles Ray gives them (``ray::ServeReplica:<app>:<deployment>``, read
from /proc/<pid>/cmdline) and their memory is read from /proc: **RSS** (VmRSS in
/proc/<pid>/status: counts shared pages, e.g. libraries, in every process that maps them),
**PSS** and **USS** (/proc/<pid>/smaps_rollup: proportional share, and private pages only).
Reported per replica, summed per placement, and the ratio isolated / colocated. Serve's
controller and proxy are the same for both placements and are left out; so is serve-ab's
own controller (one ``Controller`` replica in every app), which is read and shown beside
the totals, not in them.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ray import serve

from benchmarks.cluster import Cluster, deployed, run_standalone
from benchmarks.common import (
    MODELS,
    digits_experiment,
    load_now,
    log,
    other_ray_instances,
    replica_pids,
    report_header,
    version,
)

ROUTER_OPTIONS: dict[str, Any] = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25},
                                  "max_ongoing_requests": 64}
CONTROLLER = "Controller"  # serve-ab's controller deployment, one replica in every app
VERSION_OPTIONS: dict[str, Any] = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25},
                                   "max_ongoing_requests": 64}


def experiment(placement: str) -> dict[str, Any]:
    return digits_experiment([version("v1"), version("v2", "torch")], {"v1": 50, "v2": 50}, "memory",
                             ROUTER_OPTIONS, placement,
                             VERSION_OPTIONS if placement == "isolated" else None)


# -- /proc ---------------------------------------------------------------------------------


def memory_mib(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            out["rss_mib"] = int(line.split()[1]) / 1024
    try:
        fields = {}
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1])
        out["pss_mib"] = fields["Pss"] / 1024
        out["uss_mib"] = (fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)) / 1024
    except (OSError, KeyError):
        pass
    return out


def sample(layout: dict[str, list[str]], samples: int, every_s: float) -> dict[str, dict[str, Any]]:
    """Median over ``samples`` readings of every replica's memory, by "<app>:<deployment>"."""
    readings: dict[str, list[dict[str, float]]] = {}
    pids: dict[str, int] = {}
    for i in range(samples):
        if i:
            time.sleep(every_s)
        for app, deployments in layout.items():
            for deployment in deployments:
                found = replica_pids(app, deployment)
                if len(found) != 1:
                    raise RuntimeError(f"expected one process titled ray::ServeReplica:{app}:{deployment}, "
                                       f"found {found}")
                key = f"{app}:{deployment}"
                pids[key] = found[0]
                readings.setdefault(key, []).append(memory_mib(found[0]))
    result = {}
    for key, rows in readings.items():
        result[key] = {"pid": pids[key]}
        for field in rows[0]:
            result[key][field] = round(statistics.median(r[field] for r in rows), 1)
    return result


# -- the run -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer warm-up requests and samples")
    return parser.parse_args(argv)


def run(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    requests_per_app = 20 if args.quick else 200
    samples = 3 if args.quick else 10

    import httpx

    from serve_ab import build_app

    started = time.perf_counter()
    suffix = secrets.token_hex(3)  # other Ray instances on a shared machine may run apps too
    colocated, isolated, bare = f"memcol{suffix}", f"memiso{suffix}", f"membare{suffix}"
    report = report_header("memory", args.quick, dated=False)

    @serve.deployment(name="Bare", **ROUTER_OPTIONS)
    class Bare:  # defined here, so that it is pickled by value, not imported by the replica
        async def __call__(self, request) -> dict:
            return {"ok": True}

    rows = json.loads((MODELS / "samples.json").read_text())["inputs"]
    log("deploying colocated (1 router: v1 onnx + v2 torch), isolated (router + 2 versions), bare")
    with deployed([
        serve.RunTarget(build_app(experiment("colocated")), name=colocated, route_prefix=f"/{colocated}"),
        serve.RunTarget(build_app(experiment("isolated")), name=isolated, route_prefix=f"/{isolated}"),
        serve.RunTarget(Bare.bind(), name=bare, route_prefix=f"/{bare}"),
    ]):
        served: dict[str, dict[str, int]] = {}
        with httpx.Client(timeout=30.0) as client:
            for app in (colocated, isolated):
                by_version: dict[str, int] = {}
                for i in range(requests_per_app):
                    response = client.post(f"{cluster.base_url}/{app}/predict",
                                           json={"inputs": [rows[i % len(rows)]], "user_id": f"u{i}"})
                    response.raise_for_status()
                    version = response.headers.get("x-model-version", "?")
                    by_version[version] = by_version.get(version, 0) + 1
                served[app] = by_version
            client.post(f"{cluster.base_url}/{bare}").raise_for_status()
        log(f"served: {served}")
        time.sleep(1.0)
        layout = {colocated: ["Router", CONTROLLER], isolated: ["Router", "version-v1", "version-v2", CONTROLLER],
                  bare: ["Bare"]}
        measured = sample(layout, samples, 0.5)
        report["other_ray_instances"] = other_ray_instances()

    def placement(app: str, name: str) -> dict[str, Any]:
        replicas = {key.split(":", 1)[1]: value for key, value in measured.items() if key.startswith(app + ":")}
        controller = replicas.pop(CONTROLLER, None)
        total = {f: round(sum(r[f] for r in replicas.values()), 1)
                 for f in ("rss_mib", "pss_mib", "uss_mib") if all(f in r for r in replicas.values())}
        return {"placement": name, "replicas": replicas, "total": total, "controller": controller}

    col, iso, nothing = placement(colocated, "colocated"), placement(isolated, "isolated"), placement(bare, "bare")
    ratio = {f: round(iso["total"][f] / col["total"][f], 2) for f in col["total"] if f in iso["total"]}
    report.update({
        "versions": {"v1": "ONNX MLP 64-64-10 (onnxruntime)", "v2": "torch export (model.pt2)"},
        "served": served,
        "colocated": col,
        "isolated": iso,
        "bare_replica": nothing["replicas"].get("Bare"),
        "ratio_isolated_over_colocated": ratio,
        "samples": samples,
        "load_after": load_now(),
        "wall_s": round(time.perf_counter() - started, 1),
    })

    print("\nResident memory per replica (MiB, median of "
          f"{samples} readings): RSS / PSS / USS")
    for p in (col, iso):
        for deployment, r in p["replicas"].items():
            print(f"  {p['placement']:<10} {deployment:<12} {r.get('rss_mib', 0):8.1f} "
                  f"{r.get('pss_mib', 0):8.1f} {r.get('uss_mib', 0):8.1f}")
        t = p["total"]
        print(f"  {p['placement']:<10} {'TOTAL':<12} {t.get('rss_mib', 0):8.1f} "
              f"{t.get('pss_mib', 0):8.1f} {t.get('uss_mib', 0):8.1f}")
        c = p["controller"] or {}
        print(f"  {p['placement']:<10} {CONTROLLER:<12} {c.get('rss_mib', 0):8.1f} "
              f"{c.get('pss_mib', 0):8.1f} {c.get('uss_mib', 0):8.1f}   (one in every app; not in TOTAL)")
    b = report["bare_replica"] or {}
    print(f"  {'bare':<10} {'Bare':<12} {b.get('rss_mib', 0):8.1f} {b.get('pss_mib', 0):8.1f} "
          f"{b.get('uss_mib', 0):8.1f}   (a replica that does nothing)")
    print("isolated / colocated: " + ", ".join(f"{k[:-4].upper()} {v:.2f}x" for k, v in ratio.items()))
    print(f"load average before {report['load_before']}, after {report['load_after']}; "
          f"wall {report['wall_s']:.0f} s")
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_standalone(run, args, "v1/model.onnx", "v2/model.pt2")


if __name__ == "__main__":
    sys.exit(main())
