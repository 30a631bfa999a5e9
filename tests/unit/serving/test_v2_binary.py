"""The binary tensor data extension on the V2 routes: raw bodies through httpx (TestClient), and
tritonclient itself against the app on a real uvicorn server in a thread, over fakes: no Ray."""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serve_ab.config import parse_experiment
from serve_ab.serving import http as routes
from serve_ab.serving.core.auth import ControlAuth, NamedToken, Role
from serve_ab.serving.core.router import RouterCore
from tests.support.fakes import DIGITS_INPUT, DIGITS_OUTPUT, FakeClock, FakeController, FakeVersion

QA_TOKEN = "unit-qa-token-0123"
MAX_BODY_BYTES = 8192
ROWS = np.random.default_rng(7).random((3, 64), dtype=np.float32) * 16


class ScoringVersion(FakeVersion):
    """Answers softmax scores of a fixed projection: numbers with every bit in use, so a
    round trip through text or a wrong dtype would show."""

    def __init__(self, seed: int):
        super().__init__()
        self.weights = np.random.default_rng(seed).normal(size=(64, 10)).astype(np.float32)

    async def predict(self, batch: np.ndarray) -> np.ndarray:
        logits = batch.astype(np.float32) @ self.weights / 64
        scores = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (scores / scores.sum(axis=1, keepdims=True)).astype(np.float32)


def use_app() -> None:
    cfg = parse_experiment({
        "model": "digits",
        "versions": [{"name": "v1", "path": "a.onnx", "backend": "onnx"},
                     {"name": "v2", "path": "b.pt2", "backend": "torch"}],
        "weights": {"v1": 50, "v2": 50},
        "assignment": {"key": "json", "field": "user_id", "salt": "unit"},
        "http": {"max_body_bytes": MAX_BODY_BYTES},
        "pin": {"enabled": True},
        "analysis": {"metrics": [{"name": "correct", "kind": "conversion"}]},  # answers carry tokens
    })
    clock = FakeClock()
    core = RouterCore(cfg, {"v1": ScoringVersion(1), "v2": ScoringVersion(2)}, FakeController(),
                      request_id=lambda: "req-1", interface=(DIGITS_INPUT, DIGITS_OUTPUT), clock=clock)
    core.use_feedback_key(b"unit-test-feedback-key-32-bytes!")
    routes.use_core(routes.Served(core, ControlAuth(cfg.control, [NamedToken("qa", Role.QA, QA_TOKEN)])))


@pytest.fixture
def client():
    use_app()
    try:
        yield TestClient(routes.app, raise_server_exceptions=False)
    finally:
        routes.use_core(None)


def json_answer(client: TestClient, rows: np.ndarray, user: str = "alice", path: str = "/v2/models/digits/infer",
                headers: dict | None = None) -> tuple[np.ndarray, dict]:
    """The plain JSON endpoint's answer: the reference every binary answer must equal."""
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                        "data": rows.ravel().tolist()}], "parameters": {"user_id": user}}
    response = client.post(path, json=body, headers=headers)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"]), response.json()


def without_token(answer: dict) -> dict:
    """An answer less its feedback token, which differs in every answer (its own nonce)."""
    parameters = {k: v for k, v in answer["parameters"].items() if k != "feedback_token"}
    return {**answer, "parameters": parameters}


def binary_body(rows: np.ndarray, **parameters) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                                     "parameters": {"binary_data_size": rows.nbytes}}],
                         "parameters": {"user_id": "alice", **parameters}}).encode()
    return header + rows.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                     "content-type": "application/octet-stream"}


def test_server_metadata_lists_the_extension(client):
    assert "binary_tensor_data" in client.get("/v2").json()["extensions"]


