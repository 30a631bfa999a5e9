"""Rollouts, pure and clock-driven: no Ray import, nothing sleeps.

- ``machine``: the canary / blue-green state machine (:class:`Rollout` returns a
  :class:`Decision` from each tick);
- ``gates``: gate evaluation over per-version windows;
- ``promql``: gates whose values come from Prometheus;
- ``webhook``: webhook gates and confirm steps, asked in the background;
- ``notify``: rollout events sent to webhooks and Slack, from background threads;
- ``feedback``: joining clients' feedback to the version that answered;
- ``validation``: blue-green's validation of green, over the calls it is given (the
  controller's through the router, ``serve-ab validate --load``'s in its own process).
"""

from serve_ab.rollout.machine import Decision, Phase, Rollout, RolloutError, RolloutState

__all__ = ["Decision", "Phase", "Rollout", "RolloutError", "RolloutState"]
