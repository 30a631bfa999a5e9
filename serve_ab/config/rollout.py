"""The ``rollout:`` part of an experiment: canary steps, blue-green settings and gates.

Example (YAML, as embedded under ``rollout:`` in an experiment)::

    strategy: canary
    stable: v1
    candidate: v2
    analysis: {interval_s: 10, min_samples: 50, failure_limit: 1, progress_deadline_s: 10m}
    gates:
      - {metric: latency_p95_ms, max_ratio_to_stable: 1.5}
      - {metric: error_rate, max: 0.01}
      - {metric: drift_js, max: 0.1}
    steps:
      - set_weight: 5
      - pause: {duration: 30s}
      - analysis: {}
      - set_weight: 50
      - pause: {}            # wait for a manual promote
      - set_weight: 100

Durations are numbers of seconds or strings like ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"``.
"""

from __future__ import annotations

import datetime
import math
import re
import reprlib
from enum import Enum
from typing import Annotated, Any, Union
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from serve_ab.config._base import (
    HEADER_NAME_RE,
    VERSION_NAME_PATTERN,
    WEIGHT_RESOLUTION_PCT,
    check_env_name,
)
from serve_ab.config._base import Strict as _Strict
from serve_ab.store.url import redact_url

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


# A value quoted in an error is cut to this many characters: YAML aliases can build a value
# whose repr is megabytes (it doubles with each level of aliases).
SHOWN_CHARS = 200
_SHOWN = reprlib.Repr()
# reprlib stops at a depth and a count of items, so that an aliased value is never written out whole.
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxtuple, _SHOWN.maxdict, _SHOWN.maxset = 3, 20, 20, 20, 20
_SHOWN.maxstring = _SHOWN.maxother = _SHOWN.maxlong = SHOWN_CHARS


