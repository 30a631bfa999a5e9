"""Copies of live requests to mirrored versions (shadow, a validating blue-green green).

A copy never holds up a live request. A version in another deployment (isolated placement)
answers on its own replicas. A version in the router's own process (colocated) runs its
copies on one thread of their own: run inline on the router's event loop, as live requests
are, a shadow taking 200 ms a call held every live request behind it (p50 11 ms -> 215 ms
at one client, live). The model then answers a live request on the loop and a copy on that
thread at the same time when it both answers requests and gets copies (a shadow with a
weight, or QA's requests pinned to it; a validating green's pins): the backends' models
(onnxruntime, torch) allow that; a ``python`` class must too.

Copies that cannot be sent are counted, never silently dropped: past a version's cap of copies
not yet answered (MAX_IN_FLIGHT waiting for the copy thread; for a version of its own
deployment, what its replicas take at once, at least MAX_IN_FLIGHT), a copy is ``dropped``:
ShadowStats.dropped, in the report and /metrics for the shadow version; a warning in the log
for any (a validating green's drops are in the log only).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from serve_ab.backends.base import OutputSpec, OutputSpecs
from serve_ab.config.experiment import ExperimentConfig, Placement, VersionDeploymentOptions
from serve_ab.serving.core.messages import Mirror
from serve_ab.serving.core.observe import ObservationBuffer
from serve_ab.serving.core.versions import Version, answer, detached_task, error_kind

logger = logging.getLogger("ray.serve")
# Copies to one version not yet answered, at most (an isolated version: at least): past them
# it answers slower than live requests come, and a longer queue only makes copies wait. At
# 1,000 for any version (before), an isolated shadow answering one call at a time held 1,000
# copies queued in the router, 825 of which waited out isolation.call_timeout_s and counted
# as its errors, and its latency read 34 s of queue.
MAX_IN_FLIGHT = 32
# A warning that copies were dropped at most this often, with the count since the last.
DROP_LOG_EVERY_S = 60.0
_monotonic = time.monotonic  # the warnings' clock (tests replace it)


def copy_caps(cfg: ExperimentConfig) -> dict[str, int]:
    """Copies not yet answered each version of its own deployment (isolated placement) may
    have: what its replicas take at once, at most (``max_replicas`` when autoscaling) times
    ``max_ongoing_requests``. Past that they only queue in the router."""
    if cfg.placement is not Placement.ISOLATED:
        return {}
    caps = {}
    for version in cfg.versions:
        options = version.deployment or VersionDeploymentOptions()
        replicas = options.autoscaling_config.max_replicas if options.autoscaling_config is not None \
            else options.num_replicas or 1
        caps[version.name] = replicas * options.max_ongoing_requests
    return caps


class _OnCopyThread:
    """One copy to a version of this process, run by ``predict_blocking`` on the copy thread:
    an awaitable ``predict`` for :func:`answer`, which checks and names its failures as for a
    live request. ``begun_s``: when the thread began it (the time waiting behind other copies
    is not the version's latency)."""

    def __init__(self, predict_blocking: Callable[[np.ndarray], np.ndarray], pool: ThreadPoolExecutor,
                 clock: Callable[[], float]):
        self._predict = predict_blocking
        self._pool = pool
        self._clock = clock
        self.begun_s: float | None = None

    def _run(self, batch: np.ndarray) -> np.ndarray:
        self.begun_s = self._clock()
        return self._predict(batch)

    async def predict(self, batch: np.ndarray) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, batch)


