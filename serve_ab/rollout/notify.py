"""Notifications: every rollout event, sent to webhooks and Slack, never in the rollout's way.

Configured under ``notifications:`` in the experiment::

    notifications:
      - {type: slack, url_from_env: SLACK_WEBHOOK_URL, events: [phase_changed, analysis_failed, action]}
      - {type: webhook, url: https://ops.example.com/serve-ab, headers_from_env: {Authorization: OPS_TOKEN}}

Events come from the rollout's history (:func:`events_from_history`), one per entry, of the
first kind that fits:

- ``phase_changed``: the phase moved (``from_phase`` is null for the rollout's start), whoever
  moved it: an operator's abort, rollback, ``promote --full`` or pause is one too, with its
  ``action`` and ``actor`` in the payload;
- ``action``: an operator's action (promote, pause, resume, abort, rollback, weights) that left
  the phase as it was, with the ``actor`` who asked (name, role, address: never a token);
- ``analysis_failed``: an analysis failed (the abort that may follow is a ``phase_changed``);
- ``progress``: the phase stayed, something else happened (a step done, weights set, a hold).

A receiver's ``events`` picks what it gets, and it gets each entry once: one subscribed to
``phase_changed`` hears every phase change (an operator's too); one subscribed to ``action``
hears every operator's action, also those that changed the phase (sent as ``phase_changed``,
``action`` set); one subscribed to both gets such an entry once.

A ``webhook`` receiver gets :func:`webhook_payload`, one JSON object per event::

    {"schema": 1, "source": "serve-ab", "event": "phase_changed", "app": "digits",
     "model": "digits", "rollout": "digits:canary:v1->v2", "strategy": "canary",
     "stable": "v1", "candidate": "v2", "from_phase": "progressing", "phase": "aborted",
     "step_index": 1, "weights_pct": {"v1": 100.0, "v2": 0.0}, "reason": "v2 failed ...",
     "action": null, "actor": null, "t_s": 1700000000.0, "time": "2023-11-14T22:13:20Z",
     "revision": 7, "seq": 12, "event_id": "digits:canary:v1->v2#12"}

``seq`` numbers the rollout's history entries from 1, and ``event_id`` (``<rollout>#<seq>``)
is the same for every delivery of one entry: an attempt that timed out may still have reached
the receiver, so the retry delivers the event again, and a receiver drops repeats by its id
(``revision`` will not do: one decision's entries share it, and an action that changed
nothing keeps it).

A ``slack`` receiver gets :func:`slack_payload`, ``{"text": ...}`` (Slack's incoming
webhooks, and Mattermost's or Rocket.Chat's, take it).

:class:`NotificationSender` sends: one thread and one bounded FIFO queue per receiver, so
:meth:`~NotificationSender.publish` never blocks and events reach each receiver in order
(an event is retried, with exponential backoff and a bounded number of attempts, before the
next is sent). A receiver that stays down does not hold the others up. Sent and failed
events are counted per receiver (``serve_ab_notifications_sent_total`` and
``..._failed_total``); failures are logged by the receiver's label and the status or error
type, never its URL or headers, which may hold secrets. Delivery is in memory: events queued
when the controller stops are lost; while it runs, an event is tried up to ``max_attempts``
times, so a receiver slower than ``timeout_s`` may get one more than once (``event_id``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from serve_ab.config.rollout import NotificationReceiver, ReceiverType
from serve_ab.rollout.machine import ANALYSIS_FAILED
from serve_ab.rollout.webhook import MissingSecret, resolve_headers, resolve_url

logger = logging.getLogger("ray.serve")

__all__ = ["NotificationSender", "RolloutEvent", "backoff_delays", "event_kind", "events_from_history",
           "slack_payload", "wanted", "webhook_payload"]

PAYLOAD_SCHEMA = 1
#: Events waiting per receiver; more while it is down are dropped (and counted as failed).
QUEUE_SIZE = 1000


@dataclass(frozen=True)
class RolloutEvent:
    """One history entry of a rollout, with what a receiver needs to read it alone."""

    event: str  # phase_changed | action | analysis_failed | progress
    model: str
    rollout: str  # the persisted rollout's key, e.g. digits:canary:v1->v2
    strategy: str
    stable: str
    candidate: str
    phase: str
    from_phase: str | None
    step_index: int
    weights_pct: Mapping[str, float]
    reason: str
    t_s: float
    revision: int
    app: str | None = None  # the Ray Serve application, where known
    action: str | None = None
    actor: Mapping[str, Any] | None = None
    #: The entry's number in the rollout's history, from 1 (``RolloutState.entries_total``):
    #: a retry after a timeout may deliver an event twice, and this tells the two apart from
    #: two entries alike (one decision's entries share ``t_s`` and ``revision``).
    seq: int | None = None

    @property
    def event_id(self) -> str | None:
        """``<rollout>#<seq>``: the same for every delivery of one entry, unique within the rollout."""
        return None if self.seq is None else f"{self.rollout}#{self.seq}"


