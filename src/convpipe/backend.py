"""The numerical kernels behind every operation: valid, strided correlations and rank filters.

OpenCV does the work on the last two axes of a block (one plane at a time): its separable
and small 2-D filters are SIMD-vectorised and release the GIL, 10–20x faster than
scipy.ndimage on the same float32 block (README, "Performance"). Other axes (z in a volume)
are handled as a sum of shifted, strided slices, and scipy.ndimage covers what OpenCV does not
(float64 medians, medians wider than 5, non-square medians), imported only then.

Every function takes a window that already holds the padding and returns only the valid
outputs, one every ``stride`` samples along each axis: output ``m`` reads the window that
starts at ``m * stride``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import cv2
import numpy as np

# Dask runs one block per thread; OpenCV's own thread pool would only compete with it.
cv2.setNumThreads(1)

Stride = Sequence[int]

#: OpenCV's filter2D switches to a DFT at 50 taps (float64; 130 for float32): its outputs then
#: depend on the image's size, so planes are not stacked for such kernels (see _per_plane).
DFT_TAPS = 50


def valid_slices(size: Sequence[int], shape: Sequence[int], stride: Stride) -> tuple[slice, ...]:
    """The valid, strided outputs of a filter of ``size`` that wrote same-size output.

    OpenCV and scipy.ndimage write the window starting at m to output m + F // 2.
    """
    return tuple(slice(f // 2, f // 2 + n - f + 1, s) for f, n, s in zip(size, shape, stride, strict=True))


def _planes(array: np.ndarray) -> list[tuple[int, ...]]:
    return list(np.ndindex(*array.shape[:-2]))


def _per_plane(function: Callable[..., np.ndarray], array: np.ndarray, stack: bool = True) -> np.ndarray:
    """Apply a 2-D OpenCV function to every plane over the last two axes, into one array.

    ``function(plane, dst)`` writes into ``dst`` when OpenCV can (a plane of the result, or
    None). Callers keep only outputs whose window lies inside one plane, so with ``stack`` the
    planes go through OpenCV as one tall image, rows of one plane after those of the previous
    (half the time of a call per plane for 3x3 kernels on 256x256 planes); only the discarded
    rows near a plane's edges see its neighbour. Not for kernels OpenCV filters by DFT, whose
    every output depends on the image size.
    """
    if array.ndim == 2:
        return function(array, None)
    stacked = _stacked_rows(array) if stack else None
    if stacked is not None:
        result = function(stacked, None)
        if result.shape[0] == stacked.shape[0]:
            row = result.strides[0]
            lead = tuple(
                0 if n == 1 else s // array.strides[-2] * row
                for n, s in zip(array.shape[:-2], array.strides[:-2], strict=True)
            )
            return np.lib.stride_tricks.as_strided(
                result, (*array.shape[:-1], result.shape[1]), (*lead, *result.strides)
            )
    planes = _planes(array)
    first = function(array[planes[0]], None)
    out = np.empty((*array.shape[:-2], *first.shape), dtype=first.dtype)
    out[planes[0]] = first
    for index in planes[1:]:
        target = out[index]
        result = function(array[index], target)
        if result is not target and not np.shares_memory(result, target):
            target[...] = result
    return out


def _stacked_rows(array: np.ndarray) -> np.ndarray | None:
    """Every plane's rows as one 2-D array (rows in between planes, if any, included), or
    None if the planes are not laid out one after another in memory."""
    item, strides, shape = array.itemsize, array.strides, array.shape
    row = strides[-2]
    if strides[-1] != item or row <= 0 or row % item or row < shape[-1] * item or 0 in shape:
        return None
    rows = shape[-2]  # rows spanned by one index of the axes after d
    for d in range(array.ndim - 3, -1, -1):
        if shape[d] == 1:
            continue
        if strides[d] <= 0 or strides[d] % row or strides[d] // row < rows:
            return None
        rows += (shape[d] - 1) * (strides[d] // row)
    if rows > 1.25 * array.size // shape[-1]:
        return None  # mostly rows of no plane (strided planes): not worth filtering
    return np.lib.stride_tricks.as_strided(array, (rows, shape[-1]), (row, item), writeable=False)


def _leading_axis(window: np.ndarray, axis: int, weights: np.ndarray, stride: int) -> np.ndarray:
    """Valid strided correlation along a leading axis (z in a volume).

    The block is seen as a 2-D array with this axis as rows and everything after it as one
    long row, so OpenCV filters every column in one vectorised pass. Few taps (or a 1-D
    block) are a weighted sum of shifted slices instead, which computes only the kept samples.
    """
    count = (window.shape[axis] - len(weights)) // stride + 1
    taps = int(np.count_nonzero(weights))
    if window.ndim > 1 and taps > 2 and window.dtype in (np.float32, np.float64):
        kernel = np.asarray(weights, dtype=np.float64)
        first = len(weights) // 2
        keep = slice(first, first + (count - 1) * stride + 1, stride)
        block = np.ascontiguousarray(window)
        before, rows = math.prod(block.shape[:axis]), block.shape[axis]
        flat = block.reshape(before, rows, -1)
        shape = list(block.shape)
        shape[axis] = count
        if before == 1:  # the leading axis itself: the kept rows are already the result
            filtered = cv2.sepFilter2D(flat[0], -1, np.ones(1), kernel, borderType=cv2.BORDER_CONSTANT)
            return filtered[keep].reshape(shape)
        result = np.stack(
            [cv2.sepFilter2D(plane, -1, np.ones(1), kernel, borderType=cv2.BORDER_CONSTANT)[keep] for plane in flat]
        )
        return result.reshape(shape)
    nonzero = [(offset, weight) for offset, weight in enumerate(weights) if weight != 0]
    if [w for _, w in nonzero] == [-1.0, 1.0]:
        # A difference (the derivative [-1, 0, 1]): -a + b is b - a to the bit, in one pass.
        (first, _), (second, _) = nonzero
        index = [slice(None)] * window.ndim
        index[axis] = slice(second, second + (count - 1) * stride + 1, stride)
        minuend = window[tuple(index)]
        index[axis] = slice(first, first + (count - 1) * stride + 1, stride)
        return np.subtract(minuend, window[tuple(index)])
    out: np.ndarray | None = None
    for offset, weight in enumerate(weights):
        if weight == 0:
            continue
        index = [slice(None)] * window.ndim
        index[axis] = slice(offset, offset + (count - 1) * stride + 1, stride)
        term = window[tuple(index)] * window.dtype.type(weight)
        out = term if out is None else np.add(out, term, out=out)
    if out is None:
        shape = list(window.shape)
        shape[axis] = count
        out = np.zeros(shape, dtype=window.dtype)
    return out


def _contiguous_planes(window: np.ndarray) -> np.ndarray:
    # OpenCV needs each row contiguous; gathered (np.take) or strided views may not be.
    if window.ndim >= 2 and window.strides[-1] == window.itemsize:
        return window
    return np.ascontiguousarray(window)


def separable(window: np.ndarray, factors: Sequence[np.ndarray], stride: Stride) -> np.ndarray:
    """Correlate with the outer product of ``factors`` (one 1-D kernel per axis)."""
    if is_box(factors, window.dtype):
        return box(window, factors, stride)
    if window.ndim == 1:
        return _leading_axis(window, 0, np.asarray(factors[0]), stride[0])
    return separable_planes(separable_leading(window, factors, stride), factors, stride)


#: A kernel whose factors are all constant (a box, a mean) and this long along some axis runs
#: as running sums (``box``): below it OpenCV's direct passes are as fast or faster.
BOX_TAPS = 16


def is_box(factors: Sequence[np.ndarray], dtype: np.dtype) -> bool:
    """Whether ``box`` runs these factors: each constant, one of them long, a float window."""
    if dtype not in (np.float32, np.float64) or max(len(f) for f in factors) < BOX_TAPS:
        return False
    return all(bool(np.all(np.asarray(f) == f[0])) for f in factors)


def box(window: np.ndarray, factors: Sequence[np.ndarray], stride: Stride) -> np.ndarray:
    """Correlate with constant factors by window sums that take the same time for any window
    size (``_window_sums``), each multiplied by the factor's value, axis by axis."""
    out = window
    for axis, factor in enumerate(factors):
        if len(factor) > 1 or stride[axis] > 1 or factor[0] != 1.0:
            out = _window_sums(out, axis, len(factor), stride[axis], float(factor[0]))
    return out


