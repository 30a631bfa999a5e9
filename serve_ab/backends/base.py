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

import math
from dataclasses import dataclass, field
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, Union, runtime_checkable

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
# BYTES (strings, raw bytes) travel as numpy object arrays of ``bytes``; only the python
# backend (and ONNX string tensors) take them, so they are kept apart from the numeric types.
BYTES_DTYPE = np.dtype(object)
_DATATYPE_BY_DTYPE[BYTES_DTYPE] = "BYTES"
#: Every datatype an input or output may be declared with (``inputs:``/``outputs:`` in a version).
DATATYPES: dict[str, np.dtype] = {**V2_DATATYPES, "BYTES": BYTES_DTYPE}


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
    #: Whether ``shape``'s fixed dimensions were declared (by a model file, a config) rather
    #: than seen in one call (a python model that declares no outputs): only declared ones
    #: are enforced on every answer, since a width seen once (padded token ids, top-k) may
    #: vary. Not part of equality: versions agree on an interface whoever declared it.
    declared: bool = field(default=True, compare=False)

    @property
    def datatype(self) -> str:
        return _DATATYPE_BY_DTYPE[np.dtype(self.dtype)]

    def to_v2(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


class _Specs(tuple):
    """Several named tensors, in the model's order. A model with one input (or output) is
    described by its lone :class:`InputSpec` (:class:`OutputSpec`), exactly as before; only
    a model with several gets an :class:`InputSpecs` (:class:`OutputSpecs`)."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self)

    def by_name(self, name: str) -> Any:
        for spec in self:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def to_v2(self) -> list[dict[str, Any]]:
        return [spec.to_v2() for spec in self]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self))})"


class InputSpecs(_Specs):
    """The inputs of a model that takes several, e.g. ``age_sex`` and ``blood``."""

    def describe(self) -> str:
        return "{" + ", ".join(f"{s.name}: {s.describe()}" for s in self) + "}"


class OutputSpecs(_Specs):
    """The outputs of a model that returns several."""


def specs_of(spec: Any) -> tuple[Any, ...]:
    """The tensors of an input or output description, one or several, as a tuple."""
    return tuple(spec) if isinstance(spec, _Specs) else (spec,)


def tensors_text(spec: Any) -> str:
    """An input or output description as V2 metadata reads: "'input' FP32 [-1, 64]", several
    joined by commas."""
    def datatype(s: Any) -> str:  # a python class may declare a dtype V2 has no name for
        return _DATATYPE_BY_DTYPE.get(np.dtype(s.dtype), str(s.dtype))

    return ", ".join(f"{s.name!r} {datatype(s)} {list(s.shape)}" for s in specs_of(spec))


def input_signature(specs: Sequence[InputSpec]) -> InputSpec | InputSpecs:
    """One spec for a one-input model (the long-standing form), :class:`InputSpecs` otherwise."""
    if not specs:
        raise ValueError("a model takes at least one input")
    _check_distinct([s.name for s in specs], "input")
    return specs[0] if len(specs) == 1 else InputSpecs(specs)


def output_signature(specs: Sequence[OutputSpec]) -> OutputSpec | OutputSpecs:
    if not specs:
        raise ValueError("a model returns at least one output")
    _check_distinct([s.name for s in specs], "output")
    return specs[0] if len(specs) == 1 else OutputSpecs(specs)


def _check_distinct(names: list[str], role: str) -> None:
    seen = {n for n in names if names.count(n) > 1}
    if seen:
        raise ValueError(f"{role} names must be distinct; {sorted(seen)} appear more than once in {names}")


#: A batch as a model takes it: one array (one input), or one per input name.
Batch = Union[np.ndarray, dict[str, np.ndarray]]


def batch_size(batch: Batch) -> int:
    """Instances in a batch (every input of a multi-input batch has as many)."""
    if isinstance(batch, dict):
        return len(next(iter(batch.values())))
    return len(batch)


def concat_batches(batches: Sequence[Batch]) -> Batch:
    """Several requests' batches as one model call (dynamic batching)."""
    if len(batches) == 1:
        return batches[0]
    if isinstance(batches[0], dict):
        return {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}
    return np.concatenate(batches)


def split_outputs(outputs: Batch, sizes: Sequence[int]) -> list[Batch]:
    """One model call's outputs cut back into each request's rows."""
    if len(sizes) == 1:
        return [outputs]
    cuts = np.cumsum(sizes)[:-1]
    if isinstance(outputs, dict):
        parts = {name: np.split(array, cuts) for name, array in outputs.items()}
        return [{name: parts[name][i] for name in outputs} for i in range(len(sizes))]
    return np.split(outputs, cuts)


@runtime_checkable
class Predictor(Protocol):
    """What the serving layer needs from a model backend."""

    #: Backend name as written in the config: ``onnx``, ``torch`` or ``python``.
    backend: str
    #: ``cpu`` or ``cuda``; known after ``load()``.
    device: str

    @property
    def input_spec(self) -> InputSpec | InputSpecs: ...

    @property
    def output_spec(self) -> OutputSpec | OutputSpecs: ...

    def load(self) -> None:
        """Read the model file and place it on its device."""

    def warm_up(self) -> None:
        """Run a few batches so the first user request does not pay for lazy init."""

    def predict(self, batch: Batch) -> Batch:
        """Run one batch, already checked by :func:`to_batch`; returns ``(n, ...)``: one
        array for a one-output model, else ``{output name: array}``. A one-input model
        takes one array, a multi-input model ``{input name: array}``."""


#: A declared V2 shape's bounds, checked before anything is computed from it (its number of
#: values, a message quoting it; ``api/schemas.py``, ``api/grpc/codec.py``): numpy builds no
#: array of more dimensions (NPY_MAXDIMS), and the protocol's dimensions are int64s.
MAX_DIMS = 64
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_shape(shape: Sequence[int], spec: InputSpec) -> None:
    """Raise :class:`InputError` unless ``shape`` has ``spec``'s rank and fixed dimensions.

    Also called on a V2 tensor's declared shape before any array is built, so a shape numpy
    cannot build (70 dimensions, ``[0, 2**62]``) is refused as the wrong shape it is.
    """
    if len(shape) != len(spec.shape):
        hint = ""
        if len(shape) == len(spec.shape) - 1:
            hint = " Wrap a single instance in a list to make a batch of one."
        raise InputError(f"input '{spec.name}' must have shape {spec.describe()}; got {list(shape)}.{hint}")
    for axis, (got, want) in enumerate(zip(shape, spec.shape)):
        if axis > 0 and want >= 0 and got != want:
            raise InputError(
                f"input '{spec.name}' must have shape {spec.describe()}; got "
                f"{list(shape)} (dimension {axis} is {got}, expected {want})"
            )


def reshaped(array: np.ndarray, name: str, shape: Sequence[int]) -> np.ndarray:
    """``array`` in a V2 tensor's declared ``shape``, whose size the caller checked: a shape
    numpy cannot build (more than 64 dimensions, a dimension past its index range beside a 0)
    is the client's error, not a 500."""
    try:
        return array.reshape(shape)
    except (ValueError, OverflowError) as err:
        raise InputError(f"input '{name}' has shape {list(shape)}, which no array can have ({err})") from None


def _huge_integer_digits(batch: np.ndarray) -> int:
    """The digits of the longest integer in an object array of integers only; 0 otherwise."""
    if batch.dtype.kind != "O":
        return 0
    values = batch.ravel().tolist()
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return 0
    # str() of an int past 4,300 digits raises in Python 3.11+: estimated from the bit length there.
    return max(len(str(abs(v))) if v.bit_length() < 14_000 else int(v.bit_length() * math.log10(2)) + 1
               for v in values)


def _wide_integers_as_floats(batch: np.ndarray, spec: InputSpec) -> np.ndarray | None:
    """An object array of numbers, for a float input, as float64; None when it holds anything
    else (a boolean, None, a string) or an integer past the input's float range. JSON integers
    past 64 bits arrive as Python ints in an object array, and they are numbers like any for a
    float input: JavaScript writes 1e20 as 100000000000000000000."""
    if batch.dtype.kind != "O":
        return None
    values = batch.ravel().tolist()
    if not all(type(v) in (int, float) for v in values):
        return None
    largest = float(np.finfo(spec.dtype).max)
    # int against float compares exactly, with no overflow; NaN and infinity are left to the float checks.
    if any(type(v) is int and abs(v) > largest for v in values):
        return None
    return np.array([float(v) for v in values], dtype=np.float64).reshape(batch.shape)


# Up to this many values, a float array's finiteness is read from its sum as Python floats.
# Warm, the two ways cost the same at about 70 values (0.7 us; numpy's 0.8); cold, as a
# replica's path runs at concurrency 1, the sum spares numpy's ufunc and reduction code,
# 6 us a check (benchmarks/README.md, twenty-fourth round).
SUM_CHECK_MAX_VALUES = 128


def all_finite(array: np.ndarray) -> bool:
    """Whether a float array holds no NaN and no infinity.

    A NaN or an infinity makes the sum NaN or infinite, so a finite sum proves every value
    finite. A sum that is not finite says nothing more (finite float64 values near the
    maximum overflow it), so numpy decides then, as it does for larger arrays."""
    if array.size <= SUM_CHECK_MAX_VALUES and math.isfinite(sum(array.ravel().tolist())):
        return True
    return bool(np.isfinite(array).all())


def check_batch(batch: np.ndarray, spec: InputSpec, *, allow_non_finite: bool,
                values: Any = None) -> np.ndarray:
    """Check an array against ``spec`` and return it in the model's dtype.

    ``values``: the JSON-decoded lists ``batch`` was read from, if it was: an integer input
    whose numbers numpy read as float64 is read from them again, exactly
    (:func:`_exact_integers`). Raises :class:`InputError` naming the problem; never reshapes
    or guesses.
    """
    if batch.size == 0:
        raise InputError(f"input '{spec.name}' is an empty batch; send at least one instance")
    check_shape(batch.shape, spec)
    kind = batch.dtype.kind
    want_kind = np.dtype(spec.dtype).kind
    if want_kind == "O":
        return _bytes_batch(batch, spec)
    if kind == "b" and want_kind != "b":
        raise InputError(f"input '{spec.name}' holds booleans; expected numbers ({spec.datatype})")
    if kind not in "biuf" and want_kind == "f" and (floats := _wide_integers_as_floats(batch, spec)) is not None:
        batch, kind = floats, "f"  # then checked as any float batch is
    if kind not in "biuf":
        huge = _huge_integer_digits(batch)
        if huge:  # JSON integers past 64 bits arrive as Python ints, in an object array
            raise InputError(f"input '{spec.name}' holds integers beyond {spec.datatype}'s range "
                             f"(one has {huge} digits)")
        raise InputError(
            f"input '{spec.name}' must hold numbers ({spec.datatype}); got values of type "
            f"'{batch.dtype}'"
        )
    if kind == "f" and want_kind in "iu":
        if not np.all(np.mod(batch, 1) == 0):
            raise InputError(f"input '{spec.name}' expects integers ({spec.datatype}); got fractions")
        if values is not None and np.abs(batch).max() >= FLOAT64_EXACT_INTEGERS:
            return _exact_integers(values, batch.shape, spec)
    out = batch.astype(spec.dtype, copy=False)
    # Float to float, one finiteness check of the cast serves both rules (a cast keeps NaN and
    # infinity, and turns 1e39, finite as a float64, into FP32's infinity); the batch is looked
    # at again only to say which rule a refused one broke.
    if kind == "f" and not allow_non_finite and not all_finite(out if want_kind == "f" else batch):
        if not np.isfinite(batch).all():
            raise InputError(
                f"input '{spec.name}' contains NaN or infinity (a number past a double's range, "
                "such as 1e400, reads as infinity); this experiment rejects them "
                "(set http.allow_non_finite: true to pass them to the model)"
            )
        raise InputError(f"input '{spec.name}' holds values beyond {spec.datatype}'s range "
                         f"(largest magnitude {np.finfo(out.dtype).max:.3g})")
    # Checked after the cast too: 300 wraps around as INT8; the model would see values the
    # client never sent.
    if out is not batch:
        if want_kind == "f" and kind != "f" and not allow_non_finite and not all_finite(out):
            raise InputError(f"input '{spec.name}' holds values beyond {spec.datatype}'s range "
                             f"(largest magnitude {np.finfo(out.dtype).max:.3g})")
        if want_kind in "iu" and not np.array_equal(out, batch):
            info = np.iinfo(out.dtype)
            raise InputError(f"input '{spec.name}' holds values outside {spec.datatype}'s range "
                             f"[{info.min}, {info.max}]")
        if want_kind == "b" and not np.array_equal(out, batch):  # 2 or 0.5 would read as true
            raise InputError(f"input '{spec.name}' is {spec.datatype}: send true and false, or 0 and 1; "
                             f"got other numbers")
    return out


# float64 holds every integer up to 2**53 and not all past it. numpy reads a list that mixes
# integers with a float, or small integers with ones of 2**63 and more (UINT64's upper half),
# as float64: such a value would reach the model rounded (9223372036854775809 as ...808).
FLOAT64_EXACT_INTEGERS = 2.0**53


def _exact_integers(values: Any, shape: tuple[int, ...], spec: InputSpec) -> np.ndarray:
    """An integer input read from its JSON numbers one by one, as Python numbers, so that
    none goes through float64; fractions and values outside the dtype's range are refused."""
    info = np.iinfo(spec.dtype)
    exact = []
    for value in np.asarray(values, dtype=object).ravel().tolist():
        if isinstance(value, float):
            if not value.is_integer():
                raise InputError(f"input '{spec.name}' expects integers ({spec.datatype}); got fractions")
            value = int(value)
        if not info.min <= value <= info.max:
            raise InputError(f"input '{spec.name}' holds values outside {spec.datatype}'s range "
                             f"[{info.min}, {info.max}]")
        exact.append(value)
    return np.array(exact, dtype=spec.dtype).reshape(shape)


def _bytes_batch(batch: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A BYTES input as an object array of ``bytes`` (strings are UTF-8 encoded)."""
    if batch.dtype.kind in "US":
        return np.vectorize(_as_bytes, otypes=[object])(batch)
    if batch.dtype.kind == "O" and all(isinstance(v, (str, bytes)) for v in batch.flat):
        return np.vectorize(_as_bytes, otypes=[object])(batch) if batch.size else batch
    raise InputError(f"input '{spec.name}' must hold strings (BYTES); got values of type '{batch.dtype}'")


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def holds_booleans(values: list) -> bool:
    """Whether nested lists hold a JSON ``true`` or ``false``: beside numbers, numpy would
    take them as 1 and 0 without a word. (``map(type, ...)`` keeps the scan in C.)"""
    types = set(map(type, values))
    return bool in types or (list in types and any(holds_booleans(v) for v in values if type(v) is list))


def check_no_booleans(values: list, array: np.ndarray, spec: InputSpec) -> None:
    """Refuse ``true``/``false`` among a numeric input's numbers (all booleans are refused by
    :func:`check_batch`, which sees their dtype)."""
    if array.dtype.kind in "iuf" and np.dtype(spec.dtype).kind != "b" and holds_booleans(values):
        raise InputError(f"input '{spec.name}' holds booleans among its numbers; expected numbers "
                         f"({spec.datatype}), with no true or false")


def to_batch(values: Any, spec: InputSpec | InputSpecs, *, allow_non_finite: bool,
             may_hold_booleans: bool = True) -> Batch:
    """Turn JSON-decoded nested lists into a checked batch for ``spec``.

    A multi-input model takes ``{input name: nested list}``, every input with as many
    instances, and gets ``{input name: array}``; a one-input model takes the nested list
    (bare, or as ``{its input's name: nested list}``) and gets one array.
    ``may_hold_booleans``: False when the caller knows no value is a boolean (a JSON body
    without ``true`` or ``false`` anywhere), which skips looking for them.
    """
    if isinstance(spec, InputSpecs):
        return _named_batch(values, spec, allow_non_finite, may_hold_booleans)
    if isinstance(values, np.ndarray):
        return check_batch(values, spec, allow_non_finite=allow_non_finite)
    if isinstance(values, dict):  # (not Mapping: an ABC check costs the hot path more)
        # By name, as a multi-input model's: a client need not know how many inputs a model has.
        if list(values) != [spec.name]:
            raise InputError(f"this model's one input is '{spec.name}'; got input(s) {list(values)}. Send "
                             f"{{\"inputs\": {{\"{spec.name}\": [...]}}}} or the bare list {{\"inputs\": [...]}}")
        values = values[spec.name]
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
    if may_hold_booleans:
        check_no_booleans(values, array, spec)
    return check_batch(array, spec, allow_non_finite=allow_non_finite, values=values)


def _named_batch(values: Any, specs: InputSpecs, allow_non_finite: bool,
                 may_hold_booleans: bool) -> dict[str, np.ndarray]:
    if not isinstance(values, Mapping):
        raise InputError(f"this model takes several inputs {list(specs.names)}: send them by name, "
                         f"e.g. {{\"inputs\": {{\"{specs[0].name}\": [...], \"{specs[1].name}\": [...]}}}}; "
                         f"got {type(values).__name__}")
    missing = [n for n in specs.names if n not in values]
    unknown = sorted(str(n) for n in values if n not in specs.names)
    if missing or unknown:
        raise InputError(f"this model takes inputs {list(specs.names)}; "
                         + "; ".join(part for part in (f"missing {missing}" if missing else "",
                                                       f"unknown {unknown}" if unknown else "") if part))
    batch = {spec.name: to_batch(values[spec.name], spec, allow_non_finite=allow_non_finite,
                                 may_hold_booleans=may_hold_booleans) for spec in specs}
    sizes = {name: len(array) for name, array in batch.items()}
    if len(set(sizes.values())) > 1:
        raise InputError(f"every input must hold as many instances; got {sizes}")
    return batch


def outputs_to_json(outputs: Batch) -> Any:
    """Outputs as JSON values: nested lists, ``{name: nested list}`` for several outputs,
    BYTES decoded as UTF-8 text."""
    if isinstance(outputs, dict):
        return {name: outputs_to_json(array) for name, array in outputs.items()}
    if outputs.dtype.kind == "O":
        return np.vectorize(_as_text, otypes=[object])(outputs).tolist() if outputs.size else outputs.tolist()
    return outputs.tolist()


def _as_text(value: Any) -> Any:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
