"""GeoTIFF: read an input's georeferencing, carry it through the chain, write tiled GeoTIFFs.

The geotransform is GDAL's six numbers for the pixel grid's *corners* ("pixel is area"):
``X = gt[0] + col*gt[1] + row*gt[2]``, ``Y = gt[3] + col*gt[4] + row*gt[5]``. After the
chain, output pixel j along an axis covers input pixels centred on ``c + j*S`` (``c`` the
chain's centre offset, ``S`` its total stride: ``Plan.sample_frame``), so the output grid
has pixel vectors S times the input's and its corner at input pixel ``c + 1/2 - S/2``.
The CRS and the other GeoKeys are copied as they are.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from convpipe.coords import AxisFrame, Frame
from convpipe.errors import RunError

# TIFF tags of the GeoTIFF standard and GDAL's nodata tag.
MODEL_PIXEL_SCALE = 33550
MODEL_TIEPOINT = 33922
MODEL_TRANSFORMATION = 34264
GEO_KEY_DIRECTORY = 34735
GEO_DOUBLE_PARAMS = 34736
GEO_ASCII_PARAMS = 34737
GDAL_METADATA = 42112
GDAL_NODATA = 42113

RASTER_TYPE_KEY = 1025  # GTRasterTypeGeoKey: 1 area, 2 point
PROJECTED_CRS_KEY = 3072
GEOGRAPHIC_CRS_KEY = 2048
USER_DEFINED = 32767


@dataclass(frozen=True)
class GeoInfo:
    """What a GeoTIFF says about where it is: grid, CRS keys and nodata."""

    geotransform: tuple[float, float, float, float, float, float]  # corners, as GDAL
    geokeys: tuple[int, ...]  # the GeoKeyDirectory, verbatim
    geo_doubles: tuple[float, ...] | None = None
    geo_ascii: str | None = None
    nodata: str | None = None
    bands: tuple[str, ...] = ()  # each band's description (GDAL's), "" where it has none

    @property
    def crs(self) -> str | None:
        """``EPSG:n`` when the keys name a registered CRS, else None (user-defined)."""
        keys = _keys(self.geokeys)
        for key in (PROJECTED_CRS_KEY, GEOGRAPHIC_CRS_KEY):
            code = keys.get(key)
            if code is not None and code != USER_DEFINED:
                return f"EPSG:{code}"
        return None

    def frame(self, frame: Frame, axes: str | None) -> Frame:
        """``frame`` with x and y set from the geotransform (when the grid is not rotated)."""
        gt = self.geotransform
        if axes is None or "x" not in axes or "y" not in axes or gt[2] or gt[4]:
            return frame
        updated = list(frame)
        updated[axes.index("x")] = AxisFrame(gt[1], gt[0] + gt[1] / 2, None)
        updated[axes.index("y")] = AxisFrame(gt[5], gt[3] + gt[5] / 2, None)
        return tuple(updated)

    def through(self, samples: Frame, axes: str) -> GeoInfo:
        """The georeferencing of the chain's output (``samples``: ``Plan.sample_frame``)."""
        x, y = samples[axes.index("x")], samples[axes.index("y")]
        col = x.translation + 0.5 - x.scale / 2  # the output's corner, in input pixels
        row = y.translation + 0.5 - y.scale / 2
        gt = self.geotransform
        moved = (
            gt[0] + col * gt[1] + row * gt[2],
            gt[1] * x.scale,
            gt[2] * y.scale,
            gt[3] + col * gt[4] + row * gt[5],
            gt[4] * x.scale,
            gt[5] * y.scale,
        )
        return GeoInfo(moved, _as_area(self.geokeys), self.geo_doubles, self.geo_ascii, self.nodata, self.bands)

    def for_dtype(self, dtype: np.dtype) -> GeoInfo:
        """Without the nodata value if ``dtype`` cannot hold it (-9999 in uint8, say)."""
        if self.nodata is None or np.dtype(dtype).kind == "f":
            return self
        try:
            value = float(self.nodata)
        except ValueError:
            return dataclasses.replace(self, nodata=None)
        info = np.iinfo(dtype)
        fits = value.is_integer() and info.min <= value <= info.max
        return self if fits else dataclasses.replace(self, nodata=None)

    def attributes(self) -> dict[str, Any]:
        """As output attributes (Zarr): plain JSON, and GDAL's ``_CRS`` when the CRS is EPSG."""
        record: dict[str, Any] = {
            "crs": self.crs,
            "geotransform": list(self.geotransform),
            "nodata": self.nodata,
            "geokeys": list(self.geokeys),
        }
        if self.geo_doubles:
            record["geo_doubles"] = list(self.geo_doubles)
        if self.geo_ascii:
            record["geo_ascii"] = self.geo_ascii
        if any(self.bands):
            record["bands"] = list(self.bands)
        return record

    def band_items(self) -> str:
        """GDAL's metadata items naming the bands (``gdalinfo``'s "Description", QGIS's band
        names)."""
        return "".join(
            f'<Item name="DESCRIPTION" sample="{band}" role="description">{escape(name)}</Item>'
            for band, name in enumerate(self.bands)
            if name
        )

    @staticmethod
    def nodata_only(nodata: str) -> GeoInfo:
        """No place on Earth, only a nodata value: what a TIFF output of an input that is not
        a GeoTIFF still records (GDAL_NODATA alone)."""
        return GeoInfo((0.0, 1.0, 0.0, 0.0, 0.0, 1.0), (), nodata=nodata)

    def tags(self) -> list[tuple[int, str, int, Any, bool]]:
        """The TIFF tags that say all this, for tifffile's ``extratags``."""
        if not self.geokeys:  # nodata_only
            return [(GDAL_NODATA, "s", 0, self.nodata, True)] if self.nodata is not None else []
        gt = self.geotransform
        tags: list[tuple[int, str, int, Any, bool]] = []
        if gt[2] == 0 and gt[4] == 0:
            tags.append((MODEL_PIXEL_SCALE, "d", 3, (gt[1], -gt[5], 0.0), True))
            tags.append((MODEL_TIEPOINT, "d", 6, (0.0, 0.0, 0.0, gt[0], gt[3], 0.0), True))
        else:
            matrix = (gt[1], gt[2], 0.0, gt[0], gt[4], gt[5], 0.0, gt[3], 0, 0, 0, 0, 0, 0, 0, 1.0)
            tags.append((MODEL_TRANSFORMATION, "d", 16, tuple(float(v) for v in matrix), True))
        tags.append((GEO_KEY_DIRECTORY, "H", len(self.geokeys), self.geokeys, True))
        if self.geo_doubles:
            tags.append((GEO_DOUBLE_PARAMS, "d", len(self.geo_doubles), self.geo_doubles, True))
        if self.geo_ascii:
            tags.append((GEO_ASCII_PARAMS, "s", 0, self.geo_ascii, True))
        if self.nodata is not None:
            tags.append((GDAL_NODATA, "s", 0, self.nodata, True))
        return tags


