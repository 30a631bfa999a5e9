"""``serve-ab status|promote|pause|resume|abort|rollback|set-weights``: drive a running app.

The commands speak HTTP to the app's control API (``/rollout/...``). Reading the status is
open; actions send ``Authorization: Bearer <token>``. Wiring, for ``serve_ab/cli/command.py``::

    subparsers = parser.add_subparsers(dest="command", required=True)
    cli_rollout.add_parsers(subparsers)
    args = parser.parse_args()
    return args.func(args)          # exit code

Examples::

    serve-ab status --history
    SERVE_AB_CONTROL_TOKEN=... serve-ab promote
    serve-ab promote --from-step 3      # only if the rollout is still at step 3 (safe to retry)
    serve-ab set-weights v1=80 v2=20 --url http://10.0.0.5:8000 --token ...
    serve-ab abort --reason "error rate up on v2"

Exit codes: 0 ok; 1 the app answered with an error or could not be reached; 2 usage error.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from typing import Any, TextIO

from serve_ab.serving.core.messages import Action

__all__ = ["add_parsers", "render_status", "run", "DEFAULT_URL", "URL_ENV", "TOKEN_ENV"]

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "SERVE_AB_URL"
TOKEN_ENV = "SERVE_AB_CONTROL_TOKEN"
DEFAULT_TIMEOUT_S = 10.0

_RUN_HINT = "hint: the app must be running (e.g. `serve run configs/canary.yaml`); set --url or " + URL_ENV
_ACTION_HELP = {
    Action.PROMOTE: "move the candidate on: leave a pause step, or with --full go straight to 100%",
    Action.PAUSE: "hold the rollout at its current weights until resume",
    Action.RESUME: "continue a paused rollout",
    Action.ABORT: "stop the rollout and send all traffic to the stable version",
    Action.ROLLBACK: "send all traffic back to the stable version (also after a promotion)",
    Action.WEIGHTS: "set the traffic split by hand, e.g. v1=80 v2=20 (pauses the rollout)",
}
# The command's name where it differs from the action's ("serve-ab set-weights").
_COMMAND = {action: action.value for action in Action} | {Action.WEIGHTS: "set-weights"}
assert set(_ACTION_HELP) == set(Action), "every control action needs its command"


class _Failure(Exception):
    """A request that did not give a status; ``lines`` go to stderr, the command exits 1."""

    def __init__(self, *lines: str):
        super().__init__(lines[0])
        self.lines = lines


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register the status and action commands; each sets ``func`` (``args -> exit code``)."""
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", type=_url, default=None,
                            help=f"the app's base URL (default: ${URL_ENV} or {DEFAULT_URL})")
    connection.add_argument("--timeout-s", type=_timeout_s, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                            help=f"seconds to wait for the app (default: {DEFAULT_TIMEOUT_S:g})")
    connection.add_argument("--json", action="store_true", help="print the status as the app's raw JSON")
    auth = argparse.ArgumentParser(add_help=False)
    auth.add_argument("--token", default=None,
                      help=f"control token, sent as a bearer token (default: ${TOKEN_ENV})")
    auth.add_argument("--revision", type=_count, default=None, metavar="N",
                      help="act only if the rollout's state is still at revision N (as `status` "
                      "shows it); otherwise the app refuses with 409 and changes nothing")

    status = subparsers.add_parser(
        "status", parents=[connection], help="show the rollout: phase, weights, gates",
        description="Show the running app's rollout: phase and step, traffic weights, analysis gates.",
    )
    status.add_argument("--history", action="store_true", help="add the list of phase transitions")
    status.set_defaults(func=functools.partial(run, parser=status), action=None)

    for act, help_text in _ACTION_HELP.items():
        action = _COMMAND[act]
        # argparse %-formats help (not descriptions): a literal % must be doubled there.
        parser = subparsers.add_parser(action, parents=[connection, auth], help=help_text.replace("%", "%%"),
                                       description=help_text[0].upper() + help_text[1:] + ".")
        if action == "promote":
            parser.add_argument("--full", action="store_true",
                                help="skip the remaining steps and give the candidate 100%%")
            parser.add_argument("--from-step", type=_step_number, default=None, metavar="N",
                                help="act only if the rollout is still at step N, as `status` shows it "
                                "(step N of M): a retried promote is then refused, not a second step")
        elif action == "abort":
            parser.add_argument("--reason", default="aborted by operator",
                                help="recorded in the rollout's history (default: 'aborted by operator')")
        elif action == "set-weights":
            parser.add_argument("weights", nargs="+", type=_weight_pair, metavar="NAME=PCT",
                                help="a version and its share of traffic in percent, e.g. v1=80 v2=20")
        parser.set_defaults(func=functools.partial(run, parser=parser), action=action, control=act,
                            history=False)


