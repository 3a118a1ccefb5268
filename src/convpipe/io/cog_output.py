"""COG outputs: a GeoTIFF output whose file is Cloud-Optimized (README, "Formats").

Everything but ``write`` is the GeoTIFF output's: the lease beside the file, the provenance in
GDAL's metadata tag, the partial file published whole (renamed, or uploaded after a free-space
check). ``write`` streams the rows of blocks once, in file order, and builds the overviews as
they pass: each row is cut into full-resolution tiles and halved into the first overview; each
overview keeps only the rows it has not yet cut into tiles (under one tile row) and an odd row
waiting for its pair, and halves what it receives into the next. So the writer holds the row at
hand plus less than two tile rows of overviews (their widths halve level by level), whatever the
image's height, and never reads back what it wrote. Encoded tiles go to one staging file per
level; then ``convpipe.io.cog`` writes the header and every IFD and copies the levels after
them, smallest first. The staging files need about as much room again as the COG.

Overviews: ``average`` (the default) is the mean of the 2x2 samples of the level below that
are not nodata (the output's GDAL nodata value, and NaN for floats), nodata where all are; at an
odd edge the samples that exist; integers rounded to nearest, ties to even (as the chain's own
output). ``nearest`` takes each 2x2 cell's top-left sample, GDAL's pick. Each level is made from
the level below as stored, as GDAL's COG driver does.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import glob
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from convpipe.errors import RunError
from convpipe.io import cog
from convpipe.io.geotiff import PARTIAL_SUFFIX, GeoInfo, metadata_xml
from convpipe.io.geotiff_output import GeoTiffOutput, staged, staging_file
from convpipe.io.geotiff_output import remove_leftovers as remove_partial
from convpipe.io.stores import Location
from convpipe.plan import Plan

RESAMPLINGS = ("average", "nearest")

#: Rows halved at a time: bounds the float64 temporaries of an average, whatever the block.
HALVE_ROWS = 256


def level_file(partial: Path, level: int) -> Path:
    """Where a level's encoded tiles are staged: beside the partial file, named after it."""
    return partial.with_name(f"{partial.name}.level{level}")


def remove_levels(partial: Path) -> None:
    for path in glob.glob(glob.escape(str(partial)) + ".level*"):
        Path(path).unlink(missing_ok=True)


def remove_leftovers(location: Location) -> None:
    """The partial file and staged levels a killed run left."""
    remove_partial(location)
    remove_levels(Path(location.path + PARTIAL_SUFFIX) if location.is_local else staging_file(location))


def _pair_sums(data: np.ndarray, axis: int) -> np.ndarray:
    """Sums of consecutive pairs along ``axis``; an odd last element alone."""
    first = np.take(data, range(0, data.shape[axis], 2), axis=axis)
    second = np.take(data, range(1, data.shape[axis], 2), axis=axis)
    index = (slice(None),) * axis + (slice(0, second.shape[axis]),)
    first[index] += second
    return first


def _average(data: np.ndarray, nodata: float | None) -> np.ndarray:
    values = data.astype(np.float64)
    valid = ~np.isnan(values) if data.dtype.kind == "f" else np.ones(values.shape, bool)
    fill = np.nan
    if nodata is not None and not math.isnan(nodata):
        fill = float(np.asarray(nodata).astype(data.dtype))  # compared as stored
        valid &= values != fill
    values[~valid] = 0.0
    total = _pair_sums(_pair_sums(values, 0), 1)
    count = _pair_sums(_pair_sums(valid.astype(np.uint8), 0), 1)
    mean = total / np.maximum(count, 1)
    if data.dtype.kind != "f":
        mean = np.rint(mean)
    empty = count == 0
    if empty.any():
        mean[empty] = fill  # an integer output with no nodata value has no empty cells
    return mean.astype(data.dtype)


