"""Pyramid levels for viewers: each level a 2x mean of the one before, block by block.

A level-k block reads the matching 2x region of level k-1 (never more), so each level
costs a read of the level below and a write of a quarter (an eighth, in 3-D) of it, in
bounded memory (``Plan.memory_per_block`` counts the 2^d blocks a task reads). At an odd
edge the last sample is the mean of the one sample there, as if it were repeated: no zeros
creep in from beyond the border.
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


def mean2(data: np.ndarray, halved: Sequence[int], dtype: np.dtype, nodata: float | None = None) -> np.ndarray:
    """The 2x mean of ``data`` along ``halved``, in ``dtype`` (integers rounded, as the chain's).

    With ``nodata`` (the output's nodata value; NaN: NaN only) the mean is over the samples of
    each cell that are not nodata, and a cell with none is nodata (README, "Nodata")."""
    if nodata is not None:
        return _valid_mean2(data, halved, dtype, nodata)
    result = data.astype(_work_dtype(data.dtype), copy=False)
    for axis in halved:
        n = result.shape[axis]
        first = result[(slice(None),) * axis + (slice(0, n - n % 2, 2),)]
        second = result[(slice(None),) * axis + (slice(1, n, 2),)]
        mean = (first + second) * 0.5
        if n % 2:  # the odd last sample, alone
            mean = np.concatenate([mean, result[(slice(None),) * axis + (slice(n - 1, n),)]], axis=axis)
        result = mean
    return to_dtype(result, dtype)


def _work_dtype(dtype: np.dtype) -> type:
    """float32 where it holds every value (8- and 16-bit integers, float32), else float64
    (README, "What it computes": 32-bit integers keep their value to the nearest integer)."""
    return np.float32 if np.can_cast(dtype, np.float32) else np.float64


def _valid_mean2(data: np.ndarray, halved: Sequence[int], dtype: np.dtype, nodata: float) -> np.ndarray:
    work = _work_dtype(data.dtype)
    valid = ~np.isnan(data) if data.dtype.kind == "f" else np.ones(data.shape, dtype=bool)
    if not np.isnan(nodata):
        valid &= data != nodata
    total = np.where(valid, data, 0).astype(work)
    count = valid.astype(work)
    for axis in halved:
        total, count = _pairs(total, axis), _pairs(count, axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    out = to_dtype(mean, dtype)
    out[count == 0] = nodata
    return out


def _pairs(values: np.ndarray, axis: int) -> np.ndarray:
    """Sums of neighbouring pairs along ``axis``; an odd last sample alone."""
    n = values.shape[axis]
    first = values[(slice(None),) * axis + (slice(0, n - n % 2, 2),)]
    second = values[(slice(None),) * axis + (slice(1, n, 2),)]
    summed = first + second
    if n % 2:
        summed = np.concatenate([summed, values[(slice(None),) * axis + (slice(n - 1, n),)]], axis=axis)
    return summed
