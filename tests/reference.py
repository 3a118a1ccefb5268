"""The whole-image reference: each step written plainly with numpy.pad and sliding windows.

Deliberately naive and slow: float64 throughout, no blocks, no separable passes, no scipy.
The property tests compare convpipe's chunked output against it.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from convpipe.geometry import PADDING_MODES
from convpipe.ops import Gradient, Linear, Pointwise, Rank
from convpipe.plan import Plan, StepPlan


def pad_step_input(image: np.ndarray, step: StepPlan) -> np.ndarray:
    widths = [(a.pad_before, a.pad_after) for a in step.axes]
    mode = PADDING_MODES[step.config.padding]
    if mode == "constant":
        return np.pad(image, widths, mode="constant", constant_values=step.config.cval)
    return np.pad(image, widths, mode=mode)


def windows(image: np.ndarray, step: StepPlan) -> np.ndarray:
    """Every kept window: shape (*output shape, *kernel size)."""
    padded = pad_step_input(image, step)
    view = sliding_window_view(padded, tuple(a.size for a in step.axes))
    return view[tuple(slice(None, None, a.stride) for a in step.axes)]


def correlate(image: np.ndarray, step: StepPlan, kernel: np.ndarray) -> np.ndarray:
    """Sum of pixel x coefficient over the window's non-zero coefficients.

    A pixel under a zero coefficient does not take part, so NaN or infinity there does not
    reach the output (as in scipy.ndimage.correlate).
    """
    view = windows(image, step)
    taps = kernel != 0
    if not taps.any():
        return np.zeros(view.shape[: image.ndim])
    return view[..., taps] @ kernel[taps]


def reference_step(image: np.ndarray, step: StepPlan) -> np.ndarray:
    op = step.op
    if isinstance(op, Linear):
        return correlate(image, step, op.kernel())
    if isinstance(op, Gradient):
        parts = [correlate(image, step, c.kernel()) for c in op.components]
        return np.sqrt(sum(p**2 for p in parts)) if op.magnitude else parts[0]
    if isinstance(op, Rank):
        view = windows(image, step)
        flat = view.reshape(*view.shape[: image.ndim], -1)
        ordered = np.sort(flat, axis=-1)
        n = flat.shape[-1]
        rank = {"median": n // 2, "minimum": 0, "maximum": n - 1}[op.statistic]
        # NaN has no rank: a window that holds one gives NaN.
        return np.where(np.isnan(flat).any(axis=-1), np.nan, ordered[..., rank])
    assert isinstance(op, Pointwise)
    x = windows(image, step)[(Ellipsis,) + (0,) * image.ndim]
    p = dict(op.params)
    if op.function == "abs":
        return np.abs(x)
    if op.function == "threshold":
        return np.where(x > p["value"], p["above"], p["below"])
    if op.function == "clip":
        return np.clip(x, p["min"], p["max"])
    low, high = np.nanmin(image), np.nanmax(image)
    if not high > low:
        return np.where(np.isnan(x), x, p["min"])
    return (x - low) * (p["max"] - p["min"]) / (high - low) + p["min"]


def intermediates(image: np.ndarray, plan: Plan) -> list[np.ndarray]:
    """The input of every step, then the chain's output, in float64."""
    images = [np.asarray(image, dtype=np.float64)]
    for step in plan.steps:
        images.append(reference_step(images[-1], step))
    return images


def reference(image: np.ndarray, plan: Plan) -> np.ndarray:
    """The chain on the whole image in memory, in float64."""
    return intermediates(image, plan)[-1]


def rescale_is_well_conditioned(image: np.ndarray, plan: Plan) -> bool:
    """False when a rescale step stretches a range so narrow that rounding noise decides it.

    An image that is flat up to rounding (a constant blurred, say) has a "range" of a few ulps;
    rescaling it magnifies rounding differences to the whole output range.
    """
    for step, before in zip(plan.steps, intermediates(image, plan), strict=False):
        if isinstance(step.op, Pointwise) and step.op.needs_range and np.isfinite(before).any():
            low, high = np.nanmin(before), np.nanmax(before)
            scale = max(abs(low), abs(high), 1.0)
            if 0 < high - low < 1e-6 * scale:
                return False
    return True
