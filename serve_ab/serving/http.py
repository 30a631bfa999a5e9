"""The HTTP routes of the router: one table, each route a few lines over :class:`RouterCore`.

No Ray here. The router deployment serves this FastAPI app (``@serve.ingress``) and hands
its core to :func:`use_core`; unit tests hand a core over fakes and call the same routes
through FastAPI's TestClient. Errors are :mod:`serve_ab.errors` exceptions, turned into
statuses in one place (:mod:`serve_ab.api.errors`).
"""

# No "from __future__ import annotations": FastAPI reads these route signatures at runtime
# through Ray Serve's ingress wrapper, which cannot resolve string annotations.

from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import BaseModel

from serve_ab.api.fast_routes import FastRoute, FastRoutes
from serve_ab.api.http_util import (
    add_openapi_schemas,
    decode_json,
    decode_json_unique_keys,
    install_error_handlers,
    json_body,
    json_response,
    json_safe,
    once_each,
    quoted_key,
    read_body,
    read_json_unique_keys,
    refuse_repeated,
)
from serve_ab.api.schemas import (
    ActionRequest,
    FeedbackRequest,
    PredictRequest,
    V2InferRequest,
    decode_v2_inputs,
    encode_v2_response,
    parse_body,
    predict_inputs,
    requested_outputs,
)
from serve_ab.api.v2_binary import (
    CONTENT_TYPE,
    EXTENSION,
    HEADER_LENGTH,
    V2Body,
    binary_inputs,
    encode_v2_body,
    read_v2_body,
    tensor_to_bytes,
    wants_binary_output,
)
from serve_ab.api.v2_classification import EXTENSION as CLASSIFICATION
from serve_ab.api.v2_classification import class_counts, classified
from serve_ab.backends.base import OutputSpecs, outputs_to_json, specs_of
from serve_ab.errors import InvalidInput, NotFound, PinningDisabled, Unprocessable, UnknownAction, VersionUnavailable
from serve_ab.serving.core.auth import ControlAuth, Role
from serve_ab.serving.core.ledger import FeedbackCall
from serve_ab.serving.core.messages import Action, NotCounted
from serve_ab.serving.core.router import RouterCore

VERSION_HEADER = "x-model-version"
FEEDBACK_TOKEN_HEADER = "x-feedback-token"
SERVER_VERSION = "0.1.0"
PLATFORMS = {"onnx": "onnxruntime_onnx", "torch": "pytorch_torchexport", "python": "python"}


api = FastAPI(
    title="serve-ab",
    version=SERVER_VERSION,
    description="Several versions of one model behind a traffic-splitting router. "
    "`POST /predict` takes plain JSON; `/v2/...` is the Open Inference Protocol (KServe V2). "
    "Every answer names the version that served it (body and `x-model-version` header).",
)
install_error_handlers(api)
add_openapi_schemas(api, [PredictRequest, V2InferRequest, FeedbackRequest, ActionRequest])


class Served:
    """What the routes need of one router replica: its core and who may steer it."""

    def __init__(self, core: RouterCore, auth: ControlAuth):
        self.core = core
        self.auth = auth
        # The keys /predict reads from its body, each of which it refuses to see twice.
        assignment = core.cfg.assignment
        self.key_field = assignment.field if assignment.key == "json" else None
        self.predict_keys = once_each(("inputs", *((self.key_field,) if self.key_field is not None else ())))
        self.quoted_key_field = None if self.key_field is None else quoted_key(self.key_field)


# One router replica is one process, so one module-level slot holds its core. Ray Serve
# copies the FastAPI app into the replica, but the routes reach this slot through the
# module, so the copy and the original see the same value.
_served: Served | None = None


def use_core(served: Served | None) -> None:
    global _served
    _served = served


def served() -> Served:
    if _served is None:
        raise RuntimeError("no router core yet: the replica is still starting")
    return _served


async def current() -> Served:
    """:func:`served` as a FastAPI dependency. ``async``: FastAPI runs a plain ``def``
    dependency in its thread pool, a thread hop per request."""
    return served()


def _address(request: Request) -> str | None:
    return request.client.host if request.client else None


