"""Write the output as Zarr v3, block by block, and say how complete it is (SPEC §5).

The output is created with ``complete: false`` in its ``convpipe`` attributes. Each block is
one storage chunk (concurrent writers never share a chunk); after a block's chunk is written a
marker file records it in ``.convpipe-blocks/``, so an interrupted run knows which blocks to
redo, and a chunk cut short by a crash is never mistaken for a finished one. When every block
is written the output is marked complete and the markers are removed. A lock file keeps two
runs from writing the same output at once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convpipe.errors import ConfigError, RunError

#: ``output.codec`` names. blosc-lz4 with byte shuffle is the default: on the edges output it
#: encodes faster than zstd and compresses better (README, "Performance"). zstd is for
#: archives.
CODECS = ("lz4", "zstd", "none")

BLOCKS_DIR = ".convpipe-blocks"
LOCK_FILE = ".convpipe-lock"


def compressors(codec: str) -> tuple[Any, ...]:
    from zarr.codecs import BloscCodec, ZstdCodec

    if codec == "lz4":
        return (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)
    if codec == "zstd":
        return (ZstdCodec(level=3),)
    return ()


@dataclass(frozen=True)
class OutputSpec:
    """Where blocks go; reopened once per process by every writer."""

    path: str
    run_id: str  # keys the per-process handle cache, so no run writes through a stale one


def is_zarr(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in ("zarr.json", ".zarray", ".zgroup"))


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_paths(input_path: str | None, output_path: str, replace: bool) -> None:
    """Refuse outputs that would touch the input or clobber something unasked (SPEC §5).

    ``replace``: the run may write into an existing output (``--overwrite`` or ``--resume``).
    """
    out = Path(output_path).resolve()
    if input_path is not None:
        source = Path(input_path).resolve()
        if _inside(out, source):
            raise ConfigError(f"output.path: {out} is the input or inside it; the input is never written to")
        if _inside(source, out):
            raise ConfigError(f"output.path: the input {source} lies inside {out}; choose another output")
    if out.exists():
        if not replace:
            raise ConfigError(f"output.path: {out} already exists (use --overwrite to replace it or --resume)")
        if not is_zarr(out):
            raise ConfigError(f"output.path: {out} exists and is not a Zarr store; refusing to replace it")


# --- the lock --------------------------------------------------------------------------------


def _holder(lock: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(lock.read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the run holding a lock may still be running (unknowable on another host)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def check_unlocked(path: str) -> None:
    """Refuse to touch an output that a live run is writing."""
    lock = Path(path) / LOCK_FILE
    if lock.exists():
        holder = _holder(lock)
        if _alive(holder):
            raise ConfigError(
                f"output.path: {path} is being written by another convpipe run "
                f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')}); "
                f"if that run is gone, remove {lock}"
            )


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """Hold the output's lock for the duration; a lock left by a killed run is taken over."""
    lock = Path(path) / LOCK_FILE
    check_unlocked(path)
    lock.unlink(missing_ok=True)  # stale: its run is dead
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        with open(lock, "x") as handle:
            json.dump(me, handle)
    except FileExistsError:
        raise ConfigError(f"output.path: {path} is being written by another convpipe run") from None
    try:
        yield
    finally:
        if _holder(lock).get("pid") == me["pid"]:
            lock.unlink(missing_ok=True)


# --- writing ---------------------------------------------------------------------------------


def create(
    path: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: np.dtype,
    axes: str,
    attributes: dict[str, Any],
    codec: str = "lz4",
) -> None:
    """Create the empty output array, marked incomplete, with its provenance.

    An existing output at ``path`` is replaced; the caller holds its lock.
    """
    import zarr

    target = Path(path)
    for entry in target.iterdir() if target.exists() else ():
        if entry.name != LOCK_FILE:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    try:
        zarr.create_array(
            store=str(target),
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            compressors=compressors(codec),
            dimension_names=list(axes),
            attributes={"convpipe": {**attributes, "complete": False}},
            fill_value=0,
            zarr_format=3,
            overwrite=True,
        )
        (target / BLOCKS_DIR).mkdir()
    except OSError as error:
        raise RunError(f"output {path}: cannot create it ({error.strerror or error})") from None


def prepare(path: str) -> OutputSpec:
    """The handle every writer uses for this run."""
    return OutputSpec(path, uuid.uuid4().hex)


@functools.lru_cache(maxsize=8)
def _open(spec: OutputSpec) -> Any:
    import zarr

    # Every block is written: skip zarr's scan for chunks that hold only the fill value.
    return zarr.open_array(spec.path, mode="r+").with_config({"write_empty_chunks": True})


def _marker(index: Sequence[int]) -> str:
    return ".".join(str(i) for i in index)


def write_block(spec: OutputSpec, index: Sequence[int], bounds: Sequence[tuple[int, int]], data: np.ndarray) -> None:
    """Write one block into its own chunk, then record that it is there."""
    _open(spec)[tuple(slice(start, stop) for start, stop in bounds)] = data
    (Path(spec.path) / BLOCKS_DIR / _marker(index)).touch()


def written_blocks(path: str) -> set[tuple[int, ...]]:
    """The blocks an unfinished output already holds."""
    try:
        names = os.listdir(Path(path) / BLOCKS_DIR)
    except FileNotFoundError:
        return set()
    return {tuple(int(i) for i in name.split(".")) for name in names if name.replace(".", "").isdigit()}


def remove_partial_writes(path: str) -> int:
    """Delete what killed writers left: zarr writes a chunk to ``<key>.<uuid>.partial`` and
    renames it, so a kill can leave such a file (never a half-written chunk)."""
    removed = 0
    for leftover in Path(path).rglob("*.partial"):
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed


def count_written(path: str) -> int:
    try:
        return sum(1 for _ in os.scandir(Path(path) / BLOCKS_DIR))
    except FileNotFoundError:
        return 0


def mark_complete(path: str) -> None:
    """Every block is written: say so, and drop the per-block markers."""
    import zarr

    array = zarr.open_array(path, mode="r+")
    attributes = dict(array.attrs["convpipe"])
    attributes["complete"] = True
    array.attrs["convpipe"] = attributes
    shutil.rmtree(Path(path) / BLOCKS_DIR, ignore_errors=True)


def read_status(path: str) -> dict[str, Any] | None:
    """The ``convpipe`` attributes of an output, or None if it is not one of ours."""
    import zarr

    try:
        array = zarr.open_array(path, mode="r")
    except Exception:
        return None
    status = array.attrs.get("convpipe")
    return dict(status) if isinstance(status, dict) else None
