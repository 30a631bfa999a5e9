"""The gates' figures written as JSON and read back: the same figures, and nothing but them."""

from __future__ import annotations

import collections
import copy
import json
import math

import numpy as np
import pytest

from serve_ab.analysis import json_state
from serve_ab.analysis.aggregate import GateAggregate
from serve_ab.analysis.clusters import CELLS, GroupSums, ValueGroups
from serve_ab.analysis.sketch import LogHistogram
from serve_ab.rollout.windows import GateWindows, window_stats
from serve_ab.routing import NUM_BUCKETS


def _gate(rng: np.random.Generator, n: int, users: int) -> GateAggregate:
    gate = GateAggregate()
    ok = rng.random(n) > 0.1
    units = [None if rng.random() < 0.2 else int(u) for u in rng.integers(0, users, n)]
    classes = [int(c) if rng.random() > 0.05 else None for c in rng.integers(0, 10, n)]
    scores = np.where(rng.random(n) < 0.1, np.nan, rng.random(n))
    gate.add_many(rng.lognormal(1.0, 0.5, n), ok, classes, scores, units)
    return gate


def _round_trip(value):
    text = json.dumps(json_state.dump(value), allow_nan=False)  # strict JSON: no NaN or Infinity
    return json_state.load(json.loads(text))


def _same_gate(a: GateAggregate, b: GateAggregate) -> None:
    assert (a.requests, a.errors, a.class_counts) == (b.requests, b.errors, b.class_counts)
    for x, y in ((a.latency_ms, b.latency_ms), (a.scores, b.scores)):
        assert np.array_equal(x.counts, y.counts) and x.counts.dtype == y.counts.dtype == np.int64
        assert (x.count, x.total, x.min, x.max) == (y.count, y.total, y.min, y.max)
    ga, gb = a.groups, b.groups
    for name in ("requests", "errors", "latency_bins"):
        assert np.array_equal(getattr(ga, name), getattr(gb, name))
        assert getattr(ga, name).dtype == getattr(gb, name).dtype
    assert ga.classes == gb.classes
    assert ga.score_bins == gb.score_bins
    assert ga.cells == gb.cells
    for name in ("counts", "sums", "squares", "cubes"):
        assert np.array_equal(getattr(ga.score_values, name), getattr(gb.score_values, name), equal_nan=True)


