"""Reading an artifact's chunks ahead on a second thread: same bytes, same order, same errors
as reading in line, bounded memory (by the source, not by claimed lengths), and no
thread or read left behind."""

from __future__ import annotations

import io
import os
import threading
import tracemalloc

import pytest

from secure_maas.crypto import InvalidArtifact
from secure_maas.crypto.readahead import DEPTH, buffer_sizes, read_ahead


def _alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "artifact-read-ahead"]


@pytest.mark.parametrize(("count", "length", "last"), [(1, 0, 16), (1, 7, 7), (9, 64, 5)])
def test_chunks_arrive_in_order_each_observed_first(count: int, length: int, last: int) -> None:
    data = os.urandom((count - 1) * length + last)
    seen: list[bytes] = []
    got: list[bytes] = []
    with read_ahead(io.BytesIO(data), count, length, last, lambda v: seen.append(bytes(v))) as it:
        for chunk in it:
            assert chunk.readonly
            got.append(bytes(chunk))
            assert seen[: len(got)] == got  # observed before it was handed out
    assert b"".join(got) == data and seen == got
    assert [len(c) for c in got] == [length] * (count - 1) + [last]
    assert not _alive()


def test_truncation_is_raised_where_it_happened() -> None:
    data = os.urandom(64 * 3 + 10)  # chunk 3 of 5 is short
    got: list[bytes] = []
    reading = read_ahead(io.BytesIO(data), 5, 64, 64, lambda v: None)
    with pytest.raises(InvalidArtifact) as caught, reading as it:
        for chunk in it:
            got.append(bytes(chunk))
    assert caught.value.code == "truncated" and b"".join(got) == data[: 64 * 3]
    assert not _alive()


def test_a_caller_that_stops_leaves_no_reader_behind() -> None:
    source = io.BytesIO(os.urandom(64 * 100))
    with read_ahead(source, 100, 64, 64, lambda v: None) as it:
        next(it)
        next(it)
    position = source.tell()
    assert position <= 64 * (2 + DEPTH)  # never more than DEPTH chunks ahead
    assert not _alive() and source.tell() == position


def test_an_error_in_the_caller_stops_the_reader() -> None:
    source = io.BytesIO(os.urandom(64 * 100))
    with pytest.raises(RuntimeError), read_ahead(source, 100, 64, 64, lambda v: None) as it:
        next(it)
        raise RuntimeError("decryption failed")
    assert not _alive() and source.tell() <= 64 * (1 + DEPTH)


def test_chunk_lengths_are_not_materialised() -> None:
    """A file of a billion 1-byte chunks must not cost a billion-entry list up front."""
    with read_ahead(io.BytesIO(b"abc"), 10**9, 1, 1, lambda v: None) as it:
        assert [bytes(next(it)) for _ in range(3)] == [b"a", b"b", b"c"]
    assert not _alive()


def test_buffers_are_bounded_by_the_source_and_the_chunks_read() -> None:
    source = io.BytesIO(b"x" * 300)
    source.seek(100)
    assert buffer_sizes(source, 5, 64 << 20, 64 << 20) == [200] * DEPTH
    assert source.tell() == 100  # sizing does not move the reader
    assert buffer_sizes(source, 1, 64 << 20, 26) == [26]  # one chunk: only its length
    assert buffer_sizes(source, 2, 64, 10) == [64, 64]
    assert buffer_sizes(source, 0, 64, 64) == []


def test_three_claimed_64_mib_chunks_in_a_tiny_source_cost_no_64_mib_buffers() -> None:
    """Sized by the source: a 100-byte source never costs three 64 MiB buffers."""
    data = os.urandom(100)
    got: list[bytes] = []
    tracemalloc.start()
    try:
        reading = read_ahead(io.BytesIO(data), 3, 64 << 20, 64 << 20, lambda v: None)
        with pytest.raises(InvalidArtifact) as caught, reading as it:
            got.extend(bytes(chunk) for chunk in it)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.code == "truncated" and got == [] and peak < 256 << 10
    assert not _alive()
