"""One version as its own deployment (isolated placement): it scales, and holds its own
resources (a fractional GPU, say), independently of the other versions."""

from __future__ import annotations

from typing import Any

import numpy as np
from ray import serve

from serve_ab.backends.base import InputSpec, OutputSpec
from serve_ab.config.experiment import VersionConfig
from serve_ab.serving.runtime import LoadedVersion


@serve.deployment(name="ModelPool")
class ModelPool:
    def __init__(self, version: dict[str, Any]):
        self.version = LoadedVersion(VersionConfig.model_validate(version))

    async def predict(self, batch: np.ndarray) -> np.ndarray:
        return await self.version.predict(batch)

    async def describe(self) -> tuple[InputSpec, OutputSpec]:
        return self.version.input_spec, self.version.output_spec
