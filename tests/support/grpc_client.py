"""A real Open Inference Protocol client against a running app's gRPC port; prints JSON.

Runs in a virtual environment of its own (tritonclient[grpc] pins a protobuf older than the
one Ray needs; see tests/e2e/test_grpc.py), so it imports nothing of serve_ab or the tests:
tritonclient for what a user would call (health, metadata, infer with raw tensor data) and
the stubs tritonclient ships for what it cannot send (typed ``contents``, raw metadata).

    python grpc_client.py --url 127.0.0.1:9000 --model digits --user alice --rows '[[0, ...]]'
"""

from __future__ import annotations

import argparse
import json

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException


def refusal(call) -> dict:
    """The status a call ends with: {"code": "NOT_FOUND", "message": ...} or {"code": "OK"}."""
    try:
        call()
    except InferenceServerException as err:
        return {"code": str(err.status()).removeprefix("StatusCode."), "message": err.message()}
    except grpc.RpcError as err:
        return {"code": err.code().name, "message": err.details()}
    return {"code": "OK"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="host:port of the gRPC proxy")
    parser.add_argument("--model", required=True)
    parser.add_argument("--user", required=True, help="the assignment key, sent as parameters.user_id")
    parser.add_argument("--rows", required=True, help="the input batch as JSON, e.g. [[0.0, ...64 numbers]]")
    parser.add_argument("--pin", help="a version to pin, with --token")
    parser.add_argument("--token", help="a QA or operator token for the pin")
    args = parser.parse_args()
    batch = np.asarray(json.loads(args.rows), dtype=np.float32)
    client = grpcclient.InferenceServerClient(url=args.url)
    metadata = client.get_model_metadata(args.model, as_json=True)
    input_name, output_name = metadata["inputs"][0]["name"], metadata["outputs"][0]["name"]

    def infer(rows: np.ndarray, model: str = args.model, version: str = "", headers: dict | None = None):
        tensor = grpcclient.InferInput(input_name, list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)  # raw_input_contents, tritonclient's only way
        return client.infer(model, [tensor], model_version=version, parameters={"user_id": args.user},
                            headers=headers)

    raw = infer(batch)
    raw_response = raw.get_response(as_json=True)
    out: dict = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(args.model),
        "server": client.get_server_metadata(as_json=True),
        "model": metadata,
        "raw": {"version": raw_response["model_version"], "outputs": raw.as_numpy(output_name).tolist(),
                "parameters": raw_response.get("parameters", {})},
    }

    # Typed contents (fp32_contents), through the stub: tritonclient always sends raw bytes.
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(args.url))
    request = service_pb2.ModelInferRequest(model_name=args.model)
    request.parameters["user_id"].string_param = args.user
    tensor = request.inputs.add(name=input_name, datatype="FP32", shape=list(batch.shape))
    tensor.contents.fp32_contents.extend(batch.ravel().tolist())
    typed, call = stub.ModelInfer.with_call(request)
    out["typed"] = {"version": typed.model_version, "raw_output_contents": len(typed.raw_output_contents),
                    "outputs": np.array(typed.outputs[0].contents.fp32_contents).reshape(
                        list(typed.outputs[0].shape)).tolist(),
                    "trailing": dict(call.trailing_metadata() or ())}

    out["refusals"] = {
        "unknown_model": refusal(lambda: infer(batch, model="nope")),
        "bad_shape": refusal(lambda: infer(batch.reshape(-1, 32))),
        "unknown_version": refusal(lambda: infer(batch, version="v9")),
        "pin_without_token": refusal(lambda: infer(batch, version=args.pin or "v1")),
    }
    if args.pin:
        pinned = infer(batch, version=args.pin, headers={"authorization": f"Bearer {args.token}"})
        out["pinned"] = {"version": pinned.get_response(as_json=True)["model_version"]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
