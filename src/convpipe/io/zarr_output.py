"""Zarr and OME-Zarr outputs, written block by block through the store layer, on a local disk
or in an object store alike (README, "Data safety").

The output is created with ``complete: false`` in its ``convpipe`` attributes. Each block is
one storage chunk (or shard), so concurrent writers never share one; after a block's chunk
is written an object under ``.convpipe-blocks/`` records it, so an interrupted run knows
which blocks to redo and a chunk cut short by a crash is never taken for a finished one.
When every block is written the output is marked complete, and only then are the records
removed. The lease under ``.convpipe-lock/`` (``convpipe.io.lifecycle``) keeps two runs from
writing one output, and every block checks it before it writes.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convpipe.errors import RunError
from convpipe.io import durable, lifecycle, ngff, stores
from convpipe.io.output import Found
from convpipe.io.stores import Location

if TYPE_CHECKING:
    from convpipe.plan import Plan

BLOCKS_PREFIX = lifecycle.BLOCKS_PREFIX
LOCK_PREFIX = lifecycle.LOCK_PREFIX


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
    """Where blocks go; small and picklable: every writer reopens the store from it."""

    location: Location
    run_id: str  # keys the per-process handle cache, so no run writes through a stale one
    array: str = ""  # the level-0 array inside the output ("0" in an OME-Zarr group)
    lease: lifecycle.LeaseKey | None = None  # checked before every block is written
    driver: str = ""  # the run's own process (durable.this_process), which syncs in the background
    reread: bool = False  # the run reads what it wrote (a pyramid): keep it in the page cache


def _at(location: Location | str) -> Location:
    """A location, or a path or URL as a user types it."""
    return location if isinstance(location, Location) else stores.parse(location)


def store(location: Location | str, *, writable: bool = True) -> Any:
    return stores.open_store(_at(location), read_only=not writable)


def level_path(format_name: str, level: int = 0) -> str:
    """Where a level's array lives inside the output ("" is the output itself)."""
    return str(level) if format_name == "ome-zarr" else ""


def create(
    location: Location,
    plan: Plan,
    attributes: dict[str, Any],
    extra: dict[str, Any] | None = None,
    name: str = "image",
) -> None:
    """Create the empty output, marked incomplete, with its provenance (and NGFF metadata).

    A Zarr output is one array; an OME-Zarr output is a group holding level ``0`` and the
    pyramid levels. Whatever was at the location is removed first, except the lease the
    caller holds.
    """
    import zarr

    storage = plan.storage
    target = store(location)
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
    try:
        _mark_incomplete(location)  # before anything of it goes: never a half-deleted "complete"
        lifecycle.clear(target, keep_prefix=LOCK_PREFIX)
        if storage.format == "ome-zarr":
            group = zarr.create_group(store=target, zarr_format=zarr_format, attributes=attributes, overwrite=False)
            for array_name, options in arrays:
                group.create_array(array_name, **options)
        else:
            zarr.create_array(store=target, zarr_format=3, **arrays[0][1])
        _flush_metadata(location)
    except (OSError, ValueError) as error:
        detail = getattr(error, "strerror", None) or error
        raise RunError(stores.redact(f"output {location}: cannot create it ({detail})")) from None


def _mark_incomplete(location: Location) -> None:
    import zarr

    status = read_status(location)
    if status is not None and status.get("complete"):
        node = zarr.open(store=store(location), mode="r+")
        node.attrs["convpipe"] = {**status, "complete": False}
        _flush_metadata(location)


#: What zarr keeps an array's or group's metadata in (v3; v2).
METADATA_FILES = ("zarr.json", ".zgroup", ".zarray", ".zattrs")


def _flush_metadata(location: Location) -> None:
    """The output's metadata (the group's and its arrays', one folder down) on a local disk,
    and the names in its folders one level down: the block records a new output cleared
    must not come back with it after a crash."""
    if not location.is_local:
        return
    root = Path(location.path)
    folders = [root, *(entry for entry in root.iterdir() if entry.is_dir())]
    metadata = [path for folder in folders for name in METADATA_FILES if (path := folder / name).is_file()]
    durable.flush(metadata, root)  # and the folders that hold them
    for folder in {*folders, root.parent} - {path.parent for path in metadata}:
        durable.sync_folder(folder)


