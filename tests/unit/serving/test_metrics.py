"""The /metrics exposition: names follow Prometheus conventions, values are the snapshot's,
and the Grafana dashboard only asks for series that render() emits."""

from __future__ import annotations

import copy
import json
import re
from collections import defaultdict

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve_ab.api.status import RolloutStatus
from serve_ab.serving import metrics
from serve_ab.config.experiment import parse_experiment
from serve_ab.analysis.accumulate import ERROR_KINDS, LATENCY_BUCKETS_S, ExperimentStats
from serve_ab.rollout.gates import PromQLResult, WindowStats, evaluate_gates
from serve_ab.rollout.machine import Phase, Rollout
from tests.conftest import REPO_ROOT

DASHBOARD = REPO_ROOT / "dashboards" / "serve-ab.json"


def experiment(**changes) -> dict:
    cfg = {
        "model": "digits",
        "versions": [{"name": name, "path": f"models/digits/{name}/model.onnx", "backend": "onnx"}
                     for name in ("v1", "v2", "v3")],
        "weights": {"v1": 100},
        "shadow": {"version": "v3", "percent": 10},
        "analysis": {"metrics": [{"name": "correct", "kind": "conversion"},
                                 {"name": "revenue", "kind": "mean"}]},
        "rollout": {
            "strategy": "canary", "stable": "v1", "candidate": "v2",
            "analysis": {"interval_s": 10, "min_samples": 5, "failure_limit": 2,
                         "prometheus": {"url": "http://prometheus:9090"}},
            "gates": [
                {"metric": "latency_p95_ms", "max_ratio_to_stable": 1.5},
                {"metric": "error_rate", "max": 0.01},
                {"metric": "drift_js", "max": 0.1},
                {"metric": "feedback_rate", "name": "correct", "min": 0.9},
                {"metric": "promql", "name": "error_ratio", "max": 0.05,
                 "query": 'sum(rate(serve_ab_errors_total{version="{{candidate}}"}[1m]))'},
            ],
            "steps": [{"set_weight": 20}, {"pause": {"duration": "1m"}}, {"set_weight": 50},
                      {"pause": {}}, {"set_weight": 100}],
        },
    }
    cfg.update(changes)
    return cfg


def realistic_stats() -> ExperimentStats:
    """Traffic on every version, each error kind, feedback of both kinds, shadow pairs."""
    stats = ExperimentStats(["v1", "v2", "v3"], started_at_s=1_000.0, shadow_version="v3",
                            feedback_kinds={"correct": "conversion", "revenue": "mean"})
    t_s = 1_001.0
    for i in range(200):
        version = "v1" if i % 5 else "v2"
        error = ERROR_KINDS[i % 4] if i % 23 == 0 else None
        stats.record(t_s, version, latency_ms=0.2 + (i % 40) ** 2 * 0.05, error_kind=error,
                     predicted_class=i % 10, unit=i, assigned=i % 17 != 0)
        stats.record_feedback(t_s, version, "correct", None, converted=i % 3 != 0)
        if i % 4 == 0:
            stats.record_feedback(t_s, version, "revenue", 10.0 - i % 7 * 3, None)
        if i % 10 == 0:
            stats.record_pair(t_s, version, i % 10, (i // 10) % 10 if i % 20 else i % 10, 0.05, 2.0,
                              "unavailable" if i == 190 else None)
    stats.count_unjoined(1)  # never joined
    stats.count_previous_run()  # on an answer of the run before a changed config
    stats.count_previous_run()
    stats.shadow.dropped = 4  # copies the router could not send (serving/core/mirror.py)
    return stats


def rollout_status(cfg) -> RolloutStatus:
    """What ControllerCore.status() returns, with real gate results (one of each verdict)."""
    rollout = Rollout(cfg.rollout, clock=lambda: 2_000.0)
    stable = WindowStats("v1", request_count=100, latencies_ms=[5.0] * 100, class_counts=(50, 50))
    candidate = WindowStats("v2", request_count=100, error_count=5, latencies_ms=[6.0] * 95,
                            class_counts=(48, 52),
                            promql={"error_ratio": PromQLResult("sum(...)", 0.02)})
    results = evaluate_gates(cfg.rollout.gates, candidate, stable, min_samples=5)
    assert {r.verdict.value for r in results} == {"pass", "fail", "inconclusive"}
    return RolloutStatus.model_validate({
        "model": cfg.model, "strategy": "canary", "stable": "v1", "candidate": "v2",
        "phase": rollout.phase.value, "step_index": 1, "steps_total": len(cfg.rollout.steps),
        "step": "pause 60s", "weights_pct": {"v1": 80.0, "v2": 20.0, "v3": 0.0},
        "reason": "step 1", "next_step_in_s": 30.0, "failures_total": 1, "failure_limit": 2,
        "gates": [r.to_dict() for r in results], "retired": [],
        "window": {"since_s": 1_990.0, "requests": {"v1": 100, "v2": 100}, "errors": {"v1": 0, "v2": 5}},
    })


def static_status(cfg) -> RolloutStatus:
    return RolloutStatus(model=cfg.model, strategy=None, phase="static", weights_pct=cfg.weights_pct())


APP = "digits-ab"


def scrape(cfg, snapshot, status, app: str = APP) -> tuple[dict, str]:
    """{family name: family} of what render() returns, parsed as Prometheus would."""
    body, content_type = metrics.render(cfg, snapshot, status, app)
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    return families, content_type


def samples(families, sample_name: str) -> dict[tuple, float]:
    """{sorted labels without model and application: value} for one sample name (e.g. a ``_bucket``)."""
    out = {}
    for family in families.values():
        for s in family.samples:
            if s.name == sample_name:
                assert s.labels["model"] == "digits" and s.labels["application"] == APP, s
                out[tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("model", "application")))] = s.value
    return out


