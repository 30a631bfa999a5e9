"""The router: the app's ingress deployment.

Every request, over HTTP or through a DeploymentHandle, takes the same path:
key -> version (:meth:`Router._choose_version`) -> checked batch -> that version's model.
The versions are either held in this replica (colocated) or are other deployments whose
handles this replica calls (isolated); both look the same from here.
"""

# No "from __future__ import annotations": FastAPI reads these route signatures at runtime
# through Ray Serve's ingress wrapper, which cannot resolve string annotations.

import asyncio
import hmac
import logging
import os
import random
import time
import uuid
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import (
    NodeDiedError,
    ObjectLostError,
    RayActorError,
    RaySystemError,
    WorkerCrashedError,
)
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
    RequestCancelledError,
)
from ray.serve.handle import DeploymentHandle

from serve_ab.api.access_log import AccessLog
from serve_ab.api.http_util import (
    ApiError,
    add_openapi_schemas,
    install_error_handlers,
    json_body,
    json_safe,
    read_json,
)
from serve_ab.api.schemas import (
    PredictRequest,
    V2InferRequest,
    decode_v2_inputs,
    encode_v2_response,
    parse_body,
)
from serve_ab.backends.base import InputError, InputSpec, OutputSpec, to_batch
from serve_ab.api.schemas import FeedbackRequest
from serve_ab.config.experiment import ExperimentConfig, parse_experiment
from serve_ab.rollout.machine import RolloutError
from serve_ab.routing import Assigner
from serve_ab.serving.runtime import LoadedVersion

VERSION_HEADER = "x-model-version"
CONTROL_ACTIONS = ("promote", "pause", "resume", "abort", "rollback", "weights")
# Observations are sent to the controller in batches; a bound keeps memory flat when it is down.
FLUSH_INTERVAL_S = 0.25
MAX_PENDING_OBSERVATIONS = 50_000
# Isolated placement: a version whose calls complete none for STALL_S while no replica answers
# a probe within PROBE_TIMEOUT_S is down. Healthy replicas answer a probe in milliseconds; a
# model that blocks its replica for seconds per call needs these raised.
WATCHDOG_INTERVAL_S = 0.25
STALL_S = 1.0
PROBE_TIMEOUT_S = 2.0
WATCHDOG_IDLE_EXIT_S = 30.0  # the watchdog of an idle (or retired) version stops

logger = logging.getLogger("ray.serve")

api = FastAPI(
    title="serve-ab",
    version="0.1.0",
    description="Several versions of one model behind a traffic-splitting router. "
    "`POST /predict` takes plain JSON; `/v2/...` is the Open Inference Protocol (KServe V2). "
    "Every answer names the version that served it (body and `x-model-version` header).",
)
install_error_handlers(api)
add_openapi_schemas(api, [PredictRequest, V2InferRequest, FeedbackRequest])
api.add_middleware(AccessLog, logger=logger)


class VersionUnavailable(ApiError, LookupError):
    """A pinned version that this experiment does not serve (404 over HTTP)."""

    def __init__(self, message: str):
        super().__init__(404, message)


class _Version(Protocol):
    async def predict(self, batch: np.ndarray) -> np.ndarray: ...


