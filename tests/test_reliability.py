"""Nothing lost, nothing confusing: bad data, odd values, faults while running, fuzzed configs.

Every test that runs convpipe on an input checks the input's bytes afterwards (the
``guarded_input`` fixture): the input is never written to.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cli_tools
import dask
import numpy as np
import pytest
import tifffile
import yaml
import zarr
from cli_tools import lease_held
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference import reference, rescale_is_well_conditioned
from strategies import case

import convpipe
from convpipe.cli import main
from convpipe.config import from_dict
from convpipe.errors import ConfigError
from convpipe.io import zarr_output
from convpipe.plan import bind

CHAIN = [{"filter": "gaussian", "sigma": 1.5}, {"filter": "sobel"}]


def tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path.parent)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def guarded_input(tmp_path: Path) -> Iterator[Path]:
    """A small uint16 Zarr input whose bytes must be the same after the test."""
    rng = np.random.default_rng(9)
    path = tmp_path / "in.zarr"
    zarr.create_array(str(path), data=(rng.random((64, 80)) * 4000).astype(np.uint16), chunks=(16, 16))
    before = tree_digest(path)
    yield path
    assert tree_digest(path) == before, "the input was modified"


def write_config(folder: Path, input_path: str | Path, **output: Any) -> Path:
    data = {"input": {"path": str(input_path)}, "output": {"path": "out.zarr", **output}, "pipeline": CHAIN}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def invoke(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    """(exit status, stderr) of ``convpipe ARGS``."""
    code, _, err = cli_tools.invoke(capsys, *args)
    return code, err


assert_one_line = cli_tools.assert_one_line_error


# --- bad data ---------------------------------------------------------------------------------


def truncated_tiff(folder: Path) -> Path:
    path = folder / "cut.tif"
    tifffile.imwrite(path, np.ones((64, 64), np.uint16), tile=(16, 16))
    path.write_bytes(path.read_bytes()[:300])
    return path


def garbage_tiff(folder: Path) -> Path:
    path = folder / "junk.tif"
    path.write_bytes(b"this is not a tiff file at all" * 10)
    return path


def corrupt_zarr_metadata(folder: Path) -> Path:
    path = folder / "bad.zarr"
    zarr.create_array(str(path), data=np.ones((8, 8), np.uint16))
    (path / "zarr.json").write_text("{ not json")
    return path


def directory_named_tif(folder: Path) -> Path:
    path = folder / "dir.tif"
    path.mkdir()
    return path


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (lambda folder: folder / "missing.zarr", ("no such file",)),
        (lambda folder: folder / "missing.tif", ("no such file",)),
        (truncated_tiff, ("not a readable TIFF",)),
        (garbage_tiff, ("not a readable TIFF",)),
        (corrupt_zarr_metadata, ("not a readable Zarr",)),
        (directory_named_tif, ("not a readable TIFF",)),
    ],
    ids=["missing zarr", "missing tiff", "truncated tiff", "garbage tiff", "corrupt zarr.json", "directory"],
)
def test_bad_inputs_are_exit_1_with_one_line_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Any, fragments: tuple[str, ...]
) -> None:
    config = write_config(tmp_path, make(tmp_path))
    code, err = invoke(capsys, "run", config)
    assert code == 1
    assert_one_line(err, *fragments)
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_input_is_a_clear_error(
    tmp_path: Path, guarded_input: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (guarded_input / "zarr.json").chmod(0)
    try:
        code, err = invoke(capsys, "run", write_config(tmp_path, guarded_input))
    finally:
        (guarded_input / "zarr.json").chmod(0o644)
    assert code == 1
    assert_one_line(err)
    assert not (tmp_path / "out.zarr").exists()


def test_a_corrupt_chunk_fails_the_run_and_leaves_a_partial_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "in.zarr"
    zarr.create_array(str(path), data=np.ones((64, 64), np.uint16), chunks=(16, 16))
    chunk = path / "c" / "2" / "2"
    chunk.write_bytes(b"\x00garbage" * 3)
    config = write_config(tmp_path, path)
    code, err = invoke(capsys, "run", config, "--quiet")
    assert code == 1
    assert "Traceback" not in err and err.strip()
    status = zarr_output.read_status(str(tmp_path / "out.zarr"))
    assert status is not None and status["complete"] is False
    assert "partial" in describe(tmp_path / "out.zarr", capsys)


def describe(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main(["info", str(path)])
    return capsys.readouterr().out


@pytest.mark.parametrize(("dtype", "word"), [(bool, "bool"), (np.complex64, "complex64")])
def test_non_numeric_dtypes_say_what_is_supported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dtype: Any, word: str
) -> None:
    path = tmp_path / "in.zarr"
    zarr.create_array(str(path), data=np.zeros((8, 8), dtype=dtype))
    code, err = invoke(capsys, "run", write_config(tmp_path, path))
    assert code == 2
    assert_one_line(err, word, "uint16", "float32")


def test_too_few_dimensions_for_the_axes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "in.zarr"
    zarr.create_array(str(path), data=np.zeros((8, 8), np.uint16))
    config = write_config(tmp_path, path)
    code, err = invoke(capsys, "run", config, "--set", "input.axes=zyx")
    assert code == 2
    assert_one_line(err, "input.axes", "3 axes", "has 2")


# --- values -----------------------------------------------------------------------------------


@st.composite
def with_non_finite(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, ...], list[dict[str, Any]]]:
    image, chunks, steps = draw(case(max_steps=2))
    image = image.astype(np.float32)
    flat = image.reshape(-1)
    spots = draw(st.lists(st.integers(0, flat.size - 1), min_size=1, max_size=3))
    for spot in spots:
        flat[spot] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return image, chunks, steps


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(with_non_finite())
def test_nan_and_infinity_reach_only_the_outputs_that_see_them(example: Any) -> None:
    """As in the reference: a pixel reaches an output through the non-zero coefficients of its
    window (and any window of a rank filter); nothing crashes."""
    image, chunks, steps = example
    config = from_dict(
        {"input": {"path": "x", "chunks": list(chunks)}, "output": {"path": "y", "dtype": "float64"}, "pipeline": steps}
    )
    try:
        plan = bind(config, image.shape, image.dtype, image.shape)
    except ConfigError:
        assume(False)
        return
    with np.errstate(all="ignore"):
        assume(rescale_is_well_conditioned(image, plan))
        expected = reference(image, plan)
    with dask.config.set(scheduler="sync"):
        got = convpipe.filter_array(image, steps, chunks=chunks, dtype="float64").compute()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(expected))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected))
    finite = np.isfinite(expected)
    scale = max(
        1.0,
        float(np.abs(expected[finite]).max(initial=0.0)),
        float(np.nanmax(np.abs(image[np.isfinite(image)]), initial=0.0)),
    )
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-9, atol=1e-9 * scale)


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.int16, np.uint8])
def test_other_input_dtypes_work(tmp_path: Path, dtype: Any) -> None:
    rng = np.random.default_rng(1)
    image = (rng.random((30, 40)) * 100).astype(dtype)
    got = convpipe.filter_array(image, CHAIN).compute()
    expected = convpipe.filter_array(image.astype(np.float64), CHAIN, dtype="float64").compute()
    assert got.dtype == np.float32  # the default output dtype, whatever the input
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


# --- faults while running ---------------------------------------------------------------------


def test_a_full_disk_is_a_clear_error_and_the_output_stays_partial(
    tmp_path: Path, guarded_input: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's writes fail with ENOSPC after a few blocks, as on a full disk."""
    from zarr.storage import LocalStore

    original = LocalStore.set
    writes = [0]

    async def set_until_full(self: Any, key: str, value: Any) -> None:
        if key.startswith("c/"):
            writes[0] += 1
            if writes[0] > 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        await original(self, key, value)

    monkeypatch.setattr(LocalStore, "set", set_until_full)
    config = write_config(tmp_path, guarded_input)
    code, err = invoke(capsys, "run", config, "--quiet", "--set", "input.chunks=[16,16]")
    assert code == 1
    assert_one_line(err, "No space left on device", "incomplete")
    monkeypatch.undo()
    status = zarr_output.read_status(str(tmp_path / "out.zarr"))
    assert status is not None and status["complete"] is False
    assert not lease_held(tmp_path / "out.zarr")
    code, err = invoke(capsys, "run", config, "--quiet", "--resume", "--set", "input.chunks=[16,16]")
    assert code == 0, err
    assert zarr_output.read_status(str(tmp_path / "out.zarr"))["complete"] is True  # type: ignore[index]