@pytest.fixture
def rollout_scrape():
    cfg = parse_experiment(experiment())
    stats = realistic_stats()
    snapshot = stats.snapshot(now_s=1_100.0, samples=False)
    families, content_type = scrape(cfg, snapshot, rollout_status(cfg))
    return cfg, snapshot, families, content_type


def test_request_error_prediction_and_feedback_counters_are_the_snapshot(rollout_scrape):
    _, snap, families, content_type = rollout_scrape
    assert content_type.startswith("text/plain; version=0.0.4")
    versions = snap["versions"]
    assert samples(families, "serve_ab_requests_total") == {
        (("version", v),): float(s["requests"]) for v, s in versions.items()}
    assert samples(families, "serve_ab_assigned_requests_total")[(("version", "v1"),)] == versions["v1"]["assigned"]
    errors = samples(families, "serve_ab_errors_total")
    for version, stats in versions.items():
        for kind in ERROR_KINDS:  # every kind present, zero or not, so rate() always has a series
            assert errors[(("kind", kind), ("version", version))] == stats["errors_by_kind"].get(kind, 0)
    assert sum(errors.values()) == sum(s["errors"] for s in versions.values()) > 0
    predictions = samples(families, "serve_ab_predictions_total")
    assert predictions[(("class", "3"), ("version", "v1"))] == versions["v1"]["predictions"]["3"]
    assert sum(predictions.values()) == sum(sum(s["predictions"].values()) for s in versions.values())
    feedback = samples(families, "serve_ab_feedback_total")
    correct = versions["v2"]["feedback"]["correct"]
    assert feedback[(("metric", "correct"), ("version", "v2"))] == correct["n"]
    conversions = samples(families, "serve_ab_feedback_conversions_total")
    assert conversions[(("metric", "correct"), ("version", "v2"))] == correct["successes"]
    assert (("metric", "revenue"), ("version", "v2")) not in conversions  # a mean metric
    revenue = versions["v1"]["feedback"]["revenue"]
    assert samples(families, "serve_ab_feedback_value_sum")[(("metric", "revenue"), ("version", "v1"))] == \
        pytest.approx(revenue["sum"])
    counts = samples(families, "serve_ab_feedback_value_count")
    assert counts[(("metric", "revenue"), ("version", "v1"))] == revenue["n"]
    assert samples(families, "serve_ab_feedback_unjoined_total") == {(): 1.0}
    assert samples(families, "serve_ab_feedback_previous_run_total") == {(): 2.0}
    assert samples(families, "serve_ab_stats_start_time_seconds") == {(): 1_000.0}


