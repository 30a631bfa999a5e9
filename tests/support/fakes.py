"""Fakes shared by the unit tests: a clock, controllers and versions that fail, stall and recover."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from serve_ab.backends.base import InputSpec, OutputSpec
from serve_ab.errors import Forbidden
from serve_ab.serving.core.messages import Action, IntervalReport, NotCounted, RoutingSnapshot


class FakeClock:
    """Seconds that move only when told (``advance``); also an async ``sleep`` that advances
    it and lets other tasks run, so loops driven by it take no wall-clock time."""

    def __init__(self, t_s: float = 1_000_000.0):
        self.t_s = t_s

    def __call__(self) -> float:
        return self.t_s

    def advance(self, dt_s: float) -> float:
        self.t_s += dt_s
        return self.t_s

    async def sleep(self, delay_s: float) -> None:
        self.t_s += delay_s
        for _ in range(3):  # a few turns of the loop: callbacks of finished calls run
            await asyncio.sleep(0)


DIGITS_INPUT = InputSpec(name="input", dtype=np.dtype("float32"), shape=(-1, 64))
DIGITS_OUTPUT = OutputSpec(name="probabilities", dtype=np.dtype("float32"), shape=(-1, 10))


class FakeVersion:
    """A colocated version answering class ``answer`` (one-hot), or raising ``fail``."""

    def __init__(self, answer: int = 0, fail: BaseException | None = None,
                 spec: tuple[InputSpec, OutputSpec] = (DIGITS_INPUT, DIGITS_OUTPUT)):
        self.answer = answer
        self.fail = fail
        self.spec = spec
        self.calls = 0

    async def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        out = np.zeros((len(batch), self.spec[1].shape[-1]), dtype=np.float32)
        out[:, self.answer] = 1.0
        return out

    async def describe(self) -> tuple[InputSpec, OutputSpec]:
        return self.spec


class SilentVersion(FakeVersion):
    """An isolated version whose replicas never start: ``describe`` and ``predict`` never answer
    (until ``wake()``, for versions that come up late)."""

    def __init__(self, answer: int = 0, spec: tuple[InputSpec, OutputSpec] = (DIGITS_INPUT, DIGITS_OUTPUT)):
        super().__init__(answer, spec=spec)
        self.awake = False
        self.describes = 0

    def wake(self) -> None:
        self.awake = True

    async def describe(self) -> tuple[InputSpec, OutputSpec]:
        self.describes += 1
        if not self.awake:
            await asyncio.get_running_loop().create_future()  # never resolved; cancelled by the timeout
        return self.spec


def failing_loader(bad: dict[str, BaseException]):
    """A colocated loader (``LoadedVersion``'s stand-in) that raises ``bad[name]`` for those names."""
    def load(version_cfg: Any) -> FakeVersion:
        if version_cfg.name in bad:
            raise bad[version_cfg.name]
        return FakeVersion(int(version_cfg.name.lstrip("v")))
    return load


def unreachable_store() -> Any:
    """An ``open_store`` whose store cannot be reached (a lost shared disk, a down Redis)."""
    raise OSError(5, "Input/output error: the state store cannot be reached")


class FakeController:
    """Records what a router sends and answers with a settable snapshot."""

    def __init__(self, snapshot: RoutingSnapshot | None = None, fail: bool = False):
        self.snapshot = snapshot or RoutingSnapshot(0, {})
        self.fail = fail
        self.recorded: list[IntervalReport] = []
        self.actions: list[tuple[Action, Any]] = []
        self.actors: list[Any] = []
        self.feedbacks: list[tuple] = []
        self.feedback_units: list[tuple[int | None, int]] = []  # (bucket, routing epoch) a token proved
        self.feedback_answered_after_s: list[float | None] = []  # the answer came after it, as its token says
        # Set: feedback is answered NotCounted with this reason (its answer came before the run
        # started), where the router says it reads one (not_counted_ok).
        self.not_counted_reason: str | None = None
        self.updates = asyncio.Event()

    async def record(self, report: IntervalReport) -> None:
        if self.fail:
            raise ConnectionError("controller down")
        self.recorded.append(report)

    async def wait_for_update(self, known_epoch: int, timeout_s: float = 10.0) -> RoutingSnapshot:
        if self.fail:
            raise ConnectionError("controller down")
        if known_epoch == self.snapshot.epoch:
            await self.updates.wait()
            self.updates.clear()
        return self.snapshot

    def push(self, snapshot: RoutingSnapshot) -> None:
        self.snapshot = snapshot
        self.updates.set()

    async def feedback(self, request_id: str, name: str, value: float | None, converted: bool | None,
                       version: str | None = None, unit: int | None = None, split: int = -1,
                       answered_after_s: float | None = None, not_counted_ok: bool = False) -> str | None | NotCounted:
        self.feedbacks.append((request_id, name, value, converted, version))
        self.feedback_answered_after_s.append(answered_after_s)
        self.feedback_units.append((unit, split))
        if self.not_counted_reason is not None:
            if not not_counted_ok:  # as the real controller's Refused, raised by the router's proxy
                raise Forbidden(self.not_counted_reason)
            return NotCounted(self.not_counted_reason)
        return version or "v1"

    async def feedback_key(self) -> bytes:
        if self.fail:
            raise ConnectionError("controller down")
        return b"k" * 32

    async def act(self, action: Action, body: Any, actor: Any = None) -> dict[str, Any]:
        self.actions.append((action, body))
        self.actors.append(actor)
        return {"phase": "progressing"}

    async def status(self, history: bool = False) -> dict[str, Any]:
        return {"phase": "static", "history": [] if history else None}

    async def stats(self) -> dict[str, Any]:
        return {"versions": {}}

    async def report(self) -> dict[str, Any]:
        return {"schema": 1}

    async def metrics(self) -> tuple[bytes, str]:
        return b"# no metrics\n", "text/plain; version=0.0.4"


class FailingStore:
    """A state store whose saves fail while ``failing`` is set (a full disk, a lost shared
    store); loads keep working. Wraps a :class:`MemoryStateStore` holding what was saved."""

    def __init__(self, failing: bool = False):
        from serve_ab.store.state import MemoryStateStore

        self.inner = MemoryStateStore()
        self.failing = failing
        self.saves = 0
        self.refused = 0

    def load(self, key: str) -> dict[str, Any] | None:
        return self.inner.load(key)

    def save(self, key: str, state: dict[str, Any]) -> None:
        if self.failing:
            self.refused += 1
            raise OSError(28, "No space left on device")
        self.inner.save(key, state)
        self.saves += 1

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def create(self, key: str, state: dict[str, Any]) -> dict[str, Any]:
        if self.failing:
            self.refused += 1
            raise OSError(28, "No space left on device")
        return self.inner.create(key, state)
