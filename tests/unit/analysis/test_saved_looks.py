"""saved_looks: every state comparisons.judge writes is read back whole after a restart, and a
look of another shape is dropped on its own, before it reaches build_report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from serve_ab.analysis.comparisons import Family, MetricSpec, fixed_p, judge
from serve_ab.analysis.saved_looks import SavedLook, readable_looks
from serve_ab.analysis.units import RatioComparison
from tests.unit.analysis.test_comparisons import CORRECT, ERRORS, LATENCY

FAMILY = Family(size=3, alpha=0.05, correction="holm")


def _walk(spec: MetricSpec, sequential: bool, seed: int) -> list[dict]:
    """Forty looks of one comparison, each state through JSON as the store keeps it: growing
    samples, a few looks with too few units, and one jump that restarts the sequence."""
    rng = np.random.default_rng(seed)
    base = {"error_rate": 0.02, "latency_ms": 50.0, "correct": 0.5}[spec.name]
    state, states = None, []
    for look in range(1, 41):
        units = 10 if look in (5, 6, 20) else 200 * look
        shift = 0.3 * base if look >= 30 else 0.05 * base * rng.standard_normal()
        value_c = base
        value_v = base + shift
        var = (0.25 if spec.name == "correct" else 0.02 * base) * base / units
        ratio = RatioComparison(value_v, value_c, var, var, 0.0, units, units, 1, (1.0,))
        p = fixed_p(ratio)
        figures, state = judge(spec, ratio, variant="v2", control="v1", family=FAMILY,
                               p_adjusted=min(1.0, p * FAMILY.size) if not math.isnan(p) else 1.0,
                               previous=state, sequential_on=sequential, min_units=30, mde_relative=0.05,
                               target_power=0.8, allocation_pct=(50.0, 50.0))
        state = json.loads(json.dumps(state))
        states.append(state)
    return states


@pytest.mark.parametrize("sequential", [True, False])
def test_every_state_the_comparisons_write_is_read_back_whole(sequential):
    seen: set[str] = set()
    for seed, spec in enumerate((ERRORS, LATENCY, CORRECT)):
        for state in _walk(spec, sequential, seed):
            SavedLook.model_validate(state)
            saved = {spec.name: {"v2": state}}
            assert readable_looks(saved) == (saved, [])
            seen |= set(state) | {f"seq.{key}" for key in state.get("seq") or {}}
    # The walk reached what a restart must keep: the guardrail's sequence, a decision, a
    # restarted sequence, and without sequential testing the frozen fixed-horizon look.
    wanted = {"guard", "decided", "seq.restart"} if sequential else {"frozen"}
    assert wanted <= seen


GOOD = {"tau": 0.01, "seq": {"p": 0.2, "lo": -0.1, "hi": 0.3, "looks": 4, "units": 800}, "decided": None}


@pytest.mark.parametrize("look, where", [
    ("damaged", "the look"),
    ({"seq": "x"}, "seq"),
    ({"seq": {**GOOD["seq"], "p": "0.2"}}, "seq.p"),  # a number as text: build_report did arithmetic on it
    ({"seq": {**GOOD["seq"], "lo": [1]}}, "seq.lo"),
    ({"seq": {**GOOD["seq"], "looks": True}}, "seq.looks"),
    ({"seq": {k: v for k, v in GOOD["seq"].items() if k != "hi"}}, "seq.hi"),
    ({"tau": -1.0}, "tau"),
    ({"decided": "maybe"}, "decided"),  # the report's schema refuses that verdict
    ({"frozen": {"verdict": "better", "level": 0.05, "p_value": 0.01}}, "frozen"),
    ({"seq": {**GOOD["seq"], "restart": {"look": 2, "units": 10, "from": [0.1]}}}, "seq.restart.from"),
])
def test_a_look_of_another_shape_is_dropped_on_its_own(look, where):
    saved = {"correct": {"v2": look, "v3": GOOD}, "latency_ms": {"v2": GOOD}}
    kept, dropped = readable_looks(saved)
    assert kept == {"correct": {"v3": GOOD}, "latency_ms": {"v2": GOOD}}
    assert len(dropped) == 1 and dropped[0].startswith(f"correct/v2: {where}")


def test_a_state_that_is_not_a_mapping_of_metrics_is_dropped_whole():
    assert readable_looks([1, 2]) == (None, ["a list, not {metric: {variant: look}}"])
    kept, dropped = readable_looks({"correct": [1], "latency_ms": {"v2": GOOD}})
    assert kept == {"latency_ms": {"v2": GOOD}} and dropped == ["correct: a list, not {variant: look}"]


def test_keys_a_newer_release_adds_are_kept():
    look = {**GOOD, "seq": {**GOOD["seq"], "next_release": 1}, "other": {"x": 1}}
    assert readable_looks({"correct": {"v2": look}}) == ({"correct": {"v2": look}}, [])