@pytest.mark.parametrize("users", [50, 10 * CELLS * NUM_BUCKETS])  # cells sparse, then dense
def test_a_gate_aggregate_reads_back_as_the_same_figures(users):
    rng = np.random.default_rng(users)
    gate = _gate(rng, 100_000 if users > 50 else 500, users)
    assert (len(gate.groups.cells) > CELLS // 2) == (users > 50)
    back = _round_trip(gate)
    _same_gate(gate, back)
    more = _gate(rng, 300, users)  # and it goes on adding up as the original would
    gate.merge(more)
    back.merge(more)
    _same_gate(gate, back)


def test_empty_figures_and_unknown_cubes_read_back():
    gate = GateAggregate()  # min inf, max -inf
    _same_gate(gate, _round_trip(gate))
    values = ValueGroups.from_wire({"rows": [3], "counts": [2], "sums": [1.0], "squares": [1.0]})  # cubes NaN
    back = _round_trip({"v2": {"revenue": values}})["v2"]["revenue"]
    assert np.array_equal(back.cubes, values.cubes, equal_nan=True) and math.isnan(back.cubes[3])
    assert back.counts.dtype == np.int64 and back.counts[3] == 2


def test_plain_data_reads_back_unchanged():
    data = {"a": [1, 2.5, None, True, "x"], "b": collections.Counter({3: 4, 7: 1}),
            "c": float("inf"), "d": np.arange(5, dtype=np.int64)}
    back = _round_trip(data)
    assert back["a"] == data["a"] and back["b"] == data["b"] and back["c"] == math.inf
    assert back["d"].tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("saved, message", [
    ({"$obj": ["Popen", {}]}, "names class 'Popen'"),
    ({"$obj": ["LogHistogram", {"counts": {"$nd": ["|O", [1], "AA=="]}}]}, "dtype '|O'"),
    ({"$obj": ["LogHistogram", {"counts": {"$nd": ["<i8", [3], "AA=="]}}]}, "array could not be read: buffer size"),
    ({"$obj": ["LogHistogram", {"index": [99999], "counts": [1], "count": 1, "sum": 1.0, "min": 1.0,
                                "max": 1.0}]}, "out of range"),
    ({"$obj": ["GroupSums", {"rows": [1]}]}, "could not be read"),
    ({"$obj": ["GateAggregate", {"requests": 1, "evil": 2}]}, "expected"),
    ({"$obj": ["GateAggregate", {"requests": 5, "errors": 0}]}, "expected"),  # fields missing
    ({"$counter": 5}, "could not be read"),
    ({"$counter": [[[1], 2]]}, "could not be read"),
    ({"$counter": [["a", 2]]}, "class count"),
    ({"$counter": [[10**30, 2]]}, "class count"),
    ({"$obj": 5}, "could not be read"),
    ({"$nd": ["<i8", [1], "//////////8="]}, "negative"),
    ({"$nd": ["<i8", [1], "AA==", "lz4"]}, "only zlib"),
    ({"$what": 1}, "unknown tags"),
    ({"$obj": ["LogHistogram", {"index": [1], "counts": [10**30], "count": 1, "sum": 1.0, "min": 1.0,
                                "max": 1.0}]}, "could not be read"),
    ({"$obj": ["GateAggregate", [1, 2]]}, "not its fields"),
    ({"$float": "1e999"}, "only inf, -inf and nan"),
])
def test_anything_else_is_refused_naming_what(saved, message):
    with pytest.raises(ValueError, match=message):
        json_state.load(saved)


def test_what_cannot_be_read_back_is_not_written():
    with pytest.raises(TypeError, match="not one of"):
        json_state.dump(object())
    with pytest.raises(TypeError, match="JSON keys are text"):
        json_state.dump({1: 2})


@pytest.mark.parametrize("name", ["$nd", "$obj", "$counter", "$float", "$$x", "$", "plain"])
def test_any_metric_name_reads_back_as_itself(name):
    """A feedback metric may be named like a tag: its window still saves and reads back."""
    values = ValueGroups()
    values.add(7, 1.5)
    back = _round_trip({"v2": {name: values}, name: 1.0})
    assert set(back) == {"v2", name} and set(back["v2"]) == {name}
    assert back["v2"][name].sums.sum() == 1.5


def test_the_classes_read_are_the_gate_figures_only():
    assert set(json_state._CLASSES) == {"GateAggregate", "GroupSums", "ValueGroups", "LogHistogram"}
    assert json_state._CLASSES["GroupSums"] is GroupSums and json_state._CLASSES["LogHistogram"] is LogHistogram


def test_figures_that_do_not_add_up_are_refused():
    """Damage a look would take and then fail on, or run for minutes on (a reviewer's cases)."""
    rng = np.random.default_rng(11)
    saved = json_state.dump(_gate(rng, 200, 30))
    fields = saved["$obj"][1]
    latency = fields["latency_ms"]["$obj"][1]
    for damaged, message in (
            ({**fields, "latency_ms": {"$obj": ["LogHistogram", {**latency, "count": 10**30}]}}, "does not add up"),
            ({**fields, "requests": 10**30}, "requests"),
            ({**fields, "errors": fields["requests"] + 1}, "requests"),
            ({**fields, "class_counts": {"$counter": [[3, 2**62]]}}, "class count"),
            ({**fields, "class_counts": {"$counter": [[3, 10**6]]}}, "does not add up"),
            ({**fields, "class_counts": {"$counter": [[2**16, 1]]}}, "class count"),
            ({**fields, "requests": fields["requests"] + 5}, "does not add up")):
        with pytest.raises(ValueError, match=message):
            json_state.load({"$obj": ["GateAggregate", damaged]})


def test_a_field_of_another_type_is_refused():
    saved = json_state.dump(GateAggregate())
    for field, wrong, message in (("requests", "7", "requests is a str, not a int"),
                                  ("latency_ms", 3, "latency_ms is a int, not a LogHistogram")):
        damaged = {"$obj": ["GateAggregate", {**saved["$obj"][1], field: wrong}]}
        with pytest.raises(ValueError, match=message):
            json_state.load(damaged)


def test_a_damaged_state_is_refused_with_a_value_error_only():
    """Whatever a damaged row holds in place of any part, reading it raises ValueError (the
    controller then starts the step's window afresh) or gives figures a look can use."""
    rng = np.random.default_rng(7)
    window = GateWindows()
    window.add(10.0, {"v1": _gate(rng, 300, 40), "v2": _gate(rng, 50, 40)})
    window.add_feedback(11.0, "v2", "correct", None, True, unit=3)
    saved = json.loads(json.dumps(window.step_state(10.0), allow_nan=False))
    replacements = [-1, 0, 10**30, 1.5, -2.5, "x", "", None, True, [], [1, -2], {}, {"a": 1},
                    {"$nd": ["<i8", [2], "AA=="]}, {"$obj": ["GroupSums", {}]}, {"$counter": [[1, -3]]},
                    {"$obj": ["ValueGroups", {"rows": [5], "counts": [1]}]}, {"$float": "nan"}]
    outcomes = collections.Counter()
    for _ in range(1500):
        damaged = copy.deepcopy(saved)
        nodes = list(_nodes(damaged["totals"]))
        for _ in range(int(rng.integers(1, 3))):
            parent, key = nodes[int(rng.integers(len(nodes)))]
            parent[key] = copy.deepcopy(replacements[int(rng.integers(len(replacements)))])
        fresh = GateWindows()
        try:
            taken = fresh.restore_step(damaged, 10.0)
        except ValueError:
            outcomes["refused"] += 1
            continue
        assert taken
        looked = fresh.window(10.0, step=True)  # a look at what was taken works
        window_stats(looked.gates, versions=("v1", "v2"), agreements=looked.agreements,
                     values=looked.values, outcomes=looked.outcomes)
        outcomes["taken"] += 1
    assert outcomes["refused"] > 500, outcomes


def _nodes(tree):
    """(container, key) of every value below ``tree``."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for key, value in list(items):
        yield tree, key
        if isinstance(value, (dict, list)):
            yield from _nodes(value)


