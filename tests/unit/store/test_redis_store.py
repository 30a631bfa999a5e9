"""The Redis store against a real ``redis-server``: fails fast when Redis is gone, creates
atomically under concurrent clients, and lets a controller resume on another "node" (a
fresh store object, as a rescheduled controller opens)."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest
import redis

from serve_ab.api.schemas import ActionRequest
from serve_ab.config.experiment import ControllerConfig, parse_experiment
from serve_ab.errors import StoreUnavailable
from serve_ab.serving.controller import ControllerCore, feedback_key
from serve_ab.serving.core.messages import Action
from serve_ab.store.keys import feedback_key_row
from serve_ab.store.redis_store import RedisStateStore
from serve_ab.store.state import SqliteStateStore, open_store
from tests.integration.conftest import free_port
from tests.support.fakes import FakeClock
from tests.unit.serving.test_controller_core import (
    EV_CANDIDATE,
    EV_STABLE,
    ab_experiment,
    experiment,
    report,
    run_for,
)

FAST_S = 0.5  # the client's timeouts in these tests; production's default is 2 s


def test_a_stopped_redis_makes_save_raise_at_once_and_keeps_the_last_state(redis_server):
    store = RedisStateStore.from_url(redis_server.url, timeout_s=FAST_S)
    store.save("k", {"revision": 1})
    redis_server.stop()
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        store.save("k", {"revision": 2})
    assert time.monotonic() - started < 2 * FAST_S + 1.0
    redis_server.start()  # same port, same AOF: the acknowledged write survived the kill
    assert RedisStateStore.from_url(redis_server.url).load("k") == {"revision": 1}


def test_a_redis_that_never_answers_makes_save_raise_within_the_timeouts():
    """Accepts the connection (the kernel does) and then says nothing: a hung server."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        store = RedisStateStore.from_url(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", timeout_s=FAST_S)
        started = time.monotonic()
        with pytest.raises(redis.RedisError):
            store.save("k", {"revision": 1})
        elapsed = time.monotonic() - started
    assert elapsed < 2 * FAST_S + 1.0, elapsed  # one try and one retry, each within the timeout


def test_create_under_concurrent_clients_keeps_one_value(redis_url):
    clients = [RedisStateStore.from_url(redis_url) for _ in range(8)]
    barrier = threading.Barrier(len(clients))
    kept: list[dict] = []

    def create(i: int) -> None:
        barrier.wait()
        for round_ in range(50):
            kept.append(clients[i].create(f"feedback-key:{round_}", {"key_hex": f"{i:02x}"}))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for round_ in range(50):
        saved = clients[0].load(f"feedback-key:{round_}")
        assert saved is not None
    # Every caller got the row that is stored: one value per key, whoever came first.
    stored = {clients[0].load(f"feedback-key:{r}")["key_hex"] for r in range(50)}
    assert len(kept) == 8 * 50 and {k["key_hex"] for k in kept} == stored


def test_keys_carry_the_prefix_so_apps_can_share_one_redis(redis_url):
    a = RedisStateStore.from_url(redis_url, prefix="app-a:")
    b = RedisStateStore.from_url(redis_url, prefix="app-b:")
    a.save("k", {"app": "a"})
    b.save("k", {"app": "b"})
    assert (a.load("k"), b.load("k")) == ({"app": "a"}, {"app": "b"})
    assert sorted(redis.Redis.from_url(redis_url).keys()) == [b"app-a:state:k", b"app-b:state:k"]


def test_open_store_picks_the_store_from_the_url(redis_url, tmp_path):
    assert isinstance(open_store(ControllerConfig(state_path=str(tmp_path / "s.sqlite"))), SqliteStateStore)
    sqlite_cfg = ControllerConfig(store_url=f"sqlite:///{tmp_path}/u.sqlite")
    assert open_store(sqlite_cfg).path == tmp_path / "u.sqlite"
    store = open_store(ControllerConfig(store_url=redis_url, store_key_prefix="x:"))
    assert isinstance(store, RedisStateStore) and store.prefix == "x:"


def test_a_password_comes_from_the_env_variable_and_is_never_shown(redis_server):
    redis.Redis.from_url(redis_server.url).config_set("requirepass", "s3cret")
    cfg = ControllerConfig(store_url=redis_server.url, store_password_env="SERVE_AB_TEST_REDIS_PASSWORD")
    with pytest.raises(ValueError, match="SERVE_AB_TEST_REDIS_PASSWORD.*not set"):
        open_store(cfg, environ={})
    store = open_store(cfg, environ={"SERVE_AB_TEST_REDIS_PASSWORD": "s3cret"})
    store.save("k", {"ok": True})
    with pytest.raises(redis.AuthenticationError) as err:
        open_store(cfg, environ={"SERVE_AB_TEST_REDIS_PASSWORD": "wrong"}).load("k")
    assert "wrong" not in str(err.value)
    in_url = redis_server.url.replace("redis://", "redis://:s3cret@")
    store = open_store(ControllerConfig(store_url=in_url))
    assert store.load("k") == {"ok": True} and "s3cret" not in repr(store)


