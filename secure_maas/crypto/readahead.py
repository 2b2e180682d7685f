"""An artifact body's chunks, read from the file and hashed on a second thread ahead of use.

Opening an artifact does three things per chunk: copy it in from the file, feed it to the
ciphertext digest that the signature covers, and decrypt it. The first two need nothing from
the third, and all three release the GIL (file reads, BLAKE3, and AES-GCM in the `cryptography`
we install: two threads decrypting scale here), so a reader thread copies and hashes chunk i+1
while the caller decrypts chunk i. Where a core is free that hides the read and the hash
behind the decryption (they are about a third of an open's time on one core); where none is,
the work is the same as reading in line (bench/crypto.py measures both).

The reader never runs more than `DEPTH` chunks ahead, so the memory cost is `DEPTH` chunk
buffers, and it stops and is joined before `read_ahead` returns, whatever happened: nothing
touches the source or the digest after the caller's `with` block. A buffer is never larger
than the longest chunk actually read nor than what is left in the source: the lengths come
from an artifact's header before anything in it is authenticated, and a tiny file whose
header claims 64 MiB chunks must not cost 64 MiB buffers (issue 15.4).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from secure_maas.crypto.framing import InvalidArtifact, Source, read_exact

DEPTH = 3


@contextmanager
def read_ahead(
    src: Source, count: int, length: int, last_length: int, observe: Callable[[memoryview], object]
) -> Iterator[Iterator[memoryview]]:
    """Yield an iterator of `count` read-only views of the next bytes of `src`, in file order:
    `length` bytes each but the last, which has `last_length`.

    Each view has already been passed to `observe` and stays valid until the iterator is
    advanced again. A failed read (a truncated file) is raised by the iterator at the place
    where it happened, so a caller sees every earlier chunk first, exactly as reading in line.
    """
    lengths = _Lengths(count, length, last_length)
    views = [memoryview(bytearray(size)) for size in buffer_sizes(src, count, length, last_length)]
    free: queue.SimpleQueue[int] = queue.SimpleQueue()
    ready: queue.SimpleQueue[int | BaseException] = queue.SimpleQueue()
    stop = threading.Event()
    for slot in range(len(views)):
        free.put(slot)

    def reader() -> None:
        try:
            for length in lengths:
                slot = free.get()
                if stop.is_set():
                    return
                view = views[slot][:length]
                read_exact(src, view, "body")
                if len(view) < length:  # the source ended within this chunk: truncated here
                    raise InvalidArtifact("truncated", "body truncated")
                observe(view)
                ready.put(slot)
        except BaseException as exc:  # handed to the caller's thread, raised there
            ready.put(exc)

    def chunks() -> Iterator[memoryview]:
        for length in lengths:
            item = ready.get()
            if isinstance(item, BaseException):
                raise item
            with views[item][:length].toreadonly() as chunk:
                yield chunk
            free.put(item)

    thread = threading.Thread(target=reader, name="artifact-read-ahead", daemon=True)
    thread.start()
    try:
        yield chunks()
    finally:
        stop.set()
        free.put(-1)  # wakes a reader waiting for a free buffer; it then sees `stop`
        thread.join()


def buffer_sizes(src: Source, count: int, length: int, last_length: int) -> list[int]:
    """The sizes of the buffers `read_ahead` allocates: one per chunk in flight (at most
    `DEPTH`), each the longest chunk that will be read (`last_length` alone when there is one
    chunk), and never more than the source still holds: a chunk the source cannot hold fails
    as truncated when its turn comes, so a bigger buffer would only serve a lying header."""
    position = src.tell()
    left = max(0, src.seek(0, 2) - position)
    src.seek(position)
    longest = last_length if count <= 1 else max(length, last_length)
    return [min(longest, left)] * min(DEPTH, count)


class _Lengths:
    """The chunk lengths, computed on demand: a file may hold millions of small chunks."""

    def __init__(self, count: int, length: int, last_length: int) -> None:
        self.count, self.length, self.last_length = count, length, last_length

    def __iter__(self) -> Iterator[int]:
        for index in range(self.count):
            yield self.last_length if index == self.count - 1 else self.length
