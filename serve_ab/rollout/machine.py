"""The rollout state machine: canary steps and blue-green switches, pure and clock-driven.

Nothing here sleeps or talks to Ray. The controller calls :meth:`Rollout.tick` with the
latest window per version; the rollout reads its injected clock, runs gate analysis when
one is due, advances steps, and returns a :class:`Decision` (weights to push, versions
that may be unloaded). Its state is a plain dict (:meth:`Rollout.to_dict`), so a
restarted controller resumes at the same step, with the same weights and timers; its
``revision`` is the caller's to bump on every save whose decision wrote history or moved
weights (an ``If-Match`` for actions; an analysis that only updated its timers and verdict
keeps it), and :meth:`Rollout.copy` lets the caller decide on a copy, save it, and only
then apply it.

Operator actions take the ``actor`` who asked (name, role, address: never a token); the
history entries they write name the action and that actor, and an action that changed
nothing still writes one, so the history accounts for every request. That entry is all it
changes: its decision says ``changed=False`` (the caller keeps the revision, so another
operator's ``If-Match`` still holds), and the status goes on quoting the reason that explains
the phase (the gate failure that aborted it), not "abort: nothing to change".

Example::

    rollout = Rollout(config, clock=time.time)
    decision = rollout.tick({"v1": stable_window, "v2": candidate_window})
    if decision.weights_changed:
        push_to_routers(decision.weights)
    for version in decision.retire:
        unload(version)

The persisted times come from the clock, so a rollout that is saved and restored in
another process needs a clock shared by both (``time.time``, not ``time.monotonic``).

Canary: a step leaves when it is done (weight set, pause elapsed, inline analysis
passed) unless the latest analysis in that step failed or had no data; then the rollout
holds, and ``analysis.progress_deadline_s`` of holding aborts it. A timed pause (and the
blue-green watch) with gates and candidate traffic needs evidence: it ends only once an
analysis with enough samples has passed in it, so a pause shorter than ``interval_s``
waits for one; "not analysed yet" is never a pass. ``set_weight`` steps take no time,
except one below 100% that is followed by another ``set_weight`` or by the end: no later
step would judge that weight, so it waits there for a passing analysis itself.
A ``confirm`` step waits, with no deadline, until the caller's ``tick(confirm=...)`` brings
a yes from its endpoint asked since the step began, then leaves like a timed pause (once an
analysis passed in it, where gates can judge; that wait has the deadline); analysis goes on
while it waits, and the yes holds for the rest of the step. Promql and webhook gates, too,
judge only answers asked since the step began. An operator's pause moves the step's timers
on by the time paused, not the start of its evidence (``window_since_s``).
Every change of weights restarts the analysis interval, so an analysis only reads a
window of constant weights. Analysis runs every
``interval_s`` while the candidate has traffic, including at ``pause: {}`` steps (a bad
candidate still serving 20% is rolled back), but not while an operator paused the rollout.

Gates judge evidence, not point estimates (:mod:`serve_ab.rollout.gates`), and any
analysis of a step may fail it, so each spends part of ``analysis.alpha`` on failing: the
k-th is judged at :func:`~serve_ab.rollout.gates.alpha_for_look` (alpha * 6 / (pi^2 k^2)),
which keeps the chance that a gate falsely fails at any analysis of the step below alpha
however long the step holds. ``analyses_in_step`` counts them. A pass spends alpha only
where it could end the step: a timed pause (and blue-green's post-switch watch) ends on the
analysis that is the latest when its time is up, and each tick analyses before it steps, so
only an analysis less than ``interval_s`` before that time, or after it, can end it
(:meth:`Rollout._pass_could_end_wait`); one earlier is replaced by the next before the time
is up. ``passes_in_step`` counts the analyses that could, and the k-th of them judges a pass
at ``alpha_for_look(alpha, k)``: a 60-s pause analysed every 5 s judges the pass that ends it
at 0.61 alpha rather than at the twelfth look's 0.004 alpha, and a gate still falsely ends
a step with probability at most alpha (``benchmarks/rollout_calibration.py`` measures it
with a candidate at a gate's threshold). Every other wait (a set_weight or analysis step,
a confirm step, blue-green validation) ends on the first passing analysis, so every one
counts. Both restart with each step (and at the blue-green switch), not at an operator's
pause, which would otherwise buy a held candidate fresh chances. An analysis in which no
gate had enough samples cannot pass or fail on evidence, so it spends nothing and is not
counted.

Blue-green: green validates at weight 0 (``report_validation`` plus, if configured, gates
on mirrored traffic), then takes 100% in one switch; during ``post_switch_watch_s`` a
failing gate rolls back to blue. Blue gets no traffic after the switch, so the watch
judges absolute gates and only those gates needing stable live (a ratio to it, drift,
shadow_agreement) whose data is still there; so does a canary's analysis while the candidate
has 100% (a bake before promotion). Where every gate needs stable, such an analysis judges
nothing and passes, as one with no gates does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from typing import Any

from serve_ab.config.rollout import (
    AnalysisStep,
    ConfirmStep,
    Gate,
    GateMetric,
    PauseStep,
    RolloutConfig,
    SetWeightStep,
    Strategy,
    WEIGHT_RESOLUTION_PCT,
)
from serve_ab.errors import ActionRefused
from serve_ab.rollout.gates import (
    GateResult,
    GateVerdict,
    WebhookResult,
    WindowStats,
    alpha_for_look,
    evaluate_gates,
    overall_verdict,
    sample_count,
)

STATE_SCHEMA = 1
#: How the history entry of a failed analysis begins.
ANALYSIS_FAILED = "analysis failed"
MAX_HISTORY = 500
#: How the history entry of an action that changed nothing ends (after "<action>: ").
NOTHING_TO_CHANGE = "nothing to change"
# Fake clocks advance by float sums (0.1 + 0.2 != 0.3); timers compare with this slack.
_EPS_S = 1e-9


def _failed_text(result: GateResult) -> str:
    """A failed gate, for the history and the abort's reason: its value against its bound, and
    why. A promql or webhook gate's reason says both already ("webhook[suite] answered pass:
    false for v2: 'suite red'"), which the generic form would garble ("webhook = 0, pass 1")."""
    if result.metric in (GateMetric.PROMQL.value, GateMetric.WEBHOOK.value):
        return f"gate {result.gate} failed: {result.reason}"
    value = "no value" if result.value is None else format(result.value, ".4g")
    return f"gate {result.gate} failed: {result.metric} = {value}, {result.bound} {result.threshold:g} ({result.reason})"


def _secs(seconds: float) -> str:
    """A span the machine measured, for a reason or an error, to 0.1 s: "9.6s", "30s",
    "123456.7s" (not the float's noise, "9.57538s", nor :g's "1.23457e+06s")."""
    return f"{max(seconds, 0.0):.1f}".removesuffix(".0") + "s"


def _has_samples(gate: Gate, candidate: WindowStats, stable: WindowStats, min_samples: int) -> bool:
    """Whether ``gate`` can judge on evidence: a promql value is judged as given, so it spends
    no alpha (so is a webhook's answer); any other gate needs min_samples on each side it reads."""
    if gate.metric in (GateMetric.PROMQL, GateMetric.WEBHOOK):
        return False
    sides = (candidate, stable) if gate.needs_stable else (candidate,)
    return all(sample_count(gate, window) >= min_samples for window in sides)


