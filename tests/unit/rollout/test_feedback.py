"""Feedback joined to the version that served it: one report per request and metric."""

from __future__ import annotations

import pytest

from serve_ab.errors import Conflict
from serve_ab.rollout.feedback import FeedbackJoin


def test_a_proven_version_counts_at_once_and_a_replay_is_refused_and_counted():
    emitted, duplicates = [], []
    join = FeedbackJoin(on_emit=lambda *args: emitted.append(args), on_duplicate=lambda: duplicates.append(1),
                        request_ttl_s=100.0)
    # As a token-proven report keys it: the request id and the answer's nonce.
    assert join.add("r1#149ecc095e5c", "correct", None, True, 10.0, version="v2") == "v2"
    for _ in range(50):  # 50 "false" reports on one request must not move anything
        with pytest.raises(Conflict) as refused:
            join.add("r1#149ecc095e5c", "correct", None, False, 11.0, version="v2")
        # Says which metric, never the nonce the client did not send.
        assert str(refused.value) == ("feedback 'correct' for this request was reported already; "
                                      "each request takes one report per metric")
    assert [e[:4] for e in emitted] == [("v2", "correct", None, True)] and len(duplicates) == 50
    assert join.add("r1#149ecc095e5c", "revenue", 3.0, None, 12.0, version="v2") == "v2"  # another metric is fine


def test_replays_are_remembered_for_the_token_lifetime_only():
    join = FeedbackJoin(request_ttl_s=100.0)
    join.add("r1", "correct", None, True, 0.0, version="v1")
    with pytest.raises(Conflict):
        join.add("r1", "correct", None, True, 99.0, version="v1")
    assert join.add("r1", "correct", None, True, 101.0, version="v1") == "v1"  # its token expired long ago
    assert join.counts()["reported"] == 1


def test_by_request_id_the_feedback_waits_for_the_report_and_is_counted_once():
    emitted = []
    join = FeedbackJoin(on_emit=lambda *args: emitted.append(args))
    assert join.add("r1", "correct", None, True, 1.0) is None  # waits for the router's report
    with pytest.raises(Conflict):
        join.add("r1", "correct", None, True, 1.5)
    join.remember("r1", "v1", 2.0)
    assert [e[0] for e in emitted] == ["v1"]


def test_a_report_that_cannot_be_counted_is_not_remembered_so_a_mended_one_is_taken():
    """When counting fails (a value too large for the variance's sums), the request is not
    marked as reported: the client's corrected report is counted, not refused as a replay."""
    def count(version, name, value, converted, *rest):
        if value is not None and value > 1e200:
            raise ValueError("too large")
        emitted.append(value)
    emitted = []
    join = FeedbackJoin(on_emit=count)
    with pytest.raises(ValueError):
        join.add("r1", "revenue", 1e300, None, 1.0, version="v1")
    assert join.add("r1", "revenue", 12.5, None, 2.0, version="v1") == "v1"
    assert emitted == [12.5] and join.counts()["reported"] == 1
