"""The version on Ray Serve's access line: noted by the router, appended by a logger filter."""

from __future__ import annotations

import logging
import sys
import threading

from serve_ab.api.access_log import VersionOnAccessLine, VersionsAnswered, name_versions_on_access_lines


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.model_versions: list[str | None] = []  # what a JSON formatter gives a field of its own

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self.model_versions.append(getattr(record, "model_version", "(not set)"))


def ray_like_logger(name: str) -> tuple[logging.Logger, Kept]:
    logger = logging.getLogger(f"test-access-log.{name}")
    logger.handlers[:], logger.filters[:], logger.propagate = [], [], False
    logger.setLevel(logging.INFO)
    kept = Kept()
    logger.addHandler(kept)
    return logger, kept


def naming_versions(name: str, **notes_options: int) -> tuple[logging.Logger, Kept, VersionsAnswered]:
    """A logger as Ray Serve's, with the router's filter on it, and the notes it reads."""
    logger, kept = ray_like_logger(name)
    answered = VersionsAnswered(**notes_options)
    name_versions_on_access_lines(logger, answered)
    return logger, kept, answered


def access_line(logger: logging.Logger, request_id: str, text: str = "POST /app 200 4.1ms") -> None:
    # As Ray Serve writes it (replica.py, _record_errors_and_metrics): a preformatted message,
    # the request's id and serve_access_log in ``extra``.
    logger.info(text, extra={"skip_context_filter": True, "serve_access_log": True, "request_id": request_id})


def test_the_access_line_names_the_version_that_answered_its_request():
    logger, kept, answered = naming_versions("names")
    answered.note("r1", "v1")
    answered.note("r2", "v2")
    access_line(logger, "r2", "CALL predict OK 2.0ms")
    access_line(logger, "r1")
    access_line(logger, "r3", "POST /app 400 0.8ms")  # refused before any version answered
    logger.info("a line of the router's own with 100%% of %s", "args")  # not an access line: untouched
    assert kept.lines == ["CALL predict OK 2.0ms version=v2", "POST /app 200 4.1ms version=v1",
                          "POST /app 400 0.8ms version=-", "a line of the router's own with 100% of args"]
    assert kept.model_versions == ["v2", "v1", None, "(not set)"]
    assert len(answered) == 0  # each note is taken by its line


def test_a_note_is_taken_once_and_a_second_line_for_the_same_id_says_no_version():
    logger, kept, answered = naming_versions("once")
    answered.note("r1", "v1")
    access_line(logger, "r1")
    access_line(logger, "r1")
    assert kept.lines == ["POST /app 200 4.1ms version=v1", "POST /app 200 4.1ms version=-"]


def test_notes_no_line_takes_are_bounded_oldest_first():
    # Ray's logger above INFO, or a client gone before its answer: no line takes these.
    answered = VersionsAnswered(max_notes=3)
    for i in range(5):
        answered.note(f"r{i}", f"v{i}")
    assert len(answered) == 3
    assert [answered.take(f"r{i}") for i in range(5)] == [None, None, "v2", "v3", "v4"]


def test_two_requests_with_one_id_each_get_a_line_with_a_version():
    # A client resending its x-request-id: neither note is lost, first noted first taken.
    logger, kept, answered = naming_versions("same-id")
    answered.note("dup", "v1")
    answered.note("dup", "v2")
    access_line(logger, "dup")
    access_line(logger, "dup")
    assert kept.lines == ["POST /app 200 4.1ms version=v1", "POST /app 200 4.1ms version=v2"]
    assert len(answered) == 0


def test_rays_debug_lines_about_a_request_starting_are_left_alone():
    # Marked serve_access_log too, with no request id yet (a handler's filter adds it later).
    logger, kept, answered = naming_versions("debug")
    logger.setLevel(logging.DEBUG)
    answered.note("r1", "v1")
    logger.debug("Started executing request to method 'predict'.", extra={"serve_access_log": True})
    access_line(logger, "r1")
    assert kept.lines == ["Started executing request to method 'predict'.", "POST /app 200 4.1ms version=v1"]


def test_putting_the_filter_on_again_replaces_it_and_survives_new_handlers():
    logger, _ = ray_like_logger("again")
    first, second = VersionsAnswered(), VersionsAnswered()
    name_versions_on_access_lines(logger, first)
    name_versions_on_access_lines(logger, second)
    assert [type(f) for f in logger.filters] == [VersionOnAccessLine]
    # Ray Serve reconfiguring its logging clears the handlers, not the logger's filters.
    logger.handlers.clear()
    kept = Kept()
    logger.addHandler(kept)
    second.note("r1", "v3")
    access_line(logger, "r1")
    assert kept.lines == ["POST /app 200 4.1ms version=v3"]


def test_notes_and_lines_on_two_threads_at_once_lose_nothing():
    # An isolated router notes on its user-code thread while Ray writes lines on the replica's
    # loop: here both run at once, each line a little behind its note.
    logger, kept, answered = naming_versions("threads", max_notes=100_000)
    ids = [f"r{i // 2}" for i in range(20_000)]  # each id twice in a row, as a resent x-request-id
    noted = [0]
    start = threading.Barrier(2)

    def note_all() -> None:
        start.wait()
        for i, request_id in enumerate(ids):
            answered.note(request_id, f"v{i % 3}")
            noted[0] = i + 1

    switch_s = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads take turns far more often than by default
    try:
        thread = threading.Thread(target=note_all)
        thread.start()
        start.wait()
        for i, request_id in enumerate(ids):
            while noted[0] <= i:  # the line comes after its note, as in a replica
                pass
            access_line(logger, request_id)
        thread.join(timeout=60)
    finally:
        sys.setswitchinterval(switch_s)
    versions = [line.rsplit("version=", 1)[1] for line in kept.lines]
    assert len(versions) == len(ids) and "-" not in versions and len(answered) == 0
    assert {v: versions.count(v) for v in ("v0", "v1", "v2")} == \
        {f"v{k}": sum(1 for i in range(len(ids)) if i % 3 == k) for k in range(3)}


