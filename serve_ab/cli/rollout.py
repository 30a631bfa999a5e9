"""``serve-ab status|promote|pause|resume|abort|rollback|set-weights``: drive a running app.

The commands speak HTTP to the app's control API (``/rollout/...``). Actions send
``Authorization: Bearer <token>`` with the operator's token; reading the status sends a token
too when one is found (``--token``, ``$SERVE_AB_VIEWER_TOKEN``, ``$SERVE_AB_QA_TOKEN``,
``$SERVE_AB_CONTROL_TOKEN``): an app with ``control.protect_reads`` needs a viewer's, QA's or
operator's, any other ignores it.
Wiring, for ``serve_ab/cli/command.py``::

    subparsers = parser.add_subparsers(dest="command", required=True)
    cli_rollout.add_parsers(subparsers)
    args = parser.parse_args()
    return args.func(args)          # exit code

Examples::

    serve-ab status --history
    serve-ab status --wait --timeout 30m -o json   # for CI: exit 0 promoted, 1 aborted, 3 timed out
    serve-ab status --watch --app digits-canary    # redraw live; the app found by name through Ray
    SERVE_AB_VIEWER_TOKEN=... serve-ab status      # an app with control.protect_reads
    SERVE_AB_CONTROL_TOKEN=... serve-ab promote
    serve-ab promote --from-step 3      # only if the rollout is still at step 3 (safe to retry)
    serve-ab set-weights v1=80 v2=20 --url http://10.0.0.5:8000 --token ...
    serve-ab abort --reason "error rate up on v2"

Exit codes: see ``serve_ab/cli/options.py`` (0 ok, 1 error or aborted, 2 usage, 3 timed out,
4 unreachable).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from typing import Any, NoReturn, TextIO

from pydantic import ValidationError

from serve_ab.cli import serve_apps
from serve_ab.cli import wait as cli_wait
from serve_ab.cli.options import (
    DeprecatedAlias,
    ExitCode,
    RequestFailed,
    add_output_option,
    check_header_token,
    check_http_url,
    dump,
    duration_s,
    redact,
)
from serve_ab.api.status import ActionAnswer, GateLook, GateWindow, HistoryEntry, RolloutStatus
from serve_ab.config.experiment import format_validation_error
from serve_ab.serving.core.messages import Action

__all__ = ["DEFAULT_URL", "QA_TOKEN_ENV", "READ_TOKEN_ENVS", "TOKEN_ENV", "URL_ENV", "VIEWER_TOKEN_ENV",
           "add_connection_options", "add_parsers", "add_token_option", "env_fallbacks", "render_status",
           "resolve_token", "resolve_url", "run"]

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "SERVE_AB_URL"
TOKEN_ENV = "SERVE_AB_CONTROL_TOKEN"  # the operator's: control.token_env's default
VIEWER_TOKEN_ENV = "SERVE_AB_VIEWER_TOKEN"  # enough to read: control.viewer_token_env's default
QA_TOKEN_ENV = "SERVE_AB_QA_TOKEN"  # may pin, and read: control.qa_token_env's default
# Where a read looks for a token, least power first: any of them may read a protected app.
READ_TOKEN_ENVS = (VIEWER_TOKEN_ENV, QA_TOKEN_ENV, TOKEN_ENV)
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_INTERVAL_S = 2.0
# The shortest a poll may wait for its answer near the end of --timeout: the wait may end this
# much after its deadline, rather than give a last poll too little time to be answered.
MIN_POLL_TIMEOUT_S = 1.0

_RUN_HINT = "hint: the app must be running (e.g. `serve run configs/canary.yaml`); set --url, --app or " + URL_ENV
_ACTION_HELP = {
    Action.PROMOTE: "move the candidate on: leave a pause step (blue-green: switch, also before validation "
                    "ends), or with --full go straight to 100%",
    Action.PAUSE: "hold the rollout at its current weights until resume",
    Action.RESUME: "lift an operator's pause (a pause: {} step waits for promote)",
    Action.ABORT: "stop the rollout and send all traffic to the stable version",
    Action.ROLLBACK: "send all traffic back to the stable version (also after a promotion)",
    Action.WEIGHTS: "set a canary's traffic split by hand, e.g. v1=80 v2=20 (pauses the rollout; "
                    "a blue-green rollout refuses it: it moves traffic in one switch)",
}
# The command's name where it differs from the action's ("serve-ab set-weights").
_COMMAND = {action: action.value for action in Action} | {Action.WEIGHTS: "set-weights"}
assert set(_ACTION_HELP) == set(Action), "every control action needs its command"

_Failure = RequestFailed  # the name report.py and older callers use

# The wait loop's clock and sleep; tests replace them with a fake clock.
_clock = time.monotonic
_sleep = time.sleep


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """Which app to talk to (``--url``, ``--app`` with ``--address``, ``$SERVE_AB_URL``) and
    how long one request may take; read back by :func:`resolve_url`."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", type=_url, default=None,
                       help=f"the app's base URL (default: ${URL_ENV} or {DEFAULT_URL})")
    where.add_argument("--app", default=None, metavar="NAME",
                       help="the Serve application's name, looked up in Ray's dashboard (see --address): "
                       "its proxy and route prefix give the URL")
    parser.add_argument("--address", type=_address, default=None, metavar="URL",
                        help="with --app: Ray's dashboard (default: $RAY_DASHBOARD_ADDRESS, $RAY_ADDRESS if "
                        f"an http URL, or {serve_apps.DEFAULT_ADDRESS})")
    parser.add_argument("--request-timeout", dest="request_timeout_s", type=duration_s,
                        default=DEFAULT_TIMEOUT_S, metavar="DURATION",
                        help=f"how long one request may take, e.g. 10s (default: {DEFAULT_TIMEOUT_S:g}s)")
    parser.add_argument("--timeout-s", dest="request_timeout_s", type=duration_s, action=DeprecatedAlias,
                        new_flag="--request-timeout", help=argparse.SUPPRESS)


