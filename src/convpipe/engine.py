"""The Dask graph: one task per output block, each running the fused chain on its own halo.

Blocks do not exchange overlaps with each other: every task reads the input samples its
block depends on straight from storage (``block.needed_indices``), so the graph has one task
per block whatever the number of steps, and no task waits for a neighbour. The only other
tasks are the global-range passes that ``rescale`` needs.

This is the only module that knows Dask.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import math
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from convpipe import pyramid
from convpipe.block import ValueRange, compute_block, compute_block_masked, to_dtype
from convpipe.io.inputs import ArrayReader, InputSpec, open_input
from convpipe.memory import release_free_memory
from convpipe.plan import Plan, StepPlan

if TYPE_CHECKING:
    import dask.array as da

Source = InputSpec | np.ndarray


def reader_of(source: Source) -> ArrayReader:
    """An input spec is reopened (once per process); an in-memory array is read directly."""
    if isinstance(source, InputSpec):
        return open_input(source)
    return ArrayReader(source, "array")


def block_bounds(chunks: Sequence[Sequence[int]], index: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """[start, stop) per axis of the block at ``index`` in a Dask chunks layout."""
    bounds = []
    for sizes, i in zip(chunks, index, strict=True):
        start = sum(sizes[:i])
        bounds.append((start, start + sizes[i]))
    return tuple(bounds)


@dataclass(frozen=True)
class ChainJob:
    """Everything a block task needs, small enough to ship to a worker process."""

    steps: tuple[StepPlan, ...]
    source: Source
    chunks: tuple[tuple[int, ...], ...]
    compute_dtype: np.dtype
    output_dtype: np.dtype | None  # None: keep the compute dtype (range passes)
    masked: bool = False  # track nodata (README, "Nodata")
    nodata: float | None = None  # the input's nodata value
    output_nodata: float | None = None  # written where the output is nodata; None: as NaN is
    # Freed memory the allocator may keep between blocks: the next block reuses it rather
    # than fault it in afresh (the volume case: 66 thousand page faults instead of 460
    # thousand; README, "Performance").
    trim_slack: int = 0

    def block(self, index: Sequence[int], value_ranges: Sequence[ValueRange | None]) -> np.ndarray:
        """The block in the output dtype; with nodata tracked, nodata samples written as
        ``output_nodata`` (NaN in a range pass, whose min and max ignore them)."""
        reader = reader_of(self.source)
        # Integer samples are converted as they leave the decoded chunks: no block-sized
        # copy in the input's dtype, no separate conversion pass.
        integer = reader.dtype.kind in "biu"
        read = functools.partial(reader.read, dtype=self.compute_dtype) if integer else reader.read
        bounds = block_bounds(self.chunks, index)
        options: dict[str, Any] = {
            "integer_input": integer,
            "read_into": lambda indices, out: reader.read(indices, out=out),
        }
        valid = None
        if self.masked:
            data, valid = compute_block_masked(
                self.steps, read, bounds, self.compute_dtype, self.nodata, value_ranges, **options
            )
        else:
            data = compute_block(self.steps, read, bounds, self.compute_dtype, value_ranges, **options)
        if valid is None:  # no nodata in this block
            return data if self.output_dtype is None else to_dtype(data, self.output_dtype)
        if self.output_dtype is None:
            data[~valid] = np.nan
            return data
        out = to_dtype(data, self.output_dtype)
        if self.output_nodata is not None:
            out[~valid] = self.output_nodata
        return out


def chain_job(plan: Plan, source: Source, blocks_at_once: int = 1) -> ChainJob:
    """The whole chain's job: every step, to the output dtype (``blocks_at_once``: how many
    blocks the scheduler computes at the same time)."""
    return ChainJob(
        plan.steps,
        source,
        plan.chunks,
        plan.compute_dtype,
        plan.output_dtype,
        plan.masked,
        plan.nodata,
        plan.output_nodata,
        trim_slack(plan, source, blocks_at_once),
    )


def trim_slack(plan: Plan, source: Source, blocks_at_once: int = 1) -> int:
    """What ``release_free_memory`` may leave to the allocator after a block: the working
    memory of the blocks computed at once, which may all end together and which the next
    blocks allocate again at once; with a chunk cache, a quarter of the cache if that is more
    (the process holds that much anyway). A process never holds more free memory than it once
    had in use, so the peak RSS stays that of the blocks in flight (with a process per block,
    the slack only loosens the bound on drift)."""
    cache = source.cache_bytes if isinstance(source, InputSpec) else 0
    return max(max(1, blocks_at_once) * plan.memory_per_block(), cache // 4)


def _block_range(job: ChainJob, index: tuple[int, ...], value_ranges: list[Any]) -> ValueRange:
    data = job.block(index, value_ranges)
    if data.size == 0 or np.isnan(data).all():
        return (math.inf, -math.inf)
    return (float(np.nanmin(data)), float(np.nanmax(data)))


def _combine_ranges(*ranges: ValueRange) -> ValueRange:
    return (min(r[0] for r in ranges), max(r[1] for r in ranges))


class GraphBuilder:
    """Accumulates the tasks of one run: range passes first, then the blocks."""

    def __init__(self, plan: Plan, source: Source, blocks_at_once: int = 1) -> None:
        self.plan = plan
        self.source = source
        self.blocks_at_once = blocks_at_once
        self.token = uuid.uuid4().hex[:12]
        self.tasks: dict[Any, Any] = {}
        self.value_ranges: list[Any] = [None] * len(plan.steps)
        for k, step in enumerate(plan.steps):
            if getattr(step.op, "needs_range", False):
                self.value_ranges[k] = self._range_pass(k)

    def _range_pass(self, k: int) -> str:
        """Tasks that find the global (min, max) of step k's input; returns the result's key."""
        key = f"convpipe-range{k}-{self.token}"
        plan = self.plan
        job = ChainJob(plan.steps[:k], self.source, plan.layout(k), plan.compute_dtype, None, plan.masked, plan.nodata)
        parts = []
        for index in np.ndindex(*[len(c) for c in job.chunks]):
            part = (f"convpipe-range{k}-part-{self.token}", *index)
            self.tasks[part] = (_block_range, job, index, list(self.value_ranges[:k]))
            parts.append(part)
        self.tasks[key] = (_combine_ranges, *parts)
        return key

    def job(self) -> ChainJob:
        return chain_job(self.plan, self.source, self.blocks_at_once)

    def block_tasks(
        self,
        name: str,
        function: Callable[..., Any],
        *extra: Any,
        indices: Iterable[tuple[int, ...]] | None = None,
        in_order: bool = False,
    ) -> list[tuple[Any, ...]]:
        """One task per output block (or per block in ``indices``): ``function(job, index, ranges, *extra)``.

        Keys are the block's index, or with ``in_order`` its rank in ``indices``, named so that
        dask runs the blocks in that order: dask breaks ties between like tasks by their keys
        as text, largest first, so the ranks count down and all have as many digits.
        """
        job = self.job()
        keys = []
        if indices is None:
            indices = np.ndindex(*[len(c) for c in self.plan.chunks])
        indices = list(indices)
        first = 10 ** len(str(len(indices)))
        for position, index in enumerate(indices):
            rank = (first + len(indices) - 1 - position,) if in_order else tuple(index)
            key = (f"{name}-{self.token}", *rank)
            self.tasks[key] = (function, job, tuple(index), list(self.value_ranges), *extra)
            keys.append(key)
        return keys


def _compute(job: ChainJob, index: tuple[int, ...], value_ranges: list[Any]) -> np.ndarray:
    return job.block(index, value_ranges)


def to_dask(plan: Plan, source: Source) -> da.Array:
    """The chain's output as a lazy Dask array, one chunk per block (nothing is written)."""
    builder = GraphBuilder(plan, source)
    builder.block_tasks("convpipe", _compute)
    name = f"convpipe-{builder.token}"
    graph = HighLevelGraph.from_collections(name, builder.tasks, dependencies=())
    meta = np.empty((0,) * len(plan.output_shape), dtype=plan.output_dtype)
    import dask.array as da  # the CLI never builds arrays: keep its start-up light

    return da.Array(graph, name, chunks=plan.chunks, dtype=plan.output_dtype, meta=meta)


