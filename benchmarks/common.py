"""What the benchmark scripts share: the machine, the example models, small summaries.

- the machine: :func:`describe_machine`, :func:`load_now`, :func:`other_ray_instances`
  and :func:`machine_shared`, so every report says which machine and load it ran under;
  :func:`report_header` puts them at the top of a script's JSON;
- the example models under ``models/digits``: :func:`version`, :func:`digits_experiment`
  (the serve-ab experiment every script deploys, in its variants) and
  :func:`request_bodies` (real digits, a new user id per request);
- :func:`replica_pids`: a Serve replica's processes, found by the title Ray gives them;
- :func:`spread` and :func:`percentile`, the summaries several scripts print.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODELS = REPO / "models" / "digits"
RESULTS_MD = HERE / "RESULTS.md"
#: The file each backend loads, per version folder under MODELS.
MODEL_FILES = {"onnx": "model.onnx", "torch": "model.pt2"}


# -- the machine ---------------------------------------------------------------------------


def describe_machine() -> dict[str, Any]:
    import fastapi
    import onnxruntime
    import ray

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed"
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": memory_gib,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "ray": ray.__version__,
        "torch": torch_version,
        "onnxruntime": onnxruntime.__version__,
        "fastapi": fastapi.__version__,
        "numpy": np.__version__,
    }


def other_ray_instances() -> int:
    """Raylets on this machine that are not ours: a sign that it is shared right now."""
    try:
        out = subprocess.run(["pgrep", "-c", "-x", "raylet"], capture_output=True, text=True,
                             check=False)  # pgrep exits 1 when it finds none
        return max(0, int(out.stdout.strip() or 0) - 1)
    except (OSError, ValueError):
        return -1


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def load_now() -> list[float]:
    """The load average, rounded for a report; empty where the system has none."""
    return [round(x, 2) for x in load_average() or ()]


def machine_shared(other_ray: int, load_before: list[float]) -> bool:
    """Other Ray instances, or more runnable work than cores before we even started."""
    return bool(other_ray) or bool(load_before and load_before[0] > (os.cpu_count() or 1))


def report_header(bench: str, quick: bool | None = None, dated: bool = True,
                  **more: Any) -> dict[str, Any]:
    """The first keys of a script's JSON: what ran, when, on which machine, under what load.

    ``quick=None`` leaves out ``mode`` and ``dated=False`` the date, for the scripts whose
    JSON never had them.
    """
    header: dict[str, Any] = {"bench": bench}
    if quick is not None:
        header["mode"] = "quick" if quick else "full"
    if dated:
        header["date"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    header["machine"] = describe_machine()
    header["load_before"] = load_now()
    header.update(more)
    return header


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the example models ------------------------------------------------------------------


def version(name: str, backend: str = "onnx") -> dict[str, Any]:
    """One entry of an experiment's ``versions``: models/digits/<name>, by its backend's file."""
    return {"name": name, "path": str(MODELS / name / MODEL_FILES[backend]), "backend": backend}


def _state_dir() -> str:
    """One temporary directory per process for the benchmark apps' state stores."""
    global _STATE_DIR
    if _STATE_DIR is None:
        _STATE_DIR = tempfile.mkdtemp(prefix="serve-ab-bench-")
    return _STATE_DIR


_STATE_DIR: str | None = None


def digits_experiment(versions: list[dict[str, Any]], weights: dict[str, float], salt: str,
                      router: dict[str, Any], placement: str | None = "colocated",
                      version_options: dict[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    """A serve-ab experiment on the digits models, keyed on the body's ``user_id``.

    ``version_options`` become each version's ``deployment`` (isolated placement);
    ``placement=None`` leaves serve-ab's default; ``more`` adds top-level keys
    (``rollout``, ``controller``, ``shadow``). Without a ``controller``, each experiment
    gets a state store of its own: two running apps serving one model from one store are
    refused (``serve_ab/store/claim.py``), and a benchmark runs several side by side.
    """
    if version_options is not None:
        versions = [dict(v, deployment=version_options) for v in versions]
    experiment: dict[str, Any] = {
        "model": "digits",
        "versions": versions,
        "weights": weights,
        "assignment": {"key": "json", "field": "user_id", "salt": salt},
    }
    if placement is not None:
        experiment["placement"] = placement
    experiment["router"] = router
    if "controller" not in more:
        experiment["controller"] = {"state_path": str(Path(tempfile.mkdtemp(prefix="state-", dir=_state_dir()))
                                                      / "state.sqlite")}
    experiment.update(more)
    return experiment


def request_bodies(count: int = 256) -> tuple[list[str], list[tuple[np.ndarray, str]]]:
    """JSON bodies for HTTP and (batch, key) pairs for handles: real digits, new user ids."""
    rows = json.loads((MODELS / "samples.json").read_text())["inputs"]
    bodies, handle_args = [], []
    for i in range(count):
        row = rows[i % len(rows)]
        user = f"user-{i:05d}"
        bodies.append(json.dumps({"inputs": [row], "user_id": user}))
        handle_args.append((np.asarray([row], dtype=np.float32), user))
    return bodies, handle_args


# -- replica processes -----------------------------------------------------------------------


def _title(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def replica_pids(app: str, deployment: str) -> list[int]:
    """Processes titled ``ray::ServeReplica:<app>:<deployment>`` (setproctitle rewrites argv)."""
    wanted = f"ServeReplica:{app}:{deployment}"
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            title = _title(entry)
            if title.startswith("ray::") and (title.split()[0] == f"ray::{wanted}"
                                               or title.split()[0].startswith(f"ray::{wanted}.")):
                pids.append(int(entry))
    return sorted(pids)


# -- summaries -------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, float]:
    """Median and range: how a figure varied over the rounds of one run."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def percentile(values: list[float], fraction: float) -> float:
    """The value at ``fraction`` (0.5, 0.99) of the sorted values, no interpolation."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]