def _judges_without_stable(gate: Gate, candidate: WindowStats, stable: WindowStats, min_samples: int) -> bool:
    """While stable has no traffic (a canary at 100%, blue-green after the switch): whether
    ``gate`` still judges. One that needs stable live judges only while the side it reads
    still holds samples (requests served before the weights changed)."""
    if not gate.needs_live_stable:
        return True
    side = stable if gate.needs_stable else candidate  # shadow_agreement counts pairs on the candidate
    return sample_count(gate, side) >= min_samples


def _bg_stage(step_index: int) -> str:
    """What a blue-green rollout's internal step index stands for, in words."""
    return {0: "validation", 1: "the post-switch watch"}.get(step_index, f"stage {step_index}")


def changed_nothing(entry: Mapping[str, Any]) -> bool:
    """Whether a history entry records an action that changed nothing. Entries saved before
    they were marked say so by their reason alone."""
    if "changed" in entry:
        return entry["changed"] is False
    action = entry.get("action")
    return action is not None and entry.get("reason") == f"{action}: {NOTHING_TO_CHANGE}"


class Phase(str, Enum):
    PROGRESSING = "progressing"  # canary: applying weights, waiting out timed pauses
    ANALYZING = "analyzing"  # canary: inline analysis step, blocks until a run passes
    PAUSED = "paused"  # a `pause: {}` step waiting for promote, or an operator's pause()
    VALIDATING = "validating"  # blue-green: green at weight 0, waiting for validation
    VALIDATED = "validated"  # blue-green: validated, waiting for promote to switch
    SWITCHED = "switched"  # blue-green: green has 100%, watched for post_switch_watch_s
    PROMOTED = "promoted"  # done: candidate has 100%
    ABORTED = "aborted"  # done: stable has 100% (failed, aborted or rolled back)


TERMINAL_PHASES = frozenset({Phase.PROMOTED, Phase.ABORTED})


class RolloutError(ActionRefused):
    """An action that the rollout's current phase does not allow."""


@dataclass(frozen=True)
class Decision:
    """What a tick or an action decided; the caller pushes ``weights`` when they changed."""

    phase: Phase
    weights: Mapping[str, float]
    weights_changed: bool
    step_index: int
    reason: str
    #: Versions that may be unloaded now (their drain delay has passed); repeated on every
    #: later decision, so a caller that missed one still gets it.
    retire: tuple[str, ...] = ()
    #: Gate results when an analysis ran during this call, else empty.
    analysis: tuple[GateResult, ...] = ()
    verdict: GateVerdict | None = None
    #: False only for an action that found nothing to change (an abort of an aborted
    #: rollout): it wrote its history entry only, so the caller keeps the revision.
    changed: bool = True


@dataclass
class RolloutState:
    """Everything a restarted controller needs; all fields are JSON-able once dumped."""

    strategy: str
    stable: str
    candidate: str
    phase: Phase
    weights: dict[str, float]
    started_at_s: float
    step_index: int = 0
    step_started_at_s: float = 0.0  # moved on by time paused, which timers do not count
    #: When the step's weights began, not moved by pauses: the gates' window starts here, as
    #: requests served while paused are evidence at the same weights. None in a state saved
    #: before it was kept (step_started_at_s stands in).
    window_since_s: float | None = None
    failures_total: int = 0
    failures_consecutive: int = 0
    last_analysis_at_s: float | None = None  # None: no analysis cadence running
    step_verdict: GateVerdict | None = None  # latest analysis verdict within this step
    analyses_in_step: int = 0  # analyses with evidence in this step; sets their alpha to fail
    passes_in_step: int = 0  # those of them whose pass could end the step; sets their alpha to pass
    step_verdict_counted: bool = True  # whether step_verdict's analysis was one of those
    last_analysis_reason: str = ""
    held_since_s: float | None = None  # waiting on an analysis or a validation since
    paused_by: str | None = None  # "step" (pause: {}) or "operator"
    paused_at_s: float | None = None
    resume_phase: Phase | None = None
    validation_passed: bool | None = None
    switched_at_s: float | None = None
    finished_at_s: float | None = None
    retire_version: str | None = None
    retire_at_s: float | None = None
    confirm_answer: str | None = None  # a confirm step: its endpoint's latest answer, in words
    confirmed_at_s: float | None = None  # a confirm step: when the yes that confirmed it was asked
    #: When a controller resumed this state, until its first analysis: no wait ends and no
    #: deadline aborts before that analysis reads what the routers served meanwhile.
    restarted_at_s: float | None = None
    revision: int = 0  # bumped by the caller on every save that decided something; a precondition for actions
    history: list[dict[str, Any]] = field(default_factory=list)
    #: History entries ever written (the history keeps the last MAX_HISTORY): the n-th is
    #: event n of the rollout, an id a receiver can drop a repeated delivery by, where the
    #: revision is shared by a decision's entries and kept by an action that changed nothing.
    entries_total: int = 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": STATE_SCHEMA}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, Enum) else value
        out["weights"] = dict(self.weights)
        out["history"] = [dict(h) for h in self.history]
        # Left out while the history holds every entry, as from_dict then reads it: the release
        # before the count refuses a row with a key it does not know, so a rollback to it
        # (controller and routers) failed on every row of a rollout under MAX_HISTORY entries.
        if self.entries_total == len(self.history):
            del out["entries_total"]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutState:
        if data.get("schema") != STATE_SCHEMA:
            raise ValueError(
                f"rollout state schema is {data.get('schema')!r}; this version reads {STATE_SCHEMA}"
            )
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names - {"schema"})
        if unknown:
            raise ValueError(f"rollout state has unknown keys {unknown}")
        required = ("strategy", "stable", "candidate", "phase", "weights", "started_at_s")
        missing = [key for key in required if key not in data]
        if missing:
            raise ValueError(f"rollout state lacks {missing}; it was not written by Rollout.to_dict")
        values = {k: v for k, v in data.items() if k in names}
        values["phase"] = Phase(values["phase"])
        for key, enum in (("resume_phase", Phase), ("step_verdict", GateVerdict)):
            if values.get(key) is not None:
                values[key] = enum(values[key])
        values["weights"] = {k: float(v) for k, v in values["weights"].items()}
        values["history"] = [dict(h) for h in values.get("history", [])]
        values["revision"] = int(values.get("revision", 0))
        # Absent before entries were counted: the history then held every entry (or its last 500).
        values["entries_total"] = int(values.get("entries_total", len(values["history"])))
        values["analyses_in_step"] = int(values.get("analyses_in_step", 0))  # absent before alpha spending
        # Absent before a pass's own spending: every analysis counted, as it was then.
        values["passes_in_step"] = int(values.get("passes_in_step", values["analyses_in_step"]))
        return cls(**values)