def _keys(directory: Sequence[int]) -> dict[int, int]:
    """Inline GeoKey values (location 0) by key id."""
    keys = {}
    for i in range(4, len(directory) - 3, 4):
        key, location, _, value = directory[i : i + 4]
        if location == 0:
            keys[key] = value
    return keys


def _as_area(directory: Sequence[int]) -> tuple[int, ...]:
    """The directory with GTRasterTypeGeoKey set to "pixel is area": what ``tags`` write."""
    keys = list(directory)
    for i in range(4, len(keys) - 3, 4):
        if keys[i] == RASTER_TYPE_KEY and keys[i + 1] == 0:
            keys[i + 3] = 1
    return tuple(keys)


def read_geo(tif: Any, axes: str | None, series: int = 0, level: int = 0) -> GeoInfo | None:
    """The georeferencing of a TIFF series (at a pyramid level), or None if it has none.

    Overview levels cover the same ground with fewer, larger pixels: the corner stays, the
    pixel vectors grow by the size ratio (GDAL's rule for overviews).
    """
    tags = tif.series[series].keyframe.tags
    directory = tags.get(GEO_KEY_DIRECTORY)
    if directory is None:
        return None
    geokeys = tuple(int(v) for v in directory.value)
    point = _keys(geokeys).get(RASTER_TYPE_KEY) == 2
    transformation = tags.get(MODEL_TRANSFORMATION)
    scale, tiepoint = tags.get(MODEL_PIXEL_SCALE), tags.get(MODEL_TIEPOINT)
    if transformation is not None:
        m = [float(v) for v in transformation.value]
        gt = [m[3], m[0], m[1], m[7], m[4], m[5]]
    elif scale is not None and tiepoint is not None and len(tiepoint.value) >= 6:
        sx, sy = float(scale.value[0]), float(scale.value[1])
        i, j, _, x, y, _ = (float(v) for v in tiepoint.value[:6])
        gt = [x - i * sx, sx, 0.0, y + j * sy, 0.0, -sy]
    else:
        return None
    if point:  # the tiepoint is a pixel's centre: GDAL's corner is half a pixel before it
        gt[0] -= (gt[1] + gt[2]) / 2
        gt[3] -= (gt[4] + gt[5]) / 2
    if not all(math.isfinite(v) for v in gt):
        return None
    if level and axes is not None and "x" in axes and "y" in axes:
        base, shape = tif.series[series].levels[0].shape, tif.series[series].levels[level].shape
        fx = base[axes.index("x")] / shape[axes.index("x")]
        fy = base[axes.index("y")] / shape[axes.index("y")]
        gt = [gt[0], gt[1] * fx, gt[2] * fy, gt[3], gt[4] * fx, gt[5] * fy]
    doubles = tags.get(GEO_DOUBLE_PARAMS)
    ascii_params = tags.get(GEO_ASCII_PARAMS)
    nodata = tags.get(GDAL_NODATA)
    return GeoInfo(
        (gt[0], gt[1], gt[2], gt[3], gt[4], gt[5]),
        geokeys,
        tuple(float(v) for v in doubles.value) if doubles is not None else None,
        str(ascii_params.value) if ascii_params is not None else None,
        str(nodata.value).strip("\x00 ") if nodata is not None else None,
        band_descriptions(tif.series[series].keyframe, axes),
    )


