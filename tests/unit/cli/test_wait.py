"""``serve-ab status --wait|--watch`` for CI: exit codes, progress lines, -o json|yaml, durations.

Against the fake control API of ``test_rollout.py`` on a local port, with a fake clock: no test
here sleeps for real.
"""

from __future__ import annotations

import io
import json

import pytest
import yaml

from serve_ab.api.status import RolloutStatus
from serve_ab.cli import rollout as cli_rollout
from serve_ab.cli.options import parse_duration_s
from serve_ab.cli.wait import UNREACHABLE_GRACE_S, wait_for_rollout
from tests.unit.cli.control_api import CANARY, STATIC, closed_port
from tests.unit.cli.control_api import main as _main, run as _run

PAUSED = {**CANARY, "phase": "paused", "step_index": 1, "steps_total": 3, "step": "pause",
          "weights_pct": {"v1": 80.0, "v2": 20.0}, "reason": "step 2/3: paused until promote",
          "next_step_in_s": None}
PROMOTED = {**CANARY, "phase": "promoted", "step_index": 3, "steps_total": 3, "step": None,
            "weights_pct": {"v1": 0.0, "v2": 100.0}, "reason": "promoted", "next_step_in_s": None}
ABORTED = {**CANARY, "phase": "aborted", "weights_pct": {"v1": 100.0, "v2": 0.0},
           "reason": "gate error_rate <= 0.01 failed: 0.05 > 0.01"}
STATUS = ("GET", "/rollout/status")


class FakeClock:
    """``clock()`` and ``sleep(s)``: sleeping only advances the clock; ``script`` maps the
    number of sleeps so far to the status the fake app answers from then on."""

    def __init__(self, app=None, script: dict | None = None):
        self.now, self.sleeps, self.app, self.script = 1000.0, [], app, script or {}

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds
        answer = self.script.get(len(self.sleeps))
        if answer is not None:
            self.app.responses[STATUS] = answer if isinstance(answer, tuple) else (200, answer)


@pytest.fixture
def clock(api, monkeypatch):
    fake = FakeClock(api)
    monkeypatch.setattr(cli_rollout, "_clock", fake)
    monkeypatch.setattr(cli_rollout, "_sleep", fake.sleep)
    return fake


# --- --wait: the exit codes a CI step branches on ------------------------------------------


def test_wait_times_out_with_3_while_the_canary_holds_at_a_pause(api, clock, capsys):
    api.responses[STATUS] = (200, PAUSED)
    code, out, err = _run(["status", "--wait", "--timeout", "3s"], capsys)
    assert code == 3
    assert clock.sleeps == [2.0, 1.0] and clock.now == 1003.0  # the last poll is at the deadline
    assert [r["path"] for r in api.requests] == ["/rollout/status"] * 3
    assert out.splitlines() == ["[0s] paused, step 2 of 3: pause, v1 80% v2 20% (step 2/3: paused until promote)"]
    assert "error: timed out after 3s waiting for the rollout to end; it is still paused, step 2 of 3" in err
    assert "waits for `serve-ab promote`" in err


def test_no_poll_waits_for_its_answer_past_the_waits_timeout(api, clock, capsys, monkeypatch):
    """An app slow to answer must not hold --timeout 3s for --request-timeout's 8 s."""
    api.responses[STATUS] = (200, PAUSED)
    sent, real_send = [], cli_rollout._send

    def send(*args, **kwargs):
        sent.append(kwargs["timeout_s"])
        return real_send(*args, **kwargs)

    monkeypatch.setattr(cli_rollout, "_send", send)
    code, _, _ = _run(["status", "--wait", "--timeout", "3s", "--request-timeout", "8s"], capsys)
    assert code == 3 and sent == [3.0, 1.0, cli_rollout.MIN_POLL_TIMEOUT_S]
    sent.clear()
    api.responses[STATUS] = (200, PROMOTED)  # without --timeout, a poll waits --request-timeout
    assert _run(["status", "--wait", "--request-timeout", "8s"], capsys)[0] == 0 and sent == [8.0]


def test_wait_exits_0_once_the_status_says_promoted(api, clock, capsys):
    api.responses[STATUS] = (200, PAUSED)
    clock.script = {2: {**PAUSED, "phase": "progressing", "step_index": 2, "step": "set weight 100"},
                    3: PROMOTED}
    code, out, err = _run(["status", "--wait", "--timeout", "10m", "--interval", "5s"], capsys)
    assert (code, err) == (0, "")
    assert clock.sleeps == [5.0, 5.0, 5.0]
    assert out.splitlines() == [
        "[0s] paused, step 2 of 3: pause, v1 80% v2 20% (step 2/3: paused until promote)",
        "[10s] progressing, step 3 of 3: set weight 100, v1 80% v2 20% (step 2/3: paused until promote)",
        "[15s] promoted, v1 0% v2 100% (promoted)",
        "promoted after 15s: promoted",
    ]


