"""Webhook gates and confirm steps: the schema, answers from a real endpoint on a loopback
socket, the verdicts, the background poller, and the state machine holding and advancing."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError

from serve_ab.config.rollout import Gate, RolloutConfig
from serve_ab.rollout.gates import GateVerdict, WebhookResult, WindowStats, evaluate_gate
from serve_ab.rollout.machine import Phase, Rollout
from serve_ab.rollout.webhook import WebhookAnswers, WebhookPoller, ask, confirm_key, gate_key
from tests.support.fakes import FakeClock
from tests.unit.rollout.hooks import HookServer, TrickleServer

STABLE = WindowStats("v1", request_count=100)


@pytest.fixture
def hooks():
    server = HookServer()
    yield server
    server.close()


def gate(**changes) -> Gate:
    return Gate.model_validate({"metric": "webhook", "url": "http://checks:8080/canary", "name": "smoke", **changes})


def verdict_of(g: Gate, answer: WebhookResult | None):
    window = WindowStats("v2", request_count=100, webhooks={} if answer is None else {g.key: answer})
    return evaluate_gate(g, window, STABLE, min_samples=50)


def asked(url: str, answer: str = "pass", timeout_s: float = 2.0) -> WebhookResult:
    return asyncio.run(ask(url, {"kind": "gate"}, timeout_s=timeout_s, answer=answer, asked_at_s=5.0))


# -- the schema ------------------------------------------------------------------------------

def test_webhook_gates_parse_with_no_bound_or_one_of_min_max():
    plain, valued = gate(), gate(name=None, min=0.9, timeout_s="2s")
    assert (plain.bound, plain.threshold, plain.label, plain.key) == ("pass", 1.0, "webhook[smoke] passes", "smoke")
    assert (valued.bound, valued.threshold, valued.timeout_s) == ("min", 0.9, 2.0)
    assert valued.label == "webhook[http://checks:8080/canary] >= 0.9" and valued.key == "http://checks:8080/canary"


@pytest.mark.parametrize("doc, expected", [
    ({"metric": "webhook"}, "gate webhook needs url, e.g. {metric: webhook"),
    ({"metric": "webhook", "url": "checks:8080"}, "url is 'checks:8080'; it must be an http:// or https:// URL"),
    ({"metric": "webhook", "url": "http://c/x", "min": 0.9, "max": 1.0}, "bounds ['max', 'min']; it takes none"),
    ({"metric": "webhook", "url": "http://c/x", "max_ratio_to_stable": 1.1}, "or one of min or max"),
    ({"metric": "webhook", "url": "http://c/x", "query": "up"}, "takes no query"),
    ({"metric": "error_rate", "max": 0.1, "url": "http://c/x"}, "gate error_rate takes no url; only metric: webhook"),
    ({"metric": "webhook", "url": "http://c/x", "headers_from_env": {"Authorization": "Bearer x"}},
     "headers_from_env.Authorization must be the NAME of an environment variable"),
])
def test_webhook_gate_errors_name_the_field_value_and_what_is_valid(doc, expected):
    with pytest.raises(ValidationError) as info:
        Gate.model_validate(doc)
    assert expected in str(info.value)


def canary(gates=(), steps=None, **analysis) -> RolloutConfig:
    return RolloutConfig.model_validate({
        "strategy": "canary", "stable": "v1", "candidate": "v2", "gates": list(gates),
        "analysis": {"interval_s": 5, "min_samples": 10, "progress_deadline_s": 60, **analysis},
        "steps": steps or [{"set_weight": 20}, {"pause": {"duration": "5s"}}, {"set_weight": 100}]})


def test_two_webhook_gates_need_different_keys_and_confirm_steps_parse():
    with pytest.raises(ValidationError, match="webhook gate 'http://c/x' is configured twice"):
        canary([{"metric": "webhook", "url": "http://c/x"}, {"metric": "webhook", "url": "http://c/x", "min": 1}])
    with pytest.raises(ValidationError) as twice:  # its url's query may hold a token: not quoted
        canary([{"metric": "webhook", "url": "http://c/x?token=QTOKEN"},
                {"metric": "webhook", "url": "http://c/x?token=QTOKEN", "min": 1}])
    message = twice.value.errors()[0]["msg"]
    assert "webhook gate 'http://c/x' is configured twice" in message and "QTOKEN" not in message
    config = canary(steps=[{"set_weight": 20}, {"confirm": {"url_from_env": "APPROVALS_URL", "interval_s": "30s"}},
                           {"set_weight": 100}])
    assert config.steps[1].confirm.interval_s == 30.0 and config.steps[1].confirm.target == "$APPROVALS_URL"
    with pytest.raises(ValidationError, match="exactly one key, one of set_weight, pause, analysis, confirm"):
        canary(steps=[{"confirm": {"url": "http://a/b"}, "set_weight": 5}])
    with pytest.raises(ValidationError, match="url is 'approvals'"):
        canary(steps=[{"confirm": {"url": "approvals"}}])


# -- answers and verdicts --------------------------------------------------------------------

def test_pass_fail_and_value_against_a_threshold(hooks):
    hooks.answer("/ok", (200, {"pass": True}))
    hooks.answer("/no", (200, {"pass": False, "reason": "smoke test 3 of 40 failed"}))
    hooks.answer("/score", (201, {"value": 0.93}))
    ok, no, score = asked(hooks.url + "/ok"), asked(hooks.url + "/no"), asked(hooks.url + "/score")
    assert (ok.passed, ok.error, ok.asked_at_s, ok.target) == (True, None, 5.0, hooks.url + "/ok")
    assert verdict_of(gate(), ok).verdict is GateVerdict.PASS
    failed = verdict_of(gate(), no)
    assert failed.verdict is GateVerdict.FAIL and "'smoke test 3 of 40 failed'" in failed.reason
    assert verdict_of(gate(min=0.9), score).verdict is GateVerdict.PASS
    below = verdict_of(gate(min=0.95), score)
    assert below.verdict is GateVerdict.FAIL and below.value == 0.93 and "below min 0.95" in below.reason
    assert verdict_of(gate(max=0.9), score).verdict is GateVerdict.FAIL
    # A value without a bound to judge it, or a bound without a value: no verdict.
    assert verdict_of(gate(), score).verdict is GateVerdict.INCONCLUSIVE
    assert verdict_of(gate(min=0.9), ok).verdict is GateVerdict.INCONCLUSIVE
    # pass: false fails whatever the value says.
    assert verdict_of(gate(min=0.5), WebhookResult("t", passed=False, value=0.9)).verdict is GateVerdict.FAIL


def test_no_answer_is_inconclusive_never_a_pass(hooks):
    hooks.answer("/slow", (200, {"pass": True}, 1.0))
    hooks.answer("/500", (500, {"pass": True}))
    hooks.answer("/html", (200, "<html>ok</html>"))
    hooks.answer("/odd", (200, {"pass": "yes"}))
    hooks.answer("/empty", (200, {"status": "fine"}))
    outcomes = {
        "timeout": asked(hooks.url + "/slow", timeout_s=0.2),
        "refused": asked("http://127.0.0.1:9/gate"),
        "500": asked(hooks.url + "/500"),
        "not json": asked(hooks.url + "/html"),
        "not a bool": asked(hooks.url + "/odd"),
        "no pass": asked(hooks.url + "/empty"),
    }
    assert "within timeout_s 0.2" in outcomes["timeout"].error
    assert "cannot reach http://127.0.0.1:9/gate: ConnectError" == outcomes["refused"].error
    assert outcomes["500"].error.startswith("HTTP 500 from")
    assert "pass: 'yes'; it must be true or false" in outcomes["not a bool"].error
    for what, answer in outcomes.items():
        result = verdict_of(gate(), answer)
        assert result.verdict is GateVerdict.INCONCLUSIVE, what
        assert "held, not failed" in result.reason and answer.error in result.reason
    assert verdict_of(gate(), None).verdict is GateVerdict.INCONCLUSIVE


def test_a_value_past_floats_range_is_an_inconclusive_answer_not_an_overflow(hooks):
    # JSON integers have any number of digits; float() of one past ~1e308 raised OverflowError
    # out of ask(), which is documented never to raise.
    hooks.answer("/huge", (200, '{"value": 1' + "0" * 400 + "}"))
    hooks.answer("/big", (200, {"value": 1e308 * 10}))  # json.dumps writes Infinity
    huge, big = asked(hooks.url + "/huge"), asked(hooks.url + "/big")
    assert huge.passed is None and huge.value is None
    assert huge.error == (f"{hooks.url}/huge answered value: 10000000000000000000... (401 digits); it must be "
                          "a finite number (at most about 1e308), e.g. 0.93")
    assert "answered value: inf; it must be a finite number" in big.error
    assert verdict_of(gate(min=0.9), huge).verdict is GateVerdict.INCONCLUSIVE


def test_timeout_s_bounds_the_whole_request_not_each_read():
    # 150 bytes at one per 0.1 s: 15 s in all, though no read waits longer than 0.1 s. httpx's
    # timeouts bound each read; timeout_s is the longest the whole request may take.
    slow = TrickleServer(b'{"pass": true}'.ljust(150), byte_every_s=0.1)
    try:
        started = time.monotonic()
        result = asked(slow.url + "/gate", timeout_s=0.5)
        took_s = time.monotonic() - started
    finally:
        slow.close()
    assert result.passed is None and result.error == f"no answer from {slow.url}/gate within timeout_s 0.5"
    assert took_s < 10.0  # generous: the answer alone takes 15 s


def test_a_webhook_gate_answering_false_aborts_a_rollout_and_an_outage_holds_it():
    def drive(answer: WebhookResult, seconds: int) -> Rollout:
        clock = FakeClock(0.0)
        rollout = Rollout(canary([{"metric": "webhook", "url": "http://c/x", "name": "smoke"}]), clock)
        for _ in range(seconds):
            rollout.tick({"v2": WindowStats("v2", request_count=100, webhooks={"smoke": answer})})
            if rollout.done:
                break
            clock.advance(1.0)
        return rollout

    bad = drive(WebhookResult("http://c/x", passed=False, reason="p95 regression"), 30)
    assert bad.phase is Phase.ABORTED
    assert "webhook[smoke]" in bad.state.history[-1]["reason"] and "'p95 regression'" in bad.status_line()
    assert bad.state.history[-2]["reason"].startswith("analysis failed (1 of 0 tolerated)")
    # The endpoint's own words, not the numeric form's "webhook = 0, pass 1".
    assert bad.state.history[-2]["reason"].endswith(
        "gate webhook[smoke] passes failed: webhook[smoke] answered pass: false for v2: 'p95 regression'")
    assert "webhook = " not in bad.state.history[-1]["reason"]
    down = drive(WebhookResult("http://c/x", error="cannot reach http://c/x: ConnectError"), 40)
    assert down.phase is Phase.PROGRESSING and down.state.failures_total == 0
    assert "cannot reach" in down.status_line()
    assert drive(WebhookResult("http://c/x", error="gone"), 80).phase is Phase.ABORTED  # progress deadline
    assert drive(WebhookResult("http://c/x", passed=True), 30).phase is Phase.PROMOTED


def test_an_answer_asked_before_the_step_began_does_not_judge_it():
    """A slow endpoint's pass, asked at 5%, must not pass the 20% step: the gate waits for an
    answer asked at 20%. The same holds for a promql gate's query."""
    from serve_ab.rollout.gates import PromQLResult

    steps = [{"set_weight": 5}, {"set_weight": 20}, {"set_weight": 100}]
    webhook = canary([{"metric": "webhook", "url": "http://c/x", "name": "smoke"}], steps, interval_s=10)
    promql = canary([{"metric": "promql", "name": "errors", "query": "vector(0)", "max": 0.1}], steps,
                    interval_s=10, prometheus={"url": "http://prometheus:9090"})
    for config, window in ((webhook, lambda asked_s: WindowStats("v2", request_count=100, webhooks={
                               "smoke": WebhookResult("http://c/x", passed=True, asked_at_s=asked_s)})),
                           (promql, lambda asked_s: WindowStats("v2", request_count=100, promql={
                               "errors": PromQLResult("vector(0)", 0.0, asked_at_s=asked_s)}))):
        clock = FakeClock(0.0)
        rollout = Rollout(config, clock)
        for _ in range(40):  # the 5% step ends at 10 s; the answer asked at 8 s is all there is
            rollout.tick({"v2": window(8.0)})
            clock.advance(1.0)
        assert rollout.state.step_index == 1 and rollout.weights["v2"] == 20.0, config.gates[0].metric
        assert "no answer from webhook[smoke] yet" in rollout.status_line() or \
            "not queried yet" in rollout.status_line()
        rollout.tick({"v2": window(clock())})  # one asked at 20%
        clock.advance(10.0)
        rollout.tick({"v2": window(clock() - 10.0)})
        assert rollout.phase is Phase.PROMOTED