def test_ctrl_c_stops_with_130_and_leaves_a_resumable_output(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    path = tmp_path / "in.zarr"
    zarr.create_array(str(path), data=(rng.random((2048, 2048)) * 4000).astype(np.uint16), chunks=(64, 64))
    input_bytes = tree_digest(path)
    data = {
        "input": {"path": str(path), "chunks": [64, 64]},
        "output": {"path": "out.zarr"},
        "pipeline": [{"filter": "median", "size": 5}, {"filter": "gaussian", "sigma": 4}],
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    command = [sys.executable, "-c", "from convpipe.cli import main; main()", "run", str(config), "--quiet"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    out = tmp_path / "out.zarr"
    deadline = time.monotonic() + 60
    while zarr_output.count_written(str(out)) < 10:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    last = err.strip().splitlines()[-1]
    assert last.startswith("convpipe: interrupted") and "--resume" in last and "Traceback" not in err
    assert zarr_output.read_status(str(out))["complete"] is False  # type: ignore[index]
    assert not lease_held(out)
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    expected = convpipe.filter_array(zarr.open_array(str(path), mode="r")[...], data["pipeline"]).compute()
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[...], expected)
    assert tree_digest(path) == input_bytes


# --- fuzzing ----------------------------------------------------------------------------------

KEYS = ["filter", "sigma", "size", "pad", "padding", "stride", "kernel", "amount", "output", "cval", "flip", "x"]
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 40) | st.floats(allow_nan=True) | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)
STEP = st.one_of(
    st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4).map(lambda d: {"filter": "box", **d}),
    st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4),
    st.builds(lambda s: {"filter": "gaussian", "sigma": s}, st.floats(0.1, 3)),
    st.builds(
        lambda n, p: {"filter": "median", "size": n, "pad": p}, st.integers(1, 4), st.sampled_from(["same", "valid"])
    ),
    VALUES,
)
CONFIGS = st.fixed_dictionaries(
    {},
    optional={
        "input": st.one_of(VALUES, st.fixed_dictionaries({"path": st.just("in.zarr")}, optional={"chunks": VALUES})),
        "output": st.one_of(VALUES, st.fixed_dictionaries({"path": st.just("out.zarr")}, optional={"dtype": VALUES})),
        "pipeline": st.one_of(VALUES, st.lists(STEP, max_size=3)),
        "extra": VALUES,
    },
)


