"""The plaintext's own memory: zero until written, out of core dumps, unmapped on release."""

from __future__ import annotations

import ctypes
import mmap
from pathlib import Path

import pytest

from secure_maas.crypto import plainmem


def _vm_flags(memory: mmap.mmap) -> set[str]:
    """The kernel's VmFlags for the mapping that holds `memory` (Linux /proc/self/smaps)."""
    with memoryview(memory) as view:
        address = ctypes.addressof(ctypes.c_char.from_buffer(view))
    current: tuple[int, int] | None = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            low, high = (int(part, 16) for part in head.split("-"))
            current = (low, high)
        elif line.startswith("VmFlags:") and current and current[0] <= address < current[1]:
            return set(line.split()[1:])
    raise AssertionError("mapping not found in /proc/self/smaps")


def test_fresh_memory_is_zero_and_of_the_asked_size() -> None:
    memory = plainmem.allocate(3 * mmap.PAGESIZE + 5)
    assert len(memory) == 3 * mmap.PAGESIZE + 5 and not any(memory[:])
    plainmem.release(memory)
    empty = plainmem.allocate(0)  # a mapping cannot be empty; the caller slices to 0 bytes
    assert len(empty) == 1
    plainmem.release(empty)


@pytest.mark.skipif(not hasattr(mmap, "MADV_DONTDUMP"), reason="MADV_DONTDUMP is Linux-only")
def test_memory_is_kept_out_of_core_dumps_and_may_use_huge_pages() -> None:
    memory = plainmem.allocate(8 << 20)
    try:
        flags = _vm_flags(memory)
        assert "dd" in flags  # VM_DONTDUMP
        if Path("/sys/kernel/mm/transparent_hugepage/enabled").exists():
            assert "hg" in flags  # VM_HUGEPAGE: the kernel may back it with 2 MiB pages
    finally:
        plainmem.release(memory)


def test_release_unmaps() -> None:
    memory = plainmem.allocate(100)
    memory[:5] = b"model"
    plainmem.release(memory)
    assert memory.closed
    plainmem.release(memory)  # twice is harmless


def test_release_zeroes_what_it_cannot_unmap() -> None:
    memory = plainmem.allocate(100)
    memory[:] = b"w" * 100
    view = memoryview(memory)  # someone still holds the plaintext
    plainmem.release(memory)
    assert not memory.closed and view.tobytes() == bytes(100)
    view.release()
    plainmem.release(memory)
    assert memory.closed
