"""Routers' interval reports built from rows, for controller tests that script traffic.

A test writes what a router served row by row (:class:`ServedRequest`, :class:`ShadowPair`)
and :func:`report_of` folds the rows into the :class:`IntervalReport` a router would send,
through the same :class:`IntervalAggregate` the router's request path uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from serve_ab.analysis.aggregate import IntervalAggregate
from serve_ab.serving.core.messages import IntervalReport


class ServedRequest(NamedTuple):
    t_s: float  # ignored: the controller stamps a report when it arrives
    version: str
    latency_ms: float
    error_kind: str | None
    predicted_class: int | None
    score: float | None
    request_id: str | None
    unit: int | None
    assigned: bool
    mirrored: bool
    pinned: bool = False
    split: int = -1


class ShadowPair(NamedTuple):
    t_s: float
    live_version: str
    shadow_version: str
    live_class: int | None
    shadow_class: int | None
    score_diff: float | None
    shadow_latency_ms: float
    error_kind: str | None
    unit: int | None = None  # the request's user (None: keyless)


def report_of(rows: Iterable[ServedRequest] = (), pairs: Iterable[ShadowPair] = (), *,
              weights: Mapping[int, Mapping[str, float]] | Mapping[str, float] | None = None,
              core=None, keep_request_ids: bool = True, router: str = "router-1",
              failed_versions: Mapping[str, str] | None = None) -> IntervalReport:
    """The report of a router that served ``rows`` and ``pairs``. Each row's split is filed
    under the weights its epoch routed by: ``weights`` (one mapping for every epoch, or one
    per epoch), else the controller ``core``'s weights of that epoch (its weights now when
    it never published it)."""
    aggregate = IntervalAggregate()
    for row in rows:
        if weights is not None and weights and isinstance(next(iter(weights)), int):
            split_weights = weights.get(row.split)
        elif weights is not None:
            split_weights = weights
        elif core is not None:
            split_weights = core._epoch_weights.get(row.split) or core.weights()
        else:
            split_weights = None
        aggregate.served(row.version, row.latency_ms, row.error_kind, row.predicted_class, row.score,
                         unit=row.unit, assigned=row.assigned, mirrored=row.mirrored, split=row.split,
                         weights_pct=split_weights, request_id=row.request_id,
                         keep_request_id=keep_request_ids)
    for pair in pairs:
        aggregate.pair(pair.live_version, pair.shadow_version, pair.live_class, pair.shadow_class,
                       pair.score_diff, pair.shadow_latency_ms, pair.error_kind, unit=pair.unit)
    return IntervalReport(router, aggregate, failed_versions=dict(failed_versions or {}))