def test_a_controller_on_a_fresh_redis_store_resumes_the_rollout_at_the_same_step_and_weights(redis_url):
    clock = FakeClock()
    core = ControllerCore(experiment(), RedisStateStore.from_url(redis_url), clock)
    core.tick()
    run_for(core, clock, 6, {"v1": (EV_STABLE, {"correct": True}), "v2": (EV_CANDIDATE, {"correct": True})})
    before = core.status(history=True)
    assert before.step_index == 1 and before.weights_pct["v2"] == 10.0

    moved = ControllerCore(experiment(), RedisStateStore.from_url(redis_url), clock)  # another node
    after = moved.status(history=True)
    assert (after.phase, after.step_index, after.weights_pct, after.history) == (
        before.phase, before.step_index, before.weights_pct, before.history)
    assert moved.snapshot().weights == core.snapshot().weights
    run_for(moved, clock, 5, {"v1": (EV_STABLE, {"correct": True}), "v2": (EV_CANDIDATE, {"correct": True})})
    assert moved.status().weights_pct["v2"] == 100.0


def test_a_controller_on_a_fresh_redis_store_keeps_the_run_figures_and_feedback_key(redis_url):
    clock = FakeClock()
    first_store = RedisStateStore.from_url(redis_url)
    first = ControllerCore(ab_experiment(), first_store, clock)
    report(first, clock, "v1", 5, correct=True)
    first.save_stats()
    moved_store = RedisStateStore.from_url(redis_url)
    moved = ControllerCore(ab_experiment(), moved_store, clock)
    assert moved.run_id == first.run_id and moved.stats_snapshot() == first.stats_snapshot()
    assert feedback_key(ab_experiment(), moved_store) == feedback_key(ab_experiment(), first_store)


def test_a_redis_that_lost_its_data_gets_the_run_rollout_and_feedback_key_back_from_the_controller(redis_url):
    """A Redis restarted without persistence (no AOF) comes back empty under a running
    controller. Its figures are saved again every few seconds, but the run's row, the feedback
    key and a rollout between decisions were written once: seen live, the next controller
    started a new run (/metrics and the report from zero, 4,381 requests gone), signed with a
    new feedback key and would have started the rollout over at 100% stable."""
    clock = FakeClock()
    cfg = experiment()
    store = RedisStateStore.from_url(redis_url)
    core = ControllerCore(cfg, store, clock)
    core.keep_row(feedback_key_row(cfg), {"key_hex": feedback_key(cfg, store).hex()}, owned=True)  # as deployed
    key = feedback_key(cfg, store)
    core.tick()
    run_for(core, clock, 6, {"v1": (EV_STABLE, {"correct": True}), "v2": (EV_CANDIDATE, {"correct": True})})
    before = core.status(history=True)
    assert before.step_index == 1 and before.weights_pct["v2"] == 10.0
    core.save_stats()

    store.client.flushall()  # what a restart without AOF leaves
    clock.advance(1.0)
    report(core, clock, "v1", 5, correct=True)
    core.save_stats()  # the next save of the figures, a few seconds later

    core.snapshot()  # the weights the routers' long polls take, which the figures file under
    moved = ControllerCore(cfg, RedisStateStore.from_url(redis_url), clock)  # restarted, on another node
    assert moved.run_id == core.run_id and moved.stats_snapshot() == core.stats_snapshot()
    after = moved.status(history=True)
    assert (after.phase, after.step_index, after.weights_pct, after.history) == (
        before.phase, before.step_index, before.weights_pct, before.history)
    assert feedback_key(cfg, RedisStateStore.from_url(redis_url)) == key


