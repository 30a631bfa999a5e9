"""The app builder: what ``import_path`` in a Ray Serve config file points at.

``serve run configs/ab.yaml`` calls :func:`build_app` with the file's ``args:``; Python
users call it themselves: ``serve.run(build_app({...}), name="ab", route_prefix="/")``.
The experiment is checked, model paths included, before anything is deployed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray.serve import Application

from serve_ab.config.experiment import (
    ConfigError,
    ExperimentConfig,
    GRPC_MESSAGE_MAX_BYTES,
    Placement,
    RAY_GRPC_MESSAGE_ENV,
    VersionDeploymentOptions,
    format_validation_error,
    metrics_export_env,
    parse_experiment,
    with_env_vars,
)
from serve_ab.config._base import path_problem
from serve_ab.config.rollout import shown_value
from serve_ab.config.serve_file import version_deployment
from serve_ab.serving.controller import ExperimentController
from serve_ab.serving.keep_warm import keep_blue_warm
from serve_ab.serving.placement import fit_to_cluster
from serve_ab.serving.pool import ModelPool
from serve_ab.serving.core.auth import load_tokens, token_warnings
from serve_ab.serving.router import Router

logger = logging.getLogger("ray.serve")

# A stopping controller waits for its routers' long polls (at most LONG_POLL_TIMEOUT_S, 2 s),
# then writes the run's final record (a report and an SQLite write, well under a second).
CONTROLLER_SHUTDOWN_S = 5.0
CONTROLLER_SHUTDOWN_LOOP_S = 0.2


def _unusable_paths(cfg: ExperimentConfig, base_dir: Path) -> list[str]:
    """The config's file paths that no file system takes, by field: a NUL byte, a name over
    255 bytes, or a path over 4,095 bytes once joined to ``base_dir``. Named here; the checks below would raise ValueError or OSError naming no field."""
    bg = cfg.rollout.blue_green if cfg.rollout is not None else None
    fields = [*((f"versions.{i}.path", v.path) for i, v in enumerate(cfg.versions)),
              ("controller.state_path", cfg.controller.state_path),
              ("control.tokens_file", cfg.control.tokens_file),
              ("analysis.records.path", cfg.analysis.records.path),
              ("rollout.blue_green.validation_samples", bg.validation_samples if bg else None)]
    errors = []
    for field, raw in fields:
        if raw is None:
            continue
        text = str(raw)
        problem = path_problem(text, str(base_dir))
        if problem is not None:
            errors.append(f"{field}: {problem} (got {shown_value(text)})")
    return errors


def resolve_model_paths(cfg: ExperimentConfig, base_dir: Path | None = None) -> ExperimentConfig:
    """Make model paths absolute (replicas may run elsewhere) and check they exist."""
    base_dir = base_dir or Path(os.getcwd())
    unusable = _unusable_paths(cfg, base_dir)
    if unusable:
        raise ConfigError(unusable)
    errors = []
    versions = []
    for index, version in enumerate(cfg.versions):
        if version.path is None:  # a python model without a file
            versions.append(version)
            continue
        path = Path(version.path)
        resolved = path if path.is_absolute() else (base_dir / path).resolve()
        # A python model's path may be a directory (a Hugging Face snapshot, say).
        if not (resolved.is_file() or (version.backend.value == "python" and resolved.exists())):
            hint = " (build the example models with: python models/build.py)" if "models/" in version.path else ""
            errors.append(
                f"versions.{index}.path: no model file at {str(resolved)!r}{hint} (got {version.path!r})"
            )
        versions.append(version.model_copy(update={"path": str(resolved)}))
    update: dict[str, Any] = {"versions": versions}
    # The controller may run in another process: its files get absolute paths too.
    update["controller"] = cfg.controller.model_copy(
        update={"state_path": str((base_dir / cfg.controller.state_path).resolve())})
    if cfg.control.tokens_file:
        tokens_file = (base_dir / cfg.control.tokens_file).resolve()
        if not tokens_file.is_file():
            errors.append(f"control.tokens_file: no file at {str(tokens_file)!r} (got {cfg.control.tokens_file!r})")
        else:
            update["control"] = cfg.control.model_copy(update={"tokens_file": str(tokens_file)})
            try:  # a malformed file is refused now, not at the first request
                load_tokens(update["control"], environ={})
            except ValueError as err:
                errors.append(str(err))
    records = cfg.analysis.records.model_copy(
        update={"path": str((base_dir / cfg.analysis.records.path).resolve())})
    update["analysis"] = cfg.analysis.model_copy(update={"records": records})
    if cfg.rollout is not None and cfg.rollout.blue_green and cfg.rollout.blue_green.validation_samples:
        samples = base_dir / cfg.rollout.blue_green.validation_samples
        if not samples.is_file():
            errors.append(f"rollout.blue_green.validation_samples: no file at {str(samples)!r}")
        else:
            blue_green = cfg.rollout.blue_green.model_copy(update={"validation_samples": str(samples.resolve())})
            update["rollout"] = cfg.rollout.model_copy(update={"blue_green": blue_green})
    if errors:  # every missing file at once, not one per run of validate
        raise ConfigError(errors)
    return cfg.model_copy(update=update)


def check_tokens(cfg: ExperimentConfig, environ: Mapping[str, str] = os.environ) -> None:
    """Refuse tokens that clash (two roles or names with one token) with the environment the
    app is built in, which its replicas start from, before any starts; log what the operator
    should know of its tokens (a variable set but empty, a role no token holds). resolve_model_paths
    checked the file alone: ``serve-ab validate`` may run where the app's variables are not set."""
    try:
        load_tokens(cfg.control, environ)
    except ValueError as err:
        raise ConfigError([str(err)]) from None
    for warning in token_warnings(cfg.control, environ):
        logger.warning("serve-ab app of model %r: %s", cfg.model, warning)


