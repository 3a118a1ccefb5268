"""Descriptions of the plan, the filter list, what a file holds and what a run did: as text
for people, and as plain data for scripts and workflow managers (``--json``; README, "Commands
and exit status"): shapes as lists, sizes in bytes, keys that stay put."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from convpipe import coords, filters
from convpipe.config import TIFF_FORMATS
from convpipe.plan import Plan


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def plural(count: int, noun: str) -> str:
    """``1 block``, ``2 blocks``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _per_axis(values: list[Any]) -> str:
    return "x".join(str(v) for v in values) if len(set(values)) > 1 else str(values[0])


def default_workers() -> int:
    return os.cpu_count() or 1


def describe_plan(plan: Plan, workers: int | None = None, budget: int | None = None) -> str:
    """Each step's geometry, the block layout and the memory estimate (``convpipe plan``)."""
    workers = workers or default_workers()
    spatial = plan.spatial
    letters = "".join(plan.axes[d] for d in spatial)
    lines = [
        f"input   shape {plan.input_shape} {plan.input_dtype}, axes {plan.axes}, storage chunks {plan.input_chunks}",
        f"compute {plan.compute_dtype}; output {plan.output_shape} {plan.output_dtype}",
        describe_nodata(plan),
        "",
        f"steps (per spatial axis {letters}; halo = input pixels a block reads beyond its own, before/after)",
    ]
    lines.append(
        f"  {'#':>2}  {'filter':<10} {'F':<9} {'pad (before/after)':<20} "
        f"{'padding':<10} {'stride':<7} {'halo':<16} output"
    )
    for step in plan.steps:
        axes = [step.axes[d] for d in spatial]
        halo = plan.halo(step.index)
        padding = _padding(step) or "-"
        lines.append(
            f"  {step.index:>2}  {step.config.filter:<10} "
            f"{_per_axis([a.size for a in axes]):<9} "
            f"{_per_axis([f'{a.pad_before}/{a.pad_after}' for a in axes]):<20} "
            f"{padding:<10} "
            f"{_per_axis([a.stride for a in axes]):<7} "
            f"{_per_axis([f'{halo[d][0]}/{halo[d][1]}' for d in spatial]):<16} "
            f"{step.out_shape}"
        )
    grid = tuple(len(c) for c in plan.chunks)
    lines += ["", *describe_storage(plan)]
    lines += [
        "",
        f"blocks  {plural(plan.num_blocks, 'output block')} of {plan.block_shape} (grid {grid}), "
        f"from input blocks of {plan.input_block}",
        f"tasks   {plan.task_count}" + (f" ({plan.range_passes} extra pass for rescale)" if plan.range_passes else ""),
        f"memory  about {_size(plan.memory_per_block())} per block in flight; "
        f"estimated peak {_size(plan.memory_estimate(workers))} with {workers} workers"
        + (f" (budget {_size(budget)})" if budget else ""),
        "        (input block with its halo, each step's window and result, the output block;"
        + (
            f" plus {_size(plan.cache_bytes)} of decoded input chunks shared by neighbouring halos and"
            if plan.cache_bytes
            else " plus"
        )
        + " about 120 MiB for the process)",
    ]
    return "\n".join(lines)


def describe_nodata(plan: Plan) -> str:
    """Where nodata comes from and what the steps do with it (README, "Nodata")."""
    policies = ", ".join(f"{s.index}: {s.config.nodata}" for s in plan.steps if s.config.nodata != "propagate")
    if not plan.masked:
        unused = f"; the steps' nodata policies ({policies}) have nothing to act on" if policies else ""
        return f"nodata  none (the input declares no nodata value){unused}"
    nan = plan.input_dtype.kind == "f"  # NaN is nodata too, where it can occur
    if plan.nodata is None or math.isnan(plan.nodata):
        source = "NaN"
    else:
        source = f"{plan.nodata:g}" + (" and NaN" if nan else "")
    written = "as NaN is (0 in an integer output)" if plan.output_nodata is None else f"as {plan.output_nodata:g}"
    return f"nodata  {source} in the input; written {written}; steps {policies or 'all propagate'}"


