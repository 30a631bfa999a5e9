"""The rollout schema: the documented YAML parses, bad values are refused with the value."""

from __future__ import annotations

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from serve_ab.config import rollout as rc
from serve_ab.config.experiment import ConfigError, parse_experiment
from serve_ab.config.rollout import (
    AnalysisStep,
    GateMetric,
    PauseStep,
    RolloutConfig,
    SetWeightStep,
    Strategy,
    parse_duration_s,
)

EXAMPLE = """
rollout:
  strategy: canary
  stable: v1
  candidate: v2
  analysis: {interval_s: 10, min_samples: 50, failure_limit: 1, progress_deadline_s: 600}
  gates:
    - {metric: latency_p95_ms, max: 50}
    - {metric: latency_p95_ms, max_ratio_to_stable: 1.5}
    - {metric: error_rate, max: 0.01}
    - {metric: drift_js, max: 0.1}
    - {metric: feedback_mean, name: revenue, min_ratio_to_stable: 0.95}
    - {metric: feedback_rate, name: conversion, min: 0.02}
  steps:
    - set_weight: 5
    - pause: {duration: 30s}
    - analysis: {}
    - set_weight: 20
    - pause: {}
    - set_weight: 50
    - set_weight: 100
  retire_after_s: 60
"""


def base(**changes) -> dict:
    doc = yaml.safe_load(EXAMPLE)["rollout"]
    doc.update(changes)
    return doc


def error_text(doc: dict) -> str:
    with pytest.raises(ValidationError) as info:
        RolloutConfig.model_validate(doc)
    return str(info.value)


def test_documented_example_parses():
    config = RolloutConfig.model_validate(base())
    assert config.strategy is Strategy.CANARY
    assert [type(s) for s in config.steps] == [
        SetWeightStep, PauseStep, AnalysisStep, SetWeightStep, PauseStep, SetWeightStep, SetWeightStep
    ]
    assert config.steps[1].pause.duration == 30.0 and config.steps[4].pause.duration is None
    assert config.analysis.failure_limit == 1 and config.analysis.progress_deadline_s == 600.0
    assert [g.label for g in config.gates][:2] == ["latency_p95_ms <= 50", "latency_p95_ms <= 1.5x stable"]
    assert config.gates[4].metric is GateMetric.FEEDBACK_MEAN and config.gates[4].needs_stable
    assert not config.gates[0].needs_stable and config.gates[3].needs_stable
    # A dump parses back to the same config (what a controller persists or passes around).
    assert RolloutConfig.model_validate(config.model_dump()) == config


def test_blue_green_defaults_and_settings():
    doc = base(strategy="blue_green", steps=[], blue_green={"post_switch_watch_s": "5m", "keep_blue_s": "10m"})
    config = RolloutConfig.model_validate(doc)
    assert config.blue_green_settings.post_switch_watch_s == 300.0
    assert config.blue_green_settings.keep_blue_s == 600.0
    bare = RolloutConfig.model_validate(base(strategy="blue_green", steps=[]))
    assert bare.blue_green is None and bare.blue_green_settings.auto_switch is True


@pytest.mark.parametrize(
    "text, seconds",
    [("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1.5m", 90.0), ("500ms", 0.5), (" 10 s ", 10.0),
     ("45", 45.0), (12, 12.0), (0.25, 0.25), (0, 0.0)],
)
def test_parse_duration_s(text, seconds):
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["30 sec", "5d", "-1s", "", "1m30s", True, None, -3, float("inf"), [30]])
def test_parse_duration_s_refuses_with_the_value_and_the_valid_forms(bad):
    with pytest.raises(ValueError) as info:
        parse_duration_s(bad)
    assert repr(bad) in str(info.value) and "'30s'" in str(info.value)


@pytest.mark.parametrize(
    "steps, expected",
    [
        ([{"set_weight": 150}], "set_weight is 150; it must be 0..100"),
        ([{"set_weight": -5}], "set_weight is -5; it must be 0..100"),
        ([{"set_weight": 12.345}], "weights resolve to 0.01% steps"),
        ([{"set_weight": 5, "pause": {}}], "a step must have exactly one key"),
        ([{"sleep": 5}], "got {'sleep': 5}"),
        (["set_weight 5"], "a step must have exactly one key"),
        ([{"set_weight": 5}, {"pause": {"duration": "30 sec"}}], "invalid duration '30 sec'"),
        ([{"set_weight": 5}, {"pause": {"wait": 3}}], "Extra inputs are not permitted"),
        ([{"analysis": {}}], "while the candidate's weight is 0"),
    ],
)
def test_bad_steps_are_refused_with_the_value(steps, expected):
    assert expected in error_text(base(steps=steps))


