"""Notifications: events from a rollout's history, their payloads, and the sender against a
real HTTP receiver on a loopback socket (retries with a fake clock, order, secrets)."""

from __future__ import annotations

import logging
import time

import pytest
from pydantic import ValidationError

from serve_ab.config.experiment import parse_experiment, ConfigError
from serve_ab.config.rollout import NotificationReceiver, RolloutConfig
from serve_ab.rollout.machine import Rollout
from serve_ab.rollout.notify import (
    NotificationSender,
    RolloutEvent,
    backoff_delays,
    event_kind,
    events_from_history,
    slack_payload,
    wanted,
    webhook_payload,
)
from tests.support.fakes import FakeClock
from tests.unit.rollout.hooks import HookServer, TrickleServer


@pytest.fixture
def hooks():
    server = HookServer()
    yield server
    server.close()


def canary_config(**changes) -> RolloutConfig:
    return RolloutConfig.model_validate({
        "strategy": "canary", "stable": "v1", "candidate": "v2",
        "steps": [{"set_weight": 10}, {"pause": {"duration": "10s"}}, {"pause": {}}, {"set_weight": 100}],
        **changes})


def history_events(rollout: Rollout, revision: int = 3) -> list[RolloutEvent]:
    s = rollout.state
    return events_from_history(s.history, model="digits", rollout="digits:canary:v1->v2", strategy="canary",
                               stable="v1", candidate="v2", revision=revision, weights_pct=s.weights, app="shop")


def event(kind: str = "phase_changed", i: int = 0, **changes) -> RolloutEvent:
    values = dict(event=kind, model="digits", rollout="digits:canary:v1->v2", strategy="canary", stable="v1",
                  candidate="v2", phase="progressing", from_phase="progressing", step_index=i,
                  weights_pct={"v1": 90.0, "v2": 10.0}, reason=f"event {i}", t_s=1_700_000_000.5 + i, revision=i)
    values.update(changes)
    return RolloutEvent(**values)


def receiver(url: str, **changes) -> NotificationReceiver:
    return NotificationReceiver.model_validate({"type": "webhook", "url": url, **changes})


# -- events and payloads (pure) --------------------------------------------------------------

def test_every_history_entry_is_one_event_of_the_right_kind_in_order():
    clock = FakeClock(0.0)
    rollout = Rollout(canary_config(), clock)
    rollout.tick({})
    clock.advance(11)
    rollout.tick({})  # pause done; at pause: {} now
    rollout.promote(actor={"name": "alice", "role": "operator", "address": "10.0.0.7"})
    events = history_events(rollout)
    assert [(e.event, e.from_phase, e.phase) for e in events] == [
        ("phase_changed", None, "progressing"),
        ("progress", "progressing", "progressing"),  # set_weight 10 done
        ("progress", "progressing", "progressing"),  # the pause done
        ("phase_changed", "progressing", "paused"),  # pause: {} waits for promote
        ("phase_changed", "paused", "progressing"),  # promote left the pause step
        ("action", "progressing", "progressing"),  # ... and set_weight 100 followed it
        ("phase_changed", "progressing", "promoted"),
    ]
    assert all(e.action == "promote" and e.actor["name"] == "alice" for e in events[4:])
    assert events[1].weights_pct == {"v1": 90.0, "v2": 10.0}  # each entry's own weights
    assert events[-1].weights_pct == {"v1": 0.0, "v2": 100.0}
    assert events[4].actor == {"name": "alice", "role": "operator", "address": "10.0.0.7"}
    assert events[4].action == "promote"


def test_a_failed_analysis_is_its_own_event_before_the_abort():
    entries = [{"t_s": 1.0, "from_phase": "progressing", "to_phase": "progressing", "step_index": 1,
                "reason": "analysis failed (1 of 0 tolerated): gate error_rate <= 0.01 failed"},
               {"t_s": 1.0, "from_phase": "progressing", "to_phase": "aborted", "step_index": 1,
                "reason": "v2 failed analysis 1 time(s)"}]
    assert [event_kind(e) for e in entries] == ["analysis_failed", "phase_changed"]


def test_webhook_payload_is_the_documented_object():
    payload = webhook_payload(event("action", 2, phase="paused", action="pause",
                                    actor={"name": "alice", "role": "operator", "address": None}))
    assert payload == {
        "schema": 1, "source": "serve-ab", "event": "action", "app": "digits", "model": "digits",
        "rollout": "digits:canary:v1->v2", "strategy": "canary", "stable": "v1", "candidate": "v2",
        "from_phase": "progressing", "phase": "paused", "step_index": 2, "weights_pct": {"v1": 90.0, "v2": 10.0},
        "reason": "event 2", "action": "pause", "actor": {"name": "alice", "role": "operator", "address": None},
        "t_s": 1_700_000_002.5, "time": "2023-11-14T22:13:22.500Z", "revision": 2,
        "seq": None, "event_id": None,
    }
    numbered = webhook_payload(event("progress", 2, seq=17))
    assert (numbered["seq"], numbered["event_id"]) == (17, "digits:canary:v1->v2#17")