def describe_storage(plan: Plan) -> list[str]:
    """The output's format and layout, and where its samples are."""
    storage = plan.storage
    kind = {"zarr": "Zarr v3", "geotiff": "GeoTIFF, tiled", "cog": "Cloud-Optimized GeoTIFF, tiled"}.get(
        storage.format, f"OME-Zarr {storage.ngff_version}"
    )
    chunks = plan.storage.chunks if storage.format in TIFF_FORMATS else plan.storage_chunks
    layout = f"{'tiles' if storage.format in TIFF_FORMATS else 'chunks'} {chunks}"
    if plan.shard_shape:
        layout += f" in shards of {plan.shard_shape} (one per block)"
    lines = [f"output  {kind}, {storage.codec}, {layout}"]
    if storage.pyramid:
        lines.append(f"        pyramid: {storage.pyramid} more levels, {', '.join(map(str, plan.level_shapes()[1:]))}")
    if storage.format == "cog" and storage.chunks is not None:
        from convpipe.io.cog import planned_levels

        overviews = planned_levels(plan.output_shape, storage.chunks)[1:]
        shapes = ", ".join(map(str, overviews)) if overviews else "none: one tile holds the image"
        lines.append(f"        overviews ({storage.overview_resampling}): {shapes}")
    if plan.input_frame is not None and not coords.is_identity(plan.input_frame):
        frame = plan.output_frame
        lines.append(
            "        sample centres: "
            + ", ".join(
                f"{letter} from {axis.translation:.10g} every {axis.scale:.10g}{' ' + axis.unit if axis.unit else ''}"
                for letter, axis in zip(plan.axes, frame, strict=True)
                if letter in "zyx"
            )
        )
    else:
        pairs = zip(plan.axes, plan.sample_frame, strict=True)
        moved = [(letter, a) for letter, a in pairs if letter in "zyx" and (a.scale, a.translation) != (1, 0)]
        if moved:
            lines.append(
                "        sample centres, in input samples: "
                + ", ".join(f"{letter} from {a.translation:g} every {a.scale:g}" for letter, a in moved)
            )
    return lines


def _padding(step: Any) -> str | None:
    """The padding rule as the plan shows it; None when the step pads nothing (``pad: valid``)."""
    if all(a.pad_before == 0 and a.pad_after == 0 for a in step.axes):
        return None
    padding = str(step.config.padding)
    return f"constant({step.config.cval:g})" if padding == "constant" else padding


def _levels(plan: Plan) -> list[list[int]]:
    """Every resolution written: the OME-Zarr pyramid's levels or a COG's overviews."""
    if plan.storage.format == "cog" and plan.storage.chunks is not None:
        from convpipe.io.cog import planned_levels

        return [list(shape) for shape in planned_levels(plan.output_shape, plan.storage.chunks)]
    return [list(shape) for shape in plan.level_shapes()]


def _frame_data(axes: str, frame: Any) -> list[dict[str, Any]]:
    return [
        {"axis": letter, "scale": axis.scale, "translation": axis.translation, "unit": axis.unit}
        for letter, axis in zip(axes, frame, strict=True)
    ]


def plan_data(plan: Plan, workers: int | None = None, budget: int | None = None, **about: Any) -> dict[str, Any]:
    """``convpipe plan --json``: what ``describe_plan`` says, as data; ``about``: keys to put first
    (the config file, the output path)."""
    workers = workers or default_workers()
    spatial = plan.spatial
    storage = plan.storage
    tiff = storage.format in TIFF_FORMATS
    steps = []
    for step in plan.steps:
        axes = [step.axes[d] for d in spatial]
        halo = plan.halo(step.index)
        parameters = step.config.model_dump(mode="json")
        parameters.pop("filter", None)
        steps.append(
            {
                "index": step.index,
                "filter": step.config.filter,
                "parameters": parameters,
                "kernel_size": [a.size for a in axes],
                "pad_before": [a.pad_before for a in axes],
                "pad_after": [a.pad_after for a in axes],
                "padding": _padding(step),
                "stride": [a.stride for a in axes],
                "halo_before": [halo[d][0] for d in spatial],
                "halo_after": [halo[d][1] for d in spatial],
                "output_shape": list(step.out_shape),
            }
        )
    return {
        **about,
        "input": {
            "shape": list(plan.input_shape),
            "dtype": str(plan.input_dtype),
            "axes": plan.axes,
            "chunks": list(plan.input_chunks),
            "nbytes": int(np.prod(plan.input_shape)) * plan.input_dtype.itemsize,
            "nodata": plan.nodata if plan.masked else None,
            "coordinates": _frame_data(plan.axes, plan.input_frame) if plan.input_frame is not None else None,
        },
        "output": {
            "format": storage.format,
            "shape": list(plan.output_shape),
            "dtype": str(plan.output_dtype),
            "axes": plan.axes,
            "nbytes": int(np.prod(plan.output_shape)) * plan.output_dtype.itemsize,
            "codec": storage.codec,
            "chunks": list(storage.chunks if tiff and storage.chunks is not None else plan.storage_chunks),
            "shards": list(plan.shard_shape) if plan.shard_shape else None,
            "levels": _levels(plan),
            "nodata": plan.output_nodata if plan.masked else None,
            "coordinates": _frame_data(plan.axes, plan.output_frame if plan.input_frame else plan.sample_frame),
        },
        "compute_dtype": str(plan.compute_dtype),
        "masked": plan.masked,
        "steps": steps,
        "blocks": {
            "count": plan.num_blocks,
            "shape": list(plan.block_shape),
            "grid": [len(c) for c in plan.chunks],
            "input_shape": list(plan.input_block),
        },
        "tasks": plan.task_count,
        "memory": {
            "per_block_bytes": int(plan.memory_per_block()),
            "peak_bytes": int(plan.memory_estimate(workers)),
            "workers": workers,
            "budget_bytes": budget,
            "cache_bytes": max(int(plan.cache_bytes), 0),
        },
    }


