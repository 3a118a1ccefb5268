"""Cloud-Optimized GeoTIFF output (``output.format: cog``), checked by what reads COGs.

rio-cogeo's ``cog_validate`` (the rasterio port of GDAL's validate_cloud_optimized_geotiff.py)
judges the layout; rasterio (GDAL) reads the overviews, CRS, geotransform and nodata; every
overview is compared with a whole-image numpy reference written here, independently of
convpipe's streaming builder; the builder's peak memory is measured with tracemalloc.
"""

from __future__ import annotations

import itertools
import tempfile
import tracemalloc
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import tifffile
import yaml
from cli_tools import assert_one_line_error, invoke
from rio_cogeo.cogeo import cog_validate
from s3server import S3Server

import convpipe
from convpipe.config import from_dict
from convpipe.io import cog, cog_output

GEOKEYS = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633)  # projected, area, UTM 33N
IDENTITY: list[dict[str, Any]] = [{"filter": "clip"}]  # no bounds: every sample, nodata too, as it is


def geotiff(path: Path, image: np.ndarray, nodata: str | None = "-9999") -> Path:
    """A tiled GeoTIFF in UTM 33N, 10 m pixels, with GDAL's nodata tag (bands: c, y, x)."""
    tags = [
        (33550, "d", 3, (10.0, 10.0, 0.0), True),
        (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4600000.0, 0.0), True),
        (34735, "H", len(GEOKEYS), GEOKEYS, True),
    ]
    if nodata is not None:
        tags.append((42113, "s", 0, nodata, True))
    planar = {"planarconfig": "separate", "photometric": "minisblack"} if image.ndim == 3 else {}
    tifffile.imwrite(path, image, tile=(32, 32), compression="zlib", extratags=tags, **planar)
    return path


def write_config(path: Path, source: Path | str, output: Path | str, axes: str | None = None, **keys: Any) -> Path:
    data = {
        "input": {"path": str(source), **({"axes": axes} if axes else {})},
        "output": {"path": str(output), **keys},
        "pipeline": IDENTITY,
    }
    path.write_text(yaml.safe_dump(data))
    return path


