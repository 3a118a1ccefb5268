"""``convpipe preview``: the PNG a user gets, the pixels each panel shows, and the errors.

Every panel's array is compared with the chain computed on the whole (tiny) input, so a wrong
region, a wrong stride mapping or a wrong z slice fails here. Inputs are at most 64 pixels a
side so the file runs in a few seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.figure
import numpy as np
import pytest
import yaml
import zarr
from cli_tools import assert_one_line_error, invoke
from click.testing import CliRunner
from matplotlib.image import imread
from png_tools import is_colour, png_colours

from convpipe import engine
from convpipe.cli import cli
from convpipe.config import Config, from_dict
from convpipe.errors import RunError
from convpipe.preview import PreviewResult, preview, select
from convpipe.run import input_spec, make_plan

CHAIN = [{"filter": "gaussian", "sigma": 1.5}, {"filter": "sobel", "stride": 2}]


# --- helpers -------------------------------------------------------------------------------


def write_zarr(path: Path, data: np.ndarray, chunks: tuple[int, ...]) -> Path:
    array = zarr.create_array(store=str(path), shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=3)
    array[...] = data
    return path


def config_data(input_path: Path, pipeline: list[dict[str, Any]], **input_keys: Any) -> dict[str, Any]:
    return {
        "input": {"path": str(input_path), **input_keys},
        "output": {"path": str(input_path.parent / "out.zarr")},
        "pipeline": pipeline,
    }


def make_config(input_path: Path, pipeline: list[dict[str, Any]], **input_keys: Any) -> Config:
    return from_dict(config_data(input_path, pipeline, **input_keys))


def full_output(config: Config) -> np.ndarray:
    """The whole chain computed at once: what every panel must agree with."""
    plan = make_plan(config)
    return engine.to_dask(plan, input_spec(config, plan)).compute()


@pytest.fixture
def computed_blocks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The index of every output block the chain computes while the test runs."""
    seen: list[tuple[int, ...]] = []
    block = engine.ChainJob.block

    def counting(job: engine.ChainJob, index: Sequence[int], value_ranges: Any) -> np.ndarray:
        seen.append(tuple(index))
        return block(job, index, value_ranges)

    monkeypatch.setattr(engine.ChainJob, "block", counting)
    return seen


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 60_000, size=(40, 50), dtype=np.uint16)


@pytest.fixture
def zarr_input(tmp_path: Path, image: np.ndarray) -> Path:
    return write_zarr(tmp_path / "in.zarr", image, chunks=(16, 16))


# --- the picture ---------------------------------------------------------------------------


def test_overview_writes_a_readable_png_with_two_panels(tmp_path: Path, zarr_input: Path, image: np.ndarray) -> None:
    config = make_config(zarr_input, CHAIN, chunks=[16, 16])
    result = preview(config, tmp_path / "pics" / "p.png")
    assert isinstance(result, PreviewResult)
    assert result.axis_labels == ("y (input pixels)", "x (input pixels)")
    picture = imread(result.path)
    height, width = picture.shape[:2]
    assert width > 1.6 * height  # two square panels side by side, plus colour bars
    assert width >= 2 * 512  # each panel drawn at least 512 px
    assert [p.name for p in (tmp_path / "pics").iterdir()] == ["p.png"]  # no temporary left
    # A small image is shown pixel for pixel: the whole input and the whole output.
    np.testing.assert_array_equal(result.input, image)
    np.testing.assert_array_equal(result.output, full_output(config))
    assert (result.input_factor, result.output_factor) == (1, 1)
    # Both panels cover the same input pixels (the stride-2 output's samples are 2 px apart).
    assert result.input_extent == (-0.5, 49.5, 39.5, -0.5)
    assert result.output_extent == (-1.0, 49.0, 39.0, -1.0)
    assert result.input_title.startswith("input ")
    assert "output after gaussian → sobel (stride 2)" in result.output_title
    low, high = result.input_limits
    assert np.percentile(image, 1) == pytest.approx(low) and np.percentile(image, 99) == pytest.approx(high)