def env_fallbacks(envs: tuple[str, ...]) -> str:
    """Environment variables read in turn, for a help text: "$A, else $B, else $C"."""
    return ", else ".join(f"${env}" for env in envs)


def add_token_option(parser: argparse.ArgumentParser, *, action: bool = False) -> None:
    """``--token``, into ``args.token``; read back by :func:`resolve_token`. ``action``: the
    command changes the rollout, and needs the operator's token; otherwise it reads."""
    if action:
        help_text = f"the operator's control token, sent as a bearer token (default: ${TOKEN_ENV})"
    else:
        help_text = ("a viewer, QA or operator token, sent as a bearer token: an app with control.protect_reads "
                     f"needs one to be read, others ignore it (default: {env_fallbacks(READ_TOKEN_ENVS)})")
    parser.add_argument("--token", default=None, help=help_text)


def resolve_token(args: argparse.Namespace, *, action: bool = False) -> tuple[str, str] | None:
    """``(token, where it came from)`` to send, or None: ``--token``, else the environment.

    An action takes the operator's ``$SERVE_AB_CONTROL_TOKEN``. A read needs no more than a
    viewer's token, so ``$SERVE_AB_VIEWER_TOKEN`` comes first, then QA's and the operator's (which
    may read too): a QA's or an operator's shell then reads a protected app with nothing more set.
    Raises ValueError (a usage error) naming the source, never the token, when it cannot go in
    an HTTP header.
    """
    given = getattr(args, "token", None)
    if given:
        return check_header_token(given, "argument --token"), "--token"
    for env in (TOKEN_ENV,) if action else READ_TOKEN_ENVS:
        token = os.environ.get(env)
        if token:
            return check_header_token(token, f"${env}"), f"${env}"
    return None


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register the status and action commands; each sets ``func`` (``args -> exit code``)."""
    connection = argparse.ArgumentParser(add_help=False)
    add_connection_options(connection)
    add_output_option(connection, "the status")
    auth = argparse.ArgumentParser(add_help=False)
    add_token_option(auth, action=True)
    auth.add_argument("--revision", type=_count, default=None, metavar="N",
                      help="act only if the rollout's state is still at revision N (as `status` "
                      "shows it); otherwise the app refuses with 409 and changes nothing")

    status = subparsers.add_parser(
        "status", parents=[connection], help="show the rollout: phase, weights, gates; --wait for it to end",
        description="Show the running app's rollout: phase and step, traffic weights, analysis gates. "
        "--wait blocks until the rollout ends and exits 0 promoted, 1 aborted or rolled back, 3 timed out, "
        "4 unreachable; --watch redraws it live. An app with control.protect_reads needs a viewer, QA or "
        f"operator token: --token, else {env_fallbacks(READ_TOKEN_ENVS)}.",
    )
    add_token_option(status)
    status.add_argument("--history", action="store_true", help="add the list of phase transitions")
    follow = status.add_mutually_exclusive_group()
    follow.add_argument("--wait", action="store_true",
                        help="block until the rollout is promoted (exit 0) or aborted/rolled back (exit 1), "
                        "printing a line per phase or step change (-o json|yaml: only the final status)")
    follow.add_argument("--watch", action="store_true",
                        help="redraw the status every --interval until the rollout ends or Ctrl-C")
    status.add_argument("--timeout", dest="timeout_s", type=duration_s, default=None, metavar="DURATION",
                        help="with --wait/--watch: give up (exit 3) after this long, e.g. 30s, 10m, 1h30m "
                        "(default: no limit)")
    status.add_argument("--interval", dest="interval_s", type=duration_s, default=DEFAULT_INTERVAL_S,
                        metavar="DURATION",
                        help=f"with --wait/--watch: time between polls (default: {DEFAULT_INTERVAL_S:g}s)")
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
                                "(step N of M): a retried promote is then refused, not a second step "
                                "(blue-green, which has no steps: 1 validation, 2 the post-switch watch; "
                                "or use --revision)")
        elif action == "abort":
            parser.add_argument("--reason", default="aborted by operator",
                                help="recorded in the rollout's history (default: 'aborted by operator')")
        elif action == "set-weights":
            parser.add_argument("weights", nargs="+", type=_weight_pair, metavar="NAME=PCT",
                                help="a version and its share of traffic in percent, e.g. v1=80 v2=20")
        parser.set_defaults(func=functools.partial(run, parser=parser), action=action, control=act,
                            history=False, wait=False, watch=False, timeout_s=None)


def resolve_url(args: argparse.Namespace) -> str:
    """The app's base URL: ``--url``, else ``--app`` through Ray's dashboard, else ``$SERVE_AB_URL``.

    Raises ValueError for a usage error, RequestFailed when ``--app`` cannot be resolved.
    """
    app, address = getattr(args, "app", None), getattr(args, "address", None)
    if address is not None and app is None:
        raise ValueError("argument --address: only applies with --app NAME (--url names the app itself)")
    if args.url:
        return args.url
    if app is not None:
        return serve_apps.resolve_app_url(app, address or serve_apps.default_address(), args.request_timeout_s)
    return _env_url()


def run(args: argparse.Namespace, *, parser: argparse.ArgumentParser | None = None,
        out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Send the command's request and print the status it returns."""
    out, err = out or sys.stdout, err or sys.stderr
    token = token_from = None
    try:
        found = resolve_token(args, action=getattr(args, "control", None) is not None)
        if found is not None:
            token, token_from = found
        request = _request_for(args)
        if args.timeout_s is not None and not (args.wait or args.watch):
            raise ValueError("argument --timeout: only applies with --wait or --watch (--request-timeout "
                             "bounds one request)")
        if args.watch and args.output != "table":
            raise ValueError(f"argument --watch: draws the table; for -o {args.output} use --wait, which "
                             "prints only the final status")
        url = resolve_url(args)
    except ValueError as e:
        if parser is None:
            raise
        parser.error(str(e))  # exits with status 2
    except RequestFailed as failure:
        _print_lines(failure.lines, token, err)
        return failure.code
    method, path, body = request
    fetch = functools.partial(_fetch_status, url, method, path, body=body, token=token, token_from=token_from,
                              timeout_s=args.request_timeout_s, params={"history": "true"} if args.history else None)
    if args.wait or args.watch:
        return _follow(args, fetch, token, out, err)
    try:
        status = fetch()
    except RequestFailed as failure:
        _print_lines(failure.lines, token, err)
        return failure.code
    if args.output != "table":
        text = dump(status.answer(), args.output)
    elif args.action is None:
        text = render_status(status, history=args.history)
    else:
        # The app says whether the action changed anything (a rollback of an aborted rollout does not).
        done = "nothing to change" if getattr(status, "changed", None) is False else "ok"
        text = f"{args.action}: {done}\n" + render_status(status, short=True)
    # The app never echoes the token, but a proxy's error page might; it must not reach a terminal log.
    print(redact(text, token), file=out)
    return ExitCode.OK