def run(args: argparse.Namespace, *, parser: argparse.ArgumentParser | None = None,
        out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Send the command's request and print the status it returns."""
    out, err = out or sys.stdout, err or sys.stderr
    token = getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or None
    try:
        url = args.url or _env_url()
        request = _request_for(args)
    except ValueError as e:
        if parser is None:
            raise
        parser.error(str(e))  # exits with status 2
    method, path, body = request
    try:
        status = _send(url, method, path, body=body, token=token, timeout_s=args.timeout_s,
                       params={"history": "true"} if args.history else None)
    except _Failure as failure:
        for line in failure.lines:
            print(_redact(line, token), file=err)
        return 1
    if args.json:
        text = json.dumps(status, indent=2, sort_keys=True)
    elif args.action is None:
        text = render_status(status, history=args.history)
    else:
        text = f"{args.action}: ok\n" + render_status(status, short=True)
    print(_redact(text, token), file=out)
    return 0


def _request_for(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    action: Action | None = getattr(args, "control", None)
    if action is None:
        return "GET", "/rollout/status", None
    path = f"/rollout/{action.value}"
    body: dict[str, Any] = {}
    if action is Action.PROMOTE:
        body["full"] = args.full
        if args.from_step is not None:
            body["from_step"] = args.from_step - 1  # the app counts steps from 0, `status` from 1
    elif action is Action.ABORT:
        body["reason"] = args.reason
    elif action is Action.WEIGHTS:
        weights: dict[str, float | int] = {}
        for name, pct in args.weights:
            if name in weights:
                raise ValueError(f"argument NAME=PCT: {name} is given twice ({name}={weights[name]:g} and "
                                 f"{name}={pct:g}); give each version once, e.g. v1=80 v2=20")
            weights[name] = int(pct) if pct.is_integer() else pct
        body["weights"] = weights
    if getattr(args, "revision", None) is not None:
        body["revision"] = args.revision
    return "POST", path, body or None


def _send(url: str, method: str, path: str, *, body: dict[str, Any] | None, token: str | None,
          timeout_s: float, params: dict[str, str] | None) -> dict[str, Any]:
    try:
        import httpx
    except ImportError:  # a dev extra for now; the commands cannot work without it
        raise _Failure("error: these commands need httpx; install it with `pip install httpx`") from None
    headers = {"Authorization": f"Bearer {token}"} if token and method != "GET" else {}
    try:
        # A plain-http URL never does TLS with the app (a proxy's TLS is verified on its own), so
        # skip loading the CA bundle: it is most of a command's start-up time.
        response = httpx.request(method, url + path, json=body, params=params, headers=headers,
                                 timeout=timeout_s, verify=url.startswith("https://"))
    except httpx.TimeoutException as e:
        raise _Failure(f"error: cannot reach {url}: no answer within {timeout_s:g} s ({type(e).__name__})",
                       _RUN_HINT + "; or raise --timeout-s") from None
    except httpx.TransportError as e:
        raise _Failure(f"error: cannot reach {url}: {e or type(e).__name__}", _RUN_HINT) from None
    if response.status_code != 200:
        lines = [f"error: {response.status_code} {_error_message(response)}"]
        if response.status_code == 401:
            lines.append(
                f"hint: actions need the app's control token: set {TOKEN_ENV} or pass --token"
                + (" (the token sent was refused)" if token else " (no token was sent)")
            )
        elif response.status_code == 503 and method == "POST":
            lines.append("hint: nothing was changed; send the same command again")
        elif response.status_code == 404 and path == "/rollout/status":
            lines.append(f"hint: is {url} a serve-ab app? its control API answers at /rollout/status")
        raise _Failure(*lines)
    try:
        status = response.json()
    except ValueError:
        raise _Failure(f"error: {url}{path} answered 200 but not with JSON: {response.text[:200]!r}") from None
    if not isinstance(status, dict):
        raise _Failure(f"error: {url}{path} answered 200 with {type(status).__name__}, expected a status object")
    return status


def _error_message(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("error", "detail"):  # ours, then FastAPI's default
            if body.get(key):
                return str(body[key])
    return response.text.strip()[:200] or response.reason_phrase


def _redact(text: str, token: str | None) -> str:
    # The app never echoes the token, but a proxy's error page might; it must not reach a terminal log.
    return text.replace(token, "***") if token else text


# --- rendering -----------------------------------------------------------------------------


def render_status(status: dict[str, Any], *, history: bool = False, width: int = 40,
                  short: bool = False) -> str:
    """The terminal view of a ``/rollout/status`` object; ``short`` drops the gate table.

    ``width`` is the length of a weight bar in characters.
    """
    strategy, phase = status.get("strategy"), status.get("phase") or "unknown"
    stable, candidate = status.get("stable"), status.get("candidate")
    rows: list[tuple[str, str]] = [("model", str(status.get("model") or "-"))]
    if strategy is None:
        rows.append(("rollout", "none (static weights)"))
    else:
        rows.append(("rollout", f"{strategy}: {stable} -> {candidate}"))
        rows.append(("phase", phase + _step_text(status)))
        if status.get("revision") is not None:
            rows.append(("revision", f"{status['revision']}  (serve-ab <action> --revision {status['revision']} "
                                     "acts only on this state)"))
        if status.get("next_step_in_s") is not None:
            rows.append(("next step", f"in {_duration(status['next_step_in_s'])}"))
        if status.get("failure_limit") is not None:
            rows.append(("failures", f"{status.get('failures_total', 0)} of {status['failure_limit']} tolerated"))
        if status.get("retired"):
            rows.append(("retired", ", ".join(map(str, status["retired"]))))
    if status.get("reason"):
        rows.append(("reason", str(status["reason"])))
    key_width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{key_width}}  {v}" for k, v in rows]

    lines += ["", "weights"] + _weight_bars(status.get("weights_pct") or {}, width, stable, candidate)

    gates = status.get("gates") or []
    if gates and short:
        counts = {v: sum(g.get("verdict") == v for g in gates) for v in ("pass", "fail", "inconclusive")}
        lines += ["", "gates  " + ", ".join(f"{n} {v}" for v, n in counts.items() if n)]
    elif gates:
        lines += ["", "gates"] + _gate_table(gates)

    if history and strategy is not None:  # a static app has no phases to move between
        lines += ["", "history"] + _history_lines(status.get("history"))
    return "\n".join(lines)


def _step_text(status: dict[str, Any]) -> str:
    index, total, step = status.get("step_index"), status.get("steps_total"), status.get("step")
    if step is None or index is None or not total:
        return ""
    return f", step {index + 1} of {total}: {step}"  # step_index counts from 0; people count from 1


def _weight_bars(weights_pct: dict[str, float], width: int, stable: Any, candidate: Any) -> list[str]:
    if not weights_pct:
        return ["  (none reported)"]
    name_width = max(len(str(name)) for name in weights_pct)
    lines = []
    for name, pct in weights_pct.items():
        pct = float(pct)
        filled = round(min(max(pct, 0.0), 100.0) / 100.0 * width)
        role = " (stable)" if name == stable else " (candidate)" if name == candidate else ""
        lines.append(f"  {name:<{name_width}}  {pct:5.1f}%  {'#' * filled}{'.' * (width - filled)}{role}")
    return lines


def _gate_table(gates: list[dict[str, Any]]) -> list[str]:
    header = ("gate", "value", "threshold", "verdict", "reason")
    rows = [(str(g.get("gate", "?")), _number(g.get("value")), _number(g.get("threshold")),
             str(g.get("verdict", "?")), str(g.get("reason") or "")) for g in gates]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    out = []
    for gate, value, threshold, verdict, reason in [header, *rows]:
        out.append(f"  {gate:<{widths[0]}}  {value:>{widths[1]}}  {threshold:>{widths[2]}}  "
                   f"{verdict:<{widths[3]}}  {reason}".rstrip())
    return out


def _history_lines(history: Any) -> list[str]:
    if history is None:
        return ["  (the app sent no history)"]
    if not history:
        return ["  (no transitions yet)"]
    lines = []
    for entry in history:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(entry.get("t_s", 0.0))))
        change = f"{entry.get('from_phase') or 'start'} -> {entry.get('to_phase')}"
        step = entry.get("step_index")
        at_step = f"  step {step + 1}" if isinstance(step, int) else ""
        lines.append(f"  {when}  {change}{at_step}  {entry.get('reason', '')}{_by(entry)}".rstrip())
    return lines


