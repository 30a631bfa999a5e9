"""End to end as a user runs it: ``serve run configs/ab.yaml``, HTTP, the CLI, Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.integration.conftest import DIGIT_ROW, free_port

SERVE = Path(sys.executable).parent / "serve"
SERVE_AB = Path(sys.executable).parent / "serve-ab"
STARTUP_TIMEOUT_S = 240


def on_free_ports(config: dict) -> int:
    """Move a shipped config's HTTP port, and its gRPC port if it has one, to free ports (8000
    and 9000 may be taken); returns the HTTP port."""
    config["http_options"]["port"] = port = free_port()
    if "grpc_options" in config:
        config["grpc_options"]["port"] = free_port()
    return port


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_serve_run(config_path: Path, log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``serve run`` with a Ray of its own: a fresh temp dir, so it cannot find (and join)
    a cluster left over from an earlier test or a user's own ``ray start``; ``env``: more
    environment variables for it."""
    env = {**os.environ, **(env or {}), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_TMPDIR": tempfile.mkdtemp(prefix="sab-")}  # short: Ray's socket paths are capped
    env.pop("RAY_ADDRESS", None)
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(SERVE), "run", str(config_path)], cwd=REPO_ROOT, env=env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            # Ctrl-C as at a terminal: a suite started in the background (nohup, `&`, some CI
            # runners) runs with SIGINT ignored, which the child would inherit, and Python then
            # never raises KeyboardInterrupt, so stop_serve_run's Ctrl-C would do nothing.
            preexec_fn=_default_sigint,
        )
    process.ray_tmpdir = env["RAY_TMPDIR"]  # type: ignore[attr-defined]
    return process


def stop_serve_run(process: subprocess.Popen) -> int:
    """Ctrl-C, as a user would; then make sure nothing of that Ray is left running."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pass
    returncode = process.poll()
    try:
        os.killpg(process.pid, signal.SIGKILL)  # stragglers of its session (raylet, workers)
    except ProcessLookupError:
        pass
    process.wait()
    shutil.rmtree(process.ray_tmpdir, ignore_errors=True)  # type: ignore[attr-defined]
    return returncode


def wait_until_ready(process: subprocess.Popen, base: str, log_path: Path) -> None:
    """Until every version answers (``/v2/health/ready``), or fail with the log's tail."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        assert process.poll() is None, f"serve run exited early:\n{log_path.read_text()[-4000:]}"
        try:
            if httpx.get(base + "/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"not ready in time:\n{log_path.read_text()[-4000:]}"
        time.sleep(1)


class ServedRun:
    """A running ``serve run`` and what the tests sent it: ``answered`` counts the inference
    requests answered 200, which the run's record must hold once it is stopped."""

    def __init__(self, base: str, args: dict, process: subprocess.Popen, records: Path, log_path: Path):
        self.base, self.args, self.process, self.records, self.log_path = base, args, process, records, log_path
        self.answered = 0


# One serve run per shipped config for the whole module (each costs 25-40 s to start): the
# tests use it in order, and the last one stops it with Ctrl-C.
@pytest.fixture(scope="module", params=["ab.yaml", "ab_isolated.yaml"])
def served(request, model_repo, tmp_path_factory):
    """``serve run`` on a shipped config, moved to a free port (8000 may be taken), its run
    record and state in a temp dir."""
    tmp_path = tmp_path_factory.mktemp(request.param.removesuffix(".yaml"))
    config = yaml.safe_load((REPO_ROOT / "configs" / request.param).read_text())
    port = on_free_ports(config)
    args = config["applications"][0]["args"]
    records = tmp_path / "runs.sqlite"
    args["analysis"] = {**args.get("analysis", {}), "records": {"path": str(records)}}
    args["controller"] = {**args.get("controller", {}), "state_path": str(tmp_path / "state.sqlite")}
    config_path = tmp_path / request.param
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "serve.log"
    process = start_serve_run(config_path, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(process, base, log_path)
        yield ServedRun(base, args, process, records, log_path)
    finally:
        stop_serve_run(process)


def test_serve_run_serves_both_versions_over_http(served):
    base, args = served.base, served.args
    key_in_header = args["assignment"]["key"] == "header"
    seen = Counter()
    with httpx.Client(timeout=30) as client:
        for i in range(60):
            user = f"e2e-user-{i}"
            body = {"inputs": [DIGIT_ROW]}
            headers = {"x-user-id": user} if key_in_header else {}
            if not key_in_header:
                body["user_id"] = user
            response = client.post(base + "/predict", json=body, headers=headers)
            assert response.status_code == 200, response.text
            served.answered += 1
            assert response.headers["x-model-version"] == response.json()["version"]
            seen[response.json()["version"]] += 1
        assert set(seen) == {"v1", "v2"}, seen
        v2 = client.post(base + "/v2/models/digits/infer", json={
            "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": DIGIT_ROW}],
        })
        assert v2.status_code == 200 and v2.json()["model_version"] in ("v1", "v2")
        served.answered += 1
        assert client.post(base + "/predict", content=b"{oops").status_code == 400
        assert client.post(base + "/predict", json={"inputs": [DIGIT_ROW]}).status_code == 200
        served.answered += 1


