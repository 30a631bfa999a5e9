"""Feedback tokens: an answer's proof that feedback about it comes from whoever received it.

Every answer of an experiment that takes feedback (names a metric clients report) carries
``feedback_token`` = ``<version>.<expires_at_s>.<flag>.<nonce>.<mac>``, the MAC an HMAC-SHA256 (first 16 bytes, base64url) over the app's model name, the request id,
the version, the expiry, the flag and a nonce, with a key the app holds. The flag says
whether the split assigned the request or it was pinned (``p``); an assigned one's flag is
``a<bucket>e<epoch>``: the user's assignment bucket (empty when keyless) and the routing
epoch it was assigned under, so its feedback joins the right unit and split of the A/B
figures (``a`` alone, from older routers, counts as keyless under the weights now). The nonce names the answer: request ids can
repeat (a client's own ``x-request-id``; several handle calls inside one parent request), and
one report per answer and metric is what counts. Feedback on a pinned answer is accepted and not counted: pinned traffic stays out of
the gates and the A/B figures. ``POST /feedback`` must bring it back with the request id: a made-up
request id, another version, a changed expiry or an expired token is refused. Replays (the
same request and metric reported twice) are the controller's to refuse: it remembers what
it counted.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import math
import random
import re
import secrets
from collections.abc import Callable
from typing import NamedTuple

from serve_ab.errors import Forbidden
from serve_ab.routing import NUM_BUCKETS

MAC_BYTES = 16
# Nonces are drawn this many at a time: a request then takes one from a list. Drawing and
# formatting one per answer cost a request about 30 us in a replica, whose caches the other
# processes have emptied since its last request (benchmarks/README.md, tenth round).
NONCES_AT_ONCE = 1024
_URL_SAFE = bytes.maketrans(b"+/", b"-_")  # base64 -> base64url, as base64.urlsafe_b64encode
_ASSIGNED = re.compile(r"a(?:(\d{0,5})e(-?\d{1,12}))?")
# The last routing epoch a token can name (its 12 digits above). The controller numbers its
# epochs within it; an epoch past it is signed as -1 (not said: the weights now), since a
# token naming it would be refused as malformed, and with it every feedback on the answer.
MAX_TOKEN_EPOCH = 10**12 - 1


class Proven(NamedTuple):
    version: str  # the version the split assigned (the one that served it, unless a fallback did)
    assigned: bool  # the split chose it (False: pinned, so its feedback is not counted)
    answer_id: str  # unique per answer: the key of "one report per answer and metric"
    bucket: int | None = None  # the user's assignment bucket; None when keyless (or not said)
    epoch: int = -1  # the routing epoch the request was assigned under; -1 when not said
    answered_after_s: float | None = None  # the answer came after this (within a second): its expiry less the tokens' life


class FeedbackSigner:
    """Issues and checks the tokens of one app: ``scope`` (the model's name) is signed too,
    so apps of other models that share a key (``feedback.key_env``) do not accept each other's
    tokens. Two apps of one model do, if they share the key (one ``feedback.key_env``, or one
    store, where they cannot run at once: :mod:`serve_ab.store.claim`)."""

    def __init__(self, key: bytes, ttl_s: float, clock: Callable[[], float], scope: str):
        if len(key) < 16:
            raise ValueError(f"a feedback key needs at least 16 bytes; got {len(key)} (set a longer "
                             "one in the environment variable that feedback.key_env names)")
        self.key = key
        self.scope = scope
        self.ttl_s = ttl_s
        self.clock = clock
        # HMAC's two keyed SHA-256 states, made once and copied per token (see _hmac_sha256).
        self._inner, self._outer = _keyed_sha256_states(key)
        # Nonces from a generator seeded by the OS once: as unlikely to repeat as a random
        # token's, without a system call per answer (secrets.token_urlsafe reads os.urandom
        # every time). They need not be secret (the MAC covers them), only distinct; a counter
        # would be distinct too, but would tell clients how many answers a replica gave.
        self._nonces = random.Random(secrets.randbits(128))
        # Taken from without a lock: a router issues tokens on its replica's one event loop.
        self._unused_nonces: list[str] = []

    def issue(self, request_id: str, version: str, assigned: bool = True, unit: int | None = None,
              epoch: int = -1) -> str:
        expires_at_s = math.ceil(self.clock() + self.ttl_s)
        flag = "p"
        if assigned:
            flag = f"a{'' if unit is None else unit % NUM_BUCKETS}e{epoch if epoch <= MAX_TOKEN_EPOCH else -1}"
        nonce = self._unused_nonces.pop() if self._unused_nonces else self._draw_nonces()
        mac = self._mac(request_id, version, expires_at_s, flag, nonce)
        return f"{version}.{expires_at_s}.{flag}.{nonce}.{mac}"

    def _draw_nonces(self) -> str:
        """One nonce, and the next ones for later answers."""
        draw = self._nonces.getrandbits
        self._unused_nonces = [f"{draw(48):012x}" for _ in range(NONCES_AT_ONCE)]
        return self._unused_nonces.pop()

    def verify(self, token: str, request_id: str) -> Proven:
        """What the token proves about the answer to ``request_id``, or :class:`Forbidden`
        saying why it proves nothing."""
        # A version name may hold dots (VERSION_NAME_PATTERN); the other fields never do.
        version, _, rest = token.rpartition(".")
        version, _, nonce = version.rpartition(".")
        version, _, flag = version.rpartition(".")
        version, _, expires = version.rpartition(".")
        # isascii: "²".isdigit() is true, and int("²") raises.
        assigned = _ASSIGNED.fullmatch(flag) if flag.isascii() else None
        if not version or not (expires.isascii() and expires.isdigit()) or (flag != "p" and assigned is None):
            raise Forbidden("feedback_token is malformed; send back the feedback_token of the answer "
                            "this feedback is about, unchanged")
        expires_at_s = int(expires)
        expected = self._mac(request_id, version, expires_at_s, flag, nonce)
        if not hmac.compare_digest(rest.encode("utf-8", "surrogatepass"), expected.encode()):
            raise Forbidden(f"feedback_token does not match request_id {request_id!r}; send the "
                            "request_id and feedback_token of the same answer")
        if expires_at_s < self.clock():
            raise Forbidden(f"feedback_token expired {self.clock() - expires_at_s:.0f}s ago "
                            f"(tokens are valid for {self.ttl_s:g}s after the answer)")
        # The expiry was rounded up to a whole second: the answer came within the second before this.
        answered_after_s = expires_at_s - self.ttl_s - 1
        if assigned is None:
            return Proven(version, False, f"{request_id}#{nonce}", answered_after_s=answered_after_s)
        bucket, epoch = assigned.groups()
        return Proven(version, True, f"{request_id}#{nonce}", int(bucket) if bucket else None,
                      int(epoch) if epoch is not None else -1, answered_after_s)

    def _mac(self, request_id: str, version: str, expires_at_s: int, flag: str, nonce: str) -> str:
        message = f"{self.scope}\x00{request_id}\x00{version}\x00{expires_at_s}\x00{flag}\x00{nonce}"
        mac = self._hmac_sha256(message.encode("utf-8", "surrogatepass"))
        # base64url without padding, as base64.urlsafe_b64encode(...).rstrip(b"="), in C calls only.
        return binascii.b2a_base64(mac[:MAC_BYTES], newline=False).translate(_URL_SAFE).rstrip(b"=").decode("ascii")

    def _hmac_sha256(self, message: bytes) -> bytes:
        """hmac.digest(key, message, "sha256"), from the keyed states: H(outer, H(inner, message)).

        The same MAC as every earlier router's, at half the cost where it matters. A replica
        serving one request at a time finds its caches emptied by the other processes since
        the last one; there, copying OpenSSL's HMAC state took 30 us a token and these two
        plain SHA-256 copies take 16 us (hmac.digest itself, which sets up the key every
        time, 65 us; benchmarks/README.md, eleventh round).
        """
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def _keyed_sha256_states(key: bytes) -> tuple["hashlib._Hash", "hashlib._Hash"]:
    """SHA-256 after absorbing the key XOR ipad, and after the key XOR opad (RFC 2104 2.)."""
    block_bytes = hashlib.sha256().block_size
    if len(key) > block_bytes:  # a key longer than a block is hashed first
        key = hashlib.sha256(key).digest()
    key = key.ljust(block_bytes, b"\0")
    return (hashlib.sha256(bytes(b ^ 0x36 for b in key)),
            hashlib.sha256(bytes(b ^ 0x5C for b in key)))
