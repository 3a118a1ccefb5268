"""The Dask graph: one task per output block, each running the fused chain on its own halo.

Blocks do not exchange overlaps with each other: every task reads the input samples its
block depends on straight from storage (``block.needed_indices``), so the graph has one task
per block whatever the number of steps, and no task waits for a neighbour. The only other
tasks are the global-range passes that ``rescale`` needs.

This is the only module that knows Dask.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from convpipe.block import ValueRange, compute_block, to_dtype
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

    def block(self, index: Sequence[int], value_ranges: Sequence[ValueRange | None]) -> np.ndarray:
        reader = reader_of(self.source)
        data = compute_block(
            self.steps,
            reader.read,
            block_bounds(self.chunks, index),
            self.compute_dtype,
            value_ranges,
        )
        return data if self.output_dtype is None else to_dtype(data, self.output_dtype)


def _block_range(job: ChainJob, index: tuple[int, ...], value_ranges: list[Any]) -> ValueRange:
    data = job.block(index, value_ranges)
    if data.size == 0 or np.isnan(data).all():
        return (math.inf, -math.inf)
    return (float(np.nanmin(data)), float(np.nanmax(data)))


def _combine_ranges(*ranges: ValueRange) -> ValueRange:
    return (min(r[0] for r in ranges), max(r[1] for r in ranges))


class GraphBuilder:
    """Accumulates the tasks of one run: range passes first, then the blocks."""

    def __init__(self, plan: Plan, source: Source) -> None:
        self.plan = plan
        self.source = source
        self.token = uuid.uuid4().hex[:12]
        self.tasks: dict[Any, Any] = {}
        self.value_ranges: list[Any] = [None] * len(plan.steps)
        for k, step in enumerate(plan.steps):
            if getattr(step.op, "needs_range", False):
                self.value_ranges[k] = self._range_pass(k)

    def _range_pass(self, k: int) -> str:
        """Tasks that find the global (min, max) of step k's input; returns the result's key."""
        key = f"convpipe-range{k}-{self.token}"
        job = ChainJob(self.plan.steps[:k], self.source, self.plan.layout(k), self.plan.compute_dtype, None)
        parts = []
        for index in np.ndindex(*[len(c) for c in job.chunks]):
            part = (f"convpipe-range{k}-part-{self.token}", *index)
            self.tasks[part] = (_block_range, job, index, list(self.value_ranges[:k]))
            parts.append(part)
        self.tasks[key] = (_combine_ranges, *parts)
        return key

    def job(self) -> ChainJob:
        plan = self.plan
        return ChainJob(plan.steps, self.source, plan.chunks, plan.compute_dtype, plan.output_dtype)

    def block_tasks(
        self, name: str, function: Callable[..., Any], *extra: Any, indices: Iterable[tuple[int, ...]] | None = None
    ) -> list[tuple[Any, ...]]:
        """One task per output block (or per block in ``indices``): ``function(job, index, ranges, *extra)``."""
        job = self.job()
        keys = []
        if indices is None:
            indices = np.ndindex(*[len(c) for c in self.plan.chunks])
        for index in indices:
            key = (f"{name}-{self.token}", *index)
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


def _count(*done: Any) -> int:
    return len(done)


def write_graph(
    plan: Plan,
    source: Source,
    write: Callable[..., Any],
    target: Any,
    indices: Iterable[tuple[int, ...]] | None = None,
) -> Delayed:
    """A Delayed that computes blocks and hands each to ``write(target, index, bounds, data)``.

    Computing and writing happen in the same task, so block data never travels between
    workers; the final task only counts the blocks written. ``indices`` limits the run to
    those blocks (a resumed run).
    """
    builder = GraphBuilder(plan, source)
    keys = builder.block_tasks("convpipe-write", _compute_and_write, write, target, indices=indices)
    final = f"convpipe-done-{builder.token}"
    builder.tasks[final] = (_count, *keys)
    graph = HighLevelGraph.from_collections(final, builder.tasks, dependencies=())
    return Delayed(final, graph)


def _compute_and_write(
    job: ChainJob, index: tuple[int, ...], value_ranges: list[Any], write: Callable[..., Any], target: Any
) -> None:
    write(target, index, block_bounds(job.chunks, index), job.block(index, value_ranges))
    release_free_memory()
