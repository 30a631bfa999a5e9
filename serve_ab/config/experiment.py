"""The one schema of an experiment.

The same models are what ``args:`` holds in a Ray Serve config file, what
:func:`serve_ab.build_app` takes, and what ``serve-ab validate`` checks. Unknown keys are
errors, and every error names the field path, the value received and what is valid.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import unicodedata
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from serve_ab.config._base import (
    VERSION_NAME_PATTERN,
    WEIGHT_RESOLUTION_PCT,
    check_env_name,
    check_header_name,
    check_ray_quantity,
    check_ray_resources,
)
from serve_ab.config._base import Strict as _Strict
from serve_ab.config.rollout import (
    FEEDBACK_METRICS,
    STEP_KINDS,
    GateMetric,
    NotificationReceiver,
    RolloutConfig,
    Strategy,
    shown_value,
)
from serve_ab.config.known_keys import unknown_key_hint
from serve_ab.store.url import parse_store_url, redact_url


class Backend(str, Enum):
    ONNX = "onnx"
    TORCH = "torch"
    #: A Python class (``class: my_pkg.model:Model``): scikit-learn, XGBoost, Hugging Face...
    PYTHON = "python"


class Task(str, Enum):
    """What a model's answer means, so that a shadow is compared with live the right way."""

    #: Class scores (probabilities or logits), one per class: agreement is the same argmax.
    CLASSIFICATION = "classification"
    #: A predicted value: agreement is |shadow - live| <= task_options.tolerance.
    REGRESSION = "regression"
    #: A vector: agreement is cosine(shadow, live) >= task_options.threshold.
    EMBEDDING = "embedding"


class Datatype(str, Enum):
    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"


class TensorConfig(_Strict):
    """One declared input or output tensor, e.g. {name: blood, datatype: FP32, shape: [-1, 6]}."""

    name: str = Field(..., min_length=1, max_length=128, description="Tensor name, as requests send it.")
    datatype: Datatype = Field(
        ..., strict=False, description="Open Inference Protocol datatype, e.g. FP32, INT64, BYTES.")
    shape: list[int] = Field(
        ..., min_length=1, description="Dimensions, batch first; -1 marks a free one and the batch "
        "dimension is always -1, e.g. [-1, 6].")

    @field_validator("shape")
    @classmethod
    def _batch_first(cls, shape: list[int]) -> list[int]:
        if shape[0] != -1:
            raise ValueError(f"the first dimension is the batch and must be -1, e.g. [-1, {shape[-1]}]")
        if any(d < -1 for d in shape):
            raise ValueError("a dimension is a size (0 or more) or -1 (free)")
        return shape


class TaskOptions(_Strict):
    output: str | None = Field(
        None, min_length=1, description="The output the task reads, for a model with several; "
        "unset: the first.")
    tolerance: float | None = Field(
        None, ge=0, allow_inf_nan=False,
        description="regression: a shadow agrees with live when |shadow - live| <= tolerance, "
        "in the output's own units (e.g. 5.0 for a disease score). Required for regression.")
    threshold: float | None = Field(
        None, ge=-1.0, le=1.0,
        description="embedding: a shadow agrees with live when their cosine similarity is at least "
        "this; unset: 0.99.")


class Placement(str, Enum):
    #: The router's own replicas hold every version in-process; switching is a pointer change.
    COLOCATED = "colocated"
    #: One Ray Serve deployment per version; the router calls its handle.
    ISOLATED = "isolated"


class BatchingConfig(_Strict):
    max_batch_size: int = Field(
        16, ge=1, le=4096,
        description="Most requests one model call takes, whatever their rows: 16 requests of 8 rows "
        "are one call of 128 rows (as Ray Serve's @serve.batch counts).",
    )
    batch_wait_timeout_s: float = Field(
        0.002, ge=0.0, le=1.0,
        description="How long the first request of a batch waits for others to join it.",
    )


# Ray Serve's replicas and handles report their load every 10 s (its AutoscalingConfig's
# metrics_interval_s, which serve-ab leaves at its default). A look-back window no longer
# than that may hold no report at all, which reads as no load: Ray warns, and says a later
# release will refuse it. Here it is refused now, naming the field.
RAY_METRICS_INTERVAL_S = 10.0


# Ray Serve sends a deployment's config to its controller as protobuf, where num_replicas is
# an int32 (and the autoscaling replica counts uint32): a larger count passes Ray's own
# schema and `serve run` then fails to deploy with "Value out of range", naming no field.
MAX_REPLICAS = 2**31 - 1


class AutoscalingConfig(_Strict):
    """The part of Ray Serve's autoscaling_config that serve-ab passes through."""

    min_replicas: int = Field(1, ge=0, le=MAX_REPLICAS, description="Fewest replicas, 0 allows scale to zero.")
    max_replicas: int = Field(1, ge=1, le=MAX_REPLICAS, description="Most replicas.")
    initial_replicas: int | None = Field(None, ge=0, le=MAX_REPLICAS, description="Replicas at deploy time.")
    # allow_inf_nan=False: Ray takes .inf (never scale), but the config is saved as JSON with
    # the run record, which has no infinity: every save of the record then failed.
    target_ongoing_requests: float = Field(
        2.0, gt=0, allow_inf_nan=False, description="Ongoing requests per replica the autoscaler aims for."
    )
    upscale_delay_s: float = Field(30.0, ge=0, allow_inf_nan=False, description="Sustained load before scaling up.")
    downscale_delay_s: float = Field(600.0, ge=0, allow_inf_nan=False,
                                     description="Sustained idle before scaling down.")
    downscale_to_zero_delay_s: float | None = Field(
        None, ge=0, allow_inf_nan=False,
        description="With min_replicas 0: sustained idle before the last replica goes (from 1 to 0); "
        "unset, downscale_delay_s. A blue-green rollout's blue gets at least keep_blue_s, so that it "
        "stays warm for a rollback.")
    look_back_period_s: float = Field(
        30.0, gt=RAY_METRICS_INTERVAL_S, allow_inf_nan=False,
        description="Window over which Ray averages the ongoing requests it scales on; more than "
        f"the {RAY_METRICS_INTERVAL_S:g} s at which replicas report them.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be greater than or equal to "
                f"min_replicas ({self.min_replicas})"
            )
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(
                f"initial_replicas ({initial}) must be between min_replicas ({self.min_replicas}) "
                f"and max_replicas ({self.max_replicas}), e.g. initial_replicas: {self.min_replicas}"
            )
        return self