def test_overview_of_a_large_image_is_a_block_mean(tmp_path: Path, zarr_input: Path, image: np.ndarray) -> None:
    config = make_config(zarr_input, CHAIN, chunks=[16, 16])
    result = preview(config, tmp_path / "p.png", max_size=10)
    # Input 40x50 -> factor 5 -> 8x10 means; output 20x25 -> factor 3 -> 6x8 (edge dropped).
    assert (result.input_factor, result.output_factor) == (5, 3)
    np.testing.assert_allclose(result.input, image.reshape(8, 5, 10, 5).mean(axis=(1, 3)))
    full = full_output(config)
    np.testing.assert_allclose(result.output, full[:18, :24].reshape(6, 3, 8, 3).mean(axis=(1, 3)), rtol=1e-6)
    assert "mean of 5×5 px" in result.input_title


# --- regions -------------------------------------------------------------------------------


def test_region_shows_the_matching_output_samples(tmp_path: Path, zarr_input: Path, image: np.ndarray) -> None:
    config = make_config(zarr_input, CHAIN, chunks=[16, 16])
    result = preview(config, tmp_path / "p.png", region="5:20,10:30")
    np.testing.assert_array_equal(result.input, image[5:20, 10:30])
    # Stride 2, pad same: output j sits at input 2j; 5 <= 2j < 20 -> j 3..9, 10 <= 2j < 30 -> j 5..14.
    assert result.output_index == (slice(3, 10), slice(5, 15))
    np.testing.assert_array_equal(result.output, full_output(config)[3:10, 5:15])
    assert "y 5:20, x 10:30 of 40×50 uint16" in result.input_title
    assert "y 3:10, x 5:15 of 20×25 float32" in result.output_title


def test_region_accepts_slices_and_open_ends(zarr_input: Path) -> None:
    plan = make_plan(make_config(zarr_input, CHAIN))
    text = select(plan, ":8, 44:")
    assert text.input_index == (slice(0, 8), slice(44, 50))
    assert text.output_index == (slice(0, 4), slice(22, 25))
    assert select(plan, np.s_[0:8, 44:50]) == select(plan, (slice(None, 8), slice(44, None))) == text
    assert select(plan, "3,:").input_index == (slice(3, 4), slice(0, 50))  # N means N:N+1


@pytest.mark.parametrize(
    ("region", "blocks"),
    [("0:10,0:10", 1), ("10:20,10:20", 4), ("0:64,30:34", 8)],
)
def test_region_computes_only_the_blocks_it_needs(
    tmp_path: Path, computed_blocks: list[tuple[int, ...]], region: str, blocks: int
) -> None:
    data = np.random.default_rng(2).random((64, 64)).astype(np.float32)
    path = write_zarr(tmp_path / "in.zarr", data, (16, 16))
    config = make_config(path, [{"filter": "box", "size": 5}], chunks=[16, 16])
    result = preview(config, tmp_path / "p.png", region=region)
    assert len(set(computed_blocks)) == len(computed_blocks) == blocks  # of 16, each once
    np.testing.assert_allclose(result.output, full_output(config)[result.output_index], rtol=1e-6)


def test_valid_pad_and_stride_map_to_the_window_centres(tmp_path: Path) -> None:
    data = np.random.default_rng(3).random((48, 48)).astype(np.float32)
    path = write_zarr(tmp_path / "in.zarr", data, (16, 16))
    # A 5x5 valid kernel: output j is the window over input j..j+4, centred at input j + 2.
    valid = make_config(path, [{"filter": "box", "size": 5, "pad": "valid"}])
    result = preview(valid, tmp_path / "v.png", region="10:20,0:48")
    assert result.output_index == (slice(8, 18), slice(0, 44))
    np.testing.assert_allclose(result.output, full_output(valid)[8:18, 0:44], rtol=1e-6)
    # 4x4 tiles with stride 4: output j averages input 4j..4j+3 (centre 4j + 1.5).
    tiles = make_config(path, [{"filter": "box", "size": 4, "pad": "valid", "stride": 4}])
    result = preview(tiles, tmp_path / "t.png", region="8:16,0:48")
    assert result.output_index == (slice(2, 4), slice(0, 12))
    np.testing.assert_allclose(result.output[0, 0], data[8:12, 0:4].mean(), rtol=1e-6)
    assert result.output_extent == (-0.5, 47.5, 15.5, 7.5)  # the same pixels as the input panel
    # A range narrower than the stride holding no centre still shows the nearest sample.
    assert select(make_plan(tiles), "10:12,0:48").output_index == (slice(2, 3), slice(0, 12))


