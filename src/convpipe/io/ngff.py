"""OME-NGFF metadata for convpipe's OME-Zarr outputs (versions 0.5 and 0.4), as plain dicts.

The image is a multiscale group: level ``0`` is the chain's output, levels ``1..N`` the
optional pyramid. Each level's transforms come from the plan's frames (``convpipe.coords``):
scale and translation in the input's physical units, so napari, Fiji (MoBIE) and
neuroglancer put the output exactly over the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from convpipe._version import __version__
from convpipe.coords import Frame

AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}

#: NGFF's rule for axis order: time, then channel, then 2 or 3 space axes (z, y, x).
AXIS_ORDER = "tczyx"


def axes_problem(axes: str) -> str | None:
    """Why ``axes`` cannot be an NGFF image, or None if it can."""
    if [AXIS_ORDER.index(a) for a in axes] != sorted(AXIS_ORDER.index(a) for a in axes):
        return f"its axes must come in the order t, c, z, y, x (this output's axes are {axes})"
    spatial = sum(1 for a in axes if AXIS_TYPES[a] == "space")
    if spatial not in (2, 3):
        return f"it needs 2 or 3 spatial axes (this output's axes are {axes})"
    return None


def _axes(axes: str, frame: Frame) -> list[dict[str, Any]]:
    entries = []
    for letter, axis in zip(axes, frame, strict=True):
        entry: dict[str, Any] = {"name": letter, "type": AXIS_TYPES[letter]}
        if axis.unit is not None and letter != "c":
            entry["unit"] = axis.unit
        entries.append(entry)
    return entries


def multiscale(axes: str, frames: Sequence[Frame], name: str, version: str) -> dict[str, Any]:
    """One multiscale image: a dataset per level, paths ``0``, ``1``, ..."""
    image: dict[str, Any] = {}
    if version == "0.4":
        image["version"] = "0.4"
    image["name"] = name
    image["axes"] = _axes(axes, frames[0])
    image["datasets"] = [
        {
            "path": str(level),
            "coordinateTransformations": [
                {"type": "scale", "scale": [a.scale for a in frame]},
                {"type": "translation", "translation": [a.translation for a in frame]},
            ],
        }
        for level, frame in enumerate(frames)
    ]
    if len(frames) > 1:
        image["type"] = "mean"
        image["metadata"] = {"description": "2x mean per spatial axis", "method": f"convpipe {__version__}"}
    return image


def group_attributes(axes: str, frames: Sequence[Frame], name: str, version: str) -> dict[str, Any]:
    """The group's NGFF attributes: under ``ome`` in 0.5, at the top in 0.4."""
    images = [multiscale(axes, frames, name, version)]
    if version == "0.4":
        return {"multiscales": images}
    return {"ome": {"version": version, "multiscales": images}}