def _pinned(s: Served, request: Request, version: str | None = None) -> str | None:
    """The version a request pins (a V2 version path, or the pin header), once allowed:
    pinning must be on (pin.enabled) and the caller hold the QA or operator token."""
    pinned = version or request.headers.get(s.core.cfg.pin.header)
    if pinned is None:
        return None
    if not s.core.cfg.pin.enabled:
        raise PinningDisabled(f"pinning a version ({pinned!r}) is turned off for this experiment "
                              "(pin.enabled: false)")
    s.auth.check(request.headers.get("authorization"), _address(request), Role.QA)
    return pinned


async def reader(request: Request, s: Served = Depends(current)) -> Served:
    """The replica, for a route that reads figures: open unless control.protect_reads."""
    if s.core.cfg.control.protect_reads:
        s.auth.check(request.headers.get("authorization"), _address(request), Role.VIEWER)
    return s


def _json(value: Any, headers: dict[str, str] | None = None, status_code: int = 200) -> JSONResponse:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return JSONResponse(json_safe(value), headers=headers, status_code=status_code)


# -- plain JSON ------------------------------------------------------------------------------

# OpenAPI links say how one answer feeds the next call: the answer's request id and token are
# what POST /feedback takes back (schemathesis' stateful runs follow them).
_FEEDBACK_LINK = {"200": {"description": "the answer, its version, request id and feedback token", "links": {
    "ReportFeedback": {
        "operationId": "feedback",
        "requestBody": {"request_id": "$response.body#/request_id",
                        "feedback_token": "$response.body#/feedback_token",
                        "name": "correct", "converted": True},
    },
}}}


@api.post("/predict", openapi_extra={**json_body(PredictRequest), "responses": _FEEDBACK_LINK},
          operation_id="predict", summary="Predict, routed by the experiment")
async def http_predict(request: Request, s: Served = Depends(current)) -> Response:
    core = s.core
    raw = await read_body(request, core.cfg.http.max_body_bytes, core.cfg.http.body_timeout_s)
    body = decode_json(raw)
    inputs = predict_inputs(body)
    # A model's inputs by name: each name is read once too.
    refuse_repeated(raw, s.predict_keys if not isinstance(inputs, dict) else {**s.predict_keys, **once_each(inputs)})
    key = core.decision.key_from(body, request.headers)
    pinned = _pinned(s, request)
    # A body with no true or false anywhere (a byte search) cannot hold booleans among its
    # numbers: only one that does is looked through. UTF-16 and -32 JSON (NULs among its
    # first bytes, json.loads reads it) spell true otherwise, so it is always looked through.
    choice, version, outputs = await core.serve_choice(
        inputs, key, pinned, may_hold_booleans=b"true" in raw or b"false" in raw or b"\x00" in raw[:4])
    request_id = core.request_id()
    token = core.feedback_token_for(request_id, choice)
    headers = {VERSION_HEADER: version}
    if token is not None:
        headers[FEEDBACK_TOKEN_HEADER] = token
    return json_response({"model": core.cfg.model, "version": version, "request_id": request_id,
                          "feedback_token": token, "outputs": outputs_json(outputs)}, headers=headers)


def outputs_json(outputs: Any) -> Any:
    """Outputs as orjson takes them: a numeric array as it is (orjson writes numpy arrays
    itself), widened to float64 so the digits are those ``tolist()`` gives; else JSON values."""
    if isinstance(outputs, np.ndarray) and outputs.dtype.kind in "fiub":
        return outputs.astype(np.float64, copy=False) if outputs.dtype.kind == "f" else outputs
    return outputs_to_json(outputs)


@api.get("/experiment", summary="The experiment this app runs: versions and weights")
async def http_experiment(s: Served = Depends(reader)) -> dict[str, Any]:
    return describe_experiment(s.core)


def describe_experiment(core: RouterCore) -> dict[str, Any]:
    """The experiment as this replica runs it: versions, weights and bucket ranges."""
    table = core.decision.assigner.table
    return {
        "model": core.cfg.model,
        "placement": core.cfg.placement.value,
        # The file's name only: an open answer does not show the server's directories.
        "versions": [{"name": v.name, "backend": v.backend.value,
                      "file": Path(v.path).name if v.path is not None else None}
                     for v in core.cfg.versions],
        "weights_pct": table.weights_pct(),
        "bucket_ranges": {k: list(r) for k, r in table.ranges().items()},
        "assignment": core.cfg.assignment.model_dump(),
    }


# -- rollout control, feedback, figures ------------------------------------------------------

@api.get("/rollout/status", summary="Rollout phase, step, weights and gates (open)")
async def http_rollout_status(history: bool = False, s: Served = Depends(reader)) -> JSONResponse:
    return _json(await s.core.controller.status(history))


