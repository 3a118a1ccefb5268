"""YAML → a validated, resolved ``Config``; ``--set`` overrides; errors that name the key.

Validation happens section by section so that every complaint reads like
``pipeline[1].sigma: must be > 0 (got -2)``: the place, what is wrong, what is allowed.
Relative paths are resolved against the config file's folder (README, "Config"); a URL
(``s3://``, ``gs://``, ``az://``, ``https://``) is kept as it is, never read as a local path.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError

from convpipe import filters
from convpipe.cluster import ClusterConfig
from convpipe.errors import ConfigError
from convpipe.params import (
    Boolean,
    OptionalText,
    Text,
    as_plain,
    fail,
    integer,
    number,
    one_of,
    optional,
    per_axis,
    shown,
)

if TYPE_CHECKING:
    from convpipe.io.stores import Location

SPATIAL_AXES = "zyx"
AXIS_LETTERS = "tczyx"

#: Output dtypes allowed besides ``input`` (the input's own dtype).
OUTPUT_DTYPES = (
    "float32",
    "float64",
    "float16",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "int8",
    "int16",
    "int32",
    "int64",
)


def _axes(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or any(letter not in AXIS_LETTERS for letter in value):
        raise fail(f"must be letters from {AXIS_LETTERS}, one per dimension, like yx or czyx (got {shown(value)})")
    if len(set(value)) != len(value):
        raise fail(f"must not repeat a letter (got {shown(value)})")
    if not any(letter in SPATIAL_AXES for letter in value):
        raise fail(f"needs at least one spatial axis (z, y or x) (got {shown(value)})")
    return value


def _dtype(value: Any) -> str:
    if value != "input" and value not in OUTPUT_DTYPES:
        raise fail(f"must be input or one of {', '.join(OUTPUT_DTYPES)} (got {shown(value)})")
    return str(value)


#: ``output.format`` names; by default the output path's suffix or the input decides (``output_format``).
#: ``cog`` (a Cloud-Optimized GeoTIFF) is only ever asked for: a ``.tif`` path means geotiff.
FORMATS = ("zarr", "ome-zarr", "geotiff", "cog")

#: The formats that are one TIFF file, written in file order.
TIFF_FORMATS = ("geotiff", "cog")

#: ``output.overview_resampling`` (COG only): how each overview is made from the level below.
OVERVIEW_RESAMPLINGS = ("average", "nearest")

#: ``output.codec`` names. blosc-lz4 with byte shuffle is the Zarr default: on the edges
#: output it encodes faster than zstd and compresses better (README, "Performance").
#: GeoTIFF has no lz4 and defaults to deflate, which every TIFF reader knows.
CODECS = ("lz4", "zstd", "deflate", "none")

#: OME-NGFF versions written: 0.5 on Zarr v3 (the default), 0.4 on Zarr v2 for older viewers.
NGFF_VERSIONS = ("0.5", "0.4")


def _ngff_version(value: Any) -> str:
    # An unquoted 0.4 in YAML is a number: take it as the version it spells.
    text = str(value) if isinstance(value, str | float) and not isinstance(value, bool) else repr(value)
    if text not in NGFF_VERSIONS:
        raise fail(f"must be one of {', '.join(NGFF_VERSIONS)} (got {shown(value)})")
    return text


def _storage(value: Any) -> dict[str, Any] | None:
    """An object store's settings (README, "Object stores"); secrets are never echoed."""
    from convpipe.io import stores

    if value is None:
        return None
    if not isinstance(value, dict):
        raise fail(
            f"must be a mapping like {{endpoint: http://localhost:9000, region: us-east-1}} (got {shown(value)})"
        )
    try:
        stores.check_storage(value)
    except ConfigError as error:
        raise fail(str(error).removeprefix("storage: ").removeprefix("storage.")) from None
    return dict(value)


def _shown_path(path: str) -> str:
    from convpipe.io import stores

    return stores.parse(path).display


def redacted(storage: dict[str, Any] | None) -> dict[str, Any] | None:
    """The storage mapping as recorded and shown: secrets replaced by ``***``."""
    if storage is None:
        return None
    from convpipe.io.stores import SECRET_KEYS

    return {key: "***" if key in SECRET_KEYS else value for key, value in storage.items()}