class RayActorOptions(_Strict):
    num_cpus: float = Field(
        0.25, ge=0, description="CPUs reserved per replica; fractional so several fit a small node."
    )
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica; 0.5 lets two share one GPU.")
    memory: int | None = Field(None, ge=0, description="Bytes of memory reserved per replica.")
    resources: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="Custom Ray resources per replica, e.g. {accelerator_a: 1}; "
        "CPUs, GPUs and memory are num_cpus, num_gpus and memory."
    )

    @field_validator("resources")
    @classmethod
    def _custom_resources(cls, resources: dict[str, float]) -> dict[str, float]:
        return check_ray_resources(resources)

    @field_validator("num_cpus", "num_gpus")
    @classmethod
    def _ray_quantity(cls, quantity: float, info: ValidationInfo) -> float:
        return check_ray_quantity(info.field_name, quantity)

    @field_validator("num_gpus")
    @classmethod
    def _whole_gpus_over_one(cls, num_gpus: float) -> float:
        # Whatever the cluster: refused here, by `serve-ab validate`, not first at deploy time.
        if num_gpus > 1 and abs(num_gpus - round(num_gpus)) > 1e-6:
            raise ValueError("Ray places a fraction of one GPU or whole GPUs, so a value over 1 must be a "
                             "whole number, e.g. 0.5 or 2")  # the value is quoted after it
        return num_gpus

    def to_ray(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory is not None:
            options["memory"] = self.memory
        if self.resources:
            options["resources"] = dict(self.resources)
        return options


class DeploymentOptions(_Strict):
    """Ray Serve options of one deployment (the router, or a version in isolated placement)."""

    num_replicas: int | None = Field(
        None, ge=1, le=MAX_REPLICAS,
        description="Fixed replica count; leave unset when autoscaling_config is set."
    )
    autoscaling_config: AutoscalingConfig | None = Field(
        None, description="Ray Serve autoscaling; excludes num_replicas."
    )
    ray_actor_options: RayActorOptions = Field(
        default_factory=RayActorOptions, description="Resources each replica reserves."
    )
    max_ongoing_requests: int = Field(
        256, ge=1, le=100_000,
        description="Requests a replica takes at once; Ray's default of 5 throttles async code.",
    )

    @model_validator(mode="after")
    def _one_scaling_mode(self) -> DeploymentOptions:
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError(
                f"set either num_replicas ({self.num_replicas}) or autoscaling_config, not both"
            )
        return self

    def to_ray(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``."""
        options: dict[str, Any] = {
            "ray_actor_options": self.ray_actor_options.to_ray(),
            "max_ongoing_requests": self.max_ongoing_requests,
        }
        if self.autoscaling_config is not None:
            options["autoscaling_config"] = self.autoscaling_config.model_dump(exclude_none=True)
        else:
            options["num_replicas"] = self.num_replicas or 1
        return options


# Ray Serve reads these in each replica process at start; set through one deployment's
# runtime_env, they change that deployment's replicas only (ray/serve/_private/constants.py).
RAY_USER_CODE_THREAD_ENV = "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"
RAY_HANDLE_LOOP_ENV = "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"


# How often a replica (and each handle in it) moves Ray Serve's cached request metrics into
# Ray's recorder: every 100 ms by default, a timer that costs an idle process about 2 ms of CPU
# a second per timer (benchmarks/README.md, eighteenth round). Ray exports a process's metrics
# at most once a second (max(metrics_report_interval_ms, 1000), 10 s by default), so a faster
# move shows nowhere; serve-ab's deployments move them once a second. Read by each replica at start.
RAY_METRICS_EXPORT_ENV = "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS"
METRICS_EXPORT_INTERVAL_MS = 1000


def metrics_export_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The export interval serve-ab's replicas get: the one set in ``environ`` (the environment
    the app is built in) if any (0 moves every change at once), else once a second."""
    return {RAY_METRICS_EXPORT_ENV: environ.get(RAY_METRICS_EXPORT_ENV, str(METRICS_EXPORT_INTERVAL_MS))}


# The largest gRPC message a replica takes between deployments (4 MiB by default): read by
# the sending router's channel (answers) and the version replica's server (requests).
RAY_GRPC_MESSAGE_ENV = "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"
GRPC_MESSAGE_MAX_BYTES = 2**31 - 1  # gRPC's own limit: a message's length is a signed 32-bit int


def with_env_vars(options: dict[str, Any], env_vars: dict[str, str]) -> dict[str, Any]:
    """``options`` (``Deployment.options``) with these variables in its replicas' runtime_env
    (none given: ``options`` as they are)."""
    if not env_vars:
        return options
    runtime_env = options["ray_actor_options"].setdefault("runtime_env", {})
    runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **env_vars}
    return options


def thread_settings(options: dict[str, Any], separate_thread: bool) -> dict[str, Any]:
    """``options`` with its replicas' code on a thread of its own and their handles' calls
    on a loop of their own (Ray's defaults), or both on Ray's one replica loop."""
    flag = "1" if separate_thread else "0"
    return with_env_vars(options, {RAY_USER_CODE_THREAD_ENV: flag, RAY_HANDLE_LOOP_ENV: flag})


class VersionDeploymentOptions(DeploymentOptions):
    """Ray Serve options of one version's deployment (isolated placement)."""

    separate_thread: bool | None = Field(
        None,
        description="Run the model in a thread of its own beside Ray Serve's replica loop: Ray's "
        "default. Off, the replica's one event loop runs it and each request skips two thread "
        "hops. Unset: Ray's setting as the cluster has it. Leave it on when the model blocks for "
        "tens of milliseconds per call, so that the replica keeps answering Ray's queue-length "
        "probes and health checks meanwhile.",
    )

    def to_ray(self) -> dict[str, Any]:
        options = super().to_ray()
        if self.separate_thread is None:
            return options
        return thread_settings(options, self.separate_thread)


class VersionConfig(_Strict):
    name: str = Field(..., pattern=VERSION_NAME_PATTERN, description="Version name, e.g. v1.")
    path: str | None = Field(
        None, min_length=1,
        description="Model file; a relative path is resolved against the directory serve runs in. "
        "Required for onnx and torch; for python, optional and handed to the class's load(path).",
    )
    backend: Backend = Field(
        ..., strict=False,
        description="Model runtime: onnx (onnxruntime), torch (torch.export .pt2) or python "
        "(a class: see class).")
    class_: str | None = Field(
        None, alias="class",
        description="backend python: the model's class as module.path:ClassName, with methods "
        "load(path) and predict(inputs: dict[str, np.ndarray]); importable where serve runs.")
    inputs: list[TensorConfig] | None = Field(
        None, min_length=1,
        description="The model's inputs by name, datatype and shape. python: required unless the "
        "class declares input_spec. onnx/torch: read from the file, and checked against this if set.")
    outputs: list[TensorConfig] | None = Field(
        None, min_length=1,
        description="The model's outputs, as inputs; python: unset reads them from a first call.")
    task: Task = Field(
        Task.CLASSIFICATION, strict=False,
        description="What the answer is, for shadow comparisons and drift: classification (agreement "
        "of the argmax class), regression (a value; agreement within task_options.tolerance) or "
        "embedding (a vector; agreement when cosine >= task_options.threshold).")
    task_options: TaskOptions = Field(
        default_factory=TaskOptions, description="The task's settings: tolerance, threshold, output.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto uses CUDA when a GPU is visible to the replica, else the CPU."
    )
    intra_op_threads: int | None = Field(
        1, ge=1, le=256,
        description="Threads one model call may use; 1 keeps small models from fighting over cores.",
    )
    batching: BatchingConfig | None = Field(
        None, description="Dynamic batching of concurrent requests; unset sends each on its own."
    )
    deployment: VersionDeploymentOptions | None = Field(
        None, description="Ray Serve options of this version's deployment (isolated placement only).",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)

    @field_validator("class_")
    @classmethod
    def _importable(cls, value: str | None) -> str | None:
        if value is not None:
            from serve_ab.backends.python import import_model_class

            import_model_class(value)  # raises ValueError: the field's own error
        return value

    @model_validator(mode="after")
    def _backend_fields(self) -> VersionConfig:
        backend = self.backend.value
        if self.backend is Backend.PYTHON:
            if self.class_ is None:
                raise ValueError("backend python needs class: the model's class, e.g. class: my_pkg.model:Model")
        else:
            if self.path is None:
                raise ValueError(f"backend {backend} needs path: the model file, e.g. path: models/digits/v1/model.onnx")
            if self.class_ is not None:
                raise ValueError(f"class is for backend python; backend {backend} reads path ({self.path!r})")
        for role in ("inputs", "outputs"):
            names = [t.name for t in getattr(self, role) or []]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"{role} names {twice} more than once; each tensor needs its own name")
        options = self.task_options
        if self.task is Task.REGRESSION and options.tolerance is None:
            raise ValueError("task regression needs task_options.tolerance: how far apart (in the "
                             "output's units) a shadow and live value may be and still agree, e.g. "
                             "task_options: {tolerance: 5.0}")
        if self.task is not Task.REGRESSION and options.tolerance is not None:
            raise ValueError(f"task_options.tolerance is for task regression; this version's task is "
                             f"{self.task.value}")
        if self.task is not Task.EMBEDDING and options.threshold is not None:
            raise ValueError(f"task_options.threshold is for task embedding; this version's task is "
                             f"{self.task.value}")
        if options.output is not None and self.outputs is not None and \
                options.output not in [t.name for t in self.outputs]:
            raise ValueError(f"task_options.output is {options.output!r}, which is not among outputs "
                             f"{[t.name for t in self.outputs]}")
        return self

    def declared_specs(self) -> tuple[Any, Any]:
        """The declared inputs and outputs as backend specs (None where not declared)."""
        from serve_ab.backends.base import (
            DATATYPES,
            InputSpec,
            OutputSpec,
            input_signature,
            output_signature,
        )

        inputs = outputs = None
        if self.inputs is not None:
            inputs = input_signature([InputSpec(t.name, DATATYPES[t.datatype.value], tuple(t.shape))
                                      for t in self.inputs])
        if self.outputs is not None:
            outputs = output_signature([OutputSpec(t.name, DATATYPES[t.datatype.value], tuple(t.shape))
                                        for t in self.outputs])
        return inputs, outputs

    def predictor_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`serve_ab.backends.load_predictor` beyond path and backend."""
        inputs, outputs = self.declared_specs()
        return {"device": self.device, "intra_op_threads": self.intra_op_threads,
                "class_path": self.class_, "inputs": inputs, "outputs": outputs}


class AssignmentConfig(_Strict):
    key: Literal["json", "header", "none"] = Field(
        "json",
        description="Where the sticky key comes from: a JSON body field, a header, or none "
        "(every request split at random by weight).",
    )
    field: str = Field(
        "user_id", min_length=1,
        description="JSON field holding the key (key: json); in Open Inference Protocol "
        "requests it is read from the request's parameters.",
    )
    header: str = Field("x-user-id", min_length=1, description="Header holding the key (key: header).")
    salt: str = Field(
        "serve-ab", min_length=1,
        description="Mixed into the hash; a new salt reshuffles users between variants.",
    )

    @field_validator("header")
    @classmethod
    def _lower_header(cls, value: str) -> str:
        return check_header_name("header", value, "x-user-id").lower()


class PinConfig(_Strict):
    enabled: bool = Field(
        False, description="Allow a header (or a V2 version path) to pin a request to a version, "
        "for QA. Pinned requests need the QA or operator token, and never enter gates or A/B figures.",
    )
    header: str = Field("x-serve-ab-version", min_length=1, description="Header naming the version.")

    @field_validator("header")
    @classmethod
    def _lower_header(cls, value: str) -> str:
        return check_header_name("header", value, "x-serve-ab-version").lower()


class HttpConfig(_Strict):
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Larger request bodies are refused with 413."
    )
    allow_non_finite: bool = Field(
        False, description="Pass NaN and infinity to the model instead of refusing them with 400."
    )
    body_timeout_s: float = Field(
        30.0, gt=0.0, le=3600.0,
        description="How long a request's body may take to arrive, from when the router starts "
        "reading it; past it the request is refused with 408. Each body being read holds one of "
        "router.max_ongoing_requests: clients that sent their headers and then stalled held every "
        "one of them, for as long as they kept the connection open, and the app answered nothing.",
    )
    metrics_on_app: bool = Field(
        True, description="Serve GET /metrics under this app's route prefix. false: only a separate "
        "metrics app serves it (import_path serve_ab.serving.app:build_metrics_app, args {app: <this "
        "app's name>}), on a route prefix of its own that the network can keep private.",
    )


class IsolationConfig(_Strict):
    """How long the router waits on a version in its own deployment (placement: isolated).

    A version that does not answer in time is served around, never waited on: the stable's
    requests never wait for a candidate that is still starting or cannot start."""

    describe_timeout_s: float = Field(
        60.0, gt=0.0, le=3600.0,
        description="How long a version has to tell the router its input and output; one that "
        "does not (still starting, or its replicas cannot be placed) is reported failed, its "
        "requests are served by the stable version, and it is asked again every recheck_s.",
    )
    call_timeout_s: float = Field(
        60.0, gt=0.0, le=3600.0,
        description="How long one request may wait on a version; past it the call is cancelled "
        "and the request is served by the stable version (a pinned one gets a 503).",
    )
    recheck_s: float = Field(
        10.0, gt=0.0, le=3600.0,
        description="How often a version reported failed because it did not answer (or answered "
        "with an error) is asked again; it serves again once it answers with the experiment's interface.",
    )
    transport: Literal["actor", "grpc"] = Field(
        "grpc",
        description="How the router's calls reach a version's replicas: grpc (Ray Serve's "
        "inter-deployment gRPC, a handle with _by_reference=False, as RAY_SERVE_THROUGHPUT_OPTIMIZED "
        "sets it; Ray's 4 MiB message limit raised to gRPC's 2 GiB on the router and the versions; "
        "needs any TCP port open between their nodes) or actor (Ray actor calls, Ray Serve's default; "
        "large arrays travel through Ray's object store).",
    )


class FeedbackConfig(_Strict):
    """How clients report outcomes (``POST /feedback``) for answers they received."""

    require_token: bool = Field(
        True, description="Every answer carries a signed feedback_token (request, version, expiry) "
        "and POST /feedback needs it (where the experiment names feedback: analysis.metrics or a "
        "feedback gate; naming none, it takes no feedback and its answers carry no token). false "
        "accepts feedback by request id alone: only for clients on a trusted network.",
    )
    token_ttl_s: float = Field(
        3600.0, gt=0.0, le=7 * 86400.0, description="How long an answer's feedback token is valid."
    )
    key_env: str = Field(
        "SERVE_AB_FEEDBACK_KEY", min_length=1,
        description="Environment variable holding the key that signs feedback tokens; unset, the "
        "controller makes one and keeps it in its state store, and every router asks it for it.",
    )

    @field_validator("key_env")
    @classmethod
    def _key_env(cls, name: str) -> str:
        return check_env_name("key_env", name, "SERVE_AB_FEEDBACK_KEY")


class ControlConfig(_Strict):
    token_env: str = Field(
        "SERVE_AB_CONTROL_TOKEN", min_length=1,
        description="Environment variable holding the bearer token that control actions "
        "(promote, abort, set weights...) need over HTTP.",
    )
    qa_token_env: str = Field(
        "SERVE_AB_QA_TOKEN", min_length=1,
        description="Environment variable holding the QA token: pinning a version (pin.enabled).",
    )
    viewer_token_env: str = Field(
        "SERVE_AB_VIEWER_TOKEN", min_length=1,
        description="Environment variable holding the viewer token: status, report, stats, metrics "
        "when protect_reads is true.",
    )
    tokens_file: str | None = Field(
        None, description="A YAML or JSON file of named tokens, [{name, role, token}], role one of "
        "viewer, qa, operator; names (never tokens) are recorded with every action.",
    )
    protect_reads: bool = Field(
        False, description="Status, report, stats, metrics and the experiment need a viewer, QA or "
        "operator token too. Health and model metadata stay open.",
    )
    allow_unauthenticated: bool = Field(
        False, description="Accept control actions and pins without a token. Only for local experiments."
    )

    @field_validator("token_env", "qa_token_env", "viewer_token_env")
    @classmethod
    def _env_names(cls, name: str, info: ValidationInfo) -> str:
        return check_env_name(info.field_name, name, "SERVE_AB_CONTROL_TOKEN")


def _check_sqlite_path(field: str, path: str) -> str:
    """A SQLite file's path: a directory there (or a name ending in /) cannot be opened as one."""
    try:
        is_dir = path.endswith(("/", os.sep)) or Path(path).is_dir()
    except OSError:  # a name too long (ENAMETOOLONG): resolve_model_paths names the field and why
        is_dir = False
    if is_dir:
        raise ValueError(f"{field} {path!r} is a directory; give the path of a SQLite file (created "
                         "if missing), e.g. .serve-ab/state.sqlite")
    return path