# -- confirm steps in the state machine ------------------------------------------------------

def confirm_canary(**analysis) -> RolloutConfig:
    return canary(steps=[{"set_weight": 20}, {"confirm": {"url": "http://approvals/ok?token=x"}},
                         {"set_weight": 100}], **analysis)


def test_a_confirm_step_holds_until_a_yes_asked_within_the_step_then_advances():
    clock = FakeClock(100.0)
    rollout = Rollout(confirm_canary(progress_deadline_s=30), clock)
    rollout.tick({})
    assert rollout.state.step_index == 1 and rollout.weights == {"v1": 80.0, "v2": 20.0}
    assert 'waiting for http://approvals/ok to answer {"confirm": true}' in rollout.status_line()
    # A yes asked before the step began does not count; no, and no answer, keep it waiting.
    for answer in (WebhookResult("http://approvals/ok", passed=True, asked_at_s=99.0),
                   WebhookResult("http://approvals/ok", passed=False, reason="change freeze", asked_at_s=101.0),
                   WebhookResult("http://approvals/ok", error="HTTP 503 from http://approvals/ok", asked_at_s=102.0)):
        for _ in range(30):  # longer than the progress deadline: a confirm step has none
            clock.advance(1.0)
            rollout.tick({}, confirm=answer)
        assert rollout.phase is Phase.PROGRESSING and rollout.state.step_index == 1
    assert "latest: no usable answer from http://approvals/ok: HTTP 503" in rollout.status_line()
    clock.advance(1.0)
    rollout.tick({}, confirm=WebhookResult("http://approvals/ok", passed=True, reason="CAB-12", asked_at_s=clock()))
    assert rollout.phase is Phase.PROMOTED
    assert any(h["reason"] == "step 2: confirmed by http://approvals/ok: 'CAB-12'" for h in rollout.state.history)


