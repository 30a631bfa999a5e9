"""PromQL gates: the schema, the provider against a fake Prometheus HTTP API, the verdicts."""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import re
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

import pytest
from pydantic import ValidationError

from serve_ab.rollout.gates import (
    PromQLResult,
    GateVerdict,
    WindowStats,
    evaluate_gate,
    evaluate_gates,
)
from serve_ab.rollout.promql import (
    PromQLPoller,
    fetch_promql_values,
    promql_duration,
    query_value,
    rendered_queries,
    run_query,
)
from serve_ab.rollout.machine import Phase, Rollout
from serve_ab.config.rollout import Gate, GateMetric, RolloutConfig, render_promql
from tests.integration.conftest import free_port
from tests.support.fake_http import ServedInThread


def vector(*values, labels=None):
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {**(labels or {}), "i": str(i)}, "value": [1700000000.0, v]} for i, v in enumerate(values)]}}


def scalar(value):
    return {"status": "success", "data": {"resultType": "scalar", "result": [1700000000.0, value]}}


class FakePrometheus(ServedInThread):
    """Prometheus' /api/v1/query on a real socket: answers by query text, records what it got."""

    def __init__(self):
        self.answers: dict[str, tuple[int, object, float]] = {}  # query -> (status, body, delay_s)
        self.received: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                url = urlparse(self.path)
                query = parse_qs(url.query).get("query", [""])[0]
                fake.received.append(query)
                if url.path != "/api/v1/query":
                    status, body, delay_s = 404, "404 page not found", 0.0
                else:
                    status, body, delay_s = fake.answers.get(query, (200, vector(), 0.0))
                time.sleep(delay_s)
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "text/plain" if isinstance(body, str) else "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out first
                    pass

            def log_message(self, *args):
                pass

        super().__init__(Handler)

    def answer(self, query: str, body, status: int = 200, delay_s: float = 0.0) -> None:
        self.answers[query] = (status, body, delay_s)



@pytest.fixture
def prometheus():
    fake = FakePrometheus()
    yield fake
    fake.close()


def run(coro):
    return asyncio.run(coro)


# -- the provider ----------------------------------------------------------------------------

def test_single_sample_vector_and_scalar_give_the_value(prometheus):
    prometheus.answer("up", vector("0.25", labels={"job": "serve-ab"}))
    prometheus.answer("scalar(up)", scalar("1e-3"))
    assert run(query_value(prometheus.url, "up", 2)) == 0.25
    assert run(query_value(prometheus.url + "/", "scalar(up)", 2)) == 0.001
    assert prometheus.received == ["up", "scalar(up)"]


@pytest.mark.parametrize("body, nan", [(vector(), False), (vector("NaN"), True), (scalar("NaN"), True)])
def test_empty_result_or_nan_is_no_data_not_an_error(prometheus, body, nan):
    prometheus.answer("q", body)
    result = run(run_query(prometheus.url, "q", 2))
    assert result == PromQLResult("q", None, None, nan=nan)


def test_a_nan_answer_is_named_in_the_gate_reason_not_called_no_samples(prometheus):
    """Live, a ratio of rates over a range without requests (0/0) answered NaN, and the gate
    said "the query returned no samples", which sends an operator looking for a missing
    series that is there."""
    prometheus.answer("q", vector("NaN"))
    nan = evaluate_gate(GATE, candidate_with(run(run_query(prometheus.url, "q", 2))), STABLE, min_samples=50)
    assert nan.verdict is GateVerdict.INCONCLUSIVE and nan.value is None
    assert nan.reason == ("no data for promql[error_ratio]: the query returned NaN (e.g. 0/0: a ratio over a range "
                          "with no requests); is v2 receiving traffic? query: q")
    prometheus.answer("q", vector())
    empty = evaluate_gate(GATE, candidate_with(run(run_query(prometheus.url, "q", 2))), STABLE, min_samples=50)
    assert "the query returned no samples" in empty.reason


def test_infinity_is_a_value(prometheus):
    prometheus.answer("q", vector("+Inf"))
    assert run(query_value(prometheus.url, "q", 2)) == float("inf")


