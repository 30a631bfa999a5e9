"""What the controller writes to its store, and how often: the figures every
``controller.save_interval_s`` (not every 5-s round, which with Redis AOF wrote each app's
whole figures row, up to a few MB, 720 times an hour), nothing when nothing changed, and
every row again within a round when the store lost them. A controller killed between two
saves still loses nothing: the routers keep what no save holds yet. No Ray is started."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

import serve_ab.serving.controller as controller_module
from serve_ab.analysis.report import build_report
from serve_ab.api.schemas import ActionRequest
from serve_ab.config.experiment import ControllerConfig, parse_experiment
from serve_ab.serving.controller import ControllerCore
from serve_ab.serving.core.messages import Action
from serve_ab.serving.core.ledger import MAX_KEPT_REPORTS
from serve_ab.store.state import MemoryStateStore
from tests.support.fakes import FakeClock
from tests.support.reports import ServedRequest, report_of
from tests.unit.serving.test_controller_claim import controller
from tests.unit.serving.test_controller_core import ab_experiment, report
from tests.unit.serving.test_controller_core import experiment as rollout_experiment
from tests.unit.serving.test_ledger import pair, serve_and_report  # noqa: F401 - pair is a fixture

ROUND_S = 5.0  # the controller's rounds (REPORT_INTERVAL_S)


class CountingStore(MemoryStateStore):
    """A memory store that counts the bytes written under each kind of key."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str, int]] = []

    def save(self, key: str, state: dict) -> None:
        super().save(key, state)
        self.writes.append((key, len(self.rows[key])))

    def written(self, prefix: str) -> list[int]:
        return [size for key, size in self.writes if key.startswith(prefix)]


def rounds(core: ControllerCore, clock: FakeClock, seconds: float, per_second: int = 0) -> None:
    """``seconds`` of the controller's report loop: traffic every second, a save when due."""
    for t in range(1, int(seconds) + 1):
        clock.advance(1.0)
        if per_second:
            report(core, clock, "v1", per_second, correct=True)
        if t % ROUND_S == 0 and core.figures_due():
            core.save_stats()


def test_the_report_loop_saves_the_figures_once_a_save_interval_not_every_round(tmp_path):
    """The deployment's own loop (_analyse), its rounds shortened: within a save interval the
    figures' row is written once, at the first round, however much traffic came between."""
    store = CountingStore()
    c = controller(store)
    records = c.core.cfg.analysis.records.model_copy(update={"path": str(tmp_path / "runs.sqlite")})
    c.core.cfg = c.core.cfg.model_copy(update={"analysis": c.core.cfg.analysis.model_copy(update={"records": records})})
    c._report_lock, c._recorder, c._report = asyncio.Lock(), None, None
    stats_key = f"stats:{c.core.run_id}"

    async def go() -> None:
        task = asyncio.get_running_loop().create_task(c._analyse())
        try:
            for _ in range(20):
                report(c.core, c.core.clock, "v1", 5, correct=True)
                await asyncio.sleep(0.02)
        finally:
            task.cancel()

    original = controller_module.REPORT_INTERVAL_S
    controller_module.REPORT_INTERVAL_S = 0.01
    try:
        asyncio.run(go())
    finally:
        controller_module.REPORT_INTERVAL_S = original
    assert len(store.written(stats_key)) == 1, store.writes  # every round (~30) before


def test_steady_traffic_writes_the_figures_every_save_interval():
    clock = FakeClock()
    store = CountingStore()
    core = ControllerCore(ab_experiment(), store, clock)
    rounds(core, clock, 600, per_second=20)
    # 10 minutes: the first round and every 30 s after it (120 rows a round each 5 s before).
    assert len(store.written(f"stats:{core.run_id}")) == 20
    assert core.cfg.controller.figures_save_interval_s == 30.0


def test_an_idle_app_writes_no_figures():
    clock = FakeClock()
    store = CountingStore()
    core = ControllerCore(ab_experiment(), store, clock)
    rounds(core, clock, 60, per_second=20)
    rounds(core, clock, 60)  # the last traffic's figures, then its feedback keys out of the row: saved
    written = len(store.writes)
    rounds(core, clock, 600)  # no traffic: the stored row holds these figures, but for now_s
    assert store.writes[written:] == []
    report(core, clock, "v1", 1)
    clock.advance(30.0)
    assert core.figures_due()
    core.save_stats()
    assert [key for key, _ in store.writes[written:]] == [f"stats:{core.run_id}", f"stats-saved:{core.run_id}"]


