"""Fixtures of the CLI tests: the fake control API."""

from __future__ import annotations

import pytest

from tests.unit.cli.control_api import FakeControlAPI


@pytest.fixture(scope="module")
def _control_server():
    fake = FakeControlAPI()
    yield fake
    fake.close()


@pytest.fixture
def api(_control_server, monkeypatch):
    """The fake app, fresh canned answers, ``SERVE_AB_URL`` pointing at it and no token in env."""
    monkeypatch.delenv("SERVE_AB_CONTROL_TOKEN", raising=False)
    monkeypatch.setenv("SERVE_AB_URL", _control_server.url)
    _control_server.reset()
    return _control_server
