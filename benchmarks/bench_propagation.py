"""Rollback propagation: from the decision to the last request routed to the bad version.

    python -m benchmarks.bench_propagation            # about 1 minute; one JSON line last
    python -m benchmarks.bench_propagation --rounds 3 --concurrency 4

One canary app (colocated: v1 stable and v3 candidate, both ONNX) with two router
replicas holds at 50 % (steps ``[{set_weight: 50}, {pause: {}}]``). A load process keeps
N keep-alive connections busy (closed loop) with user ids that the assignment sends to
v3 at 50 %, so while the canary runs every request is answered by v3, and Ray Serve's
proxy spreads them over both router replicas. Each round:

1. ``POST /rollout/weights`` 50/50, then wait until v3 answers again and hold ``--hold`` s;
2. at t0, ``POST /rollout/weights`` 100/0 (the decision; the last round uses
   ``POST /rollout/abort`` instead, which is terminal), and the call returns at t_ack;
3. keep the load on for ``--observe`` s.

Both decisions take the same path: the controller bumps its epoch and wakes the routers'
long polls (``RolloutController.wait_for_update``). In production the decision comes from
a gate inside the controller, so the HTTP call's own way in (proxy -> router -> controller)
is part of what is measured from t0; figures from t_ack leave it out.

Per round: **propagation** = the last send time of a request answered by v3, minus t0
(after it, no new request was routed to v3), and the same from t_ack; the last v3 answer;
the **resolution** (median gap between two sends, all connections merged). Per router
replica, from Ray Serve's replica logs (request ids are set by the client, so each
request is matched to the replica that served it): its last v3 send and the time it
logged the new weights (millisecond timestamps), which is when it really switched: a
request is routed when it reaches a replica, after its way through the proxy, so the
last v3 send precedes the switch by that delay. A round counts only if every request
sent in the last half of the hold went to v3.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.cluster import Cluster, deployed, run_standalone
from benchmarks.common import (
    MODELS,
    digits_experiment,
    load_now,
    log,
    machine_shared,
    other_ray_instances,
    report_header,
    spread,
    version,
)
from benchmarks.loadgen import HttpLoad, Record

APP = "propagation"
SALT = "propagation"
ROUTER_REPLICAS = 2
HALF = {"v1": 50.0, "v3": 50.0}
ALL_STABLE = {"v1": 100.0, "v3": 0.0}
REQUEST_ID_PREFIX = "pb"
# "INFO 2026-11-28 07:24:42,455 propagation_Router nju9r53e <request id> -- message"
LOG_LINE = re.compile(
    r"^\w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ (\S+) (?:(\S+) )?-- (.*)$"
)


# -- the load process ----------------------------------------------------------------------


def v3_bodies(count: int = 256) -> list[str]:
    """Bodies whose user ids the 50/50 assignment sends to v3: all v3 while the canary runs."""
    from serve_ab.routing import Assigner

    assigner = Assigner(HALF, SALT)
    rows = json.loads((MODELS / "samples.json").read_text())["inputs"]
    bodies: list[str] = []
    i = 0
    while len(bodies) < count:
        user = f"user-{i}"
        if assigner.assign(user) == "v3":
            bodies.append(json.dumps({"inputs": [rows[i % len(rows)]], "user_id": user}))
        i += 1
    return bodies


# -- the app -------------------------------------------------------------------------------


def experiment(state_path: Path) -> dict[str, Any]:
    return digits_experiment(
        [version("v1"), version("v3")], {"v1": 100}, SALT,
        {"num_replicas": ROUTER_REPLICAS, "ray_actor_options": {"num_cpus": 0.25},
         "max_ongoing_requests": 256},
        rollout={
            "strategy": "canary", "stable": "v1", "candidate": "v3",
            "steps": [{"set_weight": 50}, {"pause": {}}],
            # No gates: the decision is ours. v3 stays loaded after the abort round.
            "retire_after_s": 600,
        },
        controller={"state_path": str(state_path), "tick_s": 0.25},
    )


@dataclass
class Round:
    index: int
    decision: str          # "weights 100/0" or "abort"
    t_restore: float       # monotonic: the 50/50 call was sent
    t_hold: float          # v3 answered again; the hold began
    t0: float              # the decision call was sent
    t_ack: float           # it returned
    t0_wall: float         # t0 on time.time(), to compare with the replica logs
    t_end: float = 0.0     # the next round's restore, or the end of the load


class Control:
    def __init__(self, base_url: str, token: str):
        import httpx

        self.base_url = base_url
        self.client = httpx.Client(timeout=30.0, headers={"authorization": f"Bearer {token}"})

    def act(self, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.client.post(f"{self.base_url}/rollout/{action}", json=body or {})
        if response.status_code != 200:
            raise RuntimeError(f"POST /rollout/{action} answered {response.status_code}: {response.text[:300]}")
        return response.json()

    def status(self) -> dict[str, Any]:
        return self.client.get(f"{self.base_url}/rollout/status").json()

    def served_by(self, body: str) -> str:
        response = self.client.post(f"{self.base_url}/predict", content=body,
                                    headers={"content-type": "application/json"})
        return response.headers.get("x-model-version", f"http {response.status_code}")

    def close(self) -> None:
        self.client.close()


def wait_until(predicate, what: str, timeout_s: float = 120.0, every_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


def run_rounds(control: Control, probe_body: str, rounds: int, abort_last: bool, hold_s: float,
               observe_s: float) -> list[Round]:
    done: list[Round] = []
    for index in range(rounds):
        abort = abort_last and index == rounds - 1
        t_restore = time.monotonic()
        control.act("weights", {"weights": HALF})
        wait_until(lambda: control.served_by(probe_body) == "v3", "v3 to answer again", 30.0)
        t_hold = time.monotonic()
        time.sleep(hold_s)
        t0_wall, t0 = time.time(), time.monotonic()
        if abort:
            control.act("abort", {"reason": "bench_propagation: the breach"})
        else:
            control.act("weights", {"weights": ALL_STABLE})
        t_ack = time.monotonic()
        if done:
            done[-1].t_end = t_restore
        done.append(Round(index, "abort" if abort else "weights 100/0", t_restore, t_hold, t0, t_ack, t0_wall))
        time.sleep(observe_s)
        log(f"round {index + 1}/{rounds} ({done[-1].decision}) done")
    done[-1].t_end = time.monotonic()
    return done


# -- the replica logs ----------------------------------------------------------------------


def _log_time(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, as logged


def read_replica_logs(session_dir: Path) -> tuple[dict[str, str], dict[str, list[tuple[float, dict]]]]:
    """Which replica served each of our request ids, and when each replica applied new
    weights (time.time() seconds, millisecond resolution, the replica's own log line)."""
    served_by: dict[str, str] = {}
    applied: dict[str, list[tuple[float, dict]]] = defaultdict(list)
    for path in sorted((session_dir / "logs" / "serve").glob(f"replica_{APP}_Router_*.log")):
        for line in path.read_text(errors="replace").splitlines():
            match = LOG_LINE.match(line)
            if not match:
                continue
            when, replica, request_id, message = match.groups()
            if request_id and request_id.startswith(REQUEST_ID_PREFIX + "-") and "/predict" in message:
                served_by[request_id] = replica
            elif message.startswith("serve-ab router: weights now "):
                weights = json.loads(message.rsplit("now ", 1)[1].replace("'", '"'))
                applied[replica].append((_log_time(when), weights))
    return served_by, dict(applied)


# -- summarising ---------------------------------------------------------------------------


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 1)