def test_a_redis_that_came_back_without_the_last_decision_gets_it_back_from_the_controller(redis_url):
    """A Redis that comes back holding an older rollout row than the one its controller saved: a
    failover to a replica that had not received the last write, or AOF's last second lost with
    its host (README, "Running on a multi-node Ray cluster"). The row is not missing, so the
    figures' saves, which only filled in missing rows, left it; the routers serve the rollback,
    and a controller restarted on the store's row put v2 back at 10% (users moved back and forth)."""
    clock = FakeClock()
    cfg = experiment()
    store = RedisStateStore.from_url(redis_url)
    core = ControllerCore(cfg, store, clock)
    core.tick()
    run_for(core, clock, 2, {"v1": (EV_STABLE, {"correct": True}), "v2": (EV_CANDIDATE, {"correct": True})})
    core.save_stats()
    older = store.load(core.key)
    assert older["weights"] == {"v1": 90.0, "v2": 10.0}
    core.act(Action.ROLLBACK, ActionRequest(reason="bad canary"))
    before = core.status(history=True)
    assert before.weights_pct == {"v1": 100.0, "v2": 0.0} and before.revision > older["revision"]

    store.save(core.key, older)  # the replica promoted in the failover had not received the rollback
    clock.advance(5.0)
    core.save_stats()  # the next save of the figures

    moved = ControllerCore(cfg, RedisStateStore.from_url(redis_url), clock)  # restarted, on another node
    after = moved.status(history=True)
    assert (after.phase, after.revision, after.weights_pct, after.history) == (
        before.phase, before.revision, before.weights_pct, before.history)


def test_a_rollout_row_newer_than_the_controllers_is_never_written_over(redis_url):
    """The other side of the check above: a row with a later revision than this controller's
    (written by a controller that holds the claim now) is left as it is."""
    clock = FakeClock()
    cfg = experiment()
    store = RedisStateStore.from_url(redis_url)
    core = ControllerCore(cfg, store, clock)
    core.tick()
    newer = {**store.load(core.key), "revision": core.rollout.state.revision + 3}
    store.save(core.key, newer)
    core.save_stats()
    assert store.load(core.key) == newer


def test_a_key_a_router_made_after_the_loss_gives_way_to_the_controllers(redis_url):
    """A router replica starting between the loss and the controller's next save made a key of
    its own (feedback_key creates one where none is): the routers sign with the controller's,
    but the store kept the router's, and after a controller and a router restart every token
    issued before the loss was a 403 (a live check)."""
    clock = FakeClock()
    cfg = experiment()
    store = RedisStateStore.from_url(redis_url)
    core = ControllerCore(cfg, store, clock)
    key = feedback_key(cfg, store)
    core.keep_row(feedback_key_row(cfg), {"key_hex": key.hex()}, owned=True)
    core.save_stats()
    store.client.flushall()
    assert feedback_key(cfg, RedisStateStore.from_url(redis_url)) != key  # the new router's
    core.save_stats()
    assert feedback_key(cfg, RedisStateStore.from_url(redis_url)) == key


def test_rows_written_again_never_overwrite_a_newer_decision(redis_url):
    """The figures are saved from a thread, from a checkpoint taken earlier: the rollout it
    holds is written only where the row is missing, never over a decision saved since."""
    clock = FakeClock()
    store = RedisStateStore.from_url(redis_url)
    core = ControllerCore(experiment(), store, clock)
    checkpoint = core.checkpoint()  # the rollout at 0% for v2
    core.tick()  # a decision: v2 at 10%, saved
    core.save_stats(checkpoint)
    assert store.load(core.key)["weights"]["v2"] == 10.0


def test_a_stopped_redis_refuses_the_action_and_changes_nothing(redis_server):
    clock = FakeClock()
    core = ControllerCore(experiment(), RedisStateStore.from_url(redis_server.url, timeout_s=FAST_S), clock)
    core.tick()
    before = core.status()
    redis_server.stop()
    with pytest.raises(StoreUnavailable):
        core.act(Action.PROMOTE, ActionRequest(full=True))
    assert core.status().weights_pct == before.weights_pct
    assert core.status().phase == before.phase


def _store_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "cannot save to" in r.getMessage() or "saves to" in r.getMessage()]


def test_a_redis_that_is_down_is_said_once_in_the_log_not_at_every_tick(redis_server, caplog):
    """A tick every 0.25 s and the figures every 5 s fail alike while Redis is down: one line
    when it starts, one when saves work again, not eight a second (as seen live: 228 lines
    in a 30-s outage)."""
    clock = FakeClock()
    cfg = parse_experiment({**experiment().model_dump(mode="json"), "controller": {"store_url": redis_server.url}})
    core = ControllerCore(cfg, RedisStateStore.from_url(redis_server.url, timeout_s=FAST_S), clock)
    redis_server.stop()
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        for _ in range(12):
            clock.advance(0.25)
            with pytest.raises(StoreUnavailable):
                core.tick()  # would set v2 to 10%, each time
        with pytest.raises(redis.ConnectionError):
            core.save_stats()
        assert core.status().not_saved is not None
        down = _store_lines(caplog)
        redis_server.start()
        clock.advance(0.25)
        assert core.tick() is True
        core.save_stats()
    assert len(down) == 1 and "cannot save to controller.store_url" in down[0] and "Connection refused" in down[0], down
    assert _store_lines(caplog)[1:] == ["serve-ab controller: digits saves to controller.store_url "
                                        f"'{redis_server.url}' (store_key_prefix 'serve-ab:') again, after 3s of failing"]
    assert core.status().not_saved is None


