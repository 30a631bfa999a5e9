"""Webhook gates and confirm steps: external systems that judge or approve a rollout.

Both are endpoints serve-ab asks with ``POST`` and a JSON description of the rollout::

    {"kind": "gate" | "confirm", "name": "smoke", "model": "digits", "stable": "v1",
     "candidate": "v2", "phase": "progressing", "step_index": 2, "weights_pct": {"v1": 80, "v2": 20}}

- a gate ``{metric: webhook, url: ..., timeout_s: 5, name?: ..., min|max?: ...}`` wants 2xx
  with ``{"pass": true|false, "reason"?: "..."}`` and/or ``{"value": 0.93}`` (judged by the
  gate's min or max); see :mod:`serve_ab.rollout.gates` for the verdicts;
- a confirm step ``{confirm: {url: ..., interval_s?: 10s}}`` wants 2xx with
  ``{"confirm": true}``; ``false`` (with an optional ``reason``) keeps it waiting.

A timeout (no whole answer within ``timeout_s``, which bounds the request, not each read), a
refused connection, a non-2xx status or a body that is not such an object is no answer: the gate is INCONCLUSIVE (it holds the rollout, and ``progress_deadline_s`` ends an
outage that lasts) and the confirm step keeps waiting; neither ever passes on it.

:class:`WebhookPoller` asks in the background, like :class:`serve_ab.rollout.promql.PromQLPoller`:
a slow endpoint never delays a tick, which judges the latest answers.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from serve_ab.config.rollout import ConfirmStep, GateMetric, HttpHook, NotificationReceiver, RolloutConfig, display_url
from serve_ab.rollout.failure_log import FailureLog
from serve_ab.rollout.gates import WebhookResult
from serve_ab.rollout.machine import Rollout

logger = logging.getLogger("ray.serve")

# httpx logs every request at INFO with its full URL ("HTTP Request: POST https://hooks.slack.com/
# services/T0/B0/<secret>"): a Slack webhook's path or a ?token= is a secret, which serve-ab's own
# messages never print (they say display_url or $VAR). The notification sender imports this module.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)

__all__ = ["MissingSecret", "WebhookAnswers", "WebhookPoller", "ask", "confirm_key", "gate_key", "resolve_headers",
           "resolve_url", "unset_env_vars"]

# A reason quoted from an answer is cut here: it ends up in history entries and status lines.
MAX_REASON_CHARS = 300


class MissingSecret(ValueError):
    """An environment variable a hook needs is not set (its name is in the message, never a value)."""


def resolve_url(hook: HttpHook, env: Mapping[str, str] = os.environ) -> str:
    if hook.url is not None:
        return hook.url
    url = env.get(hook.url_from_env or "")
    if not url:
        raise MissingSecret(f"environment variable {hook.url_from_env} (url_from_env) is not set")
    return url


def resolve_headers(headers: Mapping[str, str], headers_from_env: Mapping[str, str],
                    env: Mapping[str, str] = os.environ) -> dict[str, str]:
    out = dict(headers)
    for name, variable in headers_from_env.items():
        value = env.get(variable)
        if value is None:
            raise MissingSecret(f"environment variable {variable} (headers_from_env.{name}) is not set")
        out[name] = value
    return out


#: What keys a request and its answer in :class:`WebhookPoller`: ("gate", gate key) or
#: ("confirm", step index). Tuples, not strings: a gate's name is the user's to choose, and a
#: gate named confirm@1 once shared a key with confirm step 1 (its pass confirmed the step).
HookKey = tuple[str, Any]


def gate_key(key: str) -> HookKey:
    """The key of a webhook gate's answer, from its :attr:`~serve_ab.config.rollout.Gate.key`."""
    return ("gate", key)


