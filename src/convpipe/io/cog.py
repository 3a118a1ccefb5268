"""The byte layout of a Cloud-Optimized GeoTIFF (OGC 21-026): header, every IFD, then tile data.

Written here rather than by tifffile because tifffile puts each page's IFD just before that
page's tiles, full resolution first; GDAL's ``validate_cloud_optimized_geotiff.py`` and
rio-cogeo's ``cog_validate`` want the main IFD right after the header, the IFDs in order of
decreasing size before any tile, and the tiles of the smallest overview first, full
resolution last. Once every tile has been encoded and staged (``convpipe.io.cog_output``)
every byte count is known, so every offset can be computed before a byte is written: the
file is the header, the IFDs with their TileOffsets and TileByteCounts, then the staged
levels copied smallest first. Tiles are encoded with tifffile's own codecs, as the GeoTIFF
output encodes them. There is no GDAL "ghost" header: it is optional, and without it the main
IFD sits at byte 8 (16 in a BigTIFF), which both validators accept.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from convpipe.io.geotiff import GDAL_METADATA, GDAL_NODATA, GeoInfo

#: TIFF field types.
ASCII, SHORT, LONG, DOUBLE, LONG8 = 2, 3, 4, 12, 16
_FORMATS = {SHORT: "H", LONG: "I", DOUBLE: "d", LONG8: "Q"}

#: TIFF compression tags of the codecs a COG may use.
COMPRESSION_TAGS = {"deflate": 8, "zstd": 50000, "none": 1}

#: A classic TIFF's offsets are 32 bits: a file larger than this must be a BigTIFF.
CLASSIC_LIMIT = 2**32 - 1

_COPY_BYTES = 16 * 2**20  # staged tile data is copied this much at a time


def level_shapes(height: int, width: int, tile: tuple[int, int]) -> list[tuple[int, int]]:
    """Full resolution and each overview, halved (rounding up, as GDAL) until one tile holds it."""
    shapes = [(height, width)]
    while shapes[-1][0] > tile[0] or shapes[-1][1] > tile[1]:
        h, w = shapes[-1]
        shapes.append((-(-h // 2), -(-w // 2)))
    return shapes


def planned_levels(output_shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[tuple[int, int]]:
    """The (height, width) of a planned COG's levels (``Plan.output_shape``, ``Storage.chunks``)."""
    return level_shapes(output_shape[-2], output_shape[-1], (chunks[-2], chunks[-1]))


