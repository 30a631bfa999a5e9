"""Dynamic batching of concurrent ``predict`` calls: plain asyncio, no Ray.

A version's replicas (``serve_ab.serving.runtime.LoadedVersion``, colocated or isolated)
put each request's rows through a :class:`Batcher`: the first request of a batch waits up
to ``batch_wait_timeout_s`` for others to join it, at most ``max_batch_size`` requests go
to the model in one call, and each caller gets back its own rows. It is the same policy
as Ray Serve's ``@serve.batch`` (one batch at a time, run on the replica's event loop),
kept here so that ``benchmarks/gpu_check.py --no-ray`` times the code the replicas run on
a machine where Ray cannot be installed.

Example::

    batcher = Batcher(partial(predict_together, predictor), max_batch_size=16,
                      batch_wait_timeout_s=0.002, on_batch=sizes.append)
    rows_out = await batcher.predict(rows_in)   # from many tasks at once
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from serve_ab.backends.base import Batch, Predictor, batch_size, concat_batches, split_outputs
from serve_ab.errors import BadOutput

__all__ = ["Batcher", "predict_together"]

logger = logging.getLogger(__name__)


def predict_together(predictor: Predictor, batches: list[Batch]) -> list[Batch | Exception]:
    """One model call for several requests' rows; each request gets its own rows back. A
    multi-input (or multi-output) model's batches are ``{name: array}``, cut per name.

    Requests whose rows cannot be stacked (an input with a free dimension, ``[-1, -1]``,
    sent with 3 columns by one request and 5 by another) go to the model in one call per
    shape: stacked, the whole batch would fail for a mix no request of it got wrong. For the
    same reason a stacked call the model raises for is made again for each request alone
    (:func:`_predict_each`), and so is one whose answer does not have the batch's rows (a
    model that drops a row it cannot score): the request it refuses fails, its neighbours
    are answered; a model failing every call is asked three times more, not once per request."""
    if len(batches) == 1:
        return [predictor.predict(batches[0])]
    first = _row_shape(batches[0])
    if any(_row_shape(b) != first for b in batches[1:]):
        return _predict_by_row_shape(predictor, batches)
    try:
        outputs = predictor.predict(concat_batches(batches))
    except Exception:  # noqa: BLE001 - asked again request by request, below
        return _predict_each(predictor, batches)
    sizes = [batch_size(b) for b in batches]
    # Checked before cutting: outputs with a row too few or too many would hand one
    # request's rows to another (or none at all), each cut looking plausible on its own.
    # Such an answer is asked for again request by request, as a call that raised is: a
    # model that drops the row it cannot score failed every request of its batch, each
    # counted as the version's error and sent to the fallback (16 for one at a batch of 16).
    if _miscounted(outputs, sum(sizes)) is not None:
        return _predict_each(predictor, batches)
    return split_outputs(outputs, sizes)


def _miscounted(outputs: Batch, rows: int) -> str | None:
    """What is wrong with ``outputs`` for ``rows`` input rows, if anything: not arrays of one
    row per input row."""
    for array in (outputs.values() if isinstance(outputs, dict) else (outputs,)):
        if not getattr(array, "ndim", 0):
            return f"{type(array).__name__}, not an array of one row per input row"
        if array.shape[0] != rows:
            return f"{array.shape[0]} rows for {rows} input rows"
    return None


#: Requests of a failed stacked call asked alone before a model failing each the same way is
#: suspected of failing every call: two, so that one refused request first in the batch is
#: not taken for a model that is down.
PROBES_BEFORE_GIVING_UP = 2


def _predict_each(predictor: Predictor, batches: list[Batch]) -> list[Batch | Exception]:
    """Each request's rows alone, after the model raised for them stacked (or answered them
    with another number of rows, checked here for each request too): a model that
    refuses one request's values (raising for the whole call) would otherwise fail every
    request batched with it, each of which it answers alone (live: 45 such requests in 600
    at concurrency 16 took 323 others down with them, 502s).

    Unless the first requests asked alone all fail with the same error (its type and text):
    the model may then be failing every call (a dependency down, a broken device), and the
    rest of the batch is asked in one call (:func:`_predict_rest`), not one call each. Asking
    each of them held the replica's loop, on which the batch runs, for a call per request, at
    the speed the model fails: a model that fails after 50 ms held it 0.95 s for a batch of 16
    (17 calls), not 0.05 s, and the colocated router's every version waited."""
    results: list[Batch | Exception] = []
    same: list[Exception] = []  # the first requests' errors, while each is the one before's
    for i, batch in enumerate(batches):
        if len(same) == PROBES_BEFORE_GIVING_UP:
            return results + _predict_rest(predictor, batches[i:], same[-1])
        try:
            results.append(_predict_alone(predictor, batch))
        except Exception as err:  # noqa: BLE001 - this request fails, its neighbours are answered
            results.append(err)
            if len(results) == len(same) + 1 and all(_same_error(err, e) for e in same):
                same.append(err)
    return results


