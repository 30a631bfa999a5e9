"""The Ray Serve options ``build_app`` gives each deployment (Ray is not started: binding a
deployment only records its options)."""

from __future__ import annotations

import pytest

from serve_ab import build_app
from serve_ab.config.experiment import parse_experiment
from serve_ab.serving.core.run_config import config_fingerprint

LINEAR = "tests.unit.backends.python_models:Linear"
GRPC_LIMIT = {"RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": "2147483647"}
EXPORT = "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS"
EXPORT_1S = {EXPORT: "1000"}


@pytest.fixture(autouse=True)
def no_export_interval_set(monkeypatch):
    # The figures below are the defaults; one set where the tests run would be kept instead.
    monkeypatch.delenv(EXPORT, raising=False)


def experiment(**more):
    return {"model": "m", "weights": {"v1": 50, "v2": 50},
            "versions": [{"name": name, "backend": "python", "class": LINEAR} for name in ("v1", "v2")], **more}


def env(deployment) -> dict | None:
    return deployment.ray_actor_options.get("runtime_env", {}).get("env_vars")


def env_vars(app) -> tuple[dict | None, dict[str, dict | None]]:
    """The router's runtime_env variables, and each version deployment's (isolated)."""
    router = app._bound_deployment
    pools = router.init_args[1] or {}
    return env(router), {name: env(pool._bound_deployment) for name, pool in pools.items()}


def controller_env(app) -> dict | None:
    return env(app._bound_deployment.init_args[2]._bound_deployment)


def test_isolated_versions_are_called_over_grpc_with_room_for_large_messages_on_both_ends():
    # A 4 MiB answer or request would otherwise fail as if the version had (Ray's default limit).
    router, versions = env_vars(build_app(experiment(placement="isolated")))
    assert router == {**EXPORT_1S, **GRPC_LIMIT} and versions == {"v1": router, "v2": router}
    # The limit goes beside any thread setting, never over it.
    router, versions = env_vars(build_app(experiment(
        placement="isolated", router={"num_replicas": 1, "separate_thread": False},
        versions=[{"name": name, "backend": "python", "class": LINEAR, "deployment": {"separate_thread": False}}
                  for name in ("v1", "v2")])))
    one_loop = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}
    assert router == versions["v1"] == versions["v2"] == {**one_loop, **EXPORT_1S, **GRPC_LIMIT}


def test_actor_calls_and_colocated_routers_set_no_message_limit():
    router, versions = env_vars(build_app(experiment(placement="isolated", isolation={"transport": "actor"})))
    assert router == EXPORT_1S and versions == {"v1": EXPORT_1S, "v2": EXPORT_1S}
    router, versions = env_vars(build_app(experiment()))
    assert "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH" not in router and versions == {}


def test_every_deployment_moves_serve_metrics_to_ray_once_a_second(monkeypatch):
    # Ray exports a process's metrics at most once a second; Serve's 100-ms default moves them
    # ten times as often, a timer that costs each idle replica and handle CPU for nothing.
    for placement in ("colocated", "isolated"):
        app = build_app(experiment(placement=placement))
        router, versions = env_vars(app)
        assert router[EXPORT] == "1000" and controller_env(app) == EXPORT_1S
        assert all(v[EXPORT] == "1000" for v in versions.values())
    # A cluster that sets its own interval (0: every change at once) keeps it.
    monkeypatch.setenv(EXPORT, "0")
    app = build_app(experiment(placement="isolated"))
    router, versions = env_vars(app)
    assert router[EXPORT] == controller_env(app)[EXPORT] == versions["v1"][EXPORT] == "0"


def autoscaled_to_zero(**more) -> dict:
    return {"deployment": {"autoscaling_config": {"min_replicas": 0, "max_replicas": 2, "downscale_delay_s": 10,
                                                  "look_back_period_s": 11, **more}}}


