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
from typing import TYPE_CHECKING, Any

import numpy as np

from convpipe.errors import ConfigError, RunError
from convpipe.io import ngff

if TYPE_CHECKING:
    from convpipe.plan import Plan

BLOCKS_DIR = ".convpipe-blocks"
LOCK_FILE = ".convpipe-lock"


def compressors(codec: str, zarr_format: int = 3) -> tuple[Any, ...]:
    """The codec chain for ``output.codec``: zarr v3 codecs, or numcodecs ones for Zarr v2."""
    if zarr_format == 2:
        from numcodecs import Blosc, GZip, Zstd

        v2 = {"lz4": Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE), "zstd": Zstd(level=3), "deflate": GZip(5)}
        return (v2[codec],) if codec in v2 else ()
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    if codec == "lz4":
        return (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)
    if codec == "zstd":
        return (ZstdCodec(level=3),)
    if codec == "deflate":
        return (GzipCodec(level=5),)
    return ()


@dataclass(frozen=True)
class OutputSpec:
    """Where blocks go; reopened once per process by every writer."""

    path: str
    run_id: str  # keys the per-process handle cache, so no run writes through a stale one
    array: str = ""  # the level-0 array inside the output ("0" in an OME-Zarr group)

    @property
    def array_path(self) -> str:
        return str(Path(self.path) / self.array) if self.array else self.path


def is_zarr(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in ("zarr.json", ".zarray", ".zgroup"))


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_paths(input_path: str | None, output_path: str, replace: bool, format_name: str = "zarr") -> None:
    """Refuse outputs that would touch the input or clobber something unasked (SPEC §5).

    ``replace``: the run may write over an existing output (``--overwrite`` or ``--resume``);
    even then only a Zarr store (a TIFF file, for GeoTIFF outputs) is replaced.
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
        if format_name == "geotiff":
            if not _is_tiff(out):
                raise ConfigError(f"output.path: {out} exists and is not a TIFF file; refusing to replace it")
        elif not is_zarr(out):
            raise ConfigError(f"output.path: {out} exists and is not a Zarr store; refusing to replace it")


def _is_tiff(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    except OSError:
        return False


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


def lock_file(path: str, format_name: str = "zarr") -> Path:
    """Inside a Zarr output; beside a GeoTIFF (a file cannot hold it)."""
    out = Path(path)
    return out.with_name(out.name + LOCK_FILE) if format_name == "geotiff" else out / LOCK_FILE


def check_unlocked(path: str, format_name: str = "zarr") -> None:
    """Refuse to touch an output that a live run is writing."""
    lock = lock_file(path, format_name)
    if lock.exists():
        holder = _holder(lock)
        if _alive(holder):
            raise ConfigError(
                f"output.path: {path} is being written by another convpipe run "
                f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')}); "
                f"if that run is gone, remove {lock}"
            )


@contextlib.contextmanager
def locked(path: str, format_name: str = "zarr") -> Iterator[None]:
    """Hold the output's lock for the duration; a lock left by a killed run is taken over."""
    lock = lock_file(path, format_name)
    check_unlocked(path, format_name)
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


def level_path(format_name: str, level: int = 0) -> str:
    """Where a level's array lives inside the output ("" is the output itself)."""
    return str(level) if format_name == "ome-zarr" else ""


