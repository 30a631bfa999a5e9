"""Model backends: turn a model file into a :class:`Predictor`.

Importing this package is cheap: torch and onnxruntime are imported by ``load()``.

Example::

    predictor = load_predictor("models/digits/v1/model.onnx", backend="onnx")
    predictor.load()
    predictor.warm_up()
    probabilities = predictor.predict(to_batch(rows, predictor.input_spec,
                                               allow_non_finite=False))
"""

from __future__ import annotations

from pathlib import Path

from serve_ab.backends.base import (
    DATATYPES,
    Batch,
    InputError,
    InputSpec,
    InputSpecs,
    OutputSpec,
    OutputSpecs,
    Predictor,
    check_batch,
    outputs_to_json,
    specs_of,
    to_batch,
)
from serve_ab.backends.batching import Batcher, predict_together
from serve_ab.backends.onnx import OnnxPredictor
from serve_ab.backends.python import PythonPredictor
from serve_ab.backends.torch import TorchPredictor

__all__ = [
    "BACKENDS",
    "DATATYPES",
    "Batch",
    "Batcher",
    "InputError",
    "InputSpec",
    "InputSpecs",
    "OnnxPredictor",
    "OutputSpec",
    "OutputSpecs",
    "Predictor",
    "PythonPredictor",
    "TorchPredictor",
    "check_batch",
    "load_predictor",
    "outputs_to_json",
    "predict_together",
    "specs_of",
    "to_batch",
]

#: Backend names as written in the config, e.g. ``backend: onnx``.
BACKENDS = ("onnx", "torch", "python")
_PREDICTORS = {"onnx": OnnxPredictor, "torch": TorchPredictor}


def load_predictor(path: str | Path | None, backend: str, *, device: str = "auto",
                   intra_op_threads: int | None = None, class_path: str | None = None,
                   inputs: InputSpec | InputSpecs | None = None,
                   outputs: OutputSpec | OutputSpecs | None = None) -> Predictor:
    """Make the predictor for ``path``; it reads nothing yet: call ``load()``, then ``warm_up()``.

    ``device`` is ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda`` (an error
    at ``load()`` when there is no CUDA); ``intra_op_threads`` caps the threads one
    inference uses (``None``: the runtime's default). ``class_path`` names the python
    backend's class (``my_pkg.model:Model``); ``inputs``/``outputs`` are declared specs:
    the python backend's interface, checked against the file for the others.
    """
    if backend == "python":
        if class_path is None:
            raise ValueError("the python backend needs the model's class, e.g. class: my_pkg.model:Model")
        return PythonPredictor(path, class_path=class_path, device=device, intra_op_threads=intra_op_threads,
                               inputs=inputs, outputs=outputs)
    if backend not in _PREDICTORS:
        raise ValueError(f"unknown backend {backend!r}; valid backends are {list(BACKENDS)} "
                         "(e.g. backend: onnx)")
    if path is None:
        raise ValueError(f"the {backend} backend needs the model file's path")
    return _PREDICTORS[backend](path, device=device, intra_op_threads=intra_op_threads,
                                inputs=inputs, outputs=outputs)