def test_strides_chain_up(tmp_path: Path) -> None:
    data = np.zeros((64, 64), dtype=np.float32)
    pipeline = [{"filter": "box", "size": 3, "stride": 2}, {"filter": "gaussian", "sigma": 1, "stride": 2}]
    plan = make_plan(make_config(write_zarr(tmp_path / "in.zarr", data, (32, 32)), pipeline))
    # Total stride 4, odd kernels with pad same: output j sits at input 4j.
    assert select(plan, "16:48,0:20").output_index == (slice(4, 12), slice(0, 5))
    assert select(plan, "17:48,0:21").output_index == (slice(5, 12), slice(0, 6))


def test_axes_show_the_inputs_physical_units(tmp_path: Path, image: np.ndarray) -> None:
    path = tmp_path / "in.ome.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("0", data=image, chunks=(16, 16))
    transforms = [{"type": "scale", "scale": [0.5, 0.25]}, {"type": "translation", "translation": [10.0, 20.0]}]
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "yx"]
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": transforms}]}],
    }
    result = preview(make_config(path, CHAIN), tmp_path / "p.png", region="0:20,0:20")
    assert result.axis_labels == ("y (µm)", "x (µm)")
    np.testing.assert_array_equal(result.input, image[:20, :20])


# --- nodata --------------------------------------------------------------------------------


def test_nodata_is_drawn_in_the_nodata_colour_and_left_out_of_the_colour_range(
    tmp_path: Path, drawn: list[matplotlib.figure.Figure]
) -> None:
    image = np.random.default_rng(8).integers(1000, 2000, size=(40, 50)).astype(np.int16)
    image[10:24, 5:19] = -9999  # a cloud
    image[:, 44:] = -9999  # beyond the swath edge
    path = write_zarr(tmp_path / "in.zarr", image, (16, 16))
    config = make_config(path, [{"filter": "gaussian", "sigma": 1, "nodata": "ignore"}], nodata=-9999)
    result = preview(config, tmp_path / "p.png")
    hole = image == -9999
    np.testing.assert_array_equal(result.input, image)  # shown pixel for pixel, as stored
    np.testing.assert_array_equal(result.input_nodata, hole)
    output = full_output(config)
    np.testing.assert_array_equal(result.output_nodata, output == -9999)  # the value the run writes
    assert result.output_nodata[12:22, 7:17].all() and result.output_nodata[:, 45:].all()
    # Colours span the valid samples' percentiles: -9999 is not the bottom of the range.
    low, high = result.input_limits
    assert (low, high) == pytest.approx(tuple(np.percentile(image[~hole], [1, 99])))
    low, high = result.output_limits
    valid = output[output != -9999]
    assert (low, high) == pytest.approx(tuple(np.percentile(valid, [1, 99])))
    assert low > 1000
    # The PNG: magenta where nodata, grey elsewhere, in both panels; the titles say so.
    png = imread(result.path)
    (figure,) = drawn
    for panel, nodata in enumerate((result.input_nodata, result.output_nodata)):
        assert is_colour(png_colours(png, figure, panel, nodata)).all()
        assert not is_colour(png_colours(png, figure, panel, ~nodata)).any()
    share = 100 * hole.mean()
    assert f"magenta: nodata (-9999), {share:.1f} %" in result.input_title
    assert "magenta: nodata (-9999)" in result.output_title


