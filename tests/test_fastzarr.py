"""The direct chunk decoder: either it refuses a layout (reads go through zarr) or every chunk
it decodes equals zarr's own read; and the public reader equals zarr whichever path it takes."""

from __future__ import annotations

import itertools
import os
import tempfile
import types
import warnings
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, TransposeCodec, ZstdCodec

from convpipe.io.fastzarr import chunk_decoder
from convpipe.io.inputs import InputSpec, open_input

SHAPE, CHUNKS = (11, 9), (4, 3)  # edge chunks along both axes

V3_COMPRESSORS: dict[str, Any] = {
    "blosc": BloscCodec(),
    "zstd": ZstdCodec(),
    "gzip": GzipCodec(),
    "none": None,
}
V2_COMPRESSORS: dict[str, Any] = {
    "blosc": numcodecs.Blosc(),
    "zstd": numcodecs.Zstd(),
    "gzip": numcodecs.GZip(),
    "none": None,
}
DTYPES = ["uint8", "int16", "float32", "float64"]

# name: (create_array keyword arguments, whether the decoder claims the layout)
LAYOUTS: dict[str, tuple[dict[str, Any], bool]] = {
    "v3-default": ({}, True),
    "v3-default-dot": ({"chunk_key_encoding": {"name": "default", "separator": "."}}, True),
    "v3-v2keys-slash": ({"chunk_key_encoding": {"name": "v2", "separator": "/"}}, True),
    "v3-v2keys-dot": ({"chunk_key_encoding": {"name": "v2", "separator": "."}}, True),
    "v3-config-order-F": ({"order": "F"}, True),  # v3 stores C order whatever the config
    "v2-dot": ({"zarr_format": 2}, True),
    "v2-slash": ({"zarr_format": 2, "chunk_key_encoding": {"name": "v2", "separator": "/"}}, True),
    "v2-order-F": ({"zarr_format": 2, "order": "F"}, False),
    "v2-delta-filter": ({"zarr_format": 2, "filters": [numcodecs.Delta(dtype="int16")]}, False),
    "v2-big-endian": ({"zarr_format": 2, "dtype": ">i2"}, False),
    "v2-fill-7": ({"zarr_format": 2, "fill_value": 7}, True),
    "v2-fill-none": ({"zarr_format": 2, "fill_value": None}, True),
    "v2-lz4": ({"zarr_format": 2, "compressors": numcodecs.LZ4()}, True),
    "v3-fill-7": ({"fill_value": 7}, True),
    "v3-big-endian": ({"serializer": BytesCodec(endian="big")}, False),
    "v3-sharding": ({"shards": (8, 6)}, False),
    "v3-transpose": ({"filters": [TransposeCodec(order=(1, 0))]}, False),
    "v3-crc32c": ({"compressors": [ZstdCodec(), Crc32cCodec()]}, False),
}


def make(path: Path, shape=SHAPE, chunks=CHUNKS, dtype: str = "int16", seed: int = 0, **kwargs: Any) -> zarr.Array:
    """An array whose chunks partly never get written (fill value), then reopened read-only."""
    kwargs.setdefault("dtype", dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's warnings about v2 codecs and unstable specs
        array = zarr.create_array(str(path), shape=shape, chunks=chunks, **kwargs)
        rng = np.random.default_rng(seed)
        dt = np.dtype(array.dtype)
        if dt.kind == "f":
            data = rng.normal(0, 1000, size=shape).astype(dt)
        else:
            info = np.iinfo(dt)
            data = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dt)
        # Leave the first chunk along each axis unwritten: those chunks hold the fill value.
        written = tuple(slice(min(c, n - 1), n) for c, n in zip(chunks, shape, strict=True))
        array[written] = data[written]
        return zarr.open_array(str(path), mode="r")