@api.post("/rollout/{action}", openapi_extra=json_body(ActionRequest),
          summary="promote, pause, resume, abort, rollback or weights (token)")
async def http_rollout_action(action: str, request: Request, s: Served = Depends(current)) -> JSONResponse:
    if action == "status":  # /rollout/status is read with GET
        raise StarletteHTTPException(405, "Method Not Allowed (read the status with GET)", headers={"Allow": "GET"})
    try:
        act = Action(action)
    except ValueError:  # the actions are public (the README lists them): no token needed to be told
        raise UnknownAction(f"unknown action {action!r}; valid: {[a.value for a in Action]}") from None
    actor = s.auth.check(request.headers.get("authorization"), _address(request), Role.OPERATOR)
    # Read whatever came, with or without content-length (a chunked body is a body too), and
    # 422 for one that parses but does not fit, as FastAPI answers (e.g. {"full": "false"}).
    # A key sent twice is a 400: the last from_step winning got a promote past its guard.
    # An empty body (or JSON whitespace alone) is "no body"; a JSON null is refused as [] is.
    body_bytes = await read_body(request, s.core.cfg.http.max_body_bytes, s.core.cfg.http.body_timeout_s)
    body = ActionRequest() if not body_bytes.strip(b" \t\r\n") else \
        parse_body(ActionRequest, decode_json_unique_keys(body_bytes), error=Unprocessable)
    return _json(await s.core.controller.act(act, body, actor))


@api.post("/feedback", openapi_extra=json_body(FeedbackRequest), operation_id="feedback",
          summary="Report a business outcome for a served request")
async def http_feedback(request: Request, s: Served = Depends(current)) -> JSONResponse:
    # A key sent twice is a 400, not the last one counted ("converted": false, "converted": true).
    http = s.core.cfg.http
    feedback = parse_body(FeedbackRequest, await read_json_unique_keys(request, http.max_body_bytes,
                                                                       timeout_s=http.body_timeout_s))
    return JSONResponse(await take_feedback(s.core, feedback), status_code=202)


async def feedback_from_handle(core: RouterCore, request_id: Any, name: Any, *, feedback_token: Any = None,
                               converted: Any = None, value: Any = None) -> dict[str, Any]:
    """A DeploymentHandle caller's feedback (``Router.feedback``): the body of ``POST /feedback``
    as arguments, checked by the same rules, so a handle caller needs no HTTP to report what
    became of an answer. Raises the errors of :mod:`serve_ab.errors` (InvalidInput for a bad
    argument, Unauthorized without the answer's token, Forbidden for a token of another answer)."""
    given = {"request_id": request_id, "name": name, "feedback_token": feedback_token,
             "converted": converted, "value": value}
    # numpy scalars as the Python values they hold: `label == predicted` on numpy values is an
    # np.bool_, which the body's strict types would refuse as "not a boolean". A 0-d array too
    # (np.asarray of one value): pydantic reads one through float(), so a 0-d array of True
    # would count as the value 1.0 where a bool is refused.
    given = {k: v.item() if isinstance(v, np.generic) or (isinstance(v, np.ndarray) and v.ndim == 0) else v
             for k, v in given.items()}
    # Only what the caller gave: "converted: None" is not a yes/no, but the argument left out.
    feedback = parse_body(FeedbackRequest, {k: v for k, v in given.items() if v is not None or k == "request_id"})
    return await take_feedback(core, feedback)


