"""What a model's answer means, per task: the router's per-answer summary and the shadow
pair comparison, as small pure functions.

- ``classification`` (the default): the answer is one score per class; the summary is the
  first instance's argmax class and its score; a shadow agrees when it picks the same class,
  and its score difference is its score for live's class minus live's.
- ``regression``: the answer is a value (the first element of the first instance's row);
  the summary's "score" is that value, so the score-drift gates (``drift_ks``,
  ``drift_wasserstein``) compare predicted values; a shadow agrees when
  ``|shadow - live| <= tolerance`` and its difference is ``shadow - live``.
- ``embedding``: the answer is a vector; the summary's score is its L2 norm (a change of
  normalisation shows as score drift); a shadow agrees when the cosine similarity of the two
  vectors is at least ``threshold``.

Only the first instance of a request is summarised, as for classifiers: one figure per
request keeps every aggregate the same size whatever the batch. A pair says how many rows
the live answer had (``PairComparison.rows``), so the report can say how many rows of
batched requests were never compared.

Example::

    rule = TaskRule("regression", tolerance=5.0)
    rule.summary(np.array([[151.2]]))                             # (None, 151.2)
    rule.compare(np.array([[151.2]]), np.array([[149.0]])).agree  # True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

__all__ = ["CLASSIFICATION", "TASKS", "PairComparison", "TaskRule", "cosine", "select_output", "task_rules"]

TASKS = ("classification", "regression", "embedding")
DEFAULT_THRESHOLD = 0.99  # embedding: cosine at least this agrees (task_options.threshold unset)


@dataclass(frozen=True)
class PairComparison:
    """A shadow's answer beside live's, on the same request. ``agree`` is None when the two
    cannot be compared (no answer, or answers of other shapes): not a pair."""

    live_class: int | None = None
    shadow_class: int | None = None
    score_diff: float | None = None  # classification: shadow's score for live's class - live's; regression: shadow - live
    agree: bool | None = None
    similarity: float | None = None  # embedding: cosine
    live_value: float | None = None  # regression: the values compared
    shadow_value: float | None = None
    #: Rows in the live answer; only the first is compared, so a batch of n leaves n - 1 rows
    #: unseen by every figure of the pair (the report counts them).
    rows: int = 1


def select_output(outputs: Any, name: str | None = None) -> np.ndarray | None:
    """The output a task reads: the array itself, or ``name`` (default: the first) of several."""
    if outputs is None:
        return None
    if isinstance(outputs, Mapping):
        if not outputs:
            return None
        return outputs.get(name) if name is not None else next(iter(outputs.values()))
    return outputs


def _first_row(array: np.ndarray | None) -> np.ndarray | None:
    if array is None or not isinstance(array, np.ndarray) or array.ndim < 1 or not len(array) \
            or array.dtype.kind not in "biuf":
        return None
    return np.asarray(array[0], dtype=np.float64).ravel()


def _row_count(array: Any) -> int:
    """Rows (instances) in an answer: its first dimension, 1 for anything else."""
    if isinstance(array, np.ndarray) and array.ndim >= 1:
        return max(int(array.shape[0]), 1)
    return 1


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity; two zero vectors are the same (1), one zero vector is unlike any (0)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


@dataclass(frozen=True)
class TaskRule:
    """One version's task and its options (see the module docstring)."""

    task: str = "classification"
    tolerance: float | None = None
    threshold: float = DEFAULT_THRESHOLD
    output: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}; got {self.task!r}")
        if self.task == "regression" and (self.tolerance is None or not self.tolerance >= 0):
            raise ValueError(f"task regression needs a tolerance >= 0; got {self.tolerance!r}")

    @classmethod
    def of(cls, version: Any) -> TaskRule:
        """The rule of a version config (anything with ``task`` and ``task_options``)."""
        options = version.task_options
        task = getattr(version.task, "value", version.task)
        threshold = options.threshold if options.threshold is not None else DEFAULT_THRESHOLD
        return cls(task, options.tolerance, threshold, options.output)

    def summary(self, outputs: Any) -> tuple[int | None, float | None]:
        """(predicted class, score) of a request's first instance, for the aggregates."""
        array = select_output(outputs, self.output)
        if self.task == "classification":
            return _classification_summary(array)
        row = _first_row(array)
        if row is None or not row.size:
            return None, None
        if self.task == "regression":
            return None, float(row[0])
        return None, float(np.linalg.norm(row))

    def compare(self, live_outputs: Any, shadow_outputs: Any) -> PairComparison:
        """The shadow's answer against live's on the same request (its first row)."""
        live, shadow = select_output(live_outputs, self.output), select_output(shadow_outputs, self.output)
        pair = self._compare(live, shadow)
        rows = _row_count(live)
        return pair if rows == 1 or pair.agree is None else replace(pair, rows=rows)

    def _compare(self, live: Any, shadow: Any) -> PairComparison:
        if self.task == "classification":
            return _classification_pair(live, shadow)
        live_row, shadow_row = _first_row(live), _first_row(shadow)
        if live_row is None or shadow_row is None or live_row.shape != shadow_row.shape or not live_row.size:
            return PairComparison()
        if self.task == "regression":
            live_value, shadow_value = float(live_row[0]), float(shadow_row[0])
            diff = shadow_value - live_value
            if not math.isfinite(diff):
                return PairComparison()
            return PairComparison(score_diff=diff, agree=abs(diff) <= self.tolerance,
                                  live_value=live_value, shadow_value=shadow_value)
        similarity = cosine(live_row, shadow_row)
        return PairComparison(agree=similarity >= self.threshold, similarity=similarity)


def _classification_summary(array: np.ndarray | None) -> tuple[int | None, float | None]:
    if array is None or not isinstance(array, np.ndarray) or array.ndim != 2 or not array.size \
            or array.dtype.kind not in "biuf":
        return None, None  # also (n, 0): no class to pick
    predicted_class = int(array[0].argmax())
    return predicted_class, float(array[0, predicted_class])


def _classification_pair(live: np.ndarray | None, shadow: np.ndarray | None) -> PairComparison:
    live_class, live_score = _classification_summary(live)
    shadow_class, _ = _classification_summary(shadow)
    score_diff = None
    if live_class is not None and shadow is not None and shadow.shape == live.shape:
        # How much more (or less) the shadow believes the class live answered.
        score_diff = float(shadow[0, live_class]) - live_score
    agree = None if live_class is None or shadow_class is None else live_class == shadow_class
    return PairComparison(live_class, shadow_class, score_diff, agree)


CLASSIFICATION = TaskRule()


def task_rules(versions: Iterable[Any]) -> dict[str, TaskRule]:
    """Each version config's rule, by version name."""
    return {version.name: TaskRule.of(version) for version in versions}
