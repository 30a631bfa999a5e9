"""Run records: each experiment's configuration and latest results, in an embedded SQLite file.

The controller saves the record every ``analysis.records.interval_s`` (an upsert keyed by
the run id), so the record left when the app stops holds its final results; ``serve-ab runs``
lists the records and ``serve-ab report --from-record RUN_ID`` renders one without the app.

The store knows nothing of the report's layout (it sits below ``analysis``): it keeps the
report as the JSON the caller hands it (``Report.model_dump(mode="json")``), with the few
figures ``serve-ab runs`` lists (``Report.run_summary()``) and the headline metrics for MLflow
(``Report.headline_metrics()``) computed by the caller too.

With ``mlflow=True`` each save is also logged to MLflow, when the ``mlflow`` package (or
``mlflow-skinny``) is importable: one MLflow run per record, the configuration as params, the
headline metrics, the tracking URI from ``MLFLOW_TRACKING_URI``. MLflow is
a mirror: when it is missing or failing, a warning is logged and the record is still
written; an experiment never fails because of it.

With a Redis store (``controller.store_url: redis://...``) the records live in that Redis
instead (:class:`~serve_ab.store.redis_store.RedisRunRecorder`, opened by :func:`open_recorder`),
so a controller rescheduled to another node goes on with the same record.

Example::

    recorder = RunRecorder(Path(".serve-ab/runs.sqlite"))
    recorder.save("digits-20260101-120000", cfg.model_dump(mode="json"), report.model_dump(mode="json"),
                  started_at_s, now_s, summary=report.run_summary(), metrics=report.headline_metrics())
    [r.run_id for r in recorder.list()]
    Report.model_validate(recorder.load("digits-20260101-120000").report).srm.mismatch
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import posixpath
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_ab.store.url import parse_store_url, redact_url

__all__ = ["DEFAULT_RECORDS_PATH", "CorruptRecord", "RunRecord", "RunRecorder", "RunSummary", "mlflow_params",
           "open_recorder", "recorder_at"]

DEFAULT_RECORDS_PATH = Path(".serve-ab/runs.sqlite")  # as RecordsConfig.path's default
# 2 added summary_json; a version 1 file is read as it is and upgraded on its next save.
SCHEMA_VERSION = 2
_READABLE_VERSIONS = (1, 2)
MLFLOW_EXPERIMENT_PREFIX = "serve-ab/"
# MLflow's own HTTP defaults (7 retries, backoff factor 2, 120 s timeout) hold one save for about
# four minutes when the tracking server is down, and with it the controller's report loop. These
# are set when MLflow is first imported, unless the environment names them already.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# After a failed call MLflow is left alone this long (the SQLite record is still written every save).
MLFLOW_RETRY_AFTER_S = 300.0
# MLflow refuses longer param values (500 characters up to MLflow 2.x) and >100 params a batch.
_MLFLOW_PARAM_CHARS = 500
_MLFLOW_BATCH = 100
_MLFLOW_KEY_CHARS = 250
_SQLITE_TIMEOUT_S = 10.0

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id        TEXT PRIMARY KEY,
    model         TEXT,
    started_at_s  REAL NOT NULL,
    updated_at_s  REAL NOT NULL,
    saves         INTEGER NOT NULL DEFAULT 1,
    config_json   TEXT NOT NULL,
    report_json   TEXT NOT NULL,
    mlflow_run_id TEXT,
    summary_json  TEXT
)
"""


@dataclass(frozen=True)
class RunSummary:
    """One line of ``serve-ab runs``."""

    run_id: str
    model: str | None
    started_at_s: float
    updated_at_s: float
    saves: int
    versions: list[str]
    control: str | None
    requests: int | None  # None (as the others) for a record saved without a summary
    srm_mismatch: bool | None
    mlflow_run_id: str | None
    # Why the summary could not be read (its stored text is not a JSON object), else None: the record
    # is still listed, so that one damaged record does not hide the others.
    problem: str | None = None
    # The Serve application that ran it; None for a record saved before serve-ab said. Two apps
    # may serve one model, from one records file (analysis.records.path's default), and start
    # in the same second: their run ids then differ only by the config's digest.
    app: str | None = None