def _predict_alone(predictor: Predictor, batch: Batch) -> Batch:
    outputs = predictor.predict(batch)
    wrong = _miscounted(outputs, batch_size(batch))
    if wrong is not None:
        raise BadOutput(f"the model answered {wrong}, asked for this request's rows alone")
    return outputs


def _predict_rest(predictor: Predictor, rest: list[Batch], probed: Exception) -> list[Batch | Exception]:
    """The requests after the first ones asked alone, which all failed as ``probed``: asked in
    one call. The same error twice need not mean the model is down: a message that does not
    name the value (sklearn's 'Input X contains NaN.', a one-row request's row left out: '0
    rows for 1 input rows') is the same for every request refused for it, and the rest of a
    batch whose first two were refused got their error unasked (8 of 8 failed for 2 refused).
    Answered, the rest are served; failed the same way (the same error, or rows miscounted
    after miscounted ones), they get ``probed``, as from a model failing every call: 4 calls a
    batch, whatever its size. A rest that holds a request refused alike fails with it (the
    price of not asking each); failed in another way, each is asked alone, by the same rule."""
    if len(rest) == 1:  # its own call is the one asked alone
        try:
            return [_predict_alone(predictor, rest[0])]
        except Exception as err:  # noqa: BLE001 - this request fails alone
            return [err]
    try:
        outputs = predictor.predict(concat_batches(rest))
    except Exception as err:  # noqa: BLE001 - judged below: the model down, or something else
        if _same_error(err, probed):
            return [probed] * len(rest)
        return _predict_each(predictor, rest)
    if _miscounted(outputs, sum(batch_size(b) for b in rest)) is not None:
        return [probed] * len(rest) if isinstance(probed, BadOutput) else _predict_each(predictor, rest)
    return split_outputs(outputs, [batch_size(b) for b in rest])


def _same_error(a: BaseException, b: BaseException) -> bool:
    return type(a) is type(b) and str(a) == str(b)


def _row_shape(batch: Batch) -> object:
    """What two requests' rows must share to be stacked: each input's shape past the batch
    dimension, and its dtype."""
    if isinstance(batch, dict):
        return tuple((name, array.shape[1:], array.dtype) for name, array in batch.items())
    return batch.shape[1:], batch.dtype


def _predict_by_row_shape(predictor: Predictor, batches: list[Batch]) -> list[Batch]:
    groups: dict[object, list[int]] = {}
    for i, batch in enumerate(batches):
        groups.setdefault(_row_shape(batch), []).append(i)
    results: list[Batch | Exception] = [None] * len(batches)  # type: ignore[list-item]
    for indices in groups.values():
        try:
            outputs: list[Batch | Exception] = predict_together(predictor, [batches[i] for i in indices])
        except Exception as err:  # noqa: BLE001 - that shape's requests fail, the others are answered
            outputs = [err] * len(indices)
        for i, output in zip(indices, outputs):
            results[i] = output
    return results  # type: ignore[return-value]


