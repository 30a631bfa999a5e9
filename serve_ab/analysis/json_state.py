"""The gates' figures as JSON, for the state store: what a restarted controller reads back.

The routers' reports travel as pickles (Ray's own transport), in the sparse, narrowed form
each class's ``__getstate__`` gives (:mod:`serve_ab.analysis.wire`). The state store holds
JSON, and a pickle read back from a shared store (Redis) would run whatever code its writer
chose. So this module writes the same states as JSON: arrays as their dtype, shape and
base64 bytes (zlib-compressed past a few KB: a busy step's per-cell counts are 64K small
numbers), objects as the name of one of a few known classes and their state. Reading accepts
those classes only and rebuilds each through its own ``__setstate__``, so a saved state is
read (and checked) as a router's report is; anything else is a ValueError.

A tagged value is a dict of exactly one key, the tag (``$nd``, ``$obj``, ``$counter``,
``$float``); a dict's own keys that start with ``$`` (a feedback metric may be named so) are
written with one more ``$``, so no name is ever read as a tag.

Example::

    saved = dump(step_totals)            # JSON-able: dicts, lists, strings and numbers
    json.dumps(saved, allow_nan=False)
    step_totals = load(saved)            # the same figures; ValueError for anything else
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import math
import zlib
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
_TAGS = frozenset({"$nd", "$obj", "$counter", "$float"})
# Arrays past this many bytes are compressed (level 1: about 1 ms for a 256 KB array).
_COMPRESS_AFTER_BYTES = 4096
# Classes a saved class count may name: a look lists every class up to the largest it holds
# (a model of more classes starts its step's window afresh after a restart).
_MAX_CLASSES = 1 << 16
# The most requests a saved figure may count (a step of 10^12 requests).
_MAX_COUNT = 1 << 40
# What an array may inflate to: the largest the gate figures hold is 64K int32 cell counts.
_MAX_ARRAY_BYTES = 1 << 22


def dump(value: Any) -> Any:
    """``value`` as JSON-able data. Whole-number arrays are narrowed first (the same values)."""
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(narrow(value) if value.dtype.kind in "iuf" else value)
        raw = array.tobytes()
        spec = [array.dtype.str, list(array.shape)]
        if len(raw) > _COMPRESS_AFTER_BYTES:
            return {"$nd": [*spec, base64.b64encode(zlib.compress(raw, 1)).decode("ascii"), "zlib"]}
        return {"$nd": [*spec, base64.b64encode(raw).decode("ascii")]}
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
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"cannot save a dict with keys {sorted(map(repr, value))[:5]}: JSON keys are text")
        return {("$" + k if k.startswith("$") else k): dump(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [dump(v) for v in value]
    name = type(value).__name__
    if _CLASSES.get(name) is type(value):
        return {"$obj": [name, dump(value.__getstate__())]}
    raise TypeError(f"cannot save a {type(value).__module__}.{name}: not one of {sorted(_CLASSES)}")


def load(data: Any) -> Any:
    """What :func:`dump` wrote; ValueError for anything it could not have written."""
    try:
        return _load(data)
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged row is one error, whatever broke on it
        raise ValueError(f"a saved state could not be read: {err!r}") from err


def _load(data: Any) -> Any:
    if isinstance(data, list):
        return [_load(v) for v in data]
    if not isinstance(data, dict):
        if data is None or isinstance(data, (bool, int, float, str)):
            return data
        raise ValueError(f"a saved state holds {type(data).__name__}, not JSON data")
    if len(data) == 1 and next(iter(data)) in _TAGS:
        tag, body = next(iter(data.items()))
        if tag == "$nd":
            return _array(body)
        if tag == "$float":
            if body not in ("inf", "-inf", "nan"):
                raise ValueError(f"a saved float is {body!r}; only inf, -inf and nan are written so")
            return float(body)
        if tag == "$counter":
            counter = collections.Counter({_load(k): _load(n) for k, n in body})
            # Predicted classes (a model's output index): a look spans 0 to the largest.
            if not all(_is_whole(k) and 0 <= k < _MAX_CLASSES and _is_whole(n) and 0 <= n <= _MAX_COUNT
                       for k, n in counter.items()):
                raise ValueError(f"a saved class count is not one of a class in [0, {_MAX_CLASSES}) and a "
                                 f"count in [0, {_MAX_COUNT}]")
            return counter
        return _object(*body)
    if any(k.startswith("$") and not k.startswith("$$") for k in data):
        raise ValueError(f"a saved state holds unknown tags {sorted(k for k in data if k.startswith('$'))}")
    return {(k[1:] if k.startswith("$") else k): _load(v) for k, v in data.items()}


def _object(name: str, state: Any) -> Any:
    cls = _CLASSES.get(name)
    if cls is None:
        raise ValueError(f"a saved state names class {name!r}; only {sorted(_CLASSES)} are read")
    state = _load(state)
    if not isinstance(state, dict):
        raise ValueError(f"a saved {name} holds {type(state).__name__}, not its fields")
    if "__getstate__" not in vars(cls):  # its state is its fields (a dataclass)
        _check_fields(cls, state)
    out = cls.__new__(cls)
    out.__setstate__(state)  # each class reads its own state, as from a router's report
    _CHECKS.get(cls, lambda _: None)(out)
    return out


# Figures that add up, as every router's do: a damaged count that a look would take (a
# histogram's count of 10^30, a class counted 2^62 times) makes every later look raise or run
# for minutes, and the rollout would hold with it.
def _check_histogram(h: LogHistogram) -> None:
    if not (0 <= h.count <= _MAX_COUNT and int(h.counts.sum()) == h.count and math.isfinite(h.total)
            and (h.count == 0 or h.min <= h.max)):
        raise ValueError(f"a saved histogram does not add up: count {h.count!r}, buckets {int(h.counts.sum())}, "
                         f"sum {h.total!r}, min {h.min!r}, max {h.max!r}")


def _check_gate(g: GateAggregate) -> None:
    served = g.requests - g.errors
    if not (0 <= g.errors <= g.requests <= _MAX_COUNT):
        raise ValueError(f"a saved gate figure has {g.requests!r} requests and {g.errors!r} errors")
    if g.latency_ms.count != served or g.scores.count > served or sum(g.class_counts.values()) > served:
        raise ValueError(f"a saved gate figure does not add up: {served} successful requests, "
                         f"{g.latency_ms.count} latencies, {g.scores.count} scores, "
                         f"{sum(g.class_counts.values())} classes")
    if int(g.groups.requests.sum()) != g.requests or int(g.groups.errors.sum()) != g.errors:
        raise ValueError("a saved gate figure's groups do not add up to its requests and errors")


_CHECKS = {LogHistogram: _check_histogram, GateAggregate: _check_gate}


def _check_fields(cls: type, state: dict) -> None:
    """A dataclass's saved fields: all of its own and no others, each of its default's type."""
    fields = cls.__dataclass_fields__
    if set(state) != set(fields):
        raise ValueError(f"a saved {cls.__name__} holds fields {sorted(state)}; expected {sorted(fields)}")
    for name, value in state.items():
        field = fields[name]
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        expected = type(default)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ValueError(f"a saved {cls.__name__}.{name} is a {type(value).__name__}, "
                             f"not a {expected.__name__}")


def _array(spec: Any) -> np.ndarray:
    try:
        return _read_array(spec)
    except Exception as err:  # noqa: BLE001 - base64, zlib and numpy each raise their own
        raise ValueError(f"a saved array could not be read: {err}") from err


def _read_array(spec: Any) -> np.ndarray:
    dtype, shape, text, *compression = spec
    if dtype not in _DTYPES:
        raise ValueError(f"a saved array has dtype {dtype!r}; valid: {sorted(_DTYPES)}")
    raw = base64.b64decode(text, validate=True)
    if compression == ["zlib"]:
        inflate = zlib.decompressobj()
        raw = inflate.decompress(raw, _MAX_ARRAY_BYTES)
        if inflate.unconsumed_tail:
            raise ValueError(f"a saved array inflates past {_MAX_ARRAY_BYTES} bytes")
    elif compression:
        raise ValueError(f"a saved array is compressed with {compression!r}; only zlib is written")
    array = np.frombuffer(raw, dtype=np.dtype(dtype)).reshape([int(n) for n in shape]).copy()
    # Every integer array of the gate figures (counts, bucket and group indices) is at least
    # 0, and dump writes them unsigned: a negative one is damage, which numpy's indexing
    # would take for a count from the end.
    if array.dtype.kind == "i" and array.size and array.min() < 0:
        raise ValueError("a saved array of counts or indices holds a negative number")
    return array


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
