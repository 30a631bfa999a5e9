"""Fixtures of the CLI tests: the fake control API; no Ray token of this machine's."""

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
    monkeypatch.setenv("SERVE_AB_URL", _control_server.url)
    _control_server.reset()
    return _control_server


@pytest.fixture(autouse=True)
def _no_app_token(monkeypatch):
    """The commands send ``$SERVE_AB_VIEWER_TOKEN``, ``$SERVE_AB_QA_TOKEN`` or ``$SERVE_AB_CONTROL_TOKEN``: none of the
    machine's may reach a test."""
    for name in ("SERVE_AB_CONTROL_TOKEN", "SERVE_AB_QA_TOKEN", "SERVE_AB_VIEWER_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _no_ray_token(monkeypatch, tmp_path):
    """``--app`` sends Ray's auth token from $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token: none of the machine's may reach a test (or a fake dashboard)."""
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
