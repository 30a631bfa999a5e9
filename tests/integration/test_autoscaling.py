"""Autoscaling on a real Ray Serve, under a steady load from another process.

(a) Isolated placement, canary rollout: each version autoscales on its own; as the
candidate's weight rises its replica count rises and the stable's falls, and after the
promotion the retired stable (``min_replicas: 0``) goes down to zero replicas.
(b) Colocated placement: the router deployment itself scales up under load.

What builds a queue: dynamic batching with a long ``batch_wait_timeout_s``. Each request
waits for its batch without using a CPU, as a request waits for a slow model; on this
2-core machine a model that is really slow would starve Ray itself. With a closed loop of
``LOAD_WORKERS`` clients, about that many requests are always in flight, shared between
the versions by weight, and Ray Serve's autoscaler aims for ``target_ongoing_requests`` per
replica. Ray Serve averages over ``look_back_period_s`` (30 s by default; here 11 s, just
above the 10-s interval at which replicas report their load, which Ray requires), so a
change of load shows in replica counts after ten to twenty seconds. The waits are bounded by
deadlines and the counts seen are printed.
"""

from __future__ import annotations

import time

from ray import serve

from tests.integration.conftest import CONTROL_TOKEN, experiment
from tests.support.loadgen import LoadGenerator

AUTH = {"authorization": f"Bearer {CONTROL_TOKEN}"}
LOAD_WORKERS = 6
WAIT_S = 120
# Requests wait up to this long for their batch: the stand-in for a slow model.
SLOW_BATCHING = {"max_batch_size": 64, "batch_wait_timeout_s": 0.25}


def autoscaling(min_replicas: int, **changes) -> dict:
    return {"min_replicas": min_replicas, "initial_replicas": 1, "max_replicas": 3,
            "target_ongoing_requests": 1, "upscale_delay_s": 1, "downscale_delay_s": 3,
            "look_back_period_s": 11, **changes}


class ReplicaWatch:
    """Running replica counts from ``serve.status()``, kept as a timeline for messages."""

    def __init__(self, app: str, deployments: list[str]):
        self.app, self.deployments = app, deployments
        self.started = time.monotonic()
        self.timeline: list[tuple[float, str, dict[str, int]]] = []

    def counts(self, label: str) -> dict[str, int]:
        status = serve.status().applications[self.app].deployments
        counts = {name: status[name].replica_states.get("RUNNING", 0) for name in self.deployments}
        entry = (round(time.monotonic() - self.started, 1), label, counts)
        if not self.timeline or self.timeline[-1][1:] != entry[1:]:
            self.timeline.append(entry)
        return counts

    def wait_for(self, label: str, predicate, what: str) -> dict[str, int]:
        deadline = time.monotonic() + WAIT_S
        while True:
            counts = self.counts(label)
            if predicate(counts):
                return counts
            assert time.monotonic() < deadline, (
                f"timed out after {WAIT_S} s waiting for {what}; running replicas seen "
                f"(s since deploy, phase, counts):\n" + "\n".join(map(str, self.timeline)))
            time.sleep(0.5)

    def report(self) -> str:
        return "\n".join(f"  {t:6.1f} s  {label:<22} {counts}" for t, label, counts in self.timeline)


def load(serve_instance, name, tmp_path):
    return LoadGenerator(serve_instance.url(f"/{name}"), tmp_path / f"{name}.jsonl",
                         concurrency=LOAD_WORKERS, rate_per_worker_hz=50, users=500)