def run_ok(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> None:
    code, _, err = invoke(capsys, "run", config, "--quiet", *args)
    assert code == 0, err


def assert_valid_cog(path: Path | str) -> None:
    valid, errors, warnings_found = cog_validate(str(path), quiet=True)
    assert valid and not errors and not warnings_found, (errors, warnings_found)


def read_levels(path: Path | str) -> list[np.ndarray]:
    """Full resolution and every overview, as GDAL reads them (bands first)."""
    with rasterio.open(path) as dataset:
        levels = [dataset.read()]
        count = len(dataset.overviews(1))
    for index in range(count):
        with rasterio.open(path, OVERVIEW_LEVEL=index) as overview:
            levels.append(overview.read())
    return levels


def reference_halve(level: np.ndarray, resampling: str, nodata: float | None) -> np.ndarray:
    """The next overview of a 2-D level, on the whole image: each 2x2 cell's top-left sample,
    or the mean of its samples that are not nodata (nor NaN), nodata when none is; an odd edge
    is padded with NaN, so only the samples that exist count."""
    if resampling == "nearest":
        return level[::2, ::2]
    h, w = level.shape
    padded = np.full((h + h % 2, w + w % 2), np.nan)
    padded[:h, :w] = level
    if nodata is not None:
        padded[padded == float(np.asarray(nodata).astype(level.dtype))] = np.nan
    cells = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nodata cells: mean of nothing
        mean = np.nanmean(cells, axis=(1, 3))
    if level.dtype.kind != "f":
        mean = np.rint(mean)
    mean[np.isnan(mean)] = np.nan if nodata is None else nodata
    return mean.astype(level.dtype)


def reference_levels(full: np.ndarray, count: int, resampling: str, nodata: float | None) -> list[np.ndarray]:
    """Every band's overviews, each level from the one below (as GDAL's COG driver makes them)."""
    levels = [full]
    for _ in range(count):
        levels.append(np.stack([reference_halve(band, resampling, nodata) for band in levels[-1]]))
    return levels


def assert_same_bits(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()  # NaN included


RNG = np.random.default_rng(31)


def image_with_nodata(shape: tuple[int, int], dtype: str, nodata: float) -> np.ndarray:
    """Odd-sized, with a large nodata region, lone nodata samples, an all-nodata 2x2 cell, a
    cell with one valid sample, an all-nodata cell on the odd edge, and NaN for floats."""
    image = (RNG.integers(0, 8000, shape) / 8).astype(dtype)  # eighths: exact sums in float64
    image[200:420, 130:390] = nodata
    image[RNG.random(shape) < 0.02] = nodata
    image[2:4, 6:8] = nodata  # one whole 2x2 cell of level 0
    image[10:12, 10:12] = nodata
    image[11, 11] = 5  # one valid sample of four
    image[40:42, -1] = nodata  # the odd last column: a cell of two samples, both nodata
    if image.dtype.kind == "f":
        image[RNG.random(shape) < 0.01] = np.nan
    return image


# --- what a user gets ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "nodata", "resampling", "codec"),
    [("float32", -9999.0, None, None), ("uint16", 0.0, "average", "zstd"), ("float32", -9999.0, "nearest", None)],
)
def test_cog_validates_and_its_overviews_are_the_2x_reduction_of_the_level_below(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    dtype: str,
    nodata: float,
    resampling: str | None,
    codec: str | None,
) -> None:
    image = image_with_nodata((1101, 899), dtype, nodata)
    source = geotiff(tmp_path / "in.tif", image, nodata=f"{nodata:g}")
    keys: dict[str, Any] = {"dtype": "input", "chunks": [256, 256]}
    keys |= {"overview_resampling": resampling} if resampling else {}
    keys |= {"codec": codec} if codec else {}
    run_ok(capsys, write_config(tmp_path / "cog.yaml", source, tmp_path / "out.tif", format="cog", **keys))
    keys.pop("overview_resampling", None)
    run_ok(capsys, write_config(tmp_path / "tif.yaml", source, tmp_path / "plain.tif", **keys))

    out = tmp_path / "out.tif"
    assert_valid_cog(out)
    with rasterio.open(out) as got, rasterio.open(tmp_path / "plain.tif") as plain:
        # 1101x899 -> 551x450 -> 276x225 -> 138x113, which one 256x256 tile holds.
        assert got.overviews(1) == [2, 4, 8]
        assert got.block_shapes == [(256, 256)]
        assert got.crs.to_epsg() == 32633
        assert got.transform == plain.transform
        assert got.nodata == nodata == plain.nodata
        assert got.compression.name.lower() == (codec or "deflate")
    for index in range(3):
        with rasterio.open(out, OVERVIEW_LEVEL=index) as overview:
            assert overview.nodata == nodata
            assert overview.transform.a == 10.0 * 899 / overview.width  # GDAL's derived grid
    levels = read_levels(out)
    assert_same_bits(levels[0], read_levels(tmp_path / "plain.tif")[0])  # full resolution: the GeoTIFF's
    expected = reference_levels(levels[0], 3, resampling or "average", nodata)
    assert [level.shape for level in levels] == [(1, 1101, 899), (1, 551, 450), (1, 276, 225), (1, 138, 113)]
    for got_level, expected_level in zip(levels, expected, strict=True):
        assert_same_bits(got_level, expected_level)
    if resampling != "nearest":  # the cells made to test the rule, at level 1
        assert levels[1][0, 1, 3] == nodata  # all four nodata
        assert levels[1][0, 5, 5] == 5  # one valid sample of four
        assert levels[1][0, 20, 449] == nodata  # the odd edge, both nodata


def test_every_band_gets_its_overviews(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bands = np.stack([image_with_nodata((600, 530), "uint16", 0) for _ in range(3)])
    source = geotiff(tmp_path / "bands.tif", bands, nodata="0")
    config = write_config(
        tmp_path / "c.yaml", source, tmp_path / "out.tif", format="cog", axes="cyx", dtype="input", chunks=[1, 128, 128]
    )
    code, out, _ = invoke(capsys, "plan", config)
    assert code == 0 and "overviews (average): (300, 265), (150, 133), (75, 67)" in out
    run_ok(capsys, config)
    assert_valid_cog(tmp_path / "out.tif")
    code, out, _ = invoke(capsys, "info", tmp_path / "out.tif")
    assert code == 0 and "levels 4" in out and "status: complete" in out
    levels = read_levels(tmp_path / "out.tif")
    assert_same_bits(levels[0], bands)  # the identity chain
    assert [level.shape for level in levels] == [(3, 600, 530), (3, 300, 265), (3, 150, 133), (3, 75, 67)]
    for got, expected in zip(levels, reference_levels(bands, 3, "average", 0), strict=True):
        assert_same_bits(got, expected)
    # convpipe reads it back as a pyramid, overview levels included.
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert len(tif.series[0].levels) == 4
        assert_same_bits(tif.series[0].levels[2].asarray(), levels[2])
    # Each band's statistics over its valid samples, where GDAL (gdalinfo, QGIS) reads them.
    import rasterio

    with rasterio.open(tmp_path / "out.tif") as cog_file:
        for band in range(3):
            valid = bands[band][bands[band] != 0].astype(np.float64)
            tags = cog_file.tags(band + 1)
            assert float(tags["STATISTICS_MINIMUM"]) == valid.min()
            assert float(tags["STATISTICS_MAXIMUM"]) == valid.max()
            assert float(tags["STATISTICS_MEAN"]) == pytest.approx(valid.mean(), rel=1e-12)
            assert float(tags["STATISTICS_STDDEV"]) == pytest.approx(valid.std(), rel=1e-9)
            assert float(tags["STATISTICS_VALID_PERCENT"]) == pytest.approx(100 * valid.size / bands[band].size)


def test_an_image_within_one_tile_has_no_overviews_and_default_tiles_are_512(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = geotiff(tmp_path / "in.tif", RNG.random((300, 500)).astype(np.float32))
    run_ok(capsys, write_config(tmp_path / "c.yaml", source, tmp_path / "out.tif", format="cog"))
    assert_valid_cog(tmp_path / "out.tif")
    with rasterio.open(tmp_path / "out.tif") as got:
        assert got.overviews(1) == [] and got.block_shapes == [(512, 512)]
    code, out, _ = invoke(capsys, "plan", tmp_path / "c.yaml")
    assert code == 0 and "Cloud-Optimized GeoTIFF, tiled, deflate, tiles (512, 512)" in out
    assert "overviews (average): none: one tile holds the image" in out
    # A .tif path alone still means a plain GeoTIFF: a COG is asked for.
    plan = convpipe.make_plan(
        from_dict({**yaml.safe_load((tmp_path / "c.yaml").read_text()), "output": {"path": "x.tif"}})
    )
    assert plan.storage.format == "geotiff"


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_nan_is_nodata_in_float_overviews_with_or_without_a_nodata_value(dtype: str) -> None:
    image = image_with_nodata((67, 45), dtype, -9999.0)  # NaN, -9999, odd sizes
    image[0:2, 0:2] = np.nan  # a cell of NaN only
    for nodata in (None, -9999.0, float("nan")):
        got = cog_output.halve(image, "average", nodata)
        assert_same_bits(got, reference_halve(image, "average", nodata))
        stored = np.asarray(-9999.0).astype(dtype)  # float16 holds -1e4
        mixed = ((got > stored) & (got < -1000)).any()  # -9999 averaged with data
        if nodata is None or np.isnan(nodata):  # an all-NaN cell is NaN; -9999 is data
            assert np.isnan(got[0, 0]) and mixed
        else:  # an all-NaN cell is the nodata value, which is never averaged in
            assert got[0, 0] == stored and not mixed


def test_the_validator_refuses_a_pyramid_laid_out_as_tifffile_writes_it(tmp_path: Path) -> None:
    """The check above has teeth: tifffile's reduced-resolution pages (each IFD before its
    own tiles, full resolution first) are not a COG."""
    image = np.zeros((1024, 1024), np.uint16)
    with tifffile.TiffWriter(tmp_path / "pyramid.tif") as tif:
        tif.write(image, tile=(256, 256), compression="zlib")
        tif.write(image[::2, ::2], tile=(256, 256), compression="zlib", subfiletype=1)
        tif.write(image[::4, ::4], tile=(256, 256), compression="zlib", subfiletype=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rasterio: not georeferenced
        valid, errors, _ = cog_validate(str(tmp_path / "pyramid.tif"), quiet=True)
    assert not valid and any("should be after" in error for error in errors)


# --- layout -------------------------------------------------------------------------------------


def blocks_of(image: np.ndarray, block: int) -> tuple[Iterator[tuple[tuple[int, ...], np.ndarray]], list[list[int]]]:
    """A 2-D image as square blocks in the COG writer's order, and their layout."""
    chunks = [[min(block, n - start) for start in range(0, n, block)] for n in image.shape]
    order = cog_output.z_order([len(c) for c in chunks])
    items = ((index, image[index[0] * block :][:block, index[1] * block :][:, :block]) for index in order)
    return items, chunks


def test_bigtiff_only_when_a_classic_tiff_cannot_hold_the_file(tmp_path: Path) -> None:
    assert not cog.bigtiff_needed(10_000, 2**32 - 1 - 10_000)
    assert cog.bigtiff_needed(10_000, 2**32 - 10_000)
    assert cog.bigtiff_needed(8, 5 * 2**30)
    # The BigTIFF layout, forced on a small image, is as valid and reads the same.
    image = image_with_nodata((700, 600), "float32", -9999.0)
    samples = cog.Samples(1, np.dtype(np.float32), (128, 128), "zstd")
    files = {}
    for big in (False, True):
        partial = tmp_path / f"{big}.tif"
        levels = cog_output.stage(*blocks_of(image, 256), partial, (128, 128), "zstd", "average", None)
        assert cog.write(partial, levels, samples, [], [], bigtiff=True if big else None) == big
        cog_output.remove_levels(partial)
        files[big] = partial
    assert files[True].read_bytes()[:4] == b"II+\0" and files[False].read_bytes()[:4] == b"II*\0"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rasterio: not georeferenced
        assert_valid_cog(files[True])
        for got, expected in zip(read_levels(files[True]), read_levels(files[False]), strict=True):
            assert_same_bits(got, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["False.tif", "True.tif"]  # no staged level left


@pytest.mark.parametrize("block", [128, 384, 1024])
def test_overviews_do_not_depend_on_the_blocks_they_are_built_from(tmp_path: Path, block: int) -> None:
    """Blocks one tile, three tiles (not a power of two: overview tiles span blocks) and
    more than the image wide, given in the writer's order: the same levels as the reference."""
    image = image_with_nodata((1101, 899), "float32", -9999.0)
    partial = tmp_path / "out.tif"
    levels = cog_output.stage(*blocks_of(image, block), partial, (128, 128), "deflate", "average", -9999.0)
    cog.write(partial, levels, cog.Samples(1, np.dtype(np.float32), (128, 128), "deflate"), [], [])
    cog_output.remove_levels(partial)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rasterio: not georeferenced
        assert_valid_cog(partial)
        got = read_levels(partial)
    expected = reference_levels(image[None], len(got) - 1, "average", -9999.0)
    for got_level, expected_level in zip(got, expected, strict=True):
        assert_same_bits(got_level, expected_level)
    with tifffile.TiffFile(partial) as tif:  # tiles in TIFF order, each level after the smaller ones
        offsets = [np.asarray(page.dataoffsets) for page in tif.pages]
    assert all((np.diff(o) > 0).all() for o in offsets)
    assert all(before[-1] < after[0] for before, after in itertools.pairwise(reversed(offsets)))


def test_the_writer_holds_a_few_tiles_per_level_whatever_the_image_size(tmp_path: Path) -> None:
    """tracemalloc sees numpy's buffers: the peak while an image 4x wider and 4x taller streams
    through the writer (blocks generated on the fly, in its order; tiles halved, encoded and
    staged) is that of the smaller one."""
    tile, block = (128, 128), 512
    block_bytes = block * block * 4

    def blocks(side: int) -> tuple[Iterator[tuple[tuple[int, ...], np.ndarray]], list[list[int]]]:
        generator = np.random.default_rng(0)
        chunks = [[block] * (side // block)] * 2
        order = cog_output.z_order([side // block] * 2)
        return ((index, generator.random((block, block), dtype=np.float32)) for index in order), chunks

    peaks = []
    for side in (1024, 4096):
        tracemalloc.start()
        try:
            levels = cog_output.stage(*blocks(side), tmp_path / "m.tif", tile, "deflate", "average", None)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert levels[0].byte_counts.size == (side // tile[0]) ** 2
        assert max(levels[-1].shape) <= 128 < max(levels[-2].shape)  # halved until one tile holds it
        cog_output.remove_levels(tmp_path / "m.tif")
    small, large = peaks
    print(f"COG writer peaks: {small / 2**20:.2f} MiB (1024²), {large / 2**20:.2f} MiB (4096²)")
    assert large < 1.25 * small, peaks
    assert large < 4 * block_bytes, peaks  # the larger image is 64 MiB: 64 blocks


def test_z_order_visits_every_block_once_band_after_band() -> None:
    order = cog_output.z_order([2, 3, 5])
    assert sorted(order) == sorted(np.ndindex(2, 3, 5)) and len(set(order)) == 30
    assert [index[0] for index in order] == [0] * 15 + [1] * 15
    assert order[:4] == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]  # a 2x2 square first


# --- object stores, configs, failures -----------------------------------------------------------


def test_cog_in_a_bucket_is_uploaded_whole_and_validates(
    s3_env: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_env.new_bucket()
    source = geotiff(tmp_path / "dem.tif", image_with_nodata((700, 520), "float32", -9999.0))
    staging = tmp_path / "tmpdir"
    staging.mkdir()
    monkeypatch.setenv("TMPDIR", str(staging))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    keys = {"format": "cog", "chunks": [128, 128]}
    run_ok(capsys, write_config(tmp_path / "local.yaml", source, tmp_path / "local.tif", **keys))
    run_ok(capsys, write_config(tmp_path / "remote.yaml", source, f"s3://{bucket}/maps/out.tif", **keys))
    assert list(staging.iterdir()) == []  # the staged file and levels are gone

    client = s3_env.client()
    listed = sorted(item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert all(key == "maps/out.tif" or key.startswith("maps/out.tif.convpipe-lock/") for key in listed), listed
    got = tmp_path / "got.tif"
    got.write_bytes(client.get_object(Bucket=bucket, Key="maps/out.tif")["Body"].read())
    assert_valid_cog(got)
    for remote, local in zip(read_levels(got), read_levels(tmp_path / "local.tif"), strict=True):
        assert_same_bits(remote, local)
    run_ok(capsys, write_config(tmp_path / "remote.yaml", source, f"s3://{bucket}/maps/out.tif", **keys), "--overwrite")
    assert list(staging.iterdir()) == []


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (
            {"overview_resampling": "nearest"},
            "output.overview_resampling: only for COG outputs (this output is geotiff)",
        ),
        (
            {"format": "cog", "overview_resampling": "cubic"},
            "output.overview_resampling: must be one of average, nearest",
        ),
        ({"format": "cog", "codec": "lz4"}, "output.codec: lz4 is not a TIFF compression"),
        ({"format": "cog", "chunks": [100, 100]}, "GeoTIFF tiles must be multiples of 16"),
    ],
)
def test_impossible_cog_configs_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], output: dict[str, Any], message: str
) -> None:
    source = geotiff(tmp_path / "in.tif", RNG.random((40, 40)).astype(np.float32))
    config = write_config(tmp_path / "c.yaml", source, tmp_path / "out.tif", **output)
    for command in ("validate", "run"):
        code, _, err = invoke(capsys, command, config)
        assert code == 2
        assert_one_line_error(err, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "in.tif"]


def test_a_failed_cog_write_leaves_the_old_file_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = geotiff(tmp_path / "in.tif", RNG.random((300, 300)).astype(np.float32))
    config = from_dict(
        {
            "input": {"path": str(source)},
            "output": {"path": str(tmp_path / "out.tif"), "format": "cog", "chunks": [64, 64]},
            "pipeline": [{"filter": "box"}],
        }
    )
    convpipe.run(config)
    older = (tmp_path / "out.tif").read_bytes()

    def full_disk(*args: Any, **kwargs: Any) -> None:
        Path(args[0]).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cog, "write", full_disk)  # after every level was staged
    with pytest.raises(convpipe.RunError, match="writing failed"):
        convpipe.run(config, overwrite=True)
    assert (tmp_path / "out.tif").read_bytes() == older
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "out.tif", "out.tif.convpipe-lock"]
    monkeypatch.undo()
    assert convpipe.run(config, resume=True).blocks == 0  # a finished COG: nothing to do
