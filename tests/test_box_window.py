"""``box``/``mean`` in time independent of the window size (README, "Performance"): large
windows run as running sums, never as a pass over every tap, and still equal the
whole-image definition for every padding, stride and chunking, halos deeper than a block.

The reference pads with numpy.pad and sums windows with cumulative sums in float64; the
backend's direct OpenCV passes (sepFilter2D, filter2D, whose time grows with the taps) are
watched to show they are not used.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import pytest

import convpipe
from convpipe import backend

RNG = np.random.default_rng(5000)

NUMPY_MODES = {"reflect": "reflect", "symmetric": "symmetric", "replicate": "edge", "wrap": "wrap"}


@pytest.fixture
def per_tap_passes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The tap counts of every OpenCV pass whose time grows with the kernel's taps."""
    taps: list[int] = []
    separable, dense = cv2.sepFilter2D, cv2.filter2D

    def sep_filter(src: np.ndarray, ddepth: int, kernel_x: np.ndarray, kernel_y: np.ndarray, **options: Any):
        taps.append(max(np.size(kernel_x), np.size(kernel_y)))
        return separable(src, ddepth, kernel_x, kernel_y, **options)

    def filter_2d(src: np.ndarray, ddepth: int, kernel: np.ndarray, **options: Any):
        taps.append(int(np.size(kernel)))
        return dense(src, ddepth, kernel, **options)

    monkeypatch.setattr(cv2, "sepFilter2D", sep_filter)
    monkeypatch.setattr(cv2, "filter2D", filter_2d)
    yield taps


