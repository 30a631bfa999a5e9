"""The router: the app's ingress deployment, a thin Ray Serve shell over :class:`RouterCore`.

Everything a request goes through (the traffic decision, fallback, mirroring, observations)
is in :mod:`serve_ab.serving.core`, which has no Ray import; the HTTP routes are in
:mod:`serve_ab.serving.http`. Here: building the core from Ray handles, the background
loops, and the methods Python callers reach through a DeploymentHandle.

A replica starts without the controller (:mod:`serve_ab.serving.core.startup`: weights and
feedback key from the state store) and without every version (a version that fails to load
or does not answer is served around: :meth:`RouterCore.failed_versions`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import grpc
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
)
from ray.serve.handle import DeploymentHandle

from serve_ab.api.access_log import RAY_SERVE_LOGGER, VersionsAnswered, name_versions_on_access_lines
from serve_ab.backends.base import specs_of
from serve_ab.config.experiment import ExperimentConfig, parse_experiment
from serve_ab.config.serve_file import ROUTER_DEPLOYMENT
from serve_ab.errors import ControllerUnavailable, InvalidInput, ServeAbError
from serve_ab.serving.core.auth import ControlAuth, load_tokens
from serve_ab.serving.core.decision import key_text
from serve_ab.serving.core.messages import (
    Action, Actor, IntervalReport, NotCounted, Refused, ReportAnswer, RoutingSnapshot)
from serve_ab.serving.core.router import RouterCore
from serve_ab.serving.core.startup import check_claim, prepare, settle_feedback_key, start
from serve_ab.serving.core.versions import Version
from serve_ab.serving.core.watchdog import Call, WatchdogSettings, WatchedVersion
from serve_ab.api.grpc import grpc_predict_v2_pb2 as pb
from serve_ab.api.grpc.servicer import Undecodable
from serve_ab.serving.grpc_v2 import GrpcInference
from serve_ab.serving.app_claim import app_running, this_app
from serve_ab.serving.http import Served, app, describe_experiment, feedback_from_handle, use_core
from serve_ab.serving.runtime import load_versions
from serve_ab.store.state import open_store

SHUTDOWN_DRAIN_S = 2.0  # how long a stopping router waits for mirrored copies in flight

# The replica failed, not the request: it died (RayActorError covers ActorDiedError and
# ActorUnavailableError), its worker or node went away, or Serve had no replica to take it.
# Over Ray Serve's gRPC between replicas (isolation.transport: grpc) Ray turns only
# UNAVAILABLE into ActorUnavailableError; any other status of the call itself (INTERNAL,
# UNKNOWN, RESOURCE_EXHAUSTED past gRPC's 2 GiB, UNAUTHENTICATED) is the transport failing,
# never the model, whose own exceptions arrive as themselves.
_UNAVAILABLE = (grpc.aio.AioRpcError, RayActorError, WorkerCrashedError, NodeDiedError, ObjectLostError, RaySystemError,
                DeploymentUnavailableError, ReplicaUnavailableError, BackPressureError)


def replica_unavailable(err: BaseException) -> bool:
    """True when ``err`` says the version could not serve, not that the request was bad.

    Ray re-raises a replica's own exception as a class deriving from both RayTaskError and
    that exception, so a model's InputError is never taken for an outage.
    """
    return isinstance(err, _UNAVAILABLE) and not isinstance(err, ServeAbError)


class _HandleCalls:
    """An isolated version's deployment, as the watchdog calls it."""

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle
        self.name = f"deployment {handle.deployment_name!r}"

    def predict(self, batch: Any) -> Call:
        return self.handle.predict.remote(batch)

    def describe(self) -> Call:
        return self.handle.describe.remote()


