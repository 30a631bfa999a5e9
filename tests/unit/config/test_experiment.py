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


def test_a_versions_deployment_keeps_rays_thread_setting_unless_asked():
    # Isolated placement: each version's replicas run Ray's setting (threads by default)
    # unless its deployment names separate_thread; the flags travel in that deployment's
    # runtime_env only, never the router's.
    def env(version):
        return version.deployment.to_ray()["ray_actor_options"].get("runtime_env", {}).get("env_vars")

    def isolated(**deployment):
        return parse_experiment(with_changes(placement="isolated", versions=[
            dict(v, deployment={"num_replicas": 1, **deployment}) for v in GOOD["versions"]]))

    assert [env(v) for v in isolated().versions] == [None, None]
    one_loop = isolated(separate_thread=False)
    assert all(env(v) == {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
                          "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"} for v in one_loop.versions)
    assert one_loop.router.to_ray(isolated=True)["ray_actor_options"].get("runtime_env") is None
    assert all(env(v) == {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "1",
                          "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1"}
               for v in isolated(separate_thread=True).versions)
    assert "versions.0.deployment.separate_thread: Input should be a valid boolean" in \
        errors_of(with_changes(placement="isolated", versions=[
            dict(GOOD["versions"][0], deployment={"separate_thread": "maybe"}), GOOD["versions"][1]]))[0]


def test_isolation_transport_is_grpc_unless_actor_calls_are_asked_for():
    assert parse_experiment(GOOD).isolation.transport == "grpc"
    assert parse_experiment(with_changes(isolation={"transport": "actor"})).isolation.transport == "actor"
    assert "isolation.transport: Input should be 'actor' or 'grpc'" in \
        errors_of(with_changes(isolation={"transport": "http"}))[0]


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
    ({"bogus": 1}, "bogus: unknown key (got 1); valid keys: model, versions, weights, assignment, pin,"),
    ({"weights": {"v1": 90, "v2": 5}}, "weights: weights sum to 95%; they must sum to 100"),
    ({"weights": {"v1": 90, "v9": 10}}, "weights: weights names version 'v9', which is not served"),
    ({"weights": {"v1": 99.995, "v2": 0.005}}, "weights resolve to 0.01% steps"),
    ({"weights": {"v1": 110, "v2": -10}}, "a weight is a percentage in [0, 100]"),
    ({"placement": "sideways"}, "placement: Input should be 'colocated' or 'isolated' (got 'sideways')"),
    ({"versions": []}, "versions: List should have at least 1 item"),
    ({"model": "bad name!"}, "model: 1 to 63 characters, letters, digits, '_', '.' and '-', starting with a letter"),
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


def test_a_feedback_name_has_one_kind_across_metrics_and_gates():
    rollout = {"strategy": "canary", "stable": "v1", "candidate": "v2",
               "gates": [{"metric": "feedback_mean", "name": "correct", "min": 0.5}],
               "steps": [{"set_weight": 5}, {"analysis": {}}, {"set_weight": 100}]}
    metrics = {"metrics": [{"name": "correct", "kind": "conversion"}]}
    errors = errors_of(with_changes(weights={"v1": 100}, rollout=rollout, analysis=metrics))
    assert any("rollout.gates.0 (feedback_mean) reads feedback 'correct' as a mean, but "
               "analysis.metrics (conversion) reads it as a conversion" in e for e in errors), errors
    rollout["gates"].append({"metric": "feedback_rate", "name": "paid", "min": 0.1})
    rollout["gates"][0]["name"] = "revenue"
    cfg = parse_experiment(with_changes(weights={"v1": 100}, rollout=rollout, analysis=metrics))
    assert cfg.feedback_kinds() == {"correct": "conversion", "revenue": "mean", "paid": "conversion"}


# -- what Ray would refuse only at deploy time -------------------------------------------------


def isolated(**deployment):
    cfg = with_changes(placement="isolated")
    cfg["versions"][1]["deployment"] = deployment
    return cfg


