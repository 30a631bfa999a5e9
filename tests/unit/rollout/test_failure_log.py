"""FailureLog: answers polled in the background that keep failing are logged as a spell."""

from __future__ import annotations

import logging

from serve_ab.rollout.failure_log import FailingSpell, FailureLog

REFUSED = "cannot reach http://prometheus:9090/api/v1/query: ConnectError: [Errno 111] Connection refused"
UNAVAILABLE = "Prometheus answered HTTP 503: Service Unavailable"


def test_an_endpoint_flapping_between_two_errors_is_logged_once_for_each_not_at_every_switch(caplog):
    # Prometheus restarting answers a refused connection, then 503 while it loads its WAL, then
    # refused again...: each switch was a new warning, a line every refresh as before the spell
    # log. Each error is said once in a spell; the 5-minute line and the end still come.
    log = FailureLog("promql gate", "the gate is inconclusive and holds the rollout", "query failed")
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        for i in range(40):  # every 5 s: 200 s
            log.note("p95", REFUSED if i % 2 == 0 else UNAVAILABLE, 5.0 * i)
        log.note("p95", REFUSED, 310.0)  # still failing, 5 minutes after the last new error
        log.note("p95", None, 315.0)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == ["WARNING", "WARNING", "WARNING", "INFO"], lines
    assert REFUSED in lines[0][1] and UNAVAILABLE in lines[1][1]
    assert "still failing after 310s (41 asks)" in lines[2][1]
    assert "answers again, after 315s of failures (41 asks)" in lines[3][1]


def test_a_new_spell_says_its_first_error_again():
    log = FailureLog("webhook gate", "the gate is inconclusive and holds the rollout")
    log.note("smoke", REFUSED, 0.0)
    log.note("smoke", None, 5.0)
    log.note("smoke", REFUSED, 10.0)
    assert log._failing["smoke"].count == 1 and log._failing["smoke"].since_s == 10.0


def test_a_spell_is_said_at_its_start_at_each_new_error_and_at_its_end():
    # The controller's rounds (its report, its claim) by the error's class: a store flapping
    # between a refused connection and a timeout is two lines, not one at each of five switches.
    spell = FailingSpell()
    said = [spell.failed(kind) for kind in ("ConnectionError", "ConnectionError", "TimeoutError",
                                             "ConnectionError", "TimeoutError", "ConnectionError")]
    assert said == [True, False, True, False, False, False]
    assert spell.worked() is True  # the end of the spell is said
    assert spell.worked() is False  # a round that worked after one that worked: nothing to say
    assert spell.failed("ConnectionError") is True  # a new spell is said again
