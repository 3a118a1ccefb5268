"""The order blocks run in and the chunk cache it needs: every block once, each input chunk
decoded about once, and memory that does not follow the image's width."""

from __future__ import annotations

import collections
import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from convpipe import traversal
from convpipe.config import from_dict
from convpipe.plan import Plan, bind
from convpipe.traversal import BAND_CACHE_BYTES, MAX_BAND, MIN_BAND, block_order

EDGES = [{"filter": "gaussian", "sigma": 2}, {"filter": "sharpen"}, {"filter": "sobel"}]


def plan_for(shape: tuple[int, ...], storage: tuple[int, ...], output: str = "out.zarr", **inp: Any) -> Plan:
    config = from_dict({"input": {"path": "in.zarr", **inp}, "output": {"path": output}, "pipeline": EDGES})
    return bind(config, shape, np.dtype("uint16"), storage)


@settings(max_examples=100, deadline=None)
@given(
    grid=st.lists(st.integers(1, 6), min_size=2, max_size=4),
    band=st.integers(1, 8),
    data=st.data(),
)
def test_every_block_once_band_by_band_each_band_row_major(grid: list[int], band: int, data: st.DataObject) -> None:
    ndim = len(grid)
    spatial = tuple(sorted(data.draw(st.sets(st.integers(0, ndim - 1), min_size=1, max_size=min(3, ndim)))))
    order = block_order(grid, spatial, band)
    assert sorted(order) == sorted(np.ndindex(*grid))  # every block, once
    last = spatial[-1]
    width = min(band, grid[last])
    key = [
        (
            tuple(index[d] for d in range(ndim) if d not in spatial),  # plane by plane (t, c)
            index[last] // width,  # then band by band
            tuple(index[d] for d in spatial[:-1]),  # each band row-major
            index[last],
        )
        for index in order
    ]
    assert key == sorted(key)
    assert_lower_neighbours_first(order, spatial)


def assert_lower_neighbours_first(order: list[tuple[int, ...]], spatial: tuple[int, ...]) -> None:
    """What the chunk cache counts on (io/inputs.py keeps an owned chunk's low faces only
    along x): a neighbour at no higher index along any axis has run before."""
    position = {index: n for n, index in enumerate(order)}
    for index, n in position.items():
        for offset in itertools.product((-1, 0), repeat=len(spatial)):
            earlier = list(index)
            for d, step in zip(spatial, offset, strict=True):
                earlier[d] += step
            if any(offset) and all(i >= 0 for i in earlier):
                assert position[tuple(earlier)] < n, (index, tuple(earlier))


@given(grid=st.lists(st.integers(1, 9), min_size=2, max_size=3))
def test_the_tiff_writers_orders_run_lower_neighbours_first(grid: list[int]) -> None:
    """A COG takes blocks in Z order, a GeoTIFF row by row: the cache's rule holds for both."""
    from convpipe.io.cog_output import z_order

    spatial = (len(grid) - 2, len(grid) - 1)
    assert_lower_neighbours_first(z_order(grid), spatial)
    assert_lower_neighbours_first(list(np.ndindex(*grid)), spatial)


def test_bands_are_at_most_max_band_blocks_wide_and_memory_does_not_follow_the_width() -> None:
    """16384² in 2048² chunks is one band of 8 blocks; 64 or 256 times as wide, the bands and
    the cache stay as they are. Larger chunks (float32) make narrower bands within the cap."""
    narrow = plan_for((16384, 16384), (2048, 2048))
    wide = plan_for((16384, 16384 * 64), (2048, 2048))
    wider = plan_for((16384 * 4, 16384 * 256), (2048, 2048))
    for plan in (narrow, wide, wider):
        assert traversal.band_width(plan.chunk_layout, plan.cache_bytes) == MAX_BAND == 8
    assert narrow.cache_bytes == wide.cache_bytes == wider.cache_bytes <= BAND_CACHE_BYTES * 4 // 3
    assert narrow.memory_estimate(2) == wider.memory_estimate(2)
    order = wide.block_order()
    assert order[: MAX_BAND + 1] == [(0, x) for x in range(MAX_BAND)] + [(1, 0)]
    config = from_dict({"input": {"path": "in.zarr"}, "output": {"path": "out.zarr"}, "pipeline": EDGES})
    floats = bind(config, (16384, 16384 * 64), np.dtype("float32"), (2048, 2048))
    band = traversal.band_width(floats.chunk_layout, floats.cache_bytes)
    assert MIN_BAND <= band < MAX_BAND and floats.cache_bytes <= BAND_CACHE_BYTES * 4 // 3


def test_no_whole_chunk_cache_where_it_would_not_pay() -> None:
    """A TIFF output takes blocks in its own order, a single row of blocks has no halo into a
    later row, and chunks so large that a band would be narrower than MIN_BAND blocks are
    decoded twice rather than held: strips only, in row-major order."""
    assert plan_for((16384, 16384), (2048, 2048), output="out.tif").cache_bytes == 0
    assert plan_for((2048, 16384), (2048, 2048)).cache_bytes == 0
    huge_chunks = plan_for((65536, 65536), (8192, 8192))
    assert huge_chunks.cache_bytes == 0
    grid = tuple(len(c) for c in huge_chunks.chunks)
    assert huge_chunks.block_order() == list(np.ndindex(*grid))


