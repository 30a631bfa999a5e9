"""Copies of live requests to mirrored versions (shadow, a validating blue-green green)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from serve_ab.backends.base import OutputSpec, OutputSpecs
from serve_ab.serving.core.messages import Mirror
from serve_ab.serving.core.observe import ObservationBuffer
from serve_ab.serving.core.versions import Version, answer, detached_task, error_kind

logger = logging.getLogger("ray.serve")
# Copies in flight at most: a slow mirrored version must not pile tasks up in the router.
MAX_IN_FLIGHT = 1000


class MirrorSender:
    """Sends a copy in the background: the client does not wait for it, never sees its
    answer, and never sees its failure. Both answers are recorded as a pair."""

    def __init__(self, observations: ObservationBuffer, clock: Callable[[], float],
                 rng: random.Random | None = None,
                 output_spec: Callable[[], OutputSpec | OutputSpecs | None] = lambda: None):
        self.observations = observations
        self.clock = clock
        # The experiment's declared outputs, once known: a copy's answer is checked against
        # them as a live one is, so a malformed answer counts as the copy's error, not a pair.
        self.output_spec = output_spec
        self.rng = rng or random.Random()
        self.mirrors: Sequence[Mirror] = ()
        self._tasks: set[asyncio.Task] = set()  # held so the loop does not drop them
        self.skipped = 0  # copies not sent because MAX_IN_FLIGHT were still out

    def send(self, versions: Mapping[str, Version], live_version: str, batch: np.ndarray,
             live_outputs: np.ndarray, request_id: str, unit: int | None = None) -> None:
        """Copies of one request of ``unit`` (None: keyless) to the mirrored versions; the
        copies count under the same user, whose requests go together on any version."""
        for mirror in self.mirrors:
            version = versions.get(mirror.version)
            if mirror.version == live_version or version is None \
                    or self.rng.random() * 100.0 >= mirror.percent:
                continue
            if len(self._tasks) >= MAX_IN_FLIGHT:
                self.skipped += 1
                continue
            # Detached: a copy is not cancelled with the live request (a client gone at once).
            task = detached_task(
                self._mirrored(mirror.version, version, live_version, batch, live_outputs, request_id, unit))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _mirrored(self, name: str, version: Version, live_version: str, batch: np.ndarray,
                        live_outputs: np.ndarray, request_id: str, unit: int | None) -> None:
        started_s = self.clock()
        try:
            outputs = await answer(name, version, batch, self.output_spec())
        except Exception as err:
            kind = error_kind(err)
            logger.info("serve-ab router: request %s: mirrored copy to version %s failed (%s: %s)",
                        request_id, name, kind, type(err).__name__)
            self.observations.served(name, started_s, kind, None, request_id=None, unit=unit, mirrored=True)
            self.observations.pair(live_version, name, live_outputs, None, started_s, kind, unit)
            return
        self.observations.served(name, started_s, None, outputs, request_id=None, unit=unit, mirrored=True)
        self.observations.pair(live_version, name, live_outputs, outputs, started_s, None, unit)

    async def drain(self) -> None:
        """Wait for the copies in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
