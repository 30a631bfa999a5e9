"""What a router replica serves by before the controller answers: the data path never waits
on the control path, so a new or autoscaled router starts while the controller is down.

At start (:func:`prepare`), from the state store the controller writes: the weights of the
saved rollout (else the config's), and the feedback key (``feedback.key_env`` first). Then
:func:`settle_feedback_key` runs beside the requests: it fetches a key the store could not
give, and takes the controller's when it differs (the controller is the key's authority: a
router whose store is not the controller's, say a node-local SQLite file on another node,
must not sign with a key of its own). Without a key, answers carry no feedback token and
``POST /feedback`` is a 503 (retry), never a 500.

No Ray: the store is opened through a callable and time comes from an injected sleep.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from serve_ab.config.experiment import ExperimentConfig
from serve_ab.rollout.machine import Rollout
from serve_ab.serving.core.messages import ControllerApi, Mirror, RoutingSnapshot
from serve_ab.serving.core.router import RouterCore
from serve_ab.store.claim import Claimant, StoreTaken, refuse_if_taken
from serve_ab.store.keys import claim_key, feedback_key, rollout_key
from serve_ab.store.state import StateStore, describe_store, password_refused, store_unreachable

logger = logging.getLogger("ray.serve")

# Rows a router serves before its first snapshot are stamped with this epoch; the controller
# counts rows of an epoch it does not know under the weights of now.
UNKNOWN_EPOCH = -1
RETRY_KEY_S = 2.0  # between attempts at the feedback key while neither store nor controller answers


@dataclass(frozen=True)
class Start:
    """What a router replica starts serving with."""

    snapshot: RoutingSnapshot
    feedback_key: bytes | None  # None: the store could not be read and key_env is not set
    source: str  # where the weights came from, for the log: "saved rollout", "config", ...


def _warn(what: str, err: Exception) -> None:
    """``what`` happened because of ``err``: one line for a store that cannot be reached or
    refused the password (each says all there is; a router logged three tracebacks at start
    for a wrong password), the traceback for anything else."""
    if store_unreachable(err):
        logger.warning("%s (%s: %s)", what, type(err).__name__, err)
    elif password_refused(err):
        logger.warning("%s (%s: %s; check the password in controller.store_url or in the variable "
                       "controller.store_password_env names)", what, type(err).__name__, err)
    else:
        logger.warning("%s", what, exc_info=err)


def _open(open_store: Callable[[], StateStore]) -> StateStore | None:
    try:
        return open_store()
    except Exception as err:
        _warn("serve-ab router: the state store cannot be opened; starting with the config's weights", err)
        return None


def starting_weights(cfg: ExperimentConfig, store: StateStore | None,
                     clock: Callable[[], float]) -> tuple[dict[str, float], str]:
    """The weights to serve until the controller answers, and where they came from: a saved
    rollout's, else what the controller would start with (a fresh rollout's, or the config's)."""
    weights = {v.name: 0.0 for v in cfg.versions}
    if cfg.rollout is None:
        weights.update(cfg.weights_pct())
        return weights, "config"
    saved = None
    if store is not None:
        try:
            saved = store.load(rollout_key(cfg))
        except Exception as err:
            _warn("serve-ab router: the saved rollout cannot be read; starting with the config's weights", err)
    if saved is not None:
        try:
            weights.update(Rollout.from_dict(cfg.rollout, saved, clock).weights)
            return weights, "saved rollout"
        except ValueError:  # another schema, or another rollout: the controller will say
            logger.warning("serve-ab router: the saved rollout does not fit this config; starting "
                           "with the config's weights", exc_info=True)
    weights.update(Rollout(cfg.rollout, clock).weights)
    return weights, "config"


def _key(cfg: ExperimentConfig, store: StateStore | None) -> bytes | None:
    from_env = os.environ.get(cfg.feedback.key_env)
    if from_env:
        return from_env.encode()
    if store is None:
        return None
    try:
        return feedback_key(cfg, store)
    except Exception as err:
        _warn("serve-ab router: the feedback key cannot be read from the state store", err)
        return None


def check_claim(cfg: ExperimentConfig, open_store: Callable[[], StateStore], me: Claimant, now_s: float,
                app_running: Callable[[str], bool]) -> None:
    """Refuse to start (:class:`~serve_ab.store.claim.StoreTaken`) while another app running
    on this cluster holds the model's state in this store; a store that cannot be read is
    left to the controller, as everything else here."""
    store = _open(open_store)
    if store is None:
        return
    try:
        refuse_if_taken(store, claim_key(cfg), me, now_s, model=cfg.model,
                        store_name=describe_store(cfg.controller), app_running=app_running)
    except StoreTaken:
        raise
    except Exception as err:
        _warn("serve-ab router: the app's claim on the state store cannot be read; starting", err)


def prepare(cfg: ExperimentConfig, open_store: Callable[[], StateStore],
            clock: Callable[[], float]) -> Start:
    """Read what a router needs to serve, from the store alone: never the controller."""
    store = _open(open_store)
    weights, source = starting_weights(cfg, store, clock)
    # The configured shadow is mirrored from the start; a blue-green validation's mirror
    # depends on the rollout's phase and waits for the controller's snapshot.
    mirrors = (Mirror(cfg.shadow.version, cfg.shadow.percent),) if cfg.shadow is not None else ()
    return Start(RoutingSnapshot(UNKNOWN_EPOCH, weights, (), mirrors), _key(cfg, store), source)


def start(core: RouterCore, begin: Start) -> None:
    """Serve by ``begin`` from the first request on."""
    core.apply(begin.snapshot)
    if begin.feedback_key is not None:
        core.use_feedback_key(begin.feedback_key)
    logger.info("serve-ab router: starting with the %s weights %s (until the controller answers)",
                begin.source, dict(begin.snapshot.weights))


async def settle_feedback_key(core: RouterCore, controller: ControllerApi,
                              open_store: Callable[[], StateStore],
                              sleep: Callable[[float], Awaitable[None]],
                              retry_s: float = RETRY_KEY_S) -> None:
    """Until the controller has confirmed the key: try the store (while no key is known) and
    the controller, every ``retry_s``."""
    while True:
        if core.signer is None:
            key = _key(core.cfg, _open(open_store))
            if key is not None:
                core.use_feedback_key(key)
                logger.info("serve-ab router: feedback key read from the state store")
        try:
            confirmed = await controller.feedback_key()
        except Exception:
            await sleep(retry_s)
            continue
        if core.signer is None or core.signer.key != confirmed:
            if core.signer is not None:
                logger.warning("serve-ab router: the controller's feedback key is not the state store's "
                               "(is controller.state_path on storage every node reaches?); using the "
                               "controller's")
            core.use_feedback_key(confirmed)
        return
