"""Run a config: open the input, plan, check, take the output's lease, write every block (or
the missing ones), mark complete.

The order is the data-safety contract (README, "Data safety"): every check that can be made
before computing (paths, ownership of what is there, the resume fingerprint, memory, a first
block computed) comes before anything at the output is removed, and no block is written
without the lease, which is released only after the blocks in flight have finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from convpipe.config import Config
from convpipe.engine import computed_blocks, pyramid_graph, trial_block, write_graph
from convpipe.errors import ConfigError, ConvpipeError, RunError
from convpipe.io import lifecycle, stores
from convpipe.io.geotiff import GeoInfo
from convpipe.io.inputs import InputSpec, forget_inputs, open_input
from convpipe.io.output import BlockOutput, Output, StreamOutput, output_for
from convpipe.memory import available_bytes
from convpipe.plan import PROCESS_BYTES, Plan, bind, stream_batch
from convpipe.progress import Progress
from convpipe.provenance import check_resumable, provenance
from convpipe.schedulers import LOCAL_SCHEDULERS, SCHEDULERS, Scheduling, check_scheduler, scheduler
from convpipe.traversal import remote_cache

__all__ = ["SCHEDULERS", "Checked", "RunResult", "check_output", "check_run", "input_spec", "make_plan", "run"]

#: Default length of an output's lease, in seconds (``--lock-lease``).
LEASE_SECONDS = 120.0


def input_spec(config: Config, plan: Plan | None = None) -> InputSpec:
    """Where the input is; with a plan, also how many decoded chunks each process may keep."""
    cache = plan.cache_bytes if plan is not None else 0
    storage = tuple(sorted((config.input.storage or {}).items()))
    return InputSpec(config.input.path, config.input.array, config.input.series, config.input.level, cache, storage)


def make_plan(config: Config, memory: int | None = None, workers: int | None = None) -> Plan:
    """Bind a config to its input's shape: every step's geometry and the block layout.

    Opens the input's metadata only; no pixel is read. With a ``memory`` budget (bytes for
    the whole run with ``workers`` blocks at once) the default blocks shrink until it fits.
    """
    reader = open_input(input_spec(config))
    plan = bind(
        config,
        reader.shape,
        reader.dtype,
        reader.chunks,
        reader.axes,
        frame=reader.frame,
        input_kind=reader.kind,
        nodata=reader.nodata,
    )
    if plan.cache_bytes == 0 and config.input.location.is_remote:
        cache = remote_cache(plan.input_shape, plan.input_chunks, plan.spatial, plan.input_dtype.itemsize)
        plan = dataclasses.replace(plan, cache_bytes=cache)
    if memory is not None:
        plan = plan.fitted(memory, workers or os.cpu_count() or 1)
    return plan


def output_geo(config: Config, plan: Plan) -> GeoInfo | None:
    """The output's georeferencing, when the input is a GeoTIFF: moved through the chain, and
    without a nodata value the output dtype cannot hold."""
    geo = open_input(input_spec(config)).geo
    if geo is None or "x" not in plan.axes or "y" not in plan.axes:
        return None
    moved = geo.through(plan.sample_frame, plan.axes)
    if plan.masked:  # what nodata samples are written as, whatever the input said
        nodata = plan.output_nodata
        return dataclasses.replace(moved, nodata=None if nodata is None else format_nodata(nodata))
    return moved.for_dtype(plan.output_dtype)


def format_nodata(value: float) -> str:
    """As GDAL writes GDAL_NODATA: "nan", or the shortest exact decimal."""
    return "nan" if math.isnan(value) else (str(int(value)) if float(value).is_integer() else repr(float(value)))


def nodata_attributes(plan: Plan) -> dict[str, Any]:
    """The output's ``nodata`` attribute (a string for NaN, which JSON has no word for)."""
    if not plan.masked or plan.output_nodata is None:
        return {}
    return {"nodata": format_nodata(plan.output_nodata) if math.isnan(plan.output_nodata) else plan.output_nodata}


def geo_attributes(geo: GeoInfo | None) -> dict[str, Any]:
    """Zarr attributes for the georeferencing: under ``geo``, and GDAL's ``_CRS``."""
    if geo is None:
        return {}
    attributes: dict[str, Any] = {"geo": geo.attributes()}
    if geo.crs is not None:
        code = geo.crs.split(":")[1]
        attributes["_CRS"] = {"url": f"http://www.opengis.net/def/crs/EPSG/0/{code}"}
    return attributes