def reference(
    image: np.ndarray,
    size: Sequence[int],
    padding: str,
    stride: Sequence[int] | None = None,
    cval: float = 0.0,
    weight: float | None = None,
) -> np.ndarray:
    """``weight`` (default: 1 / taps, the mean) times every window's sum, ``pad: same``."""
    stride = stride or [1] * image.ndim
    widths = [((f - 1) // 2, f // 2) for f in size]
    if padding in NUMPY_MODES:
        padded = np.pad(image.astype(np.float64), widths, mode=NUMPY_MODES[padding])
    else:
        padded = np.pad(image.astype(np.float64), widths, constant_values=cval if padding == "constant" else 0.0)
    out = padded
    for axis, (f, s) in enumerate(zip(size, stride, strict=True)):
        shape = list(out.shape)
        shape[axis] = 1
        sums = np.concatenate([np.zeros(shape), np.cumsum(out, axis=axis)], axis=axis)
        starts = np.arange(0, out.shape[axis] - f + 1, s)
        out = np.take(sums, starts + f, axis=axis) - np.take(sums, starts, axis=axis)
    return out * (1.0 / np.prod(size) if weight is None else weight)


def filtered(image: np.ndarray, step: dict[str, Any], chunks: tuple[int, ...], dtype: str = "float32") -> np.ndarray:
    return convpipe.filter_array(image, [step], chunks=chunks, dtype=dtype).compute(scheduler="sync")


@pytest.mark.parametrize("padding", ["reflect", "symmetric", "replicate", "wrap", "zero", "constant"])
def test_large_box_equals_the_reference_for_every_padding(padding: str, per_tap_passes: list[int]) -> None:
    """131 rows of window on a 90-row image in blocks of 16: the padding goes deeper than the
    image and the halo deeper than a block, and no pass runs over the taps."""
    image = RNG.random((90, 100), dtype=np.float32)
    step = {"filter": "box", "size": [131, 67], "padding": padding, **({"cval": 2.5} if padding == "constant" else {})}
    got = filtered(image, step, (16, 16))
    expected = reference(image, [131, 67], padding, cval=2.5)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert per_tap_passes == []


@pytest.mark.parametrize("stride", [[2, 3], [5, 1], [20, 20]])
def test_large_strided_mean_equals_the_reference(stride: list[int], per_tap_passes: list[int]) -> None:
    image = RNG.random((70, 80), dtype=np.float32)
    step = {"filter": "mean", "size": [17, 40], "stride": stride}
    got = filtered(image, step, (16, 24))
    np.testing.assert_allclose(got, reference(image, [17, 40], "reflect", stride), rtol=1e-6, atol=1e-6)
    assert per_tap_passes == []


def test_box_of_1001_on_a_64_pixel_image_runs_without_a_pass_over_its_taps(per_tap_passes: list[int]) -> None:
    """A million-tap window over blocks of 16: what took seconds per block as a pass over the
    taps is two running sums per block."""
    image = RNG.random((64, 64), dtype=np.float32)
    got = filtered(image, {"filter": "box", "size": 1001}, (16, 16))
    np.testing.assert_allclose(got, reference(image, [1001, 1001], "reflect"), rtol=1e-6, atol=1e-6)
    assert per_tap_passes == []


def test_large_box_on_a_volume_equals_the_reference(per_tap_passes: list[int]) -> None:
    """z, y and x: the leading axis runs its own running sum."""
    image = RNG.standard_normal((20, 24, 28))
    step = {"filter": "box", "size": [17, 19, 21], "padding": "symmetric", "stride": [2, 1, 3]}
    got = filtered(image, step, (8, 8, 8), dtype="float64")
    np.testing.assert_allclose(got, reference(image, [17, 19, 21], "symmetric", [2, 1, 3]), rtol=0, atol=1e-13)
    assert per_tap_passes == []


def test_large_box_in_float64_stays_within_its_rounding_bound(per_tap_passes: list[int]) -> None:
    """Running sums carry rounding from sample to sample: per pass at most about (2 x the
    samples on a line) x 2**-53 x the line's largest |sample|. Here an offset of 1e6 makes
    that bound 2 x 2 x 340 x 2**-53 x 1e6 = 1.5e-7, and the error stays below it."""
    image = 1e6 + RNG.standard_normal((120, 140))
    got = filtered(image, {"filter": "box", "size": 201}, (64, 64), dtype="float64")
    bound = 2 * 2 * (140 + 200) * 2.0**-53 * 1e6
    np.testing.assert_allclose(got, reference(image, [201, 201], "reflect"), rtol=0, atol=bound)
    assert per_tap_passes == []


def test_box_of_integers_below_2_to_53_sums_exactly(per_tap_passes: list[int]) -> None:
    """Integers in float64 (an int32 input): every window sum is exact, and the mean of a row
    is that sum times 1/size, rounded once (README, "What it computes": exact integers)."""
    image = RNG.integers(-(2**31), 2**31 - 1, size=(1, 300), dtype=np.int32)
    got = filtered(image, {"filter": "box", "size": [1, 101], "padding": "zero"}, (1, 64), dtype="float64")
    sums = reference(image, [1, 101], "zero", weight=1.0)
    np.testing.assert_array_equal(got, sums * (1.0 / 101))
    assert per_tap_passes == []


def test_large_constant_convolve_kernel_runs_as_a_box(per_tap_passes: list[int]) -> None:
    image = RNG.random((50, 60), dtype=np.float32)
    step = {"filter": "convolve", "kernel": np.full((20, 30), 0.25).tolist(), "padding": "wrap"}
    got = filtered(image, step, (16, 16))
    np.testing.assert_allclose(got, reference(image, [20, 30], "wrap", weight=0.25), rtol=1e-6)
    assert per_tap_passes == []


def test_large_box_spreads_nan_and_infinity_over_its_window(per_tap_passes: list[int]) -> None:
    """An output whose window holds a NaN is NaN, one holding +inf (and no NaN) is +inf; the
    rest equal the finite reference (README, "Choices where other tools differ")."""
    image = RNG.random((60, 60), dtype=np.float32)
    image[5, 5], image[50, 40] = np.nan, np.inf
    got = filtered(image, {"filter": "box", "size": 21, "padding": "zero"}, (16, 16))
    expected = reference(np.nan_to_num(image, nan=0.0, posinf=0.0), [21, 21], "zero")
    rows, cols = np.ogrid[:60, :60]
    near_nan = (np.abs(rows - 5) <= 10) & (np.abs(cols - 5) <= 10)
    near_inf = (np.abs(rows - 50) <= 10) & (np.abs(cols - 40) <= 10)
    assert np.isnan(got[near_nan]).all()
    assert np.isposinf(got[near_inf & ~near_nan]).all()
    finite = ~(near_nan | near_inf)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-6, atol=1e-6)
    assert per_tap_passes == []


@pytest.mark.parametrize("axis", [0, 1])
def test_a_huge_sample_changes_only_the_windows_that_hold_it(axis: int) -> None:
    """A float fill value (-3.4e38, GDAL's usual one, not declared as nodata) on a line: a
    running sum would lose every later window's small samples to cancellation."""
    image = np.full((40, 120), 100.0, np.float32)
    image[3, 0] = image[0, 3] = np.float32(-3.4028235e38)
    image = image if axis == 1 else np.ascontiguousarray(image.T)
    size = 17
    factors = [np.ones(1), np.full(size, 1 / size)] if axis == 1 else [np.full(size, 1 / size), np.ones(1)]
    got = backend.box(image, factors, (1, 1))
    far = got[:, 20:] if axis == 1 else got[20:, :]
    np.testing.assert_allclose(far, 100.0, rtol=1e-6)
