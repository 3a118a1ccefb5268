"""Open TIFF and Zarr inputs lazily, read-only, and read the samples a block needs.

An ``InputSpec`` is small and picklable: every worker process reopens the input from it (and
caches the handle), so no open file travels through the task graph.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import math
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from convpipe.coords import Frame, identity
from convpipe.errors import ConfigError, RunError
from convpipe.io.geotiff import GeoInfo, read_geo
from convpipe.io.metadata import ngff_frame, tiff_frame

_SETUP = threading.Lock()  # lazily made per-reader state

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".ome.tif", ".ome.tiff")


@dataclass(frozen=True)
class InputSpec:
    """Where the input lives: a path and, inside it, which array (Zarr) or series/level (TIFF)."""

    path: str
    array: str | None = None
    series: int = 0
    level: int = 0
    cache_bytes: int = 0  # decoded chunks kept for neighbouring blocks' halos

    @property
    def is_tiff(self) -> bool:
        return self.path.lower().endswith(TIFF_SUFFIXES)


class _Budget:
    """Entries (anything with ``nbytes``) kept within ``limit`` bytes, least recently used
    evicted first; the size is kept in step with every put and pop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.entries: collections.OrderedDict[tuple[int, ...], Any] = collections.OrderedDict()

    def __contains__(self, key: tuple[int, ...]) -> bool:
        return key in self.entries

    def get(self, key: tuple[int, ...]) -> Any:
        value = self.entries.get(key)
        if value is not None:
            self.entries.move_to_end(key)
        return value

    def pop(self, key: tuple[int, ...]) -> Any:
        value = self.entries.pop(key, None)
        if value is not None:
            self.size -= value.nbytes
        return value

    def put(self, key: tuple[int, ...], value: Any) -> list[tuple[int, ...]]:
        """Keep ``value`` (not if it alone exceeds the budget); returns the keys evicted."""
        if value.nbytes > self.limit:
            return []
        self.pop(key)
        self.entries[key] = value
        self.size += value.nbytes
        evicted = []
        while self.size > self.limit and self.entries:
            gone, old = self.entries.popitem(last=False)
            self.size -= old.nbytes
            evicted.append(gone)
        return evicted


