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


class Counted(LoadedPredictor):
    calls = 0

    async def predict(self, batch):
        self.calls += 1
        return await super().predict(batch)


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
        version = Counted(predictor)
        core = RouterCore(cfg, {"v1": version}, FakeController(), request_id=lambda: "req-1", clock=FakeClock())
        routes.use_core(routes.Served(core, ControlAuth(cfg.control, [])))
        client = TestClient(routes.app, raise_server_exceptions=False)
        client.version = version  # its calls: what the model ran
        return client
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


# -- Triton's classification extension ---------------------------------------------------------

SCORES = np.array([[0.1, 0.7, 0.2, 0.7], [4.0, 1.0, 3.0, 2.0]], dtype=np.float32)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_class_count_answers_the_top_classes_as_triton_does(serve, binary):
    client = serve("Scores")
    tensor = triton_http.InferInput("x", list(SCORES.shape), "FP32")
    tensor.set_data_from_numpy(SCORES, binary_data=binary)
    result = http_infer(client, [tensor], [triton_http.InferRequestedOutput("scores", binary_data=binary,
                                                                            class_count=2)])
    [output] = result.get_response()["outputs"]
    assert (output["datatype"], output["shape"]) == ("BYTES", [2, 2])
    # Highest first; a tie keeps the lower index first.
    # (tritonclient reads BYTES in JSON as str, in binary data as bytes.)
    classes = [[c.decode() if binary else c for c in row] for row in result.as_numpy("scores").tolist()]
    assert classes == [["0.700000:1", "0.700000:3"], ["4.000000:0", "3.000000:2"]]
    # More classes than the output has: all of them; 0: the output itself.
    more = http_infer(client, [tensor], [triton_http.InferRequestedOutput("scores", binary_data=binary,
                                                                          class_count=9)])
    assert more.as_numpy("scores").shape == (2, 4)
    plain = http_infer(client, [tensor], [triton_http.InferRequestedOutput("scores", binary_data=binary)])
    assert plain.as_numpy("scores").tolist() == SCORES.tolist()
    assert "classification" in client.get("/v2").json()["extensions"]


def test_class_count_on_one_output_of_several_leaves_the_others(serve):
    client = serve("Tagged")
    asked = [triton_http.InferRequestedOutput("sum"), triton_http.InferRequestedOutput("label", class_count=1)]
    result = http_infer(client, [x_input(True)], asked)
    assert result.as_numpy("sum").tolist() == [[3.0], [-0.5]]
    assert result.as_numpy("label").tolist() == [[b"1:0"], [b"0:0"]]


@pytest.mark.parametrize(("count", "output", "message"), [
    (-1, "sum", "outputs.0.parameters.classification is -1; it is the number of top classes to answer"),
    ("2", "sum", "outputs.0.parameters.classification is '2'; it is the number of top classes to answer"),
    (True, "sum", "outputs.0.parameters.classification is True; it is the number"),
    (2, "tag", "asks for the top classes of output 'tag', which is BYTES"),
])
def test_a_bad_class_count_is_a_400_before_the_model_runs(serve, count, output, message):
    client = serve("Tagged")
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": X.ravel().tolist()}],
            "outputs": [{"name": output, "parameters": {"classification": count}}]}
    response = client.post("/v2/models/m/infer", json=body)
    assert response.status_code == 400 and message in response.json()["error"]
    assert client.version.calls == 0  # refused before the model ran: nothing served, nothing counted


def test_class_count_over_typed_grpc_answers_bytes_contents(serve):
    serve("Scores")
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=SCORES.shape).contents.fp32_contents.extend(
        SCORES.ravel().tolist())
    request.outputs.add(name="scores").parameters["classification"].int64_param = 1
    context = FakeContext()
    response = asyncio.run(GrpcInference(routes.served()).model_infer(request, context))
    assert context.code is None, context.details
    [output] = response.outputs
    assert (output.datatype, list(output.shape)) == ("BYTES", [2, 1])
    assert list(output.contents.bytes_contents) == [b"0.700000:1", b"4.000000:0"]


# -- Triton's shared-memory extension (not served) ----------------------------------------------

SHARED_MEMORY = "has parameters.shared_memory_region ('region0'): serve-ab does not serve Triton's shared-memory extension"