def blue_green(keep_blue_s: float = 120, blue: dict | None = None, strategy: str = "blue_green") -> dict:
    """An isolated blue-green (or canary) experiment, v1 blue and v2 green, both autoscaled to zero."""
    rollout = {"strategy": strategy, "stable": "v1", "candidate": "v2"}
    if strategy == "blue_green":
        rollout["blue_green"] = {"keep_blue_s": keep_blue_s, "post_switch_watch_s": 30}
    else:
        rollout["steps"] = [{"set_weight": 50}]
    versions = [{"name": name, "backend": "python", "class": LINEAR, **(autoscaled_to_zero() if blue is None or name == "v2"
                                                                         else blue)}
                for name in ("v1", "v2")]
    return experiment(placement="isolated", weights={"v1": 100, "v2": 0}, versions=versions, rollout=rollout)


def version_autoscaling(app) -> dict:
    pools = app._bound_deployment.init_args[1]
    return {name: pool._bound_deployment._deployment_config.autoscaling_config for name, pool in pools.items()}


def test_blue_autoscaled_to_zero_holds_its_last_replica_for_keep_blue_s():
    # Live (2026-12-07): blue at min_replicas 0 was taken to zero 27 s after the switch, and a
    # rollback 45 s after it waited 13.5 s for a replica while every client stalled.
    scaling = version_autoscaling(build_app(blue_green(keep_blue_s=120)))
    assert scaling["v1"].downscale_to_zero_delay_s == 120
    assert scaling["v1"].downscale_delay_s == 10  # replicas above one still go as configured
    assert scaling["v2"].downscale_to_zero_delay_s is None  # green is not blue


def test_a_blue_that_never_scales_to_zero_or_is_already_held_longer_is_left_as_configured():
    held = version_autoscaling(build_app(blue_green(keep_blue_s=120, blue=autoscaled_to_zero(downscale_to_zero_delay_s=900))))
    assert held["v1"].downscale_to_zero_delay_s == 900
    slow = version_autoscaling(build_app(blue_green(keep_blue_s=120, blue=autoscaled_to_zero(downscale_delay_s=600))))
    assert slow["v1"].downscale_to_zero_delay_s is None  # Ray holds it downscale_delay_s, 600 s
    kept = version_autoscaling(build_app(blue_green(blue=autoscaled_to_zero(min_replicas=1))))
    assert kept["v1"].min_replicas == 1 and kept["v1"].downscale_to_zero_delay_s is None


def test_a_canary_stable_is_not_held_by_keep_blue_s():
    scaling = version_autoscaling(build_app(blue_green(strategy="canary")))
    assert scaling["v1"].downscale_to_zero_delay_s is None


def test_downscale_to_zero_delay_s_is_passed_to_ray():
    scaling = version_autoscaling(build_app(experiment(placement="isolated", versions=[
        {"name": name, "backend": "python", "class": LINEAR, **autoscaled_to_zero(downscale_to_zero_delay_s=45)}
        for name in ("v1", "v2")])))
    assert scaling["v1"].downscale_to_zero_delay_s == scaling["v2"].downscale_to_zero_delay_s == 45


def test_blue_held_warm_leaves_the_runs_config_as_the_file_gives_it():
    """The raised hold is blue's deployment option, not part of the config the controller and
    routers get: there it made the run's fingerprint (what the file sets apart from defaults)
    another, so the same file under the release before started a new run at the upgrade, the
    run's figures from zero and its rows dropped a minute later."""
    args = blue_green(keep_blue_s=120)
    app = build_app(args)
    assert version_autoscaling(app)["v1"].downscale_to_zero_delay_s == 120
    run_config = parse_experiment(app._bound_deployment.init_args[2]._bound_deployment.init_args[0])
    assert run_config.versions == parse_experiment(args).versions
    assert "downscale_to_zero_delay_s" not in config_fingerprint(run_config)
    assert parse_experiment(app._bound_deployment.init_args[0]) == run_config  # the routers' likewise
