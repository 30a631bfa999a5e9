"""The rollout controller: one deployment in the app that decides the weights.

Routers report what they served (:meth:`RolloutController.record`) and long-poll for
weights (:meth:`RolloutController.wait_for_update`), so a decision reaches every router
replica as soon as it is made, with no polling delay. The decisions themselves come from
the pure :class:`serve_ab.rollout.Rollout`; this class only feeds it windows of
observations, persists its state after every change, and serves the control actions.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from serve_ab.config import ExperimentConfig, parse_experiment
from serve_ab.feedback import FeedbackJoin
from serve_ab.gates import Observation, build_windows
from serve_ab.rollout import Phase, Rollout
from serve_ab.rollout_config import PauseStep, SetWeightStep, Strategy
from serve_ab.state_store import SqliteStateStore

logger = logging.getLogger("ray.serve")

# Observations kept for windows; a bound so a flood cannot exhaust the controller's memory.
MAX_OBSERVATIONS = 200_000
LONG_POLL_TIMEOUT_S = 10.0


def rollout_key(cfg: ExperimentConfig) -> str:
    """One persisted rollout per (model, strategy, stable, candidate): a new candidate starts fresh."""
    assert cfg.rollout is not None
    r = cfg.rollout
    return f"{cfg.model}:{r.strategy.value}:{r.stable}->{r.candidate}"


class ControllerCore:
    """Everything the controller does, minus Ray: testable with a fake clock."""

    def __init__(self, cfg: ExperimentConfig, store, clock=time.time):
        assert cfg.rollout is not None, "a controller needs a rollout"
        self.cfg = cfg
        self.clock = clock
        self.store = store
        self.key = rollout_key(cfg)
        saved = store.load(self.key)
        if saved is not None:
            self.rollout = Rollout.from_dict(cfg.rollout, saved, clock)
            logger.info("serve-ab controller resumed %s at step %s, phase %s, weights %s",
                        self.key, self.rollout.state.step_index, self.rollout.phase.value,
                        self.rollout.weights)
        else:
            self.rollout = Rollout(cfg.rollout, clock)
        self.observations: collections.deque[Observation] = collections.deque(maxlen=MAX_OBSERVATIONS)
        self.feedback = FeedbackJoin()
        self.last_analysis: list[dict[str, Any]] = []
        self.retired: tuple[str, ...] = ()
        self.epoch = 0
        self.started_at_s = clock()
        self._persist()

    # -- inputs ------------------------------------------------------------------------------

    def record(self, rows: list[tuple]) -> None:
        """Rows of (t_s, version, latency_ms, ok, predicted_class, score, request_id)."""
        for t_s, version, latency_ms, ok, predicted_class, score, request_id in rows:
            self.observations.append(Observation(version, latency_ms, ok, predicted_class, score, t_s))
            if request_id:
                self.feedback.remember(request_id, version, t_s)

    # -- the loop ----------------------------------------------------------------------------

    def tick(self) -> bool:
        """One look at timers and windows; True when the weights or phase changed."""
        before = (self.rollout.phase, dict(self.rollout.weights), self.retired)
        now = self.clock()
        interval_s = self.cfg.rollout.analysis.interval_s
        while self.observations and self.observations[0].t_s < now - 2 * interval_s - 60:
            self.observations.popleft()
        versions = [self.cfg.rollout.stable, self.cfg.rollout.candidate]
        feedback, conversions = self.feedback.events(since_s=now - interval_s)
        windows = build_windows(
            self.observations, versions=versions, feedback=feedback, conversions=conversions,
            start_s=now - interval_s, end_s=now + 1.0,
        )
        decision = self.rollout.tick(windows)
        if decision.analysis:
            self.last_analysis = [g.to_dict() for g in decision.analysis]
        self.retired = decision.retire
        changed = before != (self.rollout.phase, dict(self.rollout.weights), self.retired)
        if changed or decision.analysis:
            self._persist()
        if changed:
            self.epoch += 1
            logger.info("serve-ab rollout %s: %s, weights %s", self.key, decision.reason, decision.weights)
        return changed

    def act(self, action: str, body: dict[str, Any]) -> None:
        """A control action; raises RolloutError when the phase does not allow it."""
        if action == "promote":
            self.rollout.promote(full=bool(body.get("full", False)))
        elif action == "pause":
            self.rollout.pause()
        elif action == "resume":
            self.rollout.resume()
        elif action == "abort":
            self.rollout.abort(str(body.get("reason") or "aborted by operator"))
        elif action == "rollback":
            self.rollout.rollback()
        elif action == "weights":
            self.rollout.set_weights(body["weights"])
        else:
            raise KeyError(action)
        self._persist()
        self.epoch += 1

    def _persist(self) -> None:
        self.store.save(self.key, self.rollout.to_dict())

    # -- outputs -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What routers need: the weights of every version, and what may be unloaded."""
        weights = {v.name: 0.0 for v in self.cfg.versions}
        weights.update(self.rollout.weights)
        return {"epoch": self.epoch, "weights": weights, "retired": list(self.retired),
                "mirror": self.mirror()}

    def mirror(self) -> dict[str, Any] | None:
        """Blue-green validating on live traffic: which version gets copies, and how many."""
        r = self.cfg.rollout
        settings = r.blue_green_settings
        if (r.strategy is Strategy.BLUE_GREEN and settings.validation_min_samples is not None
                and self.rollout.phase in (Phase.VALIDATING, Phase.VALIDATED)):
            return {"version": r.candidate, "percent": settings.validation_mirror_pct}
        return None

    def status(self, history: bool = False) -> dict[str, Any]:
        r = self.cfg.rollout
        s = self.rollout.state
        now = self.clock()
        steps = list(r.steps)
        step_text = None
        next_step_in_s = None
        if r.strategy is Strategy.CANARY and s.step_index < len(steps):
            step = steps[s.step_index]
            if isinstance(step, SetWeightStep):
                step_text = f"set_weight {step.set_weight:g}"
            elif isinstance(step, PauseStep):
                duration_s = step.pause.duration
                step_text = f"pause {duration_s:g}s" if duration_s is not None else "pause (until promoted)"
                if duration_s is not None and self.rollout.phase is Phase.PROGRESSING:
                    next_step_in_s = max(0.0, s.step_started_at_s + duration_s - now)
            else:
                step_text = "analysis"
        weights = self.snapshot()["weights"]
        out = {
            "model": self.cfg.model,
            "strategy": r.strategy.value,
            "stable": r.stable,
            "candidate": r.candidate,
            "phase": self.rollout.phase.value,
            "step_index": s.step_index,
            "steps_total": len(steps),
            "step": step_text,
            "weights_pct": weights,
            "reason": self.rollout.status_line(),
            "next_step_in_s": next_step_in_s,
            "failures_total": s.failures_total,
            "failure_limit": r.analysis.failure_limit,
            "gates": self.last_analysis,
            "retired": list(self.retired),
            "controller": {"pid": os.getpid(), "started_at_s": self.started_at_s},
        }
        if history:
            out["history"] = list(s.history)
        return out


