"""The controller: one deployment in every app, beside the router.

Routers report what they served (:meth:`ExperimentController.record`) and long-poll for
weights (:meth:`ExperimentController.wait_for_update`), so a decision reaches every router
replica as soon as it is made, with no polling delay. Being the one replica every router
reports to (one aggregate per router per interval, never per-request rows), the controller
is also where the app's figures live: the cumulative per-version statistics
(:class:`serve_ab.analysis.accumulate.ExperimentStats`) behind the A/B report and the
Prometheus metrics, and the run record.

With a rollout, the decisions come from the pure :class:`serve_ab.rollout.Rollout`; this
class only feeds it windows of observations and serves the control actions. Every decision
(a tick's change, an action, a validation) is taken on a copy of the rollout, saved, and
only then applied (memory, epoch, routers): a save that fails changes nothing, the action
is refused with :class:`~serve_ab.errors.StoreUnavailable` and a tick decides again next
time. Without a rollout, the weights are the config's.

One clock: reports are stamped with the controller's clock when they arrive, so a router
whose clock is off neither starves nor fools the gates (the latency it measured is a duration and
is kept). Only requests assigned by the split and mirrored copies enter gate windows;
pinned ones never move a gate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ray import serve

from serve_ab.config.experiment import ExperimentConfig, parse_experiment
from serve_ab.config.serve_file import CONTROLLER_DEPLOYMENT
from serve_ab.analysis.accumulate import ExperimentStats
from serve_ab.analysis.aggregate import IntervalAggregate
from serve_ab.analysis.report_model import Report
from serve_ab.analysis.saved_looks import readable_looks
from serve_ab.rollout.feedback import PENDING_TTL_S, REQUEST_TTL_S, FeedbackJoin
from serve_ab.rollout.gates import PromQLResult
from serve_ab.rollout.windows import GateWindows, window_stats
from serve_ab.rollout.promql import PromQLPoller
from serve_ab.rollout.notify import NotificationSender, events_from_history
from serve_ab.rollout.webhook import WebhookAnswers, WebhookPoller, unset_env_vars
from serve_ab.rollout.machine import Phase, Rollout, RolloutError
from serve_ab.rollout.validation import validate_green
from serve_ab.config.rollout import WEIGHT_RESOLUTION_PCT, PauseStep, Strategy
from serve_ab.store.claim import HEARTBEAT_S, Held, Renewal, hold_claim, renew_claim
from serve_ab.store.keys import claim_key, feedback_key, feedback_key_row, rollout_key
from serve_ab.store.runs import open_recorder
from serve_ab.store.state import describe_store, open_store, store_unreachable
from serve_ab.api.access_log import drop_routine_calls
from serve_ab.rollout.failure_log import FailingSpell
from serve_ab.api.schemas import ActionRequest
from serve_ab.api.status import ActionAnswer, ControllerInfo, NotSaved, RolloutStatus
from serve_ab.errors import (
    ControllerUnavailable,
    Forbidden,
    InvalidInput,
    ServeAbError,
    StoreUnavailable,
    UnknownAction,
)
from serve_ab.serving.app_claim import app_running, this_app
from serve_ab.serving.core.feedback_token import MAX_TOKEN_EPOCH
from serve_ab.serving.core.messages import (
    Action, Actor, IntervalReport, Mirror, NotCounted, Refused, ReportAnswer, RoutingSnapshot)
from serve_ab.serving.core.run_config import config_digest, config_fingerprint
from serve_ab.serving.reports import ReportNumbers, RestartCatchUp, RouterReports

logger = logging.getLogger("ray.serve")

# Routing epochs whose weights are remembered (a router reports within seconds of an epoch).
MAX_EPOCHS_REMEMBERED = 1000
# A restarted controller numbers its routing epochs on from its last save's plus this many.
# Feedback names its request's epoch (the token) and is filed under that epoch's weights: a
# restarted controller that numbered from 0 again filed a pre-period answer's outcome under
# its own epoch 0's weights (live: into the 50/50 split, its bucket counted as a keyless
# unit). The gap covers the epochs published after the last save (every 5 s), lost with the
# process, so none is numbered twice; a million restarts still fit the tokens' 12 digits.
EPOCHS_SKIPPED_AT_RESTART = 1_000_000
# Bounded so that a stopping controller drains its routers' polls quickly and still has
# time for its final run record (app.py's graceful shutdown timeout is above this).
LONG_POLL_TIMEOUT_S = 2.0
# The report's sequential (always-valid) p-values take a look this often, and on every request.
REPORT_INTERVAL_S = 5.0
# After a restart, the first analysis waits two report intervals and this long for the
# routers' resent reports (Rollout.restarted).
RESTART_SLACK_S = 3.0
# Feedback on an answer given this long before the run started is not counted in it (the
# token proves when its answer came: serving/core/feedback_token.py). The margin is the one
# the claim allows two nodes' clocks (store/claim.py WAIT_MARGIN_S): a router's clock, which
# stamped the token, may run behind the controller's that stamped the run's start, and a new
# config's router may answer a moment before its controller has started. The price: feedback
# on the previous run's last 5 s of answers still counts here (as would answers its replicas
# gave after this run started: a token names no run, and they cannot be told apart).
RUN_START_SLACK_S = 5.0
# The routers' calls that come whatever happens (long polls, reports, passed-on feedback) and
# Prometheus' scrapes: Ray Serve's access line for each that succeeded is left out.
ROUTINE_CALLS = frozenset({"wait_for_update", "record", "feedback", "feedback_key", "metrics"})
# A redeploy that changed the config starts a new run; the run it replaced is never continued
# (the run row names the new one), so its figures' row and its minutes of counted feedback are
# dropped from the store, at the first save this long after the start: by then Serve has stopped
# the old controller, whose saves (claim-checked) stopped when this one took the claim.
PREVIOUS_RUN_DROP_AFTER_S = 60.0
# Blue-green validation's time limit when the rollout has no progress deadline.
VALIDATION_TIMEOUT_S = 120.0
# A starting controller whose store does not answer asks again after 1, 2, 4 ... up to 30 s.
STORE_RETRY_FIRST_S = 1.0
STORE_RETRY_MAX_S = 30.0
# Body fields only one action takes (reason, from_step and revision go with any).
_ACTION_ONLY_FIELDS = {"full": Action.PROMOTE, "weights": Action.WEIGHTS}
_FIELD_OF = {action: name for name, action in _ACTION_ONLY_FIELDS.items()}


@dataclass(frozen=True)
class Checkpoint:
    """What one save of the run's figures writes, taken at one moment on the loop that merges
    reports: the figures, the feedback counted lately, and each router's last report in them."""

    number: int
    stats: dict[str, Any]
    reported: dict[str, dict[str, Any]]
    report_seqs: dict[str, int]
    taken_s: float
    # Rows written once (the run's identity, the feedback key) or on a decision only (the
    # rollout), written again only where the store lost them, or, the rollout, holds an older
    # revision of it (ControllerCore.save_stats).
    kept: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # Of those, the rows this controller's copy wins over the store's (the feedback key).
    owned: frozenset[str] = frozenset()


