"""File, device and warm-up checks shared by the backends; imports nothing heavy."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
WARM_UP_BATCH_SIZES = (1, 8, 1, 8)


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {list(DEVICES)}; got {device!r} "
                         "(e.g. device='auto')")
    return device


def check_threads(intra_op_threads: int | None) -> int | None:
    if intra_op_threads is not None and (
            not isinstance(intra_op_threads, int) or intra_op_threads < 1):
        raise ValueError(f"intra_op_threads must be a positive integer or None; got "
                         f"{intra_op_threads!r} (e.g. intra_op_threads=1)")
    return intra_op_threads


def check_model_file(path: Path, backend: str) -> None:
    """Raise FileNotFoundError naming the path and backend if the file is not there."""
    if path.is_file():
        return
    problem = "is a directory, not a model file" if path.is_dir() else "does not exist"
    hint = ""
    # models/digits/<version>/model.* are built, not committed.
    if path.parent.parent.name == "digits":
        hint = "; the example models are built, not committed: run python models/build.py"
    raise FileNotFoundError(f"model file for the {backend} backend {problem}: {path}{hint}")


def check_batch_dim(path: Path, role: str, name: str, shape: tuple[int, ...]) -> None:
    if not shape or shape[0] != -1:
        raise ValueError(
            f"{path}: {role} '{name}' has shape {list(shape)}; serve-ab batches requests, so "
            "the first dimension must be a dynamic batch dimension (e.g. [-1, 64])")


def warm_up(predictor: Any) -> None:
    """Run zero batches through ``predictor`` and check the output shape on the way."""
    spec, expected = predictor.input_spec, predictor.output_spec
    for size in WARM_UP_BATCH_SIZES:
        # A free non-batch dim gets 1: any size is valid for it.
        shape = (size, *(d if d >= 0 else 1 for d in spec.shape[1:]))
        result = predictor.predict(np.zeros(shape, dtype=spec.dtype))
        want = (size, *expected.shape[1:])
        if result.ndim != len(want) or any(
                w >= 0 and g != w for g, w in zip(result.shape, want)):
            raise RuntimeError(
                f"{predictor.path} ({predictor.backend} backend) returned shape "
                f"{list(result.shape)} for a batch of {size}; its output spec says "
                f"{list(expected.shape)}")
