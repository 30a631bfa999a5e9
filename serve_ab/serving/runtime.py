"""One model version loaded in this process, with its own dynamic batcher.

Used by the router's replicas in colocated placement (one per version, side by side) and
by a version's own replicas in isolated placement. :func:`load_versions` loads each on its
own: a version that fails to load is held as a failed version and the others serve.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

from serve_ab.backends import Batcher, load_predictor, predict_together
from serve_ab.backends.base import Batch, InputSpec, OutputSpec
from serve_ab.config.experiment import VersionConfig
from serve_ab.serving.batch_metrics import batch_size_recorder
from serve_ab.serving.core.versions import Version, load_each

logger = logging.getLogger("ray.serve")


class LoadedVersion:
    """A version's predictor, loaded and warmed, behind an awaitable ``predict``."""

    def __init__(self, version: VersionConfig):
        self.name = version.name
        self.predictor = load_predictor(
            None if version.path is None else Path(version.path), version.backend.value,
            **version.predictor_options(),
        )
        self.predictor.load()
        self.predictor.warm_up()
        self._batcher = None
        # Without a batcher, the predictor itself, for callers that need not await (answer()):
        # small models answer in microseconds, and inline beats a thread hop or a coroutine.
        self.predict_inline: Callable[[Batch], Batch] | None = self.predictor.predict
        if version.batching is not None:
            self.predict_inline = None
            # Ray-free, so that benchmarks/gpu_check.py --no-ray times this same batcher.
            self._batcher = Batcher(
                partial(predict_together, self.predictor),
                max_batch_size=version.batching.max_batch_size,
                batch_wait_timeout_s=version.batching.batch_wait_timeout_s,
                on_batch=batch_size_recorder(self.name),
            )
        logger.info(
            "serve-ab loaded version %s (%s on %s) from %s",
            self.name, self.predictor.backend, self.predictor.device, version.path or version.class_,
        )

    @property
    def input_spec(self) -> InputSpec:
        return self.predictor.input_spec

    @property
    def output_spec(self) -> OutputSpec:
        return self.predictor.output_spec

    async def describe(self) -> tuple[InputSpec, OutputSpec]:
        return self.input_spec, self.output_spec

    def predict_blocking(self, batch: Batch) -> Batch:
        """The model's answer without its batcher, for a caller off the event loop: a
        mirrored copy on the copy thread (serving/core/mirror.py)."""
        return self.predictor.predict(batch)

    async def predict(self, batch: Batch) -> Batch:
        if self._batcher is not None:
            return await self._batcher.predict(batch)
        return self.predictor.predict(batch)


def load_versions(versions: Iterable[VersionConfig]) -> dict[str, Version]:
    """Each version loaded and warmed, or a :class:`~serve_ab.serving.core.versions.FailedVersion`
    holding why it could not be (a corrupt file, no GPU): one bad file never stops a replica."""
    return load_each(versions, LoadedVersion)
