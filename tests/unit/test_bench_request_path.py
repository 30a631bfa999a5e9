"""The benchmarks that need no Ray: bench_request_path runs and compares, profile_router's summary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import bench_path_parts, bench_request_path
from benchmarks.profile_router import PARTS, read_collapsed, summarize
from benchmarks.common import MODELS


@pytest.mark.skipif(not (MODELS / "v3" / "model.onnx").is_file(), reason="example models not built")
@pytest.mark.parametrize("cold", [False, True])
def test_bench_request_path_quick_prints_per_request_costs_and_serve_abs_difference(capsys, monkeypatch, cold):
    # A few rounds of a few calls: the figures are not checked, only that every candidate ran
    # through the real code (a non-200 answer, or none, fails the run) and the JSON says so.
    monkeypatch.setattr(bench_request_path, "measure", _short(bench_request_path.measure))
    assert bench_request_path.main(["--quick"] + (["--cold", "--evict-mib", "1"] if cold else [])) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report["us_per_request"]) == {"plain", "fastapi", "serve-ab", "plain-handle", "serve-ab-handle",
                                             "serve-ab-handle+token"}
    assert all(v > 0 for v in report["us_per_request"].values())
    assert set(report["serve_ab_added_us"]) == {"plain", "fastapi", "plain-handle"}
    assert isinstance(report["token_added_us"], float) and len(report["token_added_us_range"]) == 2
    assert report["cold"] is cold and report["evict_mib"] == (1 if cold else 0)


@pytest.mark.skipif(not (MODELS / "v3" / "model.onnx").is_file(), reason="example models not built")
def test_the_handle_candidate_runs_the_routers_own_method_with_rays_request_id():
    import asyncio

    from benchmarks.bench_request_path import in_request_context, serve_ab_core, serve_ab_handle

    in_request_context("req-42")
    for takes_feedback in (False, True):
        core = serve_ab_core(takes_feedback)
        answer = asyncio.run(serve_ab_handle(core)(np.zeros((1, 64), dtype=np.float32), "user-1"))
        assert answer["request_id"] == "req-42"
        assert answer["version"] in {"v1", "v3"} and answer["outputs"].shape == (1, 10)
        if takes_feedback:  # the experiment names a feedback metric: its answers carry a token
            assert answer["feedback_token"].startswith(answer["version"] + ".")
        else:
            assert answer["feedback_token"] is None


@pytest.mark.skipif(not (MODELS / "v3" / "model.onnx").is_file(), reason="example models not built")
def test_bench_path_parts_prices_each_part_and_puts_every_part_back(capsys):
    from serve_ab.serving import http as routes
    from serve_ab.serving.core import router, versions

    before = (router.to_batch, versions.check_outputs, routes._pinned)
    assert bench_path_parts.main(["--pairs", "4", "--evict-mib", "1"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(report["added_us"]) == ["serve-ab - plain", "decision", "key hash", "input checks", "output checks",
                                        "pin check", "access-line note", "observation", "request id"]
    assert all(set(line) == {"mean", "se"} for line in report["added_us"].values())
    assert (router.to_batch, versions.check_outputs, routes._pinned) == before
    assert routes._served is None  # the module's core slot, left as found


@pytest.mark.skipif(not (MODELS / "v3" / "model.onnx").is_file(), reason="example models not built")
def test_with_each_part_taken_out_a_request_is_still_answered_and_the_part_goes_back():
    import asyncio

    from benchmarks.bench_request_path import call, serve_ab_core
    from benchmarks.common import request_bodies
    from serve_ab.routing import Assigner
    from serve_ab.serving import http as routes
    from serve_ab.serving.core.auth import ControlAuth

    core = serve_ab_core()
    body = request_bodies(1)[0][0].encode()
    routes.use_core(routes.Served(core, ControlAuth(core.cfg.control, [])))
    try:
        for name, (take_out, put_back) in bench_path_parts.parts(core).items():
            take_out()
            try:
                assert asyncio.run(call(routes.app, "/predict", body)) == 200, name
            finally:
                put_back()
    finally:
        routes.use_core(None)
    assert core.on_answer is not None and core.request_id() != "a-request-id"
    assert core.decision.assigner.assign_unit.__func__ is Assigner.assign_unit
    take_out, put_back = bench_path_parts.parts(core)["request id"]
    take_out()
    assert core.request_id() == "a-request-id"
    put_back()


def test_bench_path_parts_needs_two_pairs(capsys):
    assert bench_path_parts.main(["--pairs", "1"]) == 2
    assert "--pairs is 1" in capsys.readouterr().err


def test_cold_needs_something_to_read(capsys):
    assert bench_request_path.main(["--cold", "--evict-mib", "0"]) == 2
    assert "--evict-mib is 0" in capsys.readouterr().err


def _short(measure):
    async def short(candidates, calls_per_round, rounds, evict):
        return await measure(candidates, min(calls_per_round, 20), min(rounds, 3), evict)
    return short


def test_profile_summary_counts_a_sample_once_per_part_and_names_the_leaf(tmp_path):
    path = tmp_path / "stacks.txt"
    path.write_text(
        "run (ray/serve/_private/replica.py:10);http_predict (serve_ab/serving/http.py:5);"
        "run (onnxruntime/capi/session.py:3) 30\n"
        "run (ray/serve/_private/replica.py:10);info (logging/__init__.py:1) 10\n"
    )
    total, parts, tops = summarize(read_collapsed(path))
    assert total == 40
    names = dict(PARTS)
    assert set(parts) == set(names)
    assert parts["Ray Serve: request path (replica, ASGI proxying)"] == 100.0
    assert parts["model (onnxruntime session.run)"] == 75.0
    assert parts["serve-ab: routing, checks, observations"] == 75.0
    assert parts["logging (access lines, Ray's log formatter)"] == 25.0
    assert tops[0] == ("run (session.py)", 75.0)
