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
    InputError,
    InputSpec,
    OutputSpec,
    Predictor,
    check_batch,
    to_batch,
)
from serve_ab.backends.batching import Batcher, predict_together
from serve_ab.backends.onnx import OnnxPredictor
from serve_ab.backends.torch import TorchPredictor

__all__ = [
    "BACKENDS",
    "Batcher",
    "InputError",
    "InputSpec",
    "OnnxPredictor",
    "OutputSpec",
    "Predictor",
    "TorchPredictor",
    "check_batch",
    "load_predictor",
    "predict_together",
    "to_batch",
]

#: Backend names as written in the config, e.g. ``backend: onnx``.
BACKENDS = ("onnx", "torch")
_PREDICTORS = {"onnx": OnnxPredictor, "torch": TorchPredictor}


def load_predictor(path: str | Path, backend: str, *, device: str = "auto",
                   intra_op_threads: int | None = None) -> Predictor:
    """Make the predictor for ``path``; it reads nothing yet: call ``load()``, then ``warm_up()``.

    ``device`` is ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda`` (an error
    at ``load()`` when there is no CUDA); ``intra_op_threads`` caps the threads one
    inference uses (``None``: the runtime's default).
    """
    if backend not in _PREDICTORS:
        raise ValueError(f"unknown backend {backend!r}; valid backends are {list(BACKENDS)} "
                         "(e.g. backend: onnx)")
    return _PREDICTORS[backend](path, device=device, intra_op_threads=intra_op_threads)