def test_a_volume_keeps_what_its_whole_width_needs_when_that_fits_and_else_one_and_a_half_slabs() -> None:
    """The benchmark's volume (256×2048² in 32×256² chunks, blocks two chunks deep) needs 84
    whole chunks at once in row-major order, 1.3 slabs: its cache holds them and a quarter
    more for strips, so it runs row-major. Four times as wide, not even a band of MIN_BAND
    blocks fits the cap: one and a half slabs, capped, still row-major."""
    config = from_dict({"input": {"path": "in.zarr"}, "output": {"path": "out.zarr"}, "pipeline": EDGES[:1]})
    volume = bind(config, (256, 2048, 2048), np.dtype("uint16"), (32, 256, 256))
    chunk = 32 * 256 * 256 * 2
    assert volume.chunk_layout.whole_bytes(8) == 84 * chunk  # the next slab, the next row, a column
    assert volume.cache_bytes == 84 * chunk + 28 * chunk <= traversal.MAX_CACHE_BYTES
    wide = bind(config, (256, 8192, 8192), np.dtype("uint16"), (32, 256, 256))
    assert wide.cache_bytes == traversal.MAX_CACHE_BYTES < wide.chunk_layout.whole_bytes(MIN_BAND)
    for plan in (volume, wide):
        grid = tuple(len(c) for c in plan.chunks)
        assert plan.block_order() == list(np.ndindex(*grid))


def test_a_volume_cache_counts_every_channel_chunk_a_block_spans_and_none_for_one_chunk() -> None:
    """Blocks three channel chunks deep (czyx, ``input.chunks``) hold three chunks at each
    place: three times the need of one channel, and still row-major within the cap. A volume
    stored as one chunk shares nothing between blocks: no cache."""
    chain = EDGES[:1]

    def volume(shape: tuple[int, ...], storage: tuple[int, ...], **inp: Any) -> Plan:
        config = from_dict({"input": {"path": "in.zarr", **inp}, "output": {"path": "o.zarr"}, "pipeline": chain})
        return bind(config, shape, np.dtype("uint16"), storage)

    one = volume((1, 96, 512, 512), (1, 32, 128, 128), axes="czyx", chunks=[1, 64, 128, 128])
    three = volume((3, 96, 512, 512), (1, 32, 128, 128), axes="czyx", chunks=[3, 64, 128, 128])
    need = three.chunk_layout.whole_bytes(4)  # the whole width: four blocks
    assert need == 3 * one.chunk_layout.whole_bytes(4) > 0
    assert three.cache_bytes == need + need // 3 <= traversal.MAX_CACHE_BYTES
    grid = tuple(len(c) for c in three.chunks)
    assert three.block_order() == list(np.ndindex(*grid))
    assert volume((64, 256, 256), (64, 256, 256)).cache_bytes == 0


