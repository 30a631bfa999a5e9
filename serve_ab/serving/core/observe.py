"""What a router served, folded into this interval's aggregate until the next flush.

Every answer is held as it is served and folded, with up to ``FOLD_ROWS`` others, summarised
(latency, class, score) and as arrays, into an :class:`~serve_ab.analysis.aggregate.IntervalAggregate`
(counts, sketches, per-bucket sums): memory and the message to the controller are the same
size at ten requests a second or ten thousand, and nothing is ever dropped. A report the
controller did not take is kept and sent again (:mod:`serve_ab.serving.core.ledger`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from serve_ab.analysis.aggregate import IntervalAggregate
from serve_ab.analysis.tasks import CLASSIFICATION, TaskRule

logger = logging.getLogger("ray.serve")

# Routing epochs whose weights a router remembers: rows are folded before any epoch is
# added (routed_by), so only the last few are ever asked for.
MAX_EPOCHS = 16
# Answers held before they are folded into the aggregate, all at once and as arrays
# (IntervalAggregate.served_rows): about 4 us an answer in all against 10 us folding each
# by itself (in a loop, 2026-12-03), and 2.5-3.4 us less per request in the router's app
# (benchmarks/bench_request_path.py, old and new code taking turns). A held row is a small
# tuple: the answer's outputs, summarised (class, score) at the fold (aggregate.ROW_FIELDS).
# 256 bounds the request that folds: about 0.4 ms for the lot.
FOLD_ROWS = 256
# An answer's outputs up to this size are held with its row and summarised (class, score)
# when the rows are folded, all in one loop: summarising each as it was served cost a
# request about 50 us in a replica, whose caches the other processes empty between two
# requests (benchmarks/README.md, tenth round), against a few in a loop. Larger outputs
# (and several outputs by name) are summarised at once, so held rows keep at most
# FOLD_ROWS x this alive (with dynamic batching, an answer is a view of its batch's outputs,
# which it keeps: at most max_batch_size times more).
HELD_OUTPUT_BYTES = 4096


class Summarised(NamedTuple):
    """An answer's outputs already summarised when it was served (too large to hold)."""

    predicted_class: int | None
    score: float | None


def _summary(task: TaskRule, outputs: Any) -> tuple[int | None, float | None]:
    """``task``'s summary of an answer; one it cannot summarise counts without a class or
    score rather than failing its request, or the fold, which would lose the rows held with it."""
    try:
        return task.summary(outputs)
    except Exception:
        logger.exception("serve-ab router: could not summarise an answer's outputs; counted without them")
        return None, None


class ObservationBuffer:
    """This interval's aggregate of served requests and shadow pairs.

    ``clock`` measures latencies (seconds). ``keep_request_ids``: also list assigned
    answers' request ids, for feedback sent without tokens (``feedback.require_token:
    false``), which the controller joins by request id. Splits are named by the weights
    their epoch routed by (:meth:`routed_by`), so the controller files a report under the
    right split whatever epochs it has heard of. ``tasks``: each version's
    :class:`~serve_ab.analysis.tasks.TaskRule` (what its answers mean); a version not named
    is a classifier.
    """

    def __init__(self, clock: Callable[[], float], keep_request_ids: bool = False,
                 tasks: Mapping[str, TaskRule] | None = None):
        self.clock = clock
        self.tasks = dict(tasks or {})
        self.keep_request_ids = keep_request_ids
        self._weights: dict[int, dict[str, float]] = {}
        self._current = IntervalAggregate()
        self._rows: list[tuple] = []  # answers not yet folded into _current (served)

    def routed_by(self, epoch: int, weights_pct: Mapping[str, float]) -> None:
        """The weights requests decided under ``epoch`` were routed by."""
        self._fold()  # the held rows' epochs are all remembered still
        self._weights[epoch] = dict(weights_pct)
        while len(self._weights) > MAX_EPOCHS:
            self._weights.pop(next(iter(self._weights)))

    def served(self, version: str, started_s: float, error_kind: str | None,
               outputs: Any, *, request_id: str | None, unit: int | None = None,
               assigned: bool = False, mirrored: bool = False, pinned: bool = False, split: int = -1,
               retry: bool = False) -> None:
        """One answer or failure. ``assigned``: routed by the split (it enters the A/B figures
        and gates); ``mirrored``: a copy the client never saw (gates only); neither: pinned
        or a fallback retry (``retry``: counted, in no comparison)."""
        if retry:  # the request is counted under the version that failed it too
            self._current.retried(version)
        latency_ms = (self.clock() - started_s) * 1000.0
        # Held: a plain numeric array, small. Objects (BYTES) are summarised at once: their
        # nbytes counts pointers, not the strings they hold, and they summarise to nothing.
        if outputs is not None and (type(outputs) is not np.ndarray or outputs.nbytes > HELD_OUTPUT_BYTES
                                    or outputs.dtype.kind not in "biuf"):
            outputs = Summarised(*_summary(self.tasks.get(version, CLASSIFICATION), outputs))
        self._rows.append((version, latency_ms, error_kind, outputs, unit, assigned, mirrored, split, request_id))
        if len(self._rows) >= FOLD_ROWS:
            self._fold()

    def _fold(self) -> None:
        """Fold the held answers into the aggregate, in the order they were served."""
        if self._rows:
            rows, self._rows = self._rows, []
            tasks = self.tasks
            self._current.served_rows(
                [(version, latency_ms, error_kind,
                  *(outputs if type(outputs) is Summarised else _summary(tasks.get(version, CLASSIFICATION), outputs)),
                  unit, assigned, mirrored, split, request_id)
                 for version, latency_ms, error_kind, outputs, unit, assigned, mirrored, split, request_id in rows],
                self._weights, self.keep_request_ids)

    def pair(self, live_version: str, shadow_version: str, live_outputs: Any,
             outputs: Any, started_s: float, error_kind: str | None, unit: int | None = None) -> None:
        """The live and the mirrored answer to the same request of ``unit`` (None: keyless),
        for the paired comparison (by the shadow's task: the versions of one experiment share it)."""
        compared = self.tasks.get(shadow_version, CLASSIFICATION).compare(live_outputs, outputs)
        self._current.pair(live_version, shadow_version, compared.live_class, compared.shadow_class,
                           compared.score_diff, (self.clock() - started_s) * 1000.0, error_kind,
                           comparison=compared, unit=unit)

    def dropped(self, shadow_version: str) -> None:
        """A copy to ``shadow_version`` not sent: the router had too many waiting (mirror.py)."""
        self._current.dropped(shadow_version)

    def drain(self) -> IntervalAggregate | None:
        """This interval's aggregate, or None when nothing was served; a new interval starts."""
        self._fold()
        if not self._current:
            return None
        aggregate, self._current = self._current, self._current.next_interval()
        return aggregate

    def __len__(self) -> int:
        """Requests and copies served since the last drain."""
        return self._current.rows + len(self._rows)
