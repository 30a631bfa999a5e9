"""What ``serve-ab validate`` checks in a Ray Serve config file besides the experiment.

The YAML itself (:func:`load_yaml` refuses a key given twice, which PyYAML would let the
second silently win), keys Ray Serve's own schema does not have (:func:`unknown_keys`: Ray
ignores them, so a misspelt ``http_options`` leaves the app on the default port), an
application's ``import_path`` (one of serve-ab's builders, not just any name under
``serve_ab``) and the ``args:`` of the metrics app, which are not an experiment. Pure: no Ray
import (Ray's schema is an argument).
"""

from __future__ import annotations

import difflib
import typing
from enum import Enum
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

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


def check_app(app: dict[str, Any], where: str) -> tuple[AppKind | None, list[str]]:
    """The kind of a Ray Serve application that imports serve-ab, and the errors found in it
    short of its experiment (checked by the caller when the kind is EXPERIMENT); ``where``
    is its path in the file, e.g. ``applications.1``."""
    try:
        kind = app_kind(str(app.get("import_path")))
    except ValueError as err:
        return None, [f"{where}.import_path: {err}"]
    if kind is AppKind.METRICS:
        try:
            MetricsAppConfig.model_validate(app.get("args") if app.get("args") is not None else {})
        except ValidationError as err:
            return kind, errors_under(f"{where}.args", format_validation_error(err))
    return kind, []


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


def unknown_keys(raw: Any, model: type[BaseModel], path: str = "", *, ray_version: str = "",
                 skip: frozenset[str] = frozenset({"args"})) -> list[str]:
    """One line per key of ``raw`` that ``model`` (Ray's ``ServeDeploySchema``) and the models
    nested in it do not have, by field path, with the nearest key it has.

    Ray Serve's schema ignores such keys (on purpose: an older Serve reads a newer Serve's
    file), so the setting written has no effect here: a warning, naming ``ray_version``, not
    an error. Not looked into: models that refuse unknown keys themselves (Ray's own error
    names them), ``skip``'s fields (an application's ``args:``, which serve-ab checks itself),
    plain mappings (``runtime_env``, ``user_config``) and a field that may be one of several
    models.
    """
    if not isinstance(raw, dict) or model.model_config.get("extra") in ("forbid", "allow"):
        return []  # a value of the wrong type, or a model that refuses or keeps extras: Ray says
    fields = {}
    for name, field in model.model_fields.items():
        fields[name] = field
        for alias in (field.alias, field.validation_alias):
            if isinstance(alias, str):
                fields[alias] = field
    ray = f"Ray Serve {ray_version}" if ray_version else "Ray Serve"
    found = []
    for key, value in raw.items():
        where = f"{path}.{key}" if path else str(key)
        field = fields.get(key)
        if field is None:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.75)
            known = f"did you mean {close[0]}?" if close else \
                f"{model.__name__} has {', '.join(sorted(model.model_fields))}"
            found.append(f"{where}: {ray} has no such key and ignores it, so it has no effect here ({known})")
        elif key not in skip:
            models = _models_in(field.annotation)
            if len(models) != 1:
                continue
            items = enumerate(value) if isinstance(value, list) else [(None, value)]
            for index, item in items:
                found += unknown_keys(item, models[0], where if index is None else f"{where}.{index}",
                                      ray_version=ray_version, skip=skip)
    return found


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation names: X, Optional[X], List[X], Union[X, Y]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) is dict:  # {name: model}: not walked, its keys are the user's
        return []
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]
