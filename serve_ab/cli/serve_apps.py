"""``--app NAME``: find a Serve application's base URL from Ray's dashboard.

Ray Serve describes every application at ``GET <dashboard>/api/serve/applications/`` (the
``ServeInstanceDetails`` schema, what ``serve status`` reads): each application's
``route_prefix``, and the proxies' ``http_options`` (host, port, root_path). The app's URL is
``http://<host>:<port><root_path><route_prefix>``.

The host is the dashboard's own host, not the proxies' node IPs that Ray reports: a proxy
runs on the head node (the dashboard's node) whatever ``proxy_location`` says, and a
dashboard reached through a tunnel or port-forward (``localhost:8265``) has its proxy
forwarded the same way, where the node IP would not answer. Only a proxy bound to one
explicit, non-loopback address (``http_options.host: 10.0.0.5``) is reached there.

A dashboard with token authentication (Ray 2.59+ turns it on for a new local cluster) answers
401 to a request without ``Authorization: Bearer <token>``. The token is found where Ray's own
clients find it, in this order: ``$RAY_AUTH_TOKEN``, the file ``$RAY_AUTH_TOKEN_PATH`` names
(set but unreadable or empty is an error, as in Ray), ``~/.ray/auth_token``. It is sent
whenever one is found, unless ``RAY_AUTH_MODE=disabled``: a dashboard without authentication
ignores it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from serve_ab.cli.options import (
    ExitCode,
    RequestFailed,
    check_header_token,
    check_http_url,
    redact,
)

__all__ = ["ADDRESS_ENVS", "AUTH_MODE_ENV", "DEFAULT_ADDRESS", "SERVE_APPS_PATH", "TOKEN_ENV", "TOKEN_PATH_ENV",
           "app_url", "auth_token", "default_address", "default_token_path", "resolve_app_url"]

SERVE_APPS_PATH = "/api/serve/applications/"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Ray's own: `serve status` reads RAY_DASHBOARD_ADDRESS, `ray job` reads RAY_ADDRESS (when an http URL).
ADDRESS_ENVS = ("RAY_DASHBOARD_ADDRESS", "RAY_ADDRESS")
# Ray's own (ray._private.authentication), in the order Ray reads them.
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}
_LOOPBACK_HOSTS = {"localhost", "::1", "[::1]"}


def default_address() -> str:
    """The dashboard URL from the environment, else Ray's default on this machine.

    Raises ValueError, naming the variable, for an http(s) value that is not a valid URL.
    """
    for name in ADDRESS_ENVS:
        value = os.environ.get(name, "").strip()
        if name == ADDRESS_ENVS[0] and value and "://" not in value:
            value = f"http://{value}"  # RAY_DASHBOARD_ADDRESS=10.0.0.5:8265, as Ray's job CLI takes it
        if value.startswith(("http://", "https://")):  # RAY_ADDRESS may be a GCS address (host:6379)
            try:
                return check_http_url(value)
            except ValueError as e:
                raise ValueError(f"${name}: {e}; give Ray's dashboard, e.g. {DEFAULT_ADDRESS}") from None
    return DEFAULT_ADDRESS


def default_token_path() -> Path:
    """Where ``ray start`` and ``ray get-auth-token --generate`` keep the token: ~/.ray/auth_token."""
    return Path.home() / ".ray" / "auth_token"


def auth_token() -> tuple[str, str] | None:
    """``(token, where it came from)`` for Ray's dashboard, or None when there is none (or
    ``RAY_AUTH_MODE=disabled``).

    Raises ValueError when ``$RAY_AUTH_TOKEN_PATH`` is set but cannot be read or is empty:
    Ray itself refuses to fall back to another token then; and when the token found cannot go in
    an HTTP header (not printable ASCII), naming where it came from.
    """
    if os.environ.get(AUTH_MODE_ENV, "").strip().lower() == "disabled":
        return None
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return check_header_token(token, f"${TOKEN_ENV}"), f"${TOKEN_ENV}"
    path_text = os.environ.get(TOKEN_PATH_ENV)
    if path_text:
        try:
            token = Path(path_text).expanduser().read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            reason = getattr(e, "strerror", None) or type(e).__name__
            raise ValueError(f"${TOKEN_PATH_ENV} names {path_text!r}, which cannot be read ({reason}); point it at "
                             f"the file holding the cluster's token, or unset it to use ~/.ray/auth_token") from None
        if not token:
            raise ValueError(f"${TOKEN_PATH_ENV} names {path_text!r}, which is empty; point it at the file holding "
                             "the cluster's token (`ray get-auth-token` prints it)")
        return check_header_token(token, f"the token in {path_text} (${TOKEN_PATH_ENV})"), path_text
    path = default_token_path()
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):  # no token file: a dashboard without authentication
        return None
    return (check_header_token(token, f"the token in {path}"), str(path)) if token else None


def app_url(details: dict[str, Any], name: str, address: str) -> str:
    """The base URL of application ``name`` in a ``GET /api/serve/applications/`` answer.

    Raises LookupError, saying what is deployed, when there is no such application or it has
    no HTTP route.
    """
    apps = details.get("applications") or {}
    http = details.get("http_options") or {}
    if not isinstance(apps, dict) or not isinstance(http, dict) or not isinstance(apps.get(name, {}), dict):
        # A dashboard of another Ray version, or something else answering at its address.
        raise LookupError(f"{address} answered {SERVE_APPS_PATH} with applications or http_options of an "
                          "unexpected shape; is it the dashboard of a Ray cluster (2.x) running Serve?")
    if name not in apps:
        deployed = ", ".join(sorted(apps)) or "none"
        raise LookupError(f"no Serve application named {name!r} at {address} (deployed: {deployed}); "
                          f"`serve status --address {address}` lists them")
    route_prefix = apps[name].get("route_prefix")
    if not route_prefix:
        raise LookupError(f"Serve application {name!r} has no HTTP route (route_prefix is null); "
                          "give it a route_prefix in its config, or use --url")
    bound = str(http.get("host") or "")
    host = urlsplit(address).hostname or "127.0.0.1"
    if bound not in _WILDCARD_HOSTS and bound not in _LOOPBACK_HOSTS and not bound.startswith("127."):
        host = bound
    if ":" in host:  # IPv6
        host = f"[{host}]"
    scheme = "https" if http.get("ssl_certfile") else "http"
    root_path = str(http.get("root_path") or "").rstrip("/")
    return f"{scheme}://{host}:{http.get('port') or 8000}{root_path}{route_prefix}".rstrip("/")


def resolve_app_url(name: str, address: str, timeout_s: float) -> str:
    """Ask the dashboard at ``address`` for application ``name``'s base URL.

    Raises RequestFailed: exit code 4 when the dashboard cannot be reached or has no such app.
    """
    import httpx

    where = f"Ray's dashboard at {address}"
    hint = ("hint: --app needs the dashboard of the cluster the app runs on: set --address or "
            f"${ADDRESS_ENVS[0]} (default {DEFAULT_ADDRESS}), or give the app's --url")
    try:
        found = auth_token()
    except ValueError as e:
        raise RequestFailed(f"error: {e}", code=ExitCode.USAGE) from None
    headers = {"Authorization": f"Bearer {found[0]}"} if found else {}
    try:
        response = httpx.get(address + SERVE_APPS_PATH, headers=headers, timeout=timeout_s,
                             verify=address.startswith("https://"))
    except httpx.InvalidURL as e:
        raise RequestFailed(f"error: --address {address!r} is not a valid URL ({e}); give Ray's dashboard, e.g. "
                            f"{DEFAULT_ADDRESS}", code=ExitCode.USAGE) from None
    except httpx.TimeoutException as e:
        raise RequestFailed(f"error: cannot reach {where}: no answer within {timeout_s:g} s ({type(e).__name__})",
                            hint, code=ExitCode.UNREACHABLE) from None
    except httpx.TransportError as e:
        raise RequestFailed(f"error: cannot reach {where}: {e or type(e).__name__}", hint,
                            code=ExitCode.UNREACHABLE) from None
    except httpx.DecodingError as e:  # an answer whose Content-Encoding does not decode (a broken proxy's gzip)
        raise RequestFailed(f"error: {where} answered GET {SERVE_APPS_PATH} with a body that cannot be decoded "
                            f"({e or type(e).__name__}); is it a Ray dashboard?", hint,
                            code=ExitCode.UNREACHABLE) from None
    if response.status_code != 200:
        text = response.text.strip()[:200]
        if found:  # a proxy's error page must not put the token in a terminal log
            text = redact(text, found[0])
        if response.status_code in (401, 403):
            hint = _auth_hint(found)
        raise RequestFailed(f"error: {where} answered {response.status_code} to GET {SERVE_APPS_PATH}: {text}",
                            hint, code=ExitCode.UNREACHABLE)
    try:
        details = response.json()
    except (ValueError, RecursionError):  # not JSON, or nested past Python's recursion limit
        details = None
    if not isinstance(details, dict):
        raise RequestFailed(f"error: {where} did not answer GET {SERVE_APPS_PATH} with a JSON object; "
                            "is it a Ray dashboard?", hint, code=ExitCode.UNREACHABLE)
    try:
        return app_url(details, name, address)
    except LookupError as e:
        raise RequestFailed(f"error: {e.args[0]}", code=ExitCode.UNREACHABLE) from None


def _auth_hint(found: tuple[str, str] | None) -> str:
    """What to do when the dashboard refuses: it wants the cluster's token (401), or another one (403)."""
    where = f"${TOKEN_ENV}, the file ${TOKEN_PATH_ENV} names, or {default_token_path()}"
    if found is None:
        disabled = os.environ.get(AUTH_MODE_ENV, "").strip().lower() == "disabled"
        why = (f"{AUTH_MODE_ENV}=disabled is set here, so no token was sent" if disabled
               else f"none was found in {where}")
        return (f"hint: the dashboard has token authentication on and {why}; on the cluster's head node "
                f"`ray get-auth-token` prints the token: export {TOKEN_ENV}=<token> (or give the app's --url)")
    return (f"hint: the dashboard refused the token from {found[1]}: it is not this cluster's; set {TOKEN_ENV} "
            "to the token `ray get-auth-token` prints on the cluster's head node (or give the app's --url)")