class RemoteVersion:
    """A version served by its own deployment (isolated placement).

    When the version's replicas die, Ray Serve does not fail the calls: it queues them (and
    re-queues those the dead replica had not accepted) until a new replica has started, which
    takes its health check period plus a model load, longer than clients wait. So a watchdog
    runs beside the calls: when they stop completing and the replicas do not answer a probe,
    the version is down, its waiting calls are cancelled and new ones fail at once with
    :class:`RemoteVersion.Down`, for the router to serve elsewhere, until a probe is answered.
    """

    class Down(RuntimeError):
        """No replica of the version answers; raised instead of waiting for a new one."""

    # The replica failed, not the request: it died (RayActorError covers ActorDiedError and
    # ActorUnavailableError), its worker or node went away, or Serve had no replica to take it.
    UNAVAILABLE = (Down, RayActorError, WorkerCrashedError, NodeDiedError, ObjectLostError,
                   RaySystemError, DeploymentUnavailableError, ReplicaUnavailableError,
                   BackPressureError)

    def __init__(self, name: str, handle: DeploymentHandle):
        self.name = name
        self.handle = handle
        self._pending: set[Any] = set()  # the DeploymentResponses awaited now
        self._progress = False  # a call completed since the watchdog last looked
        self._down_reason: str | None = None
        self._watchdog: asyncio.Task | None = None

    @classmethod
    def is_unavailable(cls, err: BaseException) -> bool:
        """True when ``err`` says the version could not serve, not that the request was bad.

        Ray re-raises a replica's own exception as a class deriving from both RayTaskError and
        that exception, so a model's InputError (or an ApiError) is never taken for an outage.
        """
        return isinstance(err, cls.UNAVAILABLE) and not isinstance(err, (InputError, ApiError))

    async def predict(self, batch: np.ndarray) -> np.ndarray:
        if self._down_reason is not None:
            raise RemoteVersion.Down(self._down_reason)
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        response = self.handle.predict.remote(batch)
        self._pending.add(response)
        try:
            return await response
        except RequestCancelledError:
            if self._down_reason is None:  # cancelled by its caller, not by the watchdog
                raise
            raise RemoteVersion.Down(self._down_reason) from None
        finally:
            self._pending.discard(response)
            self._progress = True

    async def describe(self) -> tuple[InputSpec, OutputSpec]:
        return await self.handle.describe.remote()

    async def _watch(self) -> None:
        # Only a version seen answering can be declared down: one that has not answered since
        # it was idle may be starting from zero replicas (autoscaling), which is worth the wait.
        answered = False
        stalled_s = idle_s = 0.0
        try:
            while idle_s < WATCHDOG_IDLE_EXIT_S:
                self._progress = False
                await asyncio.sleep(WATCHDOG_INTERVAL_S)
                if self._down_reason is not None:
                    if await self._answers_probe():
                        logger.info("serve-ab router: version %s answers again", self.name)
                        self._down_reason = None
                    continue
                answered = answered or self._progress
                stalled = bool(self._pending) and not self._progress
                stalled_s = stalled_s + WATCHDOG_INTERVAL_S if stalled else 0.0
                idle_s = 0.0 if self._pending or self._progress else idle_s + WATCHDOG_INTERVAL_S
                if answered and stalled_s >= STALL_S and not await self._answers_probe() \
                        and not self._progress:
                    self._mark_down(stalled_s)
                    stalled_s = 0.0
        except Exception:  # a watchdog bug must not keep the version down: back to waiting
            logger.exception("serve-ab router: watchdog of version %s failed", self.name)
            self._down_reason = None
        finally:
            self._watchdog = None

    async def _answers_probe(self) -> bool:
        response = None
        try:
            response = self.handle.describe.remote()
            await asyncio.wait_for(response, PROBE_TIMEOUT_S)
        except Exception:  # timed out waiting for a replica, the replica died, or no deployment
            if response is not None:
                response.cancel()
            return False
        return True

    def _mark_down(self, stalled_s: float) -> None:
        self._down_reason = (
            f"version {self.name!r} (deployment {self.handle.deployment_name!r}) is unavailable: "
            f"no call completed for {stalled_s:.1f}s and no replica answered a probe within "
            f"{PROBE_TIMEOUT_S:g}s; its requests are served elsewhere until one answers"
        )
        logger.warning("serve-ab router: %s (%d waiting calls cancelled)", self._down_reason,
                       len(self._pending))
        for response in list(self._pending):
            response.cancel()


def _error_kind(err: BaseException) -> str:
    """How a call failed, for the error counters: the version's replicas were unavailable,
    the model refused the input, the call was cancelled, or the model itself raised."""
    if isinstance(err, InputError):
        return "input"
    if isinstance(err, (RequestCancelledError, asyncio.CancelledError)):
        return "cancelled"
    if RemoteVersion.is_unavailable(err):
        return "unavailable"
    return "model"


