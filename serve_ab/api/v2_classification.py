"""Triton's classification extension: an output answered as its top classes.

A requested output with ``"parameters": {"classification": k}`` (what tritonclient's
``InferRequestedOutput(name, class_count=k)`` sends) comes back not as the model's tensor but
as BYTES of shape ``[batch, min(k, classes)]``: each instance's ``k`` highest values, highest
first, each as ``"<value>:<index>"`` (Triton adds ``:<label>`` when its model has labels;
serve-ab's models have none). ``k`` of 0 asks for the plain tensor. Ties keep the lower index
first (Triton's sort leaves their order unspecified).

No Ray: the V2 routes call it between the model's answer and the encoding.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from serve_ab.backends.base import Batch, InputError, OutputSpec

__all__ = ["EXTENSION", "class_counts", "classified", "top_classes"]

EXTENSION = "classification"
PARAMETER = "classification"


def class_counts(requested: list, specs: Mapping[str, OutputSpec]) -> dict[str, int]:
    """``{output name: k}`` for the requested outputs that ask for their top ``k`` classes,
    checked before the model runs: ``k`` a whole number >= 0, on an output of numbers.
    ``requested``: the request's ``outputs`` (objects with ``name`` and ``parameters``)."""
    counts = {}
    for i, output in enumerate(requested):
        k = (output.parameters or {}).get(PARAMETER)
        if k is None:
            continue
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise InputError(f"outputs.{i}.parameters.{PARAMETER} is {k!r}; it is the number of top classes "
                             "to answer, a whole number >= 0 (0: the output itself)")
        if k and specs[output.name].datatype in ("BYTES", "BOOL"):
            raise InputError(f"outputs.{i}.parameters.{PARAMETER} asks for the top classes of output "
                             f"'{output.name}', which is {specs[output.name].datatype}; classes are read from "
                             "an output of numbers")
        if k:
            counts[output.name] = k
    return counts


def top_classes(values: np.ndarray, k: int) -> np.ndarray:
    """Each instance's ``k`` highest values as ``b"<value>:<index>"``, highest first: an
    object array of shape ``[batch, min(k, values per instance)]``."""
    rows = values.reshape(len(values), -1)
    count = min(k, rows.shape[1])
    # Highest first, ties by the lower index, for any dtype (negating would wrap an unsigned
    # one): a stable ascending sort of the reversed row, read backwards, ranks equal values by
    # reversed position descending, that is by index ascending.
    width = rows.shape[1]
    order = (width - 1 - np.argsort(rows[:, ::-1], axis=1, kind="stable")[:, ::-1])[:, :count]
    text = "{:f}:{}" if rows.dtype.kind == "f" else "{}:{}"
    out = np.empty((len(rows), count), dtype=object)
    for r, (row, indices) in enumerate(zip(rows.tolist(), order.tolist())):
        out[r] = [text.format(row[i], i).encode() for i in indices]
    return out


def classified(outputs: Batch, returned: list[OutputSpec], counts: Mapping[str, int]
               ) -> tuple[Batch, list[OutputSpec]]:
    """The answer's outputs and their specs with each output of ``counts`` replaced by its
    top classes (BYTES); ``outputs`` is one array or ``{name: array}``, as the model gave it."""
    specs = []
    for spec in returned:
        if spec.name in counts:
            values = outputs[spec.name] if isinstance(outputs, dict) else outputs
            classes = top_classes(values, counts[spec.name])
            outputs = {**outputs, spec.name: classes} if isinstance(outputs, dict) else classes
            spec = OutputSpec(spec.name, np.dtype(object), (-1, classes.shape[1]))
        specs.append(spec)
    return outputs, specs
