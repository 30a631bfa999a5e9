"""A separate app that serves one experiment's ``/metrics`` on a route prefix of its own.

Prometheus scrapes ``/metrics``; the prediction and control routes are public. Where the
metrics should be reachable only from inside (a private ingress path, a firewall rule on a
prefix), deploy the experiment with ``http: {metrics_on_app: false}`` and this app beside it::

    applications:
      - {name: digits, route_prefix: /, import_path: serve_ab.serving.app:build_app, args: {...}}
      - name: digits-metrics
        route_prefix: /internal/digits
        import_path: serve_ab.serving.app:build_metrics_app
        args: {app: digits}

``GET /internal/digits/metrics`` then answers what the experiment's controller renders, asked
through a DeploymentHandle across apps; the experiment app answers 404 on ``/metrics``.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from ray import serve

from serve_ab.api.errors import client_message, error_headers, http_status
from serve_ab.api.grpc.servicer import METHODS as GRPC_METHODS
from serve_ab.config import MetricsAppConfig  # its schema lives with the others, for serve-ab validate
from serve_ab.config.experiment import metrics_export_env, with_env_vars
from serve_ab.config.serve_file import METRICS_DEPLOYMENT
from serve_ab.errors import ServeAbError

metrics_api = FastAPI(title="serve-ab metrics", docs_url=None, redoc_url=None)


def _no_grpc(rpc: str) -> Callable[..., Awaitable[Any]]:
    """The method Ray's gRPC proxy calls for ``rpc`` on this app: UNIMPLEMENTED, naming the app
    to call. The proxy reaches any application named in the 'application' metadata; without
    these, an inference call aimed here was INTERNAL, its details Ray's traceback (the
    replica's pid, IP and actor id)."""
    response_type = GRPC_METHODS[rpc][1]

    async def answer(self: Any, request: Any, grpc_context: Any) -> Any:
        grpc_context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        grpc_context.set_details(f"this application serves only GET <route_prefix>/metrics over HTTP, no gRPC; "
                                 f"call the experiment's application, {self.experiment_app!r}, in the "
                                 "'application' metadata")
        return response_type()

    answer.__name__ = answer.__qualname__ = rpc
    return answer


@serve.deployment(name=METRICS_DEPLOYMENT, num_replicas=1, max_ongoing_requests=100)
@serve.ingress(metrics_api)
class MetricsEndpoint:
    def __init__(self, app: str):
        # Not ``self.app``: serve.ingress gives the class an ``app`` property (the FastAPI app).
        self.experiment_app = app

    @metrics_api.get("/metrics")
    async def metrics(self) -> Response:
        controller = serve.get_deployment_handle("Controller", self.experiment_app)
        try:
            body, content_type = await controller.metrics.remote()
        except ServeAbError as err:  # the controller's own answer (a restart's hold): its status and why
            status = http_status(err)
            return JSONResponse({"error": f"no metrics from app {self.experiment_app!r}: {client_message(err)}"},
                                status_code=status, headers=error_headers(status))
        except Exception as err:  # the experiment app is not running (yet): not this app's fault
            return JSONResponse({"error": f"no metrics from app {self.experiment_app!r}: {type(err).__name__}"},
                                status_code=503)
        return Response(content=body, media_type=content_type)

    ServerLive = _no_grpc("ServerLive")
    ServerReady = _no_grpc("ServerReady")
    ModelReady = _no_grpc("ModelReady")
    ServerMetadata = _no_grpc("ServerMetadata")
    ModelMetadata = _no_grpc("ModelMetadata")
    ModelInfer = _no_grpc("ModelInfer")


def build(args: dict[str, Any]) -> Any:
    cfg = MetricsAppConfig.model_validate(args)
    # Serve's metrics moved to Ray's recorder once a second, as in the experiment's deployments.
    options = with_env_vars({"ray_actor_options": {"num_cpus": cfg.num_cpus}}, metrics_export_env(os.environ))
    return MetricsEndpoint.options(**options).bind(cfg.app)
