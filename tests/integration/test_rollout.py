"""Canary rollouts on a real Ray Serve, under a steady load from another process.

Timings are measured and printed (pytest -s shows them), never asserted: the machine is a
shared 2-core box. What is asserted is what must hold at any speed: no failed request,
the right end state, and no request served by a version after it was finished with.
"""

from __future__ import annotations

import os
import signal
import time

from ray import serve

from serve_ab import build_app
from benchmarks.common import replica_pids
from tests.integration.conftest import AUTH, CONTROL_TOKEN, DIGIT_ROW, experiment
from tests.support.loadgen import LoadGenerator, first_time_served_by, last_time_served_by

WAIT_S = 180


def canary(model_repo, tmp_path, candidate="v2", steps=None, **rollout):
    cfg = experiment(model_repo, weights={"v1": 100})
    cfg["versions"][1] = {
        "v2": {"name": "v2", "path": str(model_repo / "digits/v2/model.pt2"), "backend": "torch"},
        "v3": {"name": "v3", "path": str(model_repo / "digits/v3/model.onnx"), "backend": "onnx"},
    }[candidate]
    cfg["http"] = {"max_body_bytes": 65536}
    cfg["rollout"] = {
        "strategy": "canary", "stable": "v1", "candidate": candidate,
        # Gates pass on evidence (a confidence bound inside the threshold), so the thresholds
        # and steps are ones ~90 requests/s can decide within seconds: 0 errors in ~60 of the
        # candidate's requests bound its error rate under 5%; ~150 outcomes per side bound the
        # ratio of 'correct' rates over 0.95 when both models are about as accurate.
        "analysis": {"interval_s": 5, "min_samples": 8, "failure_limit": 0, "progress_deadline_s": 120},
        "gates": [{"metric": "error_rate", "max": 0.05},
                  {"metric": "feedback_rate", "name": "correct", "min_ratio_to_stable": 0.95}],
        "steps": steps or [{"set_weight": 20}, {"pause": {"duration": "4s"}}, {"set_weight": 50},
                           {"pause": {"duration": "4s"}}, {"set_weight": 100}],
        "retire_after_s": 2,
        **rollout,
    }
    cfg["controller"] = {"state_path": str(tmp_path / "state.sqlite"), "tick_s": 0.1, "report_interval_s": 0.25}
    return cfg


def wait_for(http, url, predicate, what):
    deadline = time.monotonic() + WAIT_S
    while True:
        response = http.get(url)
        status = response.json()
        # A controller that is not up (restarting after a kill) is a 503 after 8 s, naming it:
        # waited through, as a client would retry.
        if response.status_code == 503:
            assert "controller" in status["error"], status
        elif predicate(status):
            return status
        assert time.monotonic() < deadline, f"timed out waiting for {what}; last status: {status}"
        time.sleep(0.5)


def load(apps, name, tmp_path, model_repo):
    return LoadGenerator(apps.url(f"/{name}"), tmp_path / f"{name}.jsonl", concurrency=3,
                         rate_per_worker_hz=30, users=500,
                         samples=model_repo / "digits" / "samples.json", feedback="correct")


def switched_at_router(http, url, user, version):
    """When the (single) router replica routes ``user`` to ``version``: the send time of the
    first such answer. Causal, not timed: every request sent later sees the same table."""
    deadline = time.monotonic() + WAIT_S
    while True:
        t_send = time.time()
        body = http.post(url, json={"user_id": user, "inputs": [DIGIT_ROW]}).json()
        if body["version"] == version:
            return t_send
        assert time.monotonic() < deadline, f"{user} still served by {body['version']}"
        time.sleep(0.05)


def transition_time(status, to_phase):
    return next(h["t_s"] for h in status["history"] if h["to_phase"] == to_phase)