@pytest.mark.parametrize("binary_output", [False, True])
def test_raw_binary_request_answers_the_json_endpoints_numbers(client, binary_output):
    expected, reference = json_answer(client, ROWS)
    content, headers = binary_body(ROWS, **({"binary_data_output": True} if binary_output else {}))
    response = client.post("/v2/models/digits/infer", content=content, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["x-model-version"] == reference["model_version"]
    if not binary_output:
        assert response.headers["content-type"] == "application/json"
        assert "inference-header-content-length" not in response.headers
        assert without_token(response.json()) == without_token(reference)
        return
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": expected.nbytes}
    assert "data" not in header["outputs"][0]
    assert without_token(header)["parameters"] == without_token(reference)["parameters"]
    assert response.headers["x-feedback-token"] == header["parameters"]["feedback_token"]
    got = np.frombuffer(response.content[length:], dtype="<f4").reshape(header["outputs"][0]["shape"])
    assert got.tobytes() == expected.tobytes()


def test_a_json_request_may_ask_for_a_binary_output(client):
    expected, _ = json_answer(client, ROWS[:1])
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": ROWS[0].tolist()}],
            "parameters": {"user_id": "alice"},
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}
    response = client.post("/v2/models/digits/infer", json=body)
    length = int(response.headers["inference-header-content-length"])
    assert np.frombuffer(response.content[length:], dtype="<f4").tobytes() == expected.tobytes()


def test_the_pinned_route_takes_binary_too(client):
    auth = {"authorization": f"Bearer {QA_TOKEN}"}
    path = "/v2/models/digits/versions/v2/infer"
    expected, _ = json_answer(client, ROWS, path=path, headers=auth)
    content, headers = binary_body(ROWS, binary_data_output=True)
    response = client.post(path, content=content, headers={**headers, **auth})
    assert response.status_code == 200 and response.headers["x-model-version"] == "v2"
    length = int(response.headers["inference-header-content-length"])
    assert response.content[length:] == expected.tobytes()
    assert client.post(path, content=content, headers=headers).status_code == 401  # pinning still needs QA


@pytest.mark.parametrize("case, header_length, tail, message", [
    ("non-integer", "ten", b"", "Inference-Header-Content-Length is 'ten'; expected"),
    ("negative", "-1", b"", "a length cannot be negative"),
    ("past the body", "100000", b"", "but the whole body is only"),
    ("sizes do not add up", None, b"\x00" * 4, "bytes follow the JSON header, but the inputs' binary_data_size add up to 256"),
    ("cut short", None, -4, "252 bytes follow the JSON header"),
])
def test_malformed_binary_requests_are_400s(client, case, header_length, tail, message):
    content, headers = binary_body(ROWS[:1])
    if isinstance(tail, int):
        content = content[:tail]
    else:
        content += tail
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = header_length
    response = client.post("/v2/models/digits/infer", content=content, headers=headers)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_binary_inputs_still_meet_the_models_shape_and_the_body_limit(client):
    narrow = np.zeros((1, 32), dtype=np.float32)
    content, headers = binary_body(narrow)
    response = client.post("/v2/models/digits/infer", content=content, headers=headers)
    assert response.status_code == 400 and "expected 64" in response.json()["error"]
    big = np.zeros((40, 64), dtype=np.float32)  # 10,240 bytes of tensor data: over 8 KiB
    content, headers = binary_body(big)
    response = client.post("/v2/models/digits/infer", content=content, headers=headers)
    assert response.status_code == 413 and f"at most {MAX_BODY_BYTES}" in response.json()["error"]