def test_a_volume_whose_width_fits_decodes_each_chunk_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decoded: collections.Counter[tuple[int, ...]]
) -> None:
    """Blocks two chunks deep: every block's halo reads the first chunk slab of the next layer
    of blocks, which stays whole until that layer runs, and the last slab of the layer before,
    kept as strips. With the default cache, one thread: each chunk is decoded exactly once,
    and the output equals a run without a cache."""
    from convpipe.run import run

    chunk, block, grid = (16, 16, 16), (32, 16, 16), (3, 4, 4)
    shape = tuple(g * b for g, b in zip(grid, block, strict=True))
    data = np.random.default_rng(11).integers(0, 60000, shape, dtype=np.uint16)
    zarr.create_array(tmp_path / "in.zarr", shape=shape, chunks=chunk, dtype="u2")[...] = data
    chain = [{"filter": "gaussian", "sigma": 1.0}, {"filter": "sobel"}]
    document = {"input": {"path": str(tmp_path / "in.zarr"), "chunks": list(block)}, "pipeline": chain}
    config = from_dict({**document, "output": {"path": str(tmp_path / "out.zarr")}})
    assert bind(config, shape, np.dtype("uint16"), chunk).block_order() == list(np.ndindex(*grid))
    run(config, scheduler_name="threads", workers=1)
    assert len(decoded) == math.prod(-(-n // c) for n, c in zip(shape, chunk, strict=True))
    assert set(decoded.values()) == {1}, decoded.most_common(4)
    out = zarr.open_array(tmp_path / "out.zarr", mode="r")[...]
    monkeypatch.setattr(traversal, "MAX_CACHE_BYTES", 0)  # no cache: the reference run
    run(from_dict({**document, "output": {"path": str(tmp_path / "ref.zarr")}}), scheduler_name="sync")
    np.testing.assert_array_equal(out, zarr.open_array(tmp_path / "ref.zarr", mode="r")[...])


@pytest.mark.parametrize("cap", [BAND_CACHE_BYTES, None])
def test_a_run_decodes_each_chunk_once_except_along_band_edges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decoded: collections.Counter[tuple[int, ...]], cap: int | None
) -> None:
    """Through the real run (threads): blocks the size of the storage chunks, so every halo
    reads all eight neighbours. Only the chunks along a band's right edge may be decoded
    twice: bands of MAX_BAND blocks, or of MIN_BAND with a cache cap that leaves room for no
    more. The output is the same as a run without a cache, in row-major order."""
    from convpipe.run import run

    chunk, rows, columns = 64, 6, 3 * MIN_BAND
    if cap is not None:  # room for bands of MIN_BAND blocks exactly
        layout = traversal.Layout((rows * chunk, columns * chunk), (chunk,) * 2, (chunk,) * 2, (0, 1), 2)
        monkeypatch.setattr(traversal, "BAND_CACHE_BYTES", layout.whole_bytes(MIN_BAND))
    data = np.random.default_rng(7).integers(0, 60000, (rows * chunk, columns * chunk), dtype=np.uint16)
    zarr.create_array(tmp_path / "in.zarr", shape=data.shape, chunks=(chunk, chunk), dtype="u2")[...] = data
    document = {"input": {"path": str(tmp_path / "in.zarr"), "chunks": [chunk, chunk]}, "pipeline": EDGES}
    run(from_dict({**document, "output": {"path": str(tmp_path / "out.zarr")}}), scheduler_name="threads", workers=2)
    trial = {(0, 0), (0, 1), (1, 0), (1, 1)}  # the first block is computed once before the run
    twice = {index for index, count in decoded.items() if count - (index in trial) > 1}
    assert len(decoded) == rows * columns and max(decoded.values()) <= 2, decoded.most_common(4)
    band = MIN_BAND if cap is not None else MAX_BAND
    edges = {(r, c) for r in range(rows) for c in range(band, columns, band)}
    assert twice <= edges, sorted(twice - edges)
    out = zarr.open_array(tmp_path / "out.zarr", mode="r")[...]
    monkeypatch.setattr(traversal, "BAND_CACHE_BYTES", 0)  # no cache, row-major: the reference run
    run(from_dict({**document, "output": {"path": str(tmp_path / "ref.zarr")}}), scheduler_name="sync")
    np.testing.assert_array_equal(out, zarr.open_array(tmp_path / "ref.zarr", mode="r")[...])
    assert math.prod(out.shape) == data.size


def test_a_volume_runs_in_bands_and_decodes_each_chunk_about_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decoded: collections.Counter[tuple[int, ...]]
) -> None:
    """A volume whose blocks are two chunks deep: its halo reads the first chunk slab of the
    next layer of blocks, which must stay whole until that layer runs. Where the cache (here
    capped at what a band of MIN_BAND blocks needs) holds that slab for such a band only,
    blocks run in such bands and just the chunks along a band's edge are decoded twice; the
    output equals a run without a cache."""
    from convpipe.run import run

    chunk, block, grid = (16, 16, 16), (32, 16, 16), (3, 4, 4 * MIN_BAND)  # strips 5 deep
    shape = tuple(g * b for g, b in zip(grid, block, strict=True))
    layout = traversal.Layout(shape, chunk, block, (0, 1, 2), 2)
    need = layout.whole_bytes(MIN_BAND)
    monkeypatch.setattr(traversal, "MAX_CACHE_BYTES", need + need // 3)
    data = np.random.default_rng(9).integers(0, 60000, shape, dtype=np.uint16)
    zarr.create_array(tmp_path / "in.zarr", shape=shape, chunks=chunk, dtype="u2")[...] = data
    chain = [{"filter": "gaussian", "sigma": 1.0}, {"filter": "sobel"}]
    document = {"input": {"path": str(tmp_path / "in.zarr"), "chunks": list(block)}, "pipeline": chain}
    run(from_dict({**document, "output": {"path": str(tmp_path / "out.zarr")}}), scheduler_name="threads", workers=2)
    chunks = math.prod(-(-n // c) for n, c in zip(shape, chunk, strict=True))
    edge = {index for index in decoded if index[2] % (MIN_BAND * block[2] // chunk[2]) == 0 and index[2]}
    twice = {index for index, count in decoded.items() if count > 1}
    assert len(decoded) == chunks and max(decoded.values()) <= 2, decoded.most_common(4)
    assert twice <= edge, sorted(twice - edge)
    out = zarr.open_array(tmp_path / "out.zarr", mode="r")[...]
    monkeypatch.setattr(traversal, "MAX_CACHE_BYTES", 0)  # no cache, row-major: the reference run
    run(from_dict({**document, "output": {"path": str(tmp_path / "ref.zarr")}}), scheduler_name="sync")
    np.testing.assert_array_equal(out, zarr.open_array(tmp_path / "ref.zarr", mode="r")[...])