def test_a_confirmed_step_still_needs_a_passing_analysis_and_promote_skips_it():
    clock = FakeClock(0.0)
    config = canary([{"metric": "error_rate", "max": 0.05}],
                    steps=[{"set_weight": 20}, {"confirm": {"url": "http://a/ok"}}, {"set_weight": 100}])
    rollout = Rollout(config, clock)
    rollout.tick({})
    yes = WebhookResult("http://a/ok", passed=True, asked_at_s=1.0)
    clock.advance(1.0)
    rollout.tick({}, confirm=yes)  # confirmed, but no analysis has passed at 20% yet
    assert rollout.state.step_index == 1 and "holding at step 2" in rollout.status_line()
    clock.advance(5.0)
    rollout.tick({"v2": WindowStats("v2", request_count=400)}, confirm=yes)
    assert rollout.phase is Phase.PROMOTED
    waiting = Rollout(config, FakeClock(0.0))
    waiting.tick({})
    assert waiting.state.step_index == 1
    waiting.promote(actor={"name": "alice", "role": "operator"})  # no answer needed
    assert waiting.phase is Phase.PROMOTED
    assert "promoted by operator: left step 2 (confirm by http://a/ok)" == waiting.state.history[-3]["reason"]


def test_a_yes_holds_for_the_step_and_only_then_does_the_deadline_count():
    """A yes is not taken back by a later no or timeout: the step leaves at the first passing
    analysis. Before the yes the step has no deadline; after it, waiting for a passing
    analysis counts toward progress_deadline_s like any hold."""
    config = canary([{"metric": "error_rate", "max": 0.05}], interval_s=10, progress_deadline_s=30,
                    steps=[{"set_weight": 20}, {"confirm": {"url": "http://a/ok"}}, {"set_weight": 100}])
    no_data, evidence = {"v2": WindowStats("v2", request_count=3)}, {"v2": WindowStats("v2", request_count=400)}
    clock = FakeClock(0.0)
    rollout = Rollout(config, clock)
    rollout.tick({})
    clock.advance(1.0)
    rollout.tick(no_data, confirm=WebhookResult("http://a/ok", passed=True, reason="CAB-7", asked_at_s=1.0))
    for answer in (WebhookResult("http://a/ok", passed=False, reason="freeze", asked_at_s=2.0),
                   WebhookResult("http://a/ok", error="no answer within timeout_s 5", asked_at_s=3.0)):
        clock.advance(1.0)
        rollout.tick(no_data, confirm=answer)
        assert rollout.state.step_index == 1
        assert rollout.status_line().startswith("confirmed by http://a/ok: 'CAB-7'; holding at step 2")
    clock.advance(10.0)
    rollout.tick(evidence, confirm=WebhookResult("http://a/ok", passed=False, asked_at_s=13.0))
    assert rollout.phase is Phase.PROMOTED
    assert any(h["reason"] == "step 2: confirmed by http://a/ok: 'CAB-7'" for h in rollout.state.history)

    held = Rollout(config, clock)
    held.tick({})
    start_s = clock()
    for _ in range(60):  # no yes: no deadline
        clock.advance(1.0)
        held.tick(no_data, confirm=WebhookResult("http://a/ok", passed=False, asked_at_s=clock()))
    assert held.phase is Phase.PROGRESSING
    held.tick(no_data, confirm=WebhookResult("http://a/ok", passed=True, asked_at_s=clock()))
    assert held.state.held_since_s == clock() and clock() - start_s == 60.0
    saved = Rollout.from_dict(config, held.to_dict(), clock)  # the yes is kept across a restart
    for _ in range(31):
        clock.advance(1.0)
        saved.tick(no_data, confirm=WebhookResult("http://a/ok", error="HTTP 503", asked_at_s=clock()))
    assert saved.phase is Phase.ABORTED and "progress deadline exceeded: waited 31s" in saved.status_line()


