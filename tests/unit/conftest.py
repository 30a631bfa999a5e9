"""Unit tests never start Ray: the pure core must not need it (as in Ray Serve's own tests)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _forbid_ray_init(monkeypatch):
    try:
        import ray
    except ImportError:  # the pure core does not need Ray installed at all
        return

    def _fail(*args, **kwargs):
        raise RuntimeError("unit tests must not start Ray; move this test to tests/integration")

    monkeypatch.setattr(ray, "init", _fail)
