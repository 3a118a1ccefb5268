"""A TIFF in an object store: the tiles one read needs are fetched together, not one after another.

What a user sees: the samples of the local file (tiled or striped, compressed, a z stack, an
OME-TIFF pyramid level), whatever the region and however many threads read at once; the tiles
of one read asked for in one ``get_ranges`` call (concurrent requests) instead of one round trip
each; nothing kept once the reads are done. The moto server is slow, so the images are small.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import yaml
import zarr
from cli_tools import invoke
from s3server import S3Server

from convpipe.io import stores
from convpipe.io.inputs import ArrayReader, InputSpec, forget_inputs, open_input

RNG = np.random.default_rng(31)
PLANE = (RNG.random((600, 520)) * 4000).astype(np.uint16)
STACK = (RNG.random((4, 150, 140)) * 4000).astype(np.uint16)
# kind: (level, region); every region crosses tile or strip borders on both sides. The plane's
# tiles and strips are larger than open_file's 64 KiB buffer, as a COG's are: without the
# prefetch each is a request of its own, one after the other.
KINDS = {
    "tiled": (0, (slice(100, 560), slice(200, 400))),
    "strips": (0, (slice(100, 400), slice(10, 500))),
    "z-stack": (0, (slice(1, 3), slice(20, 100), slice(60, 140))),
    "ome-level": (1, (slice(40, 200), slice(50, 130))),
}


def assert_same_bits(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()


def write_tiff(path: Path, kind: str) -> Path:
    if kind == "tiled":
        tifffile.imwrite(path, PLANE, tile=(256, 256), compression="zlib", predictor=True)
    elif kind == "strips":
        tifffile.imwrite(path, PLANE, rowsperstrip=128, compression="zlib")
    elif kind == "z-stack":
        tifffile.imwrite(
            path, STACK, tile=(32, 32), compression="zlib", photometric="minisblack", metadata={"axes": "ZYX"}
        )
    else:  # OME-TIFF with a 2x level in a SubIFD
        with tifffile.TiffWriter(path, ome=True) as tif:
            tif.write(PLANE, subifds=1, tile=(32, 32), compression="zlib", metadata={"axes": "YX"})
            tif.write(PLANE[::2, ::2], subfiletype=1, tile=(32, 32), compression="zlib")
    return path


def tile_ranges(path: Path, level: int, region: tuple[slice, ...]) -> set[tuple[int, int]]:
    """(start, end) of the stored tiles or strips that a region of a (z,) y, x series touches."""
    found = set()
    with tifffile.TiffFile(path) as tif:
        pages = tif.series[0].levels[level].pages
        planes = range(region[0].start, region[0].stop) if len(region) == 3 else [0]
        rows, cols = region[-2:]
        for z in planes:
            page = pages[z]
            (height, width), (_, across) = page.chunks, page.chunked
            for row in range(rows.start // height, -(-rows.stop // height)):
                for col in range(cols.start // width, -(-cols.stop // width)):
                    index = row * across + col
                    found.add((page.dataoffsets[index], page.dataoffsets[index] + page.databytecounts[index]))
    return found


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[tuple[int, int]]]]:
    """Every ranged read of an object through obstore: ("get_range", [range]) or ("get_ranges", ranges)."""
    import obstore

    seen: list[tuple[str, list[tuple[int, int]]]] = []
    lock = threading.Lock()
    real_range, real_ranges = obstore.get_range, obstore.get_ranges

    def get_range(store: Any, key: str, *, start: int, end: int | None = None, length: int | None = None) -> Any:
        with lock:
            seen.append(("get_range", [(start, end if end is not None else start + (length or 0))]))
        return real_range(store, key, start=start, end=end, length=length)

    def get_ranges(store: Any, key: str, *, starts: list[int], ends: list[int], **kwargs: Any) -> Any:
        with lock:
            seen.append(("get_ranges", list(zip(starts, ends, strict=True))))
        return real_ranges(store, key, starts=starts, ends=ends, **kwargs)

    monkeypatch.setattr(obstore, "get_range", get_range)
    monkeypatch.setattr(obstore, "get_ranges", get_ranges)
    return seen


@pytest.fixture(autouse=True)
def fresh_inputs() -> Iterator[None]:
    forget_inputs()
    yield
    forget_inputs()


def remote(s3_env: S3Server, local: Path, level: int = 0, cache_bytes: int = 0) -> ArrayReader:
    url = f"s3://{s3_env.new_bucket()}/in/{local.name}"
    stores.upload(local, stores.parse(url))
    return open_input(InputSpec(url, level=level, cache_bytes=cache_bytes))


def read(reader: ArrayReader, region: tuple[slice, ...]) -> np.ndarray:
    return reader.read([np.arange(s.start, s.stop) for s in region])


def held(reader: ArrayReader) -> int:
    """Bytes the remote file's prefetch holds now."""
    assert reader.prefetch is not None
    return int(reader.prefetch.prefetched.__self__.held)  # type: ignore[attr-defined]