@pytest.mark.parametrize(
    "gate, expected",
    [
        ({"metric": "latency_p95_ms", "max": 50, "max_ratio_to_stable": 2}, "give exactly one of"),
        ({"metric": "latency_p95_ms"}, "has bounds none"),
        ({"metric": "feedback_mean", "min": 1}, "needs the feedback name"),
        ({"metric": "error_rate", "name": "x", "max": 0.1}, "takes no name (got 'x')"),
        ({"metric": "drift_js", "max_ratio_to_stable": 2}, "takes only max"),
        ({"metric": "error_rate", "max": 5}, "error_rate max is 5.0; a rate is in [0, 1]"),
        ({"metric": "latency_p95_ms", "max": -1}, "never negative"),
        ({"metric": "latency_p95_ms", "max_ratio_to_stable": 0}, "greater than 0"),
        ({"metric": "latency_p42_ms", "max": 1}, "latency_p95_ms"),
        ({"metric": "shadow_agreement", "max": 0.5}, "it takes min, the least agreement"),
        ({"metric": "shadow_agreement", "min": 95}, "shadow_agreement min is 95.0; a rate is in [0, 1]"),
        ({"metric": "drift_js_distance", "max": 1.5}, "drift_js_distance max is 1.5; drift_js_distance is in [0, 1]"),
        ({"metric": "drift_js_distance", "min": 0.1}, "takes only max"),
        # Thresholds no traffic can decide: the rollout would hold until its deadline, or never pass.
        ({"metric": "error_rate", "max": 0}, "gate error_rate has max 0, which no traffic can show"),
        ({"metric": "feedback_rate", "name": "c", "max": 0}, "rate's upper confidence bound, which stays above 0"),
        ({"metric": "shadow_agreement", "min": 1}, "rate's lower confidence bound, which stays below 1"),
        ({"metric": "latency_p95_ms", "max": 0}, "gate latency_p95_ms has max 0, which every request exceeds"),
        ({"metric": "error_rate", "min": 0.01}, "gate error_rate has min (0.01); lower error_rate is better"),
        ({"metric": "latency_p99_ms", "min": 100}, "lower latency_p99_ms is better, so a lower bound would pass"),
        ({"metric": "latency_p50_ms", "min_ratio_to_stable": 0.9}, "has min_ratio_to_stable (0.9); lower"),
        ({"metric": "drift_ks", "max": 1.5}, "gate drift_ks max is 1.5; drift_ks is in [0, 1]"),
        # A promql gate names only the bounds it takes, and an example it would take.
        ({"metric": "promql", "name": "q", "query": "x", "max": 1, "min": 0},
         "give exactly one of max, min, e.g. {metric: promql, name: p95_latency_s, query: '...', max: 0.25}"),
        ({"metric": "feedback_rate", "name": "c"},
         "e.g. {metric: feedback_rate, name: converted, min_ratio_to_stable: 0.98}"),
        ({"metric": "shadow_agreement"}, "give exactly one of min, e.g. {metric: shadow_agreement, min: 0.95}"),
        ({"metric": "drift_ks"}, "give exactly one of max, e.g. {metric: drift_ks, max: 0.1}"),
        ({"metric": "latency_p95_ms"}, "give exactly one of max, max_ratio_to_stable, e.g. {metric: latency_p95_ms, "
                                       "max: 250}"),
        ({"metric": "promql", "name": "q", "query": "x", "max": 1,
          "prometheus": {"url": "http://prometheus:9090/api/v1/query"}},
         "must be Prometheus' base URL, without /api/v1/query (serve-ab adds /api/v1/query): give "
         "'http://prometheus:9090'"),
        # The advice never shows a password the URL holds.
        ({"metric": "promql", "name": "q", "query": "x", "max": 1,
          "prometheus": {"url": "https://user:s3cret@prom.example.com/api/v1/"}},
         "without /api/v1 (serve-ab adds /api/v1/query): give 'https://user:***@prom.example.com'"),
    ],
)
def test_bad_gates_are_refused(gate, expected):
    assert expected in error_text(base(gates=[gate]))


def test_a_prometheus_url_refused_never_shows_its_password():
    gate = {"metric": "promql", "name": "q", "query": "x", "max": 1,
            "prometheus": {"url": "https://user:s3cret@prom.example.com/api/v1/query"}}
    # As serve-ab words pydantic's errors for the user (validate, a refused deploy).
    from serve_ab.config.experiment import format_validation_error

    with pytest.raises(ValidationError) as info:
        RolloutConfig.model_validate(base(gates=[gate]))
    (text,) = format_validation_error(info.value)
    assert text.startswith("gates.0.prometheus.url: must be Prometheus' base URL") and "s3cret" not in text