def test_canary_promotes_v2_and_retires_v1_with_no_failed_request(http, serve_instance, deployed,
                                                                  model_repo, tmp_path):
    deployed(canary(model_repo, tmp_path), "promote")
    status_url = serve_instance.url("/promote/rollout/status?history=true")
    with load(serve_instance, "promote", tmp_path, model_repo) as loadgen:
        status = wait_for(http, status_url, lambda s: "v1" in s["retired"], "promotion and retirement of v1")
        retired_at = time.time()
        time.sleep(1.0)
    summary = loadgen.summary
    records = loadgen.records()
    print(f"\npromotion: {summary.total} requests, {summary.failed} failed, by version {summary.by_version}")
    assert summary.failed == 0, summary.failures
    assert status["phase"] == "promoted" and status["weights_pct"] == {"v1": 0.0, "v2": 100.0}
    # No v2 answer before the first step gave it traffic.
    assert first_time_served_by(records, "v2") >= status["history"][1]["t_s"] - 0.5
    # v1 is gone from the routers: it serves nothing once retired, and cannot be pinned.
    assert not [r for r in records if r["version"] == "v1" and r["t_send"] > retired_at]
    response = http.post(serve_instance.url("/promote/predict"), json={"inputs": [DIGIT_ROW]},
                         headers={"x-serve-ab-version": "v1", **AUTH})
    assert response.status_code == 404


def test_worse_v3_is_rolled_back_automatically(http, serve_instance, deployed, model_repo, tmp_path):
    # v3 is right ~87% of the time on these samples (v1 ~95%). Gates decide on evidence and
    # spend alpha over a step's analyses, so the bound that fails v3 must clear the threshold
    # by a margin this machine's ~25 requests/s reach within seconds: an absolute floor of
    # 0.95 at 50% (v3's ratio to v1, ~0.92, is too close to a 0.95 ratio gate to be called
    # within the deadline at this load; the unit tests judge ratio gates).
    steps = [{"set_weight": 50}, {"pause": {"duration": "10s"}}, {"set_weight": 100}]
    gates = [{"metric": "error_rate", "max": 0.05},
             {"metric": "feedback_rate", "name": "correct", "min": 0.95}]
    deployed(canary(model_repo, tmp_path, candidate="v3", steps=steps, gates=gates), "rollback")
    status_url = serve_instance.url("/rollback/rollout/status?history=true")
    with load(serve_instance, "rollback", tmp_path, model_repo) as loadgen:
        status = wait_for(http, status_url, lambda s: s["phase"] == "aborted", "the automatic rollback")
        v3_user = next(r["user"] for r in loadgen.records() if r["version"] == "v3")
        router_switched_at = switched_at_router(http, serve_instance.url("/rollback/predict"), v3_user, "v1")
        time.sleep(1.0)  # more load after the switch, for the check below
    summary = loadgen.summary
    aborted_at = transition_time(status, "aborted")
    last_v3 = last_time_served_by(loadgen.records(), "v3")
    print(f"\nrollback: {summary.total} requests, {summary.failed} failed; reason: {status['reason']}")
    records = loadgen.records()
    v3_users = {r["user"] for r in records if r["version"] == "v3"}
    back_on_v1 = [r["t_done"] for r in records
                  if r["user"] in v3_users and r["version"] == "v1" and r["t_send"] >= aborted_at]
    def after_ms(t_s):
        return f"{(t_s - aborted_at) * 1000:+.0f} ms" if t_s is not None else "n/a"

    print(f"rollback propagation: last answer from v3 {after_ms(last_v3)} after the decision; "
          f"first answer by v1 to a former v3 user {after_ms(min(back_on_v1, default=None))}")
    assert summary.failed == 0, summary.failures
    assert status["weights_pct"] == {"v1": 100.0, "v3": 0.0}
    assert "feedback_rate" in status["reason"] and "0.95" in status["reason"]
    failed = [g for g in status["gates"] if g["verdict"] == "fail"]
    assert failed and failed[0]["value"] < failed[0]["threshold"]
    # Once the router had switched, every request went to v1. (How soon it switches is
    # measured by benchmarks/bench_propagation.py, not asserted here.)
    late = [r for r in loadgen.records() if r["version"] == "v3" and r["t_send"] > router_switched_at]
    assert not late, late[:3]