def test_an_output_asked_into_shared_memory_is_a_400_not_an_answer_in_the_body(serve):
    # Answered in the body with a 200, the client would read its region's old bytes as the answer.
    client = serve("Tagged")
    output = triton_http.InferRequestedOutput("sum")
    output.set_shared_memory("region0", 8)
    body, header_length = triton_http.InferenceServerClient.generate_request_body([x_input(True)], outputs=[output])
    response = client.post("/v2/models/m/infer", content=body,
                           headers={"Inference-Header-Content-Length": str(header_length)})
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(f"outputs.0: output 'sum' {SHARED_MEMORY}")
    assert client.version.calls == 0
    assert "system_shared_memory" not in client.get("/v2").json()["extensions"]


def test_an_input_in_shared_memory_is_a_400_that_says_so(serve):
    client = serve("Tagged")
    tensor = triton_http.InferInput("x", list(X.shape), "FP32")
    tensor.set_shared_memory("region0", X.nbytes)
    body, header_length = triton_http.InferenceServerClient.generate_request_body([tensor])
    assert header_length is None  # no values in the body: all JSON
    response = client.post("/v2/models/m/infer", content=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(f"inputs.0: input 'x' {SHARED_MEMORY}")  # not "data: field required"


@pytest.mark.parametrize("where", ["input", "output"])
def test_shared_memory_over_grpc_is_invalid_argument_naming_it(serve, where):
    import grpc

    client = serve("Tagged")
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=X.shape)
    # As tritonclient.grpc's set_shared_memory sends them.
    if where == "input":
        parameters = tensor.parameters  # and no values: they are in the region
    else:
        request.raw_input_contents.append(X.astype("<f4").tobytes())
        parameters = request.outputs.add(name="sum").parameters
    parameters["shared_memory_region"].string_param = "region0"
    parameters["shared_memory_byte_size"].int64_param = 8
    context = FakeContext()
    response = asyncio.run(GrpcInference(routes.served()).model_infer(request, context))
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    named = "input 'x'" if where == "input" else "outputs.0: output 'sum'"
    assert f"{named} {SHARED_MEMORY}" in context.details
    assert not response.outputs and client.version.calls == 0


@pytest.mark.parametrize(("datatype", "values", "error"), [
    ("UINT64", [[1, 2**64]], "input 'x' holds integers beyond UINT64's range (one has 20 digits)"),
    ("UINT64", [[1, -2**64]], "input 'x' holds integers beyond UINT64's range (one has 20 digits)"),
    ("UINT64", [[1, None]], "input 'x' must hold numbers (UINT64); got values of type 'object'"),
])
def test_json_integers_past_64_bits_are_a_400_that_says_so(serve, datatype, values, error):
    # numpy reads them as Python ints in an object array: the 400 said "got 'object'".
    client = serve("EchoUint64")
    body = {"inputs": [{"name": "x", "datatype": datatype, "shape": [1, 2], "data": values}]}
    response = client.post("/v2/models/m/infer", json=body)
    assert response.status_code == 400 and response.json()["error"] == error
    assert client.version.calls == 0


@pytest.mark.parametrize("values", [[[2**64, 1]], [[-(2**64), 0.5]], [[10**20, 1]]])
def test_json_integers_past_64_bits_for_a_float_input_are_numbers_like_any(serve, values):
    # A float input's range goes far past 64-bit integers (FP32 to 3.4e38), and JavaScript writes
    # 1e20 as 100000000000000000000: such a JSON integer was refused as "beyond FP32's range".
    client = serve("Tagged")
    expected = np.float32(float(values[0][0]) + values[0][1])
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": values}],
            "outputs": [{"name": "sum"}]}
    response = client.post("/v2/models/m/infer", json=body)
    assert response.status_code == 200, response.text
    assert np.float32(response.json()["outputs"][0]["data"][0]) == expected
    response = client.post("/predict", json={"inputs": values})
    assert response.status_code == 200, response.text
    assert np.float32(response.json()["outputs"]["sum"][0][0]) == expected
    # Past the input's float range it is still refused, saying so.
    body["inputs"][0]["data"] = [[10**39, 1]]
    response = client.post("/v2/models/m/infer", json=body)
    assert response.status_code == 400
    assert response.json()["error"] == "input 'x' holds integers beyond FP32's range (one has 40 digits)"
