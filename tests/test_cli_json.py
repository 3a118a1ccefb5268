"""``--json``: one JSON document on stdout for ``plan``, ``info``, ``validate`` and ``filters``,
and a last JSON line from ``run``, so Snakemake, Nextflow and shell loops can read them
(README, "Commands and exit status"). Errors stay one line on stderr, with the usual status.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from cli_tools import assert_one_line_error, invoke
from test_cli import make_config, write_zarr

from convpipe import report
from convpipe.filters import FILTERS

PIPELINE = [
    {"filter": "gaussian", "sigma": 2.0},
    {"filter": "box", "size": 3, "pad": "valid"},
    {"filter": "sobel", "stride": 2},
]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A 40x50 uint16 input and a three-step chain: output (19, 24) in 9 blocks of (8, 8)."""
    image = np.random.default_rng(0).integers(0, 60_000, size=(40, 50), dtype=np.uint16)
    write_zarr(tmp_path / "in.zarr", image, chunks=(20, 25))
    return make_config(tmp_path, PIPELINE)


def test_plan_json_parses(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = invoke(capsys, "plan", config, "--json", "--workers", "2")
    assert code == 0, err
    assert err == ""
    # what `convpipe plan CONFIG --json | python -m json.tool` sees
    subprocess.run([sys.executable, "-m", "json.tool"], input=out, text=True, check=True, capture_output=True)
    plan = json.loads(out)
    assert plan["config"] == str(config)
    assert plan["output_path"] == str(config.parent / "out.zarr")
    assert plan["input"] == {
        **plan["input"],
        "shape": [40, 50],
        "dtype": "uint16",
        "axes": "yx",
        "chunks": [20, 25],
        "nbytes": 4000,
    }
    assert plan["output"]["shape"] == [19, 24] and plan["output"]["dtype"] == "float32"
    assert plan["output"]["nbytes"] == 19 * 24 * 4
    gaussian, box, sobel = plan["steps"]
    assert gaussian["kernel_size"] == [17, 17] and gaussian["pad_before"] == [8, 8]
    assert gaussian["parameters"]["sigma"] == 2.0
    assert box["padding"] is None and box["halo_before"] == [8, 8] and box["halo_after"] == [10, 10]
    assert sobel["stride"] == [2, 2] and sobel["output_shape"] == [19, 24]
    assert plan["blocks"] == {"count": 9, "shape": [8, 8], "grid": [3, 3], "input_shape": [16, 16]}
    assert plan["tasks"] == 9
    memory = plan["memory"]
    assert memory["workers"] == 2 and isinstance(memory["peak_bytes"], int) and memory["peak_bytes"] > 0
    assert not (config.parent / "out.zarr").exists()


def test_dry_run_json_prints_the_plan(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = invoke(capsys, "run", config, "--dry-run", "--json")
    assert code == 0, err
    assert json.loads(out)["blocks"]["count"] == 9
    assert not (config.parent / "out.zarr").exists()


def test_validate_json_parses(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = invoke(capsys, "validate", config, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["ok"] is True
    assert result["input"]["shape"] == [40, 50] and result["output"]["shape"] == [19, 24]
    assert result["output"]["path"] == str(config.parent / "out.zarr")
    assert result["steps"] == 3 and result["blocks"] == 9


def test_filters_json_lists_every_filter_and_its_keys(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = invoke(capsys, "filters", "--json")
    assert code == 0, err
    listed = json.loads(out)
    by_name = {entry["name"]: entry for entry in listed["filters"]}
    assert set(FILTERS) <= set(by_name) | {a for e in listed["filters"] for a in e["aliases"]}
    sigma = next(key for key in by_name["gaussian"]["keys"] if key["key"] == "sigma")
    assert sigma["required"] is True
    size = next(key for key in by_name["box"]["keys"] if key["key"] == "size")
    assert size == {**size, "required": False, "default": 3}
    assert {key["key"] for key in listed["common_keys"]} >= {"pad", "padding", "stride"}


def test_run_json_prints_a_final_summary_line(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = invoke(capsys, "run", config, "--json")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1, out
    summary = json.loads(lines[0])
    assert summary == {
        **summary,
        "output": str(config.parent / "out.zarr"),
        "format": "zarr",
        "shape": [19, 24],
        "dtype": "float32",
        "complete": True,
        "blocks_total": 9,
        "blocks_written": 9,
        "resumed_from": 0,
        "took_over": None,
        "finished_again": False,
    }
    assert summary["seconds"] >= 0
    assert err.strip().splitlines()[-1].startswith("wrote ")  # the text summary stays on stderr

    code, out, _ = invoke(capsys, "run", config, "--json", "--resume", "--quiet")
    assert code == 0
    again = json.loads(out)
    assert again["blocks_written"] == 0 and again["resumed_from"] == 9 and again["complete"] is True


def test_info_json_parses(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert invoke(capsys, "run", config, "--quiet")[0] == 0
    code, out, err = invoke(capsys, "info", tmp_path / "out.zarr", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["shape"] == [19, 24] and info["chunks"] == [8, 8] and info["dtype"] == "float32"
    assert info["status"] == {"complete": True, "blocks": 9, "written": 9, "note": None, "finish_pending": False}
    assert info["input"] == {"path": str(tmp_path / "in.zarr"), "shape": [40, 50], "dtype": "uint16"}
    assert [s["filter"] for s in info["steps"]] == ["gaussian", "box", "sobel"]
    assert info["steps"][0]["parameters"]["sigma"] == 2.0 and info["steps"][2]["output_shape"] == [19, 24]

    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((40, 50), np.uint16), tile=(16, 16))
    code, out, err = invoke(capsys, "info", tmp_path / "plain.tif", "--json")
    assert code == 0, err
    assert json.loads(out)["series"][0]["shape"] == [40, 50]


@pytest.mark.parametrize("command", ["plan", "validate", "run"])
def test_json_errors_stay_one_line_on_stderr_with_the_exit_code(
    config: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    code, out, err = invoke(capsys, command, config, "--json", "--set", "pipeline[0].sigma=-1")
    assert (code, out) == (2, "")
    assert_one_line_error(err, "pipeline[0].sigma")
    code, out, err = invoke(capsys, command, config, "--json", "--set", "input.path=missing.zarr")
    assert (code, out) == (1, "")
    assert_one_line_error(err, "missing.zarr")


def test_json_has_no_nan_and_only_plain_types() -> None:
    text = report.to_json(
        {"nodata": float("nan"), "max": float("inf"), "shape": (3, np.int64(4)), "dtype": np.dtype("f4")}
    )
    assert json.loads(text) == {"nodata": "nan", "max": "inf", "shape": [3, 4], "dtype": "float32"}
