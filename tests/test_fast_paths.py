"""The fast paths, each checked against the whole-image reference (tests/reference.py).

convpipe takes shortcuts the property tests in test_chains.py rarely reach with their small
images and kernels; each shortcut here gets images just big enough to take it:

- OpenCV's filter2D switches to a DFT at 50 taps for float64 (130 for float32, on builds
  that do it at all): its outputs then depend on the image's size, so convpipe filters such
  kernels plane by plane (backend.DFT_TAPS). A band's result must not depend on how many
  bands its block holds, and any block size must give the reference to rounding.
- The gradient magnitude (sobel, prewitt, scharr) is computed in bands of rows (planes in
  3-D) of about a MiB (ops.BAND_BYTES): at the default 2048² blocks a block is many bands.
- block.py reads the first step's padded window in place (``first_window``), except for
  ``wrap`` and for blocks whose outputs come from padding only; with nodata, a block with no
  nodata sample (``all_valid``) runs exactly as if the input declared none.
- The chunk cache (unit-tested in test_cache.py) under a whole multi-threaded run of a volume.

Each test also checks, with a spy, that the path it is about is taken, so a change of
threshold or layout that moves the images off the path shows up here rather than silently
leaving the path untested.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import dask
import numpy as np
import pytest
import scipy.ndimage as ndi
from reference import gaussian_1d, reference

import convpipe
from convpipe import backend, block, ops
from convpipe.config import from_dict
from convpipe.plan import Plan, bind

F32 = float(np.finfo(np.float32).eps)
F64 = float(np.finfo(np.float64).eps)


def bound(
    image: np.ndarray, steps: list[dict[str, Any]], dtype: str, axes: str | None = None, nodata: Any = None
) -> Plan:
    config = from_dict(
        {
            "input": {"path": "<array>", "axes": axes, "nodata": nodata},
            "output": {"path": "<none>", "dtype": dtype},
            "pipeline": steps,
        }
    )
    return bind(config, image.shape, image.dtype, image.shape)


def run(image: np.ndarray, steps: list[dict[str, Any]], chunks: tuple[int, ...] | None, **options: Any) -> np.ndarray:
    with dask.config.set(scheduler="sync"):
        return convpipe.filter_array(image, steps, chunks=chunks, **options).compute()


class Spy:
    """Wraps a function, recording what each call was given and returned."""

    def __init__(self, function: Callable[..., Any], keep: Callable[..., Any]) -> None:
        self.function, self.keep, self.calls = function, keep, []  # type: ignore[var-annotated]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self.function(*args, **kwargs)
        self.calls.append(self.keep(result, *args, **kwargs))
        return result


@pytest.fixture
def filter2d_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[np.dtype, int, tuple[int, ...]]]]:
    """(image dtype, kernel taps, image shape) of every cv2.filter2D call."""
    spy = Spy(cv2.filter2D, lambda _, image, depth, kernel, **__: (image.dtype, kernel.size, image.shape))
    monkeypatch.setattr(backend.cv2, "filter2D", spy)
    yield spy.calls


# --- the reference's own kernels, against scipy.ndimage ------------------------------------------


@pytest.mark.parametrize(("sigma", "truncate"), [(0.6, 4.0), (1.3, 4.0), (2.5, 2.0), (3.7, 1.5)])
def test_the_references_gaussians_are_scipys(sigma: float, truncate: float) -> None:
    """What tests/reference.py writes from scipy's documentation is what scipy computes: the
    impulse response of gaussian_filter1d, and of gaussian_laplace's second derivative."""
    impulse = np.zeros(41)
    impulse[20] = 1.0
    radius = int(truncate * sigma + 0.5)
    for order in (0, 2):
        theirs = ndi.gaussian_filter1d(impulse, sigma, order=order, truncate=truncate, mode="constant")
        ours = gaussian_1d(sigma, truncate, order)
        assert len(ours) == 2 * radius + 1
        # convolution with a symmetric kernel is correlation
        np.testing.assert_allclose(theirs[20 - radius : 21 + radius], ours, rtol=1e-12, atol=1e-15)
        assert not theirs[: 20 - radius].any() and not theirs[21 + radius :].any()