def shown_value(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters with what was cut:
    ``'aaaa…' (5,000 characters)``, ``[[...], ...]… (a list of 9 items)``, ``an integer of 401 digits``."""
    if isinstance(value, int) and not isinstance(value, bool) and value != 0 and math.log10(abs(value)) >= limit:
        # Also past Python's 4,300-digit limit on writing an int as text.
        return f"an integer of {math.floor(math.log10(abs(value))) + 1:,} digits"
    if isinstance(value, (datetime.date, datetime.time)):  # YAML's 2026-12-07: as written, not Python's repr
        return value.isoformat()
    if isinstance(value, (str, bytes)):
        text = repr(value[:limit + 1])
        size = f"{len(value):,} {'characters' if isinstance(value, str) else 'bytes'}"
    else:
        try:
            text = _SHOWN.repr(value)
        except ValueError:  # an int past 4,300 digits inside a container
            text = f"<a {type(value).__name__}>"
        size = f"a {type(value).__name__} of {len(value):,} items" if isinstance(value, (list, tuple, dict, set)) \
            else f"{len(text):,} characters"
    return text if len(text) <= limit else f"{text[:limit]}… ({size})"


#: The longest duration a config (or the CLI) takes: a year. Longer is a slip (a missing unit
#: on milliseconds, a value pasted from elsewhere), and past about 1e9 s some timers overflow.
MAX_DURATION_S = 365 * 24 * 3600.0


def parse_duration_s(value: Any) -> float:
    """Seconds in ``value``: a number of seconds, or a string like ``"30s"``, ``"5m"``, ``"1h"``;
    at most :data:`MAX_DURATION_S`.

    >>> parse_duration_s("30s"), parse_duration_s("1.5m"), parse_duration_s(10)
    (30.0, 90.0, 10.0)
    """
    hint = "use a number of seconds or a string like '500ms', '30s', '5m' or '1h'"
    if isinstance(value, bool):  # bool is an int subclass; True is not "1 second"
        raise ValueError(f"invalid duration {shown_value(value)}: {hint}")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an int past 1e308: a float cannot hold it
            raise ValueError(f"invalid duration ({shown_value(value)}): too large, it must be finite and >= 0; "
                             f"{hint}") from None
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match is None:
            raise ValueError(f"invalid duration {shown_value(value)}: {hint}")
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    else:
        raise ValueError(f"invalid duration {shown_value(value)}: {hint}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {shown_value(value)}: it must be finite and >= 0; {hint}")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"duration longer than a year ({seconds:.3g} s), the longest taken; give at most "
                         "8760h, e.g. 30m or 24h")
    return seconds


#: Seconds, written as a number or a string with a unit.
DurationS = Annotated[float, BeforeValidator(parse_duration_s)]


class Strategy(str, Enum):
    CANARY = "canary"
    BLUE_GREEN = "blue_green"


class GateMetric(str, Enum):
    LATENCY_P50_MS = "latency_p50_ms"
    LATENCY_P95_MS = "latency_p95_ms"
    LATENCY_P99_MS = "latency_p99_ms"
    ERROR_RATE = "error_rate"
    #: Drift of the predicted-class distribution, candidate against stable.
    DRIFT_KL = "drift_kl"
    DRIFT_PSI = "drift_psi"
    #: Jensen-Shannon divergence in bits, in [0, 1]: the *square* of the JS distance, so
    #: max 0.1 here is a distance of about 0.32 (Evidently and scipy report the distance).
    DRIFT_JS = "drift_js"
    #: Jensen-Shannon distance (base-2 logs), in [0, 1]: the square root of drift_js.
    DRIFT_JS_DISTANCE = "drift_js_distance"
    #: Drift of the score distribution (e.g. top-class probability).
    DRIFT_KS = "drift_ks"
    DRIFT_WASSERSTEIN = "drift_wasserstein"
    #: Business feedback reported by clients, picked by ``name``.
    FEEDBACK_MEAN = "feedback_mean"
    FEEDBACK_RATE = "feedback_rate"
    #: A PromQL ``query`` against a Prometheus server, one number (see :mod:`serve_ab.rollout.promql`).
    PROMQL = "promql"
    #: Share of requests copied to the candidate (``shadow:`` on it, or a blue-green green
    #: validating on live traffic) on which it predicted the class the live version answered.
    SHADOW_AGREEMENT = "shadow_agreement"
    #: An external check: an HTTP endpoint answering ``{"pass": true|false}`` and/or
    #: ``{"value": 0.93}`` (see :mod:`serve_ab.rollout.webhook`).
    WEBHOOK = "webhook"


DRIFT_METRICS = frozenset(
    {GateMetric.DRIFT_KL, GateMetric.DRIFT_PSI, GateMetric.DRIFT_JS, GateMetric.DRIFT_JS_DISTANCE,
     GateMetric.DRIFT_KS, GateMetric.DRIFT_WASSERSTEIN}
)
FEEDBACK_METRICS = frozenset({GateMetric.FEEDBACK_MEAN, GateMetric.FEEDBACK_RATE})
LATENCY_METRICS = frozenset({GateMetric.LATENCY_P50_MS, GateMetric.LATENCY_P95_MS, GateMetric.LATENCY_P99_MS})
#: Metrics where less is better: only an upper bound (max, max_ratio_to_stable) makes sense.
LOWER_IS_BETTER = LATENCY_METRICS | {GateMetric.ERROR_RATE}
#: Rates judged by exact (Clopper-Pearson) confidence bounds, which never reach 0 or 1.
RATE_METRICS = frozenset({GateMetric.ERROR_RATE, GateMetric.FEEDBACK_RATE, GateMetric.SHADOW_AGREEMENT})
#: Metrics whose values lie in [0, 1].
UNIT_INTERVAL_METRICS = RATE_METRICS | {GateMetric.DRIFT_JS, GateMetric.DRIFT_JS_DISTANCE, GateMetric.DRIFT_KS}
BOUND_KEYS = ("max", "min", "max_ratio_to_stable", "min_ratio_to_stable")
#: What a promql gate's query may contain; ``{{interval}}`` is analysis.interval_s as a
#: PromQL duration, e.g. ``rate(x[{{interval}}])``; ``{{app}}`` the Serve application's name,
#: the ``application`` label of serve-ab's series, which tells two apps' series apart where two apps
#: serve one model.
PROMQL_PLACEHOLDERS = ("candidate", "stable", "model", "app", "interval")
_PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def promql_placeholders(query: str) -> list[str]:
    """The ``{{name}}`` placeholders in ``query``, in order of appearance."""
    return _PLACEHOLDER_RE.findall(query)


def render_promql(query: str, values: dict[str, str]) -> str:
    """``query`` with every ``{{name}}`` (spaces inside allowed) replaced by ``values[name]``."""
    return _PLACEHOLDER_RE.sub(lambda match: values[match.group(1)], query)


# The end of a URL that is Prometheus' HTTP API rather than the server: /api/v1, /api/v1/query...
_PROMETHEUS_API = re.compile(r"/api/v1(?:/query(?:_range)?)?/?$")


class PrometheusConfig(_Strict):
    """Where promql gates send their queries (Prometheus' HTTP API, /api/v1/query)."""

    url: str = Field(
        ..., min_length=1, max_length=2048, pattern=r"^https?://[^\s/?#]+[^\s?#]*$",
        description="Base URL of the Prometheus server, e.g. http://prometheus:9090 (no /api/...).",
    )
    timeout_s: DurationS = Field(
        5.0, gt=0, le=60, description="Longest a query may take; a slower one is a failed query."
    )

    @field_validator("url")
    @classmethod
    def _base_url_only(cls, url: str) -> str:
        # serve-ab adds /api/v1/query (serve_ab/rollout/promql.py): a URL ending in Prometheus'
        # API already would send every query to .../api/v1/query/api/v1/query, and every gate
        # would hold. Only the end: a Kubernetes API proxy's path holds /api/v1/ on the way.
        api = _PROMETHEUS_API.search(url)
        if api:
            raise ValueError(f"must be Prometheus' base URL, without {api.group(0).rstrip('/')} (serve-ab adds "
                             f"/api/v1/query): give {redact_url(url[:api.start()])!r}")
        return url


def _bounds_taken(metric: GateMetric) -> tuple[tuple[str, ...], str]:
    """The bounds a gate on ``metric`` may have, and an example it takes, for the error that
    asks for exactly one (the checks below refuse the others, each with its reason)."""
    if metric is GateMetric.PROMQL:  # a query's number: no stable to divide by
        return ("max", "min"), "{metric: promql, name: p95_latency_s, query: '...', max: 0.25}"
    if metric in FEEDBACK_METRICS:
        name = "revenue" if metric is GateMetric.FEEDBACK_MEAN else "converted"
        return BOUND_KEYS, f"{{metric: {metric.value}, name: {name}, min_ratio_to_stable: 0.98}}"
    if metric is GateMetric.SHADOW_AGREEMENT:
        return ("min",), "{metric: shadow_agreement, min: 0.95}"
    if metric in DRIFT_METRICS:
        return ("max",), f"{{metric: {metric.value}, max: 0.1}}"
    # Error rate and latencies: lower is better, so only upper bounds can fail a worse candidate.
    example = "max: 0.01" if metric is GateMetric.ERROR_RATE else "max: 250"
    return ("max", "max_ratio_to_stable"), f"{{metric: {metric.value}, {example}}}"


#: Event kinds sent to notification receivers (see :mod:`serve_ab.rollout.notify`).
NOTIFICATION_EVENTS = ("phase_changed", "progress", "analysis_failed", "action")
_URL_RE = re.compile(r"^https?://[^\s/?#@]+(?:[/?][^\s#]*)?$")
_URL_EXAMPLE = "e.g. https://hooks.example.com/serve-ab"


def check_hook_url(field: str, value: str | None) -> None:
    """Refuse anything but an http(s) URL with a host, naming the field and the value."""
    if value is not None and not _URL_RE.match(value):
        # redact_url: a password pasted into the URL is not printed
        raise ValueError(f"{field} is {redact_url(value)!r}; it must be an http:// or https:// URL with a host "
                         f"and no user:password@ (put credentials in headers_from_env), {_URL_EXAMPLE}")


def check_hook_headers(headers: dict[str, str], headers_from_env: dict[str, str]) -> None:
    for name in (*headers, *headers_from_env):
        if not HEADER_NAME_RE.fullmatch(name):
            raise ValueError(f"header name {name!r} is not a valid HTTP header name, e.g. Authorization")
    both = sorted(set(headers) & set(headers_from_env))
    if both:
        raise ValueError(f"header(s) {both} are in both headers and headers_from_env; keep one")
    for name, env in headers_from_env.items():
        check_env_name(f"headers_from_env.{name}", env, "SLACK_TOKEN")


class HttpHook(_Strict):
    """An HTTP endpoint serve-ab calls: a notification receiver, a confirm step.

    Secrets never go into the config: ``url_from_env`` and ``headers_from_env`` name
    environment variables (of the controller's process) that hold them; their values are
    read when the controller starts and are never logged or shown in the status.
    """

    url: str | None = Field(
        None, max_length=2048, description="Where to send, e.g. https://hooks.example.com/serve-ab; "
        "or url_from_env when the URL is itself a secret (a Slack incoming webhook).",
    )
    url_from_env: str | None = Field(
        None, description="Name of an environment variable holding the URL, e.g. SLACK_WEBHOOK_URL.",
    )
    timeout_s: DurationS = Field(5.0, gt=0, le=60, description="Longest one request may take.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra request headers that are not secret, e.g. {X-Team: ml}.",
    )
    headers_from_env: dict[str, str] = Field(
        default_factory=dict,
        description="Request headers whose values come from environment variables, by name, "
        "e.g. {Authorization: HOOK_AUTH} sends the value of $HOOK_AUTH.",
    )

    @model_validator(mode="after")
    def _check_hook(self) -> HttpHook:
        if (self.url is None) == (self.url_from_env is None):
            raise ValueError(f"give exactly one of url or url_from_env (got "
                             f"{'both' if self.url else 'neither'}), {_URL_EXAMPLE}")
        check_hook_url("url", self.url)
        if self.url_from_env is not None:
            check_env_name("url_from_env", self.url_from_env, "SLACK_WEBHOOK_URL")
        check_hook_headers(self.headers, self.headers_from_env)
        return self

    @property
    def target(self) -> str:
        """How logs, metrics and reasons name this endpoint: scheme, host and path of a
        literal url (no query, which may hold a token), or $VAR for url_from_env."""
        if self.url is None:
            return f"${self.url_from_env}"
        return display_url(self.url)


def display_url(url: str) -> str:
    """``url`` without its query and fragment, which may carry a token, and with its user
    information (``user:password@``, or a token as the user) said as ``***@``."""
    return _URL_USERINFO.sub(r"\1***@", url.split("?", 1)[0].split("#", 1)[0], count=1)


# Up to the authority's last @ (see serve_ab/store/url.py): a bare @ in a password is the
# password's, and the first one would leave the rest of it shown.
_URL_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/?#]*@", re.IGNORECASE)


class ReceiverType(str, Enum):
    #: A JSON object per event (see :func:`serve_ab.rollout.notify.webhook_payload`).
    WEBHOOK = "webhook"
    #: A Slack-compatible incoming webhook: ``{"text": ...}``.
    SLACK = "slack"


class NotificationReceiver(HttpHook):
    """Where rollout events go: ``{type: webhook|slack, url|url_from_env, events?, timeout_s?}``."""

    type: ReceiverType = Field(..., strict=False, description="webhook (a JSON object per event) or slack.")
    name: str | None = Field(
        None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Names the receiver in logs and metrics; unset: type and host, e.g. slack:hooks.slack.com.",
    )
    events: list[str] = Field(
        default_factory=lambda: list(NOTIFICATION_EVENTS),
        description="Which events to send: phase_changed (every phase change, an operator's "
        "too), action (every operator's action: one with an actor), analysis_failed, progress (a step moved, weights "
        "set, a hold); unset sends all. Each history entry is sent once: an abort is a "
        "phase_changed event naming its action and actor, sent to receivers of either.",
    )
    max_attempts: int = Field(
        5, ge=1, le=20, description="Tries per event, with exponential backoff, before it counts as failed.",
    )

    @model_validator(mode="after")
    def _check_events(self) -> NotificationReceiver:
        unknown = [event for event in self.events if event not in NOTIFICATION_EVENTS]
        if unknown or not self.events:
            raise ValueError(f"events has {unknown or 'nothing'}; valid: {', '.join(NOTIFICATION_EVENTS)} "
                             "(leave events unset for all)")
        return self

    @property
    def label(self) -> str:
        """The receiver's name in logs and the ``receiver`` label of its metrics (never a secret)."""
        if self.name is not None:
            return self.name
        if self.url is None:
            return f"{self.type.value}:${self.url_from_env}"
        # Host (and port) only: the label is in the status, metrics, thread names and logs, and
        # a query (https://hooks.example.com?key=...) or a path may hold a token.
        host = urlsplit(display_url(self.url)).netloc.rpartition("@")[2]
        return f"{self.type.value}:{host}"


class Gate(_Strict):
    """One check on the candidate; exactly one bound per gate keeps its verdict readable."""

    metric: GateMetric = Field(..., strict=False, description="What is measured on the candidate's window.")
    name: str | None = Field(
        None, min_length=1, max_length=128,
        description="Feedback name for feedback_mean / feedback_rate, e.g. revenue; for promql, "
        "the gate's name, e.g. error_ratio (unique among promql gates); for webhook, an optional "
        "name shown in reasons (unique among webhook gates); unset otherwise.",
    )
    query: str | None = Field(
        None, min_length=1, max_length=16384,
        description="promql only: an instant query that returns one number (a scalar or a "
        "one-sample vector); {{candidate}}, {{stable}}, {{model}}, {{app}} (the Serve "
        "application's name, serve-ab's application label) and {{interval}} are substituted before it is sent.",
    )
    prometheus: PrometheusConfig | None = Field(
        None, description="promql only: the Prometheus to ask; unset uses rollout.analysis.prometheus.",
    )
    url: str | None = Field(
        None, max_length=2048,
        description="webhook only: the endpoint asked (POST, a JSON description of the rollout), "
        "e.g. http://checks:8080/canary; it answers {\"pass\": true|false, \"reason\"?: ...} "
        "and/or {\"value\": 0.93} judged by min or max.",
    )
    timeout_s: DurationS | None = Field(
        None, gt=0, le=60, description="webhook only: longest the endpoint may take (default 5 s); "
        "slower is no answer (inconclusive).",
    )
    headers_from_env: dict[str, str] | None = Field(
        None, description="webhook only: request headers from environment variables, by name, "
        "e.g. {Authorization: CHECKS_TOKEN}.",
    )
    max: float | None = Field(None, allow_inf_nan=False, description="Absolute upper bound.")
    min: float | None = Field(None, allow_inf_nan=False, description="Absolute lower bound.")
    max_ratio_to_stable: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="Upper bound on candidate / stable, both measured in the same window.",
    )
    min_ratio_to_stable: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="Lower bound on candidate / stable, both measured in the same window.",
    )

    @model_validator(mode="after")
    def _check(self) -> Gate:
        metric = self.metric.value
        bounds = {key: getattr(self, key) for key in BOUND_KEYS if getattr(self, key) is not None}
        if self.metric is GateMetric.WEBHOOK:
            return self._check_webhook(bounds)
        for key in ("url", "timeout_s", "headers_from_env"):
            if getattr(self, key) is not None:
                raise ValueError(f"gate {metric} takes no {key}; only metric: webhook does")
        if len(bounds) != 1:
            allowed, example = _bounds_taken(self.metric)
            raise ValueError(
                f"gate {metric} has bounds {sorted(bounds) or 'none'}; give exactly one of "
                f"{', '.join(allowed)}, e.g. {example} (add a second gate for a second bound)"
            )
        if self.metric is GateMetric.PROMQL:
            return self._check_promql()
        for key in ("query", "prometheus"):
            if getattr(self, key) is not None:
                raise ValueError(f"gate {metric} takes no {key}; only metric: promql does")
        if self.metric in FEEDBACK_METRICS and self.name is None:
            raise ValueError(
                f"gate {metric} needs the feedback name, e.g. {{metric: {metric}, name: revenue, ...}}"
            )
        if self.metric not in FEEDBACK_METRICS and self.name is not None:
            raise ValueError(
                f"gate {metric} takes no name (got {self.name!r}); only feedback_mean, feedback_rate "
                "and promql do"
            )
        if self.metric in DRIFT_METRICS and self.max is None:
            raise ValueError(
                f"gate {metric} has {next(iter(bounds))}; drift already compares the candidate "
                f"with stable, so it takes only max, e.g. {{metric: {metric}, max: 0.1}}"
            )
        if self.metric not in FEEDBACK_METRICS and bounds.get("max", bounds.get("min", 0.0)) < 0:
            raise ValueError(
                f"gate {metric} bound is {next(iter(bounds.values()))}; {metric} is never "
                "negative, so use a bound >= 0"
            )
        if self.metric is GateMetric.SHADOW_AGREEMENT and self.min is None:
            raise ValueError(
                f"gate {metric} has {next(iter(bounds))}; it takes min, the least agreement with "
                f"the live answers, e.g. {{metric: {metric}, min: 0.95}}"
            )
        if self.metric in UNIT_INTERVAL_METRICS:
            what = "a rate" if self.metric in RATE_METRICS else metric
            for key in ("max", "min"):
                value = bounds.get(key)
                if value is not None and not 0.0 <= value <= 1.0:
                    raise ValueError(f"gate {metric} {key} is {value}; {what} is in [0, 1], e.g. 0.01")
        return self._check_decidable()

    def _check_decidable(self) -> Gate:
        """Refuse thresholds the traffic can never decide: gates judge confidence bounds
        (serve_ab/rollout/gates.py), passing on max only when the upper bound is below it."""
        metric, bound = self.metric.value, self.bound
        if self.metric in LOWER_IS_BETTER and bound.startswith("min"):
            raise ValueError(
                f"gate {metric} has {bound} ({self.threshold:g}); lower {metric} is better, so a lower "
                f"bound would pass a candidate for being worse; use max or max_ratio_to_stable, "
                f"e.g. {{metric: {metric}, max: {0.01 if self.metric is GateMetric.ERROR_RATE else 250}}}"
            )
        if self.metric in RATE_METRICS and (self.max == 0 or self.min == 1):
            side, edge, example = ("upper", "above 0", 0.01) if self.max == 0 else ("lower", "below 1", 0.99)
            raise ValueError(
                f"gate {metric} has {bound} {self.threshold:g}, which no traffic can show: the gate "
                f"passes on the rate's {side} confidence bound, which stays {edge} however many "
                "requests come, so the rollout would hold until progress_deadline_s aborts it; use a "
                f"rate the traffic can show, e.g. {bound}: {example}"
                + (" (0 errors bound the error rate under 1% after ~350-800 requests)"
                   if self.metric is GateMetric.ERROR_RATE else "")
            )
        if self.metric in LATENCY_METRICS and self.max == 0:
            raise ValueError(
                f"gate {metric} has max 0, which every request exceeds, so it always fails; give "
                f"the most milliseconds a candidate may take, e.g. {{metric: {metric}, max: 250}}"
            )
        return self

    def _check_promql(self) -> Gate:
        example = ("{metric: promql, name: error_ratio, max: 0.01, query: 'sum(rate(serve_ab_errors_total"
                   "{version=\"{{candidate}}\"}[1m])) / sum(rate(serve_ab_requests_total"
                   "{version=\"{{candidate}}\"}[1m]))'}")
        if self.name is None or self.query is None:
            missing = " and ".join(key for key in ("name", "query") if getattr(self, key) is None)
            raise ValueError(f"gate promql needs {missing}, e.g. {example}")
        if self.bound not in ("max", "min"):
            raise ValueError(
                f"gate promql[{self.name}] has {self.bound}; a promql gate takes max or min: write "
                "the comparison with stable into the query, e.g. 'sum(rate(m{version=\"{{candidate}}\"}[1m])) "
                "/ sum(rate(m{version=\"{{stable}}\"}[1m]))'"
            )
        unknown = sorted(set(promql_placeholders(self.query)) - set(PROMQL_PLACEHOLDERS))
        if unknown:
            raise ValueError(
                f"gate promql[{self.name}] query has placeholder(s) {', '.join('{{%s}}' % u for u in unknown)}; "
                f"valid: {', '.join('{{%s}}' % p for p in PROMQL_PLACEHOLDERS)}"
            )
        return self

    def _check_webhook(self, bounds: dict[str, float]) -> Gate:
        example = "{metric: webhook, name: smoke, url: http://checks:8080/canary, timeout_s: 5}"
        if self.url is None:
            raise ValueError(f"gate webhook needs url, e.g. {example}")
        check_hook_url("url", self.url)
        if len(bounds) > 1 or any(key.endswith("_ratio_to_stable") for key in bounds):
            raise ValueError(
                f"gate webhook has bounds {sorted(bounds)}; it takes none (the endpoint's pass decides) "
                "or one of min or max, which judges the value it answers, e.g. "
                "{metric: webhook, url: http://checks:8080/canary, min: 0.9}"
            )
        if self.query is not None or self.prometheus is not None:
            raise ValueError("gate webhook takes no query or prometheus; only metric: promql does")
        check_hook_headers({}, self.headers_from_env or {})
        return self

    @property
    def key(self) -> str:
        """What keys a promql or webhook gate's answer: its name, else (webhook) its url."""
        return self.name if self.name is not None else (self.url or self.metric.value)

    @property
    def bound(self) -> str:
        """max, min, max_ratio_to_stable or min_ratio_to_stable; ``pass`` for a webhook gate
        without one, whose endpoint's pass (1) or fail (0) is judged against 1."""
        return next((key for key in BOUND_KEYS if getattr(self, key) is not None), "pass")

    @property
    def threshold(self) -> float:
        return 1.0 if self.bound == "pass" else float(getattr(self, self.bound))

    @property
    def needs_stable(self) -> bool:
        """True when the verdict needs the stable version's traffic in the same window."""
        return self.metric in DRIFT_METRICS or self.bound.endswith("_ratio_to_stable")

    @property
    def needs_live_stable(self) -> bool:
        """True when the gate has no data unless stable serves beside the candidate: it compares
        the two (needs_stable), or judges copies of stable's live requests sent to the candidate
        (shadow_agreement). At a canary's 100% or after a blue-green switch it cannot judge."""
        return self.needs_stable or self.metric is GateMetric.SHADOW_AGREEMENT

    @property
    def label(self) -> str:
        """Short human name, e.g. ``latency_p95_ms <= 1.5x stable``."""
        metric = self.metric.value + (f"[{self.name}]" if self.name else "")
        if self.metric is GateMetric.WEBHOOK:
            metric = f"webhook[{self.name or display_url(self.url or '')}]"
            if self.bound == "pass":
                return f"{metric} passes"
        op = "<=" if self.bound.startswith("max") else ">="
        suffix = "x stable" if self.bound.endswith("_ratio_to_stable") else ""
        return f"{metric} {op} {self.threshold:g}{suffix}"