def trial_block(plan: Plan, source: Source) -> None:
    """Compute the first block here and throw it away: a chain that cannot run (a window too
    large for memory, an unreadable input) fails before an existing output is replaced.
    Global ranges (``rescale``) are not computed for it: a stand-in range exercises the step."""
    from convpipe.errors import RunError

    job = chain_job(plan, source)
    ranges: list[Any] = [(0.0, 1.0) if getattr(step.op, "needs_range", False) else None for step in plan.steps]
    try:
        job.block((0,) * len(plan.chunks), ranges)
    except MemoryError:
        raise RunError(
            f"computing a block of {plan.block_shape} ran out of memory; nothing was replaced "
            "(use smaller input.chunks or --memory)"
        ) from None
    finally:
        release_free_memory()


def _count(*done: Any) -> int:
    return len(done)


def _gather(*blocks: np.ndarray) -> list[np.ndarray]:
    return list(blocks)


def computed_blocks(
    plan: Plan,
    source: Source,
    indices: Sequence[tuple[int, ...]],
    batch: int,
    options: dict[str, Any] | None = None,
) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """The blocks at ``indices``, in that order, for writers that take them in an order of
    their own (a TIFF's). ``batch`` blocks are computed at once, in parallel, and the next
    batch while the caller takes this one: memory holds two batches, whatever the image's
    size. ``options`` go to ``compute`` (the scheduler and its pool).
    """
    options = options or {}
    builder = GraphBuilder(plan, source)
    pending = [(k, key) for k, key in enumerate(builder.value_ranges) if key is not None]
    if pending:  # the global ranges, once, not once per batch
        final = f"convpipe-ranges-{builder.token}"
        builder.tasks[final] = (tuple, [key for _, key in pending])
        ranges = Delayed(final, HighLevelGraph.from_collections(final, builder.tasks, dependencies=())).compute(
            **options
        )
        for (k, _), value in zip(pending, ranges, strict=True):
            builder.value_ranges[k] = value
    batches = [list(indices[i : i + batch]) for i in range(0, len(indices), max(1, batch))]

    def compute_batch(number: int) -> list[np.ndarray]:
        builder.tasks = {}
        keys = builder.block_tasks("convpipe-batch", _compute, indices=batches[number])
        final = f"convpipe-batch-{builder.token}-{number}"
        builder.tasks[final] = (_gather, *keys)
        graph = HighLevelGraph.from_collections(final, builder.tasks, dependencies=())
        return list(Delayed(final, graph).compute(**options))

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as ahead:
        upcoming = ahead.submit(compute_batch, 0) if batches else None
        for number, members in enumerate(batches):
            assert upcoming is not None
            blocks = upcoming.result()
            upcoming = ahead.submit(compute_batch, number + 1) if number + 1 < len(batches) else None
            yield from zip(members, blocks, strict=True)
            del blocks


