"""The Ray Serve options ``build_app`` gives each deployment (Ray is not started: binding a
deployment only records its options)."""

from __future__ import annotations

import pytest

from serve_ab import build_app

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