# -- the poller ------------------------------------------------------------------------------

def test_poller_asks_gates_and_the_current_confirm_step_in_the_background(hooks):
    hooks.answer("/gate", (200, {"pass": True}, 0.3))
    hooks.answer("/confirm", (200, {"confirm": False, "reason": "freeze"}))
    config = canary([{"metric": "webhook", "url": hooks.url + "/gate", "name": "smoke"}],
                    steps=[{"set_weight": 20}, {"confirm": {"url": hooks.url + "/confirm", "interval_s": 10}},
                           {"set_weight": 100}])
    clock = FakeClock(0.0)
    rollout = Rollout(config, clock)

    async def until(condition, what: str) -> None:
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.02)

    async def scenario():
        poller = WebhookPoller(config, "digits")
        started = time.monotonic()
        assert poller.poll(clock(), rollout) == WebhookAnswers() and poller.refreshing  # asked, not awaited
        assert time.monotonic() - started < 0.1
        await until(lambda: "smoke" in poller.poll(clock(), rollout).gates, "the gate's answer never came")
        assert confirm_key(0) not in poller.latest  # step 0 is a set_weight step
        rollout.tick({})  # now at the confirm step
        answers = poller.poll(clock(), rollout)  # the gate is not due again (refresh 2.5 s)
        await until(lambda: 1 in poller.poll(clock(), rollout).confirms, "the confirm step was never asked")
        return answers, dict(poller.latest)

    _, latest = asyncio.run(scenario())
    assert latest[gate_key("smoke")].passed is True
    assert (latest[confirm_key(1)].passed, latest[confirm_key(1)].reason) == (False, "freeze")
    gate_body = hooks.bodies("/gate")[0]
    assert gate_body == {"kind": "gate", "name": "smoke", "model": "digits", "stable": "v1", "candidate": "v2",
                         "phase": "progressing", "step_index": 0, "weights_pct": {"v1": 100.0, "v2": 0.0}}
    assert len(hooks.bodies("/gate")) == 1 and hooks.bodies("/confirm")[0]["kind"] == "confirm"
    assert WebhookPoller(canary(), "digits").poll(0.0, rollout) == WebhookAnswers()

    # Once the step is confirmed (a yes holds for the step), its endpoint is asked no more.
    rollout.state.confirmed_at_s = clock()
    asked = len(hooks.bodies("/confirm"))

    async def later():
        poller = WebhookPoller(config, "digits")
        poller.poll(clock(), rollout)
        return set(poller._tasks)  # the asks started: the gate's, and no confirm step's

    assert asyncio.run(later()) == {gate_key("smoke")}
    assert len(hooks.bodies("/confirm")) == asked


