"""Blue-green validation: green's synthetic request set, run before it gets any traffic.

The controller runs it through the router with green pinned; ``serve-ab validate --load``
runs it through a router core of its own before anything is deployed, so both say the same.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from serve_ab.api.errors import client_message
from serve_ab.backends.base import DATATYPES
from serve_ab.config.experiment import ExperimentConfig

logger = logging.getLogger("ray.serve")


async def validate_green(cfg: ExperimentConfig, predict: Callable[[Any], Awaitable[Any]],
                         interface: Callable[[], Awaitable[dict[str, Any]]],
                         timeout_s: float) -> tuple[bool, str]:
    """Run the synthetic request set through green before it gets any traffic.

    ``predict(inputs)`` answers with green pinned (the controller pins whatever the
    public pin setting), as ``{"outputs": ...}``; ``interface()`` gives the model's inputs as
    V2 metadata. A green that does not answer within ``timeout_s`` fails validation instead
    of holding it up. Returns whether green passed, and what was seen.
    """
    settings = cfg.rollout.blue_green_settings
    green = cfg.rollout.candidate
    inputs, labels = load_samples(settings.validation_samples)

    async def run() -> Any:
        batch = inputs
        if batch is None:
            spec = await interface()
            zeros = {t["name"]: _empty_instance(t) for t in spec["inputs"]}
            batch = next(iter(zeros.values())) if len(zeros) == 1 else zeros
        return await predict(batch)

    try:
        result = await asyncio.wait_for(run(), timeout_s)
    except asyncio.TimeoutError:
        return False, f"validation of {green}: no answer within {timeout_s:g}s (inside progress_deadline_s)"
    except Exception as err:
        # The history is shown by the open status: the error's own message (a Ray-wrapped one
        # is a whole traceback with server paths) goes to the log only.
        logger.warning("serve-ab controller: validation of %s failed", green, exc_info=True)
        return False, f"validation of {green} failed: {type(err).__name__}: {client_message(err)[:200]}"
    try:
        return _judge(green, result["outputs"], labels, settings.validation_min_accuracy)
    except Exception as err:  # labels for outputs of no classes, outputs of no numbers
        return False, f"validation of {green}: its outputs cannot be judged: {type(err).__name__}: {err}"


def load_samples(path: str | None) -> tuple[Any, Any]:
    """``(inputs, labels)`` of a ``validation_samples`` file (labels None when it has none);
    ``(None, None)`` without a file. A file that cannot be read, is not JSON or has no
    ``inputs`` is a :class:`ValueError` naming it."""
    if not path:
        return None, None
    try:
        samples = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path!r} cannot be read as JSON ({type(err).__name__}: {err})") from None
    if not isinstance(samples, dict) or "inputs" not in samples:
        raise ValueError(f"{path!r} has no \"inputs\"; expected {{\"inputs\": [...], \"labels\": [...]}} "
                         "(labels optional)")
    return samples["inputs"], samples.get("labels")


def _empty_instance(tensor: dict[str, Any]) -> np.ndarray:
    """One instance of an input in its own shape and datatype: zeros, or empty strings for
    BYTES (an object array of zeros would hold integers, which a text input refuses)."""
    shape = (1, *[max(d, 1) for d in tensor["shape"][1:]])
    dtype = DATATYPES[tensor["datatype"]]
    return np.full(shape, b"", dtype=object) if dtype == np.dtype(object) else np.zeros(shape, dtype=dtype)


def _judge(green: str, outputs: Any, labels: Any, min_accuracy: float) -> tuple[bool, str]:
    arrays = [np.asarray(o) for o in outputs.values()] if isinstance(outputs, dict) else [np.asarray(outputs)]
    # Every numeric output finite; text (BYTES) outputs have no NaN to look for.
    if not all(np.isfinite(a).all() for a in arrays if a.dtype.kind in "fc"):
        return False, f"validation of {green}: outputs contain NaN or infinity"
    outputs = arrays[0]  # several outputs: the first is judged
    if labels is not None and min_accuracy > 0:
        accuracy = float(np.mean(outputs.argmax(axis=1) == np.asarray(labels)))
        if accuracy < min_accuracy:
            return False, (f"validation of {green}: accuracy {accuracy:.3f} on {len(labels)} samples "
                           f"< {min_accuracy}")
        return True, f"validation of {green}: accuracy {accuracy:.3f} on {len(labels)} samples"
    return True, f"validation of {green}: {len(outputs)} sample outputs finite and well-formed"
