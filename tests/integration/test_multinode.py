"""Isolated placement on a two-node cluster: each version's replicas land on the node that
holds the accelerator it asks for, and traffic still splits as configured.

Two custom resources stand in for accelerators: the head node has ``accel_a``, the second
node ``accel_b``; v1 asks for ``accel_a``, v2 for ``accel_b``. The nodes are simulated with
``ray.cluster_utils.Cluster`` (two raylets on this machine), which needs a Ray of its own:
the scenario runs in a subprocess with its own ``RAY_TMPDIR``, so the session's shared Ray
(tests/integration/conftest.py), whether started before this module or after it, never
sees it, and killing that subprocess's process group leaves nothing of it behind.

    python -m tests.integration.test_multinode --models models --out /tmp/multinode.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.support import own_ray
from tests.integration.conftest import free_port

APP = "multinode"
SALT = "multinode-it"
USERS = 400
SCENARIO_TIMEOUT_S = 300
DIGIT_ROW = [float(i % 16) for i in range(64)]


def experiment(models: Path, v1_resources: dict, v2_resources: dict) -> dict:
    def version(name: str, file: str, backend: str, resources: dict) -> dict:
        return {"name": name, "path": str(models / "digits" / name / file), "backend": backend,
                "deployment": {"num_replicas": 2, "max_ongoing_requests": 64,
                               "ray_actor_options": {"num_cpus": 0.1, "resources": resources}}}

    return {
        "model": "digits",
        "placement": "isolated",
        "versions": [version("v1", "model.onnx", "onnx", v1_resources),
                     version("v2", "model.pt2", "torch", v2_resources)],
        "weights": {"v1": 50, "v2": 50},
        "assignment": {"key": "json", "field": "user_id", "salt": SALT},
        "router": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}},
        "controller": {"state_path": str(Path(tempfile.gettempdir()) / f"{APP}-{os.getpid()}.sqlite")},
    }


# -- the scenario, in its own process and its own Ray ---------------------------------------


def scenario(models: Path) -> dict:
    """Start the cluster, deploy, send traffic; return what was seen. Always shuts down."""
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    from serve_ab import ConfigError, build_app

    facts: dict = {}
    # Two logical CPUs per node: the replicas reserve 0.1 each; the machine has 2 cores.
    # The dashboard serves list_actors; its ports are picked free, as other Rays may share
    # this machine (the second node's agent port is left to Ray by Cluster itself).
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {"accel_a": 1},
        "include_dashboard": True, "dashboard_port": free_port(), "dashboard_agent_listen_port": None,
    })
    try:
        cluster.add_node(num_cpus=2, resources={"accel_b": 1})
        cluster.wait_for_nodes()
        cluster.connect()
        facts["nodes"] = {node["NodeID"]: sorted(k for k in node["Resources"] if k.startswith("accel_"))
                          for node in ray.nodes() if node["Alive"]}

        # What no node can give is refused before anything deploys, never waited for.
        for name, v1_resources in (("missing", {"accel_c": 1}), ("split", {"accel_a": 1, "accel_b": 1})):
            try:
                build_app(experiment(models, v1_resources, {"accel_b": 0.5}))
                facts[f"refusal_{name}"] = None
            except ConfigError as err:
                facts[f"refusal_{name}"] = str(err)

        # Both nodes are this machine: one HTTP proxy, on the head, or they would share a port.
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": free_port()})
        started = time.monotonic()
        serve.run(build_app(experiment(models, {"accel_a": 0.5}, {"accel_b": 0.5})),
                  name=APP, route_prefix=f"/{APP}")
        facts["deploy_s"] = time.monotonic() - started

        replicas = list_actors(filters=[("state", "=", "ALIVE")], limit=1000, raise_on_missing_output=False)
        facts["replica_nodes"] = {
            version: sorted(a.node_id for a in replicas if a.class_name == f"ServeReplica:{APP}:version-{version}")
            for version in ("v1", "v2")
        }

        handle = serve.get_app_handle(APP)
        responses = [handle.predict.remote([DIGIT_ROW], key=f"mn-user-{i}") for i in range(USERS)]
        facts["served"] = {f"mn-user-{i}": r.result(timeout_s=60)["version"] for i, r in enumerate(responses)}
        return facts
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.integration.test_multinode")
    parser.add_argument("--models", type=Path, required=True, help="the models/ directory")
    parser.add_argument("--out", type=Path, required=True, help="JSON file of what was seen")
    args = parser.parse_args(argv)
    args.out.write_text(json.dumps(scenario(args.models.resolve())))
    return 0


# -- the test ------------------------------------------------------------------------------


def run_scenario(models: Path, tmp_path: Path) -> dict:
    return own_ray.run_scenario("tests.integration.test_multinode", ["--models", str(models)], tmp_path,
                                timeout_s=SCENARIO_TIMEOUT_S, name="multinode")


def test_each_version_runs_on_the_node_with_its_accelerator_and_traffic_splits(model_repo, tmp_path):
    from serve_ab.routing import Assigner

    facts = run_scenario(model_repo, tmp_path)
    nodes = facts["nodes"]
    assert sorted(nodes.values()) == [["accel_a"], ["accel_b"]], nodes
    node_a = next(n for n, accels in nodes.items() if accels == ["accel_a"])
    node_b = next(n for n, accels in nodes.items() if accels == ["accel_b"])

    replica_nodes = facts["replica_nodes"]
    print(f"\nmulti-node: deployed in {facts['deploy_s']:.1f} s; v1 replicas on "
          f"{[n[:8] for n in replica_nodes['v1']]}, v2 replicas on {[n[:8] for n in replica_nodes['v2']]} "
          f"(accel_a node {node_a[:8]}, accel_b node {node_b[:8]})")
    assert replica_nodes["v1"] == [node_a, node_a], replica_nodes
    assert replica_nodes["v2"] == [node_b, node_b], replica_nodes

    served = facts["served"]
    counts = Counter(served.values())
    print(f"multi-node split over {len(served)} users: {dict(counts)}")
    # Every user got the version its key hashes to, as on one node, and the shares are near
    # 50/50 (400 users: 200 +- 40 is four standard deviations).
    expected = Assigner({"v1": 50, "v2": 50}, SALT)
    assert {user: expected.assign(user) for user in served} == served
    assert len(served) == USERS and 160 <= counts["v1"] <= 240, counts

    missing, split = facts["refusal_missing"], facts["refusal_split"]
    assert missing is not None and "versions.0.deployment.ray_actor_options.resources.accel_c" in missing
    assert "no node has it" in missing and "accel_a (1), accel_b (1)" in missing, missing
    assert split is not None and "no single node has all of them" in split, split


if __name__ == "__main__":
    sys.exit(main())
