"""Run a config: open the input, plan, write every block (or the missing ones), mark complete.

The scheduler is chosen here: threads, processes or synchronous on this machine; a
``LocalCluster`` of worker processes; or a running dask.distributed scheduler's address.
Everything before is pure planning, everything after is the store.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np

from convpipe._version import __version__
from convpipe.cluster import ClusterConfig, batch_cluster
from convpipe.config import Config
from convpipe.engine import block_rows, pyramid_graph, write_graph
from convpipe.errors import ConfigError, ConvpipeError, RunError
from convpipe.io import geotiff, outputs
from convpipe.io.geotiff import GeoInfo
from convpipe.io.inputs import InputSpec, open_input
from convpipe.plan import GEOTIFF_ENCODE_BYTES, Plan, bind
from convpipe.progress import Progress

LOCAL_SCHEDULERS = {"threads": "threads", "processes": "processes", "sync": "synchronous"}
SCHEDULERS = (*LOCAL_SCHEDULERS, "local-cluster")


def input_spec(config: Config, plan: Plan | None = None) -> InputSpec:
    """Where the input is; with a plan, also how many decoded chunks each process may keep."""
    cache = plan.cache_bytes if plan is not None else 0
    return InputSpec(config.input.path, config.input.array, config.input.series, config.input.level, cache)


def make_plan(config: Config, memory: int | None = None, workers: int | None = None) -> Plan:
    """Bind a config to its input's shape: every step's geometry and the block layout.

    Opens the input's metadata only; no pixel is read. With a ``memory`` budget (bytes for
    the whole run with ``workers`` blocks at once) the default blocks shrink until it fits.
    """
    reader = open_input(input_spec(config))
    plan = bind(
        config, reader.shape, reader.dtype, reader.chunks, reader.axes, frame=reader.frame, input_kind=reader.kind
    )
    if memory is not None:
        plan = plan.fitted(memory, workers or os.cpu_count() or 1)
    return plan


def provenance(config: Config, plan: Plan) -> dict[str, Any]:
    """What the output records about how it was made (SPEC §5)."""
    return {
        "version": __version__,
        "config": config.resolved(),
        "config_file": config.source,
        "input": {
            "path": config.input.path,
            "shape": list(plan.input_shape),
            "dtype": str(plan.input_dtype),
            "axes": plan.axes,
        },
        "steps": [{"filter": step.config.filter, "output_shape": list(step.out_shape)} for step in plan.steps],
        "blocks": plan.num_blocks,
        "block_shape": list(plan.block_shape),
        "storage": {
            "format": plan.storage.format,
            "codec": plan.storage.codec,
            "chunks": list(plan.storage.chunks if plan.storage.format == "geotiff" else plan.storage_chunks),
            "shards": list(plan.shard_shape) if plan.shard_shape else None,
            "levels": len(plan.level_shapes()),
        },
    }


def output_geo(config: Config, plan: Plan) -> GeoInfo | None:
    """The output's georeferencing, when the input is a GeoTIFF: moved through the chain, and
    without a nodata value the output dtype cannot hold."""
    geo = open_input(input_spec(config)).geo
    if geo is None or "x" not in plan.axes or "y" not in plan.axes:
        return None
    return geo.through(plan.sample_frame, plan.axes).for_dtype(plan.output_dtype)


def geo_attributes(geo: GeoInfo | None) -> dict[str, Any]:
    """Zarr attributes for the georeferencing: under ``geo``, and GDAL's ``_CRS``."""
    if geo is None:
        return {}
    attributes: dict[str, Any] = {"geo": geo.attributes()}
    if geo.crs is not None:
        code = geo.crs.split(":")[1]
        attributes["_CRS"] = {"url": f"http://www.opengis.net/def/crs/EPSG/0/{code}"}
    return attributes


def _first_difference(recorded: Any, current: Any, place: str) -> str | None:
    if isinstance(recorded, dict) and isinstance(current, dict):
        for key in sorted(set(recorded) | set(current), key=str):
            found = _first_difference(recorded.get(key), current.get(key), f"{place}.{key}" if place else str(key))
            if found:
                return found
        return None
    if isinstance(recorded, list) and isinstance(current, list) and len(recorded) == len(current):
        for i, (old, new) in enumerate(zip(recorded, current, strict=True)):
            found = _first_difference(old, new, f"{place}[{i}]")
            if found:
                return found
        return None
    if recorded != current:
        return f"{place}: {recorded!r} when the output was started, {current!r} now"
    return None