def _print_lines(lines: tuple[str, ...], token: str | None, err: TextIO) -> None:
    for line in lines:
        print(redact(line, token), file=err)


def _follow(args: argparse.Namespace, fetch: Any, token: str | None, out: TextIO, err: TextIO) -> int:
    """``--wait`` (a line per change, then the outcome) or ``--watch`` (redraw every poll).

    Everything printed goes through :func:`redact`, as a single status does: the polls send
    ``token`` (a protected app's), and an answer or error page must not show it."""
    table = args.output == "table"
    tty = bool(getattr(out, "isatty", lambda: False)())
    last: dict[str, Any] = {"key": None, "frame": None}

    def progress(status: RolloutStatus, elapsed_s: float) -> None:
        if args.watch:
            frame = redact(render_status(status, history=args.history), token)
            if tty:  # clear the screen and home the cursor: a redraw without curses
                out.write("\x1b[H\x1b[2J" + f"every {args.interval_s:g}s, {cli_wait.elapsed_text(elapsed_s)} "
                          "elapsed (Ctrl-C to stop)\n\n" + frame + "\n")
                out.flush()
            elif frame != last["frame"]:  # a log, not a screen: only frames that changed
                print(f"--- {cli_wait.elapsed_text(elapsed_s)}\n{frame}", file=out, flush=True)
            last["frame"] = frame
        elif table and cli_wait.progress_key(status) != last["key"]:
            print(redact(f"[{cli_wait.elapsed_text(elapsed_s)}] {cli_wait.progress_text(status)}", token),
                  file=out, flush=True)
        last["key"] = cli_wait.progress_key(status)

    def failed(failure: RequestFailed, elapsed_s: float) -> None:
        print(redact(f"[{cli_wait.elapsed_text(elapsed_s)}] {failure.lines[0]} (retrying)", token), file=err,
              flush=True)

    # No poll outlasts the wait: with --timeout 2s, an app slow to answer ends the wait at 2 s,
    # not at --request-timeout's 10.
    deadline_s = None if args.timeout_s is None else _clock() + args.timeout_s

    def poll() -> RolloutStatus:
        if deadline_s is None:
            return fetch()
        return fetch(timeout_s=max(min(args.request_timeout_s, deadline_s - _clock()), MIN_POLL_TIMEOUT_S))

    try:
        result = cli_wait.wait_for_rollout(poll, timeout_s=args.timeout_s, interval_s=args.interval_s,
                                           clock=_clock, sleep=_sleep, on_status=progress, on_failure=failed)
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return ExitCode.INTERRUPTED
    if not table and result.status is not None:
        print(redact(dump(result.status.answer(), args.output), token), file=out)
    if result.code != ExitCode.OK:
        _print_lines(result.lines, token, err)
    elif table:  # -o json|yaml: the final status is all there is to say
        _print_lines(result.lines, token, out)
    return result.code


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
        total_pct = sum(weights.values())
        if abs(total_pct - 100.0) > 1e-6:  # the app's own rule: refused here, before anything is sent
            raise ValueError(f"argument NAME=PCT: the weights sum to {total_pct:g}%; they must sum to 100 "
                             "(a version not named gets 0), e.g. v1=80 v2=20")
        body["weights"] = weights
    if getattr(args, "revision", None) is not None:
        body["revision"] = args.revision
    return "POST", path, body or None