def create(
    path: str, plan: Plan, attributes: dict[str, Any], extra: dict[str, Any] | None = None, name: str = "image"
) -> None:
    """Create the empty output, marked incomplete, with its provenance (and NGFF metadata).

    A Zarr output is one array; an OME-Zarr output is a group holding level ``0`` and the
    pyramid levels. An existing output at ``path`` is replaced; the caller holds its lock,
    which stays (zarr is told not to clear the folder: we empty it ourselves, lock aside).
    """
    import zarr

    storage = plan.storage
    target = Path(path)
    zarr_format = 2 if storage.format == "ome-zarr" and storage.ngff_version == "0.4" else 3
    status = {**(extra or {}), "convpipe": {**attributes, "complete": False}}
    if storage.format == "ome-zarr":
        shapes = plan.level_shapes()
        arrays = [(str(level), _array_options(plan, shape, zarr_format)) for level, shape in enumerate(shapes)]
        # NGFF has no CRS and wants increasing coordinates: a north-up raster's negative y
        # spacing would flip it, so such an image is described in input pixels (its CRS and
        # geotransform are in the ``geo`` attribute).
        physical = all(axis.scale > 0 for axis in plan.output_frame)
        frames = plan.level_frames(physical)
        attributes = {**ngff.group_attributes(plan.axes, frames, name, storage.ngff_version), **status}
    else:
        arrays = [("", {**_array_options(plan, plan.output_shape, 3), "attributes": status})]
    for entry in target.iterdir() if target.exists() else ():
        if entry.name != LOCK_FILE:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    try:
        if storage.format == "ome-zarr":
            group = zarr.create_group(str(target), zarr_format=zarr_format, attributes=attributes, overwrite=False)
            for array_name, options in arrays:
                group.create_array(array_name, **options)
        else:
            zarr.create_array(store=str(target), zarr_format=3, **arrays[0][1])
        (target / BLOCKS_DIR).mkdir()
    except (OSError, ValueError) as error:
        detail = getattr(error, "strerror", None) or error
        raise RunError(f"output {path}: cannot create it ({detail})") from None


def _array_options(plan: Plan, shape: tuple[int, ...], zarr_format: int) -> dict[str, Any]:
    """How one array of the output is laid out: chunks (and shards) cut to its shape."""
    chunks = tuple(min(c, n) for c, n in zip(plan.storage_chunks, shape, strict=True))
    options: dict[str, Any] = {
        "shape": shape,
        "chunks": chunks,
        "dtype": plan.output_dtype,
        "compressors": compressors(plan.storage.codec, zarr_format),
        "fill_value": 0,
        "overwrite": False,
    }
    if zarr_format == 3:
        options["dimension_names"] = list(plan.axes)
        if plan.shard_shape is not None:
            # A level smaller than a chunk along an axis is one chunk there, and one shard.
            options["shards"] = tuple(
                shard if chunk == full else chunk
                for shard, chunk, full in zip(plan.shard_shape, chunks, plan.storage_chunks, strict=True)
            )
    else:
        options["chunk_key_encoding"] = {"name": "v2", "separator": "/"}  # NGFF 0.4 wants "/"
    return options


def prepare(path: str, format_name: str = "zarr") -> OutputSpec:
    """The handle every writer uses for this run."""
    return OutputSpec(path, uuid.uuid4().hex, level_path(format_name))


@functools.lru_cache(maxsize=8)
def _open(spec: OutputSpec) -> Any:
    import zarr

    # Every block is written: skip zarr's scan for chunks that hold only the fill value.
    return zarr.open_array(spec.array_path, mode="r+").with_config({"write_empty_chunks": True})


@functools.lru_cache(maxsize=32)
def _open_level(spec: OutputSpec, level: int) -> Any:
    import zarr

    path = Path(spec.path) / str(level)
    return zarr.open_array(str(path), mode="r+").with_config({"write_empty_chunks": True})


def read_level(spec: OutputSpec, level: int, bounds: Sequence[tuple[int, int]]) -> np.ndarray:
    """Samples of one level of an OME-Zarr output (the pyramid reads the level below)."""
    return np.asarray(_open_level(spec, level)[tuple(slice(start, stop) for start, stop in bounds)])


def write_level(spec: OutputSpec, level: int, bounds: Sequence[tuple[int, int]], data: np.ndarray) -> None:
    _open_level(spec, level)[tuple(slice(start, stop) for start, stop in bounds)] = data


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

    node = zarr.open(path, mode="r+")
    attributes = dict(node.attrs["convpipe"])
    attributes["complete"] = True
    node.attrs["convpipe"] = attributes
    shutil.rmtree(Path(path) / BLOCKS_DIR, ignore_errors=True)


def read_status(path: str) -> dict[str, Any] | None:
    """The ``convpipe`` attributes of an output (array or OME-Zarr group), or None if it is
    not one of ours."""
    import zarr

    try:
        node = zarr.open(path, mode="r")
    except Exception:
        return None
    status = node.attrs.get("convpipe")
    return dict(status) if isinstance(status, dict) else None
