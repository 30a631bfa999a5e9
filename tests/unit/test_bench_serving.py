"""bench_serving's choice of candidates and its pairing, without Ray (the runs are made up)."""

from __future__ import annotations

from benchmarks import bench_serving


def run(round_index: int, rps: float, p50_ms: float) -> dict:
    return {"round": round_index, "throughput_rps": rps, "latencies_ms": [p50_ms] * 5,
            "completed": 5, "errors": {}}


def test_the_candidates_without_access_lines_run_only_when_named():
    by_default = [c.app for c in bench_serving.chosen(None)]
    assert by_default == ["plain", "fastapi", "workaround", "colocated", "isolated", "plain_batch",
                          "colocated_batch", "plain_twin"]
    only = bench_serving.parse_args(["--only", "colocated_quiet", "plain_quiet", "plain"]).only
    assert [c.app for c in bench_serving.chosen(only)] == ["plain", "plain_quiet", "colocated_quiet"]


def test_without_access_lines_serve_ab_is_paired_with_plain_without_its_line():
    runs = {
        "plain": [run(0, 100.0, 4.0), run(1, 100.0, 4.0)],
        "colocated": [run(0, 95.0, 4.3), run(1, 97.0, 4.2)],
        "plain_quiet": [run(0, 110.0, 3.8), run(1, 100.0, 3.9)],
        "colocated_quiet": [run(0, 110.0, 3.9), run(1, 105.0, 3.9)],
    }
    summary = bench_serving.summarize(runs)
    paired = summary["colocated_quiet"]["vs_plain_quiet"]
    assert paired["rps_ratio"] == {"median": 1.025, "min": 1.0, "max": 1.05}  # round by round
    assert abs(paired["p50_added_ms"] - 0.05) < 1e-9
    assert "vs_plain_quiet" not in summary["colocated"]
    assert "(c-) vs (a-), both without access lines: 1.02x (1.00-1.05) req/s, p50 +0.05 ms" in \
        bench_serving.fastapi_note(summary)
    assert bench_serving.compact(summary)["colocated_quiet"]["vs_plain_quiet"] == 1.025


def test_the_a_a_twin_is_paired_with_plain_and_shown_beside_the_targets_against_plain():
    runs = {"plain": [run(0, 100.0, 4.0), run(1, 100.0, 4.0), run(2, 100.0, 4.0)],
            "plain_twin": [run(0, 90.0, 4.1), run(1, 104.0, 3.9), run(2, 101.0, 4.0)],
            "workaround": [run(0, 70.0, 6.0), run(1, 70.0, 6.0), run(2, 70.0, 6.0)],
            "colocated": [run(0, 99.0, 4.2), run(1, 98.0, 4.2), run(2, 105.0, 4.2)]}
    summary = bench_serving.summarize(runs)
    assert summary["plain_twin"]["vs_plain"]["rps_ratio"] == {"median": 1.01, "min": 0.9, "max": 1.04}
    assert "(a=) vs (a), the same app twice (A/A, the noise floor): 1.01x (0.90-1.04) req/s" in \
        bench_serving.fastapi_note(summary)
    checks = {(c["concurrency"], c["what"]): c for c in bench_serving.verdicts({1: summary})}
    assert len(checks) == 3  # the A/A is no target of its own
    rps, p50 = checks[(1, "colocated vs plain, req/s")], checks[(1, "colocated p50 added over plain, ms")]
    assert (rps["value"], rps["met"], rps["a_a"]) == (0.99, False, 1.01)
    assert (round(p50["value"], 3), p50["a_a"]) == (0.2, 0.0)
    assert checks[(1, "colocated vs workaround, req/s")]["a_a"] is None  # against plain only
    without_twin = bench_serving.verdicts({1: bench_serving.summarize(
        {k: v for k, v in runs.items() if k != "plain_twin"})})
    assert {c["a_a"] for c in without_twin} == {None}


