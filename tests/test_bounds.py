"""Numeric keys have limits, YAML exponent numbers are numbers, echoed values are short.

README, "Config keys" (limits; `1e-3` is a number) and "Commands and exit status": a value
that would exhaust memory or overflow is one line at validation naming the key and the limit,
exit 2, from `validate`, `plan` and `run` alike, and nothing is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from cli_tools import assert_one_line_error, invoke

from convpipe.config import load

COMMANDS = (["validate"], ["plan"], ["run", "--quiet"])


def folder_with_input(folder: Path) -> Path:
    zarr.create_array(str(folder / "in.zarr"), data=np.arange(40 * 50, dtype=np.uint16).reshape(40, 50))
    return folder


def write_raw(folder: Path, step: str, name: str = "config.yaml") -> Path:
    """A config written as text, so YAML reads the step exactly as a user typed it."""
    path = folder / name
    path.write_text(f"input: {{path: in.zarr}}\noutput: {{path: out.zarr}}\npipeline:\n  - {step}\n")
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return folder_with_input(tmp_path_factory.mktemp("bounds"))


# --- 1. bounds -----------------------------------------------------------------------------------

BOUNDS = [
    # (the step as typed, the key the message names, the limit it states)
    ("{filter: box, size: 99999999999}", "pipeline[0].size", "at most 16384"),
    ("{filter: box, size: 1.0e+20}", "pipeline[0].size", "at most 16384"),
    ("{filter: median, size: 99999999999}", "pipeline[0].size", "at most 16384"),
    ("{filter: gaussian, sigma: 1.0e+308}", "pipeline[0].sigma", "from 0.001 to 2000"),
    ("{filter: gaussian, sigma: 1.0e-170}", "pipeline[0].sigma", "from 0.001 to 2000"),
    ("{filter: log, sigma: [1, 1.0e-100]}", "pipeline[0].sigma", "from 0.001 to 2000"),
    ("{filter: gaussian, sigma: 1, truncate: 1.0e+300}", "pipeline[0].truncate", "at most 100"),
    ("{filter: box, pad: 99999999999}", "pipeline[0].pad", "at most 16384"),
    ("{filter: box, stride: 1.0e+20}", "pipeline[0].stride", "at most 16384"),
    ("{filter: laplacian, neighbours: 99999999999}", "pipeline[0].neighbours", "at most 26"),
    # each key within its range, together a kernel longer than the limit
    ("{filter: gaussian, sigma: 1500, truncate: 8}", "sigma", "at most 16384"),
    ("{filter: dog, sigma: 1, sigma2: 1500, truncate: 8}", "sigma2", "at most 16384"),
    # known only with the image's dimensions: a rank window of 16384 x 16384 samples
    ("{filter: median, size: 16384}", "pipeline[0].size", "at most 16777216"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize(("step", "key", "limit"), BOUNDS, ids=[b[0] for b in BOUNDS])
def test_bounds(
    folder: Path, capsys: pytest.CaptureFixture[str], command: list[str], step: str, key: str, limit: str
) -> None:
    # Before: MemoryError, OverflowError or ZeroDivisionError as "internal error" (exit 1); a
    # median of 99999999999 passed validate; a huge pad ran for ever.
    config = write_raw(folder, step)
    code, out, err = invoke(capsys, *command, config)
    assert code == 2, err
    assert out == ""
    assert_one_line_error(err, key, limit)
    assert not (folder / "out.zarr").exists()


def test_bounds_a_kernel_file_too_large_is_refused_before_it_is_loaded(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(folder / "wide.npy", np.zeros((3, 20000)))
    config = write_raw(folder, "{filter: convolve, kernel_file: wide.npy}")
    code, _, err = invoke(capsys, "validate", config)
    assert code == 2
    assert_one_line_error(err, "pipeline[0].kernel_file", "(3, 20000)", "at most 16384 taps")


def test_bounds_values_at_the_limits_are_accepted(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for step in (
        "{filter: gaussian, sigma: 0.001}",
        "{filter: gaussian, sigma: [0.5, 2000], stride: 16384}",
        "{filter: box, size: [1, 16384], pad: [0, 16384]}",
        "{filter: gaussian, sigma: 1, truncate: 100}",
    ):
        code, _, err = invoke(capsys, "validate", write_raw(folder, step))
        assert code == 0, (step, err)


# --- 2. YAML 1.1 exponents -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "key", "value"),
    [
        ("{filter: gaussian, sigma: 1e-3}", "sigma", 0.001),
        ("{filter: gaussian, sigma: 2.5E1}", "sigma", 25.0),
        ("{filter: box, size: 1E2}", "size", 100),
        ("{filter: threshold, value: -2.5e-1}", "value", -0.25),
        ("{filter: gaussian, sigma: [1e0, .5e1]}", "sigma", (1.0, 5.0)),
    ],
)
def test_bounds_yaml_exponent_numbers_are_numbers(folder: Path, step: str, key: str, value: object) -> None:
    # Before: YAML 1.1 read 1e-3 as the string '1e-3': "must be a number (got '1e-3')".
    config = load(write_raw(folder, step, "exponent.yaml"))
    assert getattr(config.pipeline[0], key) == value


def test_bounds_yaml_exponent_numbers_work_in_set_too(folder: Path) -> None:
    config = load(write_raw(folder, "{filter: gaussian, sigma: 1}", "set.yaml"), ["pipeline[0].sigma=1e-2"])
    assert config.pipeline[0].sigma == 0.01


@pytest.mark.parametrize(
    ("step", "fragments"),
    [
        ('{filter: gaussian, sigma: "1e-3"}', ("pipeline[0].sigma", "must be a number", "write it without quotes")),
        ("{filter: gaussian, sigma: 1e-3x}", ("pipeline[0].sigma", "must be a number (got '1e-3x')")),
        ("{filter: gaussian, sigma: e5}", ("pipeline[0].sigma", "must be a number (got 'e5')")),
    ],
)
def test_bounds_strings_are_not_numbers(
    folder: Path, capsys: pytest.CaptureFixture[str], step: str, fragments: tuple[str, ...]
) -> None:
    code, _, err = invoke(capsys, "validate", write_raw(folder, step))
    assert code == 2
    assert_one_line_error(err, *fragments)
    if "quotes" not in fragments[-1]:
        assert "quotes" not in err


# --- 5. echoed values are short ------------------------------------------------------------------


def aliases(levels: int) -> str:
    """A YAML flow list of 10**levels items built from aliases: a few hundred bytes of text."""
    text = "&a0 [" + ", ".join(["lol"] * 10) + "]"
    for level in range(1, levels + 1):
        text = f"&a{level} [{text}, " + ", ".join([f"*a{level - 1}"] * 9) + "]"
    return text


@pytest.mark.parametrize(
    ("where", "key"),
    [
        (
            "input: {{path: in.zarr, axes: {bomb}}}\noutput: {{path: out.zarr}}\npipeline: [{{filter: box}}]",
            "input.axes",
        ),
        ("input: {{path: in.zarr}}\noutput: {{path: out.zarr}}\npipeline: [{{filter: box, size: {bomb}}}]", "size"),
        ("input: {{path: in.zarr}}\noutput: {{path: out.zarr}}\npipeline: [{{filter: {bomb}}}]", "filter"),
        (
            "input: {{path: in.zarr}}\noutput: {{path: out.zarr}}\npipeline: [{{filter: convolve, kernel: 3}}, {bomb}]",
            "pipeline[1]",
        ),
        (
            "input: {{path: in.zarr}}\noutput: {{path: out.zarr}}\npipeline: [{{filter: convolve, kernel: [{bomb}]}}]",
            "kernel",
        ),
    ],
    ids=["axes", "size", "filter", "step", "kernel"],
)
def test_bounds_echoed_values_are_cut_short(
    folder: Path, capsys: pytest.CaptureFixture[str], where: str, key: str
) -> None:
    # Before: the error echoed the whole list, 3.2 MB on one line for a billion-laughs config.
    config = folder / "bomb.yaml"
    config.write_text(where.format(bomb=aliases(5)))
    code, _, err = invoke(capsys, "validate", config)
    assert code == 2
    assert_one_line_error(err, key)
    assert len(err) < 400, err