def check_resumable(recorded: dict[str, Any], current: dict[str, Any]) -> None:
    """A resume must continue the same computation: same convpipe, config, input, blocks."""
    keys = ("version", "input", "blocks", "block_shape")
    old = {k: recorded.get(k) for k in keys} | {"config": _without_overwrite(recorded.get("config"))}
    new = {k: current.get(k) for k in keys} | {"config": _without_overwrite(current.get("config"))}
    difference = _first_difference(old, new, "")
    if difference:
        raise ConfigError(f"--resume: the output was made differently, refusing to mix results ({difference})")


def _without_overwrite(config: Any) -> Any:
    if not isinstance(config, dict):
        return config
    output = {k: v for k, v in config.get("output", {}).items() if k != "overwrite"}
    return {**config, "output": output}


def check_scheduler(name: str) -> None:
    if name not in SCHEDULERS and "://" not in name:
        raise ConfigError(
            f"--scheduler: must be threads, processes, sync, local-cluster or an address like tcp://host:8786 "
            f"(got {name!r})"
        )


@contextlib.contextmanager
def scheduler(
    name: str, workers: int | None, memory_limit: str | None = None, cluster: ClusterConfig | None = None
) -> Iterator[None]:
    """Make ``name`` Dask's scheduler for the duration (``cluster``: the config's batch cluster)."""
    if name == "cluster":
        assert cluster is not None
        with batch_cluster(cluster):
            yield
        return
    check_scheduler(name)
    if name in LOCAL_SCHEDULERS:
        with dask.config.set(scheduler=LOCAL_SCHEDULERS[name], num_workers=workers):
            yield
        return
    from distributed import Client, LocalCluster

    if name == "local-cluster":
        cluster = LocalCluster(
            n_workers=workers or os.cpu_count() or 1,
            threads_per_worker=1,
            memory_limit=memory_limit or "auto",
            dashboard_address=":0",  # any free port: never collide with another cluster
            processes=True,
        )
        with cluster, Client(cluster):
            yield
        return
    try:
        client = Client(name, timeout="10s")
    except OSError as error:
        raise RunError(f"--scheduler {name}: cannot reach the scheduler ({error})") from None
    with client:
        yield


@dataclass(frozen=True)
class RunResult:
    plan: Plan
    output: str
    blocks: int  # written by this run
    seconds: float
    resumed_from: int = 0  # blocks already there when a resumed run started
    graph_seconds: float = 0.0  # building the task graph, part of ``seconds``