def test_slack_payload_is_one_readable_line():
    text = slack_payload(event(phase="aborted", reason="gate error_rate <= 0.01 failed", app="shop"))["text"]
    assert "shop (canary v1 -> v2)" in text and "progressing -> aborted" in text
    assert "v1 90% / v2 10%" in text and text.endswith("gate error_rate <= 0.01 failed")
    by = slack_payload(event("action", action="abort", phase="aborted",
                             actor={"name": "alice", "role": "operator"}))["text"]
    assert "*abort* by alice (operator), now aborted" in by
    assert set(slack_payload(event("analysis_failed"))) == {"text"}


def test_slack_names_steps_as_people_count_them_and_no_step_for_blue_green():
    # step_index 2 is what `serve-ab status` shows as step 3.
    assert "*analysis failed* at step 3;" in slack_payload(event("analysis_failed", i=2))["text"]
    assert "progressing, step 3;" in slack_payload(event("progress", i=2))["text"]
    blue_green = {"strategy": "blue_green", "stable": "blue", "candidate": "green", "phase": "switched"}
    assert "*analysis failed*; weights" in slack_payload(event("analysis_failed", i=1, **blue_green))["text"]
    assert "switched; weights" in slack_payload(event("progress", i=1, **blue_green))["text"]


def test_backoff_doubles_up_to_the_cap():
    assert backoff_delays(1) == []
    assert backoff_delays(6, 0.5, 3.0) == [0.5, 1.0, 2.0, 3.0, 3.0]


# -- the sender ------------------------------------------------------------------------------

def test_retries_with_exponential_backoff_on_a_fake_clock_then_delivers(hooks):
    hooks.answer("/ops", (503, {}), (502, {}), (200, {}))
    clock = FakeClock(0.0)
    waits: list[float] = []
    sender = NotificationSender([receiver(hooks.url + "/ops", max_attempts=4)], backoff_s=2.0,
                                sleep=lambda s: (waits.append(s), clock.advance(s)))
    sender.publish([event()])
    assert sender.flush(10)
    assert waits == [2.0, 4.0] and clock() == 6.0
    assert len(hooks.bodies("/ops")) == 3
    assert sender.counts() == {"webhook:" + hooks.url.split("/")[2]: {"sent": 1, "failed": 0}}
    sender.close()


def test_gives_up_after_max_attempts_and_at_once_on_a_client_error(hooks, caplog):
    hooks.answer("/down", (500, {}))
    hooks.answer("/bad", (400, {"detail": "no"}))
    waits: list[float] = []
    env = {"OPS_TOKEN": "s3cret-token"}
    sender = NotificationSender(
        [receiver(hooks.url + "/down?key=s3cret-query", name="down", max_attempts=3,
                  headers_from_env={"Authorization": "OPS_TOKEN"}),
         receiver(hooks.url + "/bad", name="bad")], env=env, sleep=waits.append)
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        sender.publish([event()])
        assert sender.flush(10)
    assert len(hooks.bodies("/down")) == 3 and len(hooks.bodies("/bad")) == 1
    down = next(r for r in hooks.received if r["path"].startswith("/down"))
    assert down["headers"]["Authorization"] == "s3cret-token" and down["path"] == "/down?key=s3cret-query"
    assert sender.counts() == {"down": {"sent": 0, "failed": 1}, "bad": {"sent": 0, "failed": 1}}
    assert "HTTP 500" in caplog.text and "HTTP 400" in caplog.text and "down" in caplog.text
    assert "s3cret" not in caplog.text and "/down" not in caplog.text  # no secret, no URL
    sender.close()


def test_unreachable_receiver_is_counted_failed_and_never_blocks_publish(hooks):
    hooks.answer("/slow", (200, {}, 0.3))
    sender = NotificationSender([receiver("http://127.0.0.1:9/nobody", name="gone", max_attempts=2),
                                 receiver(hooks.url + "/slow", name="slow")], sleep=lambda s: None)
    started = time.monotonic()
    sender.publish([event(i=i) for i in range(5)])
    assert time.monotonic() - started < 0.1  # five slow sends are queued, not waited for
    assert sender.flush(20)
    assert sender.counts() == {"gone": {"sent": 0, "failed": 5}, "slow": {"sent": 5, "failed": 0}}
    sender.close()