def one_by_one(requests: list[tuple[str, list[tuple[int, int]]]], tiles: set[tuple[int, int]]) -> list[Any]:
    """The plain ranged reads that overlap any of the tiles."""
    return [
        (start, end)
        for name, ranges in requests
        if name == "get_range"
        for start, end in ranges
        if any(start < e and s < end for s, e in tiles)
    ]


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_remote_tiff_reads_the_samples_of_the_local_file(s3_env: S3Server, tmp_path: Path, kind: str) -> None:
    level, region = KINDS[kind]
    local = write_tiff(tmp_path / ("in.ome.tif" if kind == "ome-level" else "in.tif"), kind)
    reader = remote(s3_env, local, level)
    nearby = open_input(InputSpec(str(local), level=level))
    assert reader.prefetch is not None and nearby.prefetch is None  # local files keep the direct reads
    whole = tuple(slice(0, n) for n in nearby.shape)
    for box in (region, whole):
        assert_same_bits(read(reader, box), read(nearby, box))
    # Both sides of a wrap border at once: the indices that are not one run.
    indices = [np.r_[0 : min(n, 3), max(n - 37, 3) : n] for n in nearby.shape]
    assert_same_bits(reader.read(indices), nearby.read(indices))
    expected = tifffile.imread(local, level=level)
    assert_same_bits(read(reader, whole), expected)
    assert held(reader) == 0


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_tiles_of_one_read_are_requested_together(
    s3_env: S3Server, tmp_path: Path, requests: list[tuple[str, list[tuple[int, int]]]], kind: str
) -> None:
    level, region = KINDS[kind]
    local = write_tiff(tmp_path / ("in.ome.tif" if kind == "ome-level" else "in.tif"), kind)
    tiles = tile_ranges(local, level, region)
    assert len(tiles) >= 4
    reader = remote(s3_env, local, level)
    requests.clear()
    read(reader, region)
    together = [set(ranges) for name, ranges in requests if name == "get_ranges"]
    assert len(together) == 1 and tiles <= together[0], (tiles, requests)
    assert not one_by_one(requests, tiles), requests
    assert held(reader) == 0