def _inside(inner: stores.Location, outer: stores.Location) -> bool:
    if inner.scheme != outer.scheme:
        return False
    if inner.is_local:
        a, b = os.path.realpath(inner.path), os.path.realpath(outer.path)
    else:
        a, b = inner.url, outer.url
    return a == b or a.startswith(b.rstrip("/") + "/")


def check_output(config: Config, plan: Plan, *, overwrite: bool, resume: bool) -> str:
    """Every check on the output that reads no pixel; returns what is there: ``"missing"``
    (nothing, or only what a run that wrote nothing left: lease records), ``"ours"`` (a
    convpipe output), or ``"replaceable"`` (a single Zarr array). Raises when the run must not
    touch it."""
    source = config.input.location
    out = config.output.location
    if _inside(out, source):
        raise ConfigError(f"output.path: {out} is the input or inside it; the input is never written to")
    if _inside(source, out):
        raise ConfigError(f"output.path: the input {source} lies inside {out}; choose another output")
    if not out.writable:
        raise ConfigError(f"output.path: {out} is read-only (https:// serves inputs only)")
    stores.probe(out, write=True)
    target = output_for(plan, out)
    found = target.found()
    if found.kind == "missing":
        return "missing"
    if found.kind == "foreign" and not resume:  # said at once: no flag would let the run replace it
        raise ConfigError(f"output.path: {found.refusal}")
    if not (overwrite or resume):
        lifecycle.check_not_held(*_lock_store(target), f"output.path: {out}")
        raise ConfigError(f"output.path: {out} already exists (use --overwrite to replace it or --resume)")
    if resume and found.kind != "ours":
        raise ConfigError(f"--resume: {out} is not a convpipe output; refusing to write into it")
    return found.kind


def _lock_store(target: Output, *, writable: bool = False) -> tuple[Any, str]:
    """Where the output's lease lives: the store and the prefix in it."""
    place, prefix = target.lock_place()
    return stores.open_store(place, read_only=not writable), prefix


def _lock_state(config: Config, plan: Plan) -> tuple[int, bool] | None:
    """The output's lease generation before this run's checks (-1: none) and whether a run
    that may be alive held it; None when it cannot be read (the checks then explain why)."""
    try:
        generation, holder = lifecycle.lease_state(*_lock_store(output_for(plan, config.output.location)))
    except Exception:
        return None  # unreadable: the checks that follow explain why, or the run goes ahead
    return generation, holder is not None


def _check_alone(lease: lifecycle.Lease, seen: tuple[int, bool] | None, resume: bool) -> None:
    """Unless resuming, refuse when another run held the lease since this run's checks, or
    held it then and released it while this run waited: it wrote what this run did not check,
    and of two runs started at once only one proceeds. Taking over the lease of a run that
    died (or whose lease expired) is fine: that is the generation seen, taken over."""
    if seen is None:
        return
    generation, live = seen
    if not resume and (lease.generation > generation + 1 or (live and lease.took_over is None)):
        raise lifecycle.Locked(
            f"{lease.name} is being written by another convpipe run, or was while this run started; "
            "this run changed nothing: look at the output, then run again"
        )


def check_memory(plan: Plan, scheduler_name: str, workers: int | None) -> None:
    """Refuse a run whose blocks cannot fit in this machine's memory (local schedulers only:
    a cluster's workers are elsewhere)."""
    if scheduler_name not in LOCAL_SCHEDULERS:
        return
    available = available_bytes()
    if available is None:
        return
    count = 1 if scheduler_name == "sync" else (workers or os.cpu_count() or 1)
    needed = plan.memory_estimate(count)
    if needed > available:
        raise ConfigError(
            f"the run needs about {needed / 2**30:.1f} GiB ({count} blocks of {plan.block_shape} at once) but "
            f"{available / 2**30:.1f} GiB is available; use smaller input.chunks, fewer --workers or --memory"
        )


