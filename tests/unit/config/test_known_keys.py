"""A key a config model lacks is answered with the nearest valid key and the valid ones."""

from __future__ import annotations

import copy

import pytest
from pydantic import BaseModel, ConfigDict

from serve_ab.config.experiment import ConfigError, parse_experiment
from serve_ab.config.known_keys import unknown_key_hint

CANARY = {
    "model": "digits",
    "versions": [{"name": "v1", "path": "models/digits/v1/model.onnx", "backend": "onnx"},
                 {"name": "v2", "path": "models/digits/v2/model.pt2", "backend": "torch"}],
    "weights": {"v1": 100, "v2": 0},
    "rollout": {"strategy": "canary", "stable": "v1", "candidate": "v2",
                "gates": [{"metric": "error_rate", "max": 0.05}],
                "steps": [{"set_weight": 5}, {"pause": {"duration": "10s"}}, {"set_weight": 100}]},
}


def errors_with(change) -> list[str]:
    args = copy.deepcopy(CANARY)
    change(args)
    with pytest.raises(ConfigError) as info:
        parse_experiment(args)
    return info.value.errors


@pytest.mark.parametrize("change, expected", [
    (lambda a: a.update(weigths={"v1": 1}), "weigths: unknown key (got {'v1': 1}); did you mean 'weights'?"),
    (lambda a: a["versions"][1].update(pth="x"), "versions.1.pth: unknown key (got 'x'); did you mean 'path'?"),
    (lambda a: a.update(router={"ray_actor_options": {"num_cpu": 0.5}}),
     "router.ray_actor_options.num_cpu: unknown key (got 0.5); did you mean 'num_cpus'? valid keys: num_cpus, "
     "num_gpus, memory, resources"),
    # A step is a tagged union: the location names the tag, then the step's own key.
    (lambda a: a["rollout"]["steps"].__setitem__(1, {"pause": {"duraton": "3s"}}),
     "rollout.steps.1.pause.duraton: unknown key (got '3s'); did you mean 'duration'? valid keys: duration"),
    (lambda a: a["rollout"]["gates"][0].update(mx=0.1), "rollout.gates.0.mx: unknown key (got 0.1); did you mean 'max'?"),
    (lambda a: a.update(controller={"stat_path": "x"}), "controller.stat_path: unknown key (got 'x'); did you mean "
                                                         "'state_path'?"),
])
def test_a_misspelt_key_is_answered_with_the_one_meant(change, expected):
    errors = errors_with(change)
    assert any(e.startswith(expected) for e in errors), errors


def test_with_no_near_key_the_valid_ones_are_listed():
    (error,) = errors_with(lambda a: a["rollout"]["gates"][0].update(threshold=0.1))
    assert error == ("rollout.gates.0.threshold: unknown key (got 0.1); valid keys: metric, name, query, prometheus, "
                     "url, timeout_s, headers_from_env, max, min, max_ratio_to_stable, min_ratio_to_stable")


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rate_per_s: float = 1.0


class _Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by_name: dict[str, _Inner] = {}
    items: list[_Inner | None] = []


@pytest.mark.parametrize("loc, expected", [
    (("by_name", "a", "rate_per"), "; did you mean 'rate_per_s'? valid keys: rate_per_s"),
    (("items", 0, "rate_per"), "; did you mean 'rate_per_s'? valid keys: rate_per_s"),
    (("bogus",), "; valid keys: by_name, items"),
    (("items", 0, "nested", "x"), ""),  # past any model: nothing to say rather than a wrong list
])
def test_the_hint_follows_dicts_lists_and_optionals(loc, expected):
    assert unknown_key_hint(_Outer, loc) == expected
    assert unknown_key_hint(None, loc) == ""
