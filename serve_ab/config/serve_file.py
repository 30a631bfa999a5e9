"""What ``serve-ab validate`` checks in a Ray Serve config file besides the experiment.

The YAML itself (:func:`load_yaml` refuses a key given twice, which PyYAML would let the
second silently win), an application's ``import_path`` (one of serve-ab's builders, not just
any name under ``serve_ab``) and the ``args:`` of the metrics app, which are not an
experiment. Keys Ray Serve's schema lacks: :mod:`serve_ab.config.known_keys`. Pure: no Ray
import.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import yaml
from pydantic import Field, ValidationError

from serve_ab.config._base import Strict as _Strict
from serve_ab.config.experiment import errors_under, format_validation_error


class AppKind(str, Enum):
    #: ``args:`` is an experiment (:class:`~serve_ab.config.experiment.ExperimentConfig`).
    EXPERIMENT = "experiment"
    #: ``args:`` is :class:`MetricsAppConfig`.
    METRICS = "metrics"


#: serve-ab's app builders, as an import_path names them (Ray also reads module.attr).
APP_BUILDERS = {
    "serve_ab.serving.app:build_app": AppKind.EXPERIMENT,
    "serve_ab:build_app": AppKind.EXPERIMENT,
    "serve_ab.serving.app:build_metrics_app": AppKind.METRICS,
}


class MetricsAppConfig(_Strict):
    """The ``args:`` of ``serve_ab.serving.app:build_metrics_app`` (serve_ab/serving/metrics_app.py)."""

    app: str = Field(..., min_length=1, description="The name of the experiment app whose metrics to serve.")
    num_cpus: float = Field(0.05, ge=0.0, description="CPU the one replica reserves.")


def app_kind(import_path: str) -> AppKind:
    """What ``import_path`` builds, or ``ValueError`` naming serve-ab's builders."""
    module, sep, attr = import_path.rpartition(":")
    if not sep:
        module, _, attr = import_path.rpartition(".")
    kind = APP_BUILDERS.get(f"{module}:{attr}")
    if kind is None:
        valid = ", ".join(f"{path} ({kind.value})" for path, kind in APP_BUILDERS.items())
        raise ValueError(f"{import_path!r} is not one of serve-ab's app builders; valid: {valid}")
    return kind


#: The deployments each app builder makes (serving/router.py, controller.py, pool.py,
#: metrics_app.py name them; a unit test holds the two together). An isolated experiment
#: adds one per version, named by :func:`version_deployment`.
ROUTER_DEPLOYMENT = "Router"
CONTROLLER_DEPLOYMENT = "Controller"
METRICS_DEPLOYMENT = "Metrics"


def version_deployment(version: str) -> str:
    return f"version-{version}"


def port_errors(raw: dict[str, Any]) -> list[str]:
    """``http_options.port`` and ``grpc_options.port`` past what a socket binds (0-65535):
    Ray Serve's schema takes any int, and its proxy then fails to start with "bind(): port
    must be 0-65535", naming no field."""
    errors = []
    for section in ("http_options", "grpc_options"):
        options = raw.get(section)
        port = options.get("port") if isinstance(options, dict) else None
        if isinstance(port, int) and not isinstance(port, bool) and not 0 <= port <= 65535:
            errors.append(f"{section}.port: {port} is not a TCP port (0 to 65535), e.g. 8000")
    return errors


def route_prefix_errors(app: dict[str, Any], where: str) -> list[str]:
    """Ray Serve's rules for an app's route_prefix (ray.serve._private.utils.validate_route_prefix),
    which its schema leaves to deploy time, where `serve run` fails naming no field."""
    prefix = app.get("route_prefix")
    if not isinstance(prefix, str):
        return []  # unset or null: Ray's own schema checks the type
    problem = ("must start with /" if not prefix.startswith("/")
               else "must not end with / (unless it is just /)" if len(prefix) > 1 and prefix.endswith("/")
               else "cannot hold { or } (Ray Serve routes no wildcards)" if "{" in prefix or "}" in prefix
               else None)
    if problem is None:
        return []
    example = "/" + prefix.strip("/").replace("{", "").replace("}", "")
    return [f"{where}.route_prefix: {prefix!r} {problem}, e.g. {example!r}"]


def deployment_override_errors(app: dict[str, Any], where: str, names: list[str]) -> list[str]:
    """An app's ``deployments:`` overrides naming a deployment its builder does not make:
    Ray Serve refuses them only at deploy time ("Deployment 'X' does not exist")."""
    overrides = app.get("deployments")
    if not isinstance(overrides, list):
        return []
    return [f"{where}.deployments.{index}.name: {override['name']!r} is not a deployment of this app; "
            f"its deployments are {', '.join(names)}"
            for index, override in enumerate(overrides)
            if isinstance(override, dict) and isinstance(override.get("name"), str) and override["name"] not in names]


def check_app(app: dict[str, Any], where: str) -> tuple[AppKind | None, list[str]]:
    """The kind of a Ray Serve application that imports serve-ab, and the errors found in it
    short of its experiment (checked by the caller when the kind is EXPERIMENT, with the
    names of its deployments); ``where`` is its path in the file, e.g. ``applications.1``."""
    route_errors = route_prefix_errors(app, where)
    try:
        kind = app_kind(str(app.get("import_path")))
    except ValueError as err:
        return None, [f"{where}.import_path: {err}", *route_errors]
    if kind is AppKind.EXPERIMENT:
        return kind, route_errors
    route_errors += deployment_override_errors(app, where, [METRICS_DEPLOYMENT])
    if kind is AppKind.METRICS:
        try:
            MetricsAppConfig.model_validate(app.get("args") if app.get("args") is not None else {})
        except ValidationError as err:
            return kind, [*route_errors, *errors_under(f"{where}.args",
                                                        format_validation_error(err, model=MetricsAppConfig))]
    return kind, route_errors


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that gives one key twice."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # <<: *base; explicit keys may override it
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            seen = key in first_line
        except TypeError:  # an unhashable key: the safe loader's own error says so
            continue
        line = key_node.start_mark.line + 1
        if seen:
            raise yaml.constructor.ConstructorError(
                problem=f"key {key!r} appears twice in one mapping, at lines {first_line[key]} and "
                f"{line}; YAML would keep only the second, so keep one")
        first_line[key] = line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load``, but a key given twice in one mapping is a ``yaml.YAMLError``
    naming the key and both lines."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass


