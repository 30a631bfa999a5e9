"""What the ``serve-ab`` commands share: exit codes, durations, ``-o table|json|yaml``.

Exit codes are one table for every command, so that a CI step can branch on them:

===  =====================================================================================
0    ok; with ``status --wait``: the rollout was promoted (blue-green: switched, and its
     post-switch watch passed)
1    the app answered with an error, a record is missing; with ``--wait``: the rollout was
     aborted or rolled back
2    usage error (a bad flag or value; nothing was sent)
3    ``--wait``/``--watch`` timed out before the rollout ended
4    the app (or, for ``--app``, Ray's dashboard; for ``--store``, the Redis) could not be
     reached
130  interrupted (Ctrl-C)
141  the reader of the output went away (``| head``), as a process SIGPIPE ended reports
===  =====================================================================================
"""

from __future__ import annotations

import argparse
import json
import math
import re
from enum import IntEnum
from typing import Any

from serve_ab.config import rollout as rollout_config

__all__ = ["DURATION_FORMS", "EXIT_CODES_HELP", "MAX_DURATION_S", "OUTPUTS", "DeprecatedAlias", "ExitCode",
           "RequestFailed", "add_output_option", "check_header_token", "check_http_url", "dump", "duration_s",
           "hide_url_passwords", "parse_duration_s", "redact"]


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2  # argparse's own
    TIMEOUT = 3
    UNREACHABLE = 4
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
    BROKEN_PIPE = 141  # the reader went away (`| head`), as shells report SIGPIPE


EXIT_CODES_HELP = """\
exit codes:
    0  ok; status --wait: the rollout was promoted (blue-green: switched and watched)
    1  the app answered with an error; status --wait: the rollout was aborted or rolled back,
       or the app has none
    2  usage error (bad flag or value; nothing was sent)
    3  status --wait/--watch: timed out before the rollout ended
    4  the app (or, for --app, Ray's dashboard; for --store, the Redis) could not be reached,
       or an action was sent but its answer was lost (none within --request-timeout, the
       connection reset, or an answer that cannot be decoded): it may have been applied
  130  interrupted (Ctrl-C)
  141  the reader of the output went away (as in `serve-ab runs | head -1`)"""


class RequestFailed(Exception):
    """A request that did not give an answer; ``lines`` go to stderr, the command exits ``code``."""

    def __init__(self, *lines: str, code: int = ExitCode.FAILED):
        lines = tuple(hide_url_passwords(line) for line in lines)  # an --url's password is never printed
        super().__init__(lines[0])
        self.lines = lines
        self.code = int(code)


# --- URLs ----------------------------------------------------------------------------------


def check_http_url(text: str) -> str:
    """``text`` as an http(s) base URL without its trailing slash, checked as httpx will read it.

    Raises ValueError saying what is wrong (``http://256.0.0.1:8000``: an invalid IPv4 address;
    ``http://[::1:8000``: an unclosed IPv6 bracket; a port outside 1-65535; no host), so a
    command can refuse it as a usage error before sending anything.
    """
    import httpx  # the commands that take a URL send with it anyway

    shown = hide_url_passwords(text)  # the message may be printed, the password must not
    if not text.startswith(("http://", "https://")):
        raise ValueError(f"{shown!r} is not an http(s) URL")
    authority = text.split("://", 1)[1].split("/", 1)[0]
    if authority.count("[") != authority.count("]"):
        raise ValueError(f"{shown!r} is not a valid URL (its IPv6 address lacks the closing ']', as in "
                         "http://[::1]:8000)")
    try:
        url = httpx.URL(text)
        port = url.port  # httpx takes any number here; the socket layer would wrap it
    except (httpx.InvalidURL, ValueError) as e:
        raise ValueError(f"{shown!r} is not a valid URL ({hide_url_passwords(str(e))})") from None
    if not url.host:
        raise ValueError(f"{shown!r} is not a valid URL (it has no host)")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"{shown!r} is not a valid URL (port {port} is outside 1-65535)")
    if url.query or url.fragment or "?" in text or "#" in text:
        # The commands append their paths (/rollout/status) to it: after a ? or # they would
        # become part of the query or fragment, and the request would go to the wrong path.
        raise ValueError(f"{shown!r} has a query or fragment, after which the commands' paths would go")
    return text.rstrip("/")


# --- control tokens ------------------------------------------------------------------------


def check_header_token(token: str, name: str) -> str:
    """``token`` if it can be sent in an ``Authorization`` header, else ValueError naming where
    it came from (``name``: ``argument --token``, ``$SERVE_AB_CONTROL_TOKEN``) but never the token.

    httpx refuses a non-ASCII header with a UnicodeEncodeError, and h11 a control character with
    an error that quotes the whole header, token included.
    """
    for position, char in enumerate(token, 1):
        if not " " <= char <= "~":
            kind = "a non-ASCII character" if ord(char) > 0x7F else "a control character such as a line break"
            raise ValueError(f"{name} holds a character that cannot go in an HTTP header ({kind}, at position "
                             f"{position} of {len(token)}); tokens are printable ASCII: was a line break or a "
                             "typographic quote copied with it?")
    if token != token.strip(" "):
        # h11 refuses a header value ending in a space; one starting with one is a different token.
        where = "is only spaces" if not token.strip(" ") else "starts or ends with a space"
        raise ValueError(f"{name} {where}; tokens have none: was a space copied with it?")
    return token


# What a word of a token is made of (URL-safe base64, as `secrets.token_urlsafe` writes): a match
# of the token counts only where it is not part of a longer one. Not . / = or +, which also end
# sentences, URL segments and "token=...": a secret there must still be hidden.
_TOKEN_CHARS = r"[A-Za-z0-9_-]"


# A URL's user:password@ anywhere in a text (an --url quoted in an error, a proxy's page).
_URL_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)([^/?#\s]*)@", re.IGNORECASE)


def hide_url_passwords(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***`` (user names kept):
    ``cannot reach http://ops:hunter2@host`` -> ``cannot reach http://ops:***@host``."""
    def hide(match: re.Match[str]) -> str:
        user, sep, _ = match.group(2).partition(":")
        return f"{match.group(1)}{user}{':***' if sep else ''}@"

    return _URL_USERINFO.sub(hide, text)


def redact(text: str, secret: str | None) -> str:
    """``text`` with every whole occurrence of ``secret`` (as written, or escaped as Python's and
    JSON's reprs show it) replaced by ``***``, and URLs' passwords too (:func:`hide_url_passwords`).

    Whole: not inside a longer run of token characters, so that a short token (``e``) does not
    turn ``error`` into ``***rror``; a secret glued to other token characters is not the token.
    """
    text = hide_url_passwords(text)
    if not secret:
        return text
    forms = {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]}
    alternatives = "|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True))
    return re.sub(f"(?<!{_TOKEN_CHARS})(?:{alternatives})(?!{_TOKEN_CHARS})", "***", text)


# --- durations -----------------------------------------------------------------------------

# The longest duration taken: a year. Longer is a typo (1e10 s is 317 years), and socket
# timeouts and sleeps overflow near 9.2e9 s.
MAX_DURATION_S = rollout_config.MAX_DURATION_S  # one limit for the CLI and the config
DURATION_FORMS = "a duration > 0 such as 30s, 10m, 1h30m, 500ms, or plain seconds such as 45 or 2.5"
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")


def parse_duration_s(text: str) -> float:
    """``"1h30m"`` -> 5400.0; units in the order h, m, s, ms, each once; a bare number is seconds.

    Raises ValueError (with the text and the valid forms) for anything else, zero and more than
    a year included.
    """
    value = text.strip()
    seconds: float | None = None
    try:
        seconds = float(value)
    except ValueError:
        parts = _PART.findall(value)
        units = [unit for _, unit in parts]
        in_order = units == sorted(set(units), key=list(_UNIT_S).index)
        if parts and in_order and "".join(n + u for n, u in parts) == value:
            seconds = sum(float(number) * _UNIT_S[unit] for number, unit in parts)
    if seconds is None or not 0 < seconds < math.inf:
        raise ValueError(f"{text!r} is not a valid duration; expected {DURATION_FORMS}")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"{text!r} is longer than a year ({seconds:.3g} s), the longest duration taken; give at "
                         "most 8760h, e.g. 30m or 24h")
    return seconds


def duration_s(text: str) -> float:
    """``parse_duration_s`` as an argparse type: argparse names the flag in front of the message."""
    try:
        return parse_duration_s(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class DeprecatedAlias(argparse.Action):
    """An old flag kept working: stores into the new flag's ``dest`` and says what to use instead."""

    def __init__(self, option_strings, dest, *, new_flag: str, **kwargs):
        self.new_flag = new_flag
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        import sys

        # On `status`, --timeout-s reads like the wait's limit, which is --timeout: say which is which.
        waits = ": it limits each request, and --timeout limits --wait/--watch" if "--timeout" in parser._option_string_actions else ""
        print(f"warning: {option_string} is deprecated and will be removed; use {self.new_flag} "
              f"(it takes durations such as 10s){waits}", file=sys.stderr)
        setattr(namespace, self.dest, values)


# --- output --------------------------------------------------------------------------------

OUTPUTS = ("table", "json", "yaml")


def add_output_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``-o table|json|yaml`` (and ``--json``, its older spelling), into ``args.output``."""
    parser.add_argument("-o", "--output", choices=OUTPUTS, default="table",
                        help=f"how to print {what}: table (for people, the default), json or yaml")
    parser.add_argument("--json", dest="output", action="store_const", const="json",
                        help="the same as -o json")


def dump(data: Any, output: str) -> str:
    """``data`` (plain JSON values) as ``output`` (``json`` or ``yaml``). A number that is not
    finite is written as null, as pydantic writes JSON: ``NaN`` and ``Infinity`` are not JSON,
    and ``jq`` or ``JSON.parse`` would refuse the whole document. Bytes (a BLOB where a record
    file should hold text) are written as the table shows them, ``b'\\xff'``."""
    if output == "json":
        return json.dumps(_plain(data), indent=2, sort_keys=True, allow_nan=False)
    if output == "yaml":
        import yaml

        # Through JSON first, so that both formats print the same values (tuples, null for NaN).
        plain = json.loads(json.dumps(_plain(data), allow_nan=False))
        return yaml.safe_dump(plain, sort_keys=True, allow_unicode=True).rstrip("\n")
    raise ValueError(f"output {output!r}: expected one of json, yaml")


def _plain(data: Any) -> Any:
    """``data`` with every float that is not finite replaced by None, and bytes by their repr."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, bytes):
        return repr(data)
    if isinstance(data, dict):
        return {_plain(key): _plain(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain(value) for value in data]
    return data