class ChunkCache:
    """Decoded storage chunks that neighbouring blocks' halos share: bounded, thread-safe.

    Two kinds of entries, least recently used evicted first, each kind within its own budget:

    - whole chunks (``limit`` bytes; the plan's cache, 0: none): a chunk decoded for a halo
      before the block that holds it entirely has run, which will need all of it;
    - edge strips (``strip_limit`` bytes): once the block holding a chunk entirely has read it,
      its neighbours only ever need the slabs along its faces as deep as the chain's halo, a
      few percent of the chunk (README, "Performance").

    A chunk being decoded by one thread is waited for, not decoded again, by another. Entries
    carry their file's signature (inode, size, modification time): a chunk rewritten since it
    was decoded (the reader outlives a run) is decoded again.
    """

    def __init__(self, limit: int, strip_limit: int | None = None) -> None:
        if strip_limit is None:  # a quarter of the budget, or STRIP_BYTES without one
            strip_limit = limit // 4 if limit else STRIP_BYTES
            limit -= strip_limit if limit else 0
        self.whole = _Budget(limit)
        self.strips = _Budget(strip_limit)
        self.signatures: dict[tuple[int, ...], Any] = {}  # of the whole chunks and strips held
        self.lock = threading.Lock()
        self.pending: dict[tuple[int, ...], threading.Event] = {}
        # How deep, per axis, blocks read beyond the chunks they hold entirely (the halo).
        self.depth: list[int] = []

    def get(self, key: tuple[int, ...]) -> np.ndarray | None:
        with self.lock:
            return self.whole.get(key)  # type: ignore[no-any-return]

    def put(self, key: tuple[int, ...], value: np.ndarray) -> None:
        with self.lock:
            self._keep(self.whole, key, value)

    def _keep(self, budget: _Budget, key: tuple[int, ...], value: Any) -> None:
        """Put into one budget; an evicted key's signature goes when neither kind holds it."""
        other = self.strips if budget is self.whole else self.whole
        for gone in budget.put(key, value):
            if gone not in other:
                self.signatures.pop(gone, None)

    def lookup(self, key: tuple[int, ...], need: tuple[slice, ...], signature: Any = None) -> np.ndarray | None:
        """The part ``need`` (chunk-local) of a chunk, from a whole chunk or one of its strips."""
        with self.lock:
            if self.signatures.get(key) != signature:
                self._drop(key)  # the chunk's file changed since: stale
                return None
            chunk = self.whole.get(key)
            if chunk is not None:
                return chunk[need]  # type: ignore[no-any-return]
            strips = self.strips.get(key)
            if strips is not None:
                return strips.part(need)  # type: ignore[no-any-return]
            return None

    def claim(
        self, key: tuple[int, ...], need: tuple[slice, ...], signature: Any = None
    ) -> tuple[np.ndarray | None, bool]:
        """``(part, False)`` if cached; ``(None, True)`` if the caller must decode the chunk
        (and then call ``done``); waits while another thread decodes it."""
        while True:
            part = self.lookup(key, need, signature)
            if part is not None:
                return part, False
            with self.lock:
                event = self.pending.get(key)
                if event is None:
                    self.pending[key] = threading.Event()
                    return None, True
            event.wait()

    def done(
        self,
        key: tuple[int, ...],
        chunk: np.ndarray | None,
        held: Sequence[tuple[bool, bool]] | None,
        signature: Any = None,
    ) -> None:
        """Store a chunk this thread decoded: whole if a block will still need all of it,
        as strips if the block holding it entirely has read it (``held``: which of its faces,
        low and high per axis, lie on that block's border, where neighbours read)."""
        with self.lock:
            if chunk is not None:
                if self.signatures.get(key) != signature:
                    self._drop(key)
                self.signatures[key] = signature
                if held is not None:
                    self.whole.pop(key)  # its owner is done with it
                    self._keep_strips(key, chunk, held)
                else:
                    self._keep(self.whole, key, chunk)
            event = self.pending.pop(key, None)
        if event is not None:
            event.set()

    def release(self, key: tuple[int, ...], held: Sequence[tuple[bool, bool]]) -> None:
        """The block holding this cached chunk entirely has read it: keep its strips only."""
        with self.lock:
            chunk = self.whole.pop(key)
            if chunk is not None:
                self._keep_strips(key, chunk, held)

    def _keep_strips(self, key: tuple[int, ...], chunk: np.ndarray, held: Sequence[tuple[bool, bool]]) -> None:
        strips = _Strips.of(chunk, self.depth, held)
        if strips is not None:
            self._keep(self.strips, key, strips)

    def _drop(self, key: tuple[int, ...]) -> None:
        self.whole.pop(key)
        self.strips.pop(key)
        self.signatures.pop(key, None)

    def saw(self, depth: Sequence[int]) -> None:
        """Record how deep a block read into chunks it does not hold (the strips' depth)."""
        with self.lock:
            if len(self.depth) != len(depth):
                self.depth = [0] * len(depth)
            self.depth = [max(a, b) for a, b in zip(self.depth, depth, strict=True)]


