"""One running app per model and state store, held by its controller while it runs.

The store's keys name the model, not the app (:mod:`serve_ab.store.keys`), so two apps
serving one model from one store would resume, overwrite and report each other's rollout,
run record and feedback key. ``serve-ab validate`` refuses two such apps in one file; this
module refuses them at run time, wherever they come from: two ``serve run`` files, an app
deployed beside another, two clusters sharing one Redis.

How: a controller claims ``app:<model>`` (:func:`~serve_ab.store.keys.claim_key`) for its app
before it reads or writes anything else, and writes the claim again every :data:`HEARTBEAT_S`.
A claim not written for :data:`CLAIM_TTL_S` has lapsed: its controller crashed.

- The claim is the app's, by name: a restarted or redeployed controller of the same app takes
  it at once, on any node, and so does the same app on another cluster (a RayService upgrade,
  a cluster restarted beside its Redis); an older replica then saves nothing until the
  claim is free again (the newer one died).
  Two unrelated apps of the same name on two clusters sharing one Redis are not told apart.
- Held by another app that Serve says is running on this cluster, and written lately: the
  new app's controller and routers refuse to start, naming that app and the store, and the
  running app is untouched.
- Held by an app being deleted (a rename), by a controller that stopped writing, or by an app
  on another cluster (which Serve here cannot ask about): the controller waits for the claim
  to be released or to lapse, at most :data:`CLAIM_TTL_S` and a margin, then refuses.
- A stopping controller releases the claim (only its own replica's), so the next app need
  not wait; a controller that finds its claim taken by another app (it stopped writing for
  :data:`CLAIM_TTL_S`) saves nothing and fails its health check, and Serve's restart of it
  is refused.

No Ray here: the clock, the sleep and "is this app running" are passed in.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from serve_ab.store.state import StateStore

__all__ = ["CLAIM_TTL_S", "HEARTBEAT_S", "Claimant", "Held", "Renewal", "StoreTaken", "hold_claim",
           "refuse_if_taken", "renew_claim"]

logger = logging.getLogger("ray.serve")

HEARTBEAT_S = 5.0  # how often a running controller writes its claim again
# Six missed writes: a controller's loop stalls for seconds at worst (an import, a slow
# store), never for half a minute while its process lives.
CLAIM_TTL_S = 30.0
# A claim written this lately is being renewed: its app is refused at once. An older one may
# be left by a controller that stopped without releasing it, and is waited out instead.
FRESH_S = 2 * HEARTBEAT_S + 2.0
POLL_S = 1.0  # how often a waiting controller looks again
WAIT_MARGIN_S = 5.0  # waited past the TTL before refusing: clocks of two nodes differ a little


class StoreTaken(ValueError):
    """Another running app holds this model's state in this store."""


class Renewal(Enum):
    """What writing the claim again found."""

    KEPT = "kept"
    SUPERSEDED = "superseded"  # a newer replica of this app holds it (a redeploy, a moved cluster)
    TAKEN = "taken"  # another app holds it: this controller stopped writing past the TTL


@dataclass(frozen=True)
class Claimant:
    """Who claims: an app (the owner, by name) on a cluster, from one controller replica."""

    app: str
    cluster: str  # the Ray cluster's id
    replica: str

    @property
    def owner(self) -> str:
        return self.app

    def row(self, now_s: float) -> dict[str, Any]:
        return {"owner": self.owner, "app": self.app, "cluster": self.cluster, "replica": self.replica,
                "heartbeat_s": now_s}


@dataclass(frozen=True)
class Held:
    """A claim as read from the store."""

    owner: str
    app: str
    cluster: str
    replica: str
    heartbeat_s: float

    @classmethod
    def read(cls, row: Any) -> Held | None:
        """The claim in ``row``; None for no row or a row of another shape (nobody's)."""
        if not isinstance(row, dict):
            return None
        beat = row.get("heartbeat_s")
        if isinstance(beat, bool) or not isinstance(beat, (int, float)):
            return None
        return cls(str(row.get("owner")), str(row.get("app")), str(row.get("cluster")), str(row.get("replica")),
                   float(beat))

    def live(self, now_s: float) -> bool:
        return self.heartbeat_s >= now_s - CLAIM_TTL_S

    def fresh(self, now_s: float) -> bool:
        return self.heartbeat_s >= now_s - FRESH_S


