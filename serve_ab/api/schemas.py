"""Request bodies of the HTTP API, and the Open Inference Protocol (KServe V2) codec.

Pure: no Ray, no FastAPI. The router validates bodies with these models itself (after its
size check) so every problem comes back as a 400 that names the field.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from serve_ab.backends.base import (
    INT64_MAX,
    INT64_MIN,
    MAX_DIMS,
    V2_DATATYPES,
    Batch,
    InputError,
    InputSpec,
    InputSpecs,
    OutputSpec,
    OutputSpecs,
    check_batch,
    check_no_booleans,
    check_shape,
    outputs_to_json,
    reshaped,
    specs_of,
)
from serve_ab.config.experiment import format_validation_error

# The largest feedback value taken (a revenue, a rating): squares stay far from overflow in
# the sums behind a mean's variance, and no business outcome comes near it.
MAX_FEEDBACK_VALUE = 1e15
from serve_ab.errors import InvalidInput


class PredictRequest(BaseModel):
    """``POST /predict``: a batch of instances and, optionally, the assignment key."""

    model_config = ConfigDict(extra="allow")

    inputs: list[Any] | dict[str, list[Any]] = Field(
        ..., description="A batch of instances, e.g. [[0.0, 1.5, ...64 numbers]] for digits; for a "
        'model with several inputs, a batch per input name, e.g. {"demographics": [[...4]], "blood": [[...6]]}.',
        json_schema_extra={"example": [[0.0] * 64]},
    )



# The longest request id feedback can name: routers refuse a longer x-request-id where the
# experiment takes feedback (serving/core/router.py), rather than sign a token nobody can redeem.
MAX_REQUEST_ID_CHARS = 1024


class FeedbackRequest(BaseModel):
    """``POST /feedback``: a business outcome for a request served earlier."""

    model_config = ConfigDict(extra="forbid")

    # Ray Serve takes a client's x-request-id as the request's id, as it comes, and the answer's
    # token is signed for it: room for any trace id in use (W3C's traceparent is 55), but not
    # for 64-KiB ids held 50,000 at a time while feedback waits for its request (rollout/feedback.py).
    request_id: str = Field(..., min_length=1, max_length=MAX_REQUEST_ID_CHARS,
                            description="The request_id of the served answer.")
    feedback_token: str | None = Field(
        None, min_length=1, max_length=256,
        description="The feedback_token of the same answer (required unless feedback.require_token is false).")
    name: str = Field("conversion", min_length=1, max_length=64,
                      description="Metric name, one the experiment declares, e.g. correct or revenue.")
    # Strict: "12" or true is not a number and 1 or "yes" not a yes/no; a client sending them
    # has a bug that a silent cast would hide in the figures.
    value: StrictFloat | None = Field(
        None, allow_inf_nan=False,
        description=f"A numeric outcome, within ±{MAX_FEEDBACK_VALUE:g}, for a metric of kind mean.")
    converted: StrictBool | None = Field(None, description="A yes/no outcome, for a metric of kind conversion.")

    @field_validator("value")
    @classmethod
    def _bounded(cls, value: float | None) -> float | None:
        if value is not None and abs(value) > MAX_FEEDBACK_VALUE:
            # Its square would overflow the sums of squares behind the metric's variance.
            raise ValueError(f"value must be within ±{MAX_FEEDBACK_VALUE:g}; got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_outcome(self) -> FeedbackRequest:
        if (self.value is None) == (self.converted is None):
            raise ValueError("give exactly one of value (a number) or converted (true/false)")
        return self


# Triton's shared-memory extension: a tensor's values in (an output written to) a region the
# client registered, named in the tensor's parameters. serve-ab does not serve it (GET /v2 does
# not list it), so such a tensor is refused: an output answered in the body instead would leave
# the client reading its region's old bytes as the answer, with a 200.
SHARED_MEMORY_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


def shared_memory_refusal(parameters: Any, tensor: str) -> str | None:
    """Why a tensor whose ``parameters`` name a shared-memory region is refused, or None when
    they name none; ``tensor`` says which, e.g. ``input 'input'``."""
    if not isinstance(parameters, Mapping):
        return None
    named = next((key for key in SHARED_MEMORY_PARAMETERS if key in parameters), None)
    if named is None:
        return None
    return (f"{tensor} has parameters.{named} ({_cut_repr(parameters[named])}): serve-ab does not serve "
            "Triton's shared-memory extension (GET /v2 lists the extensions it serves); send input "
            "values in the request and read outputs from the answer")


def _cut_repr(value: Any, max_chars: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= max_chars else text[:max_chars] + "..."


class V2Tensor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="Input name, as listed by GET /v2/models/{model}.")
    # Strict: true or "64" is not a dimension (the protocol's shape is int64s). Bounded in
    # pydantic's own code, before anything is worked out from it: past 64 dimensions (numpy's
    # limit), the product of 200,000 took seconds on the replica's loop, and of dimensions past
    # int64 had too many digits to write in a 400 (a 500). The length is read before the items.
    shape: list[Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX)]] = Field(
        ..., max_length=MAX_DIMS, description="Tensor shape, batch first, e.g. [1, 64].")
    datatype: str = Field(..., description="Open Inference Protocol datatype, e.g. FP32.")
    # Before data: data's check reads it.
    parameters: dict[str, Any] | None = Field(
        None, description='Per-tensor parameters: {"binary_data_size": N} when the values travel '
        "as raw bytes after the JSON (the binary tensor data extension).")
    data: list[Any] | None = Field(
        None, validate_default=True,
        description="Tensor contents, flat in row-major order or nested; absent for a binary input.")

    @model_validator(mode="before")
    @classmethod
    def _no_shared_memory(cls, value: Any) -> Any:
        # Before the fields: a tensor in shared memory has no data, and "data: field required"
        # would hide the reason.
        return _not_in_shared_memory(value, "input")

    @field_validator("data")
    @classmethod
    def _data_or_binary(cls, data: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
        if data is None and (info.data.get("parameters") or {}).get("binary_data_size") is None:
            raise PydanticCustomError("missing", "Field required")
        return data

    @model_validator(mode="after")
    def _one_source(self) -> V2Tensor:
        size = (self.parameters or {}).get("binary_data_size")
        if size is None:
            return self
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"parameters.binary_data_size must be a whole number of bytes, e.g. 256; "
                             f"got {size!r}")
        if self.data is not None:
            raise ValueError("give the values either in data or as binary_data_size raw bytes after "
                             "the JSON, not both")
        return self

    @property
    def binary_data_size(self) -> int | None:
        """Bytes of this tensor after the JSON header, or None for values in ``data``."""
        return (self.parameters or {}).get("binary_data_size")


class V2RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_shared_memory(cls, value: Any) -> Any:
        return _not_in_shared_memory(value, "output")


def _not_in_shared_memory(tensor: Any, role: str) -> Any:
    """A tensor's raw fields, as given, unless its parameters name a shared-memory region."""
    if isinstance(tensor, dict):
        name = tensor.get("name")
        named = f"'{name[:80]}'" if isinstance(name, str) else "(unnamed)"
        refusal = shared_memory_refusal(tensor.get("parameters"), f"{role} {named}")
        if refusal is not None:
            raise ValueError(refusal)
    return tensor


