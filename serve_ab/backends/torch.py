"""``torch.export`` programs (``.pt2``) on torch: CUDA when torch sees a GPU, CPU otherwise."""

from __future__ import annotations

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


class TorchPredictor(ModelPredictor):
    """Runs one ``torch.export`` program: tensor inputs in, tensor outputs out.

    Inputs are named after the exported ``forward`` arguments (a multi-input batch is fed
    positionally, in the program's order). Outputs are named by the keys when the program returns a dict
    (as ``models/build.py`` writes), else ``output`` (one) or ``output_0``, ``output_1``...
    """

    backend = "torch"

    def __init__(self, path: str | Path, *, device: str = "auto",
                 intra_op_threads: int | None = None, inputs: InputSpec | InputSpecs | None = None,
                 outputs: OutputSpec | OutputSpecs | None = None) -> None:
        super().__init__(Path(path), device=device, intra_op_threads=intra_op_threads,
                         inputs=inputs, outputs=outputs)
        self._module: Any = None
        self._output_keys: list[Any] = []

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
        self._output_spec, self._output_keys = self._describe_output(program)
        check_declared(self.path, self.backend, "inputs", self._input_spec, self.declared[0])
        check_declared(self.path, self.backend, "outputs", self._output_spec, self.declared[1])
        if use_cuda:
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, "cuda")
        self._module = program.module()
        self.device = "cuda" if use_cuda else "cpu"

    def predict(self, batch: Batch) -> Batch:
        self._require_loaded()
        import torch

        def tensor(array: np.ndarray) -> Any:
            # torch.from_numpy warns on read-only arrays (e.g. np.frombuffer of a request body).
            return torch.from_numpy(np.require(array, requirements=["C", "W"])).to(self.device)

        with torch.inference_mode():
            if isinstance(batch, dict):
                # Positionally, in the program's order: the placeholders carry the arg names.
                result = self._module(*[tensor(batch[name]) for name in self._input_spec.names])
            else:
                result = self._module(tensor(batch))
        if isinstance(result, dict):
            values = [result[key] for key in self._output_keys]
        elif isinstance(result, (tuple, list)):
            values = list(result)
        else:
            values = [result]
        arrays = [value.cpu().numpy() for value in values]
        if len(arrays) == 1:
            return arrays[0]
        return {spec.name: array for spec, array in zip(self._output_spec, arrays)}

    def _describe_input(self, program: Any) -> InputSpec | InputSpecs:
        user_inputs = program.graph_signature.user_inputs
        specs = []
        for name in user_inputs:
            node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)
            dtype, shape = self._describe_value(node.meta.get("val"), "input", name)
            specs.append(InputSpec(name=name, dtype=dtype, shape=shape))
        return input_signature(specs)

    def _describe_output(self, program: Any) -> tuple[OutputSpec | OutputSpecs, list[Any]]:
        output_node = next(n for n in program.graph.nodes if n.op == "output")
        values = output_node.args[0]
        out_spec = program.call_spec.out_spec
        keys: list[Any] = []
        if out_spec is not None and out_spec.type is dict:
            keys = list(out_spec.context)
        if keys and all(isinstance(k, str) for k in keys):
            names = keys
        else:
            names = ["output"] if len(values) == 1 else [f"output_{i}" for i in range(len(values))]
        specs = []
        for name, value in zip(names, values):
            dtype, shape = self._describe_value(value.meta.get("val"), "output", name)
            specs.append(OutputSpec(name=name, dtype=dtype, shape=shape))
        return output_signature(specs), keys

    def _describe_value(self, value: Any, role: str, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        import torch

        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{self.path}: {role} '{name}' is not a tensor ({value!r}); "
                             "serve-ab serves models whose inputs and outputs are tensors")
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
