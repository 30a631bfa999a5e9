"""Assignment of requests to versions: pure, no Ray.

``bucket = hash(salt, key) mod 10000`` and each version owns a contiguous range of
buckets, in the order the versions are listed. With the stable version listed first and
the candidate after it, raising the candidate's weight moves the boundary down, so users
only ever move from stable to candidate, never back and forth. The hash is BLAKE2b, the
same in every process and on every machine (Python's ``hash()`` is salted per process).
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass

NUM_BUCKETS = 10_000


def bucket_of(key: str, salt: str) -> int:
    """The bucket of ``key``; stable across processes, machines and Python versions."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, key=salt.encode()[:64]).digest()
    return int.from_bytes(digest, "big") % NUM_BUCKETS


@dataclass(frozen=True)
class SplitTable:
    """Versions in bucket order and the exclusive upper bucket bound of each."""

    versions: tuple[str, ...]
    upper_bounds: tuple[int, ...]

    @classmethod
    def from_weights(cls, weights_pct: Mapping[str, float]) -> SplitTable:
        """Build from percentages in listing order; they must sum to 100."""
        if not weights_pct:
            raise ValueError("weights are empty; give at least one version 100")
        total_pct = sum(weights_pct.values())
        if abs(total_pct - 100.0) > 1e-6:
            raise ValueError(f"weights sum to {total_pct:g}%; they must sum to 100 (got {dict(weights_pct)})")
        bounds = []
        cumulative_pct = 0.0
        for name, weight_pct in weights_pct.items():
            if weight_pct < 0:
                raise ValueError(f"weight of {name!r} is {weight_pct}; weights must be >= 0")
            cumulative_pct += weight_pct
            # Rounding the running sum, not each weight, keeps the last bound at NUM_BUCKETS.
            bounds.append(round(cumulative_pct * NUM_BUCKETS / 100.0))
        bounds[-1] = NUM_BUCKETS
        return cls(tuple(weights_pct), tuple(bounds))

    def version_for_bucket(self, bucket: int) -> str:
        # bisect_right skips versions of weight 0, whose range is empty.
        return self.versions[bisect.bisect_right(self.upper_bounds, bucket)]

    def ranges(self) -> dict[str, tuple[int, int]]:
        """``{version: (first_bucket, end_bucket)}``, end exclusive."""
        lows = (0, *self.upper_bounds[:-1])
        return {v: (lo, hi) for v, lo, hi in zip(self.versions, lows, self.upper_bounds)}

    def weights_pct(self) -> dict[str, float]:
        return {v: (hi - lo) * 100.0 / NUM_BUCKETS for v, (lo, hi) in self.ranges().items()}


class Assigner:
    """Picks the version for a request: by key when there is one, at random otherwise."""

    def __init__(self, weights_pct: Mapping[str, float], salt: str, rng: random.Random | None = None):
        self.salt = salt
        # The salt's keyed state, copied per key: the same digest as keying a new hash each
        # time (bucket_of), without setting the key up again.
        self._keyed = hashlib.blake2b(digest_size=8, key=salt.encode()[:64])
        self._rng = rng or random.Random()
        self.table = SplitTable.from_weights(weights_pct)

    def set_weights(self, weights_pct: Mapping[str, float]) -> None:
        # One attribute store: a request sees either the old table or the new one.
        self.table = SplitTable.from_weights(weights_pct)

    def assign(self, key: str | None) -> str:
        return self.assign_unit(key)[0]

    def assign_unit(self, key: str | None) -> tuple[str, int | None]:
        """The version, and the key's 64-bit hash (None without a key): the same in every
        router process, so the report can count distinct users per version."""
        if key is None:
            return self.table.version_for_bucket(self._rng.randrange(NUM_BUCKETS)), None
        hashed = self._keyed.copy()
        hashed.update(key.encode())
        unit = int.from_bytes(hashed.digest(), "big")
        return self.table.version_for_bucket(unit % NUM_BUCKETS), unit
