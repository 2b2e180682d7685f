"""Where an opened artifact's plaintext lives: private anonymous memory of its own.

A `bytearray` of the plaintext's size is zero-filled by CPython while it holds the GIL, which
on a 256 MiB model is as long as the whole decryption, and it goes back to the allocator rather
than the kernel when freed. A private anonymous mapping is zero without being written (its
pages are faulted in by the decryption itself, on a thread that has released the GIL), is
kept out of core dumps where the platform allows it, and is unmapped when `release`d, so the
kernel, not the next allocation, gets the pages back.
"""

from __future__ import annotations

import mmap

from secure_maas.crypto.framing import wipe


def allocate(length: int) -> mmap.mmap:
    """Private anonymous memory for `length` bytes of plaintext (a mapping has at least one)."""
    memory = mmap.mmap(-1, max(length, 1), flags=mmap.MAP_PRIVATE)
    if hasattr(mmap, "MADV_DONTDUMP"):  # Linux: a worker's core dump must not hold weights
        memory.madvise(mmap.MADV_DONTDUMP)
    return memory


def release(memory: mmap.mmap) -> None:
    """Unmap `memory`; if something still holds a view of it, zero it in place instead, so
    that the plaintext does not outlive its use either way."""
    if memory.closed:
        return
    try:
        memory.close()
    except BufferError:
        wipe(memory)
