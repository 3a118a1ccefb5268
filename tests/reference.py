"""The whole-image reference: each step written plainly with numpy.pad and sliding windows.

Deliberately naive and slow: float64 throughout, no blocks, no separable passes, no OpenCV.
The property tests compare convpipe's chunked output against it.

Independent of convpipe's own arithmetic: from a plan it takes only what the config says
(the axes and each step's validated keys, ``step.config``) and works out everything else
itself, from the README's "What it computes" and "Filters" and scipy.ndimage's documented
definitions: the pad widths of ``same``/``valid``/``full``/explicit pads, the strides, the
output sizes, what each padding name puts outside the image, and every filter's kernel
coefficients. A mistake shared by convpipe's plan or kernels and this file would otherwise
pass unseen.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

#: The README's spatial axis letters ("Config keys", ``input.axes``): filters act on these;
#: t and c are carried through, each plane filtered on its own.
SPATIAL = "zyx"

#: The README's padding table: each name (aliases included) and the numpy.pad mode it is;
#: None for the constant modes (``zero``: 0, ``constant``: ``cval``).
NUMPY_PAD: dict[str, str | None] = {
    "reflect": "reflect",
    "mirror": "reflect",
    "symmetric": "symmetric",
    "replicate": "edge",
    "edge": "edge",
    "nearest": "edge",
    "wrap": "wrap",
    "circular": "wrap",
    "zero": None,
    "constant": None,
}

#: The README's gradient operators: [-1, 0, 1] along the axis, this smoothing across.
DERIVATIVE = np.array([-1.0, 0.0, 1.0])
SMOOTHING = {
    "sobel": np.array([1.0, 2.0, 1.0]),
    "prewitt": np.array([1.0, 1.0, 1.0]),
    "scharr": np.array([3.0, 10.0, 3.0]),
}

RANK_FILTERS = ("median", "minimum", "maximum")
POINTWISE_FILTERS = ("threshold", "abs", "clip", "rescale")
ALIASES = {"mean": "box", "uniform": "box"}


# --- geometry: the README's pad table and output-size formula ------------------------------------


def pad_widths(pad: str | int, size: int) -> tuple[int, int]:
    """(P_before, P_after) for a kernel of ``size`` F, from the README's ``pad`` table."""
    if pad == "same":  # for even F the extra pixel goes after, as in PyTorch/TensorFlow
        return (size - 1) // 2, size // 2
    if pad == "valid":
        return 0, 0
    if pad == "full":
        return size - 1, size - 1
    assert isinstance(pad, int) and not isinstance(pad, bool) and pad >= 0, pad
    return pad, pad


def output_length(n: int, size: int, before: int, after: int, stride: int) -> int:
    """N_out = floor((N + P_before + P_after - F) / S) + 1."""
    return (n + before + after - size) // stride + 1


def per_axis(value: Any, count: int) -> tuple[Any, ...]:
    """One value for every spatial axis, or a list with one per spatial axis."""
    if isinstance(value, list | tuple):
        assert len(value) == count, (value, count)
        return tuple(value)
    return (value,) * count


@dataclass(frozen=True)
class Geometry:
    """One step over every data axis: kernel sizes, pads and strides (1, 0, 1 off the spatial axes)."""

    sizes: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    strides: tuple[int, ...]

    def out_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        axes = zip(shape, self.sizes, self.pads, self.strides, strict=True)
        return tuple(output_length(n, f, b, a, s) for n, f, (b, a), s in axes)


def spatial_of(axes: str) -> tuple[int, ...]:
    return tuple(i for i, letter in enumerate(axes) if letter in SPATIAL)


def default_axes(ndim: int) -> str:
    """The README's default axes: yx for 2-D data, zyx for 3-D."""
    return {1: "x", 2: "yx", 3: "zyx"}[ndim]


