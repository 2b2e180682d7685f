"""Micro-batching: concurrent requests to one model version become one model call.

Each `MicroBatcher` owns a worker thread and a bounded queue. `submit` puts a request's rows
on the queue and blocks until its slice of a merged call comes back. The worker takes the
oldest waiting request, adds every queued request that can be concatenated with it (same input
names, trailing shapes and dtypes) up to `max_batch_size` rows, waits up to `max_wait_us` from
the oldest request's arrival for more, then makes one call and splits the outputs back by
row. It waits only while requests overlap (one arrived while another was in flight during the
last second): a lone caller gains nothing from waiting, so batching costs it no latency.
`adaptive=False` always waits, as TF Serving's batcher does.

A request over `max_batch_size` rows is cut into parts that travel separately (and may share
calls with others); the caller gets the parts back joined. Requests are checked at `submit`,
so one that could never be merged is refused before it meets others; and if a merged call
raises, each member is run again alone, so only the culprit sees the error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from secure_maas.errors import SecureMaasError
from secure_maas.registry.signature import STRING, TensorSpec, numpy_dtype_name

Array = npt.NDArray[Any]

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_WAIT_US = 2000
DEFAULT_MAX_QUEUE_ROWS = 4096
#: How long after the last overlapping arrival the worker still waits for batch-mates.
OVERLAP_WINDOW_S = 1.0

PredictFn = Callable[[dict[str, Array]], Mapping[str, Array]]


class BatchRefused(SecureMaasError):
    """The request's arrays do not fit the model (names, ranks, fixed dimensions, dtypes)."""


class QueueFull(SecureMaasError):
    """Too many rows are waiting for this model; the caller should retry later (503/429)."""


class BatcherClosed(SecureMaasError):
    """The batcher is shutting down (the model was unloaded); retry on a fresh one."""


@dataclass(frozen=True)
class BatchInfo:
    """What one model call did, for metrics: sent to `on_batch` after every call."""

    name: str
    requests: int  # parts merged into this call (a split request counts once per part)
    rows: int
    queue_wait_s: float  # how long the oldest part waited before the call started
    duration_s: float
    ok: bool  # False when the merged call raised (its members were then run alone)
    queue_wait_total_s: float = 0.0  # how long the parts waited before the call, all together


@dataclass
class BatcherStats:
    """Counters since the batcher started (read with `MicroBatcher.stats()`)."""

    requests: int = 0
    rows: int = 0
    calls: int = 0
    failed_calls: int = 0
    retried_parts: int = 0
    split_requests: int = 0
    refused: int = 0
    queue_full: int = 0
    queued_rows: int = 0


class _Part:
    """Rows of one request waiting for their outputs."""

    __slots__ = ("done", "enqueued", "error", "inputs", "key", "outputs", "rows")

    def __init__(self, inputs: dict[str, Array], key: tuple[Any, ...], now: float) -> None:
        self.inputs = inputs
        self.key = key
        self.rows = int(next(iter(inputs.values())).shape[0])
        self.enqueued = now
        self.done = threading.Event()
        self.outputs: dict[str, Array] | None = None
        self.error: BaseException | None = None


@dataclass
class _State:
    queue: deque[_Part] = field(default_factory=deque)
    queued_rows: int = 0
    inside: int = 0  # callers currently in submit()
    last_overlap: float = float("-inf")  # last arrival while another request was in flight
    closed: bool = False