def unset_env_vars(notifications: Sequence[NotificationReceiver], rollout: RolloutConfig | None,
                   env: Mapping[str, str] = os.environ) -> list[tuple[str, str]]:
    """``(field path, variable)`` for each ``url_from_env`` and ``headers_from_env`` variable of
    the receivers, webhook gates and confirm steps that ``env`` lacks, as :func:`resolve_url`
    and :func:`resolve_headers` would find them: else that is found only mid-rollout, when a
    gate holds, a confirm step waits or an event is lost. Names, never values."""
    hooks: list[tuple[str, str | None, Mapping[str, str]]] = [
        (f"notifications[{i}]", r.url_from_env, r.headers_from_env) for i, r in enumerate(notifications)]
    if rollout is not None:
        hooks += [(f"rollout.gates[{i}]", None, g.headers_from_env or {}) for i, g in enumerate(rollout.gates)]
        hooks += [(f"rollout.steps[{i}].confirm", step.confirm.url_from_env, step.confirm.headers_from_env)
                  for i, step in enumerate(rollout.steps) if isinstance(step, ConfirmStep)]
    unset = []
    for where, url_from_env, headers_from_env in hooks:
        if url_from_env is not None and not env.get(url_from_env):
            unset.append((f"{where}.url_from_env", url_from_env))
        unset += [(f"{where}.headers_from_env.{name}", variable)
                  for name, variable in headers_from_env.items() if env.get(variable) is None]
    return unset


def confirm_key(step_index: int) -> HookKey:
    """The key of a confirm step's answer: one per step, so an old yes never confirms a later step."""
    return ("confirm", step_index)


@dataclass(frozen=True)
class WebhookAnswers:
    """The latest answers, gates' and confirm steps' apart, so that neither can stand for the other."""

    gates: Mapping[str, WebhookResult] = field(default_factory=dict)  # by Gate.key
    confirms: Mapping[int, WebhookResult] = field(default_factory=dict)  # by step index

    def confirm(self, step_index: int) -> WebhookResult | None:
        return self.confirms.get(step_index)


async def ask(url: str, payload: Mapping[str, Any], *, timeout_s: float, answer: str = "pass",
              headers: Mapping[str, str] | None = None, asked_at_s: float = 0.0,
              client: httpx.AsyncClient | None = None, target: str | None = None, log: bool = True) -> WebhookResult:
    """POST ``payload`` to ``url`` and read ``answer`` (``pass`` or ``confirm``) from the reply;
    never raises for what the endpoint or the network does. ``target`` names the endpoint in
    the result, the status and the log: the hook's :attr:`~serve_ab.config.rollout.HttpHook.target`
    (``$VAR`` for a URL that is itself a secret); by default ``url`` without its query.
    ``log``: warn of a failure here (:class:`WebhookPoller` logs its hooks' failures as spells)."""
    target = display_url(url) if target is None else target
    try:
        # httpx's timeout bounds each read: an endpoint sending a byte every 0.25 s held a
        # timeout_s 0.5 request for 6.8 s, and its answer was used. wait_for bounds the whole.
        response = await asyncio.wait_for(_post(url, payload, headers, timeout_s, client), timeout_s)
        passed, value, reason = _parse(response, target, answer, url)
    except (httpx.TimeoutException, asyncio.TimeoutError):
        error = f"no answer from {target} within timeout_s {timeout_s:g}"
    except httpx.HTTPError as err:  # connection refused, DNS, a broken reply
        error = f"cannot reach {target}: {type(err).__name__}"
    except httpx.InvalidURL:  # not an HTTPError; its text quotes the URL, which may be a secret
        error = f"{target} is not a valid URL"
    except _BadAnswer as err:
        error = str(err)
    else:
        return WebhookResult(target, passed, value, reason, None, asked_at_s)
    if log:
        logger.warning("serve-ab %s %s: %s", "confirm step" if answer == "confirm" else "webhook gate", target, error)
    return WebhookResult(target, error=error, asked_at_s=asked_at_s)


