"""GeoTIFF outputs: one file, written in one pass and published whole (README, "Data safety").

A TIFF is written in file order, so it cannot be filled block by block like a Zarr store.
It is written to a partial file (beside the output on a local disk; in the temporary folder
for an object store, after checking it has room) and published when whole: renamed on a disk,
uploaded as one object to a store. The path only ever holds the old file or the new one.
The lease lives beside the file (``NAME.convpipe-lock/``), in the same store.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from convpipe.errors import RunError
from convpipe.io import durable, geotiff, stores
from convpipe.io.geotiff import PARTIAL_SUFFIX, GeoInfo, gdal_metadata
from convpipe.io.output import Found
from convpipe.io.stores import Location
from convpipe.plan import GEOTIFF_ENCODE_BYTES, Plan

LOCK_SUFFIX = ".convpipe-lock"

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def lock_place(location: Location) -> tuple[Location, str]:
    """The folder (or bucket prefix) holding the output, and the lease's prefix in it."""
    return location.parent, location.name + LOCK_SUFFIX


def read_status(location: Location) -> dict[str, Any] | None:
    """The provenance a convpipe GeoTIFF keeps in GDAL's metadata tag; None for any other file."""
    import tifffile

    try:
        with stores.open_file(location) as handle:
            if handle.read(4) not in TIFF_MAGIC:
                return None
            handle.seek(0)
            with tifffile.TiffFile(handle) as tif:
                made = gdal_metadata(tif.pages.first).get("convpipe")
        status = json.loads(made) if made else None
    except Exception:  # unreadable, not a TIFF, or not JSON: not one of ours
        return None
    return status if isinstance(status, dict) else None


def remove_leftovers(location: Location) -> None:
    """A partial file a killed run left beside a local output, or staged for a remote one."""
    if location.is_local:
        Path(location.path + PARTIAL_SUFFIX).unlink(missing_ok=True)
    else:
        staging_file(location).unlink(missing_ok=True)


def staging_file(location: Location) -> Path:
    """Where a GeoTIFF bound for an object store is staged: named after its URL, so the next
    run for the same output removes what a killed run left (the lease keeps runs apart)."""
    digest = hashlib.sha256(location.url.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"convpipe-{digest}-{location.name}"


@contextlib.contextmanager
def staged(location: Location, size_estimate: int) -> Iterator[Path]:
    """A partial file to write the TIFF into; published at ``location`` when the block ends
    without an error, removed otherwise."""
    if location.is_local:
        partial = Path(location.path + PARTIAL_SUFFIX)
        partial.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield partial
            durable.flush([partial], partial.parent)  # the whole file on the disk before its name
            os.replace(partial, location.path)
            try:
                durable.sync_folder(partial.parent)  # its name, too
            except OSError as error:  # not "incomplete": the file is whole, and published
                raise RunError(
                    f"output {location}: the file is written and on the disk, but syncing its folder failed "
                    f"({stores.error_detail(location, error)}): after a crash it may be missing, or be the "
                    "file it replaced; then run again with --overwrite"
                ) from None
        finally:
            partial.unlink(missing_ok=True)
        return
    folder = tempfile.gettempdir()
    free = shutil.disk_usage(folder).free
    if free < size_estimate:
        raise RunError(
            f"output {location}: the GeoTIFF is staged in {folder} before it is uploaded, and it has "
            f"{free / 2**30:.1f} GiB free of up to {size_estimate / 2**30:.1f} GiB needed; "
            "set TMPDIR to a larger folder"
        )
    partial = staging_file(location)
    partial.unlink(missing_ok=True)  # what a killed run staged for this output
    try:
        yield partial
        try:
            stores.upload(partial, location)
        except Exception as error:
            raise RunError(stores.describe_error(location, error)) from None
    finally:
        partial.unlink(missing_ok=True)


def rows_of(blocks: Iterator[tuple[tuple[int, ...], np.ndarray]]) -> Iterator[list[np.ndarray]]:
    """Blocks given row by row (``GeoTiffOutput.block_order``) as rows, left to right."""
    for _, row in itertools.groupby(blocks, key=lambda item: item[0][:-1]):
        yield [block for _, block in row]


class GeoTiffOutput:
    """A GeoTIFF output (``convpipe.io.output.StreamOutput``)."""

    streamed = True

    def __init__(self, location: Location) -> None:
        self.location = location

    def lock_place(self) -> tuple[Location, str]:
        return lock_place(self.location)

    def found(self) -> Found:
        """``--overwrite`` replaces a GeoTIFF convpipe wrote, nothing else."""
        try:
            if not stores.exists(self.location):
                return Found("missing")
            is_file = stores.object_info(self.location) is not None
        except Exception as error:
            if not stores.is_store_error(error):
                raise
            raise RunError(stores.describe_error(self.location, error)) from None
        if not is_file:
            return Found("foreign", f"{self.location} exists and is not a file; refusing to replace it")
        if read_status(self.location) is None:
            return Found(
                "foreign",
                f"{self.location} is a file convpipe did not write (no convpipe provenance in it); "
                "refusing to replace it",
            )
        return Found("ours")

    def read_status(self) -> dict[str, Any] | None:
        return read_status(self.location)

    def records_left(self) -> bool:
        return False  # a GeoTIFF keeps no block records: it is published whole

    def block_order(self, plan: Plan) -> list[tuple[int, ...]]:
        """Row by row: tifffile writes tiles in file order, so a row of blocks is cut into
        tiles once it is whole."""
        return list(np.ndindex(*[len(c) for c in plan.chunks]))

    def write(
        self,
        blocks: Iterator[tuple[tuple[int, ...], np.ndarray]],
        plan: Plan,
        record: dict[str, Any],
        geo: GeoInfo | None,
        before_publish: Callable[[], None],
    ) -> None:
        assert plan.storage.chunks is not None  # planned: TIFF tiles, which may exceed a small image
        tile = (plan.storage.chunks[-2], plan.storage.chunks[-1])
        size = math.prod(plan.output_shape) * plan.output_dtype.itemsize
        remove_leftovers(self.location)
        with staged(self.location, size) as partial:
            geotiff.write(
                str(partial),
                rows_of(blocks),
                plan.output_shape,
                plan.output_dtype,
                tile,
                plan.storage.codec,
                geo,
                {"convpipe": json.dumps({**record, "complete": True})},
                GEOTIFF_ENCODE_BYTES,
            )
            before_publish()