def geometry(config: Any, axes: str) -> Geometry:
    spatial = spatial_of(axes)
    kernel_size = step_size(config, len(spatial))
    pads = per_axis(config.pad, len(spatial))
    strides = per_axis(config.stride, len(spatial))
    sizes, widths, steps = [], [], []
    for axis in range(len(axes)):
        if axis in spatial:
            k = spatial.index(axis)
            sizes.append(kernel_size[k])
            widths.append(pad_widths(pads[k], kernel_size[k]))
            steps.append(int(strides[k]))
        else:
            sizes.append(1)
            widths.append((0, 0))
            steps.append(1)
    return Geometry(tuple(sizes), tuple(widths), tuple(steps))


# --- kernels: the README's "Filters" table and scipy.ndimage's definitions -----------------------


def gaussian_1d(sigma: float, truncate: float, order: int = 0) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d's kernel: exp(-x²/2σ²) sampled at the integers within
    radius int(truncate·σ + 0.5), normalised to sum 1; ``order=2`` is its second derivative,
    the normalised Gaussian times (x² - σ²)/σ⁴ (what gaussian_laplace applies)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-(x**2) / (2.0 * sigma**2))
    phi /= phi.sum()
    if order == 0:
        return phi
    assert order == 2
    return phi * (x**2 - sigma**2) / sigma**4


def outer(factors: Sequence[np.ndarray]) -> np.ndarray:
    kernel = np.ones(())
    for factor in factors:
        kernel = np.multiply.outer(kernel, np.asarray(factor, dtype=np.float64))
    return kernel


