"""The router's side of the controller's answers: a routine refusal comes back as a value
(so Ray does not log it as a failed request) and is raised here as the same error."""

from __future__ import annotations

import asyncio

import pytest

from serve_ab.errors import Conflict
from serve_ab.serving.core.messages import Refused
from serve_ab.serving.router import ControllerClient


class _Method:
    def __init__(self, answer):
        self.answer = answer

    def remote(self, *args):
        async def call():
            return self.answer
        return call()


class _Handle:
    def __init__(self, answer):
        self.feedback = self.act = _Method(answer)


def test_a_refusal_answered_by_the_controller_is_raised_as_its_error():
    refused = ControllerClient(_Handle(Refused(Conflict("feedback 'correct' for request 'r1' was reported already"))))
    with pytest.raises(Conflict, match="reported already"):
        asyncio.run(refused.feedback("r1", "correct", None, True))
    assert asyncio.run(ControllerClient(_Handle("v2")).feedback("r1", "correct", None, True)) == "v2"