@serve.deployment(name="RolloutController", num_replicas=1, max_ongoing_requests=1000)
class RolloutController:
    async def __init__(self, experiment: dict[str, Any]):
        cfg = parse_experiment(experiment)
        self.core = ControllerCore(cfg, SqliteStateStore(Path(cfg.controller.state_path)))
        self._changed = asyncio.Event()
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        validated = False
        while True:
            try:
                if self.core.rollout.phase is Phase.VALIDATING and not validated:
                    validated = True
                    passed, reason = await self._validate_green()
                    self.core.rollout.report_validation(passed, reason)
                    self._notify()
                if self.core.tick():
                    self._notify()
            except Exception:  # a bad tick must not stop the rollout's clock
                logger.exception("serve-ab controller tick failed")
            await asyncio.sleep(self.core.cfg.controller.tick_s)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _validate_green(self) -> tuple[bool, str]:
        """Run the synthetic request set through green, pinned, before it gets any traffic."""
        r = self.core.cfg.rollout
        settings = r.blue_green_settings
        green = r.candidate
        if settings.validation_samples:
            samples = json.loads(Path(settings.validation_samples).read_text())
            inputs, labels = samples["inputs"], samples.get("labels")
        else:
            inputs, labels = None, None
        app_name = serve.get_replica_context().app_name
        router = serve.get_deployment_handle("Router", app_name)
        try:
            if inputs is None:
                spec = await router.interface.remote()
                inputs = np.zeros((1, *[max(d, 1) for d in spec["input_shape"][1:]]), dtype=np.float32)
            result = await router.predict.remote(inputs, version=green)
        except Exception as err:
            return False, f"validation of {green} failed: {type(err).__name__}: {err}"
        outputs = np.asarray(result["outputs"])
        if not np.isfinite(outputs).all():
            return False, f"validation of {green}: outputs contain NaN or infinity"
        if labels is not None and settings.validation_min_accuracy > 0:
            accuracy = float(np.mean(outputs.argmax(axis=1) == np.asarray(labels)))
            if accuracy < settings.validation_min_accuracy:
                return False, (f"validation of {green}: accuracy {accuracy:.3f} on {len(labels)} samples "
                               f"< {settings.validation_min_accuracy}")
            return True, f"validation of {green}: accuracy {accuracy:.3f} on {len(labels)} samples"
        return True, f"validation of {green}: {len(outputs)} sample outputs finite and well-formed"

    # -- called by routers --------------------------------------------------------------------

    async def record(self, rows: list[tuple]) -> None:
        self.core.record(rows)

    async def wait_for_update(self, known_epoch: int, timeout_s: float = LONG_POLL_TIMEOUT_S) -> dict[str, Any]:
        if known_epoch == self.core.epoch:
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), timeout_s)
            except asyncio.TimeoutError:
                pass
        return self.core.snapshot()

    async def feedback(self, request_id: str, name: str, value: float | None, converted: bool | None) -> str | None:
        return self.core.feedback.add(request_id, name, value, converted, self.core.clock())

    # -- control -----------------------------------------------------------------------------

    async def status(self, history: bool = False) -> dict[str, Any]:
        return self.core.status(history)

    async def act(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        self.core.act(action, body)
        self._notify()
        return self.core.status()
