"""One version as its own deployment (isolated placement): it scales, and holds its own
resources (a fractional GPU, say), independently of the other versions.

A model that fails to load does not fail the deployment (which would fail the whole app's
deploy): the replica starts and answers every call with the load error
(:class:`~serve_ab.serving.core.versions.VersionLoadFailed`), which the router reports."""

from __future__ import annotations

from typing import Any

import numpy as np
from ray import serve

from serve_ab.backends.base import InputSpec, OutputSpec
from serve_ab.config.experiment import VersionConfig
from serve_ab.serving.runtime import load_versions


@serve.deployment(name="ModelPool")
class ModelPool:
    def __init__(self, version: dict[str, Any]):
        config = VersionConfig.model_validate(version)
        self.version = load_versions([config])[config.name]

    async def predict(self, batch: np.ndarray) -> np.ndarray:
        return await self.version.predict(batch)

    async def describe(self) -> tuple[InputSpec, OutputSpec]:
        return await self.version.describe()
