"""The replicas' dynamic batcher (serve_ab.backends.batching): plain asyncio, no Ray."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve_ab.backends import Batcher, predict_together
from serve_ab.errors import BadOutput


class Doubler:
    """A predictor that records the batch sizes it was called with."""

    def __init__(self):
        self.calls: list[int] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        return batch * 2


def _rows(i: int, n: int = 3) -> np.ndarray:
    return np.full((n, 2), float(i), dtype=np.float32)


def test_concurrent_calls_share_one_model_call_and_get_their_own_rows():
    model = Doubler()
    batcher = Batcher(lambda b: predict_together(model, b), max_batch_size=8, batch_wait_timeout_s=0.05)

    async def go():
        return await asyncio.gather(*(batcher.predict(_rows(i, n=i + 1)) for i in range(5)))

    results = asyncio.run(go())
    assert model.calls == [1 + 2 + 3 + 4 + 5]
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out, _rows(i, n=i + 1) * 2)
    assert (batcher.batches_run, batcher.requests_run) == (1, 5)


def test_no_batch_takes_more_than_max_batch_size_requests():
    model = Doubler()
    batcher = Batcher(lambda b: predict_together(model, b), max_batch_size=4, batch_wait_timeout_s=0.05)

    async def go():
        return await asyncio.gather(*(batcher.predict(_rows(i, n=1)) for i in range(10)))

    results = asyncio.run(go())
    assert model.calls == [4, 4, 2]
    assert [float(r[0, 0]) for r in results] == [2.0 * i for i in range(10)]


def test_a_batch_that_fills_runs_at_once_whenever_its_requests_arrive():
    """Requests arriving over several loop turns fill a batch; the full batch does not wait
    out batch_wait_timeout_s (30 s here: a wait would hit the 5-s bound below)."""
    model = Doubler()
    batcher = Batcher(lambda b: predict_together(model, b), max_batch_size=4, batch_wait_timeout_s=30.0)

    async def go():
        first = [asyncio.ensure_future(batcher.predict(_rows(i, n=1))) for i in range(2)]
        await asyncio.sleep(0)  # the worker takes the first request and starts waiting
        await asyncio.sleep(0)
        later = [asyncio.ensure_future(batcher.predict(_rows(i, n=1))) for i in range(2, 8)]
        return await asyncio.wait_for(asyncio.gather(*first, *later), timeout=5.0)

    results = asyncio.run(go())
    assert model.calls == [4, 4]
    assert [float(r[0, 0]) for r in results] == [2.0 * i for i in range(8)]


def test_a_lone_request_waits_at_most_the_timeout():
    model = Doubler()
    batcher = Batcher(lambda b: predict_together(model, b), max_batch_size=64, batch_wait_timeout_s=0.02)

    async def go():
        loop = asyncio.get_running_loop()
        started = loop.time()
        await batcher.predict(_rows(1))
        return loop.time() - started

    waited_s = asyncio.run(go())
    assert 0.015 <= waited_s < 1.0
    assert model.calls == [3]


def test_an_error_fails_its_batch_only_and_the_batcher_keeps_serving():
    calls = []

    def run_batch(batches):
        calls.append(len(batches))
        if len(calls) == 1:
            raise ValueError("model exploded")
        return [b + 1 for b in batches]

    batcher = Batcher(run_batch, max_batch_size=2, batch_wait_timeout_s=0.0)

    async def go():
        first = await asyncio.gather(batcher.predict(_rows(0)), batcher.predict(_rows(1)),
                                     return_exceptions=True)
        return first, await batcher.predict(_rows(2))

    first, after = asyncio.run(go())
    assert all(isinstance(r, ValueError) and "model exploded" in str(r) for r in first)
    np.testing.assert_array_equal(after, _rows(2) + 1)


def test_a_wrong_number_of_results_is_an_error_not_a_hang():
    batcher = Batcher(lambda batches: batches[:1], max_batch_size=4, batch_wait_timeout_s=0.01)

    async def go():
        return await asyncio.gather(batcher.predict(_rows(0)), batcher.predict(_rows(1)),
                                    return_exceptions=True)

    results = asyncio.run(go())
    assert all(isinstance(r, RuntimeError) and "1 results for 2 requests" in str(r) for r in results)


def test_each_batch_run_is_told_its_number_of_requests_after_its_answers():
    model, told, answered = Doubler(), [], []

    def on_batch(requests):
        told.append((requests, len(answered)))  # how many callers had their answers by then

    batcher = Batcher(lambda b: predict_together(model, b), max_batch_size=4, batch_wait_timeout_s=0.05,
                      on_batch=on_batch)

    async def go():
        async def one(i):
            out = await batcher.predict(_rows(i, n=2))
            answered.append(i)
            return out

        gone = asyncio.ensure_future(batcher.predict(_rows(99)))
        calls = [asyncio.ensure_future(one(i)) for i in range(9)]
        await asyncio.sleep(0)
        gone.cancel()  # left out of its batch: not counted in its size
        return await asyncio.gather(*calls)

    asyncio.run(go())
    assert [requests for requests, _ in told] == [3, 4, 2] and model.calls == [6, 8, 4]  # 99 took a place
    assert told[0][1] == 0  # told before its callers ran on: their futures were set first
    assert (batcher.batches_run, batcher.requests_run) == (3, 9)


def test_a_batch_size_recorder_that_fails_is_dropped_and_the_batches_go_on(caplog):
    def broken(requests):
        raise RuntimeError("metrics agent gone")

    model = Doubler()
    batcher = Batcher(lambda b: predict_together(model, b), max_batch_size=2, batch_wait_timeout_s=0.01,
                      on_batch=broken)

    async def go():
        return await asyncio.gather(*(batcher.predict(_rows(i, n=1)) for i in range(5)))

    results = asyncio.run(go())
    assert [float(r[0, 0]) for r in results] == [2.0 * i for i in range(5)] and model.calls == [2, 2, 1]
    assert batcher.on_batch is None and caplog.text.count("recording a batch's size failed") == 1


def test_a_cancelled_request_is_left_out_of_its_batch():
    model = Doubler()
    batcher = Batcher(lambda b: predict_together(model, b), max_batch_size=8, batch_wait_timeout_s=0.05)

    async def go():
        gone = asyncio.ensure_future(batcher.predict(_rows(0, n=5)))
        kept = asyncio.ensure_future(batcher.predict(_rows(1, n=2)))
        await asyncio.sleep(0)
        gone.cancel()
        return await kept

    out = asyncio.run(go())
    np.testing.assert_array_equal(out, _rows(1, n=2) * 2)
    assert model.calls == [2]


def test_the_batcher_survives_a_new_event_loop():
    model = Doubler()
    batcher = Batcher(lambda b: predict_together(model, b), max_batch_size=8, batch_wait_timeout_s=0.0)
    for i in range(2):
        np.testing.assert_array_equal(asyncio.run(batcher.predict(_rows(i))), _rows(i) * 2)


@pytest.mark.parametrize("kwargs, message", [
    ({"max_batch_size": 0, "batch_wait_timeout_s": 0.0}, "max_batch_size must be a positive integer"),
    ({"max_batch_size": 4, "batch_wait_timeout_s": -1.0}, "batch_wait_timeout_s must be >= 0"),
])
def test_bad_settings_are_refused_with_an_example(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Batcher(lambda b: b, **kwargs)


def test_the_replicas_use_this_batcher_not_ray_serve_batch():
    from pathlib import Path

    source = (Path(__file__).resolve().parents[3] / "serve_ab/serving/runtime.py").read_text()
    assert "Batcher(" in source and "serve.batch" not in source


def test_a_loaded_version_batches_through_it_without_ray(model_repo):
    # runtime.py no longer needs Ray for batching: the replica's own class, in this process.
    from serve_ab.config.experiment import VersionConfig
    from serve_ab.serving.runtime import LoadedVersion

    version = LoadedVersion(VersionConfig(
        name="v1", path=str(model_repo / "digits/v1/model.onnx"), backend="onnx", device="cpu",
        batching={"max_batch_size": 4, "batch_wait_timeout_s": 0.05}))
    rows = [np.random.default_rng(i).uniform(0, 16, (i + 1, 64)).astype(np.float32) for i in range(4)]

    async def go():
        return await asyncio.gather(*(version.predict(r) for r in rows))

    results = asyncio.run(go())
    for r, out in zip(rows, results):
        np.testing.assert_allclose(out, version.predictor.predict(r), atol=1e-6)
    assert (version._batcher.batches_run, version._batcher.requests_run) == (1, 4)


class DropsARow(Doubler):
    def predict(self, batch: np.ndarray) -> np.ndarray:
        return super().predict(batch)[:-1]


def test_a_model_miscounting_a_batchs_rows_fails_every_request_of_it():
    """Cut anyway, its outputs would hand one request another's rows (or none): the audit's
    three concurrent requests got one row and two empty 200s. Asked alone, it miscounts each
    request's rows too: the first two tell, and the rest (the third) is asked once."""
    model = DropsARow()  # a Doubler: it records the rows of each call
    batcher = Batcher(lambda b: predict_together(model, b), max_batch_size=8, batch_wait_timeout_s=0.05)

    async def go():
        return await asyncio.gather(*(batcher.predict(_rows(i, n=1)) for i in range(3)),
                                    return_exceptions=True)

    results = asyncio.run(go())
    assert all(isinstance(r, BadOutput) for r in results), results
    assert "answered 0 rows for 1 input rows" in str(results[0])
    assert model.calls == [3, 1, 1, 1]


