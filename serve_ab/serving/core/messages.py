"""The contract between routers and the controller: typed, cheap to pickle, no Ray.

Routers send an :class:`IntervalReport` (what they served, aggregated) once per interval, get
a :class:`ReportAnswer` (how much of it the controller has saved), and long-poll for a
:class:`RoutingSnapshot` (what to serve); operators' requests reach the
controller as an :class:`Action`. :class:`ControllerApi` names every remote method a router
calls, so no method is looked up by a string. A report's size does not depend on how many
requests it covers (see analysis/aggregate.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from serve_ab.analysis.aggregate import IntervalAggregate


@dataclass(frozen=True)
class Refused:
    """A caller's error the controller answers with instead of raising it (a repeated
    feedback, an action the rollout's phase does not allow): an exception raised in a replica
    is logged by Ray as a failed request, traceback and all, and these are routine. The
    router raises ``error`` where it gets the answer, so the client's 4xx is the same."""

    error: Exception


class Action(str, Enum):
    """Operators' control actions: the URL path (``POST /rollout/<action>``), the CLI's
    command and the controller's dispatch all read this one list."""

    PROMOTE = "promote"
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    ROLLBACK = "rollback"
    WEIGHTS = "weights"


@dataclass(frozen=True)
class Actor:
    """Who asked for a control action, as recorded in the rollout's history: the token's
    name and role (never the token), and the client's address."""

    name: str  # e.g. "operator", or "anonymous" when control.allow_unauthenticated
    role: str  # viewer | operator | qa
    address: str | None = None  # the client's host as the router saw it


@dataclass(frozen=True)
class IntervalReport:
    """One router's report of an interval: what it served, as mergeable aggregates."""

    router: str  # the replica's id, for the controller's per-router figures
    aggregate: IntervalAggregate
    # How many times the controller did not take it when sent (it was away); past the
    # ledger's bound, later intervals are merged into it and count too.
    delayed_intervals: int = 0
    # Versions this replica could not load, with the error: they get no traffic.
    failed_versions: Mapping[str, str] = field(default_factory=dict)
    # Its number in the router's sequence (serving/core/ledger.py); it also covers the earlier
    # intervals from first_seq, merged in because the controller did not take them. 0: a
    # router of an older release, whose reports are merged as they come.
    seq: int = 0
    first_seq: int = 0
    # The controller this router last heard from (ReportAnswer.controller); None at first.
    controller_seen: str | None = None
    # The replica is stopping (scale-down, redeploy, Ctrl-C) and this is its last report: a
    # router that falls silent without one crashed or lost its node (serving/reports.py).
    last: bool = False
    # The digest of the config the router serves (serving/core/run_config.py): a controller
    # merges only its own run's. None: a router of an older release, merged as it comes.
    config: str | None = None
    # Sent again to a controller that restarted since it was made (ReportLedger.answered): a
    # restarted controller answers /metrics once each router it knew sent one that is not.
    resent: bool = False


@dataclass(frozen=True)
class ReportAnswer:
    """The controller's answer to an :class:`IntervalReport`: how far its saves hold the
    router's figures, so that the router can drop what it keeps for a restarted controller
    (serving/core/ledger.py)."""

    controller: str  # this controller's name: a new one at every start
    saved_seq: int  # the router's reports up to this number are in the saved figures
    captures: int  # saves begun: feedback accepted before this answer is in save captures + 1
    saved_captures: int  # saves done
    # The report names an earlier controller: this one started since, from its last save, and
    # merged nothing of the report. It has the router's reports up to restored_seq.
    restarted: bool = False
    restored_seq: int = 0
    # The controller's feedback call takes answered_after_s (by name): one of the previous
    # release has no such parameter, and would fail every call that named it.
    checks_answer_age: bool = False
    # The controller's feedback call takes not_counted_ok (by name) and then answers feedback
    # on an answer of an earlier run with NotCounted; one of the previous release has no such
    # parameter, and a router of the previous release could not unpickle a NotCounted.
    answers_not_counted: bool = False
    # The controller serves another config (a redeploy changed it, and started a new run): it
    # merged nothing of the report, and the router keeps it for a controller of its own config.
    other_config: bool = False


@dataclass(frozen=True)
class NotCounted:
    """The controller's answer to feedback it accepts and does not count, with why: the
    answer it is about was given before this run started (a changed config started a new
    run; the outcome belongs to the run that served the answer, whose figures are closed).
    The client gets 202 with ``counted: false``, as for a pinned answer: sending it again
    would change nothing."""

    reason: str


@dataclass(frozen=True)
class Mirror:
    """A version that gets copies of ``percent`` of the live requests."""

    version: str
    percent: float


@dataclass(frozen=True)
class RoutingSnapshot:
    """What every router serves by; ``epoch`` grows with every change."""

    epoch: int
    weights: Mapping[str, float]  # percent per version, every version listed
    retired: tuple[str, ...] = ()  # versions that may be unloaded (once at weight 0)
    mirrors: tuple[Mirror, ...] = ()


class ControllerApi(Protocol):
    """The controller's methods a router calls (remote, through a DeploymentHandle)."""

    async def record(self, report: IntervalReport) -> ReportAnswer | None: ...

    async def wait_for_update(self, known_epoch: int, timeout_s: float = ...) -> RoutingSnapshot: ...

    async def feedback(self, request_id: str, name: str, value: float | None,
                       converted: bool | None, version: str | None = None,
                       unit: int | None = None, split: int = -1, resent: bool = False,
                       answered_after_s: float | None = None,
                       not_counted_ok: bool = False) -> str | None | NotCounted: ...

    async def feedback_key(self) -> bytes: ...

    async def act(self, action: Action, body: Any, actor: Actor) -> dict[str, Any]:
        """An ActionAnswer as plain data (``model_dump(mode="json")``)."""

    async def status(self, history: bool = False) -> dict[str, Any]:
        """A RolloutStatus as plain data (``model_dump(mode="json")``)."""

    async def stats(self) -> dict[str, Any]: ...

    async def report(self) -> Any: ...

    async def metrics(self) -> tuple[bytes, str]: ...
