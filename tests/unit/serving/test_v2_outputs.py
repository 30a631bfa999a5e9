"""Which outputs a V2 answer holds, and values that must reach the model and the client exactly:
requests built and answers read by tritonclient's own code (HTTP) and by the protocol's
messages (gRPC), over python-backend models in the router's routes (no Ray)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import tritonclient.http as triton_http
from fastapi.testclient import TestClient

from serve_ab.api.grpc import grpc_predict_v2_pb2 as pb
from serve_ab.backends import load_predictor
from serve_ab.config import parse_experiment
from serve_ab.serving import http as routes
from serve_ab.serving.core.auth import ControlAuth
from serve_ab.serving.core.router import RouterCore
from serve_ab.serving.grpc_v2 import GrpcInference
from tests.support.fakes import FakeClock, FakeController
from tests.unit.serving.test_any_model_http import LoadedPredictor
from tests.unit.serving.test_grpc_v2 import FakeContext

MODELS = "tests.unit.backends.python_models"
NOT_UTF8 = b"\x80\xfe\xff\x00"
X = np.array([[1.0, 2.0], [-1.0, 0.5]], dtype=np.float32)


@pytest.fixture
def serve():
    """``serve("Tagged")``: the routes over one python-backend version of that class."""
    def make(class_name: str) -> TestClient:
        cfg = parse_experiment({
            "model": "m", "versions": [{"name": "v1", "backend": "python", "class": f"{MODELS}:{class_name}"}],
            "weights": {"v1": 100}, "assignment": {"key": "json", "field": "user_id", "salt": "unit"},
            "feedback": {"require_token": False},
        })
        predictor = load_predictor(None, "python", class_path=f"{MODELS}:{class_name}", device="cpu")
        predictor.load()
        core = RouterCore(cfg, {"v1": LoadedPredictor(predictor)}, FakeController(),
                          request_id=lambda: "req-1", clock=FakeClock())
        routes.use_core(routes.Served(core, ControlAuth(cfg.control, [])))
        return TestClient(routes.app, raise_server_exceptions=False)
    yield make
    routes.use_core(None)


def http_infer(client: TestClient, inputs, outputs=None) -> triton_http.InferResult:
    body, header_length = triton_http.InferenceServerClient.generate_request_body(inputs, outputs=outputs)
    headers = {} if header_length is None else {"Inference-Header-Content-Length": str(header_length)}
    response = client.post("/v2/models/m/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    length = response.headers.get("Inference-Header-Content-Length")
    return triton_http.InferResult.from_response_body(response.content, header_length=length and int(length))


def x_input(binary: bool) -> triton_http.InferInput:
    tensor = triton_http.InferInput("x", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X, binary_data=binary)
    return tensor


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_an_http_answer_holds_only_the_outputs_asked_for_in_their_order(serve, binary):
    client = serve("Tagged")
    asked = [triton_http.InferRequestedOutput(name, binary_data=binary) for name in ("label", "sum")]
    result = http_infer(client, [x_input(binary)], asked)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label", "sum"]
    assert result.as_numpy("label").tolist() == [[1], [0]]
    assert result.as_numpy("sum").tolist() == [[3.0], [-0.5]]
    assert result.as_numpy("tag") is None
    # Without outputs, all of them, in the model's order.
    every = http_infer(client, [x_input(binary)])
    assert [o["name"] for o in every.get_response()["outputs"]] == ["sum", "label", "tag"]


def test_an_output_asked_for_twice_is_a_400_naming_it(serve):
    client = serve("Tagged")
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": X.ravel().tolist()}],
            "outputs": [{"name": "sum"}, {"name": "label"}, {"name": "sum"}]}
    response = client.post("/v2/models/m/infer", json=body)
    assert response.status_code == 400
    assert response.json()["error"] == "output(s) ['sum'] asked for more than once in outputs; name each once"


def test_bytes_that_are_not_utf8_come_exactly_as_binary_data_over_http(serve):
    client = serve("Tagged")
    result = http_infer(client, [x_input(True)], [triton_http.InferRequestedOutput("tag", binary_data=True)])
    assert result.as_numpy("tag").ravel().tolist() == [b"ok", NOT_UTF8]


@pytest.mark.parametrize("values", [
    [[1, 2**63 + 1]],                 # numpy reads this list as float64: ...809 would be ...808
    [[0, 9223372036854776833]],
    [[1, 2**64 - 1]],                 # as float64 it is 2**64, outside UINT64: was refused
])
def test_uint64_values_past_2_63_in_json_reach_the_model_exactly(serve, values):
    client = serve("EchoUint64")
    body = {"inputs": [{"name": "x", "datatype": "UINT64", "shape": [1, 2], "data": values}],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
    response = client.post("/v2/models/m/infer", content=json.dumps(body).encode())
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    result = triton_http.InferResult.from_response_body(response.content, header_length=length)
    assert result.as_numpy("y").tolist() == values
    # The same over /predict.
    plain = client.post("/predict", json={"inputs": values}).json()
    assert plain["outputs"] == values


@pytest.mark.parametrize(("values", "error"), [
    ([[-1, 2**63 + 1]], "holds values outside UINT64's range [0, 18446744073709551615]"),
    ([[1.5, 2**63 + 1]], "expects integers (UINT64); got fractions"),
])
def test_uint64_values_that_do_not_fit_are_still_a_400(serve, values, error):
    client = serve("EchoUint64")
    body = {"inputs": [{"name": "x", "datatype": "UINT64", "shape": [1, 2], "data": values}]}
    response = client.post("/v2/models/m/infer", json=body)
    assert response.status_code == 400 and error in response.json()["error"]


# -- gRPC --------------------------------------------------------------------------------------

def grpc_infer(raw: bool, outputs: tuple[str, ...] = ()) -> pb.ModelInferResponse:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=X.shape)
    if raw:
        request.raw_input_contents.append(X.astype("<f4").tobytes())
    else:
        tensor.contents.fp32_contents.extend(X.ravel().tolist())
    for name in outputs:
        request.outputs.add(name=name)
    context = FakeContext()
    response = asyncio.run(GrpcInference(routes.served()).model_infer(request, context))
    assert context.code is None, context.details
    return response


def test_a_typed_grpc_request_gets_bytes_outputs_typed_and_exact(serve):
    serve("Tagged")
    response = grpc_infer(raw=False)
    assert not response.raw_output_contents
    by_name = {o.name: o for o in response.outputs}
    assert list(by_name["tag"].contents.bytes_contents) == [b"ok", NOT_UTF8]
    assert list(by_name["label"].contents.int64_contents) == [1, 0]
    assert list(by_name["sum"].contents.fp32_contents) == [3.0, -0.5]


def test_a_raw_grpc_request_gets_raw_outputs_with_bytes_exact(serve):
    serve("Tagged")
    response = grpc_infer(raw=True, outputs=("tag", "label"))
    assert [o.name for o in response.outputs] == ["tag", "label"]
    assert len(response.raw_output_contents) == 2
    length = len(NOT_UTF8).to_bytes(4, "little")
    assert response.raw_output_contents[0] == (2).to_bytes(4, "little") + b"ok" + length + NOT_UTF8
    assert np.frombuffer(response.raw_output_contents[1], dtype="<i8").tolist() == [1, 0]


def test_a_typed_grpc_request_gets_only_the_outputs_it_asks_for(serve):
    serve("Tagged")
    response = grpc_infer(raw=False, outputs=("label",))
    assert [o.name for o in response.outputs] == ["label"]
    assert list(response.outputs[0].contents.int64_contents) == [1, 0]


def test_uint64_typed_contents_past_2_63_reach_the_model_exactly(serve):
    serve("EchoUint64")
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="UINT64", shape=[1, 2]).contents.uint64_contents.extend([1, 2**63 + 1])
    context = FakeContext()
    response = asyncio.run(GrpcInference(routes.served()).model_infer(request, context))
    assert context.code is None, context.details
    assert list(response.outputs[0].contents.uint64_contents) == [1, 2**63 + 1]


def test_tritonclients_class_count_is_a_400_not_the_plain_tensor(serve):
    client = serve("Tagged")
    body, header_length = triton_http.InferenceServerClient.generate_request_body(
        [x_input(True)], outputs=[triton_http.InferRequestedOutput("sum", class_count=2)])
    response = client.post("/v2/models/m/infer", content=body,
                           headers={"Inference-Header-Content-Length": str(header_length)})
    assert response.status_code == 400
    assert response.json()["error"].startswith("outputs.0.parameters.classification is 2, but serve-ab does not "
                                                "implement Triton's classification extension")