def _first_row(outputs: np.ndarray | None) -> tuple[int | None, float | None]:
    """The predicted class and its score of a request's first instance (classifiers)."""
    if outputs is None or outputs.ndim != 2 or not len(outputs):
        return None, None
    predicted_class = int(outputs[0].argmax())
    return predicted_class, float(outputs[0, predicted_class])


def _request_id() -> str:
    # Ray Serve gives every request an id (and honours a client's x-request-id header);
    # using it ties our answers to Serve's own access logs.
    request_id = serve.context._get_serve_request_context().request_id
    return request_id or uuid.uuid4().hex


def _same_interface(specs: dict[str, tuple[InputSpec, OutputSpec]]) -> tuple[InputSpec, OutputSpec]:
    """Versions compared in one experiment must take and return the same tensors."""
    (first_name, first), *rest = specs.items()
    for name, spec in rest:
        if spec != first:
            raise ValueError(
                f"version {name!r} takes {spec[0]} and returns {spec[1]}, but version "
                f"{first_name!r} takes {first[0]} and returns {first[1]}; the versions of one "
                "experiment must share their input and output"
            )
    return first


@serve.deployment(name="Router")
@serve.ingress(api)
class Router:
    async def __init__(
        self,
        experiment: dict[str, Any],
        pools: dict[str, DeploymentHandle] | None,
        controller: DeploymentHandle,
    ):
        self.cfg: ExperimentConfig = parse_experiment(experiment)
        self.assigner = Assigner(self.cfg.weights_pct(), self.cfg.assignment.salt)
        self._interface: tuple[InputSpec, OutputSpec] | None = None
        self._token = os.environ.get(self.cfg.control.token_env) or None
        self.versions: dict[str, _Version]
        if pools:
            self.versions = {name: RemoteVersion(name, handle) for name, handle in pools.items()}
        else:
            loaded = {v.name: LoadedVersion(v) for v in self.cfg.versions}
            self._interface = _same_interface(
                {name: (v.input_spec, v.output_spec) for name, v in loaded.items()}
            )
            self.versions = loaded
        self.controller = controller
        self._pending: list[tuple] = []
        self._pending_pairs: list[tuple] = []
        self._epoch = -1
        self._mirrors: list[dict[str, Any]] = []  # [{"version", "percent"}] from the controller
        self._mirror_tasks: set[asyncio.Task] = set()  # held so the loop does not drop them
        self._rng = random.Random()
        # Serve the controller's weights from the first request on: after a restart they
        # are the rollout's, not the config's starting point.
        self._apply(await controller.wait_for_update.remote(self._epoch, 0.0))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._follow_controller()),
                       loop.create_task(self._flush_observations())]

    # -- following the controller --------------------------------------------------------------

    def _apply(self, snapshot: dict[str, Any]) -> None:
        self._epoch = snapshot["epoch"]
        self._mirrors = snapshot.get("mirrors") or []
        weights = {name: snapshot["weights"].get(name, 0.0) for name in self.versions}
        if weights != self.assigner.table.weights_pct():
            self.assigner.set_weights(weights)
            logger.info("serve-ab router: weights now %s", weights)
        for name in snapshot["retired"]:
            if name in self.versions and weights.get(name, 0.0) == 0.0:
                # Requests in flight hold their own reference; the model is freed after them.
                del self.versions[name]
                logger.info("serve-ab router: retired version %s", name)

    async def _follow_controller(self) -> None:
        while True:
            try:
                self._apply(await self.controller.wait_for_update.remote(self._epoch))
            except Exception:  # controller restarting: keep serving the last weights
                logger.warning("serve-ab router: controller unreachable; keeping weights", exc_info=True)
                await asyncio.sleep(0.5)

    async def _flush_observations(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            if not self._pending and not self._pending_pairs:
                continue
            rows, self._pending = self._pending, []
            pairs, self._pending_pairs = self._pending_pairs, []
            try:
                await self.controller.record.remote(rows, pairs)
            except Exception:
                logger.warning("serve-ab router: dropped %d observations", len(rows), exc_info=True)

    def _observe(self, version: str, started_s: float, error_kind: str | None,
                 outputs: np.ndarray | None, unit: int | None = None, assigned: bool = False,
                 mirrored: bool = False) -> None:
        if len(self._pending) >= MAX_PENDING_OBSERVATIONS:
            return
        predicted_class, score = _first_row(outputs)
        now_s = time.time()
        self._pending.append((now_s, version, (now_s - started_s) * 1000.0, error_kind,
                              predicted_class, score,
                              # A mirrored answer must not take over the request's feedback.
                              None if mirrored else _request_id(), unit, assigned, mirrored))

    # -- the traffic decision --------------------------------------------------------------

    def _choose_version(self, key: str | None, pinned: str | None) -> tuple[str, int | None]:
        """The version for a request, and its key's hash (None when pinned or keyless)."""
        if pinned is None:
            return self.assigner.assign_unit(key)
        if not self.cfg.pin.enabled:
            raise ApiError(403, "pinning a version is turned off for this experiment (pin.enabled: false)")
        if pinned not in self.versions:
            raise VersionUnavailable(
                f"unknown version {pinned!r}; this experiment serves {list(self.versions)}"
            )
        return pinned, None

    async def _get_interface(self) -> tuple[InputSpec, OutputSpec]:
        if self._interface is None:  # isolated: ask the versions' own replicas once
            remote = list(self.versions.values())
            described = await asyncio.gather(*(v.describe() for v in remote))  # type: ignore[attr-defined]
            self._interface = _same_interface({v.name: d for v, d in zip(remote, described)})  # type: ignore[attr-defined]
        return self._interface

    def _key_from(self, fields: dict[str, Any] | None, headers: Any) -> str | None:
        assignment = self.cfg.assignment
        if assignment.key == "header":
            return headers.get(assignment.header) if headers is not None else None
        if assignment.key == "none" or not fields:
            return None
        key = fields.get(assignment.field)
        if key is None:
            return None
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise InputError(
                f"assignment key '{assignment.field}' must be a string or an integer; "
                f"got {type(key).__name__} {key!r}"
            )
        return str(key)

    async def _serve(self, batch_values: Any, key: str | None, pinned: str | None) -> tuple[str, np.ndarray]:
        version, unit = self._choose_version(key, pinned)
        input_spec, _ = await self._get_interface()
        batch = to_batch(batch_values, input_spec, allow_non_finite=self.cfg.http.allow_non_finite)
        return await self._predict(version, batch, may_fall_back=pinned is None, unit=unit)

    async def _predict(self, version: str, batch: np.ndarray, *, may_fall_back: bool = True,
                       unit: int | None = None) -> tuple[str, np.ndarray]:
        """Serve ``batch`` on ``version``; returns the version that served it and the outputs.

        ``may_fall_back`` is False for pinned requests, which are answered by their version
        only; only the others count as assigned (the sample-ratio check's denominator).
        """
        started_s = time.time()
        assigned = may_fall_back
        try:
            outputs = await self.versions[version].predict(batch)
        except BaseException as err:
            # Recorded against the version that failed, so the rollout's error_rate gate sees it.
            self._observe(version, started_s, _error_kind(err), None, unit, assigned)
            if not isinstance(err, Exception):
                raise  # cancelled: the client went away
            if not may_fall_back or not RemoteVersion.is_unavailable(err):
                raise  # a pinned request (QA, blue-green validation) is answered by its version only
            # Its replica died or is unavailable: serve the request once more elsewhere. Safe
            # because inference is idempotent (a read with no side effect), so running it twice
            # (if the dead replica had got as far as computing it) changes nothing.
            rollout = self.cfg.rollout
            if rollout is not None and version != rollout.stable and rollout.stable in self.versions:
                fallback = rollout.stable
            else:
                weights = self.assigner.table.weights_pct()
                fallback = next((name for name in self.versions
                                 if name != version and weights.get(name, 0.0) > 0.0), None)
            if fallback is None:
                raise
            logger.warning("serve-ab router: request %s: version %s unavailable (%s); retrying the request on %s",
                           _request_id(), version, type(err).__name__, fallback)
            version, started_s, assigned = fallback, time.time(), False
            try:
                outputs = await self.versions[version].predict(batch)
            except BaseException as retry_err:
                self._observe(version, started_s, _error_kind(retry_err), None, unit, assigned)
                raise  # once only: a second outage is the caller's answer
        self._observe(version, started_s, None, outputs, unit, assigned)
        if self._mirrors and may_fall_back:
            for mirror in self._mirrors:
                self._mirror_copy(mirror, version, batch, outputs)
        return version, outputs

    def _mirror_copy(self, mirror: dict[str, Any], live_version: str, batch: np.ndarray,
                     live_outputs: np.ndarray) -> None:
        """Send a copy to a mirrored version in the background: the client does not wait
        for it, never sees its answer, and never sees its failure."""
        version = mirror["version"]
        if version == live_version or version not in self.versions \
                or self._rng.random() * 100.0 >= mirror["percent"]:
            return
        task = asyncio.get_running_loop().create_task(
            self._mirrored(version, live_version, batch, live_outputs, _request_id()))
        self._mirror_tasks.add(task)
        task.add_done_callback(self._mirror_tasks.discard)

    async def _mirrored(self, version: str, live_version: str, batch: np.ndarray,
                        live_outputs: np.ndarray, request_id: str) -> None:
        started_s = time.time()
        try:
            outputs = await self.versions[version].predict(batch)
        except Exception as err:
            kind = _error_kind(err)
            logger.info("serve-ab router: request %s: mirrored copy to version %s failed (%s: %s)",
                        request_id, version, kind, type(err).__name__)
            self._observe(version, started_s, kind, None, mirrored=True)
            self._pair(live_version, version, live_outputs, None, started_s, kind)
            return
        self._observe(version, started_s, None, outputs, mirrored=True)
        self._pair(live_version, version, live_outputs, outputs, started_s, None)

    def _pair(self, live_version: str, version: str, live_outputs: np.ndarray,
              outputs: np.ndarray | None, started_s: float, error_kind: str | None) -> None:
        """The live and the mirrored answer to the same request, for the paired comparison."""
        if len(self._pending_pairs) >= MAX_PENDING_OBSERVATIONS:
            return
        now_s = time.time()
        live_class, live_score = _first_row(live_outputs)
        shadow_class, _ = _first_row(outputs)
        score_diff = None
        if live_class is not None and outputs is not None and outputs.shape == live_outputs.shape:
            # How much more (or less) the shadow believes the class live answered.
            score_diff = float(outputs[0, live_class]) - live_score
        self._pending_pairs.append((now_s, live_version, version, live_class, shadow_class,
                                    score_diff, (now_s - started_s) * 1000.0, error_kind))

    # -- Python callers (DeploymentHandle) ----------------------------------------------------

    async def predict(self, inputs: Any, key: str | None = None, version: str | None = None) -> dict[str, Any]:
        """Serve a batch for a Python caller.

        ``inputs`` is a numpy array or nested lists of shape ``[n, ...]``; ``key`` is the
        assignment key (e.g. the user id); ``version`` pins a version. Returns
        ``{"outputs": np.ndarray, "version": str, "request_id": str}``.
        """
        started_s = time.perf_counter()
        served_by, outputs = await self._serve(inputs, key, version)
        # The handle path's access line (Ray's own is off: it cannot name the version).
        logger.info("predict version=%s %.1fms", served_by, (time.perf_counter() - started_s) * 1000.0)
        return {"outputs": outputs, "version": served_by, "request_id": _request_id()}

    async def experiment(self) -> dict[str, Any]:
        """The experiment as this replica runs it: versions, weights and bucket ranges."""
        return {
            "model": self.cfg.model,
            "placement": self.cfg.placement.value,
            "versions": [
                {"name": v.name, "backend": v.backend.value, "path": v.path} for v in self.cfg.versions
            ],
            "weights_pct": self.assigner.table.weights_pct(),
            "bucket_ranges": {k: list(r) for k, r in self.assigner.table.ranges().items()},
            "assignment": self.cfg.assignment.model_dump(),
        }

    async def interface(self) -> dict[str, Any]:
        input_spec, output_spec = await self._get_interface()
        return {"input_shape": list(input_spec.shape), "input": input_spec.to_v2(),
                "output": output_spec.to_v2()}

    # -- HTTP: rollout control and feedback ----------------------------------------------------

    @api.get("/rollout/status", summary="Rollout phase, step, weights and gates (open)")
    async def http_rollout_status(self, history: bool = False) -> JSONResponse:
        return JSONResponse(json_safe(await self.controller.status.remote(history)))

    @api.post("/rollout/{action}", summary="promote, pause, resume, abort, rollback or weights (token)")
    async def http_rollout_action(self, action: str, request: Request) -> JSONResponse:
        self._authorize(request)
        if action not in CONTROL_ACTIONS:
            raise ApiError(404, f"unknown action {action!r}; valid: {list(CONTROL_ACTIONS)}")
        body = {}
        if request.headers.get("content-length", "0") != "0":
            body = await read_json(request, self.cfg.http.max_body_bytes)
            if not isinstance(body, dict):
                raise ApiError(400, "request body must be a JSON object")
        if action == "weights" and not isinstance(body.get("weights"), dict):
            raise ApiError(400, 'set weights with a body like {"weights": {"v1": 80, "v2": 20}}')
        try:
            return JSONResponse(json_safe(await self.controller.act.remote(action, body)))
        except (RolloutError, ValueError) as err:
            cause = getattr(err, "cause", err)  # Ray wraps the controller's own exception
            raise ApiError(409 if isinstance(err, RolloutError) else 400, str(cause)) from None

    def _authorize(self, request: Request) -> None:
        if self.cfg.control.allow_unauthenticated:
            return
        if self._token is None:
            raise ApiError(401, f"control actions are disabled: no token is configured; set "
                                f"{self.cfg.control.token_env} in the app's environment and send "
                                "it as 'Authorization: Bearer <token>'")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken does not reveal how much of the token matched.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), self._token.encode()):
            raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer <token>)")

    @api.post("/feedback", openapi_extra=json_body(FeedbackRequest),
              summary="Report a business outcome for a served request")
    async def http_feedback(self, request: Request) -> JSONResponse:
        feedback = parse_body(FeedbackRequest, await read_json(request, self.cfg.http.max_body_bytes))
        version = await self.controller.feedback.remote(
            feedback.request_id, feedback.name, feedback.value, feedback.converted)
        if version is None:
            logger.info("serve-ab router: feedback %r for request %s waits for its report",
                        feedback.name, feedback.request_id)
        # version is None while the request's own report is still on its way to the controller.
        return JSONResponse({"request_id": feedback.request_id, "version": version}, status_code=202)

    # -- HTTP: plain JSON -------------------------------------------------------------------

    @api.post("/predict", openapi_extra=json_body(PredictRequest), summary="Predict, routed by the experiment")
    async def http_predict(self, request: Request) -> JSONResponse:
        body = await read_json(request, self.cfg.http.max_body_bytes)
        parsed = parse_body(PredictRequest, body)
        key = self._key_from(body, request.headers)
        version, outputs = await self._serve(parsed.inputs, key, request.headers.get(self.cfg.pin.header))
        return JSONResponse(
            {
                "model": self.cfg.model,
                "version": version,
                "request_id": _request_id(),
                "outputs": outputs.tolist(),
            },
            headers={VERSION_HEADER: version},
        )

    @api.get("/experiment", summary="The experiment this app runs: versions and weights")
    async def http_experiment(self) -> dict[str, Any]:
        return await self.experiment()

    @api.get("/experiment/report", summary="The A/B report: per-variant figures, tests, verdicts (open)")
    async def http_report(self) -> JSONResponse:
        return JSONResponse(json_safe(await self._from_controller("report")))

    @api.get("/experiment/stats", summary="The raw cumulative figures behind the report (open)")
    async def http_stats(self) -> JSONResponse:
        return JSONResponse(json_safe(await self._from_controller("stats")))

    @api.get("/metrics", summary="Prometheus metrics of this app, from its one controller (open)")
    async def http_metrics(self) -> Response:
        body, content_type = await self._from_controller("metrics")
        return Response(content=body, media_type=content_type)

    async def _from_controller(self, method: str) -> Any:
        return await getattr(self.controller, method).remote()

    # -- HTTP: Open Inference Protocol (KServe V2) --------------------------------------------

    @api.get("/v2", summary="Server metadata")
    async def v2_server(self) -> dict[str, Any]:
        return {"name": "serve-ab", "version": "0.1.0", "extensions": []}

    @api.get("/v2/health/live", summary="Liveness")
    async def v2_live(self) -> dict[str, Any]:
        return {"live": True}

    @api.get("/v2/health/ready", summary="Readiness: every version loaded and answering")
    async def v2_ready(self) -> JSONResponse:
        ready = await self._is_ready()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @api.get("/v2/models/{model}", summary="Model metadata")
    async def v2_model(self, model: str) -> dict[str, Any]:
        self._check_model(model)
        input_spec, output_spec = await self._get_interface()
        return {
            "name": self.cfg.model,
            "versions": list(self.versions),
            "platform": "serve-ab",
            "inputs": [input_spec.to_v2()],
            "outputs": [output_spec.to_v2()],
        }

    @api.get("/v2/models/{model}/ready", summary="Model readiness")
    async def v2_model_ready(self, model: str) -> JSONResponse:
        self._check_model(model)
        ready = await self._is_ready()
        return JSONResponse({"name": model, "ready": ready}, status_code=200 if ready else 503)

    @api.get("/v2/models/{model}/versions/{version}", summary="Metadata of one version")
    async def v2_version(self, model: str, version: str) -> dict[str, Any]:
        self._check_model(model)
        self._check_version(version)
        input_spec, output_spec = await self._get_interface()
        backend = self.cfg.version(version).backend.value
        return {
            "name": self.cfg.model,
            "versions": [version],
            "platform": {"onnx": "onnxruntime_onnx", "torch": "pytorch_torchexport"}[backend],
            "inputs": [input_spec.to_v2()],
            "outputs": [output_spec.to_v2()],
        }

    @api.post("/v2/models/{model}/infer", openapi_extra=json_body(V2InferRequest),
              summary="Inference, routed by the experiment")
    async def v2_infer(self, model: str, request: Request) -> JSONResponse:
        return await self._v2_infer(model, None, request)

    @api.post("/v2/models/{model}/versions/{version}/infer", openapi_extra=json_body(V2InferRequest),
              summary="Inference on one version (pinned)")
    async def v2_infer_version(self, model: str, version: str, request: Request) -> JSONResponse:
        return await self._v2_infer(model, version, request)

    async def _v2_infer(self, model: str, pinned: str | None, request: Request) -> JSONResponse:
        self._check_model(model)
        if pinned is not None:
            self._check_version(pinned)
        body = await read_json(request, self.cfg.http.max_body_bytes)
        parsed = parse_body(V2InferRequest, body)
        version, unit = self._choose_version(
            self._key_from(parsed.parameters, request.headers),
            pinned or request.headers.get(self.cfg.pin.header),
        )
        input_spec, output_spec = await self._get_interface()
        batch = decode_v2_inputs(parsed, input_spec, output_spec,
                                 allow_non_finite=self.cfg.http.allow_non_finite)
        version, outputs = await self._predict(version, batch, may_fall_back=pinned is None and
                                               request.headers.get(self.cfg.pin.header) is None,
                                               unit=unit)
        response = encode_v2_response(self.cfg.model, version, parsed.id or _request_id(),
                                      outputs, output_spec)
        return JSONResponse(response, headers={VERSION_HEADER: version})

    def _check_model(self, model: str) -> None:
        if model != self.cfg.model:
            raise ApiError(404, f"unknown model {model!r}; this app serves {self.cfg.model!r}")

    def _check_version(self, version: str) -> None:
        if version not in self.versions:
            raise ApiError(404, f"unknown version {version!r} of model {self.cfg.model!r}; "
                                f"versions: {list(self.versions)}")

    async def _is_ready(self) -> bool:
        try:
            await self._get_interface()
        except Exception:  # a version still starting, or failing to load
            return False
        return True