class V2InferRequest(BaseModel):
    """``POST /v2/models/{model}/infer``; the assignment key may travel in ``parameters``."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, description="Echoed in the response.")
    # Not in the protocol's $inference_request, but KServe's own Python client
    # (InferenceRESTClient, InferRequest.to_rest) puts it in every body, and KServe's server
    # reads past it: refused as an unknown key, no KServe client could call this server.
    model_name: str | None = Field(
        None, description="The model's name, as KServe's Python client sends it; when given, the model in the path."
    )
    parameters: dict[str, Any] | None = Field(
        None, description="Request parameters; the experiment's assignment field is read here."
    )
    inputs: list[V2Tensor] = Field(..., min_length=1, description="One tensor per model input.")
    outputs: list[V2RequestedOutput] | None = Field(None, description="Outputs to return.")


def parse_body(model: type[BaseModel], body: Any, error: type[InvalidInput] = InputError) -> Any:
    """Validate a decoded JSON body; raises ``error`` (a 400 by default) naming each bad field."""
    if not isinstance(body, dict):
        raise error(f"request body must be a JSON object; got {type(body).__name__}")
    try:
        return model.model_validate(body)
    except ValidationError as err:
        # A JSON body, not a config file: no hints of how YAML reads an unquoted value.
        raise error("; ".join(format_validation_error(err, model=model, yaml_hints=False))) from None


def predict_inputs(body: Any) -> Any:
    """``POST /predict``'s ``inputs``. A well-formed body (an object whose ``inputs`` is a list,
    or an object of lists) skips building a pydantic model per request; any other is validated
    by :class:`PredictRequest`, whose 400 names what is wrong."""
    if isinstance(body, dict):
        inputs = body.get("inputs")
        if isinstance(inputs, list) or (isinstance(inputs, dict) and all(
                isinstance(name, str) and isinstance(value, list) for name, value in inputs.items())):
            return inputs
    return parse_body(PredictRequest, body).inputs


# Defined by the protocol beside the numeric ones (V2_DATATYPES): BYTES (string inputs of python
# and ONNX models) and BF16 (no numpy dtype, so no model here takes it: a clear "this model
# takes FP32" rather than "not defined").
V2_OTHER_DATATYPES = ("BYTES", "BF16")


def decode_v2_inputs(
    request: V2InferRequest, spec: InputSpec | InputSpecs, output: OutputSpec | OutputSpecs, *,
    allow_non_finite: bool, binary: Mapping[int, np.ndarray] | None = None,
) -> Batch:
    """The model's input batch from a V2 request, checked against the model's spec;
    ``binary``: the values of inputs sent as binary tensor data, by position in the request.
    A one-input model gets one array; a multi-input model ``{input name: array}``, every
    input named once and holding as many instances."""
    if isinstance(spec, InputSpecs):
        return _decode_named(request, spec, output, allow_non_finite, binary)
    if len(request.inputs) != 1:
        names = [t.name for t in request.inputs]
        raise InputError(f"model takes exactly one input, '{spec.name}'; got {len(names)}: {names}")
    tensor = request.inputs[0]
    if tensor.name != spec.name:
        raise InputError(f"unknown input '{tensor.name}'; this model's input is '{spec.name}'")
    _check_requested(request, output)
    return _decode_tensor(tensor, 0, spec, allow_non_finite, binary)


def _decode_named(request: V2InferRequest, specs: InputSpecs, output: OutputSpec | OutputSpecs,
                  allow_non_finite: bool, binary: Mapping[int, np.ndarray] | None) -> dict[str, np.ndarray]:
    names = [t.name for t in request.inputs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"input(s) {twice} appear more than once; send each of {list(specs.names)} once")
    unknown = [n for n in names if n not in specs.names]
    if unknown:
        raise InputError(f"unknown input(s) {unknown}; this model's inputs are {list(specs.names)}")
    missing = [n for n in specs.names if n not in names]
    if missing:
        raise InputError(f"missing input(s) {missing}; this model takes {list(specs.names)}")
    _check_requested(request, output)
    batch = {t.name: _decode_tensor(t, i, specs.by_name(t.name), allow_non_finite, binary)
             for i, t in enumerate(request.inputs)}
    sizes = {name: len(array) for name, array in batch.items()}
    if len(set(sizes.values())) > 1:
        raise InputError(f"every input must hold as many instances (the first dimension); got {sizes}")
    return {name: batch[name] for name in specs.names}


def _check_requested(request: V2InferRequest, output: OutputSpec | OutputSpecs) -> None:
    if requested := request.outputs:
        names = [o.name for o in specs_of(output)]
        unknown = [o.name for o in requested if o.name not in names]
        if unknown:
            if len(names) == 1:
                raise InputError(f"unknown output(s) {unknown}; this model's output is '{names[0]}'")
            raise InputError(f"unknown output(s) {unknown}; this model's outputs are {names}")
        asked = [o.name for o in requested]
        twice = sorted({name for name in asked if asked.count(name) > 1})
        if twice:
            raise InputError(f"output(s) {twice} asked for more than once in outputs; name each once")


def requested_outputs(request: V2InferRequest, output: OutputSpec | OutputSpecs) -> list[OutputSpec]:
    """The outputs a V2 answer holds: those the request's ``outputs`` names, in its order, else
    every output of the model (the protocol's rule). The names were checked with the inputs."""
    specs = specs_of(output)
    if not request.outputs:
        return list(specs)
    by_name = {spec.name: spec for spec in specs}
    return [by_name[o.name] for o in request.outputs]


def _decode_tensor(tensor: V2Tensor, index: int, spec: InputSpec, allow_non_finite: bool,
                   binary: Mapping[int, np.ndarray] | None) -> np.ndarray:
    if tensor.datatype not in V2_DATATYPES and tensor.datatype not in V2_OTHER_DATATYPES:
        raise InputError(
            f"input '{tensor.name}' has datatype '{tensor.datatype}', which the Open Inference "
            f"Protocol does not define; valid: {sorted([*V2_DATATYPES, *V2_OTHER_DATATYPES])}"
        )
    if tensor.datatype != spec.datatype:
        raise InputError(
            f"input '{tensor.name}' has datatype {tensor.datatype}; this model takes {spec.datatype}"
        )
    if any(d < 0 for d in tensor.shape):
        raise InputError(f"input '{tensor.name}' has a negative dimension in shape {tensor.shape}")
    check_shape(tensor.shape, spec)
    if binary is not None and index in binary:
        data = binary[index]  # already checked against shape and datatype, byte for byte
    elif tensor.data is None:
        raise InputError(f"input '{tensor.name}' has parameters.binary_data_size but no binary data came")
    else:
        try:
            data = np.asarray(tensor.data, dtype=object if spec.datatype == "BYTES" else None)
        except (ValueError, TypeError) as err:
            raise InputError(f"input '{tensor.name}' data is ragged or mixed: {err}") from None
        check_no_booleans(tensor.data, data, spec)
    if spec.datatype == "BYTES":
        if data.dtype.kind not in "OUS":
            raise InputError(f"input '{tensor.name}' data must be strings for BYTES; got '{data.dtype}'")
    # An object array is left to check_batch: numpy reads integers past 64 bits (2**64 for UINT64)
    # as one, and check_batch says they are beyond the datatype's range, not "got 'object'".
    elif data.dtype.kind not in "biufO":
        raise InputError(
            f"input '{tensor.name}' data must be numbers for {tensor.datatype}; got '{data.dtype}'"
        )
    expected_count = math.prod(tensor.shape)
    if data.size != expected_count:
        raise InputError(
            f"input '{tensor.name}' has {data.size} values but shape {tensor.shape} needs "
            f"{expected_count}"
        )
    return check_batch(reshaped(data, tensor.name, tensor.shape), spec, allow_non_finite=allow_non_finite,
                       values=None if binary is not None and index in binary else tensor.data)


def encode_v2_response(
    model: str, version: str, request_id: str, outputs: Batch, output: OutputSpec | OutputSpecs,
    parameters: dict[str, Any] | None = None, binary_data_size: int | None = None, *,
    binary_data_sizes: Mapping[str, int] | None = None, returned: list[OutputSpec] | None = None,
) -> dict[str, Any]:
    """The V2 answer; ``binary_data_size``: the (one) output travels as that many raw bytes
    after the JSON (the binary tensor data extension) instead of in ``data``. A multi-output
    model's ``outputs`` is ``{name: array}``, answered as one tensor per output of
    ``returned`` (:func:`requested_outputs`; default: all, in the model's order);
    ``binary_data_sizes`` names the bytes of each output sent as binary."""
    tensors = []
    for spec in returned if returned is not None else specs_of(output):
        values = outputs[spec.name] if isinstance(outputs, dict) else outputs
        size = binary_data_size if not isinstance(output, OutputSpecs) else (binary_data_sizes or {}).get(spec.name)
        tensor: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(values.shape)}
        if size is None:
            tensor["data"] = outputs_to_json(values.ravel())
        else:
            tensor["parameters"] = {"binary_data_size": size}
        tensors.append(tensor)
    return {
        "model_name": model,
        "model_version": version,
        "id": request_id,
        **({"parameters": parameters} if parameters else {}),
        "outputs": tensors,
    }