@pytest.mark.parametrize(
    "status, body, expected",
    [
        (400, {"status": "error", "errorType": "bad_data",
               "error": 'invalid parameter "query": 1:5: parse error: unexpected "}"'},
         'Prometheus answered HTTP 400, bad_data: invalid parameter "query": 1:5: parse error'),
        (503, {"status": "error", "errorType": "unavailable", "error": "TSDB not ready"},
         "HTTP 503, unavailable: TSDB not ready"),
        (502, "<html>Bad Gateway</html>", "HTTP 502 from http://127.0.0.1:"),
        (200, vector("1", "2", "3", "4"), "the query returned 4 series"),
        (200, {"status": "success", "data": {"resultType": "matrix", "result": []}},
         "the query returned a matrix; a gate needs an instant scalar or a one-sample vector"),
        (200, {"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {}, "value": [1.0, "lots"]}]}}, "cannot read a number from the sample [1.0, 'lots']"),
    ],
)
def test_errors_are_reported_with_the_query_and_never_raise(prometheus, caplog, status, body, expected):
    query = 'sum(rate(serve_ab_errors_total{version="v2"}[1m]))'
    prometheus.answer(query, body, status=status)
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        result = run(run_query(prometheus.url, query, 2))
        assert run(query_value(prometheus.url, query, 2)) is None
    assert result.value is None and expected in result.error, result.error
    assert result.query == query
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all(query in w and expected in w for w in warnings)


NOT_THE_API = "is not Prometheus' query API"


@pytest.mark.parametrize("body, expected", [
    ({"status": "success", "data": "x"}, NOT_THE_API + ": its data is 'x'"),
    ({"status": "success", "data": [1]}, NOT_THE_API + ": its data is '[1]'"),
    ({"status": "success", "data": {"resultType": "vector", "result": {"a": 1}}}, NOT_THE_API + ": a vector's result"),
    ({"status": "success", "data": {"resultType": "vector", "result": "abc"}}, NOT_THE_API + ": a vector's result"),
    ({"status": "success", "data": {"resultType": "vector", "result": [5]}}, NOT_THE_API + ": a vector's result"),
    ({"status": "success"}, NOT_THE_API + ": its data is 'None'"),
    ({"status": "success", "data": {}}, NOT_THE_API + ": its data is '{}'"),
    ({"status": "success", "data": {"resultType": "scalar", "result": [1, True]}}, "cannot read a number"),
    ({"status": "success", "data": {"resultType": "scalar", "result": [1, "0.5", 2]}}, "cannot read a number"),
])
def test_an_answer_of_another_shape_is_a_failed_query_not_an_exception(prometheus, body, expected):
    """A server answering 200 with JSON of another shape (a proxy's, another service's on
    Prometheus' port): five such shapes raised out of run_query (AttributeError, KeyError),
    which PromQLPoller logged and dropped, so the gate went on judging its last answer and
    passed; a JSON ``true`` was read as the value 1, a sample of three items as its second."""
    prometheus.answer("q", body)
    result = run(run_query(prometheus.url, "q", 2, log=False))
    assert result.value is None and expected in result.error, result.error


@pytest.mark.parametrize("body, expected", [
    ({"status": "error", "error": "rate limited"}, "Prometheus answered HTTP 200: rate limited"),
    ({"status": "error", "error": 5}, "Prometheus answered HTTP 200: 5"),
    ({"status": "error", "errorType": "timeout", "error": "query timed out"},
     "Prometheus answered HTTP 200, timeout: query timed out"),
])
def test_an_error_without_error_type_says_no_none(prometheus, body, expected):
    """errorType is optional where a proxy answers for Prometheus: the reason read
    "Prometheus answered HTTP 200, None: rate limited"; a body {"status": "success"} without
    data read "the query returned a None"."""
    prometheus.answer("q", body)
    assert run(run_query(prometheus.url, "q", 2, log=False)).error == expected


async def _refreshed(poller: PromQLPoller, now_s: float) -> None:
    """A poll at ``now_s``, its refresh run to the end (a real HTTP query to the fake server,
    bounded by a 10-s guard, not timed), and a poll that collects it."""
    poller.poll(now_s)
    deadline = time.monotonic() + 10
    while poller.refreshing:
        assert time.monotonic() < deadline, "a refresh never completed"
        await asyncio.sleep(0.005)
    poller.poll(now_s)


def test_a_refresh_that_raises_leaves_no_earlier_answer_to_pass_the_gate(prometheus, monkeypatch):
    """Were a refresh ever to raise (run_query should not), the gates must not go on reading
    the answers of the refresh before it, which they would take for this step's evidence."""
    import serve_ab.rollout.promql as promql

    config = rollout_config(prometheus.url)
    rendered = rendered_queries(config, "digits", "digits-ab")
    prometheus.answer(rendered["error_ratio"], vector("0.01"))

    async def broken(*_args, **_kwargs):
        raise AttributeError("'str' object has no attribute 'get'")

    async def scenario():
        poller = PromQLPoller(config, "digits", "digits-ab", refresh_s=5.0)
        await _refreshed(poller, 100.0)
        passed = evaluate_gate(GATE, candidate_with(poller.latest["error_ratio"]), STABLE, 50).verdict
        monkeypatch.setattr(promql, "fetch_promql_values", broken)
        await _refreshed(poller, 105.0)
        return passed, poller.latest

    passed, latest = run(scenario())
    assert passed is GateVerdict.PASS
    answer = latest["error_ratio"]
    assert answer.value is None and answer.asked_at_s == 105.0 and "AttributeError" in answer.error
    assert set(latest) == {"error_ratio", "latency_vs_stable"}
    assert evaluate_gate(GATE, candidate_with(answer), STABLE, 50).verdict is GateVerdict.INCONCLUSIVE


def test_unreachable_and_slow_prometheus_are_errors_naming_the_endpoint(prometheus):
    closed = f"http://127.0.0.1:{free_port()}"
    result = run(run_query(closed, "up", 2))
    assert result.value is None and result.error.startswith(f"cannot reach {closed}/api/v1/query")
    # The answer would come after 3 s; the 0.2 s timeout turns it into an error, not a value.
    prometheus.answer("slow", vector("1"), delay_s=3.0)
    result = run(run_query(prometheus.url, "slow", 0.2))
    assert result.value is None
    assert result.error == f"no answer from {prometheus.url}/api/v1/query within timeout_s 0.2"


def test_an_answer_trickled_past_timeout_s_is_a_timeout_not_a_value():
    """httpx's timeout bounds each read: a body sent a byte every 0.3 s (a stalled proxy)
    never waited 0.5 s for one, so run_query(timeout_s=0.5) waited for the whole body and
    judged it (measured: timeout_s 1 answered after 6.1 s with the value), while the poller's
    gates went on reading the refresh before. timeout_s bounds the whole answer."""
    body = json.dumps(vector("0.001")).encode()

    class Trickle(BaseHTTPRequestHandler):
        def do_GET(self):
            try:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.3 if i < 10 else 0.0)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
                pass

        def log_message(self, *args):
            pass

    server = ServedInThread(Trickle)
    try:
        result = run(run_query(server.url, "q", 0.5, log=False))
    finally:
        server.close()
    assert result.value is None
    assert result.error == f"no answer from {server.url}/api/v1/query within timeout_s 0.5"


def test_a_password_in_the_prometheus_url_is_in_no_error_or_log_line(prometheus, caplog):
    # The error is logged and is the gate's reason: it goes into the rollout's history, its
    # status and its notifications (a Slack channel), so basic auth's password must not.
    closed = f"http://ops:s3cret@127.0.0.1:{free_port()}"
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        unreachable = run(run_query(closed, "up", 2))
        not_found = run(run_query(prometheus.url.replace("://", "://ops:s3cret@") + "/prometheus", "up", 2))
        prometheus.answer("slow", vector("1"), delay_s=3.0)
        slow = run(run_query(prometheus.url.replace("://", "://ops:s3cret@"), "slow", 0.2))
    errors = [unreachable.error, not_found.error, slow.error]
    assert unreachable.error.startswith("cannot reach http://ops:***@127.0.0.1:")
    assert "HTTP 404" in not_found.error and "ops:***@" in not_found.error
    assert slow.error.startswith("no answer from http://ops:***@127.0.0.1:")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and not any("s3cret" in text for text in errors + lines), errors + lines


def test_wrong_path_is_an_error_not_no_data(prometheus):
    result = run(run_query(prometheus.url + "/prometheus", "up", 2))
    assert result.value is None and "HTTP 404" in result.error


# -- placeholders, configuration, several gates ------------------------------------------------

ERROR_RATIO = ('sum(rate(serve_ab_errors_total{model="{{model}}", version="{{ candidate }}"}[{{interval}}])) / '
               'sum(rate(serve_ab_requests_total{model="{{model}}", version="{{candidate}}"}[{{interval}}]))')
LATENCY_VS_STABLE = ('histogram_quantile(0.95, sum by (le) (rate(x{version="{{candidate}}"}[1m]))) / '
                     'histogram_quantile(0.95, sum by (le) (rate(x{version="{{stable}}"}[1m])))')


def rollout_config(url: str, other_url: str | None = None, **analysis) -> RolloutConfig:
    latency_gate = {"metric": "promql", "name": "latency_vs_stable", "max": 1.5, "query": LATENCY_VS_STABLE}
    if other_url:
        latency_gate["prometheus"] = {"url": other_url, "timeout_s": "1s"}
    return RolloutConfig.model_validate({
        "strategy": "canary", "stable": "v1", "candidate": "v2",
        "analysis": {"interval_s": 10, "min_samples": 5, "failure_limit": 0,
                     "prometheus": {"url": url, "timeout_s": 2}, **analysis},
        "gates": [{"metric": "promql", "name": "error_ratio", "max": 0.05, "query": ERROR_RATIO}, latency_gate],
        "steps": [{"set_weight": 20}, {"pause": {"duration": "1m"}}, {"set_weight": 100}],
    })


def test_placeholders_are_substituted():
    rendered = rendered_queries(rollout_config("http://p:9090", interval_s="1.5s"), "digits", "digits-ab")
    assert rendered["error_ratio"] == (
        'sum(rate(serve_ab_errors_total{model="digits", version="v2"}[1500ms])) / '
        'sum(rate(serve_ab_requests_total{model="digits", version="v2"}[1500ms]))')
    assert 'x{version="v2"}' in rendered["latency_vs_stable"] and 'x{version="v1"}' in rendered["latency_vs_stable"]
    assert "{{" not in "".join(rendered.values())
    assert render_promql("{{a}}-{{ b }}-{{a}}", {"a": "1", "b": "2"}) == "1-2-1"
    assert [promql_duration(s) for s in (10, 60.0, 0.25, 90.5)] == ["10s", "60s", "250ms", "90500ms"]


def test_app_placeholder_selects_the_gates_own_app():
    """Two apps may serve one model (an A/B test beside a canary): live (multi47), a canary's
    gate selecting by model and version summed the A/B app's v2 requests with its own. Every
    series carries ``application`` (serve_ab/serving/metrics.py), which {{app}} names."""
    query = 'sum(rate(serve_ab_requests_total{application="{{app}}", version="{{ candidate }}"}[30s]))'
    config = RolloutConfig.model_validate({**rollout_config("http://p:9090").model_dump(), "gates": [
        {"metric": "promql", "name": "candidate_rate", "max": 100, "query": query}]})
    assert rendered_queries(config, "digits", "digits-canary") == {
        "candidate_rate": 'sum(rate(serve_ab_requests_total{application="digits-canary", version="v2"}[30s]))'}


@pytest.mark.parametrize("app", ['team "a"', "x\\y", "o'k", 'a", application=~".*', "line\nbreak", "plain-app"])
@pytest.mark.parametrize("quote", ['"', "'"])
def test_the_app_placeholder_is_escaped_as_a_promql_string(app, quote):
    """Ray Serve takes any non-empty application name. Put in raw, a quote in it cut the gate's
    application="{{app}}" short (Prometheus refused the query: the gate held all rollout long), or
    rewrote the selector (``a", application=~".*`` read every app's series)."""
    query = f"sum(rate(serve_ab_requests_total{{application={quote}{{{{app}}}}{quote}}}[30s]))"
    config = RolloutConfig.model_validate({**rollout_config("http://p:9090").model_dump(), "gates": [
        {"metric": "promql", "name": "candidate_rate", "max": 100, "query": query}]})
    rendered = rendered_queries(config, "digits", app)["candidate_rate"]
    # One string literal, whose escapes (\\, \xNN) PromQL reads as Python does.
    string = rf"{quote}(?:[^{quote}\\]|\\.)*{quote}"  # a quote, characters or escapes, the quote
    literal = re.fullmatch(rf"sum\(rate\(serve_ab_requests_total\{{application=({string})\}}\[30s\]\)\)", rendered)
    assert literal is not None, rendered
    assert ast.literal_eval(literal.group(1)) == app


def test_fetch_asks_each_gates_prometheus_and_keys_answers_by_gate_name(prometheus):
    other = FakePrometheus()
    try:
        config = rollout_config(prometheus.url, other.url)
        rendered = rendered_queries(config, "digits", "digits-ab")
        prometheus.answer(rendered["error_ratio"], vector("0.01"))
        other.answer(rendered["latency_vs_stable"], scalar("1.2"))
        answers = run(fetch_promql_values(config, "digits", "digits-ab"))
    finally:
        other.close()
    assert answers == {"error_ratio": PromQLResult(rendered["error_ratio"], 0.01),
                       "latency_vs_stable": PromQLResult(rendered["latency_vs_stable"], 1.2)}
    assert prometheus.received == [rendered["error_ratio"]] and other.received == [rendered["latency_vs_stable"]]
    no_promql = RolloutConfig.model_validate({**config.model_dump(), "gates": [{"metric": "error_rate", "max": 0.1}]})
    assert run(fetch_promql_values(no_promql, "digits", "digits-ab")) == {}


def test_schema_accepts_promql_gates_and_refuses_bad_ones_with_the_value():
    gate = Gate.model_validate({"metric": "promql", "name": "error_ratio", "min": -1, "query": "q"})
    assert gate.metric is GateMetric.PROMQL and gate.label == "promql[error_ratio] >= -1"
    assert not gate.needs_stable  # the query itself compares with stable when it needs to

    def error(gate: dict, **rollout) -> str:
        doc = {"strategy": "canary", "stable": "v1", "candidate": "v2", "steps": [{"set_weight": 100}],
               "gates": [gate], **rollout}
        with pytest.raises(ValidationError) as info:
            RolloutConfig.model_validate(doc)
        return str(info.value)

    where = {"analysis": {"prometheus": {"url": "http://p:9090"}}}
    assert "gate promql needs name and query, e.g. {metric: promql" in error({"metric": "promql", "max": 1}, **where)
    assert "gate promql needs query" in error({"metric": "promql", "name": "x", "max": 1}, **where)
    assert "gate promql[x] has max_ratio_to_stable; a promql gate takes max or min" in error(
        {"metric": "promql", "name": "x", "query": "q", "max_ratio_to_stable": 1.5}, **where)
    assert "query has placeholder(s) {{canary}}; valid: {{candidate}}, {{stable}}, {{model}}, {{app}}, {{interval}}" in error(
        {"metric": "promql", "name": "x", "query": 'up{v="{{canary}}"}', "max": 1}, **where)
    assert "gate error_rate takes no query; only metric: promql does" in error(
        {"metric": "error_rate", "max": 0.1, "query": "q"}, **where)
    assert ("gates[0] (promql[x]) has no Prometheus to ask: set analysis.prometheus: "
            "{url: http://prometheus:9090} or prometheus: on the gate") in error(
        {"metric": "promql", "name": "x", "query": "q", "max": 1})
    assert "String should match pattern" in error(
        {"metric": "promql", "name": "x", "query": "q", "max": 1, "prometheus": {"url": "prometheus:9090"}})
    assert "timeout_s" in error(
        {"metric": "promql", "name": "x", "query": "q", "max": 1,
         "prometheus": {"url": "http://p:9090", "timeout_s": "2m"}})
    doc = {"strategy": "canary", "stable": "v1", "candidate": "v2", "steps": [{"set_weight": 100}], **where,
           "gates": [{"metric": "promql", "name": "x", "query": "a", "max": 1},
                     {"metric": "promql", "name": "x", "query": "b", "min": 0}]}
    with pytest.raises(ValidationError, match="promql gate name 'x' is used twice"):
        RolloutConfig.model_validate(doc)


# -- verdicts --------------------------------------------------------------------------------

def candidate_with(answer: PromQLResult | None) -> WindowStats:
    return WindowStats("v2", promql={} if answer is None else {"error_ratio": answer})


GATE = Gate.model_validate({"metric": "promql", "name": "error_ratio", "max": 0.05, "query": "q"})
STABLE = WindowStats("v1")


def test_gate_passes_fails_and_is_inconclusive_without_data_or_on_error():
    ok = evaluate_gate(GATE, candidate_with(PromQLResult("q", 0.01)), STABLE, min_samples=50)
    assert ok.verdict is GateVerdict.PASS and ok.value == 0.01
    assert ok.reason == "promql[error_ratio] on v2 is 0.01, within max 0.05"
    bad = evaluate_gate(GATE, candidate_with(PromQLResult("q", 0.2)), STABLE, min_samples=50)
    assert bad.verdict is GateVerdict.FAIL and (bad.value, bad.threshold, bad.bound) == (0.2, 0.05, "max")
    assert bad.reason == "promql[error_ratio] on v2 is 0.2, above max 0.05; query: q"
    low = Gate.model_validate({"metric": "promql", "name": "error_ratio", "min": 0.5, "query": "q"})
    assert evaluate_gate(low, candidate_with(PromQLResult("q", 0.2)), STABLE, 1).verdict is GateVerdict.FAIL
    empty = evaluate_gate(GATE, candidate_with(PromQLResult("q", None)), STABLE, min_samples=50)
    assert empty.verdict is GateVerdict.INCONCLUSIVE and empty.value is None
    assert "no data for promql[error_ratio]: the query returned no samples; is v2 receiving traffic?" in empty.reason
    failed = evaluate_gate(GATE, candidate_with(PromQLResult("q", None, "cannot reach x")), STABLE, 50)
    assert failed.verdict is GateVerdict.INCONCLUSIVE
    assert failed.reason == "promql[error_ratio] query failed, so v2 cannot be judged on it: cannot reach x; query: q"
    missing = evaluate_gate(GATE, candidate_with(None), STABLE, 50)
    assert missing.verdict is GateVerdict.INCONCLUSIVE and "not queried yet" in missing.reason


def test_from_fake_prometheus_to_verdicts(prometheus):
    config = rollout_config(prometheus.url)
    rendered = rendered_queries(config, "digits", "digits-ab")
    prometheus.answer(rendered["error_ratio"], vector("0.2"))
    prometheus.answer(rendered["latency_vs_stable"], vector())
    answers = run(fetch_promql_values(config, "digits", "digits-ab"))
    results = evaluate_gates(config.gates, WindowStats("v2", promql=answers), STABLE, min_samples=5)
    assert [r.verdict for r in results] == [GateVerdict.FAIL, GateVerdict.INCONCLUSIVE]


def test_a_rollout_aborts_on_a_failing_query_value_and_holds_on_a_query_error():
    def drive(answer: PromQLResult, seconds: int) -> Rollout:
        now = [0.0]
        rollout = Rollout(rollout_config("http://p:9090"), clock=lambda: now[0])
        for _ in range(seconds):
            windows = {"v1": WindowStats("v1", request_count=100),
                       "v2": WindowStats("v2", request_count=100,
                                         promql={"error_ratio": answer,
                                                 "latency_vs_stable": PromQLResult("q2", 1.0)})}
            rollout.tick(windows)
            if rollout.done:
                break
            now[0] += 1.0
        return rollout

    bad = drive(PromQLResult("q", 0.2), 30)
    assert bad.phase is Phase.ABORTED and "promql[error_ratio]" in bad.state.history[-1]["reason"]
    down = drive(PromQLResult("q", None, "cannot reach http://p:9090/api/v1/query"), 120)
    assert down.phase is Phase.PROGRESSING and down.state.step_index == 1  # held past its 1m pause
    assert "cannot reach" in down.status_line()
    good = drive(PromQLResult("q", 0.01), 120)
    assert good.phase is Phase.PROMOTED


def test_poller_refreshes_in_the_background_and_only_when_due(prometheus):
    config = rollout_config(prometheus.url)  # interval_s 10: refresh every 5 s by default
    rendered = rendered_queries(config, "digits", "digits-ab")
    prometheus.answer(rendered["error_ratio"], vector("0.01"), delay_s=0.3)

    async def until(condition, what: str) -> None:
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.02)

    async def scenario():
        poller = PromQLPoller(config, "digits", "digits-ab")
        # Synchronous, and the answer needs the loop to turn: it cannot have waited for it.
        assert poller.poll(now_s=100.0) == {} and poller.refreshing
        await until(lambda: poller.poll(now_s=100.5), "the first refresh never completed")
        first = dict(poller.latest)
        assert len(prometheus.received) == 2
        prometheus.answer(rendered["error_ratio"], vector("0.07"), delay_s=0.3)
        poller.poll(now_s=104.0)  # not due yet (refresh_s 5)
        assert not poller.refreshing
        poller.poll(now_s=106.0, active=False)  # due, but no analysis can run
        assert not poller.refreshing and poller.latest == first
        poller.poll(now_s=106.0)  # due: both gates asked once more, in the background
        assert poller.refreshing
        poller.poll(now_s=112.0)  # due again, but that refresh is still in flight
        await until(lambda: poller.poll(now_s=106.2)["error_ratio"].value == 0.07,
                    "the second refresh never completed")
        return first

    first = run(scenario())
    assert first["error_ratio"].value == 0.01 and first["latency_vs_stable"].value is None
    assert len(prometheus.received) == 4  # one first refresh, one more, nothing while in flight
    assert PromQLPoller(rollout_config(prometheus.url).model_copy(update={"gates": []}), "d", "a").poll(0.0) == {}