def band_descriptions(page: Any, axes: str | None) -> tuple[str, ...]:
    """Each band's description from GDAL's metadata tag (``role="description"`` items), for
    an image with a band axis; () when there is none."""
    import xml.etree.ElementTree as ElementTree

    tag = page.tags.get(GDAL_METADATA)
    if tag is None or axes is None or "c" not in axes:
        return ()
    try:
        root = ElementTree.fromstring(str(tag.value))
    except ElementTree.ParseError:
        return ()
    found = {}
    for item in root.iter("Item"):
        sample = item.get("sample")
        if item.get("role") == "description" and sample is not None and sample.isdigit():
            found[int(sample)] = item.text or ""
    return tuple(found.get(band, "") for band in range(max(found) + 1)) if found else ()


def metadata_xml(
    metadata: dict[str, str], bands: Sequence[tuple[str, int, str]] = (), geo: GeoInfo | None = None
) -> str:
    """GDAL's metadata tag: dataset items, per-band items (name, band, value), and the bands'
    descriptions (``gdal_metadata`` reads it back)."""
    items = "".join(f'<Item name="{escape(name)}">{escape(value)}</Item>' for name, value in metadata.items())
    items += "".join(
        f'<Item name="{escape(name)}" sample="{band}">{escape(value)}</Item>' for name, band, value in bands
    )
    return f"<GDALMetadata>{items}{geo.band_items() if geo is not None else ''}</GDALMetadata>"


def gdal_metadata(page: Any) -> dict[str, str]:
    """The items of GDAL's metadata tag (where convpipe's GeoTIFFs keep their provenance)."""
    import xml.etree.ElementTree as ElementTree

    tag = page.tags.get(GDAL_METADATA)
    if tag is None:
        return {}
    try:
        root = ElementTree.fromstring(str(tag.value))
    except ElementTree.ParseError:
        return {}
    return {item.get("name", ""): item.text or "" for item in root.iter("Item")}


def tiles(rows: Iterator[list[np.ndarray]], tile: tuple[int, int]) -> Iterator[np.ndarray]:
    """Cut rows of blocks into tiles in TIFF order: tile rows top to bottom, tiles left to right
    across the blocks, one band after another (a band's block is (1, rows, columns)). Blocks
    are whole tiles wide (the plan aligns them), so no tile spans two blocks."""
    ty, tx = tile
    for blocks in rows:
        planes = [block.reshape(-1, *block.shape[-2:]) for block in blocks]
        for band in range(planes[0].shape[0]):
            for top in range(0, planes[0].shape[1], ty):
                for plane in planes:
                    for left in range(0, plane.shape[2], tx):
                        yield np.ascontiguousarray(plane[band, top : top + ty, left : left + tx])


#: A GeoTIFF is written under its name plus this suffix and renamed when whole.
PARTIAL_SUFFIX = ".convpipe-partial"

TIFF_COMPRESSION = {"deflate": "zlib", "zstd": "zstd", "none": None}

#: Past this many bytes a classic TIFF's 32-bit offsets may not reach: write BigTIFF.
CLASSIC_TIFF_LIMIT = 2**32 - 2**28


def write(
    path: str,
    rows: Iterator[list[np.ndarray]],
    shape: tuple[int, ...],
    dtype: np.dtype,
    tile: tuple[int, int],
    codec: str,
    geo: GeoInfo | None,
    metadata: dict[str, str],
    encode_bytes: int,
) -> None:
    """Write a tiled, compressed (Big)GeoTIFF from rows of blocks, each whole tile rows high,
    top to bottom (for bands, all of band 0 first). Nothing is held beyond the row at hand.

    ``metadata`` goes in GDAL's metadata tag, where gdalinfo and QGIS show it; tiles are
    compressed ``encode_bytes`` at a time.
    """
    import tifffile

    compression = TIFF_COMPRESSION[codec]
    tags = [
        *(geo.tags() if geo is not None else ()),
        (GDAL_METADATA, "s", 0, metadata_xml(metadata, geo=geo), True),
    ]
    bigtiff = math.prod(shape) * np.dtype(dtype).itemsize > CLASSIC_TIFF_LIMIT
    try:
        tifffile.imwrite(
            path,
            data=tiles(rows, tile),
            shape=shape,
            dtype=dtype,
            tile=tile,
            compression=compression,
            # horizontal, or floating point for floats; tifffile has none for 64-bit integers
            predictor=compression is not None and not (np.dtype(dtype).kind in "iu" and np.dtype(dtype).itemsize == 8),
            photometric="minisblack",
            planarconfig="separate" if len(shape) == 3 else None,
            bigtiff=bigtiff,
            extratags=tags,
            metadata=None,  # no tifffile JSON description: GDAL_METADATA holds ours
            buffersize=encode_bytes,
        )
    except ValueError as error:  # tifffile's word for a tag or layout it cannot write
        raise RunError(f"output {path}: cannot write the GeoTIFF ({error})") from None
