"""A version that cannot serve is isolated: it failed to load (colocated), never answers or
answers with another interface (isolated). The stable serves meanwhile, the split's requests
to the failed version fall back, pinned ones get a 503 naming why. No Ray, a fake clock."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serve_ab.backends.base import InputSpec
from serve_ab.errors import VersionTimedOut, VersionUnavailable
from serve_ab.serving import http as routes
from serve_ab.serving.core.auth import ControlAuth, NamedToken, Role
from serve_ab.serving.core.router import RouterCore
from serve_ab.serving.core.versions import (
    FailedVersion,
    VersionLoadFailed,
    error_kind,
    load_each,
    load_error_text,
)
from serve_ab.serving.core.watchdog import WatchdogSettings, WatchedVersion
from tests.support.fakes import (
    DIGITS_INPUT,
    DIGITS_OUTPUT,
    FakeClock,
    FakeController,
    FakeVersion,
    SilentVersion,
    failing_loader,
)
from tests.unit.serving.test_router_core import FakeCall, FakeCalls, experiment

ROW = [[0.0] * 64]
CORRUPT = ValueError("cannot load /srv/models/digits/v2/model.onnx with the onnx backend: "
                     "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from "
                     "/srv/models/digits/v2/model.onnx failed:Protobuf parsing failed.\nTraceback ...")
QA = "unit-qa-token-0123"


def core_over(versions, clock=None, **changes) -> RouterCore:
    clock = clock or FakeClock()
    return RouterCore(experiment(pin={"enabled": True}, **changes), versions, FakeController(),
                      request_id=lambda: "req-1", clock=clock, sleep=clock.sleep)


def colocated_with_corrupt_v2() -> RouterCore:
    cfg = experiment()
    return core_over(load_each(cfg.versions, failing_loader({"v2": CORRUPT})))


def keys_for(core: RouterCore, version: str, n: int = 5) -> list[str]:
    return [k for k in map(str, range(500)) if core.decision.assigner.assign(k) == version][:n]


def run(coro):
    return asyncio.run(coro)


# -- colocated: a version that fails to load -----------------------------------------------

def test_a_load_error_is_a_short_line_without_server_paths():
    text = load_error_text(CORRUPT)
    assert text.startswith("ValueError: cannot load model.onnx with the onnx backend")
    assert "/srv" not in text and "Traceback" not in text
    assert load_error_text(RuntimeError("x" * 1000)).endswith("...")


def test_the_stable_serves_while_the_candidate_failed_to_load_and_the_fallback_is_counted():
    core = colocated_with_corrupt_v2()
    assert isinstance(core.versions["v2"], FailedVersion)
    assert list(core.failed_versions()) == ["v2"]
    assert core.failed_versions()["v2"].startswith("failed to load: ValueError: cannot load model.onnx")
    for key in keys_for(core, "v2"):
        version, outputs = run(core.serve(ROW, key, None))
        assert version == "v1" and int(outputs[0].argmax()) == 1
    interval = core.observations.drain()
    v1, v2 = interval.versions["v1"], interval.versions["v2"]
    # Each of the 5 assigned to v2 failed there (counted for v2) and was answered by v1.
    assert (v2.requests, dict(v2.errors), v2.assigned) == (5, {"unavailable": 5}, 5)
    assert (v1.requests, v1.assigned) == (5, 0)


def test_a_request_pinned_to_the_failed_version_is_a_503_naming_the_load_error():
    core = colocated_with_corrupt_v2()
    with pytest.raises(VersionUnavailable, match="'v2' of model 'digits' cannot serve: failed to load: "
                                                 "ValueError: cannot load model.onnx") as caught:
        run(core.serve(ROW, None, "v2"))
    assert "/srv" not in caught.value.message


def test_readiness_of_the_model_and_of_each_version():
    core = colocated_with_corrupt_v2()
    assert run(core.is_ready())
    assert run(core.version_ready("v1")) == (True, None)
    ready, why = run(core.version_ready("v2"))
    assert not ready and why.startswith("failed to load: ValueError")


def test_every_version_failed_is_not_ready_and_a_503():
    cfg = experiment()
    core = core_over(load_each(cfg.versions, failing_loader({"v1": CORRUPT, "v2": CORRUPT})))
    assert not run(core.is_ready())
    with pytest.raises(VersionUnavailable, match="no version of model 'digits' can serve now"):
        run(core.serve(ROW, "u", None))


def test_the_interface_comes_from_the_loaded_versions_only():
    other = (InputSpec("input", np.dtype("float32"), (-1, 32)), DIGITS_OUTPUT)
    cfg = experiment()
    core = core_over(load_each(cfg.versions, failing_loader({"v1": CORRUPT})) | {"v2": FakeVersion(2, spec=other)})
    assert run(core.interface()) == other  # v1 failed: v2's interface is the experiment's
    assert run(core.serve([[0.0] * 32], "u", None))[0] == "v2"


def test_http_ready_endpoints_and_pins_with_a_failed_candidate():
    core = colocated_with_corrupt_v2()
    core.use_feedback_key(b"unit-test-feedback-key-32-bytes!")
    routes.use_core(routes.Served(core, ControlAuth(core.cfg.control, [NamedToken("qa", Role.QA, QA)])))
    try:
        with TestClient(routes.app, raise_server_exceptions=False) as client:
            assert client.get("/v2/health/ready").status_code == 200
            assert client.get("/v2/models/digits/ready").json() == {"name": "digits", "ready": True}
            assert client.get("/v2/models/digits/versions/v1/ready").json()["ready"] is True
            response = client.get("/v2/models/digits/versions/v2/ready")
            assert response.status_code == 503 and response.json()["ready"] is False
            assert response.json()["error"].startswith("failed to load: ValueError: cannot load model.onnx")
            assert client.get("/v2/models/digits/versions/v9/ready").status_code == 404
            # Its metadata was never read from its file: a 503 naming why, not the experiment's.
            metadata = client.get("/v2/models/digits/versions/v2")
            assert metadata.status_code == 503 and "failed to load" in metadata.json()["error"], metadata.text
            assert client.get("/v2/models/digits/versions/v1").json()["platform"] == "onnxruntime_onnx"
            for key in keys_for(core, "v2", 3):
                answer = client.post("/predict", json={"inputs": ROW, "user_id": key})
                assert answer.status_code == 200 and answer.json()["version"] == "v1"
            pinned = client.post("/predict", json={"inputs": ROW},
                                 headers={"x-serve-ab-version": "v2", "authorization": f"Bearer {QA}"})
            assert pinned.status_code == 503 and "failed to load" in pinned.json()["error"]
            assert "/srv" not in pinned.text
    finally:
        routes.use_core(None)


# -- isolated: a version that never answers, answers with an error, or another interface ---

def test_the_stable_never_waits_on_a_candidate_that_never_starts():
    async def never(_delay_s: float) -> None:  # time stands still: no describe ever times out
        await asyncio.get_running_loop().create_future()

    core = RouterCore(experiment(), {"v1": FakeVersion(1), "v2": SilentVersion(2)}, FakeController(),
                      request_id=lambda: "req-1", clock=FakeClock(), sleep=never)

    async def go():
        stable = [await core.serve(ROW, k, None) for k in keys_for(core, "v1", 3)]
        # The candidate's own users wait for its first answer (up to describe_timeout_s), and
        # are not sent to the stable meanwhile: its start is not its errors.
        waiting = asyncio.ensure_future(core.serve(ROW, keys_for(core, "v2", 1)[0], None))
        await asyncio.sleep(0.05)
        pending = not waiting.done()
        waiting.cancel()
        return stable, pending

    stable, pending = run(go())
    assert {v for v, _ in stable} == {"v1"} and pending
    assert core.failed_versions() == {}
    assert "v2" not in core.observations.drain().versions


def test_a_candidate_that_answers_late_serves_its_own_users():
    class LateVersion(FakeVersion):
        def __init__(self, value: int):
            super().__init__(value)
            self.started = asyncio.Event()

        async def describe(self):
            await self.started.wait()
            return await super().describe()

    async def never(_delay_s: float) -> None:  # no describe times out while it loads
        await asyncio.get_running_loop().create_future()

    late = LateVersion(2)
    core = RouterCore(experiment(), {"v1": FakeVersion(1), "v2": late}, FakeController(),
                      request_id=lambda: "req-1", clock=FakeClock(), sleep=never)

    async def go():
        request = asyncio.ensure_future(core.serve(ROW, keys_for(core, "v2", 1)[0], None))
        await asyncio.sleep(0.01)
        late.started.set()  # the replica finished loading its model
        return await request

    version, outputs = run(go())
    assert version == "v2" and int(outputs[0].argmax()) == 2
    assert dict(core.observations.drain().versions["v2"].errors) == {}


def test_a_candidate_that_never_answers_describe_is_failed_after_the_timeout():
    clock = FakeClock()
    core = core_over({"v1": FakeVersion(1), "v2": SilentVersion(2)}, clock)

    async def go():
        answer = await core.serve(ROW, keys_for(core, "v2", 1)[0], None)
        for _ in range(20):  # the candidate's check times out on the fake clock, in the background
            await asyncio.sleep(0)
        return answer

    assert run(go())[0] == "v1"
    assert "did not answer within 60s (isolation.describe_timeout_s)" in core.failed_versions()["v2"]
    ready, why = run(core.version_ready("v2"))
    assert not ready and "did not answer" in why
    assert run(core.version_ready("v1")) == (True, None)


def test_a_pinned_request_waits_for_a_starting_version_at_most_the_describe_timeout():
    clock = FakeClock()
    core = core_over({"v1": FakeVersion(1), "v2": SilentVersion(2)}, clock,
                     isolation={"describe_timeout_s": 5})
    with pytest.raises(VersionUnavailable, match="did not answer within 5s"):
        run(core.serve(ROW, None, "v2"))


def test_a_version_whose_deployment_failed_to_load_reports_its_load_error():
    class LoadFailedPool(FakeVersion):
        async def describe(self):
            raise VersionLoadFailed("failed to load: ValueError: cannot load model.onnx")

    core = core_over({"v1": FakeVersion(1), "v2": LoadFailedPool(2)})
    assert run(core.is_ready())
    assert core.failed_versions() == {"v2": "failed to load: ValueError: cannot load model.onnx"}


def test_a_candidate_with_another_interface_is_failed_and_the_stable_wins_a_disagreement():
    other = (InputSpec("input", np.dtype("float32"), (-1, 32)), DIGITS_OUTPUT)
    core = core_over({"v1": FakeVersion(1), "v2": FakeVersion(2, spec=other)})
    assert run(core.interface()) == (DIGITS_INPUT, DIGITS_OUTPUT)
    # Only what differs, as V2 metadata names it: not the dataclasses' repr.
    assert core.failed_versions()["v2"] == (
        "takes 'input' FP32 [-1, 32], but version 'v1' takes 'input' FP32 [-1, 64]; the versions of one "
        "experiment must share their input and output tensors (names, datatypes and shapes)")

    clock = FakeClock()
    late_stable = SilentVersion(1)
    core = core_over({"v1": late_stable, "v2": FakeVersion(2, spec=other)}, clock)

    async def go():
        first = await core.interface()  # the candidate answered first
        await core._checks["v1"]  # the stable's first describe timed out
        late_stable.wake()
        await core._start_check("v1")  # asked again (watch_versions), it answers
        return first, await core.interface()

    first, then = run(go())
    assert first == other and then == (DIGITS_INPUT, DIGITS_OUTPUT)
    assert list(core.failed_versions()) == ["v2"]


def test_a_version_that_starts_late_is_asked_again_and_serves():
    clock = FakeClock()
    late = SilentVersion(2)
    core = core_over({"v1": FakeVersion(1), "v2": late}, clock, isolation={"recheck_s": 10})

    async def go():
        watcher = asyncio.get_running_loop().create_task(core.watch_versions())
        for _ in range(50):
            await asyncio.sleep(0)
        failed = core.failed_versions()
        late.wake()
        for _ in range(50):
            await asyncio.sleep(0)
        watcher.cancel()
        return failed

    failed = run(go())
    assert "v2" in failed and core.failed_versions() == {}
    assert run(core.serve(ROW, keys_for(core, "v2", 1)[0], None))[0] == "v2"


def test_a_colocated_load_failure_is_not_asked_again():
    core = colocated_with_corrupt_v2()
    clock = core.clock

    async def go():
        watcher = asyncio.get_running_loop().create_task(core.watch_versions())
        for _ in range(30):
            await asyncio.sleep(0)
        watcher.cancel()

    run(go())
    assert clock() > 1_000_000.0 and "v2" in core.failed_versions()


def test_a_call_that_waits_past_the_call_timeout_is_cancelled_and_served_elsewhere():
    clock = FakeClock()
    calls = FakeCalls()
    calls.stalled = True  # replicas not started: never seen answering, so never "down"
    settings = WatchdogSettings(call_timeout_s=3.0)

    async def go():
        version = WatchedVersion("v2", calls, lambda err: False, settings, sleep=clock.sleep, clock=clock)
        started = clock()
        with pytest.raises(VersionUnavailable, match="did not answer within 3s") as info:
            await version.predict(np.zeros((1, 64), np.float32))
        return clock() - started, info.value

    waited_s, err = run(go())
    assert settings.call_timeout_s <= waited_s <= settings.call_timeout_s + settings.interval_s
    assert calls.predicts[0].cancelled
    # Counted as a timeout, not as an outage: the version may be up and only slow.
    assert isinstance(err, VersionTimedOut) and error_kind(err) == "timeout"
    assert error_kind(VersionUnavailable("down")) == "unavailable"


class CutTimes(FakeCalls):
    """Stalled calls that note when the watchdog cuts each (by the fake clock)."""

    def __init__(self, clock: FakeClock):
        super().__init__()
        self.stalled = True
        self.clock = clock
        self.cut_at_s: dict[int, float] = {}

    def predict(self, batch):
        call, index = super().predict(batch), len(self.predicts)
        cancel = call.cancel

        def noted_cancel():
            self.cut_at_s.setdefault(index, self.clock())
            cancel()

        call.cancel = noted_cancel
        return call


def test_a_call_begun_between_two_ticks_is_not_cut_before_its_timeout():
    # Counted in ticks, a call begun 0.2 s into a 0.25-s tick was charged the whole tick at
    # its end, and cut 0.75 s after it began against a 1-s isolation.call_timeout_s.
    clock = FakeClock()
    calls = CutTimes(clock)
    settings = WatchdogSettings(interval_s=0.25, call_timeout_s=1.0)

    async def go():
        version = WatchedVersion("v2", calls, lambda err: False, settings, sleep=clock.sleep, clock=clock)
        batch = np.zeros((1, 64), np.float32)
        first = asyncio.get_running_loop().create_task(version.predict(batch))  # starts the watchdog
        began_s = clock()
        while clock() == began_s:  # until the first tick's sleep has begun: the clock is at its end
            await asyncio.sleep(0)
        clock.advance(-0.05)  # the second call begins 0.2 s into that tick
        started = clock()
        with pytest.raises(VersionTimedOut):
            await version.predict(batch)
        with pytest.raises(VersionTimedOut):
            await first
        return calls.cut_at_s[2] - started

    waited_s = run(go())
    assert settings.call_timeout_s <= waited_s <= settings.call_timeout_s + settings.interval_s, waited_s


async def seen_answering(calls: FakeCalls, settings: WatchdogSettings,
                         clock: FakeClock) -> tuple[WatchedVersion, np.ndarray]:
    """A watched version that answered while its watchdog ran: it may now be marked down."""
    version = WatchedVersion("v2", calls, lambda err: False, settings, sleep=clock.sleep, clock=clock)
    batch = np.zeros((1, 64), np.float32)
    await version.predict(batch)  # starts the watchdog
    await asyncio.sleep(0)
    await version.predict(batch)  # seen answering while watched
    return version, batch


class SlowCancels(FakeCalls):
    """Calls whose cancel lands only when the test says (a Ray call's cancel is a message to
    its replica): cut calls stay pending meanwhile."""

    def __init__(self):
        super().__init__()
        self.asked: list[FakeCall] = []

    def predict(self, batch):
        call = super().predict(batch)
        call.cancel = lambda: self.asked.append(call)
        return call

    def land(self) -> None:
        for call in self.asked:
            FakeCall.cancel(call)


def test_a_call_cut_past_its_timeout_stays_a_timeout_when_the_version_is_then_marked_down():
    # Its cancel had not landed when the watchdog marked the version down: the mark replaced
    # the call's timeout, and the live check counted it 'unavailable'.
    clock = FakeClock()
    calls = SlowCancels()
    settings = WatchdogSettings(interval_s=0.25, stall_s=0.5, probe_timeout_s=2.0, call_timeout_s=1.0)

    async def go():
        version, batch = await seen_answering(calls, settings, clock)
        calls.stalled = True
        waiting = asyncio.get_running_loop().create_task(version.predict(batch))
        for _ in range(10_000):
            if version.down_reason is not None:
                break
            await asyncio.sleep(0)
        assert calls.asked, "the call was cut past its timeout before the version went down"
        calls.land()
        with pytest.raises(VersionUnavailable) as info:
            await waiting
        return version.down_reason, info.value

    down_reason, err = run(go())
    assert down_reason is not None and "no call completed" in down_reason
    assert isinstance(err, VersionTimedOut) and error_kind(err) == "timeout", err


@pytest.mark.parametrize("settings", [
    WatchdogSettings(interval_s=0.25, stall_s=0.5, probe_timeout_s=2.0, call_timeout_s=1.0),
    WatchdogSettings(call_timeout_s=2.0),  # the defaults' stall and probe
])
def test_a_call_past_its_timeout_is_cut_while_the_watchdog_waits_on_a_probe(settings):
    # A version seen answering, then stalled: the watchdog probed it for probe_timeout_s and
    # cut nothing meanwhile, so a call with a 1-s limit waited 4.2 s, and marking the version
    # down then counted it 'unavailable' (a live check).
    clock = FakeClock()
    calls = FakeCalls()

    async def go():
        version, batch = await seen_answering(calls, settings, clock)
        calls.stalled = True
        started = clock()
        with pytest.raises(VersionUnavailable) as info:
            await version.predict(batch)
        waited_s = clock() - started
        # The cut call is no sign of life: the version, stalled and not answering its probe,
        # is still marked down (the review: counted as progress, it never was).
        for _ in range(10_000):
            if version.down_reason is not None:
                break
            await asyncio.sleep(0)
        return waited_s, info.value, clock() - started, version.down_reason

    waited_s, err, down_after_s, down_reason = run(go())
    assert isinstance(err, VersionTimedOut) and error_kind(err) == "timeout"
    # Within a tick of the limit (the fake clock moves as a sleep begins), not after the probe.
    assert abs(waited_s - settings.call_timeout_s) <= settings.interval_s
    assert down_reason is not None and "no call completed" in down_reason
    assert down_after_s <= settings.stall_s + settings.probe_timeout_s + 2 * settings.interval_s
