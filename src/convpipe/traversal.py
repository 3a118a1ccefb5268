"""The order blocks run in, and the cache of decoded input chunks that order needs.

A block reads beyond its edges by the chain's halo, into storage chunks its neighbours hold.
A compressed chunk is decoded whole even for a strip of it, so each chunk should be decoded
once: kept whole from the first halo that reads it until the block holding it has run, then
only as the strips along its faces (``io/cache.py``). In row-major order that means a row of
chunks across the whole image. So a 2-D image runs in bands across its last axis (x), each
band row by row, at most ``MAX_BAND`` blocks wide: the cache is then the same for every
image at least that wide, and a chunk is decoded twice only along a band's edge. Volumes
keep the same for the widest band whose chunks fit ``MAX_CACHE_BYTES``, the whole width if
they can (bands run layer by layer), else one and a half chunk slabs in row-major order
(README, "Performance").
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "BAND_CACHE_BYTES",
    "MAX_BAND",
    "MAX_CACHE_BYTES",
    "MIN_BAND",
    "band_width",
    "block_order",
    "default_cache",
    "remote_cache",
]

#: The chunk cache never grows beyond this, however wide the image: memory stays bounded.
MAX_CACHE_BYTES = 512 * 2**20

#: A 2-D image's whole-chunk cache stays within this; wider images run in bands.
BAND_CACHE_BYTES = 128 * 2**20

#: Bands are at most this many blocks wide, so that the cache, like the rest of a run's
#: memory, is the same for every image at least this wide; a band's edge decodes one chunk
#: column in this many (times the chunks per block) twice.
MAX_BAND = 8

#: Bands narrower than this many blocks decode too many chunks twice (one column in this
#: many) to be worth a cache: such inputs keep only strips, in row-major order.
MIN_BAND = 4


class Layout:
    """The block grid over the input's storage chunks: what the cache arithmetic needs."""

    def __init__(
        self,
        shape: Sequence[int],
        chunks: Sequence[int],
        block: Sequence[int],
        spatial: Sequence[int],
        itemsize: int,
    ) -> None:
        self.shape, self.chunks, self.itemsize = tuple(shape), tuple(chunks), itemsize
        self.spatial = tuple(spatial)
        self.grid = tuple(-(-n // b) for n, b in zip(shape, block, strict=True))
        # Chunks a block spans along each axis (a block need not start on a chunk boundary).
        self.per_block = tuple(-(-b // c) + (b % c != 0) for b, c in zip(block, chunks, strict=True))
        self.chunk_bytes = math.prod(min(c, n) for c, n in zip(chunks, shape, strict=True)) * itemsize
        # A block spanning several chunks along t or c holds that many at each spatial place.
        self.planes = math.prod(n for d, n in enumerate(self.per_block) if d not in self.spatial)

    def whole_bytes(self, band: int) -> int:
        """The whole chunks alive at once in a band ``band`` blocks wide.

        2-D: across the band and one beyond each side, the first chunk row of the next row of
        blocks (decoded by the halos of this row) or of this row (not yet run); the chunk
        column right of a block (decoded by its halo, run next), twice for the block running
        beside it. 3-D: the same, with the first chunk slab of the next layer of blocks
        across the band's whole height in place of the row, the next row's chunks as deep as
        a block, and the column beyond the band's edge; never more chunks than the image has
        (a band as wide as the image has no column beyond it), so that a volume whose cache
        holds the whole width runs row-major rather than in bands, which decode their edges
        twice. Each place counts as many chunks as a block spans along t and c.
        """
        across = (band + 2) * self.per_block[self.spatial[-1]]
        y = self.per_block[self.spatial[-2]]
        if len(self.spatial) == 2:
            return (across + 2 * y) * self.planes * self.chunk_bytes
        z = self.per_block[self.spatial[-3]]
        columns, image_rows = (-(-self.shape[d] // self.chunks[d]) for d in self.spatial[-1:-3:-1])
        across = min(across, columns)
        rows = min(self.grid[self.spatial[-2]] * y + 2, image_rows)
        # and the chunks just beyond the band's right edge, decoded by its halos, run in the
        # next band: a column of them as deep as a layer
        beyond = z * rows if band < self.grid[self.spatial[-1]] else 0
        return (across * rows + z * across + 2 * z * y + beyond) * self.planes * self.chunk_bytes


def _whole(cache_bytes: int) -> int:
    """The part of a cache kept for whole chunks (``io/cache.py`` keeps a quarter for strips)."""
    return cache_bytes - cache_bytes // 4


def _with_strips(whole: int) -> int:
    """The cache whose whole-chunk part (``_whole``) is ``whole``: a quarter more for strips."""
    return whole + whole // 3


def default_cache(layout: Layout, streamed: bool) -> int:
    """Room for the decoded input chunks that neighbouring blocks' halos share.

    2-D: the whole chunks of a band as wide as the image, up to ``MAX_BAND`` blocks and
    ``BAND_CACHE_BYTES`` (none when that leaves a band narrower than ``MIN_BAND`` blocks, or
    when the output is a TIFF, whose writer takes blocks in an order of its own). Volumes: the
    same for the widest band, up to the whole width, whose chunks fit ``MAX_CACHE_BYTES``
    (``band_width`` then picks that band); when not even ``MIN_BAND`` blocks fit, one and a
    half slabs of chunks across z, capped (``remote_cache``), in row-major order. A volume's
    cache had been one and a half slabs, strips included: the benchmark's volume, which needs
    1.3 slabs whole, decoded 384 of its 512 chunks twice.
    """
    if layout.chunks == layout.shape:  # one chunk: nothing for a neighbour to share
        return 0
    if len(layout.spatial) >= 3:
        across = layout.grid[layout.spatial[-1]]
        for band in range(across, min(across, MIN_BAND) - 1, -1):
            cache = _with_strips(layout.whole_bytes(band))
            if cache <= MAX_CACHE_BYTES:
                return cache
        return remote_cache(layout.shape, layout.chunks, layout.spatial, layout.itemsize)
    if streamed or len(layout.spatial) < 2:
        return 0
    across = min(layout.grid[layout.spatial[-1]], MAX_BAND)
    if layout.grid[layout.spatial[-2]] < 2:  # one row of blocks: no halo reaches a later row
        return 0
    for band in range(across, min(across, MIN_BAND) - 1, -1):
        need = layout.whole_bytes(band)
        if need <= BAND_CACHE_BYTES:
            return _with_strips(need)
    return 0


def remote_cache(shape: Sequence[int], chunks: Sequence[int], spatial: Sequence[int], itemsize: int) -> int:
    """One and a half layers of chunks across the slowest spatial axis: what a volume's blocks
    need (row-major, a block's halo reaches back a whole slab of blocks), and what an input in
    an object store keeps in 2-D too when the output's order is not banded (there every halo
    chunk read again is another request: on 512² chunks and 2048² blocks, 56 % more GETs)."""
    if tuple(chunks) == tuple(shape) or not spatial:
        return 0
    slow = spatial[0]
    layer = chunks[slow] * math.prod(n for d, n in enumerate(shape) if d != slow) * itemsize
    return int(min(MAX_CACHE_BYTES, 1.5 * layer))


def band_width(layout: Layout, cache_bytes: int) -> int:
    """Blocks per band across x: the widest band whose whole chunks the cache holds (at most
    ``MAX_BAND`` in 2-D; the whole image without a cache, or when even ``MIN_BAND`` blocks do
    not fit, or when the whole width does: row-major)."""
    across = layout.grid[layout.spatial[-1]] if layout.spatial else 1
    if cache_bytes <= 0 or len(layout.spatial) not in (2, 3):
        return across
    whole = _whole(cache_bytes)
    widest = min(across, MAX_BAND) if len(layout.spatial) == 2 else across
    for band in range(widest, MIN_BAND - 1, -1):
        if layout.whole_bytes(band) <= whole:
            return band
    return across


def block_order(grid: Sequence[int], spatial: Sequence[int], band: int) -> list[tuple[int, ...]]:
    """Every block index once: plane by plane along the non-spatial axes (t, c), then band by
    band across the last spatial axis, each band row-major."""
    if not spatial:
        return [tuple(int(i) for i in index) for index in np.ndindex(*grid)]
    last = spatial[-1]
    band = max(1, min(band, grid[last]))
    outer = [d for d in range(len(grid)) if d not in spatial]
    inner = [d for d in spatial if d != last]
    order = []
    for plane in itertools.product(*(range(grid[d]) for d in outer)):
        for start in range(0, grid[last], band):
            for rows in itertools.product(*(range(grid[d]) for d in inner)):
                for x in range(start, min(start + band, grid[last])):
                    index = [0] * len(grid)
                    for d, i in zip(outer, plane, strict=True):
                        index[d] = i
                    for d, i in zip(inner, rows, strict=True):
                        index[d] = i
                    index[last] = x
                    order.append(tuple(index))
    return order
