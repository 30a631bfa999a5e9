"""What every part of the experiment schema shares (experiment.py and rollout.py)."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from serve_ab.routing import NUM_BUCKETS

# A version name ends up in URLs, metric labels and deployment names.
VERSION_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
# Weights are percentages resolved to buckets of 1/100 of a percent (see serve_ab.routing).
WEIGHT_RESOLUTION_PCT = 100.0 / NUM_BUCKETS
# An HTTP header name is a token (RFC 9110 5.1): no spaces, no colon.
HEADER_NAME_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}")
# The longest name of one file or directory most file systems take (ext4, XFS, APFS, NTFS),
# and the longest path Linux opens (PATH_MAX, 4096, less the NUL that ends it): past either,
# every call on the path fails with ENAMETOOLONG, an OSError that names no field.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4095


def path_problem(text: str, base_dir: str | None = None) -> str | None:
    """Why no file system takes the path ``text`` (relative ones joined to ``base_dir``), or
    None: a NUL byte, a name over MAX_NAME_BYTES or the whole over MAX_PATH_BYTES."""
    if "\x00" in text:
        return "holds a NUL byte, which no file name can"
    if any(len(os.fsencode(part)) > MAX_NAME_BYTES for part in Path(text).parts):
        return f"a name in it is over {MAX_NAME_BYTES} bytes, more than file systems take"
    full = os.path.join(base_dir, text) if base_dir is not None else text
    if len(os.fsencode(full)) > MAX_PATH_BYTES:
        where = f" (joined to {base_dir})" if base_dir is not None and full != text else ""
        return f"it is {len(os.fsencode(full)):,} bytes long{where}, over the {MAX_PATH_BYTES:,} a path may be"
    return None


# Ray refuses these in a resources dict (ray/_common/utils.py, resources_from_ray_options),
# and quantities finer than 1/10000 (ray_option_utils._validate_resource_quantity).
RAY_RESERVED_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory", "bundle")
RAY_RESOURCE_RESOLUTION = 0.0001


def check_header_name(field: str, value: str, example: str) -> str:
    if not HEADER_NAME_RE.fullmatch(value):  # fullmatch: $ alone lets a trailing newline through
        raise ValueError(f"{field} {value!r} is not an HTTP header name: letters, digits and "
                         f"!#$%&'*+.^_`|~- only, no spaces or colon, e.g. {example}")
    return value


def check_ray_quantity(field: str, quantity: float) -> float:
    """Refuse an amount of a Ray resource that Ray would refuse only at deploy time (with a
    traceback naming no field): infinite, or finer than Ray counts."""
    if not math.isfinite(quantity):
        raise ValueError(f"{field} is {quantity!r}; it must be a finite amount, e.g. 0.25")
    if 0 < quantity < RAY_RESOURCE_RESOLUTION:
        raise ValueError(f"{field} is {quantity:g}; Ray counts resources in steps of "
                         f"{RAY_RESOURCE_RESOLUTION:g}, so use 0 or at least {RAY_RESOURCE_RESOLUTION:g}")
    return quantity


def check_ray_resources(resources: dict[str, float]) -> dict[str, float]:
    """Refuse what Ray would refuse only at deploy time, naming the key and the value."""
    for name, quantity in resources.items():
        if name in RAY_RESERVED_RESOURCES:
            raise ValueError(
                f"resources has {name!r} (got {name}: {quantity:g}); Ray reserves "
                f"{', '.join(RAY_RESERVED_RESOURCES)} for its own keywords: use num_cpus, num_gpus or "
                "memory beside resources, and resources only for custom ones, e.g. {accel_a: 1}")
        check_ray_quantity(f"resources.{name}", quantity)
    return resources


# An environment variable's name, where a config names one that holds a secret.
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_env_name(field: str, value: str, example: str) -> str:
    """A secret is read from the environment variable ``value`` names; refuse what cannot be
    a name (most often the secret itself pasted in), without quoting it."""
    if not ENV_NAME_RE.fullmatch(value):
        raise ValueError(f"{field} must be the NAME of an environment variable holding the secret "
                         f"(letters, digits and _, not starting with a digit), e.g. {example}; the "
                         f"value given ({len(value)} characters) is not one, and is not shown here "
                         "in case it is the secret itself")
    return value


class Strict(BaseModel):
    """Unknown keys are errors; parsed values are immutable.

    ``strict``: a value of the wrong type is an error, never converted (pydantic would read
    ``true`` as 1 and ``"50"`` as 50 where a number is expected); an int is still a valid
    float. Enum fields set ``strict=False`` so that their values are written as strings.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
