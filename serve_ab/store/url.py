"""Which store a URL names: ``sqlite:///path`` or ``redis://[[user]:password@]host[:port][/db]``.

Parsed here once, without importing a client library, so the config can refuse a bad URL
at ``serve-ab validate`` time and :func:`serve_ab.store.state.open_store` opens what it names.
A password in a URL is never shown: messages quote :func:`redact_url`.

SQLite follows SQLAlchemy's spelling: what follows ``sqlite:///`` is the path, so
``sqlite:///.serve-ab/state.sqlite`` is relative and ``sqlite:////var/lib/state.sqlite``
(four slashes) absolute.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

__all__ = ["STORE_URL_EXAMPLES", "StoreURL", "parse_store_url", "redact_url"]

STORE_URL_EXAMPLES = "sqlite:///.serve-ab/state.sqlite, redis://redis.internal:6379/0 or rediss://host:6380/0"
# What a redis:// URL with a mistake is told: a Redis URL, not every store (`serve-ab runs --store`
# takes only Redis).
_REDIS_FORM = "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or rediss:// (TLS), e.g. redis://redis.internal:6379/0"
REDIS_DEFAULT_PORT = 6379
# The user information is all of the authority (up to the first /, ? or #) before its last @, as
# urlsplit reads it: a password with a bare @ (redis://app:s3cr@t@redis) is one the store
# accepts and sends whole, so stopping at the first @ showed the rest of it; and an @ after
# a ? is the query's (https://h:8443?to=ops@example.com), not a password's end.
_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)([^/?#]*)@", re.IGNORECASE)


@dataclass(frozen=True)
class StoreURL:
    scheme: Literal["sqlite", "redis", "rediss"]
    path: str = ""  # sqlite: the file, relative or absolute
    host: str = ""
    port: int = REDIS_DEFAULT_PORT
    db: int = 0
    username: str | None = None
    password: str | None = None

    @property
    def is_redis(self) -> bool:
        return self.scheme in ("redis", "rediss")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (the user name is kept)."""
    def hide(match: re.Match[str]) -> str:
        user, sep, _ = match.group(2).partition(":")
        return f"{match.group(1)}{user}{':***' if sep else ''}@"

    return _USERINFO.sub(hide, url, count=1)


def parse_store_url(url: str) -> StoreURL:
    """The store ``url`` names; ``ValueError`` saying what is valid (the password redacted)."""
    shown = redact_url(url)
    valid = _REDIS_FORM if url.lower().startswith(("redis://", "rediss://")) else STORE_URL_EXAMPLES
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:  # a port that is not a number in 0-65535
        raise ValueError(f"store URL {shown!r} cannot be read ({err}); valid: {valid}") from None
    scheme = parts.scheme.lower()
    if parts.query or parts.fragment:
        raise ValueError(f"store URL {shown!r} has a query or fragment, which serve-ab does not read; "
                         f"valid: {valid}")
    if scheme == "sqlite":
        path = url[len("sqlite:///"):] if url[:len("sqlite:///")].lower() == "sqlite:///" else ""
        if parts.netloc or not path:
            raise ValueError(f"store URL {shown!r}: a SQLite URL is sqlite:/// followed by the file's path, "
                             "e.g. sqlite:///.serve-ab/state.sqlite (relative) or sqlite:////var/lib/serve-ab/"
                             "state.sqlite (absolute)")
        return StoreURL("sqlite", path=path)
    if scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise ValueError(f"store URL {shown!r} names no host; valid: redis://HOST[:PORT][/DB], "
                             "e.g. redis://redis.internal:6379/0")
        if port == 0:  # urlsplit reads it; nothing listens there, and `or` below would make it 6379
            raise ValueError(f"store URL {shown!r} has port 0; give the port Redis listens on (1-65535) or "
                             f"leave it out for {REDIS_DEFAULT_PORT}, e.g. redis://redis.internal:6379/0")
        db_text = parts.path.strip("/")
        if db_text and not db_text.isdigit():
            raise ValueError(f"store URL {shown!r}: the database after the host must be a number, "
                             "e.g. redis://redis.internal:6379/0")
        return StoreURL(scheme, host=parts.hostname, port=port or REDIS_DEFAULT_PORT,  # type: ignore[arg-type]
                        db=int(db_text or 0), username=unquote(parts.username) if parts.username else None,
                        password=unquote(parts.password) if parts.password is not None else None)
    raise ValueError(f"store URL {shown!r} has scheme {parts.scheme!r}; serve-ab stores are sqlite, redis "
                     f"and rediss (TLS), e.g. {STORE_URL_EXAMPLES}")
