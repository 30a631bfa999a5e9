"""The separate metrics app's arguments are checked like an experiment's: a ConfigError that
names the field, before anything is deployed."""

from __future__ import annotations

import pytest

from serve_ab.config.experiment import ConfigError
from serve_ab.serving.app import build_metrics_app


@pytest.mark.parametrize("args, field", [({}, "app"), ({"app": ""}, "app"), ({"app": "x", "extra": 1}, "extra"),
                                         ({"app": "x", "num_cpus": -1}, "num_cpus")])
def test_bad_arguments_name_the_field(args, field):
    with pytest.raises(ConfigError, match=field) as raised:
        build_metrics_app(args)
    assert "metrics app" in str(raised.value)


def test_a_misspelt_key_is_answered_with_the_one_meant():
    # serve run's own check, as serve-ab validate's: the nearest key and the valid ones.
    with pytest.raises(ConfigError) as raised:
        build_metrics_app({"ap": "digits"})
    assert "ap: unknown key (got 'digits'); did you mean 'app'? valid keys: app, num_cpus" in str(raised.value)


def test_good_arguments_bind_one_deployment(monkeypatch):
    monkeypatch.delenv("RAY_SERVE_METRICS_EXPORT_INTERVAL_MS", raising=False)
    app = build_metrics_app({"app": "digits"})
    assert type(app).__name__ == "Application"
    # Serve's metrics moved to Ray once a second, as in the experiment's own deployments.
    options = app._bound_deployment.ray_actor_options
    assert options["runtime_env"] == {"env_vars": {"RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000"}}


def test_a_controller_holding_metrics_after_a_restart_is_answered_with_its_reason(monkeypatch):
    """A restarted controller answers /metrics with ControllerUnavailable until its routers
    caught up (serving/reports.py, RestartCatchUp); through Ray it arrives wrapped, and the
    metrics app answered {"error": "no metrics from app 'digits': RayTaskError(ControllerUnavailable)"},
    as if the app were not running, without the hold's reason."""
    import asyncio
    import json

    from types import SimpleNamespace

    from ray.exceptions import RayTaskError

    from serve_ab.errors import ControllerUnavailable
    from serve_ab.serving import metrics_app

    reason = "the controller restarted 3s ago from its last save, and 1 router replica(s) have not sent it again"
    try:
        raise ControllerUnavailable(reason)
    except ControllerUnavailable as err:  # as Ray hands a replica's exception to its caller
        wrapped = RayTaskError("metrics", "Traceback ...", err).as_instanceof_cause()

    class Handle:
        class metrics:
            @staticmethod
            async def remote():
                raise wrapped

    monkeypatch.setattr(metrics_app.serve, "get_deployment_handle", lambda name, app: Handle)
    # The class as written (serve.ingress subclasses it); no replica's ASGI wrapper is made.
    written = next(k for k in metrics_app.MetricsEndpoint.func_or_class.__mro__ if "metrics" in vars(k))
    endpoint = SimpleNamespace(experiment_app="digits")
    response = asyncio.run(written.metrics(endpoint))
    assert isinstance(wrapped, ControllerUnavailable)
    assert response.status_code == 503
    assert json.loads(response.body) == {"error": f"no metrics from app 'digits': {reason}"}


@pytest.mark.parametrize("rpc", ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
                                 "ModelInfer"])
def test_a_grpc_call_aimed_at_the_metrics_app_is_unimplemented_naming_the_experiment_app(rpc):
    """Ray's gRPC proxy calls the method named after the RPC on whichever app the 'application'
    metadata names. Live, ModelInfer with application=digits-metrics was INTERNAL, with Ray's
    traceback (the replica's pid, IP and actor id) as its details: the metrics app has no such method."""
    import asyncio
    import inspect

    import grpc

    from serve_ab.api.grpc.servicer import METHODS
    from serve_ab.serving import metrics_app
    from tests.unit.serving.test_grpc_v2 import FakeContext

    written = next(k for k in metrics_app.MetricsEndpoint.func_or_class.__mro__ if "metrics" in vars(k))
    method = getattr(written, rpc)
    # Ray passes the call's context only to a method with a parameter of this name.
    assert "grpc_context" in inspect.signature(method).parameters
    context = FakeContext()
    endpoint = type("Endpoint", (), {"experiment_app": "digits"})()
    response = asyncio.run(method(endpoint, METHODS[rpc][0](), grpc_context=context))
    assert type(response) is METHODS[rpc][1]
    assert context.code == grpc.StatusCode.UNIMPLEMENTED
    assert "serves only GET <route_prefix>/metrics" in context.details and "'digits'" in context.details
