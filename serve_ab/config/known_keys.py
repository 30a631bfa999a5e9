"""The keys a config mapping may have, to answer a misspelt one with what would be valid.

Two cases. serve-ab's own models refuse a key they lack, but pydantic's ``extra_forbidden``
error says only "Extra inputs are not permitted"; a user who wrote ``weigths`` or ``num_cpu``
wants to hear the key meant: :func:`unknown_key_hint` walks the model's field annotations
along the error's location to the mapping that refused the key. Ray Serve's schema ignores
a key it lacks, so a misspelt ``http_options`` leaves the app on the default port:
:func:`unknown_keys` finds those, for a warning.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Union

from pydantic import BaseModel

# Beyond this many, the valid keys are not listed (the nearest match still is).
_LISTED_KEYS = 40


def _members(annotation: Any) -> list[Any]:
    """``annotation`` without ``Annotated`` and ``Optional``: the types a value may be."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [member for arg in typing.get_args(annotation) for member in _members(arg)]
    return [annotation]


def _tags(annotation: Any) -> dict[str, Any]:
    """A tagged union's members by their tag (``Annotated[SetWeightStep, Tag("set_weight")]``)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *extras = typing.get_args(annotation)
        tagged = {tag: inner for extra in extras if isinstance(tag := getattr(extra, "tag", None), str)}
        return tagged or _tags(inner)
    if origin is Union or origin is types.UnionType:
        return {tag: member for arg in typing.get_args(annotation) for tag, member in _tags(arg).items()}
    return {}


def _field_annotation(model: type[BaseModel], key: str) -> Any:
    for name, field in model.model_fields.items():
        if key in (name, field.alias, field.validation_alias):
            return field.annotation
    return None


def _step(annotation: Any, part: str | int) -> Any:
    """The annotation below ``annotation`` at ``part`` of a location, or None. A union's tag
    or member name in pydantic's location is a step of its own (not a key of the input)."""
    tagged = _tags(annotation)
    if isinstance(part, str) and part in tagged:
        return tagged[part]
    for member in _members(annotation):
        if isinstance(part, str) and getattr(member, "__name__", None) == part:
            return member
        origin, args = typing.get_origin(member), typing.get_args(member)
        if isinstance(member, type) and issubclass(member, BaseModel) and isinstance(part, str):
            found = _field_annotation(member, part)
            if found is not None:
                return found
        elif origin in (list, tuple, set, frozenset) and isinstance(part, int) and args:
            return args[0]
        elif origin is dict and len(args) == 2:
            return args[1]
    return None


def _model_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model whose mapping holds the key at the end of ``loc``."""
    annotation: Any = model
    for part in loc[:-1]:
        annotation = _step(annotation, part)
        if annotation is None:
            return None
    models = [m for m in _members(annotation) if isinstance(m, type) and issubclass(m, BaseModel)]
    return models[0] if len(models) == 1 else None


def valid_keys(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def unknown_key_hint(model: type[BaseModel] | None, loc: tuple[str | int, ...]) -> str:
    """``"; did you mean 'weights'? valid keys: ..."`` for the key at the end of ``loc``, or
    ``""`` where the mapping's model cannot be told."""
    if model is None or not loc:
        return ""
    holder = _model_at(model, loc)
    if holder is None:
        return ""
    keys = valid_keys(holder)
    near = difflib.get_close_matches(str(loc[-1]), keys, n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    if len(keys) <= _LISTED_KEYS:
        hint += f"{'' if near else ';'} valid keys: {', '.join(keys)}"
    return hint


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
