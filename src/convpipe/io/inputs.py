"""Open TIFF and Zarr inputs lazily, read-only, and read the samples a block needs.

An ``InputSpec`` is small and picklable: every worker process reopens the input from it (and
caches the handle), so no open file travels through the task graph.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convpipe.coords import Frame, identity
from convpipe.errors import ConfigError, RunError
from convpipe.io.geotiff import GeoInfo, read_geo
from convpipe.io.metadata import ngff_frame, tiff_frame

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


class ChunkCache:
    """A least-recently-used cache of decoded storage chunks, bounded in bytes, thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: collections.OrderedDict[tuple[int, ...], np.ndarray] = collections.OrderedDict()
        self.size = 0
        self.lock = threading.Lock()

    def get(self, key: tuple[int, ...]) -> np.ndarray | None:
        with self.lock:
            value = self.items.pop(key, None)
            if value is not None:
                self.items[key] = value
            return value

    def put(self, key: tuple[int, ...], value: np.ndarray) -> None:
        with self.lock:
            old = self.items.pop(key, None)
            self.size += value.nbytes - (old.nbytes if old is not None else 0)
            self.items[key] = value
            while self.size > self.limit and self.items:
                _, evicted = self.items.popitem(last=False)
                self.size -= evicted.nbytes


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

    def _read_box(self, box: tuple[slice, ...]) -> np.ndarray:
        """Read a box through the cache of decoded storage chunks.

        A block's halo reaches into its neighbours' storage chunks; without the cache each of
        those chunks is decoded again for every block that touches it.
        """
        assert self.cache is not None
        grids = [range(b.start // c, (b.stop - 1) // c + 1) for b, c in zip(box, self.chunks, strict=True)]
        found = {index: self.cache.get(index) for index in itertools.product(*grids)}
        missing = [index for index, chunk in found.items() if chunk is None]
        if missing:
            # One read for the rectangle of chunks not cached (cached ones lie along its edges).
            low = [min(i[d] for i in missing) for d in range(len(box))]
            high = [max(i[d] for i in missing) + 1 for d in range(len(box))]
            region = tuple(
                slice(lo * c, min(hi * c, n)) for lo, hi, c, n in zip(low, high, self.chunks, self.shape, strict=True)
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
        out = np.empty(tuple(b.stop - b.start for b in box), dtype=self.dtype)
        for index, chunk in found.items():
            assert chunk is not None
            starts = [i * c for i, c in zip(index, self.chunks, strict=True)]
            source = tuple(
                slice(max(b.start - s, 0), min(b.stop - s, n)) for b, s, n in zip(box, starts, chunk.shape, strict=True)
            )
            target = tuple(
                slice(max(s - b.start, 0), max(s - b.start, 0) + (src.stop - src.start))
                for b, s, src in zip(box, starts, source, strict=True)
            )
            out[target] = chunk[source]
        return out

    def read(self, indices: Sequence[np.ndarray]) -> np.ndarray:
        try:
            return self._read(indices)
        except Exception as error:  # a corrupt chunk or tile, a vanished file, a failing disk
            where = ", ".join(f"{int(i[0])}:{int(i[-1]) + 1}" if len(i) else "-" for i in indices)
            raise RunError(
                f"input {self.description}: cannot read [{where}] ({type(error).__name__}: {error})"
            ) from None

    def _read(self, indices: Sequence[np.ndarray]) -> np.ndarray:
        selection: list[slice | np.ndarray] = []
        for index in indices:
            if len(index) and index[-1] - index[0] == len(index) - 1:
                selection.append(slice(int(index[0]), int(index[-1]) + 1))
            else:
                selection.append(np.asarray(index))
        if all(isinstance(s, slice) for s in selection):
            if self.cache is not None:
                return self._read_box(tuple(selection))  # type: ignore[arg-type]
            return np.asarray(self.array[tuple(selection)])
        if isinstance(self.array, np.ndarray):
            out = self.array
            for axis, s in enumerate(selection):
                out = out[(slice(None),) * axis + (s,)]
            return np.asarray(out)
        return np.asarray(self.array.oindex[tuple(selection)])


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
