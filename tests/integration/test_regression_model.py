"""Any model on a real Ray Serve: the diabetes regression (two named inputs, ONNX and
torch.export) served, shadowed and canaried, with task-appropriate figures in the report.

Written alongside issue #14 item 3; run with the rest of tests/integration."""

from __future__ import annotations

import itertools

import json
import os
import tempfile

import numpy as np
import pytest

from tests.support.polling import wait_for

TOLERANCE = 20.0


def regression_experiment(model_repo, **changes) -> dict:
    task = {"task": "regression", "task_options": {"tolerance": TOLERANCE}}
    cfg = {
        "model": "diabetes",
        "versions": [
            {"name": "v1", "path": str(model_repo / "diabetes/v1/model.onnx"), "backend": "onnx", **task},
            {"name": "v2", "path": str(model_repo / "diabetes/v2/model.pt2"), "backend": "torch",
             "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.002}, **task},
        ],
        "weights": {"v1": 100, "v2": 0},
        "assignment": {"key": "json", "field": "user_id", "salt": "it-regression"},
        "router": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}},
        "http": {"max_body_bytes": 8192},
        "analysis": {"records": {"path": os.path.join(tempfile.gettempdir(), "serve-ab-tests", "runs.sqlite")}},
    }
    cfg.update(changes)
    return cfg


@pytest.fixture(scope="module")
def samples(model_repo):
    data = json.loads((model_repo / "diabetes/samples.json").read_text())
    return data["inputs"], data["targets"]


def one(inputs, i):
    return {name: [rows[i % len(rows)]] for name, rows in inputs.items()}


def test_a_regression_shadow_is_compared_by_value(http, serve_instance, deployed, model_repo, samples,  # noqa: F811
                                                   tmp_path):
    cfg = regression_experiment(model_repo, shadow={"version": "v2", "percent": 100},
                                controller={"state_path": str(tmp_path / "state.sqlite")})
    app = deployed(cfg, "regression-shadow")
    inputs, _ = samples
    live = []
    for i in range(80):
        response = http.post(serve_instance.url(f"/{app}/predict"), json={"user_id": f"u{i}", "inputs": one(inputs, i)})
        assert response.status_code == 200, response.text
        assert response.json()["version"] == "v1"
        live.append(response.json()["outputs"][0][0])
    # The same two inputs over the Open Inference Protocol, in the order the client likes.
    v2_body = {"parameters": {"user_id": "u-v2"}, "inputs": [
        {"name": "blood", "datatype": "FP32", "shape": [1, 6], "data": inputs["blood"][0]},
        {"name": "demographics", "datatype": "FP32", "shape": [1, 4], "data": inputs["demographics"][0]}]}
    answer = http.post(serve_instance.url(f"/{app}/v2/models/diabetes/infer"), json=v2_body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"][0] == pytest.approx(live[0], rel=1e-5)
    meta = http.get(serve_instance.url(f"/{app}/v2/models/diabetes")).json()
    assert [t["name"] for t in meta["inputs"]] == ["demographics", "blood"]

    stats = wait_for(lambda: (s := http.get(serve_instance.url(f"/{app}/experiment/stats")).json())
                     ["shadow"]["pairs"] >= 81 and s, "every copy compared")
    assert stats["shadow"]["confusion"] == []  # no classes in a regression
    report = http.get(serve_instance.url(f"/{app}/experiment/report")).json()
    shadow = report["shadow"]
    assert shadow["task"] == "regression" and shadow["agreement_rule"] == f"|shadow - live| <= {TOLERANCE:g}"
    assert shadow["pairs"] >= 81 and 0.3 <= shadow["agreement"]["rate"] <= 1.0
    assert shadow["score_diff"]["n"] == shadow["pairs"]
    assert 0 < shadow["score_diff"]["mean_abs"] < 40  # the two models differ by ~15 points
    drift = shadow["value_drift"]
    assert drift["n"] == shadow["pairs"]
    assert drift["live_mean"] == pytest.approx(np.mean(live + [live[0]]), rel=0.02)
    assert drift["wasserstein"] is not None and 0 <= drift["ks"] <= 1
    assert shadow["similarity"] is None


def test_a_regression_canary_promotes_on_value_gates(http, serve_instance, deployed, model_repo, samples,  # noqa: F811
                                                      tmp_path):
    rollout = {
        "strategy": "canary", "stable": "v1", "candidate": "v2",
        "analysis": {"interval_s": 1, "min_samples": 10, "failure_limit": 2, "progress_deadline_s": 120},
        "gates": [{"metric": "error_rate", "max": 0.2},
                  # The "score" of a regression is its predicted value: v2's values against v1's.
                  {"metric": "drift_wasserstein", "max": 60},
                  {"metric": "shadow_agreement", "min": 0.3}],
        "steps": [{"set_weight": 50}, {"pause": {"duration": "2s"}}, {"set_weight": 100}],
    }
    cfg = regression_experiment(model_repo, rollout=rollout, shadow={"version": "v2", "percent": 100},
                                controller={"state_path": str(tmp_path / "state.sqlite")})
    app = deployed(cfg, "regression-canary")
    inputs, _ = samples
    status_url = serve_instance.url(f"/{app}/rollout/status")
    served = set()
    visits = itertools.count()

    def progressed():
        # The gates judge users, not requests: 100 users (v1's half, whose copies v2 answers, in
        # more than 20 groups of buckets), each sending another patient's record at each visit
        # (a user who always sent one record would say one thing forever).
        visit = next(visits)
        for i in range(100):
            response = http.post(serve_instance.url(f"/{app}/predict"),
                                 json={"user_id": f"u{i}", "inputs": one(inputs, i + visit)})
            assert response.status_code == 200, response.text
            served.add(response.json()["version"])
        status = http.get(status_url).json()
        return status if status["phase"] in ("promoted", "aborted") else None

    status = wait_for(progressed, "the regression canary to finish", timeout_s=180)
    reasons = [status["reason"], *(str(g.get("reason")) for g in status.get("gates") or [])]
    assert status["phase"] == "promoted", "\n".join(reasons)
    assert "v2" in served
    report = http.get(serve_instance.url(f"/{app}/experiment/report")).json()
    assert report["shadow"]["task"] == "regression"
