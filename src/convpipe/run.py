"""Run a config: open the input, plan, write every block, mark the output complete.

The scheduler is chosen here (threads, processes, synchronous, or a dask.distributed
scheduler's address); everything before is pure planning and everything after is the store.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dask

from convpipe._version import __version__
from convpipe.config import Config
from convpipe.engine import write_graph
from convpipe.errors import ConfigError, ConvpipeError, RunError
from convpipe.io import outputs
from convpipe.io.inputs import InputSpec, open_input
from convpipe.plan import Plan, bind

LOCAL_SCHEDULERS = {"threads": "threads", "processes": "processes", "sync": "synchronous"}


def input_spec(config: Config) -> InputSpec:
    return InputSpec(config.input.path, config.input.array, config.input.series, config.input.level)


def make_plan(config: Config) -> Plan:
    """Bind a config to its input's shape: every step's geometry and the block layout.

    Opens the input's metadata only; no pixel is read.
    """
    reader = open_input(input_spec(config))
    return bind(config, reader.shape, reader.dtype, reader.chunks)


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
    }


def check_scheduler(name: str) -> None:
    if name not in LOCAL_SCHEDULERS and "://" not in name:
        raise ConfigError(
            f"--scheduler: must be threads, processes, sync or an address like tcp://host:8786 (got {name!r})"
        )


@contextlib.contextmanager
def scheduler(name: str, workers: int | None) -> Iterator[None]:
    """Make ``name`` Dask's scheduler for the duration: a local one or a cluster's address."""
    check_scheduler(name)
    if name in LOCAL_SCHEDULERS:
        with dask.config.set(scheduler=LOCAL_SCHEDULERS[name], num_workers=workers):
            yield
        return
    if "://" in name:
        from distributed import Client

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
    blocks: int
    seconds: float


def run(
    config: Config,
    *,
    scheduler_name: str = "threads",
    workers: int | None = None,
    overwrite: bool | None = None,
    progress: bool = False,
) -> RunResult:
    """Compute the chain and write it to ``config.output.path``; return what was done."""
    overwrite = config.output.overwrite if overwrite is None else overwrite
    spec = input_spec(config)
    check_scheduler(scheduler_name)
    outputs.check_paths(spec.path, config.output.path, overwrite)
    plan = make_plan(config)
    start = time.perf_counter()
    # Connect to the scheduler before touching the output: a bad address must not cost
    # the user an existing output.
    with scheduler(scheduler_name, workers):
        target = outputs.create(
            config.output.path,
            plan.output_shape,
            plan.block_shape,
            plan.output_dtype,
            plan.axes,
            provenance(config, plan),
            overwrite,
            config.output.codec,
        )
        graph = write_graph(plan, spec, outputs.write_block, target)
        with _progress(progress):
            try:
                blocks = graph.compute()
            except ConvpipeError:
                raise
            except OSError as error:
                raise RunError(
                    f"output {config.output.path}: writing failed ({error}); the output is incomplete"
                ) from None
    outputs.mark_complete(target)
    return RunResult(plan, config.output.path, int(blocks), time.perf_counter() - start)


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    from dask.diagnostics import ProgressBar

    with ProgressBar(out=sys.stderr, dt=0.5):
        yield