def check_worker_memory(plan: Plan, scheduling: Scheduling) -> None:
    """Refuse, before anything is written, a run whose blocks cannot fit in a dask.distributed
    worker's memory limit: each of its threads computes a block at once (the local check,
    ``check_memory``, cannot see a cluster's workers)."""
    held = plan.writer_bytes(scheduling.slots)  # a TIFF's blocks come back to this process
    available = available_bytes() if scheduling.worker_memory and held else None
    if available is not None and PROCESS_BYTES + held > available:
        writer = PROCESS_BYTES + held
        raise ConfigError(
            f"writing {plan.storage.format} here needs about {writer / 2**30:.2f} GiB for the blocks the cluster "
            f"sends back but {available / 2**30:.2f} GiB is available; use smaller input.chunks or --memory"
        )
    for threads, limit in scheduling.worker_memory:
        needed = PROCESS_BYTES + plan.cache_bytes + threads * plan.memory_per_block()
        if needed > limit:
            raise ConfigError(
                f"a worker needs about {needed / 2**30:.2f} GiB (a block of {plan.block_shape} per thread, "
                f"{threads} at once) "
                f"but its memory limit is {limit / 2**30:.2f} GiB; use smaller input.chunks or --memory, "
                "or give workers more memory (--memory-limit for local-cluster)"
            )


@dataclass(frozen=True)
class RunResult:
    plan: Plan
    output: str
    blocks: int  # written by this run
    seconds: float
    resumed_from: int = 0  # blocks already there when a resumed run started
    graph_seconds: float = 0.0  # building the task graph, part of ``seconds``
    took_over: str | None = None  # the dead run whose lease this run took over, if any
    finished_again: bool = False  # complete already, but its run had failed after the mark


@dataclass(frozen=True)
class Checked:
    """What the checks before computing found, for the run that follows them."""

    plan: Plan
    scheduler_name: str  # "cluster" for a config's cluster: section
    found: str  # what is at the output: see check_output
    record: dict[str, Any]  # the provenance the output will keep
    status: dict[str, Any] | None  # when resuming a convpipe output: what it recorded
    seen: tuple[int, bool] | None  # the output's lease before the checks: see _check_alone

    @property
    def complete(self) -> bool:
        """A resumed output that is already whole: the run has nothing to do."""
        return bool(self.status and self.status.get("complete"))


def check_run(
    config: Config,
    *,
    scheduler_name: str | None = None,
    workers: int | None = None,
    memory: int | None = None,
    overwrite: bool | None = None,
    resume: bool = False,
) -> Checked:
    """Every check a run makes before it computes anything (README, "Data safety"): options,
    scheduler name, the plan, the output, memory, the resume fingerprint. No pixel is read and
    nothing is written. ``convpipe validate`` and ``run --dry-run`` call it too, so they refuse
    exactly what the run would, with the same exit status."""
    if scheduler_name is None:
        scheduler_name = "cluster" if config.cluster is not None else "threads"
    overwrite = config.output.overwrite if overwrite is None else overwrite
    if overwrite and resume:
        raise ConfigError("--resume and --overwrite: choose one (resume keeps the blocks already written)")
    if scheduler_name != "cluster" or config.cluster is None:
        check_scheduler(scheduler_name)
    forget_inputs()  # an input rewritten since an earlier run in this process is read afresh
    plan = make_plan(config, memory, workers)
    seen = _lock_state(config, plan)  # before the checks: see _check_alone
    found = check_output(config, plan, overwrite=overwrite, resume=resume)
    check_memory(plan, scheduler_name, workers)
    record = provenance(config, plan)
    status = None
    if found == "ours" and resume:
        status = output_for(plan, config.output.location).read_status()
        if status is not None:
            check_resumable(status, record)
    return Checked(plan, scheduler_name, found, record, status, seen)


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
    lease_seconds: float = LEASE_SECONDS,
    notify: Callable[[str], None] | None = None,
) -> RunResult:
    """Compute the chain and write it to ``config.output.path``; return what was done.

    ``scheduler_name`` defaults to the config's ``cluster:`` if it has one, else threads.
    ``resume`` finishes an interrupted output (only its missing blocks; starts one if there
    is none). ``progress`` is ``"bar"`` (a terminal line), ``"log"`` (a line every 10 s) or
    None. ``lease_seconds``: how long the output's lease lasts without renewal; a run that
    died holding it is taken over once it has expired (``--resume`` and ``--overwrite`` wait
    for that, and ``notify`` is told they wait).
    """
    checked = check_run(
        config, scheduler_name=scheduler_name, workers=workers, memory=memory, overwrite=overwrite, resume=resume
    )
    plan, found, seen, record = checked.plan, checked.found, checked.seen, checked.record
    scheduler_name = checked.scheduler_name
    overwrite = config.output.overwrite if overwrite is None else overwrite
    out = config.output.location
    target = output_for(plan, out)
    took_over_before = None  # a dead run's lease taken over by a resume that then went on
    if checked.complete:
        finished, took_over_before = _finished_again(target, plan, record, lease_seconds, notify)
        if finished is not None:
            return finished
    if found != "missing" and not resume:
        # Something is replaced: compute a first block before anything of it is removed.
        trial_block(plan, input_spec(config, plan))
    start = time.perf_counter()
    # Connect to the scheduler before touching the output: a bad address must not cost the
    # user an existing output, nor leave anything behind.
    with scheduler(scheduler_name, workers, memory_limit, config.cluster) as scheduling:
        check_worker_memory(plan, scheduling)
        with (
            lifecycle.held(
                *_lock_store(target, writable=True), lease_seconds, **_waiting(out, resume or overwrite, notify)
            ) as lease,
            _writing(out),
            # On the way out (bottom up): the blocks in flight finish, then their chunks'
            # syncs and records, then the lease is let go.
            _draining(functools.partial(_settle, target)),
            _draining(scheduling.drain),
        ):
            _check_alone(lease, seen, resume)
            status = target.read_status() if resume else None  # again, now that the output is ours
            if status is not None:
                check_resumable(status, record)
                if status.get("complete"):  # another run finished it while this one waited
                    again = _finish_what_is_left(target, lease)  # ... but failed to finish after its mark
                    took_over = _describe_holder(lease.took_over) or took_over_before
                    return RunResult(
                        plan,
                        out.display,
                        0,
                        0.0,
                        resumed_from=plan.num_blocks,
                        took_over=took_over,
                        finished_again=again,
                    )
            job = _Job(config, plan, record, scheduling.options, scheduling.slots, lease, progress)
            if target.streamed:
                written, kept, graph_seconds = _write_stream(cast(StreamOutput, target), job), 0, 0.0
            else:
                written, kept, graph_seconds = _write_blocks(cast(BlockOutput, target), job, keep=status is not None)
    return RunResult(
        plan,
        out.display,
        written,
        time.perf_counter() - start,
        resumed_from=kept,
        graph_seconds=graph_seconds,
        took_over=_describe_holder(lease.took_over) or took_over_before,
    )


