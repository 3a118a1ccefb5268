"""The satellite worked example (README, "Nodata"): the scene ``scripts/make_sample.py
--satellite`` makes, ``configs/satellite-nodata.yaml`` run on it, and its preview.

The config is the repository's own, with only its paths (and, for a scene small enough to be
quick, its COG tile size) changed by ``--set``. The nodata masks are checked against the
generator's own (``satellite_nodata``), the COG with rio-cogeo and rasterio (GDAL), and the
preview's PNG pixel by pixel where the holes are drawn.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import matplotlib.figure
import numpy as np
import pytest
import rasterio
import tifffile
import zarr
from cli_tools import invoke
from matplotlib.image import imread
from png_tools import is_colour, png_colours
from rio_cogeo.cogeo import cog_validate
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "satellite-nodata.yaml"
SHAPE = (3, 512, 512)  # bands, y, x: a 512² scene fits one of the COG's 512² tiles, so
TILES = "output.chunks=[1,128,128]"  # the test asks for 128² tiles to get two overviews


def load_make_sample() -> ModuleType:
    """scripts/make_sample.py, loaded by path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("convpipe_make_sample", ROOT / "scripts" / "make_sample.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def make_sample() -> ModuleType:
    return load_make_sample()


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory, make_sample: ModuleType) -> Path:
    return make_sample.make_satellite(tmp_path_factory.mktemp("scene") / "satellite.tif", SHAPE, seed=0)


@pytest.fixture(scope="module")
def truth(make_sample: ModuleType) -> np.ndarray:
    """The generator's nodata mask of the whole scene (y, x), the same in every band."""
    return make_sample.satellite_nodata(make_sample.make_satellite_scene(SHAPE, 0), (0, 0), SHAPE[1:])


def grown(mask: np.ndarray, pixels: int) -> np.ndarray:
    return ndimage.binary_dilation(mask, np.ones((3, 3), bool), iterations=pixels)


# --- the scene ------------------------------------------------------------------------------


def test_the_scene_is_a_georeferenced_multiband_geotiff_with_a_swath_edge_and_clouds(
    scene: Path, truth: np.ndarray
) -> None:
    with tifffile.TiffFile(scene) as tif:
        page = tif.pages.first
        assert tif.series[0].axes == "SYX" and tif.series[0].shape == SHAPE and tif.series[0].dtype == np.int16
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
        assert page.tags["GDAL_NODATA"].value == "-9999"
        data = tif.asarray()
    with rasterio.open(scene) as dataset:
        assert dataset.crs.to_epsg() == 32633 and dataset.nodata == -9999
        assert dataset.transform[:6] == (10.0, 0.0, 399960.0, 0.0, -10.0, 5900040.0)
        assert dataset.descriptions == ("blue", "green", "red")
    nodata = data == -9999
    assert (nodata == truth[None]).all()  # every band has the same holes
    # Right of the swath edge is nodata, from the top to the bottom row.
    assert nodata[:, :, -4:].all() and nodata[:, :, :4].mean() < 0.2
    # Cloud holes: blobs away from the swath edge, at least a few of them.
    swath = truth & (np.arange(SHAPE[2]) >= SHAPE[2] * 0.6)[None, :]
    _, count = ndimage.label(truth & ~grown(swath, 1))
    assert count >= 3
    valid = data[~nodata]
    assert valid.min() >= 0 and valid.max() <= 10000  # reflectance x 10000
    # Structure, not noise alone: fields, water and roads far apart in every band.
    for band in data:
        kept = band[band != -9999]
        assert np.percentile(kept, 99) - np.percentile(kept, 1) > 500


def test_the_scene_depends_only_on_the_seed_and_shape(tmp_path: Path, make_sample: ModuleType) -> None:
    shape = (2, 96, 160)
    a = make_sample.make_satellite(tmp_path / "a.tif", shape, (32, 64), seed=4, workers=1)
    b = make_sample.make_satellite(tmp_path / "b.tif", shape, (64, 32), seed=4, workers=2)
    c = make_sample.make_satellite(tmp_path / "c.tif", shape, (32, 64), seed=4, workers=3)
    assert a.read_bytes() == c.read_bytes()  # the thread count changes nothing
    np.testing.assert_array_equal(tifffile.imread(a), tifffile.imread(b))  # nor does the tile grid
    d = make_sample.make_satellite(tmp_path / "d.tif", shape, (32, 64), seed=5)
    assert not np.array_equal(tifffile.imread(a), tifffile.imread(d))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif", "c.tif", "d.tif"]  # no .partial left


def test_the_command_skips_a_complete_scene_and_never_replaces_a_foreign_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, make_sample: ModuleType
) -> None:
    out = tmp_path / "data" / "scene.tif"
    args = ["--satellite", "--shape", "2", "64", "64", "--chunks", "32", "32", str(out)]
    assert make_sample.main(args) == 0
    first = out.read_bytes()
    assert make_sample.main(args) == 0
    assert "is complete, skipping" in capsys.readouterr().out
    assert make_sample.main([*args, "--seed", "1"]) == 0  # other parameters: replaced
    assert "replacing" in capsys.readouterr().out and out.read_bytes() != first
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].shape == (2, 64, 64)
    foreign = tmp_path / "mine.tif"
    tifffile.imwrite(foreign, np.zeros((8, 8), np.uint8))
    before = foreign.read_bytes()
    assert make_sample.main(["--satellite", "--force", "--shape", "64", "64", str(foreign)]) == 2
    assert "not touching it" in capsys.readouterr().err and foreign.read_bytes() == before
    with pytest.raises(SystemExit):
        make_sample.main(["--satellite", "--shape", "5", "64", "64", str(tmp_path / "x.tif")])  # 1 to 4 bands


