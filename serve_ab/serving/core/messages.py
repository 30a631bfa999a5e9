"""The contract between routers and the controller: typed, cheap to pickle, no Ray.

Routers send :class:`Observations` (what they served) and long-poll for a
:class:`RoutingSnapshot` (what to serve); operators' requests reach the controller as an
:class:`Action`. :class:`ControllerApi` names every remote method a router calls, so no
method is looked up by a string. Rows are NamedTuples: a batch of ten thousand pickles in
milliseconds, and fields are read by name on both sides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple, Protocol


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


class ServedRequest(NamedTuple):
    """One answer (or failure) of one version, as a router saw it."""

    t_s: float
    version: str
    latency_ms: float
    error_kind: str | None  # None: answered; else input | model | unavailable | cancelled
    predicted_class: int | None  # the first instance's argmax (classifiers)
    score: float | None  # its score
    request_id: str | None  # None for mirrored copies: they must not take the request's feedback
    unit: int | None  # the assignment key's hash; None when keyless or pinned
    assigned: bool  # routed by the split (not pinned, not a fallback retry)
    mirrored: bool  # a copy the client never saw
    pinned: bool = False  # pinned to its version (QA, validation): stays out of gates and figures
    split: int = -1  # the routing epoch the router assigned it under (its weights: the split)


class ShadowPair(NamedTuple):
    """The live and the mirrored answer to the same request."""

    t_s: float
    live_version: str
    shadow_version: str
    live_class: int | None
    shadow_class: int | None
    score_diff: float | None  # shadow's score minus live's, for the class live answered
    shadow_latency_ms: float
    error_kind: str | None  # how the mirrored copy failed, None when it answered


@dataclass(frozen=True)
class Observations:
    """One router's report of an interval."""

    served: list[ServedRequest] = field(default_factory=list)
    pairs: list[ShadowPair] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.served) + len(self.pairs)


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

    async def record(self, observations: Observations) -> None: ...

    async def wait_for_update(self, known_epoch: int, timeout_s: float = ...) -> RoutingSnapshot: ...

    async def feedback(self, request_id: str, name: str, value: float | None,
                       converted: bool | None, version: str | None = None,
                       unit: int | None = None, split: int = -1) -> str | None: ...

    async def feedback_key(self) -> bytes: ...

    async def act(self, action: Action, body: Any, actor: Actor) -> dict[str, Any]: ...

    async def status(self, history: bool = False) -> dict[str, Any]: ...

    async def stats(self) -> dict[str, Any]: ...

    async def report(self) -> Any: ...

    async def metrics(self) -> tuple[bytes, str]: ...
