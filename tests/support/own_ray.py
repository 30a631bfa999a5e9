"""A multi-node scenario in a process (and a Ray) of its own.

``ray.cluster_utils.Cluster`` (several raylets on this machine) needs a Ray of its own: the
scenario runs as ``python -m <module> ... --out <json>`` with its own ``RAY_TMPDIR``, so the
session's shared Ray (tests/integration/conftest.py) never sees it, and killing the
subprocess's process group leaves nothing of it behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.conftest import REPO_ROOT


def run_scenario(module: str, args: list[str], tmp_path: Path, *, timeout_s: float, name: str) -> dict:
    """Run ``python -m module *args --out <file>``; the JSON it wrote. Fails with the log's tail."""
    out, log_path = tmp_path / f"{name}.json", tmp_path / f"{name}.log"
    ray_tmpdir = tempfile.mkdtemp(prefix="sab-")  # short: Ray's socket paths are capped
    env = {**os.environ, "RAY_TMPDIR": ray_tmpdir, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", module, *args, "--out", str(out)], cwd=REPO_ROOT,
                                   env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        returncode = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        returncode = None
    finally:
        try:  # raylets, GCS and workers of that cluster, should its own shutdown have missed any
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
    tail = log_path.read_text(errors="replace")[-6000:]
    assert returncode == 0, f"{name} scenario {'timed out' if returncode is None else 'failed'}:\n{tail}"
    return json.loads(out.read_text())
