"""``serve-ab validate --load``: load every version before deploying, as a replica would.

The config checks say whether a file is well formed; they cannot say whether its models
load, take the ``inputs:`` declared, and agree with one another. A replica finds out at start,
and then serves on without the version that failed (``serve-ab status`` names it), or a
blue-green rollout fails its validation. Here the same code finds it on this machine first:

- each version loaded with the replica's own loader and warm-up call
  (:func:`serve_ab.serving.runtime.load_versions`);
- each asked for its interface, and the interfaces compared, by a router's own core
  (:class:`~serve_ab.serving.core.router.RouterCore`: the stable's, or the A/B test's
  control's, interface wins a disagreement, as when serving);
- a blue-green rollout's validation run as the controller runs it before the switch
  (:func:`serve_ab.rollout.validation.validate_green`: ``validation_samples`` served by green,
  finite, and as accurate as ``validation_min_accuracy`` asks).

Loading needs the backends' libraries (onnxruntime, torch). Every version loads on this
machine's CPU whatever its ``device``: a GPU the cluster lacks is found when ``serve run``
builds the app (``resources_missing``), not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from serve_ab.config import ExperimentConfig
from serve_ab.config.rollout import Strategy

#: Green answers in this process; the controller's own limit is the progress deadline.
VALIDATION_TIMEOUT_S = 300.0
#: How long loading and checking one app's versions may take (``validate --load-timeout``):
#: a python version's load() waiting on something that never comes (a download on a machine
#: without the network, a lock) would otherwise hold validate forever.
LOAD_TIMEOUT_S = 600.0


class _NoController:
    """A router core's controller, never asked: nothing here reports or long-polls."""


def model_errors(cfg: ExperimentConfig, prefix: str = "", timeout_s: float = LOAD_TIMEOUT_S) -> list[str]:
    """Why versions of ``cfg`` (model paths resolved) could not serve, and why a blue-green
    rollout's validation would fail: one line each, named by field. Work past ``timeout_s``
    is one line naming the step it was in; it is left running in a daemon thread, which
    ends with the process (Python cannot stop a thread, and a CLI exits soon after)."""
    step = ["loading"]
    outcome: list[Any] = []

    def work() -> None:
        try:
            with _replica_log_quiet():
                outcome.append(_model_errors(cfg, prefix, step))
        except BaseException as err:  # noqa: BLE001 - raised again in the caller's thread
            outcome.append(err)

    worker = threading.Thread(target=work, name="serve-ab-validate-load", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        return [f"{step[0]} did not finish within {timeout_s:g}s (validate --load-timeout); a python "
                "version's load() or predict() may be waiting on something that never comes (a download, a "
                "lock, a device)"]
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


@contextlib.contextmanager
def _replica_log_quiet() -> Iterator[None]:
    """The replicas' log lines (a version loaded, one refused, a traceback of a failed
    validation) say here what the errors below say once, by field; so does the traceback
    torch.export logs as a warning when an archive will not load."""
    replica_log, export_log = logging.getLogger("ray.serve"), logging.getLogger("torch.export")
    level = replica_log.level
    replica_log.setLevel(logging.CRITICAL)
    # A filter, not a level: importing torch (in the first torch version's load) sets its
    # loggers' levels afresh.
    drop_all = _DropAll()
    export_log.addFilter(drop_all)
    try:
        yield
    finally:
        replica_log.setLevel(level)
        export_log.removeFilter(drop_all)


class _DropAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


def _model_errors(cfg: ExperimentConfig, prefix: str, step: list[str]) -> list[str]:
    """The work of :func:`model_errors`; ``step[0]`` says where it is, for a timeout's line."""
    from serve_ab.serving.core.router import RouterCore
    from serve_ab.serving.core.versions import load_each
    from serve_ab.serving.runtime import LoadedVersion

    # On this machine's CPU, whatever each version's device: what is checked is the file, the
    # interface and green's answers; the cluster's GPUs are checked when serve run builds the app.
    cfg = cfg.model_copy(update={"versions": [v.model_copy(update={"device": "cpu"}) for v in cfg.versions]})
    where = f"{prefix}.versions" if prefix else "versions"

    def load(version: Any) -> LoadedVersion:
        index = next(i for i, v in enumerate(cfg.versions) if v.name == version.name)
        step[0] = f"{where}.{index} ({version.name!r}): loading"
        return LoadedVersion(version)

    versions = load_each(cfg.versions, load)  # serving.runtime.load_versions, with the step named
    step[0] = f"{where}: asking each version for its interface"
    core = RouterCore(cfg, versions, _NoController(), request_id=lambda: "validate")  # type: ignore[arg-type]

    async def check() -> dict[str, tuple[bool, str | None]]:
        return {version.name: await core.version_ready(version.name) for version in cfg.versions}

    ready = asyncio.run(check())
    errors = [f"{where}.{index} ({version.name!r}): {ready[version.name][1] or 'did not answer'}"
              for index, version in enumerate(cfg.versions) if not ready[version.name][0]]
    rollout = cfg.rollout
    if not errors and rollout is not None and rollout.strategy is Strategy.BLUE_GREEN:
        step[0] = f"{prefix}.rollout.blue_green: validation" if prefix else "rollout.blue_green: validation"
        errors += _validation_errors(core, cfg, prefix)
    return errors


def _validation_errors(core: Any, cfg: ExperimentConfig, prefix: str) -> list[str]:
    """Green's validation, as the controller runs it before the switch (its samples, or one
    all-zero instance), green pinned on this core."""
    from serve_ab.backends.base import specs_of
    from serve_ab.rollout.validation import load_samples, validate_green

    green = cfg.rollout.candidate

    async def predict(inputs: Any) -> dict[str, Any]:
        _, outputs = await core.serve(inputs, None, green)
        return {"outputs": outputs}

    async def interface() -> dict[str, Any]:
        input_spec, _ = await core.interface()
        return {"inputs": [s.to_v2() for s in specs_of(input_spec)]}

    field = f"{prefix}.rollout.blue_green" if prefix else "rollout.blue_green"
    try:  # the file first, named as a field: the controller would fail validation on it
        load_samples(cfg.rollout.blue_green_settings.validation_samples)
    except ValueError as err:
        return [f"{field}.validation_samples: {err}"]
    passed, seen = asyncio.run(validate_green(cfg, predict, interface, VALIDATION_TIMEOUT_S))
    return [] if passed else [f"{field}: {seen}: the rollout would abort before any traffic moves"]
