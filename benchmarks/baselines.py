"""What a Ray Serve user writes by hand, to measure serve-ab against.

- :class:`OnnxModel`: one ONNX model as a deployment, JSON in and JSON out over HTTP
  (``__call__`` with a Starlette request, the shape of Ray Serve's own examples), and a
  ``predict`` method for DeploymentHandle callers.
- :class:`OnnxModelFastAPI`: the same model behind a FastAPI ingress, as serve-ab's router
  is, so the cost of FastAPI itself can be told apart from serve-ab's own.
- :class:`OnnxModelGrpc`: the same model answering the Open Inference Protocol's gRPC
  ``ModelInfer`` by hand, against serve-ab over Serve's gRPC proxy.
- :class:`OnnxModelBatched`: :class:`OnnxModel` with ``@serve.batch``, against serve-ab with
  batching on.
- :class:`TwoModelsBatched`: two versions in one replica, each with its own ``@serve.batch``
  queue, a version drawn per request: what batching a 50/50 split by hand gives, against
  serve-ab's colocated router batching the same split.
- :class:`RandomSplit`: the usual workaround for serving several versions: an ingress that
  draws a version per request with ``random.choices`` and calls that version's deployment
  through its DeploymentHandle. Not sticky, no metrics, no rollout: just the traffic split.

Every method is ``async def`` and runs the model inline, as serve-ab does: Ray Serve 2.60
runs a plain ``def`` method in a thread pool, which a user could hit by accident but which
would make the baseline slower than it needs to be.
"""

# No "from __future__ import annotations": FastAPI reads the route signatures at runtime
# through Ray Serve's ingress wrapper, which cannot resolve string annotations.

import random
from typing import Any

import numpy as np
from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request