def test_a_lasting_failure_is_logged_when_it_starts_changes_every_5_minutes_and_ends(prometheus, caplog):
    """Live, with Prometheus down 40 s, two promql gates logged 16 warnings (one per gate per
    refresh, every 5 s): some 1,400 an hour. Each failure is logged once, then again every
    REPEAT_LOG_S while it lasts, and its end once; the poller's clock is the caller's
    (refreshed every 30 s here: 21 real queries, not 121, make the 10 minutes)."""
    config = rollout_config(prometheus.url)
    rendered = rendered_queries(config, "digits", "digits-ab")
    prometheus.answer(rendered["latency_vs_stable"], vector("1.0"))
    down = {"status": "error", "errorType": "unavailable", "error": "TSDB not ready"}

    def lines() -> list[str]:
        return [f"{r.levelname} {r.getMessage()}" for r in caplog.records if "promql" in r.getMessage()]

    async def scenario():
        poller = PromQLPoller(config, "digits", "digits-ab", refresh_s=30.0)
        prometheus.answer(rendered["error_ratio"], down, status=503)
        for now_s in range(0, 605, 30):  # 21 failed refreshes over 10 minutes
            await _refreshed(poller, float(now_s))
        assert poller.latest["error_ratio"].error and poller.latest["latency_vs_stable"].value == 1.0
        outage = lines()
        prometheus.answer(rendered["error_ratio"], {"status": "error", "errorType": "bad_data",
                                                    "error": "parse error"}, status=400)
        await _refreshed(poller, 630.0)
        await _refreshed(poller, 660.0)
        prometheus.answer(rendered["error_ratio"], vector("0.01"))
        await _refreshed(poller, 690.0)
        await _refreshed(poller, 720.0)
        return outage, lines()[len(outage):]

    with caplog.at_level(logging.INFO, logger="ray.serve"):
        outage, after = run(scenario())
    assert len(outage) == 3, outage  # at 0 s, 300 s, 600 s
    assert outage[0].startswith("WARNING serve-ab promql gate error_ratio: query failed: Prometheus answered "
                                "HTTP 503, unavailable: TSDB not ready; query: sum(rate(")
    assert "(the gate is inconclusive and holds the rollout; logged again every 300s while it lasts)" in outage[0]
    assert outage[1].startswith("WARNING serve-ab promql gate error_ratio: still failing after 300s "
                                "(11 asks): Prometheus answered HTTP 503")
    assert "still failing after 600s (21 asks)" in outage[2]
    assert len(after) == 2, after  # the new error once; the recovery once
    assert after[0].startswith("WARNING serve-ab promql gate error_ratio: query failed: Prometheus answered HTTP 400")
    assert after[1] == "INFO serve-ab promql gate error_ratio answers again, after 690s of failures (23 asks)"