class DropsRowsItCannotScore(Doubler):
    """A model that leaves out the rows it cannot score (here: a negative value)."""

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return super().predict(batch)[(batch >= 0).all(axis=1)]


def test_a_request_whose_row_the_model_drops_fails_alone_not_its_whole_batch():
    """Stacked, the dropped row left the batch a row short, and every request of it failed
    (BadOutput: each counted as the version's error, assigned ones sent to the fallback),
    where a model raising for that row fails its request alone. Asked again request by
    request, as for a call that raised."""
    batcher = Batcher(lambda b: predict_together(DropsRowsItCannotScore(), b), max_batch_size=8,
                      batch_wait_timeout_s=0.05)
    rows = [_rows(i, n=2) for i in range(4)]
    rows[1][0, 0] = -1.0

    async def go():
        return await asyncio.gather(*(batcher.predict(r) for r in rows), return_exceptions=True)

    results = asyncio.run(go())
    assert [isinstance(r, BadOutput) for r in results] == [False, True, False, False]
    assert "answered 1 rows for 2 input rows" in str(results[1])
    for i in (0, 2, 3):
        np.testing.assert_allclose(results[i], DropsRowsItCannotScore().predict(rows[i]))


class RowSum:
    """A model whose input has a free second dimension (``[-1, -1]``): each row's sum; it
    refuses a batch holding -7, as a model raising on one request's values would."""

    def __init__(self):
        self.calls: list[tuple[int, ...]] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(batch.shape)
        if (batch == -7).any():
            raise RuntimeError("RowSum refuses -7")
        return batch.sum(axis=1, keepdims=True)


