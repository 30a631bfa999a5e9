"""tritonclient.http against a running app, as a user's process would call it: health,
metadata, and infer in the client's default mode (binary tensor data both ways) and in JSON,
with the request body as sent and compressed (gzip, deflate).

Runs in the gRPC client's virtual environment (tests/e2e/test_grpc.py makes it with
tritonclient[http,grpc]); prints one JSON object.

    python tests/support/triton_http_client.py --url 127.0.0.1:8000 --model digits --user alice \
        --rows '[[0.0, ...]]'
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import tritonclient.http as httpclient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="host:port of the HTTP proxy")
    parser.add_argument("--model", required=True)
    parser.add_argument("--user", required=True, help="the assignment key, sent as parameters.user_id")
    parser.add_argument("--rows", required=True, help="the input batch as JSON")
    args = parser.parse_args()
    batch = np.asarray(json.loads(args.rows), dtype=np.float32)
    client = httpclient.InferenceServerClient(url=args.url)
    metadata = client.get_model_metadata(args.model)
    input_name, output_name = metadata["inputs"][0]["name"], metadata["outputs"][0]["name"]

    def infer(binary: bool, compression: str | None = None) -> dict:
        tensor = httpclient.InferInput(input_name, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=binary)
        wanted = httpclient.InferRequestedOutput(output_name, binary_data=binary)
        result = client.infer(args.model, [tensor], outputs=[wanted], parameters={"user_id": args.user},
                              request_compression_algorithm=compression)
        response = result.get_response()
        return {"version": response["model_version"], "outputs": result.as_numpy(output_name).tolist(),
                "binary_output": "binary_data_size" in (response["outputs"][0].get("parameters") or {})}

    print(json.dumps({
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(args.model),
        "model": metadata,
        "binary": infer(binary=True),  # tritonclient's default: raw bytes in and out
        "json": infer(binary=False),
        # The body compressed, as Triton's and KServe's servers take it (Content-Encoding).
        "gzip": infer(binary=True, compression="gzip"),
        "deflate": infer(binary=False, compression="deflate"),
    }))


if __name__ == "__main__":
    main()