def _send(url: str, method: str, path: str, *, body: dict[str, Any] | None, token: str | None,
          timeout_s: float, params: dict[str, str] | None, token_from: str | None = None) -> dict[str, Any]:
    """``method url+path`` with ``token`` as a bearer token (when there is one), the answer's
    JSON object; else RequestFailed saying why. ``token_from`` names the token's source in a hint."""
    try:
        import httpx
    except ImportError:  # a dev extra for now; the commands cannot work without it
        raise RequestFailed("error: these commands need httpx; install it with `pip install httpx`") from None
    # Reads send it too: an app with control.protect_reads refuses them without (others ignore it).
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        # A plain-http URL never does TLS with the app (a proxy's TLS is verified on its own), so
        # skip loading the CA bundle: it is most of a command's start-up time.
        response = httpx.request(method, url + path, json=body, params=params, headers=headers,
                                 timeout=timeout_s, verify=url.startswith("https://"))
    # Raised while the answer is awaited or read: the request went out. A connection reset then
    # is a ReadError (a close, RemoteProtocolError); an answer whose Content-Encoding does not
    # decode (a broken proxy's gzip) is a DecodingError, an answer the app did give.
    except (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError, httpx.DecodingError) as e:
        if method == "GET" and isinstance(e, httpx.ReadTimeout):  # a read changes nothing
            _unreachable(url, timeout_s, e)
        if method == "GET" and isinstance(e, httpx.DecodingError):
            raise RequestFailed(f"error: {url}{path} answered with a body that cannot be decoded "
                                f"({e or type(e).__name__}); is a proxy between here and the app?") from None
        if method == "GET":
            raise RequestFailed(f"error: cannot reach {url}: {e or type(e).__name__}", _RUN_HINT,
                                code=ExitCode.UNREACHABLE) from None
        # The action was sent whole, and the app may have applied it before the answer was lost
        # (a loaded app answers late): "cannot reach" would invite a blind resend, a second step.
        if isinstance(e, httpx.ReadTimeout):
            got = f"no answer within {timeout_s:g} s"
        elif isinstance(e, httpx.DecodingError):
            got = f"its answer cannot be decoded ({e or type(e).__name__})"
        else:
            got = f"the connection closed before the answer ({e or type(e).__name__})"
        raise RequestFailed(f"error: {method} {url}{path} was sent, but {got}: the app may have applied it",
                            "hint: check `serve-ab status` before sending it again; `--revision N` (the revision "
                            "status shows) makes a resend a no-op once the rollout has moved; or raise "
                            "--request-timeout", code=ExitCode.UNREACHABLE) from None
    except httpx.TimeoutException as e:  # connecting, or sending the request: nothing was applied
        _unreachable(url, timeout_s, e)
    except httpx.LocalProtocolError as e:  # refused before sending: a header h11 will not write
        raise RequestFailed(f"error: the request to {url} could not be sent ({e or type(e).__name__})",
                            code=ExitCode.USAGE) from None
    except httpx.TransportError as e:
        raise RequestFailed(f"error: cannot reach {url}: {e or type(e).__name__}", _RUN_HINT,
                            code=ExitCode.UNREACHABLE) from None
    except httpx.InvalidURL as e:  # one the flags' check let through, or one built from the dashboard's answer
        raise RequestFailed(f"error: {url!r} is not a valid URL ({e}); give the app's base URL, e.g. {DEFAULT_URL}",
                            code=ExitCode.USAGE) from None
    if response.status_code != 200:
        lines = [f"error: {response.status_code} {_error_message(response)}"]
        if response.status_code in (401, 403):
            lines.append(_auth_hint(response.status_code, method != "GET", bool(token), token_from))
        elif response.status_code == 503 and method == "POST":
            lines.append("hint: nothing was changed; send the same command again")
        elif response.status_code == 404 and path == "/rollout/status":
            lines.append(f"hint: is {url} a serve-ab app? its control API answers at /rollout/status")
        raise RequestFailed(*lines)
    try:
        status = response.json()
    except (ValueError, RecursionError):  # not JSON, or nested past Python's recursion limit
        raise RequestFailed(f"error: {url}{path} answered 200 but not with JSON: {response.text[:200]!r}") from None
    if not isinstance(status, dict):
        raise RequestFailed(f"error: {url}{path} answered 200 with {type(status).__name__}, expected a status object")
    return status