async def take_feedback(core: RouterCore, feedback: FeedbackRequest) -> dict[str, Any]:
    """Check ``feedback`` against the experiment and its answer's token and pass it on; the
    answer to give (HTTP sends it with 202): the request id and the version it joined, None
    while the request's report is on its way, or ``counted: False`` for a pinned answer and
    (with a ``reason``) for an answer given before the run started."""
    kind = core.feedback_kinds.get(feedback.name)
    if kind is None:
        named = "name is missing" if "name" not in feedback.model_fields_set else \
            f"unknown feedback name {feedback.name!r}"
        raise InvalidInput(f"{named}; this experiment takes {sorted(core.feedback_kinds)} "
                           "(analysis.metrics, or a rollout's feedback gates)")
    if kind == "conversion" and feedback.converted is None:
        raise InvalidInput(f"feedback {feedback.name!r} is a conversion (a yes/no outcome): send "
                           "converted: true or false, not value")
    if kind == "mean" and feedback.value is None:
        raise InvalidInput(f"feedback {feedback.name!r} is a mean (a numeric outcome such as revenue): "
                           "send value: <number>, not converted")
    proven = core.verify_feedback(feedback.feedback_token, feedback.request_id)
    if proven is not None and not proven.assigned:  # a pinned answer: QA's traffic moves nothing
        return {"request_id": feedback.request_id, "version": proven.version, "counted": False}
    # A proven answer is counted once per answer (its id), whatever its request id.
    if proven is not None:
        call = FeedbackCall(proven.answer_id, feedback.name, feedback.value, feedback.converted, proven.version,
                            proven.bucket, proven.epoch, proven.answered_after_s)
    else:
        call = FeedbackCall(feedback.request_id, feedback.name, feedback.value, feedback.converted)
    version = await core.send_feedback(call)
    if isinstance(version, NotCounted):  # an answer of the run before a changed config: as a pinned one's
        return {"request_id": feedback.request_id, "version": call.version, "counted": False,
                "reason": version.reason}
    # version is None while the request's own report is still on its way to the controller.
    return {"request_id": feedback.request_id, "version": version}


@api.get("/experiment/report", summary="The A/B report: per-variant figures, tests, verdicts (open)")
async def http_report(s: Served = Depends(reader)) -> JSONResponse:
    return _json(await s.core.controller.report())


@api.get("/experiment/stats", summary="The raw cumulative figures behind the report (open)")
async def http_stats(s: Served = Depends(reader)) -> JSONResponse:
    return _json(await s.core.controller.stats())


@api.get("/metrics", summary="Prometheus metrics of this app, from its one controller (open)")
async def http_metrics(s: Served = Depends(reader)) -> Response:
    if not s.core.cfg.http.metrics_on_app:
        raise NotFound("this app serves its metrics on a separate metrics app (http.metrics_on_app: false)")
    body, content_type = await s.core.controller.metrics()
    return Response(content=body, media_type=content_type)


# -- Open Inference Protocol (KServe V2) -----------------------------------------------------

class V2Endpoints:
    """The V2 data plane over one core, as KServe's ``V2Endpoints`` over its ``DataPlane``."""

    def __init__(self, core: RouterCore):
        self.core = core

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "serve-ab", "version": SERVER_VERSION, "extensions": [EXTENSION, CLASSIFICATION]}

    def check(self, model: str, version: str | None) -> None:
        """404 for a model or version this app does not serve."""
        self.core.check_model(model)
        if version is not None:
            self.core.check_version(version)

    async def model_metadata(self, model: str, version: str | None = None) -> dict[str, Any]:
        core = self.core
        self.check(model, version)
        failed = core.failed_versions()
        if version in failed:  # its file was never read: no metadata of its own to give
            raise VersionUnavailable(f"version {version!r} of model {core.cfg.model!r} cannot serve, so it has no "
                                     f"metadata: {failed[version]}")
        input_spec, output_spec = await core.interface()
        platform = PLATFORMS[core.cfg.version(version).backend.value] if version is not None else "serve-ab"
        return {"name": core.cfg.model, "versions": [version] if version is not None else list(core.versions),
                "platform": platform, "inputs": [s.to_v2() for s in specs_of(input_spec)],
                "outputs": [s.to_v2() for s in specs_of(output_spec)]}

    async def infer(self, model: str, pinned: str | None, body: V2Body, headers: Any, *,
                    bytes_as_binary: bool = False) -> tuple[str, dict[str, Any], bytes | None]:
        """Serve a V2 request, pinned to ``pinned`` when the caller was allowed to pin; returns
        the version that served, the answer's JSON and its binary tensor data (None: all JSON).
        ``bytes_as_binary``: BYTES outputs go as binary data whatever the request asks (gRPC
        carries bytes as they are; JSON can only carry them decoded as UTF-8 text)."""
        core = self.core
        self.check(model, pinned)
        parsed = parse_body(V2InferRequest, body.header)
        if parsed.model_name is not None and parsed.model_name != model:
            # The body and the path name two models: serving the path's would answer for the other.
            raise InvalidInput(f"the body's model_name {parsed.model_name[:200]!r} is not the model in the path, "
                               f"{model!r}; send the path's model name, or none")
        arrays = binary_inputs(parsed, body.tensors)
        choice = core.choose(core.decision.key_from(parsed.parameters, headers), pinned)
        input_spec, output_spec = await core.interface()
        batch = decode_v2_inputs(parsed, input_spec, output_spec,
                                 allow_non_finite=core.cfg.http.allow_non_finite, binary=arrays)
        # Which outputs go as binary data: its flags are checked before the model runs, so a
        # request refused for them (binary_data_output: "yes") is served and counted nowhere.
        several = isinstance(output_spec, OutputSpecs)
        returned = requested_outputs(parsed, output_spec)
        counts = class_counts(parsed.outputs, {spec.name: spec for spec in returned}) if parsed.outputs else None
        binary_names = {spec.name for spec in returned if wants_binary_output(parsed, spec.name)}
        served_by, outputs = await core.predict(choice, batch)
        if counts:  # Triton's classification extension: those outputs become their top classes
            outputs, returned = classified(outputs, returned, counts)
        if bytes_as_binary:
            binary_names |= {spec.name for spec in returned if spec.datatype == "BYTES"}
        # The feedback token is tied to Serve's request id (what the router recorded), so it
        # travels with that id in the response parameters, whatever id the client chose.
        request_id = core.request_id()
        parameters = {"request_id": request_id}
        token = core.feedback_token_for(request_id, choice)
        if token is not None:
            parameters["feedback_token"] = token
        if several:  # several outputs: each its own binary choice
            chunks = {spec.name: tensor_to_bytes(outputs[spec.name], spec.datatype)
                      for spec in returned if spec.name in binary_names}
            response = encode_v2_response(core.cfg.model, served_by, parsed.id or request_id, outputs,
                                          output_spec, parameters, returned=returned,
                                          binary_data_sizes={name: len(c) for name, c in chunks.items()})
            return served_by, response, b"".join(chunks.values()) if chunks else None
        [spec] = returned
        tensors = tensor_to_bytes(outputs, spec.datatype) if binary_names else None
        response = encode_v2_response(core.cfg.model, served_by, parsed.id or request_id, outputs, output_spec,
                                      parameters, binary_data_size=None if tensors is None else len(tensors),
                                      returned=returned)
        return served_by, response, tensors


