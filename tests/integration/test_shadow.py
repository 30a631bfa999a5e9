"""Shadow traffic on a real Ray Serve: copies of live requests go to a version whose answers
are compared with the live ones and never returned; its failures never reach a client."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np

from benchmarks.common import replica_pids
from tests.integration.conftest import experiment
from tests.support.loadgen import LoadGenerator
from tests.support.polling import wait_for


def samples(model_repo):
    data = json.loads((model_repo / "digits/samples.json").read_text())
    return data["inputs"], data["labels"]


def stats_of(http, serve_instance, app):
    return http.get(serve_instance.url(f"/{app}/experiment/stats")).json()


def test_shadow_answers_are_compared_and_never_returned(http, serve_instance, deployed, model_repo, tmp_path):
    cfg = experiment(model_repo, weights={"v1": 100}, shadow={"version": "v2", "percent": 100})
    cfg["controller"] = {"state_path": str(tmp_path / "state.sqlite")}
    app = deployed(cfg, "shadow")
    inputs, _ = samples(model_repo)
    served_by = []
    live_classes = []
    for i in range(120):
        response = http.post(serve_instance.url(f"/{app}/predict"),
                             json={"user_id": f"u{i}", "inputs": [inputs[i % len(inputs)]]})
        assert response.status_code == 200, response.text
        served_by.append(response.json()["version"])
        live_classes.append(int(np.argmax(response.json()["outputs"][0])))
    assert set(served_by) == {"v1"}  # the shadow's answer is never the client's
    stats = wait_for(lambda: (s := stats_of(http, serve_instance, app))["shadow"]["pairs"] >= 120 and s,
                     "every copy compared")
    shadow = stats["shadow"]
    # v2 is mirrored, not served: its A/B figures stay empty.
    assert stats["versions"]["v1"]["requests"] == 120 and stats["versions"]["v2"]["requests"] == 0
    assert shadow["mirrored"] == 120 and shadow["errors"] == 0
    # The confusion matrix's live marginal is exactly what the clients were told.
    live_marginal = {}
    for live_class, _, n in shadow["confusion"]:
        live_marginal[live_class] = live_marginal.get(live_class, 0) + n
    assert live_marginal == {c: live_classes.count(c) for c in set(live_classes)}
    agreement = shadow["agree"] / shadow["pairs"]
    print(f"\nshadow v2 of v1: {shadow['pairs']} pairs, agreement {agreement:.3f}")
    # Two digits classifiers of ~98% accuracy agree on nearly every sample.
    assert agreement >= 0.9


def test_a_dead_shadow_is_invisible_to_clients(http, serve_instance, deployed, model_repo, tmp_path):
    """The shadow's only replica is SIGKILLed under load: clients see no failure, and the
    copies that were lost are counted as the shadow's errors."""
    cfg = experiment(model_repo, placement="isolated", weights={"v1": 100},
                     shadow={"version": "v2", "percent": 100})
    for version in cfg["versions"]:
        version["deployment"] = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}}
    cfg["controller"] = {"state_path": str(tmp_path / "state.sqlite")}
    app = deployed(cfg, "shadowdead")
    with LoadGenerator(serve_instance.url(f"/{app}"), tmp_path / "load.jsonl",
                       concurrency=3, rate_per_worker_hz=30, users=200) as load:
        wait_for(lambda: stats_of(http, serve_instance, app)["shadow"]["pairs"] >= 20, "copies compared")
        (pid,) = replica_pids(app, "version-v2")
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        wait_for(lambda: stats_of(http, serve_instance, app)["shadow"]["errors"] > 0,
                 "the lost copies counted as the shadow's errors")
        load.wait_until(lambda records: sum(r["t_send"] > killed_at for r in records) >= 60, timeout_s=60)
    summary = load.summary
    stats = stats_of(http, serve_instance, app)
    print(f"\nshadow killed: {summary.total} client requests, {summary.failed} failed; shadow "
          f"{stats['shadow']['mirrored']} copies, {stats['shadow']['errors']} lost "
          f"({stats['shadow']['errors_by_kind']})")
    assert summary.failed == 0, summary.failures
    assert set(summary.by_version) == {"v1"}