# How long a read of the controller waits for its answer: under the CLI's 10-s request
# timeout, so that `serve-ab status` shows the 503's reason; a report may be refreshing.
READ_TIMEOUT_S = 8.0
REPORT_TIMEOUT_S = 30.0
# A client's feedback waits as long as a read: a controller that is down would otherwise hold
# the client's call for the whole outage. It may still count after the 503 (the call is not
# taken back): the client's retry then gets the 409 of a report already counted.
FEEDBACK_TIMEOUT_S = 8.0
# A router's interval report: given up on, it is kept and sent again at the next interval
# (serving/core/ledger.py; one that arrives after all is not merged twice), and the try
# counts in serve_ab_router_intervals_delayed_total, so an outage shows there.
RECORD_TIMEOUT_S = 8.0
_FEEDBACK_RETRY = ("send it again later: if this one counted after all, the retry is a 409 "
                   "(already reported)")


async def _within(call: Any, timeout_s: float, retry: str = "retry later") -> Any:
    """``call``'s answer, or ControllerUnavailable after ``timeout_s``."""
    try:
        return await asyncio.wait_for(call, timeout_s)
    except asyncio.TimeoutError:
        raise ControllerUnavailable(f"the controller did not answer within {timeout_s:g}s (starting, "
                                    f"restarting, or waiting for its store: its log says which); {retry}") from None


