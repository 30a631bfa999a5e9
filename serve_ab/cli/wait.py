"""``serve-ab status --wait|--watch``: poll ``/rollout/status`` until the rollout ends.

The loop is a function of a ``fetch`` callable, a clock and a sleep, so tests drive it with
a fake clock and never sleep. It ends when the rollout does: ``promoted`` (a blue-green
rollout reaches it once its post-switch watch has passed) exits 0, ``aborted`` (failed,
aborted or rolled back) exits 1, and so does an app with no rollout at all; a deadline
passed first exits 3.

An app that cannot be reached at the first poll ends the wait at once (exit 4: a typo in a
URL must not hold a CI job for its whole timeout). Once it has answered, a failed poll (a
proxy restarting, a controller moving node) is retried for up to ``UNREACHABLE_GRACE_S``
before the wait gives up with that failure's code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from serve_ab.api.status import RolloutStatus
from serve_ab.cli.options import ExitCode, RequestFailed

__all__ = ["UNREACHABLE_GRACE_S", "WaitResult", "end_code", "wait_for_rollout"]

UNREACHABLE_GRACE_S = 60.0
# Phases that end a rollout (serve_ab.rollout.machine.TERMINAL_PHASES), and their exit codes.
_END_CODES = {"promoted": ExitCode.OK, "aborted": ExitCode.FAILED}


@dataclass(frozen=True)
class WaitResult:
    code: int
    status: RolloutStatus | None  # the last status the app gave, if any
    lines: tuple[str, ...] = field(default=())  # why, for people


def end_code(status: RolloutStatus) -> int | None:
    """The exit code of a status whose rollout has ended, else None."""
    if status.strategy is None:
        # Static weights: nothing will be promoted. Not 0, which says "promoted": a CI job
        # waiting on the wrong app (or one deployed without its rollout) must not pass.
        return ExitCode.FAILED
    return _END_CODES.get(status.phase)


def wait_for_rollout(
    fetch: Callable[[], RolloutStatus], *, timeout_s: float | None, interval_s: float,
    clock: Callable[[], float], sleep: Callable[[float], None],
    on_status: Callable[[RolloutStatus, float], None] = lambda status, elapsed_s: None,
    on_failure: Callable[[RequestFailed, float], None] = lambda failure, elapsed_s: None,
) -> WaitResult:
    """Poll ``fetch`` every ``interval_s`` until the rollout ends or ``timeout_s`` passes.

    ``fetch`` returns a status or raises RequestFailed; ``on_status``/``on_failure`` see every
    poll with the seconds elapsed since the start.
    """
    start = clock()
    deadline = start + timeout_s if timeout_s is not None else math.inf
    last: RolloutStatus | None = None
    failing_since: float | None = None
    while True:
        now = clock()
        try:
            status = fetch()
        except RequestFailed as failure:
            if last is None:
                return WaitResult(failure.code, None, failure.lines)
            failing_since = now if failing_since is None else failing_since
            on_failure(failure, now - start)
            if now - failing_since >= UNREACHABLE_GRACE_S:
                return WaitResult(failure.code, last, (*failure.lines,
                                  f"error: gave up after {now - failing_since:.0f} s of failed polls"))
        else:
            failing_since, last = None, status
            on_status(status, now - start)
            code = end_code(status)
            if code is not None:
                return WaitResult(code, status, (_ended_line(status, now - start),))
        now = clock()
        if now >= deadline:
            return WaitResult(ExitCode.TIMEOUT, last, _timeout_lines(last, now - start))
        sleep(max(min(interval_s, deadline - now), 0.0))


def _ended_line(status: RolloutStatus, elapsed_s: float) -> str:
    if status.strategy is None:
        return ("error: this app has no rollout (static weights): nothing to wait for; --wait and --watch "
                "follow a canary or blue-green rollout (check --app/--url, and the config's rollout section)")
    reason = f": {status.reason}" if status.reason else ""
    return f"{status.phase} after {elapsed_text(elapsed_s)}{reason}"


def _timeout_lines(status: RolloutStatus | None, elapsed_s: float) -> tuple[str, ...]:
    lines = [f"error: timed out after {elapsed_text(elapsed_s)} waiting for the rollout to end"
             + (f"; it is still {progress_text(status)}" if status else "")]
    phase = status.phase if status else None
    if phase == "paused":
        lines.append("hint: a paused rollout waits for `serve-ab promote` (or resume, after an operator's pause)")
    elif phase == "validated":
        lines.append("hint: a validated blue-green rollout waits for `serve-ab promote` to switch")
    return tuple(lines)


def progress_text(status: RolloutStatus) -> str:
    """``paused, step 2 of 3: pause, v1 80% v2 20% (reason)``: one line for a progress log."""
    phase = status.phase
    at = step_text(status)
    weights = " ".join(f"{name} {pct:g}%" for name, pct in status.weights_pct.items())
    reason = f" ({status.reason})" if status.reason else ""
    return f"{phase}{at}, {weights}{reason}" if weights else f"{phase}{at}{reason}"


def step_text(status: RolloutStatus) -> str:
    """``, step 2 of 3: pause 10s`` while the rollout is at a step; for one that ended there
    (``promote --full``, an abort), ``, at step 4 of 7 (pause 10s)``: where it ended, not a
    step it is in. Empty where there is none (a canary promoted after its last step)."""
    index, total, step = status.step_index, status.steps_total, status.step
    if index is None or not total or step is None:
        return ""
    # step_index counts from 0; people count from 1.
    if status.phase in _END_CODES:
        return f", at step {index + 1} of {total} ({step})"
    return f", step {index + 1} of {total}: {step}"


def progress_key(status: RolloutStatus) -> tuple:
    """What a progress line is printed on a change of: phase, step and weights (not the reason,
    whose countdown changes every poll)."""
    weights = tuple(sorted(status.weights_pct.items()))
    return status.phase, status.step_index, weights


def elapsed_text(seconds: float) -> str:
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 1 or seconds == 0 else f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
