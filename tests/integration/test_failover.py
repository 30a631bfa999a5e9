"""The node holding the controller dies: the controller comes back on another node, resumes
the rollout at the same step and weights from Redis, and routers never stop serving.

Three raylets on this machine (``ray.cluster_utils.Cluster``): the head holds Serve's proxy
and the router (custom resource ``head``), and two worker nodes can each hold serve-ab's
controller (custom resource ``ctl``, asked for by ``controller.resources``). State is in a
real ``redis-server`` (``controller.store_url``). A canary is held at its 20% pause; a
client sends requests all along. The worker node that holds the controller is removed
without a graceful stop; Serve restarts the controller on the other worker node, which finds
the rollout in Redis. As tests/integration/test_multinode.py, the scenario runs in a process
(and a Ray) of its own.

    python -m tests.integration.test_failover --models models --redis redis://... --out /tmp/f.json
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

from tests.support import own_ray
from tests.integration.conftest import free_port

APP = "failover"
SCENARIO_TIMEOUT_S = 360
DIGIT_ROW = [float(i % 16) for i in range(64)]


def experiment(models: Path, redis_url: str) -> dict:
    return {
        "model": "digits",
        "versions": [{"name": "v1", "path": str(models / "digits" / "v1" / "model.onnx"), "backend": "onnx"},
                     {"name": "v2", "path": str(models / "digits" / "v2" / "model.pt2"), "backend": "torch"}],
        "weights": {"v1": 100},
        "assignment": {"key": "json", "field": "user_id", "salt": "failover-it"},
        "router": {"num_replicas": 1, "max_ongoing_requests": 64,
                   "ray_actor_options": {"num_cpus": 0.1, "resources": {"head": 0.1}}},
        "controller": {"store_url": redis_url, "tick_s": 0.1, "report_interval_s": 0.25, "num_cpus": 0.05,
                       "resources": {"ctl": 0.5}},
        "control": {"allow_unauthenticated": True},
        "rollout": {
            "strategy": "canary", "stable": "v1", "candidate": "v2",
            "analysis": {"interval_s": 1, "min_samples": 10},
            "gates": [{"metric": "error_rate", "max": 0.5}],
            # Held at 20% (an indefinite pause) until an operator promotes.
            "steps": [{"set_weight": 20}, {"pause": {}}, {"set_weight": 100}],
        },
    }


class SteadyClient:
    """One request after another, counting what failed, until stopped."""

    def __init__(self, url: str):
        self.url = url
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            body = json.dumps({"inputs": [DIGIT_ROW], "user_id": f"user-{i % 500}"}).encode()
            request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    response.read()
                self.ok += 1
            except Exception as err:  # any failure is what the test counts
                self.failed.append(f"{type(err).__name__}: {err}"[:200])
            time.sleep(0.01)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _controller_node(list_actors) -> str | None:
    for actor in list_actors(filters=[("state", "=", "ALIVE")], limit=1000, raise_on_missing_output=False):
        if actor.class_name == f"ServeReplica:{APP}:Controller":
            return actor.node_id
    return None


def scenario(models: Path, redis_url: str) -> dict:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    from serve_ab import build_app

    facts: dict = {}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {"head": 1},
        "include_dashboard": True, "dashboard_port": free_port(), "dashboard_agent_listen_port": None,
    })
    try:
        workers = [cluster.add_node(num_cpus=1, resources={"ctl": 1}) for _ in range(2)]
        cluster.wait_for_nodes()
        cluster.connect()
        port = free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(experiment(models, redis_url)), name=APP, route_prefix=f"/{APP}")
        base = f"http://127.0.0.1:{port}/{APP}"

        client = SteadyClient(f"{base}/predict")
        client.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the 20% step, then its pause
            status = _get(f"{base}/rollout/status")
            if status["step_index"] == 1:
                break
            time.sleep(0.2)
        facts["before"] = {k: status[k] for k in ("phase", "step_index", "weights_pct", "revision", "run_id")}
        deadline = time.monotonic() + 30
        while client.ok < 200 and time.monotonic() < deadline:  # figures merged, some not saved yet
            time.sleep(0.1)

        node_id = _controller_node(list_actors)
        facts["controller_node_before"] = node_id
        victim = next(w for w in workers if w.node_id == node_id)
        requests_before_kill = client.ok
        killed_at = time.monotonic()
        cluster.remove_node(victim, allow_graceful=False)

        deadline = time.monotonic() + 180
        after = None
        while time.monotonic() < deadline:
            moved = _controller_node(list_actors)
            if moved is not None and moved != node_id:
                try:
                    after = _get(f"{base}/rollout/status")
                    break
                except Exception:  # the replica is up but not yet answering
                    pass
            time.sleep(0.5)
        facts["controller_node_after"] = _controller_node(list_actors)
        facts["recovered_s"] = time.monotonic() - killed_at
        facts["after"] = None if after is None else {
            k: after[k] for k in ("phase", "step_index", "weights_pct", "revision", "run_id")}
        time.sleep(3.0)  # routers report to the new controller; the client keeps going
        client.stop()
        facts["requests_ok"], facts["requests_failed"] = client.ok, client.failed
        facts["requests_during_recovery"] = client.ok - requests_before_kill
        facts["routers_reporting"] = _get(f"{base}/rollout/status").get("routers")
        # What the lost controller merged and had not saved, the router sends again
        # (serving/core/ledger.py): every answered request is counted, once.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            facts["requests_counted"] = sum(v["requests"] for v in _get(f"{base}/experiment/stats")["versions"].values())
            if facts["requests_counted"] >= client.ok:
                break
            time.sleep(0.5)
        time.sleep(1.0)  # a report sent again late would show as a request counted twice
        facts["requests_counted"] = sum(v["requests"] for v in _get(f"{base}/experiment/stats")["versions"].values())
        return facts
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.integration.test_failover")
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--redis", required=True, help="redis://host:port/db")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.write_text(json.dumps(scenario(args.models.resolve(), args.redis)))
    return 0


def test_a_lost_node_moves_the_controller_which_resumes_from_redis_while_routers_serve(
        model_repo, redis_server, tmp_path):
    facts = own_ray.run_scenario("tests.integration.test_failover",
                                 ["--models", str(model_repo), "--redis", redis_server.url], tmp_path,
                                 timeout_s=SCENARIO_TIMEOUT_S, name="failover")
    print(f"\nfailover: controller moved {facts['controller_node_before'][:8]} -> "
          f"{(facts['controller_node_after'] or '?')[:8]} in {facts['recovered_s']:.1f} s; "
          f"{facts['requests_ok']} requests answered ({facts['requests_during_recovery']} while it moved), "
          f"{len(facts['requests_failed'])} failed, {facts['requests_counted']} counted")
    before, after = facts["before"], facts["after"]
    assert before["step_index"] == 1 and before["weights_pct"] == {"v1": 80.0, "v2": 20.0}, before
    assert after is not None, "the controller did not come back on the other node"
    assert facts["controller_node_after"] != facts["controller_node_before"]
    # Resumed, not restarted: the same run, step, weights and revision, read from Redis.
    assert (after["run_id"], after["step_index"], after["weights_pct"], after["phase"]) == \
           (before["run_id"], before["step_index"], before["weights_pct"], before["phase"])
    assert after["revision"] >= before["revision"]
    assert facts["requests_failed"] == [], facts["requests_failed"][:5]
    assert facts["requests_during_recovery"] > 0
    assert facts["requests_counted"] == facts["requests_ok"]  # none lost with the node, none twice


if __name__ == "__main__":
    sys.exit(main())
