"""End to end through files: Zarr (v2, v3, in a group) and TIFF (tiled, striped, BigTIFF) in,
Zarr v3 out, compared with the whole-image reference."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import tifffile
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import reference, rescale_is_well_conditioned
from strategies import case

import convpipe
from convpipe.config import from_dict
from convpipe.errors import ConfigError
from convpipe.plan import bind


def write_input(folder: Path, image: np.ndarray, kind: str) -> dict[str, Any]:
    """Write ``image`` as ``kind``; return the config's input section for it."""
    if kind == "zarr-v3":
        zarr.create_array(str(folder / "in.zarr"), data=image, chunks=tuple(max(1, n // 2) for n in image.shape))
        return {"path": str(folder / "in.zarr")}
    if kind == "zarr-v2":
        array = zarr.create_array(
            str(folder / "in.zarr"),
            shape=image.shape,
            dtype=image.dtype,
            zarr_format=2,
            chunks=image.shape,
        )
        array[...] = image
        return {"path": str(folder / "in.zarr")}
    if kind == "zarr-group":
        group = zarr.open_group(str(folder / "in.zarr"), mode="w")
        group.create_array("other", shape=(2,), dtype="f4")
        group.create_array("image", data=image)
        return {"path": str(folder / "in.zarr"), "array": "image"}
    if kind == "tiff-tiled":
        tifffile.imwrite(folder / "in.tif", image, tile=(16, 16), photometric="minisblack")
    elif kind == "tiff-striped":
        tifffile.imwrite(folder / "in.tif", image, rowsperstrip=3, compression="zlib", photometric="minisblack")
    elif kind == "bigtiff":
        tifffile.imwrite(folder / "in.tif", image, bigtiff=True, photometric="minisblack")
    else:
        raise AssertionError(kind)
    return {"path": str(folder / "in.tif")}


KINDS = ["zarr-v3", "zarr-v2", "zarr-group", "tiff-tiled", "tiff-striped", "bigtiff"]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(case(max_steps=3), st.sampled_from(KINDS))
def test_run_through_files_equals_reference(example: Any, kind: str) -> None:
    image, chunks, steps = example
    if kind.startswith("tiff") or kind == "bigtiff":
        image = image.reshape(image.shape[-2:]) if image.ndim == 2 else image
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = write_input(folder, image, kind)
        data = {
            "input": {**source, "chunks": list(chunks)},
            "output": {"path": str(folder / "out.zarr"), "dtype": "float64"},
            "pipeline": steps,
        }
        config = from_dict(data)
        try:
            plan = bind(config, image.shape, image.dtype, image.shape)
        except ConfigError:
            return  # an empty output: rejected before anything is written, tested elsewhere
        if not rescale_is_well_conditioned(image, plan):
            return
        with dask.config.set(scheduler="sync"):
            convpipe.run(config)
        out = zarr.open_array(str(folder / "out.zarr"), mode="r")
        assert out.attrs["convpipe"]["complete"] is True
        expected = reference(image, plan)
        scale = max(1.0, float(np.nanmax(np.abs(expected), initial=0.0)), float(np.abs(image).max()))
        np.testing.assert_allclose(out[...], expected, rtol=1e-9, atol=1e-9 * scale, equal_nan=True)


@pytest.fixture
def image() -> np.ndarray:
    rng = np.random.default_rng(7)
    return (rng.random((70, 90)) * 60000).astype(np.uint16)


@pytest.mark.parametrize("kind", KINDS)
def test_every_input_kind_gives_the_same_output(tmp_path: Path, image: np.ndarray, kind: str) -> None:
    steps = [
        {"filter": "gaussian", "sigma": 2.0},
        {"filter": "sharpen"},
        {"filter": "sobel", "stride": 2},
    ]
    source = write_input(tmp_path, image, kind)
    output = {"path": str(tmp_path / "out.zarr"), "dtype": "float64"}
    config = from_dict({"input": {**source, "chunks": [32, 32]}, "output": output, "pipeline": steps})
    convpipe.run(config)
    got = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    expected = convpipe.filter_array(image, steps, dtype="float64").compute()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-9)
    assert got.dtype == np.float64 and got.shape == (35, 45)


def test_to_dask_is_lazy_and_equals_the_written_output(tmp_path: Path, image: np.ndarray) -> None:
    source = write_input(tmp_path, image, "zarr-v3")
    config = from_dict(
        {
            "input": {**source, "chunks": [16, 64]},
            "output": {"path": str(tmp_path / "out.zarr")},
            "pipeline": [
                {"filter": "median", "size": 3},
                {"filter": "rescale", "min": 0, "max": 1},
            ],
        }
    )
    lazy = convpipe.to_dask(config)
    assert not (tmp_path / "out.zarr").exists()
    assert lazy.chunks == ((16, 16, 16, 16, 6), (64, 26))
    convpipe.run(config)
    written = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    np.testing.assert_array_equal(lazy.compute(), written[...])
    assert written.chunks == (16, 64)  # one storage chunk per block: writers never share one
    assert np.nanmin(written[...]) == 0.0 and np.nanmax(written[...]) == 1.0


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        ("uint8", [0, 0, 2, 3, 255, 255]),
        ("int16", [-32768, -2, 2, 3, 300, 32767]),
        ("uint16", [0, 0, 2, 3, 300, 65535]),
    ],
)
def test_integer_outputs_round_and_clip_never_wrap(tmp_path: Path, dtype: str, expected: list[int]) -> None:
    values = np.array([[-40000.0, -2.4, 2.5, 2.6, 300.0, 70000.0]], dtype=np.float32)
    zarr.create_array(str(tmp_path / "in.zarr"), data=values)
    config = from_dict(
        {
            "input": {"path": str(tmp_path / "in.zarr")},
            "output": {"path": str(tmp_path / "out.zarr"), "dtype": dtype},
            "pipeline": [{"filter": "convolve", "kernel": [[1.0]]}],
        }
    )
    convpipe.run(config)
    got = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    # Round to nearest (ties to even: 2.5 -> 2), then clip to the type's range.
    np.testing.assert_array_equal(got, np.array([expected], dtype=dtype))
    assert got.dtype == np.dtype(dtype)


