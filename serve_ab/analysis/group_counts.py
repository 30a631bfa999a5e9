"""Counts by (group of users, value), as two sorted arrays: predicted classes or score bins.

A gate's class and score design effects (:mod:`serve_ab.analysis.clusters`) need each group
of users' counts per class (or per score bin). Those counts were a ``Counter`` keyed by
``(group, value)`` tuples. With 10 classes and 129 groups that is 1,290 tuples in every
router's report, and the controller merged each report into the gates' windows key by key
(about 0.23 ms a merge, two windows and two versions per report). As two arrays, a merge of
the same pairs is one vector add, and a report unpickles without building a Python object
per pair.

A pair ``(group, value)`` is stored as the integer ``value * rows + group``, with ``rows``
the number of groups (keyless requests' row included). Values are class indices or score
bins: small and never negative, so a key stays far from int64's limits.

Example::

    counts = GroupCounts(rows=129)
    counts.add(np.array([0, 0, 5]), np.array([3, 3, 1]))   # groups, classes
    values, table = counts.table()                          # values [1, 3]; table[0] = [0, 2]
"""

from __future__ import annotations

import collections
from collections.abc import Mapping

import numpy as np

from serve_ab.analysis.wire import narrow

__all__ = ["GroupCounts"]


class GroupCounts:
    """How many requests of each group of users had each value."""

    def __init__(self, rows: int) -> None:
        """``rows``: how many groups there are (clusters' NUM_GROUPS, and the keyless row)."""
        self.rows = rows
        self._keys = np.zeros(0, dtype=np.int64)  # sorted, distinct
        self._counts = np.zeros(0, dtype=np.int64)

    def add(self, groups: np.ndarray, values: np.ndarray) -> None:
        """One request of ``groups[i]`` with ``values[i]``, for each i."""
        if groups.size:
            keys, counts = np.unique(values.astype(np.int64) * self.rows + groups, return_counts=True)
            self._fold(keys, counts)

    def merge(self, other: GroupCounts) -> None:
        self._fold(other._keys, other._counts)

    def table(self, keep: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The values seen (sorted; with ``keep``, only those in ``[0, keep)``), and a
        ``rows x len(values)`` table of each group's count of each."""
        groups = self._keys % self.rows
        values = self._keys // self.rows
        if keep is not None:
            inside = (values >= 0) & (values < keep)
            groups, values, counts = groups[inside], values[inside], self._counts[inside]
        else:
            counts = self._counts
        seen, column = np.unique(values, return_inverse=True)
        table = np.zeros((self.rows, seen.size), dtype=np.int64)
        table[groups, column] = counts  # each (group, value) pair appears once
        return seen, table

    def total(self) -> int:
        return int(self._counts.sum())

    def as_dict(self) -> dict[tuple[int, int], int]:
        """``{(group, value): count}``, for tests and reading."""
        groups, values = self._keys % self.rows, self._keys // self.rows
        return {(int(g), int(v)): int(c) for g, v, c in zip(groups, values, self._counts)}

    def __bool__(self) -> bool:
        return bool(self._keys.size)

    def __len__(self) -> int:
        return int(self._keys.size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GroupCounts):
            return NotImplemented
        return (self.rows == other.rows and np.array_equal(self._keys, other._keys)
                and np.array_equal(self._counts, other._counts))

    def _fold(self, keys: np.ndarray, counts: np.ndarray) -> None:
        """Add ``counts`` of the sorted, distinct ``keys``."""
        if not keys.size:
            return
        if not self._keys.size:
            self._keys, self._counts = keys.astype(np.int64), counts.astype(np.int64)
            return
        # Reports of one version mostly hold the same pairs: then a vector add does.
        at = np.searchsorted(self._keys, keys)
        if at[-1] < self._keys.size and np.array_equal(self._keys[at], keys):
            self._counts[at] += counts  # keys are distinct: a plain fancy add is exact
            return
        merged, inverse = np.unique(np.concatenate([self._keys, keys.astype(np.int64)]), return_inverse=True)
        summed = np.zeros(merged.size, dtype=np.int64)
        np.add.at(summed, inverse, np.concatenate([self._counts, counts.astype(np.int64)]))
        self._keys, self._counts = merged, summed

    # -- pickles (routers' reports) ---------------------------------------------------------------

    def to_state(self) -> dict:
        """Narrowed arrays (:mod:`serve_ab.analysis.wire`): a few bytes a pair."""
        return {"keys": narrow(self._keys), "counts": narrow(self._counts)}

    @classmethod
    def from_state(cls, rows: int, state: Mapping) -> GroupCounts:
        out = cls(rows)
        keys = np.asarray(state["keys"]).astype(np.int64)
        counts = np.asarray(state["counts"]).astype(np.int64)
        if keys.shape != counts.shape or keys.ndim != 1:
            raise ValueError(f"group counts: {keys.shape} keys but {counts.shape} counts")
        if keys.size > 1 and not (np.diff(keys) > 0).all():
            raise ValueError("group counts: keys not sorted and distinct")
        out._keys, out._counts = keys, counts
        return out

    @classmethod
    def from_counter(cls, rows: int, counter: collections.Counter) -> GroupCounts:
        """From ``{(group, value): count}``: what a router of an older release sent."""
        out = cls(rows)
        if counter:
            pairs = np.array(list(counter), dtype=np.int64).reshape(-1, 2)
            keys = pairs[:, 1] * rows + pairs[:, 0]  # distinct, as the pairs are
            order = np.argsort(keys)
            out._fold(keys[order], np.array(list(counter.values()), dtype=np.int64)[order])
        return out