def centred(kernel: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``kernel`` in the centre of a zero kernel of ``shape`` (the README's composites)."""
    out = np.zeros(tuple(shape))
    out[tuple(slice((n - k) // 2, (n - k) // 2 + k) for n, k in zip(shape, kernel.shape, strict=True))] = kernel
    return out


def composite(*terms: np.ndarray) -> np.ndarray:
    """A composite filter's one effective kernel: its parts centred in the largest size."""
    shape = tuple(max(sizes) for sizes in zip(*(t.shape for t in terms), strict=True))
    return sum((centred(t, shape) for t in terms), start=np.zeros(shape))


def identity(ndim: int) -> np.ndarray:
    return np.ones((1,) * ndim)


def laplacian(ndim: int, neighbours: int | None) -> np.ndarray:
    """The 3×3(×3) discrete Laplacian: 1 on each neighbour taken, minus their count in the centre."""
    neighbours = 2 * ndim if neighbours is None else neighbours
    centre = (1,) * ndim
    if neighbours == 3**ndim - 1:
        kernel = np.ones((3,) * ndim)
    else:
        assert neighbours == 2 * ndim, neighbours
        kernel = np.zeros((3,) * ndim)
        for axis in range(ndim):
            for offset in (0, 2):
                kernel[(*centre[:axis], offset, *centre[axis + 1 :])] = 1.0
    kernel[centre] = -float(neighbours)
    return kernel


def gaussian(sigma: Any, truncate: float, ndim: int) -> np.ndarray:
    return outer([gaussian_1d(s, truncate) for s in per_axis(sigma, ndim)])


def convolve_kernel(config: Any, ndim: int) -> np.ndarray:
    if config.kernel_file is not None:
        kernel = np.load(config.kernel_file, allow_pickle=False).astype(np.float64)
    else:
        kernel = np.array(config.kernel, dtype=np.float64)
    assert kernel.ndim == ndim, (kernel.shape, ndim)
    return kernel / kernel.sum() if config.normalize else kernel


def gradient_components(operator: str, ndim: int) -> list[np.ndarray]:
    """The derivative along each spatial axis, smoothed across the others."""
    return [outer([DERIVATIVE if a == axis else SMOOTHING[operator] for a in range(ndim)]) for axis in range(ndim)]


def linear_kernel(config: Any, ndim: int) -> np.ndarray:
    """The one effective kernel of a linear filter, over the spatial axes, before any flip."""
    name = ALIASES.get(config.filter, config.filter)
    if name == "convolve":
        return convolve_kernel(config, ndim)
    if name == "box":
        return outer([np.full(n, 1.0 / n) for n in per_axis(config.size, ndim)])
    if name == "gaussian":
        return gaussian(config.sigma, config.truncate, ndim)
    if name == "laplacian":
        return laplacian(ndim, config.neighbours)
    if name == "sharpen":  # image - amount * laplacian(image)
        return composite(identity(ndim), -config.amount * laplacian(ndim, config.neighbours))
    if name == "unsharp":  # image + amount * (image - gaussian(image))
        blur = gaussian(config.sigma, config.truncate, ndim)
        return composite((1.0 + config.amount) * identity(ndim), -config.amount * blur)
    if name == "log":  # scipy.ndimage.gaussian_laplace: Σ over axes of the 2nd derivative along it
        sigmas = per_axis(config.sigma, ndim)
        return composite(
            *(
                outer([gaussian_1d(s, config.truncate, order=2 if a == axis else 0) for a, s in enumerate(sigmas)])
                for axis in range(ndim)
            )
        )
    if name == "dog":  # gaussian(σ) - gaussian(σ2)
        return composite(gaussian(config.sigma, config.truncate, ndim), -gaussian(config.sigma2, config.truncate, ndim))
    raise AssertionError(f"not a linear filter: {config.filter}")


def step_kernels(config: Any, ndim: int) -> list[np.ndarray] | None:
    """The kernels a step correlates with, flipped if asked (the gradient's components, or one
    effective kernel); None for rank and pointwise filters."""
    name = ALIASES.get(config.filter, config.filter)
    if name in RANK_FILTERS or name in POINTWISE_FILTERS:
        return None
    found = gradient_components(name, ndim) if name in SMOOTHING else [linear_kernel(config, ndim)]
    return [np.flip(k).copy() for k in found] if config.flip else found


def step_size(config: Any, ndim: int) -> tuple[int, ...]:
    """The kernel size F of a step along each spatial axis."""
    name = ALIASES.get(config.filter, config.filter)
    if name in RANK_FILTERS:
        return tuple(int(n) for n in per_axis(config.size, ndim))
    if name in POINTWISE_FILTERS:
        return (1,) * ndim
    kernels = step_kernels(config, ndim)
    assert kernels is not None
    return kernels[0].shape


# --- one step on the whole image -----------------------------------------------------------------


def _axes_of(step: Any, axes: str | None, ndim: int) -> str:
    return axes if axes is not None else default_axes(ndim)


def _config(step: Any) -> Any:
    """A plan's step (``StepPlan``) or the step's validated config itself."""
    return getattr(step, "config", step)


def pad_step_input(image: np.ndarray, step: Any, axes: str | None = None) -> np.ndarray:
    """The step's input padded as the README's tables say (``numpy.pad``)."""
    config = _config(step)
    widths = geometry(config, _axes_of(step, axes, image.ndim)).pads
    mode = NUMPY_PAD[config.padding]
    if mode is None:
        value = 0.0 if config.padding == "zero" else float(config.cval)
        return np.pad(image, widths, mode="constant", constant_values=value)
    return np.pad(image, widths, mode=mode)


def windows(image: np.ndarray, step: Any, axes: str | None = None) -> np.ndarray:
    """Every kept window: shape (*output shape, *kernel size); window i starts at padded i·S."""
    config = _config(step)
    where = geometry(config, _axes_of(step, axes, image.ndim))
    padded = pad_step_input(image, config, _axes_of(step, axes, image.ndim))
    view = sliding_window_view(padded, where.sizes)
    view = view[tuple(slice(None, None, s) for s in where.strides)]
    assert view.shape[: image.ndim] == where.out_shape(image.shape), "the README's N_out formula"
    return view


def correlate(view: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Sum of pixel × coefficient over the window's non-zero coefficients.

    A pixel under a zero coefficient does not take part, so NaN or infinity there does not
    reach the output (as in scipy.ndimage.correlate).
    """
    ndim = view.ndim // 2
    total = np.zeros(view.shape[:ndim])
    for offset in zip(*np.nonzero(kernel), strict=True):  # term by term: no window-sized copy
        total += view[(Ellipsis, *offset)] * kernel[offset]
    return total


def expanded(kernel: np.ndarray, axes: str) -> np.ndarray:
    """A spatial kernel over every data axis: size 1 along t and c."""
    spatial = spatial_of(axes)
    shape = [1] * len(axes)
    for length, axis in zip(kernel.shape, spatial, strict=True):
        shape[axis] = length
    return kernel.reshape(shape)


def reference_step(image: np.ndarray, step: Any, axes: str | None = None) -> np.ndarray:
    config = _config(step)
    axes = _axes_of(step, axes, image.ndim)
    name = ALIASES.get(config.filter, config.filter)
    ndim = len(spatial_of(axes))
    view = windows(image, config, axes)
    kernels = step_kernels(config, ndim)
    if kernels is not None:
        parts = [correlate(view, expanded(k, axes)) for k in kernels]
        if name not in SMOOTHING:
            return parts[0]
        if config.output == "magnitude":
            return np.sqrt(sum(p**2 for p in parts))
        letters = "".join(letter for letter in axes if letter in SPATIAL)
        return parts[letters.index(config.output)]
    if name in RANK_FILTERS:
        flat = view.reshape(*view.shape[: image.ndim], -1)
        ordered = np.sort(flat, axis=-1)
        n = flat.shape[-1]
        rank = {"median": n // 2, "minimum": 0, "maximum": n - 1}[name]
        # NaN has no rank: a window that holds one gives NaN.
        return np.where(np.isnan(flat).any(axis=-1), np.nan, ordered[..., rank])
    x = view[(Ellipsis,) + (0,) * image.ndim]
    if name == "abs":
        return np.abs(x)
    if name == "threshold":
        return np.where(x > config.value, float(config.above), float(config.below))
    if name == "clip":
        low = -np.inf if config.min is None else config.min
        high = np.inf if config.max is None else config.max
        return np.minimum(np.maximum(x, low), high)
    assert name == "rescale"
    with warnings.catch_warnings():
        # An image of NaN only has no range: nanmin and nanmax say so with NaN (and a warning),
        # and every output is NaN below.
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanmin(image), np.nanmax(image)
    if not high > low:
        return np.where(np.isnan(x), x, config.min)
    return (x - low) * (config.max - config.min) / (high - low) + config.min


# --- a whole chain ---------------------------------------------------------------------------------


def _steps(plan: Any) -> list[Any]:
    return [step.config for step in plan.steps]


def intermediates(image: np.ndarray, plan: Any) -> list[np.ndarray]:
    """The input of every step, then the chain's output, in float64."""
    images = [np.asarray(image, dtype=np.float64)]
    for config in _steps(plan):
        images.append(reference_step(images[-1], config, plan.axes))
    return images


def reference(image: np.ndarray, plan: Any) -> np.ndarray:
    """The chain on the whole image in memory, in float64 (``plan``: its axes and step configs)."""
    return intermediates(image, plan)[-1]


def rescale_is_well_conditioned(image: np.ndarray, plan: Any) -> bool:
    """False when a rescale step stretches a range so narrow that rounding noise decides it.

    An image that is flat up to rounding (a constant blurred, say) has a "range" of a few ulps;
    rescaling it magnifies rounding differences to the whole output range.
    """
    for config, before in zip(_steps(plan), intermediates(image, plan), strict=False):
        if config.filter == "rescale" and np.isfinite(before).any():
            low, high = np.nanmin(before), np.nanmax(before)
            scale = max(abs(low), abs(high), 1.0)
            if 0 < high - low < 1e-6 * scale:
                return False
    return True


def chain_shape(shape: Sequence[int], plan: Any) -> tuple[int, ...]:
    """The chain's output shape by the README's formula, step after step."""
    out = tuple(shape)
    for config in _steps(plan):
        out = geometry(config, plan.axes).out_shape(out)
    return out