def _median_gap_ms(t_sends: list[float]) -> float | None:
    t_sends = sorted(t_sends)
    gaps = [b - a for a, b in itertools.pairwise(t_sends)]
    return round(statistics.median(gaps) * 1e3, 2) if gaps else None


def summarize_round(r: Round, records: list[Record], served_by: dict[str, str],
                    applied: dict[str, list[tuple[float, dict]]], observe_s: float) -> dict[str, Any]:
    # Answered before the next round's restore was sent: a request still in flight then may
    # reach a router after the restore, and its v3 answer belongs to the next round.
    held = [x for x in records if r.t_hold <= x[1] and x[2] < r.t_end]
    hold = [x for x in held if x[1] < r.t0]
    # The probe saw v3 on one replica; the other may take a few ms more, so only the last
    # half of the hold must be all v3.
    late_hold = [x for x in hold if x[1] >= r.t0 - (r.t0 - r.t_hold) / 2]
    after = [x for x in held if r.t0 <= x[1] < r.t0 + observe_s]
    v3 = [x for x in held if x[3] == "v3"]
    last_v3_send = max((x[1] for x in v3), default=None)
    last_v3_done = max((x[2] for x in v3), default=None)
    first_v1_send = min((x[1] for x in held if x[3] == "v1" and x[1] >= r.t0), default=None)
    window = [x for x in held if r.t0 - 1.0 <= x[1] < r.t0 + 1.0]
    latencies_ms = sorted((x[2] - x[1]) * 1e3 for x in hold if x[3] in HALF)
    replicas: dict[str, dict[str, Any]] = {}
    for replica in sorted(applied):
        mine = [x for x in held if served_by.get(x[0]) == replica]
        mine_v3 = [x[1] for x in mine if x[3] == "v3"]
        # The replica's own log line for the decision's weights, after t0.
        switched = [t for t, w in applied[replica]
                    if w.get("v3") == 0.0 and r.t0_wall - 0.002 <= t <= r.t0_wall + (r.t_end - r.t0)]
        replicas[replica] = {
            "requests": len(mine),
            "last_v3_send_ms": _ms(max(mine_v3) - r.t0) if mine_v3 else None,
            "logged_switch_ms": _ms(min(switched) - r.t0_wall) if switched else None,
            "gap_ms": _median_gap_ms([x[1] for x in mine if r.t0 - 1.0 <= x[1] < r.t0 + 1.0]),
        }
    switches = [rep["logged_switch_ms"] for rep in replicas.values()]
    return {
        "round": r.index + 1,
        "decision": r.decision,
        "settled": bool(late_hold) and all(x[3] == "v3" for x in late_hold),
        "v1_in_hold": sum(1 for x in hold if x[3] == "v1"),
        "requests": len(held),
        "rps": round(len(window) / 2.0, 1),
        "errors": sum(1 for x in held if x[3] not in HALF),
        "gap_ms": _median_gap_ms([x[1] for x in window]),
        "p50_ms": round(statistics.median(latencies_ms), 2) if latencies_ms else None,
        "ack_ms": _ms(r.t_ack - r.t0),
        "propagation_ms": _ms(last_v3_send - r.t0) if last_v3_send is not None else None,
        "propagation_from_ack_ms": _ms(last_v3_send - r.t_ack) if last_v3_send is not None else None,
        "last_v3_done_ms": _ms(last_v3_done - r.t0) if last_v3_done is not None else None,
        "first_v1_send_ms": _ms(first_v1_send - r.t0) if first_v1_send is not None else None,
        "v3_sent_after_t0": sum(1 for x in after if x[3] == "v3"),
        "v3_sent_after_ack": sum(1 for x in after if x[3] == "v3" and x[1] >= r.t_ack),
        "last_replica_switch_ms": max(switches) if switches and None not in switches else None,
        "replicas": replicas,
    }