def test_timeout_s_bounds_each_attempt_whole_not_each_read(caplog):
    # 150 bytes at one per 0.1 s: 15 s in all, though no read waits longer than 0.1 s.
    slow = TrickleServer(b"{}".ljust(150), byte_every_s=0.1)
    try:
        sender = NotificationSender([receiver(slow.url + "/ops", name="slow", timeout_s=0.5, max_attempts=1)])
        with caplog.at_level(logging.WARNING, logger="ray.serve"):
            sender.publish([event()])
            assert sender.flush(10)  # generous: one attempt is 0.5 s, the answer alone 15 s
        assert sender.counts() == {"slow": {"sent": 0, "failed": 1}}
        assert "not delivered to slow after 1 attempt(s): no answer within timeout_s 0.5" in caplog.text
        sender.close()
    finally:
        slow.close()


def test_a_retry_after_a_timeout_that_reached_the_receiver_repeats_the_events_id(hooks):
    # The first answer comes after timeout_s: the receiver had the event, the sender retried.
    hooks.answer("/ops", (200, {}, 1.0), (200, {}))
    sender = NotificationSender([receiver(hooks.url + "/ops", timeout_s=0.3)], sleep=lambda s: None)
    sender.publish([event(i=4, seq=9), event(i=4, seq=10)])  # one decision's two entries
    assert sender.flush(10)
    ids = [body["event_id"] for body in hooks.wait_for("/ops", 3)]
    assert ids == ["digits:canary:v1->v2#9", "digits:canary:v1->v2#9", "digits:canary:v1->v2#10"]
    assert sender.counts() == {"webhook:127.0.0.1:" + hooks.url.rsplit(":", 1)[1]: {"sent": 2, "failed": 0}}
    sender.close()


def test_httpx_never_logs_a_receivers_url(hooks, caplog):
    # httpx logs "HTTP Request: POST <full URL>" at INFO: a Slack path or ?token= is a secret.
    with caplog.at_level(logging.DEBUG):
        sender = NotificationSender([receiver(hooks.url + "/services/T0/B0/s3cret?token=s3cret", name="ops")])
        sender.publish([event()])
        assert sender.flush(10)
        sender.close()
    assert sender.counts() == {"ops": {"sent": 1, "failed": 0}}
    assert "s3cret" not in caplog.text


def test_events_arrive_in_order_even_across_retries(hooks):
    hooks.answer("/ops", (200, {}), (200, {}), (503, {}), (503, {}), (200, {}))
    sender = NotificationSender([receiver(hooks.url + "/ops")], sleep=lambda s: None)
    for i in range(30):  # published one by one, as ticks would
        sender.publish([event(i=i)])
    assert sender.flush(20)
    revisions = [body["revision"] for body in hooks.bodies("/ops")]
    assert revisions[:2] == [0, 1] and revisions[2:5] == [2, 2, 2]  # event 2 retried before event 3
    assert list(dict.fromkeys(revisions)) == list(range(30))
    sender.close()


def test_slack_receiver_gets_text_and_only_the_events_it_asked_for(hooks):
    sender = NotificationSender(
        [NotificationReceiver(type="slack", url_from_env="SLACK_URL", events=["phase_changed"])],
        env={"SLACK_URL": hooks.url + "/services/T0/B0/xyz"})
    sender.publish([event("progress", 0), event("phase_changed", 1, phase="aborted"), event("action", 2)])
    assert sender.flush(10)
    bodies = hooks.bodies("/services/T0/B0/xyz")
    assert len(bodies) == 1 and set(bodies[0]) == {"text"} and "-> aborted" in bodies[0]["text"]
    assert sender.counts() == {"slack:$SLACK_URL": {"sent": 1, "failed": 0}}
    sender.close()


def test_an_operators_phase_change_reaches_phase_changed_and_action_receivers_once_each(hooks):
    # An abort was an action event only: a receiver of [phase_changed, analysis_failed] (the
    # documented example) never heard of it.
    alice = {"name": "alice", "role": "operator"}
    rollout = Rollout(canary_config(), FakeClock(0.0))
    rollout.tick({})
    rollout.abort(actor=alice)
    abort = history_events(rollout)[-1]
    assert (abort.event, abort.from_phase, abort.phase, abort.action, abort.actor) == \
        ("phase_changed", "progressing", "aborted", "abort", alice)
    rollout = Rollout(canary_config(), FakeClock(0.0))
    rollout.tick({})
    rollout.promote(full=True, actor=alice)
    promoted = history_events(rollout)[-1]
    assert (promoted.event, promoted.phase, promoted.action) == ("phase_changed", "promoted", "promote")
    sender = NotificationSender([receiver(hooks.url + "/phases", name="phases", events=["phase_changed", "analysis_failed"]),
                                 receiver(hooks.url + "/actions", name="actions", events=["action"]),
                                 receiver(hooks.url + "/both", name="both", events=["phase_changed", "action"]),
                                 receiver(hooks.url + "/steps", name="steps", events=["progress"])])
    sender.publish([abort, promoted])
    assert sender.flush(10)
    for path in ("/phases", "/actions", "/both"):
        assert [(b["event"], b["phase"], b["action"], b["actor"]) for b in hooks.bodies(path)] == [
            ("phase_changed", "aborted", "abort", alice), ("phase_changed", "promoted", "promote", alice)], path
    assert hooks.bodies("/steps") == []
    sender.close()