def test_a_redis_flapping_between_two_errors_is_said_once_for_each(redis_server, caplog):
    """Refused connections and timeouts taking turns (a Redis restarting under a paused
    client, a flaky network) are two lines for the spell, not one at every switch."""
    clock = FakeClock()
    core = ControllerCore(experiment(), RedisStateStore.from_url(redis_server.url, timeout_s=FAST_S), clock)
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        for _ in range(2):
            redis_server.stop()
            for _ in range(2):
                clock.advance(0.25)
                with pytest.raises(StoreUnavailable):
                    core.tick()
            redis_server.start()
            redis.Redis.from_url(redis_server.url).execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
            clock.advance(0.25)
            with pytest.raises(StoreUnavailable):
                core.tick()  # the write waits past the client's timeout
        down = [line for line in _store_lines(caplog) if "cannot save to" in line]
    redis_server.stop()
    redis_server.start()
    assert [("ConnectionError" in line, "TimeoutError" in line) for line in down] == [(True, False), (False, True)], down
    assert core.status().not_saved.error.startswith("TimeoutError")


def test_a_full_redis_is_said_once_with_its_error_not_a_traceback_every_round(redis_server, caplog):
    clock = FakeClock()
    store = RedisStateStore.from_url(redis_server.url, timeout_s=FAST_S)
    core = ControllerCore(ab_experiment(), store, clock)
    store.client.config_set("maxmemory-policy", "noeviction")
    store.client.config_set("maxmemory", 1)  # every write is over it: OOM, as a full Redis answers
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        for _ in range(3):
            clock.advance(5.0)
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                core.save_stats()
    lines = [r for r in caplog.records if "cannot save to" in r.getMessage()]
    assert len(lines) == 1 and "OutOfMemoryError" in lines[0].getMessage(), [r.getMessage() for r in caplog.records]
    assert lines[0].exc_info is not None  # not a connection that failed: its traceback, once
    assert core.status().not_saved.error.startswith("OutOfMemoryError")


def test_parse_experiment_accepts_a_redis_store(redis_url):
    cfg = parse_experiment({**ab_experiment().model_dump(mode="json"), "controller": {"store_url": redis_url}})
    assert cfg.controller.store_url == redis_url


# -- run records -------------------------------------------------------------------------------

RECORD_CONFIG = {"model": "digits", "controller": {"store_url": "redis://:s3cret@redis.internal:6379/0"}}


def test_run_records_in_redis_round_trip_upsert_and_list(redis_url):
    from serve_ab.store.redis_store import RedisRunRecorder

    recorder = RedisRunRecorder(redis_url)
    recorder.save("run-a", RECORD_CONFIG, {"n": 1}, started_at_s=100.0, updated_at_s=160.0,
                  summary={"versions": ["v1", "v2"], "control": "v1", "requests": 10, "srm_mismatch": False})
    moved = RedisRunRecorder(redis_url)  # a controller on another node carries on with the record
    moved.save("run-a", RECORD_CONFIG, {"n": 2}, started_at_s=130.0, updated_at_s=220.0)
    moved.save("run-b", {"model": "other"}, {"n": 1}, started_at_s=200.0, updated_at_s=210.0)
    record = recorder.load("run-a")
    assert (record.report, record.started_at_s, record.updated_at_s, record.saves) == ({"n": 2}, 100.0, 220.0, 2)
    assert record.config["controller"]["store_url"] == "redis://:***@redis.internal:6379/0"  # never the password
    assert [(s.run_id, s.model, s.saves, s.requests) for s in recorder.list()] == [
        ("run-a", "digits", 2, None), ("run-b", "other", 1, None)]
    with pytest.raises(KeyError, match="no run record 'nope' in redis://127.0.0.1:.*recent ones: run-a, run-b"):
        recorder.load("nope")


def test_open_recorder_follows_the_store_url(redis_url, tmp_path):
    from serve_ab.store.redis_store import RedisRunRecorder
    from serve_ab.store.runs import RunRecorder, open_recorder

    on_redis = ab_experiment(controller={"store_url": redis_url})
    assert isinstance(open_recorder(on_redis), RedisRunRecorder)
    on_sqlite = ab_experiment(analysis={"records": {"path": str(tmp_path / "runs.sqlite")}})
    recorder = open_recorder(on_sqlite)
    assert type(recorder) is RunRecorder and recorder.path == tmp_path / "runs.sqlite"