def test_a_gate_named_like_a_confirm_key_never_answers_for_the_confirm_step(hooks):
    # Gates' and confirm steps' answers shared one dict keyed by strings, and a confirm step's
    # key was "confirm@<index>": a gate of that name confirmed the step with its pass.
    hooks.answer("/gate", (200, {"pass": True}))
    hooks.answer("/confirm", (200, {"confirm": False, "reason": "change freeze"}))
    config = canary([{"metric": "webhook", "url": hooks.url + "/gate", "name": name}
                     for name in ("confirm@1", "('confirm', 1)")],
                    steps=[{"set_weight": 20}, {"confirm": {"url": hooks.url + "/confirm"}}, {"set_weight": 100}])
    clock = FakeClock(0.0)
    rollout = Rollout(config, clock)
    rollout.tick({})  # at the confirm step

    async def scenario() -> WebhookAnswers:
        poller = WebhookPoller(config, "digits")
        poller.poll(clock(), rollout)
        while poller.refreshing:  # a test's shortcut: the controller never waits
            await asyncio.sleep(0.01)
        return poller.poll(clock(), rollout)

    answers = asyncio.run(scenario())
    assert set(answers.gates) == {"confirm@1", "('confirm', 1)"}
    assert all(a.passed is True for a in answers.gates.values())
    assert (answers.confirm(1).passed, answers.confirm(1).reason) == (False, "change freeze")
    assert len(hooks.bodies("/gate")) == 2 and len(hooks.bodies("/confirm")) == 1  # each hook asked


