"""Keep a blue-green rollout's blue version warm for ``keep_blue_s`` after the switch.

In isolated placement blue is a deployment of its own. Autoscaled with ``min_replicas: 0``
(the way a version that will retire reaches zero replicas), it gets no traffic once green
takes 100 %, and Ray Serve takes its last replica ``downscale_delay_s`` later (10-30 s in
practice): a rollback then waited for a replica to start, all requests stalled, instead of
the instant switch back that ``keep_blue_s`` promises (live, 2026-12-07: 13.5 s from
``serve-ab rollback`` to blue's first answer, 8 clients held 12.7 s each).

Ray's ``downscale_to_zero_delay_s`` holds the last replica for as long as asked; blue gets at
least ``keep_blue_s`` of it, so it goes to zero about ``keep_blue_s`` after its traffic stopped
(when the routers drop it), and not before. Pure: a function of the config.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from serve_ab.config.experiment import ExperimentConfig, Placement
from serve_ab.config.rollout import Strategy

__all__ = ["RaisedHold", "keep_blue_warm", "raised_holds"]

logger = logging.getLogger("ray.serve")


class RaisedHold(NamedTuple):
    """Blue's hold on its last replica, raised to ``keep_blue_s``."""
    index: int  # in cfg.versions
    version: str
    held_s: float  # what the config gives it: downscale_to_zero_delay_s, else downscale_delay_s
    zero_delay_set: bool  # whether held_s is downscale_to_zero_delay_s (else downscale_delay_s)
    keep_blue_s: float


def raised_holds(cfg: ExperimentConfig) -> list[RaisedHold]:
    """Blue, where it is a deployment of its own that may scale to zero and the config holds
    its last replica for less than ``keep_blue_s``; else nothing."""
    rollout = cfg.rollout
    if rollout is None or rollout.strategy is not Strategy.BLUE_GREEN or cfg.placement is not Placement.ISOLATED:
        return []
    keep_blue_s = rollout.blue_green_settings.keep_blue_s
    out = []
    for index, version in enumerate(cfg.versions):
        scaling = version.deployment.autoscaling_config if version.deployment is not None else None
        if version.name != rollout.stable or scaling is None or scaling.min_replicas > 0:
            continue
        # Unset, Ray holds the last replica for downscale_delay_s; a longer hold is kept.
        zero_delay_set = scaling.downscale_to_zero_delay_s is not None
        held_s = scaling.downscale_to_zero_delay_s if zero_delay_set else scaling.downscale_delay_s
        if held_s < keep_blue_s:
            out.append(RaisedHold(index, version.name, held_s, zero_delay_set, keep_blue_s))
    return out


def keep_blue_warm(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with blue's ``downscale_to_zero_delay_s`` at least ``keep_blue_s``, where blue is a
    deployment of its own that may scale to zero; else ``cfg`` as it is."""
    holds = raised_holds(cfg)
    if not holds:
        return cfg
    versions = list(cfg.versions)
    for hold in holds:
        logger.info("serve-ab: blue (version %r) autoscales to zero; its last replica is held for "
                    "keep_blue_s (%gs) of idleness, not %gs, so that a rollback finds it warm",
                    hold.version, hold.keep_blue_s, hold.held_s)
        version = versions[hold.index]
        scaling = version.deployment.autoscaling_config.model_copy(
            update={"downscale_to_zero_delay_s": hold.keep_blue_s})
        deployment = version.deployment.model_copy(update={"autoscaling_config": scaling})
        versions[hold.index] = version.model_copy(update={"deployment": deployment})
    return cfg.model_copy(update={"versions": versions})