def test_the_check_above_sees_tiles_read_one_by_one(
    s3_env: S3Server,
    tmp_path: Path,
    requests: list[tuple[str, list[tuple[int, int]]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the prefetch, each tile is its own request: what the test above would catch."""
    monkeypatch.setattr(stores._RangeReader, "prefetched", lambda self, ranges: contextlib.nullcontext())
    level, region = KINDS["tiled"]
    local = write_tiff(tmp_path / "in.tif", "tiled")
    reader = remote(s3_env, local, level)
    requests.clear()
    assert_same_bits(read(reader, region), PLANE[region])
    assert not [name for name, _ in requests if name == "get_ranges"]
    assert len(one_by_one(requests, tile_ranges(local, level, region))) >= 6  # a request per tile at least


def test_prefetches_stay_within_their_bound(
    s3_env: S3Server,
    tmp_path: Path,
    requests: list[tuple[str, list[tuple[int, int]]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tiles past the bound are read the plain way: the same samples, never more held."""
    level, region = KINDS["tiled"]
    local = write_tiff(tmp_path / "in.tif", "tiled")
    tiles = tile_ranges(local, level, region)
    bound = sum(sorted(end - start for start, end in tiles)[:3])  # about three tiles
    monkeypatch.setattr(stores, "PREFETCH_BYTES", bound)
    reader = remote(s3_env, local, level)
    requests.clear()
    assert_same_bits(read(reader, region), PLANE[region])
    batches = [ranges for name, ranges in requests if name == "get_ranges"]
    assert batches and all(sum(end - start for start, end in ranges) <= bound for ranges in batches)
    assert one_by_one(requests, tiles)  # the rest, one by one
    assert held(reader) == 0


@pytest.mark.parametrize("cache_bytes", [0, 1 << 20])
def test_threads_reading_overlapping_regions_get_exact_samples(
    s3_env: S3Server, tmp_path: Path, requests: list[tuple[str, list[tuple[int, int]]]], cache_bytes: int
) -> None:
    """Blocks read at once through the one open file, their halos sharing tiles."""
    local = write_tiff(tmp_path / "in.tif", "z-stack")
    reader = remote(s3_env, local, cache_bytes=cache_bytes)
    rng = np.random.default_rng(cache_bytes)
    regions = []
    for _ in range(24):
        z = int(rng.integers(0, 3))
        y, x = (int(v) for v in rng.integers(0, 90, 2))
        regions.append((slice(z, z + 2), slice(y, y + 60), slice(x, x + 50)))
    requests.clear()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda box: read(reader, box), regions))
    for box, got in zip(regions, results, strict=True):
        assert_same_bits(got, STACK[box])
    assert sum(name == "get_ranges" for name, _ in requests) >= 2
    assert held(reader) == 0


def test_a_run_on_a_remote_compressed_z_stack_gives_the_bits_of_the_local_run(
    s3_env: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], requests: list[Any]
) -> None:
    local = write_tiff(tmp_path / "in.tif", "z-stack")
    url = f"s3://{s3_env.new_bucket()}/in/stack.tif"
    stores.upload(local, stores.parse(url))
    pipeline = [{"filter": "gaussian", "sigma": 1.0}, {"filter": "sobel"}]
    for name, source in (("ref", local), ("run", url)):
        config = tmp_path / f"{name}.yaml"
        data = {
            "input": {"path": str(source), "chunks": [2, 48, 48]},
            "output": {"path": str(tmp_path / f"{name}.zarr")},
            "pipeline": pipeline,
        }
        config.write_text(yaml.safe_dump(data))
        code, _, err = invoke(capsys, "run", config, "--quiet")
        assert code == 0, err
    ran, ref = (np.asarray(zarr.open_array(str(tmp_path / f"{name}.zarr"), mode="r")[...]) for name in ("run", "ref"))
    assert_same_bits(ran, ref)
    assert any(name == "get_ranges" for name, _ in requests)


def test_reads_in_and_across_prefetched_ranges_give_the_object_bytes(s3_env: S3Server, tmp_path: Path) -> None:
    """Ranges nested, overlapping, shared by two holders, read from any position: never other bytes."""
    payload = np.random.default_rng(8).integers(0, 255, 300_000, dtype=np.uint8).tobytes()
    (tmp_path / "blob.tif").write_bytes(payload)
    location = stores.parse(f"s3://{s3_env.new_bucket()}/blob.tif")
    stores.upload(tmp_path / "blob.tif", location)
    rng = np.random.default_rng(9)
    with stores.open_file(location) as fh:
        prefetched = stores.prefetcher(fh)
        assert prefetched is not None
        raw = prefetched.__self__  # type: ignore[attr-defined]
        outer = [(1000, 90_000), (50_000, 70_000), (200_000, 300_000), (-5, 10), (299_000, 300_001)]
        inner = [(60_000, 160_000), (1000, 90_000), (250_000, 260_000)]
        with prefetched(outer), prefetched(inner):
            assert 0 < raw.held <= stores.PREFETCH_BYTES
            for _ in range(60):
                start = int(rng.integers(0, len(payload)))
                size = int(rng.choice([1, 100, 5000, 70_000, 150_000]))
                fh.seek(start)
                assert fh.read(size) == payload[start : start + size], (start, size)
        assert raw.held == 0
        fh.seek(123)
        assert fh.read(1000) == payload[123:1123]
