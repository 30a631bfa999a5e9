"""The benchmarks that need no Ray: bench_request_path runs and compares, profile_router's summary."""

from __future__ import annotations

import collections
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
@pytest.mark.parametrize("handle", [False, True])
def test_bench_path_parts_prices_each_part_and_puts_every_part_back(capsys, handle):
    from serve_ab.serving import http as routes
    from serve_ab.serving.core import router, versions

    before = (router.to_batch, versions.check_outputs, routes._pinned)
    assert bench_path_parts.main(["--pairs", "4", "--evict-mib", "1"] + (["--handle"] if handle else [])) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # a handle's caller pins by argument, and sends no body: no header to read, no body to wait for
    pin = [] if handle else ["pin check", "body deadline"]
    assert list(report["added_us"]) == ["serve-ab - plain", "decision", "key hash", "input checks", "output checks",
                                        *pin, "access-line note", "observation", "request id"]
    assert report["way_in"] == ("handle" if handle else "http")
    assert all(set(line) == {"mean", "se"} for line in report["added_us"].values())
    assert (router.to_batch, versions.check_outputs, routes._pinned) == before
    assert routes._served is None  # the module's core slot, left as found


@pytest.mark.skipif(not (MODELS / "v3" / "model.onnx").is_file(), reason="example models not built")
def test_each_part_taken_out_is_out_of_an_answered_request_and_goes_back(monkeypatch):
    """With each part out, /predict still answers 200 and runs the replacement instead of the
    part (else the part's line would read about 0 us without a word); put back, the core is
    as it was, no method left behind on the instance."""
    import asyncio

    from benchmarks.bench_request_path import call, serve_ab_core
    from benchmarks.common import request_bodies
    from serve_ab.serving import http as routes
    from serve_ab.serving.core.auth import ControlAuth

    calls = _count_replacements(monkeypatch)
    core = serve_ab_core()
    noted: list[str] = []  # the versions noted for the access line, one per answer

    def note(request_id: str, version: str) -> None:
        noted.append(version)

    core.on_answer = note
    body = request_bodies(1)[0][0].encode()
    routes.use_core(routes.Served(core, ControlAuth(core.cfg.control, [])))
    replaced = {"decision": "choose", "key hash": "assign_unit", "input checks": "to_batch",
                "output checks": "check_outputs", "pin check": "_pinned", "body deadline": "read_body",
                "observation": "served", "request id": "request_id"}
    try:
        parts = bench_path_parts.parts(core)
        assert set(parts) == {*replaced, "access-line note"}
        for name, (take_out, put_back) in parts.items():
            notes_before = len(noted)
            take_out()
            try:
                assert asyncio.run(call(routes.app, "/predict", body)) == 200, name
            finally:
                put_back()
            if name == "access-line note":
                assert len(noted) == notes_before  # nothing noted with the note taken out
            else:
                assert calls[replaced[name]] >= 1, f"{name}: its replacement never ran"
        notes_before = len(noted)
        assert asyncio.run(call(routes.app, "/predict", body)) == 200
        assert len(noted) == notes_before + 1  # put back: the next answer is noted again
    finally:
        routes.use_core(None)
    # a class's method is the class's again, not an instance attribute left behind
    assert "choose" not in vars(core) and "assign_unit" not in vars(core.decision.assigner)
    assert "served" not in vars(core.observations)
    assert core.on_answer is note and core.request_id() != "a-request-id"


def test_paired_puts_the_part_back_when_the_call_fails():
    import asyncio

    from benchmarks.bench_request_path import Evictor

    state = {"out": False}
    switch = (lambda: state.update(out=True)), (lambda: state.update(out=False))

    async def fine(i: int) -> None:
        return None

    async def failing(i: int) -> None:
        assert state["out"]  # the part is out while the call runs
        raise RuntimeError("the request failed")

    with pytest.raises(RuntimeError, match="the request failed"):
        asyncio.run(bench_path_parts.paired(fine, failing, 3, Evictor(0), lambda i: None, switch))
    assert state["out"] is False


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


@pytest.mark.skipif(not (MODELS / "v3" / "model.onnx").is_file(), reason="example models not built")
def test_plain_answers_each_request_with_the_model_serve_ab_serves_it_with():
    """The whole path's line compares paths, not v1's model with v3's: for each request, plain
    (over HTTP or a handle) answers what serve-ab answers."""
    import asyncio

    from benchmarks.bench_request_path import call, in_request_context, serve_ab_core, serve_ab_handle
    from benchmarks.common import request_bodies

    core = serve_ab_core()
    bodies, handle_args = request_bodies(12)
    keys = [key for _, key in handle_args]
    router_predict = serve_ab_handle(core)
    handles = bench_path_parts.plain_for_each(core, keys, handle=True)
    apps = bench_path_parts.plain_for_each(core, keys, handle=False)
    versions = set()
    for i, (batch, key) in enumerate(handle_args):
        in_request_context(f"req-{i}")
        answer = asyncio.run(router_predict(batch, key))
        versions.add(answer["version"])
        assert np.allclose(asyncio.run(handles[i](batch)), answer["outputs"], atol=1e-6)
        assert asyncio.run(call(apps[i], "/", bodies[i].encode())) == 200  # (the same choice of model)
    assert versions == {"v1", "v3"}  # both models in the pairing, else the test proves little


@pytest.mark.skipif(not (MODELS / "v3" / "model.onnx").is_file(), reason="example models not built")
def test_each_handle_part_taken_out_runs_its_replacement_and_goes_back(monkeypatch):
    """Over a handle too: with each part out, Router.predict answers and the replacement ran
    (the request id's in both places Router.predict reads it); put back, as it was."""
    import asyncio

    from benchmarks.bench_request_path import in_request_context, serve_ab_core, serve_ab_handle
    from serve_ab.serving import router as shell

    calls = _count_replacements(monkeypatch)
    core = serve_ab_core()
    noted: list[str] = []
    core.on_answer = lambda request_id, version: noted.append(version)
    read_id = shell._request_id
    predict = serve_ab_handle(core)
    batch = np.zeros((1, 64), dtype=np.float32)
    replaced = {"decision": ["choose"], "key hash": ["assign_unit"], "input checks": ["to_batch"],
                "output checks": ["check_outputs"], "observation": ["served"],
                "request id": ["request_id", "_request_id"]}
    parts = bench_path_parts.parts(core, handle=True)
    assert set(parts) == {*replaced, "access-line note"}
    in_request_context("req-1")
    for name, (take_out, put_back) in parts.items():
        before, notes_before = dict(calls), len(noted)
        take_out()
        try:
            answer = asyncio.run(predict(batch, "user-1"))
        finally:
            put_back()
        assert answer["outputs"].shape == (1, 10), name
        if name == "access-line note":
            assert len(noted) == notes_before
        for replacement in replaced.get(name, []):
            assert calls[replacement] > before.get(replacement, 0), f"{name}: {replacement} never replaced"
    assert shell._request_id is read_id and core.request_id() == "req-1"


def _count_replacements(monkeypatch) -> collections.Counter[str]:
    """bench_path_parts' switches with each replacement counted by the attribute it replaces."""
    calls: collections.Counter[str] = collections.Counter()
    real_swap = bench_path_parts._swap

    def counting_swap(owner, name, replacement):
        if callable(replacement):
            def counted(*args, inner=replacement, **kwargs):
                calls[name] += 1
                return inner(*args, **kwargs)
            return real_swap(owner, name, counted)
        return real_swap(owner, name, replacement)

    monkeypatch.setattr(bench_path_parts, "_swap", counting_swap)
    return calls