def _array_options(plan: Plan, shape: tuple[int, ...], zarr_format: int) -> dict[str, Any]:
    """How one array of the output is laid out: chunks (and shards) cut to its shape."""
    chunks = tuple(min(c, n) for c, n in zip(plan.storage_chunks, shape, strict=True))
    options: dict[str, Any] = {
        "shape": shape,
        "chunks": chunks,
        "dtype": plan.output_dtype,
        "compressors": compressors(plan.storage.codec, zarr_format),
        # A chunk never written reads as nodata where the output has nodata (zarr's convention).
        "fill_value": plan.output_nodata if plan.masked and plan.output_nodata is not None else 0,
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


def prepare(
    location: Location, format_name: str, lease: lifecycle.LeaseKey | None, *, reread: bool = False
) -> OutputSpec:
    """The handle every writer uses for this run."""
    return OutputSpec(location, uuid.uuid4().hex, level_path(format_name), lease, durable.this_process(), reread)


@functools.lru_cache(maxsize=32)
def _open(spec: OutputSpec, path: str) -> Any:
    import zarr

    # Every block is written: skip zarr's scan for chunks that hold only the fill value.
    array = zarr.open_array(store=store(spec.location), path=path, mode="r+")
    return array.with_config({"write_empty_chunks": True})


def read_level(spec: OutputSpec, level: int, bounds: Sequence[tuple[int, int]]) -> np.ndarray:
    """Samples of one level of an OME-Zarr output (the pyramid reads the level below)."""
    return np.asarray(_open(spec, str(level))[tuple(slice(start, stop) for start, stop in bounds)])


def write_level(spec: OutputSpec, level: int, bounds: Sequence[tuple[int, int]], data: np.ndarray) -> None:
    if spec.lease is not None:
        lifecycle.check_lease(store(spec.location), spec.lease)
    _write(spec, _open(spec, str(level)), bounds, data)


def write_block(spec: OutputSpec, index: Sequence[int], bounds: Sequence[tuple[int, int]], data: np.ndarray) -> None:
    """Write one block into its own chunk, then record that it is there; never after this
    run's lease was lost (another run took the output over)."""
    target = store(spec.location)
    if spec.lease is not None:
        lifecycle.check_lease(target, spec.lease)
    # On a disk the record waits for the sync, which may take long: check the lease again.
    lease = spec.lease if spec.location.is_local else None
    _write(spec, _open(spec, spec.array), bounds, data, functools.partial(_record, target, tuple(index), lease))


def _record(target: Any, index: tuple[int, ...], lease: lifecycle.LeaseKey | None) -> None:
    if lease is not None:
        lifecycle.check_lease(target, lease)  # never a record after the run let go of the output
    lifecycle.record_block(target, index, BLOCKS_PREFIX)


def _write(
    spec: OutputSpec,
    array: Any,
    bounds: Sequence[tuple[int, int]],
    data: np.ndarray,
    then: Callable[[], None] = lambda: None,
) -> None:
    """Write a region, put the chunk files it filled on a local disk (``convpipe.io.durable``),
    and only then call ``then`` (record the block). In the process that runs the output, the
    flushing and ``then`` happen in the background (the run drains them before it marks the
    output complete or lets go of the lease); a worker process waits for them."""
    array[tuple(slice(start, stop) for start, stop in bounds)] = data
    if not spec.location.is_local:
        then()
        return
    stored = array.shards or array.chunks  # the unit zarr writes as one file
    spans = [range(start // size, -(-stop // size)) for (start, stop), size in zip(bounds, stored, strict=True)]
    folder = Path(spec.location.path, array.path)
    files = [folder / array.metadata.encode_chunk_key(coords) for coords in itertools.product(*spans)]
    if spec.driver == durable.this_process():
        durable.background.submit(spec.run_id, files, spec.location.path, then, drop=not spec.reread)
    else:
        durable.flush(files, spec.location.path, drop=not spec.reread)
        then()


def written_blocks(location: Location | str) -> set[tuple[int, ...]]:
    """The blocks an unfinished output already holds."""
    return lifecycle.written_blocks(store(location, writable=False), BLOCKS_PREFIX)


def count_written(location: Location | str) -> int:
    return lifecycle.count_blocks(store(location, writable=False), BLOCKS_PREFIX)


def remove_partial_writes(location: Location | str) -> int:
    """Delete what killed writers left on a local disk: zarr writes a chunk to
    ``<key>.<uuid>.partial`` and renames it, so a kill can leave such a file (never a
    half-written chunk). Object stores put whole objects: nothing to clean there."""
    location = _at(location)
    if not location.is_local:
        return 0
    removed = 0
    for leftover in Path(location.path).rglob("*.partial"):
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed


def mark_complete(location: Location | str) -> None:
    """Every block is written: say so, then drop the per-block records."""
    import zarr

    location = _at(location)
    target = store(location)
    node = zarr.open(store=target, mode="r+")
    attributes = dict(node.attrs["convpipe"])
    attributes["complete"] = True
    try:
        node.attrs["convpipe"] = attributes
    except Exception as error:
        # A put can fail after the store applied it (a timeout on the reply): the output
        # then reads as complete, and is to be finished as one, not called incomplete.
        if not stores.is_store_error(error) or not (read_status(location) or {}).get("complete"):
            raise
        with _finishing(location, crash=location.is_local):
            raise
    with _finishing(location, crash=location.is_local):
        _flush_metadata(location)  # every chunk is on the disk already (_write)
    with _finishing(location):
        lifecycle.clear_blocks(target, BLOCKS_PREFIX)


@contextlib.contextmanager
def _finishing(location: Location, *, crash: bool = False) -> Iterator[None]:
    """Not "the output is incomplete": every block is stored by then, and the output reads as
    complete; but the records are left, and if the mark's sync failed (``crash``), a crash
    may yet take the mark back."""
    try:
        yield
    except Exception as error:
        if not stores.is_store_error(error):
            raise
        where = "on the disk" if location.is_local else "stored"
        after = " (after a crash it may read as incomplete, which --resume finishes too)" if crash else ""
        raise RunError(
            f"output {location}: every block is written and {where}, but finishing the output failed "
            f"({stores.error_detail(location, error)}): run again with --resume to finish it{after}"
        ) from None


def read_status(location: Location | str) -> dict[str, Any] | None:
    """The ``convpipe`` attributes of an output (array or OME-Zarr group), or None if it is
    not one of ours."""
    import zarr

    try:
        node = zarr.open(store=store(location, writable=False), mode="r")
    except Exception:
        return None
    status = node.attrs.get("convpipe")
    return dict(status) if isinstance(status, dict) else None


class ZarrOutput:
    """A Zarr or OME-Zarr output (``convpipe.io.output.BlockOutput``)."""

    streamed = False
    write_block = staticmethod(write_block)
    read_level = staticmethod(read_level)
    write_level = staticmethod(write_level)

    def __init__(self, location: Location, format_name: str) -> None:
        self.location = location
        self.format = format_name
        self._handle: OutputSpec | None = None
        self._pyramid = False  # known at begin()

    def lock_place(self) -> tuple[Location, str]:
        return self.location, LOCK_PREFIX

    def found(self) -> Found:
        try:
            if not stores.exists(self.location):
                return Found("missing")
            if stores.object_info(self.location) is not None:
                return Found(
                    "foreign", f"{self.location} is a file, not a folder as a Zarr store is; refusing to replace it"
                )
            kind, foreign = lifecycle.survey(store(self.location, writable=False))  # one listing
        except Exception as error:
            if not stores.is_store_error(error):
                raise
            raise RunError(stores.describe_error(self.location, error)) from None
        if kind in ("empty", "leftover"):  # only the lease records of a run that wrote nothing
            return Found("missing")
        if kind == "foreign":
            return Found("foreign", str(lifecycle.not_ours(str(self.location), foreign)))
        return Found("ours" if kind == "convpipe" else "replaceable")

    def read_status(self) -> dict[str, Any] | None:
        return read_status(self.location)

    def begin(
        self, plan: Plan, record: dict[str, Any], extra: dict[str, Any], name: str, *, keep: bool
    ) -> set[tuple[int, ...]]:
        self._pyramid = plan.storage.pyramid > 0
        if keep:
            remove_partial_writes(self.location)
            done = written_blocks(self.location)
            if done:
                return done
        # Nothing to keep (a kill may even have cut the old output's creation short).
        create(self.location, plan, record, extra, name=name)
        return set()

    def writer(self, lease: lifecycle.LeaseKey) -> OutputSpec:
        self._handle = prepare(self.location, self.format, lease, reread=self._pyramid)
        return self._handle

    def settle(self, *, raise_errors: bool = True) -> None:
        if self._handle is not None:
            settle = durable.background.drain if raise_errors else durable.background.wait
            settle(self._handle.run_id)

    def count_written(self) -> int:
        return count_written(self.location)

    def finish(self) -> None:
        self.settle()  # every block's chunks on the disk, and recorded
        mark_complete(self.location)

    def records_left(self) -> bool:
        try:
            return count_written(self.location) > 0
        except Exception as error:
            if not stores.is_store_error(error):
                raise
            raise RunError(stores.describe_error(self.location, error)) from None

    def finish_again(self) -> None:
        # Written anew, not only synced again: after a failed sync the kernel may count the
        # mark's pages as written, and a second sync would then vouch for nothing.
        with _finishing(self.location):
            mark_complete(self.location)