def test_nan_is_nodata_and_a_shrunk_pixel_is_the_mean_of_its_valid_samples(
    tmp_path: Path, drawn: list[matplotlib.figure.Figure]
) -> None:
    image = np.random.default_rng(9).random((40, 50)).astype(np.float32)
    image[0:10, 0:12] = np.nan  # two whole 5x5 cells and a part of a third
    image[20, 20] = -np.inf
    path = write_zarr(tmp_path / "in.zarr", image, (16, 16))
    # A float input without a declared value: NaN and infinities are nodata once a step ignores them.
    config = make_config(path, [{"filter": "box", "size": 3, "nodata": "ignore"}])
    result = preview(config, tmp_path / "p.png", max_size=10, nodata_colour="cyan")
    cells = image.reshape(8, 5, 10, 5).transpose(0, 2, 1, 3).reshape(8, 10, 25)
    good = np.isfinite(cells)
    means = np.where(good, cells, 0).sum(axis=2) / np.maximum(good.sum(axis=2), 1)
    expected = np.where(good.any(axis=2), means, np.nan)
    np.testing.assert_allclose(result.input, expected, rtol=1e-6)
    np.testing.assert_array_equal(result.input_nodata, ~good.any(axis=2))
    assert result.input_nodata[:2, :2].all() and not result.input_nodata[:2, 2:].any()
    assert result.input_limits[0] >= 0 and np.isfinite(result.input_limits).all()
    png = imread(result.path)
    cyan = np.array([0.0, 1.0, 1.0])
    assert is_colour(png_colours(png, drawn[0], 0, result.input_nodata), cyan).all()
    assert not is_colour(png_colours(png, drawn[0], 0, ~result.input_nodata), cyan).any()
    assert "cyan: nodata (NaN, ±inf)" in result.input_title
    assert "cyan: nodata (NaN)" in result.output_title


def test_without_nodata_nothing_is_masked(tmp_path: Path, zarr_input: Path) -> None:
    result = preview(make_config(zarr_input, CHAIN), tmp_path / "p.png")
    assert result.input_nodata is None and result.output_nodata is None
    assert "magenta" not in result.input_title + result.output_title


# --- 3-D and non-spatial axes --------------------------------------------------------------


def test_volume_shows_the_middle_z_slice(tmp_path: Path) -> None:
    volume = np.random.default_rng(5).random((9, 24, 28)).astype(np.float32)
    path = write_zarr(tmp_path / "vol.zarr", volume, (3, 12, 14))
    config = make_config(path, [{"filter": "gaussian", "sigma": 1}, {"filter": "sobel"}])
    result = preview(config, tmp_path / "p.png")
    assert result.input_index[0] == 4 and result.output_index[0] == 4
    np.testing.assert_array_equal(result.input, volume[4])
    np.testing.assert_allclose(result.output, full_output(config)[4], rtol=1e-6)
    assert "z 4 (middle)" in result.input_title
    # y, x only: still the middle slice; with z: the middle of its range.
    assert select(make_plan(config), "2:10,3:17").input_index == (4, slice(2, 10), slice(3, 17))
    ranged = preview(config, tmp_path / "z.png", region="0:3,2:10,3:17")
    np.testing.assert_array_equal(ranged.input, volume[1, 2:10, 3:17])
    assert "z 1 (middle of 0:3), y 2:10, x 3:17 of 24×28 float32" in ranged.input_title
    np.testing.assert_allclose(ranged.output, full_output(config)[1, 2:10, 3:17], rtol=1e-6)


def test_volume_with_a_z_stride_shows_the_corresponding_output_slice(
    tmp_path: Path, computed_blocks: list[tuple[int, ...]]
) -> None:
    volume = np.random.default_rng(6).random((9, 20, 20)).astype(np.float32)
    path = write_zarr(tmp_path / "vol.zarr", volume, (3, 10, 10))
    config = make_config(path, [{"filter": "box", "size": 3, "stride": [2, 1, 1]}], chunks=[4, 10, 10])
    result = preview(config, tmp_path / "p.png")
    # Input slice 4 (middle of 9); output k sits at input 2k, so k = 2: output blocks of 2 z
    # samples, so only the 4 blocks of the second z layer are computed (of 12).
    assert result.input_index[0] == 4 and result.output_index[0] == 2
    assert sorted({index[0] for index in computed_blocks}) == [1] and len(computed_blocks) == 4
    full = full_output(config)
    np.testing.assert_allclose(result.output, full[2], rtol=1e-6)


def test_channels_show_index_zero(tmp_path: Path) -> None:
    data = np.random.default_rng(7).random((3, 20, 30)).astype(np.float32)
    config = make_config(write_zarr(tmp_path / "c.zarr", data, (1, 20, 30)), [{"filter": "box"}], axes="cyx")
    result = preview(config, tmp_path / "p.png", region="0:10,0:30")
    np.testing.assert_array_equal(result.input, data[0, :10])
    np.testing.assert_allclose(result.output, full_output(config)[0, :10], rtol=1e-6)
    assert "c 0 (first), y 0:10" in result.input_title and "c 0, y 0:10" in result.output_title


