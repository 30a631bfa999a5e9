"""Feedback tokens: an answer's proof that feedback about it comes from whoever received it.

Every answer carries ``feedback_token`` = ``<version>.<expires_at_s>.<a|p>.<mac>``, the MAC
an HMAC-SHA256 (first 16 bytes, base64url) over the request id, the version, the expiry and
whether the split assigned the request (``a``) or it was pinned (``p``), with a key the app
holds. Feedback on a pinned answer is accepted and not counted: pinned traffic stays out of
the gates and the A/B figures. ``POST /feedback`` must bring it back with the request id: a made-up
request id, another version, a changed expiry or an expired token is refused. Replays (the
same request and metric reported twice) are the controller's to refuse: it remembers what
it counted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from collections.abc import Callable

from serve_ab.errors import Forbidden

MAC_BYTES = 16


def _mac(key: bytes, request_id: str, version: str, expires_at_s: int, flag: str) -> str:
    message = f"{request_id}\x00{version}\x00{expires_at_s}\x00{flag}".encode("utf-8", "surrogatepass")
    digest = hmac.new(key, message, hashlib.sha256).digest()[:MAC_BYTES]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class FeedbackSigner:
    def __init__(self, key: bytes, ttl_s: float, clock: Callable[[], float]):
        if len(key) < 16:
            raise ValueError(f"a feedback key needs at least 16 bytes; got {len(key)}")
        self.key = key
        self.ttl_s = ttl_s
        self.clock = clock

    def issue(self, request_id: str, version: str, assigned: bool = True) -> str:
        expires_at_s = math.ceil(self.clock() + self.ttl_s)
        flag = "a" if assigned else "p"
        return f"{version}.{expires_at_s}.{flag}.{_mac(self.key, request_id, version, expires_at_s, flag)}"

    def verify(self, token: str, request_id: str) -> tuple[str, bool]:
        """The version that served ``request_id`` and whether the split assigned it, or
        :class:`Forbidden` saying why not."""
        # A version name may hold dots (VERSION_NAME_PATTERN); expiry, flag and MAC never do.
        version, _, rest = token.rpartition(".")
        version, _, flag = version.rpartition(".")
        version, _, expires = version.rpartition(".")
        if not version or not expires.isdigit() or flag not in ("a", "p"):
            raise Forbidden("feedback_token is malformed; send back the feedback_token of the answer "
                            "this feedback is about, unchanged")
        expires_at_s = int(expires)
        if not hmac.compare_digest(rest.encode(), _mac(self.key, request_id, version, expires_at_s, flag).encode()):
            raise Forbidden(f"feedback_token does not match request_id {request_id!r}; send the "
                            "request_id and feedback_token of the same answer")
        if expires_at_s < self.clock():
            raise Forbidden(f"feedback_token expired {self.clock() - expires_at_s:.0f}s ago "
                            f"(tokens are valid for {self.ttl_s:g}s after the answer)")
        return version, flag == "a"
