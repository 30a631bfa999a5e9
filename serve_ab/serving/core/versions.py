"""What the router calls a version: anything with ``predict`` and ``describe``.

Colocated, it is a model loaded in the router's own replica
(:class:`serve_ab.serving.runtime.LoadedVersion`); isolated, a
:class:`serve_ab.serving.core.watchdog.WatchedVersion` over another deployment's replicas.
A version that could not be loaded is a :class:`FailedVersion`: it holds why, and the
others are served without it (:func:`load_each`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Protocol, TypeVar

import numpy as np

from serve_ab.backends.base import (
    Batch,
    InputError,
    InputSpec,
    OutputSpec,
    OutputSpecs,
    all_finite,
    batch_size,
    specs_of,
)
from serve_ab.errors import BadOutput, ModelFailed, ServeAbError, VersionTimedOut, VersionUnavailable

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
    its call waited past ``isolation.call_timeout_s``, the model refused the input, the call was
    cancelled, the model answered an output that is not finite or not of its declared shape,
    or the model itself raised."""
    if isinstance(err, InputError):
        return "input"
    if isinstance(err, asyncio.CancelledError):
        return "cancelled"
    if isinstance(err, ModelFailed):
        return "model"
    if isinstance(err, BadOutput):
        return "output"
    if isinstance(err, VersionTimedOut):
        return "timeout"
    if isinstance(err, VersionUnavailable):
        return "unavailable"
    return "model"


async def answer(name: str, version: Version, batch: Batch, spec: OutputSpec | OutputSpecs | None = None) -> Batch:
    """``version``'s outputs for ``batch``, checked against ``spec`` (the experiment's
    outputs, where known): NaN or infinity, another number of rows than the batch, or
    another size of a dimension the spec declares fixed (at the same rank) is no answer
    (:class:`BadOutput`, a 502, served by the fallback when assigned), never a 200 that
    hands a client a shape it was not promised or another request's rows. A model that
    raised is :class:`ModelFailed` (a 502 naming it; not retried elsewhere)."""
    try:
        # A model in this process without a batcher answers inline (LoadedVersion): no
        # coroutine of its own per request.
        inline = getattr(version, "predict_inline", None)
        outputs = inline(batch) if inline is not None else await version.predict(batch)
    except BadOutput as err:  # a batch whose rows the model miscounted (predict_together)
        raise BadOutput(f"version {name!r}: {err.message}") from err
    except ServeAbError:
        raise  # the input refused (400), the version down (503): already said
    except Exception as err:
        # Isolated, Ray wraps the model's exception; its cause is the model's own.
        raise ModelFailed(f"version {name!r} failed to answer: {load_error_text(getattr(err, 'cause', None) or err)}") from err
    check_outputs(name, outputs, batch_size(batch), spec)
    return outputs


def check_outputs(name: str, outputs: Any, rows: int, spec: OutputSpec | OutputSpecs | None) -> None:
    """Raise :class:`BadOutput` unless ``outputs`` are finite arrays, one row per input row,
    shaped as ``spec`` declares (its free dimensions, -1, take any size)."""
    if type(outputs) is np.ndarray and not isinstance(spec, OutputSpecs):
        # One output, the common case, checked straight away: the list of (array, spec) pairs
        # and a generator for the shape cost 5 us more a cold request (benchmarks/README.md,
        # nineteenth round).
        _check_output(name, outputs, rows, spec)
        return
    specs = None if spec is None else specs_of(spec)
    if isinstance(outputs, dict):  # a multi-output model answers {name: array}
        if specs is not None and not isinstance(spec, OutputSpecs):
            raise BadOutput(f"version {name!r} answered {{name: array}} for outputs "
                            f"{sorted(map(str, outputs))}, but this model has one output, "
                            f"{spec.name!r}: it answers the array itself")
        if specs is not None and set(outputs) != set(spec.names):
            raise BadOutput(f"version {name!r} answered outputs {sorted(map(str, outputs))}, but the "
                            f"experiment declares {[s.name for s in specs]}")
        declared_by_name = {s.name: s for s in specs or ()}
        for key, array in outputs.items():
            _check_output(name, array, rows, declared_by_name.get(key))
        return
    if isinstance(spec, OutputSpecs):
        raise BadOutput(f"version {name!r} answered one array, but the experiment declares "
                        f"outputs {list(spec.names)}")
    _check_output(name, outputs, rows, spec)


def _check_output(name: str, array: Any, rows: int, declared: OutputSpec | None) -> None:
    if not isinstance(array, np.ndarray) or array.ndim == 0:
        raise BadOutput(f"version {name!r} answered {type(array).__name__}, not an array of "
                        f"one row per input row")
    shape = array.shape
    if shape[0] != rows:
        raise BadOutput(f"version {name!r} answered {shape[0]} rows for {rows} input rows")
    if declared is not None and declared.declared and len(declared.shape) == len(shape):
        for want, got in zip(declared.shape[1:], shape[1:]):
            if want >= 0 and got != want:
                raise BadOutput(f"version {name!r} answered shape {list(shape)}, but declares "
                                f"{list(declared.shape)}")
    if array.dtype.kind == "f" and not all_finite(array):
        raise BadOutput(f"version {name!r} answered with NaN or infinity in its outputs")


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


def detached_task(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """``coro`` as a task of its own, outside the request that starts it (a fresh context,
    without Ray Serve's request context). Ray Serve cancels a request's calls to other
    deployments when the request is cancelled, and over its gRPC transport every such call
    (``gRPCReplicaResult`` registers under the parent request's id), so a watchdog probe, a
    shared describe check or a mirrored copy started while serving one client would end when
    that client went away, failing every request that waits on it."""
    return asyncio.get_running_loop().create_task(coro, context=contextvars.Context())


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
