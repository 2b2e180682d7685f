"""Micro-batching: merged calls, exact per-request results, splits, isolation of a bad request."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from secure_maas.dataplane.batcher import (
    BatcherClosed,
    BatchInfo,
    BatchRefused,
    MicroBatcher,
    QueueFull,
)
from secure_maas.registry.signature import TensorSpec

SPECS = [TensorSpec("x", (None, 3), "float32"), TensorSpec("k", (None,), "int64")]


class Model:
    """Records every call; can hold calls at a gate until the test opens it."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.entered.set()
        self.gate.wait(30)
        x = inputs["x"]
        if np.isnan(x).any():
            raise ValueError("NaN reached the model")
        self.calls.append(len(x))
        return {"total": x.sum(axis=1) + inputs["k"], "first": x[:, :1] * 2}


def request(seed: int, rows: int) -> dict[str, np.ndarray]:
    x = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3) + seed * 100
    return {"x": x, "k": np.full(rows, seed, dtype=np.int64)}


def expected(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    x = inputs["x"]
    return {"total": x.sum(axis=1) + inputs["k"], "first": x[:, :1] * 2}


def check(result: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> None:
    want = expected(inputs)
    assert set(result) == set(want)
    for name, value in want.items():
        np.testing.assert_array_equal(result[name], value)


@pytest.fixture
def model() -> Model:
    return Model()


@pytest.fixture
def make(model: Model) -> Iterator[Callable[..., MicroBatcher]]:
    made: list[MicroBatcher] = []

    def build(**options: Any) -> MicroBatcher:
        options.setdefault("specs", SPECS)
        batcher = MicroBatcher(model, name="test", **options)
        made.append(batcher)
        return batcher

    yield build
    model.gate.set()
    for batcher in made:
        batcher.close()


def run_all(batcher: MicroBatcher, requests: list[dict[str, np.ndarray]]) -> list[Any]:
    """Submit every request from its own thread at once; results (or errors) in order."""
    results: list[Any] = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def worker(index: int) -> None:
        start.wait()
        try:
            results[index] = batcher.submit(requests[index])
        except Exception as exc:  # collected for the test to inspect
            results[index] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def hold_first_call_until_queued(model: Model, batcher: MicroBatcher, requests: int) -> None:
    """Block the model's first call until `requests` submits are in, so the rest must merge."""
    model.gate.clear()

    def release() -> None:
        model.entered.wait(30)
        while batcher.stats().requests < requests:
            threading.Event().wait(0.005)
        model.gate.set()

    threading.Thread(target=release, daemon=True).start()


def test_concurrent_requests_share_calls_and_get_their_own_rows(
    model: Model, make: Callable[..., MicroBatcher]
) -> None:
    batcher = make(max_batch_size=64)
    requests = [request(seed, rows=seed % 3 + 1) for seed in range(12)]
    hold_first_call_until_queued(model, batcher, len(requests))
    results = run_all(batcher, requests)
    for result, inputs in zip(results, requests, strict=True):
        check(result, inputs)
    assert len(model.calls) <= 2 < len(requests)  # the first call, then everyone else at once
    assert sum(model.calls) == sum(len(r["x"]) for r in requests)
    stats = batcher.stats()
    assert stats.calls == len(model.calls) and stats.requests == 12 and stats.queued_rows == 0


def test_a_request_larger_than_the_batch_is_split_and_reassembled(
    model: Model, make: Callable[..., MicroBatcher]
) -> None:
    batcher = make(max_batch_size=4)
    inputs = request(7, rows=10)
    check(batcher.submit(inputs), inputs)
    assert model.calls == [4, 4, 2]
    assert batcher.stats().split_requests == 1


def test_a_failing_request_does_not_fail_its_batch_mates(
    model: Model, make: Callable[..., MicroBatcher]
) -> None:
    batcher = make(max_batch_size=64)
    requests = [request(seed, rows=2) for seed in range(6)]
    requests[3]["x"][1, 2] = np.nan  # passes the checks, makes the model raise
    hold_first_call_until_queued(model, batcher, len(requests))
    results = run_all(batcher, requests)
    for index, (result, inputs) in enumerate(zip(results, requests, strict=True)):
        if index == 3:
            assert isinstance(result, ValueError)
        else:
            check(result, inputs)
    assert batcher.stats().failed_calls >= 1


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"x": np.zeros((2, 3), np.float32)}, "expected inputs"),
        ({"x": np.zeros((2, 4), np.float32), "k": np.zeros(2, np.int64)}, "has shape"),
        ({"x": np.zeros((2, 3), np.float32), "k": np.zeros(3, np.int64)}, "same number of rows"),
        ({"x": np.zeros((0, 3), np.float32), "k": np.zeros(0, np.int64)}, "at least one row"),
        ({"x": np.zeros((2, 3), np.float32), "k": np.zeros(2, np.float64)}, "cannot be cast"),
        ({"x": np.zeros((2, 3), "U1"), "k": np.zeros(2, np.int64)}, "not a number"),
        ({"x": np.float32(1), "k": np.int64(1)}, "batch dimension"),
    ],
)
def test_requests_that_cannot_merge_are_refused_at_submit(
    model: Model, make: Callable[..., MicroBatcher], inputs: dict[str, Any], message: str
) -> None:
    batcher = make()
    with pytest.raises(BatchRefused, match=message):
        batcher.submit(inputs)
    assert model.calls == [] and batcher.stats().refused == 1


