"""Task-aware summaries and shadow comparisons, through the aggregates to the report."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
from scipy import stats

from serve_ab.analysis.accumulate import ExperimentStats
from serve_ab.analysis.aggregate import IntervalAggregate
from serve_ab.analysis.report import build_report
from serve_ab.analysis.tasks import CLASSIFICATION, TaskRule, cosine, select_output, task_rules
from serve_ab.backends import load_predictor, to_batch
from serve_ab.cli.render_html import render_html
from serve_ab.cli.render_table import render_table
from serve_ab.config.experiment import parse_experiment
from serve_ab.serving.core.observe import ObservationBuffer

REGRESSION = TaskRule("regression", tolerance=5.0)
EMBEDDING = TaskRule("embedding", threshold=0.9)


# -- the pure rules ---------------------------------------------------------------------------

def test_classification_is_the_argmax_as_before():
    outputs = np.array([[0.1, 0.7, 0.2], [0.9, 0.05, 0.05]])
    assert CLASSIFICATION.summary(outputs) == (1, pytest.approx(0.7))
    pair = CLASSIFICATION.compare(outputs, np.array([[0.2, 0.5, 0.3], [0, 0, 1.0]]))
    assert (pair.live_class, pair.shadow_class, pair.agree) == (1, 1, True)
    assert pair.score_diff == pytest.approx(-0.2)
    assert CLASSIFICATION.compare(outputs, None).agree is None


def test_regression_summary_is_the_value_and_agreement_is_within_tolerance():
    assert REGRESSION.summary(np.array([[151.5], [3.0]], dtype=np.float32)) == (None, 151.5)
    near = REGRESSION.compare(np.array([[150.0]]), np.array([[154.0]]))
    assert near.agree and near.score_diff == pytest.approx(4.0)
    assert (near.live_value, near.shadow_value) == (150.0, 154.0)
    far = REGRESSION.compare(np.array([[150.0]]), np.array([[144.0]]))
    assert not far.agree and far.score_diff == pytest.approx(-6.0)
    assert REGRESSION.compare(np.array([[1.0]]), np.array([[1.0, 2.0]])).agree is None  # other shapes
    assert REGRESSION.summary(np.array([["a"]], dtype=object)) == (None, None)


def test_embedding_agreement_is_cosine_at_least_the_threshold():
    live = np.array([[1.0, 0.0, 0.0]])
    same_direction = EMBEDDING.compare(live, np.array([[2.0, 0.1, 0.0]]))
    assert same_direction.agree and same_direction.similarity == pytest.approx(2 / math.sqrt(4.01))
    orthogonal = EMBEDDING.compare(live, np.array([[0.0, 1.0, 0.0]]))
    assert not orthogonal.agree and orthogonal.similarity == pytest.approx(0.0)
    assert EMBEDDING.summary(np.array([[3.0, 4.0]])) == (None, 5.0)
    assert cosine(np.zeros(2), np.zeros(2)) == 1.0 and cosine(np.zeros(2), np.ones(2)) == 0.0


def test_a_multi_output_model_is_read_at_the_named_output():
    outputs = {"value": np.array([[7.0]]), "sd": np.array([[1.0]])}
    assert TaskRule("regression", tolerance=1, output="sd").summary(outputs) == (None, 1.0)
    assert TaskRule("regression", tolerance=1).summary(outputs) == (None, 7.0)  # the first
    assert select_output(outputs, "missing") is None


def test_rules_are_checked():
    with pytest.raises(ValueError, match="needs a tolerance"):
        TaskRule("regression")
    with pytest.raises(ValueError, match="task must be one of"):
        TaskRule("ranking")


# -- through the router's buffer and the controller's figures -----------------------------------

def fake_clock():
    return 0.0


def test_regression_pairs_fold_into_mergeable_aggregates():
    tasks = {"v1": REGRESSION, "v2": REGRESSION}
    first, second = ObservationBuffer(fake_clock, tasks=tasks), ObservationBuffer(fake_clock, tasks=tasks)
    rng = np.random.default_rng(0)
    live_values = rng.normal(150, 40, 400)
    shifts = rng.normal(2.0, 4.0, 400)
    for i, (live, shift) in enumerate(zip(live_values, shifts)):
        buffer = first if i % 2 else second
        buffer.served("v1", 0.0, None, np.array([[live]]), request_id=None, assigned=True)
        buffer.served("v2", 0.0, None, np.array([[live + shift]]), request_id=None, mirrored=True)
        buffer.pair("v1", "v2", np.array([[live]]), np.array([[live + shift]]), 0.0, None)
    merged = first.drain()
    merged.merge(pickle.loads(pickle.dumps(second.drain())))
    shadow = merged.shadow["v2"]
    assert shadow.pairs == 400 and shadow.agree == int(np.sum(np.abs(shifts) <= 5.0))
    assert shadow.confusion == {}  # no classes
    assert shadow.score_diff_sum == pytest.approx(shifts.sum())
    assert shadow.score_diff_abs_sum == pytest.approx(np.abs(shifts).sum())
    assert shadow.live_values.count == shadow.shadow_values.count == 400
    # The gates' score sketches hold the predicted values, so drift_ks/drift_wasserstein compare them.
    assert merged.gates["v1"].scores.mean == pytest.approx(live_values.mean())
    assert merged.gates["v2"].scores.count == 400 and not merged.gates["v2"].class_counts


def regression_cfg(tolerance=5.0):
    version = {"backend": "onnx", "task": "regression", "task_options": {"tolerance": tolerance}}
    return parse_experiment({"model": "diabetes",
                             "versions": [{"name": "v1", "path": "v1.onnx", **version},
                                          {"name": "v2", "path": "v2.onnx", **version}],
                             "weights": {"v1": 100}, "shadow": {"version": "v2", "percent": 100}})


def snapshot_of(aggregate, cfg):
    stats_ = ExperimentStats([v.name for v in cfg.versions], 0.0, shadow_version=cfg.shadow.version)
    stats_.merge(1.0, aggregate)
    return stats_


def test_regression_report_shows_value_differences_and_drift():
    cfg = regression_cfg()
    rules = task_rules(cfg.versions)
    buffer = ObservationBuffer(fake_clock, tasks=rules)
    rng = np.random.default_rng(1)
    live_values = rng.normal(150, 40, 300)
    shadow_values = live_values + rng.normal(3.0, 4.0, 300)
    for live, mirrored in zip(live_values, shadow_values):
        buffer.served("v1", 0.0, None, np.array([[live]]), request_id=None, assigned=True)
        buffer.pair("v1", "v2", np.array([[live]]), np.array([[mirrored]]), 0.0, None)
    stats_ = snapshot_of(buffer.drain(), cfg)
    # Through a controller restart: the new figures survive to_state/from_state.
    stats_ = ExperimentStats.from_state(json.loads(json.dumps(stats_.to_state(2.0))), shadow_version="v2")
    report, _ = build_report(cfg, stats_.snapshot(2.0), {"v1": 100.0, "v2": 0.0})
    shadow = report.shadow
    diffs = shadow_values - live_values
    assert shadow.task == "regression" and shadow.agreement_rule == "|shadow - live| <= 5"
    assert shadow.agreement.agree == int(np.sum(np.abs(diffs) <= 5.0)) and shadow.agreement.n == 300
    assert shadow.score_diff.mean == pytest.approx(diffs.mean())
    assert shadow.score_diff.mean_abs == pytest.approx(np.abs(diffs).mean())
    t = stats.ttest_1samp(diffs, 0.0)
    assert shadow.score_diff.p_value == pytest.approx(t.pvalue, rel=1e-6)
    drift = shadow.value_drift
    assert drift.n == 300
    assert drift.live_mean == pytest.approx(live_values.mean()) and drift.shadow_mean == pytest.approx(shadow_values.mean())
    # Sketched values sit within 1% of the raw ones.
    assert drift.wasserstein == pytest.approx(stats.wasserstein_distance(shadow_values, live_values), abs=3.0)
    assert drift.ks == pytest.approx(stats.ks_2samp(shadow_values, live_values).statistic, abs=0.02)
    assert shadow.flips.total == 300 - shadow.agreement.agree and not shadow.confusion.classes
    assert shadow.similarity is None
    text = render_table(report)
    assert "(|shadow - live| <= 5)" in text and "value diff  mean" in text and "Wasserstein" in text
    assert "flips" not in text
    assert "Shadow: v2" in render_html(report)


def test_embedding_report_shows_cosine():
    version = {"backend": "onnx", "task": "embedding", "task_options": {"threshold": 0.95}}
    cfg = parse_experiment({"model": "enc", "versions": [{"name": "v1", "path": "v1.onnx", **version},
                                                         {"name": "v2", "path": "v2.onnx", **version}],
                            "weights": {"v1": 100}, "shadow": {"version": "v2", "percent": 100}})
    buffer = ObservationBuffer(fake_clock, tasks=task_rules(cfg.versions))
    rng = np.random.default_rng(2)
    cosines = []
    for _ in range(200):
        live = rng.normal(size=(1, 8))
        mirrored = live + rng.normal(scale=0.2, size=(1, 8))
        cosines.append(cosine(live[0], mirrored[0]))
        buffer.pair("v1", "v2", live, mirrored, 0.0, None)
    report, _ = build_report(cfg, snapshot_of(buffer.drain(), cfg).snapshot(1.0), {"v1": 100.0, "v2": 0.0})
    shadow = report.shadow
    assert shadow.task == "embedding" and shadow.agreement_rule == "cosine(shadow, live) >= 0.95"
    assert shadow.agreement.agree == sum(c >= 0.95 for c in cosines)
    assert shadow.similarity.mean == pytest.approx(np.mean(cosines))
    assert shadow.similarity.threshold == 0.95 and shadow.similarity.min == pytest.approx(min(cosines), rel=0.02)
    assert shadow.value_drift is None
    assert "cosine      mean" in render_table(report)


def test_classification_report_is_unchanged_by_the_task_fields():
    cfg = parse_experiment({"model": "digits", "versions": [{"name": "v1", "path": "v1.onnx", "backend": "onnx"},
                                                            {"name": "v2", "path": "v2.onnx", "backend": "onnx"}],
                            "weights": {"v1": 100}, "shadow": {"version": "v2", "percent": 100}})
    aggregate = IntervalAggregate()
    aggregate.pair("v1", "v2", 1, 2, -0.1, 1.0, None)
    aggregate.pair("v1", "v2", 1, 1, 0.05, 1.0, None)
    report, _ = build_report(cfg, snapshot_of(aggregate, cfg).snapshot(1.0), {"v1": 100.0, "v2": 0.0})
    assert report.shadow.task == "classification" and report.shadow.agreement.agree == 1
    assert report.shadow.confusion.classes == [1, 2]
    assert report.shadow.value_drift is None and report.shadow.similarity is None
    assert "flips" in render_table(report) and "(the same argmax" not in render_table(report)


def test_the_real_diabetes_models_through_the_buffer(model_repo):
    cfg = regression_cfg(tolerance=20.0)
    samples = json.loads((model_repo / "diabetes" / "samples.json").read_text())
    predictors = {}
    for version, filename, backend in (("v1", "model.onnx", "onnx"), ("v2", "model.pt2", "torch")):
        predictors[version] = load_predictor(model_repo / "diabetes" / version / filename, backend, device="cpu")
        predictors[version].load()
    buffer = ObservationBuffer(fake_clock, tasks=task_rules(cfg.versions))
    diffs = []
    for i in range(len(samples["targets"])):
        one = {name: rows[i:i + 1] for name, rows in samples["inputs"].items()}
        live = predictors["v1"].predict(to_batch(one, predictors["v1"].input_spec, allow_non_finite=False))
        mirrored = predictors["v2"].predict(to_batch(one, predictors["v2"].input_spec, allow_non_finite=False))
        diffs.append(float(mirrored[0, 0]) - float(live[0, 0]))
        buffer.served("v1", 0.0, None, live, request_id=None, assigned=True)
        buffer.pair("v1", "v2", live, mirrored, 0.0, None)
    report, _ = build_report(cfg, snapshot_of(buffer.drain(), cfg).snapshot(1.0), {"v1": 100.0, "v2": 0.0})
    assert report.shadow.pairs == 32
    assert report.shadow.agreement.agree == sum(abs(d) <= 20.0 for d in diffs)
    assert report.shadow.score_diff.mean == pytest.approx(np.mean(diffs), rel=1e-5)
    assert report.shadow.value_drift.n == 32


@pytest.mark.parametrize("task", ["classification", "regression", "embedding"])
def test_a_pair_says_how_many_rows_the_live_answer_had_of_which_only_the_first_is_compared(task):
    rule = TaskRule(task, tolerance=1.0) if task == "regression" else TaskRule(task)
    live = np.tile(np.linspace(0.1, 1.0, 10), (4, 1))
    shadow = live.copy()
    shadow[1:] = shadow[1:, ::-1]  # rows 2..4 differ in every task's sense; the first does not
    pair = rule.compare(live, shadow)
    assert pair.agree is True and pair.rows == 4
    assert rule.compare(live[:1], shadow[:1]).rows == 1
    assert rule.compare(live, None).rows == 1  # not a pair: nothing to count


def test_the_reports_value_drift_resolves_values_near_one_through_a_restart():
    """A regression whose values sit just below 1 (a predicted probability), the shadow's
    x0.995: the value sketches count 1 - x too, kept through to_state/from_state, so the
    report's KS reads the raw statistic (from sketches of x alone it read about a fifth)."""
    cfg = regression_cfg()
    buffer = ObservationBuffer(fake_clock, tasks=task_rules(cfg.versions))
    rng = np.random.default_rng(2)
    live_values = rng.beta(40.0, 0.4, 400)
    shadow_values = rng.beta(40.0, 0.4, 400) * 0.995
    for live, mirrored in zip(live_values, shadow_values):
        buffer.served("v1", 0.0, None, np.array([[live]]), request_id=None, assigned=True)
        buffer.pair("v1", "v2", np.array([[live]]), np.array([[mirrored]]), 0.0, None)
    stats_ = ExperimentStats.from_state(json.loads(json.dumps(snapshot_of(buffer.drain(), cfg).to_state(2.0))),
                                        shadow_version="v2")
    report, _ = build_report(cfg, stats_.snapshot(2.0), {"v1": 100.0, "v2": 0.0})
    raw = stats.ks_2samp(shadow_values, live_values).statistic
    assert raw > 0.4
    assert raw - 0.02 <= report.shadow.value_drift.ks <= raw + 1e-12
