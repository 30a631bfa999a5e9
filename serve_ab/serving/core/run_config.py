"""Which run an experiment config belongs to (no Ray).

The controller continues a saved run only with the same config (any change to it starts a
new run, ``ControllerCore._run_identity``), and routers stamp their reports with the same
digest, so that a controller merges only reports served under its own config: during a
redeploy of a changed config the old replicas still serve, and report, for seconds after
the new controller started its run.
"""

from __future__ import annotations

import hashlib
import json

from serve_ab.config.experiment import ExperimentConfig

__all__ = ["config_digest", "config_fingerprint"]


def config_fingerprint(cfg: ExperimentConfig) -> str:
    """What the config sets apart from the defaults, as stable text."""
    return json.dumps(cfg.model_dump(mode="json", exclude_defaults=True), sort_keys=True)


def config_digest(cfg: ExperimentConfig) -> str:
    """A short digest of :func:`config_fingerprint`: the last part of a run's id."""
    return hashlib.blake2b(config_fingerprint(cfg).encode(), digest_size=4).hexdigest()
