"""An A/B test on a real Ray Serve, judged from what the router served and what the
clients reported: v1 against the weaker v3 (83.6% against 97.8% on held-out digits), with
clients reporting whether each answer was right. The report must find v3 worse on
correctness, and see no sample-ratio mismatch in a fair 50/50 split."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from ray import serve

from serve_ab.store.runs import RunRecorder
from tests.integration.conftest import experiment
from tests.support.polling import wait_for

USERS = 300
REQUESTS = 900


def metric(report, name):
    (found,) = [m for m in report["metrics"] if m["name"] == name]
    return found


def test_ab_v1_against_v3_with_feedback_finds_v3_worse_and_no_srm(serve_instance, deployed, model_repo, tmp_path):
    cfg = experiment(model_repo, weights={"v1": 50, "v3": 50})
    cfg["versions"] = [cfg["versions"][0],
                       {"name": "v3", "path": str(model_repo / "digits/v3/model.onnx"), "backend": "onnx"}]
    cfg["controller"] = {"state_path": str(tmp_path / "state.sqlite")}
    cfg["analysis"] = {"metrics": [{"name": "correct", "kind": "conversion"}],
                       "records": {"path": str(tmp_path / "runs.sqlite"), "interval_s": 1}}
    app = deployed(cfg, "abv3")
    data = json.loads((model_repo / "digits/samples.json").read_text())
    rng = random.Random(2026)
    plan = [(f"user-{rng.randrange(USERS)}", rng.randrange(len(data["inputs"]))) for _ in range(REQUESTS)]

    # One client for the four threads (httpx.Client is thread-safe; making one costs ~40 ms).
    shared = httpx.Client(timeout=30.0, limits=httpx.Limits(max_connections=4))

    def one(item):
        user, index = item
        served = shared.post(serve_instance.url(f"/{app}/predict"),
                             json={"user_id": user, "inputs": [data["inputs"][index]]})
        assert served.status_code == 200, served.text
        body = served.json()
        correct = int(np.argmax(body["outputs"][0])) == data["labels"][index]
        fed = shared.post(serve_instance.url(f"/{app}/feedback"),
                          json={"request_id": body["request_id"], "feedback_token": body["feedback_token"],
                                "name": "correct", "converted": correct})
        assert fed.status_code == 202, fed.text
        return body["version"], correct

    with shared, ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, plan))
    served = {v: sum(1 for version, _ in results if version == v) for v in ("v1", "v3")}
    right = {v: sum(1 for version, ok in results if version == v and ok) for v in ("v1", "v3")}

    with httpx.Client(timeout=60.0) as client:
        def complete():
            stats = client.get(serve_instance.url(f"/{app}/experiment/stats")).json()["versions"]
            fed = sum(stats[v]["feedback"].get("correct", {}).get("n", 0) for v in ("v1", "v3"))
            # Feedback with a token counts on arrival, so it may overtake its request's row.
            requests = sum(stats[v]["requests"] for v in ("v1", "v3"))
            return fed == REQUESTS and requests == REQUESTS and stats

        stats = wait_for(complete, "every request and its feedback at the controller", timeout_s=60)
        report = client.get(serve_instance.url(f"/{app}/experiment/report")).json()

    # The controller's figures are exactly what the clients saw.
    for v in ("v1", "v3"):
        assert stats[v]["requests"] == served[v]
        assert stats[v]["feedback"]["correct"] == {"kind": "conversion", "n": served[v], "successes": right[v]}
    correct = metric(report, "correct")
    (comparison,) = correct["comparisons"]
    print(f"\nA/B v1 vs v3: served {served}, right {right}; correct lift {comparison['abs_lift']:+.3f} "
          f"p={comparison['p_value']:.2e} verdict {comparison['verdict']}; SRM p={report['srm']['p_value']:.3f}")
    assert comparison["variant"] == "v3" and comparison["control"] == "v1"
    assert comparison["verdict"] == "worse", comparison
    assert comparison["abs_ci"][1] < 0  # the whole interval below zero
    assert report["srm"]["mismatch"] is False, report["srm"]
    # Stopped, the app leaves a run record with the configuration and every request: the
    # controller writes its last record on the way down (reading the report writes none).
    serve.delete(app)
    records = RunRecorder(tmp_path / "runs.sqlite")
    (run,) = records.list()
    saved = records.load(run.run_id)
    assert saved.config["weights"] == {"v1": 50, "v3": 50}
    assert sum(saved.report["variants"][v]["requests"] for v in ("v1", "v3")) == REQUESTS
    assert metric(saved.report, "correct")["comparisons"][0]["verdict"] == "worse"
