"""``serve-ab status`` and the rollout actions, against a fake control API on a local port."""

from __future__ import annotations

import argparse
import copy
import json
import time

import pytest

import serve_ab.cli
from serve_ab.cli import command as cli
from serve_ab.cli.options import redact
from serve_ab.api.status import RolloutStatus
from serve_ab.cli.rollout import render_status
from tests.unit.cli.control_api import CANARY, STATIC, closed_port
from tests.unit.cli.control_api import main as _main, run as _run
from tests.support.fake_http import BrokenAnswer

TOKEN = "s3cret-token-value"


def _render(status: dict, **options) -> str:
    """render_status of a status as the app's JSON holds it."""
    return render_status(RolloutStatus.model_validate(status), **options)


def test_serve_ab_wires_the_rollout_commands(api, capsys, monkeypatch):
    # The real sample-size parser imports statsmodels (seconds); its wiring has its own tests.
    stub = argparse.Namespace(add_parser=lambda sub: None)
    monkeypatch.setattr(serve_ab.cli, "sample_size", stub, raising=False)
    assert cli.main(["status"]) == 0 and "canary: v1 -> v2" in capsys.readouterr().out


# --- rendering -----------------------------------------------------------------------------


def test_render_shows_rollout_step_bars_gates_and_reason():
    text = _render(CANARY)
    assert "digits" in text and "canary: v1 -> v2" in text
    assert "progressing, step 3 of 7: pause 30s" in text
    assert "v1   80.0%  " + "#" * 32 + "." * 8 + " (stable)" in text
    assert "v2   20.0%  " + "#" * 8 + "." * 32 + " (candidate)" in text
    assert "in 12 s" in text and "0 of 1 tolerated" in text
    assert "step 3/7: pause 30s, 12 s left" in text
    gate_rows = [line for line in text.splitlines() if "<=" in line]
    assert gate_rows[0].split()[:6] == ["latency_p95_ms", "<=", "50", "3.2", "50", "pass"]
    assert gate_rows[1].split()[:6] == ["error_rate", "<=", "0.01", "-", "0.01", "inconclusive"]
    assert "no data for v2" in gate_rows[1]
    assert "history" not in text


def test_a_store_that_fails_its_saves_is_said_in_the_status():
    assert "store" not in _render({**CANARY, "not_saved": None})
    text = _render({**CANARY, "not_saved": {"since_s": 1.0, "for_s": 75.0,
                                                  "error": "ConnectionError: Error 111 connecting"}})
    assert ("store      saves failing for 1m 15s (ConnectionError: Error 111 connecting): decisions wait for "
            "the store, routers serve on") in text


def test_a_webhook_gate_without_bounds_shows_its_answer_not_one_and_zero():
    status = copy.deepcopy(CANARY)
    status["gates"] = [
        {"gate": "webhook[suite] passes", "metric": "webhook", "verdict": "fail", "value": 0.0, "threshold": 1.0,
         "bound": "pass", "reason": "webhook[suite] answered pass: false for v2"},
        {"gate": "webhook[quality] >= 0.9", "metric": "webhook", "verdict": "pass", "value": 0.93,
         "threshold": 0.9, "bound": "min", "reason": "webhook[quality] on v2 = 0.93"}]
    rows = [line.split() for line in _render(status).splitlines() if line.lstrip().startswith("webhook[")]
    assert rows[0][2:6] == ["false", "pass:", "true", "fail"]
    assert rows[1][3:6] == ["0.93", "0.9", "pass"]


def test_a_ratio_gate_whose_stable_is_at_0_is_shown_not_refused(api, capsys):
    # error_rate <= 1.5x stable with no error on stable: the value is infinite, and so is an
    # upper bound no sample size gives. The app's JSON spells them "Infinity"
    # (http_util.json_safe); `status` and the --wait that follows an abort must read them.
    gate = {"gate": "error_rate <= 1.5x stable", "metric": "error_rate", "verdict": "fail", "value": "Infinity",
            "threshold": 1.5, "bound": "max_ratio_to_stable", "reason": "error_rate on v2 is 0.02, inf x stable",
            "candidate_value": 0.02, "stable_value": 0.0, "lower": 2.5, "upper": "Infinity", "alpha": 0.05}
    aborted = {**CANARY, "phase": "aborted", "gates": [gate]}
    api.responses[("GET", "/rollout/status")] = (200, aborted)
    code, out, err = _run(["status"], capsys)
    assert (code, err) == (0, "")
    assert next(line for line in out.splitlines() if "error_rate <=" in line).split()[4:7] == ["inf", "1.5", "fail"]
    code, out, err = _run(["status", "--wait", "--timeout", "1s", "-o", "json"], capsys)
    assert code == 1 and json.loads(out)["gates"][0]["value"] == "Infinity"  # as the app sent it


