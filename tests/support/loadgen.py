"""The tests' name for the load generator, which lives in :mod:`benchmarks.loadgen`.

Tests and scripts import the record helpers from here, and run the generator as
``python -m tests.support.loadgen --url ... --out ...`` (the same as ``python -m
benchmarks.loadgen record``).
"""

from __future__ import annotations

import sys

from benchmarks.loadgen import (
    DIGIT_ROW,
    REQUEST_TIMEOUT_S,
    LoadGenerator,
    LoadRecord,
    LoadSummary,
    first_time_served_by,
    is_ok,
    last_time_served_by,
    read_records,
    record_main,
    versions_between,
)
from benchmarks.loadgen._records import _version_of

__all__ = [
    "DIGIT_ROW",
    "REQUEST_TIMEOUT_S",
    "LoadGenerator",
    "LoadRecord",
    "LoadSummary",
    "first_time_served_by",
    "is_ok",
    "last_time_served_by",
    "read_records",
    "versions_between",
]


def main(argv: list[str] | None = None) -> int:
    return record_main(argv, prog="python -m tests.support.loadgen")


if __name__ == "__main__":
    sys.exit(main())