def halve(data: np.ndarray, resampling: str, nodata: float | None) -> np.ndarray:
    """A 2-D level halved, rounding up: the next overview's rows (module docstring)."""
    if resampling == "nearest":
        return np.ascontiguousarray(data[::2, ::2])
    out = np.empty((-(-data.shape[0] // 2), -(-data.shape[1] // 2)), data.dtype)
    for top in range(0, data.shape[0], HALVE_ROWS):
        out[top // 2 : (top + HALVE_ROWS) // 2] = _average(data[top : top + HALVE_ROWS], nodata)
    return out


class Overviews:
    """Cuts one band's rows into tiles of every level, full resolution first, building each
    overview from the level below as rows arrive. ``feed`` returns the tiles completed, each
    level's in TIFF order (tile rows top to bottom, tiles left to right)."""

    def __init__(self, levels: int, tile: tuple[int, int], resampling: str, nodata: float | None) -> None:
        self.levels, self.tile, self.resampling, self.nodata = levels, tile, resampling, nodata
        self.pending: list[np.ndarray | None] = [None] * (levels + 1)  # rows not yet cut into tiles
        self.carry: list[np.ndarray | None] = [None] * (levels + 1)  # an odd row awaiting its pair

    def feed(self, blocks: list[np.ndarray], last: bool) -> list[tuple[int, np.ndarray]]:
        """A row of full-resolution blocks (2-D, left to right, whole tiles wide); ``last``:
        the band's last row, after which every level is flushed."""
        ty, tx = self.tile
        height = blocks[0].shape[0]
        tiles = [
            (0, block[top : top + ty, left : left + tx])
            for top in range(0, height, ty)
            for block in blocks
            for left in range(0, block.shape[1], tx)
        ]
        if self.levels:
            if height % 2 and not last:  # the plan makes blocks whole tiles high
                raise RunError(f"COG output: a row of blocks {height} samples high is not the last; cannot halve it")
            halves = [halve(block, self.resampling, self.nodata) for block in blocks]
            tiles += self._add(1, np.concatenate(halves, axis=1) if len(halves) > 1 else halves[0])
        if last:
            tiles += self._flush()
        return tiles

    def _add(self, level: int, rows: np.ndarray) -> list[tuple[int, np.ndarray]]:
        ty, tx = self.tile
        before = self.pending[level]
        pending = rows if before is None else np.concatenate([before, rows])
        whole = pending.shape[0] // ty * ty
        tiles = [
            (level, pending[top : top + ty, left : left + tx])
            for top in range(0, whole, ty)
            for left in range(0, pending.shape[1], tx)
        ]
        self.pending[level] = pending[whole:].copy() if whole < pending.shape[0] else None
        if level < self.levels:
            odd = self.carry[level]
            source = rows if odd is None else np.concatenate([odd, rows])
            even = source.shape[0] // 2 * 2
            self.carry[level] = source[even:].copy() if even < source.shape[0] else None
            if even:
                tiles += self._add(level + 1, halve(source[:even], self.resampling, self.nodata))
        return tiles

    def _flush(self) -> list[tuple[int, np.ndarray]]:
        """The band is done: halve each level's odd last row, cut each level's last tile row."""
        tiles: list[tuple[int, np.ndarray]] = []
        tx = self.tile[1]
        for level in range(1, self.levels + 1):
            odd = self.carry[level]
            if odd is not None:
                self.carry[level] = None
                tiles += self._add(level + 1, halve(odd, self.resampling, self.nodata))
            rest = self.pending[level]
            if rest is not None:
                self.pending[level] = None
                tiles += [(level, rest[:, left : left + tx]) for left in range(0, rest.shape[1], tx)]
        return tiles


class BandStatistics:
    """Each band's minimum, maximum, mean, standard deviation and valid share over its
    samples that are not nodata, gathered as the rows pass (Chan's pairwise update, in
    float64), for GDAL's STATISTICS_* items: what ``gdalinfo -stats`` and QGIS read first."""

    def __init__(self, bands: int, nodata: float | None) -> None:
        self.nodata = nodata
        self.count = np.zeros(bands)
        self.total = np.zeros(bands)  # samples seen, valid or not
        self.mean = np.zeros(bands)
        self.m2 = np.zeros(bands)
        self.low = np.full(bands, np.inf)
        self.high = np.full(bands, -np.inf)

    def add(self, band: int, plane: np.ndarray) -> None:
        values = plane.astype(np.float64, copy=False).ravel()
        keep = np.isfinite(values)
        if self.nodata is not None and not np.isnan(self.nodata):
            keep &= values != self.nodata
        self.total[band] += values.size
        values = values[keep]
        if not values.size:
            return
        n, mean = values.size, float(values.mean())
        m2 = float(np.square(values - mean).sum())
        count = self.count[band]
        delta = mean - self.mean[band]
        self.mean[band] += delta * n / (count + n)
        self.m2[band] += m2 + delta * delta * count * n / (count + n)
        self.count[band] = count + n
        self.low[band] = min(self.low[band], float(values.min()))
        self.high[band] = max(self.high[band], float(values.max()))

    def items(self) -> list[tuple[str, int, str]]:
        """(name, band, value) for the bands with a valid sample."""
        found = []
        for band in range(len(self.count)):
            if not self.count[band]:
                continue
            std = (self.m2[band] / self.count[band]) ** 0.5
            share = 100.0 * self.count[band] / self.total[band]
            for name, value in (
                ("STATISTICS_MINIMUM", self.low[band]),
                ("STATISTICS_MAXIMUM", self.high[band]),
                ("STATISTICS_MEAN", self.mean[band]),
                ("STATISTICS_STDDEV", std),
                ("STATISTICS_VALID_PERCENT", share),
            ):
                found.append((name, band, f"{value:.17g}"))
        return found


def stage(
    rows: Iterator[list[np.ndarray]],
    partial: Path,
    shape: tuple[int, ...],
    tile: tuple[int, int],
    codec: str,
    resampling: str,
    nodata: float | None,
    statistics: BandStatistics | None = None,
) -> list[cog.Level]:
    """Encode every level's tiles from rows of blocks (top to bottom, band after band; a
    band's block is (1, rows, columns)) into one staging file per level; ``statistics``
    sees every full-resolution sample on the way."""
    bands, height, width = (1, *shape) if len(shape) == 2 else shape
    band = 0
    shapes = cog.level_shapes(height, width, tile)
    paths = [level_file(partial, k) for k in range(len(shapes))]
    counts = [np.zeros(cog.tile_count(s, tile, bands), np.uint64) for s in shapes]
    filled = [0] * len(shapes)
    workers = min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool, contextlib.ExitStack() as files:
        out = [files.enter_context(open(path, "wb")) for path in paths]

        def encode(item: tuple[int, np.ndarray]) -> bytes:
            return cog.encode_tile(item[1], tile, codec)

        builder, done = Overviews(len(shapes) - 1, tile, resampling, nodata), 0
        for blocks in rows:
            planes = [block.reshape(block.shape[-2:]) for block in blocks]
            if statistics is not None:
                for plane in planes:
                    statistics.add(band, plane)
            done += planes[0].shape[0]
            batch = builder.feed(planes, last=done >= height)
            for (level, _), data in zip(batch, pool.map(encode, batch), strict=True):
                out[level].write(data)
                counts[level][filled[level]] = len(data)
                filled[level] += 1
            if done >= height:
                done, builder, band = 0, Overviews(len(shapes) - 1, tile, resampling, nodata), band + 1
    if filled != [c.size for c in counts]:
        raise RunError(f"COG output: the rows ended after {filled[0]} of {counts[0].size} full-resolution tiles")
    return [cog.Level(s, p, c) for s, p, c in zip(shapes, paths, counts, strict=True)]


class CogOutput(GeoTiffOutput):
    """A Cloud-Optimized GeoTIFF output (``convpipe.io.output.StreamOutput``)."""

    def write(
        self,
        rows: Iterator[list[np.ndarray]],
        plan: Plan,
        record: dict[str, Any],
        geo: GeoInfo | None,
        before_publish: Callable[[], None],
    ) -> None:
        assert plan.storage.chunks is not None  # planned: TIFF tiles
        tile = (plan.storage.chunks[-2], plan.storage.chunks[-1])
        shape = plan.output_shape
        bands = shape[0] if len(shape) == 3 else 1
        # Staged levels and the COG itself: each up to the image and a third (its overviews).
        room = 3 * math.prod(shape) * plan.output_dtype.itemsize
        remove_leftovers(self.location)
        with staged(self.location, room) as partial:
            try:
                statistics = BandStatistics(bands, cog.nodata_value(geo))
                levels = stage(
                    rows,
                    partial,
                    shape,
                    tile,
                    plan.storage.codec,
                    plan.storage.overview_resampling,
                    cog.nodata_value(geo),
                    statistics,
                )
                xml = metadata_xml({"convpipe": json.dumps({**record, "complete": True})}, statistics.items(), geo)
                samples = cog.Samples(bands, plan.output_dtype, tile, plan.storage.codec)
                cog.write(partial, levels, samples, cog.main_tags(geo, xml), cog.overview_tags(geo))
            finally:
                remove_levels(partial)
            before_publish()