def test_latency_histogram_is_cumulative_in_seconds_with_inf_equal_to_count(rollout_scrape):
    _, snap, families, _ = rollout_scrape
    latency = snap["versions"]["v1"]["latency"]
    buckets = samples(families, "serve_ab_request_duration_seconds_bucket")
    got = [buckets[(("le", le), ("version", "v1"))]
           for le in [*(prometheus_client.utils.floatToGoString(b) for b in LATENCY_BUCKETS_S), "+Inf"]]
    expected, running = [], 0
    for count in latency["bucket_counts"]:
        running += count
        expected.append(running)
    assert got == expected and got == sorted(got)
    assert got[-1] == latency["count"] == samples(families, "serve_ab_request_duration_seconds_count")[
        (("version", "v1"),)]
    assert samples(families, "serve_ab_request_duration_seconds_sum")[(("version", "v1"),)] == \
        pytest.approx(latency["sum_s"])
    assert len(set(got)) >= 4  # the realistic latencies spread over several buckets


def test_requests_retried_and_shadow_rows_not_compared_are_the_snapshots(rollout_scrape):
    # Live (isolated, a replica killed under load): the report and /experiment/stats had v1's
    # retried 252 and the shadow's rows_not_compared 923; /metrics had neither, so a dashboard
    # summing serve_ab_requests_total counted 1,852 requests for the 1,600 sent.
    cfg, snap, _, _ = rollout_scrape
    snap = copy.deepcopy(snap)
    snap["versions"]["v1"]["retried"] = 7
    snap["versions"]["v1"]["requests"] += 7
    snap["shadow"]["rows_not_compared"] = 11
    families, _ = scrape(cfg, snap, rollout_status(cfg))
    retried = samples(families, "serve_ab_retried_requests_total")
    assert retried == {(("version", v),): float(s.get("retried", 0)) for v, s in snap["versions"].items()}
    assert retried[(("version", "v1"),)] == 7.0
    sent = sum(samples(families, "serve_ab_requests_total").values()) - sum(retried.values())
    assert sent == sum(s["requests"] - s.get("retried", 0) for s in snap["versions"].values())
    assert samples(families, "serve_ab_shadow_rows_not_compared_total") == {(("version", "v3"),): 11.0}


def test_shadow_counters_and_agreement_ratio(rollout_scrape):
    _, snap, families, _ = rollout_scrape
    shadow = snap["shadow"]
    assert samples(families, "serve_ab_shadow_requests_total") == {(("version", "v3"),): shadow["mirrored"]}
    assert samples(families, "serve_ab_shadow_dropped_total") == {(("version", "v3"),): 4}
    comparisons = samples(families, "serve_ab_shadow_comparisons_total")
    assert comparisons == {(("live_version", v), ("version", "v3")): n
                           for v, n in shadow["pairs_by_live_version"].items()}
    assert sum(comparisons.values()) == shadow["pairs"]
    assert samples(families, "serve_ab_shadow_agreements_total") == {(("version", "v3"),): shadow["agree"]}
    assert 0 < shadow["agree"] < shadow["pairs"]
    assert samples(families, "serve_ab_shadow_agreement_ratio") == {
        (("version", "v3"),): pytest.approx(shadow["agree"] / shadow["pairs"])}
    assert samples(families, "serve_ab_shadow_errors_total")[(("kind", "unavailable"), ("version", "v3"))] == 1