def test_a_confirm_url_from_the_environment_is_named_by_its_variable_when_its_endpoint_fails(hooks, caplog):
    # A Slack-style URL carries its secret in the path: the status (open to anyone by default),
    # the log and the state named it in full whenever the endpoint failed.
    hooks.answer("/services/T01/B02/s3cret", (500, {"err": "down: /services/T01/B02/s3cret"}))  # it echoes its path
    secret_url = hooks.url + "/services/T01/B02/s3cret"
    config = canary(steps=[{"set_weight": 20}, {"confirm": {"url_from_env": "APPROVALS_URL", "interval_s": 10}},
                           {"set_weight": 100}])
    clock = FakeClock(0.0)
    rollout = Rollout(config, clock)
    rollout.tick({})  # at the confirm step

    async def scenario():
        poller = WebhookPoller(config, "digits", env={"APPROVALS_URL": secret_url})
        poller.poll(clock(), rollout)
        deadline = time.monotonic() + 10
        while poller.poll(clock(), rollout).confirm(1) is None:
            assert time.monotonic() < deadline, "the confirm step was never asked"
            await asyncio.sleep(0.02)
        return poller.latest[confirm_key(1)]

    with caplog.at_level("WARNING", logger="ray.serve"):
        answer = asyncio.run(scenario())
    assert hooks.bodies("/services/T01/B02/s3cret")  # it was asked, at the secret URL
    assert answer.target == "$APPROVALS_URL"
    assert answer.error == "HTTP 500 from $APPROVALS_URL: '{\"err\": \"down: $APPROVALS_URL\"}'"
    rollout.tick({}, confirm=answer)
    shown = " ".join([rollout.status_line(), str(rollout.state.confirm_answer), caplog.text])
    assert "$APPROVALS_URL" in shown and "s3cret" not in shown and "/services/" not in shown


@pytest.mark.parametrize("url", ["https://hooks.example.com/services/T01/s3cret\n",
                                 "https://hooks.example.com:s3cret/services/T01"])
def test_a_url_httpx_cannot_read_is_a_failed_answer_that_names_only_its_variable(url, caplog):
    # httpx.InvalidURL is no httpx.HTTPError: it left ask(), and the poller logged its text,
    # which quotes the URL (a trailing newline from `echo > file`, a bad port).
    with caplog.at_level("WARNING", logger="ray.serve"):
        answer = asyncio.run(ask(url, {"kind": "confirm"}, timeout_s=1.0, answer="confirm", target="$APPROVALS_URL"))
    assert answer.error == "$APPROVALS_URL is not a valid URL" and answer.passed is None
    assert "s3cret" not in caplog.text and "$APPROVALS_URL" in caplog.text