def test_without_specs_only_like_shapes_are_merged(model: Model) -> None:
    shapes: list[tuple[int, ...]] = []

    def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shapes.append(inputs["x"].shape)
        return model(inputs)

    batcher = MicroBatcher(predict, name="loose")
    try:
        wide = {"x": np.ones((1, 5), np.float32), "k": np.ones(1, np.int64)}
        requests = [request(1, 1), wide, request(2, 2), wide]
        hold_first_call_until_queued(model, batcher, len(requests))
        results = run_all(batcher, requests)
        for result, inputs in zip(results, requests, strict=True):
            check(result, inputs)
        assert {shape[1] for shape in shapes} == {3, 5}
    finally:
        batcher.close()


def test_close_drains_queued_requests_then_refuses(
    model: Model, make: Callable[..., MicroBatcher]
) -> None:
    batcher = make(max_batch_size=2)
    model.gate.clear()
    requests = [request(seed, rows=2) for seed in range(4)]
    results: list[Any] = [None] * 4
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, batcher.submit(requests[i])))
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    model.entered.wait(30)
    while batcher.stats().requests < 4:
        threading.Event().wait(0.005)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    model.gate.set()
    closer.join(30)
    for thread in threads:
        thread.join(30)
    for result, inputs in zip(results, requests, strict=True):
        check(result, inputs)
    assert batcher.closed
    with pytest.raises(BatcherClosed):
        batcher.submit(request(9, 1))


def test_bounded_queue_and_timeout(model: Model, make: Callable[..., MicroBatcher]) -> None:
    batcher = make(max_batch_size=2, max_queue_rows=4)
    model.gate.clear()
    first = threading.Thread(target=batcher.submit, args=(request(1, 2),))
    first.start()
    model.entered.wait(30)  # the first call holds 2 rows; the queue is empty again
    with pytest.raises(TimeoutError):
        batcher.submit(request(2, 4), timeout=0.05)  # waited, then dropped from the queue
    assert batcher.stats().queued_rows == 0
    waiting = threading.Thread(target=batcher.submit, args=(request(3, 4),))
    waiting.start()
    while batcher.stats().queued_rows < 4:
        threading.Event().wait(0.005)
    with pytest.raises(QueueFull):
        batcher.submit(request(4, 1))
    model.gate.set()
    first.join(30)
    waiting.join(30)
    assert batcher.stats().queue_full == 1


def test_a_request_that_times_out_while_waiting_for_mates_leaves_the_worker_running(
    model: Model, make: Callable[..., MicroBatcher]
) -> None:
    batcher = make(max_batch_size=2, max_wait_us=10_000_000, adaptive=False)
    with pytest.raises(TimeoutError):
        batcher.submit(request(1, 1), timeout=0.05)  # alone, it waits for a mate that never comes
    inputs = request(2, 2)  # a full batch goes at once
    check(batcher.submit(inputs, timeout=10), inputs)
    assert model.calls == [2]


def test_batch_hook_sees_every_call_and_cannot_break_the_worker(
    model: Model, make: Callable[..., MicroBatcher]
) -> None:
    seen: list[BatchInfo] = []

    def hook(info: BatchInfo) -> None:
        seen.append(info)
        raise RuntimeError("metrics backend down")

    batcher = make(max_batch_size=4, on_batch=hook)
    inputs = request(5, rows=6)
    check(batcher.submit(inputs), inputs)
    check(batcher.submit(inputs), inputs)  # the worker survived the hook's error
    assert [info.rows for info in seen] == [4, 2, 4, 2]
    assert all(info.ok and info.name == "test" and info.queue_wait_s >= 0 for info in seen)


def test_bad_settings_are_refused(model: Model) -> None:
    with pytest.raises(ValueError):
        MicroBatcher(model, max_batch_size=0)
    with pytest.raises(ValueError):
        MicroBatcher(model, max_batch_size=8, max_queue_rows=4)