class GateAnalysisConfig(_Strict):
    interval_s: DurationS = Field(10.0, gt=0, description="Seconds between two gate analyses.")
    window_s: DurationS | None = Field(
        None, gt=0,
        description="The longest stretch an analysis reads. Unset (the default): everything since the "
        "current step began, so evidence accumulates while a step is held. A cap makes gates "
        "follow recent behaviour, but then later analyses (which spend less alpha) see no more "
        "data than earlier ones, and a held step may never pass; keep it many intervals long "
        "(one shorter than interval_s reads interval_s, so no traffic goes unjudged).",
    )
    min_samples: int = Field(
        50, ge=1,
        description="Samples a version needs in a window before a gate judges it; fewer is "
        "inconclusive (no data), never a failure.",
    )
    alpha: float = Field(
        0.05, gt=0, lt=0.5,
        description="Error rate of the gates over one step: a gate passes only when its "
        "confidence bound is within the threshold and fails only when the opposite bound is "
        "outside it. The k-th analysis of a step is judged at alpha * 6 / (pi^2 k^2), so the "
        "chance of a false pass (or of a false failure) of a gate over all the step's analyses "
        "is at most alpha. Smaller alpha needs more traffic per window to decide.",
    )
    max_user_icc: float | None = Field(
        None, gt=0, le=1,
        description="An assumed ceiling on how alike one user's requests are (their intraclass "
        "correlation, 0-1) in errors, latency, classes and scores. Unset (the default): no "
        "assumption; a user who sent m requests may count as few as one, and keyed traffic of a "
        "few requests a second to the candidate seldom shows enough evidence to pass. Set (e.g. "
        "0.1), a gate's design effect is at most Kish's 1 + max_user_icc (m - 1), m the "
        "request-weighted mean of requests per user: faster decisions, valid only while the "
        "assumption holds (a candidate at a gate's bound passes more often than alpha where "
        "users are more alike than assumed; README: 'Keyed traffic needs much more').",
    )
    failure_limit: int = Field(
        0, ge=0,
        description="Failed analyses tolerated during the rollout; the next one aborts it "
        "(0 aborts at the first failure).",
    )
    progress_deadline_s: DurationS | None = Field(
        600.0, gt=0,
        description="Longest the rollout may be held waiting for a passing analysis or a "
        "validation before it is aborted; manual pauses do not count. Unset waits forever.",
    )
    prometheus: PrometheusConfig | None = Field(
        None, description="The Prometheus promql gates ask, unless a gate names its own.",
    )

    @model_validator(mode="after")
    def _deadline_after_first_analysis(self) -> GateAnalysisConfig:
        deadline_s = self.progress_deadline_s
        if deadline_s is not None and deadline_s <= self.interval_s:
            # The first analysis comes one interval after the candidate gets traffic.
            raise ValueError(
                f"progress_deadline_s ({deadline_s:g}) must be longer than interval_s "
                f"({self.interval_s:g}): a hold would be aborted before its first analysis; e.g. "
                f"progress_deadline_s: {max(600.0, 10 * self.interval_s):g} (null waits forever)"
            )
        return self


