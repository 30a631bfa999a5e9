"""The one schema of an experiment: what ``args:`` holds in a Ray Serve config file.

``experiment`` is the top level (versions, assignment, shadow, analysis, control);
``rollout`` is its ``rollout:`` part (canary steps, blue-green, gates); ``_base`` is what
both share; ``serve_file`` is what ``serve-ab validate`` checks around them in a Ray Serve
config file (the YAML, import paths, the metrics app's args). Pure: no Ray import. Import
the names from here::

    from serve_ab.config import ExperimentConfig, parse_experiment
"""

from serve_ab.config.experiment import (
    ReportAnalysisConfig,
    AssignmentConfig,
    AutoscalingConfig,
    Backend,
    BatchingConfig,
    ConfigError,
    ControlConfig,
    ControllerConfig,
    DeploymentOptions,
    ExperimentConfig,
    FeedbackMetric,
    HttpConfig,
    PinConfig,
    Placement,
    RayActorOptions,
    RecordsConfig,
    RouterOptions,
    ShadowConfig,
    VersionConfig,
    VersionDeploymentOptions,
    format_validation_error,
    parse_experiment,
)
from serve_ab.config.rollout import (
    BlueGreenConfig,
    Gate,
    GateMetric,
    PrometheusConfig,
    RolloutConfig,
    Strategy,
    parse_duration_s,
)
from serve_ab.config.serve_file import MetricsAppConfig, load_yaml

__all__ = [
    "ReportAnalysisConfig",
    "AssignmentConfig",
    "AutoscalingConfig",
    "Backend",
    "BatchingConfig",
    "BlueGreenConfig",
    "ConfigError",
    "ControlConfig",
    "ControllerConfig",
    "DeploymentOptions",
    "ExperimentConfig",
    "FeedbackMetric",
    "Gate",
    "GateMetric",
    "HttpConfig",
    "MetricsAppConfig",
    "PinConfig",
    "Placement",
    "PrometheusConfig",
    "RayActorOptions",
    "RecordsConfig",
    "RouterOptions",
    "RolloutConfig",
    "ShadowConfig",
    "Strategy",
    "VersionConfig",
    "VersionDeploymentOptions",
    "format_validation_error",
    "load_yaml",
    "parse_duration_s",
    "parse_experiment",
]
