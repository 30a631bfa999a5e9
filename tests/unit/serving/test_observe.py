"""The router's observation buffer: answers held, then folded into the interval's aggregate."""

from __future__ import annotations

import numpy as np
import pytest

from serve_ab.analysis.aggregate import IntervalAggregate
from serve_ab.analysis.tasks import CLASSIFICATION
from serve_ab.serving.core import observe
from serve_ab.serving.core.observe import FOLD_ROWS, HELD_OUTPUT_BYTES, MAX_EPOCHS, ObservationBuffer

from tests.support.aggregates import assert_same

WEIGHTS = {"v1": 50.0, "v2": 50.0}


def _serve(buffer: ObservationBuffer, count: int, split: int = 0, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(count):
        outputs = rng.random((1, 10)).astype(np.float32)
        version = "v1" if i % 2 else "v2"
        kind = "model" if i % 17 == 0 else None
        buffer.served(version, -rng.random() / 100, kind, outputs if kind is None else None,
                      request_id=f"r{i}", unit=int(rng.integers(0, 2**32)), assigned=i % 5 != 0,
                      pinned=i % 5 == 0, split=split)


def _buffer() -> ObservationBuffer:
    buffer = ObservationBuffer(clock=lambda: 0.0, keep_request_ids=True)
    buffer.routed_by(0, WEIGHTS)
    return buffer


def test_held_answers_make_the_aggregate_folding_each_at_once_makes(monkeypatch):
    held = _buffer()
    _serve(held, 3 * FOLD_ROWS + 7)
    monkeypatch.setattr(observe, "FOLD_ROWS", 1)  # every answer folded as it is served
    at_once = _buffer()
    _serve(at_once, 3 * FOLD_ROWS + 7)
    assert_same(held.drain(), at_once.drain())


@pytest.mark.parametrize("held_output_bytes", [0, HELD_OUTPUT_BYTES])
def test_outputs_summarised_at_the_fold_make_the_aggregate_summarising_at_once_makes(monkeypatch, held_output_bytes):
    """Small outputs are held with their rows and summarised at the fold; larger ones (here
    all, with 0 bytes held) at once. The figures are the same either way, for outputs of
    every kind a task summarises: a float and an integer array, several outputs by name."""
    def serve(buffer: ObservationBuffer) -> None:
        rng = np.random.default_rng(3)
        for i in range(FOLD_ROWS + 9):
            outputs = [rng.random((1, 10)).astype(np.float32), rng.integers(0, 9, (2, 4)),
                       {"probs": rng.random((1, 3)), "logits": rng.random((1, 3))}, None][i % 4]
            buffer.served("v1" if i % 2 else "v2", 0.0, None if outputs is not None else "model", outputs,
                          request_id=f"r{i}", unit=i, assigned=True, split=0)

    monkeypatch.setattr(observe, "HELD_OUTPUT_BYTES", held_output_bytes)
    held = _buffer()
    serve(held)
    # The same answers, each summarised by hand and given to the aggregate one by one.
    expected = IntervalAggregate()
    for version, _, error_kind, outputs, unit, assigned, mirrored, split, request_id in _rows_of(serve):
        expected.served(version, 0.0, error_kind, *CLASSIFICATION.summary(outputs), unit=unit, assigned=assigned,
                        mirrored=mirrored, split=split, weights_pct=WEIGHTS, request_id=request_id,
                        keep_request_id=True)
    assert_same(held.drain(), expected)


def _rows_of(serve) -> list[tuple]:
    """What ``serve`` gives a buffer's ``served``, row by row (outputs not summarised)."""
    rows: list[tuple] = []

    class Recorder:
        def served(self, version, started_s, error_kind, outputs, *, request_id, unit=None, assigned=False,
                   mirrored=False, pinned=False, split=-1):
            rows.append((version, started_s, error_kind, outputs, unit, assigned, mirrored, split, request_id))

    serve(Recorder())
    return rows


def test_only_small_outputs_are_held_until_the_fold():
    buffer = _buffer()
    small = np.zeros((1, HELD_OUTPUT_BYTES // 4), dtype=np.float32)
    large = np.zeros((1, HELD_OUTPUT_BYTES // 4 + 1), dtype=np.float32)
    for outputs in (small, large, {"probs": small}):
        buffer.served("v1", 0.0, None, outputs, request_id="r", assigned=True, split=0)
    held = [row[3] for row in buffer._rows]
    assert held[0] is small  # a reference, summarised at the fold
    assert held[1] == (0, 0.0) and held[2] == (0, 0.0)  # summarised at once: nothing large is kept


def test_an_object_output_is_summarised_at_once_whatever_it_holds():
    """nbytes counts an object array's pointers: 8 bytes may hold megabytes of text."""
    buffer = _buffer()
    text = np.array([[b"x" * 1_000_000]], dtype=object)
    buffer.served("v1", 0.0, None, text, request_id="r", assigned=True, split=0)
    assert buffer._rows[0][3] == (None, None)


def test_an_answer_that_cannot_be_summarised_loses_no_other_answer(monkeypatch):
    buffer = _buffer()
    _serve(buffer, 5)
    buffer.served("v1", 0.0, None, np.zeros((1, 0), dtype=np.float32), request_id="empty", assigned=True, split=0)
    monkeypatch.setattr(observe.TaskRule, "summary", _fails_on_empty(observe.TaskRule.summary))
    aggregate = buffer.drain()
    assert aggregate is not None and aggregate.rows == 6  # the 5 before it, and itself without a class
    # Summarised as it is served (a large output): the request is not failed either.
    buffer.served("v1", 0.0, None, {"probs": np.zeros((1, 0))}, request_id="empty-dict", assigned=True, split=0)
    assert buffer.drain().rows == 1


def test_a_classifier_with_no_class_summarises_to_nothing():
    assert CLASSIFICATION.summary(np.zeros((1, 0), dtype=np.float32)) == (None, None)


def _fails_on_empty(summary):
    def wrapped(self, outputs):
        array = next(iter(outputs.values())) if isinstance(outputs, dict) else outputs
        if isinstance(array, np.ndarray) and not array.size:
            raise ValueError("attempt to get argmax of an empty sequence")
        return summary(self, outputs)
    return wrapped


def test_held_answers_count_and_are_folded_every_fold_rows():
    buffer = _buffer()
    _serve(buffer, FOLD_ROWS - 1)
    assert len(buffer) == FOLD_ROWS - 1  # held, not folded yet, but served
    _serve(buffer, 1)
    assert buffer._current.rows == FOLD_ROWS  # the memory a buffer holds stays bounded
    aggregate = buffer.drain()
    assert aggregate is not None and aggregate.rows == FOLD_ROWS
    assert buffer.drain() is None


def test_answers_held_across_many_new_epochs_keep_their_split():
    """Rows are folded before an epoch is added: held past MAX_EPOCHS changes of weights,
    they would otherwise find their split's weights forgotten and leave the A/B figures."""
    buffer = _buffer()
    _serve(buffer, 10, split=0)
    for epoch in range(1, MAX_EPOCHS + 2):
        buffer.routed_by(epoch, {"v1": 100.0 - epoch, "v2": float(epoch)})
    aggregate = buffer.drain()
    assert aggregate.splits[0].weights_pct == WEIGHTS
    assert aggregate.splits[0].metrics["error_rate"].n.sum() + sum(
        m[2] for m in aggregate.splits[0].metrics["error_rate"].keyless.values()) == 8  # 10 less 2 pinned