@pytest.mark.parametrize("autoscaling, says", [
    ({"min_replicas": 1, "max_replicas": 2, "initial_replicas": 5},
     "initial_replicas (5) must be between min_replicas (1) and max_replicas (2)"),
    ({"min_replicas": 2, "max_replicas": 3, "initial_replicas": 1},
     "initial_replicas (1) must be between min_replicas (2) and max_replicas (3)"),
])
def test_initial_replicas_outside_min_and_max_is_refused(autoscaling, says):
    [error] = errors_of(isolated(autoscaling_config=autoscaling))
    assert error.startswith("versions.1.deployment.autoscaling_config: ") and says in error
    ok = {"min_replicas": 1, "max_replicas": 3, "initial_replicas": 3}
    assert parse_experiment(isolated(autoscaling_config=ok)).versions[1].deployment.autoscaling_config \
        .initial_replicas == 3


@pytest.mark.parametrize("where", ["version", "router", "controller"])
@pytest.mark.parametrize("resources, says", [
    ({"CPU": 1}, "resources has 'CPU' (got CPU: 1); Ray reserves CPU, GPU, memory"),
    ({"memory": 1024}, "resources has 'memory'"),
    ({"GPU": 1}, "use num_cpus, num_gpus or memory"),
    ({"accel_a": 0.00001}, "resources.accel_a is 1e-05; Ray counts resources in steps of 0.0001"),
])
def test_resources_ray_refuses_are_refused_here(where, resources, says):
    if where == "version":
        cfg, path = isolated(ray_actor_options={"resources": resources}), "versions.1.deployment.ray_actor_options"
    elif where == "router":
        cfg, path = with_changes(router={"ray_actor_options": {"resources": resources}}), "router.ray_actor_options"
    else:
        cfg, path = with_changes(controller={"resources": resources}), "controller"
    [error] = errors_of(cfg)
    assert error.startswith(f"{path}.resources: ") and says in error, error


def test_negative_resources_are_refused_and_custom_ones_kept():
    [error] = errors_of(isolated(ray_actor_options={"resources": {"accel_a": -1}}))
    assert error == ("versions.1.deployment.ray_actor_options.resources.accel_a: "
                     "Input should be greater than or equal to 0 (got -1)")
    cfg = parse_experiment(isolated(ray_actor_options={"resources": {"accel_a": 0.5, "accel_b": 0}}))
    assert cfg.versions[1].deployment.to_ray()["ray_actor_options"]["resources"] == {"accel_a": 0.5, "accel_b": 0}


def test_state_and_records_paths_must_name_a_file(tmp_path):
    [error] = errors_of(with_changes(controller={"state_path": ""}))
    assert error == "controller.state_path: String should have at least 1 character (got '')"
    for path in (str(tmp_path), "state/"):
        [error] = errors_of(with_changes(controller={"state_path": path}))
        assert error == (f"controller.state_path: state_path {path!r} is a directory; give the path of a "
                         f"SQLite file (created if missing), e.g. .serve-ab/state.sqlite (got {path!r})")
    [error] = errors_of(with_changes(analysis={"records": {"path": str(tmp_path)}}))
    assert error.startswith("analysis.records.path: path ") and "is a directory" in error
    ok = str(tmp_path / "state.sqlite")
    assert parse_experiment(with_changes(controller={"state_path": ok})).controller.state_path == ok


@pytest.mark.parametrize("where, path", [
    ("version", "versions.1.deployment.ray_actor_options"), ("router", "router.ray_actor_options"),
    ("controller", "controller")])
@pytest.mark.parametrize("field", ["num_cpus", "num_gpus", "resources"])
@pytest.mark.parametrize("quantity, says", [
    (0.00001, "is 1e-05; Ray counts resources in steps of 0.0001, so use 0 or at least 0.0001"),
    (float("inf"), "is inf; it must be a finite amount, e.g. 0.25"),
])
def test_amounts_ray_refuses_at_deploy_time_are_refused_here(where, path, field, quantity, says):
    if where == "controller" and field == "num_gpus":
        return  # the controller asks for no GPU
    value = {"accel_a": quantity} if field == "resources" else quantity
    if where == "version":
        cfg = isolated(ray_actor_options={field: value})
    elif where == "router":
        cfg = with_changes(router={"ray_actor_options": {field: value}})
    else:
        cfg = with_changes(controller={field: value})
    [error] = errors_of(cfg)
    named = "resources.accel_a" if field == "resources" else field
    assert error.startswith(f"{path}.{field}: {named} {says}"), error


@pytest.mark.parametrize("where, path", [
    ("version", "versions.1.deployment.ray_actor_options"), ("router", "router.ray_actor_options")])