def test_cross_field_rules():
    assert "stable and candidate must differ; both are 'v1'" in error_text(base(candidate="v1"))
    assert "a canary needs steps" in error_text(base(steps=[]))
    assert "steps apply only to strategy canary" in error_text(base(strategy="blue_green"))
    assert "only to strategy blue_green" in error_text(base(blue_green={}))
    no_gates = base(gates=[])
    assert "analysis step, but no gates" in error_text(no_gates)
    short_keep = base(strategy="blue_green", steps=[], blue_green={"post_switch_watch_s": 300, "keep_blue_s": 60})
    assert "keep_blue_s (60) must be >= post_switch_watch_s (300)" in error_text(short_keep)
    assert "Extra inputs are not permitted" in error_text(base(canary_weight=5))
    assert "String should match pattern" in error_text(base(candidate="v 2"))
    assert "greater than 0" in error_text(base(analysis={"interval_s": 0}))
    assert "less than 0.5" in error_text(base(analysis={"alpha": 0.5}))
    assert "greater than 0" in error_text(base(analysis={"alpha": 0}))
    assert "max_user_icc" in error_text(base(analysis={"max_user_icc": 0}))
    assert "less than or equal to 1" in error_text(base(analysis={"max_user_icc": 1.5}))


def test_analysis_alpha_defaults_to_5_percent_and_drift_js_distance_is_a_drift_gate():
    config = RolloutConfig.model_validate(base())
    assert config.analysis.alpha == 0.05
    assert RolloutConfig.model_validate(base(analysis={"alpha": 0.01})).analysis.alpha == 0.01
    assert config.analysis.max_user_icc is None  # no assumption unless one is made
    assert RolloutConfig.model_validate(base(analysis={"max_user_icc": 0.1})).analysis.max_user_icc == 0.1
    gate = RolloutConfig.model_validate(base(gates=[{"metric": "drift_js_distance", "max": 0.3}])).gates[0]
    assert gate.metric in rc.DRIFT_METRICS and gate.needs_stable and gate.label == "drift_js_distance <= 0.3"


def test_config_is_frozen():
    config = RolloutConfig.model_validate(base())
    with pytest.raises(ValidationError):
        config.stable = "v9"


def _models(module) -> list[type[BaseModel]]:
    return [obj for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == module.__name__
            and obj is not rc._Strict]


def test_every_field_has_a_description_and_extra_keys_are_forbidden():
    for model in _models(rc):
        assert model.model_config.get("extra") == "forbid", model
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"


# -- thresholds no traffic can decide --------------------------------------------------------


@pytest.mark.parametrize("gate", [
    {"metric": "error_rate", "max": 0.001}, {"metric": "error_rate", "max_ratio_to_stable": 1.2},
    {"metric": "latency_p95_ms", "max": 0.5}, {"metric": "drift_ks", "max": 1},
    {"metric": "feedback_rate", "name": "c", "min": 0.99}, {"metric": "feedback_mean", "name": "r", "max": 0},
    {"metric": "promql", "name": "q", "query": "x", "max": 0,
     "prometheus": {"url": "http://prometheus:9090"}},
    # Behind a proxy's path: a base URL still (serve-ab adds /api/v1/query), also through the
    # Kubernetes API server's service proxy, whose path holds /api/v1/ on the way.
    {"metric": "promql", "name": "q", "query": "x", "max": 0,
     "prometheus": {"url": "https://monitoring.example.com/prometheus/"}},
    {"metric": "promql", "name": "q", "query": "x", "max": 0,
     "prometheus": {"url": "http://localhost:8001/api/v1/namespaces/monitoring/services/prometheus-k8s:9090/proxy/"}},
])
def test_thresholds_traffic_can_decide_are_kept(gate):
    assert RolloutConfig.model_validate(base(gates=[gate])).gates[0].metric.value == gate["metric"]


def test_progress_deadline_must_outlast_the_first_analysis():
    text = error_text(base(analysis={"interval_s": 60, "progress_deadline_s": "30s"}))
    assert "progress_deadline_s (30) must be longer than interval_s (60)" in text
    assert "progress_deadline_s (60) must be longer" in error_text(base(analysis={"interval_s": 60,
                                                                                   "progress_deadline_s": 60}))
    for deadline in (61, None):
        config = RolloutConfig.model_validate(base(analysis={"interval_s": 60, "progress_deadline_s": deadline}))
        assert config.analysis.progress_deadline_s == deadline


