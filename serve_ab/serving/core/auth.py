"""Who may steer a rollout: the operator's bearer token."""

from __future__ import annotations

import hmac

from serve_ab.config.experiment import ControlConfig
from serve_ab.errors import Unauthorized
from serve_ab.serving.core.messages import Actor


class ControlAuth:
    """Checks ``Authorization: Bearer <token>`` against the token from the app's environment."""

    def __init__(self, control: ControlConfig, token: str | None):
        self.control = control
        self._token = token or None

    def check(self, authorization: str | None, address: str | None = None) -> Actor:
        """Who is asking, or :class:`Unauthorized`."""
        if self.control.allow_unauthenticated:
            return Actor("anonymous", "operator", address)
        if self._token is None:
            raise Unauthorized(f"control actions are disabled: no token is configured; set "
                               f"{self.control.token_env} in the app's environment and send "
                               "it as 'Authorization: Bearer <token>'")
        scheme, _, given = (authorization or "").partition(" ")
        # compare_digest: the time taken does not reveal how much of the token matched.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), self._token.encode()):
            raise Unauthorized("missing or wrong bearer token (Authorization: Bearer <token>)")
        return Actor("operator", "operator", address)