def test_requests_of_different_widths_in_one_window_are_each_answered():
    """Stacked, 3 and 5 columns made one ValueError for every request of the window (live:
    96 of 96 requests of widths 3, 5 and 7 answered 502)."""
    model = RowSum()
    batcher = Batcher(lambda b: predict_together(model, b), max_batch_size=8, batch_wait_timeout_s=0.05)
    batches = [np.arange(n * w, dtype=np.float32).reshape(n, w) for n, w in ((2, 3), (1, 5), (3, 3), (2, 7))]

    async def go():
        return await asyncio.gather(*(batcher.predict(b) for b in batches))

    for batch, out in zip(batches, asyncio.run(go())):
        np.testing.assert_array_equal(out, batch.sum(axis=1, keepdims=True))
    # One model call per width, the two 3-column requests stacked together.
    assert sorted(model.calls) == [(1, 5), (2, 7), (5, 3)]
    assert (batcher.batches_run, batcher.requests_run) == (1, 4)


def test_a_width_whose_call_fails_fails_alone():
    model = RowSum()
    batcher = Batcher(lambda b: predict_together(model, b), max_batch_size=8, batch_wait_timeout_s=0.05)
    refused = np.full((1, 5), -7.0, dtype=np.float32)
    batches = [np.ones((2, 3), np.float32), refused, np.ones((1, 5), np.float32), np.ones((1, 3), np.float32)]

    async def go():
        return await asyncio.gather(*(batcher.predict(b) for b in batches), return_exceptions=True)

    results = asyncio.run(go())
    # The two 5-column requests went to the model together, then each alone: the refused one
    # fails, its neighbour of the same width is answered.
    assert [isinstance(r, RuntimeError) for r in results] == [False, True, False, False]
    np.testing.assert_array_equal(results[0], np.full((2, 1), 3.0))
    np.testing.assert_array_equal(results[2], np.full((1, 1), 5.0))
    np.testing.assert_array_equal(results[3], np.full((1, 1), 3.0))
    assert batcher.requests_run == 3


