"""A failure that comes back every round while its cause lasts, said once, not every round.

The controller's loops retry each round: a report refreshed every 5 s, a claim written every
few seconds. While the store is away or the report cannot be built, each round fails alike,
and a line a round (with a traceback) buries the one that said what went wrong. A spell is
said when it starts, once more for each new way it fails (a connection refused, then a
timeout: a store flapping between two is said twice, not at every switch), and when it ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["FailingSpell"]


@dataclass
class FailingSpell:
    kinds: set[str] = field(default_factory=set)  # the error classes said during this spell

    def failed(self, err: BaseException) -> bool:
        """Note a failure; True where its class is new in the spell, and the caller says it."""
        kind = type(err).__name__
        new = kind not in self.kinds
        self.kinds.add(kind)
        return new

    def worked(self) -> bool:
        """Note a round that worked; True where it ends a spell, and the caller says so."""
        ended = bool(self.kinds)
        self.kinds.clear()
        return ended