def test_a_run_stopped_with_ctrl_c_exits_cleanly_and_keeps_every_request_in_its_record(served):
    """150 more requests, Ctrl-C: serve run exits 0 within 90 s, and ``serve-ab runs`` shows
    every request the run answered.

    The run is far shorter than ``records.interval_s`` (60 s): the record is written at the
    first traffic and, with the final figures, by the controller on its way down.
    """
    with httpx.Client(timeout=30) as client:
        for i in range(150):
            response = client.post(served.base + "/predict", json={"user_id": f"u{i}", "inputs": [DIGIT_ROW]},
                                   headers={"x-user-id": f"u{i}"})
            assert response.status_code == 200, response.text
            served.answered += 1
    assert stop_serve_run(served.process) == 0, served.log_path.read_text()[-4000:]
    with pytest.raises(httpx.TransportError):
        httpx.get(served.base + "/v2/health/live", timeout=2)
    listed = subprocess.run([str(SERVE_AB), "runs", "--records", str(served.records)], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith("digits-")]
    assert f" {served.answered} " in f" {row} ", (served.answered, listed.stdout)


def test_validate_cli_on_shipped_and_broken_configs(model_repo, tmp_path):
    ok = subprocess.run([str(SERVE_AB), "validate", *sorted(map(str, (REPO_ROOT / "configs").glob("*.yaml")))],
                        cwd=REPO_ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = yaml.safe_load((REPO_ROOT / "configs" / "ab.yaml").read_text())
    bad["applications"][0]["args"]["placement"] = "everywhere"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    result = subprocess.run([str(SERVE_AB), "validate", str(tmp_path / "bad.yaml")],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert "applications.0.args.placement: Input should be 'colocated' or 'isolated' (got 'everywhere')" in result.stdout


def test_serve_run_refuses_an_invalid_experiment_before_deploying(model_repo, tmp_path):
    """The builder raises the schema's error; no replica is ever started.

    (serve run itself stays up after a failed deploy, as Ray Serve does, so we stop it.)
    """
    config = yaml.safe_load((REPO_ROOT / "configs" / "ab.yaml").read_text())
    on_free_ports(config)
    config["applications"][0]["args"]["weights"] = {"v1": 50, "v2": 40}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    log_path = tmp_path / "serve.log"
    process = start_serve_run(tmp_path / "bad.yaml", log_path)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while "weights: weights sum to 90%; they must sum to 100" not in log_path.read_text():
            assert time.monotonic() < deadline, f"no schema error:\n{log_path.read_text()[-4000:]}"
            time.sleep(1)
        assert "Adding 1 replica" not in log_path.read_text()
    finally:
        stop_serve_run(process)
