"""The router's work, without Ray: every request over HTTP, gRPC or a handle comes here.

key -> version (:class:`TrafficDecision`) -> checked batch -> that version's ``predict``
-> this interval's aggregate (:class:`ObservationBuffer`) -> copies to mirrored versions
(:class:`MirrorSender`). Beside the requests, two loops: :meth:`RouterCore.follow` long-polls
the controller for a :class:`RoutingSnapshot` and applies it; :meth:`RouterCore.flush` sends
the interval's aggregate once per interval, and keeps it (:class:`ReportLedger`) until the
controller has saved it, for a controller that restarts before then. Both keep serving with
the last weights while the controller is away. Clock, sleep and the request id are injected, so unit tests drive
everything with fakes and never wait.

A version that cannot serve never stops the others: one that failed to load, or (isolated)
did not answer ``describe`` in time, or takes another input than the experiment's, is a
failed version (:meth:`RouterCore.failed_versions`); the split's requests to it are served
by the fallback and pinned ones get a 503 naming why. The experiment's interface comes from
the first version that answers, the stable one winning a disagreement, so the stable's
requests never wait on a candidate; :meth:`RouterCore.watch_versions` asks the failed
isolated versions again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np

from serve_ab.analysis.aggregate import IntervalAggregate
from serve_ab.analysis.tasks import task_rules
from serve_ab.api.schemas import MAX_REQUEST_ID_CHARS
from serve_ab.backends.base import InputSpec, OutputSpec, tensors_text, to_batch
from serve_ab.config.experiment import ExperimentConfig, Placement
from serve_ab.errors import (
    ControllerUnavailable,
    Forbidden,
    InvalidInput,
    ModelFailed,
    ServeAbError,
    Unauthorized,
    UnknownModel,
    VersionNotServed,
    VersionUnavailable,
)
from serve_ab.routing import Assigner
from serve_ab.serving.core.decision import Choice, TrafficDecision
from serve_ab.serving.core.feedback_token import FeedbackSigner, Proven
from serve_ab.serving.core.ledger import FeedbackCall, ReportLedger
from serve_ab.serving.core.messages import ControllerApi, IntervalReport, NotCounted, RoutingSnapshot
from serve_ab.serving.core.mirror import MirrorSender, copy_caps
from serve_ab.serving.core.run_config import config_digest
from serve_ab.serving.core.observe import ObservationBuffer
from serve_ab.serving.core.versions import (
    FailedVersion,
    Version,
    VersionLoadFailed,
    answer,
    detached_task,
    error_kind,
    load_error_text,
    within,
)
from serve_ab.serving.core.watchdog import WatchedVersion

logger = logging.getLogger("ray.serve")

RETRY_FOLLOW_S = 0.5  # between long polls while the controller is unreachable
# An idle router reports, empty, this often: the controller counts a router silent for a
# minute (serving/reports.py STALE_S) as lost, so a live one must not stay silent that long.
IDLE_REPORT_S = 20.0


def _log_failure(task: asyncio.Task) -> None:
    """A report task's own failure (a controller's refusal or absence is handled within)."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("serve-ab router: a report failed", exc_info=task.exception())