def describe_validated(config_path: Path, plan: Plan) -> str:
    """``convpipe validate``'s one line."""
    return (
        f"ok: {config_path}: input {plan.input_shape} {plan.input_dtype} -> "
        f"output {plan.output_shape} {plan.output_dtype}, {plural(len(plan.steps), 'step')}, "
        f"{plural(plan.num_blocks, 'block')}"
    )


def validated_data(config_path: Path, output: str, plan: Plan) -> dict[str, Any]:
    """``convpipe validate --json``: printed only when every check passed."""
    return {
        "ok": True,
        "config": str(config_path),
        "input": {"shape": list(plan.input_shape), "dtype": str(plan.input_dtype), "axes": plan.axes},
        "output": {
            "path": output,
            "format": plan.storage.format,
            "shape": list(plan.output_shape),
            "dtype": str(plan.output_dtype),
        },
        "steps": len(plan.steps),
        "blocks": plan.num_blocks,
    }


#: The task graph's build time is shown only when it is a noticeable part of the run.
GRAPH_SECONDS_SHOWN = 1.0
GRAPH_SHARE_SHOWN = 0.05


def describe_run(result: Any, resume: bool) -> str:
    """The summary line of ``convpipe run`` (on stderr)."""
    plan = result.plan
    if resume and result.blocks == 0 and result.resumed_from == plan.num_blocks:
        if result.finished_again:
            return f"{result.output} is already complete; finished what its run left (the mark synced, records removed)"
        return f"{result.output} is already complete; nothing to do"
    resumed = f" (resumed: {result.resumed_from} were already there)" if result.resumed_from else ""
    graph = result.graph_seconds
    noticeable = graph > GRAPH_SECONDS_SHOWN or graph > GRAPH_SHARE_SHOWN * result.seconds
    graph_text = f" (task graph {graph:.1f} s)" if noticeable else ""
    return (
        f"wrote {result.output}: {plan.output_shape} {plan.output_dtype}, "
        f"{plural(result.blocks, 'block')} in {result.seconds:.1f} s{graph_text}{resumed}"
    )


def run_data(result: Any) -> dict[str, Any]:
    """``convpipe run --json``: the last line on stdout, for a workflow manager."""
    plan = result.plan
    return {
        "output": result.output,
        "format": plan.storage.format,
        "shape": list(plan.output_shape),
        "dtype": str(plan.output_dtype),
        "complete": result.blocks + result.resumed_from == plan.num_blocks,
        "blocks_total": plan.num_blocks,
        "blocks_written": result.blocks,
        "resumed_from": result.resumed_from,
        "seconds": round(result.seconds, 3),
        "graph_seconds": round(result.graph_seconds, 3),
        "took_over": result.took_over,
        "finished_again": result.finished_again,
    }


def to_json(data: Any, *, indent: int | None = 2) -> str:
    """Strict JSON (no NaN, which JSON has no word for: non-finite numbers become the strings
    "nan", "inf", "-inf", as the Zarr attributes write them)."""
    return json.dumps(_plain(data), indent=indent, allow_nan=False, ensure_ascii=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)  # dtypes, paths, enums


def _default(field: Any) -> str:
    """``(required)``, ``(default 3)``, or nothing when the description already says it."""
    if field.is_required():
        return " (required)"
    if field.default is None and "default" in (field.description or ""):
        return ""
    return f" (default {field.default!r})"


def describe_filters() -> str:
    """Every filter with its own keys (``convpipe filters``)."""
    lines = []
    for entry in filters.FILTERS.values():
        aliases = f" (also: {', '.join(entry.aliases)})" if entry.aliases else ""
        lines.append(f"{entry.name}{aliases}: {entry.summary}")
        for key, field in entry.own_keys().items():
            lines.append(f"    {key:<12} {field.description}{_default(field)}")
    lines.append("")
    lines.append("every step also takes:")
    for key in filters.Step.common_keys[1:]:
        field = filters.Step.model_fields[key]
        lines.append(f"    {key:<12} {field.description}{_default(field)}")
    return "\n".join(lines)


