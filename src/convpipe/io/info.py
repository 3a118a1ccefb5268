"""What a TIFF or Zarr holds, as plain data for ``convpipe info`` (and ``--json``, as it is):
shapes as lists, numbers as numbers. No pixels are read.

The path may be a URL (``s3://``, ``https://``, ...): the metadata is read through the store
layer, and nothing secret is shown.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from convpipe.coords import Frame, is_identity
from convpipe.errors import RunError
from convpipe.io import lifecycle, stores, zarr_output
from convpipe.io.geotiff import PARTIAL_SUFFIX, gdal_metadata, read_geo
from convpipe.io.inputs import TIFF_SUFFIXES, axis_letters, is_tiff, multiscales
from convpipe.io.metadata import ngff_frame, tiff_frame


def _codecs(array: Any) -> list[str]:
    names = []
    for codec in (*getattr(array, "filters", ()), *getattr(array, "compressors", ())):
        described = codec.to_dict() if hasattr(codec, "to_dict") else {"name": type(codec).__name__}
        config = described.get("configuration", {})
        if "cname" in config:
            detail = f" ({config['cname']}, level {config.get('clevel')}, {config.get('shuffle')})"
        elif "level" in config:
            detail = f" (level {config['level']})"
        else:
            detail = ""
        names.append(f"{described.get('name', codec)}{detail}")
    return names


def _zarr_array(array: Any, path: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "chunks": list(array.chunks),
        "format": f"Zarr v{array.metadata.zarr_format}",
        "codecs": _codecs(array),
    }
    shards = getattr(array, "shards", None)
    if shards:
        info["shards"] = list(shards)
    names = getattr(array.metadata, "dimension_names", None)
    if names and all(isinstance(n, str) for n in names):
        info["axes"] = "".join(names)
    return {**info, **_about(dict(array.attrs), path)}


def _about(attributes: dict[str, Any], path: str) -> dict[str, Any]:
    """Georeferencing and, for convpipe outputs, provenance and completeness."""
    info: dict[str, Any] = {}
    geo = attributes.get("geo")
    if isinstance(geo, dict):
        info["crs"] = geo.get("crs") or "user-defined (GeoKeys kept)"
        info["geotransform"] = geo.get("geotransform")
        if geo.get("nodata") is not None:
            info["nodata"] = geo["nodata"]
    status = attributes.get("convpipe")
    if isinstance(status, dict):
        info.update(_status(status, path, lists_records=True))
    return info


def _status(status: dict[str, Any], path: str, *, lists_records: bool) -> dict[str, Any]:
    """A convpipe output's completeness and provenance: what it was made from, step by step.

    ``lists_records``: a Zarr output, whose block records tell what is written. A complete one
    that still holds records is being finished by the run that holds its lease, or its run
    failed after marking it (a failed sync, say): its data is whole, and ``--resume``
    finishes the rest."""
    total = int(status.get("blocks", 0))
    complete = bool(status.get("complete"))
    location = stores.parse(path) if lists_records else None
    records = _records(location) if location is not None else 0
    note = None
    if complete and records and location is not None:
        try:
            _, holder = lifecycle.lease_state(zarr_output.store(location, writable=False))
        except Exception:  # unreadable lease: say what the records say
            holder = None
        if holder is not None:
            note = "a run that holds its lease is finishing it"
    finish_pending = None if records is None else complete and records > 0
    source = status.get("input", {})
    config = status.get("config") if isinstance(status.get("config"), dict) else {}
    pipeline = config.get("pipeline", []) if isinstance(config, dict) else []
    steps = []
    for number, step in enumerate(status.get("steps", [])):
        recorded = pipeline[number] if number < len(pipeline) and isinstance(pipeline[number], dict) else {}
        parameters = {k: v for k, v in recorded.items() if k != "filter"}
        steps.append({"filter": step.get("filter"), "parameters": parameters, "output_shape": step.get("output_shape")})
    return {
        "status": {
            "complete": complete,
            "blocks": total,
            "written": total if complete else records,
            "note": note,
            "finish_pending": finish_pending,
        },
        "made_by": {"convpipe": status.get("version"), "config_file": status.get("config_file")},
        "input": {"path": source.get("path"), "shape": source.get("shape"), "dtype": source.get("dtype")},
        "steps": steps,
    }


def _records(location: stores.Location) -> int | None:
    """How many block records an output holds; None where they cannot be listed (http has no
    listing, and a bucket may refuse one).

    Listed with obstore's blocking call, not zarr's async store: after an async listing, a
    thread of obstore's runtime can still be handing Python its result as this short-lived
    command exits, and the interpreter's shutdown then aborts (seen in 1 run of 100)."""
    if not location.writable:
        return None
    try:
        found = stores.list_objects(location, zarr_output.BLOCKS_PREFIX)
        return sum(1 for info in found if lifecycle.is_block_record(info.key.rsplit("/", 1)[-1]))
    except Exception:
        return None


