"""Every line the router writes about a request carries the request's id and its version."""

from __future__ import annotations

import uuid
from pathlib import Path

import ray
from ray import serve

from tests.integration.conftest import DIGIT_ROW, experiment
from tests.integration.test_reliability import deployed, wait_for  # noqa: F401


def router_log_lines(app: str) -> list[str]:
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    return [line for path in logs.glob(f"replica_{app}_Router_*.log")
            for line in path.read_text(errors="replace").splitlines()]


def test_access_lines_name_the_request_id_and_the_version(http, serve_instance, deployed, model_repo, tmp_path):
    cfg = experiment(model_repo, controller={"state_path": str(tmp_path / "state.sqlite")})
    app = deployed(cfg, "logs")
    sent = {}
    for i in range(6):
        request_id = uuid.uuid4().hex
        response = http.post(serve_instance.url(f"/{app}/predict"), headers={"x-request-id": request_id},
                             json={"user_id": f"user-{i}", "inputs": [DIGIT_ROW]})
        assert response.status_code == 200
        assert response.json()["request_id"] == request_id  # the client's id is kept
        sent[request_id] = response.json()["version"]
    bad_id = uuid.uuid4().hex
    assert http.post(serve_instance.url(f"/{app}/predict"), headers={"x-request-id": bad_id},
                     json={"user_id": "x", "inputs": [[1.0]]}).status_code == 400

    # Handle calls, one at a time: the case where the line is held until the answer has left.
    handle = serve.get_app_handle(app)
    called = {}
    for i in range(3):
        answer = handle.predict.remote([DIGIT_ROW], key=f"user-{i}").result(timeout_s=60)
        called[answer["request_id"]] = answer["version"]

    def lines_for_every_request():
        lines = router_log_lines(app)
        found = {rid: [ln for ln in lines if rid in ln and "/predict" in ln] for rid in [*sent, bad_id]}
        found |= {rid: [ln for ln in lines if rid in ln and "predict version=" in ln] for rid in called}
        return found if all(found.values()) else None

    found = wait_for(lines_for_every_request, "an access line per request in the router's log", timeout_s=30)
    for request_id, version in sent.items():
        (line,) = found[request_id]
        assert f"version={version}" in line and " 200 " in line, line
    (line,) = found[bad_id]
    assert "version=-" in line and " 400 " in line, line  # refused before any version saw it
    for request_id, version in called.items():
        (line,) = found[request_id]
        assert f"predict version={version} " in line, line