def test_the_controller_leaves_out_the_lines_of_routine_calls_that_succeeded():
    """Ray's handle access lines, as replica.py formats them (access_log_msg): the routers'
    long polls and reports that succeeded go; a failed one, an operator's action, a status
    read and every other record stay."""
    from ray.serve._private.logging_utils import access_log_msg

    from serve_ab.api.access_log import drop_routine_calls
    from serve_ab.serving.controller import ROUTINE_CALLS

    logger, kept = ray_like_logger("controller")
    drop_routine_calls(logger, ROUTINE_CALLS)
    drop_routine_calls(logger, ROUTINE_CALLS)  # a second replica start in one process: one filter
    assert len(logger.filters) == 1
    for method, status in (("wait_for_update", "OK"), ("record", "OK"), ("feedback", "OK"),
                           ("wait_for_update", "ERROR"), ("record", "CANCELLED"), ("act", "OK"), ("status", "OK")):
        logger.info(access_log_msg(method="CALL", route=method, status=status, latency_ms=2003.0),
                    extra={"serve_access_log": True, "request_id": f"r-{method}-{status}"})
    logger.info("CALL wait_for_update OK 1.0ms")  # not an access line (no mark): kept
    assert kept.lines == ["CALL wait_for_update ERROR 2003.0ms", "CALL record CANCELLED 2003.0ms",
                          "CALL act OK 2003.0ms", "CALL status OK 2003.0ms", "CALL wait_for_update OK 1.0ms"]


class _ServicerContext:
    """What Ray's RayServegRPCContext copies from grpc's own context when its proxy gets a call."""

    def auth_context(self):
        return {}

    def code(self):
        return None

    def details(self):
        return ""

    def invocation_metadata(self):
        return ()

    def peer(self):
        return "ipv4:127.0.0.1:50000"

    def peer_identities(self):
        return None

    def peer_identity_key(self):
        return None

    def trailing_metadata(self):
        return ()


def test_a_grpc_call_answered_with_an_error_code_shows_the_code_where_ray_wrote_ok():
    """serve-ab answers a failed gRPC call by setting its code on Ray's context (not raising,
    which would log a traceback), so Ray's line reads OK; the filter reads the code from the
    request's context, as it is when Ray writes the line, and puts it there."""
    import contextvars

    import grpc
    from ray.serve._private.logging_utils import access_log_msg
    from ray.serve.context import _RequestContext, _serve_request_context
    from ray.serve.grpc_util import RayServegRPCContext

    from serve_ab.serving.router import grpc_code_set

    logger, kept = ray_like_logger("grpc-status")
    answered = VersionsAnswered()
    name_versions_on_access_lines(logger, answered, grpc_code_set)  # as the router puts it on

    def call(request_id: str, code: grpc.StatusCode | None, version: str | None) -> None:
        grpc_context = RayServegRPCContext(_ServicerContext())
        if code is not None:
            grpc_context.set_code(code)
        if version is not None:
            answered.note(request_id, version)
        _serve_request_context.set(_RequestContext(request_id=request_id, grpc_context=grpc_context))
        access_line(logger, request_id, access_log_msg(method="CALL", route="digits", status="OK", latency_ms=3.4))

    for request_id, code, version in (("refused", grpc.StatusCode.INVALID_ARGUMENT, None),
                                      ("answered", None, "v1"), ("ok-set", grpc.StatusCode.OK, None),
                                      ("unknown-model", grpc.StatusCode.NOT_FOUND, None)):
        contextvars.copy_context().run(call, request_id, code, version)  # each call its own context
    # A handle call: no gRPC context (its own context too: reading Ray's sets a default there).
    contextvars.copy_context().run(access_line, logger, "handle-call", "CALL experiment OK 1.2ms")
    assert kept.lines == ["CALL digits INVALID_ARGUMENT 3.4ms version=-", "CALL digits OK 3.4ms version=v1",
                          "CALL digits OK 3.4ms version=-", "CALL digits NOT_FOUND 3.4ms version=-",
                          "CALL experiment OK 1.2ms version=-"]


def test_the_status_word_is_the_one_before_the_latency():
    from serve_ab.api.access_log import with_grpc_code

    def unavailable() -> str:
        return "UNAVAILABLE"

    assert with_grpc_code("CALL app OK 2.0ms", unavailable) == "CALL app UNAVAILABLE 2.0ms"
    # With the client's address first (RAY_SERVE_LOG_CLIENT_ADDRESS), and a route holding " OK ".
    assert with_grpc_code("10.0.0.1:5 CALL my OK app OK 2.0ms", unavailable) == "10.0.0.1:5 CALL my OK app UNAVAILABLE 2.0ms"
    # Ray's ERROR or CANCELLED (the call raised), an HTTP line, a route named OK: as they are.
    for line in ("CALL app ERROR 2.0ms", "POST / 400 0.8ms", "CALL OK CANCELLED 2.0ms", "CALL app OK"):
        assert with_grpc_code(line, unavailable) == line