async def _post(url: str, payload: Mapping[str, Any], headers: Mapping[str, str] | None, timeout_s: float,
                client: httpx.AsyncClient | None) -> httpx.Response:
    if client is None:
        async with httpx.AsyncClient(timeout=timeout_s) as own:
            return await own.post(url, json=dict(payload), headers=dict(headers or {}))
    return await client.post(url, json=dict(payload), headers=dict(headers or {}), timeout=timeout_s)


class _BadAnswer(ValueError):
    pass


def _hidden(text: str, url: str, target: str) -> str:
    """``text`` (an endpoint's answer) with the URL asked, and its path, said as ``target``: an
    endpoint may echo its own URL, which for ``url_from_env`` is a secret."""
    path = httpx.URL(url).path
    text = text.replace(url, target)
    return text.replace(path, target) if len(path) > 1 else text


def _parse(response: httpx.Response, target: str, answer: str,
           url: str = "") -> tuple[bool | None, float | None, str | None]:
    expected = ('{"confirm": true}' if answer == "confirm"
                else '{"pass": true} or {"pass": false, "reason": "..."} or {"value": 0.93}')
    if url and target != display_url(url):  # a secret URL: not in what the answer shows
        response = httpx.Response(response.status_code, text=_hidden(response.text, url, target))
    if not 200 <= response.status_code < 300:
        raise _BadAnswer(f"HTTP {response.status_code} from {target}: {response.text[:200]!r}")
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _BadAnswer(f"{target} answered {response.text[:200]!r}, not a JSON object like {expected}")
    passed, value, reason = body.get(answer), body.get("value"), body.get("reason")
    if passed is not None and not isinstance(passed, bool):
        raise _BadAnswer(f"{target} answered {answer}: {passed!r}; it must be true or false, e.g. {expected}")
    if value is not None:
        value = _finite(value, target)
    if passed is None and (answer == "confirm" or value is None):
        raise _BadAnswer(f"{target} answered {str(body)[:200]}, without {answer}; expected {expected}")
    if reason is not None:
        reason = str(reason)[:MAX_REASON_CHARS]
    return passed, value, reason


def _finite(value: Any, target: str) -> float:
    """``value`` as a float, or :class:`_BadAnswer`: a JSON integer has any number of digits,
    and one past float's range (about 1e308) would raise OverflowError out of ask()."""
    shown = repr(value)
    unit = "digits" if isinstance(value, int) else "characters"
    shown = shown if len(shown) <= 40 else f"{shown[:20]}... ({len(shown)} {unit})"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _BadAnswer(f"{target} answered value: {shown}; it must be a finite number, e.g. 0.93")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _BadAnswer(f"{target} answered value: {shown}; it must be a finite number (at most about 1e308), "
                         "e.g. 0.93")
    return number


