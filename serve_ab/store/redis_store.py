"""Rollout state in Redis, so a controller rescheduled to another node resumes where it was.

The same contract as :class:`~serve_ab.store.state.SqliteStateStore`: one JSON value per key,
under a prefix (``serve-ab:`` by default) so one Redis can hold several apps.

What ``save`` guarantees: it returns once the Redis primary acknowledged the ``SET`` and
raises otherwise (the controller then applies nothing). An acknowledged write is in the
primary's memory and its append-only file; it is on disk within a second with the server
running ``appendonly yes`` and ``appendfsync everysec`` (or before the reply with
``appendfsync always``). Without AOF a Redis restart loses the state, and a failover to a
replica may lose the last writes it had not received. serve-ab does not send ``WAIT``:
the guarantee is the primary's, which is what one controller writing a few times a minute
needs; run Redis with AOF.

Calls fail fast: short socket and connect timeouts and one immediate retry (a pooled
connection Redis closed, e.g. after a restart), so an unreachable Redis makes a save raise
within a few seconds instead of holding the controller's loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from serve_ab.store.runs import RunRecorder
from serve_ab.store.url import StoreURL, parse_store_url, redact_url

__all__ = ["DEFAULT_KEY_PREFIX", "DEFAULT_TIMEOUT_S", "RedisRunRecorder", "RedisStateStore", "redis_client"]

DEFAULT_KEY_PREFIX = "serve-ab:"
DEFAULT_TIMEOUT_S = 2.0


def redis_client(url: str, *, password: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> redis.Redis:
    """A client for ``url`` (``redis://`` or ``rediss://``) that fails within about 2 x ``timeout_s``."""
    parsed: StoreURL = parse_store_url(url)
    if not parsed.is_redis:
        raise ValueError(f"{redact_url(url)!r} is not a redis:// or rediss:// URL")
    return redis.Redis(
        host=parsed.host, port=parsed.port, db=parsed.db, username=parsed.username,
        password=password if password is not None else parsed.password, ssl=parsed.scheme == "rediss",
        socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
        # redis-py's default retries three times with backoff (seconds); one at once is enough
        # to replace a connection the server closed, and keeps a dead server's cost bounded.
        retry=Retry(NoBackoff(), 1), decode_responses=False,
    )


class RedisStateStore:
    """:class:`~serve_ab.store.state.StateStore` on Redis. Errors are ``redis.RedisError``s,
    raised to the caller (the controller refuses the decision and changes nothing)."""

    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_KEY_PREFIX, *, name: str = "redis"):
        self.client = client
        self.prefix = prefix
        self._name = name  # the URL with its password redacted, for messages
        self._claim_script = client.register_script(_CLAIM)
        self._release_script = client.register_script(_RELEASE)

    @classmethod
    def from_url(cls, url: str, *, password: str | None = None, prefix: str = DEFAULT_KEY_PREFIX,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> RedisStateStore:
        return cls(redis_client(url, password=password, timeout_s=timeout_s), prefix, name=redact_url(url))

    def __repr__(self) -> str:
        return f"RedisStateStore({self._name!r}, prefix={self.prefix!r})"

    def _key(self, key: str) -> str:
        return self.prefix + "state:" + key

    def load(self, key: str) -> dict[str, Any] | None:
        text = self.client.get(self._key(key))
        return json.loads(text) if text is not None else None

    def save(self, key: str, state: dict[str, Any]) -> None:
        """Returns once Redis acknowledged the write (see the module's note on durability)."""
        text = json.dumps(state)  # first: a state that cannot be written sends nothing
        if not self.client.set(self._key(key), text):
            raise redis.RedisError(f"Redis did not acknowledge the write of {key!r} to {self._name}")

    def delete(self, key: str) -> None:
        self.client.delete(self._key(key))

    def exists(self, key: str) -> bool:
        return bool(self.client.exists(self._key(key)))

    def create(self, key: str, state: dict[str, Any]) -> dict[str, Any]:
        # SET NX and GET in one MULTI/EXEC: nothing runs between them, on any Redis version.
        text = json.dumps(state)
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self._key(key), text, nx=True)
        pipe.get(self._key(key))
        _, kept = pipe.execute()
        return json.loads(kept)

    def claim(self, key: str, holder: dict[str, Any], ttl_s: float, *,
              same_replica: bool = False) -> dict[str, Any]:
        text = json.dumps(holder)
        kept = self._claim_script(keys=[self._key(key)],
                                  args=[text, holder["owner"], repr(float(holder["heartbeat_s"])), repr(float(ttl_s)),
                                        "1" if same_replica else "0", holder["replica"]])
        return json.loads(kept)

    def release(self, key: str, owner: str, replica: str) -> None:
        self._release_script(keys=[self._key(key)], args=[owner, replica])

    def close(self) -> None:
        self.client.close()