def _chunks(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise fail(f"must be a list with one block length per dimension (got {shown(value)})")
    return tuple(per_axis(integer(1), "an integer >= 1", len(AXIS_LETTERS))(list(value)))


def _nodata_value(value: Any) -> float | str:
    """A nodata value: a finite number, or nan (YAML's .nan too); ``none`` where allowed."""
    if isinstance(value, str) and value.strip().lower() in ("nan", "none"):
        return value.strip().lower()
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return number(value)


def _output_nodata(value: Any) -> float | str:
    checked = _nodata_value(value)
    if checked == "none":
        raise fail("must be a number or nan (leave it out for the input's own)")
    return checked


class InputConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Text = Field(
        description="the TIFF or Zarr to read: a path (relative to the config file) or a URL (s3://, gs://, az://, "
        "https://)"
    )
    array: OptionalText = Field(None, description="the array inside a Zarr group")
    series: Annotated[int, PlainValidator(integer(0))] = Field(0, description="TIFF series")
    nodata: Annotated[float | str | None, PlainValidator(optional(_nodata_value))] = Field(
        None,
        description="the value marking missing samples: a number, nan or none (default: the file's own, "
        "GeoTIFF GDAL_NODATA or a Zarr nodata attribute)",
    )
    level: Annotated[int, PlainValidator(integer(0))] = Field(0, description="TIFF pyramid level")
    axes: Annotated[str | None, PlainValidator(_axes)] = Field(None, description="letters from tczyx")
    chunks: Annotated[tuple[int, ...] | None, PlainValidator(_chunks), as_plain] = Field(
        None, description="processing block shape, in input pixels"
    )
    storage: Annotated[dict[str, Any] | None, PlainValidator(_storage)] = Field(
        None, description="object store settings: endpoint, region, anonymous, allow_http, profile, credentials"
    )

    @property
    def location(self) -> Location:
        """Where the path points: a local path or a URL, with this section's storage settings."""
        from convpipe.io import stores

        return stores.parse(self.path, storage=self.storage)


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Text = Field(
        description="the Zarr or GeoTIFF to write: a path (relative to the config file) or a URL (s3://, gs://, az://)"
    )
    dtype: Annotated[str, PlainValidator(_dtype)] = Field("float32", description="output dtype or `input`")
    overwrite: Boolean = Field(False, description="replace an existing output")
    nodata: Annotated[float | str | None, PlainValidator(optional(_output_nodata))] = Field(
        None,
        description="the value written for nodata samples: a number or nan (default: the input's when the "
        "output dtype holds it, else nan for a float output)",
    )
    format: Annotated[str | None, PlainValidator(optional(one_of(*FORMATS)))] = Field(
        None,
        description="zarr, ome-zarr, geotiff or cog (default: from the path's suffix, .ome.zarr or .tif; "
        "else ome-zarr for an OME-Zarr input, zarr otherwise)",
    )
    codec: Annotated[str | None, PlainValidator(optional(one_of(*CODECS)))] = Field(
        None, description="compression: lz4 (blosc; the Zarr default), zstd, deflate (the GeoTIFF default) or none"
    )
    chunks: Annotated[tuple[int, ...] | None, PlainValidator(_chunks), as_plain] = Field(
        None, description="storage chunks (GeoTIFF: tiles), in output samples; default: one per block"
    )
    shards: Boolean = Field(False, description="Zarr v3 sharding: one shard per block, chunks inside it")
    pyramid: Annotated[int, PlainValidator(integer(0))] = Field(
        0, description="OME-Zarr: extra levels, each a 2x mean of the one before"
    )
    ngff_version: Annotated[str | None, PlainValidator(optional(_ngff_version))] = Field(
        None, description="OME-Zarr: 0.5 (Zarr v3; the default) or 0.4 (Zarr v2)"
    )
    overview_resampling: Annotated[str | None, PlainValidator(optional(one_of(*OVERVIEW_RESAMPLINGS)))] = Field(
        None, description="COG: how overviews are made, average (nodata-aware; the default) or nearest"
    )
    storage: Annotated[dict[str, Any] | None, PlainValidator(_storage)] = Field(
        None, description="object store settings: endpoint, region, anonymous, allow_http, profile, credentials"
    )

    @property
    def location(self) -> Location:
        """Where the path points: a local path or a URL, with this section's storage settings."""
        from convpipe.io import stores

        return stores.parse(self.path, storage=self.storage)


class Config(BaseModel):
    """A whole, validated config: what to read, what to run, where to write (and on what)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: InputConfig
    output: OutputConfig
    pipeline: tuple[filters.Step, ...]
    cluster: ClusterConfig | None = None
    source: str | None = Field(None, description="the config file this came from")

    def resolved(self) -> dict[str, Any]:
        """The config as plain data, every default filled in: recorded in the output."""
        sections = {}
        for name, section in (("input", self.input), ("output", self.output)):
            shown = _shown_path(section.path)  # a URL's password or signature is never recorded
            sections[name] = {**section.model_dump(mode="json"), "path": shown, "storage": redacted(section.storage)}
        return {
            **sections,
            "pipeline": [step.model_dump(mode="json") for step in self.pipeline],
        }


SECTIONS: dict[str, type[BaseModel]] = {"input": InputConfig, "output": OutputConfig}
OPTIONAL_SECTIONS: dict[str, type[BaseModel]] = {"cluster": ClusterConfig}
ALL_SECTIONS = ("input", "output", "pipeline", *OPTIONAL_SECTIONS)


def _place(prefix: str, loc: tuple[Any, ...]) -> str:
    place = prefix
    for part in loc:
        name = str(part) if len(str(part)) <= 40 else str(part)[:39] + "…"  # a key may be any long string
        place += f"[{part}]" if isinstance(part, int) else (f".{name}" if place else name)
    return place


def _explain(error: ValidationError, prefix: str, model: type[BaseModel]) -> ConfigError:
    """One line for the first problem (and a count of the others)."""
    problems = error.errors()
    first = problems[0]
    place = _place(prefix, tuple(first["loc"]))
    kind = first["type"]
    if kind == "missing":
        message = "is required"
    elif kind == "extra_forbidden":
        key = str(first["loc"][-1])
        allowed = list(model.model_fields)
        close = difflib.get_close_matches(key[:80], allowed, n=1)  # a long key: no slow match
        hint = f"did you mean {close[0]}? " if close else ""
        message = f"unknown key ({hint}allowed: {', '.join(allowed)})"
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        message = f"must be a mapping of keys (got {shown(first['input'])})"
    else:
        message = first["msg"]
    more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
    return ConfigError(f"{place}: {message}{more}")


def _validate(model: type[BaseModel], data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: must be a mapping of keys (got {shown(data)})")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise _explain(error, prefix, model) from None


def validate_step(data: Any, index: int) -> filters.Step:
    """Check one pipeline entry against its filter's keys."""
    place = f"pipeline[{index}]"
    if not isinstance(data, dict):
        raise ConfigError(f"{place}: must be a mapping with a filter key (got {shown(data)})")
    name = data.get("filter")
    if name is None:
        raise ConfigError(f"{place}.filter: is required (one of: {', '.join(filters.FILTERS)})")
    entry = filters.lookup(name) if isinstance(name, str) else None
    if entry is None:
        names = [*filters.FILTERS, *filters.ALIASES]
        close = difflib.get_close_matches(str(name)[:80], names, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"{place}.filter: unknown filter {shown(name)} ({hint}known: {', '.join(filters.FILTERS)})")
    step: filters.Step = _validate(entry.params, data, place)
    return step


def from_dict(data: Any, base_dir: Path | str = ".", source: str | None = None) -> Config:
    """Validate a config given as plain data, resolving relative paths against ``base_dir``."""
    where = source or "config"
    if data is None:
        raise ConfigError(f"{where}: the config is empty; it needs input, output and pipeline")
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping with input, output and pipeline (got {type(data).__name__})")
    for key in data:
        if key not in ALL_SECTIONS:
            close = difflib.get_close_matches(str(key)[:80], ALL_SECTIONS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"{_place('', (str(key),))}: unknown section ({hint}allowed: {', '.join(ALL_SECTIONS)})")
    for key in ("input", "output", "pipeline"):
        if key not in data:
            raise ConfigError(f"{key}: is required")
    sections = {name: _validate(model, data[name], name) for name, model in SECTIONS.items()}
    extras = {name: _validate(model, data[name], name) for name, model in OPTIONAL_SECTIONS.items() if name in data}
    pipeline = data["pipeline"]
    if not isinstance(pipeline, list) or not pipeline:
        raise ConfigError(f"pipeline: must be a non-empty list of steps (got {shown(pipeline)})")
    steps = [validate_step(step, index) for index, step in enumerate(pipeline)]
    base = Path(base_dir)
    steps = [
        step.model_copy(update={"kernel_file": _absolute(base, step.kernel_file)})
        if isinstance(step, filters.Convolve) and step.kernel_file is not None
        else step
        for step in steps
    ]
    paths = {name: _location(base, sections[name], name) for name in ("input", "output")}
    input_config = sections["input"].model_copy(update={"path": paths["input"]})
    output_config = sections["output"].model_copy(update={"path": paths["output"]})
    return Config(input=input_config, output=output_config, pipeline=tuple(steps), source=source, **extras)


def _absolute(base: Path, path: str) -> str:
    return os.path.normpath((base / Path(path).expanduser()).absolute())


def _location(base: Path, section: InputConfig | OutputConfig, name: str) -> str:
    """A section's path resolved: a local path made absolute, a URL checked and kept."""
    from convpipe.io import stores

    try:
        location = stores.parse(section.path, base, section.storage)
    except ConfigError as error:
        raise ConfigError(f"{name}.path: {error}") from None
    if name == "output" and not location.writable:
        raise ConfigError(f"output.path: {location.display} is read-only (https:// serves inputs only)")
    return location.url


_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")


def _is_path_key(parts: tuple[str | int, ...]) -> bool:
    """``input.path``, ``output.path`` and ``pipeline[i].kernel_file``: the keys that name files."""
    return parts in (("input", "path"), ("output", "path")) or (
        len(parts) == 3 and parts[0] == "pipeline" and parts[2] == "kernel_file"
    )


def _from_here(parts: tuple[str | int, ...], value: Any) -> Any:
    """``value`` set at ``parts``, its relative local paths made absolute against the current
    directory: a path typed in the shell means what the shell means by it (README, "Config keys")."""
    if isinstance(value, dict):
        return {key: _from_here((*parts, key), item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_here((*parts, index), item) for index, item in enumerate(value)]
    local = isinstance(value, str) and "://" not in value and not value.startswith("~")
    if local and value and _is_path_key(parts) and not os.path.isabs(value):
        return os.path.abspath(value)
    return value


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``--set key.path=value``; the value is read as YAML (``3`` is a number). A
    relative file path given this way is relative to the current directory, not to the config."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {assignment}: expected KEY=VALUE, like pipeline[0].sigma=3")
    try:
        value = yaml.load(raw, Loader=_StrictLoader) if raw else ""
    except yaml.YAMLError:
        value = raw
    parts: list[str | int] = []
    for token in key.split("."):
        match = _KEY.fullmatch(token)
        if match is None:
            raise ConfigError(f"--set {assignment}: {shown(token)} is not a key like name or name[2]")
        parts.append(match.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", match.group(2)))
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        child = node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else None
        if isinstance(node, dict) and isinstance(part, str):
            child = node.setdefault(part, [] if isinstance(parts[depth + 1], int) else {})
        if child is None:
            raise ConfigError(f"--set {assignment}: {_place('', tuple(parts[: depth + 1]))} does not exist")
        node = child
    last = parts[-1]
    if (isinstance(node, dict) and isinstance(last, str)) or (
        isinstance(node, list) and isinstance(last, int) and last < len(node)
    ):
        node[last] = _from_here(tuple(parts), value)
    else:
        raise ConfigError(f"--set {assignment}: {_place('', tuple(parts))} does not exist")


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice is an error instead of the last one winning."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {shown(key)} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1, which PyYAML follows, reads 1e-3 and 1.0e5 as strings (its floats need a dot and a
# signed exponent); YAML 1.2 and every user read them as numbers, and so does convpipe.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_yaml(path: Path) -> Any:
    """Parse the file; a syntax error names the line and column."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the config ({error})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: builds only plain data
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML: {where}{problem}") from None


def load(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """Read, override and validate a config file."""
    path = Path(path)
    data = read_yaml(path)
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: must be a mapping with input, output and pipeline")
        for assignment in overrides:
            apply_override(data, assignment)
    return from_dict(data, base_dir=path.parent, source=os.path.normpath(path.absolute()))


def output_format(output: OutputConfig, input_kind: str) -> str:
    """The format written: as asked, else by the path's suffix, else like the input."""
    if output.format is not None:
        return output.format
    name = output.path.lower().rstrip("/")
    if name.endswith((".tif", ".tiff")):
        return "geotiff"
    if name.endswith(".ome.zarr") or input_kind == "ome-zarr":
        return "ome-zarr"
    return "zarr"


def output_codec(output: OutputConfig, format_name: str) -> str:
    """The compression written: as asked, else the format's default."""
    if output.codec is not None:
        return output.codec
    return "deflate" if format_name in TIFF_FORMATS else "lz4"


def output_dtype(config: Config, input_dtype: np.dtype) -> np.dtype:
    """The dtype written: as asked, or the input's own for ``dtype: input``."""
    return np.dtype(input_dtype if config.output.dtype == "input" else config.output.dtype)


__all__ = ["Config", "ConfigError", "apply_override", "from_dict", "load"]
