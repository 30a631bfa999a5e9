"""serve-ab: several versions of a model on Ray Serve, and safe traffic moves between them.

The pure core (``serve_ab.config``, ``serve_ab.routing``, ``serve_ab.rollout``, ``serve_ab.analysis``) imports no Ray; ``build_app``
(the Ray layer) and the schema (pydantic) are imported on first use so that ``import serve_ab``
stays cheap and ``serve_ab.backends`` needs only numpy and its model runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serve_ab.routing import Assigner, SplitTable, bucket_of

if TYPE_CHECKING:
    from ray.serve import Application

    from serve_ab.config.experiment import ConfigError, ExperimentConfig, parse_experiment

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


def __getattr__(name: str) -> Any:
    # The schema (pydantic) loads on first use: serve_ab.backends, and the GPU check built on
    # it (benchmarks/gpu_check.py --no-ray), run where only torch and numpy are installed.
    if name in ("ConfigError", "ExperimentConfig", "parse_experiment"):
        from serve_ab.config import experiment

        return getattr(experiment, name)
    raise AttributeError(f"module 'serve_ab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def build_app(args: dict[str, Any] | ExperimentConfig) -> Application:
    """See :func:`serve_ab.serving.app.build_app`."""
    from serve_ab.serving.app import build_app as _build_app

    return _build_app(args)
