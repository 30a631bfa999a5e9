"""What a router served, buffered until the next flush to the controller."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from serve_ab.serving.core.messages import Observations, ServedRequest, ShadowPair

# A bound keeps a router's memory flat while the controller is down or slow.
MAX_PENDING = 50_000


def first_row(outputs: np.ndarray | None) -> tuple[int | None, float | None]:
    """The predicted class and its score of a request's first instance (classifiers)."""
    if outputs is None or outputs.ndim != 2 or not len(outputs):
        return None, None
    predicted_class = int(outputs[0].argmax())
    return predicted_class, float(outputs[0, predicted_class])


class ObservationBuffer:
    """Rows of served requests and shadow pairs; :meth:`drain` hands them over in one message.

    ``clock`` gives wall-clock seconds (the controller compares rows of many routers).
    Past ``max_pending`` rows new ones are dropped and counted in :attr:`dropped`.
    """

    def __init__(self, clock: Callable[[], float], max_pending: int = MAX_PENDING):
        self.clock = clock
        self.max_pending = max_pending
        self.dropped = 0
        self._served: list[ServedRequest] = []
        self._pairs: list[ShadowPair] = []

    def served(self, version: str, started_s: float, error_kind: str | None,
               outputs: np.ndarray | None, *, request_id: str | None, unit: int | None = None,
               assigned: bool = False, mirrored: bool = False, pinned: bool = False, split: int = -1) -> None:
        if len(self._served) >= self.max_pending:
            self.dropped += 1
            return
        predicted_class, score = first_row(outputs)
        now_s = self.clock()
        self._served.append(ServedRequest(now_s, version, (now_s - started_s) * 1000.0, error_kind,
                                          predicted_class, score, request_id, unit, assigned, mirrored,
                                          pinned, split))

    def pair(self, live_version: str, shadow_version: str, live_outputs: np.ndarray,
             outputs: np.ndarray | None, started_s: float, error_kind: str | None) -> None:
        """The live and the mirrored answer to the same request, for the paired comparison."""
        if len(self._pairs) >= self.max_pending:
            self.dropped += 1
            return
        now_s = self.clock()
        live_class, live_score = first_row(live_outputs)
        shadow_class, _ = first_row(outputs)
        score_diff = None
        if live_class is not None and outputs is not None and outputs.shape == live_outputs.shape:
            # How much more (or less) the shadow believes the class live answered.
            score_diff = float(outputs[0, live_class]) - live_score
        self._pairs.append(ShadowPair(now_s, live_version, shadow_version, live_class, shadow_class,
                                      score_diff, (now_s - started_s) * 1000.0, error_kind))

    def drain(self) -> Observations | None:
        """Everything buffered since the last drain, or None when there is nothing."""
        if not self._served and not self._pairs:
            return None
        batch = Observations(self._served, self._pairs)
        self._served, self._pairs = [], []
        return batch

    def __len__(self) -> int:
        return len(self._served) + len(self._pairs)
