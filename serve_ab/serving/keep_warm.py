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

from serve_ab.config.experiment import ExperimentConfig, Placement
from serve_ab.config.rollout import Strategy

__all__ = ["keep_blue_warm"]

logger = logging.getLogger("ray.serve")


def keep_blue_warm(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with blue's ``downscale_to_zero_delay_s`` at least ``keep_blue_s``, where blue is a
    deployment of its own that may scale to zero; else ``cfg`` as it is."""
    rollout = cfg.rollout
    if rollout is None or rollout.strategy is not Strategy.BLUE_GREEN or cfg.placement is not Placement.ISOLATED:
        return cfg
    keep_blue_s = rollout.blue_green_settings.keep_blue_s
    versions = list(cfg.versions)
    for index, version in enumerate(versions):
        scaling = version.deployment.autoscaling_config if version.deployment is not None else None
        if version.name != rollout.stable or scaling is None or scaling.min_replicas > 0:
            continue
        # Unset, Ray holds the last replica for downscale_delay_s; a longer hold is kept.
        held_s = scaling.downscale_to_zero_delay_s
        held_s = scaling.downscale_delay_s if held_s is None else held_s
        if held_s >= keep_blue_s:
            continue
        logger.info("serve-ab: blue (version %r) autoscales to zero; its last replica is held for "
                    "keep_blue_s (%gs) of idleness, not %gs, so that a rollback finds it warm",
                    version.name, keep_blue_s, held_s)
        scaling = scaling.model_copy(update={"downscale_to_zero_delay_s": keep_blue_s})
        deployment = version.deployment.model_copy(update={"autoscaling_config": scaling})
        versions[index] = version.model_copy(update={"deployment": deployment})
    return cfg.model_copy(update={"versions": versions})