def test_the_status_names_the_shadow_and_a_version_that_failed_to_load():
    # A shadow that failed at warm-up showed only "v2 0.0%": nothing said it got copies, nor
    # that it never loaded (a live audit, 2026-12-07).
    text = _render({**STATIC, "shadow": {"version": "v2", "percent": 100.0},
                    "failed_versions": {"v2": "failed to load: RuntimeError: shadow boom (router replica r1)"}})
    rows = dict(line.split(None, 1) for line in text.split("\n\n")[0].splitlines())
    assert rows["shadow"] == "v2 gets a copy of 100% of live requests (compared in `serve-ab report`)"
    assert rows["failed"] == "v2 gets no traffic: failed to load: RuntimeError: shadow boom (router replica r1)"
    assert "shadow" not in _render(STATIC) and "failed" not in _render(STATIC)


def test_render_shows_what_the_gates_last_look_read():
    window = {"since_s": 1764312000.0, "requests": {"v1": 1650, "v2": 660}, "errors": {"v1": 41, "v2": 17}}
    text = _render({**CANARY, "window": window})
    row = next(line for line in text.splitlines() if line.startswith("evidence"))
    assert row.split(None, 1)[1] == "v1 1,650 requests (41 errors), v2 660 requests (17 errors) in the gates' window"
    window = {**window, "errors": {"v1": 1, "v2": 0}}
    assert "v1 1,650 requests (1 error), v2 660 requests (0 errors)" in _render({**CANARY, "window": window})
    assert "evidence" not in _render(CANARY)  # an app of an earlier release, or no look yet


def test_render_bar_width_and_history_in_local_time():
    text = _render(CANARY, history=True, width=10)
    assert "#" * 8 + "." * 2 + " (stable)" in text
    first = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1764312000.5))
    second = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1764312060.0))
    assert f"{first}  start -> progressing  step 1  rollout started" in text
    assert f"{second}  progressing -> paused  step 4  paused by operator" in text
    assert "(no transitions yet)" in _render({**CANARY, "history": []}, history=True)


def test_a_finished_rollouts_history_names_its_last_step_not_one_past_it():
    done = {"from_phase": "progressing", "to_phase": "promoted", "step_index": 7, "t_from": 0,
            "t_s": 1764312100.0, "reason": "all 7 steps done"}
    text = _render({**CANARY, "steps_total": 7, "history": [done]}, history=True)
    assert "progressing -> promoted  step 7  all 7 steps done" in text


def test_a_blue_green_history_names_phases_not_internal_steps():
    entries = [{"from_phase": None, "to_phase": "validating", "step_index": 0, "t_s": 1764312000.0,
                "reason": "rollout started"},
               {"from_phase": "validating", "to_phase": "switched", "step_index": 1, "t_s": 1764312030.0,
                "reason": "green validated; switched (auto_switch)"}]
    status = {**CANARY, "strategy": "blue_green", "steps_total": 0, "step": None, "history": entries}
    history = _render(status, history=True).split("history", 1)[1]
    assert "start -> validating  rollout started" in history
    assert "validating -> switched  green validated" in history
    assert "step" not in history


def test_render_static_app_shows_only_model_and_weights():
    text = _render(STATIC)
    assert "none (static weights)" in text and "v2   50.0%" in text
    assert "step" not in text and "gates" not in text and "failures" not in text
    assert _render(STATIC, history=True) == text


def test_render_short_summarises_gates():
    text = _render(CANARY, short=True)
    assert "gates  1 pass, 1 inconclusive" in text and "latency_p95_ms" not in text


# --- status over HTTP ----------------------------------------------------------------------


