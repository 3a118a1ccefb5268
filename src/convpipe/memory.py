"""Keeping the process small: glibc's allocator, tuned for block-sized buffers.

Every block allocates and frees a few buffers of about the block's size. glibc gives each
allocating thread (Dask's workers, zarr's codec threads) an arena of its own and keeps freed
memory in it, so peak RSS drifts up over a long run. One arena, whose freed memory is kept for
the next blocks and trimmed after a block only beyond what they need, keeps the peak at a few
blocks' worth whatever the image size, without faulting the same memory in block after block
(README, "Performance"). Elsewhere than glibc these are no-ops.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: The largest M_MMAP_THRESHOLD glibc accepts on 64-bit systems (HEAP_MAX_SIZE / 2).
MMAP_THRESHOLD_MOST = 32 * 2**20
#: The heap's top goes back to the system at free() only beyond this (mallopt takes an int):
#: in practice never; release_free_memory decides when to.
TRIM_THRESHOLD_MOST = 2**31 - 1


@functools.cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both must exist
    except (OSError, AttributeError):
        return None
    return libc


def tune_allocator() -> None:
    """One malloc arena for the whole process, whose freed memory is kept for the next block:
    for the convpipe command, before threads start.

    Left to itself, glibc serves allocations over its mmap threshold (128 KiB at first, raised
    as such buffers are freed, to 32 MiB at most) with fresh mappings, and gives the top of the
    heap back to the system at free() once a few such buffers are free there. Either way the
    next block faults the same amount of memory in again, zeroed by the kernel page by page
    (on a virtual machine, often populated by the host too). Fixed here: buffers up to 32 MiB
    always come from the heap, and the heap shrinks only when release_free_memory says so.
    """
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, 1)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MOST)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_MOST)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


@functools.cache
def _mallinfo2() -> Any:
    libc = _libc()
    try:
        function = libc.mallinfo2  # glibc >= 2.33
    except AttributeError:
        return None
    function.restype = _MallInfo2
    return function


def release_free_memory(slack: int = 0) -> None:
    """Return freed memory to the operating system (cheap: called once per block), unless
    the allocator holds at most ``slack`` bytes of it, or no more than it has in use: memory
    kept is reused by the next blocks without being faulted in afresh (README, "Performance").

    What is in use when a block ends is the other blocks in flight, the chunk cache and the
    interpreter: the blocks that follow need as much again. Free memory beyond that is drift
    (fragmentation), and goes back, so the peak stays flat over a long run."""
    libc = _libc()
    if libc is None:
        return
    if slack > 0:
        info = _mallinfo2()
        if info is not None:
            heap = info()
            if heap.fordblks <= max(slack, heap.uordblks + heap.hblkhd):
                return
    libc.malloc_trim(0)


def available_bytes() -> int | None:
    """Memory this machine can still give a run without swapping (``MemAvailable``), or None
    where the system does not say."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