class CorruptRecord(ValueError):
    """A stored column of a run record is not a JSON object (edited by hand, cut short)."""

    def __init__(self, run_id: str, column: str, what: str):
        self.run_id, self.column = run_id, column
        self.detail = f"column {column}: {what}"
        super().__init__(f"run record {run_id!r} cannot be read: {self.detail}")


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    config: dict[str, Any]
    report: dict[str, Any]
    started_at_s: float
    updated_at_s: float
    saves: int
    mlflow_run_id: str | None


class RunRecorder:
    """Reads and writes run records in the SQLite file at ``path`` (created on first save).

    Safe to share between threads, and between processes: each call opens its own short
    connection, so ``serve-ab runs`` can read while the controller writes.
    """

    def __init__(self, path: Path | str, mlflow: bool = False):
        self.path = Path(path)
        self.mlflow = mlflow
        self._mlflow_module: Any = None
        self._mlflow_unavailable = False
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._mlflow_failed_at_s: float | None = None  # time.monotonic() of the last failed MLflow call

    # -- writing ---------------------------------------------------------------------------

    def save(self, run_id: str, config: Mapping[str, Any], report: Mapping[str, Any],
             started_at_s: float, updated_at_s: float, *, summary: Mapping[str, Any] | None = None,
             metrics: Mapping[str, float] | None = None, final: bool = False) -> None:
        """Insert the record, or replace its configuration and results (the first start stays).

        ``report`` is plain JSON (``Report.model_dump(mode="json")``); ``summary`` what ``list``
        shows of it (``Report.run_summary()``: versions, control, requests, srm_mismatch) and
        ``metrics`` the flat figures logged to MLflow (``Report.headline_metrics()``).

        ``final``: the run's last save (then :meth:`finish`): MLflow is asked even while it rests
        after a failure, else a blip in the run's last 5 minutes left its MLflow run RUNNING for
        ever, without its final figures.

        Raises ``sqlite3.Error``/``OSError`` when the file cannot be written (a caller that must
        not stop, like the controller, logs them); MLflow problems are only logged.
        """
        if not isinstance(run_id, str) or not run_id.strip():
            raise ValueError(f"run_id ({run_id!r}) must be a non-empty string, e.g. 'digits-20260101-120000'")
        for name, value in (("started_at_s", started_at_s), ("updated_at_s", updated_at_s)):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} ({value!r}) must be a finite time in seconds since the epoch")
        config = _without_passwords(config)
        config_json = _dumps(config, "config")
        report_json = _dumps(report, "report")
        summary_json = None if summary is None else _dumps(summary, "summary")
        model = config.get("model") if isinstance(config, Mapping) else None
        with self._lock:
            saves, saved_mlflow_run_id = self._upsert(run_id, model, float(started_at_s), float(updated_at_s),
                                                      config_json, report_json, summary_json)
            if self.mlflow:
                mlflow_run_id = self._log_mlflow(run_id, config, metrics or {}, started_at_s, updated_at_s,
                                                 step=saves, mlflow_run_id=saved_mlflow_run_id, final=final)
                if mlflow_run_id is not None and mlflow_run_id != saved_mlflow_run_id:
                    self._set_mlflow_run_id(run_id, mlflow_run_id)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        """Mark the run's MLflow run as ended (``FINISHED``, ``FAILED`` or ``KILLED``); the SQLite
        record needs nothing: it is complete after every save."""
        if not self.mlflow:
            return
        record = self.load(run_id)
        mlflow = self._import_mlflow()
        if mlflow is None or record.mlflow_run_id is None or self._mlflow_resting():
            return
        try:
            mlflow.tracking.MlflowClient().set_terminated(record.mlflow_run_id, status=status)
        except Exception as err:  # noqa: BLE001 - MLflow is a mirror; never fail the experiment
            self._mlflow_failed_at_s = time.monotonic()
            self._warn_once(f"finish:{type(err).__name__}", f"MLflow: could not end run {record.mlflow_run_id} "
                            f"of {run_id!r}: {err}")

    # -- reading ---------------------------------------------------------------------------

    def list(self) -> list[RunSummary]:
        """Every record, the most recently updated first; a record whose summary is not a JSON
        object is listed with its ``problem`` and no summary."""
        out = []
        for run_id, model, started, updated, saves, summary_json, mlflow_run_id in self._summary_rows():
            problem = None
            try:
                summary = _loads(summary_json, run_id, "summary_json") if summary_json else {}
            except CorruptRecord as err:
                summary, problem = {}, err.detail
            versions = summary.get("versions") or []
            out.append(RunSummary(
                run_id=run_id, model=model, started_at_s=started, updated_at_s=updated, saves=saves,
                # Anything but a list is kept as found, for the table to mark (``?value``).
                versions=[str(v) for v in versions] if isinstance(versions, list) else versions,
                control=summary.get("control"),
                requests=summary.get("requests"),
                srm_mismatch=summary.get("srm_mismatch"),
                mlflow_run_id=mlflow_run_id,
                problem=problem,
                app=summary.get("app"),
            ))
        return out

    def load(self, run_id: str) -> RunRecord:
        """The record of ``run_id``; ``KeyError`` naming the known ids when there is none,
        :class:`CorruptRecord` when a stored column is not a JSON object."""
        row, known = self._record_row(run_id)
        if row is None:
            hint = f"; recent ones: {', '.join(map(str, known))}" if known else "; it holds no records yet"
            raise KeyError(f"no run record {run_id!r} in {self.path}{hint}")
        return RunRecord(row[0], _loads(row[1], run_id, "config_json"), _loads(row[2], run_id, "report_json"),
                         row[3], row[4], row[5], row[6])

    # -- storage: SQLite here, Redis in RedisRunRecorder -------------------------------------

    def _upsert(self, run_id: str, model: str | None, started_at_s: float, updated_at_s: float,
                config_json: str, report_json: str, summary_json: str | None) -> tuple[int, str | None]:
        """Insert or update the record (the earliest start kept, saves counted); returns
        ``(saves, mlflow_run_id)`` after the write."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect(create=True) as db:
            db.execute(
                "INSERT INTO runs (run_id, model, started_at_s, updated_at_s, saves, config_json, report_json, "
                "summary_json) VALUES (?, ?, ?, ?, 1, ?, ?, ?) "
                "ON CONFLICT(run_id) DO UPDATE SET model = excluded.model, "
                "started_at_s = MIN(runs.started_at_s, excluded.started_at_s), "
                "updated_at_s = excluded.updated_at_s, saves = runs.saves + 1, "
                "config_json = excluded.config_json, report_json = excluded.report_json, "
                "summary_json = excluded.summary_json",
                (run_id, model, started_at_s, updated_at_s, config_json, report_json, summary_json),
            )
            row = db.execute("SELECT saves, mlflow_run_id FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return int(row[0]), row[1]

    def _set_mlflow_run_id(self, run_id: str, mlflow_run_id: str) -> None:
        with self._connect(create=True) as db:
            db.execute("UPDATE runs SET mlflow_run_id = ? WHERE run_id = ?", (mlflow_run_id, run_id))

    def _summary_rows(self) -> list[tuple]:
        """``(run_id, model, started, updated, saves, summary_json, mlflow_run_id)``, newest first."""
        with self._connect(create=False) as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            summary_column = "summary_json" if version >= 2 else "NULL"
            return db.execute(
                f"SELECT run_id, model, started_at_s, updated_at_s, saves, {summary_column}, mlflow_run_id "
                "FROM runs ORDER BY updated_at_s DESC, run_id").fetchall()

    def _record_row(self, run_id: str) -> tuple[tuple | None, list[str]]:
        """``((run_id, config_json, report_json, started, updated, saves, mlflow_run_id) or None,
        the ten most recent run ids when there is no such record)``."""
        with self._connect(create=False) as db:
            row = db.execute(
                "SELECT run_id, config_json, report_json, started_at_s, updated_at_s, saves, mlflow_run_id "
                "FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is not None:
                return row, []
            return None, [r[0] for r in db.execute("SELECT run_id FROM runs ORDER BY updated_at_s DESC LIMIT 10")]

    # -- internals -------------------------------------------------------------------------

    @contextmanager
    def _connect(self, create: bool) -> Iterator[sqlite3.Connection]:
        if not create and not self.path.exists():
            raise FileNotFoundError(f"no run records at {self.path}: no experiment with analysis.records has "
                                    "saved one there yet (pass the file with --records, e.g. .serve-ab/runs.sqlite)")
        db = sqlite3.connect(self.path, timeout=_SQLITE_TIMEOUT_S)
        try:
            if create:
                # WAL lets readers (serve-ab runs) go on while the controller writes.
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(_SCHEMA)
                if db.execute("PRAGMA user_version").fetchone()[0] == 1:
                    db.execute("ALTER TABLE runs ADD COLUMN summary_json TEXT")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            else:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version not in _READABLE_VERSIONS:
                    raise ValueError(f"{self.path} is not a serve-ab run record file (schema version {version}, "
                                     f"expected one of {list(_READABLE_VERSIONS)})")
            with db:  # one transaction, committed on success
                yield db
        finally:
            db.close()

    def _import_mlflow(self) -> Any:
        if self._mlflow_unavailable:
            return None
        if self._mlflow_module is None:
            for name, value in MLFLOW_HTTP_DEFAULTS.items():
                os.environ.setdefault(name, value)
            try:
                import mlflow  # seconds to import: only when asked for
            except ImportError as err:
                self._mlflow_unavailable = True
                self._warn_once("import", "analysis.records.mlflow is true but MLflow cannot be imported "
                                f"({err}); install mlflow or mlflow-skinny. Run records are still written "
                                f"to {self.path}")
                return None
            self._mlflow_module = mlflow
        return self._mlflow_module

    def _mlflow_resting(self) -> bool:
        """Whether MLflow failed less than MLFLOW_RETRY_AFTER_S ago: a tracking server that is down
        then costs one timeout per MLFLOW_RETRY_AFTER_S, not one per save."""
        failed = self._mlflow_failed_at_s
        return failed is not None and time.monotonic() - failed < MLFLOW_RETRY_AFTER_S

    def _log_mlflow(self, run_id: str, config: Mapping[str, Any], metrics: Mapping[str, float],
                    started_at_s: float, updated_at_s: float, step: int, mlflow_run_id: str | None,
                    final: bool = False) -> str | None:
        mlflow = self._import_mlflow()
        if mlflow is None or (self._mlflow_resting() and not final):
            return mlflow_run_id
        try:
            from mlflow.entities import Metric, Param

            client = mlflow.tracking.MlflowClient()  # MLFLOW_TRACKING_URI, else MLflow's default
            if mlflow_run_id is None:
                name = MLFLOW_EXPERIMENT_PREFIX + str(config.get("model") or "experiment")
                experiment = client.get_experiment_by_name(name)
                experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
                run = client.create_run(experiment_id, start_time=int(started_at_s * 1000), run_name=run_id,
                                        tags={"serve_ab.run_id": run_id})
                mlflow_run_id = run.info.run_id
                # Params cannot change once logged, so they are the configuration the run started with.
                params = [Param(k, v) for k, v in mlflow_params(config).items()]
                for i in range(0, len(params), _MLFLOW_BATCH):
                    client.log_batch(mlflow_run_id, params=params[i:i + _MLFLOW_BATCH])
            timestamp_ms = int(updated_at_s * 1000)
            points = [Metric(_mlflow_key(k), float(v), timestamp_ms, step) for k, v in metrics.items()
                      if isinstance(v, (int, float)) and math.isfinite(v)]  # MLflow would log NaN; leave it out
            for i in range(0, len(points), _MLFLOW_BATCH):
                client.log_batch(mlflow_run_id, metrics=points[i:i + _MLFLOW_BATCH])
        except Exception as err:  # noqa: BLE001 - MLflow is a mirror; never fail the experiment
            self._mlflow_failed_at_s = time.monotonic()
            self._warn_once(f"log:{type(err).__name__}", f"MLflow logging of run record {run_id!r} failed: "
                            f"{type(err).__name__}: {err}; the record at {self.path} is written, and MLflow "
                            f"is tried again in {MLFLOW_RETRY_AFTER_S:.0f} s")
            return mlflow_run_id
        self._mlflow_failed_at_s = None
        return mlflow_run_id

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)


def open_recorder(experiment_cfg: Any, environ: Mapping[str, str] | None = None) -> RunRecorder:
    """The recorder an :class:`~serve_ab.config.experiment.ExperimentConfig` names: in Redis when
    ``controller.store_url`` is a Redis URL, else the SQLite file at ``analysis.records.path``."""
    records, controller = experiment_cfg.analysis.records, experiment_cfg.controller
    if getattr(controller, "store_url", None) is not None and parse_store_url(controller.store_url).is_redis:
        from serve_ab.store.redis_store import RedisRunRecorder
        from serve_ab.store.state import store_password

        return RedisRunRecorder(controller.store_url, mlflow=records.mlflow,
                                password=store_password(controller, environ), prefix=controller.store_key_prefix)
    return RunRecorder(Path(records.path), mlflow=records.mlflow)


def recorder_at(location: str | Path, *, password: str | None = None, prefix: str | None = None) -> RunRecorder:
    """For ``serve-ab runs``: a redis:// or rediss:// URL, else a SQLite file's path."""
    text = str(location)
    if text.lower().startswith(("redis://", "rediss://")):
        from serve_ab.store.redis_store import DEFAULT_KEY_PREFIX, RedisRunRecorder

        return RedisRunRecorder(text, password=password, prefix=prefix or DEFAULT_KEY_PREFIX)
    return RunRecorder(Path(text))


