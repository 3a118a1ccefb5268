"""Keeping the process small: glibc's allocator, tuned for block-sized buffers.

Every block allocates and frees a few buffers of about the block's size. glibc gives each
allocating thread (Dask's workers, zarr's codec threads) an arena of its own and keeps freed
memory in it, so peak RSS drifts up over a long run. One arena, trimmed after each block, keeps
the peak at a few blocks' worth whatever the image size (README, "Performance"). Elsewhere
than glibc these are no-ops.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

M_ARENA_MAX = -8


@functools.cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both must exist
    except (OSError, AttributeError):
        return None
    return libc


def use_one_arena() -> None:
    """One malloc arena for the whole process: for the convpipe command, before threads start."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, 1)


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
    the allocator holds at most ``slack`` bytes of it: memory kept is reused by the next
    block without being faulted in afresh (README, "Performance")."""
    libc = _libc()
    if libc is None:
        return
    if slack > 0:
        info = _mallinfo2()
        if info is not None and info().fordblks <= slack:
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
