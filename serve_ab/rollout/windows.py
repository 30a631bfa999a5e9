"""The gates' windows, merged from the routers' interval aggregates and joined feedback (pure).

The controller files each router's per-version :class:`GateAggregate` under the second it
arrived (its own clock), unless every request in it was routed by other weights than the
current ones (the step before's), and each joined feedback under the second the client sent it
(unless its answer was routed by other weights). A
rollout's analysis reads the whole current step, or its last ``window_s``: the step's total
is kept as a running merge (so a look costs versions and metrics, not requests, feedback or
seconds held), and the last few minutes are kept per second, from which a new step's total
starts and a sliding window is summed. (Feedback was once kept as events and folded again
at every tick: about 100 ms of the controller's CPU a tick over a 200-s step with 200
reports a second.)

Example::

    windows = GateWindows(keep_s=120.0)
    windows.add(now_s, report.aggregate.gates, {"v2": report.aggregate.shadow["v2"].agreement_groups})
    windows.add_feedback(now_s, "v2", "revenue", 12.5, None, unit)
    window = windows.window(start_s=step_started_at_s, step=True)
    stats = window_stats(window.gates, versions=("v1", "v2"), agreements=window.agreements,
                         values=window.values, outcomes=window.outcomes)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from serve_ab.analysis import json_state
from serve_ab.analysis.aggregate import GateAggregate
from serve_ab.analysis.clusters import ValueGroups
from serve_ab.rollout.gates import ConversionEvent, FeedbackEvent, WindowStats, conversion_stats, feedback_stats

__all__ = ["GateWindows", "Window", "window_stats"]

SLOT_S = 1.0


#: version -> metric name -> the reports' values (or outcomes, 0 and 1) per group of users
FeedbackGroups = dict[str, dict[str, ValueGroups]]


class Window(NamedTuple):
    """What arrived over a window, for :func:`window_stats`."""

    gates: dict[str, GateAggregate]
    #: mirrored version -> its answered pairs' agreements (0 or 1) per group of users
    agreements: dict[str, ValueGroups]
    values: FeedbackGroups
    outcomes: FeedbackGroups


class _Totals:
    """Per-version gate aggregates, shadow agreements and feedback over some span."""

    def __init__(self) -> None:
        self.gates: dict[str, GateAggregate] = {}
        self.agreements: dict[str, ValueGroups] = {}
        self.values: FeedbackGroups = {}
        self.outcomes: FeedbackGroups = {}

    def add(self, gates: Mapping[str, GateAggregate], agreements: Mapping[str, ValueGroups]) -> None:
        for version, gate in gates.items():
            mine = self.gates.get(version)
            if mine is None:
                mine = self.gates[version] = GateAggregate()
            mine.merge(gate)
        for version, groups in agreements.items():
            self.agreements.setdefault(version, ValueGroups()).merge(groups)

    def add_feedback(self, version: str, name: str, value: float | None, converted: bool | None,
                     unit: int | None) -> None:
        kind, number = (self.values, value) if converted is None else (self.outcomes, float(converted))
        kind.setdefault(version, {}).setdefault(name, ValueGroups()).add(unit, float(number))

    def merge(self, other: _Totals) -> None:
        self.add(other.gates, other.agreements)
        for mine, theirs in ((self.values, other.values), (self.outcomes, other.outcomes)):
            for version, metrics in theirs.items():
                for name, groups in metrics.items():
                    mine.setdefault(version, {}).setdefault(name, ValueGroups()).merge(groups)

    def window(self) -> Window:
        return Window(self.gates, self.agreements, self.values, self.outcomes)


class GateWindows:
    """Gate aggregates by arrival time: per-second slots for the last ``keep_s``, and the
    running total since the step started."""

    def __init__(self, keep_s: float = 120.0, slot_s: float = SLOT_S):
        self.keep_s = keep_s
        self.slot_s = slot_s
        self._slots: dict[float, _Totals] = {}
        self._since_s = math.inf  # the running total's start (a step's start)
        self._since = _Totals()

    def add(self, t_s: float, gates: Mapping[str, GateAggregate],
            agreements: Mapping[str, ValueGroups] = {}) -> None:  # noqa: B006 (read only)
        self._slot(t_s).add(gates, agreements)
        if t_s >= self._since_s:
            self._since.add(gates, agreements)

    def add_feedback(self, t_s: float, version: str, name: str, value: float | None, converted: bool | None,
                     unit: int | None = None) -> None:
        """One joined feedback report, sent at ``t_s``: a ``value``, or an outcome (``converted``)."""
        self._slot(t_s).add_feedback(version, name, value, converted, unit)
        if t_s >= self._since_s:
            self._since.add_feedback(version, name, value, converted, unit)

    def begin_step(self, start_s: float) -> None:
        """Start the running total of the step that began at ``start_s``, if it has not begun:
        called before anything is added, so that what arrives from ``start_s`` on counts in
        the step, the rest of its first second included. Started only at the step's first
        look, it was summed from whole seconds and lost what came between the step's start
        and that look within the same second (a router's report, up to a second of traffic)."""
        if start_s != self._since_s:
            self.window(start_s, step=True)

    def _slot(self, t_s: float) -> _Totals:
        start = math.floor(t_s / self.slot_s) * self.slot_s
        slot = self._slots.get(start)
        if slot is None:
            slot = self._slots[start] = _Totals()
            for old in [s for s in self._slots if s < t_s - self.keep_s]:
                del self._slots[old]
        return slot

    def window(self, start_s: float, *, step: bool) -> Window:
        """What arrived since ``start_s``. ``step``: ``start_s`` is the step's start, whose
        running total is kept (and started afresh from the slots when the step changed);
        otherwise a sliding window summed from the slots."""
        if step and start_s == self._since_s:
            totals = self._since
        else:
            totals = _Totals()
            for slot_start, slot in self._slots.items():
                if slot_start >= start_s:
                    totals.merge(slot)
            if step:
                self._since_s, self._since = start_s, totals
        return totals.window()

    # -- across a controller restart -----------------------------------------------------------

    def step_state(self, step_started_at_s: float) -> dict[str, Any]:
        """The running total of the step that started at ``step_started_at_s`` (JSON-able),
        for :meth:`restore_step` in a restarted controller. Taken for that step even before
        its first look (a save between the tick that moved to it and the next one). The
        per-second slots are not kept: a sliding ``window_s`` refills after a restart."""
        if self._since_s != step_started_at_s:
            self.window(step_started_at_s, step=True)  # what the step's next look starts from
        since = self._since
        return {"since_s": self._since_s,
                "totals": json_state.dump({"gates": since.gates, "agreements": since.agreements,
                                           "values": since.values, "outcomes": since.outcomes})}

    def restore_step(self, state: Mapping[str, Any], step_started_at_s: float) -> bool:
        """Carry on with the running total :meth:`step_state` saved (into windows nothing was
        added to yet), if it is the total of the step that started at ``step_started_at_s``;
        a step that began after the save starts from the reports that come. Whether it was
        taken; ValueError for a state :meth:`step_state` could not have written, or figures
        that do not add up as a window's (then nothing is taken)."""
        try:
            if state.get("since_s") != step_started_at_s:
                return False
            totals = json_state.load(state.get("totals"))
            restored = _Totals()
            for version, gate in totals["gates"].items():
                _expect(gate, GateAggregate, f"gates[{version!r}]")
                restored.gates[version] = gate
            for version, groups in totals["agreements"].items():
                _expect(groups, ValueGroups, f"agreements[{version!r}]")
                restored.agreements[version] = groups
            for kind, mine in (("values", restored.values), ("outcomes", restored.outcomes)):
                for version, metrics in totals[kind].items():
                    for name, groups in metrics.items():
                        _expect(groups, ValueGroups, f"{kind}[{version!r}][{name!r}]")
                        mine.setdefault(version, {})[name] = groups
            # Figures of the right classes may still hold parts of the wrong types (a damaged
            # row): what a look does with them, done once here, finds those.
            trial = _Totals()
            trial.merge(restored)
            window_stats(trial.gates, versions=trial.gates, agreements=trial.agreements,
                         values=trial.values, outcomes=trial.outcomes)
        except ValueError:
            raise
        except Exception as err:  # noqa: BLE001 - whatever a damaged row breaks, it is not taken
            raise ValueError(f"a saved step window could not be read: {err!r}") from err
        self._since_s, self._since = step_started_at_s, restored
        return True


def _expect(value: Any, cls: type, where: str) -> None:
    if not isinstance(value, cls):
        raise ValueError(f"a saved step window's {where} is a {type(value).__name__}, not a {cls.__name__}")


def window_stats(gates: Mapping[str, GateAggregate], *, versions: Iterable[str],
                 agreements: Mapping[str, ValueGroups] = {},  # noqa: B006 (read only)
                 values: Mapping[str, Mapping[str, ValueGroups]] | None = None,
                 outcomes: Mapping[str, Mapping[str, ValueGroups]] | None = None,
                 feedback: Iterable[FeedbackEvent] = (), conversions: Iterable[ConversionEvent] = (),
                 start_s: float = -math.inf, end_s: float = math.inf) -> dict[str, WindowStats]:
    """One :class:`WindowStats` per version from merged gate aggregates, mirrored versions'
    agreements with the live answers, and feedback: grouped already (``values`` and
    ``outcomes``, as :meth:`GateWindows.window` gives them), or as events with
    ``start_s <= t_s < end_s`` (folded here). Class counts get one length on every side, so
    drift compares like with like."""
    if values is None or outcomes is None:
        values, outcomes = feedback_groups(feedback, conversions, start_s, end_s)
    names = list(versions)
    classes = [c for name in names if name in gates for c in gates[name].class_counts]
    width = max(classes) + 1 if classes else 0
    out = {}
    for name in names:
        gate = gates.get(name) or GateAggregate()
        value_groups, outcome_groups = dict(values.get(name, {})), dict(outcomes.get(name, {}))
        agreement = agreements.get(name)
        out[name] = WindowStats(
            version=name,
            request_count=gate.requests,
            error_count=gate.errors,
            latencies_ms=gate.latency_ms,
            class_counts=tuple(gate.class_counts.get(c, 0) for c in range(width)),
            scores=gate.scores,
            feedback=feedback_stats(value_groups),
            conversions=conversion_stats(outcome_groups),
            groups=gate.groups,
            feedback_groups=value_groups,
            conversion_groups=outcome_groups,
            shadow_pairs=0 if agreement is None else int(agreement.counts.sum()),
            shadow_agreements=0 if agreement is None else int(round(float(agreement.sums.sum()))),
            shadow_groups=agreement,
        )
    return out


def feedback_groups(feedback: Iterable[FeedbackEvent], conversions: Iterable[ConversionEvent],
                    start_s: float = -math.inf, end_s: float = math.inf) -> tuple[FeedbackGroups, FeedbackGroups]:
    """Feedback events with ``start_s <= t_s < end_s`` as :class:`Window` holds them."""
    totals = _Totals()
    for event in feedback:
        if start_s <= event.t_s < end_s:
            totals.add_feedback(event.version, event.name, event.value, None, event.unit)
    for event in conversions:
        if start_s <= event.t_s < end_s:
            totals.add_feedback(event.version, event.name, None, event.converted, event.unit)
    return totals.values, totals.outcomes