# state.may_claim's rule, run in Redis so that nothing comes between the read and the write.
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held then
  local ok, row = pcall(cjson.decode, held)
  if ok and type(row) == 'table' then
    local mine = row['owner'] == ARGV[2] and (ARGV[5] == '0' or row['replica'] == ARGV[6])
    local beat = row['heartbeat_s']
    if not mine and type(beat) == 'number' and beat >= tonumber(ARGV[3]) - tonumber(ARGV[4]) then
      return held
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""
_RELEASE = """
local held = redis.call('GET', KEYS[1])
if not held then return 0 end
local ok, row = pcall(cjson.decode, held)
if ok and type(row) == 'table' and row['owner'] == ARGV[1] and row['replica'] == ARGV[2] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


# One hash per record; started_at_s keeps the earliest start, saves counts the saves, and a
# sorted set orders the records by their last update, in one atomic step.
_UPSERT_RECORD = """
local started = ARGV[3]
local old = redis.call('HGET', KEYS[1], 'started_at_s')
if old and tonumber(old) < tonumber(started) then started = old end
redis.call('HSET', KEYS[1], 'model', ARGV[2], 'started_at_s', started, 'updated_at_s', ARGV[4],
           'config_json', ARGV[5], 'report_json', ARGV[6], 'summary_json', ARGV[7])
local saves = redis.call('HINCRBY', KEYS[1], 'saves', 1)
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
local mlflow = redis.call('HGET', KEYS[1], 'mlflow_run_id')
return {saves, mlflow or ''}
"""
_FIELDS = (b"model", b"started_at_s", b"updated_at_s", b"saves", b"config_json", b"report_json", b"summary_json",
           b"mlflow_run_id")


class RedisRunRecorder(RunRecorder):
    """Run records in Redis, beside the rollout state: ``{prefix}record:{run_id}`` hashes and
    the ``{prefix}records`` index by last update. MLflow mirroring as in :class:`RunRecorder`."""

    def __init__(self, url: str, mlflow: bool = False, *, password: str | None = None,
                 prefix: str = DEFAULT_KEY_PREFIX, timeout_s: float = DEFAULT_TIMEOUT_S):
        super().__init__(redact_url(url), mlflow=mlflow)
        self.path = redact_url(url)  # what messages name; never the password
        self.client = redis_client(url, password=password, timeout_s=timeout_s)
        self.prefix = prefix
        self._upsert_script = self.client.register_script(_UPSERT_RECORD)

    def _record_key(self, run_id: str) -> str:
        return f"{self.prefix}record:{run_id}"

    def _index_key(self) -> str:
        return f"{self.prefix}records"

    def _upsert(self, run_id: str, model: str | None, started_at_s: float, updated_at_s: float,
                config_json: str, report_json: str, summary_json: str | None) -> tuple[int, str | None]:
        saves, mlflow_run_id = self._upsert_script(
            keys=[self._record_key(run_id), self._index_key()],
            args=[run_id, json.dumps(model), repr(started_at_s), repr(updated_at_s), config_json, report_json,
                  summary_json or ""])
        return int(saves), mlflow_run_id.decode() or None

    def _set_mlflow_run_id(self, run_id: str, mlflow_run_id: str) -> None:
        self.client.hset(self._record_key(run_id), "mlflow_run_id", mlflow_run_id)

    def _summary_rows(self) -> list[tuple]:
        run_ids = [r.decode() for r in self.client.zrevrange(self._index_key(), 0, -1)]
        pipe = self.client.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hmget(self._record_key(run_id), *_FIELDS)
        rows = []
        for run_id, values in zip(run_ids, pipe.execute()):
            if values[0] is None:  # deleted by hand since the index was read
                continue
            f = dict(zip(_FIELDS, values))
            rows.append((run_id, _cell(json.loads, f[b"model"]), _cell(float, f[b"started_at_s"]),
                         _cell(float, f[b"updated_at_s"]), _cell(int, f[b"saves"]), f[b"summary_json"] or None,
                         _cell(bytes.decode, f[b"mlflow_run_id"]) or None))
        return rows

    def _record_row(self, run_id: str) -> tuple[tuple | None, list[str]]:
        values = self.client.hmget(self._record_key(run_id), *_FIELDS)
        if values[0] is None:
            return None, [r.decode() for r in self.client.zrevrange(self._index_key(), 0, 9)]
        f = dict(zip(_FIELDS, values))
        return (run_id, f[b"config_json"], f[b"report_json"], _cell(float, f[b"started_at_s"]),
                _cell(float, f[b"updated_at_s"]), _cell(int, f[b"saves"]),
                _cell(bytes.decode, f[b"mlflow_run_id"]) or None), []


def _cell(convert: Callable[[bytes], Any], raw: bytes | None) -> Any:
    """A stored field as its type, or, when it does not convert (written by hand, by another
    tool), as its text: one odd field is shown as such (``serve-ab runs`` marks it ``?``)
    and does not stop the list. A missing field is None."""
    if raw is None:
        return None
    try:
        return convert(raw)
    except (ValueError, TypeError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return raw.decode(errors="replace")