async def _v2(s: Served = Depends(current)) -> V2Endpoints:
    return V2Endpoints(s.core)


@api.get("/v2", summary="Server metadata")
async def v2_server(v2: V2Endpoints = Depends(_v2)) -> dict[str, Any]:
    return v2.server_metadata()


# HEAD too: some load balancers' and uptime checkers' probes send it (Starlette answers
# HEAD with the GET's status and headers, no body).
@api.head("/v2/health/live", include_in_schema=False)  # one operation in the OpenAPI document
@api.get("/v2/health/live", summary="Liveness")
async def v2_live() -> dict[str, Any]:
    return {"live": True}


# Ready means the app can answer: one version serves (a failed candidate is served around, and
# its own /versions/{version}/ready says why), so a probe does not pull a serving router.
@api.head("/v2/health/ready", include_in_schema=False)
@api.get("/v2/health/ready", summary="Readiness: a version loaded and answering")
async def v2_ready(s: Served = Depends(current)) -> JSONResponse:
    ready = await s.core.is_ready()
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@api.get("/v2/models/{model}", summary="Model metadata")
async def v2_model(model: str, v2: V2Endpoints = Depends(_v2)) -> dict[str, Any]:
    return await v2.model_metadata(model)


@api.get("/v2/models/{model}/ready", summary="Model readiness")
async def v2_model_ready(model: str, s: Served = Depends(current)) -> JSONResponse:
    s.core.check_model(model)
    ready = await s.core.is_ready()
    return JSONResponse({"name": model, "ready": ready}, status_code=200 if ready else 503)


@api.get("/v2/models/{model}/versions/{version}/ready", summary="Readiness of one version")
async def v2_version_ready(model: str, version: str, s: Served = Depends(current)) -> JSONResponse:
    s.core.check_model(model)
    ready, why = await s.core.version_ready(version)
    body: dict[str, Any] = {"name": model, "version": version, "ready": ready}
    if why is not None:  # e.g. "failed to load: ValueError: cannot load model.onnx ..." (no paths)
        body["error"] = why
    return JSONResponse(body, status_code=200 if ready else 503)


@api.get("/v2/models/{model}/versions/{version}", summary="Metadata of one version")
async def v2_version(model: str, version: str, v2: V2Endpoints = Depends(_v2)) -> dict[str, Any]:
    return await v2.model_metadata(model, version)