def test_weights_phase_step_and_gates(rollout_scrape):
    cfg, _, families, _ = rollout_scrape
    assert samples(families, "serve_ab_traffic_weight_ratio") == {
        (("version", "v1"),): 0.8, (("version", "v2"),): 0.2, (("version", "v3"),): 0.0}
    phases = samples(families, "serve_ab_rollout_phase")
    assert {dict(k)["phase"] for k in phases} == {"static", *(p.value for p in Phase)}
    assert [dict(k)["phase"] for k, v in phases.items() if v == 1] == ["progressing"]
    assert sum(phases.values()) == 1
    assert samples(families, "serve_ab_rollout_step_index") == {(): 1.0}
    assert samples(families, "serve_ab_rollout_steps") == {(): 5.0}
    assert samples(families, "serve_ab_rollout_failures_total") == {(): 1.0}
    assert samples(families, "serve_ab_rollout_window_requests") == {
        (("version", "v1"),): 100.0, (("version", "v2"),): 100.0}
    assert samples(families, "serve_ab_rollout_info") == {
        (("candidate", "v2"), ("stable", "v1"), ("strategy", "canary")): 1.0}

    values = {dict(k)["gate"]: v for k, v in samples(families, "serve_ab_gate_value").items()}
    thresholds = {dict(k)["gate"]: v for k, v in samples(families, "serve_ab_gate_threshold").items()}
    verdicts = defaultdict(dict)
    for key, v in samples(families, "serve_ab_gate_verdict").items():
        labels = dict(key)
        assert labels["version"] == "v2"
        verdicts[labels["gate"]][labels["verdict"]] = v
    labels = [g.label for g in cfg.rollout.gates]
    assert set(thresholds) == set(verdicts) == set(labels)
    assert values["error_rate <= 0.01"] == pytest.approx(0.05)
    assert verdicts["error_rate <= 0.01"] == {"pass": 0.0, "fail": 1.0, "inconclusive": 0.0}
    assert values["latency_p95_ms <= 1.5x stable"] == pytest.approx(6.0 / 5.0)
    assert verdicts["latency_p95_ms <= 1.5x stable"]["pass"] == 1.0
    assert values["promql[error_ratio] <= 0.05"] == pytest.approx(0.02)
    # No feedback in the window: inconclusive, and no value series rather than a made-up 0.
    assert "feedback_rate[correct] >= 0.9" not in values
    assert verdicts["feedback_rate[correct] >= 0.9"]["inconclusive"] == 1.0
    assert thresholds["feedback_rate[correct] >= 0.9"] == 0.9
    for verdict in verdicts.values():
        assert sorted(verdict.values()) == [0.0, 0.0, 1.0]


def test_an_app_without_rollout_is_static_with_no_rollout_or_gate_series():
    cfg = parse_experiment(experiment(rollout=None, shadow=None))
    stats = ExperimentStats(["v1", "v2", "v3"], started_at_s=5.0)
    families, _ = scrape(cfg, stats.snapshot(now_s=6.0, samples=False), static_status(cfg))
    phases = samples(families, "serve_ab_rollout_phase")
    assert [dict(k)["phase"] for k, v in phases.items() if v == 1] == ["static"]
    assert not any(name.startswith(("serve_ab_rollout_step", "serve_ab_gate", "serve_ab_shadow",
                                    "serve_ab_rollout_info", "serve_ab_rollout_failures"))
                   for name in families)
    # Zero traffic still gives every version's series, so dashboards and rate() see them.
    assert samples(families, "serve_ab_requests_total") == {(("version", v),): 0.0 for v in ("v1", "v2", "v3")}
    assert samples(families, "serve_ab_request_duration_seconds_count")[(("version", "v3"),)] == 0


def test_names_follow_prometheus_conventions_and_are_documented(rollout_scrape):
    _, _, families, _ = rollout_scrape
    readme = (REPO_ROOT / "README.md").read_text()
    for name, family in families.items():
        assert name.startswith("serve_ab_"), name
        full = name + "_total" if family.type == "counter" else name
        assert not re.search(r"_(ms|milliseconds|percent|pct)(_|$)", full), f"{full}: use base units"
        if family.type == "counter":
            assert full.endswith("_total"), full
        else:
            assert not full.endswith("_total"), f"{full}: only counters end in _total"
        if family.type == "histogram":
            assert full.endswith("_seconds"), full
        assert f"``{full}" in metrics.__doc__, f"{full} is not in serve_ab.serving.metrics' docstring"
        assert full in readme, f"{full} is not in the README's Metrics section"


def test_the_load_failed_gauge_says_a_rollouts_stable_still_has_its_share(rollout_scrape):
    """A rollout's stable (or promoted candidate) some router could not load keeps its share
    (ControllerCore.weights): the gauge's help, and the README's row, said it got no traffic."""
    _, _, families, _ = rollout_scrape
    help_text = families["serve_ab_version_load_failed"].documentation
    assert "stable" in help_text and "fallback" in help_text, help_text
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"| `serve_ab_version_load_failed` | gauge | {help_text.rstrip('.')} |" in readme