def _unreachable(url: str, timeout_s: float, err: Exception) -> NoReturn:
    raise RequestFailed(f"error: cannot reach {url}: no answer within {timeout_s:g} s ({type(err).__name__})",
                        _RUN_HINT + "; or raise --request-timeout", code=ExitCode.UNREACHABLE) from None


def _auth_hint(status_code: int, action: bool, sent: bool, token_from: str | None) -> str:
    """What to do about a 401 or 403: which token the request needs, where the CLI takes it
    from, and whether one was ``sent`` (and from where, ``token_from``; never the token)."""
    if action:
        need, where = "actions need the app's operator (control) token", f"set {TOKEN_ENV} or pass --token"
    else:
        need = "reading this app (control.protect_reads) needs a viewer, QA or operator token"
        where = f"set {READ_TOKEN_ENVS[0]} (or {', '.join(READ_TOKEN_ENVS[1:])}) or pass --token"
    which = f"the token sent, from {token_from}," if token_from else "the token sent"
    if not sent:
        outcome = "no token was sent"
    elif status_code == 403:
        outcome = f"{which} is known but its role may not do this"
    else:
        outcome = f"{which} was refused"
    return f"hint: {need}: {where} ({outcome})"


def _error_message(response: Any) -> str:
    try:
        body = response.json()
    except (ValueError, RecursionError):
        body = None
    location = response.headers.get("location")
    if response.is_redirect and location:  # not followed: a redirect may drop the token or change the method
        return f"{response.reason_phrase}: redirects to {location} (not followed; give the app's own URL as --url)"
    if isinstance(body, dict):
        for key in ("error", "detail"):  # ours, then FastAPI's default
            if body.get(key):
                return str(body[key])
    return response.text.strip()[:200] or response.reason_phrase


