"""Any model written in Python: scikit-learn, XGBoost, a Hugging Face pipeline, plain numpy.

The version config names a class (``class: my_pkg.model:Model``) and, optionally, a path
(a file or directory the class reads). The class is built with no arguments, then::

    class Model:
        # Optional: otherwise the version's inputs:/outputs: say them (inputs are required
        # one way or the other; outputs are read from a first call when neither says them).
        input_spec = [InputSpec("age_sex", np.float32, (-1, 2)), InputSpec("blood", np.float32, (-1, 8))]
        output_spec = OutputSpec("value", np.float32, (-1, 1))

        def load(self, path: str | None) -> None:
            self.model = joblib.load(path)

        def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | np.ndarray:
            x = np.concatenate([inputs["age_sex"], inputs["blood"]], axis=1)
            return self.model.predict(x)[:, None].astype(np.float32)

``predict`` gets a batch (first axis: instances) of every input by name, already checked
against the input spec, and returns one array (one output) or one per output name, each
with as many rows, new ones each call: the router reads an answer's outputs after it has
been served (its class and score for the figures, a shadow's comparison), so an array the
class writes into again on its next call would change them. The ``batching:`` config
applies as for any backend. A spec may also be
given as dicts, ``{"name": "blood", "datatype": "FP32", "shape": [-1, 8]}``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from serve_ab.backends._common import ModelPredictor, zeros_for
from serve_ab.backends.base import (
    DATATYPES,
    Batch,
    InputSpec,
    InputSpecs,
    OutputSpec,
    OutputSpecs,
    input_signature,
    output_signature,
    specs_of,
)

REQUIRED_METHODS = ("load", "predict")


def import_model_class(spec: str) -> type:
    """The class ``module.path:ClassName`` names; ValueError saying what is wrong and a valid form."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"must be 'module.path:ClassName', e.g. 'my_pkg.model:Model'; got {spec!r}")
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or whatever the module raises as it runs
        raise ValueError(f"cannot import module {module_name!r} for {spec!r}: "
                         f"{type(err).__name__}: {err}") from None
    value = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise ValueError(f"module {module_name!r} has no attribute {attribute!r} (from {spec!r})")
        value = getattr(value, part)
    if not isinstance(value, type):
        raise ValueError(f"{spec!r} is a {type(value).__name__}, not a class")
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(value, m, None))]
    if missing:
        raise ValueError(f"class {spec!r} has no {' or '.join(missing)} method; a python model "
                         "needs load(self, path) and predict(self, inputs: dict[str, np.ndarray])")
    return value


def parse_specs(value: Any, role: str, where: str) -> Any:
    """A class's ``input_spec``/``output_spec``: one spec, a list of them, or dicts."""
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) and not isinstance(value, (InputSpec, OutputSpec)) else [value]
    kind = InputSpec if role == "input" else OutputSpec
    specs = []
    for item in items:
        if isinstance(item, (InputSpec, OutputSpec)):
            specs.append(kind(item.name, np.dtype(item.dtype), tuple(item.shape)))
        elif isinstance(item, dict) and {"name", "datatype", "shape"} <= set(item):
            if item["datatype"] not in DATATYPES:
                raise ValueError(f"{where}: {role} '{item['name']}' has datatype {item['datatype']!r}; "
                                 f"valid: {sorted(DATATYPES)}")
            specs.append(kind(item["name"], DATATYPES[item["datatype"]], tuple(item["shape"])))
        else:
            raise ValueError(f"{where}: {role}_spec must be an {kind.__name__}, a list of them, or dicts "
                             f"like {{'name': 'x', 'datatype': 'FP32', 'shape': [-1, 4]}}; got {item!r}")
    for spec in specs:
        if not spec.shape or spec.shape[0] != -1:
            raise ValueError(f"{where}: {role} '{spec.name}' has shape {list(spec.shape)}; the first "
                             "dimension is the batch and must be -1 (e.g. [-1, 4])")
    return (input_signature if role == "input" else output_signature)(specs)


