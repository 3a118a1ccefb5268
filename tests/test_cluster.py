"""The config's cluster: section: validated like the rest, turned into batch job scripts."""

from __future__ import annotations

from typing import Any

import pytest

from convpipe.cluster import make_cluster
from convpipe.config import from_dict
from convpipe.errors import ConfigError

pytest.importorskip("dask_jobqueue")

BASE: dict[str, Any] = {"input": {"path": "in.zarr"}, "output": {"path": "out.zarr"}, "pipeline": [{"filter": "box"}]}


def config_with(cluster: dict[str, Any]) -> Any:
    return from_dict({**BASE, "cluster": cluster}, "/data")


@pytest.mark.parametrize(
    ("cluster", "message"),
    [
        ({"kind": "slurm", "cores": 0, "memory": "8GB"}, "cluster.cores: must be >= 1 (got 0)"),
        ({"kind": "kubernetes", "cores": 4, "memory": "8GB"}, "cluster.kind: must be one of slurm, pbs, sge, lsf"),
        ({"kind": "slurm", "memory": "8GB"}, "cluster.cores: is required"),
        ({"kind": "slurm", "cores": 4, "memory": "8GB", "nodes": 3}, "cluster.nodes: unknown key"),
        ({"kind": "slurm", "cores": 4, "memory": "8GB", "job_directives": "--exclusive"}, "cluster.job_directives:"),
    ],
)
def test_bad_cluster_sections_name_the_key(cluster: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_with(cluster)


def job_script(cluster: dict[str, Any]) -> str:
    config = config_with(cluster)
    batch = make_cluster(config.cluster, scheduler_options={"host": "127.0.0.1", "dashboard_address": ":0"})
    try:
        return str(batch.job_script())
    finally:
        batch.close()


def test_a_slurm_job_script_asks_for_what_the_config_says() -> None:
    script = job_script(
        {
            "kind": "slurm",
            "jobs": 4,
            "cores": 8,
            "memory": "32GB",
            "walltime": "02:00:00",
            "queue": "batch",
            "account": "imaging",
            "lifetime": "110m",
            "lifetime_stagger": "5m",
            "job_directives": ["--exclusive"],
        }
    )
    for line in ("#SBATCH -p batch", "#SBATCH -A imaging", "#SBATCH --cpus-per-task=8", "#SBATCH -t 02:00:00"):
        assert line in script
    assert "#SBATCH --exclusive" in script
    assert "--lifetime 110m" in script and "--lifetime-stagger 5m" in script and "--lifetime-restart" in script


def test_a_pbs_job_script() -> None:
    script = job_script({"kind": "pbs", "cores": 4, "memory": "16GB", "walltime": "01:00:00", "queue": "workq"})
    assert "#PBS -q workq" in script and "walltime=01:00:00" in script
