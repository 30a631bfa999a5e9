"""The contract every model backend meets, and the input checks they share.

A backend turns a model file into a :class:`Predictor`: ``load()`` once per replica,
``warm_up()`` before the replica reports ready, then ``predict(batch)`` on a numpy batch
whose first axis is the batch axis. Inputs are checked against the model's own
:class:`InputSpec` before they reach the model, so a bad request costs a 400, not a replica.

Example::

    predictor = load_predictor("models/digits/v1/model.onnx", backend="onnx")
    predictor.load()
    predictor.warm_up()
    batch = to_batch([[0.0] * 64], predictor.input_spec, allow_non_finite=False)
    probabilities = predictor.predict(batch)   # shape (1, 10)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from serve_ab.errors import InvalidInput

# Open Inference Protocol (KServe V2) datatype names and the numpy dtypes they map to.
V2_DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_DATATYPE_BY_DTYPE = {dtype: name for name, dtype in V2_DATATYPES.items()}


class InputError(InvalidInput):
    """A request's inputs do not fit the model. The message is shown to the client."""


@dataclass(frozen=True)
class InputSpec:
    """One input tensor: its name, dtype and shape, ``-1`` marking a free dimension.

    The first dimension is the batch dimension and is always free.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def datatype(self) -> str:
        """The Open Inference Protocol name of the dtype, e.g. ``FP32``."""
        return _DATATYPE_BY_DTYPE[np.dtype(self.dtype)]

    def describe(self) -> str:
        return "[" + ", ".join("n" if i == 0 else ("*" if d < 0 else str(d))
                               for i, d in enumerate(self.shape)) + "]"

    def to_v2(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class OutputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def datatype(self) -> str:
        return _DATATYPE_BY_DTYPE[np.dtype(self.dtype)]

    def to_v2(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@runtime_checkable
class Predictor(Protocol):
    """What the serving layer needs from a model backend."""

    #: Backend name as written in the config: ``onnx`` or ``torch``.
    backend: str
    #: ``cpu`` or ``cuda``; known after ``load()``.
    device: str

    @property
    def input_spec(self) -> InputSpec: ...

    @property
    def output_spec(self) -> OutputSpec: ...

    def load(self) -> None:
        """Read the model file and place it on its device."""

    def warm_up(self) -> None:
        """Run a few batches so the first user request does not pay for lazy init."""

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch, already checked by :func:`to_batch`; returns ``(n, ...)``."""


def check_batch(batch: np.ndarray, spec: InputSpec, *, allow_non_finite: bool) -> np.ndarray:
    """Check an array against ``spec`` and return it in the model's dtype.

    Raises :class:`InputError` naming the problem; never reshapes or guesses.
    """
    if batch.size == 0:
        raise InputError(f"input '{spec.name}' is an empty batch; send at least one instance")
    if batch.ndim != len(spec.shape):
        hint = ""
        if batch.ndim == len(spec.shape) - 1:
            hint = " Wrap a single instance in a list to make a batch of one."
        raise InputError(
            f"input '{spec.name}' must have shape {spec.describe()}; got "
            f"{list(batch.shape)}.{hint}"
        )
    for axis, (got, want) in enumerate(zip(batch.shape, spec.shape)):
        if axis > 0 and want >= 0 and got != want:
            raise InputError(
                f"input '{spec.name}' must have shape {spec.describe()}; got "
                f"{list(batch.shape)} (dimension {axis} is {got}, expected {want})"
            )
    kind = batch.dtype.kind
    want_kind = np.dtype(spec.dtype).kind
    if kind == "b" and want_kind != "b":
        raise InputError(f"input '{spec.name}' holds booleans; expected numbers ({spec.datatype})")
    if kind not in "biuf":
        raise InputError(
            f"input '{spec.name}' must hold numbers ({spec.datatype}); got values of type "
            f"'{batch.dtype}'"
        )
    if kind == "f" and want_kind in "iu" and not np.all(np.mod(batch, 1) == 0):
        raise InputError(f"input '{spec.name}' expects integers ({spec.datatype}); got fractions")
    if kind == "f" and not allow_non_finite and not np.isfinite(batch).all():
        raise InputError(
            f"input '{spec.name}' contains NaN or infinity; this experiment rejects them "
            "(set http.allow_non_finite: true to pass them to the model)"
        )
    out = batch.astype(spec.dtype, copy=False)
    # Checked after the cast too: 1e39 is finite as a float64 and infinite as FP32, and 300
    # wraps around as INT8; the model would see values the client never sent.
    if out is not batch:
        if want_kind == "f" and not allow_non_finite and not np.isfinite(out).all():
            raise InputError(f"input '{spec.name}' holds values beyond {spec.datatype}'s range "
                             f"(largest magnitude {np.finfo(out.dtype).max:.3g})")
        if want_kind in "iu" and not np.array_equal(out, batch):
            info = np.iinfo(out.dtype)
            raise InputError(f"input '{spec.name}' holds values outside {spec.datatype}'s range "
                             f"[{info.min}, {info.max}]")
    return out


def to_batch(values: Any, spec: InputSpec, *, allow_non_finite: bool) -> np.ndarray:
    """Turn JSON-decoded nested lists into a checked batch for ``spec``."""
    if isinstance(values, np.ndarray):
        return check_batch(values, spec, allow_non_finite=allow_non_finite)
    if not isinstance(values, list):
        raise InputError(
            f"input '{spec.name}' must be a list of instances with shape {spec.describe()}; "
            f"got {type(values).__name__}"
        )
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as err:
        raise InputError(
            f"input '{spec.name}' is ragged or mixed ({err}); send a rectangular batch "
            f"of shape {spec.describe()}"
        ) from None
    return check_batch(array, spec, allow_non_finite=allow_non_finite)
