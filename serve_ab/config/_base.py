"""What every part of the experiment schema shares (experiment.py and rollout.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from serve_ab.routing import NUM_BUCKETS

# A version name ends up in URLs, metric labels and deployment names.
VERSION_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
# Weights are percentages resolved to buckets of 1/100 of a percent (see serve_ab.routing).
WEIGHT_RESOLUTION_PCT = 100.0 / NUM_BUCKETS


class Strict(BaseModel):
    """Unknown keys are errors; parsed values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