def tiles_across(shape: tuple[int, int], tile: tuple[int, int]) -> tuple[int, int]:
    """Tile rows and tile columns covering a level."""
    return -(-shape[0] // tile[0]), -(-shape[1] // tile[1])


def bigtiff_needed(header_and_ifd_bytes: int, tile_bytes: int) -> bool:
    """Whether the file outgrows a classic TIFF's 32-bit offsets (the sizes are exact: every
    tile is staged before the layout is decided)."""
    return header_and_ifd_bytes + tile_bytes > CLASSIC_LIMIT


def predictor_tag(codec: str, dtype: np.dtype) -> int:
    """TIFF's predictor for this codec and dtype: 3 (floating point) for floats, 2 (horizontal)
    for integers, 1 (none) without compression. The GeoTIFF output makes the same choice."""
    if codec == "none":
        return 1
    return 3 if np.dtype(dtype).kind == "f" else 2


def encode_tile(tile: np.ndarray, shape: tuple[int, int], codec: str) -> bytes:
    """One tile as stored: padded with zeros to the full tile (edge tiles), little-endian,
    predicted and compressed by the functions tifffile's writer uses."""
    from tifffile import TIFF

    dtype = tile.dtype.newbyteorder("<")
    data = np.zeros((*shape, 1), dtype)
    data[: tile.shape[0], : tile.shape[1], 0] = tile
    if codec == "none":
        return data.tobytes()
    predicted = TIFF.PREDICTORS[predictor_tag(codec, dtype)](data, axis=-2)
    return bytes(TIFF.COMPRESSORS[COMPRESSION_TAGS[codec]](predicted))


@dataclass(frozen=True)
class Level:
    """One resolution as staged: its shape, and for its tiles in TIFF order (band after band,
    tile rows top to bottom, tiles left to right) their encoded sizes and where each starts in
    ``path`` (tiles are staged in the order they are made, not in TIFF order)."""

    shape: tuple[int, int]
    path: Path
    byte_counts: np.ndarray  # uint64, one per tile
    positions: np.ndarray  # uint64, one per tile

    @property
    def nbytes(self) -> int:
        return int(self.byte_counts.sum())


@dataclass(frozen=True)
class _Tag:
    code: int
    kind: int
    count: int
    data: bytes  # little-endian values


def _tag(code: int, kind: int, values: Sequence[float] | np.ndarray | str) -> _Tag:
    if kind == ASCII:
        assert isinstance(values, str)
        data = values.encode("utf-8") + b"\0"
        return _Tag(code, kind, len(data), data)
    array = np.asarray(values, dtype="<" + _FORMATS[kind]).ravel()
    return _Tag(code, kind, array.size, array.tobytes())


def main_tags(geo: GeoInfo | None, metadata_xml: str) -> list[_Tag]:
    """The full-resolution IFD's georeferencing, nodata and GDAL metadata (GeoInfo.tags, as
    the GeoTIFF output writes them)."""
    kinds = {"d": DOUBLE, "H": SHORT, "s": ASCII}
    tags = [_tag(code, kinds[kind], value) for code, kind, _, value, _ in (geo.tags() if geo else ())]
    return [*tags, _tag(GDAL_METADATA, ASCII, metadata_xml)]


def overview_tags(geo: GeoInfo | None) -> list[_Tag]:
    """An overview IFD repeats only the nodata value, as GDAL writes it: GDAL derives an
    overview's grid from the full resolution's, and the provenance is said once."""
    return [_tag(GDAL_NODATA, ASCII, geo.nodata)] if geo is not None and geo.nodata is not None else []


@dataclass(frozen=True)
class Samples:
    """What every level shares: bands, dtype, tile and codec."""

    bands: int
    dtype: np.dtype
    tile: tuple[int, int]
    codec: str


def _ifd_tags(
    level: int,
    shape: tuple[int, int],
    samples: Samples,
    offsets: np.ndarray,
    byte_counts: np.ndarray,
    bigtiff: bool,
    extra: list[_Tag],
) -> list[_Tag]:
    bands, dtype, tile, codec = samples.bands, np.dtype(samples.dtype), samples.tile, samples.codec
    sample_format = {"u": 1, "i": 2, "f": 3}[dtype.kind]
    offset_kind = LONG8 if bigtiff else LONG
    tags = [
        _tag(256, LONG, [shape[1]]),  # ImageWidth
        _tag(257, LONG, [shape[0]]),  # ImageLength
        _tag(258, SHORT, [dtype.itemsize * 8] * bands),  # BitsPerSample
        _tag(259, SHORT, [COMPRESSION_TAGS[codec]]),
        _tag(262, SHORT, [1]),  # PhotometricInterpretation: min is black
        _tag(277, SHORT, [bands]),  # SamplesPerPixel
        _tag(284, SHORT, [2 if bands > 1 else 1]),  # PlanarConfiguration: bands one after another
        _tag(322, LONG, [tile[1]]),  # TileWidth
        _tag(323, LONG, [tile[0]]),  # TileLength
        _tag(324, offset_kind, offsets),  # TileOffsets
        _tag(325, offset_kind, byte_counts),  # TileByteCounts
        _tag(339, SHORT, [sample_format] * bands),  # SampleFormat
        *extra,
    ]
    if level:
        tags.append(_tag(254, LONG, [1]))  # NewSubfileType: a reduced-resolution image
    if predictor_tag(codec, dtype) > 1:
        tags.append(_tag(317, SHORT, [predictor_tag(codec, dtype)]))
    if bands > 1:
        tags.append(_tag(338, SHORT, [0] * (bands - 1)))  # ExtraSamples: unspecified, as GDAL writes
    return sorted(tags, key=lambda t: t.code)


def _even(n: int) -> int:
    return n + n % 2


def _ifd_size(tags: list[_Tag], bigtiff: bool) -> int:
    """Bytes of an IFD with the values that do not fit in its entries right after it."""
    entry, inline, count = (20, 8, 8) if bigtiff else (12, 4, 2)
    size = count + entry * len(tags) + (8 if bigtiff else 4)
    return _even(size) + sum(_even(len(t.data)) for t in tags if len(t.data) > inline)


def _encode_ifd(tags: list[_Tag], position: int, following: int, bigtiff: bool) -> bytes:
    """An IFD at ``position`` whose next-IFD pointer is ``following`` (0: the last)."""
    entry, inline, count, pointer = (20, 8, "Q", "Q") if bigtiff else (12, 4, "H", "I")
    head = struct.pack("<" + count, len(tags))
    values = bytearray()
    outside = position + _even(len(head) + entry * len(tags) + struct.calcsize(pointer))
    entries = bytearray()
    for tag in tags:
        if len(tag.data) <= inline:
            field = tag.data.ljust(inline, b"\0")
        else:
            field = struct.pack("<" + pointer, outside + len(values))
            values += tag.data + b"\0" * (len(tag.data) % 2)
        entries += struct.pack("<HH" + pointer, tag.code, tag.kind, tag.count) + field
    block = head + entries + struct.pack("<" + pointer, following)
    return block + b"\0" * (len(block) % 2) + values


def write(
    path: Path,
    levels: Sequence[Level],
    samples: Samples,
    main_tags: list[_Tag],
    overview_tags: list[_Tag],
    bigtiff: bool | None = None,
) -> bool:
    """Write the COG at ``path`` from staged ``levels`` (full resolution first); ``main_tags``
    go in the full-resolution IFD, ``overview_tags`` in the others. Returns whether it is a
    BigTIFF (``bigtiff=None``: only when a classic TIFF cannot hold it)."""

    def all_tags(big: bool, offsets: list[np.ndarray]) -> list[list[_Tag]]:
        extra = [main_tags, *[overview_tags] * (len(levels) - 1)]
        return [
            _ifd_tags(k, level.shape, samples, offsets[k], level.byte_counts, big, extra[k])
            for k, level in enumerate(levels)
        ]

    def layout(big: bool) -> tuple[list[list[_Tag]], list[int], int]:
        """The tags, where each IFD starts, and where the tile data starts."""
        placeholder = [np.zeros(level.byte_counts.size, np.uint64) for level in levels]
        starts, position = [], 16 if big else 8
        for tags in all_tags(big, placeholder):
            starts.append(position)
            position += _ifd_size(tags, big)
        data_start = position
        offsets: list[np.ndarray] = [np.empty(0, np.uint64)] * len(levels)
        for k in reversed(range(len(levels))):  # the smallest overview's tiles first
            counts = levels[k].byte_counts.astype(np.uint64)
            offsets[k] = position + np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.uint64)
            position += levels[k].nbytes
        return all_tags(big, offsets), starts, data_start

    if bigtiff is None:
        _, _, data_start = layout(False)
        bigtiff = bigtiff_needed(data_start, sum(level.nbytes for level in levels))
    tags, starts, data_start = layout(bigtiff)
    if not bigtiff and bigtiff_needed(data_start, sum(level.nbytes for level in levels)):
        raise ValueError("a classic TIFF cannot hold this COG: its offsets pass 4 GiB")
    with open(path, "wb") as out:
        out.write(b"II+\0" + struct.pack("<HHQ", 8, 0, 16) if bigtiff else b"II*\0" + struct.pack("<I", 8))
        for k, ifd in enumerate(tags):
            following = starts[k + 1] if k + 1 < len(starts) else 0
            out.write(_encode_ifd(ifd, starts[k], following, bigtiff))
        assert out.tell() == data_start, (out.tell(), data_start)
        for level in reversed(levels):
            _copy_tiles(level, out)
        assert out.tell() == data_start + sum(level.nbytes for level in levels)
    return bigtiff


