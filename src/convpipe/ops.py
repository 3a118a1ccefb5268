"""What one step does to its padded window: valid, strided window operations on numpy arrays.

Every operation receives the step's input already padded (gathered by the engine from the
block and its halo) and returns only the valid outputs, sampled with the step's stride:
output ``m`` reads the window that starts at ``m * stride``. Operations work on all the data's
axes; non-spatial axes (t, c) have kernel size 1, so every plane is filtered on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from convpipe import backend, kernels

Stride = tuple[int, ...]


@dataclass(frozen=True)
class Part:
    """One term of a linear kernel: ``weight`` times a separable or a dense kernel."""

    weight: float
    factors: tuple[np.ndarray, ...] | None = None
    dense: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        if self.factors is not None:
            return tuple(len(f) for f in self.factors)
        assert self.dense is not None
        return self.dense.shape

    def kernel(self) -> np.ndarray:
        base = kernels.outer(list(self.factors)) if self.factors is not None else self.dense
        assert base is not None
        return self.weight * base

    def flipped(self) -> Part:
        if self.factors is not None:
            return Part(self.weight, factors=tuple(f[::-1].copy() for f in self.factors))
        assert self.dense is not None
        return Part(self.weight, dense=np.flip(self.dense).copy())

    def expanded(self, ndim: int, spatial: Sequence[int]) -> Part:
        """The same part over ``ndim`` data axes, its axes placed at ``spatial``."""
        if self.factors is not None:
            factors = [np.ones(1)] * ndim
            for factor, axis in zip(self.factors, spatial, strict=True):
                factors[axis] = factor
            return Part(self.weight, factors=tuple(factors))
        assert self.dense is not None
        shape = [1] * ndim
        for length, axis in zip(self.dense.shape, spatial, strict=True):
            shape[axis] = length
        return Part(self.weight, dense=self.dense.reshape(shape))

    def apply(self, window: np.ndarray, stride: Stride) -> np.ndarray:
        if self.dense is not None:
            out = backend.dense(window, self.dense, stride)
        else:
            assert self.factors is not None
            out = backend.separable(window, self.factors, stride)
        if self.weight != 1.0:
            out = out * window.dtype.type(self.weight)
        return out


#: Effective kernels up to this many taps run as one dense pass rather than part by part.
SMALL_KERNEL = 27


@dataclass(frozen=True)
class Linear:
    """A sum of parts, each centred in the size of the largest: one effective kernel."""

    parts: tuple[Part, ...]
    kind: Literal["linear"] = field(default="linear", init=False)

    @property
    def size(self) -> tuple[int, ...]:
        return tuple(max(sizes) for sizes in zip(*(p.shape for p in self.parts), strict=True))

    def kernel(self) -> np.ndarray:
        """The effective kernel, for plans and for the whole-image reference."""
        return sum(
            (kernels.embed_centred(p.kernel(), self.size) for p in self.parts),
            start=np.zeros(self.size),
        )

    def flipped(self) -> Linear:
        return Linear(tuple(p.flipped() for p in self.parts))

    def expanded(self, ndim: int, spatial: Sequence[int]) -> Linear:
        return Linear(tuple(p.expanded(ndim, spatial) for p in self.parts))

    @property
    def identity(self) -> bool:
        """One tap of weight 1 (a box or a convolve of size 1): the step only moves samples."""
        return all(n == 1 for n in self.size) and float(self.kernel().ravel()[0]) == 1.0

    def apply(self, window: np.ndarray, stride: Stride, finite: bool = True) -> np.ndarray:
        """``finite``: the window holds no NaN or infinity, so any exact rearrangement is fine."""
        size = self.size
        if self.identity:
            # x * 1 is x, NaN and infinity included: the kept samples, in any dtype (an int64
            # chain that only moves samples computes in int64, see moves_samples).
            return window[tuple(slice(None, None, s) for s in stride)]
        if not finite:
            # The definition, term by term: a pixel counts through the non-zero coefficients of
            # the one effective kernel. Splitting a coefficient into parts, or a kernel into
            # passes, could turn an infinity into NaN.
            return backend.exact(window, self.kernel(), stride, lambda clean: self.apply(clean, stride))
        if len(self.parts) > 1 and math.prod(size) <= SMALL_KERNEL:
            # One pass of the combined kernel beats a pass per part (sharpen: 3x3).
            return backend.dense(window, self.kernel(), stride)
        total: np.ndarray | None = None
        for part in self.parts:
            # A smaller part sits centred in the effective kernel: crop the window to match.
            crop = tuple(
                slice((f - p) // 2, n - (f - p) // 2) for f, p, n in zip(size, part.shape, window.shape, strict=True)
            )
            term = part.apply(window[crop], stride)
            if total is None:
                # The identity part returns a view of the window: copy before accumulating.
                total = term.copy() if np.may_share_memory(term, window) else term
            else:
                total += term
        assert total is not None
        return total


@dataclass(frozen=True)
class Gradient:
    """Derivatives along spatial axes; their root sum of squares, or one of them alone."""

    components: tuple[Linear, ...]
    magnitude: bool
    kind: Literal["gradient"] = field(default="gradient", init=False)

    @property
    def size(self) -> tuple[int, ...]:
        return self.components[0].size

    def flipped(self) -> Gradient:
        return Gradient(tuple(c.flipped() for c in self.components), self.magnitude)

    def expanded(self, ndim: int, spatial: Sequence[int]) -> Gradient:
        return Gradient(tuple(c.expanded(ndim, spatial) for c in self.components), self.magnitude)

    def apply(self, window: np.ndarray, stride: Stride, finite: bool = True) -> np.ndarray:
        if not self.magnitude:
            return self.components[0].apply(window, stride, finite)
        factors = [c.parts[0].factors for c in self.components if len(c.parts) == 1 and c.parts[0].weight == 1.0]
        if finite and window.ndim >= 2 and len(factors) == len(self.components) and None not in factors:
            return self._separable_magnitude(window, stride, factors)  # type: ignore[arg-type]
        total: np.ndarray | None = None
        for component in self.components:
            derivative = component.apply(window, stride, finite)
            np.square(derivative, out=derivative)
            total = derivative if total is None else np.add(total, derivative, out=total)
        assert total is not None
        return np.sqrt(total, out=total)

    def _separable_magnitude(
        self, window: np.ndarray, stride: Stride, factors: Sequence[tuple[np.ndarray, ...]]
    ) -> np.ndarray:
        """The magnitude of separable components (sobel, prewitt, scharr), band by band.

        Band after band of outputs along the first axis (rows in 2-D, planes in 3-D), every
        component is filtered, squared and summed while the band is still in cache, into one
        contiguous result; components that smooth the same way along the leading axes share
        that pass (in 3-D, the y and x derivatives both smooth along z). Every output sees the
        same arithmetic, in the same order, as filtering the whole window at once.
        """
        size, step = self.size[0], stride[0]
        count = (window.shape[0] - size) // step + 1
        plane = math.prod(window.shape[1:]) * window.itemsize
        rows = max(MIN_BAND, (BAND_BYTES // plane - size) // step + 1)
        out: np.ndarray | None = None
        scratch: np.ndarray | None = None
        for first in range(0, count, rows):
            last = min(count, first + rows)
            band = window[first * step : (last - 1) * step + size]
            leading: dict[bytes, np.ndarray] = {}
            total: np.ndarray | None = None
            for parts in factors:
                key = b"|".join(np.asarray(f, dtype=np.float64).tobytes() for f in parts[:-2])
                if key not in leading:
                    leading[key] = backend.separable_leading(band, parts, stride)
                derivative = backend.separable_planes(leading[key], parts, stride)
                if out is None:
                    out = np.empty((count, *derivative.shape[1:]), dtype=derivative.dtype)
                    scratch = np.empty((min(rows, count), *derivative.shape[1:]), dtype=derivative.dtype)
                assert scratch is not None
                if total is None:
                    total = np.square(derivative, out=out[first:last])
                else:
                    np.add(total, np.square(derivative, out=scratch[: last - first]), out=total)
            assert total is not None
            np.sqrt(total, out=total)
        assert out is not None
        return out


#: Band outputs so that a band's input is about this big (it stays in cache while the
#: components of a gradient magnitude are filtered, squared and summed), and at least
#: MIN_BAND rows or planes long (fewer, larger calls).
BAND_BYTES = 2**20
MIN_BAND = 4


@dataclass(frozen=True)
class Rank:
    """Order statistics of a box window; the median is rank n // 2, as in scipy."""

    statistic: Literal["median", "minimum", "maximum"]
    size: tuple[int, ...]
    kind: Literal["rank"] = field(default="rank", init=False)

    def flipped(self) -> Rank:
        return self  # a box window is its own mirror image

    def expanded(self, ndim: int, spatial: Sequence[int]) -> Rank:
        size = [1] * ndim
        for length, axis in zip(self.size, spatial, strict=True):
            size[axis] = length
        return Rank(self.statistic, tuple(size))

    def apply(self, window: np.ndarray, stride: Stride, finite: bool = True) -> np.ndarray:
        result = backend.rank(window, self.statistic, self.size, stride)
        missing = np.isnan(window) if not finite else None
        if missing is not None and missing.any():
            # NaN has no rank: an output whose window holds one is NaN, whatever the backend did.
            touched = backend.rank(missing.astype(window.dtype), "maximum", self.size, stride) > 0
            result = np.where(touched, window.dtype.type(np.nan), result)
        return result


