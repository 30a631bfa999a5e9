"""GPU check: served throughput with dynamic batching vs the same model offline.

    python -m benchmarks.gpu_check                  # CUDA, both backends; one JSON line last
    python -m benchmarks.gpu_check --device cpu     # the same measurement on the CPU
    python -m benchmarks.gpu_check --backends torch --hidden 4096 --rows-per-request 64
    python benchmarks/gpu_check.py --no-ray         # a GPU box with torch and numpy, no Ray
    python benchmarks/gpu_check.py --no-ray --device cpu --quick   # what the unit tests run

**--no-ray** (needs only torch and numpy; onnx and onnxruntime optional, the onnx backend
skipped with the reason where either is missing): no Ray, no HTTP, one process. Per backend:
the **bare** model (the exported torch module on a tensor already on the device,
synchronized; or onnxruntime's ``InferenceSession.run``), the **predictor**
(``load_predictor(...).predict``) and the **served** path (that predictor behind
``serve_ab.backends.Batcher``, the batcher ``LoadedVersion`` runs in every replica, fed by 2M
concurrent callers of R rows on one event loop) at the same batch B = R x M: rows/s, p50
per batch (per request when served), ``ratio`` = served/bare. **Colocated**: two versions
(v1 seed 0, v2 seed 1) loaded side by side on one device, half the callers each, vs one:
``colocated.vs_one_version``. **GPU memory** per version: ``torch.cuda.mem_get_info`` before
and after each version's load and warm-up (after the CUDA context exists), torch's
``memory_allocated`` too, and for torch the ``max_memory_allocated`` peak while served and
colocated; null on the CPU, with the reason. What it leaves out: HTTP, the router and Ray's
handle hops (the Ray path below measures them).

The model, on both paths, is an MLP 64-H-...-H-10 with seeded random weights, written by
models/build.py's own writers as model.onnx and model.pt2, so both backends run the same
network. Without --no-ray, for each backend (onnx: onnxruntime on its CUDAExecutionProvider; torch: the torch.export program
moved to cuda), in one Ray instance:

- **offline**: the predictor serve-ab itself uses (``serve_ab.backends.load_predictor``,
  the same device and threads), in this process, on batches of B rows back to back;
- **served**: a serve-ab app, isolated placement: router replica(s) on the CPU and the
  version's own deployment (one replica, one GPU) with ``batching: {max_batch_size: M}``,
  under closed-loop HTTP load (benchmarks.loadgen) of R rows per request at concurrency 2M, so a
  full batch is B = R x M rows, the offline batch size;
- the ratio served rows/s / offline rows/s is taken within each round (the two alternate),
  median and range over the rounds; DESIGN.md's target is at least 0.8x.

GPU memory per version: the version replica's own GPU memory, per process from NVML
(pynvml, or the copy vendored in Ray) or else ``nvidia-smi --query-compute-apps``; where
neither lists the replica's pid (a container's pid namespace), the device's used memory
before and after deploying it. For torch, also ``torch.cuda.max_memory_allocated()`` of the
offline run in this process (the same model and batch; the replica's own counter cannot be
read from outside it). The JSON names the method used.

Without a GPU (``--device cuda``, the default): one JSON line ``{"gpu": false, "reason": ...}``
and exit status 2, before Ray starts, so nothing waits for a GPU that is not there. A
backend that cannot use the GPU that is there (onnxruntime without CUDAExecutionProvider,
i.e. the onnxruntime package instead of onnxruntime-gpu; a CPU-only torch) is reported with
the reason and never run on the CPU instead; exit status 1. ``--time-limit`` stops a run
that hangs (exit 1, its apps deleted).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import importlib.util
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # python benchmarks/gpu_check.py: the checkout is not on sys.path yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Only the standard library and numpy up here: --no-ray runs where Ray, fastapi, pydantic and
# onnxruntime are not installed; each is imported by the path that needs it.
from benchmarks.common import load_now, log  # noqa: E402

TARGET_SERVED_VS_OFFLINE = 0.8  # DESIGN.md, "Numbers to reach"
BACKENDS = {"onnx": "model.onnx", "torch": "model.pt2"}
# Serving costs about the same per request whatever the model, so the ratio can only near
# 1 when a batch keeps the device busy for longer than its requests take to get through
# Serve: on a GPU that takes a wide model and many rows per request (and routers to parse
# them); on the CPU a smaller one keeps the run short (the CPU mode checks the script).
DEFAULTS: dict[str, dict[str, int]] = {
    "cuda": {"hidden": 8192, "layers": 4, "rows_per_request": 32, "router_replicas": 4},
    "cpu": {"hidden": 1024, "layers": 2, "rows_per_request": 8, "router_replicas": 1},
}
EXIT_BACKEND_FAILED, EXIT_NO_GPU = 1, 2


class TimeLimit(Exception):
    """--time-limit ran out (SIGALRM)."""


# -- is there a GPU, and can each backend use it -------------------------------------------


def nvidia_smi(*args: str) -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=30,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def probe_gpu() -> dict[str, Any]:
    import torch

    try:
        import onnxruntime
    except ImportError:  # a torch-only box: the onnx backend is skipped, with this reason
        onnxruntime = None
    listed = nvidia_smi("-L")
    return {
        "nvidia_smi_gpus": [line for line in (listed or "").splitlines() if line.startswith("GPU")],
        "nvidia_smi": shutil.which("nvidia-smi") is not None,
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "torch_cuda_available": torch.cuda.is_available(),
        "onnxruntime": onnxruntime.__version__ if onnxruntime else None,
        "onnxruntime_providers": onnxruntime.get_available_providers() if onnxruntime else [],
        # Writing the ONNX model needs the onnx package (models/build.py's writer).
        "onnx": importable("onnx"),
    }


def importable(name: str) -> bool:
    if name in sys.modules:  # None there: blocked on purpose (the tests do it)
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def no_gpu_reason(probe: dict[str, Any]) -> str | None:
    if probe["nvidia_smi_gpus"] or probe["torch_cuda_available"]:
        return None
    if not probe["nvidia_smi"]:
        return "no NVIDIA GPU: nvidia-smi is not installed and torch sees no CUDA device"
    return "no NVIDIA GPU: nvidia-smi -L lists none and torch sees no CUDA device"


def backend_missing(backend: str, probe: dict[str, Any]) -> str | None:
    """Why a backend cannot run here at all (a package that is not installed), or None."""
    if backend == "onnx" and probe["onnxruntime"] is None:
        return ("onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu for "
                "CUDA); the onnx backend is skipped")
    if backend == "onnx" and not probe.get("onnx", True):
        return ("the onnx package is not installed, so the ONNX model cannot be written "
                "(pip install onnx); the onnx backend is skipped")
    return None


def backend_cannot_use_cuda(backend: str, probe: dict[str, Any]) -> str | None:
    if backend == "onnx" and "CUDAExecutionProvider" not in probe["onnxruntime_providers"]:
        from serve_ab.backends.onnx import cuda_provider_hint

        return (f"onnxruntime {probe['onnxruntime']} has no CUDAExecutionProvider (providers: "
                f"{probe['onnxruntime_providers']}): {cuda_provider_hint()}; not run on the CPU instead")
    if backend == "torch" and not probe["torch_cuda_available"]:
        built = f"built for CUDA {probe['torch_cuda_build']}" if probe["torch_cuda_build"] else "a CPU-only build"
        return f"torch {probe['torch']} ({built}) sees no CUDA device; not run on the CPU instead"
    return None


# -- GPU memory ----------------------------------------------------------------------------


def _nvml() -> Any:
    try:
        import pynvml
    except ImportError:
        from ray._private.thirdparty import pynvml
    pynvml.nvmlInit()
    return pynvml


def process_gpu_memory_mib(pid: int) -> tuple[float | None, str]:
    """The GPU memory one process holds, and how it was read (or why it could not be)."""
    try:
        nvml = _nvml()
        seen: list[int] = []
        used = []
        for index in range(nvml.nvmlDeviceGetCount()):
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(nvml.nvmlDeviceGetHandleByIndex(index)):
                seen.append(proc.pid)
                if proc.pid == pid and proc.usedGpuMemory is not None:
                    used.append(proc.usedGpuMemory / 2**20)
        if used:
            return round(sum(used), 1), "NVML per-process used memory (pynvml)"
        nvml_note = f"NVML lists pids {seen}, not {pid}"
    except Exception as err:  # noqa: BLE001 - no NVML library, no driver: try nvidia-smi
        nvml_note = f"NVML unavailable ({type(err).__name__})"
    out = nvidia_smi("--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")
    if out is None:
        return None, f"{nvml_note}; nvidia-smi unavailable"
    rows = [line.split(",") for line in out.splitlines() if line.strip()]
    used = [float(mib) for p, mib in rows if int(p) == pid]
    if used:
        return round(sum(used), 1), "nvidia-smi --query-compute-apps per-process used_memory"
    return None, f"{nvml_note}; nvidia-smi lists pids {[int(p) for p, _ in rows]}, not {pid}"


def device_used_mib() -> float | None:
    try:
        nvml = _nvml()
        return sum(nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(i)).used
                   for i in range(nvml.nvmlDeviceGetCount())) / 2**20
    except Exception:  # noqa: BLE001 - fall back to nvidia-smi
        out = nvidia_smi("--query-gpu=memory.used", "--format=csv,noheader,nounits")
        return sum(float(x) for x in out.split()) if out else None


# -- the model -----------------------------------------------------------------------------


def build_models(out_dir: Path, hidden: int, layers: int, seed: int = 0,
                 backends: tuple[str, ...] | list[str] = tuple(BACKENDS)) -> dict[str, Path]:
    """The same random MLP as model.onnx and model.pt2 (models/build.py's writers check
    that onnxruntime and torch agree on it); only the files of ``backends`` are written, so
    a torch-only box never needs onnx."""
    import torch
    from torch import nn

    from models import build

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        widths = [build.N_FEATURES, *[hidden] * layers]
        modules: list[nn.Module] = []
        for n_in, n_out in itertools.pairwise(widths):
            modules += [nn.Linear(n_in, n_out), nn.ReLU()]
        logits = nn.Sequential(*modules, nn.Linear(widths[-1], build.N_CLASSES)).eval()
    check = np.random.default_rng(seed).uniform(0, 16, (8, build.N_FEATURES)).astype(np.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {backend: out_dir / BACKENDS[backend] for backend in backends}
    if "onnx" in paths:
        build._write_onnx(logits, paths["onnx"], check)
    if "torch" in paths:
        build._write_pt2(logits, paths["torch"])
    return paths


# -- offline and served --------------------------------------------------------------------


def offline_rows_per_s(predictor: Any, batch: np.ndarray, duration_s: float) -> float:
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < duration_s:
        predictor.predict(batch)
        calls += 1
    return calls * len(batch) / elapsed


def experiment(path: Path, backend: str, args: argparse.Namespace) -> dict[str, Any]:
    actor = {"num_cpus": 1, "num_gpus": 1} if args.device == "cuda" else {"num_cpus": 1}
    return {
        "model": "gpucheck",
        "placement": "isolated",
        "versions": [{
            "name": "v1", "path": str(path), "backend": backend, "device": args.device,
            "intra_op_threads": args.threads,
            "batching": {"max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_s},
            "deployment": {"num_replicas": 1, "ray_actor_options": actor,
                           "max_ongoing_requests": 4 * args.concurrency},
        }],
        "weights": {"v1": 100},
        "assignment": {"key": "none"},
        "router": {"num_replicas": args.router_replicas, "ray_actor_options": {"num_cpus": 0.5},
                   "max_ongoing_requests": 4 * args.concurrency},
    }


def check_backend(backend: str, path: Path, args: argparse.Namespace, base_url: str,
                  bodies: list[str]) -> dict[str, Any]:
    """Offline and served rounds for one backend; its figures."""
    import httpx
    from ray import serve

    from benchmarks.cluster import deployed
    from benchmarks.common import replica_pids
    from benchmarks.loadgen import HttpLoad
    from serve_ab import build_app
    from serve_ab.backends import load_predictor

    rows = args.rows_per_request * args.max_batch_size
    batch = np.random.default_rng(1).uniform(0, 16, (rows, 64)).astype(np.float32)
    predictor = load_predictor(path, backend, device=args.device, intra_op_threads=args.threads)
    predictor.load()  # device cuda without CUDA raises here: never a silent CPU run
    predictor.warm_up()
    on_cuda_torch = args.device == "cuda" and backend == "torch"
    if on_cuda_torch:
        import torch

        torch.cuda.reset_peak_memory_stats()
    offline_rows_per_s(predictor, batch, 1.0)  # warm: allocator caches and arenas at batch size
    used_before = device_used_mib() if args.device == "cuda" else None

    app = f"gpucheck-{backend}"
    result: dict[str, Any] = {"device": predictor.device, "batch_rows": rows}
    log(f"{backend}: deploying {app} (router x{args.router_replicas}, version v1 on {args.device}, "
        f"max_batch_size {args.max_batch_size})")
    with deployed([serve.RunTarget(build_app(experiment(path, backend, args)), name=app,
                                   route_prefix=f"/{app}")]):
        url = f"{base_url}/{app}/predict"
        answer = httpx.post(url, content=bodies[0], headers={"content-type": "application/json"},
                            timeout=60.0)
        if answer.status_code != 200:
            raise RuntimeError(f"{app} answered {answer.status_code}: {answer.text[:300]}")
        if len(answer.json()["outputs"]) != args.rows_per_request:
            raise RuntimeError(f"{app} answered {len(answer.json()['outputs'])} rows for "
                               f"{args.rows_per_request}: {answer.text[:300]}")
        load = HttpLoad()
        try:
            load.run(url, bodies, args.concurrency, 1.0, 0.5)  # warm-up, unmeasured
            offline, served, ratios, latencies, errors = [], [], [], [], 0
            for r in range(args.rounds):
                offline.append(offline_rows_per_s(predictor, batch, args.duration))
                run = load.run(url, bodies, args.concurrency, args.duration, 0.25)
                served.append(run["throughput_rps"] * args.rows_per_request)
                latencies += run["latencies_ms"]
                errors += sum(run["errors"].values())
                ratios.append(served[-1] / offline[-1])
                log(f"{backend}: round {r + 1}/{args.rounds}: offline {offline[-1]:,.0f} rows/s, "
                    f"served {served[-1]:,.0f} rows/s, ratio {ratios[-1]:.3f}")
        finally:
            load.close()
        memory: dict[str, Any] = {}
        if args.device == "cuda":
            pids = replica_pids(app, "version-v1")
            mib, method = process_gpu_memory_mib(pids[0]) if len(pids) == 1 else (
                None, f"found {len(pids)} processes titled ray::ServeReplica:{app}:version-v1")
            if mib is None and used_before is not None and (used_after := device_used_mib()) is not None:
                mib, method = round(used_after - used_before, 1), (
                    f"device used memory after minus before deploying ({method})")
            memory = {"replica_mib": mib, "method": method}
            if on_cuda_torch:
                memory["offline_max_memory_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    result.update({
        "offline_rows_s": round(statistics.median(offline), 1),
        # Which side limits: the device (a full batch's time) or Serve (requests per second).
        "offline_batch_ms": round(rows / statistics.median(offline) * 1e3, 3),
        "served_rows_s": round(statistics.median(served), 1),
        "served_requests_s": round(statistics.median(served) / args.rows_per_request, 1),
        "ratio": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
        "met": statistics.median(ratios) >= TARGET_SERVED_VS_OFFLINE,
        "served_p50_ms": round(float(np.percentile(latencies, 50)), 2) if latencies else None,
        "served_errors": errors,
        "gpu_memory": memory or None,
    })
    return result


# -- without Ray: the served path in this process -------------------------------------------


def describe_box() -> dict[str, Any]:
    """The machine, without importing what --no-ray must do without (Ray, fastapi)."""
    def installed(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"cores": os.cpu_count(), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "numpy": np.__version__,
            **{name: installed(name) for name in ("torch", "onnxruntime", "onnxruntime-gpu", "onnx", "ray")}}


class GpuMemory:
    """Device memory in use, two ways: the device's own count (``torch.cuda.mem_get_info``:
    every allocator, onnxruntime's arena and cuBLAS workspaces included) and torch's
    allocator (``memory_allocated``, tensors only). On the CPU: nothing, and why."""

    def __init__(self, device: str):
        self.on_cuda = device == "cuda"
        if self.on_cuda:
            import torch

            self.torch = torch
            # The CUDA context is the process's, not a version's: created before counting.
            torch.zeros(1, device="cuda")
            torch.cuda.synchronize()

    def used_mib(self) -> tuple[float, float] | None:
        if not self.on_cuda:
            return None
        self.torch.cuda.synchronize()
        free, total = self.torch.cuda.mem_get_info()
        return (total - free) / 2**20, self.torch.cuda.memory_allocated() / 2**20

    def delta(self, before: tuple[float, float] | None) -> dict[str, float] | None:
        after = self.used_mib()
        if before is None or after is None:
            return None
        return {"device_mib": round(after[0] - before[0], 1),
                "torch_allocated_mib": round(after[1] - before[1], 1)}

    def reset_peak(self) -> float | None:
        if not self.on_cuda:
            return None
        self.torch.cuda.reset_peak_memory_stats()
        return self.torch.cuda.memory_allocated() / 2**20

    def peak_over(self, base_mib: float | None) -> float | None:
        if base_mib is None:
            return None
        return round(self.torch.cuda.max_memory_allocated() / 2**20 - base_mib, 1)


def load_bare(backend: str, path: Path, device: str, threads: int) -> Any:
    """The model alone, loaded from the same file without serve-ab: a function of one numpy
    batch that runs it once and waits for the device. torch: the exported program's module,
    the input copied to the device beforehand (outside the timing) and the output left there;
    onnx: ``InferenceSession.run`` on the numpy batch (its copies are the session's own)."""
    if backend == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        providers = (["CUDAExecutionProvider"] if device == "cuda" else []) + ["CPUExecutionProvider"]
        session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        name = session.get_inputs()[0].name

        def prepare(batch: np.ndarray) -> Any:
            return partial(session.run, None, {name: batch})

        return prepare
    import torch
    from torch.export.passes import move_to_device_pass

    torch.set_num_threads(threads)
    program = torch.export.load(str(path))
    if device == "cuda":
        program = move_to_device_pass(program, "cuda")
    module = program.module()

    def prepare(batch: np.ndarray) -> Any:
        tensor = torch.from_numpy(batch).to(device)

        def call() -> None:
            with torch.inference_mode():
                module(tensor)
            if device == "cuda":
                torch.cuda.synchronize()

        return call

    return prepare


def time_calls(call: Any, rows: int, duration_s: float) -> dict[str, float]:
    """``call()`` back to back: rows/s and the p50 time of one call (one batch)."""
    times: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < duration_s:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return {"rows_s": len(times) * rows / (time.perf_counter() - started),
            "p50_ms": statistics.median(times) * 1e3}


async def _closed_loop(batchers: list[Any], requests: list[np.ndarray], concurrency: int,
                       duration_s: float) -> dict[str, Any]:
    """``concurrency`` callers, each awaiting its answer before it sends again, spread over
    ``batchers`` in turn (two versions: half the callers each), as a replica's event loop
    sees concurrent requests."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    rows = [0] * len(batchers)
    end = loop.time() + duration_s

    async def caller(i: int) -> None:
        k = i
        while loop.time() < end:
            t0 = time.perf_counter()
            out = await batchers[i % len(batchers)].predict(requests[k % len(requests)])
            latencies.append(time.perf_counter() - t0)
            rows[i % len(batchers)] += len(out)
            k += concurrency

    before = [(b.batches_run, b.requests_run) for b in batchers]
    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    batches = sum(b.batches_run - n for b, (n, _) in zip(batchers, before))
    answered = sum(b.requests_run - n for b, (_, n) in zip(batchers, before))
    return {"rows_s": sum(rows) / elapsed, "per_version_rows_s": [r / elapsed for r in rows],
            "request_p50_ms": statistics.median(latencies) * 1e3,
            "requests_per_batch": answered / max(batches, 1)}


def served(batchers: list[Any], requests: list[np.ndarray], concurrency: int,
           duration_s: float) -> dict[str, Any]:
    return asyncio.run(_closed_loop(batchers, requests, concurrency, duration_s))


def check_backend_no_ray(backend: str, paths: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    """Bare model, predictor, served (one version) and colocated (two) for one backend."""
    from serve_ab.backends import Batcher, load_predictor, predict_together

    rows = args.rows_per_request * args.max_batch_size
    rng = np.random.default_rng(1)
    batch = rng.uniform(0, 16, (rows, 64)).astype(np.float32)
    requests = [rng.uniform(0, 16, (args.rows_per_request, 64)).astype(np.float32) for _ in range(64)]
    memory = GpuMemory(args.device)
    versions, loads = [], []
    for path in paths:  # v1, then v2 beside it on the same device, as a colocated replica holds them
        before = memory.used_mib()
        predictor = load_predictor(path, backend, device=args.device, intra_op_threads=args.threads)
        predictor.load()  # device cuda without CUDA raises here: never a silent CPU run
        predictor.warm_up()
        predictor.predict(batch)  # allocator caches and arenas at the batch size
        loads.append(memory.delta(before))
        # The replicas' own batcher (LoadedVersion), fed by concurrent callers in one event loop.
        versions.append(Batcher(partial(predict_together, predictor), max_batch_size=args.max_batch_size,
                                batch_wait_timeout_s=args.batch_wait_s))
    bare = load_bare(backend, paths[0], args.device, args.threads)(batch)
    one, two = versions[:1], versions
    log(f"{backend}: bare model, predictor, served and colocated on {predictor.device}, batch {rows} rows")
    for run in (lambda: time_calls(bare, rows, 0.3), lambda: served(one, requests, args.concurrency, 0.3),
                lambda: served(two, requests, args.concurrency, 0.3)):
        run()  # warm-up, unmeasured
    rounds: list[dict[str, Any]] = []
    peaks: dict[str, float | None] = {}
    for r in range(args.rounds):
        result = {"bare": time_calls(bare, rows, args.duration),
                  "predictor": time_calls(partial(versions[0].run_batch, [batch]), rows, args.duration)}
        base = memory.reset_peak()
        result["served"] = served(one, requests, args.concurrency, args.duration)
        peaks["served"] = memory.peak_over(base)
        base = memory.reset_peak()
        result["colocated"] = served(two, requests, args.concurrency, args.duration)
        peaks["colocated"] = memory.peak_over(base)
        rounds.append(result)
        log(f"{backend}: round {r + 1}/{args.rounds}: bare {result['bare']['rows_s']:,.0f} rows/s, "
            f"predictor {result['predictor']['rows_s']:,.0f}, served {result['served']['rows_s']:,.0f} "
            f"({result['served']['requests_per_batch']:.1f} requests a batch), colocated "
            f"{result['colocated']['rows_s']:,.0f}; served/bare "
            f"{result['served']['rows_s'] / result['bare']['rows_s']:.3f}")

    def median(part: str, field: str) -> float:
        return statistics.median(x[part][field] for x in rounds)

    def ratios(top: str, bottom: str) -> list[float]:
        return [x[top]["rows_s"] / x[bottom]["rows_s"] for x in rounds]

    served_vs_bare = ratios("served", "bare")
    if memory.on_cuda:
        gpu_memory: dict[str, Any] = {
            "per_version": {f"v{i + 1}": load for i, load in enumerate(loads)},
            "one_version_mib": loads[0]["device_mib"],
            "two_versions_mib": round(loads[0]["device_mib"] + loads[1]["device_mib"], 1),
            "method": "torch.cuda.mem_get_info used before/after load()+warm_up() of each version "
                      "(after the CUDA context exists); torch_allocated_mib: memory_allocated, tensors only",
        }
        if backend == "torch":
            gpu_memory.update({"served_peak_mib": peaks["served"], "colocated_peak_mib": peaks["colocated"],
                               "peak_method": "torch.cuda.max_memory_allocated over the run, above what "
                                              "was allocated before it (activations, copies)"})
    else:
        gpu_memory = None
    return {
        "device": predictor.device, "batch_rows": rows,
        "bare_rows_s": round(median("bare", "rows_s"), 1),
        "bare_batch_p50_ms": round(median("bare", "p50_ms"), 3),
        "predictor_rows_s": round(median("predictor", "rows_s"), 1),
        "predictor_batch_p50_ms": round(median("predictor", "p50_ms"), 3),
        "served_rows_s": round(median("served", "rows_s"), 1),
        "served_request_p50_ms": round(median("served", "request_p50_ms"), 3),
        "served_requests_per_batch": round(median("served", "requests_per_batch"), 2),
        "ratio": round(statistics.median(served_vs_bare), 3),
        "ratio_min": round(min(served_vs_bare), 3),
        "ratio_max": round(max(served_vs_bare), 3),
        "met": statistics.median(served_vs_bare) >= TARGET_SERVED_VS_OFFLINE,
        "predictor_vs_bare": round(statistics.median(ratios("predictor", "bare")), 3),
        "served_vs_predictor": round(statistics.median(ratios("served", "predictor")), 3),
        "colocated": {
            "rows_s": round(median("colocated", "rows_s"), 1),
            "per_version_rows_s": [round(statistics.median(x["colocated"]["per_version_rows_s"][i]
                                                           for x in rounds), 1) for i in range(2)],
            "request_p50_ms": round(median("colocated", "request_p50_ms"), 3),
            "requests_per_batch": round(median("colocated", "requests_per_batch"), 2),
            "vs_one_version": round(statistics.median(ratios("colocated", "served")), 3),
        },
        "gpu_memory": gpu_memory,
        **({} if gpu_memory else {"gpu_memory_reason": f"device {args.device}: no GPU memory to count"}),
    }


def run_backends_no_ray(args: argparse.Namespace, runnable: list[str], backends: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        log(f"writing MLP 64-{args.hidden}x{args.layers}-10 twice (v1 seed 0, v2 seed 1) as "
            f"{' and '.join(BACKENDS[b] for b in runnable)}")
        v1 = build_models(Path(tmp) / "v1", args.hidden, args.layers, seed=0, backends=runnable)
        v2 = build_models(Path(tmp) / "v2", args.hidden, args.layers, seed=1, backends=runnable)
        for backend in runnable:
            try:
                backends[backend] = {"ran": True, **check_backend_no_ray(backend, [v1[backend], v2[backend]], args)}
            except TimeLimit:
                raise
            except Exception as err:  # noqa: BLE001 - reported; the other backend still runs
                backends[backend] = {"ran": False, "error": f"{type(err).__name__}: {err}"}
                log(f"{backend}: failed: {type(err).__name__}: {err}")


# -- the run -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--no-ray", action="store_true",
                        help="no Ray, no HTTP: the replicas' predictor and batcher in this process "
                             "vs the bare model, and two versions colocated (needs only torch and numpy)")
    parser.add_argument("--quick", action="store_true",
                        help="1 round of 0.5 s and, unless given, hidden 256: checks the script, not the device")
    parser.add_argument("--backends", nargs="+", choices=list(BACKENDS), default=list(BACKENDS))
    parser.add_argument("--hidden", type=int, help="hidden width (default: cuda 8192, cpu 1024)")
    parser.add_argument("--layers", type=int, help="hidden layers (default: cuda 4, cpu 2)")
    parser.add_argument("--rows-per-request", type=int, help="R (default: cuda 32, cpu 8)")
    parser.add_argument("--max-batch-size", type=int, default=16, help="M, requests per batch (default 16)")
    parser.add_argument("--batch-wait-s", type=float, default=0.005, help="batch_wait_timeout_s (default 0.005)")
    parser.add_argument("--concurrency", type=int, help="requests in flight (default 2M)")
    parser.add_argument("--router-replicas", type=int, help="(default: cuda 4, cpu 1)")
    parser.add_argument("--threads", type=int, default=1, help="intra_op_threads, served and offline (default 1)")
    parser.add_argument("--rounds", type=int, help="rounds of every measurement (default 3; --quick 1)")
    parser.add_argument("--duration", type=float,
                        help="seconds per run (default 3, --no-ray 2, --quick 0.5)")
    parser.add_argument("--time-limit", type=int, default=480, help="give up after this many seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden = args.hidden or 256
    for name, value in DEFAULTS[args.device].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (0.5 if args.quick else 2.0 if args.no_ray else 3.0)
    args.concurrency = args.concurrency or 2 * args.max_batch_size
    return args


def request_bodies(rows_per_request: int, count: int = 64) -> list[str]:
    rng = np.random.default_rng(2)
    return [json.dumps({"inputs": rng.uniform(0, 16, (rows_per_request, 64)).round(2).tolist()})
            for _ in range(count)]


def run_backends(args: argparse.Namespace, runnable: list[str], backends: dict[str, Any]) -> None:
    """Measure each runnable backend on one Ray instance; results go into ``backends``."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        log(f"writing MLP 64-{args.hidden}x{args.layers}-10 as ONNX and torch.export")
        paths = build_models(Path(tmp), args.hidden, args.layers)
        bodies = request_bodies(args.rows_per_request)
        from benchmarks.cluster import cluster

        with cluster(num_cpus=max(4, args.router_replicas + 2)) as c:
            import ray

            ray_gpus = ray.cluster_resources().get("GPU", 0)
            for backend in runnable:
                if args.device == "cuda" and ray_gpus < 1:
                    # Deploying would leave the version pending for a GPU forever.
                    backends[backend] = {"ran": False, "error": f"Ray sees {ray_gpus} GPUs (check "
                                         "CUDA_VISIBLE_DEVICES); the version needs 1"}
                    continue
                try:
                    backends[backend] = {"ran": True, **check_backend(backend, paths[backend], args,
                                                                      c.base_url, bodies)}
                except TimeLimit:
                    raise
                except Exception as err:  # noqa: BLE001 - reported; the other backend still runs
                    backends[backend] = {"ran": False, "error": f"{type(err).__name__}: {err}"}
                    log(f"{backend}: failed: {type(err).__name__}: {err}")


def describe_machine() -> dict[str, Any]:
    from benchmarks.common import describe_machine as with_ray

    return with_ray()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()

    def expire(signum: int, frame: Any) -> None:
        raise TimeLimit(f"gpu_check ran over --time-limit {args.time_limit} s")

    previous_handler = signal.signal(signal.SIGALRM, expire)
    signal.alarm(args.time_limit)
    report: dict[str, Any] = {
        "bench": "gpu_check", "mode": "no-ray" if args.no_ray else "ray", "device": args.device,
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    backends: dict[str, Any] = {}
    try:
        probe = probe_gpu()
        report["gpu"] = no_gpu_reason(probe) is None
        if args.device == "cuda" and not report["gpu"]:
            reason = no_gpu_reason(probe)
            print(f"gpu_check: {reason}; nothing measured (try --device cpu)", file=sys.stderr)
            print(json.dumps({**report, "reason": reason, "probe": probe}))
            return EXIT_NO_GPU
        report.update({
            "machine": describe_box() if args.no_ray else describe_machine(), "probe": probe,
            "model": f"MLP 64-{'-'.join([str(args.hidden)] * args.layers)}-10, random weights (seed 0)",
            "rows_per_request": args.rows_per_request, "max_batch_size": args.max_batch_size,
            "batch_rows": args.rows_per_request * args.max_batch_size, "concurrency": args.concurrency,
            "threads": args.threads, "rounds": args.rounds, "duration_s": args.duration,
            "target": TARGET_SERVED_VS_OFFLINE, "load_before": load_now(),
        })
        if not args.no_ray:
            report["router_replicas"] = args.router_replicas
        for backend in args.backends:
            if skipped := backend_missing(backend, probe):
                backends[backend] = {"ran": False, "skipped": skipped}
                log(f"{backend}: skipped: {skipped}")
            elif args.device == "cuda" and (reason := backend_cannot_use_cuda(backend, probe)):
                backends[backend] = {"ran": False, "error": reason}
                log(f"{backend}: not measured: {reason}")
        runnable = [b for b in args.backends if b not in backends]
        if runnable:
            (run_backends_no_ray if args.no_ray else run_backends)(args, runnable, backends)
    except TimeLimit as err:
        report["error"] = str(err)
        log(str(err))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous_handler)
    report.update({"backends": backends, "load_after": load_now(),
                   "wall_s": round(time.perf_counter() - started, 1)})
    (print_no_ray if args.no_ray else print_ray)(args, report)
    print(json.dumps(report))
    failed = ("error" in report or not any(r["ran"] for r in backends.values())
              or any("error" in r for r in backends.values()))
    return EXIT_BACKEND_FAILED if failed else 0


def _not_measured(backend: str, r: dict[str, Any]) -> bool:
    if r["ran"]:
        return False
    print(f"  {backend:<6} {'skipped' if 'skipped' in r else 'not measured'}: {r.get('skipped') or r['error']}")
    return True


def print_ray(args: argparse.Namespace, report: dict[str, Any]) -> None:
    print(f"\nServed with dynamic batching vs offline, {args.device}, {report.get('model')}, batch "
          f"{report.get('batch_rows')} rows ({args.max_batch_size} requests x {args.rows_per_request} rows), "
          f"concurrency {args.concurrency}, {args.rounds} rounds x {args.duration:g} s")
    for backend, r in report["backends"].items():
        if _not_measured(backend, r):
            continue
        memory = r["gpu_memory"] or {}
        mem = f"; GPU memory {memory.get('replica_mib')} MiB ({memory.get('method')})" if memory else ""
        if "offline_max_memory_allocated_mib" in memory:
            mem += f", offline max_memory_allocated {memory['offline_max_memory_allocated_mib']} MiB"
        print(f"  {backend:<6} offline {r['offline_rows_s']:>10,.0f} rows/s ({r['offline_batch_ms']} ms a batch)  "
              f"served {r['served_rows_s']:>10,.0f} rows/s ({r['served_requests_s']:,.0f} requests/s)  ratio {r['ratio']:.3f} ({r['ratio_min']:.3f}-{r['ratio_max']:.3f})  target >= "
              f"{TARGET_SERVED_VS_OFFLINE} {'met' if r['met'] else 'NOT met'}; p50 {r['served_p50_ms']} ms, "
              f"errors {r['served_errors']}{mem}")
    print(f"load average before {report.get('load_before')}, after {report['load_after']}; wall {report['wall_s']:.0f} s")


def print_no_ray(args: argparse.Namespace, report: dict[str, Any]) -> None:
    print(f"\nNo Ray: the replicas' predictor + batcher in one process vs the bare model, {args.device}, "
          f"{report.get('model')}, batch {report.get('batch_rows')} rows ({args.max_batch_size} requests x "
          f"{args.rows_per_request} rows), {args.concurrency} callers, {args.rounds} rounds x {args.duration:g} s")
    for backend, r in report["backends"].items():
        if _not_measured(backend, r):
            continue
        c = r["colocated"]
        print(f"  {backend:<6} bare {r['bare_rows_s']:>10,.0f} rows/s (p50 {r['bare_batch_p50_ms']} ms a batch)  "
              f"predictor {r['predictor_rows_s']:>10,.0f} (p50 {r['predictor_batch_p50_ms']} ms)  "
              f"served {r['served_rows_s']:>10,.0f} (p50 {r['served_request_p50_ms']} ms a request, "
              f"{r['served_requests_per_batch']} requests a batch)")
        print(f"         served/bare {r['ratio']:.3f} ({r['ratio_min']:.3f}-{r['ratio_max']:.3f}) target >= "
              f"{TARGET_SERVED_VS_OFFLINE} {'met' if r['met'] else 'NOT met'}; predictor/bare "
              f"{r['predictor_vs_bare']:.3f}; served/predictor {r['served_vs_predictor']:.3f}")
        memory = r["gpu_memory"]
        mem = (f"{memory['one_version_mib']} MiB one version, {memory['two_versions_mib']} MiB two"
               if memory else r["gpu_memory_reason"])
        print(f"         colocated v1+v2 {c['rows_s']:>10,.0f} rows/s = {c['vs_one_version']:.3f}x one version "
              f"(p50 {c['request_p50_ms']} ms); GPU memory: {mem}")
    print(f"load average before {report.get('load_before')}, after {report['load_after']}; wall {report['wall_s']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
