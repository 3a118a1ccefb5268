"""Fixtures shared by the test files (tests/ is on sys.path, as for ``from cli_tools import ...``)."""

import collections
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from png_tools import drawn
from s3server import s3_env, s3_server

__all__ = ["decoded", "drawn", "s3_env", "s3_server", "small_disk"]


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


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[tuple[int, ...]]:
    """How many times each chunk of a local Zarr input is decoded from its file, from now on."""
    from convpipe.io import inputs

    counts: collections.Counter[tuple[int, ...]] = collections.Counter()
    real = inputs.chunk_decoder

    def counting(array: Any) -> Any:
        files = real(array)
        assert files is not None  # a plain local Zarr: decoded from its files

        def decode(index: tuple[int, ...]) -> Any:
            counts[index] += 1
            return files.decode(index)

        return files._replace(decode=decode)

    monkeypatch.setattr(inputs, "chunk_decoder", counting)
    return counts
