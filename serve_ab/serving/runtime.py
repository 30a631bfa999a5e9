"""One model version loaded in this process, with its own dynamic batcher.

Used by the router's replicas in colocated placement (one per version, side by side) and
by a version's own replicas in isolated placement. :func:`load_versions` loads each on its
own: a version that fails to load is held as a failed version and the others serve.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from ray import serve

from serve_ab.backends import load_predictor
from serve_ab.backends.base import Batch, InputSpec, OutputSpec, batch_size, concat_batches, split_outputs
from serve_ab.config.experiment import VersionConfig
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
        self._batched = None
        if version.batching is not None:
            # serve.batch queues concurrent calls and hands them to _run_batch together.
            self._batched = serve.batch(
                max_batch_size=version.batching.max_batch_size,
                batch_wait_timeout_s=version.batching.batch_wait_timeout_s,
            )(self._run_batch)
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

    async def predict(self, batch: Batch) -> Batch:
        if self._batched is not None:
            return await self._batched(batch)
        # Small models answer in microseconds: running inline beats a thread hop.
        return self.predictor.predict(batch)

    async def _run_batch(self, batches: list[Batch]) -> list[Batch]:
        # A multi-input (or multi-output) model's batches are {name: array}: cut per name.
        sizes = [batch_size(b) for b in batches]
        return split_outputs(self.predictor.predict(concat_batches(batches)), sizes)


def load_versions(versions: Iterable[VersionConfig]) -> dict[str, Version]:
    """Each version loaded and warmed, or a :class:`~serve_ab.serving.core.versions.FailedVersion`
    holding why it could not be (a corrupt file, no GPU): one bad file never stops a replica."""
    return load_each(versions, LoadedVersion)
