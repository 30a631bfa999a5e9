"""``GET /rollout/status``'s typed shape: the published schema is the model's, and a real
controller's status travels as JSON and reads back the same, infinities included."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from serve_ab.api.http_util import json_safe
from serve_ab.api.schemas import ActionRequest
from serve_ab.api.status import ActionAnswer, RolloutStatus, status_json_schema
from serve_ab.serving.controller import ControllerCore
from serve_ab.serving.core.messages import Action
from serve_ab.store.state import MemoryStateStore
from tests.support.fakes import FakeClock
from tests.unit.serving.test_controller_core import experiment, run_for

PUBLISHED = Path(__file__).resolve().parents[3] / "docs" / "status.schema.json"


def as_answered(status: RolloutStatus) -> dict:
    """The JSON the router answers (serving/http.py's _json), read back as a client would."""
    return json.loads(json.dumps(json_safe(status.model_dump(mode="json"))))


def test_the_published_schema_is_the_models():
    published = json.loads(PUBLISHED.read_text())
    assert published == status_json_schema(), (
        "docs/status.schema.json is stale; regenerate it: python -m serve_ab.api.status > docs/status.schema.json")
    jsonschema.Draft202012Validator.check_schema(published)


@pytest.fixture
def aborted_on_an_infinite_ratio():
    """A canary aborted by error_rate <= 1.5x stable while stable had no error: the gate's
    value, and its upper bound, are infinite."""
    clock = FakeClock()
    core = ControllerCore(experiment(gates=[{"metric": "error_rate", "max_ratio_to_stable": 1.5}]),
                          MemoryStateStore(), clock)
    core.tick()
    run_for(core, clock, 8, {"v1": (150, {}), "v2": (60, {"ok": False})})
    return core


def test_a_real_status_travels_as_json_and_reads_back_the_same(aborted_on_an_infinite_ratio):
    core = aborted_on_an_infinite_ratio
    status = core.status(history=True)
    assert status.phase == "aborted"
    (gate,) = status.gates
    assert gate.value == float("inf") and gate.verdict == "fail"
    answered = as_answered(status)
    assert answered["gates"][0]["value"] == "Infinity"
    jsonschema.Draft202012Validator(json.loads(PUBLISHED.read_text())).validate(answered)
    read = RolloutStatus.from_answer(answered)
    assert read.model_dump() == status.model_dump() and read.answer() is answered


def test_an_action_answers_the_status_after_it_and_whether_it_changed_anything(aborted_on_an_infinite_ratio):
    core = aborted_on_an_infinite_ratio
    changed = core.act(Action.ROLLBACK, ActionRequest())
    answer = ActionAnswer(**dict(core.status()), changed=changed)
    assert (answer.changed, answer.phase) == (False, "aborted")
    assert ActionAnswer.from_answer(as_answered(answer)).model_dump() == answer.model_dump()


def test_a_static_apps_status_has_the_same_keys_with_no_rollout():
    clock = FakeClock()
    cfg = experiment()
    core = ControllerCore(cfg.model_copy(update={"rollout": None}), MemoryStateStore(), clock)
    status = core.status()
    assert (status.strategy, status.phase, status.gates, status.revision) == (None, "static", [], None)
    assert status.weights_pct == {"v1": 100.0, "v2": 0.0}
    answered = as_answered(status)
    # What the dict answered before the model, kept; the rollout's own keys are null.
    assert {"model", "strategy", "phase", "weights_pct", "gates", "retired", "shadow", "run_id", "controller",
            "routers", "failed_versions", "not_saved"} <= set(answered)
    assert (answered["stable"], answered["candidate"], answered["history"], answered["window"]) == (None,) * 4


def test_keys_of_a_newer_app_are_ignored_and_missing_ones_take_their_defaults():
    read = RolloutStatus.from_answer({"phase": "paused", "a_new_field": {"x": 1}})
    assert (read.phase, read.gates, read.routers.routers) == ("paused", [], 0)
    assert read.answer() == {"phase": "paused", "a_new_field": {"x": 1}}  # -o json prints what the app sent


@pytest.mark.parametrize("answer", [
    {"step_index": True}, {"step_index": "2"}, {"weights_pct": {"v1": float("nan")}},
    {"next_step_in_s": float("inf")}, {"routers": {"routers": 1.5}}, {"not_saved": {"since_s": 1.0}},
])
def test_what_no_serve_ab_app_sends_is_refused(answer):
    with pytest.raises(ValidationError):
        RolloutStatus.from_answer(answer)