def test_more_than_one_gpu_must_be_whole_whatever_the_cluster(where, path):
    # A rule of Ray's placement, not of the cluster: `serve-ab validate` says it before any deploy.
    def with_gpus(num_gpus):
        if where == "version":
            return isolated(ray_actor_options={"num_gpus": num_gpus})
        return with_changes(router={"ray_actor_options": {"num_gpus": num_gpus}})

    [error] = errors_of(with_gpus(1.5))
    assert error == (f"{path}.num_gpus: Ray places a fraction of one GPU or whole GPUs, so a value over 1 "
                     "must be a whole number, e.g. 0.5 or 2 (got 1.5)")
    for whole_or_fraction in (2, 0.5, 1):
        assert parse_experiment(with_gpus(whole_or_fraction))


def test_a_sqlite_store_url_naming_a_directory_is_refused(tmp_path):
    [error] = errors_of(with_changes(controller={"store_url": f"sqlite:///{tmp_path}"}))
    assert error == (f"controller: store_url's path {str(tmp_path)!r} is a directory; give the path of a "
                     "SQLite file (created if missing), e.g. .serve-ab/state.sqlite")


@pytest.mark.parametrize("section, field", [
    ("control", "token_env"), ("control", "qa_token_env"), ("control", "viewer_token_env"),
    ("feedback", "key_env"), ("controller", "store_password_env")])
def test_a_secret_pasted_where_its_variable_name_goes_is_refused_and_never_echoed(section, field):
    secret = "Bearer 8f3a-prod-operator-token"
    changes = {field: secret}
    if field == "store_password_env":
        changes["store_url"] = "redis://localhost:6379/0"
    [error] = errors_of(with_changes(**{section: changes}))
    assert error.startswith(f"{section}.{field}: {field} must be the NAME of an environment variable")
    assert "31 characters" in error and "8f3a" not in error
    assert getattr(getattr(parse_experiment(with_changes(**{section: {**changes, field: "MY_SECRET"}})), section),
                   field) == "MY_SECRET"


def test_a_number_yaml_reads_as_text_says_how_to_write_it():
    import yaml

    doc = yaml.safe_load("weights: {v1: 1e2, v2: 0}\ncontroller: {tick_s: 25e-8}\n"
                         "router: {num_replicas: 1e1}")  # PyYAML: '1e2', '25e-8', '1e1' (2.5e-7 is a float)
    errors = errors_of(with_changes(**doc))
    assert "weights.v1: Input should be a valid number (got '1e2'); YAML reads '1e2' as text: write 100.0" in errors
    assert ("controller.tick_s: Input should be a valid number (got '25e-8'); YAML reads '25e-8' as text: "
            "write 2.5e-07") in errors
    assert ("router.num_replicas: Input should be a valid integer (got '1e1'); YAML reads '1e1' as text: "
            "write 10") in errors


@pytest.mark.parametrize("value", [1250.0, 1e6, 1e20, 2.5e-7, 0.5, 1e300, -3e-12])
def test_the_spelling_suggested_for_a_float_reads_back_as_it_in_yaml(value):
    import yaml

    from serve_ab.config.experiment import yaml11_float

    assert yaml.safe_load(yaml11_float(value)) == value


def test_a_url_refused_for_its_query_is_quoted_without_its_values_or_password():
    rollout = {"strategy": "canary", "stable": "v1", "candidate": "v2", "steps": [{"set_weight": 100}],
               "analysis": {"prometheus": {"url": "http://ops:pw1@prometheus:9090/?token=s3cr3tq&x=1"}}}
    [error] = errors_of(with_changes(rollout=rollout))
    assert "prometheus.url" in error and "(got 'http://ops:***@prometheus:9090/?token=***&x=***')" in error
    assert "s3cr3tq" not in error and "pw1" not in error


# -- no silent coercion ------------------------------------------------------------------------


@pytest.mark.parametrize("change, expected", [
    ({"weights": {"v1": True, "v2": 99}}, "weights.v1: Input should be a valid number (got True)"),
    ({"weights": {"v1": "50", "v2": "50"}}, "weights.v1: Input should be a valid number (got '50')"),
    ({"router": {"num_replicas": True}}, "router.num_replicas: Input should be a valid integer (got True)"),
    ({"router": {"num_replicas": "2"}}, "router.num_replicas: Input should be a valid integer (got '2')"),
    ({"controller": {"tick_s": "1"}}, "controller.tick_s: Input should be a valid number (got '1')"),
    ({"pin": {"enabled": "yes"}}, "pin.enabled: Input should be a valid boolean (got 'yes')"),
])
def test_bools_and_strings_are_not_numbers(change, expected):
    assert expected in errors_of(with_changes(**change))


