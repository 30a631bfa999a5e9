"""Where rollout state survives a controller restart: an embedded SQLite file by default.

One row per rollout key; each save replaces the row in one transaction, so a crash leaves
either the old state or the new one, never half of each. SQLite is the embedded default
for one node; a multi-node cluster, where the controller may restart on another node, uses
Redis (``controller.store_url: redis://...``, :mod:`serve_ab.store.redis_store`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import ssl
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from serve_ab.store.url import parse_store_url, redact_url


class StateStore(Protocol):
    """``save`` returns only once the state is durable and raises when it is not; the
    controller applies a decision only after its save returned."""

    def load(self, key: str) -> dict[str, Any] | None: ...

    def save(self, key: str, state: dict[str, Any]) -> None: ...

    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool:
        """Whether a row is stored under ``key``, without reading it (a figures' row is MBs)."""
        ...

    def create(self, key: str, state: dict[str, Any]) -> dict[str, Any]:
        """Save ``state`` under ``key`` unless a row is there already; returns the row kept.
        Atomic: of two replicas creating the same key at once, both get the same row."""
        ...

    def claim(self, key: str, holder: dict[str, Any], ttl_s: float, *,
              same_replica: bool = False) -> dict[str, Any]:
        """Save ``holder`` under ``key`` unless another owner (with ``same_replica``, another
        owner or replica) holds the key and wrote it within ``ttl_s`` of
        ``holder["heartbeat_s"]``; returns the row kept (``holder`` when taken). Atomic, as
        ``create`` is (:mod:`serve_ab.store.claim`)."""
        ...

    def release(self, key: str, owner: str, replica: str) -> None:
        """Delete ``key`` if this owner's replica holds it; anyone else's claim stays."""
        ...


def open_store(controller_cfg: Any, environ: Mapping[str, str] | None = None) -> StateStore:
    """The store a :class:`~serve_ab.config.experiment.ControllerConfig` names: Redis for a
    ``redis://``/``rediss://`` ``store_url`` (the password from ``store_password_env`` when
    set), else SQLite at ``state_path`` (a sqlite ``store_url`` became ``state_path``)."""
    url = getattr(controller_cfg, "store_url", None)
    if url is None:
        return SqliteStateStore(Path(controller_cfg.state_path))
    parsed = parse_store_url(url)
    if parsed.scheme == "sqlite":  # a config built without validation; validated ones hold None
        return SqliteStateStore(Path(parsed.path))
    from serve_ab.store.redis_store import (
        RedisStateStore,  # the redis client: only when used
    )

    return RedisStateStore.from_url(url, password=store_password(controller_cfg, environ),
                                    prefix=controller_cfg.store_key_prefix)


def password_refused(err: BaseException) -> bool:
    """Whether ``err`` is Redis refusing the password (none given, or a wrong one): a config
    error, which stays until the password in ``controller.store_url`` or in the variable
    ``controller.store_password_env`` names is right."""
    redis = sys.modules.get("redis")  # loaded if a Redis store was used: else err is not one of its errors
    return redis is not None and isinstance(err, (redis.AuthenticationError, redis.exceptions.AuthorizationError))


def store_unreachable(err: BaseException) -> bool:
    """Whether ``err`` says the store could not be reached (Redis down, restarting, loading
    its data, or the network between): worth waiting for. A refused password or a TLS
    handshake that failed (``rediss://`` to a server without TLS, a certificate that does not
    verify) is not: it stays so until the config changes."""
    redis = sys.modules.get("redis")  # loaded if a Redis store was used: else err is not one of its errors
    if redis is None or password_refused(err):
        return False
    if not isinstance(err, (redis.ConnectionError, redis.TimeoutError)):
        return False
    cause = err.__cause__ or err.__context__  # redis-py wraps the socket's own error
    return not isinstance(cause, ssl.SSLError)


def describe_store(controller_cfg: Any) -> str:
    """The store a controller config names, as errors quote it (no password)."""
    url = getattr(controller_cfg, "store_url", None)
    if url is not None:
        return f"controller.store_url {redact_url(url)!r} (store_key_prefix {controller_cfg.store_key_prefix!r})"
    return f"controller.state_path {str(controller_cfg.state_path)!r}"


def may_claim(held: dict[str, Any] | None, holder: dict[str, Any], ttl_s: float,
              same_replica: bool = False) -> bool:
    """Whether ``holder`` may take a key whose row is ``held``: nobody holds it, it is
    already the owner's (with ``same_replica``, this replica's), or the holder has not
    written for ``ttl_s`` (its controller is gone). A row of another shape is nobody's.

    Here rather than in claim.py because each store applies it inside its own atomic step;
    Redis runs the same rule as a Lua script (redis_store.py)."""
    if not isinstance(held, dict):
        return True
    if held.get("owner") == holder["owner"] and (not same_replica or held.get("replica") == holder["replica"]):
        return True
    beat = held.get("heartbeat_s")
    if isinstance(beat, bool) or not isinstance(beat, (int, float)):
        return True
    return beat < holder["heartbeat_s"] - ttl_s


def store_password(controller_cfg: Any, environ: Mapping[str, str] | None = None) -> str | None:
    """The Redis password from the variable ``store_password_env`` names; an error when it is unset."""
    name = getattr(controller_cfg, "store_password_env", None)
    if name is None:
        return None
    environ = os.environ if environ is None else environ
    if name not in environ:
        raise ValueError(f"controller.store_password_env names {name!r}, which is not set in this "
                         "process's environment: set it where Ray starts, in the environment of `ray start` "
                         "on every node (or of `serve run` when it starts the cluster), not in a runtime_env, "
                         "whose values Ray writes to its log")
    return environ[name]


class SqliteStateStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The file holds the feedback tokens' signing key: readable by its owner only, as an
        # SSH key is (SQLite gives its journal files the database's mode). Made so before
        # SQLite creates it with the umask's mode; an existing one is tightened too.
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        if self.path.stat().st_mode & 0o077 and self.path.stat().st_uid == os.getuid():
            os.chmod(self.path, 0o600)
        # One connection per call: the controller saves a few times a minute at most.
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS rollout_state ("
                " key TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at_s REAL NOT NULL)"
            )

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # sqlite3's own context manager commits but never closes; a long-lived controller
        # would otherwise hold one open file per save until the garbage collector runs.
        db = sqlite3.connect(self.path, timeout=10)
        try:
            with db:  # one transaction: committed on success, rolled back on any error
                yield db
        finally:
            db.close()

    def load(self, key: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT state FROM rollout_state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def save(self, key: str, state: dict[str, Any]) -> None:
        """Durable when it returns (SQLite's default synchronous mode); raises otherwise,
        and then the previous state is still the saved one."""
        text = json.dumps(state)  # before the transaction: a state that cannot be written writes nothing
        with self._connect() as db:
            db.execute(
                "INSERT INTO rollout_state (key, state, updated_at_s) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET state = excluded.state, updated_at_s = excluded.updated_at_s",
                (key, text, time.time()),
            )

    def delete(self, key: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM rollout_state WHERE key = ?", (key,))

    def exists(self, key: str) -> bool:
        with self._connect() as db:
            return db.execute("SELECT 1 FROM rollout_state WHERE key = ?", (key,)).fetchone() is not None

    def create(self, key: str, state: dict[str, Any]) -> dict[str, Any]:
        text = json.dumps(state)
        with self._connect() as db:
            db.execute("INSERT OR IGNORE INTO rollout_state (key, state, updated_at_s) VALUES (?, ?, ?)",
                       (key, text, time.time()))
            row = db.execute("SELECT state FROM rollout_state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0])

    def claim(self, key: str, holder: dict[str, Any], ttl_s: float, *,
              same_replica: bool = False) -> dict[str, Any]:
        text = json.dumps(holder)
        with self._connect() as db:
            # IMMEDIATE: the write lock before the read, so two claims cannot both read
            # "free" and both write.
            db.execute("BEGIN IMMEDIATE")
            held = _held_row(db, key)
            if not may_claim(held, holder, ttl_s, same_replica):
                return held
            db.execute(
                "INSERT INTO rollout_state (key, state, updated_at_s) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET state = excluded.state, updated_at_s = excluded.updated_at_s",
                (key, text, time.time()),
            )
        return holder

    def release(self, key: str, owner: str, replica: str) -> None:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            held = _held_row(db, key)
            if _held_by(held, owner, replica):
                db.execute("DELETE FROM rollout_state WHERE key = ?", (key,))


def _held_row(db: sqlite3.Connection, key: str) -> Any:
    """The row under ``key`` as JSON, or None (no row, or text that is not JSON)."""
    row = db.execute("SELECT state FROM rollout_state WHERE key = ?", (key,)).fetchone()
    return _json_or_none(row[0]) if row else None


def _held_by(held: Any, owner: str, replica: str) -> bool:
    """Whether a claim row is this owner's replica's: the only claim ``release`` deletes."""
    return isinstance(held, dict) and held.get("owner") == owner and held.get("replica") == replica


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:  # written by hand or by another tool: nobody's claim
        return None


class MemoryStateStore:
    """For tests: the same contract, nothing on disk."""

    def __init__(self) -> None:
        self.rows: dict[str, str] = {}

    def load(self, key: str) -> dict[str, Any] | None:
        return json.loads(self.rows[key]) if key in self.rows else None

    def save(self, key: str, state: dict[str, Any]) -> None:
        self.rows[key] = json.dumps(state)

    def delete(self, key: str) -> None:
        self.rows.pop(key, None)

    def exists(self, key: str) -> bool:
        return key in self.rows

    def create(self, key: str, state: dict[str, Any]) -> dict[str, Any]:
        self.rows.setdefault(key, json.dumps(state))
        return json.loads(self.rows[key])

    def claim(self, key: str, holder: dict[str, Any], ttl_s: float, *,
              same_replica: bool = False) -> dict[str, Any]:
        held = _json_or_none(self.rows[key]) if key in self.rows else None
        if not may_claim(held, holder, ttl_s, same_replica):
            return held
        self.rows[key] = json.dumps(holder)
        return holder

    def release(self, key: str, owner: str, replica: str) -> None:
        if _held_by(_json_or_none(self.rows[key]) if key in self.rows else None, owner, replica):
            del self.rows[key]