def event_kind(entry: Mapping[str, Any]) -> str:
    """The event a history entry is: phase_changed, action, analysis_failed or progress.

    A phase change is ``phase_changed`` whoever caused it: were an operator's abort an
    ``action`` only, a receiver of [phase_changed, analysis_failed] never heard of it."""
    if entry.get("from_phase") != entry.get("to_phase"):
        return "phase_changed"
    if entry.get("action") and entry.get("actor") is not None:  # the controller's own acts have none
        return "action"
    if str(entry.get("reason", "")).startswith(ANALYSIS_FAILED):
        return "analysis_failed"
    return "progress"


def events_from_history(entries: Iterable[Mapping[str, Any]], *, model: str, rollout: str, strategy: str,
                        stable: str, candidate: str, revision: int, weights_pct: Mapping[str, float],
                        app: str | None = None, first_seq: int | None = None) -> list[RolloutEvent]:
    """One event per history entry, in order; ``weights_pct`` stands in for an entry that
    does not carry its own (written before entries did). ``first_seq``: the first entry's
    number in the rollout's history (the others follow it), which makes each event's id."""
    return [
        RolloutEvent(
            event=event_kind(entry), model=model, rollout=rollout, strategy=strategy, stable=stable,
            candidate=candidate, phase=entry["to_phase"], from_phase=entry.get("from_phase"),
            step_index=int(entry.get("step_index", 0)), weights_pct=dict(entry.get("weights") or weights_pct),
            reason=str(entry.get("reason", "")), t_s=float(entry["t_s"]), revision=revision, app=app,
            action=entry.get("action"), actor=entry.get("actor"),
            seq=None if first_seq is None else first_seq + i,
        )
        for i, entry in enumerate(entries)
    ]


def wanted(event: RolloutEvent, events: Iterable[str]) -> bool:
    """Whether a receiver of ``events`` gets ``event``: its kind is one of them, or it came
    from an operator's action and they include ``action`` (an abort is a ``phase_changed``).
    An operator's: one with an actor; the controller's own abort of a candidate that failed
    to load names the action too, with no actor."""
    events = set(events)
    return event.event in events or (event.actor is not None and "action" in events)


def _iso(t_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t_s)) + f".{int(t_s % 1 * 1000):03d}Z"


def webhook_payload(event: RolloutEvent) -> dict[str, Any]:
    """The JSON object a ``webhook`` receiver gets (documented in the module docstring)."""
    return {
        "schema": PAYLOAD_SCHEMA, "source": "serve-ab", "event": event.event, "app": event.app or event.model,
        "model": event.model, "rollout": event.rollout, "strategy": event.strategy, "stable": event.stable,
        "candidate": event.candidate, "from_phase": event.from_phase, "phase": event.phase,
        "step_index": event.step_index, "weights_pct": dict(event.weights_pct), "reason": event.reason,
        "action": event.action, "actor": dict(event.actor) if event.actor is not None else None,
        "t_s": event.t_s, "time": _iso(event.t_s), "revision": event.revision, "seq": event.seq,
        "event_id": event.event_id,
    }


