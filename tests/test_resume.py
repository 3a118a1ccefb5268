"""Long nights: an output is complete only when every block is; a killed run resumes to the
same bytes; the lock keeps two runs apart; progress shows on a terminal and in a log."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zarr
from cli_tools import lease_held

from convpipe.cli import main
from convpipe.io import lifecycle, zarr_output
from convpipe.progress import Progress

CHAIN = [{"filter": "gaussian", "sigma": 3.0}, {"filter": "median", "size": 5}, {"filter": "sobel"}]


def make_input(folder: Path, shape: tuple[int, int] = (2304, 2304)) -> Path:
    rng = np.random.default_rng(5)
    path = folder / "in.zarr"
    zarr.create_array(str(path), data=(rng.random(shape) * 60000).astype(np.uint16), chunks=(128, 128))
    return path


def make_config(folder: Path, output: str, **extra: Any) -> Path:
    data = {
        "input": {"path": "in.zarr", "chunks": [96, 96]},
        "output": {"path": output, **extra},
        "pipeline": CHAIN,
    }
    path = folder / f"{Path(output).stem}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def digest(path: Path) -> dict[str, str]:
    """Every file of a store and its SHA-256: byte-identical stores have equal digests (the
    lease record, which names the run that wrote last, aside)."""
    return {
        str(file.relative_to(path)): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(path.rglob("*"))
        if file.is_file() and ".convpipe-lock" not in file.parts
    }


def convpipe(*args: str | Path, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from convpipe.cli import main; main()", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: kill it like a batch system would
        **kwargs,
    )


def finish(process: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def info(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as done:
        main(["info", str(path)])
    assert done.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("scheduler", ["threads", "local-cluster"])
def test_a_killed_run_resumes_to_the_same_bytes(
    tmp_path: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_input(tmp_path)
    config = make_config(tmp_path, "out.zarr")
    out = tmp_path / "out.zarr"
    code, err = finish(convpipe("run", config, "--quiet"))
    assert code == 0, err
    uninterrupted = digest(out)
    shutil.rmtree(out)

    args = ["run", config, "--quiet", "--scheduler", scheduler, "--workers", "2"]
    process = convpipe(*args)
    deadline = time.monotonic() + 120
    while zarr_output.count_written(str(out)) < 40:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    shown = info(out, capsys)
    assert "partial" in shown and "of 576 blocks" in shown
    assert zarr.open_array(str(out), mode="r").attrs["convpipe"]["complete"] is False

    code, err = finish(convpipe(*args[:-4], "--resume", "--scheduler", scheduler))
    assert code == 0, err
    assert "complete (576 blocks)" in info(out, capsys)
    assert digest(out) == uninterrupted


def test_resume_refuses_a_different_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_input(tmp_path, (200, 200))
    config = make_config(tmp_path, "out.zarr")
    out = tmp_path / "out.zarr"
    outputs_dir = out / zarr_output.BLOCKS_PREFIX
    with pytest.raises(SystemExit):
        main(["run", str(config), "--quiet"])
    capsys.readouterr()
    # Make it look interrupted, then resume with another sigma.
    attributes = zarr.open_array(str(out), mode="r+").attrs
    attributes["convpipe"] = {**attributes["convpipe"], "complete": False}
    outputs_dir.mkdir()
    with pytest.raises(SystemExit) as done:
        main(["run", str(config), "--resume", "--set", "pipeline[0].sigma=2"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "pipeline[0].sigma: 3.0 when the output was started, 2.0 now" in err


def test_resuming_a_complete_output_does_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_input(tmp_path, (200, 200))
    config = make_config(tmp_path, "out.zarr")
    with pytest.raises(SystemExit):
        main(["run", str(config), "--quiet"])
    before = digest(tmp_path / "out.zarr")
    with pytest.raises(SystemExit) as done:
        main(["run", str(config), "--resume"])
    assert done.value.code == 0
    assert "already complete" in capsys.readouterr().err
    assert digest(tmp_path / "out.zarr") == before


def test_a_live_lock_refuses_a_second_writer_and_a_dead_one_is_taken_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_input(tmp_path, (200, 200))
    config = make_config(tmp_path, "out.zarr")
    out = tmp_path / "out.zarr"
    with pytest.raises(SystemExit):
        main(["run", str(config), "--quiet"])
    before = digest(out)
    # A live run holds the lease (this process, renewing it in a thread).
    with lifecycle.held(zarr_output.store(str(out)), zarr_output.LOCK_PREFIX, 60):
        with pytest.raises(SystemExit) as done:
            main(["run", str(config), "--overwrite"])
        assert done.value.code == 2
        assert "being written by another convpipe run" in capsys.readouterr().err
    assert digest(out) == before

    # A run that died holding it (a real process, gone) is taken over at once, and says so.
    holder = subprocess.Popen(
        [sys.executable, "-c", TAKE_AND_DIE.format(path=str(out))], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    assert lease_held(out)
    with pytest.raises(SystemExit) as done:
        main(["run", str(config), "--overwrite"])
    assert done.value.code == 0
    assert f"took over {out} from a run that stopped (pid {holder.pid} on " in capsys.readouterr().err
    assert not lease_held(out)
    assert zarr.open_array(str(out), mode="r").attrs["convpipe"]["complete"] is True


TAKE_AND_DIE = """
import time
from convpipe.io import lifecycle, zarr_output
lifecycle.acquire(zarr_output.store({path!r}), zarr_output.LOCK_PREFIX, 600)
print("held", flush=True)
time.sleep(600)
"""


def test_a_complete_output_keeps_no_markers_or_lock(tmp_path: Path) -> None:
    make_input(tmp_path, (200, 200))
    config = make_config(tmp_path, "out.zarr")
    with pytest.raises(SystemExit):
        main(["run", str(config), "--quiet"])
    names = {p.name for p in (tmp_path / "out.zarr").iterdir()}
    assert zarr_output.BLOCKS_PREFIX not in names and not lease_held(tmp_path / "out.zarr")


def test_progress_on_a_terminal_redraws_one_line() -> None:
    stream = io.StringIO()
    done = [0]

    def count() -> int:
        done[0] = min(done[0] + 3, 10)
        return done[0]

    with Progress(count, 10, 4e6, terminal=True, interval=0.01, stream=stream):
        time.sleep(0.05)
    text = stream.getvalue()
    assert text.startswith("\r[") and text.endswith("\n")
    assert text.count("\n") == 1  # redrawn in place, one final newline
    assert "10/10 blocks (100%)" in text and "MB/s" in text and "ETA" in text


def test_progress_in_a_log_prints_periodic_lines() -> None:
    stream = io.StringIO()
    done = [0]

    def count() -> int:
        done[0] = min(done[0] + 1, 5)
        return done[0]

    with Progress(count, 5, 1e6, terminal=False, interval=0.02, stream=stream):
        time.sleep(0.15)
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 3
    assert all(line.startswith("convpipe: ") and "blocks" in line for line in lines)
    assert "\r" not in stream.getvalue()
    assert lines[-1].startswith("convpipe: 5/5 blocks (100%)")


def test_a_batch_run_logs_progress_lines(tmp_path: Path) -> None:
    make_input(tmp_path, (300, 300))
    config = make_config(tmp_path, "out.zarr")
    code, err = finish(convpipe("run", config))
    assert code == 0, err
    assert "convpipe: 16/16 blocks (100%)" in err  # stderr is a pipe: log mode
    assert "wrote " in err


def test_a_terminal_run_shows_a_bar(tmp_path: Path) -> None:
    pty = pytest.importorskip("pty")
    make_input(tmp_path, (300, 300))
    config = make_config(tmp_path, "out.zarr")
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", "from convpipe.cli import main; main()", "run", str(config)],
        stdout=follower,
        stderr=follower,
        stdin=subprocess.DEVNULL,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait(timeout=60) == 0
    os.close(leader)
    screen = b"".join(chunks).decode()
    assert "\r[########################] 16/16 blocks (100%)" in screen