def _copy_tiles(level: Level, out: BinaryIO) -> None:
    """A level's staged tiles into ``out`` in TIFF order; tiles staged back to back in that
    order are copied together, up to ``_COPY_BYTES`` at a time."""
    ends = level.positions + level.byte_counts
    breaks = np.flatnonzero(level.positions[1:] != ends[:-1]) + 1  # where a run of tiles ends
    with open(level.path, "rb") as source:
        for first, last in zip([0, *breaks], [*breaks, level.positions.size], strict=True):
            if first == last:
                continue
            source.seek(int(level.positions[first]))
            remaining = int(ends[last - 1] - level.positions[first])
            while remaining:
                data = source.read(min(remaining, _COPY_BYTES))
                if not data:
                    raise ValueError(f"{level.path}: staged tiles end early")
                out.write(data)
                remaining -= len(data)


def tile_count(shape: tuple[int, int], tile: tuple[int, int], bands: int) -> int:
    rows, columns = tiles_across(shape, tile)
    return bands * rows * columns


def nodata_value(geo: GeoInfo | None) -> float | None:
    """The output's GDAL nodata as a number (NaN included), or None when it has none."""
    if geo is None or geo.nodata is None:
        return None
    try:
        return float(geo.nodata)
    except ValueError:  # not a number: GDAL would not use it either
        return None