def test_status_of_an_open_app_needs_no_token(api, capsys):
    code, out, _ = _run(["status"], capsys)
    assert code == 0 and "step 3 of 7: pause 30s" in out
    assert api.requests == [{"method": "GET", "path": "/rollout/status", "query": {},
                             "authorization": None, "body": None}]


# --- reading an app with control.protect_reads ---------------------------------------------


def test_status_of_a_protected_app_sends_the_token_option(api, capsys):
    api.bearer = TOKEN
    code, out, err = _run(["status", "--token", TOKEN], capsys)
    assert code == 0 and "step 3 of 7: pause 30s" in out, err
    assert api.requests[0]["authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in out + err


@pytest.mark.parametrize("env", ["SERVE_AB_VIEWER_TOKEN", "SERVE_AB_QA_TOKEN", "SERVE_AB_CONTROL_TOKEN"])
def test_status_of_a_protected_app_sends_a_token_from_the_environment(api, capsys, monkeypatch, env):
    api.bearer = TOKEN
    monkeypatch.setenv(env, TOKEN)
    code, out, err = _run(["status", "--history"], capsys)
    assert code == 0 and "progressing -> paused" in out, err
    assert api.requests[0]["authorization"] == f"Bearer {TOKEN}"


def test_a_read_takes_the_option_then_the_viewer_then_the_qa_then_the_control_token(api, capsys, monkeypatch):
    monkeypatch.setenv("SERVE_AB_CONTROL_TOKEN", "operator-token")
    monkeypatch.setenv("SERVE_AB_QA_TOKEN", "qa-token")
    assert _run(["status"], capsys)[0] == 0  # the least power that may read: QA's before the operator's
    monkeypatch.setenv("SERVE_AB_VIEWER_TOKEN", "viewer-token")
    assert _run(["status"], capsys)[0] == 0
    assert _run(["status", "--token", TOKEN], capsys)[0] == 0
    assert [r["authorization"] for r in api.requests] == ["Bearer qa-token", "Bearer viewer-token", f"Bearer {TOKEN}"]


def test_an_action_sends_the_control_token_never_the_viewer_or_qa_token(api, capsys, monkeypatch):
    monkeypatch.setenv("SERVE_AB_VIEWER_TOKEN", "viewer-token")
    monkeypatch.setenv("SERVE_AB_QA_TOKEN", "qa-token")
    assert _run(["pause"], capsys)[0] == 0
    monkeypatch.setenv("SERVE_AB_CONTROL_TOKEN", "operator-token")
    assert _run(["pause"], capsys)[0] == 0
    assert [r["authorization"] for r in api.requests] == [None, "Bearer operator-token"]


def test_a_protected_read_without_a_token_hints_at_the_viewer_token(api, capsys):
    api.bearer = TOKEN
    code, out, err = _run(["status"], capsys)
    assert code == 1 and out == ""
    assert "error: 401 reading this app's figures: a bearer token is needed" in err
    hint = err.splitlines()[1]
    assert hint.startswith("hint: reading this app (control.protect_reads) needs a viewer, QA or operator token")
    assert "SERVE_AB_VIEWER_TOKEN" in hint and "SERVE_AB_CONTROL_TOKEN" in hint and "--token" in hint
    assert hint.endswith("(no token was sent)") and "actions" not in hint


@pytest.mark.parametrize("source", ["--token", "$SERVE_AB_VIEWER_TOKEN", "$SERVE_AB_CONTROL_TOKEN"])
def test_a_refused_read_names_where_the_token_came_from_never_the_token(api, capsys, monkeypatch, source):
    api.bearer = "the-right-one"
    argv = ["status"]
    if source == "--token":
        argv += ["--token", TOKEN]
    else:
        monkeypatch.setenv(source[1:], TOKEN)
    code, out, err = _run(argv, capsys)
    assert code == 1 and f"(the token sent, from {source}, was refused)" in err
    assert "needs a viewer, QA or operator token" in err and TOKEN not in out + err


def test_403_says_the_token_was_known_but_its_role_may_not(api, capsys, monkeypatch):
    monkeypatch.setenv("SERVE_AB_CONTROL_TOKEN", TOKEN)
    api.responses[("POST", "/rollout/abort")] = (
        403, {"error": "token 'bob' has role viewer, which may not act on the rollout; that needs operator"})
    code, _, err = _run(["abort"], capsys)
    assert code == 1 and "error: 403 token 'bob' has role viewer" in err
    assert ("hint: actions need the app's operator (control) token: set SERVE_AB_CONTROL_TOKEN or pass --token "
            "(the token sent, from $SERVE_AB_CONTROL_TOKEN, is known but its role may not do this)") in err


def test_status_history_and_json(api, capsys):
    code, out, _ = _run(["status", "--history"], capsys)
    assert code == 0 and "progressing -> paused" in out
    assert api.requests[-1]["query"] == {"history": ["true"]}
    code, out, _ = _run(["status", "--json", "--url", api.url + "/"], capsys)
    assert code == 0 and json.loads(out) == CANARY


def test_status_of_static_app(api, capsys):
    api.responses[("GET", "/rollout/status")] = (200, STATIC)
    code, out, _ = _run(["status"], capsys)
    assert code == 0 and "none (static weights)" in out


# --- actions -------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, path, body", [
    (["promote"], "/rollout/promote", {"full": False}),
    (["promote", "--full"], "/rollout/promote", {"full": True}),
    (["pause"], "/rollout/pause", None),
    (["resume"], "/rollout/resume", None),
    (["abort"], "/rollout/abort", {"reason": "aborted by operator"}),
    (["abort", "--reason", "p95 too high"], "/rollout/abort", {"reason": "p95 too high"}),
    (["rollback"], "/rollout/rollback", None),
    (["set-weights", "v1=80", "v2=20"], "/rollout/weights", {"weights": {"v1": 80, "v2": 20}}),
    (["set-weights", "v1=87.5", "v2=12.5"], "/rollout/weights", {"weights": {"v1": 87.5, "v2": 12.5}}),
])
def test_action_sends_method_path_body_and_env_token(api, capsys, monkeypatch, argv, path, body):
    monkeypatch.setenv("SERVE_AB_CONTROL_TOKEN", TOKEN)
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert api.requests == [{"method": "POST", "path": path, "query": {},
                             "authorization": f"Bearer {TOKEN}", "body": body}]
    assert f"{argv[0]}: ok" in out and "paused, step 3 of 7" in out and "#" * 32 in out
    assert TOKEN not in out + err


