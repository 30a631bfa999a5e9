"""The size of each batch serve-ab's batcher runs, as a Ray Serve metric.

``@serve.batch`` records ``serve_actual_batch_size``; serve-ab's batcher is its own
(``backends/batching.py``, Ray-free for ``gpu_check.py --no-ray``), so without this a user
who turned batching on could not see whether batches form. The histogram goes through Ray
Serve's metrics API, as Ray's own does, so it reads the same for a version in the router's
process and in its own deployment: Ray adds ``application``, ``deployment`` and ``replica``,
serve-ab ``version``, and Ray's metrics agent exports it as ``ray_serve_ab_batch_size``.
One observation a batch (about 2 µs), made after the batch's answers.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["BATCH_SIZE_BUCKETS", "batch_size_recorder"]

#: Upper bounds, in requests a batch: Ray Serve's own for ``serve_actual_batch_size``.
BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def batch_size_recorder(version: str) -> Callable[[int], None] | None:
    """What tells the histogram each batch's size for ``version``; None outside a Ray Serve
    replica (a test, ``gpu_check.py --no-ray``), where nothing would export it."""
    try:
        from ray import serve
        from ray.serve.exceptions import RayServeException
    except ImportError:
        return None
    try:
        serve.get_replica_context()
    except RayServeException:
        return None
    from ray.serve.metrics import Histogram

    histogram = Histogram("serve_ab_batch_size",
                          description="Requests in each batch serve-ab's batcher ran (batching: on a version).",
                          boundaries=BATCH_SIZE_BUCKETS, tag_keys=("version",))
    histogram.set_default_tags({"version": version})
    return histogram.observe
