"""serve-ab: several versions of a model on Ray Serve, and safe traffic moves between them.

The pure core (``serve_ab.config``, ``serve_ab.routing``, ``serve_ab.rollout``, ``serve_ab.analysis``) imports no Ray; ``build_app``
(the Ray layer) is imported on first use so that ``import serve_ab`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serve_ab.config.experiment import ConfigError, ExperimentConfig, parse_experiment
from serve_ab.routing import Assigner, SplitTable, bucket_of

if TYPE_CHECKING:
    from ray.serve import Application

__all__ = [
    "Assigner",
    "ConfigError",
    "ExperimentConfig",
    "SplitTable",
    "bucket_of",
    "build_app",
    "parse_experiment",
]
__version__ = "0.1.0"


def build_app(args: dict[str, Any] | ExperimentConfig) -> Application:
    """See :func:`serve_ab.serving.app.build_app`."""
    from serve_ab.serving.app import build_app as _build_app

    return _build_app(args)