def test_render_uses_a_fresh_registry_and_no_global_state(rollout_scrape):
    cfg, snap, _, _ = rollout_scrape
    status = rollout_status(cfg)
    first, _ = metrics.render(cfg, snap, status, APP)
    again, _ = metrics.render(cfg, snap, status, APP)
    assert first == again  # nothing accumulates between scrapes
    global_names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("serve_ab_") for name in global_names)


def test_two_apps_of_one_model_are_told_apart_by_every_series():
    """Live (multi47, 2026-12-07): an A/B app and a canary app of model digits on one Serve
    cluster, each with its own state store, rendered the same series; Prometheus scraping both
    summed the A/B app's v2 requests into the canary's promql gate
    (``serve_ab_requests_total{model="digits", version="v2"}``). Every series now carries the
    Serve application's name, as Ray Serve's own series do."""
    cfg = parse_experiment(experiment())
    snap = realistic_stats().snapshot(1_100.0, samples=False)
    status = rollout_status(cfg)
    keys = {}
    for app in ("digits-ab", "digits-canary"):
        families, _ = scrape(cfg, snap, status, app)
        found = [(s.name, tuple(sorted(s.labels.items()))) for f in families.values() for s in f.samples]
        assert found and all(dict(labels)["application"] == app for _, labels in found)
        keys[app] = set(found)
    assert not keys["digits-ab"] & keys["digits-canary"]


def test_same_gate_label_twice_gives_two_series():
    cfg = parse_experiment(experiment(shadow=None))
    status = rollout_status(cfg)
    status = status.model_copy(update={"gates": [status.gates[1], status.gates[1]]})
    families, _ = scrape(cfg, realistic_stats().snapshot(1_100.0, samples=False), status)
    gates = sorted(dict(k)["gate"] for k in samples(families, "serve_ab_gate_threshold"))
    assert gates == ["error_rate <= 0.01", "error_rate <= 0.01 #2"]


def test_a_malformed_histogram_is_refused_with_the_counts():
    cfg = parse_experiment(experiment(shadow=None))
    snap = realistic_stats().snapshot(1_100.0, samples=False)
    snap["versions"]["v1"]["latency"]["bucket_counts"] = [1, 2]
    with pytest.raises(ValueError, match=r"latency has 2 bucket counts for 15 bounds; expected 16"):
        metrics.render(cfg, snap, rollout_status(cfg), APP)


# -- the Grafana dashboard ------------------------------------------------------------------

