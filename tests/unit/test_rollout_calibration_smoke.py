"""benchmarks/rollout_calibration.py drives the real ControllerCore end to end and ends with its JSON line.

In-process and small: an A/A candidate on plenty of keyless traffic is promoted, a candidate
with ten times the errors against ``error_rate max 0.05`` is aborted by that gate, every run
(fixed seeds: the same runs every time). The rates themselves are read from the full run,
``python -m benchmarks.rollout_calibration``.
"""

from __future__ import annotations

import json

import numpy as np

from benchmarks import rollout_calibration as calibration

REPS = 4
RATE_KEYS = {"rate", "mc_se", "hits", "reps"}


def test_run_ends_with_one_json_line_and_tells_good_from_bad(capsys):
    assert calibration.main(["--reps", str(REPS), "--seed", "0",
                             "--case", "aa_keyless_400", "--case", "err10x_keyless_400"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out[-1])

    assert report["bench"] == "rollout_calibration" and report["reps"] == REPS
    assert set(report["cases"]) == {"aa_keyless_400", "err10x_keyless_400"}
    for row in report["cases"].values():
        for key in ("promoted", "aborted", "aborted_by_gate", "aborted_by_deadline", "unfinished"):
            assert RATE_KEYS <= set(row[key]) and row[key]["reps"] == REPS
        assert (row["promoted"]["hits"] + row["aborted"]["hits"] + row["unfinished"]["hits"]) == REPS
        assert row["gate_fail_per_step"] and all(RATE_KEYS <= set(r) for r in row["gate_fail_per_step"].values())

    good = report["cases"]["aa_keyless_400"]
    assert good["aa"] is True
    assert good["promoted"]["hits"] >= REPS - 1
    # At least the three 60 s pauses; each step analysed several times.
    assert good["t_promoted_s"]["median"] >= 180
    assert set(good["mean_analyses_per_step"]) == {"5", "20", "50"}

    bad = report["cases"]["err10x_keyless_400"]
    assert bad["aborted_by_gate"]["hits"] == REPS
    assert bad["gate_fail_per_step"]["5|error_rate <= 0.05"]["hits"] == REPS
    assert all("error_rate" in reason for reason in bad["example_aborts"])


def test_a_run_reads_its_verdicts_from_the_controller():
    out = calibration.one_run(calibration.CASES["err10x_keyless_400"], np.random.SeedSequence([1, 2]), max_s=600)
    assert out["phase"] == "aborted" and out["cause"] == "gate" and out["weight"] == 0.0
    assert "failed analysis" in out["reason"] and out["requests"] > 0


def test_keyed_canary_at_100_per_second_holds_without_an_assumption_and_passes_with_one():
    """5 keyed requests a second to the 5% step, from some 300 users: no assumption about how
    alike a user's requests are leaves too little evidence within 300 s (the deadline aborts
    it); analysis.max_user_icc: 0.1, which these users meet, promotes it."""
    seed = np.random.SeedSequence([3, 4])
    held = calibration.one_run(calibration.CASES["aa_keyed_100"], seed, max_s=600)
    assumed = calibration.one_run(calibration.CASES["aa_keyed_100_icc0.1"], seed, max_s=600)
    assert (held["phase"], held["cause"]) == ("aborted", "deadline"), held["reason"]
    assert assumed["phase"] == "promoted", assumed["reason"]


def test_a_controller_killed_every_few_seconds_decides_as_one_never_killed():
    """With the step's gate window saved and the router's unsaved reports sent again, kills
    change no decision. (When the window was lost at a kill, a kill every 17 s left a good
    keyed canary 7 times in 10 to the progress deadline.) A step whose time is up within
    5 s of a restart waits for the first analysis after it, which reads the reports sent
    again: a decision comes a few seconds later, never sooner."""
    case = calibration.CASES["aa_keyed_400"]
    for rep in range(2):
        kept = calibration.one_run(case, np.random.SeedSequence([3, rep]), max_s=400)
        killed = calibration.one_run(case, np.random.SeedSequence([3, rep]), max_s=400, kill_every_s=13)
        assert killed["kills"] >= 10
        for key in ("phase", "cause", "weight", "fail_any"):
            assert killed[key] == kept[key], key
        assert kept["t_s"] <= killed["t_s"] <= kept["t_s"] + 3 * 10, (kept["t_s"], killed["t_s"])


def test_operator_pauses_keep_the_evidence_an_a_a_is_promoted_and_a_bad_candidate_caught():
    """An operator pausing for 10 s every 23 s, traffic going on: the window keeps what was
    served while paused, so the A/A still promotes (later, by the time paused) with no false
    fail, and err10x is still aborted by its gate."""
    good = calibration.one_run(calibration.CASES["aa_keyed_400"], np.random.SeedSequence([5, 0]), max_s=600,
                               pause_every_s=23)
    assert good["pauses"] >= 5 and good["phase"] == "promoted", good["reason"]
    assert not any(good["fail_any"].values())
    bad = calibration.one_run(calibration.CASES["err10x_keyless_400"], np.random.SeedSequence([5, 1]), max_s=600,
                              pause_every_s=23)
    assert (bad["phase"], bad["cause"]) == ("aborted", "gate"), bad["reason"]