@pytest.mark.parametrize(
    ("step", "scipy_filter"),
    [
        ({"filter": "sobel", "output": "x"}, lambda a: ndi.sobel(a, axis=-1, mode="mirror")),
        ({"filter": "prewitt", "output": "y"}, lambda a: ndi.prewitt(a, axis=-2, mode="mirror")),
        ({"filter": "log", "sigma": 1.2}, lambda a: ndi.gaussian_laplace(a, 1.2, mode="mirror")),
        ({"filter": "gaussian", "sigma": [0.8, 2.1]}, lambda a: ndi.gaussian_filter(a, [0.8, 2.1], mode="mirror")),
        ({"filter": "median", "size": 3}, lambda a: ndi.median_filter(a, 3, mode="mirror")),
    ],
)
def test_the_reference_agrees_with_scipy(step: dict[str, Any], scipy_filter: Callable[..., np.ndarray]) -> None:
    image = np.random.default_rng(5).normal(0, 10, (23, 31))
    expected = scipy_filter(image)
    np.testing.assert_allclose(reference(image, bound(image, [step], "float64")), expected, rtol=1e-12, atol=1e-10)


# --- padding: zero ------------------------------------------------------------------------------------


def test_zero_padding_ignores_cval() -> None:
    """The README's table: `zero` pads with 0; only `constant` takes `cval` (as scipy.ndimage
    reads cval only in mode='constant')."""
    image = np.arange(1.0, 17.0).reshape(4, 4)
    zero = [{"filter": "box", "size": 3, "padding": "zero", "cval": 7.25}]
    plain = [{"filter": "box", "size": 3, "padding": "zero"}]
    np.testing.assert_allclose(run(image, zero, None, dtype="float64"), run(image, plain, None, dtype="float64"))
    np.testing.assert_allclose(run(image, zero, None, dtype="float64"), reference(image, bound(image, zero, "float64")))


# --- OpenCV's DFT path ---------------------------------------------------------------------------------

#: A kernel just past each DFT threshold, and one just below the float64 one.
LONG_KERNELS = [
    pytest.param("float64", (5, 10), id="float64-50-taps-dft"),
    pytest.param("float64", (7, 7), id="float64-49-taps"),
    pytest.param("float32", (10, 13), id="float32-130-taps"),
]


def tolerance(dtype: str) -> float:
    """Rounding relative to max|x|·Σ|w|: a few ulps per tap, as the README's "to float32
    rounding" (the DFT's error grows with log(size), far below this)."""
    return 64 * (F32 if dtype == "float32" else F64)


def kernel_of(shape: tuple[int, ...], seed: int = 0) -> list[Any]:
    return np.random.default_rng(seed).normal(size=shape).round(3).tolist()


@pytest.mark.parametrize(("dtype", "shape"), LONG_KERNELS)
def test_a_band_filtered_with_a_long_kernel_is_the_band_filtered_alone(
    dtype: str, shape: tuple[int, int], filter2d_calls: list[Any]
) -> None:
    """Bands (c) are filtered each on its own: whatever number of bands a block holds, a band's
    result is the one it gets alone, to the bit (a DFT over the bands stacked would not be)."""
    image = np.random.default_rng(1).normal(100, 30, (5, 61, 70)).astype(dtype)
    steps = [{"filter": "convolve", "kernel": kernel_of(shape)}]
    together = run(image, steps, (5, 61, 70), axes="cyx", dtype=dtype)
    in_threes = run(image, steps, (3, 61, 70), axes="cyx", dtype=dtype)
    for c in range(5):
        alone = run(image[c], steps, None, dtype=dtype)
        np.testing.assert_array_equal(together[c], alone, err_msg=f"band {c}, all bands in one block")
        np.testing.assert_array_equal(in_threes[c], alone, err_msg=f"band {c}, blocks of three bands")
    expected = reference(image, bound(image, steps, dtype, axes="cyx"))
    scale = float(np.abs(image).max() * np.abs(np.array(steps[0]["kernel"])).sum())
    np.testing.assert_allclose(together, expected, rtol=0, atol=tolerance(dtype) * scale)
    taps = shape[0] * shape[1]
    assert any(d == np.dtype(dtype) and n == taps for d, n, _ in filter2d_calls), "filter2D no longer does this"


