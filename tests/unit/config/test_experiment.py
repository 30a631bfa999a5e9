"""Schema errors name the field path, the value received and what is valid."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from serve_ab.cli.command import main as cli_main
from serve_ab.cli.command import validate_file
from serve_ab.config.experiment import ConfigError, ExperimentConfig, Placement, parse_experiment

REPO_ROOT = Path(__file__).resolve().parents[3]

GOOD = {
    "model": "digits",
    "versions": [
        {"name": "v1", "path": "models/digits/v1/model.onnx", "backend": "onnx"},
        {"name": "v2", "path": "models/digits/v2/model.pt2", "backend": "torch"},
    ],
    "weights": {"v1": 90, "v2": 10},
}


def with_changes(**changes):
    cfg = copy.deepcopy(GOOD)
    cfg.update(changes)
    return cfg


def errors_of(args) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_experiment(args)
    return info.value.errors


def test_good_config_and_defaults():
    cfg = parse_experiment(GOOD)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.placement is Placement.COLOCATED
    assert cfg.weights_pct() == {"v1": 90.0, "v2": 10.0}
    assert cfg.assignment.key == "json" and cfg.assignment.field == "user_id"
    assert cfg.router.to_ray()["max_ongoing_requests"] > 5  # Ray's default throttles the router
    assert cfg.router.to_ray()["ray_actor_options"]["num_cpus"] < 1
    assert cfg.controller.report_interval_s == 1.0


def test_router_runs_on_rays_replica_loop_when_colocated_unless_asked_for_threads():
    # Colocated: one loop (no thread hop per request). Isolated: whatever Ray's setting is
    # (threads by default), since the router's loop would carry every call to the versions too.
    # Either on request. The flags travel in the router's runtime_env, so the versions'
    # deployments keep Ray's defaults.
    def env(cfg, isolated):
        return cfg.router.to_ray(isolated=isolated)["ray_actor_options"].get("runtime_env", {}).get("env_vars")

    one_loop = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}
    threads = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "1", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1"}
    default = parse_experiment(GOOD)
    assert env(default, isolated=False) == one_loop and env(default, isolated=True) is None
    asked = parse_experiment(with_changes(router={"num_replicas": 1, "separate_thread": True}))
    assert env(asked, isolated=False) == threads
    asked = parse_experiment(with_changes(router={"num_replicas": 1, "separate_thread": False}))
    assert env(asked, isolated=True) == one_loop
    isolated = parse_experiment(with_changes(placement="isolated",
                                             versions=[dict(v, deployment={"num_replicas": 1})
                                                       for v in GOOD["versions"]]))
    assert all("runtime_env" not in v.deployment.to_ray()["ray_actor_options"] for v in isolated.versions)
    assert "router.separate_thread: Input should be a valid boolean" in \
        errors_of(with_changes(router={"separate_thread": "maybe"}))[0]


def test_router_access_log_is_on_unless_switched_off_and_is_not_a_ray_option():
    assert parse_experiment(GOOD).router.access_log is True
    off = parse_experiment(with_changes(router={"num_replicas": 1, "access_log": False}))
    assert off.router.access_log is False
    assert "access_log" not in off.router.to_ray() and "logging_config" not in off.router.to_ray()
    assert "router.access_log: Input should be a valid boolean" in \
        errors_of(with_changes(router={"access_log": "sometimes"}))[0]


def test_version_left_out_of_weights_gets_zero():
    cfg = parse_experiment(with_changes(weights={"v1": 100}))
    assert cfg.weights_pct() == {"v1": 100.0, "v2": 0.0}


@pytest.mark.parametrize("change, expected", [
    ({"bogus": 1}, "bogus: Extra inputs are not permitted (got 1)"),
    ({"weights": {"v1": 90, "v2": 5}}, "weights: weights sum to 95%; they must sum to 100"),
    ({"weights": {"v1": 90, "v9": 10}}, "weights: weights names version 'v9', which is not served"),
    ({"weights": {"v1": 99.995, "v2": 0.005}}, "weights resolve to 0.01% steps"),
    ({"weights": {"v1": 110, "v2": -10}}, "a weight is a percentage in [0, 100]"),
    ({"placement": "sideways"}, "placement: Input should be 'colocated' or 'isolated' (got 'sideways')"),
    ({"versions": []}, "versions: List should have at least 1 item"),
    ({"model": "bad name!"}, "model: String should match pattern"),
    ({"controller": {"report_interval_s": 0}}, "controller.report_interval_s: Input should be greater than 0 (got 0)"),
    ({"controller": {"report_interval_s": 120}},
     "controller.report_interval_s: Input should be less than or equal to 60 (got 120)"),
])
def test_top_level_errors(change, expected):
    errors = errors_of(with_changes(**change))
    assert any(expected in e for e in errors), errors


def test_version_errors_name_the_index_and_value():
    cfg = with_changes()
    cfg["versions"][1]["backend"] = "tensorflow"
    cfg["versions"][0]["batching"] = {"max_batch_size": 0}
    errors = errors_of(cfg)
    assert "versions.1.backend: Input should be 'onnx', 'torch' or 'python' (got 'tensorflow')" in errors
    assert any(e.startswith("versions.0.batching.max_batch_size:") and "(got 0)" in e for e in errors)


def test_duplicate_version_names():
    cfg = with_changes()
    cfg["versions"][1]["name"] = "v1"
    assert any("appears twice" in e for e in errors_of(cfg))


def test_isolated_options_refused_in_colocated_placement():
    cfg = with_changes()
    cfg["versions"][0]["deployment"] = {"num_replicas": 2}
    errors = errors_of(cfg)
    assert any("versions.0.deployment is set" in e and "placement: isolated" in e for e in errors)
    cfg["placement"] = "isolated"
    assert parse_experiment(cfg).versions[0].deployment.num_replicas == 2


def test_scaling_options():
    cfg = with_changes(placement="isolated")
    cfg["versions"][0]["deployment"] = {"num_replicas": 2, "autoscaling_config": {"max_replicas": 3}}
    assert any("either num_replicas (2) or autoscaling_config" in e for e in errors_of(cfg))
    cfg["versions"][0]["deployment"] = {"autoscaling_config": {"min_replicas": 4, "max_replicas": 3}}
    assert any("max_replicas (3) must be greater than or equal to min_replicas (4)" in e
               for e in errors_of(cfg))
    # Ray's replicas report their load every 10 s: a shorter window may hold no report.
    cfg["versions"][0]["deployment"] = {"autoscaling_config": {"look_back_period_s": 5}}
    errors = errors_of(cfg)
    assert any("look_back_period_s" in e and "greater than 10" in e and "(got 5)" in e for e in errors), errors
    cfg["versions"][0]["deployment"] = {
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 3, "look_back_period_s": 11},
        "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0.5},
    }
    options = parse_experiment(cfg).versions[0].deployment.to_ray()
    assert options["autoscaling_config"]["max_replicas"] == 3 and "num_replicas" not in options
    assert options["autoscaling_config"]["look_back_period_s"] == 11
    assert options["ray_actor_options"]["num_gpus"] == 0.5


def test_not_a_mapping():
    assert errors_of(["v1"]) == ["<root>: expected a mapping of experiment fields (got ['v1'])"]


def test_shipped_configs_validate():
    for path in sorted((REPO_ROOT / "configs").glob("*.yaml")):
        assert validate_file(path, check_files=False) == [], path


def test_validate_cli_prints_every_error(tmp_path, capsys):
    raw = yaml.safe_load((REPO_ROOT / "configs" / "ab.yaml").read_text())
    args = raw["applications"][0]["args"]
    args["weights"] = {"v1": 70, "v2": 20}
    args["versions"][0]["backend"] = "tf"
    raw["http_options"]["port"] = "eighty"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    assert cli_main(["validate", "--no-check-files", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "3 errors" in out
    assert "applications.0.args.versions.0.backend: Input should be 'onnx', 'torch' or 'python' (got 'tf')" in out
    assert "applications.0.args.weights: weights sum to 90%" in out
    assert "http_options.port" in out and "'eighty'" in out


def test_validate_cli_checks_model_files(tmp_path, capsys):
    bare = tmp_path / "exp.yaml"
    bare.write_text(yaml.safe_dump(with_changes(versions=[
        {"name": "v1", "path": str(tmp_path / "missing.onnx"), "backend": "onnx"},
        {"name": "v2", "path": str(tmp_path / "missing.pt2"), "backend": "torch"},
    ])))
    assert cli_main(["validate", str(bare)]) == 1
    assert "versions.0.path: no model file at" in capsys.readouterr().out


def test_validate_cli_unreadable_files(tmp_path, capsys):
    (tmp_path / "broken.yaml").write_text("model: [unclosed")
    assert cli_main(["validate", str(tmp_path / "broken.yaml"), str(tmp_path / "nope.yaml")]) == 1
    out = capsys.readouterr().out
    assert "not valid YAML" in out and "no such file" in out


def test_rollout_versions_must_be_served_and_ordered():
    rollout = {"strategy": "canary", "stable": "v1", "candidate": "v9", "steps": [{"set_weight": 5}]}
    assert any("rollout.candidate is 'v9', which is not served" in e
               for e in errors_of(with_changes(rollout=rollout)))
    rollout = {"strategy": "canary", "stable": "v2", "candidate": "v1", "steps": [{"set_weight": 5}]}
    assert any("list rollout.stable ('v2') before rollout.candidate" in e
               for e in errors_of(with_changes(rollout=rollout)))