def test_weights_take_ints_and_floats():
    assert parse_experiment(with_changes(weights={"v1": 87.5, "v2": 12.5})).weights_pct() == {"v1": 87.5, "v2": 12.5}
    assert parse_experiment(with_changes(weights={"v1": 90, "v2": 10.0})).weights_pct() == {"v1": 90.0, "v2": 10.0}


def test_every_enum_field_accepts_its_values_as_strings():
    # Models are strict (no coercion), so an enum field must opt out to read YAML's strings.
    import enum

    from serve_ab.config import experiment as ec
    from serve_ab.config import rollout as rc

    models = [obj for module in (ec, rc) for obj in vars(module).values()
              if isinstance(obj, type) and issubclass(obj, ec._Strict)]
    enum_fields = [(model, name) for model in models for name, info in model.model_fields.items()
                   if isinstance(info.annotation, type) and issubclass(info.annotation, enum.Enum)]
    assert len(enum_fields) >= 7
    for model, name in enum_fields:
        strict = [m.strict for m in model.model_fields[name].metadata if hasattr(m, "strict")]
        assert strict == [False], f"{model.__name__}.{name}: give it Field(..., strict=False)"


@pytest.mark.parametrize("header", ["x user id", "bad header:", "x-user-id\n", ""])
@pytest.mark.parametrize("part", ["assignment", "pin"])
def test_assignment_and_pin_headers_must_be_http_tokens(part, header):
    [error] = errors_of(with_changes(**{part: {"header": header}}))
    assert error.startswith(f"{part}.header: "), error
    if header:
        assert "is not an HTTP header name" in error and f"(got {header!r})" in error


def test_header_names_are_lowercased():
    cfg = parse_experiment(with_changes(assignment={"key": "header", "header": "X-User-Id"},
                                        pin={"header": "X-Pin"}))
    assert (cfg.assignment.header, cfg.pin.header) == ("x-user-id", "x-pin")


@pytest.mark.parametrize("pin_enabled", [True, False])
def test_one_header_cannot_carry_both_the_user_key_and_a_pinned_version(pin_enabled):
    # Pinning off is no way out: the pin header is read on every request, and refused (403).
    [error] = errors_of(with_changes(assignment={"key": "header", "header": "X-Who"},
                                     pin={"enabled": pin_enabled, "header": "x-who"}))
    assert "pin.header and assignment.header are both 'x-who'" in error
    assert "e.g. assignment.header: x-user-id and pin.header: x-serve-ab-version" in error
    # A key read from the body leaves the header to pinning.
    changes = {"assignment": {"key": "json", "header": "x-who"}, "pin": {"enabled": pin_enabled, "header": "x-who"}}
    assert parse_experiment(with_changes(**changes)).pin.header == "x-who"


# -- rules across fields -----------------------------------------------------------------------

CANARY = {"strategy": "canary", "stable": "v1", "candidate": "v2",
          "gates": [{"metric": "error_rate", "max": 0.05}],
          "steps": [{"set_weight": 10}, {"pause": {"duration": "1m"}}, {"set_weight": 100}]}


@pytest.mark.parametrize("weights, shown", [
    ({"v1": 50, "v2": 50}, "{v1: 50, v2: 50}"),
    ({"v2": 100}, "{v2: 100}"),
])
def test_weights_a_rollout_would_ignore_are_refused(weights, shown):
    [error] = errors_of(with_changes(weights=weights, rollout=CANARY))
    assert error == (f"<root>: weights is {shown}, but a rollout starts at rollout.stable 100% and then "
                     "sets the weights itself; write weights: {v1: 100}")
    for ok in ({"v1": 100}, {"v1": 100, "v2": 0}):
        assert parse_experiment(with_changes(weights=ok, rollout=CANARY)).rollout.candidate == "v2"