def test_wait_prints_a_line_per_change_not_per_poll(api, clock, capsys):
    # The reason counts down on every poll; only phase, step and weights make a new line.
    api.responses[STATUS] = (200, {**CANARY, "reason": "12 s left"})
    clock.script = {1: {**CANARY, "reason": "10 s left"}, 2: {**CANARY, "reason": "8 s left"}, 3: PROMOTED}
    code, out, _ = _run(["status", "--wait"], capsys)
    assert code == 0 and len(out.splitlines()) == 3


def test_wait_exits_1_on_aborted(api, clock, capsys):
    api.responses[STATUS] = (200, PAUSED)
    clock.script = {1: ABORTED}
    code, out, err = _run(["status", "--wait", "--timeout", "1h30m"], capsys)
    assert code == 1
    assert "[2s] aborted, at step 3 of 7 (pause 30s), v1 100% v2 0% (gate error_rate" in out  # where it ended
    assert err.strip() == "aborted after 2s: gate error_rate <= 0.01 failed: 0.05 > 0.01"


def test_wait_exits_4_at_once_when_nothing_listens(api, clock, capsys, monkeypatch):
    monkeypatch.setenv("SERVE_AB_URL", f"http://127.0.0.1:{closed_port()}")
    code, out, err = _run(["status", "--wait", "--timeout", "10m"], capsys)
    assert (code, out, clock.sleeps) == (4, "", [])
    assert "error: cannot reach http://127.0.0.1:" in err


def test_wait_on_a_protected_app_sends_the_token_with_every_poll(api, clock, capsys, monkeypatch):
    api.bearer = "viewer-token"
    monkeypatch.setenv("SERVE_AB_VIEWER_TOKEN", "viewer-token")
    api.responses[STATUS] = (200, PAUSED)
    clock.script = {2: PROMOTED}
    code, out, err = _run(["status", "--wait"], capsys)
    assert code == 0 and "promoted after" in out, err
    assert [r["authorization"] for r in api.requests] == ["Bearer viewer-token"] * 3


def test_wait_on_a_protected_app_without_a_token_ends_at_once_with_the_hint(api, clock, capsys):
    api.bearer = "viewer-token"
    code, out, err = _run(["status", "--wait", "--timeout", "10m"], capsys)
    assert (code, out, clock.sleeps) == (1, "", [])
    assert "error: 401" in err and "needs a viewer, QA or operator token" in err and "(no token was sent)" in err


def test_watch_of_a_protected_app_sends_the_token_option(api, clock, capsys):
    api.bearer = "viewer-token"
    api.responses[STATUS] = (200, PROMOTED)
    code, out, err = _run(["status", "--watch", "--token", "viewer-token"], capsys)
    assert code == 0 and "promoted" in out and "viewer-token" not in out + err
    assert api.requests[0]["authorization"] == "Bearer viewer-token"


def test_wait_json_prints_only_the_final_object(api, clock, capsys):
    api.responses[STATUS] = (200, PAUSED)
    clock.script = {1: PROMOTED}
    code, out, err = _run(["status", "--wait", "-o", "json"], capsys)
    assert (code, err) == (0, "") and json.loads(out) == PROMOTED
    api.responses[STATUS] = (200, PAUSED)
    code, out, err = _run(["status", "--wait", "--timeout", "3s", "-o", "yaml"], capsys)
    assert code == 3 and yaml.safe_load(out) == PAUSED and "timed out" in err


def test_wait_on_a_static_app_fails_at_once(api, clock, capsys):
    """Nothing will be promoted: exit 1, not the 0 of a promotion, so a CI job waiting on the
    wrong app (or one deployed without its rollout) fails."""
    api.responses[STATUS] = (200, STATIC)
    for flag in ("--wait", "--watch"):
        code, out, err = _run(["status", flag, "--timeout", "3s"], capsys)
        assert code == 1 and clock.sleeps == [] and "error: this app has no rollout" in err