def _at_step(event: RolloutEvent, joint: str) -> str:
    """`` at step 3`` as people count steps (``serve-ab status``: from 1; ``step_index`` counts
    from 0); nothing for blue-green, whose step index is internal (its phase says where)."""
    return "" if event.strategy == "blue_green" else f"{joint} step {event.step_index + 1}"


def slack_payload(event: RolloutEvent) -> dict[str, Any]:
    """``{"text": ...}``: one line a person reads in a channel."""
    weights = " / ".join(f"{version} {pct:g}%" for version, pct in event.weights_pct.items())
    where = f"{event.app or event.model} ({event.strategy} {event.stable} -> {event.candidate})"
    if event.action:  # an operator's, whether or not it changed the phase
        actor = event.actor or {}
        by = f" by {actor.get('name', 'unknown')} ({actor.get('role', '?')})" if event.actor else ""
        what = f"*{event.action}*{by}, now {event.phase}"
    elif event.event == "phase_changed":
        what = f"*{event.from_phase or 'start'} -> {event.phase}*"
    elif event.event == "analysis_failed":
        what = f"*analysis failed*{_at_step(event, ' at')}"
    else:
        what = f"{event.phase}{_at_step(event, ',')}"
    icon = {"aborted": ":red_circle:", "promoted": ":large_green_circle:"}.get(event.phase, ":arrows_counterclockwise:")
    if event.event == "analysis_failed":
        icon = ":warning:"
    return {"text": f"{icon} serve-ab {where}: {what}; weights {weights}. {event.reason}"}


def backoff_delays(max_attempts: int, base_s: float = 1.0, cap_s: float = 60.0) -> list[float]:
    """The waits between ``max_attempts`` tries: base, 2 base, 4 base, ..., at most ``cap_s``.

    >>> backoff_delays(5, 1.0, 5.0)
    [1.0, 2.0, 4.0, 5.0]
    """
    return [min(base_s * 2 ** k, cap_s) for k in range(max(max_attempts - 1, 0))]


def _retryable(status: int) -> bool:
    """Worth another try: the receiver's trouble (5xx), a timeout (408), rate limiting (429).
    Any other 4xx is the request's fault and would fail the same way again."""
    return status >= 500 or status in (408, 429)


@dataclass
class _Counts:
    sent: int = 0
    failed: int = 0


@dataclass
class _Worker:
    receiver: NotificationReceiver
    queue: queue.Queue = field(default_factory=lambda: queue.Queue(QUEUE_SIZE))
    counts: _Counts = field(default_factory=_Counts)
    thread: threading.Thread | None = None