def test_serve_ab_runs_and_report_read_records_from_redis(redis_url, capsys):
    from serve_ab.cli.command import main as cli_main
    from serve_ab.store.redis_store import RedisRunRecorder

    RedisRunRecorder(redis_url).save("digits-1", {"model": "digits"}, {"n": 1}, 1000.0, 1200.0,
                                     summary={"versions": ["v1"], "control": "v1", "requests": 7})
    assert cli_main(["runs", "--store", redis_url, "--json"]) == 0
    assert '"run_id": "digits-1"' in capsys.readouterr().out
    assert cli_main(["runs", "--store", redis_url, "--store-key-prefix", "other:"]) == 0
    assert f"no run records in {redis_url} (key prefix 'other:')" in capsys.readouterr().out
    # A record that does not fit the report layout: read from Redis, then refused with the reasons.
    assert cli_main(["report", "--from-record", "digits-1", "--store", redis_url]) == 1
    assert f"run record 'digits-1' in {redis_url} (key prefix 'serve-ab:')" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["runs", "--store", "sqlite:///x.sqlite"])
    assert "is not a Redis URL" in capsys.readouterr().err


def test_one_damaged_redis_record_is_listed_as_such_beside_the_others(redis_url, capsys):
    from serve_ab.cli.command import main as cli_main
    from serve_ab.store.redis_store import RedisRunRecorder
    from serve_ab.store.runs import CorruptRecord

    recorder = RedisRunRecorder(redis_url, prefix="damaged:")
    for run_id, updated in (("good", 1200.0), ("odd", 1100.0)):
        recorder.save(run_id, {"model": "digits"}, {"n": 1}, 1000.0, updated,
                      summary={"versions": ["v1"], "control": "v1", "requests": 7})
    # Edited by hand: a model that is not JSON, a time that is not a number, a cut summary
    # and a report that is not UTF-8.
    recorder.client.hset("damaged:record:odd", mapping={
        "model": "digits", "started_at_s": "yesterday", "summary_json": '{"versions": [', "report_json": b"\x80"})
    good, odd = recorder.list()
    assert (good.run_id, good.model, good.requests, good.problem) == ("good", "digits", 7, None)
    assert (odd.run_id, odd.model, odd.started_at_s, odd.versions) == ("odd", "digits", "yesterday", [])
    assert odd.problem == "column summary_json: not JSON: Expecting value at line 1, column 15"
    with pytest.raises(CorruptRecord, match="column report_json: not UTF-8 text"):
        recorder.load("odd")
    assert cli_main(["runs", "--store", redis_url, "--store-key-prefix", "damaged:"]) == 0
    out = capsys.readouterr().out
    assert "run 'odd', started = 'yesterday'" in out and "run 'odd', column summary_json: not JSON" in out


def test_serve_ab_runs_on_an_unreachable_redis_fails_fast_with_a_message(capsys):
    port = free_port()  # nothing listens there, and no process binding port 0 takes it
    from serve_ab.cli.command import main as cli_main

    started = time.monotonic()
    assert cli_main(["runs", "--store", f"redis://:pw@127.0.0.1:{port}/0"]) == 4  # could not be reached
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert f"cannot read run records at redis://:***@127.0.0.1:{port}/0 (key prefix 'serve-ab:'): ConnectionError" in err and "pw@" not in err


def test_serve_ab_runs_on_a_redis_with_a_password_says_how_to_give_it(redis_server, capsys, monkeypatch):
    from serve_ab.cli.command import main as cli_main

    redis.Redis.from_url(redis_server.url).config_set("requirepass", "s3cret")
    assert cli_main(["runs", "--store", redis_server.url]) == 1  # an answer, not an outage
    err = capsys.readouterr().err
    assert "AuthenticationError" in err and "hint: this Redis needs a password" in err
    assert "--store-password-env NAME" in err
    monkeypatch.setenv("SERVE_AB_TEST_WRONG_PASSWORD", "nope")
    assert cli_main(["runs", "--store", redis_server.url, "--store-password-env", "SERVE_AB_TEST_WRONG_PASSWORD"]) == 1
    assert "hint: check the password in $SERVE_AB_TEST_WRONG_PASSWORD" in capsys.readouterr().err
    monkeypatch.setenv("SERVE_AB_TEST_WRONG_PASSWORD", "s3cret")
    assert cli_main(["runs", "--store", redis_server.url, "--store-password-env", "SERVE_AB_TEST_WRONG_PASSWORD"]) == 0
