"""Physical metadata of inputs: OME-NGFF transforms, OME-TIFF and ImageJ pixel sizes.

Each reader turns what its format says into a ``Frame`` (scale, translation and unit per
axis, see ``convpipe.coords``) so that the output can say where its samples are. Formats
that say nothing give the identity frame. GeoTIFF lives in ``convpipe.io.geotiff``.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree
from typing import Any

from convpipe.coords import AxisFrame, Frame, identity

#: OME / ImageJ unit spellings → the UDUNITS-2 names OME-NGFF requires.
UNIT_NAMES = {
    "nm": "nanometer",
    "µm": "micrometer",
    "μm": "micrometer",
    "um": "micrometer",
    "micron": "micrometer",
    "microns": "micrometer",
    "\\u00b5m": "micrometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "km": "kilometer",
    "pm": "picometer",
    "Å": "angstrom",
    "s": "second",
    "ms": "millisecond",
    "us": "microsecond",
    "µs": "microsecond",
    "min": "minute",
    "h": "hour",
}

#: Unit names NGFF allows for space and time axes (a subset of UDUNITS-2).
NGFF_UNITS = {
    "angstrom", "attometer", "centimeter", "decimeter", "exameter", "femtometer", "foot", "gigameter",
    "hectometer", "inch", "kilometer", "megameter", "meter", "micrometer", "mile", "millimeter",
    "nanometer", "parsec", "petameter", "picometer", "terameter", "yard", "yoctometer", "yottameter",
    "zeptometer", "zettameter",
    "attosecond", "centisecond", "day", "decisecond", "exasecond", "femtosecond", "gigasecond",
    "hectosecond", "hour", "kilosecond", "megasecond", "microsecond", "millisecond", "minute",
    "nanosecond", "petasecond", "picosecond", "second", "terasecond", "yoctosecond", "yottasecond",
    "zeptosecond", "zettasecond",
}  # fmt: skip


def unit_name(unit: Any) -> str | None:
    """An NGFF unit name for what a file wrote (``µm`` → ``micrometer``), or None if unknown."""
    if not isinstance(unit, str) or not unit.strip():
        return None
    text = unit.strip()
    name = UNIT_NAMES.get(text, UNIT_NAMES.get(text.lower(), text.lower()))
    return name if name in NGFF_UNITS else None


# --- OME-Zarr -----------------------------------------------------------------------------


def _transforms(listed: Any, ndim: int) -> tuple[list[float], list[float]]:
    """(scale, translation) from an NGFF coordinateTransformations list (identity if absent)."""
    scale, translation = [1.0] * ndim, [0.0] * ndim
    for transform in listed if isinstance(listed, list) else ():
        if not isinstance(transform, dict):
            continue
        kind = transform.get("type")
        if kind not in ("scale", "translation"):
            continue  # identity, or a transform convpipe does not apply
        values = transform.get(kind)
        if not isinstance(values, list) or len(values) != ndim or not all(_is_number(v) for v in values):
            raise ValueError(f"the {kind} {values!r} is not {ndim} numbers, one per axis")
        if kind == "scale":
            scale = [float(v) for v in values]
        else:
            translation = [float(v) for v in values]
    return scale, translation


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def ngff_frame(image: dict[str, Any], level: int) -> Frame:
    """The frame of one level of an NGFF multiscale image (0.4 or 0.5).

    The dataset's own transforms come first, then the multiscale's shared ones (NGFF: "applied
    after"): position = (i * s_d + t_d) * s_m + t_m. Malformed values raise ValueError: an
    image whose coordinates cannot be read is not silently put somewhere else.
    """
    axes = image.get("axes", [])
    ndim = len(axes)
    dataset_scale, dataset_translation = _transforms(image["datasets"][level].get("coordinateTransformations"), ndim)
    shared_scale, shared_translation = _transforms(image.get("coordinateTransformations"), ndim)
    units = [axis.get("unit") if isinstance(axis, dict) else None for axis in axes]
    return tuple(
        AxisFrame(s_d * s_m, t_d * s_m + t_m, unit_name(unit))
        for s_d, t_d, s_m, t_m, unit in zip(
            dataset_scale, dataset_translation, shared_scale, shared_translation, units, strict=True
        )
    )


# --- TIFF -----------------------------------------------------------------------------------


def _ome_sizes(xml: str, image_index: int) -> dict[str, AxisFrame]:
    """Physical sizes per axis letter from OME-XML's Pixels element of one image."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return {}
    images = [element for element in root if element.tag.endswith("}Image") or element.tag == "Image"]
    if image_index >= len(images):
        return {}
    pixels = next((e for e in images[image_index] if e.tag.endswith("Pixels")), None)
    if pixels is None:
        return {}
    sizes = {}
    for letter in "xyz":
        size = _positive(pixels.get(f"PhysicalSize{letter.upper()}"))
        if size is not None:
            unit = pixels.get(f"PhysicalSize{letter.upper()}Unit", "µm")  # OME's default unit
            sizes[letter] = AxisFrame(size, 0.0, unit_name(unit))
    interval = _positive(pixels.get("TimeIncrement"))
    if interval is not None:
        sizes["t"] = AxisFrame(interval, 0.0, unit_name(pixels.get("TimeIncrementUnit", "s")))
    return sizes


def _positive(text: Any) -> float | None:
    """A size OME-XML gives, or None when it is missing or not a positive number (a broken
    field costs the pixel size, not the image)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _imagej_sizes(tif: Any) -> dict[str, AxisFrame]:
    """Pixel sizes ImageJ writes: X/YResolution (pixels per unit), ``spacing`` for z."""
    meta = tif.imagej_metadata or {}
    unit = meta.get("unit")
    # ImageJ writes yunit/zunit only where they differ from x's unit, tunit where not seconds.
    units = {"x": unit, "y": meta.get("yunit", unit), "z": meta.get("zunit", unit), "t": meta.get("tunit", "s")}
    page = tif.pages.first
    sizes = {}
    for letter, tag in (("x", "XResolution"), ("y", "YResolution")):
        value = page.tags.get(tag)
        if value is not None:
            numerator, denominator = value.value
            if numerator > 0 and denominator > 0 and (numerator, denominator) != (1, 1):
                sizes[letter] = AxisFrame(denominator / numerator, 0.0, unit_name(units[letter]))
    for letter, key in (("z", "spacing"), ("t", "finterval")):
        size = _positive(meta.get(key))
        if size is not None:
            sizes[letter] = AxisFrame(size, 0.0, unit_name(units[letter]))
    return sizes


def tiff_frame(tif: Any, series: int, level: int, axes: str | None) -> Frame:
    """The frame of a TIFF series level, from OME-XML or ImageJ metadata (else identity).

    A pyramid level's samples are taken as means of ``f`` level-0 samples (``f`` the size
    ratio), so its scale is ``f`` times level 0's and its first centre moves by (f - 1)/2.
    """
    shape = tif.series[series].levels[level].shape
    if axes is None or len(axes) != len(shape):
        return identity(len(shape))
    if tif.is_ome and tif.ome_metadata:
        sizes = _ome_sizes(tif.ome_metadata, series)
    elif tif.is_imagej:
        sizes = _imagej_sizes(tif)
    else:
        sizes = {}
    base = tif.series[series].levels[0].shape
    frame = []
    for letter, n, n0 in zip(axes, shape, base, strict=True):
        axis = sizes.get(letter, AxisFrame())
        factor = _level_factor(n0, n)
        frame.append(AxisFrame(axis.scale * factor, axis.scale * (factor - 1) / 2, axis.unit))
    return tuple(frame)


def _level_factor(base: int, length: int) -> float:
    """How many level-0 samples one sample of a level spans: a whole number when the level is
    the base divided by it, rounded either way (1001 -> 501 is a factor of 2, not 1.998)."""
    if length <= 0:
        return 1.0
    whole = round(base / length)
    if whole >= 1 and length in (base // whole, -(-base // whole)):
        return float(whole)
    return base / length
