"""What keeps failing round after round, logged as a spell, not each round.

A promql gate asks Prometheus every half analysis interval, a webhook gate its endpoint
likewise, a confirm step its hook every ``interval_s``; the controller refreshes its report
every 5 s and writes its claim every few seconds. While Prometheus, an endpoint or the store
is away every round fails alike: a warning each time was two lines every 5 s for two gates,
some 1,400 an hour (a traceback every 5 s for the report), and none said when it came back.

A :class:`FailingSpell` says whether a failure is worth a line: its error (a message, or an
exception's class) not yet said since the last round that worked. A store or Prometheus
restarting flaps between a refused connection and a timeout or a 503: two lines, not one at
every switch. :class:`FailureLog` logs polled answers by name with it: when one starts
failing or fails a new way, again every :data:`REPEAT_LOG_S` while it lasts (with how many
asks failed), and once when it answers again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

__all__ = ["REPEAT_LOG_S", "FailingSpell", "FailureLog"]

logger = logging.getLogger("ray.serve")

#: While an answer keeps failing with the same error, how often it is logged again.
REPEAT_LOG_S = 300.0


@dataclass
class FailingSpell:
    said: set[str] = field(default_factory=set)  # the errors said since the last round that worked

    def failed(self, error: str) -> bool:
        """Note a failure with ``error`` (a message, or an exception's class name); True where
        it is new in the spell, and the caller says it."""
        new = error not in self.said
        self.said.add(error)
        return new

    def worked(self) -> bool:
        """Note a round that worked; True where it ends a spell, and the caller says so."""
        ended = bool(self.said)
        self.said.clear()
        return ended


@dataclass
class _Failing:
    """An answer that fails: the error, since when, when last logged, asks failed."""

    error: str
    since_s: float
    logged_at_s: float
    count: int = 1
    spell: FailingSpell = field(default_factory=FailingSpell)


class FailureLog:
    """``what``: the kind of thing asked, as the log names it ("promql gate"); ``meanwhile``:
    what its failure does, said in the first line ("the gate is inconclusive and holds the
    rollout"); ``failed``: the verb of a failure ("query failed")."""

    def __init__(self, what: str, meanwhile: str, failed: str = "failed", repeat_log_s: float = REPEAT_LOG_S):
        self.what = what
        self.meanwhile = meanwhile
        self.failed = failed
        self.repeat_log_s = repeat_log_s
        self._failing: dict[str, _Failing] = {}  # by name, while its asks fail

    def note(self, name: str, error: str | None, now_s: float, detail: str = "") -> None:
        """The latest answer for ``name`` (``error`` None: it answered) at ``now_s``, by the
        poller's clock; ``detail`` follows the error in a failure's lines (e.g. the query)."""
        failing = self._failing.get(name)
        if error is None:
            if failing is not None:
                del self._failing[name]
                logger.info("serve-ab %s %s answers again, after %s of failures (%d asks)",
                            self.what, name, _secs(now_s - failing.since_s), failing.count)
            return
        if failing is None:
            failing = self._failing[name] = _Failing(error, now_s, now_s)
            new = failing.spell.failed(error)
        else:
            new = failing.spell.failed(error)
            failing.error, failing.count = error, failing.count + 1
        if new:  # the spell's start, or a new error in it: its start and count go on
            failing.logged_at_s = now_s
            logger.warning("serve-ab %s %s: %s: %s%s (%s; logged again every %s while it lasts)",
                           self.what, name, self.failed, error, detail, self.meanwhile, _secs(self.repeat_log_s))
        elif now_s - failing.logged_at_s >= self.repeat_log_s:
            failing.logged_at_s = now_s
            logger.warning("serve-ab %s %s: still failing after %s (%d asks): %s%s", self.what, name,
                           _secs(now_s - failing.since_s), failing.count, error, detail)


def _secs(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