class RouterCore:
    """One router replica's state and request path."""

    def __init__(self, cfg: ExperimentConfig, versions: Mapping[str, Version], controller: ControllerApi,
                 *, request_id: Callable[[], str], clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 interface: tuple[InputSpec, OutputSpec] | None = None,
                 on_answer: Callable[[str, str], None] | None = None,
                 on_failed_after_answer: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.versions: dict[str, Version] = dict(versions)
        self.controller = controller
        self.request_id = request_id
        # Told (request id, version) of each answered request: the version on its access line.
        self.on_answer = on_answer
        # Told the request id of a call that failed after its version answered (its gRPC
        # answer could not be encoded): its access line then reads the call's code.
        self.on_failed_after_answer = on_failed_after_answer
        self.clock = clock
        self.sleep = sleep
        # Where a request goes when its version cannot answer: the rollout's stable, or the A/B
        # test's control (analysis.control, else the first version listed), not whichever
        # version comes first among the others.
        self.decision = TrafficDecision(Assigner(cfg.weights_pct(), cfg.assignment.salt), cfg.assignment,
                                        cfg.rollout.stable if cfg.rollout is not None else cfg.control_version())
        # Without tokens, feedback names only its request id: the controller joins it by the
        # ids of assigned answers, which the reports then carry.
        self.feedback_kinds = cfg.feedback_kinds()  # what POST /feedback accepts, and as what
        # An experiment that names no feedback (no analysis.metrics, no feedback gate) refuses
        # every POST /feedback: its answers carry no token (an HMAC a request nobody could
        # redeem) and its reports no request ids.
        self.takes_feedback = bool(self.feedback_kinds)
        self.observations = ObservationBuffer(
            clock, keep_request_ids=self.takes_feedback and not cfg.feedback.require_token,
            tasks=task_rules(cfg.versions))
        self.observations.routed_by(-1, self.decision.assigner.table.weights_pct())
        self.replica = "router"  # named in reports; the Ray shell sets the replica's id
        self.mirrors = MirrorSender(self.observations, clock, output_spec=self._output_spec,
                                    in_flight_cap=copy_caps(cfg).get)
        self.epoch = -1
        self._misfit_said: tuple[int, tuple] | None = None  # the last other config's routing logged (apply)
        self.signer: FeedbackSigner | None = None  # set once the key is known (use_feedback_key)
        self._version_names = frozenset(v.name for v in cfg.versions)
        # The experiment's input and output: given (tests), or the first answer to describe().
        self._interface = interface
        self.isolation = cfg.isolation
        self._preferred = cfg.control_version()  # the stable: its interface wins a disagreement
        self._reference: str | None = None  # the version the interface was taken from
        self._failed: dict[str, str] = {n: v.reason for n, v in self.versions.items()
                                        if isinstance(v, FailedVersion)}
        # Versions seen answering with the experiment's interface: only these take the split's requests.
        self._agreed: set[str] = set() if interface is None else set(self.versions) - set(self._failed)
        self._checks: dict[str, asyncio.Future] = {}  # describe() calls in flight, per version
        self._key_warned = False
        self._reporting: set[asyncio.Task] = set()  # reports sent at a change of weights, in flight
        # The one empty report a new replica sends, before its first feedback, to hear what the
        # controller takes (send_feedback): shared by the calls that wait for it, never sent twice
        # (a controller away hears of this replica at the next interval's report).
        self._asking: asyncio.Task | None = None
        # What the controller has not saved yet; reports go one at a time, in order.
        self.ledger = ReportLedger()
        self.config_digest = config_digest(cfg)  # on each report: the controller merges its own run's
        for name, version in self.versions.items():
            if isinstance(version, WatchedVersion):  # held down only while another can serve for it
                version.has_fallback = functools.partial(self.has_fallback, name)
        self._flush_lock = asyncio.Lock()
        self._reported_s = clock()  # when this router last made a report (IDLE_REPORT_S)
        # A report is due at the next flush even if idle: a new controller was just heard of,
        # and it holds /metrics until this router sent it a report made for it (RestartCatchUp).
        self._report_now = False

    # -- the request path ----------------------------------------------------------------------

    async def serve(self, inputs: Any, key: str | None, pinned: str | None) -> tuple[str, np.ndarray]:
        """Serve a batch of instances (nested lists or an array): the version and its outputs."""
        _, version, outputs = await self.serve_choice(inputs, key, pinned)
        return version, outputs

    async def serve_choice(self, inputs: Any, key: str | None, pinned: str | None, *,
                           may_hold_booleans: bool = True) -> tuple[Choice, str, np.ndarray]:
        """As :meth:`serve`, with the traffic decision (for the answer's feedback token).
        ``may_hold_booleans``: False where the caller saw no ``true``/``false`` in the body."""
        choice = self.choose(key, pinned)
        # Known after the first answer to describe(): no coroutine to await per request.
        input_spec, _ = self._interface or await self.interface()
        batch = to_batch(inputs, input_spec, allow_non_finite=self.cfg.http.allow_non_finite,
                         may_hold_booleans=may_hold_booleans)
        version, outputs = await self.predict(choice, batch)
        return choice, version, outputs

    def choose(self, key: str | None, pinned: str | None) -> Choice:
        """The traffic decision, stamped with the routing epoch it was made under: the split
        its figures belong to."""
        return self.decision.choose(key, pinned, self.versions, self.epoch)

    async def predict(self, choice: Choice, batch: np.ndarray) -> tuple[str, np.ndarray]:
        """Serve ``batch`` on the chosen version; returns the version that served it and the outputs.

        A pinned request (QA, blue-green validation) is answered by its version only. An
        assigned one whose version cannot answer (its replicas died) is served once more on
        the fallback: safe, because inference is idempotent (a read with no side effect).
        """
        version, request_id = choice.version, self.request_id()
        if self.takes_feedback and len(request_id) > MAX_REQUEST_ID_CHARS:
            # Its feedback could not name it (POST /feedback): refused before it is served or counted.
            raise InvalidInput(f"x-request-id is {len(request_id)} characters long; at most "
                               f"{MAX_REQUEST_ID_CHARS} where the experiment takes feedback, which names its request by it")
        if version not in self._agreed:
            # A version still starting (isolated): its own requests wait for its answer to
            # describe(), at most isolation.describe_timeout_s; no other version's do. Sending
            # its share elsewhere meanwhile would count a healthy version's start as its errors.
            await self._checked(version)
        started_s = self.clock()
        try:
            outputs = await answer(version, self._version(version, choice.assigned), batch, self._output_spec())
        except BaseException as err:
            # Recorded against the version that failed, so the rollout's error_rate gate sees it.
            self.observations.served(version, started_s, error_kind(err), None, request_id=request_id,
                                     unit=choice.unit, assigned=choice.assigned, pinned=not choice.assigned,
                                     split=choice.epoch)
            # A model that raised is not retried: the same input would likely fail again,
            # and its error is the answer (502, naming the version), as for a pinned request.
            if not choice.assigned or not isinstance(err, VersionUnavailable) or isinstance(err, ModelFailed):
                raise
            fallback = self.decision.fallback_for(version, self._agreed)
            if fallback is None:
                raise
            logger.warning("serve-ab router: request %s: version %s could not answer (%s); retrying the request on %s",
                           request_id, version, err, fallback)
            version, started_s = fallback, self.clock()
            try:
                outputs = await answer(version, self._version(version), batch, self._output_spec())
            except BaseException as retry_err:  # once only: a second outage is the caller's answer
                self.observations.served(version, started_s, error_kind(retry_err), None,
                                         request_id=request_id, unit=choice.unit, retry=True)
                raise
            self.observations.served(version, started_s, None, outputs, request_id=request_id, unit=choice.unit,
                                     retry=True)
            if self.on_answer is not None:
                self.on_answer(request_id, version)
            return version, outputs
        self.observations.served(version, started_s, None, outputs, request_id=request_id,
                                 unit=choice.unit, assigned=choice.assigned, pinned=not choice.assigned,
                                 split=choice.epoch)
        if choice.assigned:
            self.mirrors.send(self.versions, version, batch, outputs, request_id, choice.unit)
        if self.on_answer is not None:
            self.on_answer(request_id, version)
        return version, outputs

    def _output_spec(self) -> OutputSpec | None:
        """The outputs every answer is checked against, once the versions agreed on them."""
        return None if self._interface is None else self._interface[1]

    def _version(self, name: str, assigned: bool = False) -> Version:
        version = self.versions.get(name)
        if version is None:  # retired between the decision and the call
            message = f"version {name!r} is no longer served; this experiment serves {list(self.versions)}"
            # The split chose it, not the client: serve the request elsewhere, as for an outage.
            raise VersionUnavailable(message) if assigned else VersionNotServed(message)
        if name in self._failed:
            raise VersionUnavailable(f"version {name!r} of model {self.cfg.model!r} cannot serve: "
                                     f"{self._failed[name]}")
        return version

    # -- which versions can serve ---------------------------------------------------------------

    def has_fallback(self, version: str) -> bool:
        """Whether another version would serve ``version``'s assigned requests were it down."""
        fallback = self.decision.fallback_for(version, self._agreed)
        # One held down by its own watchdog fails the retry at once: no better than none. Else
        # two versions that stall together, each the other's fallback, were both held down and
        # answered every request 503, where their calls would have waited for their replicas.
        return fallback is not None and getattr(self.versions.get(fallback), "down_reason", None) is None

    def failed_versions(self) -> dict[str, str]:
        """The versions that cannot serve now, each with why (a load error, a describe that
        timed out or failed, another interface): for the router's report to the controller."""
        return dict(self._failed)

    async def interface(self) -> tuple[InputSpec, OutputSpec]:
        """The experiment's input and output: the first version's to answer ``describe``
        (every version is asked at once; none is waited on past isolation.describe_timeout_s)."""
        if self._interface is None:
            checks = [self._start_check(n) for n in self.versions
                      if n not in self._agreed and n not in self._failed]
            while self._interface is None:
                pending = [c for c in checks if not c.done()]
                if not pending:
                    break
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if self._interface is None:
                why = "; ".join(f"{n}: {r}" for n, r in self._failed.items()) or "no version answered"
                raise VersionUnavailable(f"no version of model {self.cfg.model!r} can serve now ({why})")
        return self._interface

    def _start_check(self, name: str) -> asyncio.Future:
        check = self._checks.get(name)
        if check is None or check.done():
            check = self._checks[name] = detached_task(self._check(name))  # shared by every waiter
        return check

    async def _checked(self, name: str) -> None:
        """Wait for ``name``'s answer to describe(), asking when nobody has yet."""
        if name in self.versions and name not in self._agreed and name not in self._failed:
            await self._start_check(name)

    async def _check(self, name: str) -> None:
        version = self.versions.get(name)
        if version is None:
            return
        timeout_s = self.isolation.describe_timeout_s
        try:
            spec = await within(version.describe(), timeout_s, self.sleep)
        except TimeoutError:
            hint = ""
            if self.cfg.placement is Placement.ISOLATED and self.isolation.transport == "grpc":
                hint = ("; or this router's node cannot reach the version's on the port of Ray Serve's "
                        "gRPC between replicas (isolation.transport: actor uses Ray's own calls)")
            self._fail(name, f"did not answer within {timeout_s:g}s (isolation.describe_timeout_s): "
                             f"still starting, or its replicas cannot start{hint}")
        except VersionLoadFailed as err:  # an isolated version's deployment could not load it
            # Across Ray, the error is a RayTaskError too: its cause holds the message.
            self._fail(name, getattr(getattr(err, "cause", err), "message", None) or "failed to load")
        except Exception as err:
            self._fail(name, f"describe() failed: {load_error_text(err)}")
        else:
            self._accept(name, spec)

    def _accept(self, name: str, spec: tuple[InputSpec, OutputSpec]) -> None:
        if self._interface is not None and spec != self._interface:
            if name != self._preferred or self._reference in (None, name):
                self._fail(name, self._mismatch(spec, self._reference, self._interface))
                return
            # The stable disagrees with the first version to answer: the stable is right.
            for other in sorted(self._agreed):
                self._fail(other, self._mismatch(self._interface, name, spec))
        if self._interface is None or spec != self._interface:
            self._interface, self._reference = spec, name
        if name in self._failed:
            logger.info("serve-ab router: version %s answers again; serving it", name)
            del self._failed[name]
        self._agreed.add(name)

    @staticmethod
    def _mismatch(spec: tuple[InputSpec, OutputSpec], other: str | None,
                  other_spec: tuple[InputSpec, OutputSpec]) -> str:
        """Why a version whose tensors are ``spec`` cannot serve beside ``other``: only what
        differs (inputs, outputs or both), as V2 metadata names it."""
        other_text = f"version {other!r}" if other is not None else "the experiment"
        differs = [f"{verb} {tensors_text(mine)}, but {other_text} {verb} {tensors_text(theirs)}"
                   for verb, mine, theirs in (("takes", spec[0], other_spec[0]), ("returns", spec[1], other_spec[1]))
                   if mine != theirs]
        return (f"{'; '.join(differs)}; the versions of one experiment must share their input and output "
                "tensors (names, datatypes and shapes)")

    def _fail(self, name: str, reason: str) -> None:
        if self._failed.get(name) != reason:
            logger.warning("serve-ab router: version %s cannot serve: %s", name, reason)
        self._failed[name] = reason
        self._agreed.discard(name)

    async def watch_versions(self) -> None:
        """Ask every version at once, so a failure is known (and reported) before a request
        needs it; then ask the failed isolated versions again every isolation.recheck_s (a
        colocated load failure stays: a new file needs a redeploy)."""
        try:
            await self.interface()
        except VersionUnavailable as err:
            logger.warning("serve-ab router: %s", err.message)
        while True:
            await self.sleep(self.isolation.recheck_s)
            for name in list(self._failed):
                if name in self.versions and not isinstance(self.versions[name], FailedVersion):
                    self._start_check(name)

    async def _ask_all(self) -> None:
        try:
            await self.interface()
        except VersionUnavailable:
            pass

    async def is_ready(self) -> bool:
        """The model is ready when one version serves (the stable, or any other)."""
        try:
            await self.interface()
        except Exception:  # no version loaded, or none answering yet
            return False
        return True

    async def version_ready(self, name: str) -> tuple[bool, str | None]:
        """Whether ``name`` serves, and when not, why (None while it is still starting)."""
        self.check_version(name)
        await self._ask_all()
        await self._checked(name)
        return name in self._agreed, self._failed.get(name)

    # -- feedback tokens ----------------------------------------------------------------------

    def use_feedback_key(self, key: bytes) -> None:
        self.signer = FeedbackSigner(key, self.cfg.feedback.token_ttl_s, self.clock, scope=self.cfg.model)

    def feedback_token(self, request_id: str, version: str, assigned: bool = True,
                       unit: int | None = None, epoch: int = -1) -> str | None:
        """The token an answer carries, for its client's feedback (``assigned``: False for a
        pinned request, whose feedback is then not counted); None when feedback needs none or
        the experiment takes none."""
        if not self.takes_feedback or not self.cfg.feedback.require_token:
            return None  # not minted: an HMAC per answer that nobody would check
        if self.signer is None:  # the key is on its way (feedback_key_loop): serve, untokened
            if not self._key_warned:
                logger.warning("serve-ab router: no feedback key yet (state store unreachable); "
                               "answers carry no feedback_token until it is known")
                self._key_warned = True
            return None
        return self.signer.issue(request_id, version, assigned, unit, epoch)

    def feedback_token_for(self, request_id: str, choice: Choice) -> str | None:
        """The token of an answer to ``choice``. It names the version the split *assigned*
        (intention to treat: feedback on an answer a fallback served counts for the assigned
        version, as its failure did), with the user's bucket and the routing epoch, so the
        feedback joins its unit and split."""
        return self.feedback_token(request_id, choice.version, choice.assigned, choice.unit, choice.epoch)

    def verify_feedback(self, token: str | None, request_id: str) -> Proven | None:
        """What the feedback's token proves (the version, whether it counts, the answer's id);
        None when the experiment takes feedback by request id alone (feedback.require_token: false)."""
        if not self.cfg.feedback.require_token:
            return None
        if token is None:
            raise Unauthorized("feedback needs the feedback_token of the answer it is about: send "
                               '{"request_id", "feedback_token", "name", ...} as the answer gave them')
        proven = self._signer().verify(token, request_id)
        if proven.version not in self._version_names:
            raise Forbidden(f"feedback_token names version {proven.version!r}, which this experiment "
                            f"does not serve ({sorted(self._version_names)})")
        return proven

    def _signer(self) -> FeedbackSigner:
        if self.signer is None:
            raise ControllerUnavailable("feedback cannot be checked yet: this router has not got the "
                                        "feedback key (the state store is unreachable); retry in a few seconds")
        return self.signer

    def check_model(self, model: str) -> None:
        if model != self.cfg.model:
            raise UnknownModel(f"unknown model {model!r}; this app serves {self.cfg.model!r}")

    def check_version(self, version: str) -> None:
        if version not in self.versions:
            raise VersionNotServed(f"unknown version {version!r} of model {self.cfg.model!r}; "
                                   f"versions: {list(self.versions)}")

    # -- following the controller --------------------------------------------------------------

    def apply(self, snapshot: RoutingSnapshot) -> bool:
        """Serve by the controller's snapshot: weights, retired versions, mirrors. True when
        the weights changed.

        A snapshot whose weights do not add up to 100 over this replica's versions comes from
        a controller of another config: during a redeploy that adds or removes a version, the
        old replicas meet the new controller for seconds (and new ones the old). Nothing of it
        is applied; its epoch is taken, under the weights kept, so that the long poll waits for
        the next change and what is served meanwhile still counts under the weights it used."""
        weights = {name: snapshot.weights.get(name, 0.0) for name in self.versions}
        changed = weights != self.decision.assigner.table.weights_pct()
        if changed:
            try:
                self.decision.assigner.set_weights(weights)
            except ValueError as err:
                kept = self.decision.assigner.table.weights_pct()
                # Once a snapshot, however often it comes again; by its weights too, as every
                # controller counts epochs from 0: the new one's first often has the old one's epoch.
                said = (snapshot.epoch, tuple(sorted(snapshot.weights.items())))
                if said != self._misfit_said:
                    self._misfit_said = said
                    logger.warning("serve-ab router: the controller's routing (epoch %d, weights %s) does not fit this "
                                   "replica's versions %s (%s): it runs another config, as during a redeploy that "
                                   "changes the versions, until Serve replaces this replica or that controller; "
                                   "keeping weights %s", snapshot.epoch, dict(snapshot.weights), list(self.versions),
                                   err, kept)
                self.epoch = snapshot.epoch
                self.observations.routed_by(snapshot.epoch, kept)
                return False
            logger.info("serve-ab router: weights now %s", weights)
        self.epoch = snapshot.epoch
        self.mirrors.mirrors = snapshot.mirrors
        self.observations.routed_by(snapshot.epoch, self.decision.assigner.table.weights_pct())
        for name in snapshot.retired:
            if name in self.versions and weights.get(name, 0.0) == 0.0:
                # Requests in flight hold their own reference; the model is freed after them.
                del self.versions[name]
                self._failed.pop(name, None)
                self._agreed.discard(name)
                logger.info("serve-ab router: retired version %s", name)
        return changed

    async def follow(self) -> None:
        """Apply every new snapshot as soon as the controller has it (a long poll).

        At a change of weights, what was served under the old ones is reported at once, in a
        report of the old weights' requests only, which the controller keeps out of the new
        step's gate windows (it files the others by arrival); otherwise the next report would
        mix up to ``report_interval_s`` of the step before into the new step's."""
        unreachable_since_s: float | None = None  # one line an outage, not one a retry
        while True:
            try:
                snapshot = await self.controller.wait_for_update(self.epoch)
                if unreachable_since_s is not None:
                    logger.info("serve-ab router: controller reachable again after %.1fs",
                                self.clock() - unreachable_since_s)
                    unreachable_since_s = None
                    # Likely a restarted controller: tell it now what it lacks, idle or not.
                    self._report_now = True
                if self.apply(snapshot):
                    # In a task: the next long poll (a rollback, say) never waits on this call.
                    self._reporting.add(report := asyncio.get_running_loop().create_task(self.flush_once()))
                    report.add_done_callback(self._reporting.discard)
            except Exception as err:  # controller restarting: keep serving the last weights
                if unreachable_since_s is None:
                    unreachable_since_s = self.clock()
                    # A restart is expected (its error says so in a line); anything else gets its traceback.
                    logger.warning("serve-ab router: controller unreachable (%s); keeping weights",
                                   err, exc_info=not isinstance(err, ControllerUnavailable))
                await self.sleep(RETRY_FOLLOW_S)

    async def flush(self) -> None:
        """Send what was served to the controller, one message per ``report_interval_s``.

        Each message is a Ray call on both sides: every 0.25 s, they cost the router and the
        controller about 1 ms of CPU a request at 85 req/s on a 2-core machine
        (benchmarks/README.md)."""
        while True:
            await self.sleep(self.cfg.controller.report_interval_s)
            await self.flush_once()

    async def flush_once(self, last: bool = False, ask: bool = False) -> None:
        """Send this interval's aggregate, after any earlier report the controller has not
        taken (it was away) or lacks (it restarted): :class:`ReportLedger`. ``last``: the
        replica is stopping, and its report says so, even an empty one. ``ask``: only while no
        report was answered yet, an empty report (or the ones unsent) to hear what the controller
        takes (send_feedback); what was served waits for the interval's report."""
        async with self._flush_lock:
            if ask and self.ledger.heard:  # another call asked meanwhile
                return
            self.mirrors.warn_dropped()  # the tail of a burst of dropped copies, once a minute has passed
            aggregate = None if ask else self.observations.drain()
            failed = self.failed_versions()
            idle_too_long = self.clock() - self._reported_s >= IDLE_REPORT_S
            due = (aggregate is not None or failed or self.ledger.waiting() or last or idle_too_long
                   or self._report_now)
            if ask:  # an empty report, unless one not sent yet goes now and is answered as well
                due = self.ledger.next_unsent() is None
            if due:
                # Idle, the controller must still hear what failed, or say what it saved, and
                # now and then that this router lives (a silent one is counted lost).
                self.ledger.add(self.ledger.stamp(IntervalReport(self.replica, aggregate or IntervalAggregate(),
                                                                 failed_versions=failed, last=last,
                                                                 config=self.config_digest)))
                self._reported_s = self.clock()
                self._report_now = False
            while (report := self.ledger.next_unsent()) is not None:
                mark = self.ledger.mark()
                try:
                    answer = await self.controller.record(report)
                except Exception as err:
                    self.ledger.not_taken(report)
                    # A controller that is stopping or restarting says all there is in one line
                    # (an empty report's, at every Ctrl-C, is no warning); anything else keeps its
                    # traceback.
                    away = isinstance(err, ControllerUnavailable)
                    logger.log(logging.INFO if away and not report.aggregate.rows else logging.WARNING,
                               "serve-ab router: the controller did not take report %d (%d requests); "
                               "it goes again at the next interval", report.seq, report.aggregate.rows,
                               exc_info=not away)
                    return
                self.ledger.answered(report, answer, mark)
                if answer is not None and answer.restarted:
                    # The reports sent again now are marked so; a restarted controller holds its
                    # /metrics until one made after them comes, so an idle router sends one at the
                    # next interval rather than at its next heartbeat (up to IDLE_REPORT_S on).
                    self._report_now = True
                if answer is not None and answer.other_config:  # kept for a controller of this config
                    return
            await self._send_feedback_again()

    async def _send_feedback_again(self) -> None:
        """Send a restarted controller the feedback kept for it (after the reports it joins).
        Refused as one it has (restored, or sent to it since), it is kept as accepted: a
        controller that dies before saving it is sent it once more."""
        while (call := self.ledger.next_feedback_resend()) is not None:
            sent_to = self.ledger.controller
            try:
                await self.controller.feedback(*call.args(), resent=True)
            except ControllerUnavailable:  # away again (Ray's errors reach here as this)
                self.ledger.not_resent(call)
                logger.warning("serve-ab router: the restarted controller did not take feedback again; "
                               "retrying at the next interval", exc_info=True)
                return
            except ServeAbError:
                pass  # refused: it has it (or the token expired); kept until a save holds it
            except Exception:  # its own failure: the same call would fail again
                logger.exception("serve-ab router: the restarted controller failed on feedback sent again; "
                                 "dropped")
                continue
            self.ledger.accepted(call, sent_to)

    async def send_feedback(self, call: FeedbackCall) -> str | None | NotCounted:
        """Feedback on an answer, to the controller: the version it joined (None while it waits
        for its request's report), or NotCounted (the answer came before the controller's run
        started). Kept until the controller has saved it; a NotCounted one is not kept, since a
        restarted controller takes resent feedback without checking its age."""
        if not self.ledger.heard:
            # A new replica (as after a redeploy, when feedback on the previous run's answers
            # comes) learns from a report's answer whether the controller checks an answer's
            # age: without asking first, that feedback went unchecked and counted in the new run.
            # One ask, whose wait the calls share: a controller away leaves it unknown, and each
            # call until the next interval's report is answered goes as to the previous release.
            if self._asking is None:
                self._asking = asyncio.get_running_loop().create_task(self.flush_once(ask=True))
                self._asking.add_done_callback(_log_failure)
            if not self._asking.done():
                await asyncio.wait({self._asking})  # its failure is the report's (logged), not this call's
        sent_to = self.ledger.controller
        age = call.answered_after_s if self.ledger.checks_answer_age else None
        extra = {"not_counted_ok": True} if self.ledger.answers_not_counted else {}
        version = await self.controller.feedback(*call.args(), answered_after_s=age, **extra)
        if isinstance(version, NotCounted):
            return version
        self.ledger.accepted(call, sent_to)
        return version
