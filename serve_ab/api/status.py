"""``GET /rollout/status`` as one typed shape: what the controller answers and everyone reads.

The controller builds a :class:`RolloutStatus` (``ControllerCore.status``); the router
answers it as JSON; ``serve-ab status``, ``--wait``/``--watch`` and ``/metrics`` read its
fields. A control action (``POST /rollout/promote`` ...) answers an :class:`ActionAnswer`:
the status after it, and whether it changed anything. The JSON schema is published in
``docs/status.schema.json``; regenerate it after changing a model here::

    python -m serve_ab.api.status > docs/status.schema.json

(``tests/unit/api/test_status_model.py`` fails while the file is stale.)

Pure data: pydantic only, so the CLI reads a status without numpy or Ray. Unlike the
report (``extra="forbid"``), unknown keys are ignored and every field an older app may not
send has a default: ``serve-ab status`` of one release reads the apps of the next and the
last. Gate figures may be infinite (a ratio to a stable version at 0, a bound no sample
size gives): the JSON spells them "Infinity" / "-Infinity" (``http_util.json_safe``),
which these models read back as floats.

Example::

    status = RolloutStatus.model_validate(httpx.get(f"{url}/rollout/status").json())
    status.phase, status.weights_pct["v2"], [g.verdict for g in status.gates]
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, PrivateAttr, StrictInt, WithJsonSchema

if TYPE_CHECKING:  # typing.Self is Python 3.11's; the project runs on 3.10 too
    from typing_extensions import Self

__all__ = [
    "ActionAnswer", "ControllerInfo", "GateLook", "GateWindow", "HistoryEntry", "NotificationCounts",
    "NotSaved", "RolloutStatus", "RoutersSeen", "status_json_schema",
]


#: A gate's figure: a number, or infinite, which the JSON spells "Infinity" / "-Infinity".
GateFigure = Annotated[float, WithJsonSchema(
    {"anyOf": [{"type": "number"}, {"enum": ["Infinity", "-Infinity"]}]})]


class _Read(BaseModel):
    """What every status model shares: keys from a newer app ignored; whole numbers strict
    (a "2" or a true is another app's answer, not a step)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class GateLook(_Read):
    """One gate's verdict at the gates' latest analysis (``rollout.gates.GateResult``)."""

    gate: str = Field(..., description="The gate's label, e.g. 'latency_p95_ms <= 1.5x stable'.")
    metric: str = Field(..., description="The metric judged, e.g. error_rate.")
    verdict: str = Field(..., description="pass, fail or inconclusive.")
    value: GateFigure | None = Field(
        None, description="What was compared with the threshold (candidate / stable for ratios; "
                          "infinite when stable is 0); null with no data.")
    threshold: GateFigure = Field(..., description="The gate's threshold.")
    bound: str = Field(..., description="max, min, max_ratio_to_stable or min_ratio_to_stable.")
    reason: str = Field("", description="The figures behind the verdict, for people.")
    candidate_value: GateFigure | None = None
    stable_value: GateFigure | None = None
    lower: GateFigure | None = Field(None, description="One-sided lower confidence bound at alpha (may be -inf).")
    upper: GateFigure | None = Field(None, description="One-sided upper confidence bound at alpha (may be inf).")
    alpha: GateFigure | None = Field(None, description="The level this analysis judged at.")
    p_value: GateFigure | None = Field(None, description="Drift gates: the test's p-value (shown, not judged on).")


class GateWindow(_Read):
    """What the gates' latest analysis read: the window's start and its counts per version."""

    since_s: float = Field(..., description="Start of the window, seconds since 1970.")
    requests: dict[str, StrictInt] = Field(default_factory=dict)
    errors: dict[str, StrictInt] = Field(default_factory=dict)


class HistoryEntry(_Read):
    """One transition of the rollout, or an action that changed nothing (``changed: false``)."""

    t_s: float = Field(0.0, description="When, seconds since 1970.")
    from_phase: str | None = Field(None, description="null for the first entry.")
    to_phase: str | None = None
    step_index: StrictInt | None = None
    reason: str = ""
    weights: dict[str, FiniteFloat] = Field(default_factory=dict, description="Percent per version after it.")
    action: str | None = Field(None, description="The control action that wrote it, if one did.")
    actor: dict[str, str | None] | None = Field(
        None, description="Who asked: name, role and address (never the token).")
    changed: bool = True


class ControllerInfo(_Read):
    started_at_s: float | None = Field(None, description="When this controller replica started.")


class RoutersSeen(_Read):
    """The routers' interval reports, as the controller saw them."""

    routers: StrictInt = Field(0, description="Router replicas that reported in the last minute and have not stopped.")
    reports_total: StrictInt = 0
    rows_total: StrictInt = 0
    delayed_intervals_total: StrictInt = Field(0, description="Reports sent late, one per failed try.")
    routers_lost_total: StrictInt = Field(0, description="Replicas silent for a minute without their last report.")
    failed_versions: dict[str, str] = Field(default_factory=dict)


class NotificationCounts(_Read):
    sent: StrictInt = 0
    failed: StrictInt = 0


class NotSaved(_Read):
    """The store refuses the controller's saves: decisions wait, routers serve on."""

    since_s: float = Field(..., description="The first refused save, seconds since 1970.")
    for_s: float = Field(..., description="How long saves have failed.")
    error: str = Field(..., description="The last refusal's error.")


class RolloutStatus(_Read):
    """The rollout's phase, step, weights and gates; for a static app ``strategy`` is null
    and ``phase`` is ``static``."""

    model: str | None = None
    strategy: str | None = Field(None, description="canary or blue_green; null for static weights.")
    stable: str | None = None
    candidate: str | None = None
    phase: str = Field("unknown", description="static, progressing, paused, validated, promoted, aborted, ...")
    revision: StrictInt | None = Field(None, description="Changes with each decision; actions' --revision.")
    step_index: StrictInt | None = Field(None, description="The canary's step, counted from 0.")
    steps_total: StrictInt | None = None
    step: str | None = Field(None, description="The current step, e.g. 'pause 10s'.")
    weights_pct: dict[str, FiniteFloat] = Field(default_factory=dict, description="Percent per version, routed now.")
    reason: str | None = Field(None, description="Why the rollout is where it is, for people.")
    next_step_in_s: FiniteFloat | None = Field(None, description="Until the next step, when a timer runs.")
    failures_total: StrictInt | None = None
    failure_limit: StrictInt | None = None
    gates: list[GateLook] = Field(
        default_factory=list, description="The latest analysis, while it judged the current weights (or decided).")
    window: GateWindow | None = None
    retired: list[str] = Field(default_factory=list, description="Versions that may be unloaded.")
    shadow: dict[str, Any] | None = Field(None, description="The config's shadow section: version, percent.")
    run_id: str | None = None
    controller: ControllerInfo = Field(default_factory=ControllerInfo)
    routers: RoutersSeen = Field(default_factory=RoutersSeen)
    failed_versions: dict[str, str] = Field(
        default_factory=dict, description="Versions some live router could not load, with its error.")
    notifications: dict[str, NotificationCounts] = Field(
        default_factory=dict, description="Events sent and failed, by receiver.")
    not_saved: NotSaved | None = Field(None, description="Set while the store refuses saves.")
    history: list[HistoryEntry] | None = Field(None, description="Only with ?history=true.")

    # The JSON the app sent, when read with from_answer: what `-o json` prints (keys of a newer
    # app kept, infinities spelled as the app spelled them), not this model's re-encoding.
    _answer: dict[str, Any] | None = PrivateAttr(None)

    @classmethod
    def from_answer(cls, answer: dict[str, Any]) -> Self:
        """The model of an app's JSON answer (raises pydantic's ValidationError), which it keeps."""
        status = cls.model_validate(answer)
        status._answer = answer
        return status

    def answer(self) -> dict[str, Any]:
        """The JSON the app sent (from_answer), else this model's."""
        if self._answer is not None:
            return self._answer
        return self.model_dump(mode="json")


class ActionAnswer(RolloutStatus):
    """A control action's answer: the status after it, and whether it changed anything (false
    for one that found nothing to change, such as an abort of an aborted rollout)."""

    changed: bool | None = Field(None, description="Whether the action changed anything; null from an app too old to say.")


def status_json_schema() -> dict[str, Any]:
    return RolloutStatus.model_json_schema()


if __name__ == "__main__":
    print(json.dumps(status_json_schema(), indent=2))
