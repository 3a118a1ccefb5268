"""Pyramid levels for viewers: each level a 2x mean of the one before, block by block.

A level-k block reads the matching 2x region of level k-1 (never more), so the pyramid
costs one more pass over a quarter (an eighth, in 3-D) of the output per level, in the
same bounded memory as the chain. At an odd edge the last sample is the mean of the one
sample there, as if it were repeated: no zeros creep in from beyond the border.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from convpipe.block import to_dtype


def source_bounds(
    bounds: Sequence[tuple[int, int]], halved: Sequence[int], source_shape: Sequence[int]
) -> tuple[tuple[int, int], ...]:
    """The region of the level below that a block of this level averages."""
    return tuple(
        (2 * start, min(2 * stop, n)) if d in halved else (start, stop)
        for d, ((start, stop), n) in enumerate(zip(bounds, source_shape, strict=True))
    )


def mean2(data: np.ndarray, halved: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """The 2x mean of ``data`` along ``halved``, in ``dtype`` (integers rounded, as the chain's)."""
    result = data.astype(np.float64 if data.dtype == np.float64 else np.float32)
    for axis in halved:
        if result.shape[axis] % 2:
            last = np.take(result, [-1], axis=axis)
            result = np.concatenate([result, last], axis=axis)
        pairs = list(result.shape)
        pairs[axis : axis + 1] = [pairs[axis] // 2, 2]
        result = result.reshape(pairs).mean(axis=axis + 1)
    return to_dtype(result, dtype)
