"""Decode the storage chunks of a local Zarr array straight from their files.

Why: zarr's read of one chunk costs two to three times its decompression (event-loop hops and
buffer copies: 1.56 ms against 0.55 ms for a 512x512 uint16 zstd chunk, 6.9 against 3.5 ms for
32x256x256), and a run decodes every chunk of a huge image at least once.

Claimed layouts ("the plain layout"): a ``LocalStore`` directory, a regular chunk grid, C
order, native little-endian bool, integer or float samples, no filters; Zarr v3 with ``bytes``
as the first codec (no sharding, no transpose) then only zstd, blosc or gzip (or nothing), with
any chunk key encoding; Zarr v2 with either chunk key separator and any numcodecs compressor
(or none). A missing chunk file is the fill value; edge chunks are cropped to the array.

Everything else (shards, filters, transposes, order F, big-endian, TIFF, remote stores, other
zarr versions) makes ``chunk_decoder`` return None and reads go through zarr.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = ["ChunkFiles", "chunk_decoder"]


class ChunkFiles(NamedTuple):
    """``decode(index)``: a chunk and its file's signature; ``signature(index)``: that alone
    (None: no file, the fill value)."""

    decode: Callable[[tuple[int, ...]], tuple[np.ndarray, Any]]
    signature: Callable[[tuple[int, ...]], Any]


def chunk_decoder(array: Any) -> ChunkFiles | None:
    """Decode the storage chunks of a local Zarr array straight from their files, or None.

    zarr's read of one chunk costs two to three times its decompression (event-loop hops and
    buffer copies: 1.56 ms against 0.55 ms for a 512x512 uint16 zstd chunk, 6.9 against 3.5 ms
    for 32x256x256). Only the plain layout is decoded here: a directory store, a regular chunk
    grid, C order, native byte order, compressed by zstd, blosc or gzip (or not at all). Anything
    else (shards, filters, TIFF, remote stores) returns None and reads go through zarr.
    """
    try:
        import numcodecs
        from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ZstdCodec
        from zarr.storage import LocalStore

        store = array.store_path.store
        meta = array.metadata
        dtype = np.dtype(array.dtype)
        if not isinstance(store, LocalStore) or not dtype.isnative or sys.byteorder != "little":
            return None
        if dtype.kind not in "biuf" or dtype.itemsize > 8:
            return None
        decoders: list[Any] = []
        if meta.zarr_format == 3:
            if type(meta.chunk_grid).__name__ != "RegularChunkGrid" or meta.storage_transformers:
                return None
            first, *rest = meta.codecs
            if not isinstance(first, BytesCodec) or (first.endian is not None and first.endian.value != "little"):
                return None
            known = {ZstdCodec: numcodecs.Zstd, BloscCodec: numcodecs.Blosc, GzipCodec: numcodecs.GZip}
            for codec in rest:
                if type(codec) not in known:
                    return None
                decoders.append(known[type(codec)]())
            chunk_shape = tuple(int(c) for c in meta.chunk_grid.chunk_shape)
        elif meta.zarr_format == 2:
            if meta.filters or meta.order != "C":
                return None
            if meta.compressor is not None:
                decoders.append(meta.compressor)
            chunk_shape = tuple(int(c) for c in meta.chunks)
        else:
            return None
        root = str(Path(store.root) / array.store_path.path)
        fill = array.fill_value if array.fill_value is not None else 0
        shape = tuple(int(n) for n in array.shape)
        encode_key = meta.encode_chunk_key
    except Exception:  # another zarr version or layout: zarr reads it
        return None
    size = math.prod(chunk_shape) * dtype.itemsize
    local = threading.local()  # each thread's buffer for the compressed bytes, reused

    def read(path: str) -> tuple[memoryview, Any]:
        fd = os.open(path, os.O_RDONLY)
        try:
            stat = os.fstat(fd)
            length = stat.st_size
            buffer = getattr(local, "buffer", None)
            if buffer is None or len(buffer) < length:
                buffer = local.buffer = memoryview(bytearray(length))
            done = 0
            while done < length:
                got = os.readv(fd, [buffer[done:length]])
                if got == 0:
                    raise OSError(f"{path} ended after {done} of {length} bytes")
                done += got
            return buffer[:length], (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        finally:
            os.close(fd)

    @functools.lru_cache(maxsize=4096)
    def path_of(index: tuple[int, ...]) -> str:
        return os.path.join(root, encode_key(index))

    def signature(index: tuple[int, ...]) -> Any:
        try:
            stat = os.stat(path_of(index))
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def decode(index: tuple[int, ...]) -> tuple[np.ndarray, Any]:
        crop = tuple(slice(0, min(c, n - i * c)) for i, c, n in zip(index, chunk_shape, shape, strict=True))
        try:
            data, stamp = read(path_of(index))
        except FileNotFoundError:  # never written: the fill value
            return np.full(chunk_shape, fill, dtype=dtype)[crop], None
        compressed = data
        for decoder in reversed(decoders):
            data = decoder.decode(data)
        chunk = np.frombuffer(data, dtype=np.uint8)
        if np.may_share_memory(chunk, np.frombuffer(compressed, dtype=np.uint8)):
            chunk = chunk.copy()  # stored uncompressed: the bytes are the thread's buffer
        if chunk.size != size:
            raise ValueError(f"chunk {index} decodes to {chunk.size} bytes, expected {size}")
        return chunk.view(dtype).reshape(chunk_shape)[crop], stamp

    return ChunkFiles(decode, signature)
