"""What can go wrong with a request or an action, without transport: no HTTP status here.

The router core raises these; ``serve_ab.api.errors`` maps them to HTTP statuses (and gRPC
codes) in one table, and a Python caller through a DeploymentHandle gets them as they are
(Ray re-raises a replica's exception as a class deriving from it, so ``except
VersionNotServed`` works across the handle). Every message is shown to the client as is,
so it says what was received and what would be valid.
"""

from __future__ import annotations


class ServeAbError(Exception):
    """Base of the errors a caller can act on; one message argument, so they pickle."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidInput(ServeAbError, ValueError):
    """The request itself is wrong: its body, a field, a key, the shape of its inputs."""


class Unprocessable(InvalidInput):
    """A body that parses but does not fit its schema where the API says 422 (control actions)."""


class BodyTooLarge(InvalidInput):
    """The request body is over ``http.max_body_bytes``."""


class BodyTimeout(InvalidInput):
    """The request body did not arrive within ``http.body_timeout_s`` (a 408)."""


class UnsupportedEncoding(InvalidInput):
    """A request body in a Content-Encoding this server does not decode."""


class Unauthorized(ServeAbError):
    """A control action without the right token (or with none configured)."""


class PinningDisabled(ServeAbError):
    """A request pinned a version while ``pin.enabled`` is false."""


class NotFound(ServeAbError, LookupError):
    """Something the request names does not exist here."""


class VersionNotServed(NotFound):
    """A version this experiment does not serve (never did, or retired)."""


class UnknownModel(NotFound):
    """A model name other than the one this app serves."""


class UnknownAction(NotFound):
    """A control action that does not exist."""


class ActionRefused(ServeAbError):
    """A control action the rollout's phase does not allow (promote an aborted rollout)."""


class Forbidden(ServeAbError):
    """A credential that is present but does not allow this (a forged or expired feedback
    token, a role without the right)."""


class Conflict(ServeAbError):
    """The request repeats or contradicts what is already recorded (feedback reported twice)."""


class StoreUnavailable(ServeAbError):
    """The rollout's state could not be saved; nothing was changed, so the action can be
    sent again (a tick retries by itself)."""


class VersionUnavailable(ServeAbError):
    """No replica of a version can answer now: it died, or stalls past the watchdog's limits."""


class VersionTimedOut(VersionUnavailable):
    """A call to an isolated version waited past ``isolation.call_timeout_s`` and was
    cancelled: served elsewhere as an outage is, but counted as ``timeout``, since the version
    may be up and only slow (a replica busy with a long call, a queue behind it)."""


class ControllerUnavailable(ServeAbError):
    """The controller (figures, rollout, feedback) cannot be reached now: it is starting,
    restarting, or waiting for its store.
    Serving goes on with the last weights; the client may retry."""


class BadOutput(VersionUnavailable):
    """A version answered, but not with a usable answer (NaN or infinity in its outputs, or
    not the outputs it declares: another shape, or not one row per input row): it is treated
    as unable to serve, so an assigned request is served by the fallback instead."""


class ModelFailed(BadOutput):
    """A version's model raised instead of answering (a bug, an input it cannot handle that
    passed the input checks): a 502 naming the version. Not retried on the fallback: the
    same input would likely fail there too."""


__all__ = [
    "ActionRefused",
    "BadOutput",
    "BodyTimeout",
    "BodyTooLarge",
    "Conflict",
    "ControllerUnavailable",
    "Forbidden",
    "InvalidInput",
    "ModelFailed",
    "NotFound",
    "PinningDisabled",
    "ServeAbError",
    "StoreUnavailable",
    "Unauthorized",
    "Unprocessable",
    "UnknownAction",
    "UnknownModel",
    "VersionNotServed",
    "VersionUnavailable",
]
