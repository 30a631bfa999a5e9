"""A version served by its own deployment (isolated placement), watched.

When a version's replicas die, Ray Serve does not fail the calls: it queues them (and
re-queues those the dead replica had not accepted) until a new replica has started, which
takes its health check period plus a model load, longer than clients wait. So a watchdog
runs beside the calls: when they stop completing and no replica answers a probe, the
version is down, its waiting calls are cancelled and new ones fail at once with
:class:`~serve_ab.errors.VersionUnavailable`, for the router to serve elsewhere, until a
probe is answered again. One call that waits past ``call_timeout_s`` (isolation.call_timeout_s)
is cancelled the same way, even on a version never seen answering (one still starting).

No Ray here: the calls come from a :class:`RemoteCalls` (the Ray layer wraps a
DeploymentHandle; tests use fakes that fail, stall and recover), and time from an injected
clock and sleep, so the down -> probe -> recovered cycle is tested without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from serve_ab.backends.base import InputSpec, OutputSpec
from serve_ab.config.experiment import ExperimentConfig, VersionConfig
from serve_ab.errors import VersionTimedOut, VersionUnavailable
from serve_ab.serving.core.versions import detached_task

logger = logging.getLogger("ray.serve")


class Call(Protocol):
    """A call in flight: awaitable, and cancellable (a DeploymentResponse is one)."""

    def __await__(self) -> Generator[Any, None, Any]: ...

    def cancel(self) -> None: ...


class RemoteCalls(Protocol):
    """How to reach one isolated version's replicas."""

    name: str  # where the calls go, for messages (e.g. the deployment's name)

    def predict(self, batch: np.ndarray) -> Call: ...

    def describe(self) -> Call: ...


@dataclass(frozen=True)
class WatchdogSettings:
    """A version whose calls complete none for ``stall_s`` while no replica answers a probe
    within ``probe_timeout_s`` is down. Healthy replicas answer a probe in milliseconds; a
    model that blocks its replica for seconds per call needs these raised."""

    interval_s: float = 0.25
    stall_s: float = 1.0
    probe_timeout_s: float = 2.0
    idle_exit_s: float = 30.0  # the watchdog of an idle (or retired) version stops
    call_timeout_s: float = 60.0  # one call waiting longer is cancelled and served elsewhere
    # Its deployment may scale to zero replicas (autoscaling's min_replicas: 0): Ray Serve can
    # take its last replica away whenever no call is in flight, so an answer seen before then
    # says nothing of the calls after it, which wait for a replica to start.
    scales_to_zero: bool = False

    @classmethod
    def of(cls, cfg: ExperimentConfig, version: VersionConfig) -> WatchdogSettings:
        """The settings for ``version`` of ``cfg`` (isolated placement)."""
        scaling = version.deployment.autoscaling_config if version.deployment is not None else None
        return cls(call_timeout_s=cfg.isolation.call_timeout_s,
                   scales_to_zero=scaling is not None and scaling.min_replicas == 0)