def _same_weights(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    """Whether two routings give every version the same buckets (a version missing from one,
    such as a retired one a router dropped, has none there). Routers route by whole buckets and
    name their splits by the table's weights, while a weight is taken to 1e-6 of a bucket
    (``set_weight: 0.500000005`` routes 0.5%): compared to 1e-9, every report of such a step was
    kept out of its gates, which then waited for evidence until the progress deadline."""
    return all(round(a.get(v, 0.0) / WEIGHT_RESOLUTION_PCT) == round(b.get(v, 0.0) / WEIGHT_RESOLUTION_PCT)
               for v in a.keys() | b.keys())


def _revision(row: Any) -> int:
    """A saved rollout row's revision; -1 for a row that has none (damaged, or not a rollout)."""
    revision = row.get("revision") if isinstance(row, dict) else None
    return revision if isinstance(revision, int) and not isinstance(revision, bool) else -1


# The figures' row's fields that change while nothing was served: the clock's, and the report
# numbers, which idle routers' empty reports (one every 20 s) move on. A row that differs only
# in them is not written again: a controller restarted from it merges the reports numbered past
# its older numbers, and the ones between, acknowledged as saved, held nothing the row lacks.
_IDLE_FIELDS = frozenset({"now_s", "reported_from_minute", "report_seqs"})


def _routers_to_wait_for(saved_stats: Mapping[str, Any] | None, merged: Mapping[str, int]) -> set[str]:
    """The routers a controller restored from ``saved_stats`` waits for before it answers
    /metrics: those live at the save that number their reports (``merged``)."""
    live = (saved_stats or {}).get("routers_live")
    if not isinstance(live, list):  # saved by a release before the field
        return set(merged)
    return {str(router) for router in live} & set(merged)


def _figures_digest(stats: Mapping[str, Any]) -> bytes:
    """The figures' row less what moves on while nothing is served: _IDLE_FIELDS, and each
    sequential test's look count, which every 5-s refresh of the report raises (a look at the
    same figures changes nothing else; p-values, sequences and tau stay). With the count in it,
    an idle app wrote its whole row every save_interval_s. A restart from a row saved before
    such looks shows fewer of them; no verdict reads the count. A digest of the text, not the
    dict: parts of a checkpoint may be the live objects'."""
    figures = {k: v for k, v in stats.items() if k not in _IDLE_FIELDS}
    sequential = figures.get("sequential")
    if isinstance(sequential, Mapping):
        figures["sequential"] = {metric: {variant: _without_look_count(state) for variant, state in tests.items()}
                                 if isinstance(tests, Mapping) else tests
                                 for metric, tests in sequential.items()}
    return hashlib.blake2b(json.dumps(figures).encode(), digest_size=16).digest()


def _without_look_count(state: Any) -> Any:
    seq = state.get("seq") if isinstance(state, Mapping) else None
    if not isinstance(seq, Mapping):
        return state
    return {**state, "seq": {k: v for k, v in seq.items() if k != "looks"}}


def _other_run_id(saved: Any, run_id: str) -> str | None:
    """``saved`` where it names a run other than ``run_id``; None for no id, or one that is not
    a run's (empty, not text: a row written by hand), whose rows are not this run's to drop."""
    return saved if isinstance(saved, str) and saved and saved != run_id else None


def _same_config(saved: Any, fingerprint: str) -> bool:
    """Whether a saved run's fingerprint is this config's: the same text, or (saved by an
    earlier release) a whole config that reads back as this one."""
    if saved == fingerprint:
        return True
    try:
        return config_fingerprint(ExperimentConfig.model_validate(json.loads(saved))) == fingerprint
    except (TypeError, ValueError):  # not text, not JSON, or not a config of today's schema
        return False


class ControllerCore:
    """Everything the controller does, minus Ray: testable with a fake clock."""

    def __init__(self, cfg: ExperimentConfig, store, clock=time.time, app: str | None = None):
        self.cfg = cfg
        self.clock = clock
        self.store = store
        self.app = app
        self.rollout: Rollout | None = None
        self.key = rollout_key(cfg) if cfg.rollout is not None else None
        # A decision's save (on the loop) and the figures' save writing back a rollout row the
        # store holds at an older revision (in a thread) take turns: else the latter could write
        # an older revision over a decision saved between its read and its write.
        self._rollout_row_lock = threading.Lock()
        # Sends every saved history entry to cfg.notifications from its own threads: started
        # last, once the store has been read, so a start that fails on the store (and is
        # tried again) leaves no threads behind.
        self.notifier: NotificationSender | None = None
        fresh: Rollout | None = None
        if cfg.rollout is not None:
            saved = store.load(self.key)
            if saved is not None:
                self.rollout = Rollout.from_dict(cfg.rollout, saved, clock)
                # No wait ends on a verdict from before the restart: the first analysis reads
                # what the routers send again (ledger.py): their first report after the start
                # learns of it, the next resends; a few seconds for Ray's handles to find this
                # replica.
                self.rollout.restarted(2 * cfg.controller.report_interval_s + RESTART_SLACK_S)
                logger.info("serve-ab controller resumed %s %s, weights %s",
                            self.key, self.rollout.where_text(), self.rollout.weights)
            else:
                fresh = Rollout(cfg.rollout, clock)
                fresh.state.revision = 1
                self.store.save(self.key, fresh.to_dict())
                self.rollout = fresh
        # The gates' windows, merged from the routers' reports and the joined feedback (kept
        # per second for a sliding window_s, and as a running total over the step).
        window_s = cfg.rollout.analysis.window_s if cfg.rollout is not None else None
        self.gate_windows = GateWindows(keep_s=(window_s or 0.0) + 120.0)
        self._window_restored = False  # until a look has read the window a save gave back
        self.reports = RouterReports()
        # While the store refuses saves (decisions, figures): status says so, where the reason
        # alone would read as if nothing were wrong. Cleared by the next save that works.
        self.saves_failing: SavesFailing | None = None
        self.started_at_s = clock()
        # Rows every figures' save writes again where the store lost them (keep_row).
        self.kept_rows: dict[str, dict[str, Any]] = {}
        # What the store holds of this controller's figures: when they were saved, the row as
        # saved (a digest, less _IDLE_FIELDS), and how many keys each minute's row of counted
        # feedback held.
        # A save writes only what changed since (figures_due, save_stats).
        self._figures_saved_s: float | None = None
        self._epoch_saved: int | None = None  # the routing epoch the last save held
        self._figures_in_store: bytes | None = None
        self._reported_in_store: dict[str, int] = {}
        self.owned_rows: set[str] = set()
        # The run a changed config replaced, whose rows this controller drops (_drop_previous_run).
        self._previous_run_id: str | None = None
        self.run_id, self.run_started_at_s = self._run_identity()
        shadow_version = cfg.shadow.version if cfg.shadow is not None else None
        feedback_kinds = cfg.feedback_kinds()
        saved_stats = store.load(self._stats_key())
        if saved_stats is not None:  # a restarted controller carries on with the run's figures
            self.stats = ExperimentStats.from_state(saved_stats, shadow_version, feedback_kinds)
        else:
            self.stats = ExperimentStats([v.name for v in cfg.versions], self.started_at_s,
                                         shadow_version, feedback_kinds)
        # Routers keep what this controller has not saved, and send it again to the next one
        # (serving/core/ledger.py); it knows them by this name, new at every start.
        self.name = uuid.uuid4().hex[:16]
        # Routers stamp their reports with their config's digest: this run merges only its own.
        self.config_digest = config_digest(cfg)
        self._other_config_routers: set[str] = set()  # logged once each
        self.numbers = ReportNumbers(clock, (saved_stats or {}).get("report_seqs"))
        self.reports.restore_counts((saved_stats or {}).get("routers_counted"))
        # Restored from a save: /metrics waits for the routers live at the save to send what it
        # lacks (a save of a release before routers_live: every router it numbers).
        self.catch_up = RestartCatchUp(_routers_to_wait_for(saved_stats, self.numbers.merged), clock())
        # Joined feedback goes to the totals (self.stats) and, in a rollout, the gates' windows.
        # Remembered for as long as an answer's feedback token is valid, so no replay counts twice.
        self.feedback = FeedbackJoin(on_emit=self._feedback_joined, keep_events=False,
                                     on_unjoined=self.stats.count_unjoined, on_duplicate=self.stats.count_duplicate,
                                     request_ttl_s=max(REQUEST_TTL_S, cfg.feedback.token_ttl_s),
                                     # Two of the routers' report intervals: a request's report comes
                                     # within one, however many other routers report meanwhile.
                                     pending_ttl_s=max(PENDING_TTL_S, 2 * cfg.controller.report_interval_s + 5.0))
        self._restore_reported((saved_stats or {}).get("reported_recent"))
        self._restore_gate_step((saved_stats or {}).get("gate_step"))
        self.last_analysis: list[dict[str, Any]] = []
        # What the gates' last analysis read (with last_analysis): since when, and each
        # version's requests and errors in it.
        self.last_window: dict[str, Any] | None = None
        self._last_look_since_s: float | None = None  # the step's window_since_s at that look
        self._restore_last_look((saved_stats or {}).get("last_look"))
        self.retired: tuple[str, ...] = ()
        self.epoch = 0
        # The weights of every routing epoch published, so each row counts under the split
        # its router assigned it by (rows and feedback arrive after the weights moved on),
        # kept across a restart with the figures (feedback tokens live an hour by default).
        self._epoch_weights: dict[int, dict[str, float]] = {}
        self._restore_epochs((saved_stats or {}).get("epochs"), restarted=saved_stats is not None)
        # The report's sequential tests (running-minimum p-values, intersected confidence
        # sequences, tau fixed at the first look, verdicts that stand), saved with the figures:
        # a restarted controller that began them afresh showed 2 looks where there had been 10,
        # a p-value gone from 0.47 to 1, tau re-tuned to later data and a sequence wider again.
        self.sequential_state = self._restore_sequential((saved_stats or {}).get("sequential"))
        if saved_stats is not None and "sequential" not in saved_stats:
            # Figures saved by a release that kept no sequential state (an upgrade from before
            # 2026-12-07): nothing to resume, so the tests start over; said, as a report's looks
            # going from 13 to 1 (live, on such an upgrade) would otherwise read as a fault.
            logger.warning("serve-ab controller: the saved figures of %s hold no sequential tests (saved by an "
                           "earlier serve-ab, which did not keep them): the report's sequential tests start "
                           "afresh from this restart (looks from 1, tau set again at the first look, verdicts "
                           "reached before not kept); the figures themselves carry on", self.cfg.model)
        self.snapshot()
        self.notifier = NotificationSender.maybe(cfg.notifications)
        self._warn_unset_env()
        if fresh is not None:
            self._announce(fresh)

    def _restore_epochs(self, saved: Any, restarted: bool) -> None:
        """The epochs a save kept, and the next epoch past any the previous controller may
        have published (a save of an older release kept none: epochs from 0, below the gap).
        A row that cannot be read is logged and numbered on from what could be: it must not
        keep the controller down (it stays in the store, and every restart would fail on it)."""
        if not restarted:
            return
        epochs: dict[int, dict[str, float]] = {}
        last = 0
        try:
            if saved is not None and not isinstance(saved, Mapping):
                raise ValueError(f"they are a {type(saved).__name__}, not a mapping")
            for epoch, weights in (saved or {}).get("weights") or []:
                epochs[int(epoch)] = {str(name): float(pct) for name, pct in weights.items()}
            # The last epoch published, which no kept one passes unless numbering began again
            # from 0 (below): the epochs kept then are the higher ones, before it.
            last = int((saved or {}).get("last", max(epochs, default=0)))
        except Exception as err:  # noqa: BLE001 - a damaged row must not keep the controller down
            last = max(epochs, default=0)
            logger.warning("serve-ab controller could not read the saved routing epochs of %s (%s: %s); numbering "
                           "on from epoch %d, and feedback naming an epoch not read counts under the weights now",
                           self.cfg.model, type(err).__name__, err, last)
        self._epoch_weights.update(epochs)
        self.epoch = last + EPOCHS_SKIPPED_AT_RESTART
        if self.epoch > MAX_TOKEN_EPOCH - EPOCHS_SKIPPED_AT_RESTART:
            # Past what a feedback token can name (a million restarts, or a damaged row): from 0
            # again, below the epochs kept, which every token still alive names.
            logger.warning("serve-ab controller: routing epoch %d is near the feedback tokens' last (%d); "
                           "numbering from 0 again", self.epoch, MAX_TOKEN_EPOCH)
            self.epoch = 0

    def _restore_sequential(self, saved: Any) -> dict[str, Any] | None:
        """The report's sequential state as the last save left it, ``{metric: {variant: look}}``,
        less every look of another shape (logged; its tests start afresh): build_report raised
        on one, and every report and run record after the restart failed on it for as long as
        the row stayed in the store."""
        if saved is None:
            return None
        kept, dropped = readable_looks(saved)
        if dropped:
            logger.warning("serve-ab controller could not read the saved sequential tests of %s (%s); those "
                           "tests start afresh", self.cfg.model, "; ".join(dropped))
        return kept or None

    def _warn_unset_env(self) -> None:
        """Say at start which secrets' variables are missing, not at the first request that
        needs one mid-rollout; a warning, as the rollout may still run (a gate only holds)."""
        for path, variable in unset_env_vars(self.cfg.notifications, self.cfg.rollout):
            logger.warning("serve-ab controller %s: %s names environment variable %s, which is not set in "
                           "this process; requests to that endpoint will fail", self.key or self.cfg.model, path,
                           variable)

    def _stats_key(self, run_id: str | None = None) -> str:
        return f"stats:{self.run_id if run_id is None else run_id}"

    def keep_row(self, key: str, row: dict[str, Any], *, owned: bool = False) -> None:
        """A row this controller read or wrote once and goes by from then on (the feedback key):
        written again by the figures' saves if the store loses it. ``owned``: written over
        another row found there too, this controller's copy being the one in use."""
        self.kept_rows[key] = row
        if owned:
            self.owned_rows.add(key)

    def checkpoint(self) -> Checkpoint:
        """What :meth:`save_stats` writes, taken now (on the loop, when saving from a thread).

        The feedback counted since the last save that wrote its keys goes in the figures' own
        row too: a controller killed between the two writes, or a store that took the figures
        and then failed, would otherwise restore figures that count feedback it does not know
        it counted, and count it again when a router sends it again."""
        number, seqs = self.numbers.capture()
        now_s = self.clock()
        since_s = self._keys_written_s
        state = self.stats.to_state(now_s)
        state["report_seqs"] = seqs
        # The routers a controller restarted from this save waits for (RestartCatchUp): the live
        # ones that number their reports, and those a restarted controller still waits for (not
        # heard of since, yet). Not an idle field: a router stopping or going silent is rare,
        # and a row left naming it held every restart's /metrics CATCH_UP_MAX_S.
        state["routers_live"] = sorted((self.reports.live(now_s) | self.catch_up.pending(now_s)) & seqs.keys())
        state["sequential"] = self.sequential_state
        state["routers_counted"] = self.reports.counts()  # counters, so they never go back at a restart
        state["epochs"] = {"last": self.epoch, "weights": [[epoch, weights] for epoch, weights
                                                           in self._epoch_weights.items()]}
        # The first minute whose row of counted feedback may still be in the store: the next run
        # drops the rows from here to now_s's minute (_drop_previous_run).
        state["reported_from_minute"] = self._reported_dropped_before
        recent = self.feedback.reported_since(since_s)
        state["reported_recent"] = {"keys": [format(key, "016x") for key, _ in recent],
                                    "t_s": [round(t_s, 3) for _, t_s in recent]}
        # The step's gate window, with the report numbers it holds: a restarted controller
        # takes it up, and the reports routers send again add exactly what it lacks.
        state["gate_step"] = (self.gate_windows.step_state(self.rollout.window_since_s)
                              if self.rollout is not None else None)
        # And what its last look found, which status shows: a restarted controller that is
        # paused (no looks until resumed) or done (none again) would otherwise show no gates.
        state["last_look"] = ({"since_s": self._last_look_since_s,
                               "gates": self.last_analysis, "window": self.last_window}
                              if self.rollout is not None and self.last_window is not None else None)
        kept = dict(self.kept_rows)
        if self.rollout is not None:
            kept[self.key] = self.rollout.to_dict()
        return Checkpoint(number, state, self.reported_rows(since_s), seqs, now_s, kept, frozenset(self.owned_rows))

    def figures_due(self) -> bool:
        """Whether this round saves the figures: ``controller.save_interval_s`` after the last
        save, or at once where the store lost the figures' row or holds an older one (a Redis
        restarted without its data, a lost last second, a failover; then every row is written
        again, not only what changed) or holds the rollout at an older revision than this
        controller's. Store calls (two small rows read): off the loop.

        Every 5 s before, which with Redis AOF wrote the whole row, up to a few MB, 720 times an
        hour per app; the routers keep what a save does not hold yet (serving/core/ledger.py)."""
        if self._figures_saved_s is None or self.epoch != self._epoch_saved:
            # A weight change is saved at the next round, not up to an interval later: a
            # controller restarted before that save would not know when the old split ended
            # (where CUPED's pre-period ends) nor the new epoch's weights (feedback naming it).
            return True
        if not self._figures_stored():
            self.forget_stored()
            return True
        rollout = self.rollout  # the loop may replace it meanwhile (this runs in a thread)
        if rollout is not None and _revision(self.store.load(self.key)) < rollout.state.revision:
            # The store lost the last decisions and the save after them (AOF's last second lost
            # with its host, a failover to a replica that lacked them) but kept an older figures'
            # row: written back now (_put_back_rollout), not up to save_interval_s later, when a
            # controller restarted meanwhile resumed the older row (a rollback as the step before).
            return True
        return self.clock() - self._figures_saved_s >= self.cfg.controller.figures_save_interval_s

    def _saved_key(self, run_id: str | None = None) -> str:
        return f"stats-saved:{self.run_id if run_id is None else run_id}"

    def _figures_stored(self) -> bool:
        """Whether the store holds the figures' row this controller saved last, as the small row
        written after it says (its digest). A Redis restarted empty lost both; a lost last second
        or a failover that lost the row left an older one, and lost the later small row with it
        (writes reach AOF and replicas in order). An EXISTS of the row saw no older one, and as an
        idle app's row is not written again, the older figures stayed for good: a controller
        restarted from them lost what the routers had dropped as saved."""
        saved = self.store.load(self._saved_key())
        return (self._figures_in_store is not None and isinstance(saved, Mapping)
                and saved.get("figures_blake2b") == self._figures_in_store.hex())

    def forget_stored(self) -> None:
        """The store may hold rows other than this controller's last saves (it lost them, or
        another replica held the claim and saved meanwhile): the next save writes every row."""
        self._figures_in_store, self._reported_in_store = None, {}

    def save_stats(self, checkpoint: Checkpoint | None = None) -> None:
        """Keep the run's figures, so a restarted controller does not start them from zero;
        which feedback it counted lately, so a replay after the restart is still refused; and
        each router's last report in them, so that routers drop what they kept for a restart
        and a restarted controller merges only what follows.

        Every minute's row of counted feedback since the last save that wrote them is written
        where it holds keys the store's lacks (all of them after a store outage); the figures'
        row holds the same keys until then (:meth:`checkpoint`). The figures' row is written
        only when more than its clock and report numbers changed (_IDLE_FIELDS).
        """
        if checkpoint is None:
            checkpoint = self.checkpoint()
        try:
            if self._figures_in_store is not None and not self._figures_stored():
                self.forget_stored()  # lost or older since the last save (a Redis restarted empty): write every row
            reported = {key: row for key, row in checkpoint.reported.items()
                        if self._reported_in_store.get(key) != len(row["keys"])}  # a minute's row only grows
            # An idle app's figures change only in _IDLE_FIELDS: the row stored holds them already
            # (its reported_from_minute, earlier, only has a next run's drop try minutes gone).
            figures = _figures_digest(checkpoint.stats)
            if figures != self._figures_in_store:
                self.store.save(self._stats_key(), checkpoint.stats)
                # After the row, so that the row is there wherever this is (_figures_stored).
                self.store.save(self._saved_key(), {"figures_blake2b": figures.hex()})
            self._figures_in_store = figures
            for key, row in reported.items():
                self.store.save(key, row)
                self._reported_in_store[key] = len(row["keys"])
            # Only where missing (SET NX; a newer decision saved meanwhile stays): a Redis that
            # restarted without its data (no AOF) lost them while this controller kept them in
            # memory, and the next controller would start a new run with no figures (its run
            # row gone), sign with a new feedback key, or start the rollout over at step 1.
            for key, row in checkpoint.kept.items():
                if key == self.key:
                    self._put_back_rollout(row)
                    continue
                stored = self.store.create(key, row)
                if stored != row and key in checkpoint.owned:
                    # A router that started after the loss made a key of its own before this
                    # save; the routers sign with this controller's, and a restart would read
                    # the store's: tokens issued before the loss would then all be refused.
                    logger.warning("serve-ab controller: %s held another %s than this controller's; "
                                   "writing this controller's back", describe_store(self.cfg.controller), key)
                    self.store.save(key, row)
        except Exception as err:
            # What reached the store is unknown (a timeout after the write): written again next time.
            self._figures_in_store = None
            self.note_save_failed(err)
            raise
        self._saves_work()
        self._figures_saved_s = checkpoint.taken_s
        self._epoch_saved = checkpoint.stats["epochs"]["last"]
        self._keys_written_s = max(self._keys_written_s, checkpoint.taken_s)
        self.numbers.done(checkpoint.number, checkpoint.report_seqs)
        # Minutes older than a token's life can bring nothing back: drop their rows.
        oldest = int(self.clock() // 60) - self._reported_minutes()
        for minute in range(self._reported_dropped_before, oldest):
            self.store.delete(self._reported_key(minute))
            self._reported_in_store.pop(self._reported_key(minute), None)
        self._reported_dropped_before = max(self._reported_dropped_before, oldest)
        # After the figures are saved, and apart: a store that fails now refused no save (status
        # must not say not_saved, nor the round skip its report); the next save tries again.
        try:
            self._drop_previous_run()
        except Exception as err:  # noqa: BLE001 - a clean-up, never the run's own save
            logger.warning("serve-ab controller: the saved figures of run %s, which run %s replaced, could not "
                           "be dropped yet (%s: %s); trying again at the next save", self._previous_run_id,
                           self.run_id, type(err).__name__, err)

    def _put_back_rollout(self, row: dict[str, Any]) -> None:
        """Write the rollout's ``row`` (this controller's, as the routers serve it) where the
        store lost it or holds an earlier revision: a Redis restarted without its data, a
        failover to a replica that had not received the last decisions, AOF's last second lost
        with its host. Left there, the older row is what a restarted controller resumes: a
        rollback read back as the 10% step before it put the candidate back in front of users.
        A later revision stays (a controller that holds the claim now wrote it)."""
        stored = self.store.create(self.key, row)  # SET NX: a decision saved meanwhile is kept either way
        if stored == row or _revision(stored) >= _revision(row):
            return
        # Rare (after a failover): only this write over an older row takes turns with the
        # decisions' saves, so the loop never waits on this thread's round trips otherwise.
        with self._rollout_row_lock:
            stored = self.store.load(self.key)  # again: a decision may have been saved since
            if stored is not None and _revision(stored) >= _revision(row):
                return
            logger.warning("serve-ab controller: %s held %s at revision %s, older than this controller's %s "
                           "(it lost the last decisions); writing this controller's back",
                           describe_store(self.cfg.controller), self.key, _revision(stored), _revision(row))
            self.store.save(self.key, row)

    def _drop_previous_run(self) -> None:
        """Delete the rows of the run a changed config replaced: its figures (up to a few MB with
        its user samples) and its minutes of counted feedback (a key per feedback of the tokens'
        last life). Nothing reads them again, and each redeploy that changed the config left
        them in the store for good (in Redis, in memory): 290 KB a redeploy in a unit test at
        20 requests a second for 5 minutes. Its run record (analysis.records) keeps its figures."""
        previous = self._previous_run_id
        if previous is None or self.clock() - self.started_at_s < PREVIOUS_RUN_DROP_AFTER_S:
            return
        old = self.store.load(self._stats_key(previous))
        if isinstance(old, Mapping) and isinstance(old.get("now_s"), (int, float)):
            last = int(old["now_s"] // 60)
            # Saved by a release before reported_from_minute: the longest a token lives by default.
            first = old.get("reported_from_minute")
            if not isinstance(first, int):
                first = last - max(self._reported_minutes(), int(REQUEST_TTL_S // 60) + 2)
            for minute in range(first, last + 1):
                self.store.delete(self._reported_key(minute, previous))
        self.store.delete(self._stats_key(previous))
        self.store.delete(self._saved_key(previous))
        # The run row keeps naming it (rewritten here, it could overwrite a newer run's row):
        # a later restart of this run finds nothing left of it, a load and a delete.
        self._previous_run_id = None
        logger.info("serve-ab controller: dropped the saved figures of run %s, which run %s replaced", previous,
                    self.run_id)

    # -- feedback already counted, across a restart ---------------------------------------------

    def _reported_key(self, minute: int, run_id: str | None = None) -> str:
        return f"feedback-reported:{self.run_id if run_id is None else run_id}:{minute}"

    def _reported_minutes(self) -> int:
        return int(self.feedback.request_ttl_s // 60) + 2

    def reported_rows(self, since_s: float | None = None) -> dict[str, dict[str, Any]]:
        """Counted feedback, one store row per minute: this minute's and the last one's, and
        every minute's since ``since_s`` (the earlier minutes' rows were complete when saved)."""
        minute = int(self.clock() // 60)
        first = minute - 1 if since_s is None else min(minute - 1, int(since_s // 60))
        rows: dict[str, dict[str, Any]] = {}
        for key, t_s in self.feedback.reported_since(first * 60.0):
            row = rows.setdefault(self._reported_key(int(t_s // 60)), {"keys": [], "t_s": []})
            row["keys"].append(format(key, "016x"))
            row["t_s"].append(round(t_s, 3))
        return rows

    def _restore_reported(self, recent: Mapping[str, Any] | None) -> None:
        """The feedback counted before a restart: the minutes' rows, and ``recent``, what the
        figures' row holds that the rows may lack (written again with the next save)."""
        minute = int(self.clock() // 60)
        self._reported_dropped_before = minute - self._reported_minutes()
        entries = []
        for m in range(self._reported_dropped_before, minute + 1):
            row = self.store.load(self._reported_key(m))
            if row:
                entries.extend(zip((int(k, 16) for k in row["keys"]), row["t_s"]))
        recent_entries = list(zip((int(k, 16) for k in (recent or {}).get("keys", [])), (recent or {}).get("t_s", [])))
        self.feedback.restore_reported(entries + recent_entries)
        self._keys_written_s = min((t_s for _, t_s in recent_entries), default=self.clock())

    def _restore_gate_step(self, saved: Mapping[str, Any] | None) -> None:
        """The current step's gate window, as the last save left it. Without it (a step
        that began after the save, a save of an older release, a row that cannot be read) the
        step's gates start from the reports after the restart, as they used to: they wait
        longer for evidence, and its alpha spent carries on, so no verdict is looser. Reports
        of the step before that routers send again are kept out of the current step's window,
        as any report whose requests were all routed by other weights is (:meth:`_routed_by_now`)."""
        if not saved or self.rollout is None:
            return
        try:
            if not isinstance(saved, Mapping):
                raise ValueError(f"the saved gate window is a {type(saved).__name__}")
            taken = self.gate_windows.restore_step(saved, self.rollout.window_since_s)
        except Exception as err:  # noqa: BLE001 - a damaged row must not keep the controller down
            logger.warning("serve-ab controller could not read the saved gate window of %s (%s); "
                           "the step's gates start from the next reports", self.key, err)
            return
        if taken:
            self._window_restored = True
            logger.info("serve-ab controller resumed the gate window of %s, %s",
                        self.key, self.rollout.where_text())

    def _restore_last_look(self, saved: Any) -> None:
        """The gates' last look, as the last save left it, for status to show until the next
        one: only the current step's (a look of an earlier step judged other weights), and
        nothing from a row that cannot be read. Display only; no verdict reads it."""
        if self.rollout is None or not isinstance(saved, Mapping):
            return
        gates, window = saved.get("gates"), saved.get("window")
        if saved.get("since_s") != self.rollout.window_since_s \
                or not isinstance(gates, list) or not all(isinstance(g, Mapping) for g in gates) \
                or not isinstance(window, Mapping):
            return
        self.last_analysis = [dict(g) for g in gates]
        self.last_window = dict(window)
        self._last_look_since_s = saved["since_s"]

    def _run_key(self) -> str:
        return f"run:{self.cfg.model}"

    def _run_identity(self) -> tuple[str, float]:
        """The run this controller continues: the same config as the saved run is the same
        run (a restarted controller), any change to it starts a new one.

        Configs are compared by what they set apart from the defaults, so a field that a
        later serve-ab adds with a default does not start a new run on upgrade (nor does a
        changed default: the file is the same). A run saved by a release that compared the
        whole config, defaults included, is read back through today's schema and compared
        the same way; its saved fingerprint is left as it was, so that a rollback to that
        release still continues it."""
        fingerprint = config_fingerprint(self.cfg)
        key = self._run_key()
        saved = self.store.load(key)
        if saved is not None and _same_config(saved.get("fingerprint"), fingerprint):
            self.kept_rows[key] = saved
            # A run restarted before it dropped the run it replaced (a minute after its start)
            # drops it still: the run row names it (after the drop, nothing is left to find).
            self._previous_run_id = _other_run_id(saved.get("replaces"), saved["run_id"])
            return saved["run_id"], saved["started_at_s"]
        started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.started_at_s))
        run_id = f"{self.cfg.model}-{started}-{config_digest(self.cfg)}"
        row = {"run_id": run_id, "started_at_s": self.started_at_s, "fingerprint": fingerprint}
        self._previous_run_id = _other_run_id(saved.get("run_id") if saved is not None else None, run_id)
        if self._previous_run_id is not None:
            row["replaces"] = self._previous_run_id
        self.store.save(key, row)
        self.kept_rows[key] = row
        return run_id, self.started_at_s

    # -- inputs ------------------------------------------------------------------------------

    def receive(self, report: IntervalReport) -> tuple[ReportAnswer | None, bool]:
        """A router's report, merged unless this controller has it already: the answer, and
        whether the versions some router could not load changed (:meth:`record`).

        A report that names an earlier controller (``controller_seen``) is not merged: this
        controller started since, from its last save, and answers ``restarted`` with the
        router's last report it has; the router sends the rest again, in order, this one with
        them (serving/core/ledger.py). A router of an older release (reports not numbered)
        gets None, as before: it has no ReportAnswer class to read one with, and would take
        the answer for a failure and send the report again inside the next one."""
        if report.config is not None and report.config != self.config_digest:
            return self._other_config(report), False
        if report.seq and report.controller_seen is not None and report.controller_seen != self.name:
            return self.numbers.answer(self.name, report.router, restarted=True), False
        changed = self.record(report) if self.numbers.is_new(report) else False
        self.catch_up.received(report, self.name)
        return (self.numbers.answer(self.name, report.router) if report.seq else None), changed

    def _other_config(self, report: IntervalReport) -> ReportAnswer:
        """A report of a router that serves another config: the old replica of a redeploy that
        changed it, still serving while this controller (the new config's, with a new run)
        started (or a new replica that met the previous controller before Serve stopped it).
        An old replica's figures belong to the previous run, whose controller saved what it
        merged when it stopped; merged here, the router would send again all it kept for that
        controller, and the run would count requests of another config (a version it does not
        serve, other weights). So nothing of it is merged, and the answer tells the router to
        keep it for a controller of its own config (``ReportAnswer.other_config``)."""
        if report.router not in self._other_config_routers:
            self._other_config_routers.add(report.router)
            logger.info("serve-ab controller: router replica %s serves another config (a redeploy's, old or new); "
                        "its reports are not merged into run %s", report.router, self.run_id)
        return dataclasses.replace(self.numbers.answer(self.name, report.router), other_config=True)

    def record(self, report: IntervalReport) -> bool:
        """A router's interval: merged into the run's figures and the gates' windows.

        Its cost depends on versions, splits and the buckets the interval touched, not on how
        many requests it covers. Stamped with this controller's clock on receipt: the
        router's clock is another machine's. Mirrored copies feed the candidate's gate
        windows, not its A/B figures; pinned requests enter no gate window. True when the
        versions some router could not load changed (the weights change with them).
        """
        now = self.clock()
        aggregate = report.aggregate
        failed_changed = self.reports.received(report, now)
        if self.rollout is not None and self._routed_by_now(aggregate):  # only a rollout's gates read windows
            agreements = {version: shadow.agreement_groups for version, shadow in aggregate.shadow.items()}
            # A version this router could not load was never called: its 'unavailable' answers
            # there say nothing of how it serves. Counted, a stable one router could not load
            # (it keeps its share, weights()) erred half its requests with two routers, and a
            # candidate at 10x its error rate passed an error_rate ratio gate of 1.5 (0.39x).
            gates = {version: gate for version, gate in aggregate.gates.items()
                     if version not in report.failed_versions}
            self.gate_windows.begin_step(self.rollout.window_since_s)
            self.gate_windows.add(now, gates, agreements)
        self.stats.merge(now, aggregate)
        # Only when feedback comes without tokens: it is joined by the ids of assigned
        # answers (intention to treat: the version the split chose).
        for request_id, version, unit, split in aggregate.feedback_ids:
            self.feedback.remember(request_id, version, now, unit=unit, split=split)
        # Feedback that waited long enough for its request counts as unjoined now, not only
        # when more feedback comes (reports come every interval, feedback maybe never again).
        self.feedback.expire(now)
        if failed_changed:
            # Routers learn of it with the next epoch: a failed version gets no traffic.
            self.epoch += 1
        return failed_changed

    def _routed_by_now(self, aggregate: IntervalAggregate) -> bool:
        """Whether a report is evidence for the weights routed now: not when each of its
        assigned requests was routed by other weights. Such a report is the step before's,
        which a router sends as soon as it applies new weights, or a router's that has not
        heard of them yet; filed by arrival, it counted in the new step's window, unless it
        came within the step's first second before its first look. A report of mirrored
        copies only, or of a router too old to name its splits, is filed by arrival."""
        if not aggregate.splits:
            return True
        now = self.weights()
        return any(_same_weights(split.weights_pct, now) for split in aggregate.splits.values())

    def answer_of_earlier_run(self, answered_after_s: float | None) -> NotCounted | None:
        """Feedback on an answer given before this run started (its token says when) belongs
        to the run that served it, not to this one: counted in neither the figures nor the
        per-split analysis (the token's epoch is that run's numbering, which this run starts
        from 0 again), only in ``feedback_previous_run``. A restarted controller keeps its
        run's start (the run row), so feedback on its own earlier answers still counts."""
        if answered_after_s is None or answered_after_s >= self.run_started_at_s - RUN_START_SLACK_S:
            return None
        self.stats.count_previous_run()
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.run_started_at_s))
        return NotCounted(f"the answer was given before run {self.run_id} started ({started}; a changed config "
                          "starts a new run): its feedback belongs to the run that served it, and is not counted "
                          "in this one")

    def _feedback_joined(self, version: str, name: str, value: float | None,
                         converted: bool | None, t_s: float, unit: int | None = None, split: int = -1) -> None:
        weights = self._split_weights(split)
        self.stats.record_feedback(t_s, version, name, value, converted, unit, weights)
        # Feedback on an answer routed by other weights (the step before's, sent after the
        # change) is no evidence for the weights now, as its request was not (_routed_by_now);
        # an epoch this controller never published (a router's before a restart) counts by time.
        if self.rollout is not None and (weights is None or _same_weights(weights, self.weights())):
            self.gate_windows.begin_step(self.rollout.window_since_s)
            self.gate_windows.add_feedback(t_s, version, name, value, converted, unit)

    def _split_weights(self, epoch: int) -> dict[str, float] | None:
        """The weights routers routed by at ``epoch``; None (the weights now) for an epoch this
        controller never published (a router that followed the controller before a restart)."""
        return self._epoch_weights.get(epoch)

    # -- the loop ----------------------------------------------------------------------------

    def tick(self, promql: Mapping[str, PromQLResult] | None = None,
             webhooks: WebhookAnswers | None = None) -> bool:
        """One look at timers and windows; True when the weights or phase changed.

        ``promql``: the latest answers of the rollout's promql gates, by gate name;
        ``webhooks``: of its webhook gates and confirm steps, each apart (:class:`WebhookPoller`). Raises
        :class:`StoreUnavailable` when the decision could not be saved; then nothing was
        applied, and the next tick decides again.
        """
        moved = self._weights_moved()
        if self.rollout is None:
            return moved
        if not self._window_restored:
            return self._tick(promql, webhooks) or moved
        last_analysis = self.last_analysis
        try:
            changed = self._tick(promql, webhooks)
        except StoreUnavailable:
            raise
        except Exception:
            # A look the restored window broke (a damaged save that read back as figures):
            # the step's gates start afresh rather than fail at every tick from now on.
            logger.warning("serve-ab controller dropped the gate window it resumed for %s: a look at it "
                           "failed; the step's gates start from the next reports", self.key, exc_info=True)
            self.gate_windows = GateWindows(keep_s=self.gate_windows.keep_s)
            self._window_restored = False
            raise
        if self.last_analysis is not last_analysis:  # a look read it: from now on it is this controller's own
            self._window_restored = False
        return changed or moved

    def _weights_moved(self) -> bool:
        """Start a new routing epoch where the weights routed now are not the ones the current
        epoch published; whether it did. They move with no decision and no report when a router
        that could not load a version falls silent (crashed, its node lost): its failure stops
        counting after ``STALE_S`` and the version's share comes back. The epoch stayed, so
        routers heard of it only when their long poll timed out, under that same epoch, whose
        published weights were overwritten: feedback on its answers routed by the old weights
        was filed under the new ones, into the gates' window too."""
        published = self._epoch_weights.get(self.epoch)
        if published is None or published == self.weights():
            return False
        self.epoch += 1
        return True

    def _tick(self, promql: Mapping[str, PromQLResult] | None,
              webhooks: WebhookAnswers | None) -> bool:
        now = self.clock()
        before = (self.rollout.phase, dict(self.rollout.weights), self.retired)
        # An analysis reads the whole current step (its weights, paused or not), up to window_s
        # back when set: evidence accumulates while a step is held, and every look is valid as
        # the gates spend alpha over the step's looks.
        step_since_s = self.rollout.window_since_s
        start_s = max(step_since_s, now - self._window_s())
        versions = [self.cfg.rollout.stable, self.cfg.rollout.candidate]
        window = self.gate_windows.window(start_s, step=start_s == step_since_s)
        windows = window_stats(window.gates, versions=versions, agreements=window.agreements,
                               values=window.values, outcomes=window.outcomes)
        candidate = self.cfg.rollout.candidate
        webhooks = webhooks or WebhookAnswers()
        windows[candidate] = dataclasses.replace(windows[candidate], promql=promql or {}, webhooks=webhooks.gates)
        saved = self.rollout.to_dict()
        draft = Rollout.from_dict(self.cfg.rollout, saved, self.clock)
        failed = self.reports.failed_versions(now).get(candidate)
        if failed is not None and not draft.done:
            draft.abort(reason=f"candidate {candidate} {failed}")  # e.g. "failed to load: ValueError: ..."
        decision = draft.tick(windows, confirm=webhooks.confirm(draft.state.step_index))
        if draft.to_dict() != saved:  # timers and verdicts count too: a restart resumes them
            # The revision (actions' If-Match) moves with what the rollout decided, each of which
            # writes history, not with every analysis's bookkeeping: else it moved every
            # interval_s, and an operator's --revision from a status read was stale by the time
            # it was typed.
            decided = bool(draft.new_history()) or draft.state.weights != self.rollout.state.weights
            self._commit(draft, changed=decided)
        if decision.analysis:
            self.last_analysis = [g.to_dict() for g in decision.analysis]
            self._last_look_since_s = step_since_s
            self.last_window = {"since_s": start_s,
                                "requests": {v: windows[v].request_count for v in versions},
                                "errors": {v: windows[v].error_count for v in versions}}
        self.retired = decision.retire
        changed = before != (self.rollout.phase, dict(self.rollout.weights), self.retired)
        if changed:
            self.epoch += 1
            logger.info("serve-ab rollout %s: %s, weights %s", self.key, decision.reason, decision.weights)
        return changed

    def _window_s(self) -> float:
        analysis = self.cfg.rollout.analysis
        return math.inf if analysis.window_s is None else max(analysis.window_s, analysis.interval_s)

    def act(self, action: Action, body: ActionRequest = ActionRequest(), actor: Actor | None = None) -> bool:
        """A control action; whether it changed anything (an abort of an aborted rollout does
        not). Raises ActionRefused (RolloutError) when the phase or a precondition
        (``from_step``, ``revision``) does not allow it, InvalidInput when its body does not fit
        it, StoreUnavailable when it could not be saved (nothing changed)."""
        if self.rollout is None:
            raise RolloutError("this experiment has no rollout: add rollout: to its config")
        if not isinstance(action, Action):
            raise UnknownAction(f"unknown action {action!r}; valid: {[a.value for a in Action]}")
        draft = self.rollout.copy()
        draft.require(from_step=body.from_step, revision=body.revision)
        # A field another action takes is refused, not ignored: {"weights": ..., "full": true}
        # would otherwise set weights and say nothing of the promotion its sender meant.
        foreign = sorted(body.model_fields_set & (_ACTION_ONLY_FIELDS.keys() - {_FIELD_OF.get(action)}))
        if foreign:
            raise InvalidInput(f"{action.value} takes no {foreign[0]!r} ({foreign[0]} is for "
                               f"{_ACTION_ONLY_FIELDS[foreign[0]].value}); send it with that action")
        by = dataclasses.asdict(actor) if actor is not None else None
        reason = {"reason": body.reason} if body.reason else {}
        if action is Action.PROMOTE:
            decision = draft.promote(full=body.full, actor=by, **reason)
        elif action is Action.PAUSE:
            decision = draft.pause(actor=by, **reason)
        elif action is Action.RESUME:
            decision = draft.resume(actor=by, **reason)
        elif action is Action.ABORT:
            decision = draft.abort(actor=by, **reason)
        elif action is Action.ROLLBACK:
            decision = draft.rollback(actor=by, **reason)
        else:  # Action.WEIGHTS
            if body.weights is None:
                raise InvalidInput('set weights with a body like {"weights": {"v1": 80, "v2": 20}}')
            try:
                decision = draft.set_weights(body.weights, actor=by, **reason)
            except ValueError as err:  # weights that do not fit the experiment
                raise InvalidInput(str(err)) from None
        # A request that changed nothing is saved for its history entry, under the same
        # revision: it must not fail another operator's revision-guarded action with a 409.
        self._commit(draft, changed=decision.changed)
        if decision.changed:
            self.epoch += 1
        return decision.changed

    def report_validation(self, passed: bool, reason: str) -> None:
        """Blue-green: the outcome of green's validation; passing may switch at once, so it
        is saved first and pushed with a new epoch like any other decision."""
        draft = self.rollout.copy()
        draft.report_validation(passed, reason)
        self._commit(draft)
        self.epoch += 1

    def _commit(self, draft: Rollout, changed: bool = True) -> None:
        """Save ``draft`` with the next revision (the same one where it ``changed`` nothing an
        operator acts on: an action's no-op, an analysis that decided nothing), then make it
        the rollout; a failed save raises StoreUnavailable and leaves the rollout as it was."""
        draft.state.revision = self.rollout.state.revision + (1 if changed else 0)
        try:
            with self._rollout_row_lock:
                self.store.save(self.key, draft.to_dict())
        except Exception as err:  # sqlite, a full disk, a shared store's network: all "try again"
            self.note_save_failed(err)
            raise StoreUnavailable(
                f"the rollout's state could not be saved ({type(err).__name__}: {err}); nothing was "
                f"changed (still {self.rollout.where_text()}); try again"
            ) from None
        self._saves_work()
        self.rollout = draft
        self._announce(draft)

    def note_save_failed(self, err: BaseException) -> None:
        """A save was refused. Said once in the log, when saves start failing and when they
        first fail another way (a connection refused, then a timeout): a tick every ``tick_s``
        and the figures every few seconds each fail alike while the store is down, and a line
        for each buried the one that said what happened (eight a second, or a traceback every
        5 s). A store flapping between two errors is said twice, not at every switch."""
        failing = self.saves_failing
        kind = type(err).__name__
        if failing is None or kind not in failing.kinds:
            store = describe_store(self.cfg.controller)
            what = f"{self.key}'s decisions and the figures" if self.key is not None else "the figures"
            logger.warning("serve-ab controller: %s cannot save to %s (%s: %s); %s wait until a save "
                           "works (status: not_saved), the routers serve the last weights and keep their "
                           "reports meanwhile", self.cfg.model, store, type(err).__name__, err, what,
                           exc_info=None if store_unreachable(err) else err)
        since_s, kinds = (failing.since_s, failing.kinds) if failing is not None else (self.clock(), frozenset())
        self.saves_failing = SavesFailing(since_s, f"{kind}: {err}", kinds | {kind})

    def _saves_work(self) -> None:
        """A save went through: the end of a failing spell, if one was said."""
        failing, self.saves_failing = self.saves_failing, None
        if failing is not None:
            logger.warning("serve-ab controller: %s saves to %s again, after %.0fs of failing", self.cfg.model,
                           describe_store(self.cfg.controller), self.clock() - failing.since_s)

    def _not_saved(self, now_s: float) -> NotSaved | None:
        failing = self.saves_failing
        return None if failing is None else NotSaved(since_s=failing.since_s, for_s=now_s - failing.since_s,
                                                     error=failing.error)

    def _announce(self, saved: Rollout) -> None:
        """Notify the history entries a saved decision wrote; never raises, never blocks."""
        if self.notifier is None:
            return
        try:
            r, s = self.cfg.rollout, saved.state
            entries = saved.new_history()
            self.notifier.publish(events_from_history(
                entries, model=self.cfg.model, rollout=self.key, strategy=r.strategy.value,
                stable=r.stable, candidate=r.candidate, revision=s.revision, weights_pct=s.weights, app=self.app,
                first_seq=s.entries_total - len(entries) + 1))
        except Exception:  # notifications must never stop a decision
            logger.exception("serve-ab rollout %s: notifications not queued", self.key)

    def validation_timeout_s(self) -> float:
        """How long green's validation may take: what is left of the progress deadline,
        less two ticks so its own failure, not the deadline, ends the rollout."""
        r = self.cfg.rollout
        deadline_s = r.analysis.progress_deadline_s
        held_since_s = self.rollout.state.held_since_s
        if deadline_s is None or held_since_s is None:
            return VALIDATION_TIMEOUT_S
        left_s = held_since_s + deadline_s - self.clock() - 2 * self.cfg.controller.tick_s
        return max(left_s, 0.001)

    async def validate_green(self, predict, interface, timeout_s: float) -> tuple[bool, str]:
        """Green's synthetic request set before it gets any traffic
        (:func:`serve_ab.rollout.validation.validate_green`)."""
        return await validate_green(self.cfg, predict, interface, timeout_s)

    # -- outputs -----------------------------------------------------------------------------

    def weights(self) -> dict[str, float]:
        """The weights of every version now, in listing order. A version some router could not
        load gets none: its share goes to the rollout's stable, or else the first version listed
        that loaded (the control). A rollout's stable keeps its own: moved, it went to the
        candidate, 100% of every router's traffic on a version still being tried (an aborted
        one too) because one router could not load the stable. Kept, the routers that loaded it
        serve it, and one that did not serves its share by its fallback, request by request.
        So does a promoted candidate: the stable now."""
        weights = {v.name: 0.0 for v in self.cfg.versions}
        weights.update(self.rollout.weights if self.rollout is not None else self.cfg.weights_pct())
        failed = self.reports.failed_versions(self.clock())
        if self.cfg.rollout is not None:
            # Promoted, the candidate is the one serving: moved to the config's stable, its share
            # rolled every router back to it unasked (status: promoted), and after the retire
            # every replica started since, while those that had unloaded it refused the routing.
            kept = {self.cfg.rollout.stable}
            if self.rollout is not None and self.rollout.phase is Phase.PROMOTED:
                kept.add(self.cfg.rollout.candidate)
            failed = {name: why for name, why in failed.items() if name not in kept}
        healthy = [name for name in weights if name not in failed]
        if self.cfg.rollout is not None and self.cfg.rollout.stable in healthy:
            healthy.insert(0, self.cfg.rollout.stable)
        if failed and healthy:
            for name in failed:
                if name in weights:
                    weights[healthy[0]] += weights[name]
                    weights[name] = 0.0
        return weights

    def snapshot(self) -> RoutingSnapshot:
        """What routers need: the weights of every version, what may be unloaded, and which
        versions get copies of live requests."""
        self._weights_moved()  # each epoch one routing: a poll that timed out gets the new weights' epoch
        weights = self.weights()
        if self._epoch_weights.get(self.epoch) != weights:
            self._epoch_weights[self.epoch] = weights
            while len(self._epoch_weights) > MAX_EPOCHS_REMEMBERED:
                self._epoch_weights.pop(next(iter(self._epoch_weights)))
            self.stats.set_weights(weights, self.clock())
        return RoutingSnapshot(self.epoch, weights, tuple(self.retired), tuple(self.mirrors()))

    def mirrors(self) -> list[Mirror]:
        """Versions that get copies of live requests, and what share: the configured shadow,
        and a blue-green green validating on live traffic."""
        mirrors = []
        if self.cfg.shadow is not None:
            mirrors.append(Mirror(self.cfg.shadow.version, self.cfg.shadow.percent))
        r = self.cfg.rollout
        if r is not None and r.strategy is Strategy.BLUE_GREEN:
            settings = r.blue_green_settings
            # An operator's pause stops timers, not evidence: green is still mirrored to then.
            phase = self.rollout.state.resume_phase if self.rollout.phase is Phase.PAUSED else self.rollout.phase
            if (settings.validation_min_samples is not None
                    and phase in (Phase.VALIDATING, Phase.VALIDATED)
                    and r.candidate != (self.cfg.shadow.version if self.cfg.shadow else None)):
                mirrors.append(Mirror(r.candidate, settings.validation_mirror_pct))
        return mirrors

    def metrics(self, app: str) -> tuple[bytes, str]:
        """The Prometheus exposition of the figures: (body, content type). Raises
        ControllerUnavailable (a 503) while a restarted controller waits for its routers to
        send what its last save lacks (:class:`RestartCatchUp`): a failed scrape leaves a gap,
        where counters lower than the last scrape's would be taken for a reset."""
        from serve_ab.serving.metrics import render

        holding = self.catch_up.holding(self.clock())
        if holding is not None:
            raise ControllerUnavailable(holding)
        return render(self.cfg, self.stats_snapshot(samples=False), self.status(), app)

    def stats_snapshot(self, samples: bool = True) -> dict[str, Any]:
        return self.stats.snapshot(self.clock(), samples=samples)

    def status(self, history: bool = False) -> RolloutStatus:
        now = self.clock()
        common = {"model": self.cfg.model, "weights_pct": self.weights(),
                  "shadow": self.cfg.shadow.model_dump() if self.cfg.shadow else None,
                  "run_id": self.run_id, "controller": ControllerInfo(started_at_s=self.started_at_s),
                  "routers": self.reports.seen(now), "failed_versions": self.reports.failed_versions(now),
                  "not_saved": self._not_saved(now)}
        if self.rollout is None:
            return RolloutStatus(strategy=None, phase="static", **common)
        r = self.cfg.rollout
        s = self.rollout.state
        steps = list(r.steps)
        step_text = None
        next_step_in_s = None
        if r.strategy is Strategy.CANARY and s.step_index < len(steps):
            step_text = self.rollout.step_text()
            step = steps[s.step_index]
            # Not while held past its end for a passing analysis: then no time is known.
            if isinstance(step, PauseStep) and step.pause.duration is not None \
                    and self.rollout.phase is Phase.PROGRESSING and s.held_since_s is None:
                next_step_in_s = max(0.0, s.step_started_at_s + step.pause.duration - now)
        # The gates' last look, while the rollout runs, only if it read the current weights:
        # after a step or the switch it judged others (a pass at 5% is not one at 20%; a
        # validation's mirrored look is not the watch's), until the next look. Once ended, the
        # last look stays: it is the one that decided (after a restart, _restore_last_look).
        looked_now = self.rollout.done or self._last_look_since_s == self.rollout.window_since_s
        # last_analysis, last_window and the history are kept as the plain data the store
        # saves; the models read them as they would the JSON.
        return RolloutStatus(
            strategy=r.strategy.value, stable=r.stable, candidate=r.candidate,
            phase=self.rollout.phase.value, revision=s.revision,
            step_index=s.step_index, steps_total=len(steps), step=step_text,
            reason=self.rollout.status_line(), next_step_in_s=next_step_in_s,
            failures_total=s.failures_total, failure_limit=r.analysis.failure_limit,
            gates=self.last_analysis if looked_now else [],
            window=self.last_window if looked_now else None,
            retired=list(self.retired),
            notifications=self.notifier.counts() if self.notifier is not None else {},
            history=list(s.history) if history else None,
            **common,
        )


@dataclass(frozen=True)
class SavesFailing:
    """The store refuses the controller's saves: since when (the first refused, by the
    controller's clock) and the last refusal's error."""

    since_s: float
    error: str
    kinds: frozenset[str] = frozenset()  # the error classes said in the log this spell


def _build_report(*args: Any) -> tuple[Report, dict[str, Any]]:
    # scipy and statsmodels load on first use, here in the worker thread: imported on the
    # event loop they held long polls, reports and actions for 1-4 s on a busy 2-core
    # machine (a rollback acknowledged 3.6 s late in bench_propagation).
    from serve_ab.analysis.report import build_report

    return build_report(*args)


def _load_statistics() -> None:
    """The report's statistics, imported off the event loop as the controller starts, so
    neither its first report nor a drift gate's first look waits for the import."""
    import serve_ab.analysis.report  # noqa: F401


@serve.deployment(name=CONTROLLER_DEPLOYMENT, num_replicas=1, max_ongoing_requests=1000)
class ExperimentController:
    async def __init__(self, experiment: dict[str, Any]):
        cfg = parse_experiment(experiment)
        drop_routine_calls(logger, ROUTINE_CALLS)
        store = open_store(cfg.controller)
        # Before anything of the model's is read or written: no other running app may hold it.
        self._claimant = this_app()
        # Why this controller does not hold the model's claim now (None: it does). Meanwhile it
        # writes nothing to the store: a newer replica of this app, or another app, does.
        self._not_holding: str | None = None
        self._claim_lost: str | None = None  # another app holds it: the health check fails
        # A store that cannot be reached now (Redis down or restarting) is waited for, not
        # failed on: Serve gives up on a replica whose constructor raised three times, and the
        # app would then never pick its state up again. Routers serve meanwhile, from the
        # config's weights (a rollout starts at 100% stable).
        wait_s = STORE_RETRY_FIRST_S
        while True:
            try:
                await hold_claim(store, claim_key(cfg), self._claimant, model=cfg.model,
                                 store_name=describe_store(cfg.controller), clock=time.time, sleep=asyncio.sleep,
                                 app_running=lambda name: asyncio.to_thread(app_running, name))
                self.core = ControllerCore(cfg, store, app=self._claimant.app)
                self._feedback_key = feedback_key(cfg, store)
                if not os.environ.get(cfg.feedback.key_env):  # else the store holds no key
                    self.core.keep_row(feedback_key_row(cfg), {"key_hex": self._feedback_key.hex()}, owned=True)
                break
            except Exception as err:
                if not store_unreachable(err):
                    raise
                logger.warning("serve-ab controller: cannot reach %s (%s: %s); trying again in %gs, and "
                               "starting once it answers", describe_store(cfg.controller), type(err).__name__,
                               err, wait_s)
                await asyncio.sleep(wait_s)
                wait_s = min(2 * wait_s, STORE_RETRY_MAX_S)
        self._changed = asyncio.Event()
        self._report: Report | None = None
        self._report_lock = asyncio.Lock()
        self._recorder = None
        # Asks Prometheus for the promql gates in the background; a slow one never delays a tick.
        self._promql = PromQLPoller(cfg.rollout, cfg.model, self._claimant.app) if cfg.rollout is not None else None
        # Likewise for webhook gates and confirm steps.
        self._webhooks = WebhookPoller(cfg.rollout, cfg.model) if cfg.rollout is not None else None
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(asyncio.to_thread(_load_statistics)),
                       loop.create_task(self._run()), loop.create_task(self._analyse()),
                       loop.create_task(self._keep_claim())]

    async def _run(self) -> None:
        validation: asyncio.Task | None = None  # runs once per controller
        outcome: tuple[bool, str] | None = None  # validation's result, until it is saved
        reported = False
        while True:
            if self._not_holding is not None:  # another replica or app decides now
                await asyncio.sleep(self.core.cfg.controller.tick_s)
                continue
            try:
                rollout = self.core.rollout
                if rollout is not None and rollout.phase is Phase.VALIDATING and validation is None:
                    # A task, so ticks (mirror gates, the deadline) go on while green answers.
                    validation = asyncio.get_running_loop().create_task(self._validate_green())
                if validation is not None and validation.done() and outcome is None and not reported:
                    try:
                        outcome = validation.result()
                    except Exception as err:  # e.g. an unreadable validation_samples file
                        logger.warning("serve-ab controller: validation could not run", exc_info=err)
                        outcome = False, f"validation could not run: {type(err).__name__} (see the controller's log)"
                if outcome is not None:
                    try:
                        self.core.report_validation(*outcome)  # StoreUnavailable: kept, sent next tick
                        self._notify()
                    except RolloutError as err:  # the deadline or an operator ended validation first
                        logger.info("serve-ab controller: validation outcome not used: %s", err)
                    outcome, reported = None, True
                promql = None
                if self._promql is not None and rollout is not None:
                    promql = self._promql.poll(self.core.clock(), active=not rollout.done)
                webhooks = None
                if self._webhooks is not None and rollout is not None:
                    webhooks = self._webhooks.poll(self.core.clock(), rollout)
                if self.core.tick(promql, webhooks):
                    self._notify()
            except StoreUnavailable:  # nothing was applied; the next tick decides again (logged once)
                pass
            except Exception:  # a bad tick must not stop the rollout's clock
                logger.exception("serve-ab controller tick failed")
            await asyncio.sleep(self.core.cfg.controller.tick_s)

    async def _analyse(self) -> None:
        """Refresh the report (one look of the sequential tests) and keep the run record: at
        the first traffic, at every rollout phase change, every ``records.interval_s``, and at
        the stop (:meth:`__del__`). A run shorter than the interval is never lost."""
        records = self.core.cfg.analysis.records
        last_record_s = 0.0
        recorded: tuple[bool, str | None] = (False, None)  # (had traffic, phase) at the last record
        failing = FailingSpell()  # the report's refresh or the record's save, failing round after round
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            if self._not_holding is not None:
                continue
            try:
                if await asyncio.to_thread(self.core.figures_due):
                    # Taken here, on the loop that also records; written to the store off it.
                    await asyncio.to_thread(self._save_if_holding, self.core.checkpoint())
            except Exception as err:  # said once, not every round (the routers keep what it lacks)
                self.core.note_save_failed(err)
                continue
            try:
                report = await self._refresh_report()
                now_s = time.time()
                state = (self._requests() > 0, self._phase())
                if state != recorded or now_s - last_record_s >= records.interval_s:
                    await asyncio.to_thread(self._save_record, report, now_s)
                    # Only once saved: a record that failed is tried again next round.
                    last_record_s, recorded = now_s, state
            except Exception as err:  # the report must never take the controller down
                if failing.failed(type(err).__name__):
                    if store_unreachable(err):  # a line, not a traceback: it says all there is
                        logger.warning("serve-ab controller: run record not saved, %s unreachable (%s: %s)",
                                       describe_store(self.core.cfg.controller), type(err).__name__, err)
                    else:
                        logger.exception("serve-ab controller: report refresh or run record failed")
            else:
                if failing.worked():
                    logger.warning("serve-ab controller: report and run record work again")

    async def _keep_claim(self) -> None:
        """Write the claim every HEARTBEAT_S, so that it never lapses while this controller runs.
        While a newer replica of this app or another app holds it, write nothing to the store
        (and, for another app, fail the health check); take it again once it is free."""
        cfg = self.core.cfg
        key, store_name = claim_key(cfg), describe_store(cfg.controller)
        failing = FailingSpell()  # the claim's writes, failing while the store is away
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                found, line = await asyncio.to_thread(renew_claim, self.core.store, key, self._claimant, time.time(),
                                                      model=cfg.model, store_name=store_name)
            except Exception as err:  # the store is away: the next write renews it
                if failing.failed(type(err).__name__):  # once, as the saves' failures are
                    logger.warning("serve-ab controller: the claim on %s could not be written (%s: %s); "
                                   "writing it again every %gs", key, type(err).__name__, err, HEARTBEAT_S)
                continue
            if failing.worked():
                logger.warning("serve-ab controller: the claim on %s is written again", key)
            if found is Renewal.KEPT:
                if self._not_holding is not None:
                    logger.warning("serve-ab controller: holds the claim on %s again; deciding and saving again",
                                   key)
                self._not_holding = self._claim_lost = None
                continue
            self.core.forget_stored()  # the holder saves meanwhile: if this one holds again, it writes all
            if line != self._not_holding:
                log = logger.info if found is Renewal.SUPERSEDED else logger.error
                log("serve-ab controller: %s; this controller saves nothing until it holds the claim again", line)
            self._not_holding = line
            self._claim_lost = line if found is Renewal.TAKEN else None

    def _save_if_holding(self, checkpoint: Checkpoint) -> bool:
        """Save the run's figures unless another replica took the claim since the last
        heartbeat (a redeploy's new controller, which read the figures when it started): its
        saves are the run's now. Saved anyway, this replica's would be overwritten by the
        next of those, and the routers would have dropped, as saved, reports that only this
        replica merged. Not saved, they send them to the new one."""
        held = Held.read(self.core.store.load(claim_key(self.core.cfg)))
        if held is not None and (held.owner, held.replica) != (self._claimant.owner, self._claimant.replica):
            logger.info("serve-ab controller: replica %s of app %s holds the claim now; not saving the figures",
                        held.replica, held.app)
            self.core.forget_stored()  # the holder's saves are the store's rows now
            return False
        self.core.save_stats(checkpoint)
        return True

    def check_health(self) -> None:
        """Ray Serve's health check: failing while another app holds this model's state."""
        if self._claim_lost is not None:
            raise RuntimeError(self._claim_lost)

    def _requests(self) -> int:
        return sum(v.requests for v in self.core.stats.versions.values())

    def _phase(self) -> str | None:
        return self.core.rollout.phase.value if self.core.rollout is not None else None

    async def __del__(self) -> None:
        """The stop: the last figures go into the run record and its MLflow run is ended.

        Ray Serve calls this when the replica shuts down (Ctrl-C of ``serve run``, a delete or
        a redeploy), after in-flight calls drained and within ``graceful_shutdown_timeout_s``.
        """
        for task in getattr(self, "_tasks", ()):
            task.cancel()
        core = getattr(self, "core", None)
        if core is None:  # refused or failed in __init__: nothing of the model's was written
            return
        if self._not_holding is not None:  # the holder writes the model's state and records
            logger.info("serve-ab controller: stopping without a final record: %s", self._not_holding)
            return
        # The figures merged since the last save (up to REPORT_INTERVAL_S of them), while this
        # replica still holds the claim: the routers that would send them again stop too.
        try:
            await asyncio.to_thread(self._save_if_holding, core.checkpoint())
        except Exception:
            logger.warning("serve-ab controller: the last figures could not be saved", exc_info=True)
        # First, so that a slow record or notifier cannot use up the shutdown time before it:
        # the final record is this run's own and no other app writes it.
        try:
            await asyncio.to_thread(core.store.release, claim_key(core.cfg), self._claimant.owner,
                                    self._claimant.replica)
        except Exception:
            logger.warning("serve-ab controller: the claim on %s could not be released; it lapses "
                           "by itself", claim_key(core.cfg), exc_info=True)
        if core.notifier is not None:  # the last events (an abort) go out first
            await asyncio.to_thread(core.notifier.close, 2.0)
        try:
            report = await self._refresh_report()
            await asyncio.to_thread(self._save_record, report, time.time(), True)
        except Exception:
            logger.exception("serve-ab controller: the final run record could not be written")

    async def _refresh_report(self) -> Report:
        async with self._report_lock:
            snapshot = self.core.stats_snapshot(samples=True)
            weights = self.core.weights()
            # The statistics take tens of milliseconds: off the loop that answers long polls.
            report, self.core.sequential_state = await asyncio.to_thread(
                _build_report, self.core.cfg, snapshot, weights, self.core.sequential_state, self.core.run_id)
            self._report = report
            return report

    def _save_record(self, report: Report, now_s: float, final: bool = False) -> None:
        if self._recorder is None:  # where the store is: Redis records a run that outlives a node
            self._recorder = open_recorder(self.core.cfg)
        self._recorder.save(self.core.run_id, self.core.cfg.model_dump(mode="json"),
                            report.model_dump(mode="json"), started_at_s=self.core.run_started_at_s,
                            updated_at_s=now_s, summary=report.run_summary(app=self._claimant.app),
                            metrics=report.headline_metrics(),
                            final=final)
        if final:
            self._recorder.finish(self.core.run_id)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _validate_green(self) -> tuple[bool, str]:
        """Green's synthetic request set, through the router with green pinned by the
        controller (allowed whatever ``pin.enabled`` says), within the progress deadline."""
        app_name = serve.get_replica_context().app_name
        router = serve.get_deployment_handle("Router", app_name)
        green = self.core.cfg.rollout.candidate
        return await self.core.validate_green(
            predict=lambda inputs: router.predict.remote(inputs, version=green),
            interface=lambda: router.interface.remote(),
            timeout_s=self.core.validation_timeout_s(),
        )

    # -- called by routers --------------------------------------------------------------------

    async def record(self, report: IntervalReport) -> ReportAnswer | None:
        answer, failed_changed = self.core.receive(report)
        if failed_changed:
            self._notify()
        return answer

    async def wait_for_update(self, known_epoch: int, timeout_s: float = LONG_POLL_TIMEOUT_S) -> RoutingSnapshot:
        if known_epoch == self.core.epoch:
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), timeout_s)
            except asyncio.TimeoutError:
                pass
        return self.core.snapshot()

    async def feedback(self, request_id: str, name: str, value: float | None, converted: bool | None,
                       version: str | None = None, unit: int | None = None, split: int = -1,
                       resent: bool = False, answered_after_s: float | None = None,
                       not_counted_ok: bool = False) -> str | None | NotCounted | Refused:
        """Feedback on an answer: by request id alone (joined when the router's report of it
        comes), or proven by its token (``version``, and the ``unit``'s bucket and ``split``
        epoch the request was assigned under). ``resent``: a router sends it again because
        this controller restarted (serving/core/ledger.py); one it counted already is refused
        as a repeat is, but not counted as a client's repeat. ``answered_after_s``: a time the
        answer came after (its token says), so that feedback older than what this controller remembers
        of reports is refused rather than perhaps counted twice; not checked on a resend, which
        a router accepted once already. ``resent`` stays eighth, where a router of the previous
        release puts it; routers send ``answered_after_s`` by name, and only to a controller whose
        report answer says it takes it (ReportAnswer.checks_answer_age). Feedback on an answer
        given before this run started is not counted (:meth:`ControllerCore.answer_of_earlier_run`):
        answered :class:`NotCounted` where the router says it reads one (``not_counted_ok``, by name,
        ReportAnswer.answers_not_counted), else refused (403) with the same reason, as a router of
        the previous release could not unpickle a NotCounted."""
        not_counted = None if resent else self.core.answer_of_earlier_run(answered_after_s)
        if not_counted is not None:
            return not_counted if not_counted_ok else Refused(Forbidden(not_counted.reason))
        if value is not None and not math.isfinite(float(value) * float(value)):
            # Routers refuse these first; checked here too, before the join holds it (a held
            # one would fail later, in the merge of the report that joins it).
            return Refused(InvalidInput(f"feedback value {value!r} is too large to count"))
        try:
            return self.core.feedback.add(request_id, name, value, converted, self.core.clock(), version,
                                          unit=unit, split=split, count_repeat=not resent,
                                          answered_after_s=None if resent else answered_after_s)
        except ServeAbError as err:  # a repeat (409): answered, not logged as a failure
            return Refused(err)

    async def feedback_key(self) -> bytes:
        """The key routers sign feedback tokens with (see serving/core/feedback_token.py)."""
        return self._feedback_key

    # -- control -----------------------------------------------------------------------------

    async def status(self, history: bool = False) -> dict[str, Any]:
        # Plain data across the actor boundary, as before the model: a router of the previous
        # release (a rolling upgrade) reads it, where it could not unpickle a RolloutStatus.
        return self.core.status(history).model_dump(mode="json")

    async def stats(self) -> dict[str, Any]:
        return self.core.stats_snapshot(samples=True)

    async def report(self) -> Report:
        """A fresh report (and one more sequential look). A read: the run record is written by
        the controller's own loop, never by whoever asks. The router answers it as
        ``report.model_dump(mode="json")``."""
        return await self._refresh_report()

    async def metrics(self) -> tuple[bytes, str]:
        """The Prometheus exposition of this app's figures: (body, content type)."""
        return self.core.metrics(self._claimant.app)

    async def act(self, action: Action, body: ActionRequest, actor: Actor | None = None) -> dict[str, Any] | Refused:
        if self._not_holding is not None:
            return Refused(StoreUnavailable(f"this controller does not hold the model's state now ({self._not_holding}); "
                                            "retry in a few seconds"))
        try:
            changed = self.core.act(action, body, actor)
        except ServeAbError as err:  # e.g. 409 "already promoted": answered, not logged as a failure
            return Refused(err)
        if changed:  # routers wait for a change of weights; a no-op brings none
            self._notify()
        # The status, and whether this action changed it: false for one that found nothing
        # to change (an abort of an aborted rollout), which only wrote its history entry.
        return ActionAnswer(**dict(self.core.status()), changed=changed).model_dump(mode="json")  # as status()