@pytest.mark.parametrize(("dtype", "shape"), LONG_KERNELS)
@pytest.mark.parametrize("padding", ["reflect", "constant"])
def test_a_long_kernel_gives_the_reference_whatever_the_block_size(
    dtype: str, shape: tuple[int, int], padding: str
) -> None:
    """Blocks of 2048², 23×37 and 9×64 (odd, unequal, smaller than the kernel's halo on one
    side) give the reference and each other to rounding, with a stride and even kernel sizes."""
    image = np.random.default_rng(2).normal(0, 50, (70, 90)).astype(dtype)
    steps = [{"filter": "convolve", "kernel": kernel_of(shape, 3), "padding": padding, "cval": 4.0, "stride": [1, 2]}]
    expected = reference(image, bound(image, steps, dtype))
    scale = float(np.abs(image).max() * np.abs(np.array(steps[0]["kernel"])).sum())
    results = [run(image, steps, chunks, dtype=dtype) for chunks in [(2048, 2048), (23, 37), (9, 64)]]
    for got in results:
        assert got.shape == expected.shape == (70, 45)
        np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance(dtype) * scale)
        np.testing.assert_allclose(got, results[0], rtol=0, atol=tolerance(dtype) * scale)


def test_a_3d_kernel_of_long_planes_gives_the_reference_and_does_not_depend_on_z_blocks() -> None:
    """A dense 3-D kernel whose every plane is past the float64 threshold (2×5×10): z blocks
    of any depth give the same bits (each plane alone), and the reference to rounding."""
    image = np.random.default_rng(4).normal(0, 50, (9, 40, 47))
    steps = [{"filter": "convolve", "kernel": kernel_of((2, 5, 10), 5), "padding": "symmetric"}]
    expected = reference(image, bound(image, steps, "float64"))
    whole = run(image, steps, (9, 40, 47), dtype="float64")
    for z in (1, 2, 4):
        np.testing.assert_array_equal(run(image, steps, (z, 40, 47), dtype="float64"), whole, err_msg=f"z blocks {z}")
    scale = float(np.abs(image).max() * np.abs(np.array(steps[0]["kernel"])).sum())
    np.testing.assert_allclose(whole, expected, rtol=0, atol=tolerance("float64") * scale)


# --- the banded gradient magnitude -------------------------------------------------------------------


@pytest.fixture
def bands(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The shape of each band the gradient magnitude's leading pass filters."""
    spy = Spy(backend.separable_leading, lambda _, band, *__: band.shape)
    monkeypatch.setattr(ops.backend, "separable_leading", spy)
    return spy.calls


@pytest.mark.parametrize(
    ("operator", "dtype", "extra"),
    [
        ("sobel", "float32", {}),
        ("prewitt", "float64", {"stride": [2, 3], "padding": "replicate"}),
        ("scharr", "float32", {"stride": 2, "padding": "constant", "cval": -30.0, "pad": "full"}),
        ("sobel", "float64", {"padding": "wrap", "pad": 3}),
    ],
)
def test_gradient_magnitude_in_default_blocks_equals_the_reference(
    operator: str, dtype: str, extra: dict[str, Any], bands: list[tuple[int, ...]]
) -> None:
    """300×2100 in the default 2048² blocks: two blocks across, each filtered in bands of
    about a MiB of rows (dozens of rows of 2050 samples), every band boundary invisible."""
    rng = np.random.default_rng(6)
    y, x = np.mgrid[0:300, 0:2100]
    image = (np.sin(y / 7.0) * np.cos(x / 11.0) * 500 + rng.normal(0, 20, y.shape)).astype(dtype)
    steps = [{"filter": operator, **extra}]
    got = run(image, steps, (2048, 2048), dtype=dtype)
    expected = reference(image, bound(image, steps, dtype))
    assert got.shape == expected.shape
    scale = float(np.abs(image).max()) * 32  # Σ|w| of the two scharr derivatives
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance(dtype) * scale)
    rows = [shape[0] for shape in bands]
    assert sum(r < 300 for r in rows) >= 2, f"not filtered in bands: {rows}"