class MirrorSender:
    """Sends a copy in the background: the client does not wait for it, never sees its
    answer, and never sees its failure. Both answers are recorded as a pair."""

    def __init__(self, observations: ObservationBuffer, clock: Callable[[], float],
                 rng: random.Random | None = None,
                 output_spec: Callable[[], OutputSpec | OutputSpecs | None] = lambda: None,
                 in_flight_cap: Callable[[str], int | None] = lambda version: None):
        self.observations = observations
        self.clock = clock
        # The experiment's declared outputs, once known: a copy's answer is checked against
        # them as a live one is, so a malformed answer counts as the copy's error, not a pair.
        self.output_spec = output_spec
        self.rng = rng or random.Random()
        # Copies to a version of its own deployment not yet answered, at most: what its
        # replicas take at once (RouterCore), never under MAX_IN_FLIGHT; None: MAX_IN_FLIGHT.
        self.in_flight_cap = in_flight_cap
        self.mirrors: Sequence[Mirror] = ()
        self._tasks: set[asyncio.Task] = set()  # held so the loop does not drop them
        self._pool: ThreadPoolExecutor | None = None  # the copy thread, made at the first in-process copy
        self._in_flight: collections.Counter[str] = collections.Counter()  # copies not yet answered, by version
        self.dropped = 0  # copies not sent, since the start
        self._dropped_logged = 0
        self._dropped_logged_at_s = -DROP_LOG_EVERY_S

    def send(self, versions: Mapping[str, Version], live_version: str, batch: np.ndarray,
             live_outputs: np.ndarray, request_id: str, unit: int | None = None) -> None:
        """Copies of one request of ``unit`` (None: keyless) to the mirrored versions; the
        copies count under the same user, whose requests go together on any version."""
        for mirror in self.mirrors:
            version = versions.get(mirror.version)
            if mirror.version == live_version or version is None \
                    or self.rng.random() * 100.0 >= mirror.percent:
                continue
            copy_thread = getattr(version, "predict_blocking", None) is not None
            cap = MAX_IN_FLIGHT if copy_thread else max(self.in_flight_cap(mirror.version) or 0, MAX_IN_FLIGHT)
            if self._in_flight[mirror.version] >= cap:
                self._drop(mirror.version)
                continue
            self._in_flight[mirror.version] += 1
            # Detached: a copy is not cancelled with the live request (a client gone at once).
            task = detached_task(self._mirrored(mirror.version, version, live_version, batch, live_outputs,
                                                request_id, unit, copy_thread))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            # Answered, failed or cancelled (even before it began): its place is free.
            task.add_done_callback(functools.partial(self._answered, mirror.version))

    def _answered(self, version: str, _task: asyncio.Task) -> None:
        self._in_flight[version] -= 1

    async def _mirrored(self, name: str, version: Version, live_version: str, batch: np.ndarray,
                        live_outputs: np.ndarray, request_id: str, unit: int | None, copy_thread: bool) -> None:
        started_s = self.clock()
        if copy_thread:
            version = on_thread = _OnCopyThread(version.predict_blocking, self._copy_pool(), self.clock)
        try:
            try:
                outputs = await answer(name, version, batch, self.output_spec())
            finally:
                if copy_thread and on_thread.begun_s is not None:
                    started_s = on_thread.begun_s
        except Exception as err:
            kind = error_kind(err)
            logger.info("serve-ab router: request %s: mirrored copy to version %s failed (%s: %s)",
                        request_id, name, kind, type(err).__name__)
            self.observations.served(name, started_s, kind, None, request_id=None, unit=unit, mirrored=True)
            self.observations.pair(live_version, name, live_outputs, None, started_s, kind, unit)
            return
        self.observations.served(name, started_s, None, outputs, request_id=None, unit=unit, mirrored=True)
        self.observations.pair(live_version, name, live_outputs, outputs, started_s, None, unit)

    def _copy_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            # One thread: copies run one after another, as the router's replica runs its live
            # requests; more would take CPU the live path needs.
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serve-ab-copies")
        return self._pool

    def _drop(self, version: str) -> None:
        """A copy not sent: counted for the report and /metrics, and said in the log."""
        self.dropped += 1
        self.observations.dropped(version)
        self.warn_dropped()

    def warn_dropped(self) -> None:
        """Warn of the copies dropped since the last warning, at most once a DROP_LOG_EVERY_S;
        called at each drop, and by the router's flush so that a burst's tail is said too."""
        new = self.dropped - self._dropped_logged
        now_s = _monotonic()
        if new == 0 or now_s - self._dropped_logged_at_s < DROP_LOG_EVERY_S:
            return
        logger.warning(
            "serve-ab router: %d cop%s to a mirrored version dropped (since the start: %d; not yet answered "
            "now: %s): it answers slower than live requests come, and only so many copies wait for a "
            "version (%d for one in this process; for one of its own deployment, what its replicas take "
            "at once). The report's shadow line and serve_ab_shadow_dropped_total count a shadow's.",
            new, "y" if new == 1 else "ies", self.dropped,
            ", ".join(f"{v} {n}" for v, n in sorted(self._in_flight.items()) if n) or "none", MAX_IN_FLIGHT)
        self._dropped_logged, self._dropped_logged_at_s = self.dropped, now_s

    async def drain(self) -> None:
        """Wait for the copies in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def close(self) -> None:
        """Let the copy thread go (a stopping replica): a copy a hung model holds must not keep
        the process from exiting."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
