"""Request bodies of the HTTP API, and the Open Inference Protocol (KServe V2) codec.

Pure: no Ray, no FastAPI. The router validates bodies with these models itself (after its
size check) so every problem comes back as a 400 that names the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from serve_ab.backends.base import V2_DATATYPES, InputError, InputSpec, OutputSpec, check_batch
from serve_ab.config.experiment import format_validation_error
from serve_ab.errors import InvalidInput


class PredictRequest(BaseModel):
    """``POST /predict``: a batch of instances and, optionally, the assignment key."""

    model_config = ConfigDict(extra="allow")

    inputs: list[Any] = Field(
        ..., description="A batch of instances, e.g. [[0.0, 1.5, ...64 numbers]] for digits.",
        json_schema_extra={"example": [[0.0] * 64]},
    )


class FeedbackRequest(BaseModel):
    """``POST /feedback``: a business outcome for a request served earlier."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(..., min_length=1, max_length=128,
                            description="The request_id of the served answer.")
    feedback_token: str | None = Field(
        None, min_length=1, max_length=256,
        description="The feedback_token of the same answer (required unless feedback.require_token is false).")
    name: str = Field("conversion", min_length=1, max_length=64,
                      description="Metric name, one the experiment declares, e.g. correct or revenue.")
    value: float | None = Field(None, allow_inf_nan=False, description="A numeric outcome.")
    converted: bool | None = Field(None, description="A yes/no outcome.")

    @model_validator(mode="after")
    def _one_outcome(self) -> FeedbackRequest:
        if (self.value is None) == (self.converted is None):
            raise ValueError("give exactly one of value (a number) or converted (true/false)")
        return self


class V2Tensor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="Input name, as listed by GET /v2/models/{model}.")
    shape: list[int] = Field(..., description="Tensor shape, batch first, e.g. [1, 64].")
    datatype: str = Field(..., description="Open Inference Protocol datatype, e.g. FP32.")
    # Before data: data's check reads it.
    parameters: dict[str, Any] | None = Field(
        None, description='Per-tensor parameters: {"binary_data_size": N} when the values travel '
        "as raw bytes after the JSON (the binary tensor data extension).")
    data: list[Any] | None = Field(
        None, validate_default=True,
        description="Tensor contents, flat in row-major order or nested; absent for a binary input.")

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


class V2InferRequest(BaseModel):
    """``POST /v2/models/{model}/infer``; the assignment key may travel in ``parameters``."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, description="Echoed in the response.")
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
        raise error("; ".join(format_validation_error(err))) from None


# Defined by the protocol but taken by no model served here: a clear "this model takes FP32".
_V2_OTHER_DATATYPES = ("BYTES", "BF16")


def decode_v2_inputs(
    request: V2InferRequest, spec: InputSpec, output: OutputSpec, *, allow_non_finite: bool,
    binary: Mapping[int, np.ndarray] | None = None,
) -> np.ndarray:
    """The model's input batch from a V2 request, checked against the model's spec;
    ``binary``: the values of inputs sent as binary tensor data, by position in the request."""
    if len(request.inputs) != 1:
        names = [t.name for t in request.inputs]
        raise InputError(f"model takes exactly one input, '{spec.name}'; got {len(names)}: {names}")
    tensor = request.inputs[0]
    if tensor.name != spec.name:
        raise InputError(f"unknown input '{tensor.name}'; this model's input is '{spec.name}'")
    if tensor.datatype not in V2_DATATYPES and tensor.datatype not in _V2_OTHER_DATATYPES:
        raise InputError(
            f"input '{tensor.name}' has datatype '{tensor.datatype}', which the Open Inference "
            f"Protocol does not define; valid: {sorted([*V2_DATATYPES, *_V2_OTHER_DATATYPES])}"
        )
    if tensor.datatype != spec.datatype:
        raise InputError(
            f"input '{tensor.name}' has datatype {tensor.datatype}; this model takes {spec.datatype}"
        )
    if any(d < 0 for d in tensor.shape):
        raise InputError(f"input '{tensor.name}' has a negative dimension in shape {tensor.shape}")
    if binary is not None and 0 in binary:
        data = binary[0]  # already checked against shape and datatype, byte for byte
    elif tensor.data is None:
        raise InputError(f"input '{tensor.name}' has parameters.binary_data_size but no binary data came")
    else:
        try:
            data = np.asarray(tensor.data)
        except (ValueError, TypeError) as err:
            raise InputError(f"input '{tensor.name}' data is ragged or mixed: {err}") from None
    if data.dtype.kind not in "biuf":
        raise InputError(
            f"input '{tensor.name}' data must be numbers for {tensor.datatype}; got '{data.dtype}'"
        )
    expected_count = math.prod(tensor.shape)
    if data.size != expected_count:
        raise InputError(
            f"input '{tensor.name}' has {data.size} values but shape {tensor.shape} needs "
            f"{expected_count}"
        )
    if requested := request.outputs:
        unknown = [o.name for o in requested if o.name != output.name]
        if unknown:
            raise InputError(f"unknown output(s) {unknown}; this model's output is '{output.name}'")
    return check_batch(data.reshape(tensor.shape), spec, allow_non_finite=allow_non_finite)


def encode_v2_response(
    model: str, version: str, request_id: str, outputs: np.ndarray, output: OutputSpec,
    parameters: dict[str, Any] | None = None, binary_data_size: int | None = None,
) -> dict[str, Any]:
    """The V2 answer; ``binary_data_size``: the output travels as that many raw bytes after
    the JSON (the binary tensor data extension) instead of in ``data``."""
    tensor: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": list(outputs.shape)}
    if binary_data_size is None:
        tensor["data"] = outputs.ravel().tolist()
    else:
        tensor["parameters"] = {"binary_data_size": binary_data_size}
    return {
        "model_name": model,
        "model_version": version,
        "id": request_id,
        **({"parameters": parameters} if parameters else {}),
        "outputs": [tensor],
    }


class ActionRequest(BaseModel):
    """``POST /rollout/{action}``: the body of a control action (every field optional).

    Strict: ``{"full": "false"}`` is an error, not a promotion to 100%.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    full: bool = Field(False, description="promote: skip the remaining steps and go to 100%.")
    reason: str | None = Field(None, min_length=1, max_length=500,
                               description="abort: recorded in the rollout's history.")
    weights: dict[str, float] | None = Field(
        None, description='weights: percent per version, e.g. {"v1": 80, "v2": 20}.')
    from_step: int | None = Field(
        None, ge=0, description="A precondition: act only if the rollout is at this step index "
        "(a retried promote is then a no-op, not a second step).")
    revision: int | None = Field(
        None, ge=0, description="A precondition: act only if the rollout's state revision is this "
        "one (as `serve-ab status --json` shows it), like HTTP If-Match.")

    @model_validator(mode="before")
    @classmethod
    def _numbers_as_floats(cls, value: Any) -> Any:
        # Strict mode refuses an int where a float is declared; JSON has one number type.
        if isinstance(value, dict) and isinstance(value.get("weights"), dict):
            weights = value["weights"]
            value = {**value, "weights": {
                k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                for k, v in weights.items()}}
        return value
