"""What the router calls a version: anything with ``predict`` and ``describe``.

Colocated, it is a model loaded in the router's own replica
(:class:`serve_ab.serving.runtime.LoadedVersion`); isolated, a
:class:`serve_ab.serving.core.watchdog.WatchedVersion` over another deployment's replicas.
A version that could not be loaded is a :class:`FailedVersion`: it holds why, and the
others are served without it (:func:`load_each`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol, TypeVar

import numpy as np

from serve_ab.backends.base import InputError, InputSpec, OutputSpec
from serve_ab.errors import BadOutput, VersionUnavailable

logger = logging.getLogger("ray.serve")
T = TypeVar("T")
C = TypeVar("C")
MAX_ERROR_CHARS = 300  # a load error is a line in a status, not a traceback
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^\s'\"/\\:]+){2,}")


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
    # A multi-output model answers {name: array}.
    for array in (outputs.values() if isinstance(outputs, dict) else (outputs,)):
        if array.dtype.kind == "f" and not np.isfinite(array).all():
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


def load_error_text(err: BaseException) -> str:
    """A load failure as clients may read it: the exception's type and first line, with the
    server's directories cut from any path (``/srv/models/v2/model.onnx`` -> ``model.onnx``)."""
    first_line = (str(err).strip().splitlines() or [""])[0]
    text = _PATH.sub(lambda m: re.split(r"[/\\]", m.group(0))[-1], first_line)
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


class VersionLoadFailed(VersionUnavailable):
    """A version whose model could not be loaded; the message says why, without paths. An
    isolated version's deployment answers with it, so the router learns why across Ray."""


class FailedVersion:
    """A version that could not be loaded: every call says why (503, or served elsewhere)."""

    def __init__(self, name: str, load_error: str):
        self.name = name
        self.load_error = load_error  # e.g. "ValueError: cannot load model.onnx with the onnx backend: ..."
        self.reason = f"failed to load: {load_error}"

    async def predict(self, batch: np.ndarray) -> np.ndarray:
        raise VersionLoadFailed(self.reason)

    async def describe(self) -> tuple[InputSpec, OutputSpec]:
        raise VersionLoadFailed(self.reason)


def load_each(configs: Iterable[C], load: Callable[[C], Version],
              name_of: Callable[[C], str] = lambda c: c.name) -> dict[str, Version]:
    """Every version loaded on its own: one that fails (a corrupt file, no GPU) becomes a
    :class:`FailedVersion` holding its error, and the replica starts with the others."""
    loaded: dict[str, Version] = {}
    for config in configs:
        name = name_of(config)
        try:
            loaded[name] = load(config)
        except Exception as err:
            # The whole story in the server's log; a short, path-free line for clients.
            logger.exception("serve-ab: version %s failed to load; serving the other versions", name)
            loaded[name] = FailedVersion(name, load_error_text(err))
    return loaded


async def within(call: Awaitable[T], timeout_s: float, sleep: Callable[[float], Awaitable[None]]) -> T:
    """``call``'s result, or :class:`TimeoutError` after ``timeout_s`` of the injected ``sleep``
    (asyncio.wait_for reads the loop's own clock, which a fake clock does not move)."""
    answer = asyncio.ensure_future(call)
    await asyncio.sleep(0)  # an answer at hand (a colocated version's) needs no timer
    if answer.done():
        return answer.result()
    timer = asyncio.ensure_future(sleep(timeout_s))
    try:
        await asyncio.wait({answer, timer}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the caller was cancelled: so is the call
        answer.cancel()
        raise
    finally:
        timer.cancel()
    if not answer.done():
        answer.cancel()
        raise TimeoutError(f"no answer within {timeout_s:g}s")
    return answer.result()
