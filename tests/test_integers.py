"""Integer images keep their values (README, "What it computes"): identity chains copy every
int32, uint32, int64 and uint64 value exactly, filters on 32-bit integers are exact to the
nearest integer, and casting to an integer output clips at the dtype's ends, never wraps.

Every expected value is computed here with plain numpy, from the image itself.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr

import convpipe
from convpipe.config import from_dict

RNG = np.random.default_rng(13)


def extremes_image(dtype: str, shape: tuple[int, int] = (40, 50)) -> np.ndarray:
    """Random values over the whole range of ``dtype``, with its ends and the values float32
    (above 2**24) and float64 (above 2**53) cannot hold in the first rows."""
    info = np.iinfo(dtype)
    image = RNG.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    image[0, :4] = [info.min, info.max, info.max - 1, info.min + 1]
    image[1, :3] = [2**24 + 1, 2**31 - 1, info.max // 3]
    if info.bits == 64:
        image[2, :4] = [2**53 + 1, 2**62 + 3, 2**63 - 1, 2**63 - 3]
    return image


def run_chain(
    tmp_path: Path,
    image: np.ndarray,
    pipeline: list[dict[str, Any]],
    name: str = "out.zarr",
    **output: Any,
) -> np.ndarray:
    """Run the chain on ``image`` stored as Zarr (blocks of 16) into ``name``; read it back.
    Any warning (a RuntimeWarning from a wrapping cast) fails the test."""
    source = tmp_path / f"input-{image.dtype}.zarr"
    if not source.exists():
        zarr.create_array(str(source), data=image, chunks=(16, 16))
    target = tmp_path / name
    settings = {"path": str(target), "dtype": "input", "overwrite": True, **output}
    config = from_dict({"input": {"path": str(source)}, "output": settings, "pipeline": pipeline})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convpipe.run(config)
    if target.suffix == ".tif":
        return tifffile.imread(str(target))
    return np.asarray(zarr.open_array(str(target / "0") if name.endswith(".ome.zarr") else str(target), mode="r"))


def windows(image: np.ndarray, size: int, padding: str) -> np.ndarray:
    """Every size x size window of the image padded as ``pad: same`` pads it."""
    padded = np.pad(image, [((size - 1) // 2, size // 2)] * 2, mode=padding)
    return np.lib.stride_tricks.sliding_window_view(padded, (size, size))


def test_int32_identity_chain_round_trips_exactly(tmp_path: Path) -> None:
    image = extremes_image("int32")
    out = run_chain(tmp_path, image, [{"filter": "box", "size": 1}])
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, image)


def test_uint32_identity_chain_round_trips_exactly(tmp_path: Path) -> None:
    image = extremes_image("uint32")
    out = run_chain(tmp_path, image, [{"filter": "gaussian", "sigma": 0.1}])  # a one-tap kernel: 1
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("dtype", ["int64", "uint64"])
@pytest.mark.parametrize("name", ["out.zarr", "out.ome.zarr", "out.tif", "cog.tif"])
def test_int64_and_uint64_identity_chains_round_trip_every_value(tmp_path: Path, dtype: str, name: str) -> None:
    """Beyond 2**53 float64 holds only even integers, and 2**63 - 1 rounds up to 2**63: a
    chain that only moves samples runs in the input's own dtype and loses none of them."""
    image = extremes_image(dtype)
    extra = {"format": "cog"} if name == "cog.tif" else {}
    out = run_chain(tmp_path, image, [{"filter": "box", "size": 1}], name, **extra)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("dtype", ["int64", "uint64"])
def test_int64_chains_that_move_samples_are_exact(tmp_path: Path, dtype: str) -> None:
    """Padding, stride and a median or maximum pick samples; they never pass through float."""
    image = extremes_image(dtype)
    pipeline = [
        {"filter": "convolve", "kernel": [[1]], "pad": 2, "padding": "symmetric", "stride": [1, 2]},
        {"filter": "median", "size": 3},
        {"filter": "maximum", "size": 3, "padding": "wrap"},
    ]
    out = run_chain(tmp_path, image, pipeline)
    step = np.pad(image, 2, mode="symmetric")[:, ::2]
    step = np.sort(windows(step, 3, "reflect").reshape(*step.shape, 9), axis=-1)[..., 4]
    step = windows(step, 3, "wrap").max(axis=(-2, -1))
    np.testing.assert_array_equal(out, step)