@pytest.mark.parametrize(("codec", "expected"), [("lz4", "blosc"), ("zstd", "zstd"), ("none", None)])
def test_output_codec(tmp_path: Path, image: np.ndarray, codec: str, expected: str | None) -> None:
    source = write_input(tmp_path, image, "zarr-v3")
    config = from_dict(
        {
            "input": source,
            "output": {"path": str(tmp_path / "out.zarr"), "codec": codec},
            "pipeline": [{"filter": "gaussian", "sigma": 1.0}],
        }
    )
    convpipe.run(config)
    written = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    names = [c.to_dict()["name"] for c in written.compressors]
    assert names == ([expected] if expected else [])
    np.testing.assert_array_equal(written[...], convpipe.filter_array(image, config.resolved()["pipeline"]).compute())


def ngff_image(folder: Path, image: np.ndarray, axes: str, version: str) -> Path:
    """A two-level OME-Zarr image written by hand (NGFF 0.5 on Zarr v3, 0.4 on Zarr v2)."""
    path = folder / "image.ome.zarr"
    fmt = 3 if version == "0.5" else 2
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    group.create_array("0", data=image)
    smaller = image[(slice(None),) * (image.ndim - 2) + (slice(None, None, 2), slice(None, None, 2))]
    group.create_array("1", data=np.ascontiguousarray(smaller))
    kinds = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    multiscales = [
        {
            "axes": [{"name": a, "type": kinds[a]} for a in axes],
            "datasets": [
                {"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": [1.0] * len(axes)}]}
                for level in (0, 1)
            ],
        }
    ]
    if version == "0.5":
        group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    else:
        multiscales[0]["version"] = "0.4"
        group.attrs["multiscales"] = multiscales
    return path


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_ome_zarr_input_gives_its_levels_and_axes(tmp_path: Path, version: str) -> None:
    rng = np.random.default_rng(3)
    image = (rng.random((2, 40, 36)) * 1000).astype(np.uint16)  # c, y, x
    path = ngff_image(tmp_path, image, "cyx", version)
    steps = [{"filter": "gaussian", "sigma": 1.0}]
    for level, expected_input in ((0, image), (1, image[:, ::2, ::2])):
        config = from_dict(
            {
                "input": {"path": str(path), "level": level},
                "output": {"path": str(tmp_path / f"out{level}.zarr")},
                "pipeline": steps,
            }
        )
        plan = convpipe.make_plan(config)
        assert plan.axes == "cyx"  # from the metadata: no axes key needed, c is not filtered
        convpipe.run(config)
        # An OME-Zarr input makes an OME-Zarr output by default: the image is its level "0".
        got = zarr.open_array(str(tmp_path / f"out{level}.zarr" / "0"), mode="r")
        np.testing.assert_array_equal(got[...], convpipe.filter_array(expected_input, steps, axes="cyx").compute())
        assert got.metadata.dimension_names == ("c", "y", "x")
    config = from_dict({"input": {"path": str(path), "level": 2}, "output": {"path": "o.zarr"}, "pipeline": steps})
    with pytest.raises(ConfigError, match=r"input.level: .* has 2 levels \(0 to 1\); got 2"):
        convpipe.make_plan(config)


def test_tiff_hyperstack_axes_come_from_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    image = (rng.random((3, 2, 24, 20)) * 1000).astype(np.uint16)  # t, c, y, x
    tifffile.imwrite(tmp_path / "stack.tif", image, imagej=True, metadata={"axes": "TCYX"})
    config = from_dict(
        {
            "input": {"path": str(tmp_path / "stack.tif")},
            "output": {"path": str(tmp_path / "o.zarr")},
            "pipeline": [{"filter": "box"}],
        }
    )
    assert convpipe.make_plan(config).axes == "tcyx"


def test_our_own_output_reads_back_with_its_axes(tmp_path: Path, image: np.ndarray) -> None:
    source = write_input(tmp_path, image, "zarr-v3")
    first = from_dict(
        {
            "input": {**source, "axes": "yx"},
            "output": {"path": str(tmp_path / "a.zarr")},
            "pipeline": [{"filter": "box"}],
        }
    )
    convpipe.run(first)
    again = from_dict(
        {
            "input": {"path": str(tmp_path / "a.zarr")},
            "output": {"path": str(tmp_path / "b.zarr")},
            "pipeline": [{"filter": "box"}],
        }
    )
    assert convpipe.make_plan(again).axes == "yx"