class ControllerClient:
    """The controller's deployment as a :class:`~serve_ab.serving.core.messages.ControllerApi`.

    A controller that is restarting answers with Ray's errors; they become
    :class:`~serve_ab.errors.ControllerUnavailable` (503, "retry"), never a 500.
    """

    #: A controller that answered a call this recently is up: the calls waiting on it then are
    #: traffic (a burst of feedback, a controller busy for a moment), not an outage, and none is
    #: refused for their number; the live outage above saw no answer for minutes.
    ANSWERED_RECENTLY_S = 1.0

    def __init__(self, handle: DeploymentHandle, max_waiting: int | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.handle = handle
        self.clock = clock
        self._answered_at_s: float | None = None  # by clock: the controller's last answer to any call
        # A client's call to the controller (feedback, a read, an action) holds one of the
        # router replica's max_ongoing_requests while it waits, up to 8 s (30 s a report, an
        # action for ever) when the controller is away. A live check (2026-12-07): with the
        # controller's node lost and no node to restart it on, 7.5 feedback calls a second
        # held 60 of a router's 64, and predictions queued behind them in Ray's proxy (25
        # req/s fell to 4, waiting up to 49 s). Past max_waiting such calls are answered 503
        # at once, so that predictions keep the rest; the router's own calls (reports, the
        # long poll, feedback sent again) hold no request's place and are not counted.
        self.max_waiting = max_waiting
        self.waiting = 0

    async def _ask_for_client(self, make_call: Callable[[], Any], timeout_s: float | None,
                              retry: str = "retry later") -> Any:
        """:meth:`_ask` for a call made on a client's behalf, refused at once, without calling
        the controller, while ``max_waiting`` such calls wait on it already."""
        if self.max_waiting is not None and self.waiting >= self.max_waiting and not self._answering():
            raise ControllerUnavailable(
                f"the controller is not answering: {self.waiting} calls of this router replica wait on "
                f"it already (at most {self.max_waiting}, half of router.max_ongoing_requests, so that "
                "predictions keep the rest); this call was not sent to it: retry in a few seconds")
        self.waiting += 1
        try:
            return await self._ask(make_call(), timeout_s, retry)
        finally:
            self.waiting -= 1

    def _answering(self) -> bool:
        answered = self._answered_at_s
        return answered is not None and self.clock() - answered < self.ANSWERED_RECENTLY_S

    async def _ask(self, call: Any, timeout_s: float | None = None, retry: str = "retry later") -> Any:
        if timeout_s is not None:
            call = _within(call, timeout_s, retry)
        try:
            answer = await call
        except _UNAVAILABLE as err:
            if isinstance(err, ServeAbError):  # the controller's own answer, e.g. ActionRefused
                if not isinstance(err, ControllerUnavailable):
                    self._answered_at_s = self.clock()
                raise
            raise ControllerUnavailable("the controller cannot be reached now (starting, restarting, or waiting "
                                        "for its store: its log says which); retry in a few seconds") from err
        self._answered_at_s = self.clock()
        if isinstance(answer, Refused):  # a routine refusal, answered rather than raised there
            raise answer.error
        return answer

    async def record(self, report: IntervalReport) -> ReportAnswer | None:
        return await self._ask(self.handle.record.remote(report), RECORD_TIMEOUT_S)  # None: an older controller

    async def wait_for_update(self, known_epoch: int, timeout_s: float | None = None) -> RoutingSnapshot:
        if timeout_s is None:
            return await self._ask(self.handle.wait_for_update.remote(known_epoch))
        return await self._ask(self.handle.wait_for_update.remote(known_epoch, timeout_s))

    async def feedback(self, request_id: str, name: str, value: float | None, converted: bool | None,
                       version: str | None = None, unit: int | None = None, split: int = -1,
                       resent: bool = False, answered_after_s: float | None = None,
                       not_counted_ok: bool = False) -> str | None | NotCounted:
        # Each by name, and only when set: resent only to a controller that answered a report
        # (ReportAnswer), answered_after_s only to one that said it checks it; a controller of
        # the previous release takes neither in the eighth place nor has answered_after_s.
        if resent:  # the router's own (ledger.py), in no client's call
            return await self._ask(self.handle.feedback.remote(request_id, name, value, converted, version, unit,
                                                               split, resent=True), FEEDBACK_TIMEOUT_S, _FEEDBACK_RETRY)
        extra: dict[str, Any] = {} if answered_after_s is None else {"answered_after_s": answered_after_s}
        if not_counted_ok:  # only to a controller that said it takes it (ReportAnswer.answers_not_counted)
            extra["not_counted_ok"] = True
        return await self._ask_for_client(
            lambda: self.handle.feedback.remote(request_id, name, value, converted, version, unit, split, **extra),
            FEEDBACK_TIMEOUT_S, _FEEDBACK_RETRY)

    async def feedback_key(self) -> bytes:
        return await self._ask(self.handle.feedback_key.remote())

    async def act(self, action: Action, body: Any, actor: Actor) -> dict[str, Any]:
        return await self._ask_for_client(lambda: self.handle.act.remote(action, body, actor), None)

    # Reads give up after READ_TIMEOUT_S (REPORT_TIMEOUT_S): a controller that is not up yet (waiting for its
    # store) would otherwise hold them for as long as it waits. Actions wait: given up on, they
    # could still be applied after the operator was told they were not (feedback, given up on,
    # says so, and its retry is told apart: FEEDBACK_TIMEOUT_S).
    async def status(self, history: bool = False) -> dict[str, Any]:
        return await self._ask_for_client(lambda: self.handle.status.remote(history), READ_TIMEOUT_S)

    async def stats(self) -> dict[str, Any]:
        return await self._ask_for_client(lambda: self.handle.stats.remote(), READ_TIMEOUT_S)

    async def report(self) -> Any:
        return await self._ask_for_client(lambda: self.handle.report.remote(), REPORT_TIMEOUT_S)

    async def metrics(self) -> tuple[bytes, str]:
        return await self._ask_for_client(lambda: self.handle.metrics.remote(), READ_TIMEOUT_S)


def _request_id() -> str:
    # Ray Serve gives every request an id (and honours a client's x-request-id header);
    # using it ties our answers to Serve's own access logs.
    return serve.context._get_serve_request_context().request_id or uuid.uuid4().hex


def grpc_code_set() -> str | None:
    """The status code serve-ab's gRPC code set on this request's Ray context
    (``INVALID_ARGUMENT``), or None (no gRPC call, or no code set). Read where Ray writes the
    access line, still in the request's context, which holds Ray's ``RayServegRPCContext``
    (:mod:`serve_ab.api.access_log`)."""
    context = serve.context._get_serve_request_context().grpc_context
    code = context.code() if context is not None else None
    return None if code is None else code.name


@serve.deployment(name=ROUTER_DEPLOYMENT)
@serve.ingress(app)
class Router:
    async def __init__(
        self,
        experiment: dict[str, Any],
        pools: dict[str, DeploymentHandle] | None,
        controller: DeploymentHandle,
    ):
        cfg: ExperimentConfig = parse_experiment(experiment)
        # Before loading models: an app that another running app's state would be mixed with
        # does not serve at all (serve_ab.store.claim).
        check_claim(cfg, lambda: open_store(cfg.controller), this_app(), time.time(), app_running)
        versions: Mapping[str, Version]
        if pools:
            settings = {version.name: WatchdogSettings.of(cfg, version) for version in cfg.versions}
            by_reference = cfg.isolation.transport == "actor"  # else Ray Serve's gRPC between replicas
            versions = {name: WatchedVersion(name, _HandleCalls(handle.options(_by_reference=by_reference)),
                                             replica_unavailable, settings[name])
                        for name, handle in pools.items()}
        else:
            versions = load_versions(cfg.versions)  # one that fails is held failed, the others serve
        client = ControllerClient(controller, max_waiting=max(1, cfg.router.max_ongoing_requests // 2))
        # Ray Serve's access line names the version that answered (serve_ab.api.access_log).
        on_answer = on_failed = None
        if cfg.router.access_log:
            answered = VersionsAnswered()
            name_versions_on_access_lines(logging.getLogger(RAY_SERVE_LOGGER), answered, grpc_code_set)
            on_answer, on_failed = answered.note, answered.failed
        self.core = RouterCore(cfg, versions, client, request_id=_request_id, on_answer=on_answer,
                               on_failed_after_answer=on_failed)
        self.core.replica = serve.get_replica_context().replica_tag
        # The saved rollout's weights (after a restart they are not the config's) and the
        # feedback key, from the store: never awaiting the controller, which may be down.
        start(self.core, prepare(cfg, lambda: open_store(cfg.controller), self.core.clock))
        served = Served(self.core, ControlAuth(cfg.control, load_tokens(cfg.control)))
        use_core(served)
        self.grpc = GrpcInference(served)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.core.follow()),  # catches up with the controller when it answers
            loop.create_task(self.core.flush()),
            loop.create_task(self.core.watch_versions()),
            loop.create_task(settle_feedback_key(self.core, client, lambda: open_store(cfg.controller),
                                                 self.core.sleep)),
        ]

    async def __del__(self) -> None:
        """A stopping replica (scale-down, redeploy, Ctrl-C) hands over what it served last."""
        for task in getattr(self, "_tasks", ()):
            task.cancel()
        core = getattr(self, "core", None)
        if core is None:
            return
        try:  # copies in flight first: their pairs go in the same last message
            await asyncio.wait_for(core.mirrors.drain(), SHUTDOWN_DRAIN_S)
        except asyncio.TimeoutError:
            pass
        core.mirrors.close()
        await core.flush_once(last=True)

    # -- Python callers (DeploymentHandle) ----------------------------------------------------

    async def predict(self, inputs: Any, key: str | int | None = None,
                      version: str | None = None) -> dict[str, Any]:
        """Serve a batch for a Python caller.

        ``inputs`` is a numpy array or nested lists of shape ``[n, ...]``; ``key`` is the
        assignment key (e.g. the user id); ``version`` pins a version (callers inside the
        cluster may pin whatever ``pin.enabled`` says: it governs the public HTTP header).
        Pinned requests never enter gates or A/B figures. Returns
        ``{"outputs": np.ndarray, "version": str, "request_id": str, "feedback_token": str | None}``
        (None where the experiment takes no feedback). Raises the errors of
        :mod:`serve_ab.errors`, e.g. ``VersionNotServed`` for a version this app does not serve.
        """
        key = None if key is None else key_text(key, "key")
        if version is not None and not isinstance(version, str):
            raise InvalidInput(f"version must be a version's name, e.g. 'v1'; got {type(version).__name__} "
                               f"{version!r}")
        choice, served_by, outputs = await self.core.serve_choice(inputs, key, version)
        request_id = _request_id()
        return {"outputs": outputs, "version": served_by, "request_id": request_id,
                "feedback_token": self.core.feedback_token_for(request_id, choice)}

    async def feedback(self, request_id: str, name: str, *, feedback_token: str | None = None,
                       converted: bool | None = None, value: float | None = None) -> dict[str, Any]:
        """Report a business outcome of an answer ``predict`` gave, as ``POST /feedback`` does:
        its ``request_id`` and ``feedback_token``, the metric's ``name``, and ``converted``
        (a conversion metric) or ``value`` (a mean). Returns ``{"request_id", "version"}``
        (``version`` None while the request's report is on its way; ``"counted": False`` for a
        pinned answer, and with a ``reason`` for an answer given before the run started, by a
        config since changed). Raises the errors of :mod:`serve_ab.errors`: ``InvalidInput`` for an
        unknown metric or the wrong kind of outcome, ``Unauthorized`` without the token,
        ``Forbidden`` for a token of another answer, ``Conflict`` when already reported."""
        return await feedback_from_handle(self.core, request_id, name, feedback_token=feedback_token,
                                          converted=converted, value=value)

    async def experiment(self) -> dict[str, Any]:
        """The experiment as this replica runs it: versions, weights and bucket ranges."""
        return describe_experiment(self.core)

    async def interface(self) -> dict[str, Any]:
        """The model's tensors, as V2 metadata: ``inputs`` and ``outputs``, and for a model of
        one input and output also ``input_shape``, ``input`` and ``output`` (the older form)."""
        input_spec, output_spec = await self.core.interface()
        inputs, outputs = specs_of(input_spec), specs_of(output_spec)
        out: dict[str, Any] = {"inputs": [s.to_v2() for s in inputs], "outputs": [s.to_v2() for s in outputs]}
        if len(inputs) == 1 and len(outputs) == 1:
            out.update(input_shape=list(input_spec.shape), input=input_spec.to_v2(), output=output_spec.to_v2())
        return out

    # -- gRPC: the Open Inference Protocol through Serve's gRPC proxy (grpc_options) -----------
    # Serve calls the ingress method named after the RPC; grpc_context is Ray's
    # RayServegRPCContext. The work is in serve_ab.serving.grpc_v2.

    async def ServerLive(self, request: pb.ServerLiveRequest | Undecodable,
                         grpc_context: Any) -> pb.ServerLiveResponse:
        return await self.grpc.server_live(request, grpc_context)

    async def ServerReady(self, request: pb.ServerReadyRequest | Undecodable,
                          grpc_context: Any) -> pb.ServerReadyResponse:
        return await self.grpc.server_ready(request, grpc_context)

    async def ModelReady(self, request: pb.ModelReadyRequest | Undecodable,
                         grpc_context: Any) -> pb.ModelReadyResponse:
        return await self.grpc.model_ready(request, grpc_context)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest | Undecodable,
                             grpc_context: Any) -> pb.ServerMetadataResponse:
        return await self.grpc.server_metadata(request, grpc_context)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest | Undecodable,
                            grpc_context: Any) -> pb.ModelMetadataResponse:
        return await self.grpc.model_metadata(request, grpc_context)

    async def ModelInfer(self, request: pb.ModelInferRequest | Undecodable,
                         grpc_context: Any) -> pb.ModelInferResponse:
        return await self.grpc.model_infer(request, grpc_context)