def test_controller_killed_mid_rollout_resumes_at_the_same_step(http, serve_instance, deployed,
                                                                model_repo, tmp_path):
    steps = [{"set_weight": 20}, {"pause": {}}, {"set_weight": 100}]
    deployed(canary(model_repo, tmp_path, steps=steps), "resume")
    status_url = serve_instance.url("/resume/rollout/status?history=true")
    with load(serve_instance, "resume", tmp_path, model_repo) as loadgen:
        before = wait_for(http, status_url, lambda s: s["phase"] == "paused", "the manual pause step")
        started = before["controller"]["started_at_s"]
        (pid,) = replica_pids("resume", "Controller")
        os.kill(pid, signal.SIGKILL)  # as a crash would; Ray Serve starts a new replica
        after = wait_for(http, status_url, lambda s: s["controller"]["started_at_s"] != started, "a new controller")
        assert (after["phase"], after["step_index"], after["weights_pct"]) == (
            before["phase"], before["step_index"], before["weights_pct"])
        assert after["history"] == before["history"]  # nothing repeated, nothing skipped
        assert http.post(serve_instance.url("/resume/rollout/promote")).status_code == 401
        response = http.post(serve_instance.url("/resume/rollout/promote"), headers=AUTH, json={})
        assert response.status_code == 200, response.text
        wait_for(http, status_url, lambda s: s["phase"] == "promoted", "promotion after resume")
    print(f"\ncontroller restart: {loadgen.summary.total} requests, {loadgen.summary.failed} failed")
    assert loadgen.summary.failed == 0, loadgen.summary.failures


def test_control_needs_the_token_and_status_is_open(http, serve_instance, deployed, model_repo, tmp_path):
    deployed(canary(model_repo, tmp_path, steps=[{"set_weight": 10}, {"pause": {}}]), "control")
    base = serve_instance.url("/control/rollout")
    assert http.get(base + "/status").json()["strategy"] == "canary"
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": CONTROL_TOKEN}):
        response = http.post(base + "/pause", headers=headers)
        assert response.status_code == 401 and "token" in response.json()["error"]
        assert CONTROL_TOKEN not in response.text
    response = http.post(base + "/weights", headers=AUTH, json={"weights": {"v1": 60, "v2": 30}})
    assert response.status_code == 400 and "sum" in response.json()["error"]
    response = http.post(base + "/weights", headers=AUTH, json={"weights": {"v1": 70, "v2": 30}})
    assert response.status_code == 200 and response.json()["weights_pct"] == {"v1": 70.0, "v2": 30.0}
    assert http.post(base + "/explode", headers=AUTH).status_code == 404
    # Feedback needs the token of a served answer; a made-up one moves nothing.
    response = http.post(serve_instance.url("/control/feedback"),
                         json={"request_id": "never-served", "name": "correct", "converted": True})
    assert response.status_code == 401 and "feedback_token" in response.json()["error"]
    response = http.post(serve_instance.url("/control/feedback"),
                         json={"request_id": "never-served", "name": "correct", "converted": True,
                               "feedback_token": "v2.99999999999.AAAAAAAAAAAAAAAAAAAAAA"})
    assert response.status_code == 403
    response = http.post(serve_instance.url("/control/feedback"), json={"request_id": "x"})
    assert response.status_code == 400 and "exactly one of value" in response.json()["error"]


def blue_green(model_repo, tmp_path, green="v2"):
    cfg = canary(model_repo, tmp_path, candidate=green)
    cfg["rollout"] = {
        "strategy": "blue_green", "stable": "v1", "candidate": green,
        "analysis": {"interval_s": 2, "min_samples": 5, "failure_limit": 0},
        "gates": [{"metric": "error_rate", "max": 0.05}],
        "blue_green": {"validation_samples": str(model_repo / "digits" / "samples.json"),
                       "validation_min_accuracy": 0.9, "post_switch_watch_s": 4, "keep_blue_s": 6},
        "retire_after_s": 2,
    }
    return cfg


