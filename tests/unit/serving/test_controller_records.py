"""The controller's run record (analysis.records), kept by its report loop: a record whose save
failed is tried again at the next round, not only after records.interval_s (60 s by default),
which a run shorter than that, or one that stops while the store is away, never reached."""

from __future__ import annotations

import asyncio
import logging

import pytest

import serve_ab.serving.controller as controller_module
from serve_ab.store.runs import RunRecorder
from serve_ab.store.state import MemoryStateStore
from tests.unit.serving.test_controller_claim import controller

ROUND_S = 0.02


@pytest.fixture(autouse=True)
def short_rounds(monkeypatch):
    monkeypatch.setattr(controller_module, "REPORT_INTERVAL_S", ROUND_S)


def test_a_run_record_that_could_not_be_saved_is_saved_at_the_next_round(tmp_path, caplog):
    blocked = tmp_path / "records"
    blocked.write_text("a file where the records' folder must be")  # every save fails
    path = blocked / "runs.sqlite"
    c = controller(MemoryStateStore())
    records = c.core.cfg.analysis.records.model_copy(update={"path": str(path)})
    c.core.cfg = c.core.cfg.model_copy(update={"analysis": c.core.cfg.analysis.model_copy(update={"records": records})})
    c._report_lock, c._recorder, c._report = asyncio.Lock(), None, None

    async def rounds() -> None:
        task = asyncio.get_running_loop().create_task(c._analyse())
        try:
            while not any("run record failed" in r.getMessage() for r in caplog.records):  # the first save
                await asyncio.sleep(ROUND_S)
            blocked.unlink()  # the folder can be made now
            for _ in range(200):  # a few rounds; records.interval_s (60 s) is far off
                if any("work again" in r.getMessage() for r in caplog.records):
                    return
                await asyncio.sleep(ROUND_S)
        finally:
            task.cancel()

    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        asyncio.run(rounds())
    assert [run.run_id for run in RunRecorder(path).list()] == [c.core.run_id]
