"""Fixtures shared by the test files (tests/ is on sys.path, as for ``from cli_tools import ...``)."""

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from png_tools import drawn
from s3server import s3_env, s3_server

__all__ = ["drawn", "s3_env", "s3_server", "small_disk"]


@contextlib.contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted on ``folder`` for the duration (root only; skips the test where mount is
    not permitted)."""
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 160 KiB tmpfs, to fill: room for an output's metadata and a few small blocks,
    not for all of them."""
    mount = tmp_path / "disk"
    mount.mkdir()
    with tmpfs(mount, "size=160k"):
        yield mount