def test_idle_routers_empty_reports_write_no_figures_and_a_restart_merges_what_follows():
    """Routers report every 20 s while idle, each report numbered: the numbers alone moved on."""
    clock = FakeClock()
    store = CountingStore()
    core = ControllerCore(ab_experiment(), store, clock)
    seq = 0

    def numbered(rows) -> None:
        nonlocal seq
        seq += 1
        core.receive(dataclasses.replace(report_of(rows, core=core), seq=seq, first_seq=seq,
                                         config=core.config_digest))

    numbered([ServedRequest(clock(), "v1", 3.0, None, 1, 0.9, "r1", 7, True, False)])
    core.save_stats()
    written = len(store.writes)
    for _ in range(30):  # 10 minutes idle
        clock.advance(20.0)
        numbered([])
        if core.figures_due():
            core.save_stats()
    assert store.writes[written:] == []
    restarted = ControllerCore(ab_experiment(), store, clock)
    restarted.receive(dataclasses.replace(report_of([ServedRequest(clock(), "v1", 3.0, None, 1, 0.9, "r2", 8, True,
                                                                   False)], core=restarted),
                                          seq=seq + 1, first_seq=seq + 1, config=restarted.config_digest,
                                          controller_seen=restarted.name))
    assert restarted.stats_snapshot()["versions"]["v1"]["requests"] == 2


def test_a_minutes_row_of_counted_feedback_is_written_only_when_it_gained_keys():
    """Each save wrote this minute's row and the last one's whole, whatever changed: at 100
    feedback/s, two rows of up to 6,000 keys at every save."""
    clock = FakeClock(1_000_050.0)  # minute 16,667 began 30 s ago
    store = CountingStore()
    core = ControllerCore(ab_experiment(), store, clock)
    report(core, clock, "v1", 10, correct=True)
    core.save_stats()
    assert len(store.written("feedback-reported:")) == 1
    clock.advance(30.0)  # into the next minute: last minute's row is whole, this one has none
    report(core, clock, "v1", 1)
    core.save_stats()
    assert len(store.written("feedback-reported:")) == 1
    report(core, clock, "v1", 3, correct=True)
    clock.advance(1.0)
    core.save_stats()
    minute_rows = [key for key, _ in store.writes if key.startswith("feedback-reported:")]
    assert len(minute_rows) == 2 and minute_rows[1] != minute_rows[0]  # only this minute's
    assert len(json.loads(store.rows[minute_rows[1]])["keys"]) == 3


def test_rows_the_store_lost_are_written_again_at_the_next_round_even_unchanged():
    """A Redis restarted without its data, between two saves of unchanged figures."""
    clock = FakeClock()
    store = CountingStore()
    core = ControllerCore(ab_experiment(), store, clock)
    core.keep_row("feedback-key:digits", {"key_hex": "00" * 32}, owned=True)
    rounds(core, clock, 40, per_second=5)
    core.save_stats()
    rounds(core, clock, 10)
    kept = {key: store.rows[key] for key in store.rows}
    store.rows.clear()
    clock.advance(ROUND_S)
    assert core.figures_due()  # at once, not save_interval_s after the last save
    core.save_stats()
    assert set(store.rows) == set(kept)  # the figures, the run, the feedback key, the minutes' rows
    for key, text in kept.items():
        if key.startswith("stats-saved:"):  # the digest of figures whose feedback keys moved on
            continue
        saved, again = json.loads(text), json.loads(store.rows[key])
        for field in ("now_s", "reported_from_minute", "reported_recent"):  # moved on since
            saved.pop(field, None), again.pop(field, None)
        assert again == saved, key
    # The stop's save (no round before it) writes them back too.
    store.rows.clear()
    core.save_stats()
    assert set(store.rows) == set(kept)