def test_a_shadow_agreement_gate_needs_copies_sent_to_the_candidate():
    gates = [{"metric": "shadow_agreement", "min": 0.9}]
    canary = {**CANARY, "gates": gates}
    [error] = errors_of(with_changes(weights={"v1": 100}, rollout=canary))
    assert "shadow_agreement gate, but it would get no data" in error and "no shadow:" in error
    assert "add shadow: {version: v2, percent: 20}" in error
    [error] = errors_of(with_changes(weights={"v1": 100}, rollout=canary, shadow={"version": "v1", "percent": 10}))
    assert "shadow.version 'v1'" in error
    fed = parse_experiment(with_changes(weights={"v1": 100}, rollout=canary, shadow={"version": "v2", "percent": 10}))
    assert fed.rollout.gates[0].min == 0.9
    blue_green = {"strategy": "blue_green", "stable": "v1", "candidate": "v2", "gates": gates}
    assert "would get no data" in errors_of(with_changes(weights={"v1": 100}, rollout=blue_green))[0]
    mirrored = {**blue_green, "blue_green": {"validation_min_samples": 20}}
    assert parse_experiment(with_changes(weights={"v1": 100}, rollout=mirrored)).rollout is not None


def test_analysis_metric_names_are_unique():
    metrics = [{"name": "c", "kind": "conversion"}, {"name": "c", "kind": "mean"}]
    [error] = errors_of(with_changes(analysis={"metrics": metrics}))
    assert error.startswith("analysis.metrics: names ['c'] more than once")


@pytest.mark.parametrize("name", ["error_rate", "latency_ms"])
def test_a_feedback_metric_may_not_take_a_built_in_metrics_name(name):
    # Regression: the report then had two metrics of one name, sharing plots and MLflow keys.
    [error] = errors_of(with_changes(analysis={"metrics": [{"name": name, "kind": "mean"}]}))
    assert error == (f"analysis.metrics.0.name: reserved: every report has metrics error_rate and latency_ms "
                     f"of its own; give the feedback another name, e.g. {name}_feedback (got {name!r})")
    rollout = {"strategy": "canary", "stable": "v1", "candidate": "v2",
               "gates": [{"metric": "feedback_mean", "name": name, "min": 0.5}],
               "steps": [{"set_weight": 5}, {"analysis": {}}, {"set_weight": 100}]}
    errors = errors_of(with_changes(weights={"v1": 100}, rollout=rollout))
    assert any(f"rollout.gates.0 (feedback_mean) name {name!r}: reserved" in e for e in errors), errors


@pytest.mark.parametrize("name, shown", [("a\nb", "'\\n'"), ("\x1b[2Jred", "'\\x1b'"), ("tab\there", "'\\t'")])
def test_a_feedback_metric_name_may_not_hold_control_characters(name, shown):
    [error] = errors_of(with_changes(analysis={"metrics": [{"name": name, "kind": "conversion"}]}))
    assert error.startswith(f"analysis.metrics.0.name: holds control character(s) {shown}; ")
    assert error.endswith(f"e.g. correct or revenue_usd (got {name!r})")
    assert parse_experiment(with_changes(analysis={"metrics": [{"name": "cost $ per € (net)", "kind": "mean"}]}))


# -- the validate command ----------------------------------------------------------------------


def serve_file(tmp_path, args: dict, **app) -> Path:
    raw = yaml.safe_load((REPO_ROOT / "configs" / "ab.yaml").read_text())
    raw["applications"][0]["args"] = args
    raw["applications"][0].update(app)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_validate_error_paths_name_the_field_once(tmp_path):
    args = with_changes(weights={"v1": 100}, rollout={**CANARY, "candidate": "v9"})
    assert validate_file(serve_file(tmp_path, args), check_files=False) == [
        "applications.0.args: rollout.candidate is 'v9', which is not served; versions: ['v1', 'v2']"]
    steps = [{"set_weight": "ten"}, {"pause": {"duration": "soon"}}]
    errors = validate_file(serve_file(tmp_path, with_changes(rollout={**CANARY, "steps": steps})), False)
    assert any(e.startswith("applications.0.args.rollout.steps.0.set_weight: Input should be a valid number")
               for e in errors), errors
    assert any(e.startswith("applications.0.args.rollout.steps.1.pause.duration: invalid duration 'soon'")
               for e in errors), errors
    assert not any("<root>" in e for e in errors)


