"""One running app per model and state store, held by its controller while it runs.

The store's keys name the model, not the app (:mod:`serve_ab.store.keys`), so two apps
serving one model from one store would resume, overwrite and report each other's rollout,
run record and feedback key. ``serve-ab validate`` refuses two such apps in one file; this
module refuses them at run time, wherever they come from: two ``serve run`` files, an app
deployed beside another, two clusters sharing one Redis.

How: a controller claims ``app:<model>`` (:func:`~serve_ab.store.keys.claim_key`) before it
reads or writes anything else, and writes the claim again every :data:`HEARTBEAT_S`. A claim
not written for :data:`CLAIM_TTL_S` has lapsed: its controller crashed without releasing it.

- A controller that finds the claim held by an app that Serve says is running on the same
  cluster refuses to start, naming that app and the store: the app deploys as failed and
  the running one is untouched.
- Held by an app being deleted, or from another cluster (which Serve here cannot ask), it
  waits for the claim to be released or to lapse, at most :data:`CLAIM_TTL_S` and a little:
  a renamed app, or a cluster restarted beside its Redis, starts as soon as the old
  controller is gone. Still held then, it refuses.
- A router refuses at once only in the first case; it never waits (routers start without
  their controller), and its controller settles the others.
- A stopping controller releases the claim (only its own replica's), so the next app need
  not wait.

No Ray here: the clock, the sleep and "is this app running" are passed in.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from serve_ab.store.state import StateStore

__all__ = ["CLAIM_TTL_S", "HEARTBEAT_S", "Claimant", "Held", "StoreTaken", "hold_claim",
           "refuse_if_taken", "renew_claim"]

logger = logging.getLogger("ray.serve")

HEARTBEAT_S = 5.0  # how often a running controller writes its claim again
# Six missed writes: a controller's loop stalls for seconds at worst (an import, a slow
# store), never for half a minute while its process lives.
CLAIM_TTL_S = 30.0
POLL_S = 1.0  # how often a waiting controller looks again
WAIT_MARGIN_S = 5.0  # waited past the TTL before refusing: clocks of two nodes differ a little


class StoreTaken(ValueError):
    """Another running app holds this model's state in this store."""


@dataclass(frozen=True)
class Claimant:
    """Who claims: an app on a cluster (its GCS address), from one controller replica."""

    app: str
    cluster: str
    replica: str

    @property
    def owner(self) -> str:
        return f"{self.cluster}/{self.app}"

    def row(self, now_s: float) -> dict[str, Any]:
        return {"owner": self.owner, "app": self.app, "cluster": self.cluster, "replica": self.replica,
                "heartbeat_s": now_s}


@dataclass(frozen=True)
class Held:
    """A claim as read from the store."""

    owner: str
    app: str
    cluster: str
    heartbeat_s: float

    @classmethod
    def read(cls, row: Any) -> Held | None:
        """The claim in ``row``; None for no row or a row of another shape (nobody's)."""
        if not isinstance(row, dict):
            return None
        beat = row.get("heartbeat_s")
        if isinstance(beat, bool) or not isinstance(beat, (int, float)):
            return None
        return cls(str(row.get("owner")), str(row.get("app")), str(row.get("cluster")), float(beat))

    def live(self, now_s: float) -> bool:
        return self.heartbeat_s >= now_s - CLAIM_TTL_S


def taken_message(model: str, store: str, held: Held, now_s: float, *, same_cluster: bool) -> str:
    where = "on this cluster" if same_cluster else f"on another Ray cluster (GCS {held.cluster})"
    return (
        f"model: {model!r} is already served from {store} by app {held.app!r} {where}, whose "
        f"controller wrote its claim {max(0.0, now_s - held.heartbeat_s):.1f}s ago; two apps on one model "
        "and store would resume and overwrite each other's rollout, run record and feedback key. "
        "Give this app another model name, or its own controller.state_path (or store_key_prefix), "
        f"or stop app {held.app!r} first (a stopped app releases its claim; a crashed one's lapses "
        f"{CLAIM_TTL_S:g}s after its last write)"
    )


async def hold_claim(store: StateStore, key: str, me: Claimant, *, model: str, store_name: str,
                     clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]],
                     app_running: Callable[[str], Awaitable[bool]]) -> None:
    """Take the claim for a starting controller, waiting while it may still be freed;
    raises :class:`StoreTaken` when another running app holds it (see the module's note)."""
    deadline_s = clock() + CLAIM_TTL_S + WAIT_MARGIN_S
    waiting = False
    while True:
        now_s = clock()
        held = Held.read(store.claim(key, me.row(now_s), CLAIM_TTL_S))
        if held is None or held.owner == me.owner:
            if waiting:
                logger.info("serve-ab controller: the claim on %s in %s is free; starting", key, store_name)
            return
        same_cluster = held.cluster == me.cluster
        if (same_cluster and await app_running(held.app)) or clock() >= deadline_s:
            raise StoreTaken(taken_message(model, store_name, held, clock(), same_cluster=same_cluster))
        if not waiting:
            logger.warning("serve-ab controller: app %r (cluster %s) holds %s in %s; waiting up to %.0fs "
                           "for it to be released or to lapse", held.app, held.cluster, key, store_name,
                           deadline_s - now_s)
            waiting = True
        await sleep(POLL_S)


def renew_claim(store: StateStore, key: str, me: Claimant, now_s: float, *, model: str,
                store_name: str) -> str | None:
    """Write the claim again; the line to log when another app has taken it meanwhile (this
    controller stalled past the TTL), else None."""
    held = Held.read(store.claim(key, me.row(now_s), CLAIM_TTL_S))
    if held is None or held.owner == me.owner:
        return None
    return ("another app took this model's state while this controller did not write its claim: "
            + taken_message(model, store_name, held, now_s, same_cluster=held.cluster == me.cluster))


def refuse_if_taken(store: StateStore, key: str, me: Claimant, now_s: float, *, model: str,
                    store_name: str, app_running: Callable[[str], bool]) -> None:
    """For a starting router: raise :class:`StoreTaken` when another app that Serve says is
    running on this cluster holds the claim. Anything else is its controller's to settle."""
    held = Held.read(store.load(key))
    if held is None or held.owner == me.owner or not held.live(now_s) or held.cluster != me.cluster:
        return
    if app_running(held.app):
        raise StoreTaken(taken_message(model, store_name, held, now_s, same_cluster=True))
