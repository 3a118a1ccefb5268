"""What a TIFF or Zarr holds, as plain data for ``convpipe info``: no pixels are read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convpipe.errors import RunError
from convpipe.io import outputs
from convpipe.io.inputs import TIFF_SUFFIXES


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
    status = array.attrs.get("convpipe")
    if isinstance(status, dict):
        total = int(status.get("blocks", 0))
        if status.get("complete"):
            info["status"] = f"complete ({total} blocks)"
        else:
            written = outputs.count_written(path)
            info["status"] = f"partial ({written} of {total} blocks written); finish it with convpipe run --resume"
        info["made by"] = f"convpipe {status.get('version', '?')} from {status.get('config_file') or 'a config'}"
        source = status.get("input", {})
        info["input"] = f"{source.get('path')} {tuple(source.get('shape', []))} {source.get('dtype')}"
        info["steps"] = [f"{s['filter']} -> {tuple(s['output_shape'])}" for s in status.get("steps", [])]
    return info


def _zarr(path: str) -> dict[str, Any]:
    import zarr

    try:
        node = zarr.open(path, mode="r")
    except Exception as error:
        raise RunError(f"{path}: not a readable Zarr array or group ({error})") from None
    if isinstance(node, zarr.Array):
        return {"path": path, **_zarr_array(node, path)}
    members = {name: _zarr_array(array, str(Path(path) / name)) for name, array in sorted(node.arrays())}
    return {"path": path, "format": f"Zarr v{node.metadata.zarr_format} group", "arrays": members}


def _tiff(path: str) -> dict[str, Any]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            layout = (
                f"tiles {page.tilelength}x{page.tilewidth}" if page.is_tiled else f"strips of {page.rowsperstrip} rows"
            )
            kind = [name for name in ("ome", "imagej", "geotiff", "bigtiff") if getattr(tif, f"is_{name}", False)]
            return {
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
    except Exception as error:
        raise RunError(f"{path}: not a readable TIFF ({error})") from None


def describe(path: str) -> dict[str, Any]:
    """Shape, dtype, chunks, axes, codecs and (for convpipe outputs) completeness."""
    if not Path(path).exists():
        raise RunError(f"{path}: no such file or directory")
    return _tiff(path) if path.lower().endswith(TIFF_SUFFIXES) else _zarr(path)