#: What every serve-ab app's ``/rollout/status`` (and an action's answer) holds.
STATUS_KEYS = ("phase", "weights_pct")


def response_kind(answer: dict[str, Any]) -> str:
    """A few words on a JSON object that is not a status: its first keys."""
    keys = list(answer)
    shown = ", ".join(repr(key)[:40] for key in keys[:4]) + (", ..." if len(keys) > 4 else "")
    return f"200 with a JSON object of keys {shown}" if keys else "200 with an empty JSON object"


def _fetch_status(url: str, method: str, path: str, **request: Any) -> RolloutStatus:
    """:func:`_send`, read as the status it should be (an action's answer: an :class:`ActionAnswer`)."""
    answer = _send(url, method, path, **request)
    model = ActionAnswer if method == "POST" else RolloutStatus
    # Every field of the model has a default (older apps omit newer ones), so any JSON object
    # would read as a status: a plain Ray Serve app beside serve-ab's, which answers every path
    # under its prefix, read as "rollout none (static weights)", and an action sent to it as
    # "promote: ok", exit 0. Every serve-ab app's status names these.
    missing = [key for key in STATUS_KEYS if key not in answer]
    if missing:
        applied = " (nothing says the action was applied)" if method == "POST" else ""
        raise RequestFailed(f"error: {url}{path} answered {response_kind(answer)} without {' and '.join(missing)}, "
                            f"so it is not a serve-ab app's status{applied}",
                            f"hint: is {url} a serve-ab app? `serve status` lists the apps; give --app NAME "
                            "or --url of one whose import_path is serve_ab's build_app")
    try:
        return model.from_answer(answer)
    except ValidationError as err:  # as an answer that is not JSON: the app answered, not as a serve-ab app does
        problem = format_validation_error(err, yaml_hints=False)[0]  # JSON from the app, not YAML
        raise RequestFailed(f"error: unexpected answer from {url}{path}: {problem}",
                            f"hint: is {url} a serve-ab app, of a version this serve-ab reads?") from None


# --- rendering -----------------------------------------------------------------------------


def render_status(status: RolloutStatus, *, history: bool = False, width: int = 40,
                  short: bool = False) -> str:
    """The terminal view of a ``/rollout/status`` answer; ``short`` drops the gate table.

    ``width`` is the length of a weight bar in characters.
    """
    strategy, stable, candidate = status.strategy, status.stable, status.candidate
    rows: list[tuple[str, str]] = [("model", status.model or "-")]
    if strategy is None:
        rows.append(("rollout", "none (static weights)"))
    else:
        rows.append(("rollout", f"{strategy}: {stable} -> {candidate}"))
        rows.append(("phase", status.phase + cli_wait.step_text(status)))
        if status.revision is not None:
            rows.append(("revision", f"{status.revision}  (serve-ab <action> --revision {status.revision} "
                                     "acts only on this state)"))
        if status.next_step_in_s is not None:
            rows.append(("next step", f"in {_duration(status.next_step_in_s)}"))
        if status.failure_limit is not None:
            rows.append(("failures", f"{status.failures_total or 0} of {status.failure_limit} tolerated"))
        evidence = _evidence(status.window, stable, candidate)
        if evidence:
            rows.append(("evidence", evidence))
        if status.retired:
            rows.append(("retired", ", ".join(status.retired)))
    if status.reason:
        rows.append(("reason", status.reason))
    shadow = status.shadow or {}
    if shadow.get("version") is not None:
        rows.append(("shadow", f"{shadow['version']} gets a copy of {_percent(shadow.get('percent'))} of live "
                               "requests (compared in `serve-ab report`)"))
    for version, error in status.failed_versions.items():
        rows.append(("failed", f"{version} gets no traffic: {error}"))
    if status.not_saved is not None:
        not_saved = status.not_saved
        rows.append(("store", f"saves failing for {_duration(max(0.0, not_saved.for_s))} "
                              f"({not_saved.error}): decisions wait for the store, routers serve on"))
    key_width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{key_width}}  {v}" for k, v in rows]

    lines += ["", "weights"] + _weight_bars(status.weights_pct, width, stable, candidate)

    gates = status.gates
    if gates and short:
        counts = {v: sum(g.verdict == v for g in gates) for v in ("pass", "fail", "inconclusive")}
        lines += ["", "gates  " + ", ".join(f"{n} {v}" for v, n in counts.items() if n)]
    elif gates:
        lines += ["", "gates"] + _gate_table(gates)

    if history and strategy is not None:  # a static app has no phases to move between
        lines += ["", "history"] + _history_lines(status.history, status.steps_total)
    return "\n".join(lines)