def test_the_zarr_sample_is_unchanged(tmp_path: Path, make_sample: ModuleType) -> None:
    """The demo's sample: the same pixels as before the satellite scene was added."""
    make_sample.make_sample(tmp_path / "s.zarr", (96, 80), (32, 32), seed=3, workers=2)
    pixels = zarr.open_array(str(tmp_path / "s.zarr"), mode="r")[...]
    assert pixels.dtype == np.uint16
    digest = hashlib.sha256(pixels.tobytes()).hexdigest()
    assert digest == "822478e766d0327afd9adbbcb8736c9e6cdebb98033987a12417624a00f5e71e"


# --- the run --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def edges(scene: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """configs/satellite-nodata.yaml run on the scene (in-process, as the installed command)."""
    from convpipe.cli import main

    out = tmp_path_factory.mktemp("out") / "satellite-edges.tif"
    argv = ["run", str(CONFIG), "--set", f"input.path={scene}", "--set", f"output.path={out}", "--set", TILES]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--quiet"])
    assert exit_info.value.code in (0, None)
    yield out


def test_the_config_writes_a_valid_cog_with_overviews(edges: Path) -> None:
    valid, errors, warnings_found = cog_validate(str(edges), quiet=True)
    assert valid and not errors and not warnings_found, (errors, warnings_found)
    with rasterio.open(edges) as dataset:
        assert dataset.count == SHAPE[0] and dataset.shape == SHAPE[1:]
        assert set(dataset.dtypes) == {"float32"}
        assert dataset.crs.to_epsg() == 32633
        assert dataset.transform[:6] == (10.0, 0.0, 399960.0, 0.0, -10.0, 5900040.0)
        assert dataset.nodata == -9999
        assert dataset.descriptions == ("blue", "green", "red")  # the input's band names, kept
        assert all(dataset.overviews(band) == [2, 4] for band in range(1, SHAPE[0] + 1))
        assert dataset.block_shapes[0] == (128, 128)
    for level, size in enumerate((256, 128)):
        with rasterio.open(edges, OVERVIEW_LEVEL=level) as overview:
            assert overview.shape == (size, size) and overview.nodata == -9999
            data = overview.read()
            assert (data == -9999).any() and np.isfinite(data).all()


def test_the_holes_stay_nodata_and_the_rest_is_filtered(scene: Path, edges: Path, truth: np.ndarray) -> None:
    with rasterio.open(edges) as dataset:
        out = dataset.read()
    with rasterio.open(scene) as dataset:
        source = dataset.read()
    nodata = out == -9999
    for band in range(SHAPE[0]):
        # Every input nodata sample is nodata in the output: no hole is filled.
        assert nodata[band][truth].all()
        # Gaussian (ignore, min_valid 0.5) keeps the holes' outlines; sobel (propagate) adds
        # the samples whose 3x3 window reaches into one: nothing beyond two pixels of a hole.
        assert not (nodata[band] & ~grown(truth, 2)).any()
        assert nodata[band][grown(truth, 1)].mean() > 0.98  # the one-pixel ring is nodata
    assert np.isfinite(out).all()
    edges_found = out[~nodata]
    assert edges_found.min() >= 0 and edges_found.max() > 100  # gradient magnitudes of real edges
    # Away from the holes the output is the chain's: large where the input has a step.
    far = ~grown(truth, 8)
    step = np.abs(np.diff(source[0].astype(np.float32), axis=1))[:, :-1] > 500
    assert np.median(out[0][:, 1:-1][step & far[:, 1:-1]]) > 5 * np.median(out[0][far])


# --- the preview ----------------------------------------------------------------------------


def test_the_preview_draws_the_holes_in_the_nodata_colour(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    scene: Path,
    truth: np.ndarray,
    drawn: list[matplotlib.figure.Figure],
) -> None:
    target = tmp_path / "preview.png"
    code, _, err = invoke(capsys, "preview", CONFIG, "--set", f"input.path={scene}", "-o", target)
    assert code == 0, err
    png = imread(target)
    (figure,) = drawn
    inside, outside = ~grown(~truth, 2), ~grown(truth, 3)  # well inside a hole, well away from one
    for panel in (0, 1):  # input and output: the scene is shown pixel for pixel (512 <= 1024)
        assert is_colour(png_colours(png, figure, panel, inside)).all()
        assert not is_colour(png_colours(png, figure, panel, outside)).any()
        title = [ax for ax in figure.axes if ax.images][panel].get_title(loc="left")
        assert "magenta: nodata (-9999)" in title
    # The colour bars span the valid samples: the -9999 does not crush the contrast.
    bars = [ax.images[0].get_clim() for ax in figure.axes if ax.images]
    assert bars[0][0] > 0 and bars[1][0] >= 0


def test_a_preview_overview_shrinks_around_the_holes(
    tmp_path: Path, scene: Path, truth: np.ndarray, drawn: list[matplotlib.figure.Figure]
) -> None:
    from convpipe.preview import preview

    result = preview(CONFIG, tmp_path / "p.png", overrides=[f"input.path={scene}"], max_size=128)
    assert result.input_factor == 4 and result.input_nodata is not None
    # A shrunk pixel is nodata when all of its 4x4 samples are.
    np.testing.assert_array_equal(result.input_nodata, truth.reshape(128, 4, 128, 4).all(axis=(1, 3)))
    png = imread(result.path)
    assert is_colour(png_colours(png, drawn[0], 0, result.input_nodata)).all()
    assert not is_colour(png_colours(png, drawn[0], 0, ~result.input_nodata)).any()