#: Samples (float64) a window-sum pass holds at once, three arrays of them: about 24 MiB.
BOX_BATCH = 2**20


def _window_sums(x: np.ndarray, axis: int, size: int, stride: int, weight: float) -> np.ndarray:
    """``weight`` x the sums of ``size`` consecutive samples along ``axis``, every ``stride``-th,
    in float64, without subtraction (van Herk and Gil-Werman's scheme, for sums).

    The axis is cut into segments of ``size`` samples; the window starting at i is the rest
    of i's segment (a suffix sum) plus the start of the next segment (a prefix sum), so every
    sum adds only samples of its own window. A running sum (the previous one plus the sample
    entering, minus the one leaving, as OpenCV's boxFilter) would let one huge sample cancel
    every later window's small ones on its line. Sums of integers below 2**53 are exact;
    otherwise a window's error is at most about ``size`` x 2**-53 x its own largest |sample|
    (README, "Performance").
    """
    moved = np.moveaxis(x, axis, -1)
    if moved.ndim == 1:
        moved = moved[None]
    n = moved.shape[-1]
    segments = -(-n // size)
    starts = np.arange(0, n - size + 1, stride)
    inner = starts % size != 0  # windows that reach into the next segment
    out = np.empty((*moved.shape[:-1], starts.size), dtype=x.dtype)
    rows = max(1, BOX_BATCH // (segments * size * max(1, math.prod(moved.shape[1:-1]))))
    for top in range(0, moved.shape[0], rows):
        part = moved[top : top + rows]
        padded = np.zeros((*part.shape[:-1], segments * size))
        padded[..., :n] = part
        cut = padded.reshape(*part.shape[:-1], segments, size)
        prefix = np.cumsum(cut, axis=-1).reshape(padded.shape)
        suffix = np.cumsum(cut[..., ::-1], axis=-1)[..., ::-1].reshape(padded.shape)
        sums = suffix[..., starts]
        sums[..., inner] += prefix[..., starts[inner] + size - 1]
        np.multiply(sums, weight, out=out[top : top + rows], casting="unsafe")
    if x.ndim == 1:
        out = out[0]
    return np.moveaxis(out, -1, axis)


def separable_leading(window: np.ndarray, factors: Sequence[np.ndarray], stride: Stride) -> np.ndarray:
    """The passes of ``separable`` along the leading axes (all but the last two)."""
    out = window
    # Leading axes first: each pass shrinks the block before the (costlier) plane passes.
    for axis in range(window.ndim - 2):
        factor = factors[axis]
        if len(factor) > 1 or factor[0] != 1.0 or stride[axis] > 1:
            out = _leading_axis(out, axis, np.asarray(factor), stride[axis])
    return out


def separable_planes(out: np.ndarray, factors: Sequence[np.ndarray], stride: Stride) -> np.ndarray:
    """The passes of ``separable`` over the last two axes, after ``separable_leading``."""
    ndim = out.ndim
    ky, kx = (np.asarray(f, dtype=np.float64) for f in factors[-2:])
    if len(ky) == 1 and len(kx) == 1:
        scaled = out if ky[0] * kx[0] == 1.0 else out * out.dtype.type(ky[0] * kx[0])
        return scaled[..., :: stride[-2], :: stride[-1]]
    out = _contiguous_planes(out)
    lead = (slice(None),) * (ndim - 2)
    if stride[-2] > 1 and len(ky) >= 2 * stride[-2]:
        return _polyphase_rows(out, ky, kx, stride[-2], stride[-1])
    filtered = _per_plane(
        lambda plane, dst: cv2.sepFilter2D(plane, -1, kx, ky, dst=dst, borderType=cv2.BORDER_CONSTANT), out
    )
    return filtered[lead + valid_slices((len(ky), len(kx)), out.shape[-2:], stride[-2:])]


def _polyphase_rows(window: np.ndarray, ky: np.ndarray, kx: np.ndarray, row_stride: int, col_stride: int) -> np.ndarray:
    """A row-strided separable pass that computes only the rows it keeps.

    Kept row m is the sum over phases r of the taps ky[r::S] applied to the rows r::S, so each
    phase is an ordinary (unstrided) pass over 1/S of the rows with 1/S of the taps.
    """
    rows = (window.shape[-2] - len(ky)) // row_stride + 1
    columns = valid_slices((len(kx),), window.shape[-1:], (col_stride,))[0]
    total: np.ndarray | None = None
    for phase in range(row_stride):
        taps = ky[phase::row_stride]
        if not taps.any():
            continue
        filtered = _per_plane(
            lambda plane, dst, taps=taps: cv2.sepFilter2D(plane, -1, kx, taps, dst=dst, borderType=cv2.BORDER_CONSTANT),
            window[..., phase::row_stride, :],
        )
        term = filtered[..., len(taps) // 2 : len(taps) // 2 + rows, columns]
        if total is None:
            total = term
        else:
            total += term
    if total is None:
        return np.zeros((*window.shape[:-2], rows, len(range(*columns.indices(window.shape[-1])))), window.dtype)
    return total


def exact(
    window: np.ndarray, kernel: np.ndarray, stride: Stride, fast: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Correlation as IEEE arithmetic term by term, for windows holding NaN or infinity.

    ``fast`` computes the finite part (non-finite pixels set to 0). Then an output is NaN if a
    non-zero coefficient meets a NaN, or meets both a +inf and a -inf term; otherwise +inf or
    -inf if it meets such a term. Fast passes cannot give this by themselves: OpenCV and scipy
    skip or regroup terms, and a NaN times a tiny coefficient must still be NaN.
    """
    bad = ~np.isfinite(window)
    result = fast(np.where(bad, window.dtype.type(0), window))
    if not bad.any():
        return result

    def meets(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
        if not mask.any() or not footprint.any():
            return np.zeros(result.shape, dtype=bool)
        return dense(mask.astype(window.dtype), footprint.astype(np.float64), stride) > 0.5

    positive, negative = kernel > 0, kernel < 0
    plus_inf, minus_inf = np.isposinf(window), np.isneginf(window)
    gains_plus = meets(plus_inf, positive) | meets(minus_inf, negative)
    gains_minus = meets(minus_inf, positive) | meets(plus_inf, negative)
    nan = meets(np.isnan(window), kernel != 0) | (gains_plus & gains_minus)
    result = np.where(gains_plus, window.dtype.type(np.inf), result)
    result = np.where(gains_minus, window.dtype.type(-np.inf), result)
    return np.where(nan, window.dtype.type(np.nan), result)


def dense(window: np.ndarray, kernel: np.ndarray, stride: Stride) -> np.ndarray:
    """Correlate with an n-D kernel: OpenCV's filter2D per plane, summed over leading offsets."""
    ndim = window.ndim
    if kernel.size >= BOX_TAPS and np.all(kernel == kernel.flat[0]):  # a constant kernel: a box
        box_factors = [np.full(n, kernel.flat[0] if axis == 0 else 1.0) for axis, n in enumerate(kernel.shape)]
        if is_box(box_factors, window.dtype):
            return box(window, box_factors, stride)
    if ndim == 1:
        return _leading_axis(window, 0, kernel, stride[0])
    window = _contiguous_planes(window)
    lead_kernel = kernel.shape[:-2]
    counts = [(n - f) // s + 1 for n, f, s in zip(window.shape, kernel.shape, stride, strict=True)]
    out: np.ndarray | None = None
    plane_slices = valid_slices(kernel.shape[-2:], window.shape[-2:], stride[-2:])
    for offsets in np.ndindex(*lead_kernel):
        plane_kernel = np.asarray(kernel[offsets], dtype=np.float64)
        if not plane_kernel.any():
            continue
        index = tuple(
            slice(o, o + (c - 1) * s + 1, s) for o, c, s in zip(offsets, counts[:-2], stride[:-2], strict=True)
        )
        part = window[index]
        filtered = _per_plane(
            lambda plane, dst, k=plane_kernel: cv2.filter2D(plane, -1, k, dst=dst, borderType=cv2.BORDER_CONSTANT),
            part,
            stack=plane_kernel.size < DFT_TAPS,
        )
        term = filtered[(slice(None),) * (ndim - 2) + plane_slices]
        if out is None:
            out = term  # a view of a fresh array: safe to accumulate into
        else:
            out += term
    if out is None:
        return np.zeros(counts, dtype=window.dtype)
    return out


def _fold_leading(
    window: np.ndarray, size: Sequence[int], stride: Stride, reduce: np.ufunc
) -> tuple[np.ndarray, list[int]]:
    """Min or max over leading axes (separable for box windows), keeping strided samples."""
    return _fold(window, range(window.ndim - 2), size, stride, reduce), [1] * (window.ndim - 2)


def _fold(window: np.ndarray, axes: Sequence[int], size: Sequence[int], stride: Stride, reduce: np.ufunc) -> np.ndarray:
    """Min or max of box windows along ``axes``, one axis at a time, keeping strided samples."""
    out = window
    for axis in axes:
        count = (out.shape[axis] - size[axis]) // stride[axis] + 1
        index = [slice(None)] * out.ndim
        terms = []
        for offset in range(size[axis]):
            index[axis] = slice(offset, offset + (count - 1) * stride[axis] + 1, stride[axis])
            terms.append(out[tuple(index)])
        out = reduce.reduce(terms) if len(terms) > 1 else terms[0]
    return out


#: Medians of 64-bit integers are taken over this many bytes of gathered windows at a time.
MEDIAN_BAND_BYTES = 16 * 2**20


def _exact_rank(
    window: np.ndarray, statistic: Literal["median", "minimum", "maximum"], size: Sequence[int], stride: Stride
) -> np.ndarray:
    """Rank filters on 64-bit integers, which scipy.ndimage ranks through float64 (2**63 - 1
    comes back as -2**63): numpy's own comparisons, exact for every value."""
    if statistic != "median":
        return _fold(window, range(window.ndim), size, stride, np.minimum if statistic == "minimum" else np.maximum)
    views = np.lib.stride_tricks.sliding_window_view(window, tuple(size))[tuple(slice(None, None, s) for s in stride)]
    taps = math.prod(size)
    out = np.empty(views.shape[: window.ndim], dtype=window.dtype)
    rows = max(1, MEDIAN_BAND_BYTES // max(1, math.prod(out.shape[1:]) * taps * window.itemsize))
    for top in range(0, out.shape[0], rows):
        band = views[top : top + rows].reshape(*out[top : top + rows].shape, taps)
        out[top : top + rows] = np.partition(band, taps // 2, axis=-1)[..., taps // 2]
    return out


#: What OpenCV's erode and dilate take; other dtypes (32-bit integers) go to scipy.
MORPHOLOGY_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.uint16, np.int16, np.float32, np.float64))


def rank(
    window: np.ndarray, statistic: Literal["median", "minimum", "maximum"], size: Sequence[int], stride: Stride
) -> np.ndarray:
    """Median, minimum or maximum of a box window."""
    ndim = window.ndim
    if window.dtype.kind in "iu" and window.itemsize == 8:
        return _exact_rank(window, statistic, size, stride)
    if ndim >= 2 and statistic in ("minimum", "maximum") and window.dtype in MORPHOLOGY_DTYPES:
        reduced, _ = _fold_leading(window, size, stride, np.minimum if statistic == "minimum" else np.maximum)
        reduced = _contiguous_planes(reduced)
        footprint = np.ones(tuple(size[-2:]), dtype=np.uint8)
        morph = cv2.erode if statistic == "minimum" else cv2.dilate
        filtered = _per_plane(
            lambda plane, dst: morph(plane, footprint, dst=dst, borderType=cv2.BORDER_CONSTANT, borderValue=0), reduced
        )
        lead = (slice(None),) * (ndim - 2)
        return filtered[lead + valid_slices(size[-2:], reduced.shape[-2:], stride[-2:])]
    square_2d = ndim >= 2 and all(s == 1 for s in size[:-2]) and size[-1] == size[-2] and size[-1] in (3, 5)
    if statistic == "median" and square_2d and window.dtype == np.float32:
        planes = np.ascontiguousarray(window[(slice(None),) * (ndim - 2)])
        filtered = _per_plane(lambda plane, dst: cv2.medianBlur(plane, size[-1], dst=dst), planes)
        return filtered[valid_slices(size, window.shape, stride)]
    import scipy.ndimage as ndi  # imported here: only this fallback needs it

    function = {"median": ndi.median_filter, "minimum": ndi.minimum_filter, "maximum": ndi.maximum_filter}
    filtered = function[statistic](window, size=tuple(size), mode="constant")
    return filtered[valid_slices(size, window.shape, stride)]