def test_the_controllers_own_abort_is_no_operators_action():
    # The controller aborts a candidate that failed to load through the same act as an
    # operator's abort, with no actor: an [action] receiver (every operator's action) got it.
    rollout = Rollout(canary_config(), FakeClock(0.0))
    rollout.tick({})
    rollout.abort("candidate v2 failed to load")
    abort = history_events(rollout)[-1]
    assert (abort.event, abort.action, abort.actor) == ("phase_changed", "abort", None)
    assert not wanted(abort, ["action"]) and wanted(abort, ["phase_changed"])


def test_a_missing_secret_fails_that_receiver_only_naming_the_variable(hooks, caplog):
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        sender = NotificationSender([NotificationReceiver(type="slack", url_from_env="NOT_SET_HERE"),
                                     receiver(hooks.url + "/ops", name="ops")], env={})
        sender.publish([event()])
        assert sender.flush(10)
    assert sender.counts() == {"slack:$NOT_SET_HERE": {"sent": 0, "failed": 1}, "ops": {"sent": 1, "failed": 0}}
    assert "NOT_SET_HERE" in caplog.text
    sender.close()


# -- the schema ------------------------------------------------------------------------------

def test_a_receivers_label_is_its_host_never_a_query_or_path():
    # The label is in the status, the receiver label of metrics, thread names and logs.
    for url, label in (("https://hooks.example.com?key=QTOKEN", "webhook:hooks.example.com"),
                       ("https://hooks.example.com/services/T0/B0/s3cret?x=1", "webhook:hooks.example.com"),
                       ("http://127.0.0.1:8080?token=QTOKEN", "webhook:127.0.0.1:8080")):
        assert receiver(url).label == label


def experiment(notifications, rollout=True) -> dict:
    doc = {"model": "digits", "versions": [{"name": "v1", "path": "a.onnx", "backend": "onnx"},
                                           {"name": "v2", "path": "b.onnx", "backend": "onnx"}],
           "weights": {"v1": 100}, "notifications": notifications}
    if rollout:
        doc["rollout"] = {"strategy": "canary", "stable": "v1", "candidate": "v2", "steps": [{"set_weight": 100}]}
    return doc


@pytest.mark.parametrize("receiver_doc, expected", [
    ({"type": "webhook"}, "exactly one of url or url_from_env"),
    ({"type": "webhook", "url": "ftp://x/y"}, "'ftp://x/y'; it must be an http:// or https:// URL"),
    ({"type": "webhook", "url": "https://user:pw@x/y"}, "is 'https://user:***@x/y'; it must be"),  # not the password
    ({"type": "webhook", "url": "https://user:pw@x/y"}, "no user:password@"),
    ({"type": "slack", "url_from_env": "https://hooks.slack.com/x"},
     "url_from_env must be the NAME of an environment variable"),
    ({"type": "webhook", "url": "http://x/y", "events": ["phase_change"]}, "events has ['phase_change']; valid: "
                                                                          "phase_changed, progress"),
    ({"type": "webhook", "url": "http://x/y", "headers_from_env": {"Authorization": "Bearer abc"}},
     "headers_from_env.Authorization must be the NAME of an environment variable"),
    ({"type": "teams", "url": "http://x/y"}, "webhook"),
])
def test_receiver_errors_name_the_field_and_what_is_valid(receiver_doc, expected):
    with pytest.raises(ValidationError) as info:
        NotificationReceiver.model_validate(receiver_doc)
    assert expected in str(info.value)


def test_notifications_parse_and_need_a_rollout_and_unique_names():
    cfg = parse_experiment(experiment([{"type": "slack", "url_from_env": "SLACK_URL"},
                                       {"type": "webhook", "url": "https://ops.example.com/hook", "timeout_s": "2s"}]))
    assert [r.label for r in cfg.notifications] == ["slack:$SLACK_URL", "webhook:ops.example.com"]
    assert cfg.notifications[1].timeout_s == 2.0 and cfg.notifications[1].events[0] == "phase_changed"
    with pytest.raises(ConfigError, match="no rollout"):
        parse_experiment(experiment([{"type": "slack", "url_from_env": "S"}], rollout=False))
    with pytest.raises(ConfigError, match="more than once"):
        parse_experiment(experiment([{"type": "webhook", "url": "http://a/1"}, {"type": "webhook", "url": "http://a/2"}]))