class WatchedVersion:
    """An isolated version as the router calls it: ``predict`` and ``describe``."""

    def __init__(self, version: str, calls: RemoteCalls,
                 is_unavailable: Callable[[BaseException], bool],
                 settings: WatchdogSettings = WatchdogSettings(),
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.name = version
        self.calls = calls
        self.is_unavailable = is_unavailable  # the replica failed, not the request
        self.settings = settings
        self.sleep = sleep
        self.clock = clock
        # Calls in flight -> when each began, by ``clock``: counted in the watchdog's ticks, a
        # call begun just before one was charged the whole tick, and cut up to one early.
        self._pending: dict[Call, float] = {}
        # Cancelled by the watchdog, not by their callers: the error each call's caller gets.
        self._cancelled: dict[Call, VersionUnavailable] = {}
        self._progress = False  # a call completed since the watchdog last looked
        self.down_reason: str | None = None
        self._watchdog: asyncio.Task | None = None
        # Whether the router has another version to serve this one's requests (RouterCore sets
        # it). Without one, a mark-down only turns calls that would wait for a replica into 503s
        # at once: live (2026-12-07), the stable v1 of a canary at 100 %, which Ray Serve had
        # scaled to zero while calls flowed, answered 585 of 1,570 requests 503 while its new
        # replica started, where plain Ray Serve's callers would have waited and been served.
        self.has_fallback: Callable[[], bool] = _always

    async def predict(self, batch: np.ndarray) -> np.ndarray:
        if self.down_reason is not None:
            raise VersionUnavailable(self.down_reason)
        if self._watchdog is None:
            self._watchdog = detached_task(self._watch())  # its probes outlive this request
        call = self.calls.predict(batch)
        self._pending[call] = self.clock()
        ended = False  # the call ended by itself: an answer, or an error from the version's side
        try:
            outputs = await call
            ended = True
            return outputs
        except asyncio.CancelledError:
            # Its caller went away (the client disconnected or timed out): no word from the
            # version. Counted as one, a version scaling up from zero replicas whose first
            # callers gave up was "seen answering" and marked down while its replica started
            # (live, 2 busy cores: 14 s of 503s from the only version, 298 requests, while its
            # replica started; it then served).
            raise
        except Exception as err:
            if call in self._cancelled:  # even if a probe was answered since: the call was cut
                raise self._cancelled[call] from None
            # Ray Serve ends a call whose caller was cancelled with an error of its own.
            ended = not _caller_cancelled()
            if self.is_unavailable(err):
                raise VersionUnavailable(
                    f"version {self.name!r} ({self.calls.name}) could not serve the request: "
                    f"{type(err).__name__}") from err
            raise
        finally:
            self._pending.pop(call, None)
            # A call the watchdog cut is no sign of life: counted as one, a version whose calls
            # all timed out while it probed was never marked down.
            if self._cancelled.pop(call, None) is None and ended:
                self._progress = True

    async def describe(self) -> tuple[InputSpec, OutputSpec]:
        return await self.calls.describe()

    async def _watch(self) -> None:
        # Only a version seen answering can be declared down: one that has not answered since
        # it was idle may be starting from zero replicas (autoscaling), which is worth the wait.
        s = self.settings
        answered = False
        stalled_s = idle_s = 0.0
        try:
            while idle_s < s.idle_exit_s:
                self._progress = False
                await self.sleep(s.interval_s)
                self._cancel_overdue()
                if self.down_reason is not None:
                    if await self._answers_probe():
                        logger.info("serve-ab router: version %s answers again", self.name)
                        self.down_reason = None
                    elif not self.has_fallback():  # e.g. promoted to 100 % while down: calls wait
                        logger.info("serve-ab router: version %s is no longer held down: no other version "
                                    "can serve its requests, so they wait for its replicas", self.name)
                        self.down_reason = None
                    continue
                answered = answered or self._progress
                if s.scales_to_zero and not self._pending and not self._progress:
                    # Live (2026-12-07, a quiet machine): v1 answered one call, Ray scaled it to
                    # zero 0.6 s later, and the load that followed waited for its new replica:
                    # taken as seen answering, it was marked down after 3 s and, the only
                    # version with traffic, answered 598 of 1,354 requests 503.
                    answered = False
                stalled = bool(self._pending) and not self._progress
                stalled_s = stalled_s + s.interval_s if stalled else 0.0
                idle_s = 0.0 if self._pending or self._progress else idle_s + s.interval_s
                # Asked again after the probe: the fallback may have been held down meanwhile.
                if answered and stalled_s >= s.stall_s and self.has_fallback() \
                        and not await self._answers_probe() and not self._progress and self.has_fallback():
                    self._mark_down(stalled_s)
                    stalled_s = 0.0
        except Exception:  # a watchdog bug must not keep the version down: back to waiting
            logger.exception("serve-ab router: watchdog of version %s failed", self.name)
            self.down_reason = None
        finally:
            self._watchdog = None

    async def _answers_probe(self) -> bool:
        """Whether a replica answers ``describe`` within the probe timeout (on the injected clock)."""
        s = self.settings
        probe = self.calls.describe()
        answer = asyncio.ensure_future(_awaited(probe))
        waited_s = 0.0
        # In ticks, each one cutting the calls past call_timeout_s: a probe waited on whole held
        # them for up to probe_timeout_s more (a live check: 4.2 s against a 1-s limit).
        while waited_s < s.probe_timeout_s and not answer.done():
            step_s = min(s.interval_s, s.probe_timeout_s - waited_s)
            timer = asyncio.ensure_future(self.sleep(step_s))
            try:
                await asyncio.wait({answer, timer}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                timer.cancel()
            if not answer.done():
                waited_s += step_s
                self._cancel_overdue()
        if answer.done() and not answer.cancelled() and answer.exception() is None:
            return True
        # Timed out waiting for a replica, the replica died, or there is no deployment.
        answer.cancel()
        probe.cancel()
        # Read whatever the probe ends with, now or after the cancel lands: a cancelled Ray
        # Serve call ends with RequestCancelledError, not as a cancelled task, and asyncio logs
        # an unread one as "never retrieved", with its traceback, once per probe given up on.
        answer.add_done_callback(_read_outcome)
        return False

    def _cancel_overdue(self) -> None:
        s = self.settings
        now_s = self.clock()
        for call, began_s in list(self._pending.items()):
            if now_s - began_s >= s.call_timeout_s and call not in self._cancelled:
                self._cancelled[call] = timed_out = VersionTimedOut(
                    f"version {self.name!r} ({self.calls.name}) did not answer within "
                    f"{s.call_timeout_s:g}s (isolation.call_timeout_s); its call was cancelled")
                logger.warning("serve-ab router: %s", timed_out.message)
                call.cancel()

    def _mark_down(self, stalled_s: float) -> None:
        self.down_reason = (
            f"version {self.name!r} ({self.calls.name}) is unavailable: no call completed for "
            f"{stalled_s:.1f}s and no replica answered a probe within {self.settings.probe_timeout_s:g}s; "
            "its requests are served elsewhere until one answers"
        )
        logger.warning("serve-ab router: %s (%d waiting calls cancelled)", self.down_reason,
                       len(self._pending))
        for call in list(self._pending):
            # A call already cut past call_timeout_s stays a timeout (its cancel may not have
            # landed yet).
            self._cancelled.setdefault(call, VersionUnavailable(self.down_reason))
            call.cancel()


def _always() -> bool:
    return True


def _caller_cancelled() -> bool:
    """Whether the task running this code is being cancelled (its caller went away)."""
    # Task.cancelling() is Python 3.11's; 3.10 (requires-python) has none, and calling it
    # turned every failed call, a dead replica's included, into an AttributeError: a 502
    # never failed over. Without it no task says so (asyncio.run reads uncancel() the same
    # way). Ray Serve ends the calls of a cancelled request with CancelledError (it cancels
    # their replica results, not the DeploymentResponse), which predict() reads first.
    cancelling = getattr(asyncio.current_task(), "cancelling", None)
    return cancelling is not None and cancelling() > 0


async def _awaited(call: Call) -> Any:
    return await call


def _read_outcome(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()
