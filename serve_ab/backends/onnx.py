"""ONNX models on onnxruntime: CUDA when the CUDA provider is there, CPU otherwise."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from serve_ab.backends._common import (
    ModelPredictor,
    check_batch_dim,
    check_declared,
    check_model_file,
)
from serve_ab.backends.base import (
    Batch,
    InputSpec,
    InputSpecs,
    OutputSpec,
    OutputSpecs,
    input_signature,
    output_signature,
)

logger = logging.getLogger(__name__)

_CUDA_PROVIDER = "CUDAExecutionProvider"
_CPU_PROVIDER = "CPUExecutionProvider"

# onnxruntime and onnxruntime-gpu install the same module, so with both installed (serve-ab's
# own dependency and its gpu extra: `pip install 'serve-ab[gpu]'` leaves both) the one
# installed last owns the files, often the CPU build; uninstalling it breaks the module, so the
# GPU build is then reinstalled over it (microsoft/onnxruntime#26996).
ONNXRUNTIME_GPU_INSTALL = ("pip uninstall -y onnxruntime && "
                           "pip install --force-reinstall --no-deps 'onnxruntime-gpu>=1.20'")


def _installed(distribution: str) -> bool:
    import importlib.metadata

    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def cuda_provider_hint() -> str:
    """What to do when onnxruntime has no CUDA provider, for the packages installed here."""
    if _installed("onnxruntime") and _installed("onnxruntime-gpu"):
        return ("both onnxruntime and onnxruntime-gpu are installed, and they share one module, "
                f"here the CPU build's; keep the GPU build alone: {ONNXRUNTIME_GPU_INSTALL}")
    return f"install onnxruntime-gpu in place of onnxruntime: {ONNXRUNTIME_GPU_INSTALL}"


# onnxruntime names element types as strings, e.g. "tensor(float)".
_NUMPY_DTYPES = {
    "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64, "tensor(int8)": np.int8,
    "tensor(int16)": np.int16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
    "tensor(float16)": np.float16, "tensor(float)": np.float32, "tensor(double)": np.float64,
}


class OnnxPredictor(ModelPredictor):
    """Runs one ONNX model through onnxruntime: one input or several (fed by name), one
    output or several (returned by name); numeric and boolean tensors.

    ``device="auto"`` picks CUDA when onnxruntime has its CUDA provider (the
    onnxruntime-gpu package) and CPU otherwise; ``device="cuda"`` without it is an error.
    """

    backend = "onnx"

    def __init__(self, path: str | Path, *, device: str = "auto",
                 intra_op_threads: int | None = None, inputs: InputSpec | InputSpecs | None = None,
                 outputs: OutputSpec | OutputSpecs | None = None) -> None:
        super().__init__(Path(path), device=device, intra_op_threads=intra_op_threads,
                         inputs=inputs, outputs=outputs)
        self._session: Any = None
        self._output_names: list[str] = []

    def load(self) -> None:
        check_model_file(self.path, self.backend)
        import onnxruntime

        available = onnxruntime.get_available_providers()
        use_cuda = self.requested_device != "cpu" and _CUDA_PROVIDER in available
        if self.requested_device == "cuda" and not use_cuda:
            raise RuntimeError(
                f"device 'cuda' was asked for {self.path} (onnx backend), but onnxruntime "
                f"{onnxruntime.__version__} has no {_CUDA_PROVIDER}; available providers: "
                f"{available}: {cuda_provider_hint()}; or use device 'cpu' or 'auto'.")
        options = onnxruntime.SessionOptions()
        if self.intra_op_threads is not None:
            options.intra_op_num_threads = self.intra_op_threads
        providers = [_CUDA_PROVIDER, _CPU_PROVIDER] if use_cuda else [_CPU_PROVIDER]
        try:
            session = onnxruntime.InferenceSession(str(self.path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own classes for bad files
            raise ValueError(
                f"cannot load {self.path} with the onnx backend: {err}") from err
        # onnxruntime drops a provider whose libraries fail to load (no CUDA driver, wrong
        # cuDNN) with only a log line; check what the session really got.
        if use_cuda and _CUDA_PROVIDER not in session.get_providers():
            if self.requested_device == "cuda":
                raise RuntimeError(
                    f"device 'cuda' was asked for {self.path} (onnx backend), but onnxruntime "
                    f"could not start {_CUDA_PROVIDER} (session providers: "
                    f"{session.get_providers()}); check the CUDA and cuDNN libraries or use "
                    "device 'cpu'.")
            logger.warning("%s: %s failed to start; running on CPU", self.path, _CUDA_PROVIDER)
            use_cuda = False
        inputs, outputs = session.get_inputs(), session.get_outputs()
        self._input_spec = input_signature([InputSpec(*self._describe(i, "input")) for i in inputs])
        self._output_spec = output_signature([OutputSpec(*self._describe(o, "output")) for o in outputs])
        check_declared(self.path, self.backend, "inputs", self._input_spec, self.declared[0])
        check_declared(self.path, self.backend, "outputs", self._output_spec, self.declared[1])
        self._output_names = [o.name for o in outputs]
        self._session = session
        self.device = "cuda" if use_cuda else "cpu"

    def predict(self, batch: Batch) -> Batch:
        self._require_loaded()
        feed = batch if isinstance(batch, dict) else {self._input_spec.name: batch}
        results = self._session.run(self._output_names, feed)
        if len(results) == 1:
            return results[0]
        return dict(zip(self._output_names, results))

    def _describe(self, arg: Any, role: str) -> tuple[str, np.dtype, tuple[int, ...]]:
        if arg.type not in _NUMPY_DTYPES:
            raise ValueError(f"{self.path}: {role} '{arg.name}' has type {arg.type}, which "
                             f"serve-ab cannot pass; supported: {sorted(_NUMPY_DTYPES)}")
        # Named or unknown dims come back as strings or None: both are free.
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
        check_batch_dim(self.path, role, arg.name, shape)
        return arg.name, np.dtype(_NUMPY_DTYPES[arg.type]), shape

    def _require_loaded(self) -> None:
        if self._session is None:
            raise RuntimeError(f"{self.path} (onnx backend) is not loaded; call load() first")
