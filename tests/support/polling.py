"""Waiting on a live system: polled, never slept through for a fixed time."""

from __future__ import annotations

import time

WAIT_S = 120  # long enough for a replica to restart on this shared 2-core machine


def poll(predicate, timeout_s):
    """The first truthy value of ``predicate()``, or None after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value or None
        time.sleep(0.25)


def wait_for(predicate, what, timeout_s=WAIT_S):
    """The first truthy value of ``predicate()``; fails the test naming ``what`` after ``timeout_s``."""
    value = poll(predicate, timeout_s)
    assert value, f"timed out waiting for {what}"
    return value
