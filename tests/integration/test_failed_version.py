"""A corrupt candidate file on a real Ray Serve: the app starts, the stable answers, and the
candidate is reported failed, in both placements. (Not run by the unit suite: real Ray.)"""

from __future__ import annotations

import time
import uuid

import pytest
from ray import serve

from serve_ab import build_app
from tests.integration.conftest import AUTH, DIGIT_ROW, experiment


@pytest.mark.parametrize("placement", ["colocated", "isolated"])
def test_a_corrupt_candidate_is_isolated(serve_instance, http, model_repo, tmp_path, placement):
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes(b"these bytes are not an ONNX model\x00\xff" * 8)
    cfg = experiment(model_repo, placement=placement,
                     controller={"state_path": str(tmp_path / "state.sqlite")})
    cfg["versions"][1] = {"name": "v2", "path": str(corrupt), "backend": "onnx"}
    if placement == "isolated":
        for version in cfg["versions"]:
            version["deployment"] = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}}
    name = f"failed-{placement}-{uuid.uuid4().hex[:6]}"
    serve.run(build_app(cfg), name=name, route_prefix=f"/{name}")  # starts: one bad file stops nothing
    try:
        base = serve_instance.url(f"/{name}")
        # The split sends about half the users to v2; every one is answered, by the stable.
        for i in range(20):
            response = http.post(base + "/predict", json={"inputs": [DIGIT_ROW], "user_id": f"user-{i}"})
            assert response.status_code == 200, response.text
            assert response.json()["version"] == "v1"
        assert http.get(base + "/v2/models/digits/ready").status_code == 200
        assert http.get(base + "/v2/models/digits/versions/v1/ready").json()["ready"] is True
        candidate = http.get(base + "/v2/models/digits/versions/v2/ready")
        assert candidate.status_code == 503 and candidate.json()["ready"] is False
        error = candidate.json()["error"]
        assert "failed to load" in error and str(tmp_path) not in error
        pinned = http.post(base + "/predict", json={"inputs": [DIGIT_ROW]},
                           headers={"x-serve-ab-version": "v2", **AUTH})
        assert pinned.status_code == 503 and "failed to load" in pinned.json()["error"]
        # The router's next report tells the controller: v2 shows as failed, with no weight.
        status = wait_for(lambda: http.get(base + "/rollout/status").json(),
                          lambda s: "v2" in s["failed_versions"])
        assert status["weights_pct"] == {"v1": 100.0, "v2": 0.0}, status
        metrics = http.get(base + "/metrics").text
        assert f'serve_ab_version_load_failed{{application="{name}",model="digits",version="v2"}} 1.0' in metrics
    finally:
        serve.delete(name)


def test_a_canary_of_a_candidate_that_fails_to_load_aborts_with_the_load_error(serve_instance, http, model_repo,
                                                                              tmp_path):
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes(b"not a model" * 16)
    cfg = experiment(model_repo, weights={"v1": 100},
                     controller={"state_path": str(tmp_path / "state.sqlite"), "tick_s": 0.1,
                                 "report_interval_s": 0.25},
                     rollout={"strategy": "canary", "stable": "v1", "candidate": "v2",
                              "analysis": {"interval_s": 1, "min_samples": 10},
                              "gates": [{"metric": "error_rate", "max": 0.05}],
                              "steps": [{"set_weight": 20}, {"pause": {}}]})
    cfg["versions"][1] = {"name": "v2", "path": str(corrupt), "backend": "onnx"}
    name = f"failed-canary-{uuid.uuid4().hex[:6]}"
    serve.run(build_app(cfg), name=name, route_prefix=f"/{name}")
    try:
        base = serve_instance.url(f"/{name}")
        for i in range(10):  # answered by the stable, the canary's share included
            response = http.post(base + "/predict", json={"inputs": [DIGIT_ROW], "user_id": f"user-{i}"})
            assert response.status_code == 200 and response.json()["version"] == "v1", response.text
        status = wait_for(lambda: http.get(base + "/rollout/status?history=true").json(),
                          lambda s: s["phase"] == "aborted")
        assert status["weights_pct"] == {"v1": 100.0, "v2": 0.0}
        assert "candidate v2 failed to load" in status["reason"] and str(tmp_path) not in status["reason"], status
    finally:
        serve.delete(name)


def wait_for(read, done, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.2)
        value = read()
    assert done(value), value
    return value