@pytest.mark.parametrize("dtype", ["int64", "uint64"])
def test_int64_extremes_never_wrap(tmp_path: Path, dtype: str) -> None:
    """A filter computes in float64, where the maximum is 2**63 (2**64) and a sum of four goes
    beyond: written back it is the maximum, not the minimum, and with no RuntimeWarning."""
    info = np.iinfo(dtype)
    image = np.full((32, 32), info.max, dtype=dtype)
    image[:, 16:] = info.min
    out = run_chain(tmp_path, image, [{"filter": "convolve", "kernel": [[1, 1], [1, 1]], "padding": "replicate"}])
    np.testing.assert_array_equal(out[:, :15], info.max)
    np.testing.assert_array_equal(out[:, 16:], info.min)


def test_int32_box_is_exact_to_the_nearest_integer(tmp_path: Path) -> None:
    """Values above 2**24 are computed in float64, so the mean of a window is the nearest
    integer to the exact mean (it is never halfway: a sum over 9 is k/9)."""
    image = RNG.integers(2**30, 2**31 - 1, size=(40, 50), dtype=np.int32)
    out = run_chain(tmp_path, image, [{"filter": "box", "size": 3}])
    sums = windows(image.astype(np.int64), 3, "reflect").sum(axis=(-2, -1))
    np.testing.assert_array_equal(out, np.rint(sums / 9).astype(np.int32))


@pytest.mark.parametrize("dtype", ["int64", "uint64"])
def test_int64_and_uint64_are_output_dtypes(tmp_path: Path, dtype: str) -> None:
    """A float image written as int64 or uint64: rounded to nearest, clipped at both ends
    (values past 2**63 or 2**64 become the maximum exactly)."""
    info = np.iinfo(dtype)
    image = np.array([[-1e30, -(2.0**63), -2.6, -0.4, 2.5, 7.5, 2.0**53, 2.0**63, 2.0**64, 1e30]] * 4)
    out = run_chain(tmp_path, image, [{"filter": "box", "size": 1}], dtype=dtype)
    assert out.dtype == np.dtype(dtype)
    if dtype == "int64":
        expected = [info.min, info.min, -3, 0, 2, 8, 2**53, info.max, info.max, info.max]
    else:
        expected = [0, 0, 0, 0, 2, 8, 2**53, 2**63, info.max, info.max]
    np.testing.assert_array_equal(out, np.array([expected] * 4, dtype=dtype))


def test_int32_pyramid_levels_are_the_nearest_integer_to_the_mean(tmp_path: Path) -> None:
    image = RNG.integers(2**30, 2**31 - 1, size=(40, 50), dtype=np.int32)
    run_chain(tmp_path, image, [{"filter": "box", "size": 1}], "out.ome.zarr", pyramid=1)
    level = np.asarray(zarr.open_array(str(tmp_path / "out.ome.zarr" / "1"), mode="r"))
    quads = image.astype(np.int64).reshape(20, 2, 25, 2).sum(axis=(1, 3))
    np.testing.assert_array_equal(level, np.rint(quads / 4).astype(np.int32))


@pytest.mark.parametrize("dtype", ["int64", "uint64"])
def test_int64_cog_overviews_of_the_extremes_never_wrap(tmp_path: Path, dtype: str) -> None:
    """An overview averages in float64, where the maximum is 2**63 (2**64)."""
    info = np.iinfo(dtype)
    image = np.full((64, 64), info.max, dtype=dtype)
    image[:, 32:] = info.min
    run_chain(tmp_path, image, [{"filter": "box", "size": 1}], "cog.tif", format="cog", chunks=[16, 16])
    with tifffile.TiffFile(str(tmp_path / "cog.tif")) as tiff:
        levels = [level.asarray() for level in tiff.series[0].levels]
    assert len(levels) > 1
    for level in levels:
        half = level.shape[1] // 2
        np.testing.assert_array_equal(level[:, :half], info.max)
        np.testing.assert_array_equal(level[:, half:], info.min)