def test_the_same_gate_twice_is_refused_and_two_bounds_on_one_metric_are_kept():
    gate = {"metric": "error_rate", "max": 0.01}
    text = error_text(base(gates=[gate, {"metric": "latency_p95_ms", "max": 100}, dict(gate)]))
    assert "gates[2] repeats gates[0] (error_rate <= 0.01)" in text
    kept = RolloutConfig.model_validate(base(gates=[gate, {"metric": "error_rate", "max": 0.02}]))
    assert [g.max for g in kept.gates] == [0.01, 0.02]


# -- no blind promotion ------------------------------------------------------------------------

BLIND = [
    [{"set_weight": 0}],
    [{"pause": {"duration": "10s"}}],
    [{"set_weight": 100}],
    [{"set_weight": 0}, {"pause": {"duration": "10s"}}, {"set_weight": 100}],
    [{"pause": {}}, {"set_weight": 100}],
]
JUDGED = [
    [{"set_weight": 5}],
    [{"set_weight": 5}, {"set_weight": 100}],
    [{"set_weight": 20}, {"pause": {}}, {"set_weight": 100}],
    [{"set_weight": 100}, {"pause": {"duration": "10s"}}],
    [{"pause": {}}, {"set_weight": 50}, {"analysis": {}}, {"set_weight": 100}],
]


ABSOLUTE = [{"metric": "error_rate", "max": 0.01}]
# Stable has no traffic at 100%, so the machine leaves out the gates that compare with it.
RELATIVE = [{"metric": "latency_p95_ms", "max_ratio_to_stable": 1.5}, {"metric": "drift_js", "max": 0.1},
            {"metric": "shadow_agreement", "min": 0.95}]  # nothing is mirrored to the live version
BLIND_RELATIVE = [[{"set_weight": 100}, {"pause": {"duration": "10s"}}],
                  [{"pause": {}}, {"set_weight": 100}, {"pause": {"duration": "1m"}}]]


@pytest.mark.parametrize("steps, gates", [(s, ABSOLUTE) for s in BLIND] + [(s, RELATIVE) for s in BLIND_RELATIVE])
def test_a_gated_canary_whose_steps_never_judge_the_candidate_is_refused(steps, gates):
    text = error_text(base(steps=steps, gates=gates))
    assert "never let the gates judge the candidate" in text and "e.g. steps: [{set_weight: 5}" in text
    assert RolloutConfig.model_validate(base(steps=steps, gates=[])).steps  # no gates: nothing to judge
    at_100 = "(at 100% stable has no traffic, and every gate here needs it: a ratio to stable, drift or "
    if gates is RELATIVE:
        assert at_100 in text and "an absolute gate such as {metric: error_rate, max: 0.01} would judge" in text
        assert RolloutConfig.model_validate(base(steps=steps, gates=RELATIVE + ABSOLUTE)).steps
    else:
        assert at_100 not in text


def test_the_hint_about_100_percent_comes_only_with_a_step_that_waits_there():
    text = error_text(base(steps=[{"set_weight": 0}, {"pause": {"duration": "10s"}}], gates=RELATIVE))
    assert "never let the gates judge the candidate" in text and "at 100% stable has no traffic" not in text


def test_the_blind_steps_are_named_in_the_error():
    text = error_text(base(steps=[{"set_weight": 0}, {"pause": {"duration": "10s"}}, {"pause": {}}]))
    assert "steps [set_weight 0, pause 10s, pause until promote] never let" in text


@pytest.mark.parametrize("steps, gates, blind", [(s, ABSOLUTE, True) for s in BLIND]
                         + [(s, RELATIVE, True) for s in BLIND_RELATIVE]
                         + [(s, ABSOLUTE, False) for s in JUDGED] + [(s, RELATIVE, False) for s in JUDGED[:3]])