class NotificationSender:
    """Sends rollout events to receivers from background threads; see the module docstring.

    ``sleep`` waits between attempts (injectable: tests pass a fake clock's); ``env`` holds
    the secrets ``url_from_env`` and ``headers_from_env`` name, read once here.
    """

    def __init__(self, receivers: Sequence[NotificationReceiver], *, env: Mapping[str, str] = os.environ,
                 sleep: Callable[[float], None] = time.sleep, backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.sleep = sleep
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._workers = [_Worker(receiver) for receiver in receivers]
        for worker in self._workers:
            try:
                target: tuple[str, dict[str, str]] | str = (
                    resolve_url(worker.receiver, env),
                    resolve_headers(worker.receiver.headers, worker.receiver.headers_from_env, env))
            except MissingSecret as err:  # every event to it fails, counted and logged; the rollout goes on
                logger.error("serve-ab notifications: receiver %s cannot send: %s", worker.receiver.label, err)
                target = str(err)
            worker.thread = threading.Thread(target=self._serve, args=(worker, target, transport), daemon=True,
                                             name=f"serve-ab-notify-{worker.receiver.label}")
            worker.thread.start()

    @classmethod
    def maybe(cls, receivers: Sequence[NotificationReceiver], **kwargs: Any) -> NotificationSender | None:
        """A sender for ``receivers``, or None when there are none (no threads started)."""
        return cls(receivers, **kwargs) if receivers else None

    def publish(self, events: Iterable[RolloutEvent]) -> None:
        """Queue ``events`` for every receiver that wants them; never blocks."""
        for event in events:
            for worker in self._workers:
                if not wanted(event, worker.receiver.events):
                    continue
                try:
                    worker.queue.put_nowait(event)
                except queue.Full:
                    worker.counts.failed += 1
                    logger.warning("serve-ab notifications: receiver %s is %d events behind; %s event dropped",
                                   worker.receiver.label, QUEUE_SIZE, event.event)

    def counts(self) -> dict[str, dict[str, int]]:
        """Events sent and failed (after every attempt, or dropped), by receiver label."""
        return {w.receiver.label: {"sent": w.counts.sent, "failed": w.counts.failed} for w in self._workers}

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued event was sent or given up on; False if ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        while any(w.queue.unfinished_tasks for w in self._workers):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout_s: float = 2.0) -> None:
        """Send what is queued for up to ``timeout_s``, then stop the threads."""
        self.flush(timeout_s)
        for worker in self._workers:
            try:
                worker.queue.put_nowait(None)
            except queue.Full:
                pass

    # -- the threads -------------------------------------------------------------------------

    def _serve(self, worker: _Worker, target: tuple[str, dict[str, str]] | str,
               transport: httpx.AsyncBaseTransport | None) -> None:
        receiver = worker.receiver
        # An event loop of this thread's own, so that asyncio.wait_for can bound a whole
        # request: httpx's timeouts bound each read, and a receiver trickling a byte per read
        # held a sync request (and every event behind it) for as long as it liked.
        loop = asyncio.new_event_loop()
        client = httpx.AsyncClient(timeout=receiver.timeout_s, transport=transport) \
            if isinstance(target, tuple) else None
        try:
            while True:
                event = worker.queue.get()
                try:
                    if event is None:
                        return
                    if client is None:
                        worker.counts.failed += 1
                        logger.warning("serve-ab notifications: %s event not sent to %s: %s",
                                       event.event, receiver.label, target)
                    elif loop.run_until_complete(self._send(client, receiver, target, event)):
                        worker.counts.sent += 1
                    else:
                        worker.counts.failed += 1
                except Exception:  # a bug here must not stop this receiver's later events
                    worker.counts.failed += 1
                    logger.exception("serve-ab notifications: sending to %s failed", receiver.label)
                finally:
                    worker.queue.task_done()
        finally:
            if client is not None:
                loop.run_until_complete(client.aclose())
            loop.close()

    async def _send(self, client: httpx.AsyncClient, receiver: NotificationReceiver, target: tuple[str, dict[str, str]],
              event: RolloutEvent) -> bool:
        """One event, retried; True once delivered (2xx). Each attempt takes at most the
        receiver's ``timeout_s``, all of it (connecting, sending, the whole answer)."""
        url, headers = target
        body = slack_payload(event) if receiver.type is ReceiverType.SLACK else webhook_payload(event)
        delays = backoff_delays(receiver.max_attempts, self.backoff_s, self.max_backoff_s)
        problem = ""
        for attempt in range(1, receiver.max_attempts + 1):
            try:
                response = await asyncio.wait_for(client.post(url, json=body, headers=headers), receiver.timeout_s)
            except asyncio.TimeoutError:
                problem, retry = f"no answer within timeout_s {receiver.timeout_s:g}", True
            except httpx.HTTPError as err:  # named by type only: httpx puts the URL in some messages
                problem, retry = f"{type(err).__name__}", True
            else:
                if 200 <= response.status_code < 300:
                    return True
                problem, retry = f"HTTP {response.status_code}", _retryable(response.status_code)
            if not retry or attempt == receiver.max_attempts:
                break
            self.sleep(delays[attempt - 1])  # blocks only this thread's loop, which has nothing else to run
        logger.warning("serve-ab notifications: %s event (revision %d) not delivered to %s after %d attempt(s): %s",
                       event.event, event.revision, receiver.label, attempt, problem)
        return False
