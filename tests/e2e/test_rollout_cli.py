"""A canary as an operator runs it: serve run, the serve-ab CLI, a token from the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from tests.conftest import REPO_ROOT
from tests.e2e.test_serve_run import STARTUP_TIMEOUT_S, start_serve_run, stop_serve_run
from tests.integration.conftest import DIGIT_ROW, free_port

SERVE_AB = Path(sys.executable).parent / "serve-ab"
TOKEN = "e2e-token-1234"


def serve_ab(*args, token: str | None = None, url: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SERVE_AB_CONTROL_TOKEN"}
    if token:
        env["SERVE_AB_CONTROL_TOKEN"] = token
    return subprocess.run([str(SERVE_AB), *args, "--url", url], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_operator_runs_a_paused_canary_with_the_cli(model_repo, tmp_path, monkeypatch):
    """One canary, as an operator and a CI step see it: ``serve-ab status`` shows the pause,
    ``status --wait --timeout`` exits 3 while the canary holds, ``promote`` needs the token
    (401 without, the wrong one never echoed), and once promoted ``status --wait`` exits 0
    with the final state (``-o json``), the answers come from v2 and the history names who
    promoted. (One serve run for all of it: a run costs 25-40 s to start.)"""
    config = yaml.safe_load((REPO_ROOT / "configs" / "canary.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    app_name = config["applications"][0]["name"]
    args = config["applications"][0]["args"]
    args["rollout"]["steps"] = [{"set_weight": 20}, {"pause": {}}, {"set_weight": 100}]
    args["controller"]["state_path"] = str(tmp_path / "state.sqlite")
    (tmp_path / "canary.yaml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{port}"
    # The token reaches the replicas the way a user gives it: exported before serve run.
    monkeypatch.setenv("SERVE_AB_CONTROL_TOKEN", TOKEN)
    process = start_serve_run(tmp_path / "canary.yaml", tmp_path / "serve.log")
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                if httpx.get(url + "/rollout/status", timeout=2).json().get("phase") == "paused":
                    break
            except (httpx.TransportError, ValueError):
                pass
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-4000:]
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-4000:]
            time.sleep(1)
        shown = serve_ab("status", url=url)
        assert shown.returncode == 0, shown.stderr
        assert "paused" in shown.stdout and "v2" in shown.stdout and "20.0%" in shown.stdout

        started = time.monotonic()
        held = serve_ab("status", "--wait", "--timeout", "3s", "--interval", "1s", url=url)
        assert held.returncode == 3, held.stdout + held.stderr
        assert time.monotonic() - started >= 3.0
        assert "paused, step 2 of 3" in held.stdout and "timed out after 3s" in held.stderr
        assert "serve-ab promote" in held.stderr

        refused = serve_ab("promote", url=url)
        assert refused.returncode == 1 and "401" in refused.stderr
        wrong = serve_ab("promote", token="not-the-token", url=url)
        assert wrong.returncode == 1 and "not-the-token" not in wrong.stdout + wrong.stderr

        promoted = serve_ab("promote", token=TOKEN, url=url)
        assert promoted.returncode == 0, promoted.stderr
        assert TOKEN not in promoted.stdout + promoted.stderr
        done = serve_ab("status", "--wait", "--timeout", "60s", "--interval", "1s", "-o", "json", url=url)
        assert done.returncode == 0, done.stdout + done.stderr
        final = json.loads(done.stdout)  # -o json: nothing but the final object
        assert final["phase"] == "promoted" and final["weights_pct"]["v2"] == 100.0
        status = json.loads(serve_ab("status", "--json", url=url).stdout)
        assert status["phase"] == "promoted" and status["weights_pct"]["v2"] == 100.0
        answer = httpx.post(url + "/predict", json={"user_id": "anyone", "inputs": [DIGIT_ROW]}).json()
        assert answer["version"] == "v2"
        history = serve_ab("status", "--history", url=url)
        assert "promoted by operator" in history.stdout

        # --app NAME through the dashboard `serve run` started, when it is ours (port 8265 may be taken by
        # another Ray on this machine, which then has no such app).
        try:
            details = httpx.get("http://127.0.0.1:8265/api/serve/applications/", timeout=5).json()
        except (httpx.TransportError, ValueError):
            details = {}
        if (details.get("http_options") or {}).get("port") == port and app_name in details.get("applications", {}):
            env = {k: v for k, v in os.environ.items() if k not in ("SERVE_AB_URL", "RAY_ADDRESS")}
            by_name = subprocess.run([str(SERVE_AB), "status", "--wait", "--timeout", "10s", "--app", app_name,
                                      "--address", "http://127.0.0.1:8265"], env=env, cwd=REPO_ROOT,
                                     capture_output=True, text=True, timeout=60)
            assert by_name.returncode == 0, by_name.stdout + by_name.stderr
            assert "promoted" in by_name.stdout
    finally:
        stop_serve_run(process)
