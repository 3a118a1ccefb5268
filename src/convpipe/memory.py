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


def release_free_memory() -> None:
    """Return freed memory to the operating system (cheap: called once per block)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