class SetWeightStep(_Strict):
    set_weight: float = Field(
        ..., allow_inf_nan=False, description="Candidate's share of traffic in percent, 0..100."
    )

    @model_validator(mode="after")
    def _check(self) -> SetWeightStep:
        weight_pct = self.set_weight
        if not 0.0 <= weight_pct <= 100.0:
            raise ValueError(
                f"set_weight is {weight_pct:g}; it must be 0..100 (percent), e.g. set_weight: 20"
            )
        steps = weight_pct / WEIGHT_RESOLUTION_PCT
        if abs(steps - round(steps)) > 1e-6:
            raise ValueError(
                f"set_weight is {weight_pct}; weights resolve to {WEIGHT_RESOLUTION_PCT:g}% steps, e.g. 12.5"
            )
        return self


class PauseSpec(_Strict):
    duration: DurationS | None = Field(
        None, description="How long to wait, e.g. 30s; unset waits for a manual promote."
    )


class PauseStep(_Strict):
    pause: PauseSpec = Field(..., description="{} waits for promote; {duration: 30s} waits 30 s.")


class InlineAnalysis(_Strict):
    min_samples: int | None = Field(
        None, ge=1, description="Overrides analysis.min_samples for this step only."
    )


class AnalysisStep(_Strict):
    analysis: InlineAnalysis = Field(
        ..., description="Blocks until an analysis run in this step passes (or failures abort)."
    )