def _finished_again(
    target: BlockOutput | StreamOutput,
    plan: Plan,
    record: dict[str, Any],
    lease_seconds: float,
    notify: Callable[[str], None] | None,
) -> tuple[RunResult | None, str | None]:
    """``--resume`` of an output that reads as complete: nothing to do, unless the run that
    marked it left block records (its finish failed after the mark, and it said to resume).
    Then, under the lease, the same computation is finished again (``finish_again``). No
    result when, by the time the lease is ours, another run has begun to replace the output
    with the same computation: the resume goes on as for any unfinished output, and is told
    of the dead run whose lease it took over on the way (the holder it waited out)."""
    out = target.location
    if not target.records_left():
        return RunResult(plan, out.display, 0, 0.0, resumed_from=plan.num_blocks), None
    start = time.perf_counter()
    with lifecycle.held(*_lock_store(target, writable=True), lease_seconds, **_waiting(out, True, notify)) as lease:
        status = target.read_status()
        if status is None:  # never taken for "not complete": that path may replace the output
            raise RunError(f"output {out}: its status could not be read; nothing was changed, run again")
        check_resumable(status, record)
        if not status.get("complete"):
            return None, _describe_holder(lease.took_over)
        again = _finish_what_is_left(target, lease)  # not if the run waited for finished after all
    seconds = time.perf_counter() - start
    took_over = _describe_holder(lease.took_over)
    result = RunResult(
        plan, out.display, 0, seconds, resumed_from=plan.num_blocks, took_over=took_over, finished_again=again
    )
    return result, None


def _finish_what_is_left(target: Output, lease: lifecycle.Lease) -> bool:
    """Under the lease, a complete output whose run left block records (it failed to finish
    after its mark) finished again; whether there was anything to finish."""
    if not target.records_left():
        return False
    lease.renew()  # still ours
    cast(BlockOutput, target).finish_again()
    return True


@dataclass(frozen=True)
class _Job:
    """What writing the blocks needs, whatever the format."""

    config: Config
    plan: Plan
    record: dict[str, Any]  # the provenance the output keeps
    options: dict[str, Any]  # for ``compute``: the scheduler
    slots: int  # blocks the scheduler computes at once
    lease: lifecycle.Lease
    progress: str | None


