"""The controller deployment's feedback call, as routers make it (the class runs here without
Ray, around a ControllerCore on a memory store): a replay of an answer older than the reports
it still remembers is refused, where it was counted a second time."""

from __future__ import annotations

import asyncio

from serve_ab.errors import Conflict, Forbidden
from serve_ab.serving.core.messages import Refused
from serve_ab.store.state import MemoryStateStore
from tests.unit.serving.test_controller_claim import controller


def test_a_replay_of_a_forgotten_report_is_refused_and_a_routers_resend_is_not():
    c = controller(MemoryStateStore())
    c.core.feedback.max_requests = 3  # stands for 500,000 reports within a token's life
    now_s = c.core.clock()

    async def scenario():
        for i in range(4):  # the fourth report pushes the first out
            assert await c.feedback(f"a{i}#n", "correct", None, True, "v1", None, -1, answered_after_s=now_s - 10) == "v1"
        replay = await c.feedback("a0#n", "correct", None, True, "v1", None, -1, answered_after_s=now_s - 10)
        assert isinstance(replay, Refused) and isinstance(replay.error, Forbidden)
        assert "can no longer be checked for a repeat" in replay.error.message
        repeat = await c.feedback("a3#n", "correct", None, True, "v1", None, -1, answered_after_s=now_s - 10)
        assert isinstance(repeat, Refused) and isinstance(repeat.error, Conflict)
        # A router sends again what it accepted, to a restarted controller: not refused for its age.
        assert await c.feedback("a9#n", "correct", None, True, "v1", None, -1, answered_after_s=now_s - 10, resent=True) == "v1"

    asyncio.run(scenario())
    assert c.core.stats_snapshot()["versions"]["v1"]["feedback"]["correct"]["n"] == 5
