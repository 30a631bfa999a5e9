#!/usr/bin/env bash
# Regenerates serve_ab/api/grpc/grpc_predict_v2_pb2{,_grpc}.py (committed) from the .proto.
# grpcio-tools must match the grpcio and protobuf Ray runs with, so the generated modules
# import under them: it runs from a throwaway virtual environment (GEN_VENV, kept for the
# next run) with grpcio-tools of grpcio's minor version, leaving the project's own untouched.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
gen_venv=${GEN_VENV:-${TMPDIR:-/tmp}/serve-ab-grpc-tools}
grpc_minor=$("$python" -c 'import grpc; print(".".join(grpc.__version__.split(".")[:2]))')
protobuf_version=$("$python" -c 'import google.protobuf as p; print(p.__version__)')
if [ ! -x "$gen_venv/bin/python" ]; then
  "$python" -m venv "$gen_venv"
fi
"$gen_venv/bin/pip" install -q "grpcio-tools==$grpc_minor.*" "protobuf==$protobuf_version"
out=serve_ab/api/grpc
# From the repository root, so the messages' module is serve_ab.api.grpc.grpc_predict_v2_pb2:
# Ray pickles requests to the replica, and unpickling imports the module by that name.
"$gen_venv/bin/python" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
  "$out/grpc_predict_v2.proto"
"$python" -c 'from serve_ab.api.grpc import grpc_predict_v2_pb2_grpc' \
  && echo "generated $out/grpc_predict_v2_pb2.py and _pb2_grpc.py"