def _spread(values: list[float | None]) -> dict[str, float] | None:
    """:func:`spread` over the rounds that have the figure, the median to 0.1 ms."""
    present = [v for v in values if v is not None]
    return dict(s, median=round(s["median"], 1)) if (s := present and spread(present)) else None


def _cell(value: Any) -> str:
    return "-" if value is None else (f"{value:+.1f}" if isinstance(value, float) else str(value))


def table(rows: list[dict[str, Any]]) -> list[str]:
    replicas = sorted({name for row in rows for name in row["replicas"]})
    header = ["round", "decision", "ok", "req", "req/s", "gap ms", "p50 ms", "ack ms",
              "last v3 send", "from ack", "last v3 done", "first v1", "v3 after t0/ack"]
    header += [f"{name}: switch log / last v3 / req" for name in replicas]
    lines = []
    for row in rows:
        cells = [str(row["round"]), row["decision"], "yes" if row["settled"] else "NO",
                 str(row["requests"]), f"{row['rps']:.0f}", _cell(row["gap_ms"]).lstrip("+"),
                 _cell(row["p50_ms"]).lstrip("+"), _cell(row["ack_ms"]).lstrip("+"),
                 _cell(row["propagation_ms"]), _cell(row["propagation_from_ack_ms"]),
                 _cell(row["last_v3_done_ms"]), _cell(row["first_v1_send_ms"]),
                 f"{row['v3_sent_after_t0']}/{row['v3_sent_after_ack']}"]
        for name in replicas:
            rep = row["replicas"].get(name, {})
            cells.append(f"{_cell(rep.get('logged_switch_ms'))} / {_cell(rep.get('last_v3_send_ms'))}"
                         f" / {rep.get('requests', 0)}")
        lines.append(cells)
    widths = [max(len(x) for x in col) for col in zip(header, *lines)]
    return ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in [header, *lines]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10,
                        help="rounds in all; the last uses abort unless --no-abort (default 10)")
    parser.add_argument("--no-abort", action="store_true",
                        help="every round decides with weights 100/0; no terminal abort")
    parser.add_argument("--concurrency", type=int, default=8, help="keep-alive connections (default 8)")
    parser.add_argument("--hold", type=float, default=1.0, help="seconds at 50/50 before t0 (default 1)")
    parser.add_argument("--observe", type=float, default=1.5, help="seconds of load after t0 (default 1.5)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1; got {args.rounds}")
    return args