def test_blue_green_switches_after_validation_and_retires_blue(http, serve_instance, deployed,
                                                              model_repo, tmp_path):
    deployed(blue_green(model_repo, tmp_path), "bluegreen")
    status_url = serve_instance.url("/bluegreen/rollout/status?history=true")
    with load(serve_instance, "bluegreen", tmp_path, model_repo) as loadgen:
        status = wait_for(http, status_url, lambda s: s["phase"] in ("switched", "promoted"), "the switch")
        router_switched_at = switched_at_router(http, serve_instance.url("/bluegreen/predict"), "probe", "v2")
        status = wait_for(http, status_url, lambda s: "v1" in s["retired"], "watch and retirement")
    records = loadgen.records()
    switched_at = transition_time(status, "switched")
    print(f"\nblue-green: {loadgen.summary.total} requests, {loadgen.summary.failed} failed; "
          f"{[h['reason'][:80] for h in status['history']]}")
    assert loadgen.summary.failed == 0, loadgen.summary.failures
    assert any("accuracy" in h["reason"] for h in status["history"])  # validated on the sample set
    # Green took no user traffic before the switch, and all of it once the router switched.
    assert first_time_served_by(records, "v2") >= switched_at - 0.5
    assert not [r for r in records if r["version"] == "v1" and r["t_send"] > router_switched_at]


def test_blue_green_refuses_a_green_that_fails_validation(http, serve_instance, deployed,
                                                         model_repo, tmp_path):
    deployed(blue_green(model_repo, tmp_path, green="v3"), "badgreen")
    status = wait_for(http, serve_instance.url("/badgreen/rollout/status?history=true"),
                      lambda s: s["phase"] == "aborted", "validation to fail")
    assert status["weights_pct"] == {"v1": 100.0, "v3": 0.0}
    assert "accuracy" in status["reason"] and "< 0.9" in status["reason"]


def test_a_new_candidate_arrives_by_redeploying_without_dropping_traffic(http, serve_instance, deployed,
                                                                        model_repo, tmp_path):
    # No gates: this is about the redeploy, not about judging v3 (which its gates would roll back).
    steps = [{"set_weight": 20}, {"pause": {}}, {"set_weight": 100}]
    deployed(canary(model_repo, tmp_path, steps=steps, gates=[]), "redeploy")
    status_url = serve_instance.url("/redeploy/rollout/status")
    with load(serve_instance, "redeploy", tmp_path, model_repo) as loadgen:
        wait_for(http, status_url, lambda s: s["phase"] == "paused", "the v2 canary to pause")
        redeployed_at = time.time()
        # What `serve deploy` / `serve run` of an edited config does: the same app, new args.
        serve.run(build_app(canary(model_repo, tmp_path, candidate="v3", steps=steps, gates=[])),
                  name="redeploy", route_prefix="/redeploy")
        status = wait_for(http, status_url, lambda s: s["candidate"] == "v3" and s["phase"] == "paused",
                          "the v3 canary to start")
        loadgen.wait_until(lambda records: any(r["version"] == "v3" for r in records), timeout_s=60)
    print(f"\nredeploy: {loadgen.summary.total} requests, {loadgen.summary.failed} failed, "
          f"by version {loadgen.summary.by_version}")
    assert loadgen.summary.failed == 0, loadgen.summary.failures
    assert status["weights_pct"] == {"v1": 80.0, "v3": 20.0}
    assert not [r for r in loadgen.records() if r["version"] == "v2" and r["t_send"] > time.time()]
    assert first_time_served_by(loadgen.records(), "v3") > redeployed_at