def test_a_confirm_url_from_the_environment_is_named_by_its_variable_when_a_header_secret_is_missing():
    # The result named display_url(url): the secret URL's path, for url_from_env.
    config = canary(steps=[{"set_weight": 20}, {"confirm": {"url_from_env": "APPROVALS_URL",
                                                            "headers_from_env": {"Authorization": "APPROVALS_TOKEN"}}},
                           {"set_weight": 100}])
    rollout = Rollout(config, FakeClock(0.0))
    rollout.tick({})  # at the confirm step

    async def scenario():
        poller = WebhookPoller(config, "digits", env={"APPROVALS_URL": "https://hooks.example.com/T01/s3cret"})
        return poller.poll(0.0, rollout).confirm(1)

    answer = asyncio.run(scenario())
    assert answer.target == "$APPROVALS_URL" and "APPROVALS_TOKEN" in answer.error and "s3cret" not in answer.error


def test_an_endpoint_away_is_logged_when_it_starts_every_5_minutes_and_when_it_answers_again(hooks, caplog):
    # Each ask warned: a gate asked every half interval (2.5 s at interval_s 5) logged 1,440
    # lines in an hour-long outage of its endpoint, and nothing when it came back. A spell
    # now: its start, every 5 minutes while it lasts, its end (as promql gates, failure_log.py).
    hooks.answer("/gate", (503, {"err": "maintenance"}))
    config = canary([{"metric": "webhook", "url": hooks.url + "/gate", "name": "smoke"}],
                    interval_s=60, progress_deadline_s=3600)  # asked every 30 s
    clock = FakeClock(0.0)
    rollout = Rollout(config, clock)

    async def ask_once(poller: WebhookPoller) -> None:
        poller.poll(clock(), rollout)
        deadline = time.monotonic() + 10
        while poller.refreshing:
            assert time.monotonic() < deadline, "the gate was never answered"
            await asyncio.sleep(0.005)
        poller.poll(clock(), rollout)  # collects it; the next is not due yet
        clock.advance(30.0)

    def lines() -> list[str]:
        return [f"{r.levelname} {r.getMessage()}" for r in caplog.records if "webhook gate" in r.getMessage()]

    async def scenario():
        poller = WebhookPoller(config, "digits")
        for _ in range(21):  # 10 minutes of failed asks
            await ask_once(poller)
        outage = lines()
        hooks.answer("/gate", (200, {"pass": True}))
        await ask_once(poller)
        await ask_once(poller)
        return outage, lines()[len(outage):]

    with caplog.at_level("INFO", logger="ray.serve"):
        outage, after = asyncio.run(scenario())
    assert len(outage) == 3, outage  # at 0 s, 300 s, 600 s
    assert outage[0].startswith(f"WARNING serve-ab webhook gate smoke ({hooks.url}/gate): failed: HTTP 503 from ")
    assert outage[0].endswith("(the gate is inconclusive and holds the rollout; logged again every 300s while it "
                              "lasts)")
    assert "still failing after 300s (11 asks)" in outage[1] and "still failing after 600s (21 asks)" in outage[2]
    assert after == [f"INFO serve-ab webhook gate smoke ({hooks.url}/gate) answers again, after 630s of failures "
                     "(21 asks)"]


def test_a_password_with_a_bare_at_sign_is_shown_as_no_part_of_it():
    # The HTTP client takes the user information up to the authority's last @: all of it is the
    # password, and display_url named the endpoint 'http://***@ss@prom:9090/x'.
    from serve_ab.config.rollout import display_url

    assert display_url("http://admin:p@ss@prom:9090/x?token=t0k") == "http://***@prom:9090/x"


def test_a_password_in_a_webhook_url_is_in_no_result_or_log_line(hooks, caplog):
    # display_url dropped a query's token but kept user:password@ (or a token as the user):
    # the target and error are logged, and are the gate's reason and the step's status.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://ops:s3cret@127.0.0.1:{s.getsockname()[1]}/hook?token=t0k"
    with caplog.at_level("WARNING", logger="ray.serve"):
        away = asyncio.run(ask(closed, {"kind": "gate"}, timeout_s=1.0))
        hooks.answer("/judge", (500, {"error": "down"}))
        refused = asyncio.run(ask((hooks.url + "/judge").replace("://", "://s3cret@"), {"kind": "gate"}, timeout_s=1.0))
    assert away.target.startswith("http://***@127.0.0.1:") and away.error == f"cannot reach {away.target}: ConnectError"
    assert refused.target.startswith("http://***@127.0.0.1:") and "HTTP 500" in refused.error
    shown = " ".join([caplog.text, away.target, away.error, refused.target, refused.error])
    assert "s3cret" not in shown and "t0k" not in shown and len(caplog.records) == 2
