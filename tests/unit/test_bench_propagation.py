"""bench_propagation's reading of a round, on made-up request records (no Ray)."""

from __future__ import annotations

from benchmarks.bench_propagation import Round, summarize_round


def _round() -> Round:
    # The hold from 10 s, the decision sent at 11 s and acknowledged at 11.1 s, the next
    # round's restore (back to 50/50) sent at 12.5 s.
    return Round(0, "weights 100/0", t_restore=9.9, t_hold=10.0, t0=11.0, t_ack=11.1, t0_wall=1_000.0,
                 t_end=12.5)


def _records(*extra):
    hold = [(f"h{i}", 10.6 + i * 0.04, 10.65 + i * 0.04, "v3") for i in range(10)]  # all v3
    switched = [("late-v3", 11.03, 11.08, "v3"), ("first-v1", 11.05, 11.1, "v1"),
                *[(f"a{i}", 11.2 + i * 0.1, 11.25 + i * 0.1, "v1") for i in range(10)]]
    return hold + switched + list(extra)


def test_the_last_v3_request_of_the_round_is_its_propagation():
    row = summarize_round(_round(), _records(), {}, {}, observe_s=1.4)
    assert row["settled"] and row["propagation_ms"] == 30.0 and row["first_v1_send_ms"] == 50.0


def test_a_request_in_flight_at_the_next_restore_belongs_to_the_next_round():
    # Sent 10 ms before the restore, routed after it: v3 again, under the next round's weights.
    straddling = ("next-round", 12.49, 12.6, "v3")
    row = summarize_round(_round(), _records(straddling), {}, {}, observe_s=1.4)
    assert row["propagation_ms"] == 30.0
    assert row["requests"] == len(_records())