@dataclass(frozen=True)
class _Strips:
    """Copies of the slabs along some of a chunk's faces, ``depth[d]`` deep across axis ``d``."""

    shape: tuple[int, ...]
    faces: tuple[tuple[int, np.ndarray | None, np.ndarray | None], ...]

    @staticmethod
    def of(chunk: np.ndarray, depth: Sequence[int], outward: Sequence[tuple[bool, bool]]) -> _Strips | None:
        """The strips along the faces ``outward`` marks (low, high per axis), or None."""
        if len(depth) != chunk.ndim:
            return None
        faces: list[tuple[int, np.ndarray | None, np.ndarray | None]] = []
        for axis, (n, k, (low, high)) in enumerate(zip(chunk.shape, depth, outward, strict=True)):
            if k <= 0 or 2 * k >= n:
                low = high = False  # no halo across this axis, or the strips would be the chunk
            before = (slice(None),) * axis
            faces.append(
                (
                    k,
                    chunk[(*before, slice(0, k))].copy() if low else None,
                    chunk[(*before, slice(n - k, n))].copy() if high else None,
                )
            )
        if all(low is None and high is None for _, low, high in faces):
            return None
        return _Strips(chunk.shape, tuple(faces))

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for _, low, high in self.faces for f in (low, high) if f is not None)

    def part(self, need: tuple[slice, ...]) -> np.ndarray | None:
        for axis, (k, low, high) in enumerate(self.faces):
            s, n = need[axis], self.shape[axis]
            if low is not None and s.stop <= k:
                return low[need]
            if high is not None and s.start >= n - k:
                shifted = (*need[:axis], slice(s.start - (n - k), s.stop - (n - k)), *need[axis + 1 :])
                return high[shifted]
        return None


#: Edge strips kept when the plan has no chunk cache (2-D): a row of blocks' worth of strips
#: is a few MiB at most.
STRIP_BYTES = 8 * 2**20


class _ChunkFiles(NamedTuple):
    """``decode(index)``: a chunk and its file's signature; ``signature(index)``: that alone
    (None: no file, the fill value)."""

    decode: Callable[[tuple[int, ...]], tuple[np.ndarray, Any]]
    signature: Callable[[tuple[int, ...]], Any]


def _chunk_decoder(array: Any) -> _ChunkFiles | None:
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

    return _ChunkFiles(decode, signature)


