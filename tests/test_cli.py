"""The ``convpipe`` command as a user meets it: exit codes, one-line errors, what is written.

The README's "Commands and exit status" (exit status 0/1/2, one message on stderr, no
traceback) and "Data safety" (the input is never written to, an existing output is refused,
provenance and completeness attributes).
Inputs are tiny (40x50) so the whole file runs in a few seconds.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zarr
from cli_tools import assert_one_line_error, invoke

import convpipe
from convpipe.config import load
from convpipe.filters import FILTERS

CHAIN = [
    {"filter": "gaussian", "sigma": 2.0},
    {"filter": "sobel", "stride": 2},
]


# --- helpers -------------------------------------------------------------------------------


def write_zarr(path: Path, data: np.ndarray, chunks: tuple[int, ...] | None = None) -> Path:
    array = zarr.create_array(
        store=str(path),
        shape=data.shape,
        chunks=chunks or data.shape,
        dtype=data.dtype,
        zarr_format=3,
    )
    array[...] = data
    return path


def write_config(folder: Path, data: Any, name: str = "config.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_config(
    folder: Path,
    pipeline: list[dict[str, Any]] | None = None,
    *,
    input_path: str = "in.zarr",
    output: str = "out.zarr",
    chunks: tuple[int, ...] | None = (16, 16),
    name: str = "config.yaml",
    **output_keys: Any,
) -> Path:
    data: dict[str, Any] = {
        "input": {"path": input_path},
        "output": {"path": output, **output_keys},
        "pipeline": CHAIN if pipeline is None else pipeline,
    }
    if chunks is not None:
        data["input"]["chunks"] = list(chunks)
    return write_config(folder, data, name)


def tree_digest(path: Path) -> str:
    """A hash of every file's relative name and bytes under ``path`` (or of the file itself)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path.parent)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def read_output(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    array = zarr.open_array(str(path), mode="r")
    return array[...], dict(array.attrs["convpipe"])


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 60_000, size=(40, 50), dtype=np.uint16)


@pytest.fixture
def zarr_input(tmp_path: Path, image: np.ndarray) -> Path:
    """A 40x50 uint16 Zarr v3 input at tmp_path/in.zarr, stored in 20x25 chunks."""
    return write_zarr(tmp_path / "in.zarr", image, chunks=(20, 25))


# --- validate, plan, filters ---------------------------------------------------------------


