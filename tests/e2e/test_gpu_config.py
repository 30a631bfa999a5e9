"""``serve run configs/gpu_shared.yaml`` on a machine without a GPU: refused at once with a
message that says what to change. With ``resources_missing: cpu`` it is served on the CPU:
tests/integration/test_gpu_fallback.py (on the session's Ray, which saves a serve run).

Timings are printed (pytest -s), never asserted; every wait is bounded by a deadline.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.e2e.test_serve_run import STARTUP_TIMEOUT_S, start_serve_run, stop_serve_run
from tests.integration.conftest import free_port

REFUSAL_V1 = ("versions.0.deployment.ray_actor_options.num_gpus: version 'v1' asks for 0.5 GPU "
              "per replica, but the cluster has no GPU")


def gpu_config(tmp_path: Path, **args) -> tuple[Path, int]:
    """configs/gpu_shared.yaml on a free port, with changes to its experiment."""
    config = yaml.safe_load((REPO_ROOT / "configs" / "gpu_shared.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    # Not the checkout's .serve-ab/state.sqlite, which a `serve run` of another config may hold.
    config["applications"][0]["args"]["controller"] = {"state_path": str(tmp_path / "state.sqlite")}
    config["applications"][0]["args"].update(args)
    path = tmp_path / "gpu_shared.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, port


def log_tail(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-4000:]


@pytest.fixture
def no_gpu(monkeypatch):
    """A cluster without GPUs on any machine: Ray counts the GPUs it can see, and serve run
    starts its Ray from this environment. Unbuffered, so its log shows lines as they come."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")


def test_gpu_config_fails_fast_on_a_cluster_without_gpus(model_repo, tmp_path, no_gpu):
    config_path, _ = gpu_config(tmp_path)
    log_path = tmp_path / "serve.log"
    started = time.monotonic()
    process = start_serve_run(config_path, log_path)
    try:
        deadline = started + STARTUP_TIMEOUT_S
        refused_after_s = None
        # Ray Serve runs the builder up to 4 times (its build task retries) before it
        # marks the deploy failed; the first refusal is in the log seconds earlier.
        while "Deploying app 'digits-gpu' failed" not in (log := log_path.read_text(errors="replace")):
            if refused_after_s is None and REFUSAL_V1 in log:
                refused_after_s = time.monotonic() - started
            assert process.poll() is None, f"serve run exited early:\n{log_tail(log_path)}"
            assert time.monotonic() < deadline, f"no refusal in time:\n{log_tail(log_path)}"
            time.sleep(0.5)
        failed_after_s = time.monotonic() - started
    finally:
        stop_serve_run(process)
    print(f"\ngpu_shared.yaml without a GPU, after serve run started: first refusal "
          f"{refused_after_s or failed_after_s:.1f} s, deploy marked failed {failed_after_s:.1f} s")
    for index, name in ((0, "v1"), (1, "v2")):
        assert (f"versions.{index}.deployment.ray_actor_options.num_gpus: version '{name}' asks for "
                "0.5 GPU per replica, but the cluster has no GPU; set resources_missing: cpu to run "
                "it on the CPU instead, or add a node with a GPU to the cluster (got 0.5)") in log, log[-4000:]
    assert "Adding 1 replica" not in log  # refused before anything was placed
