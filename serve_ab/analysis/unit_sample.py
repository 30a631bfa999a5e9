"""Distinct units per version for the sample-ratio check, in bounded memory.

The sample-ratio check compares *units* (users) per version with the weights; counting
requests instead flags healthy experiments whenever users send different numbers of
requests. Exact distinct counts need memory that grows with the users, and an HLL estimate
(~1% error at any size) is far noisier than the chi-square's own sampling error past a few
ten thousand users, so its test would flag healthy splits.

This keeps a *uniform random sample of units* instead (a bottom-k / theta sketch, as in
Apache DataSketches' Theta sketches): a unit is kept when a second, independent hash of it
falls below a threshold theta, and theta halves whenever the sample grows past
``max_units``. Whether a unit is kept does not depend on its version, so the kept counts
per version are a multinomial sample of the same split, and the chi-square test on them is
exact, only with fewer units. Estimates of the totals are ``kept / theta``. Samples merge
(take the smaller theta, keep what lies below it).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MAX_SAMPLED_UNITS", "UnitSample"]

MAX_SAMPLED_UNITS = 100_000
_FULL = 1 << 64
_MASK = _FULL - 1


def _mix(unit: int) -> int:
    """SplitMix64's finaliser: a second hash, independent of ``unit % buckets``."""
    z = (unit + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _mix_many(units: np.ndarray) -> np.ndarray:
    """:func:`_mix` of every unit of a uint64 array (arithmetic modulo 2**64, as there)."""
    with np.errstate(over="ignore"):
        z = units + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


@dataclass
class UnitSample:
    """A uniform sample of distinct units, per version."""

    max_units: int = MAX_SAMPLED_UNITS
    theta: int = _FULL  # keep units whose mixed hash is below this
    units: dict[str, set[int]] = field(default_factory=dict)
    keyless: dict[str, int] = field(default_factory=dict)  # keyless requests: each its own unit

    def add(self, version: str, unit: int | None) -> None:
        if unit is None:
            self.keyless[version] = self.keyless.get(version, 0) + 1
            return
        if _mix(unit) >= self.theta:
            return
        kept = self.units.setdefault(version, set())
        if unit in kept:
            return
        kept.add(unit)
        if self.size() > self.max_units:
            self._halve()

    def add_many(self, version: str, units: list[int], keyless: int = 0) -> None:
        """What :meth:`add` of each unit (and of ``keyless`` keyless requests) leaves. The
        sample is the same whatever the order: a unit is kept when it lies below the final
        theta, and theta halves until the kept units fit, so adding them all and then halving
        ends where halving on the way does."""
        if keyless:
            self.keyless[version] = self.keyless.get(version, 0) + keyless
        if not units:
            return
        below = _mix_many(np.array(units, dtype=np.uint64)) < np.uint64(self.theta) if self.theta < _FULL else None
        fresh = units if below is None else [u for u, keep in zip(units, below.tolist()) if keep]
        if not fresh:
            return
        self.units.setdefault(version, set()).update(fresh)
        if self.size() > self.max_units:
            self._halve()

    def size(self) -> int:
        return sum(len(s) for s in self.units.values())

    def _halve(self) -> None:
        while self.size() > self.max_units:
            self.theta //= 2
            for version, kept in self.units.items():
                self.units[version] = {u for u in kept if _mix(u) < self.theta}

    @property
    def fraction(self) -> float:
        """The share of units kept: estimates are ``kept / fraction``."""
        return self.theta / _FULL

    def kept(self, versions: Iterable[str]) -> dict[str, int]:
        return {v: len(self.units.get(v, ())) for v in versions}

    def estimates(self, versions: Iterable[str]) -> dict[str, int]:
        """Distinct keyed units per version (estimated once sampling started) plus keyless ones."""
        f = self.fraction
        return {v: round(len(self.units.get(v, ())) / f) + self.keyless.get(v, 0) for v in versions}

    def merge(self, other: UnitSample) -> None:
        """Add another sample (a router's interval, a replica's run). The cost is the other
        sample's size; this one is re-filtered only when the other's theta is lower."""
        if other.theta < self.theta:
            self.theta = other.theta
            for version, kept in self.units.items():
                self.units[version] = {u for u in kept if _mix(u) < self.theta}
        for version, kept in other.units.items():
            mine = self.units.setdefault(version, set())
            if other.theta > self.theta:
                mine.update(u for u in kept if _mix(u) < self.theta)
            else:
                mine.update(kept)
        for version, n in other.keyless.items():
            self.keyless[version] = self.keyless.get(version, 0) + n
        self._halve()

    def to_dict(self) -> dict[str, Any]:
        # Sorted in numpy (the same bytes as sorted() gave): a save took ~25 ms of the controller's
        # loop for a sample of 75,000 units in Python's sort, ~4 ms so.
        return {"theta": str(self.theta), "max_units": self.max_units, "keyless": dict(self.keyless),
                "units": {v: base64.b64encode(np.sort(np.fromiter(s, dtype=np.uint64, count=len(s)))
                                              .astype(">u8").tobytes()).decode()
                          for v, s in self.units.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], max_units: int | None = None) -> UnitSample:
        max_units = max_units or int(data.get("max_units", MAX_SAMPLED_UNITS))
        out = cls(max_units=max_units, theta=int(data.get("theta", _FULL)),
                  keyless={v: int(n) for v, n in (data.get("keyless") or {}).items()})
        for version, packed in (data.get("units") or {}).items():
            raw = np.frombuffer(base64.b64decode(packed), dtype=">u8")
            out.units[version] = {int(u) for u in raw}
        return out
