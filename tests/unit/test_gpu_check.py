"""benchmarks/gpu_check.py without a GPU and without Ray: what it says when it cannot measure.

The measurement itself needs Ray (and, for its purpose, a GPU); ``python -m
benchmarks.gpu_check --device cpu`` runs it end to end on any machine.
"""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

NO_GPU = {
    "nvidia_smi_gpus": [], "nvidia_smi": False, "torch": "2.13.0+cpu", "torch_cuda_build": None,
    "torch_cuda_available": False, "onnxruntime": "1.32.0",
    "onnxruntime_providers": ["CPUExecutionProvider"],
}
# A GPU that neither backend can use: the plain onnxruntime package, a CPU-only torch.
GPU_BUT_NO_CUDA_BACKENDS = {**NO_GPU, "nvidia_smi": True,
                            "nvidia_smi_gpus": ["GPU 0: NVIDIA H200 (UUID: GPU-0)"]}


@pytest.fixture(scope="module")
def gpu_check():
    return importlib.import_module("benchmarks.gpu_check")


def test_no_gpu_prints_one_json_line_and_exits_2(gpu_check, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "probe_gpu", lambda: dict(NO_GPU))
    assert gpu_check.main([]) == gpu_check.EXIT_NO_GPU
    out = capsys.readouterr()
    report = json.loads(out.out.strip().splitlines()[-1])
    assert report["gpu"] is False
    assert "nvidia-smi is not installed" in report["reason"]
    assert "--device cpu" in out.err


def test_a_backend_without_cuda_is_reported_never_run_on_the_cpu(gpu_check, monkeypatch, capsys):
    # Neither backend can use the GPU, so nothing starts Ray (the unit fixture would fail it).
    monkeypatch.setattr(gpu_check, "probe_gpu", lambda: dict(GPU_BUT_NO_CUDA_BACKENDS))
    monkeypatch.setattr(gpu_check, "describe_machine", dict)
    assert gpu_check.main(["--device", "cuda"]) == gpu_check.EXIT_BACKEND_FAILED
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["gpu"] is True
    onnx, torch = report["backends"]["onnx"], report["backends"]["torch"]
    assert not onnx["ran"] and "no CUDAExecutionProvider" in onnx["error"]
    assert "onnxruntime-gpu" in onnx["error"] and "not run on the CPU" in onnx["error"]
    assert not torch["ran"] and "CPU-only build" in torch["error"]


def test_no_gpu_reason(gpu_check):
    assert gpu_check.no_gpu_reason(GPU_BUT_NO_CUDA_BACKENDS) is None
    assert gpu_check.no_gpu_reason({**NO_GPU, "torch_cuda_available": True}) is None
    assert "nvidia-smi -L lists none" in gpu_check.no_gpu_reason({**NO_GPU, "nvidia_smi": True})


def test_process_memory_from_nvidia_smi_when_nvml_is_missing(gpu_check, monkeypatch):
    def no_nvml():
        raise ImportError("no pynvml")

    monkeypatch.setattr(gpu_check, "_nvml", no_nvml)
    monkeypatch.setattr(gpu_check, "nvidia_smi", lambda *args: "111, 2048\n222, 512\n")
    mib, method = gpu_check.process_gpu_memory_mib(222)
    assert mib == 512.0 and "nvidia-smi" in method
    # A pid it does not list (another pid namespace): no figure, and the reason why.
    mib, method = gpu_check.process_gpu_memory_mib(333)
    assert mib is None and "[111, 222], not 333" in method and "NVML unavailable" in method


def test_both_backends_get_the_same_network(gpu_check, tmp_path):
    from serve_ab.backends import load_predictor

    paths = gpu_check.build_models(tmp_path, hidden=32, layers=2)
    batch = np.random.default_rng(0).uniform(0, 16, (5, 64)).astype(np.float32)
    outputs = {}
    for backend, path in paths.items():
        predictor = load_predictor(path, backend, device="cpu")
        predictor.load()
        outputs[backend] = predictor.predict(batch)
    assert outputs["onnx"].shape == (5, 10)
    np.testing.assert_allclose(outputs["onnx"], outputs["torch"], atol=1e-5)


