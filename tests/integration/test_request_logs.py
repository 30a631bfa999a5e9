"""Ray Serve's access line for each request to the router carries the request's id and the version
that answered it."""

from __future__ import annotations

import json
import time
import uuid

from ray import serve

from serve_ab import build_app

from tests.integration.conftest import DIGIT_ROW, experiment, router_log_lines
from tests.support.polling import wait_for


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

    # Handle calls: Ray's line for them is "CALL predict OK ...".
    handle = serve.get_app_handle(app)
    called = {}
    for i in range(3):
        answer = handle.predict.remote([DIGIT_ROW], key=f"user-{i}").result(timeout_s=60)
        called[answer["request_id"]] = answer["version"]

    def lines_for_every_request():
        lines = router_log_lines(app)
        found = {rid: [ln for ln in lines if rid in ln and " version=" in ln] for rid in [*sent, bad_id, *called]}
        return found if all(found.values()) else None

    # Ray's line: "<request id> -- POST /<app> 200 4.1ms version=v1"; "CALL predict OK ..." for a handle.
    found = wait_for(lines_for_every_request, "an access line per request in the router's log", timeout_s=30)
    for request_id, version in sent.items():
        (line,) = found[request_id]
        assert f"POST /{app} 200 " in line and line.endswith(f"ms version={version}"), line
    (line,) = found[bad_id]
    assert f"POST /{app} 400 " in line and line.endswith("ms version=-"), line  # refused before any version
    for request_id, version in called.items():
        (line,) = found[request_id]
        assert "CALL predict OK " in line and line.endswith(f"ms version={version}"), line


def test_router_access_log_false_writes_no_access_lines_and_keeps_serving(http, serve_instance, deployed,
                                                                         model_repo, tmp_path):
    # Ray Serve's logging_config.enable_access_log: false, as for a plain deployment.
    cfg = experiment(model_repo, controller={"state_path": str(tmp_path / "state.sqlite")},
                     router={"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}, "access_log": False})
    app = deployed(cfg, "nologs")
    request_ids = []
    for i in range(4):
        request_id = uuid.uuid4().hex
        response = http.post(serve_instance.url(f"/{app}/predict"), headers={"x-request-id": request_id},
                             json={"user_id": f"user-{i}", "inputs": [DIGIT_ROW]})
        assert response.status_code == 200 and response.json()["version"] in {"v1", "v2"}
        request_ids.append(request_id)
    handle = serve.get_app_handle(app)
    for i in range(2):
        request_ids.append(handle.predict.remote([DIGIT_ROW], key=f"user-{i}").result(timeout_s=60)["request_id"])
    # A line is written as its answer leaves; two seconds more for the file to show it.
    time.sleep(2.0)
    lines = router_log_lines(app)
    assert lines, "the router's replica log is still written (startup and other lines)"
    assert not [ln for ln in lines if any(rid in ln for rid in request_ids)], "no access line"
    # What was served still counts: the report has all six answers.
    def served() -> int:
        versions = http.get(serve_instance.url(f"/{app}/experiment/stats")).json()["versions"]
        return sum(figures["requests"] for figures in versions.values())

    wait_for(lambda: served() == 6, "the six answers at the controller", timeout_s=30)


def test_the_apps_json_logging_reaches_the_router_and_gives_the_version_a_field(http, serve_instance,
                                                                               model_repo, tmp_path):
    # The app's logging_config (here from serve.run; a config file's `logging_config:` alike)
    # applies to the router, which sets none of its own while its access line is on.
    cfg = experiment(model_repo, controller={"state_path": str(tmp_path / "state.sqlite")})
    app = f"json-logs-{uuid.uuid4().hex[:6]}"
    serve.run(build_app(cfg), name=app, route_prefix=f"/{app}", logging_config={"encoding": "JSON"})
    try:
        request_id = uuid.uuid4().hex
        answer = http.post(serve_instance.url(f"/{app}/predict"), headers={"x-request-id": request_id},
                           json={"user_id": "json-user", "inputs": [DIGIT_ROW]})
        assert answer.status_code == 200, answer.text

        def access_record():
            for line in router_log_lines(app):
                record = json.loads(line) if line.startswith("{") else {}
                if record.get("request_id") == request_id and "model_version" in record:
                    return record
            return None

        record = wait_for(access_record, "the JSON access line of the request", timeout_s=30)
        assert record["model_version"] == answer.json()["version"]
        assert record["message"].endswith(f"ms version={record['model_version']}"), record
    finally:
        serve.delete(app)