def _without_passwords(config: Any) -> Any:
    """``config`` with the password of every URL in it masked (``controller.store_url``, a
    Prometheus' ``url`` with basic auth, ``http://user:pass@prometheus:9090``): records and
    MLflow params are read by more people than may write to the store, and the logs, status
    and gate reasons already say those URLs without it."""
    if isinstance(config, Mapping):
        return {key: _without_passwords(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_without_passwords(value) for value in config]
    return redact_url(config) if isinstance(config, str) else config


def mlflow_params(config: Mapping[str, Any]) -> dict[str, str]:
    """The configuration flattened to dotted keys (``weights.v1``), values as text."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) and "name" in v for v in value):
            for v in value:  # versions, metrics: by name rather than position
                walk(f"{prefix}.{v['name']}", {k: x for k, x in v.items() if k != "name"})
        else:
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
            out[_mlflow_key(prefix)] = text[:_MLFLOW_PARAM_CHARS]

    walk("", dict(config))
    return out


def _mlflow_key(key: str) -> str:
    """``key`` as a name MLflow takes for a param or metric, and one no other key maps to.

    MLflow names allow letters, digits, _ - . / and spaces (colons and other letters vary by
    platform), at most 250 characters, and must not change as a file path would (``a//b``,
    ``x/../y``, a leading ``/``): a key it refuses fails the whole batch, so a feedback name
    such as ``a//b`` would lose every param and metric. A key that must change gets a hash of
    the original, so that ``revenue€`` and ``revenue$`` stay two metrics."""
    safe = re.sub(r"[^A-Za-z0-9_\-./ ]", "_", key)
    if _mlflow_path_not_unique(safe):
        safe = "_" + safe.replace("/", "_")
    if safe == key and len(key) <= _MLFLOW_KEY_CHARS:
        return key
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    return f"{safe[:_MLFLOW_KEY_CHARS - len(digest) - 1]}-{digest}"


def _mlflow_path_not_unique(name: str) -> bool:
    # As MLflow's own check (mlflow.utils.validation.path_not_unique).
    norm = posixpath.normpath(name)
    return norm != name or norm == "." or norm.startswith("..") or norm.startswith("/")


def _dumps(value: Any, what: str) -> str:
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a mapping (a JSON object), got {type(value).__name__}")
    try:
        return json.dumps(value, allow_nan=False, sort_keys=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} is not plain JSON ({err}); Report.model_dump(mode='json') and "
                         "ExperimentConfig.model_dump(mode='json') are") from None


def _loads(text: str | bytes, run_id: str, column: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise CorruptRecord(run_id, column, f"not JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    except UnicodeDecodeError as err:  # a BLOB that is not UTF-8
        raise CorruptRecord(run_id, column, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    except RecursionError:
        raise CorruptRecord(run_id, column, "JSON nested past Python's recursion limit") from None
    except ValueError as err:  # an integer of over 4,300 digits
        raise CorruptRecord(run_id, column, f"JSON that cannot be read ({str(err).split('; use sys.')[0]})") from None
    if not isinstance(value, dict):
        raise CorruptRecord(run_id, column, f"holds a JSON {_JSON_TYPES.get(type(value), 'value')} "
                                            f"({json.dumps(value)[:40]}), not an object")
    return value


_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