def test_a_controller_killed_just_before_a_save_interval_loses_no_request_or_feedback(pair):  # noqa: F811
    """29 s of reports merged after the last save, then a kill: the router sends them all again."""
    router, ctl = pair
    clock = ctl.clock
    served = serve_and_report(router, ctl, range(1000, 1001), feedback=False)
    ctl.core.save_stats()
    for second in range(29):
        clock.advance(1.0)
        served += serve_and_report(router, ctl, range(10 * second, 10 * second + 10))
        if (second + 1) % ROUND_S == 0:
            assert not ctl.core.figures_due()
    assert ctl.counts()[:2] == (served, served - 1)
    ctl.kill()
    assert ctl.counts()[0] == 1  # as the last save left them
    serve_and_report(router, ctl, range(0, 0))  # told it restarted: sends again what it kept
    assert ctl.counts() == (served, served - 1, 0)


def test_the_save_interval_stays_within_what_routers_keep():
    assert 4 * 30 == MAX_KEPT_REPORTS  # a quarter of it (config.experiment.SAVE_REPORT_INTERVALS)
    assert ControllerConfig(report_interval_s=0.25).figures_save_interval_s == 7.5
    assert ControllerConfig(report_interval_s=0.05).figures_save_interval_s == 5.0  # as every save before
    assert ControllerConfig(save_interval_s=10).figures_save_interval_s == 10.0
    with pytest.raises(ValueError, match=r"save_interval_s \(40\) must be at most 30 with report_interval_s 1 "):
        parse_experiment({**_MINIMAL, "controller": {"save_interval_s": 40}})
    with pytest.raises(ValueError, match="save_interval_s"):
        parse_experiment({**_MINIMAL, "controller": {"save_interval_s": 2}})


def test_a_short_report_interval_leaves_the_save_interval_its_5_s_and_says_a_valid_one():
    """Under 1/6 s of report_interval_s, 30 of them are under the 5 s save_interval_s allows:
    every value was refused, its default taken as 5 s, and the message offered the 5 it had
    just refused ("must be at most ... i.e. 3 ...; e.g. save_interval_s: 5")."""
    assert ControllerConfig(report_interval_s=0.1, save_interval_s=5).figures_save_interval_s == 5.0
    assert ControllerConfig(report_interval_s=0.1).figures_save_interval_s == 5.0  # the default, shortened
    with pytest.raises(ValueError) as refused:
        parse_experiment({**_MINIMAL, "controller": {"report_interval_s": 0.1, "save_interval_s": 6}})
    message = str(refused.value)
    assert "save_interval_s (6) must be at most 5 with report_interval_s 0.1" in message
    offered = float(message.split("e.g. save_interval_s: ")[1].split()[0])
    parse_experiment({**_MINIMAL, "controller": {"report_interval_s": 0.1, "save_interval_s": offered}})


_MINIMAL = {"model": "digits", "versions": [{"name": "v1", "path": "a.onnx", "backend": "onnx"}],
            "weights": {"v1": 100}}


def test_a_weight_change_is_saved_at_the_next_round_not_an_interval_later():
    """The routing epochs and when each split ended are in the figures' row: a controller
    restarted before a save that holds a weight change would file the new epoch's feedback
    under no known split and end the pre-period at the restart (CUPED off). The first round
    after the change saves, however recent the last save."""
    clock = FakeClock()
    store = CountingStore()
    cfg = parse_experiment({
        "model": "digits",
        "versions": [{"name": "v1", "path": "a.onnx", "backend": "onnx"},
                     {"name": "v2", "path": "b.onnx", "backend": "onnx"}],
        "weights": {"v1": 100},
        "rollout": {"strategy": "canary", "stable": "v1", "candidate": "v2", "steps": [{"pause": {}}]}})
    core = ControllerCore(cfg, store, clock)
    core.tick()
    rounds(core, clock, 40, per_second=5)
    assert not core.figures_due()  # saved 5 s ago at most, within the interval
    core.act(Action.WEIGHTS, ActionRequest(weights={"v1": 50, "v2": 50}))
    core.snapshot()  # published to the routers (their long poll), before the next round
    assert core.figures_due()
    core.save_stats()
    restarted = ControllerCore(cfg, store, clock)
    assert restarted._epoch_weights[core.epoch] == {"v1": 50.0, "v2": 50.0}
    assert not core.figures_due()