# A figures' save may come this many report intervals apart: a quarter of the 120 reports each
# router keeps for a controller that restarts before saving them (serving/core/ledger.py), so a
# save or two that fail still drop none of them.
SAVE_REPORT_INTERVALS = 30
# The shortest save interval: the controller's rounds (serving/controller.py's REPORT_INTERVAL_S).
SAVE_INTERVAL_MIN_S = 5.0
DEFAULT_SAVE_INTERVAL_S = 30.0


class ControllerConfig(_Strict):
    state_path: str = Field(
        ".serve-ab/state.sqlite", min_length=1,
        description="SQLite file holding rollout state, so a restarted controller resumes; a "
        "relative path is resolved against the directory serve runs in. Unused with a redis store_url.",
    )
    store_url: str | None = Field(
        None,
        description="Where rollout state, statistics and the feedback key are kept: "
        "redis://HOST[:PORT][/DB] (rediss:// for TLS) for a cluster of several nodes, so a "
        "controller moved to another node resumes; sqlite:///PATH is another spelling of "
        "state_path (and becomes it). Unset: SQLite at state_path.",
    )
    store_password_env: str | None = Field(
        None,
        description="Environment variable holding the Redis password (read by the controller's and the "
        "routers' processes, never logged; set it for `ray start` on every node, not in a runtime_env); "
        "instead of a password in store_url, which Ray shows with the config.",
    )
    store_key_prefix: str = Field(
        "serve-ab:", pattern=r"^[A-Za-z0-9_.:/-]{1,64}$",
        description="Prefix of every Redis key, so one Redis can hold several apps or clusters.",
    )
    tick_s: float = Field(
        0.25, gt=0, le=10, description="How often the controller looks at its windows and timers."
    )
    report_interval_s: float = Field(
        1.0, gt=0, le=60,
        description="How often each router replica sends the controller what it served (one "
        "message per interval; while idle, an empty one every 20 s, so that it is not counted "
        "lost), so gates and reports see traffic at most this late. Shorter reacts sooner and "
        "costs every router a Ray call per interval.",
    )
    # None (unset): 30 s, shortened to what the routers keep (figures_save_interval_s). Not a
    # default of 30: the app hands its replicas the config dumped whole, where an explicit 30
    # with report_interval_s 0.25 was refused and no router or controller started.
    save_interval_s: float | None = Field(
        None, ge=SAVE_INTERVAL_MIN_S, le=60,
        description="How often the controller saves the run's figures to the store (every 5 s before: "
        "with Redis AOF that wrote each app's whole figures row, up to a few MB, 720 times an hour). "
        "Routers keep what a save does not hold yet and send it again to a restarted controller, so a "
        "controller killed between saves loses nothing; a router that dies with it (one node lost) "
        "takes up to this long of its requests with it. A stop saves at once; a row the store lost "
        "(Redis restarted without its data) is written again within 5 s. At most "
        f"{SAVE_REPORT_INTERVALS} report_interval_s (routers keep 120 reports for a restarted controller): "
        "left unset, it is 30 s shortened to that.",
    )
    num_cpus: float = Field(0.05, ge=0, description="CPUs the controller replica reserves.")
    resources: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict,
        description="Custom Ray resources the controller replica asks for, e.g. {ctl: 0.1} to keep it "
        "on the nodes that offer it (Serve restarts it on another such node if its node is lost).",
    )

    @field_validator("state_path")
    @classmethod
    def _state_file(cls, path: str) -> str:
        return _check_sqlite_path("state_path", path)

    @field_validator("resources")
    @classmethod
    def _custom_resources(cls, resources: dict[str, float]) -> dict[str, float]:
        return check_ray_resources(resources)

    @field_validator("num_cpus")
    @classmethod
    def _ray_quantity(cls, quantity: float) -> float:
        return check_ray_quantity("num_cpus", quantity)

    @field_validator("store_password_env")
    @classmethod
    def _password_env(cls, name: str | None) -> str | None:
        return None if name is None else check_env_name("store_password_env", name, "REDIS_PASSWORD")

    @field_validator("store_url")
    @classmethod
    def _store_url(cls, url: str | None) -> str | None:
        if url is not None:
            parse_store_url(url)  # ValueError: names the URL (password redacted) and what is valid
        return url

    @model_validator(mode="after")
    def _saves_within_the_routers_reach(self) -> ControllerConfig:
        # Never below the 5 s that save_interval_s allows (and its default is shortened to): with
        # report_interval_s under 1/6 s, 30 of them are less, and no value at all was valid.
        bound_s = max(SAVE_INTERVAL_MIN_S, SAVE_REPORT_INTERVALS * self.report_interval_s)
        if self.save_interval_s is not None and self.save_interval_s > bound_s:
            raise ValueError(f"save_interval_s ({self.save_interval_s:g}) must be at most {bound_s:g} with "
                             f"report_interval_s {self.report_interval_s:g} ({SAVE_REPORT_INTERVALS} report intervals, "
                             f"{SAVE_INTERVAL_MIN_S:g} s at least): routers keep 120 reports for a controller that "
                             f"restarts before it saved them; e.g. save_interval_s: {bound_s:g}")
        return self

    @property
    def figures_save_interval_s(self) -> float:
        """``save_interval_s``, its default shortened to what the routers keep (see its description)."""
        if self.save_interval_s is not None:
            return self.save_interval_s  # within the routers' reach (_saves_within_the_routers_reach)
        return max(SAVE_INTERVAL_MIN_S, min(DEFAULT_SAVE_INTERVAL_S, SAVE_REPORT_INTERVALS * self.report_interval_s))

    @model_validator(mode="after")
    def _one_store(self) -> ControllerConfig:
        parsed = parse_store_url(self.store_url) if self.store_url is not None else None
        if self.store_password_env is not None and (parsed is None or not parsed.is_redis):
            raise ValueError(f"store_password_env ({self.store_password_env!r}) is only read with a redis "
                             "store_url, e.g. store_url: redis://redis.internal:6379/0")
        if parsed is not None and parsed.is_redis and parsed.password is not None and self.store_password_env:
            raise ValueError(f"store_url {redact_url(self.store_url)!r} holds a password and store_password_env "
                             f"({self.store_password_env!r}) names another; keep one")
        if parsed is not None and parsed.scheme == "sqlite":
            # One spelling from here on: state_path, which the app builder makes absolute
            # against serve run's directory (the controller may run elsewhere).
            if "state_path" in self.model_fields_set and self.state_path != parsed.path:
                raise ValueError(f"store_url ({self.store_url!r}) and state_path ({self.state_path!r}) name two "
                                 "SQLite files; keep one")
            object.__setattr__(self, "state_path", _check_sqlite_path("store_url's path", parsed.path))
            object.__setattr__(self, "store_url", None)
            self.__pydantic_fields_set__ = (self.model_fields_set | {"state_path"}) - {"store_url"}
        return self