def run(
    config: Config,
    *,
    scheduler_name: str | None = None,
    workers: int | None = None,
    memory_limit: str | None = None,
    memory: int | None = None,
    overwrite: bool | None = None,
    resume: bool = False,
    progress: str | None = None,
) -> RunResult:
    """Compute the chain and write it to ``config.output.path``; return what was done.

    ``scheduler_name`` defaults to the config's ``cluster:`` if it has one, else threads.
    ``resume`` finishes an interrupted output (only its missing blocks). ``progress`` is
    ``"bar"`` (a terminal line), ``"log"`` (a line every 10 s) or None.
    """
    if scheduler_name is None:
        scheduler_name = "cluster" if config.cluster is not None else "threads"
    overwrite = config.output.overwrite if overwrite is None else overwrite
    if overwrite and resume:
        raise ConfigError("--resume and --overwrite: choose one (resume keeps the blocks already written)")
    if scheduler_name != "cluster":
        check_scheduler(scheduler_name)
    out = config.output.path
    plan = make_plan(config, memory, workers)
    format_name = plan.storage.format
    outputs.check_paths(config.input.path, out, overwrite or resume, format_name)
    record = provenance(config, plan)
    if Path(out).exists():
        outputs.check_unlocked(out, format_name)
    if format_name == "geotiff":
        if resume:
            raise ConfigError(
                "--resume: a GeoTIFF is written in one pass and cannot be resumed; run again with --overwrite "
                "(or write output.format: zarr, which can)"
            )
        with scheduler(scheduler_name, workers, memory_limit, config.cluster):
            return _run_geotiff(config, plan, record, progress)
    resuming = resume and Path(out).exists()
    if resuming:
        status = outputs.read_status(out)
        if status is None:
            raise ConfigError(f"--resume: {out} is not a convpipe output")
        check_resumable(status, record)
        if status.get("complete"):
            return RunResult(plan, out, 0, 0.0, resumed_from=plan.num_blocks)
    start = time.perf_counter()
    # Connect to the scheduler before touching the output: a bad address must not cost
    # the user an existing output.
    with scheduler(scheduler_name, workers, memory_limit, config.cluster):
        Path(out).mkdir(parents=True, exist_ok=True)
        with outputs.locked(out):
            if resuming:
                outputs.remove_partial_writes(out)
                done = outputs.written_blocks(out)
            else:
                extra = geo_attributes(output_geo(config, plan))
                outputs.create(out, plan, record, extra, name=Path(config.input.path).name)
                done = set()
            todo = [i for i in np.ndindex(*[len(c) for c in plan.chunks]) if i not in done]
            target = outputs.prepare(out, format_name)
            graph_start = time.perf_counter()
            graph = write_graph(plan, input_spec(config, plan), outputs.write_block, target, todo)
            graph_seconds = time.perf_counter() - graph_start
            with _progress(progress, out, plan), _writing(out):
                written = graph.compute()
                # The pyramid, level by level from the one below; redone whole after a resume.
                for level in range(1, plan.storage.pyramid + 1):
                    pyramid_graph(plan, level, outputs.read_level, outputs.write_level, target).compute()
            outputs.mark_complete(out)
    seconds = time.perf_counter() - start
    return RunResult(plan, out, int(written), seconds, resumed_from=len(done), graph_seconds=graph_seconds)


@contextlib.contextmanager
def _writing(out: str) -> Iterator[None]:
    """A failing disk is one message that says the output is incomplete."""
    try:
        yield
    except ConvpipeError:
        raise
    except OSError as error:
        raise RunError(f"output {out}: writing failed ({error}); the output is incomplete") from None


def _run_geotiff(config: Config, plan: Plan, record: dict[str, Any], progress: str | None) -> RunResult:
    """Write a GeoTIFF in file order, row of blocks by row, to a partial file renamed when whole:
    the path only ever holds a complete file (or what was there before)."""
    out = config.output.path
    start = time.perf_counter()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    partial = Path(out).with_name(Path(out).name + geotiff.PARTIAL_SUFFIX)
    geo = output_geo(config, plan)
    assert plan.storage.chunks is not None  # planned: TIFF tiles, which may exceed a small image
    tile = (plan.storage.chunks[-2], plan.storage.chunks[-1])
    done = [0]
    per_row = len(plan.chunks[-1])

    def counted() -> Iterator[list[np.ndarray]]:
        for row in block_rows(plan, input_spec(config, plan)):
            done[0] += per_row  # computed is done: the writer stops at its last tile
            yield row

    with outputs.locked(out, "geotiff"):
        try:
            with _progress(progress, out, plan, lambda: done[0]), _writing(out):
                geotiff.write(
                    str(partial),
                    counted(),
                    plan.output_shape,
                    plan.output_dtype,
                    tile,
                    plan.storage.codec,
                    geo,
                    {"convpipe": json.dumps({**record, "complete": True})},
                    GEOTIFF_ENCODE_BYTES,
                )
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
    return RunResult(plan, out, plan.num_blocks, time.perf_counter() - start)


def _progress(
    mode: str | None, out: str, plan: Plan, count: Callable[[], int] | None = None
) -> contextlib.AbstractContextManager[Any]:
    if mode is None:
        return contextlib.nullcontext()
    input_bytes = float(np.prod(plan.input_shape)) * plan.input_dtype.itemsize
    return Progress(
        count or (lambda: outputs.count_written(out)),
        plan.num_blocks,
        input_bytes / plan.num_blocks,
        terminal=mode == "bar",
    )