def _onnx_session(path: str, intra_op_threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


@serve.deployment
class OnnxModel:
    def __init__(self, path: str, intra_op_threads: int = 1):
        self.session = _onnx_session(path, intra_op_threads)
        self.input_name = self.session.get_inputs()[0].name

    async def predict(self, batch: Any) -> np.ndarray:
        (outputs,) = self.session.run(None, {self.input_name: np.asarray(batch, dtype=np.float32)})
        return outputs

    async def __call__(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        outputs = await self.predict(body["inputs"])
        return {"outputs": outputs.tolist()}


fastapi_app = FastAPI()


@serve.deployment
@serve.ingress(fastapi_app)
class OnnxModelFastAPI:
    def __init__(self, path: str, intra_op_threads: int = 1):
        self.session = _onnx_session(path, intra_op_threads)
        self.input_name = self.session.get_inputs()[0].name

    async def predict(self, batch: Any) -> np.ndarray:
        (outputs,) = self.session.run(None, {self.input_name: np.asarray(batch, dtype=np.float32)})
        return outputs

    @fastapi_app.post("/predict")
    async def http_predict(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        outputs = await self.predict(body["inputs"])
        return {"outputs": outputs.tolist()}


# Dynamic batching, the same settings for (a+) and serve-ab's (c+): serve-ab's defaults.
BATCH_MAX_SIZE = 16
BATCH_WAIT_TIMEOUT_S = 0.002


@serve.deployment
class OnnxModelGrpc:
    """(a) over gRPC: the Open Inference Protocol's ``ModelInfer`` by hand, as a Ray Serve
    user serving tritonclient's gRPC calls would write it: the first input's raw bytes as
    little-endian float32 of its shape, the model, its output's raw bytes back."""

    def __init__(self, path: str, intra_op_threads: int = 1):
        self.session = _onnx_session(path, intra_op_threads)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    async def ModelInfer(self, request: Any) -> Any:  # noqa: N802 - the RPC's name
        from serve_ab.api.grpc import grpc_predict_v2_pb2 as pb

        tensor = request.inputs[0]
        batch = np.frombuffer(request.raw_input_contents[0], dtype="<f4").reshape(tuple(tensor.shape))
        (outputs,) = self.session.run(None, {self.input_name: batch})
        response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        response.outputs.add(name=self.output_name, datatype="FP32", shape=list(outputs.shape))
        response.raw_output_contents.append(np.ascontiguousarray(outputs, dtype="<f4").tobytes())
        return response


@serve.deployment
class OnnxModelBatched:
    """(a+) :class:`OnnxModel` with Ray Serve's own dynamic batching, as its docs write it."""

    def __init__(self, path: str, intra_op_threads: int = 1):
        self.session = _onnx_session(path, intra_op_threads)
        self.input_name = self.session.get_inputs()[0].name

    @serve.batch(max_batch_size=BATCH_MAX_SIZE, batch_wait_timeout_s=BATCH_WAIT_TIMEOUT_S)
    async def predict_batch(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        (outputs,) = self.session.run(None, {self.input_name: np.concatenate(batches)})
        return np.split(outputs, np.cumsum([len(b) for b in batches])[:-1])

    async def predict(self, batch: Any) -> np.ndarray:
        return await self.predict_batch(np.asarray(batch, dtype=np.float32))

    async def __call__(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        outputs = await self.predict(body["inputs"])
        return {"outputs": outputs.tolist()}


@serve.deployment
class TwoModelsBatched:
    """(a+2) several versions in one replica, each batched by ``@serve.batch`` on its own
    (two models cannot share a call), a version drawn per request as :class:`RandomSplit` draws."""

    def __init__(self, paths: dict[str, str], weights_pct: dict[str, float], intra_op_threads: int = 1):
        self.names = list(paths)
        self.weights = [weights_pct[name] for name in self.names]
        # One batch queue per version: serve.batch wraps a function as it wraps a method.
        self.batched = {name: serve.batch(max_batch_size=BATCH_MAX_SIZE, batch_wait_timeout_s=BATCH_WAIT_TIMEOUT_S)(
            _batch_runner(_onnx_session(path, intra_op_threads))) for name, path in paths.items()}

    async def predict(self, batch: Any) -> np.ndarray:
        version = random.choices(self.names, self.weights)[0]
        return await self.batched[version](np.asarray(batch, dtype=np.float32))

    async def __call__(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        outputs = await self.predict(body["inputs"])
        return {"outputs": outputs.tolist()}


def _batch_runner(session: Any) -> Any:
    input_name = session.get_inputs()[0].name

    async def predict_batch(batches: list[np.ndarray]) -> list[np.ndarray]:
        (outputs,) = session.run(None, {input_name: np.concatenate(batches)})
        return np.split(outputs, np.cumsum([len(b) for b in batches])[:-1])

    return predict_batch


@serve.deployment
class RandomSplit:
    def __init__(self, versions: dict[str, DeploymentHandle], weights_pct: dict[str, float],
                 by_reference: bool = True):
        # by_reference=False: the calls go over Ray Serve's gRPC between replicas instead of
        # Ray actor calls, as serve-ab's isolated router's do (isolation.transport).
        self.handles = {name: handle.options(_by_reference=by_reference) for name, handle in versions.items()}
        self.names = list(versions)
        self.weights = [weights_pct[name] for name in self.names]

    def _pick(self) -> str:
        return random.choices(self.names, self.weights)[0]

    async def predict(self, batch: Any) -> dict[str, Any]:
        version = self._pick()
        return {"version": version, "outputs": await self.handles[version].predict.remote(batch)}

    async def __call__(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        version = self._pick()
        batch = np.asarray(body["inputs"], dtype=np.float32)
        outputs = await self.handles[version].predict.remote(batch)
        return {"version": version, "outputs": outputs.tolist()}


# -- builders: the same Ray options everywhere, so only the code path differs -----------


def plain_app(path: str, options: dict[str, Any]) -> Application:
    """(a) one version, by hand; HTTP at the app's route prefix (any path)."""
    return OnnxModel.options(**options).bind(path)


def plain_grpc_app(path: str, options: dict[str, Any]) -> Application:
    """(a) over gRPC: ``ModelInfer`` by hand, through Serve's gRPC proxy."""
    return OnnxModelGrpc.options(**options).bind(path)


def plain_batched_app(path: str, options: dict[str, Any]) -> Application:
    """(a+) one version, by hand, with ``@serve.batch``; HTTP at the app's route prefix."""
    return OnnxModelBatched.options(**options).bind(path)


def two_models_batched_app(paths: dict[str, str], weights_pct: dict[str, float],
                           options: dict[str, Any]) -> Application:
    """(a+2) several versions in one replica, each with ``@serve.batch``; HTTP at the prefix."""
    return TwoModelsBatched.options(**options).bind(paths, weights_pct)


def plain_fastapi_app(path: str, options: dict[str, Any]) -> Application:
    """(a') one version, by hand, behind FastAPI; HTTP at ``<prefix>/predict``."""
    return OnnxModelFastAPI.options(**options).bind(path)


def random_split_app(paths: dict[str, str], weights_pct: dict[str, float],
                     options: dict[str, Any], by_reference: bool = True) -> Application:
    """(b) the workaround: an ingress plus one :class:`OnnxModel` deployment per version."""
    versions = {name: OnnxModel.options(name=f"model-{name}", **options).bind(path)
                for name, path in paths.items()}
    return RandomSplit.options(**options).bind(versions, weights_pct, by_reference)