def test_a_request_the_model_refuses_fails_alone_not_its_whole_batch():
    """A model that raises for one request's values (valid by shape) failed every request
    batched with it: live, 45 such requests in 600 (concurrency 16, a 50-ms window) took 323
    others down with them, 502s. The stacked call is made again request by request."""
    model = RowSum()
    batcher = Batcher(lambda b: predict_together(model, b), max_batch_size=8, batch_wait_timeout_s=0.05)
    batches = [np.full((2, 3), float(i), np.float32) for i in range(4)]
    batches[2][1, 0] = -7.0  # request 2's second row is one the model refuses

    async def go():
        return await asyncio.gather(*(batcher.predict(b) for b in batches), return_exceptions=True)

    results = asyncio.run(go())
    assert isinstance(results[2], RuntimeError) and "refuses -7" in str(results[2])
    for i in (0, 1, 3):
        np.testing.assert_array_equal(results[i], batches[i].sum(axis=1, keepdims=True))
    # One stacked call of 8 rows, then each request's 2 rows alone.
    assert model.calls == [(8, 3), (2, 3), (2, 3), (2, 3), (2, 3)]
    assert (batcher.batches_run, batcher.requests_run) == (1, 3)


class Down:
    """A model failing every call the same way (a dependency down, a broken device)."""

    def __init__(self):
        self.calls: list[tuple[int, ...]] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(batch.shape)
        raise TimeoutError("the feature store did not answer within 1 s")


def test_a_model_that_fails_every_call_is_not_asked_again_for_each_request_of_the_batch():
    """Asked again request by request, a model failing every call was called once more per
    request, on the replica's loop: failing after 50 ms, it held the loop 0.95 s for a batch
    of 16 (17 calls) instead of 0.05 s. Once the first two requests alone fail as each other,
    the rest are asked in one call, and failing the same way get that error: 4 calls."""
    model = Down()
    batcher = Batcher(lambda b: predict_together(model, b), max_batch_size=16, batch_wait_timeout_s=0.05)
    batches = [np.full((1, 3), float(i), np.float32) for i in range(16)]

    async def go():
        return await asyncio.gather(*(batcher.predict(b) for b in batches), return_exceptions=True)

    results = asyncio.run(go())
    assert all(isinstance(r, TimeoutError) and "feature store" in str(r) for r in results)
    assert model.calls == [(16, 3), (1, 3), (1, 3), (14, 3)]
    assert batcher.requests_run == 0


def test_two_refused_requests_first_in_a_batch_do_not_fail_the_others():
    """Each refused value is its own error: the model is not taken to be failing every call."""

    class Refuses(RowSum):
        def predict(self, batch):
            self.calls.append(batch.shape)
            if (batch < 0).any():
                raise RuntimeError(f"refuses {batch.min():g}")
            return batch.sum(axis=1, keepdims=True)

    model = Refuses()
    batcher = Batcher(lambda b: predict_together(model, b), max_batch_size=8, batch_wait_timeout_s=0.05)
    batches = [np.full((1, 3), v, np.float32) for v in (-1.0, -2.0, 1.0, 2.0)]

    async def go():
        return await asyncio.gather(*(batcher.predict(b) for b in batches), return_exceptions=True)

    results = asyncio.run(go())
    assert [isinstance(r, RuntimeError) for r in results] == [True, True, False, False]
    np.testing.assert_array_equal(results[3], np.full((1, 1), 6.0))
    assert len(model.calls) == 5


class RefusesNegatives(RowSum):
    """A model refusing a negative value with one message whatever the value (as sklearn's
    'Input X contains NaN.' or torch's 'index out of range in self' are the same for every
    request that holds one)."""

    def predict(self, batch):
        self.calls.append(batch.shape)
        if (batch < 0).any():
            raise ValueError("Input contains a negative value")
        return batch.sum(axis=1, keepdims=True)