class Batcher:
    """Queues concurrent calls and hands them to ``run_batch`` together.

    ``run_batch`` takes the waiting requests' arrays (at most ``max_batch_size``) and
    returns one result per request, in order, or an exception in a request's place to fail
    that one; an exception raised fails every request of that batch and no other. It runs
    inline on the event loop, as ``@serve.batch`` runs a replica's batch: a model that
    answers in milliseconds gains nothing from a thread hop.
    """

    def __init__(self, run_batch: Callable[[list[Batch]], list[Batch]], *,
                 max_batch_size: int, batch_wait_timeout_s: float,
                 on_batch: Callable[[int], None] | None = None):
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be a positive integer; got {max_batch_size!r} "
                             "(e.g. max_batch_size=16)")
        if not batch_wait_timeout_s >= 0:
            raise ValueError(f"batch_wait_timeout_s must be >= 0; got {batch_wait_timeout_s!r} "
                             "(e.g. batch_wait_timeout_s=0.002)")
        self.run_batch = run_batch
        #: Told each batch's number of requests once they have their answers (a metric).
        self.on_batch = on_batch
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        #: Batches run and requests answered so far (what a benchmark checks batches fill).
        self.batches_run = 0
        self.requests_run = 0
        self._pending: deque[tuple[Batch, asyncio.Future]] = deque()
        # What the worker awaits: the first request when idle, then a full batch or the
        # deadline, whichever comes first. One future and one timer per batch, woken once:
        # waiting with asyncio.wait_for on an event, as @serve.batch does, costs a task and
        # a timer for every request that joins a batch.
        self._wakeup: asyncio.Future | None = None
        self._worker: asyncio.Task | None = None

    async def predict(self, batch: Batch) -> Batch:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            # First call, or a new event loop (a test's asyncio.run): the old loop's
            # futures can never be answered, so they are dropped with it. A worker of this
            # loop that ended leaves its queue to the new one.
            if self._worker is not None and self._worker.get_loop() is not loop:
                self._pending.clear()
            self._wakeup = None
            self._worker = loop.create_task(self._work())
        future = loop.create_future()
        self._pending.append((batch, future))
        # The worker waits for the first request of a batch, then for the batch to fill.
        if len(self._pending) == 1 or len(self._pending) >= self.max_batch_size:
            self._wake()
        return await future

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup = loop.create_future()
                await self._wakeup  # the first request of the next batch
            if len(self._pending) < self.max_batch_size and self.batch_wait_timeout_s > 0:
                self._wakeup = loop.create_future()
                deadline = loop.call_later(self.batch_wait_timeout_s, self._wake)
                try:
                    await self._wakeup  # a full batch, or the deadline
                finally:
                    deadline.cancel()
            self._wakeup = None
            taken = [self._pending.popleft()
                     for _ in range(min(self.max_batch_size, len(self._pending)))]
            taken = [(batch, future) for batch, future in taken if not future.cancelled()]
            self._run(taken)
            if taken and self.on_batch is not None:
                self._tell(len(taken))

    def _tell(self, requests: int) -> None:
        """``on_batch``, after the batch's answers (its callers do not wait for it). A metric
        that fails must not end the worker: the requests queued behind would wait for good."""
        try:
            self.on_batch(requests)
        except Exception:  # noqa: BLE001 - logged once, and the batches go on untold
            logger.exception("serve-ab batcher: recording a batch's size failed; no more are recorded")
            self.on_batch = None

    def _run(self, taken: list[tuple[Batch, asyncio.Future]]) -> None:
        if not taken:
            return
        try:
            outputs = self.run_batch([batch for batch, _ in taken])
            if len(outputs) != len(taken):
                raise RuntimeError(f"run_batch returned {len(outputs)} results for {len(taken)} "
                                   "requests; it must return one per request, in order")
        except Exception as err:  # noqa: BLE001 - every caller of this batch gets the error
            for _, future in taken:
                if not future.done():
                    future.set_exception(err)
            return
        except BaseException as err:
            # Not an Exception (SystemExit from a model's library, asyncio.CancelledError
            # raised by its own code): it ended this worker with the batch unanswered, and
            # the next request's new worker dropped the requests queued behind it, every one
            # of them waiting for good. Each gets a model error (a 502) naming it.
            failed = RuntimeError(f"the model raised {type(err).__name__}: {err}")
            for _, future in taken:
                if not future.done():
                    future.set_exception(failed)
            if isinstance(err, (KeyboardInterrupt, SystemExit)):
                raise  # the process is asked to stop: so it does, with this batch answered
            return
        self.batches_run += 1
        for (_, future), output in zip(taken, outputs):
            # An exception in place of a result fails that request alone (a batch run in one
            # call per row shape, one of whose calls failed: predict_together).
            failed = isinstance(output, Exception)
            self.requests_run += not failed
            if future.done():
                continue
            if failed:
                future.set_exception(output)
            else:
                future.set_result(output)
