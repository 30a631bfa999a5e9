"""The one load generator, for the benchmarks and the tests alike.

Every mode sends from a process of its own (or, for handles, from the caller's event
loop), so the process that drives Ray stays free:

- **closed loop, summarised**: N connections, each sending its next request once the last
  is answered; completed requests, req/s, latencies and errors of a measured window
  (:meth:`HttpLoad.run`; ``python -m benchmarks.loadgen run --url ...`` for one run);
- **alternating**: one connection taking turns between URLs request by request, so that
  they are compared under the same conditions (:meth:`HttpLoad.alternate`);
- **closed loop, every request kept**: :meth:`HttpLoad.start_recording`, unpaced, each
  request with its own ``x-request-id`` (rollback propagation);
- **paced, every request kept as it completes**: :class:`LoadGenerator` and the record
  helpers (:func:`read_records`, :func:`versions_between`, ...), for tests that act while
  the load runs (``python -m benchmarks.loadgen record --url ... --out ...``);
- **DeploymentHandle**: :func:`handle_closed_loop` and :func:`handle_alternating`, the
  same two loops as HTTP's (:mod:`._loops`) over handle calls.
"""

from benchmarks.loadgen._http import HttpLoad, Record
from benchmarks.loadgen._loops import alternating, closed_loop, handle_alternating, handle_closed_loop
from benchmarks.loadgen._records import (
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

__all__ = [
    "DIGIT_ROW",
    "REQUEST_TIMEOUT_S",
    "HttpLoad",
    "LoadGenerator",
    "LoadRecord",
    "LoadSummary",
    "Record",
    "alternating",
    "closed_loop",
    "first_time_served_by",
    "handle_alternating",
    "handle_closed_loop",
    "is_ok",
    "last_time_served_by",
    "read_records",
    "record_main",
    "versions_between",
]
