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
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from serve_ab.cli.options import ExitCode, RequestFailed

__all__ = ["ADDRESS_ENVS", "DEFAULT_ADDRESS", "SERVE_APPS_PATH", "app_url", "default_address", "resolve_app_url"]

SERVE_APPS_PATH = "/api/serve/applications/"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Ray's own: `serve status` reads RAY_DASHBOARD_ADDRESS, `ray job` reads RAY_ADDRESS (when an http URL).
ADDRESS_ENVS = ("RAY_DASHBOARD_ADDRESS", "RAY_ADDRESS")
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}
_LOOPBACK_HOSTS = {"localhost", "::1", "[::1]"}


def default_address() -> str:
    """The dashboard URL from the environment, else Ray's default on this machine."""
    for name in ADDRESS_ENVS:
        value = os.environ.get(name, "")
        if value.startswith(("http://", "https://")):  # RAY_ADDRESS may be a GCS address (host:6379)
            return value.rstrip("/")
    return DEFAULT_ADDRESS


def app_url(details: dict[str, Any], name: str, address: str) -> str:
    """The base URL of application ``name`` in a ``GET /api/serve/applications/`` answer.

    Raises LookupError, saying what is deployed, when there is no such application or it has
    no HTTP route.
    """
    apps = details.get("applications") or {}
    if name not in apps:
        deployed = ", ".join(sorted(apps)) or "none"
        raise LookupError(f"no Serve application named {name!r} at {address} (deployed: {deployed}); "
                          f"`serve status --address {address}` lists them")
    route_prefix = apps[name].get("route_prefix")
    if not route_prefix:
        raise LookupError(f"Serve application {name!r} has no HTTP route (route_prefix is null); "
                          "give it a route_prefix in its config, or use --url")
    http = details.get("http_options") or {}
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
        response = httpx.get(address + SERVE_APPS_PATH, timeout=timeout_s,
                             verify=address.startswith("https://"))
    except httpx.TimeoutException as e:
        raise RequestFailed(f"error: cannot reach {where}: no answer within {timeout_s:g} s ({type(e).__name__})",
                            hint, code=ExitCode.UNREACHABLE) from None
    except httpx.TransportError as e:
        raise RequestFailed(f"error: cannot reach {where}: {e or type(e).__name__}", hint,
                            code=ExitCode.UNREACHABLE) from None
    if response.status_code != 200:
        raise RequestFailed(f"error: {where} answered {response.status_code} to GET {SERVE_APPS_PATH}: "
                            f"{response.text.strip()[:200]}", hint, code=ExitCode.UNREACHABLE)
    try:
        details = response.json()
    except ValueError:
        details = None
    if not isinstance(details, dict):
        raise RequestFailed(f"error: {where} did not answer GET {SERVE_APPS_PATH} with a JSON object; "
                            "is it a Ray dashboard?", hint, code=ExitCode.UNREACHABLE)
    try:
        return app_url(details, name, address)
    except LookupError as e:
        raise RequestFailed(f"error: {e.args[0]}", code=ExitCode.UNREACHABLE) from None