class ArrayReader:
    """An input array: its shape, dtype and storage chunks, and reads of index sets.

    ``read`` takes one sorted index array per axis. A contiguous one is read as a slice; the
    others (the far side of a ``wrap`` border) use orthogonal indexing, so only the storage
    chunks holding those samples are decoded.
    """

    def __init__(
        self,
        array: Any,
        description: str,
        axes: str | None = None,
        cache_bytes: int = 0,
        frame: Frame | None = None,
        kind: str = "array",
        geo: GeoInfo | None = None,
    ) -> None:
        self.array = array
        self.description = description
        self.axes = axes  # as the file names them (tczyx letters), if it does
        self.kind = kind  # "zarr", "ome-zarr", "tiff" or "array"
        self.geo = geo  # GeoTIFF georeferencing, if the input has it
        self.shape: tuple[int, ...] = tuple(int(n) for n in array.shape)
        self.dtype = np.dtype(array.dtype)
        chunks = getattr(array, "chunks", None)
        self.chunks: tuple[int, ...] = tuple(int(c) for c in chunks) if chunks else self.shape
        chunked = not isinstance(array, np.ndarray) and self.chunks != self.shape
        self.cache = ChunkCache(cache_bytes) if chunked and cache_bytes > 0 else None
        # Where each sample is, physically (identity when the file does not say).
        self.frame: Frame = frame if frame is not None and len(frame) == len(self.shape) else identity(len(self.shape))

    def _read_box(
        self, box: tuple[slice, ...], dtype: np.dtype | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Read a box chunk by chunk through the cache, into an array of ``dtype`` (or ``out``).

        A block's halo reaches into its neighbours' storage chunks; without the cache each of
        those chunks is decoded again for every block that touches it. A chunk is kept whole
        while a block that holds it entirely has yet to read it, then as the strips along its
        faces that its neighbours' halos read.
        """
        files = getattr(self, "_files", False)
        if files is False:  # decided on the first read
            files = self._files = _chunk_decoder(self.array)
        if files is None:  # zarr decodes: the chunks not cached in one read
            if self.cache is None:
                data = np.asarray(self.array[box])
                if out is not None:
                    out[...] = data
                    return out
                return data if dtype is None else data.astype(dtype, copy=False)
            grids = [range(b.start // c, (b.stop - 1) // c + 1) for b, c in zip(box, self.chunks, strict=True)]
            found = {index: self.cache.get(index) for index in itertools.product(*grids)}
            missing = [index for index, chunk in found.items() if chunk is None]
            if missing:
                # One read for the rectangle of chunks not cached (cached ones lie along its edges).
                low = [min(i[d] for i in missing) for d in range(len(box))]
                high = [max(i[d] for i in missing) + 1 for d in range(len(box))]
                region = tuple(
                    slice(lo * c, min(hi * c, n))
                    for lo, hi, c, n in zip(low, high, self.chunks, self.shape, strict=True)
                )
                data = np.asarray(self.array[region])
                for index in itertools.product(*(range(lo, hi) for lo, hi in zip(low, high, strict=True))):
                    local = tuple(
                        slice((i - lo) * c, (i - lo + 1) * c) for i, lo, c in zip(index, low, self.chunks, strict=True)
                    )
                    chunk = data[local].copy()
                    self.cache.put(index, chunk)
                    if index in found:
                        found[index] = chunk
            if out is None:
                out = np.empty(tuple(b.stop - b.start for b in box), dtype=dtype or self.dtype)
            for index, chunk in found.items():
                assert chunk is not None
                starts = [i * c for i, c in zip(index, self.chunks, strict=True)]
                source = tuple(
                    slice(max(b.start - s, 0), min(b.stop - s, n))
                    for b, s, n in zip(box, starts, chunk.shape, strict=True)
                )
                target = tuple(
                    slice(max(s - b.start, 0), max(s - b.start, 0) + (src.stop - src.start))
                    for b, s, src in zip(box, starts, source, strict=True)
                )
                out[target] = chunk[source]
            return out
        cache = self.cache
        if cache is None:
            with _SETUP:
                if self.cache is None:
                    self.cache = ChunkCache(0)
            cache = self.cache
        assert cache is not None
        if out is None:
            out = np.empty(tuple(b.stop - b.start for b in box), dtype=dtype or self.dtype)
        depth, held_starts, held_stops = [], [], []
        for b, c, n in zip(box, self.chunks, self.shape, strict=True):
            held_start, held_stop = -(-b.start // c) * c, (n if b.stop == n else b.stop // c * c)
            depth.append(max(held_start - b.start, b.stop - held_stop) if held_stop > held_start else 0)
            held_starts.append(held_start)
            held_stops.append(held_stop)
        cache.saw(depth)
        grids = [range(b.start // c, (b.stop - 1) // c + 1) for b, c in zip(box, self.chunks, strict=True)]
        for index in itertools.product(*grids):
            starts = [i * c for i, c in zip(index, self.chunks, strict=True)]
            stops = [min(s + c, n) for s, c, n in zip(starts, self.chunks, self.shape, strict=True)]
            need = tuple(
                slice(max(b.start, s) - s, min(b.stop, e) - s) for b, s, e in zip(box, starts, stops, strict=True)
            )
            target = tuple(
                slice(s + k.start - b.start, s + k.stop - b.start) for b, s, k in zip(box, starts, need, strict=True)
            )
            held = None
            if all(b.start <= s and e <= b.stop for b, s, e in zip(box, starts, stops, strict=True)):
                # The block holds this chunk entirely: neighbours read it across the block's border.
                held = [(s == lo, e == hi) for s, e, lo, hi in zip(starts, stops, held_starts, held_stops, strict=True)]
            signature = files.signature(index)
            part, mine = cache.claim(index, need, signature)
            if not mine:
                out[target] = part
                if held is not None:
                    cache.release(index, held)
                continue
            chunk = None
            try:
                chunk, signature = files.decode(index)
                out[target] = chunk[need]
            finally:
                cache.done(index, chunk, held, signature)
        return out

    def read(
        self, indices: Sequence[np.ndarray], dtype: np.dtype | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        """The samples at these indices (one sorted array per axis), converted to ``dtype``
        as they are copied out of the decoded chunks (None: the input's dtype), or into
        ``out`` (an array, or a view of one, of the indices' shape)."""
        try:
            return self._read(indices, dtype if out is None else out.dtype, out)
        except Exception as error:  # a corrupt chunk or tile, a vanished file, a failing disk
            where = ", ".join(f"{int(i[0])}:{int(i[-1]) + 1}" if len(i) else "-" for i in indices)
            raise RunError(
                f"input {self.description}: cannot read [{where}] ({type(error).__name__}: {error})"
            ) from None

    def _read(
        self, indices: Sequence[np.ndarray], dtype: np.dtype | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        selection: list[slice | np.ndarray] = []
        for index in indices:
            if len(index) and index[-1] - index[0] == len(index) - 1:
                selection.append(slice(int(index[0]), int(index[-1]) + 1))
            else:
                selection.append(np.asarray(index))
        if all(isinstance(s, slice) for s in selection) and not isinstance(self.array, np.ndarray):
            return self._read_box(tuple(selection), dtype, out)  # type: ignore[arg-type]
        if isinstance(self.array, np.ndarray):
            data = self.array
            for axis, s in enumerate(selection):
                data = data[(slice(None),) * axis + (s,)]
        else:
            data = self.array.oindex[tuple(selection)]
        data = np.asarray(data)
        if out is not None:
            out[...] = data
            return out
        return data if dtype is None else data.astype(dtype, copy=False)


def _open_zarr(spec: InputSpec) -> ArrayReader:
    import zarr

    try:
        node = zarr.open(spec.path, mode="r")
    except FileNotFoundError:
        raise RunError(f"input {spec.path}: no such file or directory") from None
    except Exception as error:
        raise RunError(f"input {spec.path}: not a readable Zarr array or group ({error})") from None
    axes = None
    frame = None
    kind = "zarr"
    if isinstance(node, zarr.Group):
        ngff = multiscales(dict(node.attrs))
        arrays = sorted(name for name, _ in node.arrays())
        name = spec.array
        if name is None and ngff is not None:
            name, axes, frame = _ngff_level(ngff[0], spec)
            kind = "ome-zarr"
        if name is None:
            if len(arrays) != 1:
                raise ConfigError(
                    f"input.array: {spec.path} is a Zarr group; name the array to read "
                    f"(it holds: {', '.join(arrays) or 'no arrays'})"
                )
            name = arrays[0]
        try:
            node = node[name]
        except KeyError:
            raise ConfigError(
                f"input.array: no array {name!r} in {spec.path} (it holds: {', '.join(arrays) or 'no arrays'})"
            ) from None
        if not isinstance(node, zarr.Array):
            raise ConfigError(f"input.array: {name!r} in {spec.path} is a group, not an array")
    elif spec.array is not None:
        raise ConfigError(f"input.array: {spec.path} is a single array, not a group; remove input.array")
    if axes is None:
        names = getattr(node.metadata, "dimension_names", None)
        axes = axis_letters(names) if names else None
    return ArrayReader(node, spec.path, axes, spec.cache_bytes, frame, kind)


def multiscales(attributes: dict[str, Any]) -> tuple[list[dict[str, Any]], str] | None:
    """OME-NGFF multiscales metadata and its version: 0.5 keeps it under ``ome``, 0.4 at the top."""
    ome = attributes.get("ome") if isinstance(attributes.get("ome"), dict) else {}
    found = ome.get("multiscales") or attributes.get("multiscales")
    if not isinstance(found, list) or not found or not isinstance(found[0], dict):
        return None
    return found, str(ome.get("version") or found[0].get("version", "?"))


def _ngff_level(multiscales: list[dict[str, Any]], spec: InputSpec) -> tuple[str, str | None, Frame | None]:
    """The array path of ``input.level`` in an OME-Zarr image, its axes and frame."""
    image = multiscales[0]
    datasets = image.get("datasets", [])
    if spec.level >= len(datasets):
        raise ConfigError(
            f"input.level: {spec.path} has {len(datasets)} levels (0 to {len(datasets) - 1}); got {spec.level}"
        )
    names = [axis.get("name") if isinstance(axis, dict) else axis for axis in image.get("axes", [])]
    try:
        frame = ngff_frame(image, spec.level)
    except ValueError as error:
        raise RunError(f"input {spec.path}: its OME-Zarr metadata for level {spec.level} is broken: {error}") from None
    return str(datasets[spec.level]["path"]), axis_letters(names), frame


def axis_letters(names: Sequence[Any]) -> str | None:
    """Axis names as convpipe's letters (t, c, z, y, x), or None if they are not all of those."""
    letters = "".join(str(n).lower() for n in names if n is not None)
    if len(letters) != len(names) or len(set(letters)) != len(letters) or any(c not in "tczyx" for c in letters):
        return None
    return letters


def _check_tiff_data(tif: Any, series: Any) -> None:
    """Every strip or tile of the series must lie inside the file: a truncated TIFF is an
    error now, not zeros in the output later."""
    size = tif.filehandle.size
    for page in series.pages:
        if page is None:
            continue
        offsets, counts = page.dataoffsets, page.databytecounts
        if not offsets or len(offsets) != len(counts):
            raise ValueError(f"page {page.index} has no image data")
        if max(o + c for o, c in zip(offsets, counts, strict=True)) > size:
            raise ValueError(f"page {page.index} points past the end of the file (truncated?)")


def _open_tiff(spec: InputSpec) -> ArrayReader:
    import tifffile
    import zarr

    tifffile_log = logging.getLogger("tifffile")
    level = tifffile_log.level
    tifffile_log.setLevel(logging.CRITICAL)  # its complaints become our one-line error
    try:
        with tifffile.TiffFile(spec.path) as tif:
            n_series = len(tif.series)
            n_levels = len(tif.series[spec.series].levels) if spec.series < n_series else 0
            axes = tif.series[spec.series].axes if spec.series < n_series else ""
            frame, geo = None, None
            if spec.series < n_series and spec.level < n_levels:
                _check_tiff_data(tif, tif.series[spec.series].levels[spec.level])
                letters = axis_letters(list(axes.replace("S", "C")))
                frame = tiff_frame(tif, spec.series, spec.level, letters)
                geo = read_geo(tif, letters, spec.series, spec.level)
                if geo is not None:
                    frame = geo.frame(frame, letters)
    except FileNotFoundError:
        raise RunError(f"input {spec.path}: no such file") from None
    except Exception as error:
        raise RunError(f"input {spec.path}: not a readable TIFF ({error})") from None
    finally:
        tifffile_log.setLevel(level)
    if spec.series >= n_series:
        raise ConfigError(f"input.series: {spec.path} has {n_series} series (0 to {n_series - 1}); got {spec.series}")
    if spec.level >= n_levels:
        raise ConfigError(f"input.level: series {spec.series} has {n_levels} levels; got {spec.level}")
    # tifffile's Zarr store decodes only the tiles or strips a read touches.
    store = tifffile.imread(spec.path, aszarr=True, series=spec.series, level=spec.level)
    return ArrayReader(
        zarr.open(store, mode="r"),
        spec.path,
        axis_letters(list(axes.replace("S", "C"))),
        spec.cache_bytes,
        frame,
        "tiff",
        geo,
    )


@functools.lru_cache(maxsize=16)
def open_input(spec: InputSpec) -> ArrayReader:
    """Open the input once per process; tasks call this instead of carrying file handles."""
    if not Path(spec.path).exists():
        raise RunError(f"input {spec.path}: no such file or directory")
    return _open_tiff(spec) if spec.is_tiff else _open_zarr(spec)
