"""``torch.export`` programs (``.pt2``) on torch: CUDA when torch sees a GPU, CPU otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from serve_ab.backends.base import InputSpec, OutputSpec
from serve_ab.backends._common import (
    check_batch_dim,
    check_device,
    check_model_file,
    check_threads,
    warm_up,
)


class TorchPredictor:
    """Runs one ``torch.export`` program with one tensor input and one tensor output.

    The input's name is the exported ``forward`` argument's; the output's is the key when
    the program returns a one-entry dict (as ``models/build.py`` writes), else ``output``.
    """

    backend = "torch"

    def __init__(self, path: str | Path, *, device: str = "auto",
                 intra_op_threads: int | None = None) -> None:
        self.path = Path(path)
        self.requested_device = check_device(device)
        self.intra_op_threads = check_threads(intra_op_threads)
        #: The requested device until ``load()`` settles it to ``cpu`` or ``cuda``.
        self.device = self.requested_device
        self._module: Any = None
        self._output_key: str | None = None
        self._input_spec: InputSpec | None = None
        self._output_spec: OutputSpec | None = None

    @property
    def input_spec(self) -> InputSpec:
        self._require_loaded()
        return self._input_spec

    @property
    def output_spec(self) -> OutputSpec:
        self._require_loaded()
        return self._output_spec

    def load(self) -> None:
        check_model_file(self.path, self.backend)
        import torch

        use_cuda = self.requested_device != "cpu" and torch.cuda.is_available()
        if self.requested_device == "cuda" and not use_cuda:
            built_for = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"
            raise RuntimeError(
                f"device 'cuda' was asked for {self.path} (torch backend), but torch "
                f"{torch.__version__} ({built_for}) sees no CUDA device "
                f"(torch.cuda.is_available() is False); use device 'cpu' or 'auto'.")
        if self.intra_op_threads is not None:
            # Process-wide in torch; a replica serves one model, so that is what we want.
            torch.set_num_threads(self.intra_op_threads)
        try:
            program = torch.export.load(str(self.path))
        except Exception as err:  # a bad archive fails deep inside zip/json/pickle code
            raise ValueError(
                f"cannot load {self.path} with the torch backend (expected a torch.export "
                f".pt2 archive written by torch.export.save): {err}") from err
        self._input_spec = self._describe_input(program)
        self._output_spec, self._output_key = self._describe_output(program)
        if use_cuda:
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, "cuda")
        self._module = program.module()
        self.device = "cuda" if use_cuda else "cpu"

    def warm_up(self) -> None:
        warm_up(self)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self._require_loaded()
        import torch

        # torch.from_numpy warns on read-only arrays (e.g. np.frombuffer of a request body).
        tensor = torch.from_numpy(np.require(batch, requirements=["C", "W"]))
        with torch.inference_mode():
            result = self._module(tensor.to(self.device))
        if isinstance(result, dict):
            result = result[self._output_key]
        elif isinstance(result, (tuple, list)):
            (result,) = result
        return result.cpu().numpy()

    def _describe_input(self, program: Any) -> InputSpec:
        user_inputs = program.graph_signature.user_inputs
        if len(user_inputs) != 1:
            raise ValueError(f"{self.path} takes {len(user_inputs)} inputs {list(user_inputs)}; "
                             "serve-ab serves models with exactly one tensor input")
        (name,) = user_inputs
        node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)
        dtype, shape = self._describe_value(node.meta.get("val"), "input", name)
        return InputSpec(name=name, dtype=dtype, shape=shape)

    def _describe_output(self, program: Any) -> tuple[OutputSpec, str | None]:
        output_node = next(n for n in program.graph.nodes if n.op == "output")
        values = output_node.args[0]
        if len(values) != 1:
            raise ValueError(f"{self.path} returns {len(values)} outputs; serve-ab serves "
                             "models with exactly one tensor output")
        out_spec = program.call_spec.out_spec
        key = None
        if out_spec is not None and out_spec.type is dict:
            (key,) = out_spec.context
        name = key if isinstance(key, str) else "output"
        dtype, shape = self._describe_value(values[0].meta.get("val"), "output", name)
        return OutputSpec(name=name, dtype=dtype, shape=shape), key

    def _describe_value(self, value: Any, role: str, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        import torch

        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{self.path}: {role} '{name}' is not a tensor ({value!r}); "
                             "serve-ab serves models with one tensor in and one tensor out")
        try:
            dtype = torch.empty(0, dtype=value.dtype).numpy().dtype
        except TypeError as err:  # bfloat16 and friends have no numpy dtype
            raise ValueError(f"{self.path}: {role} '{name}' has dtype {value.dtype}, which "
                             "numpy cannot hold; export the model with float32 I/O") from err
        # A symbolic dim (torch.export.Dim) is a SymInt, not an int: it is free.
        shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)
        check_batch_dim(self.path, role, name, shape)
        return dtype, shape

    def _require_loaded(self) -> None:
        if self._module is None:
            raise RuntimeError(f"{self.path} (torch backend) is not loaded; call load() first")