# --- the command ---------------------------------------------------------------------------


def write_config_file(folder: Path, input_path: Path, pipeline: list[dict[str, Any]] | None = None) -> Path:
    path = folder / "config.yaml"
    data = config_data(input_path, pipeline or CHAIN)
    data["input"]["path"] = input_path.name  # relative to the config file, as users write it
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_command_writes_the_png(capsys: pytest.CaptureFixture[str], tmp_path: Path, zarr_input: Path) -> None:
    config = write_config_file(tmp_path, zarr_input)
    target = tmp_path / "out" / "preview.png"
    code, _, err = invoke(
        capsys, "preview", config, "-o", target, "--region", "0:20,0:20", "--set", "pipeline[0].sigma=2"
    )
    assert code == 0, err
    assert f"wrote {target}" in err
    height, width = imread(target).shape[:2]
    assert width > 1.6 * height


def test_help_shows_an_example() -> None:
    result = CliRunner().invoke(cli, ["preview", "--help"])
    assert result.exit_code == 0
    assert "convpipe preview configs/edges.yaml -o out/preview.png" in result.output
    assert "--region 8000:9024,8000:9024" in result.output


@pytest.mark.parametrize(
    ("region", "fragments"),
    [
        ("5:2,0:10", ("--region 5:2,0:10", "y range 5:2 is empty", "within 0:40,0:50")),
        ("0:10,7:7", ("x range 7:7 is empty",)),
        ("0:100,0:10", ("--region 0:100,0:10", "y range 0:100 is outside the input", "0:40")),
        ("0:10,-3:10", ("x range -3:10 is outside the input",)),
        ("0:10", ("--region 0:10", "gives 1 range", "2 spatial axes (y, x)", "y0:y1,x0:x1")),
        ("0:5,0:5,0:5", ("gives 3 ranges",)),
        ("abc,0:10", ("--region abc,0:10", "'abc' is not a range like start:stop")),
        ("1:2:3,0:10", ("'1:2:3' is not a range",)),
    ],
)
def test_bad_region_is_one_line_exit_2_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, zarr_input: Path, region: str, fragments: tuple[str, ...]
) -> None:
    config = write_config_file(tmp_path, zarr_input)
    code, _, err = invoke(capsys, "preview", config, "-o", tmp_path / "p.png", "--region", region)
    assert code == 2
    assert_one_line_error(err, *fragments)
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob(".*tmp"))


def test_bad_target_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path, zarr_input: Path) -> None:
    config = write_config_file(tmp_path, zarr_input)
    code, _, err = invoke(capsys, "preview", config, "-o", tmp_path / "p.jpg")
    assert code == 2
    assert_one_line_error(err, "-o", ".png")
    code, _, err = invoke(capsys, "preview", config, "-o", zarr_input / "p.png")
    assert code == 2
    assert_one_line_error(err, "inside the input")
    assert not (zarr_input / "p.png").exists()


def test_failed_read_keeps_the_old_png_and_leaves_no_temporary(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, zarr_input: Path
) -> None:
    config = write_config_file(tmp_path, zarr_input)
    target = tmp_path / "p.png"
    target.write_bytes(b"the previous preview")
    chunk = next(p for p in (zarr_input / "c").rglob("*") if p.is_file())
    chunk.write_bytes(b"not a compressed chunk")
    code, _, err = invoke(capsys, "preview", config, "-o", target)
    assert code == 1
    assert_one_line_error(err, "cannot read")
    assert target.read_bytes() == b"the previous preview"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".zarr") == ["config.yaml", "p.png"]


def test_a_failure_while_writing_leaves_no_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, zarr_input: Path
) -> None:
    def half_written(figure: Any, target: Path, **options: Any) -> None:
        Path(target).write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_written)
    with pytest.raises(RunError, match="No space left on device"):
        preview(make_config(zarr_input, CHAIN), tmp_path / "p.png", region="0:10,0:10")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr"]
