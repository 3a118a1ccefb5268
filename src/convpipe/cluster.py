"""Batch clusters: a config's ``cluster:`` section becomes a dask-jobqueue cluster.

Workers are batch jobs (SLURM, PBS, SGE, LSF) that connect back to a scheduler in the
convpipe process. As dask-jobqueue recommends for long runs, each worker gets a ``--lifetime``
shorter than the job's walltime, staggered so that workers retire one at a time; with
``--lifetime-restart`` the job queue replaces them, and Dask reruns whatever they were doing.
Inputs and outputs must be on a filesystem every job can reach.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator

from convpipe.errors import ConfigError
from convpipe.params import OptionalText, Text, fail, integer, one_of, optional, text

KINDS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster"}


def _directives(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) and item for item in value):
        raise fail(f"must be a list of strings, like ['--exclusive'] (got {value!r})")
    return tuple(value)


class ClusterConfig(BaseModel):
    """The ``cluster:`` section: what each batch job asks for and how many to run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Annotated[str, PlainValidator(one_of(*KINDS))] = Field(description="slurm, pbs, sge or lsf")
    jobs: Annotated[int, PlainValidator(integer(1))] = Field(1, description="batch jobs to start")
    cores: Annotated[int, PlainValidator(integer(1))] = Field(description="cores per job")
    processes: Annotated[int, PlainValidator(integer(1))] = Field(1, description="worker processes per job")
    memory: Text = Field(description="memory per job, like 32GB")
    walltime: OptionalText = Field(None, description="job walltime, like 02:00:00")
    queue: OptionalText = Field(None, description="queue or partition")
    account: OptionalText = Field(None, description="account or project to charge")
    interface: OptionalText = Field(None, description="network interface the workers use, like ib0")
    lifetime: OptionalText = Field(None, description="retire each worker after this long (below the walltime)")
    lifetime_stagger: Annotated[str | None, PlainValidator(optional(text))] = Field(
        "5m", description="spread the workers' retirements over this much time"
    )
    job_directives: Annotated[tuple[str, ...], PlainValidator(_directives)] = Field(
        (), description="extra scheduler directives, like ['--exclusive']"
    )
    local_directory: OptionalText = Field(None, description="worker scratch directory")


def cluster_kwargs(config: ClusterConfig) -> dict[str, Any]:
    """Keyword arguments for the dask-jobqueue cluster class."""
    worker_args: list[str] = []
    if config.lifetime:
        worker_args += ["--lifetime", config.lifetime, "--lifetime-restart"]
        if config.lifetime_stagger:
            worker_args += ["--lifetime-stagger", config.lifetime_stagger]
    kwargs: dict[str, Any] = {
        "cores": config.cores,
        "processes": config.processes,
        "memory": config.memory,
        "worker_extra_args": worker_args,
        "job_extra_directives": list(config.job_directives),
    }
    for key in ("walltime", "queue", "account", "interface", "local_directory"):
        value = getattr(config, key)
        if value is not None:
            kwargs[key] = value
    return kwargs


def make_cluster(config: ClusterConfig, scheduler_options: dict[str, Any] | None = None) -> Any:
    """The dask-jobqueue cluster object (no job is submitted until it is scaled)."""
    try:
        import dask_jobqueue
    except ImportError:
        raise ConfigError("cluster: needs dask-jobqueue; install it with: pip install 'convpipe[cluster]'") from None
    cluster_class = getattr(dask_jobqueue, KINDS[config.kind])
    return cluster_class(**cluster_kwargs(config), scheduler_options=scheduler_options or {"dashboard_address": ":0"})


@contextlib.contextmanager
def batch_cluster(config: ClusterConfig) -> Iterator[None]:
    """Start the jobs, make their cluster Dask's scheduler, and stop them at the end."""
    from distributed import Client

    cluster = make_cluster(config)
    with cluster, Client(cluster):
        cluster.scale(jobs=config.jobs)
        yield
