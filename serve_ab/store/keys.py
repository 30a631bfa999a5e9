"""The rows routers and the controller both read: named once, so they cannot drift apart.

The router reads them at start-up (its starting weights, the feedback key) so that it can
serve while the controller is away; the controller writes them. ``cfg`` is an
:class:`~serve_ab.config.experiment.ExperimentConfig` (not imported: the store sits below config).
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from serve_ab.store.state import StateStore

__all__ = ["claim_key", "feedback_key", "feedback_key_row", "rollout_key"]


def claim_key(cfg: Any) -> str:
    """The running app's claim on every key of its model (:mod:`serve_ab.store.claim`)."""
    return f"app:{cfg.model}"


def rollout_key(cfg: Any) -> str:
    """One persisted rollout per (model, strategy, stable, candidate): a new candidate starts fresh."""
    assert cfg.rollout is not None
    r = cfg.rollout
    return f"{cfg.model}:{r.strategy.value}:{r.stable}->{r.candidate}"


def feedback_key_row(cfg: Any) -> str:
    """The row that holds the feedback tokens' key when ``feedback.key_env`` does not give it."""
    return f"feedback-key:{cfg.model}"


def feedback_key(cfg: Any, store: StateStore) -> bytes:
    """The feedback tokens' key: from ``feedback.key_env`` when set (every replica of every
    app that shares it accepts the others' tokens), else made once and kept in the store, so
    tokens issued before a controller restart stay valid."""
    from_env = os.environ.get(cfg.feedback.key_env)
    if from_env:
        return from_env.encode()
    # Created atomically: routers starting beside a controller may make it at the same moment.
    saved = store.create(feedback_key_row(cfg), {"key_hex": secrets.token_hex(32)})
    return bytes.fromhex(saved["key_hex"])
