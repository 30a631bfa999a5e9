"""An upgrade in place: today's controller resumes the state an earlier release saved.

The fixture is the SQLite state file of a live canary app run by serve-ab db32c8e (the
release before this change), read back row by row (the feedback key and the minutes of
counted feedback left out): the rollout held at step 2 (5%), the run's figures, the gate
window. Its figures equal the client's log of that run (1,383 and 69 requests, 994 and 45
feedback reports).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from serve_ab.config.experiment import ExperimentConfig
from serve_ab.serving.controller import EPOCHS_SKIPPED_AT_RESTART, ControllerCore
from serve_ab.serving.core.feedback_token import FeedbackSigner
from serve_ab.store.state import MemoryStateStore
from tests.support.fakes import FakeClock
from tests.support.reports import ServedRequest, report_of

SAVED = json.loads((Path(__file__).parent / "data" / "saved_by_db32c8e_canary.json").read_text())["rows"]
RUN_ID = "digits-c-20261207T220107Z-99bafbdc"
ROLLOUT_KEY = "digits-c:canary:v1->v3"


def _resumed(caplog) -> tuple[ControllerCore, MemoryStateStore, FakeClock]:
    store = MemoryStateStore()
    for key, row in SAVED.items():
        store.save(key, row)
    # The config that run served: its saved fingerprint is the config less its defaults.
    cfg = ExperimentConfig.model_validate(json.loads(SAVED["run:digits-c"]["fingerprint"]))
    clock = FakeClock(SAVED[f"stats:{RUN_ID}"]["now_s"] + 20.0)  # the upgrade took 20 s
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        core = ControllerCore(cfg, store, clock)
    return core, store, clock


def test_todays_controller_continues_the_run_and_the_canary_an_earlier_release_saved(caplog):
    core, store, clock = _resumed(caplog)
    assert core.run_id == RUN_ID  # the same run: nothing started over
    assert core.rollout.state.step_index == 1 and core.rollout.state.revision == 3
    assert core.weights() == {"v1": 95.0, "v3": 5.0}
    versions = core.stats_snapshot()["versions"]
    assert {v: (s["requests"], s["feedback"]["correct"]["n"], s["feedback"]["correct"]["successes"])
            for v, s in versions.items()} == {"v1": (1383, 994, 982), "v3": (69, 45, 35)}
    assert "hold no sequential tests" in caplog.text  # the one thing it could not carry on
    # Epochs were not saved then: today's numbers on past any the old controller published.
    assert core.snapshot().epoch >= EPOCHS_SKIPPED_AT_RESTART

    # New traffic adds to the old figures, once; the next save keeps both.
    rows = [ServedRequest(clock(), "v3", 3.0, None, 1, 0.9, f"n{i}", 1000 + i, True, False, split=core.epoch)
            for i in range(10)]
    core.record(report_of(rows, core=core))
    core.save_stats()
    again = ControllerCore(core.cfg, store, clock)
    assert again.run_id == RUN_ID and again.stats_snapshot()["versions"]["v3"]["requests"] == 79
    assert again.sequential_state == core.sequential_state  # saved now: a later restart resumes them


# Issued by db32c8e's FeedbackSigner(b"k" * 32, 3600.0, clock at 1796680900.0, "digits-c"):
# an assigned answer (bucket 4242, routing epoch 3), and a pinned one.
OLD_TOKENS = (("req-7", "v3.1796684500.a4242e3.97912f96c1df.xw9b90Un9ICoRoEL_K8-9w"),
              ("req-8", "v1.1796684500.p.1eb2398aded6.VovoHhwu_4CNUjYMHlpRiA"))


def test_feedback_tokens_the_earlier_release_issued_are_accepted_by_todays_signer():
    """Tokens live an hour across the upgrade: an old router's answer gets its feedback through
    a new router (live, upgrading from db32c8e: 810 reports on the old release's answers, each
    counted once; and 393 on today's answers after a rollback to db32c8e)."""
    signer = FeedbackSigner(b"k" * 32, 3600.0, FakeClock(1_796_680_900.0 + 600), "digits-c")
    assigned, pinned = (signer.verify(token, request_id) for request_id, token in OLD_TOKENS)
    assert (assigned.version, assigned.assigned, assigned.bucket, assigned.epoch) == ("v3", True, 4242, 3)
    assert (pinned.version, pinned.assigned) == ("v1", False)
