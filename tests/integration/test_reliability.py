"""Reliability on a real Ray Serve: replicas killed under load, and the HTTP API fuzzed.

Processes are killed with SIGKILL, as a crash or the OOM killer would; Ray Serve starts a
replacement on its own. Counts are measured and printed (pytest -s shows them); timings are
never asserted, the machine being a shared 2-core box.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest
import ray
from ray import serve

from benchmarks.common import replica_pids
from tests.integration.conftest import AUTH, DIGIT_ROW, experiment
from tests.support.fuzz import fuzz_openapi
from tests.support.loadgen import LoadGenerator, is_ok
from tests.support.polling import poll, wait_for

CONCURRENCY = 3
RETRY_LOG_LINE = "retrying the request on"


@pytest.fixture
def deployed(deployed):
    """As conftest's, under names unique to this run: replica processes are found by their
    titles, which a process of another Ray on this machine could share."""
    return lambda cfg, label: deployed(cfg, f"rel-{label}-{uuid.uuid4().hex[:6]}")


def retries_logged(app: str) -> int:
    """How many times the app's routers retried a request on another version (their logs)."""
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    return sum(path.read_text(errors="replace").count(RETRY_LOG_LINE)
               for path in logs.glob(f"replica_{app}_Router_*.log"))


def pinned_outputs(http, predict_url: str, version: str) -> list | None:
    """The outputs of a request pinned to ``version``; None if it was not answered."""
    response = http.post(predict_url, json={"inputs": [DIGIT_ROW]}, headers={"x-serve-ab-version": version, **AUTH})
    return response.json()["outputs"] if response.status_code == 200 else None


def deployment_running(app: str, deployment: str, replicas: int) -> bool:
    status = serve.status().applications[app].deployments[deployment]
    return status.status == "HEALTHY" and status.replica_states.get("RUNNING", 0) == replicas


# -- a candidate's replica dies mid-canary (isolated placement) ----------------------------------

def isolated_canary(model_repo, tmp_path) -> dict:
    cfg = experiment(model_repo, placement="isolated", weights={"v1": 100})
    for version in cfg["versions"]:
        version["deployment"] = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}}
    cfg["rollout"] = {
        "strategy": "canary", "stable": "v1", "candidate": "v2",
        "analysis": {"interval_s": 2, "min_samples": 5, "failure_limit": 0, "progress_deadline_s": 120},
        "gates": [{"metric": "error_rate", "max": 0.01}],
        "steps": [{"set_weight": 50}, {"pause": {}}],
    }
    cfg["controller"] = {"state_path": str(tmp_path / "state.sqlite"), "tick_s": 0.1, "report_interval_s": 0.25}
    return cfg


