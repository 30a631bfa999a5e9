"""``serve run configs/ab.yaml`` with the real V2 clients: tritonclient.grpc against Ray Serve's
gRPC proxy, and tritonclient.http (binary tensor data and JSON) against its HTTP proxy, answers
compared with the plain JSON endpoint's.

tritonclient[grpc] pins protobuf < 7 while Ray needs protobuf 7, so the client runs in a
virtual environment of its own (``.venv-grpc-client`` at the repository root, or
``SERVE_AB_GRPC_CLIENT_VENV``), made once with ``python -m venv`` and pip and kept. When it
cannot be made (no network, no pip index) the test skips, or fails under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.e2e.test_serve_run import on_free_ports, start_serve_run, stop_serve_run, wait_until_ready
from tests.integration.conftest import DIGIT_ROW
from tests.support.polling import wait_for

CLIENT_VENV = Path(os.environ.get("SERVE_AB_GRPC_CLIENT_VENV", REPO_ROOT / ".venv-grpc-client"))
CLIENT_PACKAGES = ["tritonclient[grpc,http]>=2.50,<3", "numpy"]
CLIENT_SCRIPT = REPO_ROOT / "tests" / "support" / "grpc_client.py"
HTTP_CLIENT_SCRIPT = REPO_ROOT / "tests" / "support" / "triton_http_client.py"
QA_TOKEN = "e2e-grpc-qa-token-0123"


def _unavailable(why: str) -> None:
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"CI must run the gRPC client test, but {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def client_python() -> Path:
    """The client venv's python, made (once) if it is missing."""
    python = CLIENT_VENV / "bin" / "python"
    probe = [str(python), "-c", "import tritonclient.grpc, tritonclient.http, numpy"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    steps = [[sys.executable, "-m", "venv", str(CLIENT_VENV)],
             [str(python), "-m", "pip", "install", "-q", *CLIENT_PACKAGES]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            _unavailable(f"the gRPC client's venv ({CLIENT_VENV}) could not be made: {' '.join(step)} "
                         f"failed:\n{(done.stdout + done.stderr)[-2000:]}")
    if subprocess.run(probe, capture_output=True).returncode != 0:
        _unavailable(f"the gRPC client's venv ({CLIENT_VENV}) has no working tritonclient.grpc")
    return python


@pytest.fixture(scope="module")
def served_grpc(model_repo, tmp_path_factory):
    """``serve run configs/ab.yaml`` as shipped (gRPC included), on free ports, with a QA token
    and one feedback metric (as shipped it takes no feedback, so its answers carry no token);
    one run for the module's tests (a run costs 25-40 s to start), which only read from it."""
    tmp_path = tmp_path_factory.mktemp("grpc")
    config = yaml.safe_load((REPO_ROOT / "configs" / "ab.yaml").read_text())
    assert "grpc_options" in config, "configs/ab.yaml serves gRPC (grpc_options)"
    config["applications"][0]["args"]["analysis"] = {"metrics": [{"name": "correct", "kind": "conversion"}]}
    # Not the checkout's .serve-ab/state.sqlite, which a `serve run configs/ab.yaml` may hold.
    config["applications"][0]["args"]["controller"] = {"state_path": str(tmp_path / "state.sqlite")}
    port = on_free_ports(config)
    config_path = tmp_path / "ab.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "serve.log"
    # The replicas and the gRPC proxy import serve_ab from this checkout, whatever is installed.
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
           "SERVE_AB_QA_TOKEN": QA_TOKEN}
    process = start_serve_run(config_path, log_path, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(process, base, log_path)
        yield base, f"127.0.0.1:{config['grpc_options']['port']}", log_path, Path(process.ray_tmpdir)
    finally:
        stop_serve_run(process)


def router_log_lines(ray_tmpdir: Path) -> list[str]:
    """The lines of the router replicas' log files of a ``serve run`` with its own RAY_TMPDIR
    (``session_latest`` only: the session's own folder is the same one under its dated name)."""
    return [line for path in ray_tmpdir.glob("ray/session_latest/logs/serve/replica_*_Router_*.log")
            for line in path.read_text(errors="replace").splitlines()]


def test_tritonclient_grpc_gets_the_json_endpoints_answers(client_python, served_grpc):
    base, grpc_url, log_path, ray_tmpdir = served_grpc
    rows = [DIGIT_ROW, list(reversed(DIGIT_ROW))]
    done = subprocess.run([str(client_python), str(CLIENT_SCRIPT), "--url", grpc_url, "--model", "digits",
                           "--user", "grpc-alice", "--rows", json.dumps(rows), "--pin", "v2", "--token", QA_TOKEN],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:] + "\n" + log_path.read_text()[-4000:]
    got = json.loads(done.stdout)
    plain = httpx.post(base + "/predict", json={"inputs": rows, "user_id": "grpc-alice"}, timeout=30).json()

    assert got["live"] and got["ready"] and got["model_ready"]
    assert got["server"]["name"] == "serve-ab"
    assert got["model"]["versions"] == ["v1", "v2"] and got["model"]["inputs"][0]["datatype"] == "FP32"
    # Raw tensor data (tritonclient's way) and typed contents: the same version and outputs as JSON.
    for way in ("raw", "typed"):
        assert got[way]["version"] == plain["version"], way
        assert got[way]["outputs"] == plain["outputs"], way  # float32 both ways: equal, not close
    assert got["raw"]["parameters"]["feedback_token"]["string_param"]
    assert got["typed"]["raw_output_contents"] == 0  # typed in, typed out
    assert got["typed"]["trailing"]["x-model-version"] == plain["version"]
    refusals = got["refusals"]
    assert refusals["unknown_model"]["code"] == "NOT_FOUND" and "unknown model 'nope'" in refusals["unknown_model"]["message"]
    assert refusals["bad_shape"]["code"] == "INVALID_ARGUMENT" and "[n, 64]" in refusals["bad_shape"]["message"]
    assert refusals["unknown_version"]["code"] == "NOT_FOUND"
    assert refusals["pin_without_token"]["code"] == "UNAUTHENTICATED"
    assert got["pinned"]["version"] == "v2"

    # The call's access line in the router's log names its version, with its request id.
    request_id = got["raw"]["parameters"]["request_id"]["string_param"]
    (line,) = wait_for(lambda: [ln for ln in router_log_lines(ray_tmpdir) if request_id in ln] or None,
                       f"a line with request id {request_id} in the router's log under {ray_tmpdir}", timeout_s=30)
    # Ray Serve's line for a gRPC call: "CALL <app> OK 3.1ms", and the version.
    assert " OK " in line and line.endswith(f"ms version={got['raw']['version']}"), line


def test_tritonclient_http_binary_and_json_get_the_json_endpoints_answers(client_python, served_grpc):
    base, _, log_path, _ = served_grpc
    rows = [DIGIT_ROW, list(reversed(DIGIT_ROW))]
    done = subprocess.run([str(client_python), str(HTTP_CLIENT_SCRIPT), "--url", base.removeprefix("http://"),
                           "--model", "digits", "--user", "http-bob", "--rows", json.dumps(rows)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:] + "\n" + log_path.read_text()[-4000:]
    got = json.loads(done.stdout)
    plain = httpx.post(base + "/predict", json={"inputs": rows, "user_id": "http-bob"}, timeout=30).json()
    assert got["live"] and got["ready"] and got["model_ready"]
    assert got["binary"]["binary_output"] is True and got["json"]["binary_output"] is False
    for mode in ("binary", "json", "gzip", "deflate"):
        assert got[mode]["version"] == plain["version"], mode
        assert got[mode]["outputs"] == plain["outputs"], mode


def test_a_corrupt_message_is_invalid_argument_and_harms_nothing(served_grpc):
    """Bytes that do not parse as protobuf (a truncated message, a broken proxy) get
    INVALID_ARGUMENT naming the message type, not gRPC's UNKNOWN for a server fault, and so
    does an inference request with a parameter key twice; the replica answers the next call.
    grpcio from this venv (Ray's), sending raw bytes."""
    import grpc  # Ray's dependency; the tritonclient venv is not needed for raw bytes

    base, grpc_url, log_path, ray_tmpdir = served_grpc
    with grpc.insecure_channel(grpc_url) as channel:
        for method in ("ModelInfer", "ModelMetadata", "ModelReady"):
            call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")  # bytes in, bytes out
            with pytest.raises(grpc.RpcError) as refused:
                call(b"\x0a\xff\xff\xff\xff\x0f", timeout=30)  # field 1, a length past the end
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, refused.value)
            assert f"{method}Request" in refused.value.details(), refused.value.details()
        # A parameter sent twice: protobuf alone would serve alice's request as bob's.
        from serve_ab.api.grpc import grpc_predict_v2_pb2 as pb
        alice, bob = pb.ModelInferRequest(model_name="digits"), pb.ModelInferRequest()
        tensor = alice.inputs.add(name="input", datatype="FP32", shape=[1, len(DIGIT_ROW)])
        tensor.contents.fp32_contents.extend(DIGIT_ROW)
        alice.parameters["user_id"].string_param = "alice"
        bob.parameters["user_id"].string_param = "bob"
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as refused:
            infer(alice.SerializeToString() + bob.SerializeToString(), timeout=30,
                  metadata=[("request_id", "grpc-duplicate-key")])
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
        assert refused.value.details() == 'duplicate key "user_id" in parameters; send each key once'
        answer = pb.ModelInferResponse.FromString(infer(alice.SerializeToString(), timeout=30))
        assert answer.model_version in ("v1", "v2"), answer
        live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=30)
    assert live == b"\x08\x01"  # ServerLiveResponse(live=True)
    # Its access line shows the code it was answered with, where Ray's own says OK.
    (line,) = wait_for(lambda: [ln for ln in router_log_lines(ray_tmpdir) if "grpc-duplicate-key" in ln] or None,
                       f"the refused call's line in the router's log under {ray_tmpdir}", timeout_s=30)
    assert " INVALID_ARGUMENT " in line and line.endswith("ms version=-"), line
    plain = httpx.post(base + "/predict", json={"inputs": [DIGIT_ROW], "user_id": "after-corrupt"}, timeout=30)
    assert plain.status_code == 200, plain.text + log_path.read_text()[-2000:]
