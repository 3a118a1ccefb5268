"""Plain-text descriptions for people: the plan, the filter list, what a file holds."""

from __future__ import annotations

import math
import os
from typing import Any

from convpipe import coords, filters
from convpipe.config import TIFF_FORMATS
from convpipe.plan import Plan


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


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
        padding = step.config.padding
        if padding == "constant":
            padding = f"constant({step.config.cval:g})"
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
        f"blocks  {plan.num_blocks} output blocks of {plan.block_shape} (grid {grid}), "
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


def describe_filters() -> str:
    """Every filter with its own keys (``convpipe filters``)."""
    lines = []
    for entry in filters.FILTERS.values():
        aliases = f" (also: {', '.join(entry.aliases)})" if entry.aliases else ""
        lines.append(f"{entry.name}{aliases}: {entry.summary}")
        for key, field in entry.own_keys().items():
            default = "required" if field.is_required() else f"default {field.default!r}"
            lines.append(f"    {key:<12} {field.description} ({default})")
    lines.append("")
    lines.append("every step also takes:")
    for key in filters.Step.common_keys[1:]:
        field = filters.Step.model_fields[key]
        lines.append(f"    {key:<12} {field.description} (default {field.default!r})")
    return "\n".join(lines)


def describe_info(info: dict[str, Any], indent: str = "") -> str:
    """Key: value lines for ``convpipe info``; nested arrays and series indented below."""
    lines = []
    for key, value in info.items():
        if key == "arrays":
            for name, member in value.items():
                lines.append(f"{indent}array {name}:")
                lines.append(describe_info(member, indent + "    "))
        elif key == "series":
            for number, series in enumerate(value):
                details = ", ".join(f"{k} {v}" for k, v in series.items())
                lines.append(f"{indent}series {number}: {details}")
        elif isinstance(value, list) and value and isinstance(value[0], str):
            lines.append(f"{indent}{key}:")
            lines.extend(f"{indent}    {item}" for item in value)
        else:
            shown = tuple(value) if isinstance(value, list) else value
            lines.append(f"{indent}{key}: {shown}")
    return "\n".join(lines)