def test_wait_goes_on_through_a_blue_green_switch_until_the_watch_is_done(api, clock, capsys):
    green = {**CANARY, "strategy": "blue_green", "stable": "blue", "candidate": "green", "step": None,
             "step_index": 0, "steps_total": 0, "weights_pct": {"blue": 0.0, "green": 100.0}}
    api.responses[STATUS] = (200, {**green, "phase": "switched", "reason": "post-switch watch: 30 s left"})
    clock.script = {3: {**green, "phase": "promoted", "reason": "post-switch watch of 30s passed"}}
    code, out, _ = _run(["status", "--wait"], capsys)
    assert code == 0 and len(clock.sleeps) == 3
    assert out.splitlines()[-1] == "promoted after 6s: post-switch watch of 30s passed"


def test_a_failed_poll_after_the_app_answered_is_retried(api, clock, capsys):
    api.responses[STATUS] = (200, PAUSED)
    clock.script = {1: (503, {"error": "proxy restarting"}), 2: PROMOTED}
    code, out, err = _run(["status", "--wait"], capsys)
    assert code == 0 and "[2s] error: 503 proxy restarting (retrying)" in err


def test_failed_polls_give_up_after_the_grace_with_their_code(api, clock, capsys):
    api.responses[STATUS] = (200, PAUSED)
    clock.script = {1: (503, {"error": "proxy restarting"})}
    code, _, err = _run(["status", "--wait", "--interval", "10s"], capsys)
    assert code == 1 and sum(clock.sleeps) == 10.0 + UNREACHABLE_GRACE_S
    assert "gave up after 60 s of failed polls" in err


def test_ctrl_c_exits_130(api, clock, capsys, monkeypatch):
    def interrupt(seconds):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli_rollout, "_sleep", interrupt)
    code, _, err = _run(["status", "--wait"], capsys)
    assert code == 130 and "interrupted" in err


def test_the_wait_loop_polls_at_the_interval_and_once_at_the_deadline():
    clock = FakeClock()
    polls = []

    def fetch():
        polls.append(clock())
        return RolloutStatus.model_validate(PAUSED)
    result = wait_for_rollout(fetch, timeout_s=5.0, interval_s=2.0, clock=clock, sleep=clock.sleep)
    assert result.code == 3 and result.status == RolloutStatus.model_validate(PAUSED)
    assert polls == [1000.0, 1002.0, 1004.0, 1005.0]


# --- --watch -------------------------------------------------------------------------------


def test_watch_redraws_a_terminal_and_ends_with_the_rollout(api, clock):
    api.responses[STATUS] = (200, PAUSED)
    clock.script = {2: PROMOTED}

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    out, err = Terminal(), io.StringIO()
    parser_args = _parse(["status", "--watch", "--interval", "1s"])
    code = cli_rollout.run(parser_args, out=out, err=err)
    assert code == 0
    frames = out.getvalue().split("\x1b[H\x1b[2J")[1:]
    assert len(frames) == 3 and "every 1s, 0s elapsed (Ctrl-C to stop)" in frames[0]
    assert "paused, step 2 of 3: pause" in frames[0] and "promoted" in frames[2]
    assert "promoted after 2s" in out.getvalue()


def test_watch_into_a_log_prints_only_changed_frames(api, clock, capsys):
    api.responses[STATUS] = (200, PAUSED)
    clock.script = {3: PROMOTED}
    code, out, _ = _run(["status", "--watch", "--timeout", "1m"], capsys)
    assert code == 0 and "\x1b[" not in out
    assert [line for line in out.splitlines() if line.startswith("---")] == ["--- 0s", "--- 6s"]


def test_watch_times_out_with_3(api, clock, capsys):
    api.responses[STATUS] = (200, PAUSED)
    code, _, err = _run(["status", "--watch", "--timeout", "3s"], capsys)
    assert code == 3 and "timed out after 3s" in err


def _parse(argv):
    import argparse

    parser = argparse.ArgumentParser(prog="serve-ab")
    cli_rollout.add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