def test_an_action_that_changed_nothing_says_so(api, capsys, monkeypatch):
    """The app answers ``changed: false`` for a rollback of an aborted rollout, say: the CLI
    printed "ok" for it."""
    monkeypatch.setenv("SERVE_AB_CONTROL_TOKEN", TOKEN)
    api.responses[("POST", "/rollout/rollback")] = (200, {**CANARY, "phase": "aborted", "changed": False})
    code, out, err = _run(["rollback"], capsys)
    assert code == 0 and "rollback: nothing to change" in out and ": ok" not in out


def test_token_option_overrides_env(api, capsys, monkeypatch):
    monkeypatch.setenv("SERVE_AB_CONTROL_TOKEN", "from-env")
    code, out, err = _run(["pause", "--token", TOKEN], capsys)
    assert code == 0 and api.requests[0]["authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in out + err


def test_action_json_prints_the_new_status(api, capsys):
    code, out, _ = _run(["resume", "--json"], capsys)
    assert code == 0 and json.loads(out)["phase"] == "paused"


# --- errors --------------------------------------------------------------------------------


def test_401_without_token_hints_at_env_and_option(api, capsys):
    api.responses[("POST", "/rollout/promote")] = (401, {"error": "missing bearer token"})
    code, out, err = _run(["promote"], capsys)
    assert code == 1 and out == ""
    assert api.requests[0]["authorization"] is None
    assert "error: 401 missing bearer token" in err
    assert "SERVE_AB_CONTROL_TOKEN" in err and "--token" in err and "no token was sent" in err


def test_401_with_refused_token_never_prints_it(api, capsys):
    # A misbehaving proxy that echoes the header back must not leak it either.
    api.responses[("POST", "/rollout/pause")] = (401, {"error": f"bad token Bearer {TOKEN}"})
    code, out, err = _run(["pause", "--token", TOKEN], capsys)
    assert code == 1 and "error: 401 bad token Bearer ***" in err and "from --token, was refused" in err
    assert TOKEN not in out + err


def test_409_prints_status_and_message(api, capsys, monkeypatch):
    monkeypatch.setenv("SERVE_AB_CONTROL_TOKEN", TOKEN)
    api.responses[("POST", "/rollout/resume")] = (409, {"error": "cannot resume: rollout is aborted"})
    code, out, err = _run(["resume"], capsys)
    assert (code, out) == (1, "")
    assert err.strip() == "error: 409 cannot resume: rollout is aborted"


def test_error_without_json_body_falls_back_to_text(api, capsys):
    api.responses[("POST", "/rollout/weights")] = (400, b"bad gateway page")
    code, _, err = _run(["set-weights", "v1=100"], capsys)
    assert code == 1 and "error: 400 bad gateway page" in err


def test_a_redirect_is_not_followed_and_names_where_it_points(api, capsys):
    # Following it could send the token elsewhere or turn a POST into a GET.
    api.responses[("POST", "/rollout/pause")] = (302, b"", {"Location": "https://gateway.example.com/ab/rollout/pause"})
    code, _, err = _run(["pause"], capsys)
    assert code == 1 and len(api.requests) == 1
    assert err.splitlines()[0] == ("error: 302 Found: redirects to https://gateway.example.com/ab/rollout/pause "
                                   "(not followed; give the app's own URL as --url)")


def test_connection_refused_exits_4(api, capsys, monkeypatch):
    monkeypatch.setenv("SERVE_AB_URL", f"http://127.0.0.1:{closed_port()}")
    code, out, err = _run(["status"], capsys)
    assert code == 4 and out == ""
    assert "error: cannot reach http://127.0.0.1:" in err
    assert "serve run configs/canary.yaml" in err


@pytest.mark.parametrize("pair, message", [
    ("v1:80", "'v1:80': expected NAME=PCT"),
    ("=80", "'=80': expected NAME=PCT"),
    ("v1=lots", "'v1=lots': 'lots' is not a number; expected NAME=PCT"),
    ("v1=120", "'v1=120': 120 is outside [0, 100]; expected NAME=PCT"),
    ("v1=nan", "'v1=nan': nan is outside [0, 100]"),
])
def test_set_weights_bad_pair_is_a_usage_error(api, capsys, pair, message):
    with pytest.raises(SystemExit) as exit_info:
        _main(["set-weights", "v2=20", pair])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert message in err and "e.g. v1=80 v2=20" in err
    assert api.requests == []


def test_set_weights_duplicate_name_is_a_usage_error(api, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _main(["set-weights", "v1=80", "v1=20"])
    assert exit_info.value.code == 2
    assert "v1 is given twice (v1=80 and v1=20)" in capsys.readouterr().err
    assert api.requests == []


@pytest.mark.parametrize("pairs, total", [(["v1=80", "v2=30"], "110"), (["v1=80"], "80")])
def test_set_weights_that_do_not_sum_to_100_are_a_usage_error_and_nothing_is_sent(api, capsys, pairs, total):
    with pytest.raises(SystemExit) as exit_info:
        _main(["set-weights", *pairs])
    assert exit_info.value.code == 2
    assert f"the weights sum to {total}%; they must sum to 100 (a version not named gets 0)" in capsys.readouterr().err
    assert api.requests == []


def test_bad_url_from_option_or_env_is_a_usage_error(api, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        _main(["status", "--url", "localhost:8000"])
    assert exit_info.value.code == 2 and "'localhost:8000' is not an http(s) URL" in capsys.readouterr().err
    monkeypatch.setenv("SERVE_AB_URL", "127.0.0.1:8000")
    with pytest.raises(SystemExit) as exit_info:
        _main(["status"])
    assert exit_info.value.code == 2 and "$SERVE_AB_URL: '127.0.0.1:8000'" in capsys.readouterr().err


def test_canned_status_is_not_mutated():
    before = copy.deepcopy(CANARY)
    _render(CANARY, history=True, short=True)
    assert CANARY == before


def test_help_of_every_command_renders(capsys):
    # argparse %-formats help strings: one literal "%" (as in "100%") broke `serve-ab --help`.
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "straight to 100%" in out and "100%%" not in out


def test_status_help_says_which_token_a_read_sends(capsys):
    with pytest.raises(SystemExit):
        _main(["status", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--token TOKEN" in out and "control.protect_reads" in out
    assert "(default: $SERVE_AB_VIEWER_TOKEN, else $SERVE_AB_QA_TOKEN, else $SERVE_AB_CONTROL_TOKEN)" in out


# --- preconditions and who acted -----------------------------------------------------------


@pytest.mark.parametrize("argv, body", [
    (["promote", "--from-step", "3"], {"full": False, "from_step": 2}),  # as `status` shows it
    (["promote", "--from-step", "3", "--revision", "41"], {"full": False, "from_step": 2, "revision": 41}),
    (["pause", "--revision", "41"], {"revision": 41}),
    (["abort", "--revision", "0"], {"reason": "aborted by operator", "revision": 0}),
])
def test_preconditions_are_sent_in_the_body(api, capsys, argv, body):
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    assert api.requests[0]["body"] == body


@pytest.mark.parametrize("argv", [["promote", "--from-step", "0"], ["pause", "--revision", "-1"],
                                  ["promote", "--from-step", "x"]])
def test_bad_preconditions_are_usage_errors(api, capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        _main(argv)
    assert exit_info.value.code == 2 and api.requests == []
    assert "e.g. --" in capsys.readouterr().err


def test_503_says_nothing_changed_and_to_retry(api, capsys):
    api.responses[("POST", "/rollout/abort")] = (503, {"error": "state could not be saved; try again"})
    code, _, err = _run(["abort"], capsys)
    assert code == 1 and "nothing was changed; send the same command again" in err


def test_history_shows_who_acted_from_where_and_the_revision():
    status = {**CANARY, "revision": 41, "history": [
        *CANARY["history"],
        {"t_s": 1764312070.0, "from_phase": "paused", "to_phase": "aborted", "step_index": 3,
         "reason": "p95 up", "action": "abort",
         "actor": {"name": "alice", "role": "operator", "address": "10.0.0.7"}},
        {"t_s": 1764312080.0, "from_phase": "aborted", "to_phase": "aborted", "step_index": 3,
         "reason": "abort: nothing to change", "action": "abort", "actor": None},
    ]}
    text = _render(status, history=True)
    assert "revision   41  (serve-ab <action> --revision 41 acts only on this state)" in text
    assert "p95 up  [abort by alice (operator) from 10.0.0.7]" in text
    assert "abort: nothing to change  [abort by unknown]" in text
    assert "rollout started" in text and "rollout started  [" not in text


# --- tokens that cannot be sent, and hiding them -------------------------------------------


@pytest.mark.parametrize("token, says", [
    ("s3cr3t\r", "holds a character that cannot go in an HTTP header (a control character"),
    ("s3cr3t\n", "holds a character that cannot go in an HTTP header (a control character"),
    ("s3cr3t\tx", "holds a character that cannot go in an HTTP header (a control character"),
    ("s3cr3t-tök", "holds a character that cannot go in an HTTP header (a non-ASCII character"),
    # h11 refuses to write these; httpx called that a transport error, which read as "cannot
    # reach the app" (exit 4) although the app was never asked.
    ("s3cr3t ", "starts or ends with a space; tokens have none"),
    (" s3cr3t", "starts or ends with a space; tokens have none"),
    ("  ", "is only spaces; tokens have none"),
])
@pytest.mark.parametrize("source", ["--token", "SERVE_AB_CONTROL_TOKEN"])
def test_a_token_that_cannot_go_in_a_header_is_a_usage_error_that_never_prints_it(api, capsys, monkeypatch,
                                                                                  token, says, source):
    argv = ["promote"]
    if source == "--token":
        argv += ["--token", token]
    else:
        monkeypatch.setenv(source, token)
    with pytest.raises(SystemExit) as exit_info:
        _main(argv)
    err = capsys.readouterr().err
    named = "argument --token" if source == "--token" else "$SERVE_AB_CONTROL_TOKEN"
    assert exit_info.value.code == 2 and api.requests == []
    assert f"{named} {says}" in err and "s3cr3t" not in err
    if "HTTP header" in says:
        assert "tokens are printable ASCII" in err


@pytest.mark.parametrize("env", ["SERVE_AB_VIEWER_TOKEN", "SERVE_AB_CONTROL_TOKEN"])
def test_status_sends_a_token_so_an_unsendable_one_in_env_is_a_usage_error(api, capsys, monkeypatch, env):
    # A read sends it too (a protected app needs it): better told now than as a 401 later.
    monkeypatch.setenv(env, "s3cr3t\n")
    with pytest.raises(SystemExit) as exit_info:
        _main(["status"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and api.requests == []
    assert f"${env} holds a character that cannot go in an HTTP header" in err and "s3cr3t" not in err


def test_a_short_token_is_hidden_without_garbling_the_message(api, capsys):
    api.responses[("POST", "/rollout/pause")] = (401, {"error": "error: token e refused (sent 'e')"})
    code, _, err = _run(["pause", "--token", "e"], capsys)
    assert code == 1
    assert err.splitlines()[0] == "error: 401 error: token *** refused (sent '***')"
    assert "(the token sent, from --token, was refused)" in err


@pytest.mark.parametrize("text, secret, shown", [
    ("error: 401", "e", "error: 401"),
    ("Bearer s3cr3t. See /s3cr3t/ and ?token=s3cr3t&x", "s3cr3t", "Bearer ***. See /***/ and ?token=***&x"),
    ("s3cr3tX and Xs3cr3t are other tokens", "s3cr3t", "s3cr3tX and Xs3cr3t are other tokens"),
    ("header b'Bearer a\\\\b' and json \"a\\\\b\"", "a\\b", "header b'Bearer ***' and json \"***\""),
    ('{"error": "bad q\\"uote"}', 'q"uote', '{"error": "bad ***"}'),
])
def test_redact_hides_whole_tokens_and_their_escaped_forms_only(text, secret, shown):
    assert redact(text, secret) == shown


# --- a 200 answer of another shape ---------------------------------------------------------


@pytest.mark.parametrize("change, problem", [
    ({"weights_pct": {"v1": float("nan"), "v2": 20.0}}, "weights_pct.v1: Input should be a finite number (got nan)"),
    ({"weights_pct": {"v1": "eighty", "v2": 20.0}},
     "weights_pct.v1: Input should be a valid number, unable to parse string as a number (got 'eighty')"),
    ({"weights_pct": [80, 20]}, "weights_pct: Input should be a valid dictionary (got [80, 20])"),
    ({"step_index": "2"}, "step_index: Input should be a valid integer (got '2')"),
    ({"step_index": True}, "step_index: Input should be a valid integer (got True)"),
    ({"gates": ["latency ok"]},
     "gates.0: Input should be a valid dictionary or instance of GateLook (got 'latency ok')"),
    ({"gates": {"gate": "latency"}}, "gates: Input should be a valid list"),
    ({"gates": [{**CANARY["gates"][0], "value": "high"}]},
     "gates.0.value: Input should be a valid number, unable to parse string as a number (got 'high')"),
    ({"gates": [{"gate": "g", "verdict": "pass"}]}, "gates.0.metric: field required"),
    ({"history": "none"}, "history: Input should be a valid list (got 'none')"),
    ({"history": [5]}, "history.0: Input should be a valid dictionary or instance of HistoryEntry (got 5)"),
    ({"next_step_in_s": float("inf")}, "next_step_in_s: Input should be a finite number (got inf)"),
    ({"window": {"since_s": 1.0, "requests": "many"}}, "window.requests: Input should be a valid dictionary (got 'many')"),
])
@pytest.mark.parametrize("argv", [["status", "--history"], ["status", "--wait", "--timeout", "1s"], ["pause"]])
def test_an_answer_of_an_unexpected_shape_is_an_error_not_a_traceback(api, capsys, change, problem, argv):
    route = ("GET", "/rollout/status") if argv[0] == "status" else ("POST", "/rollout/pause")
    api.responses[route] = (200, {**CANARY, **change})
    code, out, err = _run(argv, capsys)
    assert (code, out) == (1, "")
    assert err.splitlines()[0] == f"error: unexpected answer from {api.url}{route[1]}: {problem}"
    assert f"hint: is {api.url} a serve-ab app, of a version this serve-ab reads?" in err


@pytest.mark.parametrize("argv", [["status"], ["status", "-o", "json"], ["status", "--wait", "--timeout", "1s"],
                                  ["promote"], ["abort"]])
def test_a_json_answer_that_is_no_status_is_not_taken_for_a_static_app(api, capsys, argv):
    """Live (multi47): beside serve-ab's apps, `serve-ab status --app plain` (a plain Ray Serve
    app answering every path with JSON) printed "rollout none (static weights)" and exit 0, and
    `serve-ab promote --app plain` printed "promote: ok": every field of the status has a
    default, so any JSON object read as one."""
    route = ("GET", "/rollout/status") if argv[0] == "status" else ("POST", f"/rollout/{argv[0]}")
    api.responses[route] = (200, {"plain": True, "path": route[1]})
    code, out, err = _run(argv, capsys)
    assert (code, out) == (1, "")
    assert err.splitlines()[0].startswith(f"error: {api.url}{route[1]} answered 200 with a JSON object of keys "
                                          "'plain', 'path' without phase and weights_pct, so it is not a serve-ab "
                                          "app's status")
    assert ("(nothing says the action was applied)" in err) == (route[0] == "POST")
    assert f"hint: is {api.url} a serve-ab app?" in err


def test_a_history_time_that_is_no_time_is_shown_as_found():
    status = {**CANARY, "history": [{**CANARY["history"][0], "t_s": 1e20}]}
    assert "?1e+20  start -> progressing" in _render(status, history=True)


@pytest.mark.parametrize("raised", ["ReadTimeout", "RemoteProtocolError"])
def test_an_action_sent_but_not_answered_says_it_may_have_been_applied(api, capsys, monkeypatch, raised):
    """A loaded app may apply a promote and answer after --request-timeout: "cannot reach the
    app, it must be running" then invited a blind resend, which would promote a second step."""
    import httpx

    def lost_answer(method, url, **kwargs):
        raise getattr(httpx, raised)("timed out" if raised == "ReadTimeout" else "Server disconnected")

    monkeypatch.setattr(httpx, "request", lost_answer)
    code, out, err = _run(["promote", "--request-timeout", "2s"], capsys)
    assert code == 4 and out == ""
    first, hint = err.splitlines()
    assert first.startswith(f"error: POST {api.url}/rollout/promote was sent, but ")
    assert first.endswith("the app may have applied it")
    assert "serve run" not in err and "--revision N" in hint and "serve-ab status" in hint
    # A read that is not answered changed nothing: it still says the app cannot be reached.
    code, _, err = _run(["status"], capsys)
    assert code == 4 and err.startswith(f"error: cannot reach {api.url}")


@pytest.mark.parametrize("mode, says", [
    ("reset", "the connection closed before the answer ("),
    ("bad-gzip", "its answer cannot be decoded ("),
])
def test_an_action_whose_answer_is_reset_or_undecodable_says_it_may_have_been_applied(
        capsys, monkeypatch, mode, says):
    """The request went out whole and the app may have acted: a reset said "cannot reach, the app
    must be running", and a gzip answer that does not decode was a traceback (exit 1)."""
    server = BrokenAnswer(mode)
    monkeypatch.setenv("SERVE_AB_URL", server.url)
    try:
        code, out, err = _run(["promote", "--request-timeout", "5s"], capsys)
        assert server.requests == ["POST /rollout/promote HTTP/1.1"]
        assert (code, out) == (4, "") and "Traceback" not in err, err
        first, hint = err.splitlines()
        assert first.startswith(f"error: POST {server.url}/rollout/promote was sent, but {says}")
        assert first.endswith("the app may have applied it") and "serve-ab status" in hint
        # A read changes nothing: a reset is "cannot reach", an undecodable answer says so (exit 1).
        code, out, err = _run(["status", "--request-timeout", "5s"], capsys)
        assert out == "" and "Traceback" not in err, err
        if mode == "reset":
            assert code == 4 and err.startswith(f"error: cannot reach {server.url}")
        else:
            assert code == 1 and err.startswith(f"error: {server.url}/rollout/status answered with a body that "
                                                "cannot be decoded")
    finally:
        server.close()