def test_plain_on_one_loop_runs_when_named_and_serve_ab_is_paired_with_it():
    assert "plain_loop" not in [c.app for c in bench_serving.chosen(None)]
    only = bench_serving.parse_args(["--only", "colocated", "plain_loop", "plain"]).only
    assert [c.app for c in bench_serving.chosen(only)] == ["plain", "plain_loop", "colocated"]
    runs = {"plain": [run(0, 100.0, 4.0), run(1, 100.0, 4.0)],
            "plain_loop": [run(0, 104.0, 3.9), run(1, 106.0, 3.8)],
            "colocated": [run(0, 98.0, 4.2), run(1, 101.0, 4.1)]}
    summary = bench_serving.summarize(runs)
    assert summary["colocated"]["vs_plain_loop"]["rps_ratio"]["median"] == (98 / 104 + 101 / 106) / 2
    note = bench_serving.fastapi_note(summary)
    assert "(c) vs (aL), both with the router's Ray settings (one loop): 0.95x (0.94-0.95) req/s" in note
    assert "(aL) vs (a), plain with the router's Ray settings against Ray's defaults: 1.05x (1.04-1.06) req/s" in note
    assert bench_serving.compact(summary)["colocated"]["vs_plain_loop"] == round((98 / 104 + 101 / 106) / 2, 3)


def test_plain_on_the_routers_settings_gets_what_build_app_gives_a_colocated_router(monkeypatch):
    from serve_ab import build_app
    from serve_ab.config.experiment import RAY_METRICS_EXPORT_ENV

    monkeypatch.delenv(RAY_METRICS_EXPORT_ENV, raising=False)  # the defaults, not this shell's
    router = build_app(bench_serving.serve_ab_experiment("colocated"))._bound_deployment
    options = bench_serving.router_settings(bench_serving.REPLICA_OPTIONS)
    assert options["ray_actor_options"]["runtime_env"] == router.ray_actor_options["runtime_env"]
    assert options["ray_actor_options"]["runtime_env"]["env_vars"]["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    assert "runtime_env" not in bench_serving.REPLICA_OPTIONS["ray_actor_options"]  # a copy, not a change


def test_the_deployed_plain_loop_app_has_the_routers_settings_and_plain_keeps_rays(monkeypatch):
    from benchmarks.common import MODELS

    if not (MODELS / "v1" / "model.onnx").is_file():
        import pytest
        pytest.skip("models/digits is not built (python models/build.py)")
    plain, plain_loop = (t.target._bound_deployment.ray_actor_options
                         for t in bench_serving.run_targets([bench_serving.BY_APP["plain"],
                                                             bench_serving.BY_APP["plain_loop"]]))
    assert "runtime_env" not in plain
    assert plain_loop == bench_serving.router_settings(bench_serving.REPLICA_OPTIONS)["ray_actor_options"]


def test_rotation_changes_the_order_and_reverses_it_every_other_round():
    orders = [bench_serving.rotated(["a", "b", "c"], r) for r in range(4)]
    assert orders == [["a", "b", "c"], ["a", "c", "b"], ["c", "a", "b"], ["c", "b", "a"]]
    # every item follows each other one in some round: no order is favoured
    follows = {(o[i], o[i + 1]) for o in orders for i in range(2)}
    assert follows == {(x, y) for x in "abc" for y in "abc" if x != y}


def test_serve_ab_on_one_model_runs_when_named_and_is_paired_with_the_split():
    assert "colocated_one" not in [c.app for c in bench_serving.chosen(None)]
    only = bench_serving.parse_args(["--only", "colocated_one", "colocated", "plain"]).only
    assert [c.app for c in bench_serving.chosen(only)] == ["plain", "colocated", "colocated_one"]
    runs = {"plain": [run(0, 100.0, 4.0), run(1, 100.0, 4.0)],
            "colocated": [run(0, 96.0, 4.2), run(1, 98.0, 4.2)],
            "colocated_one": [run(0, 99.0, 4.1), run(1, 99.0, 4.0)]}
    summary = bench_serving.summarize(runs)
    assert summary["colocated_one"]["vs_colocated"]["rps_ratio"]["median"] == (99 / 96 + 99 / 98) / 2
    assert "(c1) vs (c), all on v1 against the 50/50 split: 1.02x (1.01-1.03) req/s, p50 -0.15 ms" in \
        bench_serving.fastapi_note(summary)


def test_the_deployed_one_model_app_sends_every_request_to_v1():
    from benchmarks.common import MODELS

    if not (MODELS / "v1" / "model.onnx").is_file():
        import pytest
        pytest.skip("models/digits is not built (python models/build.py)")
    split, one = (t.target._bound_deployment.init_args[0]
                  for t in bench_serving.run_targets([bench_serving.BY_APP["colocated"],
                                                      bench_serving.BY_APP["colocated_one"]]))
    assert split["weights"] == {"v1": 50.0, "v3": 50.0}
    assert one["weights"] == {"v1": 100.0, "v3": 0.0}
    assert {k: v for k, v in one.items() if k not in ("weights", "controller")} == \
        {k: v for k, v in split.items() if k not in ("weights", "controller")}  # nothing else differs
