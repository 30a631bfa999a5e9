"""bench_grpc without Ray: its requests, its pairing of rounds, and the by-hand baseline's
``ModelInfer`` against the model itself."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from benchmarks import bench_grpc
from benchmarks.common import MODELS
from serve_ab.api.grpc import grpc_predict_v2_pb2 as pb
from serve_ab.api.grpc.servicer import lenient_parser


def test_its_flags_are_checked():
    assert bench_grpc.parse_args([]).concurrency == 16
    for bad in (["--rounds", "0"], ["--duration-s", "0"], ["--concurrency", "1"]):
        with pytest.raises(SystemExit):
            bench_grpc.parse_args(bad)


def test_every_request_is_a_digit_of_a_new_user_that_the_proxy_parser_takes():
    bodies = bench_grpc.requests(64)
    parsed = [lenient_parser(pb.ModelInferRequest)(body) for body in bodies]
    assert all(isinstance(p, pb.ModelInferRequest) for p in parsed)
    assert len({p.parameters["user_id"].string_param for p in parsed}) == 64
    assert {(tuple(p.inputs[0].shape), p.inputs[0].datatype, len(p.raw_input_contents[0])) for p in parsed} \
        == {((1, 64), "FP32", 256)}


def test_ratios_are_taken_round_by_round_against_plain():
    per_round = [{"grpc_plain": 100.0, "grpc_twin": 100.0, "grpc_colocated": 90.0},
                 {"grpc_plain": 50.0, "grpc_twin": 55.0, "grpc_colocated": 55.0}]
    latencies = {"grpc_plain": [5.0, 6.0, 7.0], "grpc_twin": [5.0, 6.0, 7.0], "grpc_colocated": [6.0, 6.5, 7.0]}
    out = bench_grpc.summary(per_round, latencies)
    assert out["grpc_colocated"]["vs_plain"] == 1.0  # median of 0.9 and 1.1, not 72.5 / 75
    assert (out["grpc_colocated"]["vs_plain_min"], out["grpc_colocated"]["vs_plain_max"]) == (0.9, 1.1)
    assert out["grpc_colocated"]["p50_added_vs_plain_ms"] == 0.5
    assert "vs_plain" not in out["grpc_plain"]


def test_the_baseline_answers_what_the_model_answers():
    pytest.importorskip("onnxruntime")
    from benchmarks import baselines

    path = MODELS / "v1" / "model.onnx"
    if not path.is_file():
        pytest.skip("models/digits is not built (python models/build.py)")
    model = baselines.OnnxModelGrpc.func_or_class(str(path))
    request = pb.ModelInferRequest.FromString(bench_grpc.requests(1)[0])
    answer = asyncio.run(model.ModelInfer(request))
    batch = np.frombuffer(request.raw_input_contents[0], dtype="<f4").reshape(1, 64)
    (expected,) = model.session.run(None, {model.input_name: batch})
    assert list(answer.outputs[0].shape) == [1, 10]
    assert np.array_equal(np.frombuffer(answer.raw_output_contents[0], dtype="<f4").reshape(1, 10), expected)


def test_run_all_runs_it_and_its_headline_carries_the_ratios():
    from benchmarks import run_all

    per_round = [{"grpc_plain": 100.0, "grpc_twin": 101.0, "grpc_colocated": 97.0}]
    latencies = {"grpc_plain": [5.0], "grpc_twin": [5.1], "grpc_colocated": [5.3]}
    results = {"1": bench_grpc.summary(per_round, latencies), "16": bench_grpc.summary(per_round, latencies)}
    assert run_all.PARTS["grpc"].module == "bench_grpc" and run_all.PARTS["grpc"].in_quick
    out = run_all.headline({"grpc": {"json": {"results": results}}})
    assert (out["grpc_c1_colocated_vs_plain"], out["grpc_c16_a_a_vs_plain"]) == (0.97, 1.01)
    assert out["grpc_c1_p50_added_vs_plain_ms"] == 0.3
    lines = bench_grpc.table(results)
    assert len(lines) == 1 + 2 * 3
    assert "0.970 (0.970-0.970), +0.30 ms" in lines[3] and lines[1].split()[:2] == ["1", "grpc_plain"]