def test_validate_says_a_file_is_empty(tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    [error] = validate_file(tmp_path / "empty.yaml")
    assert error.endswith("empty.yaml: the file is empty; expected an experiment, or a Ray Serve config "
                          "file with applications:")


def test_validate_refuses_a_key_given_twice(tmp_path):
    text = (REPO_ROOT / "configs" / "ab.yaml").read_text()
    line = next(i for i, x in enumerate(text.splitlines(), start=1) if x.strip().startswith("weights:"))
    doubled = text.replace("      weights: {v1: 50, v2: 50}\n",
                           "      weights: {v1: 50, v2: 50}\n      weights: {v1: 100}\n")
    assert doubled != text
    (tmp_path / "twice.yaml").write_text(doubled)
    [error] = validate_file(tmp_path / "twice.yaml", check_files=False)
    assert error.endswith(f"not valid YAML: key 'weights' appears twice in one mapping, at lines {line} and "
                          f"{line + 1}; YAML would keep only the second, so keep one")


def test_load_yaml_is_safe_load_without_duplicate_keys():
    from serve_ab.config.serve_file import load_yaml

    text = "base: &b {x: 1, y: 2}\nmerged: {<<: *b, y: 3}\nlist: [1, {a: 1}]\n"
    assert load_yaml(text) == yaml.safe_load(text)  # a merge key may be overridden
    with pytest.raises(yaml.YAMLError, match="key 'a' appears twice in one mapping, at lines 2 and 3"):
        load_yaml("top:\n  a: 1\n  a: 2\n")
    with pytest.raises(yaml.YAMLError):
        load_yaml("!!python/object:os.system {}\n")  # still the safe loader


@pytest.mark.parametrize("import_path", ["serve_ab.serving.app:build_ap", "serve_ab.servng.app:build_app",
                                         "serve_ab.serving.app:Router"])
def test_validate_refuses_an_import_path_that_is_no_builder(tmp_path, import_path):
    [error] = validate_file(serve_file(tmp_path, GOOD, import_path=import_path), check_files=False)
    assert error.startswith(f"applications.0.import_path: {import_path!r} is not one of serve-ab's app builders; "
                            "valid: serve_ab.serving.app:build_app (experiment)")
    for ok in ("serve_ab.serving.app:build_app", "serve_ab.serving.app.build_app", "serve_ab:build_app"):
        assert validate_file(serve_file(tmp_path, GOOD, import_path=ok), check_files=False) == [], ok


def test_validate_checks_the_metrics_app_against_its_own_args(tmp_path):
    # README, Security: the metrics app beside the experiment.
    raw = yaml.safe_load((REPO_ROOT / "configs" / "ab.yaml").read_text())
    raw["applications"][0]["args"]["http"] = {"metrics_on_app": False}
    raw["applications"].append({"name": "digits-metrics", "route_prefix": "/internal/digits",
                                "import_path": "serve_ab.serving.app:build_metrics_app", "args": {"app": "digits"}})
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert validate_file(path, check_files=False) == []
    raw["applications"][1]["args"] = {"ap": "digits", "num_cpus": True}
    path.write_text(yaml.safe_dump(raw))
    assert sorted(validate_file(path, check_files=False)) == [
        "applications.1.args.ap: unknown key (got 'digits'); did you mean 'app'? valid keys: app, num_cpus",
        "applications.1.args.app: field required",
        "applications.1.args.num_cpus: Input should be a valid number (got True)",
    ]


def test_the_metrics_app_schema_is_the_one_build_metrics_app_reads():
    from serve_ab.config.serve_file import MetricsAppConfig
    from serve_ab.serving import metrics_app

    assert metrics_app.MetricsAppConfig is MetricsAppConfig


# --- values and files too big to print or to read -------------------------------------------


def _aliased(levels: int) -> list:
    """What ``a1: &a1 [*a0, *a0]`` ... does in YAML: a value whose repr doubles with each level."""
    value: list = ["x" * 16]
    for _ in range(levels):
        value = [value, value]
    return value


def test_a_long_value_is_cut_in_the_error_saying_how_long_it_was():
    [error] = errors_of(with_changes(placement="x" * 5000))
    assert error == ("placement: Input should be 'colocated' or 'isolated' (got '" + "x" * 199
                     + "… (5,000 characters))")
    [error] = errors_of(with_changes(model=_aliased(20)))
    assert error.startswith("model: Input should be a valid string (got [[[[...], [...]], [[...], [...]]],")
    assert len(error) < 300
    assert errors_of(_aliased(20))[0].startswith("<root>: expected a mapping of experiment fields (got [[[[...]")


def test_validate_prints_an_alias_bomb_in_a_few_lines(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a0: &a0 [xxxxxxxxxxxxxxxx, xxxxxxxxxxxxxxxx]\n"
                    + "".join(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]\n" for i in range(1, 21))
                    + "model: *a20\n")
    assert cli_main(["validate", "--no-check-files", str(bomb)]) == 1
    out = capsys.readouterr().out
    assert "  - model: Input should be a valid string (got [[[[...]" in out and len(out) < 10_000


@pytest.mark.parametrize("text, error", [
    ("model: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply to read (hundreds of levels of lists or mappings)"),
    ("model: x\nweights: {v1: " + "9" * 5000 + "}\n",
     ("not valid YAML: a value cannot be read (Exceeds the limit (4300 digits) for integer string conversion: value "
      "has 5000 digits)")),
])
def test_validate_says_what_is_wrong_with_a_file_it_cannot_read(tmp_path, capsys, text, error):
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    assert cli_main(["validate", "--no-check-files", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"  - {path}: {error}" in out and "this is a bug" not in out


def test_a_replica_count_past_what_ray_serve_can_deploy_is_refused_by_field():
    """Ray Serve keeps num_replicas as a protobuf int32 and the autoscaling counts as uint32:
    2**31 replicas passed validate, then `serve run` failed to deploy with "Value out of
    range: 2147483648", naming no field."""
    errors = errors_of(with_changes(router={"num_replicas": 2**31}))
    assert errors == ["router.num_replicas: Input should be less than or equal to 2147483647 (got 2147483648)"]
    versions = copy.deepcopy(GOOD["versions"])
    versions[1]["deployment"] = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 10**30}}
    errors = errors_of(with_changes(placement="isolated", versions=versions))
    assert errors == ["versions.1.deployment.autoscaling_config.max_replicas: Input should be less than or equal "
                      "to 2147483647 (got 1000000000000000000000000000000)"]

    from ray.serve._private.config import DeploymentConfig

    from serve_ab.config.experiment import MAX_REPLICAS

    DeploymentConfig(num_replicas=MAX_REPLICAS).to_proto_bytes()  # the bound is one Ray takes
    with pytest.raises(ValueError, match="out of range"):
        DeploymentConfig(num_replicas=MAX_REPLICAS + 1).to_proto_bytes()


@pytest.mark.parametrize("written, read_as", [
    ("no", "the boolean false"), ("010", "the number 8"), ("0x1F", "the number 31"), ("12:30", "the number 750"),
    ("2026-12-07", "a date (2026-12-07)"), ("~", "null"),
])
def test_text_yaml_reads_as_another_type_is_named_with_a_hint_to_quote_it(written, read_as):
    """YAML 1.1 reads an unquoted salt: 12:30 as 750 (base 60); the error quoted 750, or
    datetime.date(2026, 12, 7), and not why: the user never wrote either."""
    args = yaml.safe_load(f"salt: {written}")
    errors = errors_of(with_changes(assignment={"key": "json", "field": "user_id", **args}))
    assert len(errors) == 1 and errors[0].startswith("assignment.salt: Input should be a valid string (got "), errors
    assert f"YAML reads that unquoted value as {read_as}" in errors[0] and "quote it" in errors[0], errors
    assert "datetime" not in errors[0], errors


@pytest.mark.parametrize("field", ["target_ongoing_requests", "upscale_delay_s", "downscale_delay_s",
                                   "look_back_period_s"])
def test_an_infinite_autoscaling_setting_is_refused_as_the_run_record_cannot_store_it(field):
    """Live: upscale_delay_s: .inf served (Ray reads it as never), and then every save of the run
    record failed ('config is not plain JSON (Out of range float values are not JSON compliant)')."""
    versions = copy.deepcopy(GOOD["versions"])
    versions[1]["deployment"] = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 2, field: float("inf")}}
    errors = errors_of(with_changes(placement="isolated", versions=versions))
    assert errors == [f"versions.1.deployment.autoscaling_config.{field}: Input should be a finite number (got inf)"]
    errors = errors_of(with_changes(analysis={"records": {"interval_s": float("inf")}}))
    assert errors == ["analysis.records.interval_s: Input should be a finite number (got inf)"]