class ShadowConfig(_Strict):
    """Mirror a share of live requests to a version whose answers are compared, never returned."""

    version: str = Field(..., pattern=VERSION_NAME_PATTERN, description="The version that gets copies.")
    percent: float = Field(
        ..., gt=0.0, le=100.0,
        description="Share of live requests (served by any other version) copied to it, in percent.",
    )


# The metrics every report has (serve_ab.analysis.report._metric_specs): a feedback metric of
# the same name would share their block, plots and MLflow keys, and report.metric() finds one.
REPORT_METRICS = ("error_rate", "latency_ms")


def _feedback_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name feedback (a phrase to follow the name), or None."""
    if name in REPORT_METRICS:
        return (f"reserved: every report has metrics {' and '.join(REPORT_METRICS)} of its own; give the "
                f"feedback another name, e.g. {name}_feedback")
    bad = sorted({c for c in name if unicodedata.category(c) == "Cc"})
    if bad:
        # A name is printed in the terminal report: a newline or an escape sequence would redraw it.
        return (f"holds control character(s) {', '.join(repr(c) for c in bad)}; a feedback name is printed in "
                "reports, so use visible characters, e.g. correct or revenue_usd")
    return None


class FeedbackMetric(_Strict):
    """A business metric clients report with POST /feedback, and which way is better."""

    name: str = Field(..., min_length=1, max_length=64,
                      description="Feedback name, e.g. correct or revenue; not error_rate or latency_ms (every "
                      "report has those) and without control characters.")
    kind: Literal["conversion", "mean"] = Field(
        ..., description="conversion: a yes/no outcome (a rate); mean: a value such as revenue."
    )
    direction: Literal["increase", "decrease"] = Field(
        "increase", description="Which way is better for this metric."
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        problem = _feedback_name_problem(name)
        if problem:
            raise ValueError(problem)
        return name


class RecordsConfig(_Strict):
    path: str = Field(
        ".serve-ab/runs.sqlite", min_length=1,
        description="SQLite file of run records (configuration and latest results of each "
        "experiment); a relative path is resolved against the directory serve runs in.",
    )
    interval_s: float = Field(60.0, gt=0, allow_inf_nan=False, description="How often the run record is refreshed.")
    mlflow: bool = Field(
        False, description="Also log each run record to MLflow (needs mlflow installed; the "
        "tracking URI comes from MLFLOW_TRACKING_URI)."
    )

    @field_validator("path")
    @classmethod
    def _records_file(cls, path: str) -> str:
        return _check_sqlite_path("path", path)


class GuardrailConfig(_Strict):
    """Non-inferiority margins of the health metrics every report checks beside its verdicts."""

    error_rate_margin_abs: float = Field(
        0.01, gt=0.0, lt=1.0,
        description="A variant's error rate may exceed the control's by at most this (0.01 = 1 point).",
    )
    latency_margin_relative: float = Field(
        0.10, gt=0.0, le=10.0,
        description="A variant's mean latency may exceed the control's by at most this share (0.10 = 10%).",
    )


class ReportAnalysisConfig(_Strict):
    """How the A/B report judges the variants against the control."""

    control: str | None = Field(
        None, pattern=VERSION_NAME_PATTERN,
        description="The version the others are compared with; default rollout.stable, else the first version.",
    )
    alpha: float = Field(0.05, gt=0.0, lt=0.5, description="Significance level of every test.")
    power: float = Field(0.8, gt=0.0, lt=1.0, description="Power the sample-size figures aim for.")
    correction: Literal["holm", "bh", "none"] = Field(
        "holm", description="Multiple-testing correction across metrics and variants."
    )
    sequential: bool = Field(
        True, description="Verdicts from always-valid (mSPRT) tests, safe to read continuously; "
        "false: fixed-horizon verdicts, withheld until the planned sample is reached.",
    )
    mde_relative: float = Field(
        0.05, gt=0.0, le=10.0,
        description="Smallest relative lift worth detecting (0.05 = 5%), used for power and samples needed.",
    )
    metrics: list[FeedbackMetric] = Field(
        default_factory=list,
        description="Feedback metrics to judge. POST /feedback accepts only the names listed "
        "here or named by a rollout's feedback gates.",
    )
    cuped: bool = Field(
        True, description="Adjust each comparison by the same users' figures from before the variant had "
        "traffic (CUPED), when there was such a period: weights giving it 0, then more.",
    )
    guardrails: GuardrailConfig = Field(
        default_factory=GuardrailConfig, description="Non-inferiority margins of error rate and latency.")
    records: RecordsConfig = Field(default_factory=RecordsConfig, description="Run records.")

    @field_validator("metrics")
    @classmethod
    def _unique_metrics(cls, metrics: list[FeedbackMetric]) -> list[FeedbackMetric]:
        names = [m.name for m in metrics]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            # The report keys figures by name, so one would hide the other.
            raise ValueError(f"names {twice} more than once; each metric needs its own name, e.g. "
                             "[{name: correct, kind: conversion}, {name: revenue, kind: mean}]")
        return metrics


class RouterOptions(DeploymentOptions):
    """Ray Serve options of the router deployment, and how its replicas run serve-ab's code."""

    separate_thread: bool | None = Field(
        None,
        description="Run the router's code (and a colocated model) in a thread of its own, and its "
        "calls to other deployments on a loop of their own, beside Ray Serve's replica loop: Ray's "
        "defaults. Off, one event loop does all of it and each request skips the thread hops. "
        "Unset: off in colocated placement; in isolated, Ray's setting as the cluster has it "
        "(on by default: there the router's loop would also carry every call to the versions; "
        "benchmarks/README.md, fifth round). Turn it on when a colocated model blocks for tens "
        "of milliseconds per call, so that the replica keeps answering Ray's queue-length probes "
        "and health checks meanwhile.",
    )
    access_log: bool = Field(
        True,
        description="Ray Serve's access line for each request to the router, with the version that "
        "answered it appended (version=v2; version=- when none did). false is Ray Serve's "
        "logging_config.enable_access_log: false: no access lines; other log lines are kept.",
    )

    def to_ray(self, isolated: bool = False) -> dict[str, Any]:
        """``Deployment.options`` for the router of an experiment in isolated placement or not."""
        options = super().to_ray()
        if self.separate_thread is None and isolated:
            return options  # Ray's setting, as the cluster has it
        return thread_settings(options, bool(self.separate_thread))


