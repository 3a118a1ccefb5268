"""What the command says: ``--debug`` anywhere, the same checks in ``validate`` and
``run --dry-run`` as in ``run``, no warnings on stderr, capped error lines, and the small
words (README, "Commands and exit status", "Using it").
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from cli_tools import assert_one_line_error, invoke
from test_cli import make_config, write_zarr

from convpipe import cli, report, schedulers
from convpipe.config import load
from convpipe.errors import ConfigError
from convpipe.run import RunResult, make_plan

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["run", "validate", "plan", "info", "filters", "preview"]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A 40x50 uint16 input, a gaussian then a stride-2 sobel: output (20, 25)."""
    image = np.random.default_rng(0).integers(0, 60_000, size=(40, 50), dtype=np.uint16)
    write_zarr(tmp_path / "in.zarr", image, chunks=(20, 25))
    return make_config(tmp_path)


# --- --debug ---------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_is_accepted_before_or_after_the_subcommand(
    config: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    args = ["--debug", "validate", config] if where == "before" else ["validate", config, "--debug"]
    code, out, err = invoke(capsys, *args)
    assert code == 0, err
    assert out.startswith("ok")


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_after_the_subcommand_keeps_exit_2(config: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    bad = ["--set", "pipeline[0].sigma=-1"]
    args = ["--debug", "validate", config, *bad] if where == "before" else ["validate", config, *bad, "--debug"]
    code, _, err = invoke(capsys, *args)
    assert code == 2, err
    assert "Traceback" in err  # --debug shows it
    assert err.strip().splitlines()[-1].startswith("convpipe: error: pipeline[0].sigma")


# --- validate and --dry-run check what run checks ------------------------------------------------


@pytest.mark.parametrize("command", [["validate"], ["run", "--dry-run"], ["run"]])
def test_validate_refuses_an_output_inside_the_input_as_run_does(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    inside = str(tmp_path / "in.zarr" / "out.zarr")
    code, out, err = invoke(capsys, *command, config, "--set", f"output.path={inside}")
    assert code == 2, err
    assert out == ""
    assert_one_line_error(err, "output.path", "is the input or inside it")
    assert not Path(inside).exists()


@pytest.mark.parametrize("command", [["validate"], ["run", "--dry-run"], ["run"]])
def test_dry_run_rejects_a_misspelt_scheduler(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    code, out, err = invoke(capsys, *command, config, "--scheduler", "thread")
    assert code == 2, err
    assert out == ""
    assert_one_line_error(err, "--scheduler", "'thread'")
    assert not (tmp_path / "out.zarr").exists()


def test_an_existing_output_is_refused_by_dry_run_as_by_run_and_noted_by_validate(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert invoke(capsys, "run", config, "--quiet")[0] == 0
    code, out, _ = invoke(capsys, "validate", config)
    assert code == 0 and "needs --overwrite to replace it or --resume" in out
    for flags in ([], ["--overwrite"], ["--resume"]):
        assert invoke(capsys, "validate", config, "--json", *flags)[1].count('"output_exists": true') == 1
    for command in (["validate"], ["run", "--dry-run"]):
        if command == ["run", "--dry-run"]:
            code, _, err = invoke(capsys, *command, config)
            assert code == 2
            assert_one_line_error(err, "already exists", "--overwrite")
        assert invoke(capsys, *command, config, "--overwrite")[0] == 0
        assert invoke(capsys, *command, config, "--resume")[0] == 0
        code, _, err = invoke(capsys, *command, config, "--resume", "--set", "pipeline[0].sigma=3")
        assert code == 2
        assert_one_line_error(err, "--resume", "pipeline[0].sigma")


# --- what reaches stderr ----------------------------------------------------------------------

NOISY = """
import logging, warnings
from zarr.errors import ZarrUserWarning
from convpipe import cli, report

def noisy():
    warnings.warn("overflow encountered in cast", RuntimeWarning)
    warnings.warn("Consolidated metadata is currently not part of the Zarr format 3 specification", ZarrUserWarning)
    logging.getLogger("asyncio").error("Task was destroyed but it is pending!")
    return "the filters"

report.describe_filters = noisy
cli.main()
"""


def _noisy(*args: str) -> subprocess.CompletedProcess[str]:
    """``convpipe ARGS`` as its own process, with a command that warns and logs as zarr does."""
    return subprocess.run([sys.executable, "-c", NOISY, *args], capture_output=True, text=True, timeout=60)


def test_no_warnings_reach_stderr() -> None:
    done = _noisy("filters")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "the filters\n"
    assert done.stderr == ""


def test_a_corrupt_tiff_tile_is_one_line_on_stderr(tmp_path: Path) -> None:
    """The run fails on the tile it cannot decode: one line, exit 1, and none of the
    "Task was destroyed but it is pending!" lines the cancelled reads used to leave."""
    import tifffile

    image = np.random.default_rng(1).integers(0, 60_000, size=(512, 512), dtype=np.uint16)
    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, image, tile=(128, 128), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages.first.dataoffsets[5], tif.pages.first.databytecounts[5]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = b"\xff" * count  # not a zlib stream any more
    path.write_bytes(bytes(data))
    config = tmp_path / "c.yaml"
    config.write_text(
        "input: {path: scan.tif, chunks: [128, 128]}\noutput: {path: out.zarr}\npipeline: [{filter: box}]\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", "from convpipe.cli import main; main()", "run", str(config), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "scan.tif" in lines[0], done.stderr


def test_debug_keeps_the_warnings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def noisy() -> str:
        warnings.warn("overflow encountered in cast", RuntimeWarning, stacklevel=1)
        logging.getLogger("asyncio").error("Task was destroyed but it is pending!")
        return "the filters"

    monkeypatch.setattr(report, "describe_filters", noisy)
    with pytest.warns(RuntimeWarning, match="overflow"):
        assert invoke(capsys, "filters", "--debug")[0] == 0
    assert "Task was destroyed but it is pending!" in caplog.text


def test_long_error_lines_are_capped(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> str:
        raise ConfigError("pipeline[0].kernel: must be a list of numbers (got [" + "1, " * 100_000 + "])")

    monkeypatch.setattr(report, "describe_filters", fail)
    code, out, err = invoke(capsys, "filters")
    assert (code, out) == (2, "")
    assert_one_line_error(err, "pipeline[0].kernel: must be a list of numbers", "cut at 500")
    assert len(err) < 700


@pytest.mark.parametrize(
    ("stop", "status", "word"), [(KeyboardInterrupt, 130, "interrupted"), (cli.Terminated, 143, "terminated")]
)
def test_interrupted_names_resume(
    config: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    stop: type[BaseException],
    status: int,
    word: str,
) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise stop()

    monkeypatch.setattr(cli, "run", interrupted)
    code, _, err = invoke(capsys, "run", config, "--overwrite", "--set", "pipeline[0].sigma=3")
    assert code == status
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"convpipe: {word}"), err
    # the command to type, as typed but for --overwrite
    assert shlex.join(["convpipe", "run", str(config), "--set", "pipeline[0].sigma=3", "--resume"]) in line


def test_an_interrupted_geotiff_is_written_again_not_resumed(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GeoTIFF or COG is published only whole: the hint repeats the command, --overwrite kept."""

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt()

    monkeypatch.setattr(cli, "run", interrupted)
    args = ["run", str(config), "--overwrite", "--set", "output.path=out.tif"]
    code, _, err = invoke(capsys, *args)
    assert code == 130
    line = err.strip().splitlines()[-1]
    assert "--resume" not in line and shlex.join(["convpipe", *args]) in line, line


# --- the small words --------------------------------------------------------------------------


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_command_help_does_not_start_with_a_prompt(capsys: pytest.CaptureFixture[str], command: str | None) -> None:
    code, out, err = invoke(capsys, *([command] if command else []), "--help")
    assert code == 0, err
    assert "$ convpipe" not in out
    if command:
        description = out.split("\n\n")[1].strip()
        assert description[:1].isupper(), description


def test_one_block_is_singular(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    whole = ["--set", "input.chunks=[40,50]"]
    code, out, _ = invoke(capsys, "plan", config, *whole)
    assert code == 0 and "1 output block of (20, 25)" in out
    code, out, _ = invoke(capsys, "validate", config, *whole)
    assert code == 0 and out.rstrip().endswith("2 steps, 1 block")
    code, _, err = invoke(capsys, "run", config, *whole)
    assert code == 0 and ": (20, 25) float32, 1 block in " in err
    code, out, _ = invoke(capsys, "info", config.parent / "out.zarr")
    assert code == 0 and "status: complete (1 block)" in out


def test_task_graph_time_is_shown_only_when_significant(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = invoke(capsys, "run", config)
    assert code == 0 and "wrote " in err and "task graph" not in err
    plan = make_plan(load(config))
    assert "task graph" not in report.describe_run(RunResult(plan, "o.zarr", 12, 100.0, graph_seconds=0.9), False)
    assert "(task graph 1.5 s)" in report.describe_run(RunResult(plan, "o.zarr", 12, 100.0, graph_seconds=1.5), False)
    assert "(task graph 0.6 s)" in report.describe_run(RunResult(plan, "o.zarr", 12, 10.0, graph_seconds=0.6), False)


def test_plan_shows_no_padding_on_valid_steps(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = (
        '[{"filter": "box", "size": 3, "pad": "valid"}, {"filter": "box", "size": 3, "padding": "constant", "cval": 7}]'
    )
    code, out, err = invoke(capsys, "plan", config, "--set", f"pipeline={pipeline}")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if line[:4].strip().isdigit()]
    assert rows[0][:5] == ["0", "box", "3", "0/0", "-"]
    assert rows[1][:5] == ["1", "box", "3", "1/1", "constant(7)"]


def test_info_shows_tiff_and_zarr_shapes_alike(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((40, 50), np.uint16), tile=(16, 16))
    code, tiff, _ = invoke(capsys, "info", tmp_path / "plain.tif")
    assert code == 0 and "shape (40, 50)" in tiff and "[" not in tiff
    code, zarr_text, _ = invoke(capsys, "info", tmp_path / "in.zarr")
    assert code == 0 and "shape: (40, 50)" in zarr_text and "[" not in zarr_text


def test_info_provenance_shows_step_parameters(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert invoke(capsys, "run", config, "--quiet")[0] == 0
    code, out, err = invoke(capsys, "info", config.parent / "out.zarr")
    assert code == 0, err
    steps = out.split("steps:\n")[1].splitlines()
    # own keys, then the common keys that differ from their defaults
    assert steps[0].strip() == "gaussian sigma=2 truncate=4 -> (40, 50)"
    assert steps[1].strip() == "sobel output=magnitude stride=2 -> (20, 25)"


class _Client:
    """What ``schedulers`` asks of a dask.distributed client."""

    def __init__(self, dashboard: str | None) -> None:
        self.dashboard = dashboard

    @property
    def dashboard_link(self) -> str:
        if self.dashboard is None:
            raise KeyError("dashboard")  # a scheduler started with --no-dashboard
        return self.dashboard

    def nthreads(self) -> dict[str, int]:
        return {"tcp://a": 2, "tcp://b": 2}

    def scheduler_info(self) -> dict[str, Any]:
        return {"workers": {"tcp://a": {"nthreads": 2, "memory_limit": 2**32}}}


def test_the_dashboard_address_is_printed_for_distributed_schedulers(capsys: pytest.CaptureFixture[str]) -> None:
    with cli._announcing(True):
        scheduling = schedulers._distributed(_Client("http://127.0.0.1:8787/status"))
    assert scheduling.dashboard == "http://127.0.0.1:8787/status" and scheduling.slots == 4
    assert capsys.readouterr().err == "convpipe: dashboard: http://127.0.0.1:8787/status\n"
    with cli._announcing(True):
        assert schedulers._distributed(_Client(None)).dashboard is None
    with cli._announcing(False):  # --quiet
        schedulers._distributed(_Client("http://127.0.0.1:8787/status"))
    assert capsys.readouterr().err == ""


def test_demo_ends_by_saying_what_to_try_next() -> None:
    demo = (ROOT / "scripts" / "demo").read_text()
    after = demo.split("convpipe run configs/edges.yaml", 1)[1]
    for command in ("validate", "plan", "preview", "info"):
        assert f"convpipe {command} " in after, command
    assert "activate" in after