def test_candidate_replica_killed_mid_canary_fails_no_request(http, serve_instance, deployed,
                                                              model_repo, tmp_path):
    """The candidate's only replica is SIGKILLed while it takes half of the traffic.

    Ray Serve fails only the calls the replica had accepted (ActorDiedError); the others,
    and every call made to v2 afterwards, wait in Serve's queue for a replacement, which
    comes after the controller's health check and a model load, longer than a client waits.
    The router's watchdog sees v2's calls stop completing and its probe go unanswered, and
    declares v2 down; each call that failed or waited, and each new one, is recorded as an
    error of v2 and served again on v1. So no client sees a failure, and the errors breach
    ``error_rate max 0.01`` (``failure_limit 0``): the controller rolls back.

    Robust to timing: zero failed requests must hold whatever happens. The rollback is
    required whenever a retry was logged, i.e. whenever an error was recorded for v2 (with
    load on v2 at the kill, always in practice); a kill that found no call for v2 at all
    would leave nothing to record, and the test then says so instead of failing. Last, the
    load runs on until Serve has replaced the replica and the routers serve v2 again.
    """
    app = deployed(isolated_canary(model_repo, tmp_path), "cand")
    status_url = serve_instance.url(f"/{app}/rollout/status?history=true")
    with LoadGenerator(serve_instance.url(f"/{app}"), tmp_path / "load.jsonl",
                       concurrency=CONCURRENCY, rate_per_worker_hz=30, users=500) as load:
        wait_for(lambda: http.get(status_url).json()["phase"] == "paused", "the canary at 50%")
        load.wait_until(lambda records: sum(r["version"] == "v2" for r in records) >= 20, timeout_s=60)
        (pid,) = replica_pids(app, "version-v2")
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        status = poll(lambda: (s := http.get(status_url).json())["phase"] == "aborted" and s,
                      timeout_s=30) or http.get(status_url).json()
        # Load on until Serve has replaced the replica, and the routers use v2 again: a request
        # pinned to v2 answers with v2's probabilities, not v1's (v1 is onnx, v2 torch).
        wait_for(lambda: replica_pids(app, "version-v2") not in ([], [pid]), "a new v2 replica")
        wait_for(lambda: deployment_running(app, "version-v2", 1), "the new v2 replica to run")
        predict_url = serve_instance.url(f"/{app}/predict")
        v1_outputs = pinned_outputs(http, predict_url, "v1")
        assert v1_outputs is not None
        wait_for(lambda: (v2 := pinned_outputs(http, predict_url, "v2")) is not None and v2 != v1_outputs,
                 "the routers to serve v2 again")
    summary = load.summary
    retries = retries_logged(app)
    after_kill = [r for r in load.records() if r["t_send"] >= killed_at]
    print(f"\ncandidate killed: {summary.total} requests ({len(after_kill)} after the kill), "
          f"{summary.failed} failed, {retries} retried on v1; phase {status.get('phase')}: "
          f"{status.get('reason')}")
    assert summary.failed == 0, summary.failures
    assert after_kill and all(is_ok(r) for r in after_kill)
    if retries:  # an error was recorded for v2: the gate must have seen it
        assert status.get("phase") == "aborted", status
        assert "error_rate" in status["reason"], status["reason"]
        assert status["weights_pct"] == {"v1": 100.0, "v2": 0.0}
    else:
        print("the kill found v2 idle: no error to record, so no rollback was expected")


# -- one of two router replicas dies (colocated placement) ---------------------------------------