def _default_router() -> RouterOptions:
    return RouterOptions(num_replicas=1)


class ExperimentConfig(_Strict):
    """An experiment: which versions of one model are served and how traffic is split."""

    model: str = Field(..., pattern=VERSION_NAME_PATTERN, description="Model name used in URLs.")
    versions: list[VersionConfig] = Field(..., min_length=1, description="Versions served.")
    weights: dict[str, float] = Field(
        ...,
        description="Traffic share per version in percent, summing to 100; a version left "
        "out gets 0. Versions own contiguous bucket ranges in the order they are listed.",
    )
    assignment: AssignmentConfig = Field(default_factory=AssignmentConfig, description="Sticky key.")
    pin: PinConfig = Field(default_factory=PinConfig, description="Version pinning for QA.")
    placement: Placement = Field(
        Placement.COLOCATED, validate_default=True, strict=False, description="colocated or isolated."
    )
    isolation: IsolationConfig = Field(
        default_factory=IsolationConfig,
        description="Time limits on versions in their own deployments (placement: isolated).",
    )
    router: RouterOptions = Field(
        default_factory=_default_router, description="Ray Serve options of the router deployment."
    )
    http: HttpConfig = Field(default_factory=HttpConfig, description="HTTP request limits.")
    rollout: RolloutConfig | None = Field(
        None, description="A canary or blue-green rollout from stable to candidate."
    )
    notifications: list[NotificationReceiver] = Field(
        default_factory=list,
        description="Where the rollout's events go (phase changes, an operator's included; failed "
        "analyses; operators' actions): generic JSON webhooks and Slack incoming webhooks, e.g. "
        "[{type: slack, url_from_env: SLACK_WEBHOOK_URL, events: [phase_changed, analysis_failed]}].",
    )
    control: ControlConfig = Field(default_factory=ControlConfig, description="Control API access.")
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig, description="Client feedback.")
    controller: ControllerConfig = Field(
        default_factory=ControllerConfig,
        description="The controller deployment: collects what routers served, runs the rollout.",
    )
    shadow: ShadowConfig | None = Field(None, description="Mirror live traffic to a version.")
    analysis: ReportAnalysisConfig = Field(default_factory=ReportAnalysisConfig, description="The A/B report.")
    resources_missing: Literal["fail", "cpu"] = Field(
        "fail",
        description="When a version asks for GPUs the cluster does not have: fail at deploy "
        "time with a message, or (cpu) run it on the CPU instead. Custom resources no node "
        "has always fail.",
    )

    @field_validator("versions")
    @classmethod
    def _unique_names(cls, versions: list[VersionConfig]) -> list[VersionConfig]:
        seen: set[str] = set()
        for version in versions:
            if version.name in seen:
                raise ValueError(f"version name {version.name!r} appears twice; names must be unique")
            seen.add(version.name)
        return versions

    @field_validator("weights")
    @classmethod
    def _check_weights(cls, weights: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        # When versions failed to parse, their own errors say why; still check the sum.
        names = [v.name for v in info.data["versions"]] if "versions" in info.data else None
        for name, weight_pct in weights.items():
            if names is not None and name not in names:
                raise ValueError(f"weights names version {name!r}, which is not served; versions: {names}")
            if not math.isfinite(weight_pct) or not 0.0 <= weight_pct <= 100.0:
                raise ValueError(f"{name} is {weight_pct}; a weight is a percentage in [0, 100]")
            if abs(weight_pct / WEIGHT_RESOLUTION_PCT - round(weight_pct / WEIGHT_RESOLUTION_PCT)) > 1e-6:
                raise ValueError(
                    f"{name} is {weight_pct}; weights resolve to {WEIGHT_RESOLUTION_PCT}% "
                    "steps, e.g. 12.5 or 33.33"
                )
        total_pct = sum(weights.values())
        if abs(total_pct - 100.0) > 1e-6:
            raise ValueError(f"weights sum to {total_pct:g}%; they must sum to 100")
        return weights

    @field_validator("placement")
    @classmethod
    def _check_placement(cls, placement: Placement, info: ValidationInfo) -> Placement:
        if placement is Placement.COLOCATED:
            for index, version in enumerate(info.data.get("versions", [])):
                if version.deployment is not None:
                    raise ValueError(
                        f"versions.{index}.deployment is set for version {version.name!r}, but "
                        "placement is colocated, where every version lives in the router's "
                        "replicas; use placement: isolated, or set router: instead"
                    )
        return placement

    @model_validator(mode="after")
    def _one_task(self) -> ExperimentConfig:
        first = self.versions[0]
        for index, version in enumerate(self.versions[1:], start=1):
            if (version.task, version.task_options) != (first.task, first.task_options):
                raise ValueError(
                    f"versions.{index} ({version.name!r}) has task {version.task.value} "
                    f"{version.task_options.model_dump(exclude_defaults=True)}, but versions.0 "
                    f"({first.name!r}) has {first.task.value} {first.task_options.model_dump(exclude_defaults=True)}; "
                    "the versions of one experiment are compared answer for answer, so they share "
                    "task and task_options")
        return self

    @model_validator(mode="after")
    def _check_shadow_and_control(self) -> ExperimentConfig:
        names = [v.name for v in self.versions]
        if self.shadow is not None:
            if self.shadow.version not in names:
                raise ValueError(f"shadow.version is {self.shadow.version!r}, which is not served; "
                                 f"versions: {names}")
            if len(names) < 2:
                raise ValueError("shadow needs a second version to serve live traffic")
        if self.analysis.control is not None and self.analysis.control not in names:
            raise ValueError(f"analysis.control is {self.analysis.control!r}, which is not served; "
                             f"versions: {names}")
        return self

    @model_validator(mode="after")
    def _check_pin_header(self) -> ExperimentConfig:
        # One header cannot be both: every user's key would be read as a version to pin to
        # (and refused with 403 while pinning is off, since the pin header is read either way).
        if self.assignment.key == "header" and self.pin.header == self.assignment.header:
            raise ValueError(
                f"pin.header and assignment.header are both {self.pin.header!r}: a user's key would be "
                "read as a version to pin to (a 403 while pin.enabled is false); give each its own "
                "header, e.g. assignment.header: x-user-id and pin.header: x-serve-ab-version")
        return self

    def control_version(self) -> str:
        """The version the A/B report compares the others with."""
        if self.analysis.control is not None:
            return self.analysis.control
        if self.rollout is not None:
            return self.rollout.stable
        return self.versions[0].name

    @model_validator(mode="after")
    def _check_rollout(self) -> ExperimentConfig:
        if self.rollout is None:
            if self.notifications:
                raise ValueError("notifications send a rollout's events, but this experiment has no "
                                 "rollout:; add one or remove notifications")
            return self
        labels = [receiver.label for receiver in self.notifications]
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            raise ValueError(f"notifications name receiver(s) {twice} more than once; give each a "
                             "unique name: (it labels the receiver's metrics)")
        names = [v.name for v in self.versions]
        for role in ("stable", "candidate"):
            name = getattr(self.rollout, role)
            if name not in names:
                raise ValueError(f"rollout.{role} is {name!r}, which is not served; versions: {names}")
        if names.index(self.rollout.stable) > names.index(self.rollout.candidate):
            # Contiguous ranges in listing order: stable first keeps moves one-way.
            raise ValueError(
                f"list rollout.stable ({self.rollout.stable!r}) before rollout.candidate "
                f"({self.rollout.candidate!r}) under versions, so raising the candidate's weight "
                "only moves users from stable to candidate"
            )
        # The rollout owns the weights from the start (stable 100%); others would be ignored.
        given = {name: weight for name, weight in self.weights_pct().items() if weight}
        starting = {self.rollout.stable: 100.0}
        if given != starting:
            shown = ", ".join(f"{name}: {weight:g}" for name, weight in given.items())
            raise ValueError(
                f"weights is {{{shown}}}, but a rollout starts at rollout.stable 100% and then sets "
                f"the weights itself; write weights: {{{self.rollout.stable}: 100}}"
            )
        self._check_shadow_agreement_fed()
        return self

    def _check_shadow_agreement_fed(self) -> None:
        """A shadow_agreement gate judges copies of live requests sent to the candidate: the
        shadow, or a blue-green green validating on mirrored traffic. Without them it never
        has data and holds the rollout until the deadline aborts it."""
        rollout = self.rollout
        assert rollout is not None
        if not any(gate.metric is GateMetric.SHADOW_AGREEMENT for gate in rollout.gates):
            return
        if self.shadow is not None and self.shadow.version == rollout.candidate:
            return
        mirrored = rollout.strategy is Strategy.BLUE_GREEN and \
            rollout.blue_green_settings.validation_min_samples is not None
        if mirrored:
            return
        shadow = "no shadow:" if self.shadow is None else f"shadow.version {self.shadow.version!r}"
        raise ValueError(
            f"rollout.gates has a shadow_agreement gate, but it would get no data: it judges copies "
            f"of live requests sent to the candidate ({rollout.candidate!r}), and this experiment has "
            f"{shadow}; add shadow: {{version: {rollout.candidate}, percent: 20}} (or, for blue_green, "
            "blue_green.validation_min_samples), or remove the gate"
        )

    def feedback_kinds(self) -> dict[str, Literal["conversion", "mean"]]:
        """Each feedback name clients may report, and its kind: ``conversion`` (reported as
        ``converted``) or ``mean`` (reported as ``value``). A feedback_rate gate reads a
        conversion, a feedback_mean gate a mean; analysis.metrics say which."""
        kinds: dict[str, Literal["conversion", "mean"]] = {m.name: m.kind for m in self.analysis.metrics}
        if self.rollout is not None:
            for gate in self.rollout.gates:
                if gate.metric in FEEDBACK_METRICS and gate.name:
                    kinds.setdefault(gate.name, _GATE_FEEDBACK_KIND[gate.metric])
        return kinds

    @model_validator(mode="after")
    def _check_feedback_kinds(self) -> ExperimentConfig:
        # One name, one kind: feedback is counted as the kind its name has, so a name read as a
        # rate by one part and as a mean by another would leave one of them without data.
        if self.rollout is None:
            return self
        declared = {m.name: m.kind for m in self.analysis.metrics}
        seen: dict[str, tuple[str, str]] = {name: (kind, f"analysis.metrics ({kind})")
                                            for name, kind in declared.items()}
        for index, gate in enumerate(self.rollout.gates):
            if gate.metric not in FEEDBACK_METRICS or not gate.name:
                continue
            kind = _GATE_FEEDBACK_KIND[gate.metric]
            where = f"rollout.gates.{index} ({gate.metric.value})"
            problem = _feedback_name_problem(gate.name)
            if problem:  # its feedback is reported too, beside analysis.metrics'
                raise ValueError(f"{where} name {gate.name!r}: {problem}")
            before = seen.setdefault(gate.name, (kind, where))
            if before[0] != kind:
                raise ValueError(
                    f"{where} reads feedback {gate.name!r} as a {kind}, but {before[1]} reads it as a "
                    f"{before[0]}; a name has one kind (feedback_rate and kind: conversion take "
                    "converted: true/false, feedback_mean and kind: mean take a value), so use "
                    "another name for one of them")
        return self

    def version(self, name: str) -> VersionConfig:
        for version in self.versions:
            if version.name == name:
                return version
        raise KeyError(name)

    def weights_pct(self) -> dict[str, float]:
        """Weights of every version in listing order, 0 for those left out."""
        return {v.name: float(self.weights.get(v.name, 0.0)) for v in self.versions}


_GATE_FEEDBACK_KIND: dict[GateMetric, Literal["conversion", "mean"]] = {
    GateMetric.FEEDBACK_RATE: "conversion", GateMetric.FEEDBACK_MEAN: "mean"}


class ConfigError(ValueError):
    """An invalid experiment; ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str], where: str = "experiment"):
        self.errors = errors
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"invalid {where} ({len(errors)} error{'s' * (len(errors) != 1)}):\n{lines}")


#: The path of an error about the experiment as a whole (a rule across fields).
ROOT_PATH = "<root>"


def _error_path(loc: tuple[Any, ...]) -> list[str]:
    # A step's loc repeats its kind: the union's tag, then the field (steps.1.pause.pause.duration).
    return [str(part) for index, part in enumerate(loc)
            if not (part in STEP_KINDS and loc[index + 1:index + 2] == (part,))]


# What a field's pattern allows, in words: pydantic's own message quotes the regex.
_PATTERN_WORDS = {
    VERSION_NAME_PATTERN: "1 to 63 characters, letters, digits, '_', '.' and '-', starting with a letter or "
                          "digit (it is used in URLs, metric labels and deployment names), e.g. v2 or digits",
    r"^[A-Za-z0-9_.:/-]{1,64}$": "1 to 64 characters, letters, digits and '_', '.', ':', '/', '-', e.g. serve-ab:",
    r"^https?://[^\s/?#]+[^\s?#]*$": "an http:// or https:// URL with a host and no query, e.g. http://prometheus:9090",
    r"^[A-Za-z0-9_.:-]+$": "letters, digits and '_', '.', ':', '-' only, e.g. slack-oncall",
}

_URL_START = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_QUERY_VALUE = re.compile(r"([?&][^=&#]*=)[^&#]*")

# A validator's message quoting a value in full is cut here (the value itself: SHOWN_CHARS).
_MESSAGE_CHARS = 1000


def format_validation_error(err: ValidationError, prefix: str = "",
                            model: type[BaseModel] | None = None, yaml_hints: bool = True) -> list[str]:
    """One line per error: field path, what is wrong or valid, and the value received (cut to
    about 200 characters: YAML aliases can make it megabytes). With the ``model`` validated,
    a key it does not know also gets the nearest valid key and the valid ones. ``yaml_hints``:
    say how YAML may have read a value the way it came (a config file's); False for a JSON
    request body, where 5 was sent as a number and "1e2" quoted, and the hint would mislead."""
    lines = []
    for item in err.errors(include_url=False):
        path = ".".join(part for part in (prefix, *_error_path(item["loc"])) if part != "") or ROOT_PATH
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "string_pattern_mismatch":
            message = _PATTERN_WORDS.get(str((item.get("ctx") or {}).get("pattern")), message)
        if len(message) > _MESSAGE_CHARS:
            message = f"{message[:_MESSAGE_CHARS]}… ({len(message):,} characters)"
        received = item.get("input")
        if isinstance(received, str):
            # A URL's password and its query's values (a Prometheus URL's ?token=) are never printed.
            received = _QUERY_VALUE.sub(r"\1***", redact_url(received)) if _URL_START.match(received) \
                else redact_url(received)
        if item["type"] == "missing":
            lines.append(f"{path}: field required")
        elif path.endswith("_env") and item["type"] != "extra_forbidden":
            lines.append(f"{path}: {message}")  # it should name a secret's variable: it may be the secret
        elif isinstance(received, dict) and item["type"] != "extra_forbidden":
            lines.append(f"{path}: {message}")
        elif item["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key (got {shown_value(received)}){unknown_key_hint(model, item['loc'])}")
        else:
            hint = (_yaml_number_hint(item["type"], received) or _yaml_text_hint(item["type"], received)) \
                if yaml_hints else ""
            lines.append(f"{path}: {message} (got {shown_value(received)}){hint}")
    return lines


_NUMBER_TYPES = ("float_type", "int_type", "float_parsing", "int_parsing")


def _yaml_text_hint(error_type: str, received: Any) -> str:
    """Why text written in YAML arrived as something else: YAML 1.1 (PyYAML, hence Ray) reads
    an unquoted no/off/yes/on as a boolean, 010 as octal 8, 0x1F as 31, 12:30 as 750 (base 60),
    2026-12-07 as a date and ~ (or nothing) as null, so the value quoted is not the one typed."""
    if error_type != "string_type":
        return ""
    if isinstance(received, bool):
        what = f"the boolean {str(received).lower()} (yes, no, on, off, y, n are booleans there)"
    elif isinstance(received, (int, float)):
        what = f"the number {received!r} (010 is octal, 0x1F hex, 12:30 base 60 there)"
    elif isinstance(received, (datetime.date, datetime.datetime)):
        what = f"a date ({received.isoformat()})"
    elif received is None:
        what = "null (~, null or nothing)"
    else:
        return ""
    return f"; YAML reads that unquoted value as {what}: if it is text, quote it, e.g. 'no' or '010'"


def _yaml_number_hint(error_type: str, received: Any) -> str:
    """Why a number written in YAML arrived as text: YAML 1.1 (PyYAML, hence Ray) reads ``1e2``
    or ``5e-3`` as a string, wanting a dot and a signed exponent (``1.0e+2``)."""
    if error_type not in _NUMBER_TYPES or not isinstance(received, str) or "e" not in received.lower():
        return ""  # "50" in quotes is text however YAML is read: the message says enough
    try:
        value = float(received)
    except ValueError:
        return ""
    if not math.isfinite(value):
        return ""
    if error_type.startswith("int"):
        return f"; YAML reads {received!r} as text: write {int(value)}" if value.is_integer() else ""
    return f"; YAML reads {received!r} as text: write {yaml11_float(value)}"


def yaml11_float(value: float) -> str:
    """``value`` as YAML 1.1 (PyYAML) reads back as this float: a dot in the mantissa and a
    signed exponent (``1.0e+20``, ``2.5e-07``), else Python's shortest form (``1250.0``)."""
    text = repr(value)
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    if "." not in mantissa:
        mantissa += ".0"
    if exponent[0] not in "+-":
        exponent = "+" + exponent
    return f"{mantissa}e{exponent}"


def errors_under(prefix: str, errors: list[str]) -> list[str]:
    """``errors`` (from :func:`format_validation_error`) of something found at ``prefix`` in a
    file, e.g. ``applications.0.args``: its paths start there, and its root is the prefix."""
    if not prefix:
        return list(errors)
    return [prefix + error.removeprefix(ROOT_PATH) if error.startswith(f"{ROOT_PATH}:")
            else f"{prefix}.{error}" for error in errors]


def parse_experiment(args: Any, where: str = "experiment") -> ExperimentConfig:
    """Validate ``args`` (a dict, or an ExperimentConfig) or raise :class:`ConfigError`."""
    if isinstance(args, ExperimentConfig):
        return args
    if not isinstance(args, dict):
        raise ConfigError([f"{ROOT_PATH}: expected a mapping of experiment fields (got {shown_value(args)})"], where)
    try:
        return ExperimentConfig.model_validate(args)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model=ExperimentConfig), where) from None