# Either body is JSON, or (binary tensor data extension) JSON then raw tensor bytes, the JSON's
# length in the Inference-Header-Content-Length header: see serve_ab.api.v2_binary.
_V2_BINARY = ("Also takes and answers the binary tensor data extension (tritonclient's default): "
              "the JSON's length in `Inference-Header-Content-Length`, raw tensor bytes after it.")


@api.post("/v2/models/{model}/infer", openapi_extra=json_body(V2InferRequest),
          summary="Inference, routed by the experiment", description=_V2_BINARY)
async def v2_infer(model: str, request: Request, s: Served = Depends(current)) -> Response:
    return await _v2_infer(s, model, None, request)


@api.post("/v2/models/{model}/versions/{version}/infer", openapi_extra=json_body(V2InferRequest),
          summary="Inference on one version (pinned)", description=_V2_BINARY)
async def v2_infer_version(model: str, version: str, request: Request, s: Served = Depends(current)) -> Response:
    return await _v2_infer(s, model, version, request)


# The keys a V2 infer request is read by: the request's, a tensor's and an output's.
_V2_KEYS = {name: quoted_key(name) for name in ("inputs", "outputs", "id", "model_name", "parameters", "name",
                                               "shape", "datatype", "data")}


def v2_key_counts(header: Any, key_field: str | None, quoted_field: bytes | None = None) -> dict[bytes, int]:
    """For :func:`refuse_repeated`: how often each key a V2 infer request is read by appears
    in its JSON without a repeat, i.e. how many of its objects (the request, each input tensor,
    each output asked for) hold it. Decoded, a repeat is one key: the bytes then hold it once
    more than this. ``key_field``: the assignment field, counted in those objects' parameters
    (``quoted_field``: as :func:`quoted_key` spells it, if known)."""
    if not isinstance(header, dict):
        return {}  # not an object: the request's validation says what is wrong with it
    objects = [header]
    for part in ("inputs", "outputs"):
        if isinstance(header.get(part), list):
            objects += [item for item in header[part] if isinstance(item, dict)]
    counts = {quoted: sum(name in obj for obj in objects) for name, quoted in _V2_KEYS.items()}
    if key_field is not None:
        parameters = [obj.get("parameters") for obj in objects]
        counts[quoted_field or quoted_key(key_field)] = sum(isinstance(p, dict) and key_field in p for p in parameters)
    return counts


async def _v2_infer(s: Served, model: str, version: str | None, request: Request) -> Response:
    v2 = V2Endpoints(s.core)
    v2.check(model, version)  # a wrong path is a 404 whatever the body
    pinned = _pinned(s, request, version)
    raw = await read_body(request, s.core.cfg.http.max_body_bytes, s.core.cfg.http.body_timeout_s)
    body = read_v2_body(raw, request.headers.get(HEADER_LENGTH))
    refuse_repeated(body.json, v2_key_counts(body.header, s.key_field, s.quoted_key_field))
    served_by, response, tensors = await v2.infer(model, pinned, body, request.headers)
    headers = {VERSION_HEADER: served_by}
    if "feedback_token" in response["parameters"]:
        headers[FEEDBACK_TOKEN_HEADER] = response["parameters"]["feedback_token"]
    if tensors is None:
        return json_response(response, headers=headers)
    content, header_length = encode_v2_body(response, tensors)
    headers[HEADER_LENGTH] = str(header_length)
    return Response(content, media_type=CONTENT_TYPE, headers=headers)


# -- the app the router serves ---------------------------------------------------------------

async def _fast_predict(request: Request) -> Response:
    return await http_predict(request, served())


async def _fast_v2_infer(request: Request, model: str) -> Response:
    return await _v2_infer(served(), model, None, request)


async def _fast_v2_infer_version(request: Request, model: str, version: str) -> Response:
    return await _v2_infer(served(), model, version, request)


# The inference routes skip FastAPI's middlewares, routing and dependencies (serve_ab.api.fast_routes);
# FastAPI serves the rest and documents all.
app = FastRoutes(api, [
    FastRoute("POST", "/predict", _fast_predict),
    FastRoute("POST", "/v2/models/{model}/infer", _fast_v2_infer),
    FastRoute("POST", "/v2/models/{model}/versions/{version}/infer", _fast_v2_infer_version),
])
