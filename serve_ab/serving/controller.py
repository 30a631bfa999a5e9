"""The controller: one deployment in every app, beside the router.

Routers report what they served (:meth:`ExperimentController.record`) and long-poll for
weights (:meth:`ExperimentController.wait_for_update`), so a decision reaches every router
replica as soon as it is made, with no polling delay. Being the only replica that sees
every request, the controller is also where the app's figures live: the cumulative
per-version statistics (:class:`serve_ab.analysis.accumulate.ExperimentStats`) behind the A/B
report and the Prometheus metrics, and the run record.

With a rollout, the decisions come from the pure :class:`serve_ab.rollout.Rollout`; this
class only feeds it windows of observations, persists its state after every change, and
serves the control actions. Without one, the weights are the config's.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from serve_ab.config.experiment import ExperimentConfig, parse_experiment
from serve_ab.analysis.accumulate import ExperimentStats
from serve_ab.analysis.report_model import Report
from serve_ab.rollout.feedback import FeedbackJoin
from serve_ab.rollout.gates import Observation, PromQLResult, build_windows
from serve_ab.rollout.promql import PromQLPoller
from serve_ab.rollout.machine import Phase, Rollout, RolloutError
from serve_ab.config.rollout import PauseStep, Strategy
from serve_ab.store.state import SqliteStateStore
from serve_ab.api.schemas import ActionRequest
from serve_ab.errors import InvalidInput, UnknownAction
from serve_ab.serving.core.messages import Action, Actor, Mirror, Observations, RoutingSnapshot

logger = logging.getLogger("ray.serve")

# Observations kept for windows; a bound so a flood cannot exhaust the controller's memory.
MAX_OBSERVATIONS = 200_000
LONG_POLL_TIMEOUT_S = 10.0
# The report's sequential (always-valid) p-values take a look this often, and on every request.
REPORT_INTERVAL_S = 5.0


def rollout_key(cfg: ExperimentConfig) -> str:
    """One persisted rollout per (model, strategy, stable, candidate): a new candidate starts fresh."""
    assert cfg.rollout is not None
    r = cfg.rollout
    return f"{cfg.model}:{r.strategy.value}:{r.stable}->{r.candidate}"


class ControllerCore:
    """Everything the controller does, minus Ray: testable with a fake clock."""

    def __init__(self, cfg: ExperimentConfig, store, clock=time.time):
        self.cfg = cfg
        self.clock = clock
        self.store = store
        self.rollout: Rollout | None = None
        self.key = rollout_key(cfg) if cfg.rollout is not None else None
        if cfg.rollout is not None:
            saved = store.load(self.key)
            if saved is not None:
                self.rollout = Rollout.from_dict(cfg.rollout, saved, clock)
                logger.info("serve-ab controller resumed %s at step %s, phase %s, weights %s",
                            self.key, self.rollout.state.step_index, self.rollout.phase.value,
                            self.rollout.weights)
            else:
                self.rollout = Rollout(cfg.rollout, clock)
        self.observations: collections.deque[Observation] = collections.deque(maxlen=MAX_OBSERVATIONS)
        # (t_s, mirrored version, agreed) of each answered copy, for shadow_agreement gates.
        self.pair_observations: collections.deque[tuple[float, str, bool]] = collections.deque(
            maxlen=MAX_OBSERVATIONS)
        self.started_at_s = clock()
        self.run_id, self.run_started_at_s = self._run_identity()
        shadow_version = cfg.shadow.version if cfg.shadow is not None else None
        feedback_kinds = {m.name: m.kind for m in cfg.analysis.metrics}
        saved_stats = store.load(self._stats_key())
        if saved_stats is not None:  # a restarted controller carries on with the run's figures
            self.stats = ExperimentStats.from_state(saved_stats, shadow_version, feedback_kinds)
        else:
            self.stats = ExperimentStats([v.name for v in cfg.versions], self.started_at_s,
                                         shadow_version, feedback_kinds)
        # Feedback events are kept for the gates' windows only; the totals go to self.stats.
        self.feedback = FeedbackJoin(on_emit=self._feedback_joined, keep_events=self.rollout is not None,
                                     on_unjoined=self.stats.count_unjoined)
        self.last_analysis: list[dict[str, Any]] = []
        self.retired: tuple[str, ...] = ()
        self.epoch = 0
        self._persist()

    def _stats_key(self) -> str:
        return f"stats:{self.run_id}"

    def save_stats(self, state: dict[str, Any] | None = None) -> None:
        """Keep the run's figures, so a restarted controller does not start them from zero.

        ``state``: ``self.stats.to_state()`` taken earlier, when saving from another thread.
        """
        if state is None:
            state = self.stats.to_state(self.clock())
        self.store.save(self._stats_key(), state)

    def _run_identity(self) -> tuple[str, float]:
        """The run this controller continues: the same config as the saved run is the same
        run (a restarted controller), any change starts a new one."""
        config = self.cfg.model_dump(mode="json")
        fingerprint = json.dumps(config, sort_keys=True)
        key = f"run:{self.cfg.model}"
        saved = self.store.load(key)
        if saved is not None and saved.get("fingerprint") == fingerprint:
            return saved["run_id"], saved["started_at_s"]
        started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.started_at_s))
        run_id = f"{self.cfg.model}-{started}-{hashlib.blake2b(fingerprint.encode(), digest_size=4).hexdigest()}"
        self.store.save(key, {"run_id": run_id, "started_at_s": self.started_at_s,
                              "fingerprint": fingerprint})
        return run_id, self.started_at_s

    # -- inputs ------------------------------------------------------------------------------

    def record(self, observations: Observations) -> None:
        """What a router served: answers and failures of every version, and shadow pairs.

        Mirrored rows are copies the client never saw: they feed the candidate's gate
        windows, not its A/B figures.
        """
        gated = self.rollout is not None  # windows are only read by a rollout's gates
        for row in observations.served:
            if gated:
                self.observations.append(Observation(row.version, row.latency_ms, row.error_kind is None,
                                                     row.predicted_class, row.score, row.t_s))
            if row.mirrored:
                continue
            self.stats.record(row.t_s, row.version, row.latency_ms, row.error_kind, row.predicted_class,
                              row.unit, row.assigned)
            if row.request_id:
                self.feedback.remember(row.request_id, row.version, row.t_s)
        for pair in observations.pairs:
            if gated and pair.error_kind is None and pair.live_class is not None \
                    and pair.shadow_class is not None:
                self.pair_observations.append((pair.t_s, pair.shadow_version,
                                               pair.live_class == pair.shadow_class))
            if pair.shadow_version == self.stats.shadow_version:
                self.stats.record_pair(pair.t_s, pair.live_version, pair.live_class, pair.shadow_class,
                                       pair.score_diff, pair.shadow_latency_ms, pair.error_kind)

    def _feedback_joined(self, version: str, name: str, value: float | None,
                         converted: bool | None, t_s: float) -> None:
        self.stats.record_feedback(t_s, version, name, value, converted)

    # -- the loop ----------------------------------------------------------------------------

    def tick(self, promql: Mapping[str, PromQLResult] | None = None) -> bool:
        """One look at timers and windows; True when the weights or phase changed.

        ``promql``: the latest answers of the rollout's promql gates, by gate name.
        """
        if self.rollout is None:
            return False
        now = self.clock()
        before = (self.rollout.phase, dict(self.rollout.weights), self.retired)
        interval_s = self.cfg.rollout.analysis.interval_s
        while self.observations and self.observations[0].t_s < now - 2 * interval_s - 60:
            self.observations.popleft()
        while self.pair_observations and self.pair_observations[0][0] < now - 2 * interval_s - 60:
            self.pair_observations.popleft()
        versions = [self.cfg.rollout.stable, self.cfg.rollout.candidate]
        feedback, conversions = self.feedback.events(since_s=now - interval_s)
        windows = build_windows(
            self.observations, versions=versions, feedback=feedback, conversions=conversions,
            start_s=now - interval_s, end_s=now + 1.0,
        )
        candidate = self.cfg.rollout.candidate
        agreed = [agree for t_s, version, agree in self.pair_observations
                  if version == candidate and t_s >= now - interval_s]
        windows[candidate] = dataclasses.replace(
            windows[candidate], promql=promql or {}, shadow_pairs=len(agreed),
            shadow_agreements=sum(agreed))
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

    def act(self, action: Action, body: ActionRequest = ActionRequest(), actor: Actor | None = None) -> None:
        """A control action; raises ActionRefused (RolloutError) when the phase does not
        allow it, InvalidInput when its body does not fit it."""
        if self.rollout is None:
            raise RolloutError("this experiment has no rollout: add rollout: to its config")
        if action is Action.PROMOTE:
            self.rollout.promote(full=body.full)
        elif action is Action.PAUSE:
            self.rollout.pause()
        elif action is Action.RESUME:
            self.rollout.resume()
        elif action is Action.ABORT:
            self.rollout.abort(body.reason or "aborted by operator")
        elif action is Action.ROLLBACK:
            self.rollout.rollback()
        elif action is Action.WEIGHTS:
            if body.weights is None:
                raise InvalidInput('set weights with a body like {"weights": {"v1": 80, "v2": 20}}')
            try:
                self.rollout.set_weights(body.weights)
            except RolloutError:
                raise
            except ValueError as err:  # weights that do not fit the experiment
                raise InvalidInput(str(err)) from None
        else:
            raise UnknownAction(f"unknown action {action!r}; valid: {[a.value for a in Action]}")
        self._persist()
        self.epoch += 1

    def _persist(self) -> None:
        if self.rollout is not None:
            self.store.save(self.key, self.rollout.to_dict())

    # -- outputs -----------------------------------------------------------------------------

    def weights(self) -> dict[str, float]:
        """The weights of every version now, in listing order."""
        weights = {v.name: 0.0 for v in self.cfg.versions}
        weights.update(self.rollout.weights if self.rollout is not None else self.cfg.weights_pct())
        return weights

    def snapshot(self) -> RoutingSnapshot:
        """What routers need: the weights of every version, what may be unloaded, and which
        versions get copies of live requests."""
        return RoutingSnapshot(self.epoch, self.weights(), tuple(self.retired), tuple(self.mirrors()))

    def mirrors(self) -> list[Mirror]:
        """Versions that get copies of live requests, and what share: the configured shadow,
        and a blue-green green validating on live traffic."""
        mirrors = []
        if self.cfg.shadow is not None:
            mirrors.append(Mirror(self.cfg.shadow.version, self.cfg.shadow.percent))
        r = self.cfg.rollout
        if r is not None and r.strategy is Strategy.BLUE_GREEN:
            settings = r.blue_green_settings
            if (settings.validation_min_samples is not None
                    and self.rollout.phase in (Phase.VALIDATING, Phase.VALIDATED)
                    and r.candidate != (self.cfg.shadow.version if self.cfg.shadow else None)):
                mirrors.append(Mirror(r.candidate, settings.validation_mirror_pct))
        return mirrors

    def stats_snapshot(self, samples: bool = True) -> dict[str, Any]:
        return self.stats.snapshot(self.clock(), samples=samples)

    def status(self, history: bool = False) -> dict[str, Any]:
        if self.rollout is None:
            return {"model": self.cfg.model, "strategy": None, "phase": "static",
                    "weights_pct": self.weights(), "gates": [], "retired": [],
                    "shadow": self.cfg.shadow.model_dump() if self.cfg.shadow else None,
                    "run_id": self.run_id,
                    "controller": {"pid": os.getpid(), "started_at_s": self.started_at_s}}
        r = self.cfg.rollout
        s = self.rollout.state
        now = self.clock()
        steps = list(r.steps)
        step_text = None
        next_step_in_s = None
        if r.strategy is Strategy.CANARY and s.step_index < len(steps):
            step_text = self.rollout.step_text()
            step = steps[s.step_index]
            if isinstance(step, PauseStep) and step.pause.duration is not None \
                    and self.rollout.phase is Phase.PROGRESSING:
                next_step_in_s = max(0.0, s.step_started_at_s + step.pause.duration - now)
        weights = self.weights()
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
            "shadow": self.cfg.shadow.model_dump() if self.cfg.shadow else None,
            "run_id": self.run_id,
            "controller": {"pid": os.getpid(), "started_at_s": self.started_at_s},
        }
        if history:
            out["history"] = list(s.history)
        return out


@serve.deployment(name="Controller", num_replicas=1, max_ongoing_requests=1000)
class ExperimentController:
    async def __init__(self, experiment: dict[str, Any]):
        cfg = parse_experiment(experiment)
        self.core = ControllerCore(cfg, SqliteStateStore(Path(cfg.controller.state_path)))
        self._changed = asyncio.Event()
        self._report: Report | None = None
        self._sequential_state: dict[str, Any] | None = None
        self._report_lock = asyncio.Lock()
        self._recorder = None
        # Asks Prometheus for the promql gates in the background; a slow one never delays a tick.
        self._promql = PromQLPoller(cfg.rollout, cfg.model) if cfg.rollout is not None else None
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run()), loop.create_task(self._analyse())]

    async def _run(self) -> None:
        validated = False
        while True:
            try:
                rollout = self.core.rollout
                if rollout is not None and rollout.phase is Phase.VALIDATING and not validated:
                    validated = True
                    passed, reason = await self._validate_green()
                    rollout.report_validation(passed, reason)
                    self._notify()
                promql = None
                if self._promql is not None and rollout is not None:
                    promql = self._promql.poll(self.core.clock(), active=not rollout.done)
                if self.core.tick(promql):
                    self._notify()
            except Exception:  # a bad tick must not stop the rollout's clock
                logger.exception("serve-ab controller tick failed")
            await asyncio.sleep(self.core.cfg.controller.tick_s)

    async def _analyse(self) -> None:
        """Refresh the report (one look of the sequential tests) and the run record."""
        records = self.core.cfg.analysis.records
        last_record_s = 0.0
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            try:
                # Taken here, on the loop that also records; written to SQLite off it.
                await asyncio.to_thread(self.core.save_stats, self.core.stats.to_state(time.time()))
                report = await self._refresh_report()
                now_s = time.time()
                if now_s - last_record_s >= records.interval_s:
                    last_record_s = now_s
                    await asyncio.to_thread(self._save_record, report, now_s)
            except Exception:  # the report must never take the controller down
                logger.exception("serve-ab controller: report refresh failed")

    async def _refresh_report(self) -> Report:
        from serve_ab.analysis.report import build_report  # scipy/statsmodels: load on first use

        async with self._report_lock:
            snapshot = self.core.stats_snapshot(samples=True)
            weights = self.core.weights()
            # The statistics take tens of milliseconds: off the loop that answers long polls.
            report, self._sequential_state = await asyncio.to_thread(
                build_report, self.core.cfg, snapshot, weights, self._sequential_state, self.core.run_id)
            self._report = report
            return report

    def _save_record(self, report: Report, now_s: float) -> None:
        from serve_ab.store.runs import RunRecorder

        records = self.core.cfg.analysis.records
        if self._recorder is None:
            self._recorder = RunRecorder(Path(records.path), mlflow=records.mlflow)
        self._recorder.save(self.core.run_id, self.core.cfg.model_dump(mode="json"),
                            report.model_dump(mode="json"), started_at_s=self.core.run_started_at_s,
                            updated_at_s=now_s, summary=report.run_summary(), metrics=report.headline_metrics())

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

    async def record(self, observations: Observations) -> None:
        self.core.record(observations)

    async def wait_for_update(self, known_epoch: int, timeout_s: float = LONG_POLL_TIMEOUT_S) -> RoutingSnapshot:
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

    async def stats(self) -> dict[str, Any]:
        return self.core.stats_snapshot(samples=True)

    async def report(self) -> Report:
        """A fresh report (and one more sequential look); also refreshes the run record. The
        router answers it as ``report.model_dump(mode="json")``."""
        report = await self._refresh_report()
        await asyncio.to_thread(self._save_record, report, time.time())
        return report

    async def metrics(self) -> tuple[bytes, str]:
        """The Prometheus exposition of this app's figures: (body, content type)."""
        from serve_ab.serving.metrics import render

        return render(self.core.cfg, self.core.stats_snapshot(samples=False), self.core.status())

    async def act(self, action: Action, body: ActionRequest, actor: Actor | None = None) -> dict[str, Any]:
        self.core.act(action, body, actor)
        self._notify()
        return self.core.status()