def run(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    from ray import serve

    from serve_ab import build_app

    started = time.perf_counter()
    report = report_header("propagation", router_replicas=ROUTER_REPLICAS, concurrency=args.concurrency,
                           decision="POST /rollout/weights {v1: 100, v3: 0}"
                                    + ("; last round POST /rollout/abort" if not args.no_abort else ""))
    bodies = v3_bodies()
    base_url = f"{cluster.base_url}/{APP}"
    with tempfile.TemporaryDirectory(prefix="bench-propagation-") as tmp:
        log(f"deploying {APP}: {ROUTER_REPLICAS} router replicas, v1 + v3 colocated")
        target = serve.RunTarget(build_app(experiment(Path(tmp) / "state.sqlite")), name=APP,
                                 route_prefix=f"/{APP}")
        load: HttpLoad | None = None
        control: Control | None = None
        with deployed([target]):
            try:
                control = Control(base_url, cluster.token)
                wait_until(lambda: control.status()["weights_pct"] == HALF, "the canary to reach 50 %",
                           every_s=0.25)
                others_before = other_ray_instances()
                load = HttpLoad()
                load.start_recording(base_url + "/predict", bodies, args.concurrency,
                                     Path(tmp) / "records.json", REQUEST_ID_PREFIX)
                log(f"load running on {args.concurrency} connections; {args.rounds} rounds")
                rounds = run_rounds(control, bodies[0], args.rounds, not args.no_abort, args.hold,
                                    args.observe)
                records = load.stop_recording()
                report["other_ray_instances"] = max(others_before, other_ray_instances())
                report["final_phase"] = control.status()["phase"]
            finally:
                if load is not None:
                    load.close()
                if control is not None:
                    control.close()
    served_by, applied = read_replica_logs(cluster.session_dir)
    report["load_after"] = load_now()
    report["shared"] = machine_shared(report["other_ray_instances"], report["load_before"])
    report["wall_s"] = round(time.perf_counter() - started, 1)

    rows = [summarize_round(r, records, served_by, applied, args.observe) for r in rounds]
    counted = [row for row in rows if row["settled"]]
    by_weights = [row for row in counted if row["decision"] != "abort"]
    summary = {
        key: _spread([row[key] for row in by_weights])
        for key in ("propagation_ms", "propagation_from_ack_ms", "last_v3_done_ms", "first_v1_send_ms",
                    "ack_ms", "gap_ms", "p50_ms", "requests", "v3_sent_after_t0", "v3_sent_after_ack")
    }
    abort_row = next((row for row in counted if row["decision"] == "abort"), None)
    summary["last_replica_switch_ms"] = _spread([row["last_replica_switch_ms"] for row in by_weights])
    replicas_with_traffic = sorted({name for row in rows for name, rep in row["replicas"].items()
                                    if rep["requests"]})

    print(f"\nRollback propagation, {len(rows)} rounds, {ROUTER_REPLICAS} router replicas, "
          f"{args.concurrency} connections (times in ms from t0, the decision call being sent)")
    print("\n".join(table(rows)))
    unsettled = [row["round"] for row in rows if not row["settled"]]
    if unsettled:
        print(f"rounds {unsettled} left out: a request sent in the last half of the hold went to v1")
    errors = sum(row["errors"] for row in rows)
    if errors:
        print(f"{errors} requests failed")
    p, a = summary["propagation_ms"], summary["propagation_from_ack_ms"]
    if p:
        print(f"\nweights 100/0, {len(by_weights)} rounds: propagation median {p['median']:+.1f} ms, "
              f"max {p['max']:+.1f} ms from t0; {a['median']:+.1f} / {a['max']:+.1f} ms from the ack "
              f"(call {summary['ack_ms']['median']:.1f} ms); resolution {summary['gap_ms']['median']:.2f} ms "
              f"between sends; request p50 {summary['p50_ms']['median']:.1f} ms; "
              f"propagation / request p50 = {p['median'] / summary['p50_ms']['median']:.2f}")
    if summary["last_replica_switch_ms"]:
        s = summary["last_replica_switch_ms"]
        print(f"last replica to log the new weights: median {s['median']:+.1f} ms, max {s['max']:+.1f} ms "
              "after t0 (a request is routed when it reaches a replica, so the last v3 send comes "
              "before the switch by the way in)")
    if abort_row:
        print(f"abort: propagation {_cell(abort_row['propagation_ms'])} ms from t0, "
              f"{_cell(abort_row['propagation_from_ack_ms'])} ms from the ack (call {abort_row['ack_ms']:.1f} ms)")
    print(f"replicas that served traffic: {len(replicas_with_traffic)} of {ROUTER_REPLICAS}; "
          f"final phase {report['final_phase']}")
    print(f"load average before {report['load_before']}, after {report['load_after']}; other Ray "
          f"instances on the machine: {report['other_ray_instances']}; "
          f"{'shared' if report['shared'] else 'not shared'}; wall {report['wall_s']:.0f} s")

    report["rounds"] = rows
    report["summary_weights_rounds"] = summary
    report["abort_round"] = abort_row
    report["replicas_with_traffic"] = len(replicas_with_traffic)
    report["errors"] = errors
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_standalone(run, args, "v1/model.onnx", "v3/model.onnx")


if __name__ == "__main__":
    sys.exit(main())