class ConfirmSpec(HttpHook):
    interval_s: DurationS = Field(
        10.0, gt=0, description="How often the endpoint is asked while the step waits.",
    )


class ConfirmStep(_Strict):
    """Flagger's confirm-promotion: hold at the current weight until an external system says
    yes. Its endpoint is asked (POST, a JSON description of the rollout) every ``interval_s``
    and must answer 2xx with ``{"confirm": true}``; ``{"confirm": false, "reason"?: ...}``,
    no answer or an error keep it waiting. Like ``pause: {}`` it has no deadline (promote
    skips it, abort ends it), and analysis still runs at the current weight, so a bad
    candidate is rolled back while it waits; once confirmed it leaves when the step's latest
    analysis passed, like a timed pause."""

    confirm: ConfirmSpec = Field(
        ..., description="{url: https://approvals/serve-ab, timeout_s?: 5s, interval_s?: 10s}.",
    )


STEP_KINDS = ("set_weight", "pause", "analysis", "confirm")


def _step_words(step: Any) -> str:
    """A step in a few words, e.g. ``set_weight 20``, ``pause 30s``, ``analysis``."""
    if isinstance(step, SetWeightStep):
        return f"set_weight {step.set_weight:g}"
    if isinstance(step, PauseStep):
        duration_s = step.pause.duration
        return "pause until promote" if duration_s is None else f"pause {duration_s:g}s"
    return "analysis" if isinstance(step, AnalysisStep) else "confirm"