class MicroBatcher:
    """Merges concurrent `submit` calls into calls of `predict_fn` on one worker thread.

    `specs` (the model's input specs) make `submit` refuse arrays the model cannot take and
    cast the rest to the model's dtypes (numpy "same_kind"); without them requests are only
    grouped by shape and dtype, so incompatible ones are never merged. `on_batch` receives a
    `BatchInfo` after every model call (for metrics); it runs on the worker thread and its
    errors are logged, never raised. `clock` is for tests.
    """

    def __init__(
        self,
        predict_fn: PredictFn,
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_wait_us: int = DEFAULT_MAX_WAIT_US,
        max_queue_rows: int = DEFAULT_MAX_QUEUE_ROWS,
        adaptive: bool = True,
        name: str = "model",
        specs: Sequence[TensorSpec] | None = None,
        on_batch: Callable[[BatchInfo], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch_size < 1 or max_wait_us < 0 or max_queue_rows < max_batch_size:
            raise ValueError(
                "need max_batch_size >= 1, max_wait_us >= 0 and max_queue_rows >= max_batch_size"
            )
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_us / 1_000_000
        self.max_queue_rows = max_queue_rows
        self.adaptive = adaptive
        self._predict = predict_fn
        self._specs = {spec.name: spec for spec in specs} if specs is not None else None
        self._on_batch = on_batch
        self._clock = clock
        self._state = _State()
        self._stats = BatcherStats()
        self._cond = threading.Condition()
        self._worker = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._worker.start()

    # -- callers ---------------------------------------------------------------------------

    def submit(
        self, inputs: Mapping[str, Array], *, timeout: float | None = None
    ) -> dict[str, Array]:
        """Run the model on `inputs` (arrays by input name, batch first) and return its outputs.

        Raises `BatchRefused` for arrays the model cannot take, `QueueFull` when too many rows
        wait, `BatcherClosed` after `close()`, `TimeoutError` if `timeout` seconds pass first
        (the rows are then dropped if not yet running), or whatever the model call raised.
        """
        arrays = self._check(inputs)
        key = tuple((n, a.shape[1:], a.dtype.str) for n, a in sorted(arrays.items()))
        rows = int(next(iter(arrays.values())).shape[0])
        with self._cond:
            state = self._state
            if state.closed:
                raise BatcherClosed(f"model {self.name} is being unloaded; retry the request")
            if state.queued_rows + rows > self.max_queue_rows:
                self._stats.queue_full += 1
                raise QueueFull(f"too many requests are waiting for model {self.name}")
            now = self._clock()
            if state.inside:
                state.last_overlap = now
            step = self.max_batch_size
            parts = [
                _Part({n: a[start : start + step] for n, a in arrays.items()}, key, now)
                for start in range(0, rows, step)
            ]
            state.queue.extend(parts)
            state.queued_rows += rows
            state.inside += 1
            self._stats.requests += 1
            self._stats.rows += rows
            self._stats.split_requests += len(parts) > 1
            self._cond.notify_all()
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            for part in parts:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not part.done.wait(left):
                    self._drop(parts)
                    raise TimeoutError(f"model {self.name} did not answer in {timeout} s")
        finally:
            with self._cond:
                state.inside -= 1
        for part in parts:
            if part.error is not None:
                raise part.error
        outputs = [part.outputs for part in parts if part.outputs is not None]
        if len(outputs) == 1:
            return outputs[0]
        return {name: np.concatenate([out[name] for out in outputs]) for name in outputs[0]}

    def _check(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        arrays = {name: np.asarray(value) for name, value in inputs.items()}
        problem = _problem(arrays, self._specs)
        if problem is None and self._specs is not None:
            try:
                arrays = {
                    name: array.astype(
                        numpy_dtype_name(self._specs[name].dtype), casting="same_kind", copy=False
                    )
                    for name, array in arrays.items()
                }
            except TypeError:
                problem = "an input's dtype cannot be cast to the model's"
        if problem is not None:
            with self._cond:
                self._stats.refused += 1
            raise BatchRefused(f"model {self.name}: {problem}")
        return arrays

    def _drop(self, parts: list[_Part]) -> None:
        with self._cond:
            for part in parts:
                if part in self._state.queue:
                    self._state.queue.remove(part)
                    self._state.queued_rows -= part.rows
            self._cond.notify_all()

    def stats(self) -> BatcherStats:
        """A copy of the counters."""
        with self._cond:
            copy = BatcherStats(**vars(self._stats))
            copy.queued_rows = self._state.queued_rows
        return copy

    def close(self, *, wait: bool = True, timeout: float | None = None) -> None:
        """Refuse new requests, finish every queued one, then stop the worker thread."""
        with self._cond:
            self._state.closed = True
            self._cond.notify_all()
        if wait and threading.current_thread() is not self._worker:
            self._worker.join(timeout)

    @property
    def closed(self) -> bool:
        return self._state.closed

    # -- worker ----------------------------------------------------------------------------

    def _run(self) -> None:
        batch: list[_Part] = []
        try:
            while True:
                found = self._next_batch()
                if found is None:
                    return
                batch = found
                self._execute(batch)
        except BaseException:  # the worker is dying: nobody may be left waiting
            with self._cond:
                self._state.closed = True
                stranded = [*batch, *self._state.queue]
                self._state.queue.clear()
                self._state.queued_rows = 0
            for part in stranded:
                if not part.done.is_set():
                    part.error = BatcherClosed(f"the worker of model {self.name} stopped")
                    part.done.set()
            raise

    def _next_batch(self) -> list[_Part] | None:
        """The oldest part and every compatible part after it, up to `max_batch_size` rows;
        None once closed and drained."""
        with self._cond:
            state = self._state
            while True:
                while not state.queue:
                    if state.closed:
                        return None
                    self._cond.wait()
                first = state.queue[0]
                deadline = first.enqueued + self.max_wait_s
                while True:
                    batch = self._gather(first)
                    if not batch:  # `first` timed out and left the queue: start again
                        break
                    now = self._clock()
                    crowded = not self.adaptive or now - state.last_overlap < OVERLAP_WINDOW_S
                    full = sum(part.rows for part in batch) >= self.max_batch_size
                    if full or state.closed or not crowded or now >= deadline:
                        for part in batch:
                            state.queue.remove(part)
                            state.queued_rows -= part.rows
                        return batch
                    self._cond.wait(deadline - now)

    def _gather(self, first: _Part) -> list[_Part]:
        if first not in self._state.queue:
            return []
        batch, rows = [], 0
        for part in self._state.queue:
            if part.key == first.key and rows + part.rows <= self.max_batch_size:
                batch.append(part)
                rows += part.rows
                if rows == self.max_batch_size:
                    break
        return batch

    def _execute(self, batch: list[_Part]) -> None:
        started = self._clock()
        waited = started - min(part.enqueued for part in batch)
        ok = True
        try:
            outputs = self._call(batch)
        except Exception as exc:  # the model's own error; rerun members alone, below
            ok = False
            if len(batch) == 1:
                batch[0].error = exc
            else:
                log.info(
                    "merged call of %d parts failed on %s; running each alone",
                    len(batch),
                    self.name,
                )
                for part in batch:
                    try:
                        part.outputs = self._call([part])[0]
                    except Exception as own:  # delivered to this part's caller only
                        part.error = own
        else:
            for part, result in zip(batch, outputs, strict=True):
                part.outputs = result
        duration = self._clock() - started
        with self._cond:
            self._stats.calls += 1
            self._stats.failed_calls += not ok
            self._stats.retried_parts += 0 if ok or len(batch) == 1 else len(batch)
        for part in batch:
            part.done.set()
        if self._on_batch is not None:
            info = BatchInfo(
                self.name,
                len(batch),
                sum(p.rows for p in batch),
                waited,
                duration,
                ok,
                sum(started - part.enqueued for part in batch),
            )
            try:
                self._on_batch(info)
            except Exception:  # a metrics hook must never stop the worker
                log.exception("batch hook of %s failed", self.name)

    def _call(self, batch: list[_Part]) -> list[dict[str, Array]]:
        """One model call over `batch`, split back into one output dict per part."""
        if len(batch) == 1:
            merged = batch[0].inputs
        else:
            merged = {
                name: np.concatenate([part.inputs[name] for part in batch])
                for name in batch[0].inputs
            }
        rows = sum(part.rows for part in batch)
        raw = self._predict(merged)
        outputs = {name: np.asarray(value) for name, value in raw.items()}
        wrong = {name: a.shape for name, a in outputs.items() if a.ndim == 0 or a.shape[0] != rows}
        if wrong:
            raise RuntimeError(f"model {self.name} returned {wrong} for a batch of {rows} rows")
        if len(batch) == 1:
            return [outputs]
        results, start = [], 0
        for part in batch:
            end = start + part.rows
            results.append({name: value[start:end] for name, value in outputs.items()})
            start = end
        return results


def _problem(arrays: dict[str, Array], specs: dict[str, TensorSpec] | None) -> str | None:
    """Why `arrays` cannot be a request to this model, or None."""
    if not arrays:
        return "a request needs at least one input"
    if any(array.ndim == 0 for array in arrays.values()):
        return "every input needs a batch dimension"
    if len({array.shape[0] for array in arrays.values()}) > 1:
        return "all inputs must have the same number of rows"
    if next(iter(arrays.values())).shape[0] == 0:
        return "a request needs at least one row"
    if specs is None:
        return None
    if set(arrays) != set(specs):
        return f"expected inputs {sorted(specs)}, got {sorted(arrays)}"
    for name, array in arrays.items():
        spec = specs[name]
        if array.ndim != len(spec.shape) or any(
            want is not None and got != want
            for got, want in zip(array.shape[1:], spec.shape[1:], strict=True)
        ):
            return f"input {name!r} has shape {array.shape}, the model takes {spec.shape}"
        if spec.dtype == STRING:
            if array.dtype.kind != "O" or not all(type(v) is bytes for v in array.flat):
                return f"input {name!r} takes strings (bytes), not {array.dtype}"
        elif array.dtype.kind not in "biuf":
            return f"input {name!r} has dtype {array.dtype}, not a number"
    return None
