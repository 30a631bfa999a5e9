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


def grpc_results() -> dict:
    """bench_grpc's results at 1 and 16, each figure different, so a mix-up shows."""
    at_1 = bench_grpc.summary([{"grpc_plain": 100.0, "grpc_twin": 101.0, "grpc_colocated": 97.0}],
                              {"grpc_plain": [5.0], "grpc_twin": [5.1], "grpc_colocated": [5.3]})
    at_16 = bench_grpc.summary([{"grpc_plain": 300.0, "grpc_twin": 294.0, "grpc_colocated": 315.0}],
                               {"grpc_plain": [40.0], "grpc_twin": [41.0], "grpc_colocated": [38.0]})
    return {"1": at_1, "16": at_16}


def test_run_all_headline_carries_its_ratios_concurrency_by_concurrency():
    from benchmarks import run_all

    out = run_all.headline({"grpc": {"json": {"results": grpc_results()}}})
    assert {k: v for k, v in out.items() if k.startswith("grpc_")} == {
        "grpc_c1_colocated_vs_plain": 0.97, "grpc_c1_a_a_vs_plain": 1.01,
        "grpc_c1_p50_added_vs_plain_ms": 0.3, "grpc_c1_a_a_p50_added_ms": 0.1,
        "grpc_c16_colocated_vs_plain": 1.05, "grpc_c16_a_a_vs_plain": 0.98}
    assert not any(k.startswith("grpc_") for k in run_all.headline({"grpc": {"json": None}}))


def test_its_table_gives_every_app_at_each_concurrency():
    lines = bench_grpc.table(grpc_results())
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1]) for r in rows] == [(c, app) for c in ("1", "16") for app in bench_grpc.APPS]
    assert lines[3].endswith("0.970 (0.970-0.970), +0.30 ms")
    assert lines[6].endswith("1.050 (1.050-1.050), -2.00 ms")
    assert "vs plain" not in " ".join(rows[0][2:]) and len(rows[0]) == 5  # plain: no ratio to itself


def _run_all_main(monkeypatch, argv: list[str]) -> list:
    """run_all.main with every part and the cluster faked: the grpc_options its cluster got."""
    import contextlib

    from benchmarks import run_all

    got: list = []

    @contextlib.contextmanager
    def fake_cluster(num_cpus: int, grpc_options=None):
        got.append(grpc_options)
        yield type("FakeCluster", (), {"port": 1})()

    monkeypatch.setattr(run_all, "cluster", fake_cluster)
    monkeypatch.setattr(run_all, "missing_models", lambda *files: None)
    monkeypatch.setattr(run_all, "report_header", lambda *a, **k: {"bench": "all", "load_before": []})
    monkeypatch.setattr(run_all, "other_ray_instances", lambda: 0)
    monkeypatch.setattr(run_all, "run_part", lambda name, quick, shared, extra: {
        "rc": 0, "json": {}, "wall_s": 0.0, "text": ""})
    assert run_all.main(argv) == 0
    return got


def test_run_all_starts_the_grpc_proxy_only_where_the_grpc_part_runs(monkeypatch):
    from benchmarks.cluster import GRPC_SERVICER

    (quick,) = _run_all_main(monkeypatch, ["--quick"])
    (only_grpc,) = _run_all_main(monkeypatch, ["--quick", "--only", "grpc"])
    for options in (quick, only_grpc):
        assert options["grpc_servicer_functions"] == [GRPC_SERVICER] and options["port"] > 0
    assert _run_all_main(monkeypatch, ["--quick", "--only", "memory"]) == [None]
    assert _run_all_main(monkeypatch, ["--quick", "--only", "routing"]) == []  # no cluster at all


def test_the_servicer_it_registers_is_importable():
    import importlib

    from benchmarks.cluster import GRPC_SERVICER

    module, _, name = GRPC_SERVICER.rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))


def test_results_md_gets_its_section(monkeypatch, tmp_path):
    from benchmarks import run_all

    monkeypatch.setattr(run_all, "RESULTS_MD", tmp_path / "RESULTS.md")
    report = {"machine": {}, "date": "today", "wall_s": 1.0, "load_before": [], "load_after": [],
              "headline": {}, "cluster_start_s": 1.0}
    text = "\n".join(bench_grpc.table(grpc_results()))
    run_all.append_results({"grpc": {"rc": 0, "wall_s": 82.0, "text": text}}, report)
    written = (tmp_path / "RESULTS.md").read_text()
    assert "## The gRPC ingress (`bench_grpc.py`)" in written and text in written
    assert "serving gRPC too for the grpc part" in written
    run_all.append_results({"memory": {"rc": 0, "wall_s": 1.0, "text": "m"}}, report)
    assert "gRPC" not in (tmp_path / "RESULTS.md").read_text()