def test_defaults_follow_the_device(gpu_check):
    cuda, cpu = gpu_check.parse_args([]), gpu_check.parse_args(["--device", "cpu", "--hidden", "64"])
    assert (cuda.hidden, cuda.router_replicas, cuda.concurrency) == (8192, 4, 2 * cuda.max_batch_size)
    assert (cpu.hidden, cpu.layers, cpu.rows_per_request) == (64, 2, 8)


# What a locked-down GPU box lacks: every import of these fails in the child process.
NOT_INSTALLED = ("ray", "fastapi", "pydantic", "httpx", "onnxruntime", "onnx", "serve_ab.serving")
RUN_WITHOUT = """
import runpy, sys
for name in {blocked!r}:
    sys.modules[name] = None
sys.argv = ["gpu_check", *{argv!r}]
runpy.run_module("benchmarks.gpu_check", run_name="__main__")
"""


def test_no_ray_runs_with_only_torch_and_numpy():
    """``--no-ray --device cpu``: the replicas' predictor and batcher vs the bare torch model,
    and two versions colocated, with Ray, fastapi, pydantic and onnxruntime not importable."""
    import subprocess
    import sys
    from pathlib import Path

    argv = ["--no-ray", "--device", "cpu", "--quick", "--time-limit", "100"]
    done = subprocess.run([sys.executable, "-c", RUN_WITHOUT.format(blocked=NOT_INSTALLED, argv=argv)],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                          timeout=150, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert (report["mode"], report["device"], report["gpu"]) == ("no-ray", "cpu", False)
    onnx, torch = report["backends"]["onnx"], report["backends"]["torch"]
    assert not onnx["ran"] and "onnxruntime is not installed" in onnx["skipped"]
    assert torch["ran"] and torch["device"] == "cpu" and torch["batch_rows"] == 8 * 16
    for field in ("bare_rows_s", "predictor_rows_s", "served_rows_s", "bare_batch_p50_ms",
                  "served_request_p50_ms"):
        assert torch[field] > 0, field
    assert torch["ratio"] == pytest.approx(torch["served_rows_s"] / torch["bare_rows_s"], rel=0.01)
    # The batcher filled its batches: 2M callers, batches of M requests.
    assert torch["served_requests_per_batch"] > 1
    colocated = torch["colocated"]
    assert colocated["rows_s"] > 0 and len(colocated["per_version_rows_s"]) == 2
    assert all(rows > 0 for rows in colocated["per_version_rows_s"])
    assert colocated["vs_one_version"] == pytest.approx(colocated["rows_s"] / torch["served_rows_s"], rel=0.5)
    assert torch["gpu_memory"] is None and "no GPU memory" in torch["gpu_memory_reason"]
    assert "served/bare" in done.stdout and "colocated" in done.stdout


def test_no_ray_skips_onnx_when_only_the_onnx_package_is_missing(gpu_check):
    probe = {**NO_GPU, "onnx": False}
    assert "onnx package is not installed" in gpu_check.backend_missing("onnx", probe)
    assert gpu_check.backend_missing("torch", probe) is None
    assert gpu_check.backend_missing("onnx", {**NO_GPU, "onnx": True}) is None


def test_only_the_requested_model_files_are_written(gpu_check, tmp_path):
    paths = gpu_check.build_models(tmp_path, hidden=8, layers=1, backends=["torch"])
    assert list(paths) == ["torch"] and paths["torch"].is_file()
    assert not (tmp_path / "model.onnx").exists()


def test_quick_and_no_ray_defaults(gpu_check):
    quick = gpu_check.parse_args(["--no-ray", "--device", "cpu", "--quick"])
    assert (quick.rounds, quick.duration, quick.hidden) == (1, 0.5, 256)
    assert gpu_check.parse_args(["--no-ray", "--device", "cpu"]).duration == 2.0
    assert gpu_check.parse_args(["--device", "cpu"]).duration == 3.0