def test_isolated_promotion_scales_the_old_version_to_zero(http, serve_instance, deployed,
                                                          model_repo, tmp_path):
    """Isolated placement: after promotion the router drops v1's handle and v1's own
    deployment, autoscaled with min_replicas 0, gives its replicas back. (The deployment
    entry itself stays in the app, at zero replicas, until the config is redeployed.)"""
    cfg = canary(model_repo, tmp_path, steps=[{"set_weight": 50}, {"pause": {"duration": "4s"}},
                                               {"set_weight": 100}])
    cfg["placement"] = "isolated"
    # What is tested is the retirement. On a loaded 2-core machine a 0.1-CPU replica can stall
    # past the watchdog's limits (1 s without a completed call, then a 2 s probe): its requests
    # go to v1 and count as v2's errors, and with failure_limit 0 one such analysis aborted the
    # canary (seen once in a full-suite run). Two failed analyses are tolerated here.
    cfg["rollout"]["analysis"]["failure_limit"] = 2
    # v1 may go to zero replicas (min_replicas 0) and is let go quickly: Ray averages load over
    # 30 s by default, here 11 (it wants more than its 10-s metrics interval). The window then
    # holds one or two load reports, and a late one reads as no load: so v2, which serves all
    # of the traffic after the promotion, keeps at least one replica (min_replicas 1), as a
    # user would configure the version that is to stay.
    autoscaling = {"initial_replicas": 1, "max_replicas": 1, "downscale_delay_s": 2, "upscale_delay_s": 0,
                   "look_back_period_s": 11}
    for version, min_replicas in zip(cfg["versions"], (0, 1)):
        version["deployment"] = {"autoscaling_config": {**autoscaling, "min_replicas": min_replicas},
                                 "ray_actor_options": {"num_cpus": 0.1}}
    deployed(cfg, "isolated-retire")
    status_url = serve_instance.url("/isolated-retire/rollout/status")
    with load(serve_instance, "isolated-retire", tmp_path, model_repo) as loadgen:
        wait_for(http, status_url, lambda s: "v1" in s["retired"], "promotion and retirement of v1")
        deadline = time.monotonic() + WAIT_S
        while True:
            v1 = serve.status().applications["isolated-retire"].deployments["version-v1"]
            if sum(v1.replica_states.values()) == 0:
                break
            assert time.monotonic() < deadline, f"v1 still has replicas: {v1.replica_states}"
            time.sleep(1)
        v2 = serve.status().applications["isolated-retire"].deployments["version-v2"]
        assert v2.replica_states.get("RUNNING", 0) >= 1
    print(f"\nisolated retirement: {loadgen.summary.total} requests, {loadgen.summary.failed} failed")
    assert loadgen.summary.failed == 0, loadgen.summary.failures


def test_blue_green_validates_green_on_mirrored_live_traffic(http, serve_instance, deployed,
                                                             model_repo, tmp_path):
    cfg = blue_green(model_repo, tmp_path)
    cfg["rollout"]["blue_green"].update(validation_min_samples=10, validation_mirror_pct=100)
    deployed(cfg, "mirror")
    status_url = serve_instance.url("/mirror/rollout/status?history=true")
    with load(serve_instance, "mirror", tmp_path, model_repo) as loadgen:
        status = wait_for(http, status_url, lambda s: s["phase"] in ("switched", "promoted"),
                          "validation on mirrored traffic and the switch")
    switched_at = transition_time(status, "switched")
    print(f"\nmirrored validation: {loadgen.summary.total} requests, {loadgen.summary.failed} failed; "
          f"{[h['reason'][:100] for h in status['history']]}")
    assert loadgen.summary.failed == 0, loadgen.summary.failures
    # Green answered mirrored copies, never a client, before the switch.
    assert first_time_served_by(loadgen.records(), "v2") >= switched_at - 0.5


def test_mirrored_answers_are_what_the_gates_judge(http, serve_instance, deployed, model_repo, tmp_path):
    """A latency bound no model can meet: green fails it on mirrored copies alone (it has
    no user traffic), which shows the copies reach the gates; blue keeps every user."""
    cfg = blue_green(model_repo, tmp_path)
    cfg["rollout"]["blue_green"].update(validation_min_samples=5, validation_mirror_pct=100)
    cfg["rollout"]["gates"] = [{"metric": "latency_p50_ms", "max": 0.0001}]
    deployed(cfg, "mirrorfail")
    with load(serve_instance, "mirrorfail", tmp_path, model_repo) as loadgen:
        status = wait_for(http, serve_instance.url("/mirrorfail/rollout/status"),
                          lambda s: s["phase"] == "aborted", "green to fail on mirrored traffic")
    assert loadgen.summary.failed == 0 and set(loadgen.summary.by_version) == {"v1"}
    (gate,) = status["gates"]
    assert gate["verdict"] == "fail" and gate["value"] > 0.0001, gate
    assert "latency_p50_ms" in status["reason"] and "v2" in status["reason"]