def test_gradient_magnitude_of_a_volume_in_bands_of_planes(bands: list[tuple[int, ...]]) -> None:
    """In 3-D a band is a few planes (z strided: each band starts on a kept plane); the y and x
    derivatives share their z smoothing."""
    rng = np.random.default_rng(7)
    image = rng.normal(0, 10, (11, 130, 1030)).astype(np.float32)
    steps = [{"filter": "sobel", "stride": [2, 1, 1]}]
    got = run(image, steps, (11, 130, 1030))
    expected = reference(image, bound(image, steps, "float32"))
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance("float32") * float(np.abs(image).max()) * 32)
    assert len({shape for shape in bands}) > 1 and len(bands) >= 2 * 2, f"not filtered in bands: {bands}"


# --- block.py: the first window read in place, and blocks without nodata --------------------------------


@pytest.fixture
def first_windows(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """For each block: whether its first step's window was read in place."""
    spy = Spy(block.first_window, lambda result, *_, **__: result is not None)
    monkeypatch.setattr(block, "first_window", spy)
    return spy.calls


@pytest.mark.parametrize("padding", ["reflect", "symmetric", "replicate", "wrap", "zero", "constant"])
@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_the_first_window_read_in_place_gives_the_reference(
    padding: str, dtype: str, first_windows: list[bool]
) -> None:
    """Border blocks read their window with its padding copied from the samples read: reflected,
    repeated or constant runs, deeper than the block (a 9×9 gaussian on 4×5 blocks), and deeper
    than the image (7 rows)."""
    rng = np.random.default_rng(8)
    for shape, chunks in [((23, 19), (4, 5)), ((7, 30), (3, 8)), ((23, 19), (23, 19))]:
        image = rng.integers(0, 4000, shape).astype(dtype)
        steps = [
            {"filter": "gaussian", "sigma": 1.1, "padding": padding, "stride": [1, 2]},
            {"filter": "sharpen", "padding": padding, "pad": 2},
        ]
        if padding == "constant":
            steps[0]["cval"] = 3.5
        first_windows.clear()
        got = run(image, steps, chunks, dtype="float64")
        expected = reference(image, bound(image, steps, "float64"))
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12 * float(image.max()), err_msg=str(chunks))
        if padding == "wrap":  # border blocks read the far side of the image: gathered instead
            assert False in first_windows
        else:
            assert all(first_windows), f"{sum(first_windows)} of {len(first_windows)} read in place"


def test_blocks_whose_outputs_are_all_padding_give_the_reference(first_windows: list[bool]) -> None:
    """A first step padded far beyond its kernel: blocks at the border need no input sample at
    all (their outputs are constant padding convolved), the next step reads them normally."""
    image = np.random.default_rng(9).normal(0, 5, (10, 12)).astype(np.float32)
    steps = [
        {"filter": "box", "size": 3, "pad": 8, "padding": "constant", "cval": 2.0},
        {"filter": "gaussian", "sigma": 1.0, "padding": "replicate"},
    ]
    got = run(image, steps, (4, 4), dtype="float64")
    expected = reference(image, bound(image, steps, "float64"))
    assert got.shape == expected.shape == (24, 26)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[:2, :2], 2.0)  # far from the image: the cval, blurred
    assert True in first_windows and False in first_windows


def _scene(dtype: str = "float32") -> np.ndarray:
    rng = np.random.default_rng(10)
    y, x = np.mgrid[0:64, 0:96]
    return (np.sin(y / 6.0) * np.cos(x / 9.0) * 40 + rng.normal(0, 3, y.shape)).astype(dtype)


def _blocks(shape: tuple[int, ...], size: int) -> Iterator[tuple[slice, ...]]:
    for i in range(0, shape[0], size):
        for j in range(0, shape[1], size):
            yield (slice(i, i + size), slice(j, j + size))


def _touches(mask: np.ndarray, box: tuple[slice, ...], halo: int) -> bool:
    grown = tuple(slice(max(0, s.start - halo), s.stop + halo) for s in box)
    return bool(mask[grown].any())