class WebhookPoller:
    """Keeps the latest answers of a rollout's webhook gates and current confirm step fresh,
    off the caller's loop.

    :meth:`poll` never waits on an endpoint: it starts a request in the background for each
    hook whose last one is due (gates every half ``rollout.analysis.interval_s``, a confirm
    step every ``interval_s``; never two at once for one hook) and returns the latest answers
    (:class:`WebhookAnswers`); inside, requests and answers are keyed by :func:`gate_key` and
    :func:`confirm_key`.
    """

    def __init__(self, rollout: RolloutConfig, model: str, refresh_s: float | None = None,
                 env: Mapping[str, str] = os.environ):
        self.rollout = rollout
        self.model = model
        self.env = env
        self.refresh_s = rollout.analysis.interval_s / 2 if refresh_s is None else refresh_s
        self.gates = {gate.key: gate for gate in rollout.gates if gate.metric is GateMetric.WEBHOOK}
        self.enabled = bool(self.gates) or any(isinstance(step, ConfirmStep) for step in rollout.steps)
        self.latest: dict[HookKey, WebhookResult] = {}
        self._started_at_s: dict[HookKey, float] = {}
        self._tasks: dict[HookKey, asyncio.Task] = {}
        # An endpoint away fails every ask alike: logged as a spell, not at each (failure_log.py).
        self._failures = {"gate": FailureLog("webhook gate", "the gate is inconclusive and holds the rollout"),
                          "confirm": FailureLog("confirm step", "the step waits for a yes")}

    def poll(self, now_s: float, rollout: Rollout) -> WebhookAnswers:
        """The latest answers; starts the requests that are due for ``rollout`` as it stands."""
        if not self.enabled:
            return WebhookAnswers()
        for key, task in list(self._tasks.items()):
            if task.done():
                del self._tasks[key]
                self._collect(key, task)
        s = rollout.state
        if rollout.done or s.paused_by == "operator":
            return self.answers()
        for key, gate in self.gates.items():
            self._maybe_ask(now_s, gate_key(key), self.refresh_s, gate.url, display_url(gate.url), {},
                            gate.headers_from_env or {}, gate.timeout_s or 5.0, "pass", rollout)
        index = s.step_index
        step = self.rollout.steps[index] if index < len(self.rollout.steps) else None
        if isinstance(step, ConfirmStep) and s.confirmed_at_s is None:  # a yes holds for the step: ask no more
            hook = step.confirm
            try:
                url = resolve_url(hook, self.env)
            except MissingSecret as err:
                self.latest[confirm_key(index)] = WebhookResult(hook.target, error=str(err), asked_at_s=now_s)
            else:
                self._maybe_ask(now_s, confirm_key(index), hook.interval_s, url, hook.target,
                                hook.headers, hook.headers_from_env, hook.timeout_s, "confirm", rollout)
        return self.answers()

    def answers(self) -> WebhookAnswers:
        """The latest answers, gates' by gate key and confirm steps' by step index."""
        return WebhookAnswers(gates={key: a for (kind, key), a in self.latest.items() if kind == "gate"},
                              confirms={key: a for (kind, key), a in self.latest.items() if kind == "confirm"})

    def _maybe_ask(self, now_s: float, key: HookKey, refresh_s: float, url: str, target: str,
                   headers: Mapping[str, str], headers_from_env: Mapping[str, str], timeout_s: float,
                   answer: str, rollout: Rollout) -> None:
        started = self._started_at_s.get(key)
        if key in self._tasks or (started is not None and now_s - started < refresh_s):
            return
        self._started_at_s[key] = now_s
        try:
            resolved = resolve_headers(headers, headers_from_env, self.env)
        except MissingSecret as err:
            self.latest[key] = WebhookResult(target, error=str(err), asked_at_s=now_s)
            return
        s = rollout.state
        kind, name = key
        payload = {"kind": kind, "name": name if kind == "gate" else "confirm", "model": self.model,
                   "stable": s.stable, "candidate": s.candidate, "phase": s.phase.value,
                   "step_index": s.step_index, "weights_pct": dict(s.weights)}
        self._tasks[key] = asyncio.get_running_loop().create_task(
            ask(url, payload, timeout_s=timeout_s, answer=answer, headers=resolved, asked_at_s=now_s, target=target,
                log=False))

    @property
    def refreshing(self) -> bool:
        """True while some request is in flight."""
        return any(not task.done() for task in self._tasks.values())

    def _collect(self, key: HookKey, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        err: Any = task.exception()
        if err is not None:  # ask() does not raise; this is a bug, kept out of the tick loop
            logger.error("serve-ab webhook %s failed: %r", key, err)
            return
        self.latest[key] = result = task.result()
        kind, name = key
        gate = self.gates.get(name) if kind == "gate" else None
        # The target, not a gate's url, which may hold a secret in its query.
        if kind == "gate":
            shown = f"{name} ({result.target})" if gate is not None and gate.name is not None else result.target
        else:  # a confirm step, by its number in the steps (from 1)
            shown = f"{name + 1} ({result.target})"
        self._failures[kind].note(shown, result.error, result.asked_at_s)

    def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
