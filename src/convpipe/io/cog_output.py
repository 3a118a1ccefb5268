"""COG outputs: a GeoTIFF output whose file is Cloud-Optimized (README, "Formats").

Everything but ``write`` is the GeoTIFF output's: the lease beside the file, the provenance in
GDAL's metadata tag, the partial file published whole (renamed, or uploaded after a free-space
check). ``write`` takes the blocks once, band after band and each band's in Z order, and
builds the overviews as they pass: every whole tile is encoded and halved into its quarter of
the tile above it (``Pyramid``). The writer holds the blocks at hand, a few unfinished tiles
per overview level and the tiles being encoded: its memory does not grow with the image, and
it never reads back what it wrote. Encoded tiles are appended to one staging file per level,
in the order they are made; then ``convpipe.io.cog`` writes the header and every IFD and
copies each level's tiles after them in TIFF order, smallest level first. The staging files
need about as much room again as the COG.

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
import itertools
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convpipe.block import to_dtype
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
    empty = count == 0
    if empty.any():
        mean[empty] = fill  # an integer output with no nodata value has no empty cells
    return to_dtype(mean, data.dtype)  # rounded; int64's maximum is 2**63 in float64: clipped, not wrapped


def halve(data: np.ndarray, resampling: str, nodata: float | None) -> np.ndarray:
    """A 2-D level halved, rounding up: the next overview's rows (module docstring)."""
    if resampling == "nearest":
        return np.ascontiguousarray(data[::2, ::2])
    out = np.empty((-(-data.shape[0] // 2), -(-data.shape[1] // 2)), data.dtype)
    for top in range(0, data.shape[0], HALVE_ROWS):
        out[top // 2 : (top + HALVE_ROWS) // 2] = _average(data[top : top + HALVE_ROWS], nodata)
    return out


class Pyramid:
    """Every level's tiles of one band, from its full-resolution tiles in any order. A tile is
    halved as soon as it is whole, into its quarter of the tile above it (tiles are an even
    number of samples wide and high, so halving a tile is halving its level there); a tile of
    an overview is whole once its (up to four) tiles below have arrived. What waits is the
    overview tiles with some of their quarters: a few per level when the blocks come in
    ``z_order``, whatever the image's size."""

    def __init__(self, shapes: list[tuple[int, int]], tile: tuple[int, int], resampling: str, nodata: float | None):
        self.shapes, self.tile, self.resampling, self.nodata = shapes, tile, resampling, nodata
        self.waiting: dict[tuple[int, int, int], tuple[np.ndarray, list[int]]] = {}  # tile, quarters to come

    def add(self, level: int, row: int, column: int, data: np.ndarray) -> list[tuple[int, int, int, np.ndarray]]:
        """A whole tile of ``level``: it and every overview tile it completes."""
        done = [(level, row, column, data)]
        if level + 1 == len(self.shapes):
            return done
        ty, tx = self.tile
        key = (level + 1, row // 2, column // 2)
        if key not in self.waiting:
            rows, columns = cog.tiles_across(self.shapes[level], self.tile)
            height, width = self.shapes[level + 1]
            top, left = key[1] * ty, key[2] * tx
            shape = (min(ty, height - top), min(tx, width - left))
            quarters = min(2, rows - 2 * key[1]) * min(2, columns - 2 * key[2])
            self.waiting[key] = (np.empty(shape, data.dtype), [quarters])
        above, left_over = self.waiting[key]
        half = halve(data, self.resampling, self.nodata)
        top, left = row % 2 * ty // 2, column % 2 * tx // 2
        above[top : top + half.shape[0], left : left + half.shape[1]] = half
        left_over[0] -= 1
        if not left_over[0]:
            del self.waiting[key]
            done += self.add(*key, above)
        return done


def z_order(grid: Sequence[int]) -> list[tuple[int, ...]]:
    """Block indices band after band (a leading axis), each band's blocks in Morton (Z) order:
    four neighbours, then the next four, so that the overview tiles built from them are whole
    soon after they are begun (``Pyramid``)."""

    def morton(cell: tuple[int, int]) -> int:
        code = 0
        for bit in range(max(cell).bit_length()):
            code |= ((cell[0] >> bit) & 1) << (2 * bit + 1) | ((cell[1] >> bit) & 1) << (2 * bit)
        return code

    cells = sorted(itertools.product(range(grid[-2]), range(grid[-1])), key=morton)
    return [(*lead, *cell) for lead in itertools.product(*map(range, grid[:-2])) for cell in cells]


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
    blocks: Iterator[tuple[tuple[int, ...], np.ndarray]],
    chunks: Sequence[Sequence[int]],
    partial: Path,
    tile: tuple[int, int],
    codec: str,
    resampling: str,
    nodata: float | None,
    statistics: BandStatistics | None = None,
) -> list[cog.Level]:
    """Encode every level's tiles from the output's blocks (in any order; ``chunks``: the
    plan's block layout, (bands,) rows, columns) into one staging file per level, appended in
    the order they are made; ``statistics`` sees every full-resolution sample on the way."""
    starts = [np.concatenate([[0], np.cumsum(c)]) for c in chunks]
    bands, height, width = (1, *(int(s[-1]) for s in starts)) if len(chunks) == 2 else (int(s[-1]) for s in starts)
    shapes = cog.level_shapes(height, width, tile)
    across = [cog.tiles_across(shape, tile) for shape in shapes]
    paths = [level_file(partial, k) for k in range(len(shapes))]
    counts = [np.zeros(cog.tile_count(s, tile, bands), np.uint64) for s in shapes]
    positions = [np.zeros(c.size, np.uint64) for c in counts]
    filled = [0] * len(shapes)
    pyramids = [Pyramid(shapes, tile, resampling, nodata) for _ in range(bands)]
    workers = min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool, contextlib.ExitStack() as files:
        out = [files.enter_context(open(path, "wb")) for path in paths]

        def encode(item: tuple[int, int, int, int, np.ndarray]) -> bytes:
            return cog.encode_tile(item[-1], tile, codec)

        for index, block in blocks:
            corner = [int(s[i]) for s, i in zip(starts, index, strict=True)]
            first_band, top, left = (0, *corner) if len(chunks) == 2 else corner
            made = []
            for b, plane in enumerate(block.reshape(-1, *block.shape[-2:])):
                if statistics is not None:
                    statistics.add(first_band + b, plane)
                for y in range(0, plane.shape[0], tile[0]):
                    for x in range(0, plane.shape[1], tile[1]):
                        row, column = (top + y) // tile[0], (left + x) // tile[1]
                        found = pyramids[first_band + b].add(0, row, column, plane[y : y + tile[0], x : x + tile[1]])
                        made += [(first_band + b, *item) for item in found]
            for (band, level, row, column, _), data in zip(made, pool.map(encode, made), strict=True):
                rows, columns = across[level]
                number = (band * rows + row) * columns + column  # TIFF order
                positions[level][number] = out[level].tell()
                counts[level][number] = len(data)
                out[level].write(data)
                filled[level] += 1
    if filled != [c.size for c in counts]:
        raise RunError(f"COG output: the blocks ended after {filled[0]} of {counts[0].size} full-resolution tiles")
    return [cog.Level(*level) for level in zip(shapes, paths, counts, positions, strict=True)]


class CogOutput(GeoTiffOutput):
    """A Cloud-Optimized GeoTIFF output (``convpipe.io.output.StreamOutput``)."""

    def block_order(self, plan: Plan) -> list[tuple[int, ...]]:
        return z_order([len(c) for c in plan.chunks])

    def write(
        self,
        blocks: Iterator[tuple[tuple[int, ...], np.ndarray]],
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
                    blocks,
                    plan.chunks,
                    partial,
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