def test_the_rule_is_the_machines_a_failing_candidate_is_promoted_only_by_the_refused_steps(steps, gates, blind):
    """Run the Rollout machine on a candidate failing its gate, with an operator who promotes
    past a ``pause: {}`` after a minute: the steps the schema refuses promote it; the ones it
    keeps roll it back first."""
    from serve_ab.rollout.gates import WindowStats
    from serve_ab.rollout.machine import Phase, Rollout
    from tests.support.fakes import FakeClock

    if blind:  # what the schema refuses, built past it
        config = RolloutConfig.model_validate(base(steps=steps, gates=[])).model_copy(
            update={"gates": [rc.Gate.model_validate(g) for g in gates]})
    else:
        config = RolloutConfig.model_validate(base(steps=steps, gates=gates))

    def failing() -> dict[str, WindowStats]:
        """Errors, and slower answers of other classes than stable's, which gets no traffic at 100%."""
        stable_n = 0 if rollout.weights["v1"] == 0 else 2000
        return {"v1": WindowStats("v1", request_count=stable_n, latencies_ms=(10.0,) * stable_n,
                                  class_counts=(stable_n, 0)),
                "v2": WindowStats("v2", request_count=2000, error_count=1000, latencies_ms=(90.0,) * 1000,
                                  class_counts=(0, 1000))}
    clock = FakeClock(1000.0)
    rollout = Rollout(config, clock)
    paused_s = 0
    for _ in range(600):
        rollout.tick(failing())
        paused_s = paused_s + 1 if rollout.phase is Phase.PAUSED else 0
        if paused_s >= 60:
            rollout.promote()
        clock.advance(1.0)
    assert rollout.phase is (Phase.PROMOTED if blind else Phase.ABORTED), rollout.phase


HUGE = 10**400  # a float holds at most about 1e308: float(HUGE) raises OverflowError
MINIMAL = {"model": "digits", "weights": {"v1": 100},
           "versions": [{"name": "v1", "path": "a.onnx", "backend": "onnx"},
                        {"name": "v2", "path": "b.onnx", "backend": "onnx"}]}
CANARY_STEPS = {"strategy": "canary", "stable": "v1", "candidate": "v2", "steps": [{"set_weight": 100}]}


@pytest.mark.parametrize("rollout, field", [
    ({"retire_after_s": HUGE}, "rollout.retire_after_s"),
    ({"steps": [{"set_weight": 5}, {"pause": {"duration": HUGE}}, {"set_weight": 100}]},
     "rollout.steps.1.pause.duration"),
    ({"steps": [{"set_weight": 5}, {"confirm": {"url": "http://a/b", "interval_s": HUGE}}, {"set_weight": 100}]},
     "rollout.steps.1.confirm.interval_s"),
    ({"analysis": {"window_s": HUGE}}, "rollout.analysis.window_s"),
    ({"analysis": {"progress_deadline_s": HUGE}}, "rollout.analysis.progress_deadline_s"),
    ({"analysis": {"prometheus": {"url": "http://p:9090", "timeout_s": HUGE}}},
     "rollout.analysis.prometheus.timeout_s"),
    ({"strategy": "blue_green", "steps": [], "blue_green": {"keep_blue_s": HUGE}}, "rollout.blue_green.keep_blue_s"),
])
def test_a_duration_too_large_for_a_float_is_a_config_error_naming_the_field(rollout, field):
    with pytest.raises(ConfigError) as info:
        parse_experiment({**MINIMAL, "rollout": {**CANARY_STEPS, **rollout}})
    assert info.value.errors == [
        (f"{field}: invalid duration (an integer of 401 digits): too large, it must be finite and >= 0; use a number "
         "of seconds or a string like '500ms', '30s', '5m' or '1h' (got an integer of 401 digits)")]


@pytest.mark.parametrize("value, shown", [(1e300, "1e+300"), ("9000h", "'9000h'"), (31_536_001, "31536001")])
def test_a_duration_longer_than_a_year_is_a_config_error_naming_the_field(value, shown):
    """As the CLI's flags: a year is the longest duration taken (1e300 s once passed, a pause no
    timer could hold)."""
    steps = {"steps": [{"set_weight": 5}, {"pause": {"duration": value}}, {"set_weight": 100}]}
    with pytest.raises(ConfigError) as info:
        parse_experiment({**MINIMAL, "rollout": {**CANARY_STEPS, **steps}})
    (error,) = info.value.errors
    assert error.startswith("rollout.steps.1.pause.duration: duration longer than a year (")
    assert error.endswith(f"give at most 8760h, e.g. 30m or 24h (got {shown})")
    year = {"steps": [{"set_weight": 5}, {"pause": {"duration": "8760h"}}, {"set_weight": 100}]}
    assert parse_experiment({**MINIMAL, "rollout": {**CANARY_STEPS, **year}}).rollout.steps[1].pause.duration == 31_536_000


def test_a_notification_timeout_too_large_for_a_float_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        parse_experiment({**MINIMAL, "rollout": CANARY_STEPS,
                          "notifications": [{"type": "webhook", "url": "http://a/b", "timeout_s": HUGE}]})
    assert info.value.errors[0].startswith("notifications.0.timeout_s: invalid duration (an integer of 401 digits)")