class PythonPredictor(ModelPredictor):
    """A Python class behind the :class:`~serve_ab.backends.base.Predictor` protocol."""

    backend = "python"

    def __init__(self, path: str | Path | None, *, class_path: str, device: str = "auto",
                 intra_op_threads: int | None = None, inputs: InputSpec | InputSpecs | None = None,
                 outputs: OutputSpec | OutputSpecs | None = None) -> None:
        # The device settles at load() to the model's own ``device`` attribute when it has one, else ``cpu``.
        super().__init__(Path(path) if path is not None else None, device=device,
                         intra_op_threads=intra_op_threads, inputs=inputs, outputs=outputs)
        self.class_path = class_path
        self._model: Any = None

    def __str__(self) -> str:
        return self.class_path

    def load(self) -> None:
        where = f"class {self.class_path}"
        cls = import_model_class(self.class_path)
        model = cls()
        model.load(None if self.path is None else str(self.path))
        inputs = self.declared[0] or parse_specs(getattr(model, "input_spec", None), "input", where)
        if inputs is None:
            raise ValueError(f"{where} declares no input_spec and the version no inputs:; declare the "
                             "inputs one way, e.g. inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]")
        self._model, self._input_spec = model, inputs
        outputs = self.declared[1] or parse_specs(getattr(model, "output_spec", None), "output", where)
        if outputs is None:
            outputs = self._infer_outputs()
        self._output_spec = outputs
        device = getattr(model, "device", None)
        self.device = device if device in ("cpu", "cuda") else "cpu"

    def predict(self, batch: Batch) -> Batch:
        self._require_loaded()
        inputs = batch if isinstance(batch, dict) else {self._input_spec.name: batch}
        return self._shape_result(self._model.predict(inputs), self._output_spec)

    def _shape_result(self, result: Any, spec: Any) -> Batch:
        where = f"class {self.class_path}"
        if isinstance(spec, OutputSpecs):
            if not isinstance(result, dict):
                raise RuntimeError(f"{where}.predict returned {type(result).__name__}; its outputs are "
                                   f"{list(spec.names)}, so it must return {{name: array}}")
            return {s.name: self._array(result.get(s.name), s, where) for s in spec}
        if isinstance(result, dict):
            if set(result) != {spec.name}:
                raise RuntimeError(f"{where}.predict returned outputs {sorted(result)}; its output is "
                                   f"'{spec.name}'")
            result = result[spec.name]
        return self._array(result, spec, where)

    @staticmethod
    def _array(value: Any, spec: OutputSpec, where: str) -> np.ndarray:
        if value is None:
            raise RuntimeError(f"{where}.predict returned no output '{spec.name}'")
        array = np.asarray(value)
        if np.dtype(spec.dtype).kind == "O":
            return array.astype(object, copy=False)
        return array.astype(spec.dtype, copy=False)

    def _infer_outputs(self) -> OutputSpec | OutputSpecs:
        """Outputs nobody declared: named, typed and shaped as a first call returns them."""
        result = self._model.predict(zeros_for(self._input_spec, 1) if isinstance(self._input_spec, InputSpecs)
                                     else {self._input_spec.name: zeros_for(self._input_spec, 1)})
        items = result.items() if isinstance(result, dict) else [("output", result)]
        specs = []
        for name, value in items:
            array = np.asarray(value)
            if array.ndim == 0:
                raise ValueError(f"class {self.class_path}.predict returned a scalar for '{name}'; return "
                                 "one row per instance (shape [n, ...])")
            dtype = array.dtype if array.dtype.kind in "biuf" else np.dtype(object)
            # Shown as seen (V2 metadata), but not enforced: one call's width may vary.
            specs.append(OutputSpec(name, dtype, (-1, *array.shape[1:]), declared=False))
        return output_signature(specs)

    def _require_loaded(self) -> None:
        if self._model is None:
            raise RuntimeError(f"class {self.class_path} (python backend) is not loaded; call load() first")


__all__ = ["PythonPredictor", "import_model_class", "parse_specs", "specs_of"]
