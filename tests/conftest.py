"""Fixtures shared by the test files (tests/ is on sys.path, as for ``from cli_tools import ...``)."""

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from png_tools import drawn
from s3server import s3_env, s3_server

__all__ = ["drawn", "s3_env", "s3_server", "small_disk"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 160 KiB tmpfs, to fill (root only; skipped where mount is not permitted): room for
    an output's metadata and a few small blocks, not for all of them."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
