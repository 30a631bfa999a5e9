"""A corrupt candidate file on a real Ray Serve: the app starts, the stable answers, and the
candidate is reported failed, in both placements. (Not run by the unit suite: real Ray.)"""

from __future__ import annotations

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
    finally:
        serve.delete(name)