def _evidence(window: GateWindow | None, stable: str | None, candidate: str | None) -> str | None:
    """What the gates' latest analysis read: "v1 1,650 requests (41 errors), v2 660 (17 errors)";
    None when the status has no window (a static app, an older app, no look yet)."""
    if window is None:
        return None
    requests, errors = window.requests, window.errors
    parts = []
    for version in [stable, candidate] + [v for v in requests if v not in (stable, candidate)]:
        n = requests.get(version)
        if n is not None:
            failed = errors.get(version)
            tail = f" ({failed:,} error{'' if failed == 1 else 's'})" if failed is not None else ""
            parts.append(f"{version} {n:,} requests{tail}")
    return ", ".join(parts) + " in the gates' window" if parts else None


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


def _gate_table(gates: list[GateLook]) -> list[str]:
    header = ("gate", "value", "threshold", "verdict", "reason")
    rows = [(g.gate, *_value_and_threshold(g), g.verdict, g.reason) for g in gates]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    out = []
    for gate, value, threshold, verdict, reason in [header, *rows]:
        out.append(f"  {gate:<{widths[0]}}  {value:>{widths[1]}}  {threshold:>{widths[2]}}  "
                   f"{verdict:<{widths[3]}}  {reason}".rstrip())
    return out


def _value_and_threshold(gate: GateLook) -> tuple[str, str]:
    """A webhook gate without min or max judges the endpoint's ``pass`` (its value is 1 or 0,
    its threshold 1): shown as the answer, not as numbers."""
    if gate.bound == "pass":
        return ("-" if gate.value is None else "true" if gate.value == 1 else "false"), "pass: true"
    return _number(gate.value), _number(gate.threshold)


def _history_lines(history: list[HistoryEntry] | None, steps_total: int | None = None) -> list[str]:
    if history is None:
        return ["  (the app sent no history)"]
    if not history:
        return ["  (no transitions yet)"]
    lines = []
    for entry in history:
        when = _local_time(entry.t_s)
        change = f"{entry.from_phase or 'start'} -> {entry.to_phase}"
        step = entry.step_index
        if step is not None and steps_total is not None:
            # A finished rollout's index is past its last step; a blue-green rollout has no
            # steps (its index is internal), so its phases say where it was.
            step = min(step, steps_total - 1) if steps_total > 0 else None
        at_step = f"  step {step + 1}" if step is not None else ""
        lines.append(f"  {when}  {change}{at_step}  {entry.reason}{_by(entry)}".rstrip())
    return lines


def _local_time(t_s: float) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t_s))
    except (ValueError, OverflowError, OSError):  # NaN, or a time past what the platform's time_t holds
        return f"?{t_s!r}"


def _by(entry: HistoryEntry) -> str:
    """``  [promote by alice (operator) from 10.0.0.7]`` for an entry an action wrote."""
    if not entry.action:
        return ""
    actor = entry.actor or {}
    who = f" by {actor.get('name') or 'unknown'} ({actor.get('role') or '?'})" if actor else " by unknown"
    where = f" from {actor['address']}" if actor.get("address") else ""
    return f"  [{entry.action}{who}{where}]"


def _percent(value: Any) -> str:
    return "?%" if not isinstance(value, (int, float)) else f"{value:g}%"


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
    try:
        return check_http_url(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}; give the app's base URL, e.g. {DEFAULT_URL}") from None


def _address(text: str) -> str:
    try:
        return check_http_url(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}; give Ray's dashboard, e.g. {serve_apps.DEFAULT_ADDRESS}") from None


def _env_url() -> str:
    text = os.environ.get(URL_ENV) or DEFAULT_URL
    try:
        return _url(text)
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"${URL_ENV}: {e}") from None