@pytest.fixture(scope="module")
def fuzz_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    zarr.create_array(str(folder / "in.zarr"), data=np.arange(12 * 10, dtype=np.uint16).reshape(12, 10))
    return folder


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(CONFIGS.map(yaml.safe_dump), st.text(max_size=80)))
def test_fuzzed_configs_never_show_a_traceback_and_valid_ones_run(fuzz_folder: Path, text: str) -> None:
    config = fuzz_folder / "fuzz.yaml"
    config.write_text(text)
    code, err = _run_cli(["validate", str(config)])
    assert code in (0, 2), err
    assert "Traceback" not in err and "internal error" not in err
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("convpipe: error: ")
        return
    code, err = _run_cli(["run", str(config), "--quiet", "--overwrite", "--scheduler", "sync"])
    assert code == 0, err
    assert zarr_output.read_status(str(fuzz_folder / "out.zarr"))["complete"] is True  # type: ignore[index]


def _run_cli(args: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as done:
        main(args)
    return int(done.value.code or 0), err.getvalue()


# --- every bad config, end to end --------------------------------------------------------------


def _catalogue() -> list[Any]:
    from test_config import BIND_ERRORS, CONFIG_ERRORS

    cases = [pytest.param(data, (40, 50), start, id=name) for name, data, start, _ in CONFIG_ERRORS]
    cases += [pytest.param(data, shape, start, id=f"bind: {name}") for name, data, shape, start, _ in BIND_ERRORS]
    return cases


@pytest.mark.parametrize(("data", "shape", "start"), _catalogue())
def test_every_bad_config_is_exit_2_one_line_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: Any, shape: tuple[int, ...], start: str
) -> None:
    """The config catalogue of test_config.py, through `convpipe run` on a real input."""
    zarr.create_array(str(tmp_path / "in.zarr"), data=np.zeros(shape, np.uint16))
    before = sorted(p.name for p in tmp_path.iterdir())
    input_bytes = tree_digest(tmp_path / "in.zarr")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    code, err = invoke(capsys, "run", config)
    assert code == 2, err
    assert_one_line(err)
    assert err.startswith(f"convpipe: error: {start}"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "config.yaml"])
    assert tree_digest(tmp_path / "in.zarr") == input_bytes


def test_a_really_full_disk_is_a_clear_error_and_never_complete(
    tmp_path: Path, small_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(6)
    source = tmp_path / "in.zarr"
    zarr.create_array(str(source), data=(rng.random((256, 256)) * 60000).astype(np.uint16), chunks=(64, 64))
    before = tree_digest(source)
    data = {
        "input": {"path": str(source), "chunks": [64, 64]},
        "output": {"path": str(small_disk / "out.zarr")},
        "pipeline": [{"filter": "gaussian", "sigma": 1.0}],
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    code, err = invoke(capsys, "run", config, "--quiet")
    assert code == 1
    assert_one_line(err, "No space left on device")
    assert tree_digest(source) == before
    status = zarr_output.read_status(str(small_disk / "out.zarr"))
    assert status is not None and status["complete"] is False
    assert "partial" in describe(small_disk / "out.zarr", capsys)


def test_a_missing_array_in_a_group_names_what_is_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    group = zarr.open_group(str(tmp_path / "in.zarr"), mode="w")
    group.create_array("raw", data=np.zeros((8, 8), np.uint16))
    group.create_array("mask", data=np.zeros((8, 8), np.uint8))
    config = write_config(tmp_path, tmp_path / "in.zarr")
    code, err = invoke(capsys, "run", config, "--set", "input.array=image")
    assert code == 2
    assert_one_line(err, "input.array", "'image'", "mask, raw")
    assert not (tmp_path / "out.zarr").exists()
