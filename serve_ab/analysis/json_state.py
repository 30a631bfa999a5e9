"""The gates' figures as JSON, for the state store: what a restarted controller reads back.

The routers' reports travel as pickles (Ray's own transport), in the sparse, narrowed form
each class's ``__getstate__`` gives (:mod:`serve_ab.analysis.wire`). The state store holds
JSON, and a pickle read back from a shared store (Redis) would run whatever code its writer
chose. So this module writes the same states as JSON: arrays as their dtype, shape and base64
bytes, objects as the name of one of a few known classes and their state. Reading accepts those
classes only, and rebuilds each through its own ``__setstate__``, so a saved state is read
(and checked) as a router's report is.

Example::

    saved = dump(step_totals)            # JSON-able: dicts, lists, strings and numbers
    json.dumps(saved)
    step_totals = load(saved)            # the same figures; ValueError for anything else
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import math
from typing import Any

import numpy as np

from serve_ab.analysis.aggregate import GateAggregate
from serve_ab.analysis.clusters import GroupSums, ValueGroups
from serve_ab.analysis.sketch import LogHistogram
from serve_ab.analysis.wire import narrow

__all__ = ["dump", "load"]

# The classes a saved state may name: the gate windows' figures, nothing else.
_CLASSES: dict[str, type] = {cls.__name__: cls for cls in (GateAggregate, GroupSums, ValueGroups, LogHistogram)}
# Array dtypes a saved state may hold (numpy reads object arrays as pickles: never those).
_DTYPES = frozenset(np.dtype(t).str for t in (np.uint8, np.uint16, np.uint32, np.int32, np.int64, np.float64, bool))
_TAGS = ("$nd", "$obj", "$counter", "$float")


def dump(value: Any) -> Any:
    """``value`` as JSON-able data. Whole-number arrays are narrowed first (the same values)."""
    if isinstance(value, np.ndarray):
        array = narrow(value) if value.dtype.kind in "iuf" else value
        array = np.ascontiguousarray(array)
        return {"$nd": [array.dtype.str, list(array.shape), base64.b64encode(array.tobytes()).decode("ascii")]}
    if isinstance(value, (bool, str, type(None))):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        # JSON has no infinities or NaN (Python's json writes them, other readers refuse them)
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, collections.Counter):
        return {"$counter": [[dump(k), dump(n)] for k, n in value.items()]}
    if isinstance(value, dict):
        if not all(isinstance(k, str) and k not in _TAGS for k in value):
            raise TypeError(f"cannot save a dict with keys {sorted(map(repr, value))[:5]}: only text keys")
        return {k: dump(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [dump(v) for v in value]
    name = type(value).__name__
    if _CLASSES.get(name) is type(value):
        state = value.__getstate__()
        if isinstance(state, tuple):  # a class with __slots__ only: (None, {slot: value})
            state = state[1]
        return {"$obj": [name, dump(state)]}
    raise TypeError(f"cannot save a {type(value).__module__}.{name}: not one of {sorted(_CLASSES)}")


def load(data: Any) -> Any:
    """What :func:`dump` wrote; ValueError for data it could not have written."""
    if isinstance(data, list):
        return [load(v) for v in data]
    if not isinstance(data, dict):
        if data is None or isinstance(data, (bool, int, float, str)):
            return data
        raise ValueError(f"a saved state holds {type(data).__name__}, not JSON data")
    if "$nd" in data:
        return _array(data["$nd"])
    if "$float" in data:
        text = data["$float"]
        if text not in ("inf", "-inf", "nan"):
            raise ValueError(f"a saved float is {text!r}; only inf, -inf and nan are written so")
        return float(text)
    if "$counter" in data:
        return collections.Counter({load(k): load(n) for k, n in data["$counter"]})
    if "$obj" in data:
        name, state = data["$obj"]
        cls = _CLASSES.get(name)
        if cls is None:
            raise ValueError(f"a saved state names class {name!r}; only {sorted(_CLASSES)} are read")
        state = load(state)
        if not isinstance(state, dict):
            raise ValueError(f"a saved {name} holds {type(state).__name__}, not its fields")
        if "__getstate__" not in vars(cls):  # its state is its fields (a dataclass)
            _check_fields(cls, state)
        out = cls.__new__(cls)
        try:  # each class reads its own state, as from a router's report (and widens its arrays)
            out.__setstate__(state)
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(f"a saved {name} could not be read: {err!r}") from err
        return out
    return {k: load(v) for k, v in data.items()}


def _check_fields(cls: type, state: dict) -> None:
    """A dataclass's saved fields: its own only, each of the type its default has."""
    fields = cls.__dataclass_fields__
    unknown = set(state) - set(fields)
    if unknown:
        raise ValueError(f"a saved {cls.__name__} holds unknown fields {sorted(unknown)}")
    for name, value in state.items():
        field = fields[name]
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        expected = type(default)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ValueError(f"a saved {cls.__name__}.{name} is a {type(value).__name__}, "
                             f"not a {expected.__name__}")


def _array(spec: Any) -> np.ndarray:
    try:
        dtype, shape, text = spec
        if dtype not in _DTYPES:
            raise ValueError(f"a saved array has dtype {dtype!r}; valid: {sorted(_DTYPES)}")
        array = np.frombuffer(base64.b64decode(text, validate=True), dtype=np.dtype(dtype))
        return array.reshape([int(n) for n in shape]).copy()  # writable, as the figures add to it
    except (TypeError, ValueError) as err:
        raise ValueError(f"a saved array could not be read: {err}") from err
