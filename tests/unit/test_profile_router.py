"""The profile's summaries, on stacks written as py-spy's raw format writes them."""

from pathlib import Path

from benchmarks.profile_router import per_request, read_collapsed, summarize

STACKS = """\
run (ray/serve/_private/replica.py:10);predict (serve_ab/serving/core/router.py:5);run (onnxruntime/session.py:3) 6
run (ray/serve/_private/replica.py:10);predict (serve_ab/serving/core/router.py:5) 2
main_loop (ray/_private/worker.py:7) 12
"""


def test_per_request_divides_each_functions_own_samples_by_the_requests_served(tmp_path: Path):
    path = tmp_path / "proxy.collapsed.txt"
    path.write_text(STACKS)
    samples_per_request, top = per_request(read_collapsed(path), served=4)
    assert samples_per_request == 5.0  # 20 samples, 4 requests
    assert top == [("main_loop (worker.py)", 3.0), ("run (session.py)", 1.5), ("predict (router.py)", 0.5)]


def test_summarize_counts_a_sample_once_per_part_and_names_functions_by_file(tmp_path: Path):
    path = tmp_path / "replica.collapsed.txt"
    path.write_text(STACKS)
    total, parts, top = summarize(read_collapsed(path))
    assert total == 20
    assert parts["model (onnxruntime session.run)"] == 30.0
    assert parts["serve-ab: routing, checks, observations"] == 40.0
    assert parts["Ray core: actor calls, pickling, gRPC"] == 60.0
    assert top[0] == ("main_loop (worker.py)", 60.0)
