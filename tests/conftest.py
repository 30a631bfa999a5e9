"""Fixtures shared by every test layer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support.redis_server import redis_server, redis_url  # noqa: F401 - fixtures for every layer

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"


@pytest.fixture(scope="session")
def model_repo() -> Path:
    """The example model repository (``models/``), built once if it is missing.

    The models are trained from scikit-learn's bundled digits, seeded, so a rebuild gives
    the same files; building takes seconds, so tests build rather than ship binaries.
    """
    sys.path.insert(0, str(REPO_ROOT))
    from models.build import build_all, is_built

    if not is_built(MODELS_DIR):
        build_all(MODELS_DIR)
    return MODELS_DIR