def write_graph(
    plan: Plan,
    source: Source,
    write: Callable[..., Any],
    target: Any,
    indices: Iterable[tuple[int, ...]] | None = None,
    blocks_at_once: int = 1,
) -> Delayed:
    """A Delayed that computes blocks and hands each to ``write(target, index, bounds, data)``.

    Computing and writing happen in the same task, so block data never travels between
    workers; the final task only counts the blocks written. ``indices``: the blocks, in the
    order they are to run (``Plan.block_order``, less what a resumed run has); default all.
    ``blocks_at_once``: how many the scheduler computes at the same time (the memory kept
    between blocks, ``trim_slack``).
    """
    builder = GraphBuilder(plan, source, blocks_at_once)
    indices = plan.block_order() if indices is None else indices
    keys = builder.block_tasks("convpipe-write", _compute_and_write, write, target, indices=indices, in_order=True)
    final = f"convpipe-done-{builder.token}"
    builder.tasks[final] = (_count, *keys)
    graph = HighLevelGraph.from_collections(final, builder.tasks, dependencies=())

    class LocalDelayed(Delayed):
        """Resolves dask's named local schedulers (threads, sync, processes) itself: given a
        name, dask imports dask.distributed only to look for a client (0.1 s, 10 MiB)."""

        __slots__ = ()

        def compute(self, **kwargs: Any) -> Any:
            import dask
            from dask.base import named_schedulers

            name = kwargs.get("scheduler", dask.config.get("scheduler", None))
            if isinstance(name, str) and name.lower() in named_schedulers:
                kwargs["scheduler"] = named_schedulers[name.lower()]
            return super().compute(**kwargs)

    return LocalDelayed(final, graph)


def _compute_and_write(
    job: ChainJob, index: tuple[int, ...], value_ranges: list[Any], write: Callable[..., Any], target: Any
) -> None:
    # Zarr copies a strided block (a valid region cut from a filter's output) before
    # encoding it; copied here instead, the filter's whole output is freed before the
    # encoder allocates its own buffer (README, "Performance").
    data = np.ascontiguousarray(job.block(index, value_ranges))
    write(target, index, block_bounds(job.chunks, index), data)
    del data
    release_free_memory(job.trim_slack)


def _pyramid_block(
    read: Callable[..., np.ndarray],
    write: Callable[..., Any],
    target: Any,
    level: int,
    bounds: tuple[tuple[int, int], ...],
    halved: tuple[int, ...],
    source_shape: tuple[int, ...],
    dtype: np.dtype,
    nodata: float | None = None,
) -> None:
    source = read(target, level - 1, pyramid.source_bounds(bounds, halved, source_shape))
    write(target, level, bounds, pyramid.mean2(source, halved, dtype, nodata))
    release_free_memory()


def pyramid_graph(
    plan: Plan, level: int, read: Callable[..., np.ndarray], write: Callable[..., Any], target: Any
) -> Delayed:
    """A Delayed that writes pyramid level ``level`` from the level below, a block per task.

    Blocks have the chain's output block shape, which is whole chunks (and shards), so no
    two tasks write the same chunk.
    """
    shapes = plan.level_shapes()
    shape, source_shape = shapes[level], shapes[level - 1]
    halved = plan.halved_axes(level)
    block = plan.block_shape
    nodata = plan.output_nodata if plan.masked else None  # levels average valid samples only
    token = uuid.uuid4().hex[:12]
    tasks: dict[Any, Any] = {}
    keys = []
    grid = [range(0, n, b) for n, b in zip(shape, block, strict=True)]
    for index, starts in enumerate(itertools.product(*grid)):
        bounds = tuple((start, min(start + b, n)) for start, b, n in zip(starts, block, shape, strict=True))
        key = (f"convpipe-level{level}-{token}", index)
        tasks[key] = (
            _pyramid_block,
            read,
            write,
            target,
            level,
            bounds,
            halved,
            source_shape,
            plan.output_dtype,
            nodata,
        )
        keys.append(key)
    final = f"convpipe-level{level}-done-{token}"
    tasks[final] = (_count, *keys)
    return Delayed(final, HighLevelGraph.from_collections(final, tasks, dependencies=()))
