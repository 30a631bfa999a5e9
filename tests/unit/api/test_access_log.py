"""The access line: the version that answered; a held line waits until the answer has left."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading

from serve_ab.api.access_log import AccessLines, AccessLog, CallsInFlight

REQUEST = contextvars.ContextVar("request", default=None)  # stands in for Ray's request context


class Kept(logging.Handler):
    """Each record as Ray's filters would see it: the request context when it is handled."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, str | None, str | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.getMessage(), getattr(record, "request_id", None), REQUEST.get()))


def kept_logger(name: str) -> tuple[logging.Logger, Kept]:
    logger = logging.getLogger(f"test-access-log.{name}")
    logger.handlers[:], logger.propagate = [], False
    logger.setLevel(logging.INFO)
    handler = Kept()
    logger.addHandler(handler)
    return logger, handler


async def answer(app) -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app({"type": "http", "method": "POST", "path": "/predict", "headers": []}, receive, send)
    return sent


def test_an_http_line_names_the_version_and_is_written_with_the_answer():
    logger, kept = kept_logger("http")

    async def model(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-model-version", b"v3")]})
        await send({"type": "http.response.body", "body": b"{}"})

    async def main() -> None:
        REQUEST.set("r1")
        sent = await answer(AccessLog(model, AccessLines(logger), request_id=REQUEST.get))
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        assert len(kept.lines) == 1  # written before the loop runs anything else

    asyncio.run(main())
    ((message, request_id, context),) = kept.lines
    assert message.startswith("POST /predict 200 version=v3 ") and message.endswith("ms")
    assert request_id == "r1" and context == "r1"


def test_a_failed_request_is_logged_as_a_500_with_no_version():
    logger, kept = kept_logger("failed")

    async def broken(scope, receive, send):
        raise RuntimeError("model crashed")

    async def main() -> None:
        try:
            await answer(AccessLog(broken, AccessLines(logger), request_id=lambda: "r9"))
        except RuntimeError:
            pass

    asyncio.run(main())
    ((message, request_id, _),) = kept.lines
    assert message.startswith("POST /predict 500 version=- ") and request_id == "r9"


def test_a_held_line_waits_for_the_loop_then_is_written_in_its_calls_context():
    logger, kept = kept_logger("held")
    lines = AccessLines(logger, delay_s=0.001)

    async def one_call(request_id: str) -> None:
        REQUEST.set(request_id)  # a task's own context, as Ray gives each request
        lines.write("predict version=%s %.1fms", "v3", 1.25, request_id=request_id, hold=True)
        assert kept.lines == []  # the call returns before its line is written

    async def main() -> None:
        await asyncio.gather(asyncio.create_task(one_call("r1")), asyncio.create_task(one_call("r2")))
        assert len(lines) == 2
        await asyncio.sleep(0.05)  # past the delay: the loop writes what it holds

    asyncio.run(main())
    assert len(lines) == 0
    assert sorted((rid, context) for _, rid, context in kept.lines) == [("r1", "r1"), ("r2", "r2")]
    assert {message for message, _, _ in kept.lines} == {"predict version=v3 1.2ms"}


def test_outside_an_event_loop_a_held_line_is_written_at_once():
    logger, kept = kept_logger("at-once")
    AccessLines(logger).write("predict version=%s", "v1", request_id="r1", hold=True)
    assert kept.lines == [("predict version=v1", "r1", None)]


def test_lines_held_on_a_loop_that_stopped_are_written_not_lost():
    logger, kept = kept_logger("stopped")
    lines = AccessLines(logger, delay_s=60.0)  # never due while these loops run

    async def write(version: str) -> None:
        lines.write("predict version=%s", version, request_id=version, hold=True)

    asyncio.run(write("v1"))  # its loop is closed with the line held
    assert kept.lines == [] and len(lines) == 1
    asyncio.run(write("v2"))  # the next loop's first held line writes the stopped loop's
    assert [m for m, _, _ in kept.lines] == ["predict version=v1"] and len(lines) == 1
    lines.flush()  # what a stopping replica does
    assert [m for m, _, _ in kept.lines] == ["predict version=v1", "predict version=v2"] and len(lines) == 0


def test_calls_in_flight_counts_each_call_out_however_it_ends():
    calls = CallsInFlight()

    async def call(outcome: str) -> None:
        with calls:
            assert not calls.none
            await asyncio.sleep(0.01)
            if outcome == "error":
                raise ValueError("bad input")

    async def main() -> None:
        done = asyncio.create_task(call("ok"))
        failed = asyncio.create_task(call("error"))
        cancelled = asyncio.create_task(call("ok"))
        await asyncio.sleep(0)
        assert calls.count == 3
        cancelled.cancel()
        results = await asyncio.gather(done, failed, cancelled, return_exceptions=True)
        assert results[0] is None and isinstance(results[1], ValueError)
        assert isinstance(results[2], asyncio.CancelledError)

    asyncio.run(main())
    assert calls.none and calls.count == 0


def test_a_line_that_fails_to_be_written_loses_only_itself(capsys):
    logger, kept = kept_logger("failing")
    logger.addFilter(lambda record: 1 / 0 if record.args == ("v2",) else True)  # a broken filter
    lines = AccessLines(logger, delay_s=60.0)

    async def main() -> None:
        for version in ("v1", "v2", "v3"):
            lines.write("predict version=%s", version, request_id=version, hold=True)
        lines.flush()

    asyncio.run(main())
    assert [m for m, _, _ in kept.lines] == ["predict version=v1", "predict version=v3"]
    assert "ZeroDivisionError" in capsys.readouterr().err


def test_a_line_from_a_second_running_loop_is_written_at_once_and_the_firsts_stay_held():
    logger, kept = kept_logger("two-loops")
    lines = AccessLines(logger, delay_s=60.0)
    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever, daemon=True)
    thread.start()
    try:
        async def hold(version: str) -> None:
            lines.write("predict version=%s", version, request_id=version, hold=True)

        asyncio.run_coroutine_threadsafe(hold("v1"), other).result(timeout=10)
        assert kept.lines == [] and len(lines) == 1
        asyncio.run(hold("v2"))  # this thread's loop: the other one still runs and holds v1
        assert [m for m, _, _ in kept.lines] == ["predict version=v2"] and len(lines) == 1
    finally:
        other.call_soon_threadsafe(other.stop)
        thread.join(timeout=10)
        other.close()
    lines.flush()
    assert [m for m, _, _ in kept.lines] == ["predict version=v2", "predict version=v1"]