class Rollout:
    """One canary or blue-green rollout of ``config.candidate`` over ``config.stable``."""

    def __init__(self, config: RolloutConfig, clock: Callable[[], float], state: RolloutState | None = None):
        self.config = config
        self._clock = clock
        self._acting: dict[str, Any] | None = None  # the action and actor being applied
        self._records = 0  # history entries written by this object
        self._confirm: WebhookResult | None = None  # the confirm step's answer, during tick()
        if state is None:
            now = float(clock())
            blue_green = config.strategy is Strategy.BLUE_GREEN
            state = RolloutState(
                strategy=config.strategy.value, stable=config.stable, candidate=config.candidate,
                phase=Phase.VALIDATING if blue_green else Phase.PROGRESSING,
                weights={config.stable: 100.0, config.candidate: 0.0},
                started_at_s=now, step_started_at_s=now, window_since_s=now,
            )
            self.state = state
            self._record(now, None, state.phase, "rollout started")
            if blue_green:
                state.held_since_s = now  # validation counts against the progress deadline
                if self._mirror_gates():
                    state.last_analysis_at_s = now
        else:
            self.state = state
            self._check_matches_config()

    # -- persistence ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return self.state.to_dict()

    @classmethod
    def from_dict(cls, config: RolloutConfig, data: Mapping[str, Any], clock: Callable[[], float]) -> Rollout:
        """Resume from :meth:`to_dict`: same step, same weights, timers from recorded times."""
        return cls(config, clock, RolloutState.from_dict(data))

    def restarted(self, reports_in_s: float) -> None:
        """Called by a controller that resumes this saved state; the routers send it again,
        within ``reports_in_s``, what they served while no controller ran. A verdict from
        before is stale: no wait ends on it (a watch or pause whose time ran out meanwhile
        would otherwise end at the first tick, on evidence that leaves out the downtime), and
        the next analysis comes no sooner than ``reports_in_s`` from now (at its usual time if
        later), so it reads those reports. The progress deadline waits for that analysis too.
        The verdict stays, for the reasons that quote it. Timers are not moved: traffic went
        on at these weights."""
        s = self.state
        if self.done or s.last_analysis_at_s is None:  # no analysis cadence runs: nothing judged
            return
        now = self._now()
        s.last_analysis_at_s = max(s.last_analysis_at_s, now + reports_in_s - self.config.analysis.interval_s)
        s.restarted_at_s = now

    def new_history(self) -> list[dict[str, Any]]:
        """The history entries this object wrote since it was built or restored, in order
        (what a decision taken on a copy adds: the caller notifies them once it is saved)."""
        history = self.state.history
        return history[len(history) - min(self._records, len(history)):]

    def copy(self) -> Rollout:
        """An independent rollout in the same state: decide on it, save it, then swap it in."""
        return Rollout.from_dict(self.config, self.to_dict(), self._clock)

    @property
    def window_since_s(self) -> float:
        """When the current step's weights began: what the gates' window and the answers of
        webhooks and confirm endpoints must postdate."""
        s = self.state
        return s.step_started_at_s if s.window_since_s is None else s.window_since_s

    def _check_matches_config(self) -> None:
        s, c = self.state, self.config
        saved = (s.strategy, s.stable, s.candidate)
        wanted = (c.strategy.value, c.stable, c.candidate)
        if saved != wanted:
            raise ValueError(
                f"saved rollout is {saved} (strategy, stable, candidate) but the config says "
                f"{wanted}; start a new rollout or restore the matching config"
            )
        if c.strategy is Strategy.CANARY and s.step_index > len(c.steps):
            raise ValueError(
                f"saved rollout is at step index {s.step_index}, but the config has {len(c.steps)} steps"
            )

    def _now(self) -> float:
        return float(self._clock())

    # -- read-only views -----------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self.state.phase

    @property
    def weights(self) -> dict[str, float]:
        return dict(self.state.weights)

    @property
    def done(self) -> bool:
        return self.state.phase in TERMINAL_PHASES

    # -- the tick ------------------------------------------------------------------------

    def tick(self, windows: Mapping[str, WindowStats], confirm: WebhookResult | None = None) -> Decision:
        """Advance by the clock; ``windows`` holds the latest window of each version.

        A version missing from ``windows`` counts as having no data (inconclusive).
        ``confirm``: at a confirm step, its endpoint's latest answer (one asked for before the
        step began is ignored).
        """
        now = self._now()
        self._confirm = confirm
        before = dict(self.state.weights)
        results: tuple[GateResult, ...] = ()
        verdict = None
        if not self.done and self.state.paused_by != "operator":
            results, verdict = self._maybe_analyze(now, windows)
        if self._automation_running():
            self._advance(now)
        if self._automation_running():
            self._check_deadline(now)
        return self._decision(now, before, results, verdict)

    # -- operator actions ----------------------------------------------------------------

    def require(self, *, from_step: int | None = None, revision: int | None = None) -> None:
        """Refuse an action whose preconditions no longer hold: a retried ``promote`` that
        names the step it already left is refused, not taken as a second promote."""
        s = self.state
        where = self.where_text()
        if from_step is not None and from_step != s.step_index:
            ended = s.phase in TERMINAL_PHASES
            if self.config.strategy is Strategy.BLUE_GREEN:
                if from_step not in (0, 1):
                    raise RolloutError(
                        f"refused: from_step is {from_step} (--from-step {from_step + 1}), but a blue-green "
                        f"rollout has from_step 0 (--from-step 1: {_bg_stage(0)}) and 1 (--from-step 2: "
                        f"{_bg_stage(1)}) only; it is {where}; nothing was done")
                asked, named = _bg_stage(from_step), f"{_bg_stage(from_step)}, --from-step {from_step + 1}"
                act = f"send revision {s.revision} (--revision {s.revision}) to act on it as it is now"
            else:
                asked = named = f"step {from_step + 1}"
                act = (f"send from_step {s.step_index} (--from-step {s.step_index + 1} on serve-ab's "
                       "command line) to act on the current step")
            moved = "has already left" if from_step < s.step_index else "has not reached"
            # An ended rollout takes no action at any step: no from_step to suggest.
            then = (("it has ended, so no step takes actions" if self.config.strategy is Strategy.CANARY
                     else "it has ended, so it takes no actions") if ended else f"read the status again and {act}")
            raise RolloutError(
                f"refused: from_step is {from_step} ({named}) but the rollout is {where}; "
                f"it {moved} {asked}, so nothing was done; {then}"
            )
        if revision is not None and revision != s.revision:
            raise RolloutError(
                f"refused: revision is {revision} but the rollout is {where}; its state changed "
                f"since it was read, so nothing was done. Read the status again and send revision "
                f"{s.revision} to act on it"
            )

    def where_text(self) -> str:
        """Where the rollout is, for a refusal: its step both ways (people count from 1,
        ``from_step`` from 0), revision and phase; a blue-green rollout's phase and stage."""
        s = self.state
        if self.config.strategy is Strategy.BLUE_GREEN:
            # No steps to count: its step_index is 0 while it validates, 1 after the switch.
            stage = "" if self.done else \
                f" ({_bg_stage(s.step_index)}; from_step {s.step_index}, --from-step {s.step_index + 1})"
            return f"in phase {s.phase.value}{stage}, revision {s.revision}"
        return (f"at step {s.step_index + 1} ({self.step_text()}; from_step {s.step_index}), "
                f"revision {s.revision}, phase {s.phase.value}")

    def _act(self, action: str, actor: Mapping[str, Any] | None, apply: Callable[[], Decision]) -> Decision:
        """``apply()``, its entries naming ``action`` and its actor; if it wrote none (a pause
        of a paused rollout), one entry still records the request, marked as changing
        nothing, and the decision says ``changed=False``."""
        self._acting = {"action": action, "actor": dict(actor) if actor is not None else None}
        written = self._records
        try:
            decision = apply()
            if self._records == written:
                s = self.state
                self._record(self._now(), s.phase, s.phase, f"{action}: {NOTHING_TO_CHANGE}", changed=False)
                decision = replace(decision, changed=False)
            return decision
        finally:
            self._acting = None

    def promote(self, *, full: bool = False, reason: str = "promoted by operator",
                actor: Mapping[str, Any] | None = None) -> Decision:
        """Skip the current step or wait (a ``pause: {}``, a timed pause, a hold, the
        validation, the post-switch watch); ``full=True`` goes straight to 100% candidate."""
        return self._act("promote", actor, lambda: self._promote(full, reason))

    def _promote(self, full: bool, reason: str) -> Decision:
        now, before = self._now(), dict(self.state.weights)
        self._require_active("promote")
        s = self.state
        if full:
            if s.switched_at_s is None:
                s.switched_at_s = now
            if self.config.strategy is Strategy.CANARY:
                skipped = "remaining steps and analysis"
            elif s.phase is Phase.VALIDATING or s.resume_phase is Phase.VALIDATING:
                waits = " and ".join(self._validation_waits(detail=True))
                skipped = f"validation ({waits}) and the post-switch watch" if waits else "the post-switch watch"
            else:
                skipped = "the post-switch watch"
            self._finish_promoted(now, f"{reason} (full: {skipped} skipped)")
            return self._decision(now, before)
        if s.paused_by == "operator":
            self._unpause(now)
        if self.config.strategy is Strategy.CANARY:
            s.paused_by = None
            left = f"{reason}: left step {s.step_index + 1} ({self.step_text()})"
            self._next_step(now, Phase.PROGRESSING, left)
        elif s.phase in (Phase.VALIDATING, Phase.VALIDATED):
            # An operator's override, as a canary's promote past a hold; the history says
            # what it skipped, so nobody reads the switch as a validated one.
            skipped = " and ".join(self._validation_waits(detail=True)) if s.phase is Phase.VALIDATING else ""
            before_end = f" before its validation ended (skipped: {skipped})" if skipped else ""
            self._switch(now, f"{reason}: switched to {s.candidate}{before_end}")
        else:
            self._finish_promoted(now, f"{reason}: post-switch watch ended early")
        if self._automation_running():
            self._advance(now)
        return self._decision(now, before)

    def pause(self, reason: str = "paused by operator", *, actor: Mapping[str, Any] | None = None) -> Decision:
        """Stop automation (steps, analysis, deadline) until :meth:`resume`; weights stay."""
        return self._act("pause", actor, lambda: self._pause(reason))

    def _pause(self, reason: str) -> Decision:
        now, before = self._now(), dict(self.state.weights)
        self._require_active("pause")
        s = self.state
        if s.paused_by != "operator":
            s.resume_phase = s.phase
            s.paused_by, s.paused_at_s = "operator", now
            self._transition(now, Phase.PAUSED, reason)
        return self._decision(now, before)

    def resume(self, reason: str = "resumed by operator", *, actor: Mapping[str, Any] | None = None) -> Decision:
        """Undo :meth:`pause` (or the pause of :meth:`set_weights`). A ``pause: {}`` step is left
        by :meth:`promote` only, as Argo Rollouts' is: a second resume meant for an operator's
        pause must not also move the candidate on."""
        return self._act("resume", actor, lambda: self._resume(reason))

    def _resume(self, reason: str) -> Decision:
        now, before = self._now(), dict(self.state.weights)
        self._require_active("resume")
        s = self.state
        if s.paused_by == "operator":
            self._unpause(now, reason)
            if self._automation_running():
                self._advance(now)
        elif s.paused_by == "step":
            raise RolloutError(
                f"cannot resume: the rollout waits at step {s.step_index + 1} ({self.step_text()}); "
                "resume lifts an operator's pause only, serve-ab promote continues past this step")
        return self._decision(now, before)

    def abort(self, reason: str = "aborted by operator", *, actor: Mapping[str, Any] | None = None) -> Decision:
        """Send all traffic to stable now; the candidate is retired after the drain delay."""
        return self._act("abort", actor, lambda: self._abort_action(reason))

    def _abort_action(self, reason: str) -> Decision:
        now, before = self._now(), dict(self.state.weights)
        if self.state.phase is Phase.PROMOTED:
            released = self._stable_released(now)
            raise RolloutError(
                f"cannot abort: the rollout is already promoted; {released}" if released else
                f"cannot abort: the rollout is already promoted; use rollback (serve-ab rollback) to go back to {self.state.stable}"
            )
        if self.state.phase is not Phase.ABORTED:
            self._abort(now, reason)
        return self._decision(now, before)

    def rollback(self, reason: str = "rolled back by operator", *,
                 actor: Mapping[str, Any] | None = None) -> Decision:
        """Go back to stable at once, also after promotion while stable is still loaded."""
        return self._act("rollback", actor, lambda: self._rollback(reason))

    def _rollback(self, reason: str) -> Decision:
        now, before = self._now(), dict(self.state.weights)
        s = self.state
        if s.phase is Phase.PROMOTED:
            released = self._stable_released(now)
            if released:
                raise RolloutError(f"cannot roll back: {released}")
            self._abort(now, f"{reason} after promotion")
        elif s.phase is not Phase.ABORTED:
            self._abort(now, reason)
        return self._decision(now, before)

    def _stable_released(self, now: float) -> str | None:
        """After promotion, why stable can no longer take the traffic back (it was released
        for unloading), or None while it can."""
        s = self.state
        if s.retire_at_s is None or now < s.retire_at_s - _EPS_S:
            return None
        return (f"{s.stable} was released for unloading {_secs(now - s.retire_at_s)} ago; to go back "
                f"to it, start a new rollout with {s.stable} as candidate")

    def set_weights(
        self, weights_pct: Mapping[str, float], reason: str = "weights set by operator", *,
        actor: Mapping[str, Any] | None = None,
    ) -> Decision:
        """A canary's manual override, e.g. ``{"v1": 70, "v2": 30}`` (a blue-green rollout
        refuses it: one switch); pauses the rollout so the next step does not overwrite it
        (:meth:`resume` continues; the next set_weight step wins)."""
        return self._act("weights", actor, lambda: self._set_weights(weights_pct, reason))

    def _set_weights(self, weights_pct: Mapping[str, float], reason: str) -> Decision:
        now, before = self._now(), dict(self.state.weights)
        self._require_active("set weights")
        s = self.state
        if self.config.strategy is Strategy.BLUE_GREEN:
            # A split would send live users to a green not yet validated (or, after the
            # switch, end the watch of green at 100% with a watch of a split): blue-green
            # moves traffic in one switch, as Argo Rollouts' blue-green has no setWeight.
            if s.switched_at_s is None:
                then = (f"serve-ab promote switches to {s.candidate}, serve-ab abort keeps everything on "
                        f"{s.stable}")
            else:
                then = (f"{s.candidate} has all traffic; serve-ab rollback sends it back to {s.stable}, "
                        "serve-ab promote ends the post-switch watch now")
            raise RolloutError(
                f"cannot set weights: a blue-green rollout moves all traffic in one switch, and this one is "
                f"{s.phase.value}; {then}. For a gradual split, run a canary")
        versions = (s.stable, s.candidate)
        unknown = sorted(set(weights_pct) - set(versions))
        if unknown:
            raise ValueError(
                f"weights name {unknown}, which are not in this rollout; versions: {list(versions)}"
            )
        new = {v: float(weights_pct.get(v, 0.0)) for v in versions}
        for version, weight_pct in new.items():
            if not math.isfinite(weight_pct) or not 0.0 <= weight_pct <= 100.0:
                raise ValueError(f"{version} is {weight_pct}; a weight is a percentage in [0, 100]")
            # The config's rule: 1e-08% would show in the status but route no request at all.
            if abs(weight_pct / WEIGHT_RESOLUTION_PCT - round(weight_pct / WEIGHT_RESOLUTION_PCT)) > 1e-6:
                raise ValueError(f"{version} is {weight_pct}; weights resolve to {WEIGHT_RESOLUTION_PCT:g}% "
                                 "steps (a bucket of users), e.g. 12.5 or 0.05")
        total_pct = sum(new.values())
        if abs(total_pct - 100.0) > 1e-6:
            raise ValueError(
                f"weights {new} sum to {total_pct:g}%; they must sum to 100, "
                f"e.g. {{{s.stable!r}: 80, {s.candidate!r}: 20}}"
            )
        self._apply_weights(now, new)  # first, so the entry below shows the new weights
        if s.paused_by is None:
            s.resume_phase = s.phase
            s.paused_by, s.paused_at_s = "operator", now
            self._transition(now, Phase.PAUSED, f"{reason}: {new}; paused until resume (serve-ab resume)")
        else:
            self._record(now, s.phase, s.phase, f"{reason}: {new}")
        return self._decision(now, before)

    def report_validation(self, passed: bool, reason: str = "") -> Decision:
        """Blue-green: the caller ran green's synthetic request set and reports the outcome."""
        now, before = self._now(), dict(self.state.weights)
        s = self.state
        if self.config.strategy is not Strategy.BLUE_GREEN:
            raise RolloutError("report_validation is for blue_green rollouts; this one is a canary")
        validating = s.phase is Phase.VALIDATING or (
            s.paused_by == "operator" and s.resume_phase is Phase.VALIDATING
        )
        if not validating:
            raise RolloutError(f"validation is reported while validating; the rollout is {s.phase.value}")
        if not passed:
            self._abort(now, f"validation of {s.candidate} failed: {reason or 'no reason given'}")
        else:
            s.validation_passed = True
            detail = f": {reason}" if reason else ""
            self._record(now, s.phase, s.phase, f"validation of {s.candidate} passed{detail}")
            if self._automation_running():
                self._advance(now)
        return self._decision(now, before)

    def _validation_waits(self, detail: bool = False) -> list[str]:
        """What blue-green validation still waits for; ``detail`` adds the gates' latest
        verdict (what a promote during validation skips)."""
        s = self.state
        waiting = [] if s.validation_passed else ["validation on validation_samples"]
        if self._mirror_gates() and not self._counted_pass():
            before = " before the controller restarted" if s.restarted_at_s is not None else ""
            latest = f"latest{before} {s.step_verdict.value}: {s.last_analysis_reason}" if s.step_verdict else \
                f"no analysis{before or ' yet'}"
            waiting.append(f"gates on mirrored traffic ({latest})" if detail else "gates on mirrored traffic")
        return waiting

    # -- analysis ------------------------------------------------------------------------

    def _mirror_gates(self) -> bool:
        return self.config.blue_green_settings.validation_min_samples is not None

    def _analysis_active(self) -> bool:
        s = self.state
        if self.config.strategy is Strategy.CANARY:
            return s.weights[s.candidate] > 0 or s.phase is Phase.ANALYZING
        if s.phase in (Phase.VALIDATING, Phase.VALIDATED):
            return self._mirror_gates()
        return s.phase is Phase.SWITCHED

    def _min_samples(self) -> int:
        s, c = self.state, self.config
        if s.phase in (Phase.VALIDATING, Phase.VALIDATED):
            return c.blue_green_settings.validation_min_samples or c.analysis.min_samples
        step = self._current_step()
        if isinstance(step, AnalysisStep) and step.analysis.min_samples is not None:
            return step.analysis.min_samples
        return c.analysis.min_samples

    def _maybe_analyze(
        self, now: float, windows: Mapping[str, WindowStats]
    ) -> tuple[tuple[GateResult, ...], GateVerdict | None]:
        s = self.state
        if not self._analysis_active():
            return (), None
        if s.last_analysis_at_s is None:  # first tick with traffic: give it an interval of data
            s.last_analysis_at_s = now
            return (), None
        if now - s.last_analysis_at_s < self.config.analysis.interval_s - _EPS_S:
            return (), None
        s.last_analysis_at_s = now
        s.restarted_at_s = None
        candidate, stable = windows.get(s.candidate), windows.get(s.stable)
        candidate = WindowStats(version=s.candidate) if candidate is None else self._asked_this_step(candidate)
        stable = WindowStats(version=s.stable) if stable is None else stable
        min_samples = self._min_samples()
        gates = list(self.config.gates)
        if s.weights[s.stable] == 0:  # after a switch, or a canary at 100% (module doc)
            gates = [g for g in gates if _judges_without_stable(g, candidate, stable, min_samples)]
        could_end = self._pass_could_end_wait(now)
        if any(_has_samples(g, candidate, stable, min_samples) for g in gates):
            s.analyses_in_step += 1
            s.passes_in_step += could_end
        analysis = self.config.analysis
        # A pass at an analysis that cannot end the step is judged at the level of the first
        # that can: it ends nothing, so it needs no share of alpha of its own.
        results = tuple(evaluate_gates(gates, candidate, stable, min_samples,
                                       alpha=alpha_for_look(analysis.alpha, max(s.analyses_in_step, 1)),
                                       pass_alpha=alpha_for_look(analysis.alpha, max(s.passes_in_step, 1)),
                                       max_user_icc=analysis.max_user_icc))
        verdict = overall_verdict(results)
        s.step_verdict, s.step_verdict_counted = verdict, could_end
        picked = [r for r in results if r.verdict is verdict] or list(results)
        s.last_analysis_reason = "; ".join(f"{r.gate}: {r.reason}" for r in picked) or (
            "no gates configured" if not self.config.gates else
            f"every gate needs {s.stable} to serve beside {s.candidate}, and it has no traffic now")
        if verdict is GateVerdict.FAIL:
            s.failures_total += 1
            s.failures_consecutive += 1
            limit = self.config.analysis.failure_limit
            failed = "; ".join(_failed_text(r) for r in results if r.verdict is GateVerdict.FAIL)
            # Every failed analysis has its own entry (notifications send it as analysis_failed).
            self._record(now, s.phase, s.phase, f"{ANALYSIS_FAILED} ({s.failures_total} of {limit} "
                                                f"tolerated): {failed}")
            if s.failures_total > limit:
                self._abort(now, f"{s.candidate} failed analysis {s.failures_total} time(s), over "
                                 f"failure_limit {limit}: {failed}")
        elif verdict is GateVerdict.PASS:
            s.failures_consecutive = 0
        return results, verdict

    # -- stepping ------------------------------------------------------------------------

    def _automation_running(self) -> bool:
        return not self.done and self.state.paused_by is None

    def _current_step(self):
        steps = self.config.steps
        index = self.state.step_index
        return steps[index] if self.config.strategy is Strategy.CANARY and index < len(steps) else None

    def _where(self) -> str:
        """Where the rollout holds, for its reasons: a canary's step as people count it. A
        blue-green rollout has no steps to name (its step_index is internal: 0 while it
        validates, 1 while it watches after the switch), so its phase."""
        if self.config.strategy is Strategy.BLUE_GREEN:
            return f"in phase {self.state.phase.value}"
        return f"at step {self.state.step_index + 1}"

    def step_text(self) -> str:
        """The current step in a few words (``set_weight 20``, ``pause 30s``, ``analysis``)."""
        step = self._current_step()
        if isinstance(step, SetWeightStep):
            return f"set_weight {step.set_weight:g}"
        if isinstance(step, PauseStep):
            d = step.pause.duration
            return "pause until promote" if d is None else f"pause {d:g}s"
        if isinstance(step, AnalysisStep):
            return "analysis"
        if isinstance(step, ConfirmStep):
            return f"confirm by {step.confirm.target}"
        return self.state.phase.value

    def _advance(self, now: float) -> None:
        if self.config.strategy is Strategy.CANARY:
            self._advance_canary(now)
        else:
            self._advance_blue_green(now)

    def _advance_canary(self, now: float) -> None:
        s = self.state
        while self._automation_running():
            step = self._current_step()
            if step is None:
                self._finish_promoted(now, f"all {len(self.config.steps)} steps done")
                return
            if isinstance(step, SetWeightStep):
                weight_pct = step.set_weight
                target = {s.stable: 100.0 - weight_pct, s.candidate: weight_pct}
                applied = f"step {s.step_index + 1}: {s.candidate} set to {weight_pct:g}%"
                if not self._judged_later(weight_pct):
                    if s.weights != target:
                        self._apply_weights(now, target)
                        self._record(now, s.phase, s.phase, f"{applied}; the next step moves on, so an "
                                                            "analysis must pass at this weight first")
                    if not self._may_leave(now):
                        return
                    self._next_step(now, Phase.PROGRESSING, f"step {s.step_index + 1}: analysis at {weight_pct:g}% passed")
                    continue
                self._apply_weights(now, target)
                self._next_step(now, Phase.PROGRESSING, applied)
            elif isinstance(step, PauseStep):
                duration_s = step.pause.duration
                if duration_s is None:
                    s.paused_by = "step"
                    self._transition(now, Phase.PAUSED, f"step {s.step_index + 1}: waiting for promote (serve-ab promote)")
                    return
                if now - s.step_started_at_s < duration_s - _EPS_S or not self._may_leave(now):
                    return
                self._next_step(now, Phase.PROGRESSING, f"step {s.step_index + 1}: pause of {duration_s:g}s done")
            elif isinstance(step, ConfirmStep):
                if not self._confirmed(step) or not self._may_leave(now):
                    return
                said = s.confirm_answer
                s.confirm_answer = None
                self._next_step(now, Phase.PROGRESSING, f"step {s.step_index + 1}: {said}")
            else:  # AnalysisStep
                if s.phase is not Phase.ANALYZING:
                    s.held_since_s = s.step_started_at_s
                    entered = f"step {s.step_index + 1}: analysis until a run passes"
                    self._transition(now, Phase.ANALYZING, entered)
                if not self._counted_pass():
                    return
                self._next_step(now, Phase.PROGRESSING, f"step {s.step_index + 1}: analysis passed")

    def _advance_blue_green(self, now: float) -> None:
        s, bg = self.state, self.config.blue_green_settings
        if s.phase is Phase.VALIDATING:
            if not s.validation_passed:
                return
            if self._mirror_gates() and not self._counted_pass():
                return
            if bg.auto_switch:
                self._switch(now, f"{s.candidate} validated; switched (auto_switch)")
            else:
                s.held_since_s = None  # a human decides now; no deadline
                waiting = f"{s.candidate} validated; waiting for promote (serve-ab promote) to switch"
                self._transition(now, Phase.VALIDATED, waiting)
                return
        if s.phase is Phase.SWITCHED:
            if now - s.switched_at_s < bg.post_switch_watch_s - _EPS_S or not self._may_leave(now):
                return
            self._finish_promoted(now, f"post-switch watch of {bg.post_switch_watch_s:g}s passed")

    def _confirmed(self, step: ConfirmStep) -> bool:
        """Whether the confirm step's endpoint said yes, asked since the step began; keeps
        its latest answer in words for the status line. A yes holds for the rest of the step:
        a later timeout or no does not take it back (an operator's pause holds the step)."""
        s, answer = self.state, self._confirm
        if s.confirmed_at_s is not None:
            return True
        if answer is None or answer.asked_at_s < self.window_since_s - _EPS_S:
            return False
        said = f": {answer.reason!r}" if answer.reason else ""
        if answer.error is not None:
            words = f"no usable answer from {step.confirm.target}: {answer.error}"
        elif answer.passed:
            words = f"confirmed by {step.confirm.target}{said}"
        else:
            words = f"{step.confirm.target} answered confirm: false{said}"
        s.confirm_answer = words
        if answer.error is None and answer.passed is True:
            s.confirmed_at_s = answer.asked_at_s
            return True
        return False

    def _asked_this_step(self, candidate: WindowStats) -> WindowStats:
        """The candidate's window without promql and webhook answers asked before the step's
        weights began: they judged other weights (a slow endpoint's answer can outlive its
        step), so the gate waits for one of this step's, as for a first answer."""
        since_s = self.window_since_s - _EPS_S
        promql = {k: a for k, a in candidate.promql.items() if a.asked_at_s >= since_s}
        webhooks = {k: a for k, a in candidate.webhooks.items() if a.asked_at_s >= since_s}
        if len(promql) == len(candidate.promql) and len(webhooks) == len(candidate.webhooks):
            return candidate
        return replace(candidate, promql=promql, webhooks=webhooks)

    def _pass_could_end_wait(self, now: float) -> bool:
        """Whether a pass at an analysis made ``now`` could end the current wait.

        A timed pause (or blue-green's watch) may end at the first tick at or after its end
        time (``now - start >= duration - eps``) if the latest analysis passed then; a tick
        analyses first once ``interval_s - eps`` has gone by since the last analysis. So an
        analysis at t is still the latest at some tick the wait may end on exactly when
        ``t + interval_s > end``; earlier ones are replaced before the time is up. Any other
        wait ends on the first passing analysis (or a person's promote, which needs none).

        An operator's pause moves a wait's end by the time paused, and its resume waits an
        interval before the next analysis: a verdict from before the pause may then be the
        latest at the new end. It ends the wait only if it was counted here
        (``step_verdict_counted``), so every pass that ends a step has had its share of alpha.
        """
        s, interval_s = self.state, self.config.analysis.interval_s
        step = self._current_step()
        # Elapsed time against the duration, as the wait's own test reads it (no large sums).
        if isinstance(step, PauseStep) and step.pause.duration is not None:
            return now - s.step_started_at_s + interval_s > step.pause.duration
        if s.phase is Phase.SWITCHED and s.switched_at_s is not None:
            return now - s.switched_at_s + interval_s > self.config.blue_green_settings.post_switch_watch_s
        return True

    def _may_leave(self, now: float) -> bool:
        """A wait is over; leave once the latest analysis in this step passed, or, where no
        gate could judge (no gates, no candidate traffic), when none ran."""
        s = self.state
        if self._counted_pass() or (s.step_verdict is None and not self._needs_evidence()):
            return True
        if s.held_since_s is None:
            s.held_since_s = now
            self._record(now, s.phase, s.phase, f"holding {self._where()}: {self._hold_reason()}")
        return False

    def _counted_pass(self) -> bool:
        s = self.state
        # A pass from before a restart ends nothing: the downtime's reports are judged first.
        return s.step_verdict is GateVerdict.PASS and s.step_verdict_counted and s.restarted_at_s is None

    def _judged_later(self, weight_pct: float) -> bool:
        """Whether a later step judges the candidate at this weight before it moves on: true
        unless the next step is another set_weight or the end, in which case this set_weight
        step itself must see a passing analysis (no weight is left without evidence)."""
        if not self.config.gates or not 0.0 < weight_pct < 100.0:
            return True
        following = self.config.steps[self.state.step_index + 1:self.state.step_index + 2]
        return bool(following) and not isinstance(following[0], SetWeightStep)

    def _needs_evidence(self) -> bool:
        """Whether some gate could judge the candidate now: at 100% (stable without traffic)
        the gates that need stable live cannot, and a wait ends without them."""
        gates = self.config.gates
        if self.state.weights[self.state.stable] == 0:
            gates = [g for g in gates if not g.needs_live_stable]
        return bool(gates) and self._analysis_active()

    def _hold_reason(self) -> str:
        s = self.state
        if s.restarted_at_s is not None:
            now = self._now()
            due = ""
            if s.last_analysis_at_s is not None:
                due = f", due in {_secs(s.last_analysis_at_s + self.config.analysis.interval_s - now)},"
            return (f"no analysis since the controller restarted {_secs(now - s.restarted_at_s)} ago; "
                    f"the next{due} reads what the routers served meanwhile, and must pass")
        if s.step_verdict is None:
            return (f"no analysis in this step yet; waiting for one with enough samples to pass "
                    f"(every {self.config.analysis.interval_s:g}s)")
        if s.step_verdict is GateVerdict.PASS and not self._counted_pass():
            return (f"the latest analysis passed before this wait's last {self.config.analysis.interval_s:g}s "
                    "(a pause moved its end), so it cannot end it; waiting for the next")
        return f"latest analysis {s.step_verdict.value}: {s.last_analysis_reason}"

    def _check_deadline(self, now: float) -> None:
        s, deadline_s = self.state, self.config.analysis.progress_deadline_s
        if deadline_s is None or s.held_since_s is None or now - s.held_since_s <= deadline_s + _EPS_S:
            return
        if s.restarted_at_s is not None:  # the analysis that reads the downtime comes first
            return
        waited = "validation" if s.phase is Phase.VALIDATING else "a passing analysis"
        last = f"; last analysis {s.step_verdict.value}: {s.last_analysis_reason}" if s.step_verdict else ""
        where = "" if s.phase is Phase.VALIDATING else f" {self._where()}"
        self._abort(now, f"progress deadline exceeded: waited {_secs(now - s.held_since_s)} for {waited}"
                         f"{where} (progress_deadline_s {deadline_s:g}){last}")

    # -- state changes -------------------------------------------------------------------

    def _next_step(self, now: float, phase: Phase, reason: str) -> None:
        s = self.state
        s.step_index += 1
        s.step_started_at_s = s.window_since_s = now
        s.step_verdict, s.step_verdict_counted = None, True
        s.analyses_in_step = s.passes_in_step = 0
        s.held_since_s = s.restarted_at_s = None
        s.confirm_answer, s.confirmed_at_s = None, None
        self._transition(now, phase, reason)

    def _apply_weights(self, now: float, weights: dict[str, float]) -> None:
        s = self.state
        before = s.weights
        s.weights = {s.stable: weights[s.stable], s.candidate: weights[s.candidate]}
        if s.weights != before:  # evidence from here on is at these weights (an operator's too)
            s.window_since_s = now
            s.restarted_at_s = None
        if self.config.strategy is Strategy.CANARY:
            if s.weights[s.candidate] <= 0:
                s.last_analysis_at_s = None
            elif s.last_analysis_at_s is None or s.weights != before:
                # The next run waits one interval, so its window holds these weights only.
                s.last_analysis_at_s = now

    def _switch(self, now: float, reason: str) -> None:
        s = self.state
        s.weights = {s.stable: 0.0, s.candidate: 100.0}
        s.switched_at_s = now
        s.last_analysis_at_s = now
        s.step_index = 1  # blue-green: 0 validation, 1 post-switch watch
        s.step_started_at_s = s.window_since_s = now
        s.step_verdict, s.step_verdict_counted = None, True
        s.analyses_in_step = s.passes_in_step = 0
        s.held_since_s = s.restarted_at_s = None
        self._transition(now, Phase.SWITCHED, reason)

    def _unpause(self, now: float, reason: str = "resumed") -> None:
        # Time spent paused does not count toward pauses, watches or the deadline.
        s = self.state
        if s.window_since_s is None:  # a state saved before it was kept: fix it before the timers move
            s.window_since_s = s.step_started_at_s
        paused_s = now - (s.paused_at_s if s.paused_at_s is not None else now)
        s.step_started_at_s += paused_s
        if s.switched_at_s is not None and s.phase is not Phase.PROMOTED:
            s.switched_at_s += paused_s
        if s.held_since_s is not None:
            s.held_since_s += paused_s
        if s.last_analysis_at_s is not None:  # windows from the pause are stale (not before a restart's wait)
            s.last_analysis_at_s = max(now, s.last_analysis_at_s)
        phase = s.resume_phase or Phase.PROGRESSING
        s.paused_by = "step" if phase is Phase.PAUSED else None
        s.paused_at_s, s.resume_phase = None, None
        self._transition(now, phase, reason)

    def _finish_promoted(self, now: float, reason: str) -> None:
        s = self.state
        s.weights = {s.stable: 0.0, s.candidate: 100.0}
        self._finish(now, Phase.PROMOTED, reason)
        s.retire_version = s.stable
        if self.config.strategy is Strategy.BLUE_GREEN:
            s.retire_at_s = max(s.switched_at_s + self.config.blue_green_settings.keep_blue_s, now)
        else:
            s.retire_at_s = now + self.config.retire_after_s

    def _abort(self, now: float, reason: str) -> None:
        s = self.state
        if s.weights[s.candidate] > 0:  # say what happened to the users, not only why
            reason = f"{reason}; all traffic back to {s.stable}"
        s.weights = {s.stable: 100.0, s.candidate: 0.0}
        self._finish(now, Phase.ABORTED, reason)
        s.retire_version = s.candidate
        s.retire_at_s = now + self.config.retire_after_s

    def _finish(self, now: float, phase: Phase, reason: str) -> None:
        s = self.state
        s.finished_at_s = now
        s.paused_by = s.paused_at_s = s.resume_phase = s.held_since_s = None
        s.last_analysis_at_s = s.restarted_at_s = None
        self._transition(now, phase, reason)

    def _transition(self, now: float, phase: Phase, reason: str) -> None:
        s = self.state
        previous, s.phase = s.phase, phase
        self._record(now, previous, phase, reason)

    def _record(self, now: float, from_phase: Phase | None, to_phase: Phase, reason: str,
                changed: bool = True) -> None:
        history = self.state.history
        entry = {
            "t_s": now, "from_phase": from_phase.value if from_phase else None,
            "to_phase": to_phase.value, "step_index": self.state.step_index, "reason": reason,
            "weights": dict(self.state.weights),
        }
        if self._acting is not None:
            entry.update(self._acting)
        if not changed:
            entry["changed"] = False  # only here: every other entry changed something
        history.append(entry)
        self._records += 1
        self.state.entries_total += 1
        if len(history) > MAX_HISTORY:  # a long hold must not grow the persisted state forever
            explains = next((h for h in reversed(history) if not changed_nothing(h)), None)
            del history[:-MAX_HISTORY]
            # Requests that changed nothing (a retried abort) must not push out the entry
            # that says why the rollout is where it is (_phase_reason).
            if explains is not None and explains not in history:
                history[0] = explains

    def _require_active(self, action: str) -> None:
        if self.done:
            raise RolloutError(
                f"cannot {action}: rollout is already {self.state.phase.value} ({self._phase_reason()})"
            )

    def _phase_reason(self) -> str:
        """The reason of the latest entry that changed something: why the rollout is where it
        is. Requests that changed nothing come after it and must not hide it."""
        history = self.state.history
        entry = next((h for h in reversed(history) if not changed_nothing(h)), history[-1])
        return entry["reason"]

    # -- decisions -----------------------------------------------------------------------

    def _decision(self, now: float, before: Mapping[str, float],
                  results: tuple[GateResult, ...] = (), verdict: GateVerdict | None = None) -> Decision:
        s = self.state
        retire: tuple[str, ...] = ()
        if self.done and s.retire_version and s.retire_at_s is not None and now >= s.retire_at_s - _EPS_S:
            retire = (s.retire_version,)
        return Decision(
            phase=s.phase, weights=dict(s.weights), weights_changed=dict(before) != s.weights,
            step_index=s.step_index, reason=self._status(now), retire=retire,
            analysis=results, verdict=verdict,
        )

    def _paused_where(self) -> str:
        """Where an operator's pause holds the rollout, with the time its wait has left: the
        pause stops that clock, so the time left is what resume gives back."""
        s = self.state
        paused_at_s = s.paused_at_s if s.paused_at_s is not None else self._now()
        # Held past its time for a passing analysis: no time left to give back.
        held = "; its time was up, holding for a passing analysis"
        if s.resume_phase is Phase.SWITCHED and s.switched_at_s is not None:
            left_s = s.switched_at_s + self.config.blue_green_settings.post_switch_watch_s - paused_at_s
            where = f"in the post-switch watch of {s.candidate}"
            return f"{where}{held}" if s.held_since_s is not None else f"{where}, {_secs(left_s)} of it left"
        if self.config.strategy is Strategy.BLUE_GREEN:
            return f"in phase {(s.resume_phase or s.phase).value}"
        where = f"at step {s.step_index + 1} ({self.step_text()})"
        step = self._current_step()
        if isinstance(step, PauseStep) and step.pause.duration is not None and s.resume_phase is Phase.PROGRESSING:
            left_s = s.step_started_at_s + step.pause.duration - paused_at_s
            return f"{where}{held}" if s.held_since_s is not None else f"{where}, {_secs(left_s)} of it left"
        return where

    def status_line(self) -> str:
        """One line on where the rollout stands and what it waits for, as of now."""
        return self._status(self._now())

    def _status(self, now: float) -> str:
        """One line on where the rollout stands and what it waits for."""
        s = self.state
        if self.done:
            last = self._phase_reason()
            if s.retire_version and s.retire_at_s is not None and now < s.retire_at_s - _EPS_S:
                return f"{last}; {s.retire_version} may be unloaded in {_secs(s.retire_at_s - now)}"
            return last
        if s.paused_by == "operator":
            return f"paused by operator {self._paused_where()}; serve-ab resume continues it"
        unanalysed_wait = s.step_verdict is None and s.phase in (Phase.PROGRESSING, Phase.SWITCHED)
        uncounted_pass = s.step_verdict is GateVerdict.PASS and not self._counted_pass()
        restarted = s.restarted_at_s is not None
        if s.held_since_s is not None and (s.step_verdict not in (None, GateVerdict.PASS) or unanalysed_wait
                                           or uncounted_pass or restarted):
            where = self._where() if self.config.strategy is Strategy.BLUE_GREEN else \
                f"{self._where()} ({self.step_text()})"
            holding = f"holding {where} for {_secs(now - s.held_since_s)}: {self._hold_reason()}"
            # A confirmed step waits for its analysis only: say it has its yes.
            return f"{s.confirm_answer}; {holding}" if s.confirmed_at_s is not None and s.confirm_answer else holding
        if s.phase is Phase.PAUSED:
            return f"step {s.step_index + 1}: waiting for promote (serve-ab promote)"
        if s.phase is Phase.ANALYZING:
            return f"step {s.step_index + 1}: waiting for an analysis run to pass"
        if s.phase is Phase.VALIDATING:
            return f"validating {s.candidate}: waiting for {' and '.join(self._validation_waits())}"
        if s.phase is Phase.VALIDATED:
            return f"{s.candidate} validated; waiting for promote (serve-ab promote) to switch"
        if s.phase is Phase.SWITCHED:
            left_s = s.switched_at_s + self.config.blue_green_settings.post_switch_watch_s - now
            return f"watching {s.candidate} after the switch, {_secs(left_s)} left"
        step = self._current_step()
        if isinstance(step, PauseStep) and step.pause.duration is not None:
            left_s = s.step_started_at_s + step.pause.duration - now
            return f"step {s.step_index + 1} ({self.step_text()}): {_secs(left_s)} left"
        if isinstance(step, ConfirmStep):
            return (f"step {s.step_index + 1}: waiting for {step.confirm.target} to answer "
                    f'{{"confirm": true}} (asked every {step.confirm.interval_s:g}s); latest: '
                    f"{s.confirm_answer or 'no answer yet'}")
        return f"step {s.step_index + 1} ({self.step_text()})"