def test_each_version_scales_with_its_weight_through_a_canary(http, serve_instance, deployed,
                                                              model_repo, tmp_path):
    cfg = experiment(model_repo, placement="isolated", weights={"v1": 100})
    # v1 (min 0) held at its first replica for 20 s idle: else it went to 0 in the ~10 s the app
    # took to come up (downscale_delay_s 3), and the load began with its cold start, which took
    # 19 s in one full run on 2 cores: 12 requests past the load's 10-s timeout.
    holds = ({"downscale_to_zero_delay_s": 20}, {})
    for version, min_replicas, hold in zip(cfg["versions"], (0, 1), holds):
        version["batching"] = SLOW_BATCHING
        version["deployment"] = {"autoscaling_config": autoscaling(min_replicas, **hold),
                                 "ray_actor_options": {"num_cpus": 0.1}}
    cfg["rollout"] = {
        "strategy": "canary", "stable": "v1", "candidate": "v2", "gates": [],
        "steps": [{"pause": {}}, {"set_weight": 80}, {"pause": {}}, {"set_weight": 100}],
        "retire_after_s": 2,
    }
    cfg["controller"] = {"state_path": str(tmp_path / "state.sqlite"), "tick_s": 0.1, "report_interval_s": 0.25}
    deployed(cfg, "autoscale-canary")
    base = serve_instance.url("/autoscale-canary/rollout")
    watch = ReplicaWatch("autoscale-canary", ["version-v1", "version-v2"])

    with load(serve_instance, "autoscale-canary", tmp_path) as loadgen:
        # All of the load on v1: it scales to its max, v2 (no traffic) stays at its min.
        watch.wait_for("v1 100%", lambda c: c["version-v1"] == 3 and c["version-v2"] == 1,
                       "v1 to scale up to 3 replicas at 100% of the traffic")

        response = http.post(base + "/promote", headers=AUTH, json={})
        assert response.status_code == 200, response.text
        assert http.get(base + "/status").json()["weights_pct"] == {"v1": 20.0, "v2": 80.0}
        watch.wait_for("v1 20% / v2 80%", lambda c: c["version-v2"] >= 2 and c["version-v1"] < 3,
                       "v2 to scale up and v1 down at 80% of the traffic on v2")

        response = http.post(base + "/promote", headers=AUTH, json={})
        assert response.status_code == 200, response.text
        status = http.get(base + "/status").json()
        assert status["phase"] == "promoted", status
        watch.wait_for("v2 100%, v1 retired", lambda c: c["version-v1"] == 0 and c["version-v2"] >= 2,
                       "retired v1 to go down to 0 replicas (its min_replicas)")
        # v1's replicas may reach 0 (no traffic) before retire_after_s has passed: wait for both.
        deadline = time.monotonic() + 30
        while "v1" not in http.get(base + "/status").json()["retired"]:
            assert time.monotonic() < deadline, http.get(base + "/status").json()
            time.sleep(0.5)
    print(f"\nisolated canary, running replicas (v1: min 0, v2: min 1; max 3):\n{watch.report()}"
          f"\nload: {loadgen.summary.total} requests, {loadgen.summary.failed} failed, "
          f"by version {dict(loadgen.summary.by_version)}")
    assert loadgen.summary.failed == 0, loadgen.summary.failures
    # Ray Serve cannot remove one deployment from a running app: v1 stays, at 0 replicas,
    # until the config is redeployed without it.
    assert "version-v1" in serve.status().applications["autoscale-canary"].deployments


def test_colocated_router_scales_up_under_load(http, serve_instance, deployed, model_repo, tmp_path):
    cfg = experiment(model_repo)
    for version in cfg["versions"]:
        version["batching"] = SLOW_BATCHING
    cfg["router"] = {"autoscaling_config": autoscaling(1), "ray_actor_options": {"num_cpus": 0.1}}
    cfg["controller"] = {"state_path": str(tmp_path / "state.sqlite")}
    deployed(cfg, "autoscale-router")
    watch = ReplicaWatch("autoscale-router", ["Router"])
    assert watch.counts("idle") == {"Router": 1}
    with load(serve_instance, "autoscale-router", tmp_path) as loadgen:
        watch.wait_for("under load", lambda c: c["Router"] >= 2, "the router to scale up under load")
    print(f"\ncolocated router, running replicas (min 1, max 3):\n{watch.report()}"
          f"\nload: {loadgen.summary.total} requests, {loadgen.summary.failed} failed")
    assert loadgen.summary.failed == 0, loadgen.summary.failures