def _key_data(key: str, field: Any) -> dict[str, Any]:
    required = field.is_required()
    default = None if required else field.default
    return {"key": key, "description": field.description, "required": required, "default": default}


def filters_data() -> dict[str, Any]:
    """``convpipe filters --json``: every filter, its aliases and keys, and the keys every step takes."""
    return {
        "filters": [
            {
                "name": entry.name,
                "aliases": list(entry.aliases),
                "summary": entry.summary,
                "keys": [_key_data(key, field) for key, field in entry.own_keys().items()],
            }
            for entry in filters.FILTERS.values()
        ],
        "common_keys": [_key_data(key, filters.Step.model_fields[key]) for key in filters.Step.common_keys[1:]],
    }


def describe_info(info: dict[str, Any], indent: str = "") -> str:
    """Key: value lines for ``convpipe info``; nested arrays and series indented below. Shapes
    and other lists of numbers are shown as tuples, as ``convpipe plan`` shows them."""
    lines = []
    for key, value in info.items():
        label = key.replace("_", " ")
        if key == "arrays":
            for name, member in value.items():
                lines.append(f"{indent}array {name}:")
                lines.append(describe_info(member, indent + "    "))
        elif key == "series":
            for number, series in enumerate(value):
                details = ", ".join(f"{k} {_value(v)}" for k, v in series.items())
                lines.append(f"{indent}series {number}: {details}")
        elif key == "status" and isinstance(value, dict):
            lines.append(f"{indent}status: {_status(value)}")
        elif key == "made_by" and isinstance(value, dict):
            source = value.get("config_file") or "a config"
            lines.append(f"{indent}made by: convpipe {value.get('convpipe') or '?'} from {source}")
        elif key == "input" and isinstance(value, dict):
            lines.append(f"{indent}input: {value.get('path')} {_value(value.get('shape') or [])} {value.get('dtype')}")
        elif key == "steps":
            lines.append(f"{indent}steps:")
            lines.extend(f"{indent}    {_step(step)}" for step in value)
        elif key == "coordinates":
            lines.append(f"{indent}coordinates:")
            lines.extend(f"{indent}    {_axis(axis)}" for axis in value)
        elif key == "coordinates_error":
            lines.append(f"{indent}coordinates:")
            lines.append(f"{indent}    {value}")
        elif isinstance(value, list) and value and isinstance(value[0], str):
            lines.append(f"{indent}{label}:")
            lines.extend(f"{indent}    {item}" for item in value)
        else:
            lines.append(f"{indent}{label}: {_value(value)}")
    return "\n".join(lines)


def _value(value: Any) -> str:
    return str(tuple(value)) if isinstance(value, list) else str(value)


def _status(status: dict[str, Any]) -> str:
    total = status.get("blocks", 0)
    if status.get("complete") and status.get("finish_pending"):
        if status.get("note"):  # a live run is finishing it
            return f"complete ({plural(total, 'block')}); {status['note']}"
        return (
            f"complete ({plural(total, 'block')}), but its run failed after marking it; "
            "finish it with convpipe run --resume"
        )
    if status.get("note"):
        return f"partial: {status['note']}"
    if status.get("complete"):
        return f"complete ({plural(total, 'block')})"
    written = "?" if status.get("written") is None else status["written"]
    return f"partial ({written} of {plural(total, 'block')} written); finish it with convpipe run --resume"


def _axis(axis: dict[str, Any]) -> str:
    unit = f" {axis['unit']}" if axis.get("unit") else ""
    return f"{axis['axis']}: spacing {axis['scale']:g}{unit}, first sample at {axis['translation']:g}"


#: Longest parameter value shown in a step's line (a hand-written kernel can be long).
PARAMETER_WIDTH = 40


def _step(step: dict[str, Any]) -> str:
    """``gaussian sigma=2 truncate=4 -> (40, 50)``: the filter's own keys, and the common keys
    (pad, padding, stride, ...) where they differ from their defaults."""
    common = filters.Step.model_fields
    shown = []
    parameters = step.get("parameters", {})
    for key in sorted(parameters, key=lambda k: k in common):  # the filter's own keys first
        value = parameters[key]
        if value is None or (key in common and value == _json_default(common[key].default)):
            continue  # unset, or the default
        text = f"{key}={_parameter(value)}"
        if len(text) > PARAMETER_WIDTH:
            text = text[: PARAMETER_WIDTH - 1] + "…"
        shown.append(text)
    return " ".join([str(step.get("filter")), *shown, "->", _value(step.get("output_shape") or [])])


def _json_default(value: Any) -> Any:
    """A field's default as the recorded (JSON) config holds it."""
    return json.loads(json.dumps(_plain(value)))


def _parameter(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ",".join(_parameter(v) for v in value) + "]"
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
