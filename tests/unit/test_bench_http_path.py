"""The benchmarks that need no Ray: bench_http_path runs and compares, profile_router's summary."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_http_path
from benchmarks.profile_router import PARTS, read_collapsed, summarize
from benchmarks.common import MODELS


@pytest.mark.skipif(not (MODELS / "v3" / "model.onnx").is_file(), reason="example models not built")
def test_bench_http_path_quick_prints_per_request_costs_and_serve_abs_difference(capsys, monkeypatch):
    # Three rounds of a few calls: the figures are not checked, only that every candidate ran
    # through the real apps (a non-200 answer fails the run) and the JSON says so.
    monkeypatch.setattr(bench_http_path, "measure", _short(bench_http_path.measure))
    assert bench_http_path.main(["--quick"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report["us_per_request"]) == {"plain", "fastapi", "serve-ab"}
    assert all(v > 0 for v in report["us_per_request"].values())
    assert set(report["serve_ab_added_us"]) == {"plain", "fastapi"}


def _short(measure):
    async def short(apps, bodies, calls_per_round, rounds):
        return await measure(apps, bodies, min(calls_per_round, 20), min(rounds, 3))
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
