"""The traffic decision: which version answers a request, and where it goes if that fails.

This is the one short function a reader looks for (:meth:`TrafficDecision.choose`): a pinned
request goes to its version (when pinning is on and the version is served); any other is
assigned by the split, key -> bucket -> version (:mod:`serve_ab.routing`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any, NamedTuple

from serve_ab.config.experiment import AssignmentConfig
from serve_ab.errors import InvalidInput, VersionNotServed
from serve_ab.routing import Assigner

logger = logging.getLogger("ray.serve")

KEYLESS_FIELD_SETS_SAID = 8


class Choice(NamedTuple):
    version: str
    unit: int | None  # the key's hash: the unit of analysis; None when keyless or pinned
    assigned: bool  # chosen by the split (only these enter the A/B figures and the SRM check)
    epoch: int = -1  # the routing epoch (weights) the split chose under; set by the router


def key_text(key: Any, what: str) -> str:
    """An assignment key as the split hashes it: a string, or an integer's digits (so
    ``user_id: 5`` and ``"5"`` are one user, over HTTP and through a handle alike)."""
    if isinstance(key, str):
        return key
    if isinstance(key, bool) or not isinstance(key, int):
        raise InvalidInput(f"{what} must be a string or an integer; got {type(key).__name__} {key!r}")
    return str(key)


class TrafficDecision:
    """Key extraction, pins, the split and the fallback, over the versions served now."""

    def __init__(self, assigner: Assigner, assignment: AssignmentConfig, stable: str | None = None):
        self.assigner = assigner
        self.assignment = assignment
        self.stable = stable  # a rollout's stable (an A/B test's control): the first fallback
        self._keyless_said = False  # for a header key: said once
        self._keyless_fields_said: set[frozenset[str]] = set()  # for a field: once per set of fields

    def key_from(self, fields: Mapping[str, Any] | None, headers: Mapping[str, str] | None) -> str | None:
        """The assignment key of a request: a header, or a field of its JSON body."""
        if self.assignment.key == "header":
            key = headers.get(self.assignment.header) if headers is not None else None
            if key is None and not self._keyless_said:
                self._say_keyless(f"without the {self.assignment.header!r} header (assignment.header)")
            return key
        if self.assignment.key == "none":
            return None
        key = fields.get(self.assignment.field) if fields else None
        if key is None:
            # Once per set of fields: a client that sends {"user_id": null} first must not hide
            # another's misspelt "userid" later. At most KEYLESS_FIELD_SETS_SAID sets a replica.
            names = frozenset(fields or ()) if len(self._keyless_fields_said) < KEYLESS_FIELD_SETS_SAID else None
            if names is not None and names not in self._keyless_fields_said:
                self._keyless_fields_said.add(names)
                field = self.assignment.field
                self._say_keyless(f"{'with' if field in names else 'without'} {field!r}"
                                  f"{' null' if field in names else ''} (assignment.field); its fields were "
                                  f"{[name[:80] for name in sorted(map(str, names))[:20]]}",
                                  f"once per set of fields, for the first {KEYLESS_FIELD_SETS_SAID}")
            return None
        return key_text(key, f"assignment key '{self.assignment.field}'")

    def _say_keyless(self, missing: str, how_often: str = "once") -> None:
        # Keyless requests may be meant (anonymous users), but a misspelt field ("userid") would
        # silently send every user to a random version on each request: said in the log.
        self._keyless_said = True
        logger.warning("serve-ab router: a request came %s, so it was assigned at random and "
                       "its user is not kept on one version (said %s per replica)", missing, how_often)

    def choose(self, key: str | None, pinned: str | None, served: Collection[str], epoch: int = -1) -> Choice:
        """The version for a request: its pin, or the split's choice for its key, under the
        routing epoch ``epoch``.

        Whether the caller may pin is decided where it comes in (HTTP: pin.enabled and the QA
        token; a DeploymentHandle is inside the cluster and may): here a pin is a pin.
        """
        if pinned is None:
            version, unit = self.assigner.assign_unit(key)
            return Choice(version, unit, True, epoch)
        if pinned not in served:
            raise VersionNotServed(f"unknown version {pinned!r}; this experiment serves {list(served)}")
        return Choice(pinned, None, False, epoch)

    def fallback_for(self, failed: str, served: Collection[str]) -> str | None:
        """Where a request goes when ``failed`` cannot answer: the stable version (an A/B
        test's control), else any other version with traffic; None when there is nowhere to go."""
        if self.stable is not None and failed != self.stable and self.stable in served:
            return self.stable
        weights = self.assigner.table.weights_pct()
        return next((name for name in served if name != failed and weights.get(name, 0.0) > 0.0), None)