def assert_chunks_match(array: zarr.Array) -> None:
    files = chunk_decoder(array)
    assert files is not None
    shape, chunks = array.shape, array.chunks
    grid = [range(-(-n // c)) for n, c in zip(shape, chunks, strict=True)]
    for index in itertools.product(*grid):
        region = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, chunks, shape, strict=True))
        decoded, signature = files.decode(index)
        expected = array[region]
        assert decoded.dtype == expected.dtype
        assert decoded.shape == expected.shape, index  # an edge chunk is cropped
        np.testing.assert_array_equal(decoded, expected)
        assert signature == files.signature(index)


def random_boxes(shape: tuple[int, ...], count: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        box = []
        for n in shape:
            a, b = sorted(rng.integers(0, n + 1, size=2))
            box.append(slice(int(a), int(max(b, a + 1))) if a < n else slice(n - 1, n))
        yield tuple(box)


def assert_reader_matches(path: Path, boxes: int = 25, seed: int = 0) -> None:
    expected = zarr.open_array(str(path), mode="r")
    for cache_bytes in (0, 10_000):
        reader = open_input(InputSpec(str(path), cache_bytes=cache_bytes))
        for box in random_boxes(reader.shape, boxes, seed):
            indices = [np.arange(s.start, s.stop) for s in box]
            np.testing.assert_array_equal(reader.read(indices), expected[box], err_msg=str(box))
        # Non-contiguous indices (the far side of a wrap border): orthogonal indexing.
        rng = np.random.default_rng(seed)
        for _ in range(5):
            indices = [np.unique(rng.integers(0, n, size=max(1, n // 2))) for n in reader.shape]
            np.testing.assert_array_equal(reader.read(indices), expected.oindex[tuple(indices)])


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout(tmp_path: Path, name: str) -> None:
    kwargs, claimed = LAYOUTS[name]
    array = make(tmp_path / "a.zarr", **kwargs)
    if claimed:
        assert_chunks_match(array)
    else:
        assert chunk_decoder(array) is None
    assert_reader_matches(tmp_path / "a.zarr")


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("compressor", list(V3_COMPRESSORS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes_and_compressors(tmp_path: Path, fmt: int, compressor: str, dtype: str) -> None:
    codec = (V3_COMPRESSORS if fmt == 3 else V2_COMPRESSORS)[compressor]
    array = make(tmp_path / "a.zarr", dtype=dtype, zarr_format=fmt, compressors=codec)
    assert_chunks_match(array)
    assert_reader_matches(tmp_path / "a.zarr", boxes=10)


@pytest.mark.parametrize("fmt", [2, 3])
def test_nonzero_fill_value_for_missing_chunks(tmp_path: Path, fmt: int) -> None:
    path = tmp_path / "a.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        array = zarr.create_array(
            str(path), shape=SHAPE, chunks=CHUNKS, dtype="float32", fill_value=-2.5, zarr_format=fmt
        )
    array[8:, 6:] = 1.0  # one edge chunk written; all others missing
    array = zarr.open_array(str(path), mode="r")
    files = chunk_decoder(array)
    assert files is not None
    missing, signature = files.decode((0, 0))
    assert signature is None and files.signature((0, 0)) is None
    np.testing.assert_array_equal(missing, np.full(CHUNKS, -2.5, dtype="float32"))
    edge, _ = files.decode((2, 2))  # rows 8:11, columns 6:9
    assert edge.shape == (3, 3)
    np.testing.assert_array_equal(edge, np.ones((3, 3), dtype="float32"))
    assert_chunks_match(array)
    assert_reader_matches(path)


@pytest.mark.parametrize("fmt", [2, 3])
def test_nan_fill_value(tmp_path: Path, fmt: int) -> None:
    array = make(tmp_path / "a.zarr", dtype="float64", fill_value=float("nan"), zarr_format=fmt)
    assert np.isnan(chunk_decoder(array).decode((0, 0))[0]).all()
    assert_chunks_match(array)
    assert_reader_matches(tmp_path / "a.zarr")


def test_array_inside_a_group(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    array = group.create_array("sub/arr", shape=SHAPE, chunks=CHUNKS, dtype="uint16")
    array[...] = np.arange(np.prod(SHAPE)).reshape(SHAPE)
    assert_chunks_match(zarr.open_group(str(tmp_path / "g.zarr"), mode="r")["sub/arr"])


def test_memory_store_is_not_claimed() -> None:
    array = zarr.create_array(zarr.storage.MemoryStore(), shape=SHAPE, chunks=CHUNKS, dtype="int16")
    assert chunk_decoder(array) is None


class _Override:
    """An array whose metadata differs from the real one in a few fields."""

    def __init__(self, array: zarr.Array, **meta: Any) -> None:
        self._array = array
        fields = {name: getattr(array.metadata, name) for name in dir(array.metadata) if not name.startswith("__")}
        self.metadata = types.SimpleNamespace(**{**fields, **meta})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._array, name)


def test_irregular_grid_and_storage_transformers_are_not_claimed(tmp_path: Path) -> None:
    array = make(tmp_path / "a.zarr")
    assert chunk_decoder(_Override(array)) is not None  # the override itself changes nothing

    class RectilinearChunkGrid:
        chunk_shape = CHUNKS

    assert chunk_decoder(_Override(array, chunk_grid=RectilinearChunkGrid())) is None
    assert chunk_decoder(_Override(array, storage_transformers=({"name": "x"},))) is None
    assert chunk_decoder(_Override(array, zarr_format=4)) is None


def test_unsupported_dtypes_are_not_claimed(tmp_path: Path) -> None:
    for i, dtype in enumerate(["complex64", "datetime64[s]"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            array = zarr.create_array(str(tmp_path / f"{i}.zarr"), shape=SHAPE, chunks=CHUNKS, dtype=dtype)
        assert chunk_decoder(array) is None


def test_truncated_chunk_is_an_error(tmp_path: Path) -> None:
    array = make(tmp_path / "a.zarr", compressors=None)
    chunk_file = next(p for p in (tmp_path / "a.zarr").rglob("*") if p.is_file() and p.name[0].isdigit())
    chunk_file.write_bytes(chunk_file.read_bytes()[:-2])
    files = chunk_decoder(array)
    with pytest.raises(ValueError, match="decodes to"):
        for index in itertools.product(*(range(-(-n // c)) for n, c in zip(SHAPE, CHUNKS, strict=True))):
            files.decode(index)


def test_a_rewritten_chunk_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"
    make(path)
    reader = open_input(InputSpec(str(path), cache_bytes=1 << 20))
    indices = [np.arange(0, n) for n in SHAPE]
    first = reader.read(indices)
    writable = zarr.open_array(str(path), mode="r+")
    writable[4:8, 3:6] = writable[4:8, 3:6] + 1  # same size, new bytes
    chunk_file = next(p for p in path.rglob("*") if p.is_file() and p.parts[-2:] in (("1", "1"), ("c", "1")))
    stat = os.stat(chunk_file)
    os.utime(chunk_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # coarse clocks
    second = reader.read(indices)
    np.testing.assert_array_equal(second, zarr.open_array(str(path), mode="r")[...])
    assert (second != first).any()


layouts = st.sampled_from(
    [
        {"zarr_format": 3},
        {"zarr_format": 3, "chunk_key_encoding": {"name": "default", "separator": "."}},
        {"zarr_format": 2},
        {"zarr_format": 2, "chunk_key_encoding": {"name": "v2", "separator": "/"}},
        {"zarr_format": 2, "order": "F"},
        {"zarr_format": 3, "filters": [TransposeCodec(order=(1, 0))]},
        {"zarr_format": 3, "shards": "whole"},
    ]
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.lists(st.integers(1, 9), min_size=2, max_size=2).map(tuple),
    chunk_fraction=st.lists(st.integers(1, 5), min_size=2, max_size=2),
    dtype=st.sampled_from(DTYPES),
    compressor=st.sampled_from(list(V3_COMPRESSORS)),
    layout=layouts,
    fill=st.sampled_from([0, 3]),
    seed=st.integers(0, 2**16),
)
def test_random_arrays(shape, chunk_fraction, dtype, compressor, layout, fill, seed) -> None:
    chunks = tuple(min(c, n) for c, n in zip(chunk_fraction, shape, strict=True))
    kwargs = dict(layout)
    codecs = V3_COMPRESSORS if kwargs["zarr_format"] == 3 else V2_COMPRESSORS
    kwargs["compressors"] = codecs[compressor]
    if kwargs.get("shards") == "whole":
        kwargs["shards"] = tuple(c * 2 for c in chunks)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.zarr"
        array = make(path, shape=shape, chunks=chunks, dtype=dtype, seed=seed, fill_value=fill, **kwargs)
        if chunk_decoder(array) is not None:
            assert_chunks_match(array)
        assert_reader_matches(path, boxes=4, seed=seed)
