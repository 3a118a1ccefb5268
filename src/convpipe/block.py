"""One output block of a whole chain, computed from the input samples it depends on.

This is the fused kernel: the block reads its input once (with the halo of the whole chain),
then each step gathers its padded windows from what the previous step produced and runs its
operation. Each step pads its own input exactly as numpy.pad would pad the whole
intermediate image, so the block equals the whole-image result whatever the chunking.
Plain numpy: the engine runs it inside Dask tasks, the tests call it directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from convpipe.geometry import axis_gather, axis_needs
from convpipe.ops import apply_op
from convpipe.plan import StepPlan

Reader = Callable[[Sequence[np.ndarray]], np.ndarray]
ValueRange = tuple[float, float]


def needed_indices(steps: Sequence[StepPlan], block: Sequence[tuple[int, int]]) -> list[list[np.ndarray]]:
    """Per step, per axis: the indices of that step's input the block depends on.

    Entry ``k`` is for step k's input; the last entry is the block itself (the chain's output).
    Near a border the padding folds positions back into the image, so these are index sets,
    not always ranges (``wrap`` needs the far side of the image).
    """
    wanted = [np.arange(start, stop) for start, stop in block]
    needs = [wanted]
    for step in reversed(steps):
        padding = step.config.padding
        wanted = [axis_needs(w, axis, padding) for w, axis in zip(wanted, step.axes, strict=True)]
        needs.append(wanted)
    return needs[::-1]


def run_step(
    step: StepPlan,
    data: np.ndarray,
    have: Sequence[np.ndarray],
    wanted: Sequence[np.ndarray],
    value_range: ValueRange | None,
    finite: bool = True,
) -> np.ndarray:
    """Gather the windows of the wanted outputs from ``data`` (holding ``have``) and apply.

    ``finite``: ``data`` holds no NaN or infinity (it lets kernels take their fast paths).
    """
    if any(len(w) == 0 for w in wanted):
        # Every output this block needs from here on comes from constant padding.
        return np.empty(tuple(len(w) for w in wanted), dtype=data.dtype)
    gathers = [axis_gather(w, h, axis, step.config.padding) for w, h, axis in zip(wanted, have, step.axes, strict=True)]
    window = data
    for axis, gather in enumerate(gathers):
        if gather.needs_constant:
            shape = list(window.shape)
            shape[axis] = 1
            fill = np.full(shape, step.config.cval, dtype=window.dtype)
            window = np.concatenate([window, fill], axis=axis)
        if isinstance(gather.take, slice):
            window = window[(slice(None),) * axis + (gather.take,)]
        else:
            window = np.take(window, gather.take, axis=axis)
    # NaN and infinity follow IEEE arithmetic on purpose: no warnings about them.
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        result = apply_op(step.op, window, tuple(a.stride for a in step.axes), value_range, finite)
    for axis, gather in enumerate(gathers):
        if not isinstance(gather.keep, slice):
            result = np.take(result, gather.keep, axis=axis)
    return result


def compute_block(
    steps: Sequence[StepPlan],
    read: Reader,
    block: Sequence[tuple[int, int]],
    compute_dtype: np.dtype,
    value_ranges: Sequence[ValueRange | None] | None = None,
) -> np.ndarray:
    """The chain's output over ``block`` (one [start, stop) per axis), in ``compute_dtype``."""
    needs = needed_indices(steps, block)
    raw = np.asarray(read(needs[0]))
    # Integers are always finite; float input is checked once. Every parameter (cval,
    # threshold values, weights) is finite, so finite input stays finite (overflow aside).
    finite = raw.dtype.kind in "biu" or bool(np.isfinite(raw).all())
    data = raw.astype(compute_dtype, copy=False)
    for k, step in enumerate(steps):
        value_range = value_ranges[k] if value_ranges is not None else None
        data = run_step(step, data, needs[k], needs[k + 1], value_range, finite)
        if value_range is not None and not all(math.isfinite(v) for v in value_range):
            finite = False  # rescaling by an infinite range makes NaN of finite pixels
    return data


def to_dtype(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast for writing: integers are rounded to nearest and clipped, never wrapped; NaN is 0."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return data.astype(dtype, copy=False)
    info = np.iinfo(dtype)
    # float32 cannot hold 2**31 - 1 exactly: clip wide integer types in float64.
    rounded = np.rint(data.astype(np.float64) if info.bits >= 32 else data)
    np.clip(rounded, info.min, info.max, out=rounded)
    np.nan_to_num(rounded, copy=False, nan=0.0)
    return rounded.astype(dtype)