def test_plain_on_one_loop_is_measured_when_asked_and_read_against_plain():
    assert bench_grpc.apps(bench_grpc.parse_args([])) == bench_grpc.APPS
    names = bench_grpc.apps(bench_grpc.parse_args(["--plain-loop"]))
    assert names == (*bench_grpc.APPS, bench_grpc.PLAIN_LOOP)
    per_round = [{"grpc_plain": 100.0, "grpc_twin": 100.0, "grpc_colocated": 97.0, "grpc_plain_loop": 102.0},
                 {"grpc_plain": 100.0, "grpc_twin": 100.0, "grpc_colocated": 96.0, "grpc_plain_loop": 100.0}]
    latencies = {"grpc_plain": [5.0], "grpc_twin": [5.0], "grpc_colocated": [5.2], "grpc_plain_loop": [4.9]}
    out = bench_grpc.summary(per_round, latencies)
    assert out["grpc_plain_loop"]["vs_plain"] == 1.01
    colocated = out["grpc_colocated"]
    # serve-ab against plain on equal settings, round by round: median of 97/102 and 96/100
    assert (colocated["vs_plain_loop"], colocated["vs_plain_loop_min"]) == (round((97 / 102 + 0.96) / 2, 3), 0.951)
    assert colocated["p50_added_vs_plain_loop_ms"] == 0.3
    assert "vs_plain_loop" not in out["grpc_twin"]
    lines = bench_grpc.table({"1": out})
    assert [line.split()[1] for line in lines[1:]] == list(names)
    assert lines[3].endswith("; vs plain_loop 0.955 (0.951-0.960), +0.30 ms")
    assert "vs_plain_loop" not in bench_grpc.summary(per_round[:1], {a: [5.0] for a in bench_grpc.APPS})[
        "grpc_colocated"]


def test_plain_loop_is_deployed_with_the_routers_settings():
    from benchmarks.bench_serving import REPLICA_OPTIONS, router_settings

    if not (MODELS / "v1" / "model.onnx").is_file():
        pytest.skip("models/digits is not built (python models/build.py)")
    targets = bench_grpc.targets(bench_grpc.apps(bench_grpc.parse_args(["--plain-loop"])))
    options = {t.name: t.target._bound_deployment.ray_actor_options for t in targets}
    assert list(options) == [*bench_grpc.APPS, bench_grpc.PLAIN_LOOP]
    assert options[bench_grpc.PLAIN_LOOP] == router_settings(REPLICA_OPTIONS)["ray_actor_options"]
    assert "runtime_env" not in options["grpc_plain"]


class _FakeCaller:
    def __init__(self, outputs: np.ndarray, version: str = ""):
        self.outputs, self.version = outputs, version

    async def answer(self, body: bytes) -> pb.ModelInferResponse:
        response = pb.ModelInferResponse(model_version=self.version)
        response.raw_output_contents.append(self.outputs.astype("<f4").tobytes())
        return response


class _Alternating(_FakeCaller):
    def __init__(self, outputs: np.ndarray):
        super().__init__(outputs)
        self.n = 0

    async def answer(self, body: bytes) -> pb.ModelInferResponse:
        self.n += 1
        self.version = "v1" if self.n % 2 else "v3"
        return await super().answer(body)


def test_every_plain_app_must_answer_as_plain_does_before_anything_is_measured():
    probabilities = np.linspace(0, 1, 10)
    callers = {"grpc_plain": _FakeCaller(probabilities), "grpc_twin": _FakeCaller(probabilities),
               "grpc_colocated": _Alternating(probabilities[::-1]),
               "grpc_plain_loop": _FakeCaller(probabilities)}
    asyncio.run(bench_grpc.check_answers(callers, [b""] * 4))  # serve-ab may answer otherwise
    callers["grpc_plain_loop"] = _FakeCaller(probabilities * 0.5)
    with pytest.raises(RuntimeError, match="not ten probabilities alike"):
        asyncio.run(bench_grpc.check_answers(callers, [b""] * 4))
    callers["grpc_plain_loop"] = _FakeCaller(probabilities)
    callers["grpc_colocated"] = _FakeCaller(probabilities, "v1")
    with pytest.raises(RuntimeError, match="expected v1 and v3"):
        asyncio.run(bench_grpc.check_answers(callers, [b""] * 4))