# Unicode's explicit bidirectional embeddings, overrides and isolates (category Cf).
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class ActionRequest(BaseModel):
    """``POST /rollout/{action}``: the body of a control action (every field optional).

    Strict: ``{"full": "false"}`` is an error, not a promotion to 100%.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    full: bool = Field(False, description="promote: skip the remaining steps and go to 100%.")
    reason: str | None = Field(None, min_length=1, max_length=500,
                               description="abort: recorded in the rollout's history.")
    weights: dict[str, float] | None = Field(
        None, description='weights: percent per version, e.g. {"v1": 80, "v2": 20} (a canary only: '
        'a blue-green rollout refuses it with 409).')
    from_step: int | None = Field(
        None, ge=0, description="A precondition: act only if the rollout is at this step index "
        "(a retried promote is then a no-op, not a second step).")
    revision: int | None = Field(
        None, ge=0, description="A precondition: act only if the rollout's state revision is this "
        "one (as `serve-ab status --json` shows it), like HTTP If-Match.")

    @field_validator("reason")
    @classmethod
    def _one_line(cls, reason: str | None) -> str | None:
        # The reason goes into the history, logs and Slack: a line break there (CR, LF, NEL,
        # U+2028) could pass for another line (another operator's, a decision's), and a
        # bidirectional override could show its text in another order than it was sent.
        bad = next((i for i, c in enumerate(reason or "") if unicodedata.category(c) in ("Cc", "Zl", "Zp")
                    or c in _BIDI_CONTROLS), None)
        if bad is not None:
            raise ValueError(f"holds a control character ({reason[bad]!r}) at position {bad}; send one line of text")
        return reason

    @model_validator(mode="before")
    @classmethod
    def _numbers_as_floats(cls, value: Any) -> Any:
        # Strict mode refuses an int where a float is declared; JSON has one number type.
        if isinstance(value, dict) and isinstance(value.get("weights"), dict):
            weights = value["weights"]
            value = {**value, "weights": {
                k: _as_float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                for k, v in weights.items()}}
        return value


def _as_float(number: int) -> float:
    """A JSON integer as a float; one past a double's range (309 digits) is infinite, which the
    weights' check then names ("v1 is inf; a weight is a percentage in [0, 100]")."""
    try:
        return float(number)
    except OverflowError:
        return math.inf if number > 0 else -math.inf