def _write_blocks(target: BlockOutput, job: _Job, *, keep: bool) -> tuple[int, int, float]:
    """Every block not yet written, in any order, then the pyramid, then the completion mark;
    returns (blocks written, blocks kept from before, seconds spent building the graph)."""
    plan, config = job.plan, job.config
    extra = {**geo_attributes(output_geo(config, plan)), **nodata_attributes(plan)}
    done = target.begin(plan, job.record, extra, config.input.location.name, keep=keep)
    todo = [i for i in plan.block_order() if i not in done]
    handle = target.writer(job.lease.key)
    graph_start = time.perf_counter()
    graph = write_graph(plan, input_spec(config, plan), target.write_block, handle, todo, job.slots)
    graph_seconds = time.perf_counter() - graph_start
    with _progress(job.progress, target.location, plan, target.count_written):
        written = graph.compute(**job.options) if todo else 0
        target.settle()  # every block on the disk and recorded: the count is whole
        # The pyramid, level by level from the one below; redone whole after a resume.
        for level in range(1, plan.storage.pyramid + 1):
            graph = pyramid_graph(plan, level, target.read_level, target.write_level, handle)
            graph.compute(**job.options)
    target.settle()  # the pyramid's levels on the disk too
    job.lease.renew()  # still ours: no other run took over while the blocks were written
    target.finish()
    return int(written), len(done), graph_seconds


def _write_stream(target: StreamOutput, job: _Job) -> int:
    """Every block in the writer's order, into a file published only when whole."""
    plan, lease, out = job.plan, job.lease, target.location
    done = [0]

    def blocks() -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
        order = target.block_order(plan)
        for item in computed_blocks(plan, input_spec(job.config, plan), order, stream_batch(job.slots), job.options):
            if lease.lost.is_set():
                raise lifecycle.LeaseLost(lease.lost_reason or f"output {out}: this run lost its lease; it stops")
            done[0] += 1  # computed is done: the writer stops at its last tile
            yield item

    geo = output_geo(job.config, plan)
    if geo is None and plan.masked and plan.output_nodata is not None:  # not a GeoTIFF input
        geo = GeoInfo.nodata_only(format_nodata(plan.output_nodata))
    with _progress(job.progress, out, plan, lambda: done[0], poll=False):
        # renewed: still ours before the file is published
        target.write(blocks(), plan, job.record, geo, lease.renew)
    return plan.num_blocks


def _waiting(out: stores.Location, wait: bool, notify: Callable[[str], None] | None) -> dict[str, Any]:
    """How to take the lease: a requeued job (``--resume``) waits out a dead run's lease."""
    return {"wait": wait, "name": f"output.path: {out}", "notify": notify}


def _describe_holder(holder: dict[str, Any] | None) -> str | None:
    if not holder:
        return None
    reason = f": {holder['reason']}" if holder.get("reason") else ""
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}{reason}"


def _settle(target: Output) -> None:
    if not target.streamed:
        cast(BlockOutput, target).settle(raise_errors=False)


@contextlib.contextmanager
def _draining(drain: Callable[[], None]) -> Iterator[None]:
    """However the run ends, the blocks in flight finish before the lease is released."""
    try:
        yield
    finally:
        drain()


@contextlib.contextmanager
def _writing(out: stores.Location) -> Iterator[None]:
    """A failing disk or store is one message that says the output is incomplete."""
    try:
        yield
    except ConvpipeError:
        raise
    except Exception as error:
        if not stores.is_store_error(error):
            raise
        detail = stores.error_detail(out, error)
        raise RunError(f"output {out}: writing failed ({detail}); the output is incomplete") from None


def _progress(
    mode: str | None, out: stores.Location, plan: Plan, count: Callable[[], int], *, poll: bool = True
) -> contextlib.AbstractContextManager[Any]:
    """The progress display; ``poll``: ``count`` lists the store (an object store's block
    records are pages of LIST requests, so it is asked every 5 s, not twice a second)."""
    if mode is None:
        return contextlib.nullcontext()
    input_bytes = float(np.prod(plan.input_shape)) * plan.input_dtype.itemsize
    terminal = mode == "bar"
    return Progress(
        count,
        plan.num_blocks,
        input_bytes / plan.num_blocks,
        terminal=terminal,
        interval=5.0 if terminal and out.is_remote and poll else None,
    )
