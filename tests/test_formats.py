"""OME-Zarr, OME-TIFF, ImageJ and GeoTIFF: physical coordinates in, the right ones out.

The ecosystem's own readers check the outputs: ngff-zarr validates the NGFF metadata against
the official JSON schemas (and its structural rules) and reports the transforms; tifffile
reads GeoTIFF tags back; GDAL's gdalinfo, when it is installed, opens GeoTIFF and OME-Zarr 0.4.
Every expected transform here is computed by hand in the test, not by convpipe.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import ngff_zarr
import numpy as np
import pytest
import tifffile
import zarr
from cli_tools import assert_one_line_error, invoke, lease_held
from reference import reference

import convpipe
from convpipe.config import from_dict
from convpipe.errors import ConfigError
from convpipe.io.geotiff import read_geo

RNG = np.random.default_rng(11)

# A strided `valid` chain: gaussian sigma=1 (F=9, same: centre offset 0), then a 3x3 box,
# valid (centre offset +1 sample), stride 2 on the box.
CHAIN: list[dict[str, Any]] = [
    {"filter": "gaussian", "sigma": 1.0},
    {"filter": "box", "size": 3, "pad": "valid", "stride": 2},
]


def config_for(input_path: Path, output_path: Path, pipeline: list[dict[str, Any]] | None = None, **output: Any):
    return from_dict(
        {
            "input": {"path": str(input_path)},
            "output": {"path": str(output_path), **output},
            "pipeline": CHAIN if pipeline is None else pipeline,
        }
    )


def ngff_group(
    folder: Path, image: np.ndarray, axes: str, scale: list[float], translation: list[float], version: str = "0.5"
) -> Path:
    """An OME-Zarr image with a physical scale and translation, written by hand."""
    path = folder / "input.ome.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3 if version == "0.5" else 2)
    group.create_array("0", data=image, chunks=(16,) * image.ndim)
    kinds = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    image_metadata = {
        "axes": [
            {"name": a, "type": kinds[a], **({"unit": "micrometer"} if kinds[a] == "space" else {})} for a in axes
        ],
        "datasets": [
            {
                "path": "0",
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": translation},
                ],
            }
        ],
    }
    if version == "0.5":
        group.attrs["ome"] = {"version": "0.5", "multiscales": [image_metadata]}
    else:
        group.attrs["multiscales"] = [{"version": "0.4", **image_metadata}]
    return path


def group_attributes(path: Path) -> dict[str, Any]:
    return dict(zarr.open_group(str(path), mode="r").attrs)


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_ome_zarr_output_has_the_transforms_of_a_strided_valid_chain(tmp_path: Path, version: str) -> None:
    image = (RNG.random((50, 45)) * 1000).astype(np.uint16)
    source = ngff_group(tmp_path, image, "yx", scale=[0.5, 0.25], translation=[10.0, -3.0])
    out = tmp_path / "out.ome.zarr"
    config = config_for(source, out, ngff_version=version, pyramid=2)
    convpipe.run(config)

    attributes = group_attributes(out)
    ngff_zarr.validate(attributes, version=version)  # the official JSON schema
    multiscales = ngff_zarr.from_ngff_zarr(str(out), validate=True)  # and the structural rules
    # By hand: gaussian same => centre offset 0; box 3 valid => +1 input sample, then x2 spacing.
    # Level 0: scale (1.0, 0.5), translation (10 + 0.5, -3 + 0.25).
    # Levels 1 and 2: scale doubles, translation moves by half the finer spacing.
    expected = [
        ((1.0, 0.5), (10.5, -2.75)),
        ((2.0, 1.0), (11.0, -2.5)),
        ((4.0, 2.0), (12.0, -2.0)),
    ]
    assert len(multiscales.images) == 3
    for image_level, (scale, translation) in zip(multiscales.images, expected, strict=True):
        assert image_level.dims == ("y", "x")
        assert (image_level.scale["y"], image_level.scale["x"]) == pytest.approx(scale)
        assert (image_level.translation["y"], image_level.translation["x"]) == pytest.approx(translation)
        assert image_level.axes_units == {"y": "micrometer", "x": "micrometer"}
    # The pixels: level 0 is the chain, each level the 2x mean of the one before (odd edges
    # averaged over the samples there).
    plan = convpipe.make_plan(config)
    level0 = np.asarray(zarr.open_array(str(out / "0"), mode="r")[...])
    np.testing.assert_allclose(level0, reference(image, plan), rtol=1e-5, atol=1e-3)
    below = level0.astype(np.float64)
    for level in (1, 2):
        padded = np.pad(below, [(0, n % 2) for n in below.shape], mode="edge")
        expected_level = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2).mean(axis=(1, 3))
        got = np.asarray(zarr.open_array(str(out / str(level)), mode="r")[...])
        np.testing.assert_allclose(got, expected_level, rtol=1e-5)
        below = got.astype(np.float64)
    assert attributes["convpipe"]["complete"] is True
    zarr_format = zarr.open_group(str(out), mode="r").metadata.zarr_format
    assert zarr_format == (3 if version == "0.5" else 2)


def test_ome_tiff_physical_sizes_give_the_output_scale(tmp_path: Path) -> None:
    image = (RNG.random((6, 40, 36)) * 1000).astype(np.uint16)
    source = tmp_path / "stack.ome.tif"
    tifffile.imwrite(
        source,
        image,
        ome=True,
        metadata={
            "axes": "ZYX",
            "PhysicalSizeX": 0.2,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": 0.3,
            "PhysicalSizeYUnit": "µm",
            "PhysicalSizeZ": 2.0,
            "PhysicalSizeZUnit": "nm",
        },
    )
    out = tmp_path / "out.ome.zarr"
    # A 3x3x3 box, valid, stride (1, 2, 2): centres move one sample in, spacing doubles in y, x.
    pipeline = [{"filter": "box", "size": 3, "pad": "valid", "stride": [1, 2, 2]}]
    convpipe.run(config_for(source, out, pipeline))
    image_level = ngff_zarr.from_ngff_zarr(str(out), validate=True).images[0]
    assert image_level.dims == ("z", "y", "x")
    assert image_level.scale == pytest.approx({"z": 2.0, "y": 0.6, "x": 0.4})
    assert image_level.translation == pytest.approx({"z": 2.0, "y": 0.3, "x": 0.2})
    assert image_level.axes_units == {"z": "nanometer", "y": "micrometer", "x": "micrometer"}


def test_ome_zarr_translation_moves_with_even_kernels_and_full_padding(tmp_path: Path) -> None:
    image = RNG.random((30, 30)).astype(np.float32)
    source = ngff_group(tmp_path, image, "yx", scale=[3.0, 3.0], translation=[100.0, 200.0])
    out = tmp_path / "out.ome.zarr"
    # Box 4, full (P_before 3): centre offset (4-1)/2 - 3 = -1.5 samples; then box 2 same
    # (P_before 0): +0.5 sample, stride 3 on it.
    pipeline = [{"filter": "box", "size": 4, "pad": "full"}, {"filter": "box", "size": 2, "stride": 3}]
    convpipe.run(config_for(source, out, pipeline))
    image_level = ngff_zarr.from_ngff_zarr(str(out), validate=True).images[0]
    assert image_level.scale == pytest.approx({"y": 9.0, "x": 9.0})
    assert image_level.translation == pytest.approx({"y": 100.0 - 4.5 + 1.5, "x": 200.0 - 4.5 + 1.5})


def test_imagej_pixel_sizes_are_read(tmp_path: Path) -> None:
    image = (RNG.random((4, 20, 20)) * 100).astype(np.uint8)
    source = tmp_path / "ij.tif"
    resolution = (1 / 0.25, 1 / 0.25)
    tifffile.imwrite(
        source, image, imagej=True, resolution=resolution, metadata={"axes": "ZYX", "spacing": 1.5, "unit": "um"}
    )
    out = tmp_path / "out.ome.zarr"
    convpipe.run(config_for(source, out, [{"filter": "box", "size": 1, "stride": 2}]))
    image_level = ngff_zarr.from_ngff_zarr(str(out), validate=True).images[0]
    # A 1-sample box with stride 2: spacing doubles, centres stay on the input's samples.
    assert image_level.scale == pytest.approx({"z": 3.0, "y": 0.5, "x": 0.5})
    assert image_level.translation == pytest.approx({"z": 0.0, "y": 0.0, "x": 0.0})
    assert image_level.axes_units["x"] == "micrometer"


def test_output_format_follows_the_path_and_the_input(tmp_path: Path) -> None:
    image = RNG.random((20, 20)).astype(np.float32)
    zarr.create_array(str(tmp_path / "plain.zarr"), data=image)
    ngff = ngff_group(tmp_path, image, "yx", [1.0, 1.0], [0.0, 0.0])
    box = [{"filter": "box", "size": 3}]
    cases = [
        (tmp_path / "plain.zarr", "a.zarr", "zarr"),
        (tmp_path / "plain.zarr", "a.ome.zarr", "ome-zarr"),
        (tmp_path / "plain.zarr", "a.tif", "geotiff"),
        (ngff, "b.zarr", "ome-zarr"),
    ]
    for source, name, expected in cases:
        assert convpipe.make_plan(config_for(source, tmp_path / name, box)).storage.format == expected
    forced = config_for(ngff, tmp_path / "c.zarr", box, format="zarr")
    assert convpipe.make_plan(forced).storage.format == "zarr"


# --- GeoTIFF --------------------------------------------------------------------------------

GEOKEYS = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633)  # projected, area, UTM 33N


def geotiff(path: Path, image: np.ndarray, origin=(500000.0, 4600000.0), pixel=(10.0, 10.0), point: bool = False):
    keys = list(GEOKEYS)
    if point:
        keys[11] = 2  # GTRasterTypeGeoKey: pixel is point (the tiepoint is a pixel's centre)
    tags = [
        (33550, "d", 3, (pixel[0], pixel[1], 0.0), True),
        (33922, "d", 6, (0.0, 0.0, 0.0, origin[0], origin[1], 0.0), True),
        (34735, "H", len(keys), tuple(keys), True),
        (42113, "s", 0, "-9999", True),
    ]
    tifffile.imwrite(path, image, tile=(32, 32), compression="zlib", extratags=tags)
    return path


def written_geotransform(path: Path) -> tuple[float, ...]:
    with tifffile.TiffFile(path) as tif:
        geo = read_geo(tif, "yx")
    assert geo is not None
    return geo.geotransform


def test_geotiff_input_carries_crs_nodata_and_a_corrected_geotransform(tmp_path: Path) -> None:
    image = (RNG.random((100, 130)) * 1000).astype(np.float32)
    source = geotiff(tmp_path / "dem.tif", image)
    # gaussian sigma 1 valid: F=9, the first output centre is input pixel 4; sobel same with
    # stride 2: pixel size 20 m. Corner of the first output pixel: pixel 4 + 0.5 - 2/2 = 3.5.
    pipeline = [{"filter": "gaussian", "sigma": 1.0, "pad": "valid"}, {"filter": "sobel", "stride": 2}]
    expected = (500000.0 + 35.0, 20.0, 0.0, 4600000.0 - 35.0, 0.0, -20.0)

    convpipe.run(config_for(source, tmp_path / "out.zarr", pipeline))
    attributes = dict(zarr.open_array(str(tmp_path / "out.zarr"), mode="r").attrs)
    assert attributes["geo"]["crs"] == "EPSG:32633"
    assert attributes["geo"]["nodata"] == "-9999"
    assert attributes["geo"]["geotransform"] == pytest.approx(expected)
    assert attributes["_CRS"] == {"url": "http://www.opengis.net/def/crs/EPSG/0/32633"}

    out = tmp_path / "out.tif"
    convpipe.run(config_for(source, out, pipeline))
    assert written_geotransform(out) == pytest.approx(expected)
    with tifffile.TiffFile(out) as tif:
        page = tif.pages.first
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
        assert page.compression.name == "ADOBE_DEFLATE"
        assert page.geotiff_tags["ProjectedCSTypeGeoKey"] == 32633
        assert page.tags["GDAL_NODATA"].value == "-9999"
        written = page.asarray()
    plan = convpipe.make_plan(config_for(source, tmp_path / "again.tif", pipeline))
    np.testing.assert_allclose(written, reference(image, plan), rtol=1e-4, atol=1e-2)


def test_geotiff_pixel_is_point_and_bands(tmp_path: Path) -> None:
    image = (RNG.random((3, 64, 80)) * 1000).astype(np.uint16)  # bands, y, x
    source = tmp_path / "bands.tif"
    tags = [
        (33550, "d", 3, (2.0, 2.0, 0.0), True),
        (33922, "d", 6, (0.0, 0.0, 0.0, 1000.0, 2000.0, 0.0), True),
        (34735, "H", 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 2, 3072, 0, 1, 32633), True),
    ]
    tifffile.imwrite(source, image, tile=(32, 32), planarconfig="separate", photometric="minisblack", extratags=tags)
    out = tmp_path / "out.tif"
    config = from_dict(
        {
            "input": {"path": str(source), "axes": "cyx"},
            "output": {"path": str(out), "dtype": "input", "chunks": [1, 32, 32]},
            "pipeline": [{"filter": "box", "size": 3, "stride": 2}],
        }
    )
    convpipe.run(config)
    # Pixel is point: the tiepoint (1000, 2000) is pixel 0's centre, its corner is 1 m before.
    # Box 3 same, stride 2: pixel 4 m, centred on input pixel 0, so its corner is one input
    # pixel (2 m) before that pixel's centre.
    assert written_geotransform(out) == pytest.approx((999.0 - 1.0, 4.0, 0.0, 2001.0 + 1.0, 0.0, -4.0))
    with tifffile.TiffFile(out) as tif:
        assert tif.pages.first.geotiff_tags["GTRasterTypeGeoKey"] == 1  # written as area
        written = tif.series[0].asarray()
    plan = convpipe.make_plan(config)
    np.testing.assert_array_equal(written, np.clip(np.rint(reference(image, plan)), 0, 65535).astype(np.uint16))


def test_geotiff_output_is_renamed_into_place_only_when_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = RNG.random((64, 64)).astype(np.float32)
    source = geotiff(tmp_path / "in.tif", image)
    out = tmp_path / "out.tif"
    convpipe.run(config_for(source, out, [{"filter": "box", "size": 5}]))
    older = out.read_bytes()
    config = config_for(source, out, [{"filter": "box", "size": 3}], overwrite=True)

    from convpipe.io import geotiff as geotiff_module

    def broken(*args: Any, **kwargs: Any) -> None:
        Path(args[0]).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(geotiff_module, "write", broken)
    with pytest.raises(convpipe.RunError, match="writing failed"):
        convpipe.run(config)
    assert out.read_bytes() == older  # the old file stands
    # No partial file; the lease beside the output is released.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "out.tif", "out.tif.convpipe-lock"]
    assert not lease_held(tmp_path, "out.tif.convpipe-lock")
    # A GeoTIFF is written in one pass: --resume of one made differently is refused ...
    with pytest.raises(ConfigError, match="--resume: the output was made differently"):
        convpipe.run(config_for(source, out, [{"filter": "box", "size": 3}]), resume=True)
    # ... of the same one has nothing to do, and of a missing one starts it.
    done = convpipe.run(config_for(source, out, [{"filter": "box", "size": 5}]), resume=True)
    assert done.blocks == 0 and out.read_bytes() == older
    monkeypatch.undo()
    out.unlink()
    convpipe.run(config_for(source, out, [{"filter": "box", "size": 5}]), resume=True)
    assert out.read_bytes() == older


# --- sharding and chunks ----------------------------------------------------------------------


def test_shards_hold_one_block_each_and_chunks_tile_them(tmp_path: Path) -> None:
    image = (RNG.random((300, 260)) * 100).astype(np.float32)
    zarr.create_array(str(tmp_path / "in.zarr"), data=image, chunks=(64, 64))
    config = from_dict(
        {
            "input": {"path": str(tmp_path / "in.zarr"), "chunks": [100, 100]},
            "output": {"path": str(tmp_path / "out.zarr"), "chunks": [32, 32], "shards": True},
            "pipeline": [{"filter": "gaussian", "sigma": 2.0, "stride": [1, 2]}],
        }
    )
    plan = convpipe.make_plan(config)
    # Blocks are rounded down to whole chunks: 96 rows, 48 output columns (96 input columns).
    assert plan.block_shape == (96, 32) or plan.block_shape == (96, 64)
    assert all(b % c == 0 for b, c in zip(plan.block_shape, (32, 32), strict=True))
    assert plan.shard_shape == plan.block_shape
    convpipe.run(config)
    written = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    assert written.chunks == (32, 32) and written.shards == plan.block_shape
    np.testing.assert_allclose(written[...], reference(image, plan), rtol=1e-5, atol=1e-4)


def test_default_shards_have_chunks_of_about_a_mebibyte(tmp_path: Path) -> None:
    image = np.zeros((4096, 4096), np.uint16)
    zarr.create_array(str(tmp_path / "in.zarr"), data=image, chunks=(1024, 1024))
    config = config_for(tmp_path / "in.zarr", tmp_path / "out.zarr", [{"filter": "box", "size": 3}], shards=True)
    plan = convpipe.make_plan(config)
    assert plan.shard_shape == plan.block_shape == (2048, 2048)
    assert plan.storage_chunks == (512, 512)  # 1 MiB of float32


@pytest.mark.parametrize(
    ("output", "axes", "message"),
    [
        ({"pyramid": 2}, None, "output.pyramid: only OME-Zarr outputs have pyramid levels"),
        ({"format": "ome-zarr", "pyramid": 9}, None, "output.pyramid: 9 levels would halve"),
        ({"format": "ome-zarr", "ngff_version": 0.4, "shards": True}, None, "output.shards: OME-Zarr 0.4"),
        ({"format": "geotiff", "shards": True}, None, "output.shards: GeoTIFF has no shards"),
        ({"ngff_version": "0.4"}, None, "output.ngff_version: only for OME-Zarr outputs"),
        ({"format": "geotiff", "codec": "lz4"}, None, "output.codec: lz4 is not a TIFF compression"),
        ({"format": "geotiff", "chunks": [100, 100]}, None, "GeoTIFF tiles must be multiples of 16"),
        ({"format": "geotiff"}, "zyx", "GeoTIFF holds 2-D rasters"),
        ({"format": "ome-zarr"}, "yxc", "order t, c, z, y, x"),
        ({"chunks": [10]}, None, "output.chunks: needs one length per dimension (2"),
        ({"ngff_version": "0.3"}, None, "output.ngff_version: must be one of 0.5, 0.4"),
        ({"format": "png"}, None, "output.format: must be one of zarr, ome-zarr, geotiff"),
    ],
)
def test_impossible_outputs_are_refused_before_anything_is_written(
    tmp_path: Path, output: dict[str, Any], axes: str | None, message: str
) -> None:
    shape = (4, 30, 30) if axes and len(axes) == 3 else (30, 30)
    zarr.create_array(str(tmp_path / "in.zarr"), data=np.zeros(shape, np.float32))
    data: dict[str, Any] = {
        "input": {"path": str(tmp_path / "in.zarr"), **({"axes": axes} if axes else {})},
        "output": {"path": str(tmp_path / "out"), **output},
        "pipeline": [{"filter": "box", "size": 3}],
    }
    with pytest.raises(ConfigError) as error:
        convpipe.run(from_dict(data))
    assert message in str(error.value)
    assert not (tmp_path / "out").exists()


# --- GDAL, when the machine has it ------------------------------------------------------------

needs_gdal = pytest.mark.skipif(shutil.which("gdalinfo") is None, reason="GDAL (gdalinfo) is not installed")


def gdalinfo(target: str) -> dict[str, Any]:
    done = subprocess.run(["gdalinfo", "-json", target], capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout))


@needs_gdal
def test_gdal_opens_the_geotiff_output_where_it_belongs(tmp_path: Path) -> None:
    source = geotiff(tmp_path / "in.tif", RNG.random((90, 70)).astype(np.float32))
    out = tmp_path / "out.tif"
    convpipe.run(config_for(source, out, [{"filter": "box", "size": 3, "pad": "valid", "stride": 2}]))
    info = gdalinfo(str(out))
    # Box 3 valid: first centre on input pixel 1; stride 2 → corner at pixel 1 + 0.5 - 1 = 0.5.
    assert info["geoTransform"] == pytest.approx([500005.0, 20.0, 0.0, 4599995.0, 0.0, -20.0])
    assert info["size"] == [34, 44]
    assert "32633" in json.dumps(info["coordinateSystem"])
    assert info["bands"][0]["noDataValue"] == -9999.0
    assert info["bands"][0]["block"] == [256, 256]


@needs_gdal
def test_gdal_opens_the_ome_zarr_0_4_output(tmp_path: Path) -> None:
    image = RNG.random((40, 50)).astype(np.float32)
    zarr.create_array(str(tmp_path / "in.zarr"), data=image)
    out = tmp_path / "out.ome.zarr"
    convpipe.run(config_for(tmp_path / "in.zarr", out, [{"filter": "box", "size": 3}], ngff_version="0.4"))
    info = gdalinfo(f'ZARR:"{out}":/0')
    assert info["size"] == [50, 40]
    assert info["bands"][0]["type"] == "Float32"


def test_an_interrupted_ome_zarr_output_resumes_to_the_same_pyramid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = (RNG.random((3, 130, 150)) * 500).astype(np.uint16)  # z, y, x
    source = ngff_group(tmp_path, image, "zyx", [2.0, 0.5, 0.5], [0.0, 5.0, 5.0])
    data = {
        "input": {"path": str(source), "chunks": [1, 32, 32]},
        "output": {"path": str(tmp_path / "out.ome.zarr"), "pyramid": 2, "dtype": "uint16"},
        "pipeline": [{"filter": "gaussian", "sigma": 1.5, "stride": [1, 2, 1]}],
    }
    whole = from_dict({**data, "output": {**data["output"], "path": str(tmp_path / "whole.ome.zarr")}})
    convpipe.run(whole)

    from convpipe.io import zarr_output

    real_write = zarr_output.write_block
    calls = []

    def failing(*args: Any) -> None:
        calls.append(1)
        if len(calls) > 20:
            raise OSError(28, "No space left on device")
        real_write(*args)

    monkeypatch.setattr(zarr_output.ZarrOutput, "write_block", staticmethod(failing))
    with pytest.raises(convpipe.RunError, match="the output is incomplete"):
        convpipe.run(from_dict(data), scheduler_name="sync")
    monkeypatch.setattr(zarr_output.ZarrOutput, "write_block", staticmethod(real_write))
    assert zarr_output.read_status(data["output"]["path"])["complete"] is False  # type: ignore[index]

    result = convpipe.run(from_dict(data), resume=True)
    assert result.resumed_from == 20
    for level in ("0", "1", "2"):
        got = zarr.open_array(str(tmp_path / "out.ome.zarr" / level), mode="r")[...]
        expected = zarr.open_array(str(tmp_path / "whole.ome.zarr" / level), mode="r")[...]
        np.testing.assert_array_equal(got, expected)
    assert group_attributes(tmp_path / "out.ome.zarr")["ome"] == group_attributes(tmp_path / "whole.ome.zarr")["ome"]
    assert zarr_output.read_status(data["output"]["path"])["complete"] is True  # type: ignore[index]


def test_dry_run_knows_a_geotiff_output_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = geotiff(tmp_path / "in.tif", RNG.random((40, 40)).astype(np.float32))
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps({"input": {"path": str(source)}, "output": {"path": "out.tif"}, "pipeline": [{"filter": "box"}]})
    )
    assert invoke(capsys, "run", config, "--quiet")[0] == 0  # a GeoTIFF convpipe made
    code, out, _ = invoke(capsys, "run", config, "--dry-run", "--overwrite")
    assert code == 0 and "GeoTIFF, tiled, deflate" in out
    for foreign in (b"my notes, not a TIFF", tifffile_bytes(RNG.random((8, 8)).astype(np.float32))):
        (tmp_path / "out.tif").write_bytes(foreign)
        code, _, err = invoke(capsys, "run", config, "--dry-run", "--overwrite")
        assert code == 2 and "is a file convpipe did not write" in err and "refusing to replace it" in err
        assert (tmp_path / "out.tif").read_bytes() == foreign


def tifffile_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image)
    return buffer.getvalue()


def test_ome_tiff_series_and_pyramid_levels_have_their_own_sizes(tmp_path: Path) -> None:
    image = (RNG.random((65, 47)) * 1000).astype(np.uint16)  # odd: the level is 33 x 24
    other = (RNG.random((20, 30)) * 1000).astype(np.uint16)
    source = tmp_path / "slide.ome.tif"
    # The level as slide scanners make them: 2x2 means (the last odd row/column alone).
    padded = np.pad(image.astype(np.float64), ((0, 1), (0, 1)), mode="edge")
    level = np.rint(padded.reshape(33, 2, 24, 2).mean(axis=(1, 3))).astype(np.uint16)
    with tifffile.TiffWriter(source, ome=True) as tif:
        sizes = {"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
        tif.write(image, subifds=1, tile=(16, 16), metadata={"axes": "YX", **sizes})
        tif.write(level, subfiletype=1, tile=(16, 16))
        tif.write(other, metadata={"axes": "YX", "PhysicalSizeX": 2.0, "PhysicalSizeY": 3.0})
    box = [{"filter": "box", "size": 1}]
    cases = [
        # (series, level, pixels, scale, translation of the first sample's centre)
        (0, 0, image, (0.5, 0.5), (0.0, 0.0)),
        (0, 1, level, (1.0, 1.0), (0.25, 0.25)),  # 65 -> 33 is a 2x level: the mean of 2 samples
        (1, 0, other, (3.0, 2.0), (0.0, 0.0)),
    ]
    for series, level, pixels, scale, translation in cases:
        out = tmp_path / f"out-{series}-{level}.ome.zarr"
        config = from_dict(
            {
                "input": {"path": str(source), "series": series, "level": level},
                "output": {"path": str(out), "dtype": "input"},
                "pipeline": box,
            }
        )
        convpipe.run(config)
        image_level = ngff_zarr.from_ngff_zarr(str(out), validate=True).images[0]
        assert (image_level.scale["y"], image_level.scale["x"]) == pytest.approx(scale)
        assert (image_level.translation["y"], image_level.translation["x"]) == pytest.approx(translation)
        np.testing.assert_array_equal(zarr.open_array(str(out / "0"), mode="r")[...], pixels)


def test_multiband_geotiff_with_several_rows_of_blocks_keeps_its_bands_apart(tmp_path: Path) -> None:
    image = (RNG.random((3, 64, 48)) * 100).astype(np.float32)
    zarr.create_array(str(tmp_path / "in.zarr"), data=image, chunks=(3, 16, 48))  # 3 bands per chunk
    config = from_dict(
        {
            "input": {"path": str(tmp_path / "in.zarr"), "axes": "cyx", "chunks": [3, 16, 48]},
            "output": {"path": str(tmp_path / "out.tif"), "chunks": [1, 16, 16]},
            "pipeline": [{"filter": "box", "size": 3}],
        }
    )
    plan = convpipe.make_plan(config)
    assert plan.block_shape[0] == 1 and len(plan.chunks[1]) == 4  # one band per block, 4 rows
    convpipe.run(config)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "out.tif"), reference(image, plan), rtol=1e-5)


def test_pyramid_levels_smaller_than_a_chunk_keep_valid_shards(tmp_path: Path) -> None:
    image = (RNG.random((101, 77)) * 100).astype(np.float32)
    zarr.create_array(str(tmp_path / "in.zarr"), data=image)
    out = tmp_path / "out.ome.zarr"
    config = config_for(
        tmp_path / "in.zarr", out, [{"filter": "box", "size": 3, "stride": 2}], chunks=[16, 16], shards=True, pyramid=3
    )
    convpipe.run(config)
    shapes = [zarr.open_array(str(out / str(level)), mode="r").shape for level in range(4)]
    assert shapes == [(51, 39), (26, 20), (13, 10), (7, 5)]
    ngff_zarr.from_ngff_zarr(str(out), validate=True)
    level3 = zarr.open_array(str(out / "3"), mode="r")
    assert level3.chunks == (7, 5) and level3.shards == (7, 5)  # one chunk, one shard


def test_geotiff_overview_levels_have_larger_pixels(tmp_path: Path) -> None:
    image = RNG.random((64, 64)).astype(np.float32)
    source = tmp_path / "dem.tif"
    tags = [
        (33550, "d", 3, (10.0, 10.0, 0.0), True),
        (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4600000.0, 0.0), True),
        (34735, "H", len(GEOKEYS), GEOKEYS, True),
    ]
    with tifffile.TiffWriter(source) as tif:
        tif.write(image, subifds=1, tile=(16, 16), extratags=tags)
        tif.write(np.ascontiguousarray(image[::2, ::2]), subfiletype=1, tile=(16, 16))
    out = tmp_path / "out.zarr"
    config = from_dict(
        {"input": {"path": str(source), "level": 1}, "output": {"path": str(out)}, "pipeline": [{"filter": "box"}]}
    )
    convpipe.run(config)
    geo = dict(zarr.open_array(str(out), mode="r").attrs)["geo"]
    assert geo["geotransform"] == pytest.approx([500000.0, 20.0, 0.0, 4600000.0, 0.0, -20.0])


def test_a_north_up_geotiff_becomes_a_valid_ome_zarr_in_pixels(tmp_path: Path) -> None:
    source = geotiff(tmp_path / "dem.tif", RNG.random((40, 30)).astype(np.float32))
    out = tmp_path / "out.ome.zarr"
    convpipe.run(config_for(source, out, [{"filter": "box", "size": 3, "stride": 2}], pyramid=1))
    levels = ngff_zarr.from_ngff_zarr(str(out), validate=True).images
    assert levels[0].scale == {"y": 2.0, "x": 2.0} and levels[0].translation == {"y": 0.0, "x": 0.0}
    assert levels[1].scale == {"y": 4.0, "x": 4.0}
    geo = group_attributes(out)["geo"]  # the map coordinates are here
    assert geo["crs"] == "EPSG:32633"
    # Box 3 same, stride 2: output pixel 0 spans input pixels -0.5 .. 1.5 (centred on pixel 0).
    assert geo["geotransform"] == pytest.approx([499995.0, 20.0, 0.0, 4600005.0, 0.0, -20.0])


@pytest.mark.parametrize("name", ["out.zarr", "out.ome.zarr"])
def test_the_lock_stands_while_blocks_are_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    from convpipe.io import zarr_output

    zarr.create_array(str(tmp_path / "in.zarr"), data=RNG.random((40, 40)).astype(np.float32), chunks=(16, 16))
    seen = []
    real_write = zarr_output.write_block

    def watching(spec: Any, *args: Any) -> None:
        seen.append(lease_held(Path(spec.location.path)))
        real_write(spec, *args)

    monkeypatch.setattr(zarr_output.ZarrOutput, "write_block", staticmethod(watching))
    config = from_dict(
        {
            "input": {"path": str(tmp_path / "in.zarr"), "chunks": [16, 16]},
            "output": {"path": str(tmp_path / name)},
            "pipeline": [{"filter": "box"}],
        }
    )
    convpipe.run(config, scheduler_name="sync")
    convpipe.run(config, scheduler_name="sync", overwrite=True)  # replacing an output keeps it too
    assert len(seen) == 18 and all(seen)
    assert not lease_held(tmp_path / name)  # and it is released when the run ends


def test_broken_ngff_transforms_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = ngff_group(tmp_path, RNG.random((20, 20)).astype(np.float32), "yx", [1.0, 1.0], [0.0, 0.0])
    group = zarr.open_group(str(source), mode="r+")
    attributes = dict(group.attrs)
    attributes["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] = ["0.5um", 1]
    group.attrs.put(attributes)
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps({"input": {"path": str(source)}, "output": {"path": "o.zarr"}, "pipeline": [{"filter": "box"}]})
    )
    code, _, err = invoke(capsys, "plan", config)
    assert code == 1
    assert_one_line_error(err, "OME-Zarr metadata for level 0 is broken", "the scale ['0.5um', 1] is not 2 numbers")
    code, out, _ = invoke(capsys, "info", source)
    assert code == 0 and "unreadable: the scale" in out


def test_nodata_the_output_dtype_cannot_hold_asks_for_output_nodata(tmp_path: Path) -> None:
    source = geotiff(tmp_path / "dem.tif", (RNG.random((40, 40)) * 200).astype(np.float32))  # nodata -9999
    convpipe.run(config_for(source, tmp_path / "float.tif", [{"filter": "box"}]))
    with pytest.raises(ConfigError, match=r"output\.nodata: the input's nodata value -9999 does not fit"):
        convpipe.run(config_for(source, tmp_path / "byte.tif", [{"filter": "box"}], dtype="uint8"))
    assert not (tmp_path / "byte.tif").exists()
    convpipe.run(config_for(source, tmp_path / "byte.tif", [{"filter": "box"}], dtype="uint8", nodata=255))
    with tifffile.TiffFile(tmp_path / "float.tif") as tif:
        assert tif.pages.first.tags["GDAL_NODATA"].value == "-9999"
    with tifffile.TiffFile(tmp_path / "byte.tif") as tif:
        assert tif.pages.first.tags["GDAL_NODATA"].value.strip("\x00") == "255"


def test_info_calls_an_unfinished_geotiff_partial(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = geotiff(tmp_path / "dem.tif", RNG.random((40, 40)).astype(np.float32))
    convpipe.run(config_for(source, tmp_path / "out.tif", [{"filter": "box"}]))
    left = tmp_path / "out.tif.convpipe-partial"  # what a killed run leaves
    left.write_bytes((tmp_path / "out.tif").read_bytes())
    code, out, _ = invoke(capsys, "info", left)
    assert code == 0 and "status: partial: an unfinished GeoTIFF write" in out
    code, out, _ = invoke(capsys, "info", tmp_path / "out.tif")
    assert "status: complete" in out
