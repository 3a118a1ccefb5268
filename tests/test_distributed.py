"""convpipe on a real dask.distributed cluster: a `dask scheduler` and two `dask worker`
processes on 127.0.0.1, started through their own command lines, bounded in time."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

import convpipe
from convpipe.cli import main

DASK = shutil.which("dask", path=str(Path(sys.executable).parent)) or shutil.which("dask")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    if DASK is None:
        pytest.skip("the dask command line is not installed")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    processes = [
        subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the dask scheduler did not start"
                time.sleep(0.1)
        for _ in range(2):
            processes.append(
                subprocess.Popen(
                    [DASK, "worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def run_config(folder: Path, name: str, *extra: str) -> np.ndarray:
    data = {
        "input": {"path": "in.zarr", "chunks": [64, 64]},
        "output": {"path": f"{name}.zarr"},
        "pipeline": [
            {"filter": "gaussian", "sigma": 2.0},
            {"filter": "rescale"},
            {"filter": "sobel", "stride": 2, "padding": "wrap"},
        ],
    }
    config = folder / f"{name}.yaml"
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit) as done:
        main(["run", str(config), "--quiet", *extra])
    assert done.value.code == 0
    out = zarr.open_array(str(folder / f"{name}.zarr"), mode="r")
    assert out.attrs["convpipe"]["complete"] is True
    return np.asarray(out[...])


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(2)
    zarr.create_array(str(tmp_path / "in.zarr"), data=(rng.random((300, 260)) * 4000).astype(np.uint16))
    return tmp_path


def test_a_running_scheduler_gives_the_threaded_result(folder: Path, cluster: str) -> None:
    threaded = run_config(folder, "threads")
    distributed = run_config(folder, "distributed", "--scheduler", cluster)
    np.testing.assert_array_equal(distributed, threaded)


def test_a_local_cluster_gives_the_threaded_result(folder: Path) -> None:
    threaded = run_config(folder, "threads")
    clustered = run_config(folder, "cluster", "--scheduler", "local-cluster", "--workers", "2", "--memory-limit", "1GB")
    np.testing.assert_array_equal(clustered, threaded)


def test_blocks_larger_than_a_workers_memory_limit_are_refused_before_anything_is_written(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zarr.create_array(str(folder / "big.zarr"), shape=(8192, 8192), dtype="uint16", chunks=(2048, 2048))
    data = {"input": {"path": "big.zarr"}, "output": {"path": "out.zarr"}, "pipeline": [{"filter": "median"}]}
    config = folder / "big.yaml"
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit) as done:
        main(["run", str(config), "--scheduler", "local-cluster", "--workers", "1", "--memory-limit", "150MB"])
    assert done.value.code == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "dashboard:" not in line]
    assert len(err) == 1 and "its memory limit is 0.14 GiB" in err[0] and "--memory" in err[0], err
    assert not (folder / "out.zarr").exists()


def test_an_unreachable_scheduler_is_a_clear_error_and_writes_nothing(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = {"input": {"path": "in.zarr"}, "output": {"path": "out.zarr"}, "pipeline": [{"filter": "box"}]}
    config = folder / "c.yaml"
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit) as done:
        main(["run", str(config), "--scheduler", f"tcp://127.0.0.1:{free_port()}"])
    assert done.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the scheduler" in err[0]
    assert not (folder / "out.zarr").exists()


def test_a_killed_worker_is_replaced_and_the_output_is_still_right(tmp_path: Path) -> None:
    """SIGKILL one worker process of a local cluster mid-run: Dask reruns its blocks."""
    psutil = pytest.importorskip("psutil")
    rng = np.random.default_rng(8)
    zarr.create_array(str(tmp_path / "in.zarr"), data=(rng.random((2048, 2048)) * 4000).astype(np.uint16))
    steps = [{"filter": "median", "size": 5}, {"filter": "gaussian", "sigma": 3.0}]
    data = {"input": {"path": "in.zarr", "chunks": [64, 64]}, "output": {"path": "out.zarr"}, "pipeline": steps}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data))
    command = [sys.executable, "-c", "from convpipe.cli import main; main()", "run", str(config), "--quiet"]
    process = subprocess.Popen(
        [*command, "--scheduler", "local-cluster", "--workers", "2"], stderr=subprocess.PIPE, text=True
    )
    try:
        markers = tmp_path / "out.zarr" / ".convpipe-blocks"
        deadline = time.monotonic() + 120
        while not (markers.exists() and len(list(markers.iterdir())) >= 20):
            assert process.poll() is None and time.monotonic() < deadline, "the run ended too early"
            time.sleep(0.05)
        workers = [
            child
            for child in psutil.Process(process.pid).children(recursive=True)
            if "spawn_main" in " ".join(child.cmdline()) or "forkserver" in " ".join(child.cmdline())
        ]
        assert workers, "no worker processes found"
        workers[-1].kill()
        _, err = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    assert out.attrs["convpipe"]["complete"] is True
    expected = convpipe.filter_array(
        zarr.open_array(str(tmp_path / "in.zarr"), mode="r")[...], steps, chunks=(64, 64)
    ).compute()
    np.testing.assert_array_equal(out[...], expected)