def build_metrics_app(args: dict[str, Any]) -> Application:
    """A separate app serving one experiment app's ``/metrics`` (see serving/metrics_app.py)."""
    from pydantic import ValidationError

    from serve_ab.config.serve_file import MetricsAppConfig
    from serve_ab.serving.metrics_app import build

    try:
        return build(args)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model=MetricsAppConfig), where="metrics app") from None


def build_app(args: dict[str, Any] | ExperimentConfig) -> Application:
    """Build the serve-ab application for one experiment."""
    cfg = resolve_model_paths(parse_experiment(args))
    check_tokens(cfg)
    # GPUs or custom resources the cluster cannot give: refuse now, never wait forever.
    cfg = fit_to_cluster(cfg)
    experiment = cfg.model_dump(mode="json")
    isolated = cfg.placement is Placement.ISOLATED
    # Calls to the versions over Ray Serve's gRPC: without a larger limit on both ends, an
    # answer (or a request) over 4 MiB would fail as if the version had.
    grpc_env = ({RAY_GRPC_MESSAGE_ENV: str(GRPC_MESSAGE_MAX_BYTES)}
                if isolated and cfg.isolation.transport == "grpc" else {})
    # Every deployment of the app: Serve's metrics moved to Ray's recorder once a second.
    export_env = metrics_export_env(os.environ)
    env = {**export_env, **grpc_env}
    pools = None
    if isolated:
        # Blue autoscaled to zero would be gone within seconds of the switch, not kept for
        # keep_blue_s. In its deployment's options only: in the config the controller and routers
        # get, the raised hold made the run's fingerprint another, and the same file read by a
        # release before this one's started a new run at the upgrade (the figures from zero).
        warm = {version.name: version for version in keep_blue_warm(cfg).versions}
        pools = {
            version.name: ModelPool.options(
                name=version_deployment(version.name),
                **with_env_vars((warm[version.name].deployment or VersionDeploymentOptions()).to_ray(), env),
            ).bind(version.model_dump(mode="json"))
            for version in cfg.versions
        }
    # Every app has a controller: it holds the figures of the report and the metrics, and
    # runs the rollout when there is one.
    controller_actor = {"num_cpus": cfg.controller.num_cpus,
                        **({"resources": dict(cfg.controller.resources)} if cfg.controller.resources else {})}
    controller = ExperimentController.options(
        **with_env_vars({"ray_actor_options": controller_actor}, export_env),
        # Its ongoing requests at shutdown are the routers' long polls, which return within
        # LONG_POLL_TIMEOUT_S; checked every CONTROLLER_SHUTDOWN_LOOP_S, so a delete takes about
        # that long plus the final record, not Ray's default 2 s wait loops.
        graceful_shutdown_timeout_s=CONTROLLER_SHUTDOWN_S,
        graceful_shutdown_wait_loop_s=CONTROLLER_SHUTDOWN_LOOP_S,
    ).bind(experiment)
    # Ray Serve's access line, with the version that answered (serve_ab/api/access_log.py).
    # A logging_config only to switch it off: a deployment's own one would hide the app's.
    router_options = with_env_vars(cfg.router.to_ray(isolated=isolated), env)
    if not cfg.router.access_log:
        router_options["logging_config"] = {"enable_access_log": False}
    return Router.options(**router_options).bind(experiment, pools, controller)