def test_one_of_two_router_replicas_killed(http, serve_instance, deployed, model_repo, tmp_path):
    """One of two router replicas is SIGKILLed under load; the other keeps serving.

    A request the dead replica was holding cannot be finished by anyone: the proxy answers it
    with a 5xx. So the test bounds the failures at one per load worker (each has one request
    in flight; a request Serve sends to the dead replica afterwards is routed again, not
    failed), and requires OK answers afterwards: from the survivor while Serve replaces the
    replica, and once both run again.

    What a client may retry on a 5xx or a dropped connection: ``POST /predict`` and
    ``POST /v2/models/{model}[/versions/{version}]/infer`` are idempotent reads, safe to send
    again (a keyed request lands on the same version again). ``POST /feedback`` is not (a
    repeated report counts twice) and neither are the ``/rollout/*`` actions, whose effect
    the caller should check with ``GET /rollout/status`` before repeating one.
    """
    cfg = experiment(model_repo, router={"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.1}})
    app = deployed(cfg, "router")
    with LoadGenerator(serve_instance.url(f"/{app}"), tmp_path / "load.jsonl",
                       concurrency=CONCURRENCY, rate_per_worker_hz=30, users=500) as load:
        load.wait_until(lambda records: len(records) >= 30, timeout_s=60)
        pids = wait_for(lambda: len(p := replica_pids(app, "Router")) == 2 and p, "two router processes")
        os.kill(pids[0], signal.SIGKILL)
        killed_at = time.time()
        # The survivor keeps answering while the replica is replaced...
        load.wait_until(lambda records: sum(is_ok(r) for r in records if r["t_send"] > killed_at) >= 30,
                        timeout_s=60)
        wait_for(lambda: set(replica_pids(app, "Router")) - set(pids), "a new router replica")
        wait_for(lambda: deployment_running(app, "Router", 2), "the new router replica to run")
        replaced_at = time.time()
        # ...and both answer once it is back.
        load.wait_until(lambda records: sum(is_ok(r) for r in records if r["t_send"] > replaced_at) >= 30,
                        timeout_s=60)
    records = load.records()
    failed = [r for r in records if not is_ok(r)]
    print(f"\nrouter replica killed: {len(records)} requests, {len(failed)} failed "
          f"({sorted({r['error'] for r in failed})}); bound {CONCURRENCY}")
    assert len(failed) <= CONCURRENCY, failed
    assert all(r["t_done"] >= killed_at for r in failed), "a request failed before the kill"
    # The OK answers after the kill and after the replacement were awaited above.
    response = http.post(serve_instance.url(f"/{app}/predict"), json={"inputs": [DIGIT_ROW]})
    assert response.status_code == 200, response.text


# -- the controller dies between two saves of its figures -----------------------------------------

class CountingClient:
    """One keyed request after another, each followed by its feedback; counts what was
    answered (200 and 202) and what failed, until stopped."""

    def __init__(self, base: str):
        import threading

        import httpx

        self.base, self.http = base, httpx.Client(timeout=30)
        self.ok = self.feedback_ok = 0
        self.failed: list[str] = []
        self.feedback_failed: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                answer = self.http.post(f"{self.base}/predict", json={"inputs": [DIGIT_ROW], "user_id": f"u{i % 300}"})
            except Exception as err:  # counted, as a real client would see it
                self.failed.append(type(err).__name__)
                continue
            if answer.status_code != 200:
                self.failed.append(str(answer.status_code))
                continue
            self.ok += 1
            body = answer.json()
            feedback = self.http.post(f"{self.base}/feedback", json={
                "request_id": body["request_id"], "feedback_token": body["feedback_token"],
                "name": "correct", "converted": i % 2 == 0})
            if feedback.status_code == 202:
                self.feedback_ok += 1
            else:
                self.feedback_failed.append(feedback.status_code)
            time.sleep(0.005)

    def __enter__(self) -> CountingClient:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self.http.close()


def counted(http, base: str) -> tuple[int, int]:
    """Requests and feedback the app's figures hold."""
    stats = http.get(f"{base}/experiment/stats").json()
    versions = stats["versions"].values()
    return (sum(v["requests"] for v in versions),
            sum(v["feedback"].get("correct", {}).get("n", 0) for v in versions))


def test_the_controller_killed_under_load_loses_no_counted_request_or_feedback(http, serve_instance, deployed,
                                                                               model_repo, tmp_path):
    """The controller saves the run's figures every 5 s; a SIGKILL between two saves used to
    lose what it merged since (about 200 requests and 230 feedback reports already answered
    202, in an audit). Routers now keep it until it is saved and send it again to the new
    controller (serving/core/ledger.py). Every request answered 200 is counted, once; every
    feedback answered 202 too (one whose answer the kill cut off may count as well).

    A canary is held in a pause meanwhile. Its step began before the first request, so its
    gates' window holds every request: the step's window is saved with the figures, and the
    new controller's gates read them all, not only what came after the restart."""
    cfg = experiment(model_repo, weights={"v1": 100},
                     analysis={"records": {"path": str(tmp_path / "runs.sqlite")},
                               "metrics": [{"name": "correct", "kind": "conversion"}]},
                     controller={"state_path": str(tmp_path / "state.sqlite"), "report_interval_s": 0.25,
                                 "tick_s": 0.2})
    cfg["rollout"] = {"strategy": "canary", "stable": "v1", "candidate": "v2",
                      "analysis": {"interval_s": 1, "min_samples": 5, "failure_limit": 0},
                      "gates": [{"metric": "error_rate", "max": 0.5}],
                      "steps": [{"set_weight": 50}, {"pause": {}}]}
    app = deployed(cfg, "ctlkill")
    base = serve_instance.url(f"/{app}")
    poll(lambda: http.get(f"{base}/rollout/status").json()["step_index"] == 1, 30)  # held in the pause
    with CountingClient(base) as client:
        wait_for(lambda: client.feedback_ok >= 50, "feedback to be answered")
        time.sleep(6.0)  # a save (every 5 s) and more merged after it
        pids = wait_for(lambda: replica_pids(app, "Controller"), "the controller's process")
        at_kill = (client.ok, client.feedback_ok)
        os.kill(pids[0], signal.SIGKILL)
        wait_for(lambda: set(replica_pids(app, "Controller")) - set(pids), "a new controller process")
        wait_for(lambda: http.get(f"{base}/experiment/stats").status_code == 200, "the new controller to answer")
        answered = client.feedback_ok
        wait_for(lambda: client.feedback_ok >= answered + 30, "feedback answered by the new controller")
    poll(lambda: counted(http, base)[0] >= client.ok, 30)  # the last reports (asserted below)
    time.sleep(1.0)  # a report sent again late would show as a request counted twice
    requests, feedback = counted(http, base)
    # The gates look every second; on a busy machine a look may come late: wait for one that
    # read everything counted (a window that lacks some never gets there: the load has stopped).
    status_url = f"{base}/rollout/status"
    window = (poll(lambda: (w := http.get(status_url).json()["window"]) and
                   sum(w["requests"].values()) >= requests and w, 30)
              or http.get(status_url).json()["window"])
    print(f"\ncontroller killed at {at_kill[0]} requests and {at_kill[1]} feedback answered; in all "
          f"{client.ok} requests ({len(client.failed)} failed), {client.feedback_ok} feedback answered 202 "
          f"({len(client.feedback_failed)} refused: {sorted(set(client.feedback_failed))}); counted "
          f"{requests} requests and {feedback} feedback; the gates' window {window['requests']}")
    assert requests == client.ok and not client.failed
    assert client.feedback_ok <= feedback <= client.feedback_ok + len(client.feedback_failed)
    assert sum(window["requests"].values()) == requests


# -- the HTTP API fuzzed from its OpenAPI schema -------------------------------------------------

MAX_EXAMPLES_PER_MODE = 15  # per operation, valid and invalid data: a few hundred calls in all


def test_http_api_fuzzed_from_its_openapi_schema_gives_no_5xx(http, serve_instance, deployed, model_repo):
    """Schemathesis generates requests, valid and invalid, for every operation of /openapi.json.

    Every answer must be below 500 (bad input is a 4xx that names the problem), and the
    replica must stay up: HEALTHY, the same replica, and a good request still answered. The
    ``/rollout/*`` actions are fuzzed too: the fuzzer has no token, so they answer 401.
    """
    schemathesis = pytest.importorskip("schemathesis")

    app = deployed(experiment(model_repo), "fuzz")
    base_url = serve_instance.url(f"/{app}")
    replicas_before = serve.status().applications[app].deployments["Router"].replica_states
    calls, server_errors = fuzz_openapi(http.get(base_url + "/openapi.json").json(),
                                        lambda case: case.call(base_url=base_url, timeout=30),
                                        MAX_EXAMPLES_PER_MODE)
    print(f"\nschemathesis {schemathesis.__version__}: {calls} requests, "
          f"{len(server_errors)} server errors")
    assert not server_errors, "\n".join(server_errors[:10])
    status = serve.status().applications[app].deployments["Router"]
    assert status.status == "HEALTHY" and status.replica_states == replicas_before
    response = http.post(base_url + "/predict", json={"inputs": [DIGIT_ROW], "user_id": "after-fuzz"})
    assert response.status_code == 200, response.text
