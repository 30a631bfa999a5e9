"""Feedback joined to the version that served it: one report per request and metric."""

from __future__ import annotations

import pytest

from serve_ab.errors import Conflict, Forbidden
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


def test_a_replay_of_an_answer_older_than_the_reports_remembered_is_refused_not_counted_again():
    """Reports are remembered up to max_requests (500,000): beyond about 140 a second, the
    oldest go before their tokens expire (an hour). A replay of a forgotten one was counted
    a second time; the answer's time, from its token, now tells it is too old to be checked."""
    emitted = []
    join = FeedbackJoin(on_emit=lambda *args: emitted.append(args), max_requests=1000, request_ttl_s=3600.0)
    for i in range(1001):  # 10 s of reports at 100 a second: the first is forgotten
        join.add(f"answer-{i}#n", "correct", None, True, i / 100, version="v2", answered_after_s=i / 100 - 1)
    with pytest.raises(Forbidden, match="can no longer be checked for a repeat: more than 1000 reports"):
        join.add("answer-0#n", "correct", None, True, 10.5, version="v2", answered_after_s=-1.0)
    assert len(emitted) == 1001
    # A remembered one is still a repeat (409), and answers given after the forgotten reports count.
    with pytest.raises(Conflict):
        join.add("answer-1000#n", "correct", None, True, 10.6, version="v2", answered_after_s=9.0)
    assert join.add("answer-1001#n", "correct", None, True, 10.7, version="v2", answered_after_s=10.6) == "v2"
    assert len(emitted) == 1002


def test_reports_forgotten_when_restored_after_a_restart_refuse_older_answers_too():
    join = FeedbackJoin(max_requests=2, request_ttl_s=3600.0)
    join.restore_reported([(1, 5.0), (2, 6.0), (3, 7.0)])  # more than it keeps: the one of 5.0 goes
    with pytest.raises(Forbidden):
        join.add("old#n", "correct", None, True, 8.0, version="v1", answered_after_s=4.0)
    assert join.add("new#n", "correct", None, True, 8.0, version="v1", answered_after_s=5.5) == "v1"
