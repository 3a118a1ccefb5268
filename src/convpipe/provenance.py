"""What an output records about how it was made, and the check that a resume continues the
same computation (README, "Resume").

Besides the resolved config, the record holds a fingerprint of the input's content and a
digest of every ``kernel_file``: an input rewritten in place with the same shape, or an edited
kernel, would otherwise be finished from new data and marked complete, half old and half new.
The input fingerprint is a digest of the listing of its objects (key, size, and the store's
version of each: the ETag in an object store, the modification time and inode on a disk):
one listing, no pixel read. It misses a chunk rewritten with the same size within the same
nanosecond on a disk, and nothing an ETag would show in an object store. An HTTP server cannot
list, so there only the metadata documents are fingerprinted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from convpipe import filters
from convpipe._version import __version__
from convpipe.config import TIFF_FORMATS
from convpipe.errors import ConfigError, RunError
from convpipe.io import lifecycle, stores
from convpipe.io.inputs import TIFF_SUFFIXES

if TYPE_CHECKING:
    from convpipe.config import Config
    from convpipe.plan import Plan


def input_fingerprint(location: stores.Location) -> dict[str, Any]:
    """A digest of the input's objects as listed by its store: a Zarr's chunks, a TIFF's file."""
    try:
        if location.scheme in ("http", "https") and not location.name.lower().endswith(TIFF_SUFFIXES):
            listing = _http_zarr_listing(location)
        else:
            single = stores.object_info(location)
            listing = [single] if single is not None else list(stores.list_objects(location))
    except Exception as error:
        raise RunError(stores.describe_error(location, error)) from None
    return lifecycle.fingerprint((item.key, item.size, item.version) for item in listing)


def _http_zarr_listing(location: stores.Location) -> list[stores.ObjectInfo]:
    """An HTTP server cannot list a Zarr: its metadata documents stand in (their ETags or
    modification times), so a resume notices a rewritten image but not one rewritten chunk."""
    found = []
    for name in ("zarr.json", ".zgroup", ".zattrs", ".zarray", "0/zarr.json", "0/.zarray"):
        info = stores.object_info(location.joinpath(*name.split("/")))
        if info is not None:
            found.append(stores.ObjectInfo(name, info.size, info.version))
    return found


def kernel_digests(config: Config) -> dict[str, str]:
    digests = {}
    for step in config.pipeline:
        if isinstance(step, filters.Convolve) and step.kernel_file is not None:
            try:
                digests[step.kernel_file] = lifecycle.file_digest(step.kernel_file)
            except OSError as error:
                raise RunError(f"kernel_file {step.kernel_file}: cannot read it ({error.strerror})") from None
    return digests


def provenance(config: Config, plan: Plan, fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the output records about how it was made (README, "Data safety")."""
    location = config.input.location
    return {
        "version": __version__,
        "config": config.resolved(),
        "config_file": config.source,
        "input": {
            "path": location.display,
            "shape": list(plan.input_shape),
            "dtype": str(plan.input_dtype),
            "axes": plan.axes,
            "fingerprint": fingerprint if fingerprint is not None else input_fingerprint(location),
        },
        "kernels": kernel_digests(config),
        "steps": [{"filter": step.config.filter, "output_shape": list(step.out_shape)} for step in plan.steps],
        "blocks": plan.num_blocks,
        "block_shape": list(plan.block_shape),
        "storage": {
            "format": plan.storage.format,
            "codec": plan.storage.codec,
            "chunks": list(plan.storage.chunks if plan.storage.format in TIFF_FORMATS else plan.storage_chunks),
            "shards": list(plan.shard_shape) if plan.shard_shape else None,
            "levels": _levels(plan),
        },
    }


def _levels(plan: Plan) -> int:
    """Resolutions written: the OME-Zarr pyramid's, or a COG's overviews and full resolution."""
    if plan.storage.format == "cog" and plan.storage.chunks is not None:
        from convpipe.io.cog import planned_levels

        return len(planned_levels(plan.output_shape, plan.storage.chunks))
    return len(plan.level_shapes())


#: What must be the same for a resume to continue a computation.
RESUME_KEYS = ("version", "input", "kernels", "blocks", "block_shape")


def check_resumable(recorded: dict[str, Any], current: dict[str, Any]) -> None:
    """A resume must continue the same computation: same convpipe, config, input content,
    kernels and blocks; the first difference is named."""
    old = {k: recorded.get(k) for k in RESUME_KEYS} | {"config": _without_overwrite(recorded.get("config"))}
    new = {k: current.get(k) for k in RESUME_KEYS} | {"config": _without_overwrite(current.get("config"))}
    difference = lifecycle.first_difference(old, new)
    if difference:
        raise ConfigError(f"--resume: the output was made differently, refusing to mix results ({difference})")


def _without_overwrite(config: Any) -> Any:
    if not isinstance(config, dict):
        return config
    output = {k: v for k, v in config.get("output", {}).items() if k != "overwrite"}
    return {**config, "output": output}