PROMQL_FUNCTIONS = {
    "sum", "max", "min", "avg", "count", "topk", "bottomk", "quantile", "stddev", "rate", "irate",
    "increase", "delta", "histogram_quantile", "clamp_min", "clamp_max", "abs", "label_values",
    "avg_over_time", "max_over_time", "min_over_time", "last_over_time", "vector", "scalar",
}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                   "unless", "bool", "offset"}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def promql_references(expr: str) -> tuple[list[tuple[str, set[str]]], set[str], list[str]]:
    """(selectors as (metric, matcher labels), grouping labels, problems) of a PromQL expr."""
    problems = []
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals, e.g. "$model"
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges, e.g. [$__rate_interval]
    selectors = []
    for match in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", text):
        labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", match.group(2)))
        selectors.append((match.group(1), labels))
    text = re.sub(r"\{[^}]*\}", " ", text)
    grouping = {label.strip() for _, labels in _GROUPING.findall(text) for label in labels.split(",")
                if label.strip()}
    text = _GROUPING.sub(r" \1 ", text)
    for match in re.finditer(r"(?<![0-9.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if word in PROMQL_KEYWORDS or word in PROMQL_FUNCTIONS:  # sum by (x) (...): no "(" after sum
            continue
        if call:
            problems.append(f"unknown function {word}")
        elif not any(word == metric for metric, _ in selectors):
            selectors.append((word, set()))
    return selectors, grouping, problems


def emitted_series() -> dict[str, set[str]]:
    """{sample name: its label names} for everything render() emits on a realistic app."""
    cfg = parse_experiment(experiment())
    families, _ = scrape(cfg, realistic_stats().snapshot(1_100.0, samples=False), rollout_status(cfg))
    out: dict[str, set[str]] = defaultdict(set)
    for family in families.values():
        for s in family.samples:
            out[s.name] |= set(s.labels)
    return out


def check_expr(expr: str, emitted: dict[str, set[str]]) -> list[str]:
    selectors, grouping, problems = promql_references(expr)
    if not selectors:
        problems.append("no metric")
    for metric, labels in selectors:
        if metric not in emitted:
            problems.append(f"{metric} is not emitted")
        elif labels - emitted[metric]:
            problems.append(f"{metric} has no label {sorted(labels - emitted[metric])}")
    available = set().union(*(emitted.get(m, set()) for m, _ in selectors)) if selectors else set()
    if grouping - available:
        problems.append(f"grouping by {sorted(grouping - available)}, which no selected metric has")
    return problems


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    found = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                found.append((panel["title"], target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    return found


def test_expression_checker_catches_wrong_names_labels_and_functions():
    emitted = emitted_series()
    assert check_expr('sum by (version) (rate(serve_ab_requests_total{model="$model"}[5m]))', emitted) == []
    assert check_expr("rate(serve_ab_request_total[5m])", emitted) == ["serve_ab_request_total is not emitted"]
    assert check_expr('serve_ab_requests_total{kind="x"}', emitted) == ["serve_ab_requests_total has no label ['kind']"]
    assert check_expr("sum by (phase) (rate(serve_ab_requests_total[1m]))", emitted) == [
        "grouping by ['phase'], which no selected metric has"]
    assert check_expr("histogram_quantil(0.5, serve_ab_request_duration_seconds_bucket)", emitted) == [
        "unknown function histogram_quantil"]
    assert check_expr("serve_ab_request_duration_seconds", emitted) == [
        "serve_ab_request_duration_seconds is not emitted"]  # a histogram is read through _bucket


def test_dashboard_queries_only_series_that_render_emits():
    dashboard = json.loads(DASHBOARD.read_text())
    emitted = emitted_series()
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) >= 15
    problems = [f"{title}: {expr}: {p}" for title, expr in exprs for p in check_expr(expr, emitted)]
    assert problems == []
    used = {metric for _, expr in exprs for metric, _ in promql_references(expr)[0]}
    for needed in ("serve_ab_requests_total", "serve_ab_traffic_weight_ratio", "serve_ab_errors_total",
                   "serve_ab_request_duration_seconds_bucket", "serve_ab_predictions_total",
                   "serve_ab_shadow_agreements_total", "serve_ab_rollout_phase", "serve_ab_rollout_step_index",
                   "serve_ab_gate_value", "serve_ab_gate_verdict"):
        assert needed in used, f"the dashboard has no panel on {needed}"
    # Two apps may serve one model: a panel reading by model alone would add their series up.
    unscoped = [(title, expr) for title, expr in exprs if 'application="$app"' not in expr
                or expr.count("serve_ab_") != expr.count('application="$app"')]
    assert unscoped == []
    quantiles = {float(q) for _, e in exprs for q in re.findall(r"histogram_quantile\(([0-9.]+)", e)}
    assert quantiles == {0.5, 0.95, 0.99}


def test_dashboard_takes_its_prometheus_from_a_datasource_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert "serve_ab_requests_total" in variables["model"]["definition"]
    assert variables["app"]["definition"] == 'label_values(serve_ab_requests_total{model="$model"}, application)'

    def walk(panels):
        for panel in panels:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
                assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_latency_help_and_panels_say_it_is_the_versions_time_not_the_requests_end_to_end(rollout_scrape):
    """Live (digits, 20 req/s, 2 cores): the latency panels read p50 0.1-0.4 ms while clients
    saw 6.7 ms. The histogram times the version's call (what the latency gates judge), not the
    HTTP request; its HELP and the panels said "latency of successful requests"."""
    _, _, families, _ = rollout_scrape
    help_text = families["serve_ab_request_duration_seconds"].documentation
    assert "the version took" in help_text and "not the HTTP request end to end" in help_text, help_text
    dashboard = json.loads(DASHBOARD.read_text())
    latency = [p for p in dashboard["panels"] if "histogram_quantile" in json.dumps(p.get("targets", []))]
    assert len(latency) == 3
    for panel in latency:
        assert "version took" in panel["description"] and "Not the request end to end" in panel["description"], \
            panel["title"]