def _by(entry: dict[str, Any]) -> str:
    """``  [promote by alice (operator) from 10.0.0.7]`` for an entry an action wrote."""
    if not entry.get("action"):
        return ""
    actor = entry.get("actor") or {}
    who = f" by {actor.get('name') or 'unknown'} ({actor.get('role') or '?'})" if actor else " by unknown"
    where = f" from {actor['address']}" if actor.get("address") else ""
    return f"  [{entry['action']}{who}{where}]"


def _number(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4g}"


def _duration(seconds: float) -> str:
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


# --- argument types ------------------------------------------------------------------------


def _weight_pair(text: str) -> tuple[str, float]:
    name, sep, pct_text = text.partition("=")
    name = name.strip()
    expected = "expected NAME=PCT with PCT a percentage in [0, 100], e.g. v1=80 v2=20"
    if not sep or not name or any(c.isspace() for c in name):
        raise argparse.ArgumentTypeError(f"{text!r}: {expected}")
    try:
        pct = float(pct_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {pct_text!r} is not a number; {expected}") from None
    if not math.isfinite(pct) or not 0.0 <= pct <= 100.0:
        raise argparse.ArgumentTypeError(f"{text!r}: {pct_text} is outside [0, 100]; {expected}")
    return name, pct


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number >= 0, e.g. --revision 12")
    return value


def _step_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} must be a step number >= 1 as `serve-ab status` shows it (step N of M), e.g. --from-step 3")
    return value


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an http(s) URL; give the app's base URL, e.g. {DEFAULT_URL}")
    return text.rstrip("/")


def _env_url() -> str:
    text = os.environ.get(URL_ENV) or DEFAULT_URL
    try:
        return _url(text)
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"${URL_ENV}: {e}") from None


def _timeout_s(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a number of seconds > 0, e.g. --timeout-s 10")
    return value