@pytest.mark.parametrize(
    ("nodata", "mark"),
    [
        (-9999.0, -9999.0),  # outside the data's range: a block's min and max settle it
        (0.0, 0.0),  # inside the range: blocks with no exact 0 still take the fast path
        (-9999.0, np.nan),  # NaN is nodata too once a value is declared
    ],
)
@pytest.mark.parametrize("policy", ["propagate", "ignore"])
def test_a_block_without_nodata_runs_as_if_none_were_declared(
    nodata: float, mark: float, policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README: "A block with no nodata sample takes the same path as an image without
    nodata". A cloud in one corner: every block whose halo misses it is, to the bit, the run
    that declares no nodata; blocks beside it mark what the reference marks."""
    image = _scene()
    image[image == 0] = 0.5  # exact zeros only where marked
    cloud = np.zeros(image.shape, dtype=bool)
    cloud[40:52, 70:85] = True
    image[cloud] = mark
    steps = [{"filter": "gaussian", "sigma": 1.0, "nodata": policy}, {"filter": "sobel"}]
    halo = 4 + 1  # the gaussian's radius and the sobel's
    spy = Spy(block.all_valid, lambda result, *_: result)
    monkeypatch.setattr(block, "all_valid", spy)
    got = run(image, steps, (16, 16), nodata=nodata, output_nodata="nan")
    clean = np.where(cloud, 7.0, image)  # same samples, no nodata anywhere
    plain = run(clean, steps, (16, 16))
    for box in _blocks(image.shape, 16):
        if not _touches(cloud, box, halo):
            np.testing.assert_array_equal(got[box], plain[box], err_msg=f"block {box}")
    if policy == "propagate":  # nodata is NaN under every non-zero coefficient: the reference with NaN
        with np.errstate(invalid="ignore"):
            expected = reference(np.where(cloud, np.nan, image), bound(image, steps, "float64"))
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        ok = ~np.isnan(expected)
        np.testing.assert_allclose(got[ok], expected[ok], rtol=0, atol=tolerance("float32") * 40 * 32)
    else:  # holes smaller than half a window stay data; the cloud's middle stays nodata
        assert np.isnan(got[44:48, 74:81]).all() and not np.isnan(got[:, :60]).any()
    assert True in spy.calls and False in spy.calls, "no block took the fast path, or every block did"


def test_an_integer_input_with_nodata_in_one_block_only() -> None:
    """uint16, nodata 0 in one block: the others are the chain without nodata, to the bit."""
    image = np.random.default_rng(11).integers(1, 5000, (48, 48)).astype(np.uint16)
    image[30:34, 36:40] = 0
    steps = [{"filter": "box", "size": 3}, {"filter": "laplacian"}]
    got = run(image, steps, (16, 16), nodata=0, output_nodata="nan", dtype="float64")
    plain = run(np.where(image == 0, 1, image).astype(np.uint16), steps, (16, 16), dtype="float64")
    hole = image == 0
    for box in _blocks(image.shape, 16):
        if not _touches(hole, box, 2):
            np.testing.assert_array_equal(got[box], plain[box], err_msg=f"block {box}")
    expected = reference(np.where(hole, np.nan, image.astype(np.float64)), bound(image, steps, "float64"))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    ok = ~np.isnan(expected)
    np.testing.assert_allclose(got[ok], expected[ok], rtol=1e-12, atol=1e-9)


# --- the chunk cache, under a whole run ------------------------------------------------------------------


def test_a_volume_run_through_the_chunk_cache_equals_the_reference(tmp_path: Path) -> None:
    """test_cache.py checks the cache piece by piece; here a whole threaded run of a volume in
    thin storage chunks (the case the cache is for: every block's halo reaches into chunks its
    neighbours decode) equals the reference and, to the bit, the run from memory."""
    import zarr

    image = np.random.default_rng(12).integers(0, 3000, (12, 64, 72)).astype(np.uint16)
    source = tmp_path / "volume.zarr"
    zarr.create_array(str(source), shape=image.shape, chunks=(2, 16, 24), dtype="u2")[...] = image
    steps = [{"filter": "gaussian", "sigma": 1.0}, {"filter": "sobel", "stride": [1, 2, 2]}]
    config = from_dict(
        {
            "input": {"path": str(source), "chunks": [4, 32, 48]},
            "output": {"path": str(tmp_path / "out.zarr"), "dtype": "float64"},
            "pipeline": steps,
        }
    )
    plan = convpipe.make_plan(config)
    assert plan.cache_bytes > 0 and plan.num_blocks > 8
    convpipe.run(config, scheduler_name="threads", workers=4, progress=None)
    written = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    np.testing.assert_array_equal(written, run(image, steps, (4, 32, 48), dtype="float64"))
    np.testing.assert_allclose(written, reference(image, plan), rtol=1e-12, atol=1e-9)
