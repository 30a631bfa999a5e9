"""Answers polled in the background that keep failing, logged as a spell, not each time.

A promql gate asks Prometheus every half analysis interval, a webhook gate its endpoint
likewise, a confirm step its hook every ``interval_s``. While Prometheus or an endpoint is
away every ask fails alike: a warning each time was two lines every 5 s for two gates, some
1,400 an hour, and none said when it came back. Each polled answer (by name) is logged when
it starts failing or its error changes, again every :data:`REPEAT_LOG_S` while it lasts (with
how many asks failed), and once when it answers again; an error said once in a spell is
not said again at each switch (as serving/failing_spell.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

__all__ = ["REPEAT_LOG_S", "FailureLog"]

logger = logging.getLogger("ray.serve")

#: While an answer keeps failing with the same error, how often it is logged again.
REPEAT_LOG_S = 300.0


@dataclass
class _Failing:
    """An answer that fails: the error, since when, when last logged, asks failed."""

    error: str
    since_s: float
    logged_at_s: float
    count: int = 1
    said: set[str] = field(default_factory=set)  # the errors logged in this spell


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
        # A new error is logged, one said already in this spell is not: Prometheus restarting
        # flaps between a refused connection and a 503, which was a line at every switch.
        if failing is None or error not in failing.said:
            if failing is None:
                failing = self._failing[name] = _Failing(error, now_s, now_s)
            else:  # another error, same spell: its start and count go on
                failing.error, failing.logged_at_s, failing.count = error, now_s, failing.count + 1
            failing.said.add(error)
            logger.warning("serve-ab %s %s: %s: %s%s (%s; logged again every %s while it lasts)",
                           self.what, name, self.failed, error, detail, self.meanwhile, _secs(self.repeat_log_s))
            return
        failing.error = error
        failing.count += 1
        if now_s - failing.logged_at_s >= self.repeat_log_s:
            failing.logged_at_s = now_s
            logger.warning("serve-ab %s %s: still failing after %s (%d asks): %s%s", self.what, name,
                           _secs(now_s - failing.since_s), failing.count, error, detail)

    def forget(self, name: str) -> None:
        """``name`` is asked no more (a confirm step passed): no recovery to say."""
        self._failing.pop(name, None)


def _secs(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
