"""The shape of one comparison's sequential state as the report saves it, checked when a
restarted controller reads it back.

The state (:func:`serve_ab.analysis.comparisons.judge` writes it, ``{metric: {variant: look}}``)
is saved with the figures and read again after a restart. A look of another shape (a hand
edit, a bug of another release, a store that lost part of a value) made ``build_report``
raise at every report and run record for as long as the row stayed in the store, or showed a
verdict the report's schema refuses. Each look is checked here; one that does not fit is
dropped on its own (its tests start afresh), the others kept as they were saved.

Optional fields are those older releases did not save (a frozen look without its own
estimate, before 2026-12-06); unknown keys are kept, as a newer release's additions. A field
the report reads whenever its key is there (a frozen look's interval, a restart's bounds)
may be absent but not None: ``comparisons`` reads the saved keys, not their values, to know
what a look holds, and formats or unpacks what it finds.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

Verdict = Literal["better", "worse", "no_difference"]
Bound = float | None
# Saved as JSON, so a list (strict mode takes no list for a tuple).
Pair = Annotated[list[Bound], Field(min_length=2, max_length=2)]


def _square_finite(tau: float) -> float:
    # The mSPRT squares tau (float ** 2 raises OverflowError past 1.3e154, which build_report
    # does not catch); judge's own tau is a fraction of the control's value or spread.
    if not math.isfinite(tau * tau):
        raise ValueError("must be a number whose square is finite")
    return tau


Tau = Annotated[float, Field(gt=0), AfterValidator(_square_finite)]
# Bounds every release saves as numbers: a restart's note formats them ({lo:.4g}).
Numbers = Annotated[list[float], Field(min_length=2, max_length=2)]


class _Restart(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, strict=True)
    look: int = Field(ge=1)
    units: float = Field(ge=0)
    from_: Numbers = Field(alias="from")
    count: int = Field(default=1, ge=1)
    was: Verdict = None  # type: ignore[assignment]  # absent in a guardrail's restart, never None


class _Sequence(BaseModel):
    """One mSPRT sequence (:func:`serve_ab.analysis.comparisons._sequential_look`); a
    guardrail's non-inferiority sequence has the same shape."""
    model_config = ConfigDict(extra="allow", strict=True)
    p: float = Field(ge=0.0, le=1.0)
    # Numbers in every release's looks: a look that restarts the sequence saves them as its
    # restart's bounds, which the report formats.
    lo: float
    hi: float
    looks: int = Field(ge=0)
    estimate: float | None = None
    tau: Tau | None = None
    units: float = Field(default=0.0, ge=0)
    rel_lo: Bound = None
    rel_hi: Bound = None
    rel: str | None = None
    restart: _Restart | None = None


class _Frozen(BaseModel):
    """The fixed-horizon look that reached the planned sample, shown from then on."""
    model_config = ConfigDict(extra="allow", strict=True)
    verdict: Verdict
    # Absent from looks frozen before 2026-12-06; where present, shown as they are (a None
    # interval replaced the look's own and was unpacked: TypeError).
    abs_ci: Pair = None  # type: ignore[assignment]
    rel_ci: Pair = None  # type: ignore[assignment]
    abs_lift: float | None = None
    rel_lift: float | None = None  # None where the control's value is 0
    p_value: float = Field(default=None, ge=0.0, le=1.0)  # type: ignore[assignment]
    p_adjusted: float = Field(default=None, ge=0.0, le=1.0)  # type: ignore[assignment]
    # The report's fixed-horizon level is a finite number: judge saves one in (0, alpha].
    level: float = Field(default=None, gt=0.0, le=1.0)  # type: ignore[assignment]
    n_variant: int = Field(default=None, ge=0)  # type: ignore[assignment]
    n_control: int = Field(default=None, ge=0)  # type: ignore[assignment]

    @model_validator(mode="after")
    def _whole_where_read(self) -> _Frozen:
        # With the keys of its level and p-value the look's own test is shown, which reads
        # all of these (comparisons._restore_frozen tests the keys, not their values).
        if {"level", "p_value"} <= self.model_fields_set:
            missing = [name for name in ("abs_ci", "rel_ci", "p_adjusted", "n_variant", "n_control")
                       if name not in self.model_fields_set]
            if missing:
                raise ValueError(f"a frozen look with its level and p-value needs {', '.join(missing)} too")
        return self


class SavedLook(BaseModel):
    """One variant's state on one metric."""
    model_config = ConfigDict(extra="allow", strict=True)
    tau: Tau | None = None
    seq: _Sequence | None = None
    guard: _Sequence | None = None
    decided: Verdict | None = None
    frozen: _Frozen | None = None


def readable_looks(saved: Any) -> tuple[dict[str, dict[str, Any]] | None, list[str]]:
    """The saved state with every look that fits :class:`SavedLook`, as it was saved, and one
    line for each part dropped (``metric/variant: why``). None for a state that is not a
    mapping of metrics at all."""
    if not isinstance(saved, dict):
        return None, [f"a {type(saved).__name__}, not {{metric: {{variant: look}}}}"]
    kept: dict[str, dict[str, Any]] = {}
    dropped: list[str] = []
    for metric, looks in saved.items():
        if not isinstance(looks, dict):
            dropped.append(f"{metric}: a {type(looks).__name__}, not {{variant: look}}")
            continue
        for variant, look in looks.items():
            try:
                SavedLook.model_validate(look)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"]) or "the look"
                dropped.append(f"{metric}/{variant}: {where}: {first['msg']} (got {first.get('input')!r:.60})")
                continue
            kept.setdefault(metric, {})[variant] = look
    return kept, dropped