def test_a_decision_the_store_lost_with_the_save_after_it_is_written_back_at_the_next_round():
    """AOF's last second lost with the Redis host (or a failover to a replica that lacked it)
    took a decision and the round's save after it, and left the figures' row of the save
    before: the rollout's row at the older revision was written back only at the next save
    due, 30 s later (5 s before saves were spaced), and a controller restarted meanwhile
    resumed the older row, a rollback read back as the step before it."""
    clock = FakeClock()
    store = MemoryStateStore()
    core = ControllerCore(rollout_experiment(), store, clock)
    core.tick()
    rounds(core, clock, 40, per_second=5)
    older, older_figures = store.load(core.key), store.load(f"stats:{core.run_id}")
    core.act(Action.PAUSE)
    assert core.figures_due()  # a decision bumps the epoch: saved at the next round
    core.save_stats()
    store.save(core.key, older)  # lost, with that save
    store.save(f"stats:{core.run_id}", older_figures)
    clock.advance(ROUND_S)
    assert core.figures_due()
    core.save_stats()
    assert store.load(core.key)["revision"] == core.rollout.state.revision
    assert ControllerCore(rollout_experiment(), store, clock).rollout.phase is core.rollout.phase
    assert not core.figures_due()  # then every save_interval_s again


def test_an_older_figures_row_the_store_went_back_to_is_written_again_though_the_app_is_idle():
    """A lost last second (AOF) or a failover took the save that held the last traffic and left
    the row of the save before: an EXISTS found a row, and an idle app's figures, unchanged
    since that save, were never written again. The routers had dropped those reports as saved,
    so a controller restarted any time later lost them (500 requests here, 25 s of 20 req/s)."""
    clock = FakeClock()
    store = MemoryStateStore()
    core = ControllerCore(ab_experiment(), store, clock)
    rounds(core, clock, 35, per_second=20)  # saved at 5 s and 35 s
    before = dict(store.rows)
    rounds(core, clock, 25, per_second=20)
    rounds(core, clock, 5)  # the save at 65 s holds the last traffic; then it is lost
    store.rows.clear()
    store.rows.update(before)
    rounds(core, clock, ROUND_S)
    live = core.stats_snapshot()["versions"]["v1"]["requests"]
    assert store.load(f"stats:{core.run_id}")["versions"]["v1"]["requests"] == live == 1200
    rounds(core, clock, 600)
    restarted = ControllerCore(ab_experiment(), store, clock)
    assert restarted.stats_snapshot()["versions"]["v1"]["requests"] == live


def test_an_idle_app_whose_report_is_refreshed_every_round_writes_no_figures():
    """The report's refresh (every 5-s round) takes a look of each sequential test, which
    raises its look count though nothing was served: the count, saved in the figures' row
    since the sequential tests survive a restart, made an idle app write its whole row every
    save_interval_s (20 rows in 10 idle minutes). The tests' figures still come back whole."""
    clock = FakeClock()
    store = CountingStore()
    core = ControllerCore(ab_experiment(), store, clock)

    def refresh() -> None:
        _, core.sequential_state = build_report(core.cfg, core.stats_snapshot(samples=True), core.weights(),
                                                core.sequential_state, core.run_id)

    for t in range(1, 181):
        clock.advance(1.0)
        if t <= 120:
            for version in ("v1", "v2"):
                report(core, clock, version, 20, correct=t % 2 == 0)
        if t % ROUND_S == 0:
            if core.figures_due():
                core.save_stats()
            refresh()
    written = len(store.written("stats:"))
    for _ in range(120):  # 10 idle minutes of rounds
        clock.advance(ROUND_S)
        if core.figures_due():
            core.save_stats()
        refresh()
    assert store.written("stats:")[written:] == []
    looked = core.sequential_state["correct"]["v2"]["seq"]
    restarted = ControllerCore(ab_experiment(), store, clock).sequential_state["correct"]["v2"]["seq"]
    assert {k: v for k, v in restarted.items() if k != "looks"} == {k: v for k, v in looked.items() if k != "looks"}
    assert 0 < restarted["looks"] < looked["looks"]


def test_the_config_the_app_hands_its_replicas_parses_again_with_a_short_report_interval():
    """The app dumps the parsed config whole for its router and controller replicas, which
    parse it again: a default of 30 s written out beside report_interval_s 0.25 was refused
    there ("save_interval_s (30) must be at most 7.5"), and no replica of the app started."""
    cfg = parse_experiment({**_MINIMAL, "controller": {"report_interval_s": 0.25}})
    again = parse_experiment(cfg.model_dump(mode="json"))
    assert again.controller.figures_save_interval_s == 7.5
    assert again == cfg