def test_validate_prints_ok_and_exits_0(tmp_path: Path, zarr_input: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_config(tmp_path)
    code, out, err = invoke(capsys, "validate", path)
    assert code == 0, err
    assert out.startswith("ok"), out
    assert "(40, 50)" in out and "(20, 25)" in out
    assert err == ""
    assert not (tmp_path / "out.zarr").exists()


def test_plan_prints_each_steps_geometry(tmp_path: Path, zarr_input: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # gaussian sigma 2: radius int(4*2 + 0.5) = 8, F = 17, same pad 8/8.
    # box 4 (even): same pad puts the extra pixel after, 1/2; chained halo 9/10.
    # sobel stride 2: F = 3, pad 1/1, 40x50 -> floor((40 + 2 - 3) / 2) + 1 = 20, 25.
    pipeline = [
        {"filter": "gaussian", "sigma": 2},
        {"filter": "box", "size": 4},
        {"filter": "sobel", "stride": 2},
    ]
    path = make_config(tmp_path, pipeline)
    code, out, err = invoke(capsys, "plan", path, "--workers", "2")
    assert code == 0, err
    rows = {line.split()[1]: line.split() for line in out.splitlines() if line[:4].strip().isdigit()}
    assert rows["gaussian"] == ["0", "gaussian", "17", "8/8", "reflect", "1", "8/8", "(40,", "50)"]
    assert rows["box"] == ["1", "box", "4", "1/2", "reflect", "1", "9/10", "(40,", "50)"]
    assert rows["sobel"] == ["2", "sobel", "3", "1/1", "reflect", "2", "10/10", "(20,", "25)"]
    # Input blocks of 16x16 become 8x8 output blocks after stride 2: a 3x4 grid of 12.
    blocks = next(line for line in out.splitlines() if line.startswith("blocks"))
    assert "12 output blocks of (8, 8)" in blocks
    assert "(3, 4)" in blocks and "(16, 16)" in blocks
    tasks = next(line for line in out.splitlines() if line.startswith("tasks"))
    assert tasks.split()[1] == "12"
    assert any(line.startswith("memory") for line in out.splitlines())
    assert not (tmp_path / "out.zarr").exists()


def test_plan_shows_overrides(tmp_path: Path, zarr_input: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_config(tmp_path)
    code, out, err = invoke(capsys, "plan", path, "--set", "input.chunks=[40,50]", "--set", "pipeline[0].sigma=1")
    assert code == 0, err
    assert "1 output block of" in out
    gaussian = next(line for line in out.splitlines() if "gaussian" in line)
    assert gaussian.split()[2:4] == ["9", "4/4"]


def test_filters_lists_every_filter(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = invoke(capsys, "filters")
    assert code == 0, err
    listed = {line.split(":")[0].split()[0] for line in out.splitlines() if line[:1].isalpha()}
    assert set(FILTERS) <= listed
    for key in ("sigma", "size", "kernel", "neighbours", "stride", "padding"):
        assert key in out


# --- one-line errors, exit 2, nothing written -----------------------------------------------

BAD_CONFIGS = [
    (
        "negative sigma",
        {"pipeline": [{"filter": "gaussian", "sigma": -2}]},
        (),
        "pipeline[0].sigma",
    ),
    ("unknown key", {"pipeline": [{"filter": "box", "sizee": 3}]}, (), "pipeline[0].sizee"),
    ("unknown filter", {"pipeline": [{"filter": "blur"}]}, (), "pipeline[0].filter"),
    ("bad dtype", {"output": {"path": "out.zarr", "dtype": "uint9"}}, (), "output.dtype"),
    ("bad set value", {}, ("--set", "pipeline[1].stride=0"), "pipeline[1].stride"),
    ("bad set index", {}, ("--set", "pipeline[5].sigma=1"), "pipeline[5]"),
    ("bad set syntax", {}, ("--set", "pipeline[0].sigma"), "KEY=VALUE"),
    # found only against the input's shape
    (
        "ragged kernel",
        {"pipeline": [{"filter": "convolve", "kernel": [[1, 2], [3]]}]},
        (),
        "pipeline[0].kernel",
    ),
    ("per-axis list", {"pipeline": [{"filter": "box", "size": [3, 3, 3]}]}, (), "pipeline[0].size"),
    ("axes", {"input": {"path": "in.zarr", "axes": "zyx"}}, (), "input.axes"),
    (
        "empty output",
        {"pipeline": [{"filter": "box", "size": 41, "pad": "valid"}]},
        (),
        "pipeline[0]: ",
    ),
]


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
@pytest.mark.parametrize(
    ("changes", "extra", "names"),
    [pytest.param(c, e, n, id=name) for name, c, e, n in BAD_CONFIGS],
)
def test_a_bad_config_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path,
    zarr_input: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    changes: dict[str, Any],
    extra: tuple[str, ...],
    names: str,
) -> None:
    data: dict[str, Any] = {
        "input": {"path": "in.zarr"},
        "output": {"path": "out.zarr"},
        "pipeline": CHAIN,
        **changes,
    }
    path = write_config(tmp_path, data)
    before = tree_digest(zarr_input)
    code, out, err = invoke(capsys, command, path, *extra)
    assert code == 2, err
    assert_one_line_error(err, names)
    assert out == ""
    assert not (tmp_path / "out.zarr").exists()
    assert tree_digest(zarr_input) == before


def test_a_yaml_syntax_error_names_line_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("input:\n  path: in.zarr\n bad: 2\n")
    code, _, err = invoke(capsys, "validate", path)
    assert code == 2
    assert_one_line_error(err, str(path), "line 3, column 2")


def test_a_missing_config_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = invoke(capsys, "run", tmp_path / "nope.yaml")
    assert code == 2
    assert_one_line_error(err, "nope.yaml")


@pytest.mark.parametrize(
    "args",
    [["run"], ["bogus-command"], ["run", "c.yaml", "--workers", "0"], ["run", "c.yaml", "--nope"]],
)
def test_bad_usage_is_exit_2_without_traceback(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = invoke(capsys, *args)
    assert code == 2
    assert_one_line_error(err, "--help")


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_missing_input_is_exit_1_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    path = make_config(tmp_path, input_path="missing.zarr")
    code, _, err = invoke(capsys, command, path)
    assert code == 1
    assert_one_line_error(err, str(tmp_path / "missing.zarr"), "no such file")
    assert not (tmp_path / "out.zarr").exists()


# --- run -----------------------------------------------------------------------------------


def test_run_writes_a_complete_output_with_provenance(
    tmp_path: Path, zarr_input: Path, image: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_config(tmp_path)
    code, _, err = invoke(capsys, "run", path)
    assert code == 0, err
    data, attrs = read_output(tmp_path / "out.zarr")
    assert data.shape == (20, 25)
    assert data.dtype == np.float32
    expected = convpipe.filter_array(image, CHAIN).compute()
    np.testing.assert_allclose(data, expected, rtol=1e-5, atol=1e-3)

    assert attrs["complete"] is True
    assert attrs["version"] == convpipe.__version__
    assert attrs["config"] == load(path).resolved()
    assert attrs["config"]["pipeline"][0]["sigma"] == 2.0
    assert Path(attrs["input"]["path"]) == zarr_input
    assert attrs["input"]["shape"] == [40, 50]
    assert attrs["input"]["dtype"] == "uint16"
    assert [s["output_shape"] for s in attrs["steps"]] == [[40, 50], [20, 25]]
    assert [s["filter"] for s in attrs["steps"]] == ["gaussian", "sobel"]


def test_run_applies_set_overrides(tmp_path: Path, zarr_input: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_config(tmp_path)
    code, _, err = invoke(
        capsys,
        "run",
        path,
        "--quiet",
        "--set",
        "pipeline[0].sigma=3",
        "--set",
        "output.dtype=float64",
    )
    assert code == 0, err
    assert err == ""  # --quiet: no summary
    data, attrs = read_output(tmp_path / "out.zarr")
    assert data.dtype == np.float64
    assert attrs["config"]["pipeline"][0]["sigma"] == 3.0


def test_an_existing_output_is_refused_unless_overwrite(
    tmp_path: Path, zarr_input: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_config(tmp_path)
    assert invoke(capsys, "run", path)[0] == 0
    output = tmp_path / "out.zarr"
    before = tree_digest(output)

    code, _, err = invoke(capsys, "run", path, "--set", "pipeline[0].sigma=1")
    assert code == 2
    assert_one_line_error(err, "output.path", "already exists", "--overwrite")
    assert tree_digest(output) == before

    code, _, err = invoke(capsys, "run", path, "--set", "pipeline[0].sigma=1", "--overwrite")
    assert code == 0, err
    _, attrs = read_output(output)
    assert attrs["complete"] is True
    assert attrs["config"]["pipeline"][0]["sigma"] == 1.0

    # output.overwrite in the config does the same as --overwrite
    code, _, err = invoke(capsys, "run", path, "--set", "output.overwrite=true")
    assert code == 0, err


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize(
    "output",
    ["in.zarr", "sub/../in.zarr", "in.zarr/nested.zarr", "link.zarr", "."],
    ids=["same", "same-spelled-otherwise", "inside-input", "symlink-to-input", "input-inside"],
)
def test_outputs_overlapping_the_input_are_refused(
    tmp_path: Path,
    zarr_input: Path,
    capsys: pytest.CaptureFixture[str],
    output: str,
    overwrite: bool,
) -> None:
    (tmp_path / "link.zarr").symlink_to(zarr_input, target_is_directory=True)
    path = make_config(tmp_path / "cfg", input_path=str(zarr_input), output=str(tmp_path / output))
    before = tree_digest(zarr_input)
    code, _, err = invoke(capsys, "run", path, *(["--overwrite"] if overwrite else []))
    assert code == 2, err
    assert_one_line_error(err, "output.path", "input")
    assert tree_digest(zarr_input) == before
    assert not (zarr_input / "nested.zarr").exists()
    assert zarr.open_array(str(zarr_input), mode="r").shape == (40, 50)


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_overwrite_refuses_to_delete_what_is_not_a_zarr_store(
    tmp_path: Path, zarr_input: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    target = tmp_path / "precious"
    if kind == "folder":
        target.mkdir()
        (target / "thesis.txt").write_text("years of work")
    else:
        target.write_text("years of work")
    before = tree_digest(target)
    path = make_config(tmp_path, output="precious")
    code, _, err = invoke(capsys, "run", path, "--overwrite")
    assert code == 2
    assert_one_line_error(err, "output.path", "thesis.txt" if kind == "folder" else "is a file")
    assert tree_digest(target) == before


def test_dry_run_prints_the_plan_and_creates_nothing(
    tmp_path: Path, zarr_input: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_config(tmp_path, output="results/out.zarr")
    code, out, err = invoke(capsys, "run", path, "--dry-run")
    assert code == 0, err
    assert "gaussian" in out and "sobel" in out
    assert "(20, 25)" in out
    assert any(line.startswith("blocks") for line in out.splitlines())
    assert not (tmp_path / "results").exists()


def test_a_bogus_scheduler_is_exit_2(tmp_path: Path, zarr_input: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_config(tmp_path)
    code, _, err = invoke(capsys, "run", path, "--scheduler", "bogus")
    assert code == 2
    assert_one_line_error(err, "--scheduler", "'bogus'")


def test_a_bogus_scheduler_writes_and_deletes_nothing(
    tmp_path: Path, zarr_input: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_config(tmp_path)
    assert invoke(capsys, "run", path, "--scheduler", "bogus")[0] == 2
    assert not (tmp_path / "out.zarr").exists()

    assert invoke(capsys, "run", path)[0] == 0
    before = tree_digest(tmp_path / "out.zarr")
    assert invoke(capsys, "run", path, "--scheduler", "bogus", "--overwrite")[0] == 2
    assert tree_digest(tmp_path / "out.zarr") == before
    assert read_output(tmp_path / "out.zarr")[1]["complete"] is True


def test_every_local_scheduler_gives_the_same_array(
    tmp_path: Path, zarr_input: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = {}
    for scheduler in ("threads", "sync", "processes"):
        path = make_config(tmp_path, output=f"{scheduler}.zarr", name=f"{scheduler}.yaml")
        code, _, err = invoke(capsys, "run", path, "--scheduler", scheduler, "--workers", "2")
        assert code == 0, err
        results[scheduler], attrs = read_output(tmp_path / f"{scheduler}.zarr")
        assert attrs["complete"] is True
    np.testing.assert_array_equal(results["sync"], results["threads"])
    np.testing.assert_array_equal(results["processes"], results["threads"])


@pytest.mark.parametrize(
    ("dtype", "values", "expected"),
    [
        (
            "uint8",
            [[-7.3, 0.4, 0.6, 1.4], [2.6, 100.2, 254.4, 254.6], [255.0, 256.0, 300.7, 1e6]],
            [[0, 0, 1, 1], [3, 100, 254, 255], [255, 255, 255, 255]],
        ),
        (
            "int16",
            [[-40000.0, -1.6, -0.4, 2.4], [32766.6, 32768.0, 40000.0, 70000.0]],
            [[-32768, -2, 0, 2], [32767, 32767, 32767, 32767]],
        ),
        (
            "uint16",
            [[-1.0, 65534.7, 65536.0, 1e9]],
            [[0, 65535, 65535, 65535]],
        ),
    ],
)
def test_integer_outputs_round_to_nearest_and_clip_never_wrap(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    dtype: str,
    values: list[list[float]],
    expected: list[list[int]],
) -> None:
    write_zarr(tmp_path / f"values-{dtype}.zarr", np.array(values, dtype=np.float32))
    path = make_config(
        tmp_path,
        [{"filter": "box", "size": 1}],  # the identity
        input_path=f"values-{dtype}.zarr",
        chunks=None,
        dtype=dtype,
    )
    code, _, err = invoke(capsys, "run", path)
    assert code == 0, err
    data, _ = read_output(tmp_path / "out.zarr")
    assert data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(data, np.array(expected, dtype=dtype))


def test_paths_are_relative_to_the_config_not_the_working_directory(
    tmp_path: Path,
    zarr_input: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_config(tmp_path / "configs", input_path="../in.zarr", output="../results/out.zarr")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = invoke(capsys, "run", os.path.join("..", "configs", "config.yaml"))
    assert code == 0, err
    assert (tmp_path / "results" / "out.zarr" / "zarr.json").exists()
    assert list(elsewhere.iterdir()) == []
    assert list((tmp_path / "configs").iterdir()) == [tmp_path / "configs" / "config.yaml"]