@dataclass(frozen=True)
class Pointwise:
    """A per-pixel function; ``rescale`` also needs the global range of its input."""

    function: Literal["threshold", "abs", "clip", "rescale"]
    params: tuple[tuple[str, float | None], ...] = ()
    ndim: int = 0
    kind: Literal["pointwise"] = field(default="pointwise", init=False)

    @property
    def size(self) -> tuple[int, ...]:
        return (1,) * self.ndim

    @property
    def needs_range(self) -> bool:
        return self.function == "rescale"

    def flipped(self) -> Pointwise:
        return self

    def expanded(self, ndim: int, spatial: Sequence[int]) -> Pointwise:
        return Pointwise(self.function, self.params, ndim)

    def apply(self, window: np.ndarray, stride: Stride, value_range: tuple[float, float] | None = None) -> np.ndarray:
        x = window[tuple(slice(None, None, s) for s in stride)]
        p = dict(self.params)
        dtype = window.dtype
        if self.function == "abs":
            return np.abs(x)
        if self.function == "threshold":
            return np.where(x > p["value"], dtype.type(p["above"]), dtype.type(p["below"])).astype(dtype)
        if self.function == "clip":
            return np.clip(x, p["min"], p["max"]).astype(dtype, copy=False)
        assert value_range is not None, "rescale needs the global range of its input"
        low, high = value_range
        out_low, out_high = p["min"], p["max"]
        assert out_low is not None and out_high is not None
        if not high > low:  # a flat image (or all NaN) maps to the bottom of the range
            return np.where(np.isnan(x), x, dtype.type(out_low)).astype(dtype, copy=False)
        scale = (out_high - out_low) / (high - low)
        return ((x - dtype.type(low)) * dtype.type(scale) + dtype.type(out_low)).astype(dtype, copy=False)


Op = Linear | Gradient | Rank | Pointwise


def moves_samples(op: Op, padding: str, cval: float, dtype: np.dtype) -> bool:
    """Whether the step's outputs are samples of its input (an identity kernel, a rank filter),
    padding included, so it runs exactly in the integer ``dtype`` (README, "What it computes")."""
    if not ((isinstance(op, Linear) and op.identity) or isinstance(op, Rank)):
        return False
    if padding in ("constant", "zero"):
        info = np.iinfo(dtype)
        return float(cval).is_integer() and info.min <= cval <= info.max
    return True


def apply_op(
    op: Op, window: np.ndarray, stride: Stride, value_range: tuple[float, float] | None, finite: bool = True
) -> np.ndarray:
    """Run any operation; only ``rescale`` takes the global range, only kernels care if finite."""
    if isinstance(op, Pointwise):
        return op.apply(window, stride, value_range)
    return op.apply(window, stride, finite)
