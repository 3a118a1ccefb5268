"""Open TIFF and Zarr inputs lazily, read-only, and read the samples a block needs.

An ``InputSpec`` is small and picklable: every worker process reopens the input from it (and
caches the handle), so no open file or store travels through the task graph. The input may be
a local path or a URL (``convpipe.io.stores``); a TIFF in an object store is read by byte
ranges, only the tiles a block needs, all of one read's fetched together.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from convpipe.coords import Frame, identity
from convpipe.errors import ConfigError, ConvpipeError, RunError
from convpipe.io import stores
from convpipe.io.cache import ChunkCache
from convpipe.io.fastzarr import chunk_decoder
from convpipe.io.geotiff import GeoInfo, read_geo
from convpipe.io.metadata import ngff_frame, tiff_frame

_SETUP = threading.Lock()  # lazily made per-reader state

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".ome.tif", ".ome.tiff")

#: The first four bytes of a TIFF (little- or big-endian) and of a BigTIFF.
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def is_tiff(location: stores.Location) -> bool:
    """Whether the input is read as a TIFF: by its suffix, or (a local file) by its first bytes
    whatever its name (README, "Config keys": input.path). A URL goes by its suffix: a Zarr
    there is a prefix, not an object to look into."""
    if location.name.lower().endswith(TIFF_SUFFIXES):  # a signed URL's query aside
        return True
    if not location.is_local or not Path(location.path).is_file():
        return False
    with contextlib.suppress(OSError), open(location.path, "rb") as file:
        return file.read(4) in TIFF_MAGIC
    return False


@dataclass(frozen=True)
class InputSpec:
    """Where the input lives: a path and, inside it, which array (Zarr) or series/level (TIFF)."""

    path: str
    array: str | None = None
    series: int = 0
    level: int = 0
    cache_bytes: int = 0  # decoded chunks kept for neighbouring blocks' halos
    storage: tuple[tuple[str, Any], ...] = field(default=(), repr=False)  # input.storage: may hold secrets

    @property
    def location(self) -> stores.Location:
        return stores.parse(self.path, storage=dict(self.storage))

    @property
    def is_tiff(self) -> bool:
        return is_tiff(self.location)


class _Piece(NamedTuple):
    """One storage chunk of a box read: where it is, the part the box needs, where that goes,
    and (when the box holds it entirely) which of its faces border the block."""

    index: tuple[int, ...]
    need: tuple[slice, ...]
    target: tuple[slice, ...]
    held: list[tuple[bool, bool]] | None


def _use_cached(cache: ChunkCache, piece: _Piece, part: np.ndarray, out: np.ndarray) -> None:
    """Copy a cached part into place; a chunk the block holds entirely now keeps only its strips."""
    out[piece.target] = part
    if piece.held is not None:
        cache.release(piece.index, piece.held)


def _read_through(
    cache: ChunkCache,
    piece: _Piece,
    out: np.ndarray,
    decode: Callable[[tuple[int, ...]], tuple[np.ndarray, Any]],
    signature: Any = None,
) -> None:
    """One chunk through the cache: its cached part, or decoded here (``decode`` returns the
    chunk and its signature) while other threads wait for it, then offered to the cache."""
    part, mine = cache.claim(piece.index, piece.need, signature)
    if not mine:
        _use_cached(cache, piece, part, out)
        return
    chunk = None
    try:
        chunk, signature = decode(piece.index)
        out[piece.target] = chunk[piece.need]
    finally:
        cache.done(piece.index, chunk, piece.held, signature)


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
        prefetch: Callable[[Sequence[tuple[int, ...]]], contextlib.AbstractContextManager[None]] | None = None,
        group_attributes: dict[str, Any] | None = None,
    ) -> None:
        self.array = array
        self.group_attributes = group_attributes or {}  # an OME-Zarr image's: its nodata lives there
        self.prefetch = prefetch  # a remote TIFF's: fetches the tiles of a zarr read together first
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
        those chunks is decoded again for every block that touches it (in an object store:
        fetched again, one more request each). A chunk is kept whole while a block that holds
        it entirely has yet to read it, then as the strips along its faces that its
        neighbours' halos read.
        """
        files = getattr(self, "_files", False)
        if files is False:  # decided on the first read
            files = self._files = chunk_decoder(self.array)
        if files is None and self.cache is None:  # zarr decodes the box in one read
            with self._fetching(box):
                data = np.asarray(self.array[box])
            if out is not None:
                out[...] = data
                return out
            return data if dtype is None else data.astype(dtype, copy=False)
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
        pieces = []
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
                # The block holds this chunk entirely: neighbours read it across the block's
                # border. Those still to run read its high faces and, along the last axis, its
                # low face: blocks run in an order where a neighbour at no higher index along
                # any axis has run before (row-major, bands across x, Z order: ``traversal``),
                # but the block before this one along x may be running beside it.
                last = len(box) - 1
                held = [
                    (d == last and s == lo, e == hi)
                    for d, (s, e, lo, hi) in enumerate(zip(starts, stops, held_starts, held_stops, strict=True))
                ]
            pieces.append(_Piece(index, need, target, held))
        if files is None:
            self._read_pieces_at_once(cache, pieces, out)
            return out
        for piece in pieces:
            _read_through(cache, piece, out, files.decode, files.signature(piece.index))
        return out

    def _read_pieces_at_once(self, cache: ChunkCache, pieces: list[_Piece], out: np.ndarray) -> None:
        """The zarr path: the chunks not cached are read in one concurrent batch (in an object
        store, one round of requests rather than one per chunk). Chunks another thread is
        reading are waited for only once this thread holds no claim, so two threads never
        wait on each other."""
        mine: list[_Piece] = []
        busy: list[_Piece] = []
        chunks: list[np.ndarray | None] = []
        try:
            for piece in pieces:
                part, state = cache.try_claim(piece.index, piece.need)
                if state == "mine":
                    mine.append(piece)
                    chunks.append(None)
                elif state == "busy":
                    busy.append(piece)
                else:
                    _use_cached(cache, piece, part, out)
            if mine:
                chunks = list(self._read_chunks([piece.index for piece in mine]))
            for piece, chunk in zip(mine, chunks, strict=True):
                assert chunk is not None
                out[piece.target] = chunk[piece.need]
        finally:
            for piece, chunk in zip(mine, chunks, strict=True):
                cache.done(piece.index, chunk, piece.held)
        for piece in busy:  # read by another thread meanwhile: usually cached by now
            _read_through(cache, piece, out, lambda index: (self._read_chunks([index])[0], None))

    def _read_chunks(self, indices: list[tuple[int, ...]]) -> list[np.ndarray]:
        """Whole storage chunks through zarr, all requests in flight at once."""
        import asyncio

        from zarr.core.sync import sync

        regions = [
            tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, self.chunks, self.shape, strict=True))
            for index in indices
        ]

        async def every() -> list[Any]:
            return await asyncio.gather(*(self.array._async_array.getitem(region) for region in regions))

        with self._fetching_chunks(indices):
            return [np.asarray(chunk) for chunk in sync(every())]

    @property
    def nodata(self) -> float | None:
        """The file's own nodata value: GeoTIFF's GDAL_NODATA, or a Zarr array's (or its
        OME-Zarr image's) ``nodata`` attribute, or a convpipe output's ``geo.nodata``; None
        when it declares none."""
        raw: Any = self.geo.nodata if self.geo is not None else None
        for attributes in (getattr(self.array, "attrs", None), self.group_attributes):
            if raw is None and attributes is not None:
                geo = attributes.get("geo")
                raw = attributes.get("nodata", geo.get("nodata") if isinstance(geo, dict) else None)
        try:
            return None if raw is None else float(raw)
        except (TypeError, ValueError):
            return None

    def _fetching(self, selection: Sequence[slice | np.ndarray]) -> contextlib.AbstractContextManager[None]:
        """Around a zarr read: the storage chunks it touches prefetched, if the input says how."""
        if self.prefetch is None:
            return contextlib.nullcontext()
        grids: list[Sequence[int]] = []
        for part, size in zip(selection, self.chunks, strict=True):
            if isinstance(part, slice):
                grids.append(range(part.start // size, -(-part.stop // size)))
            else:
                grids.append(np.unique(np.asarray(part) // size).tolist())
        return self._fetching_chunks(list(itertools.product(*grids)))

    def _fetching_chunks(self, indices: list[tuple[int, ...]]) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext() if self.prefetch is None else self.prefetch(indices)

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
            with self._fetching(selection):
                data = np.asarray(self.array.oindex[tuple(selection)])
        data = np.asarray(data)
        if out is not None:
            out[...] = data
            return out
        return data if dtype is None else data.astype(dtype, copy=False)


def _open_zarr(spec: InputSpec) -> ArrayReader:
    import zarr

    location = spec.location
    try:
        node = zarr.open(store=stores.open_store(location), mode="r")
    except FileNotFoundError:
        raise RunError(f"input {location}: no such file or directory") from None
    except ConvpipeError:
        raise
    except Exception as error:
        raise RunError(stores.redact(f"input {location}: not a readable Zarr array or group ({error})")) from None
    _refuse_partial(node, location)
    axes = None
    frame = None
    kind = "zarr"
    group: dict[str, Any] = {}
    if isinstance(node, zarr.Group):
        group = dict(node.attrs)
        ngff = multiscales(group)
        name = spec.array
        if name is None and ngff is not None:
            name, axes, frame = _ngff_level(ngff[0], spec)
            kind = "ome-zarr"
        if name is None:
            arrays = _arrays(node) or []
            if len(arrays) != 1:
                raise ConfigError(f"input.array: {location} is a Zarr group; name the array to read ({_holds(node)})")
            name = arrays[0]
        try:
            node = node[name]
        except KeyError:
            raise ConfigError(f"input.array: no array {name!r} in {location} ({_holds(node)})") from None
        if not isinstance(node, zarr.Array):
            raise ConfigError(f"input.array: {name!r} in {location} is a group, not an array")
    elif spec.array is not None:
        raise ConfigError(f"input.array: {location} is a single array, not a group; remove input.array")
    if axes is None:
        names = getattr(node.metadata, "dimension_names", None)
        axes = axis_letters(names) if names else None
    return ArrayReader(node, location.display, axes, spec.cache_bytes, frame, kind, group_attributes=group)


def _arrays(group: Any) -> list[str] | None:
    """The arrays of a group, or None if its store cannot list them (an http(s) server cannot):
    listed only when needed, as an OME-Zarr names its arrays."""
    try:
        return sorted(name for name, _ in group.arrays())
    except Exception:
        return None


def _holds(group: Any) -> str:
    arrays = _arrays(group)
    if arrays is None:
        return "its arrays cannot be listed here"
    return f"it holds: {', '.join(arrays) or 'no arrays'}"


def _refuse_partial(node: Any, location: stores.Location) -> None:
    """A convpipe output that is not complete is not an input: its missing blocks would be
    read as zeros, and the result marked complete."""
    status = node.attrs.get("convpipe")
    if status is None and location.parent.url != location.url:
        import zarr

        try:  # a level array of an OME-Zarr output (out.ome.zarr/0): its group keeps the status
            group = zarr.open_group(store=stores.open_store(location.parent), mode="r")
            if isinstance(group.attrs.get("convpipe"), dict):
                node, location, status = group, location.parent, group.attrs["convpipe"]
        except Exception:
            pass  # no group above: a plain array
    if not isinstance(status, dict) or status.get("complete", True):
        return
    from convpipe.io import lifecycle

    try:
        written: int | str = lifecycle.count_blocks(node.store, lifecycle.BLOCKS_PREFIX)
    except Exception:  # a store that cannot list (http)
        written = "?"
    raise ConfigError(
        f"input {location} is a partial convpipe output ({written} of {status.get('blocks', '?')} blocks); "
        "finish it with --resume first"
    )


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
    if not isinstance(datasets, list):
        raise RunError(f"input {spec.location}: its OME-Zarr multiscales metadata has no list of datasets")
    if spec.level >= len(datasets):
        raise ConfigError(
            f"input.level: {spec.location} has {len(datasets)} levels (0 to {len(datasets) - 1}); got {spec.level}"
        )
    names = [axis.get("name") if isinstance(axis, dict) else axis for axis in image.get("axes", [])]
    try:
        frame = ngff_frame(image, spec.level)
    except ValueError as error:
        raise RunError(
            f"input {spec.location}: its OME-Zarr metadata for level {spec.level} is broken: {error}"
        ) from None
    dataset = datasets[spec.level]
    path = dataset.get("path") if isinstance(dataset, dict) else None
    if not isinstance(path, str) or not path:
        raise RunError(
            f"input {spec.location}: its OME-Zarr multiscales metadata names no array for level {spec.level} "
            f'(datasets[{spec.level}] has no "path"); set input.array to the array to read'
        )
    return path, axis_letters(names), frame


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


class _TilePrefetch:
    """Fetches the tiles or strips a zarr read of a remote TIFF touches in one concurrent request.

    Why: tifffile's zarr store reads them one at a time under its file lock, so a block of 16
    tiles costs 16 round trips in a row. Their byte ranges come from the store's own key mapping,
    the one its reads use, so tifffile then finds each in memory and decodes it as before.
    """

    def __init__(self, array: Any, prefetched: Callable[..., contextlib.AbstractContextManager[None]]) -> None:
        self.array = array
        self.store = array.store_path.store  # tifffile's ZarrTiffStore
        self.prefetched = prefetched

    def __call__(self, indices: Sequence[tuple[int, ...]]) -> contextlib.AbstractContextManager[None]:
        ranges = []
        try:
            for index in indices:
                _, page, _, offset, count = self.store._parse_key(self.array.metadata.encode_chunk_key(index))
                if page is not None and offset and count:  # else: no tile (the fill value)
                    ranges.append((int(offset), int(offset) + int(count)))
        except Exception:  # a tifffile whose private mapping differs: the plain reads, one by one
            return contextlib.nullcontext()
        return self.prefetched(ranges)


def _open_tiff(spec: InputSpec) -> ArrayReader:
    """A TIFF series and level through tifffile's Zarr store, which decodes only the tiles or
    strips a read touches; in an object store those are fetched by byte range, a read's all at once."""
    import tifffile
    import zarr

    location = spec.location
    file = None
    tifffile_log = logging.getLogger("tifffile")
    level = tifffile_log.level
    tifffile_log.setLevel(logging.CRITICAL)  # its complaints become our one-line error
    tif = None
    try:
        if location.is_remote:
            file = stores.open_file(location)
        tif = tifffile.TiffFile(location.path if file is None else file)
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
        if spec.series >= n_series:
            raise ConfigError(
                f"input.series: {location} has {n_series} series (0 to {n_series - 1}); got {spec.series}"
            )
        if spec.level >= n_levels:
            raise ConfigError(f"input.level: series {spec.series} has {n_levels} levels; got {spec.level}")
        store = tif.series[spec.series].aszarr(level=spec.level)  # keeps ``tif`` open for its reads
    except ConvpipeError:
        if tif is not None:
            tif.close()
        raise
    except FileNotFoundError:
        raise RunError(f"input {location}: no such file") from None
    except Exception as error:
        if tif is not None:
            tif.close()
        raise RunError(stores.redact(f"input {location}: not a readable TIFF ({error})")) from None
    finally:
        tifffile_log.setLevel(level)
    array = zarr.open(store, mode="r")
    prefetched = None if file is None else stores.prefetcher(file)
    return ArrayReader(
        array,
        location.display,
        axis_letters(list(axes.replace("S", "C"))),
        spec.cache_bytes,
        frame,
        "tiff",
        geo,
        None if prefetched is None else _TilePrefetch(array, prefetched),
    )


def open_input(spec: InputSpec) -> ArrayReader:
    """Open the input once per process; tasks call this instead of carrying file handles.

    Once, even when a process's first blocks start together: each would otherwise open a
    reader of its own, with a chunk cache of its own, and decode the chunks they share twice.
    """
    with _OPENING:
        return _open_input(spec)


def forget_inputs() -> None:
    """Open every input afresh from now on (one rewritten since an earlier run is reread)."""
    with _OPENING:
        _open_input.cache_clear()


_OPENING = threading.Lock()


@functools.lru_cache(maxsize=16)
def _open_input(spec: InputSpec) -> ArrayReader:
    location = spec.location
    if location.is_local and not Path(location.path).exists():
        raise RunError(f"input {location}: no such file or directory")
    if location.is_remote:
        stores.probe(location, write=False)
    if spec.is_tiff:
        return _open_tiff(spec)
    if location.is_local and Path(location.path).is_file():  # a Zarr is a folder
        raise RunError(
            f"input {location}: not a TIFF (its first bytes are not a TIFF header) nor a Zarr (a folder); "
            "convpipe reads TIFF, OME-TIFF, GeoTIFF, Zarr and OME-Zarr"
        )
    return _open_zarr(spec)