def test_a_bytes_input_is_refused_for_a_numeric_model(client):
    raw = b"\x02\x00\x00\x00hi"
    header = json.dumps({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    response = client.post("/v2/models/digits/infer", content=header + raw,
                           headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400
    assert "has datatype BYTES; this model takes FP32" in response.json()["error"]


# -- tritonclient itself, over real HTTP ----------------------------------------------------

@pytest.fixture
def server():
    """The app on uvicorn in a thread, on a port the kernel chose; yields 'host:port'."""
    uvicorn = pytest.importorskip("uvicorn")
    use_app()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(routes.app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield "127.0.0.1:%d" % sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        routes.use_core(None)


@pytest.mark.parametrize("binary_input", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_output", [True, False, None], ids=["binary-out", "json-out", "default-out"])
def test_tritonclient_in_every_mode_answers_the_json_endpoints_numbers(server, binary_input, binary_output):
    httpclient = pytest.importorskip("tritonclient.http")
    expected, reference = json_answer(TestClient(routes.app), ROWS)
    client = httpclient.InferenceServerClient(url=server)
    try:
        assert client.is_server_ready() and client.is_model_ready("digits")
        tensor = httpclient.InferInput("input", list(ROWS.shape), "FP32")
        tensor.set_data_from_numpy(ROWS, binary_data=binary_input)
        # None: no outputs named, so tritonclient asks for all of them as binary_data_output.
        outputs = None if binary_output is None else [
            httpclient.InferRequestedOutput("probabilities", binary_data=binary_output)]
        result = client.infer("digits", [tensor], outputs=outputs, parameters={"user_id": "alice"})
        answer = result.get_response()
        assert answer["model_version"] == reference["model_version"]
        assert ("data" in answer["outputs"][0]) is (binary_output is False)
        got = result.as_numpy("probabilities")
        assert got.dtype == np.float32 and got.tobytes() == expected.tobytes()
    finally:
        client.close()


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_tritonclient_with_a_compressed_request_body(server, compression):
    httpclient = pytest.importorskip("tritonclient.http")
    expected, _ = json_answer(TestClient(routes.app), ROWS)
    client = httpclient.InferenceServerClient(url=server)
    try:
        tensor = httpclient.InferInput("input", list(ROWS.shape), "FP32")
        tensor.set_data_from_numpy(ROWS)
        result = client.infer("digits", [tensor], parameters={"user_id": "alice"},
                              request_compression_algorithm=compression)
        assert result.as_numpy("probabilities").tobytes() == expected.tobytes()
    finally:
        client.close()


def test_tritonclient_on_a_pinned_version_and_its_errors(server):
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    auth = {"authorization": f"Bearer {QA_TOKEN}"}
    expected, _ = json_answer(TestClient(routes.app), ROWS, path="/v2/models/digits/versions/v1/infer", headers=auth)
    client = httpclient.InferenceServerClient(url=server)
    try:
        tensor = httpclient.InferInput("input", list(ROWS.shape), "FP32")
        tensor.set_data_from_numpy(ROWS)
        result = client.infer("digits", [tensor], model_version="v1", headers=auth)
        assert result.get_response()["model_version"] == "v1"
        assert result.as_numpy("probabilities").tobytes() == expected.tobytes()
        wrong = httpclient.InferInput("input", [1, 64], "FP64")
        wrong.set_data_from_numpy(np.zeros((1, 64), dtype=np.float64))
        with pytest.raises(InferenceServerException, match="has datatype FP64; this model takes FP32") as caught:
            client.infer("digits", [wrong])
        assert caught.value.status() == "400"
    finally:
        client.close()


def test_binary_bodies_of_any_shape_give_no_5xx(client):
    """hypothesis-made headers, sizes, datatypes and tails: every answer is below 500."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    sizes = st.none() | st.integers(-3, 600) | st.sampled_from([2**63, 2**70, True, "8", 1.5])
    tensor = st.fixed_dictionaries({
        "name": st.sampled_from(["input", "pixels"]),
        "shape": st.lists(st.integers(-1, 2**40) | st.integers(0, 70), max_size=3),
        "datatype": st.sampled_from(["FP32", "FP64", "INT64", "BOOL", "BYTES", "BF16", "FLOAT"]),
        "parameters": st.fixed_dictionaries({"binary_data_size": sizes}),
    }, optional={"data": st.lists(st.floats(allow_nan=False), max_size=70)})
    header = st.fixed_dictionaries({"inputs": st.lists(tensor, max_size=3)}, optional={
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_output": st.booleans() | st.integers()}),
        "outputs": st.lists(st.fixed_dictionaries(
            {"name": st.just("probabilities")},
            optional={"parameters": st.fixed_dictionaries({"binary_data": st.booleans() | st.text(max_size=3)})}),
            max_size=2),
    })

    @settings(max_examples=150, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(header=header, tail=st.binary(max_size=600), shift=st.integers(-3, 3) | st.sampled_from(["x", "-0", " 1"]))
    def fuzz(header, tail, shift):
        text = json.dumps(header).encode()
        length = str(len(text) + shift) if isinstance(shift, int) else shift
        response = client.post("/v2/models/digits/infer", content=text + tail,
                               headers={"Inference-Header-Content-Length": length})
        assert response.status_code < 500, (header, tail, length, response.text)

    fuzz()
