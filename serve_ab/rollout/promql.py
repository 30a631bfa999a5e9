"""PromQL as a gate metric source, the way Flagger and Argo Rollouts use Prometheus.

A gate ``{metric: promql, name: ..., query: ..., max|min: ...}`` sends its instant query to
Prometheus' HTTP API (``GET <url>/api/v1/query``) and judges the one number that comes
back. ``{{candidate}}``, ``{{stable}}``, ``{{model}}``, ``{{app}}`` (the Serve application's
name: every series of serve-ab's carries it as ``application``, so a gate reads its own app's
series where another app serves the same model) and ``{{interval}}`` (the analysis interval as
a PromQL duration, e.g. ``10s``) are substituted first::

    rollout:
      analysis: {interval_s: 30s, prometheus: {url: http://prometheus:9090, timeout_s: 5}}
      gates:
        - metric: promql
          name: error_ratio
          max: 0.01
          query: |
            sum(rate(serve_ab_errors_total{application="{{app}}", version="{{candidate}}"}[{{interval}}]))
            / sum(rate(serve_ab_requests_total{application="{{app}}", version="{{candidate}}"}[{{interval}}]))

What the answer means for the gate (see :mod:`serve_ab.rollout.gates`):

- a scalar, or a vector of exactly one sample: the value;
- an empty vector, or NaN (e.g. ``0/0`` on a version with no traffic): no data, the gate
  is INCONCLUSIVE, as Flagger halts on "no values found";
- anything else (Prometheus unreachable or too slow, an HTTP error, a query Prometheus
  refuses, a matrix or several series): a failed query, logged as a warning with the
  query (by :class:`PromQLPoller` once per outage, then every 5 minutes), and
  INCONCLUSIVE with the error in the gate's reason. Flagger counts a failed
  query as a failed check; here an outage of the metrics system does not roll a healthy
  candidate back (Argo Rollouts likewise keeps "error" apart from "failed"), but it never
  lets the candidate advance either, and ``analysis.progress_deadline_s`` aborts a
  rollout held by a failure that lasts.

The controller polls with :class:`PromQLPoller` off its tick, so a slow Prometheus never
delays a weight change, and puts the latest answers on the candidate's window.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any

import httpx

from serve_ab.rollout.failure_log import FailureLog
from serve_ab.rollout.gates import PromQLResult
from serve_ab.config.rollout import GateMetric, RolloutConfig, render_promql
from serve_ab.store.url import redact_url

logger = logging.getLogger("ray.serve")

__all__ = ["PromQLPoller", "fetch_promql_values", "promql_duration", "query_value", "run_query"]


async def query_value(url: str, query: str, timeout_s: float) -> float | None:
    """The one number ``query`` returns, or None for no data and for a failed query (logged
    as a warning naming the query). :func:`run_query` tells the two apart."""
    return (await run_query(url, query, timeout_s)).value


async def run_query(url: str, query: str, timeout_s: float,
                    client: httpx.AsyncClient | None = None, log: bool = True) -> PromQLResult:
    """Run one instant query; never raises for what Prometheus or the network does.
    ``log``: warn of a failed query here (:class:`PromQLPoller` logs its gates' own way)."""
    endpoint = url.rstrip("/") + "/api/v1/query"
    # Said without a password (http://user:pass@prometheus:9090): the error is logged and goes
    # into the gate's reason, the rollout's history and its notifications.
    shown = redact_url(endpoint)

    async def get() -> httpx.Response:
        if client is None:
            async with httpx.AsyncClient(timeout=timeout_s) as own:
                return await own.get(endpoint, params={"query": query})
        return await client.get(endpoint, params={"query": query}, timeout=timeout_s)

    try:
        # httpx's timeout bounds each read, not the answer: a body trickled a byte at a time
        # (a proxy, a stalled Prometheus) took 6 s under timeout_s 1, and would have taken as
        # long as it kept trickling, while the gate judged the refresh before.
        response = await asyncio.wait_for(get(), timeout_s)
        value = _parse(response, shown)
    except (httpx.HTTPError, _QueryError, asyncio.TimeoutError) as err:
        reason = str(err) or type(err).__name__
        if isinstance(err, (httpx.TimeoutException, asyncio.TimeoutError)):
            reason = f"no answer from {shown} within timeout_s {timeout_s:g}"
        elif isinstance(err, httpx.TransportError):
            reason = f"cannot reach {shown}: {type(err).__name__}: {err}"
        if log:
            logger.warning("serve-ab promql query failed: %s; query: %s", reason, query)
        return PromQLResult(query, None, reason)
    if value is not None and math.isnan(value):
        return PromQLResult(query, None, nan=True)
    return PromQLResult(query, value)


class _QueryError(ValueError):
    pass


def _parse(response: httpx.Response, endpoint: str) -> float | None:
    """The value in an /api/v1/query answer (NaN as given); None for an empty one;
    _QueryError for anything else.

    Every level of the body is checked for the shape Prometheus' API gives it: a proxy or
    another server on that port can answer 200 with JSON of another shape, which must be a
    failed query (the gate holds), never an exception that leaves the gate judging its last
    answer."""
    try:
        body = response.json()
    except ValueError:
        raise _QueryError(f"HTTP {response.status_code} from {endpoint} is not JSON: "
                          f"{response.text[:200]!r}") from None
    if not isinstance(body, dict) or response.status_code != 200 or body.get("status") != "success":
        detail = body.get("error") if isinstance(body, dict) else None
        kind = body.get("errorType") if isinstance(body, dict) else None
        # errorType is optional (a proxy's error body may give only error): without it the
        # reason read "HTTP 200, None: rate limited".
        status = f"Prometheus answered HTTP {response.status_code}"
        if kind and detail:
            raise _QueryError(f"{status}, {kind}: {detail}")
        raise _QueryError(f"{status}: {detail if detail else str(body)[:200]}")
    data = body.get("data")
    if not isinstance(data, dict) or data.get("resultType") is None:
        raise _QueryError(f"the answer from {endpoint} is not Prometheus' query API: its data is "
                          f"{str(data)[:200]!r}, not an object with resultType and result")
    result_type, result = data.get("resultType"), data.get("result")
    if result_type == "scalar":
        sample = result
    elif result_type == "vector":
        if not isinstance(result, list) or not all(isinstance(item, dict) for item in result):
            raise _QueryError(f"the answer from {endpoint} is not Prometheus' query API: a vector's result "
                              f"is {str(result)[:200]!r}, not a list of samples")
        if not result:
            return None
        if len(result) > 1:
            series = ", ".join(str(item.get("metric", {})) for item in result[:3])
            raise _QueryError(f"the query returned {len(result)} series ({series}{', ...' * (len(result) > 3)}); "
                              "a gate needs one number: aggregate them, e.g. sum(...) or max(...)")
        sample = result[0].get("value")
    else:
        raise _QueryError(f"the query returned a {result_type}; a gate needs an instant scalar or a "
                          "one-sample vector (a range selector [5m] needs a function such as rate())")
    # Prometheus gives [time, "value"]; a JSON true is no number, though float() takes it as 1.
    if not isinstance(sample, list) or len(sample) != 2 or isinstance(sample[1], bool) \
            or not isinstance(sample[1], (str, int, float)):
        raise _QueryError(f"cannot read a number from the sample {sample!r}")
    try:
        value = float(sample[1])
    except ValueError:
        raise _QueryError(f"cannot read a number from the sample {sample!r}") from None
    return value  # NaN included: run_query() tells it apart from an empty answer


def promql_duration(seconds: float) -> str:
    """A PromQL duration for ``seconds``: ``10s``, or ``1500ms`` when not whole seconds."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{max(1, round(seconds * 1000))}ms"


def promql_string_content(value: str) -> str:
    """``value`` escaped to stand between the quotes of a PromQL string, ``"..."`` or ``'...'``.

    Ray Serve takes any non-empty application name: one with a quote (``team "a"``) cut the
    gate's ``application="{{app}}"`` short, and Prometheus refused the query (the gate held,
    inconclusive, for the whole rollout); a backslash started an escape. Quotes become ``\\x22``
    and ``\\x27`` rather than ``\\"``, which PromQL refuses inside ``'...'``, and ``\\'``, refused
    inside ``"..."``; control characters are hex escapes too."""
    return "".join(_PROMQL_ESCAPES.get(char, char) for char in value)


_PROMQL_ESCAPES = {"\\": "\\\\", '"': "\\x22", "'": "\\x27",
                   **{chr(code): f"\\x{code:02x}" for code in (*range(0x20), 0x7F)}}


def rendered_queries(rollout: RolloutConfig, model: str, app: str) -> dict[str, str]:
    """Each promql gate's query by gate name, placeholders substituted; ``app`` is the Serve
    application's name, escaped for a PromQL string (``application="{{app}}"``): the other
    values are names the config restricts to letters, digits, ``_.-``, or a duration."""
    values = {"candidate": rollout.candidate, "stable": rollout.stable, "model": model,
              "app": promql_string_content(app), "interval": promql_duration(rollout.analysis.interval_s)}
    return {gate.name: render_promql(gate.query, values)
            for gate in rollout.gates if gate.metric is GateMetric.PROMQL}


async def fetch_promql_values(rollout: RolloutConfig, model: str, app: str, asked_at_s: float = 0.0,
                              log: bool = True) -> dict[str, PromQLResult]:
    """Every promql gate's answer, by gate name, queried concurrently ({} without such gates),
    stamped ``asked_at_s``; ``log`` as for :func:`run_query`."""
    gates = {gate.name: gate for gate in rollout.gates if gate.metric is GateMetric.PROMQL}
    if not gates:
        return {}
    queries = rendered_queries(rollout, model, app)
    async with httpx.AsyncClient() as client:
        answers = await asyncio.gather(*(
            run_query(rollout.prometheus_for(gate).url, queries[name], rollout.prometheus_for(gate).timeout_s, client,
                      log=log)
            for name, gate in gates.items()
        ))
    return {name: dataclasses.replace(answer, asked_at_s=asked_at_s) for name, answer in zip(gates, answers)}


class PromQLPoller:
    """Keeps the latest answers of a rollout's promql gates fresh, off the caller's loop.

    :meth:`poll` never waits on Prometheus: it starts a refresh in the background when the
    last one is ``refresh_s`` old (default half the analysis interval, so an analysis judges
    answers at most that old plus one timeout) and returns the latest answers.

    A gate's failed query is logged as a spell (:class:`~serve_ab.rollout.failure_log.FailureLog`):
    an outage of Prometheus otherwise logged a warning per gate every refresh (every 5 s at
    ``interval_s: 10``) for as long as it lasted.
    """

    def __init__(self, rollout: RolloutConfig, model: str, app: str, refresh_s: float | None = None):
        self.rollout = rollout
        self.model = model
        self.app = app
        self.refresh_s = rollout.analysis.interval_s / 2 if refresh_s is None else refresh_s
        self.enabled = any(gate.metric is GateMetric.PROMQL for gate in rollout.gates)
        self.latest: dict[str, PromQLResult] = {}
        self._started_at_s: float | None = None
        self._task: asyncio.Task | None = None
        self._failures = FailureLog("promql gate", "the gate is inconclusive and holds the rollout", "query failed")

    def poll(self, now_s: float, active: bool = True) -> Mapping[str, PromQLResult]:
        """The latest answers; starts a refresh when one is due and ``active`` (analysis may run)."""
        if not self.enabled:
            return {}
        if self._task is not None and self._task.done():
            self._collect(self._task)
            self._task = None
        due = self._started_at_s is None or now_s - self._started_at_s >= self.refresh_s
        if active and due and self._task is None:
            self._started_at_s = now_s
            self._task = asyncio.get_running_loop().create_task(
                fetch_promql_values(self.rollout, self.model, self.app, now_s, log=False))
        return self.latest

    @property
    def refreshing(self) -> bool:
        """True while a refresh is in flight."""
        return self._task is not None and not self._task.done()

    def _collect(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        err: Any = task.exception()
        if err is not None:  # run_query() does not raise; this is a bug, kept out of the tick loop
            logger.error("serve-ab promql refresh failed: %r", err)
            # Each gate gets this refresh's failure as its answer: kept, the previous answers
            # would go on passing the gates (they were asked this step) as if just asked.
            asked_at_s = self._started_at_s if self._started_at_s is not None else 0.0
            self.latest = {name: PromQLResult(query, None, f"the promql refresh failed: {err!r}", asked_at_s=asked_at_s)
                           for name, query in rendered_queries(self.rollout, self.model, self.app).items()}
            return
        self.latest = task.result()
        for name, answer in self.latest.items():
            self._failures.note(name, answer.error, answer.asked_at_s, f"; query: {answer.query}")

