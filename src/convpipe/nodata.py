"""Nodata through one step: which outputs are valid, and what the valid ones hold.

Why a module of its own: the kernels (``ops``) stay exact and fast on full rectangles of
numbers; a block that holds nodata runs each step here instead, as a few more passes of the
same kernels over the data (nodata samples set to 0) and over its validity (1 valid, 0
nodata; ``zero``/``constant`` padding counts as valid data). The rules are the README's
("Nodata"):

- ``propagate``: an output is nodata when a sample under a non-zero coefficient of its window
  is (any sample of the window for rank filters).
- ``ignore``: an output is nodata when the valid share of its window, Σ|w|·v / Σ|w| (the
  count share for rank filters), is below ``min_valid``. Otherwise each of its window's
  nodata samples stands for the |w|-weighted mean m of the window's valid samples:
  out = Σ w·x·v + m·Σ w·(1 − v). For a kernel with no negative coefficient this is
  normalized convolution, Σ w·x·v / Σ w·v, times Σ w (so a window without nodata gives the
  plain filter); for a signed kernel (derivatives, sharpen) a constant valid region next to
  nodata gives exactly the constant's response, so a mask border is never an edge. Rank
  filters take their statistic over the valid samples only.
- ``fill`` is applied by the caller before the step (nodata samples take ``fill_value``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from convpipe import backend
from convpipe.ops import Gradient, Linear, Op, Part, Pointwise, Rank, Stride, apply_op

#: A window's valid share is compared with ``min_valid`` less this much: float32 sums of
#: weights that are exactly the threshold in real numbers must not fall on either side by luck.
SHARE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Policy:
    """What one step does with nodata."""

    mode: Literal["propagate", "ignore", "fill"] = "propagate"
    min_valid: float = 0.5
    fill_value: float | None = None


def run(
    op: Op,
    window: np.ndarray,
    valid: np.ndarray,
    stride: Stride,
    value_range: tuple[float, float] | None,
    policy: Policy,
) -> tuple[np.ndarray, np.ndarray]:
    """The step's outputs and their validity (bool), from its padded window (nodata samples
    set to 0, so every kernel takes its finite fast path) and the window's validity (float,
    1 or 0, same shape)."""
    if isinstance(op, Pointwise):
        kept = tuple(slice(None, None, s) for s in stride)
        return apply_op(op, window, stride, value_range), valid[kept] > 0.5
    if isinstance(op, Rank):
        return _rank(op, window, valid, stride, policy)
    magnitude = isinstance(op, Gradient) and op.magnitude
    components = op.components if magnitude else (op.components[0],) if isinstance(op, Gradient) else (op,)
    if policy.mode != "ignore":  # the values as without nodata (a magnitude's fused pass), validity apart
        invalid = valid < 0.5
        reached = [_reached(component, invalid, stride) for component in components]
        return op.apply(window, stride), ~np.logical_or.reduce(reached)
    total: np.ndarray | None = None
    valid_out: np.ndarray | None = None
    for component in components:  # one at a time: a magnitude sums squares in place
        value, ok = _ignore(component, window, valid, stride, policy)
        if magnitude:
            np.square(value, out=value)
        total = value if total is None else np.add(total, value, out=total)
        valid_out = ok if valid_out is None else np.logical_and(valid_out, ok, out=valid_out)
        del value, ok
    assert total is not None and valid_out is not None
    if magnitude:
        np.sqrt(total, out=total)
    return total.astype(window.dtype, copy=False), valid_out


def _reached(kernel: Linear, invalid: np.ndarray, stride: Stride) -> np.ndarray:
    """Outputs whose window has an ``invalid`` sample under a non-zero coefficient: a
    dilation of bytes when every coefficient is non-zero (a gaussian, a box), else a sum over
    the non-zero ones (one separable pass when the kernel is one separable part)."""
    weights = kernel.kernel()
    if (weights != 0).all():
        return _in_box(invalid, weights.shape, stride)
    values = invalid.astype(np.float32)
    if len(kernel.parts) == 1 and kernel.parts[0].factors is not None:
        factors = [(f != 0).astype(np.float32) for f in kernel.parts[0].factors]
        return backend.separable(values, factors, stride) >= 0.5
    return backend.dense(values, (weights != 0).astype(np.float32), stride) >= 0.5


def _in_box(invalid: np.ndarray, size: tuple[int, ...], stride: Stride) -> np.ndarray:
    """Outputs whose box window holds an ``invalid`` sample: a dilation of bytes."""
    return backend.rank(invalid.view(np.uint8), "maximum", size, stride) > 0


def _absolute(kernel: Linear) -> Linear:
    """|w|: the applicability of a signed kernel (one separable part stays separable)."""
    if len(kernel.parts) == 1 and kernel.parts[0].factors is not None:
        part = kernel.parts[0]
        assert part.factors is not None
        return Linear((Part(abs(part.weight), factors=tuple(np.abs(f) for f in part.factors)),))
    return Linear((Part(1.0, dense=np.abs(kernel.kernel())),))


def _ignore(
    kernel: Linear, window: np.ndarray, valid: np.ndarray, stride: Stride, policy: Policy
) -> tuple[np.ndarray, np.ndarray]:
    """In place where it can: a block-sized array is 16 MiB, and each saved is one less."""
    weights = kernel.kernel()
    total, magnitude = float(weights.sum()), float(np.abs(weights).sum())
    v = valid.astype(window.dtype, copy=False)
    num, den = kernel.apply(window, stride), kernel.apply(v, stride)
    threshold = (policy.min_valid - SHARE_TOLERANCE) * magnitude
    # Outputs below the threshold are left as they are (the caller marks them nodata).
    if (weights >= 0).all():  # normalized convolution, times Σw: num · Σw / den
        ok = (den >= threshold) & (den > 0)
        np.divide(num, den, out=num, where=ok)
        num *= num.dtype.type(total)
        return num, ok
    applicability = _absolute(kernel)
    mean, share = applicability.apply(window, stride), applicability.apply(v, stride)
    ok = (share >= threshold) & (share > 0)
    np.divide(mean, share, out=mean, where=ok)  # the |w|-weighted mean of the window's valid samples
    del share
    np.subtract(num.dtype.type(total), den, out=den)  # Σ w·(1 − v)
    den *= mean
    num += den  # Σ w·x·v + m·Σ w·(1 − v)
    return num, ok


def _rank(
    op: Rank, window: np.ndarray, valid: np.ndarray, stride: Stride, policy: Policy
) -> tuple[np.ndarray, np.ndarray]:
    if policy.mode != "ignore":
        return backend.rank(window, op.statistic, op.size, stride), ~_in_box(valid < 0.5, op.size, stride)
    count = backend.separable(valid.astype(window.dtype), [np.ones(n, np.float32) for n in op.size], stride)
    ok = (count >= (policy.min_valid - SHARE_TOLERANCE) * float(np.prod(op.size))) & (count > 0.5)
    if op.statistic in ("minimum", "maximum"):
        far = np.inf if op.statistic == "minimum" else -np.inf
        result = backend.rank(np.where(valid > 0.5, window, window.dtype.type(far)), op.statistic, op.size, stride)
        return np.where(ok, result, 0).astype(window.dtype, copy=False), ok
    return _valid_median(window, valid, op.size, stride, ok), ok


#: Rows (or planes) of outputs whose windows are sorted at once by the valid-only median.
MEDIAN_BAND_BYTES = 32 * 2**20


def _valid_median(
    window: np.ndarray, valid: np.ndarray, size: tuple[int, ...], stride: Stride, ok: np.ndarray
) -> np.ndarray:
    """The median of each window's valid samples (the sorted valid samples' entry n // 2,
    scipy's rank for the median), band of outputs by band so the sort stays bounded."""
    masked = np.where(valid > 0.5, window, window.dtype.type(np.inf))
    views = sliding_window_view(masked, size)[tuple(slice(None, None, s) for s in stride)]
    counts = sliding_window_view(valid > 0.5, size)[tuple(slice(None, None, s) for s in stride)]
    out = np.zeros(ok.shape, dtype=window.dtype)
    taps = int(np.prod(size))
    per_row = max(1, int(np.prod(views.shape[1 : window.ndim])) * taps * window.itemsize)
    rows = max(1, MEDIAN_BAND_BYTES // per_row)
    for first in range(0, views.shape[0], rows):
        band = views[first : first + rows].reshape(*views[first : first + rows].shape[: window.ndim], taps)
        n = counts[first : first + rows].reshape(band.shape).sum(axis=-1)
        ordered = np.sort(band, axis=-1)
        pick = np.take_along_axis(ordered, np.minimum(n // 2, taps - 1)[..., None], axis=-1)[..., 0]
        out[first : first + rows] = np.where(n > 0, pick, 0)
    return out