def test_two_requests_refused_alike_first_in_a_batch_do_not_fail_the_good_ones_after_them():
    """The first two requests asked alone failed with the same type and text, so the rest of
    the batch got that error unasked, as if the model were down: with the two refused
    requests first in a batch of 8, the 6 good ones after them failed too (8 of 8 where 2
    are the model's to refuse). The rest are asked together once: the model answering
    them shows it is up."""
    model = RefusesNegatives()
    batcher = Batcher(lambda b: predict_together(model, b), max_batch_size=8, batch_wait_timeout_s=0.05)
    values = (-1.0, -2.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    batches = [np.full((1, 3), v, np.float32) for v in values]

    async def go():
        return await asyncio.gather(*(batcher.predict(b) for b in batches), return_exceptions=True)

    results = asyncio.run(go())
    assert [isinstance(r, ValueError) for r in results] == [True, True] + [False] * 6, results
    for value, result in zip(values[2:], results[2:]):
        np.testing.assert_array_equal(result, np.full((1, 1), 3 * value))
    # The stacked batch, the two refused alone, then the six left in one call.
    assert model.calls == [(8, 3), (1, 3), (1, 3), (6, 3)]
    assert batcher.requests_run == 6


def test_a_rest_failing_otherwise_than_the_first_two_is_asked_request_by_request():
    """The rest asked together failed, but not as the first two did: not a model down, so each
    is asked alone, and only the one the model refuses fails."""

    class AlsoRefusesLarge(RefusesNegatives):
        def predict(self, batch):
            if (batch > 100).any():
                self.calls.append(batch.shape)
                raise RuntimeError(f"refuses {batch.max():g}")
            return super().predict(batch)

    model = AlsoRefusesLarge()
    values = (-1.0, -2.0, 1.0, 200.0, 3.0)
    results = predict_together(model, [np.full((1, 3), v, np.float32) for v in values])
    assert [type(r).__name__ for r in results] == ["ValueError", "ValueError", "ndarray", "RuntimeError", "ndarray"]
    np.testing.assert_array_equal(results[4], np.full((1, 1), 9.0))
    assert model.calls == [(5, 3), (1, 3), (1, 3), (3, 3), (1, 3), (1, 3), (1, 3)]


def test_two_requests_whose_rows_the_model_drops_first_in_a_batch_do_not_fail_the_others():
    """One-row requests whose row the model leaves out are each told 'answered 0 rows for 1
    input rows', the same text: before, the rest of the batch got that BadOutput unasked (8
    of 8 failed, each counted as the version's output error, for 2 dropped rows)."""
    model = DropsRowsItCannotScore()  # a Doubler: it records the rows of each call
    batcher = Batcher(lambda b: predict_together(model, b), max_batch_size=8, batch_wait_timeout_s=0.05)
    rows = [_rows(i, n=1) for i in range(8)]
    rows[0][0, 0] = rows[1][0, 0] = -1.0

    async def go():
        return await asyncio.gather(*(batcher.predict(r) for r in rows), return_exceptions=True)

    results = asyncio.run(go())
    assert [isinstance(r, BadOutput) for r in results] == [True, True] + [False] * 6, results
    for i in range(2, 8):
        np.testing.assert_array_equal(results[i], rows[i] * 2)
    assert model.calls == [8, 1, 1, 6]


def test_requests_of_different_dtypes_are_not_cast_to_each_other():
    model = Doubler()
    batcher = Batcher(lambda b: predict_together(model, b), max_batch_size=8, batch_wait_timeout_s=0.05)
    batches = [np.ones((2, 2), np.float32), np.ones((1, 2), np.float64)]

    async def go():
        return await asyncio.gather(*(batcher.predict(b) for b in batches))

    assert [out.dtype for out in asyncio.run(go())] == [np.float32, np.float64]


class NamedRowSum:
    """Two named inputs, the second of free width: each row's sum of both."""

    def predict(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return batch["a"].sum(axis=1, keepdims=True) + batch["b"].sum(axis=1, keepdims=True)


def test_named_inputs_of_different_widths_are_each_answered():
    batcher = Batcher(lambda b: predict_together(NamedRowSum(), b), max_batch_size=8, batch_wait_timeout_s=0.05)
    batches = [{"a": np.ones((2, 2), np.float32), "b": np.ones((2, w), np.float32)} for w in (1, 4, 1)]

    async def go():
        return await asyncio.gather(*(batcher.predict(b) for b in batches))

    assert [out.ravel().tolist() for out in asyncio.run(go())] == [[3.0, 3.0], [6.0, 6.0], [3.0, 3.0]]


class _NotAnException(BaseException):
    """What a model's own code may raise that is no Exception (as asyncio.CancelledError is)."""


def test_a_model_raising_what_is_no_exception_fails_its_batch_not_every_later_request():
    """It ended the batcher's worker with the batch unanswered, and the next request's new
    worker dropped the requests queued meanwhile: each of them waited for good."""

    class Raises:
        def predict(self, batch):
            if (batch < 0).any():
                raise _NotAnException("the model's library gave up")
            return batch.sum(axis=1, keepdims=True)

    batcher = Batcher(lambda b: predict_together(Raises(), b), max_batch_size=2, batch_wait_timeout_s=0)
    batches = [np.full((1, 2), v, np.float32) for v in (-1.0, 1.0, 2.0, 3.0)]

    async def go():
        tasks = [asyncio.ensure_future(batcher.predict(b)) for b in batches]
        for _ in range(20):  # no timer: the loop's own turns answer every request
            await asyncio.sleep(0)
        return tasks, [task.done() for task in tasks]

    tasks, answered = asyncio.run(go())
    assert answered == [True] * 4
    assert [type(task.exception()) for task in tasks[:2]] == [RuntimeError, RuntimeError]
    assert "the model raised _NotAnException: the model's library gave up" in str(tasks[0].exception())
    np.testing.assert_array_equal(tasks[3].result(), np.full((1, 1), 6.0))