def _check_step_shape(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in STEP_KINDS:
        raise ValueError(
            f"a step must have exactly one key, one of {', '.join(STEP_KINDS)}; got {value!r}; "
            "e.g. {set_weight: 20} or {pause: {duration: 30s}}"
        )
    return value


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return next(iter(value), None)
    for kind, cls in (("set_weight", SetWeightStep), ("pause", PauseStep), ("analysis", AnalysisStep),
                      ("confirm", ConfirmStep)):
        if isinstance(value, cls):
            return kind
    return None


Step = Annotated[
    Union[
        Annotated[SetWeightStep, Tag("set_weight")],
        Annotated[PauseStep, Tag("pause")],
        Annotated[AnalysisStep, Tag("analysis")],
        Annotated[ConfirmStep, Tag("confirm")],
    ],
    Discriminator(_step_kind),
    BeforeValidator(_check_step_shape),
]


class BlueGreenConfig(_Strict):
    validation_min_samples: int | None = Field(
        None, ge=1,
        description="When set, the gates must also pass on traffic mirrored to green, judged "
        "with this many samples; unset, validation rests on report_validation alone.",
    )
    post_switch_watch_s: DurationS = Field(
        300.0, ge=0, description="After the switch, how long gates watch green before it is final."
    )
    keep_blue_s: DurationS = Field(
        600.0, ge=0, description="How long blue stays loaded after the switch, for instant rollback."
    )
    auto_switch: bool = Field(
        True, description="Switch as soon as green is validated; false waits for a manual promote."
    )
    validation_mirror_pct: float = Field(
        10.0, gt=0, le=100,
        description="With validation_min_samples: the share of live requests mirrored to green "
        "while it validates; green's answers are compared by the gates, never returned.",
    )
    validation_samples: str | None = Field(
        None,
        description="JSON file {inputs: [...], labels: [...]} run through green before the "
        "switch (e.g. models/digits/samples.json); unset sends one all-zero instance.",
    )
    validation_min_accuracy: float = Field(
        0.0, ge=0, le=1,
        description="Share of validation_samples green must label correctly (needs labels).",
    )

    @model_validator(mode="after")
    def _check(self) -> BlueGreenConfig:
        if self.keep_blue_s < self.post_switch_watch_s:
            raise ValueError(
                f"keep_blue_s ({self.keep_blue_s:g}) must be >= post_switch_watch_s "
                f"({self.post_switch_watch_s:g}): the watch rolls back to blue, so blue must "
                "still be loaded"
            )
        return self


class RolloutConfig(_Strict):
    """How a candidate replaces the stable version: canary steps or a blue-green switch."""

    strategy: Strategy = Field(..., strict=False, description="canary or blue_green.")
    stable: str = Field(..., pattern=VERSION_NAME_PATTERN, description="Version serving now (blue).")
    candidate: str = Field(..., pattern=VERSION_NAME_PATTERN, description="Version rolled out (green).")
    analysis: GateAnalysisConfig = Field(
        default_factory=GateAnalysisConfig, description="When and how strictly gates are judged."
    )
    gates: list[Gate] = Field(
        default_factory=list, description="Checks on the candidate; all must pass to progress."
    )
    steps: list[Step] = Field(default_factory=list, description="Canary steps, run in order.")
    blue_green: BlueGreenConfig | None = Field(
        None, description="Blue-green settings (strategy blue_green only); unset uses defaults."
    )
    retire_after_s: DurationS = Field(
        60.0, ge=0,
        description="Drain delay before the version that lost (old stable after promotion, "
        "candidate after abort) may be unloaded.",
    )

    @model_validator(mode="after")
    def _check(self) -> RolloutConfig:
        if self.stable == self.candidate:
            raise ValueError(f"stable and candidate must differ; both are {self.stable!r}")
        if self.strategy is Strategy.CANARY:
            if not self.steps:
                raise ValueError(
                    "a canary needs steps, e.g. [{set_weight: 5}, {pause: {duration: 5m}}, {set_weight: 100}]"
                )
            if self.blue_green is not None:
                raise ValueError(
                    "blue_green settings apply only to strategy blue_green; remove them or change strategy"
                )
        elif self.steps:
            raise ValueError(
                f"steps apply only to strategy canary; strategy blue_green got {len(self.steps)} steps"
            )
        seen: dict[str, int] = {}
        for index, gate in enumerate(self.gates):
            # The same check twice is a slip (a copied gate whose bound was to change), and its
            # verdicts would be listed twice.
            same = seen.setdefault(gate.model_dump_json(exclude_none=True), index)
            if same != index:
                raise ValueError(f"gates[{index}] repeats gates[{same}] ({gate.label}); remove one, or "
                                 "change the metric or bound it was meant to have")
        webhook_keys: set[str] = set()
        for index, gate in enumerate(self.gates):
            if gate.metric is GateMetric.WEBHOOK:
                if gate.key in webhook_keys:
                    shown = gate.name if gate.name is not None else display_url(gate.key)  # a query may hold a token
                    raise ValueError(
                        f"gates[{index}]: webhook gate {shown!r} is configured twice; give each "
                        "webhook gate a unique name (the name, else the url, keys its answer)"
                    )
                webhook_keys.add(gate.key)
        promql_names: set[str] = set()
        for index, gate in enumerate(self.gates):
            if gate.metric is not GateMetric.PROMQL:
                continue
            if gate.name in promql_names:
                raise ValueError(
                    f"gates[{index}]: promql gate name {gate.name!r} is used twice; promql gate "
                    "names must be unique (the name keys the query's value)"
                )
            promql_names.add(gate.name)
            if gate.prometheus is None and self.analysis.prometheus is None:
                raise ValueError(
                    f"gates[{index}] (promql[{gate.name}]) has no Prometheus to ask: set "
                    "analysis.prometheus: {url: http://prometheus:9090} or prometheus: on the gate"
                )
        weight_pct = 0.0
        for index, step in enumerate(self.steps):
            if isinstance(step, SetWeightStep):
                weight_pct = step.set_weight
            elif isinstance(step, AnalysisStep):
                if not self.gates:
                    raise ValueError(
                        f"steps[{index}] is an analysis step, but no gates are configured under gates:"
                    )
                if weight_pct == 0:
                    raise ValueError(
                        f"steps[{index}] is an analysis step while the candidate's weight is 0: "
                        "it would get no traffic to judge; put a set_weight step before it"
                    )
        self._check_gates_judge_a_weight()
        return self

    def _check_gates_judge_a_weight(self) -> None:
        """No blind promotion: with gates, some step must let them judge the candidate at a
        weight above 0 before it moves on. In the Rollout machine (serve_ab/rollout/machine.py,
        _judged_later and _may_leave) a set_weight strictly between 0 and 100 waits for a
        passing analysis itself or leaves that to the next step; a timed pause, confirm or
        analysis step waits for one at any weight above 0; an open pause runs the gates (a
        failure aborts) while the operator decides. At 100% stable has no traffic, so only the
        gates that need none judge there (machine._judges_without_stable)."""
        if not self.gates or self.strategy is not Strategy.CANARY:
            return
        judge_at_100 = any(not gate.needs_live_stable for gate in self.gates)
        weight_pct, waits_at_100 = 0.0, False
        for step in self.steps:
            if isinstance(step, SetWeightStep):
                weight_pct = step.set_weight
                if 0.0 < weight_pct < 100.0:
                    return
            elif 0.0 < weight_pct < 100.0 or (weight_pct == 100.0 and judge_at_100):
                return
            else:
                waits_at_100 = waits_at_100 or weight_pct == 100.0
        only_relative = " (at 100% stable has no traffic, and every gate here needs it: a ratio to " \
            "stable, drift or shadow_agreement; an absolute gate such as {metric: error_rate, max: " \
            "0.01} would judge there)" if waits_at_100 else ""
        raise ValueError(
            f"steps [{', '.join(_step_words(step) for step in self.steps)}] never let the gates judge "
            "the candidate: it gets no traffic (weight above 0) in a step that waits for a passing "
            f"analysis{only_relative}, so the rollout would promote it to 100% without one. Give it a "
            "weight between 0 and 100 (a set_weight waits there for a passing analysis, or the pause, "
            "confirm or analysis step after it does), e.g. steps: [{set_weight: 5}, "
            "{pause: {duration: 5m}}, {set_weight: 100}]"
        )

    @property
    def blue_green_settings(self) -> BlueGreenConfig:
        return self.blue_green or BlueGreenConfig()

    def prometheus_for(self, gate: Gate) -> PrometheusConfig:
        """The Prometheus a promql gate asks: its own, else analysis.prometheus."""
        prometheus = gate.prometheus or self.analysis.prometheus
        if prometheus is None:  # refused by _check; reachable only with an unvalidated gate
            raise ValueError(f"gate {gate.label} has no Prometheus to ask")
        return prometheus
