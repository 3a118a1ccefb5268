"""Where blocks are computed: threads, processes or synchronous on this machine; a
``LocalCluster`` of worker processes; a running dask.distributed scheduler's address; or the
batch cluster a config's ``cluster:`` section starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import dask

from convpipe.cluster import ClusterConfig, batch_cluster
from convpipe.errors import ConfigError, RunError

LOCAL_SCHEDULERS = {"threads": "threads", "processes": "processes", "sync": "synchronous"}
SCHEDULERS = (*LOCAL_SCHEDULERS, "local-cluster")


def check_scheduler(name: str) -> None:
    if name not in SCHEDULERS and "://" not in name:
        raise ConfigError(
            f"--scheduler: must be threads, processes, sync, local-cluster or an address like tcp://host:8786 "
            f"(got {name!r})"
        )
    if "://" in name:  # a malformed address is a usage error, said before any connection is tried
        from urllib.parse import urlsplit

        try:
            address = urlsplit(name)
            _ = address.port  # a port that is no number, or out of range
            reason = None if address.hostname else "no host"
        except ValueError as error:
            reason = str(error)
        if reason is not None:
            raise ConfigError(
                f"--scheduler: {name[:80]!r} is not a scheduler address like tcp://host:8786 or "
                f"tcp://[::1]:8786 ({reason})"
            )


def _worker_process_setup() -> None:
    """In each process-pool worker: die with the parent (even on kill -9), and leave SIGINT and
    SIGTERM to the parent, which lets the block in hand finish before it stops the run."""
    import ctypes
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


@contextlib.contextmanager
def scheduler(
    name: str, workers: int | None, memory_limit: str | None = None, cluster: ClusterConfig | None = None
) -> Iterator[Scheduling]:
    """Make ``name`` Dask's scheduler for the duration (``cluster``: the config's batch cluster).

    Yields how to compute (``options`` for ``compute``) and how to ``drain``: called on the way
    out of a run, even on Ctrl-C or SIGTERM, it waits for the blocks in flight and drops the
    queued ones, so that none is written after the caller has released the output's lease. (A
    process pool is drained by Dask itself. A dask.distributed cluster is not drained: its
    queued blocks find the lease released and write nothing, but a block a worker is writing
    at that moment still lands.) A thread pool is this run's own, passed to ``compute``, so two runs in
    one process (a notebook) never share or shut down each other's.
    """
    if name == "cluster":
        assert cluster is not None
        with batch_cluster(cluster):
            yield Scheduling()
        return
    check_scheduler(name)
    if name == "threads":
        import concurrent.futures

        size = workers or os.cpu_count() or 1
        pool = concurrent.futures.ThreadPoolExecutor(size, thread_name_prefix="convpipe")
        try:
            yield Scheduling(
                lambda: pool.shutdown(wait=True, cancel_futures=True),
                {"scheduler": "threads", "pool": pool},
                size,
            )
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return
    if name in LOCAL_SCHEDULERS:
        settings = {"scheduler": LOCAL_SCHEDULERS[name], "num_workers": workers}
        if name == "processes":
            settings["multiprocessing.initializer"] = _worker_process_setup
        with dask.config.set(settings):
            yield Scheduling(slots=1 if name == "sync" else workers or os.cpu_count() or 1)
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
        with cluster, Client(cluster) as client:
            yield _distributed(client)
        return
    try:
        client = Client(name, timeout="10s")
    except ValueError as error:  # an address check_scheduler let through that distributed cannot parse
        raise ConfigError(f"--scheduler {name}: not a usable scheduler address ({error})") from None
    except OSError as error:
        raise RunError(f"--scheduler {name}: cannot reach the scheduler ({error})") from None
    with client:
        yield _distributed(client)


def _nothing() -> None:
    pass


def _distributed(client: Any) -> Scheduling:
    """A dask.distributed cluster's scheduling, its dashboard announced (README, "Clusters and
    long nights"): the CLI shows convpipe's log messages on stderr."""
    try:
        dashboard = client.dashboard_link
    except Exception:  # a scheduler started without its dashboard: never a reason to fail
        dashboard = None
    if dashboard:
        logging.getLogger("convpipe").info("dashboard: %s", dashboard)
    workers = client.scheduler_info().get("workers", {}).values()
    limits = tuple((int(w.get("nthreads", 1)), int(w["memory_limit"])) for w in workers if w.get("memory_limit"))
    return Scheduling(slots=_threads(client), dashboard=dashboard, worker_memory=limits)


def _threads(client: Any) -> int:
    """The threads of a dask.distributed cluster's workers: how many blocks it computes at once."""
    return max(1, sum(client.nthreads().values()))


@dataclass(frozen=True)
class Scheduling:
    """How a run computes: keyword arguments for ``compute``, and how to drain what is in flight."""

    drain: Callable[[], None] = _nothing
    options: dict[str, Any] = field(default_factory=dict)
    slots: int = field(default_factory=lambda: os.cpu_count() or 1)  # blocks computed at once
    dashboard: str | None = None  # a dask.distributed cluster's dashboard address
    worker_memory: tuple[tuple[int, int], ...] = ()  # per worker with a limit: (threads, bytes)