# --- usage errors, exit 2 ------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["status", "--wait", "--timeout", "10x"], "argument --timeout: '10x' is not a valid duration; expected a "
     "duration > 0 such as 30s, 10m, 1h30m, 500ms, or plain seconds such as 45 or 2.5"),
    (["status", "--wait", "--timeout", "0s"], "argument --timeout: '0s' is not a valid duration"),
    (["status", "--wait", "--interval", "fast"], "argument --interval: 'fast' is not a valid duration"),
    (["status", "--request-timeout", "-1"], "argument --request-timeout: '-1' is not a valid duration"),
    # Past what a socket timeout or a sleep takes (OverflowError near 9.2e9 s), and past any sense.
    (["status", "--request-timeout", "1e10"], ("argument --request-timeout: '1e10' is longer than a year (1e+10 s), "
                                                "the longest duration taken; give at most 8760h, e.g. 30m or 24h")),
    (["status", "--wait", "--timeout", "1m", "--interval", "1e10"], "argument --interval: '1e10' is longer than"),
    (["status", "--wait", "--timeout", "8761h", "--interval", "1h"], "argument --timeout: '8761h' is longer than"),
    (["status", "--timeout", "3s"], "argument --timeout: only applies with --wait or --watch"),
    (["status", "--wait", "--watch"], "not allowed with argument"),
    (["status", "--watch", "-o", "json"], "argument --watch: draws the table; for -o json use --wait"),
    (["status", "-o", "xml"], "invalid choice: 'xml'"),
])
def test_usage_errors_exit_2_and_send_nothing(api, clock, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        _main(argv)
    assert exit_info.value.code == 2 and api.requests == []
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, flag, value", [
    (["status", "--wait", "--timeout", "-5s"], "--timeout", "-5s"),
    (["status", "--wait", "--interval", "-.5", "--timeout", "1m"], "--interval", "-.5"),
    (["status", "--request-timeout", "-1m"], "--request-timeout", "-1m"),
])
def test_a_negative_duration_at_the_entry_point_is_named_as_a_bad_value(capsys, argv, flag, value):
    # argparse reads "-5s" as an option, not a value ("expected one argument"); the entry
    # point hands it to the option, whose check says what is valid. Nothing is sent.
    from serve_ab.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"argument {flag}: '{value}' is not a valid duration" in err


def test_only_an_options_value_is_joined_and_never_past_a_double_dash():
    from serve_ab.cli.command import _joined_negative_values, _options_taking_a_value, make_parser

    options = _options_taking_a_value(make_parser())
    assert {"--timeout", "--interval", "--mde", "--load-timeout"} <= options
    assert not {"--wait", "--json", "--no-check-files", "--help"} & options

    def joined(*argv):
        return _joined_negative_values(list(argv), options)

    assert joined("status", "--wait", "--timeout", "-5s", "--json") == ["status", "--wait", "--timeout=-5s", "--json"]
    assert joined("--mde", "-0.02", "-o", "json") == ["--mde=-0.02", "-o", "json"]
    assert joined("--timeout=-5s", "--", "--timeout", "-5") == ["--timeout=-5s", "--", "--timeout", "-5"]
    assert joined("--wait", "--timeout") == ["--wait", "--timeout"]
    # A flag is never given a value it does not take: argparse says what it would have said.
    assert joined("status", "--wait", "-5s") == ["status", "--wait", "-5s"]


@pytest.mark.parametrize("text, seconds", [
    ("30s", 30.0), ("10m", 600.0), ("1h30m", 5400.0), ("1h30m15s", 5415.0), ("1m30s", 90.0),
    ("500ms", 0.5), ("2.5m", 150.0), ("45", 45.0), ("2.5", 2.5), (" 10s ", 10.0), ("8760h", 365 * 86400.0),
])
def test_durations(text, seconds):
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5", "10x", "m", "30m1h", "1h1h", "1h 30m", "inf", "nan", "1e999",
                                  "10 s", "s10"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="is not a valid duration; expected a duration > 0 such as 30s"):
        parse_duration_s(text)


def test_the_old_timeout_s_flag_still_works_and_says_what_replaces_it(api, capsys):
    code, out, err = _run(["status", "--timeout-s", "5"], capsys)
    assert code == 0 and "canary: v1 -> v2" in out
    assert "warning: --timeout-s is deprecated and will be removed; use --request-timeout" in err
    # On status it reads like the wait's limit: the warning says which flag is which.
    assert "it limits each request, and --timeout limits --wait/--watch" in err
    code, out, err = _run(["promote", "--timeout-s", "5"], capsys)
    assert "use --request-timeout (it takes durations such as 10s)\n" in err
    assert _parse(["status", "--timeout-s", "5"]).request_timeout_s == 5.0
    assert _parse(["status", "--request-timeout", "1m"]).request_timeout_s == 60.0


# --- -o table|json|yaml on one-shot reads and actions --------------------------------------


def test_status_output_formats(api, capsys):
    code, out, _ = _run(["status", "-o", "yaml"], capsys)
    assert code == 0 and yaml.safe_load(out) == CANARY
    code, out, _ = _run(["status", "--output", "json"], capsys)
    assert code == 0 and json.loads(out) == CANARY
    code, out, _ = _run(["status", "-o", "table"], capsys)
    assert code == 0 and "canary: v1 -> v2" in out
    code, out, _ = _run(["pause", "-o", "yaml"], capsys)
    assert code == 0 and yaml.safe_load(out)["phase"] == "paused"
