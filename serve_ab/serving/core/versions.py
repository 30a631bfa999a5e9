"""What the router calls a version: anything with ``predict`` and ``describe``.

Colocated, it is a model loaded in the router's own replica
(:class:`serve_ab.serving.runtime.LoadedVersion`); isolated, a
:class:`serve_ab.serving.core.watchdog.WatchedVersion` over another deployment's replicas.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from serve_ab.backends.base import InputError, InputSpec, OutputSpec
from serve_ab.errors import BadOutput, VersionUnavailable


class Version(Protocol):
    async def predict(self, batch: np.ndarray) -> np.ndarray: ...

    async def describe(self) -> tuple[InputSpec, OutputSpec]: ...


def error_kind(err: BaseException) -> str:
    """How a call failed, for the error counters: the version's replicas were unavailable,
    the model refused the input, the call was cancelled, or the model itself raised."""
    if isinstance(err, InputError):
        return "input"
    if isinstance(err, asyncio.CancelledError):
        return "cancelled"
    if isinstance(err, BadOutput):
        return "output"
    if isinstance(err, VersionUnavailable):
        return "unavailable"
    return "model"


async def answer(name: str, version: Version, batch: np.ndarray) -> np.ndarray:
    """``version``'s outputs for ``batch``, checked: NaN or infinity is no answer."""
    outputs = await version.predict(batch)
    if outputs.dtype.kind == "f" and not np.isfinite(outputs).all():
        raise BadOutput(f"version {name!r} answered with NaN or infinity in its outputs")
    return outputs


def same_interface(specs: Mapping[str, tuple[InputSpec, OutputSpec]]) -> tuple[InputSpec, OutputSpec]:
    """Versions compared in one experiment must take and return the same tensors."""
    (first_name, first), *rest = specs.items()
    for name, spec in rest:
        if spec != first:
            raise ValueError(
                f"version {name!r} takes {spec[0]} and returns {spec[1]}, but version "
                f"{first_name!r} takes {first[0]} and returns {first[1]}; the versions of one "
                "experiment must share their input and output"
            )
    return first
