"""What the backends share: the file, device and warm-up checks, and the predictors'
common part (:class:`ModelPredictor`); imports nothing heavy."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from serve_ab.backends.base import InputSpec, InputSpecs, OutputSpec, OutputSpecs

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
WARM_UP_BATCH_SIZES = (1, 8, 1, 8)


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {list(DEVICES)}; got {device!r} "
                         "(e.g. device='auto')")
    return device


def check_threads(intra_op_threads: int | None) -> int | None:
    if intra_op_threads is not None and (
            not isinstance(intra_op_threads, int) or intra_op_threads < 1):
        raise ValueError(f"intra_op_threads must be a positive integer or None; got "
                         f"{intra_op_threads!r} (e.g. intra_op_threads=1)")
    return intra_op_threads


def check_model_file(path: Path, backend: str) -> None:
    """Raise FileNotFoundError naming the path and backend if the file is not there."""
    if path.is_file():
        return
    problem = "is a directory, not a model file" if path.is_dir() else "does not exist"
    hint = ""
    # models/digits/<version>/model.* are built, not committed.
    if path.parent.parent.name == "digits":
        hint = "; the example models are built, not committed: run python models/build.py"
    raise FileNotFoundError(f"model file for the {backend} backend {problem}: {path}{hint}")


def check_batch_dim(path: Path, role: str, name: str, shape: tuple[int, ...]) -> None:
    if not shape or shape[0] != -1:
        raise ValueError(
            f"{path}: {role} '{name}' has shape {list(shape)}; serve-ab batches requests, so "
            "the first dimension must be a dynamic batch dimension (e.g. [-1, 64])")


def zeros_for(spec: Any, size: int) -> Any:
    """A batch of ``size`` zero instances for an input description (one spec or several)."""
    from serve_ab.backends.base import InputSpecs

    def one(s: Any) -> np.ndarray:
        # A free non-batch dim gets 1: any size is valid for it.
        shape = (size, *(d if d >= 0 else 1 for d in s.shape[1:]))
        if np.dtype(s.dtype).kind == "O":
            return np.full(shape, b"", dtype=object)
        return np.zeros(shape, dtype=s.dtype)

    if isinstance(spec, InputSpecs):
        return {s.name: one(s) for s in spec}
    return one(spec)


def check_output(predictor: Any, result: Any, size: int) -> None:
    """Raise naming the model when ``result`` does not fit its output description."""
    from serve_ab.backends.base import OutputSpecs

    expected = predictor.output_spec
    where = f"{predictor.path} ({predictor.backend} backend)"
    if isinstance(expected, OutputSpecs):
        if not isinstance(result, dict) or set(result) != set(expected.names):
            got = sorted(result) if isinstance(result, dict) else type(result).__name__
            raise RuntimeError(f"{where} returned {got} for a batch of {size}; its output spec names "
                               f"{list(expected.names)}")
        pairs = [(spec, result[spec.name]) for spec in expected]
    else:
        pairs = [(expected, result)]
    for spec, array in pairs:
        want = (size, *spec.shape[1:])
        if not isinstance(array, np.ndarray) or array.ndim != len(want) or any(
                w >= 0 and g != w for g, w in zip(array.shape, want)):
            shape = list(array.shape) if isinstance(array, np.ndarray) else type(array).__name__
            raise RuntimeError(
                f"{where} returned shape {shape} for output '{spec.name}' and a batch of {size}; "
                f"its output spec says {list(spec.shape)}")


def warm_up(predictor: Any) -> None:
    """Run zero batches through ``predictor`` and check the output shape on the way."""
    for size in WARM_UP_BATCH_SIZES:
        check_output(predictor, predictor.predict(zeros_for(predictor.input_spec, size)), size)


def check_declared(path: Path, backend: str, role: str, read: Any, declared: Any) -> None:
    """A version's declared ``inputs:``/``outputs:`` must match what the model file says."""
    if declared is None:
        return
    from serve_ab.backends.base import specs_of

    got, want = specs_of(read), specs_of(declared)
    problems = []
    if [s.name for s in got] != [s.name for s in want]:
        problems.append(f"names {[s.name for s in want]} declared, {[s.name for s in got]} in the file")
    else:
        for g, w in zip(got, want):
            if np.dtype(g.dtype) != np.dtype(w.dtype):
                problems.append(f"'{g.name}' declared {w.datatype}, the file says {g.datatype}")
            elif len(g.shape) != len(w.shape) or any(
                    a >= 0 and b >= 0 and a != b for a, b in zip(g.shape, w.shape)):
                problems.append(f"'{g.name}' declared shape {list(w.shape)}, the file says {list(g.shape)}")
    if problems:
        raise ValueError(f"{path} ({backend} backend): {role} declared in the config do not match the "
                         f"model: {'; '.join(problems)} (drop the {role}: declaration or fix it)")


class ModelPredictor:
    """The part of a :class:`~serve_ab.backends.base.Predictor` every backend shares: the
    device and threads asked for (checked at once), the tensors the config declared
    (checked against the model at load), the specs ``load()`` settles, and warm-up.

    A backend adds ``backend``, ``load()``, ``predict()`` and ``_require_loaded()``, which
    says what "loaded" means for it (a session, a module, a model object).
    """

    backend: str

    def __init__(self, path: Path | None, *, device: str, intra_op_threads: int | None,
                 inputs: InputSpec | InputSpecs | None, outputs: OutputSpec | OutputSpecs | None) -> None:
        self.path = path
        self.declared = (inputs, outputs)  # from the config: checked against the model at load
        self.requested_device = check_device(device)
        self.intra_op_threads = check_threads(intra_op_threads)
        #: The requested device until ``load()`` settles it to ``cpu`` or ``cuda``.
        self.device = self.requested_device
        self._input_spec: InputSpec | InputSpecs | None = None
        self._output_spec: OutputSpec | OutputSpecs | None = None

    @property
    def input_spec(self) -> InputSpec | InputSpecs:
        self._require_loaded()
        return self._input_spec

    @property
    def output_spec(self) -> OutputSpec | OutputSpecs:
        self._require_loaded()
        return self._output_spec

    def warm_up(self) -> None:
        warm_up(self)

    def _require_loaded(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} says when it is loaded")