def taken_message(model: str, store: str, held: Held, now_s: float, *, same_cluster: bool) -> str:
    where = "on this cluster" if same_cluster else f"on another Ray cluster ({held.cluster})"
    own_store = ("its own controller.store_key_prefix" if store.startswith("controller.store_url")
                 else "its own controller.state_path")
    return (
        f"model: {model!r} is already served from {store} by app {held.app!r} {where}, whose "
        f"controller wrote its claim {max(0.0, now_s - held.heartbeat_s):.1f}s ago; two apps on one model "
        "and store would resume and overwrite each other's rollout, run record and feedback key. "
        f"Give this app another model, or {own_store}, or stop app {held.app!r} first (a stopped app "
        f"releases its claim; a crashed one's lapses {CLAIM_TTL_S:g}s after its last write)"
    )


async def hold_claim(store: StateStore, key: str, me: Claimant, *, model: str, store_name: str,
                     clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]],
                     app_running: Callable[[str], Awaitable[bool]]) -> None:
    """Take the claim for a starting controller, waiting while it may still be freed;
    raises :class:`StoreTaken` when another running app holds it (see the module's note)."""
    deadline_s = clock() + CLAIM_TTL_S + WAIT_MARGIN_S
    try:  # for the log line below only; a row that is not JSON is nobody's claim
        before = Held.read(store.load(key))
    except ValueError:
        before = None
    waiting = False
    while True:
        now_s = clock()
        held = Held.read(store.claim(key, me.row(now_s), CLAIM_TTL_S))
        if held is None or held.owner == me.owner:
            if before is not None and before.owner == me.owner and before.cluster != me.cluster \
                    and before.live(now_s):
                logger.warning("serve-ab controller: took over the claim on %s in %s from app %r on "
                               "another Ray cluster (%s), last written %.1fs ago: the same app moved "
                               "(a cluster upgrade or restart)", key, store_name, me.app, before.cluster,
                               now_s - before.heartbeat_s)
            if waiting:
                logger.info("serve-ab controller: the claim on %s in %s is free; starting", key, store_name)
            return
        same_cluster = held.cluster == me.cluster
        refuse_now = same_cluster and held.fresh(now_s) and await app_running(held.app)
        if refuse_now or clock() >= deadline_s:
            raise StoreTaken(taken_message(model, store_name, held, clock(), same_cluster=same_cluster))
        if not waiting:
            logger.warning("serve-ab controller: app %r (cluster %s) holds %s in %s; waiting up to %.0fs "
                           "for it to be released or to lapse", held.app, held.cluster, key, store_name,
                           deadline_s - now_s)
            waiting = True
        before = held
        await sleep(POLL_S)


def renew_claim(store: StateStore, key: str, me: Claimant, now_s: float, *, model: str,
                store_name: str) -> tuple[Renewal, str]:
    """Write the claim again, unless a newer replica of this app or another app holds it;
    what was found, and the line to log."""
    held = Held.read(store.claim(key, me.row(now_s), CLAIM_TTL_S, same_replica=True))
    if held is None or (held.owner == me.owner and held.replica == me.replica):
        return Renewal.KEPT, ""
    if held.owner == me.owner:
        return Renewal.SUPERSEDED, (f"replica {held.replica} of this app (cluster {held.cluster}) now holds the "
                                    f"claim on {key}")
    return Renewal.TAKEN, ("another app took this model's state while this controller did not write its claim "
                           f"for {CLAIM_TTL_S:g}s: "
                           + taken_message(model, store_name, held, now_s, same_cluster=held.cluster == me.cluster))


def refuse_if_taken(store: StateStore, key: str, me: Claimant, now_s: float, *, model: str,
                    store_name: str, app_running: Callable[[str], bool]) -> None:
    """For a starting router: raise :class:`StoreTaken` when another app that Serve says is
    running on this cluster holds the claim and renews it. Anything else is its
    controller's to settle."""
    held = Held.read(store.load(key))
    if held is None or held.owner == me.owner or held.cluster != me.cluster or not held.fresh(now_s):
        return
    if app_running(held.app):
        raise StoreTaken(taken_message(model, store_name, held, now_s, same_cluster=True))