def _frame(axes: str, frame: Frame) -> list[dict[str, Any]]:
    """Per axis: the spacing, the position of sample 0's centre, the unit."""
    return [
        {"axis": letter, "scale": axis.scale, "translation": axis.translation, "unit": axis.unit}
        for letter, axis in zip(axes, frame, strict=True)
    ]


def _ome_zarr(node: Any, path: str, image: dict[str, Any], version: str) -> dict[str, Any]:
    axes = "".join(str(a.get("name", "?")) if isinstance(a, dict) else str(a) for a in image.get("axes", []))
    info: dict[str, Any] = {"path": path, "format": f"OME-Zarr {version} (Zarr v{node.metadata.zarr_format} group)"}
    info["axes"] = axes
    levels = {}
    for level, dataset in enumerate(image.get("datasets", [])):
        name = dataset.get("path") if isinstance(dataset, dict) else None
        if not isinstance(name, str) or not name:
            levels[f"level {level}"] = {"missing": "the multiscales metadata names no path for it"}
            continue
        try:
            array = node[name]
        except KeyError:
            levels[f"{name} (level {level})"] = {"missing": "the metadata names it but it is not there"}
            continue
        described = _zarr_array(array, _join(path, name))
        described.pop("axes", None)
        try:
            described["coordinates"] = _frame(axes, ngff_frame(image, level)) if len(axes) == array.ndim else []
        except ValueError as error:
            described["coordinates_error"] = f"unreadable: {error}"
        levels[f"{name} (level {level})"] = described
    info["arrays"] = levels
    return {**info, **_about(dict(node.attrs), path)}


def _join(path: str, name: str) -> str:
    return str(stores.parse(path).joinpath(name))


def _zarr(location: stores.Location) -> dict[str, Any]:
    import zarr

    path = location.display
    try:
        node = zarr.open(store=stores.open_store(location), mode="r")
    except Exception as error:
        raise RunError(stores.redact(f"{path}: not a readable Zarr array or group ({error})")) from None
    if isinstance(node, zarr.Array):
        return {"path": path, **_zarr_array(node, path)}
    ngff = multiscales(dict(node.attrs))
    if ngff is not None:
        return _ome_zarr(node, path, ngff[0][0], ngff[1])
    members = {name: _zarr_array(array, _join(path, name)) for name, array in sorted(node.arrays())}
    return {"path": path, "format": f"Zarr v{node.metadata.zarr_format} group", "arrays": members}


def _tiff(location: stores.Location) -> dict[str, Any]:
    import tifffile

    path = location.display
    try:
        with tifffile.TiffFile(location.path if location.is_local else stores.open_file(location)) as tif:
            page = tif.pages.first
            layout = (
                f"tiles {page.tilelength}x{page.tilewidth}" if page.is_tiled else f"strips of {page.rowsperstrip} rows"
            )
            kind = [name for name in ("ome", "imagej", "geotiff", "bigtiff") if getattr(tif, f"is_{name}", False)]
            info: dict[str, Any] = {
                "path": path,
                "format": "TIFF" + (f" ({', '.join(kind)})" if kind else ""),
                "layout": layout,
                "compression": page.compression.name.lower(),
                "series": [
                    {
                        "shape": list(series.shape),
                        "dtype": str(series.dtype),
                        "axes": series.axes.lower(),
                        "levels": len(series.levels),
                    }
                    for series in tif.series
                ],
            }
            axes = axis_letters(list(tif.series[0].axes.replace("S", "C")))
            frame = tiff_frame(tif, 0, 0, axes)
            if axes is not None and not is_identity(frame):
                info["coordinates"] = _frame(axes, frame)
            geo = read_geo(tif, axes)  # series 0, level 0: what the lines above describe
            if geo is not None:
                info["crs"] = geo.crs or "user-defined (see its GeoKeys)"
                info["geotransform"] = list(geo.geotransform)
                if geo.nodata is not None:
                    info["nodata"] = geo.nodata
            made = gdal_metadata(page).get("convpipe")
            if made:
                info.update(_status(json.loads(made), path, lists_records=False))
                if path.endswith(PARTIAL_SUFFIX):
                    note = "an unfinished GeoTIFF write (the next run removes it)"
                    info["status"] = {**info["status"], "complete": False, "written": None, "note": note}
            return info
    except Exception as error:
        raise RunError(stores.redact(f"{path}: not a readable TIFF ({error})")) from None


def describe(path: str) -> dict[str, Any]:
    """Shape, dtype, chunks, axes, codecs and (for convpipe outputs) completeness."""
    location = stores.parse(path)
    if location.is_local and not Path(location.path).exists():
        raise RunError(f"{location}: no such file or directory")
    if location.is_remote:
        stores.probe(location, write=False)
    name = location.name.lower().removesuffix(PARTIAL_SUFFIX)
    return _tiff(location) if name.endswith(TIFF_SUFFIXES) or is_tiff(location) else _zarr(location)
