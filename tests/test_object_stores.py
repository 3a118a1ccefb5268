"""convpipe end to end against a real S3 API (moto's server on loopback) and a loopback HTTP server.

What a user sees: the same bits as a local run whichever side is in a bucket, TIFFs read by byte
range, GeoTIFFs uploaded whole, a kill or SIGTERM resumed to the same bytes, one run per output,
one-line errors that never show a secret, and ``convpipe info`` on outputs in a bucket.
The moto server answers about 150 requests a second, so the images here are small.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import yaml
import zarr
from cli_tools import assert_one_line_error, invoke
from s3server import S3Server
from test_formats import geotiff
from zarr.core.attributes import Attributes

import convpipe
from convpipe.io import lifecycle, stores, zarr_output
from convpipe.io.stores import open_store, parse

CLI = [sys.executable, "-c", "from convpipe.cli import main; main()"]
RNG = np.random.default_rng(21)
IMAGE = (RNG.random((300, 260)) * 4000).astype(np.uint16)
CHAIN: list[dict[str, Any]] = [
    {"filter": "gaussian", "sigma": 1.5},
    {"filter": "sharpen"},
    {"filter": "sobel", "stride": 2},
]
# The interrupted runs: median then a wide gaussian, as in test_reliability's Ctrl-C test, on an
# image small enough for moto (64 blocks of 64x64 take it about 7 s).
BIG = (np.random.default_rng(4).random((512, 512)) * 4000).astype(np.uint16)
BIG_CHAIN: list[dict[str, Any]] = [{"filter": "median", "size": 5}, {"filter": "gaussian", "sigma": 4}]
LOCK = ".convpipe-lock"


# --- helpers --------------------------------------------------------------------------------------------------------


def put_zarr(path: str | Path, data: np.ndarray, chunks: tuple[int, ...] = (64, 64)) -> None:
    """A Zarr array at a local path or a bucket URL, written with zarr itself."""
    zarr.create_array(store=open_store(parse(path), read_only=False), data=data, chunks=chunks)


def read_zarr(path: str | Path, array: str = "") -> np.ndarray:
    return np.asarray(zarr.open_array(store=open_store(parse(path)), path=array, mode="r")[...])


def assert_same_bits(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()


def write_config(
    folder: Path,
    input_path: str | Path,
    output_path: str | Path,
    pipeline: list[dict[str, Any]] = CHAIN,
    name: str = "config.yaml",
    input_storage: dict[str, Any] | None = None,
    chunks: int = 64,
    **output: Any,
) -> Path:
    source: dict[str, Any] = {"path": str(input_path), "chunks": [chunks, chunks]}
    if input_storage:
        source["storage"] = input_storage
    data = {"input": source, "output": {"path": str(output_path), **output}, "pipeline": pipeline}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


def run_ok(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> str:
    code, _, err = invoke(capsys, "run", config, "--quiet", *args)
    assert code == 0, err
    return err


def object_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return sorted(keys)


def objects(client: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object under the prefix but the lease records, by key relative to the prefix."""
    start = len(prefix.rstrip("/")) + 1
    return {
        key[start:]: client.get_object(Bucket=bucket, Key=key)["Body"].read()
        for key in object_keys(client, bucket, prefix)
        if not key[start:].startswith(LOCK + "/")
    }


def delete_prefix(client: Any, bucket: str, prefix: str) -> None:
    keys = object_keys(client, bucket, prefix)
    for start in range(0, len(keys), 1000):
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key} for key in keys[start : start + 1000]]})


def newest_lease(client: Any, bucket: str, lock_prefix: str) -> dict[str, Any]:
    """The record of the newest generation of a lease (``<output>/.convpipe-lock/<generation>``)."""
    keys = object_keys(client, bucket, lock_prefix)
    assert keys, "no lease record"
    return json.loads(client.get_object(Bucket=bucket, Key=keys[-1])["Body"].read())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_blocks(process: subprocess.Popen[str], out: str, count: int = 10, seconds: float = 90) -> None:
    location = parse(out)
    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the run wrote too few blocks in time"
        try:
            if zarr_output.count_written(location) >= count:
                return
        except Exception:  # the output is not there yet
            pass
        time.sleep(0.05)


# --- 1-2. Zarr and OME-Zarr, in and out of a bucket -----------------------------------------------------------------


@pytest.mark.parametrize(("source", "target"), [("s3", "s3"), ("s3", "local"), ("local", "s3")])
def test_zarr_runs_give_the_same_bits_in_a_bucket(
    s3_env: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], source: str, target: str
) -> None:
    bucket = s3_env.new_bucket()
    put_zarr(tmp_path / "in.zarr", IMAGE)
    run_ok(capsys, write_config(tmp_path / "ref", tmp_path / "in.zarr", tmp_path / "ref.zarr"))
    expected = read_zarr(tmp_path / "ref.zarr")

    input_path = f"s3://{bucket}/in.zarr" if source == "s3" else str(tmp_path / "in.zarr")
    output_path = f"s3://{bucket}/results/out.zarr" if target == "s3" else str(tmp_path / "out.zarr")
    if source == "s3":
        put_zarr(input_path, IMAGE)
    run_ok(capsys, write_config(tmp_path / "run", input_path, output_path))
    assert_same_bits(read_zarr(output_path), expected)
    status = zarr_output.read_status(parse(output_path))
    assert status is not None and status["complete"] is True
    if target == "s3":
        keys = object_keys(s3_env.client(), bucket, "results/out.zarr")
        assert not [key for key in keys if "/.convpipe-blocks/" in key]  # records go once complete


def test_ome_zarr_pyramid_in_a_bucket_matches_every_level(
    s3_env: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = s3_env.new_bucket()
    put_zarr(tmp_path / "in.zarr", IMAGE)
    put_zarr(f"s3://{bucket}/in.zarr", IMAGE)
    options = {"format": "ome-zarr", "pyramid": 2}
    run_ok(capsys, write_config(tmp_path / "ref", tmp_path / "in.zarr", tmp_path / "ref.ome.zarr", **options))
    out = f"s3://{bucket}/out.ome.zarr"
    run_ok(capsys, write_config(tmp_path / "run", f"s3://{bucket}/in.zarr", out, **options))
    for level in ("0", "1", "2"):
        assert_same_bits(read_zarr(out, level), read_zarr(tmp_path / "ref.ome.zarr", level))
    local = zarr.open_group(str(tmp_path / "ref.ome.zarr"), mode="r").attrs.asdict()
    remote = zarr.open_group(store=open_store(parse(out)), mode="r").attrs.asdict()
    assert remote["ome"] == local["ome"] and remote["convpipe"]["complete"] is True


# --- 3-4. TIFF and GeoTIFF ------------------------------------------------------------------------------------------


@pytest.fixture
def fetches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(key, bytes) of every single-object read through obstore's get, get_range and get_ranges
    (one entry per range)."""
    import obstore

    seen: list[tuple[str, int]] = []
    lock = threading.Lock()
    for name in ("get_range", "get_ranges", "get"):
        real = getattr(obstore, name)

        def counting(store: Any, key: str, *args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            result = _real(store, key, *args, **kwargs)
            if _name == "get":
                sizes = [-1]  # a whole object, however big
            else:
                sizes = [len(memoryview(part)) for part in (result if _name == "get_ranges" else [result])]
            with lock:
                seen.extend((str(key), size) for size in sizes)
            return result

        monkeypatch.setattr(obstore, name, counting)
    return seen


@pytest.mark.parametrize("kind", ["tiff", "geotiff"])
def test_tiff_inputs_in_a_bucket_are_read_by_range(
    s3_env: S3Server,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fetches: list[tuple[str, int]],
    kind: str,
) -> None:
    bucket = s3_env.new_bucket()
    local = tmp_path / "in.tif"
    if kind == "tiff":
        image = (np.random.default_rng(5).random((512, 512)) * 4000).astype(np.uint16)
        tifffile.imwrite(local, image, tile=(64, 64))  # 512 KiB, uncompressed
    else:
        geotiff(local, (np.random.default_rng(6).random((300, 260)) * 1000).astype(np.float32))
    url = f"s3://{bucket}/scenes/in.tif"
    stores.upload(local, parse(url))
    size = local.stat().st_size
    chunks = 128 if kind == "tiff" else 64

    run_ok(capsys, write_config(tmp_path / "ref", local, tmp_path / "ref.zarr", chunks=chunks))
    config = write_config(tmp_path / "run", url, tmp_path / "out.zarr", chunks=chunks)
    code, _, err = invoke(capsys, "validate", config)
    assert code == 0, err
    assert 0 < sum(n for key, n in fetches if key.endswith("in.tif")) < size / 4, fetches
    fetches.clear()
    run_ok(capsys, config)
    assert_same_bits(read_zarr(tmp_path / "out.zarr"), read_zarr(tmp_path / "ref.zarr"))
    reads = [n for key, n in fetches if key.endswith("in.tif")]
    assert reads and all(0 < n < size / 4 for n in reads), f"a read of {max(reads)} of {size} bytes"
    if kind == "geotiff":
        local_attrs = zarr.open_array(str(tmp_path / "ref.zarr"), mode="r").attrs.asdict()
        remote_attrs = zarr.open_array(str(tmp_path / "out.zarr"), mode="r").attrs.asdict()
        assert remote_attrs["geo"] == local_attrs["geo"] and remote_attrs["geo"]["crs"] == "EPSG:32633"


def test_geotiff_output_is_uploaded_whole_and_leaves_no_temporary_file(
    s3_env: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_env.new_bucket()
    source = geotiff(tmp_path / "dem.tif", (np.random.default_rng(7).random((300, 260)) * 1000).astype(np.float32))
    staging = tmp_path / "tmpdir"
    staging.mkdir()
    monkeypatch.setenv("TMPDIR", str(staging))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    run_ok(capsys, write_config(tmp_path / "ref", source, tmp_path / "ref.tif"))
    run_ok(capsys, write_config(tmp_path / "run", source, f"s3://{bucket}/maps/out.tif"))
    assert list(staging.iterdir()) == []

    client = s3_env.client()
    keys = object_keys(client, bucket, "maps")
    assert "maps/out.tif" in keys
    assert all(key == "maps/out.tif" or key.startswith(f"maps/out.tif{LOCK}/") for key in keys), keys
    assert newest_lease(client, bucket, f"maps/out.tif{LOCK}")["released"] is True
    (tmp_path / "got.tif").write_bytes(client.get_object(Bucket=bucket, Key="maps/out.tif")["Body"].read())
    with tifffile.TiffFile(tmp_path / "got.tif") as got, tifffile.TiffFile(tmp_path / "ref.tif") as ref:
        assert_same_bits(got.asarray(), ref.asarray())
        for tag in (33550, 33922, 34735, 42113):  # pixel scale, tiepoint, GeoKeys, nodata
            assert got.pages.first.tags[tag].value == ref.pages.first.tags[tag].value
    # A second run with --overwrite replaces it (it is ours), again leaving nothing in TMPDIR.
    run_ok(capsys, write_config(tmp_path / "run", source, f"s3://{bucket}/maps/out.tif"), "--overwrite")
    assert list(staging.iterdir()) == []


# --- 5, 7. kill -9 and SIGTERM, then --resume -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def big(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An input in a bucket, the config of a run on it, and every object its uninterrupted run writes."""
    folder = tmp_path_factory.mktemp("big")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3_server.env.items():
            patch.setenv(name, value)
        open_store.cache_clear()
        bucket = s3_server.new_bucket()
        put_zarr(f"s3://{bucket}/in.zarr", BIG)
        config = write_config(folder, f"s3://{bucket}/in.zarr", f"s3://{bucket}/out.zarr", BIG_CHAIN)
        convpipe.run(convpipe.load_config(config))
        client = s3_server.client()
        expected = objects(client, bucket, "out.zarr")
        open_store.cache_clear()
    assert "zarr.json" in expected and len([k for k in expected if k.startswith("c/")]) == 64
    yield {"bucket": bucket, "config": config, "out": f"s3://{bucket}/out.zarr", "expected": expected}


def start_big_run(big: dict[str, Any], client: Any) -> subprocess.Popen[str]:
    delete_prefix(client, big["bucket"], "out.zarr")
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}  # a crash on the way out would show where
    process = subprocess.Popen([*CLI, "run", str(big["config"]), "--quiet"], stderr=subprocess.PIPE, text=True, env=env)
    wait_for_blocks(process, big["out"])
    return process


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_same_bytes(s3_env: S3Server, big: dict[str, Any]) -> None:
    client = s3_env.client()
    process = start_big_run(big, client)
    process.kill()
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    lease = newest_lease(client, big["bucket"], f"out.zarr/{LOCK}")
    assert lease["released"] is False and lease["pid"] == process.pid
    written = zarr_output.count_written(parse(big["out"]))
    assert 10 <= written < 64

    start = time.monotonic()
    resumed = subprocess.run([*CLI, "run", str(big["config"]), "--resume"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"took over {big['out']} from a run that stopped (pid {process.pid}" in resumed.stderr
    assert "(resumed: " in resumed.stderr
    assert time.monotonic() - start < 60  # the dead run's 120 s lease was not waited out
    assert objects(client, big["bucket"], "out.zarr") == big["expected"]
    assert newest_lease(client, big["bucket"], f"out.zarr/{LOCK}")["released"] is True


@pytest.mark.slow
def test_sigterm_releases_the_lease_and_resume_gives_the_same_bytes(s3_env: S3Server, big: dict[str, Any]) -> None:
    client = s3_env.client()
    process = start_big_run(big, client)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("convpipe: terminated") and "--resume" in last and "Traceback" not in err
    assert newest_lease(client, big["bucket"], f"out.zarr/{LOCK}")["released"] is True
    status = zarr_output.read_status(parse(big["out"]))
    assert status is not None and status["complete"] is False

    resumed = subprocess.run([*CLI, "run", str(big["config"]), "--resume"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "took over" not in resumed.stderr  # released: nobody to take over from
    assert objects(client, big["bucket"], "out.zarr") == big["expected"]


# --- 6. two runs at once --------------------------------------------------------------------------------------------


# A process that runs ``convpipe run CONFIG --quiet`` through the CLI's entry point once per
# config, each time as soon as GO.<n> exists, and appends [n, exit status, stderr] to RESULTS:
# imports are done before the start signal, so two of them start each round within a millisecond.
# (Threads of one process would not do: dask's scheduler settings are process-wide.)
RACER = """
import io, json, os, sys, time
from convpipe.cli import main
import convpipe.run, obstore, zarr
go, results, *configs = sys.argv[1:]
for n, config in enumerate(configs):
    while not os.path.exists(f"{go}.{n}"):
        time.sleep(0.001)
    err, sys.stderr = sys.stderr, io.StringIO()
    try:
        main(["run", config, "--quiet"])
    except SystemExit as stop:
        code = stop.code
    text, sys.stderr = sys.stderr.getvalue(), err
    with open(results, "a") as out:
        out.write(json.dumps([n, code, text]) + "\\n")
"""


def racer_results(path: Path, count: int, process: subprocess.Popen[str], seconds: float = 60) -> list[Any]:
    deadline = time.monotonic() + seconds
    while True:
        # Whether it ended, asked before the file is read: a racer that writes its last line
        # and exits between the two is read in full, not taken for one that failed.
        ended = process.poll() is not None
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        assert not ended, process.communicate()
        assert time.monotonic() < deadline, "a racer did not finish its run"
        time.sleep(0.01)


@pytest.mark.slow
def test_two_runs_at_once_on_one_output_one_proceeds(s3_env: S3Server, tmp_path: Path) -> None:
    bucket = s3_env.new_bucket()
    put_zarr(f"s3://{bucket}/in.zarr", IMAGE[:128, :128])
    rounds = 8
    outs = [f"s3://{bucket}/out{n}.zarr" for n in range(rounds)]
    configs = [
        str(write_config(tmp_path, f"s3://{bucket}/in.zarr", out, CHAIN[:1], name=f"c{n}.yaml"))
        for n, out in enumerate(outs)
    ]
    go = tmp_path / "go"
    files = [tmp_path / f"results{k}.jsonl" for k in range(2)]
    racers = [
        subprocess.Popen([*CLI[:2], RACER, str(go), str(file), *configs], stderr=subprocess.PIPE, text=True)
        for file in files
    ]
    try:
        for n, out in enumerate(outs):
            Path(f"{go}.{n}").touch()
            results = [racer_results(file, n + 1, racer)[n] for file, racer in zip(files, racers, strict=True)]
            assert sorted(code for _, code, _ in results) == [0, 2], results
            loser = next(text for _, code, text in results if code == 2)
            # Which refusal the loser gives depends on when it looks, and both are right: while
            # the winner writes, the lease is held; once a loaded machine lets the winner finish
            # first, the output is complete and simply exists.
            held = "being written by another convpipe run" in loser
            assert_one_line_error(loser, f"output.path: {out}", "being written" if held else "already exists")
            status = zarr_output.read_status(parse(out))
            assert status is not None and status["complete"] is True
    finally:
        for racer in racers:
            racer.kill()
            racer.communicate()


def test_a_held_output_is_refused_in_one_line(
    s3_env: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the CLI says to the second run: exit 2, one line, who holds it."""
    from convpipe.io import lifecycle

    bucket = s3_env.new_bucket()
    put_zarr(f"s3://{bucket}/in.zarr", IMAGE[:128, :128])
    out = f"s3://{bucket}/out.zarr"
    config = write_config(tmp_path, f"s3://{bucket}/in.zarr", out, CHAIN[:1])
    for flags in ((), ("--overwrite",)):
        # A short lease: --overwrite waits for it to lapse, and sees it renewed within a second.
        with lifecycle.held(zarr_output.store(parse(out)), LOCK, 4.0, name=f"output.path: {out}"):
            code, _, err = invoke(capsys, "run", config, "--quiet", *flags)
        assert code == 2, err
        assert_one_line_error(err, f"output.path: {out}", "being written by another convpipe run")
    # Released, the output is free; what is there is only lease records, which a plain run
    # calls "already exists": --overwrite replaces them.
    run_ok(capsys, config, "--overwrite")


# --- 8. errors ------------------------------------------------------------------------------------------------------


def test_a_finish_that_fails_in_a_bucket_is_finished_by_resume(
    s3_env: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The completion mark is stored when clearing the block records fails: the run fails
    (exit 1) without calling the output incomplete, and --resume clears the records."""
    bucket, client = s3_env.new_bucket(), s3_env.client()
    put_zarr(tmp_path / "in.zarr", IMAGE)
    run_ok(capsys, write_config(tmp_path / "ref", tmp_path / "in.zarr", tmp_path / "ref.zarr"))
    out = f"s3://{bucket}/out.zarr"
    config = write_config(tmp_path / "run", tmp_path / "in.zarr", out)

    def failing(*args: Any) -> None:
        raise ConnectionResetError("connection reset by peer")

    with monkeypatch.context() as patch:
        patch.setattr(lifecycle, "clear_blocks", failing)
        code, _, err = invoke(capsys, "run", config, "--quiet")
    assert code == 1, err
    assert_one_line_error(
        err, f"output {out}: every block is written and stored", "connection reset", "run again with --resume"
    )
    assert "incomplete" not in err and "crash" not in err
    assert zarr_output.read_status(parse(out))["complete"] is True
    assert [key for key in object_keys(client, bucket, "out.zarr") if "/.convpipe-blocks/" in key]

    run_ok(capsys, config, "--resume")
    assert not [key for key in object_keys(client, bucket, "out.zarr") if "/.convpipe-blocks/" in key]
    assert_same_bits(read_zarr(out), read_zarr(tmp_path / "ref.zarr"))


@pytest.mark.parametrize("applied", [True, False], ids=["applied", "lost"])
def test_a_mark_whose_put_times_out_is_told_by_what_the_bucket_holds(
    s3_env: S3Server,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    applied: bool,
) -> None:
    """The completion mark's put times out. Applied by the bucket all the same, the output reads
    as complete and the message says so; lost, the output is incomplete and the message says
    that. --resume finishes either, to the same bits."""
    bucket = s3_env.new_bucket()
    put_zarr(tmp_path / "in.zarr", IMAGE)
    run_ok(capsys, write_config(tmp_path / "ref", tmp_path / "in.zarr", tmp_path / "ref.zarr"))
    out = f"s3://{bucket}/out.zarr"
    config = write_config(tmp_path / "run", tmp_path / "in.zarr", out)
    setitem = Attributes.__setitem__

    def timing_out(self: Any, key: str, value: Any) -> None:
        marking = key == "convpipe" and isinstance(value, dict) and value.get("complete")
        if applied or not marking:
            setitem(self, key, value)
        if marking:
            raise TimeoutError("operation timed out")

    with monkeypatch.context() as patch:
        patch.setattr(Attributes, "__setitem__", timing_out)
        code, _, err = invoke(capsys, "run", config, "--quiet")
    assert code == 1, err
    if applied:
        assert_one_line_error(err, f"output {out}: every block is written and stored", "timed out", "--resume")
        assert "incomplete" not in err
    else:
        assert_one_line_error(err, f"output {out}: writing failed", "timed out", "the output is incomplete")
    assert zarr_output.read_status(parse(out))["complete"] is applied

    run_ok(capsys, config, "--resume")
    assert zarr_output.read_status(parse(out))["complete"] is True
    assert zarr_output.count_written(parse(out)) == 0
    assert_same_bits(read_zarr(out), read_zarr(tmp_path / "ref.zarr"))


@pytest.mark.parametrize("fault", ["wrong secret", "wrong secret in config", "missing bucket", "closed port"])
def test_storage_errors_are_one_line_fast_and_leave_nothing_in_the_way(
    s3_env: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    bucket = s3_env.new_bucket()
    secret = s3_env.env["AWS_SECRET_ACCESS_KEY"]
    wrong = "wr0ng-s3cr3t-" + "x" * 27
    put_zarr(f"s3://{bucket}/in.zarr", IMAGE[:128, :128])
    target = "nope-no-such-bucket" if fault == "missing bucket" else bucket
    storage = {"secret_access_key": wrong} if fault == "wrong secret in config" else None
    source, out = f"s3://{bucket}/in.zarr", f"s3://{target}/out.zarr"
    config = write_config(tmp_path, source, out, CHAIN[:1], input_storage=storage, storage=storage)
    with monkeypatch.context() as broken:
        if fault == "wrong secret":
            broken.setenv("AWS_SECRET_ACCESS_KEY", wrong)
        elif fault == "closed port":
            broken.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        open_store.cache_clear()
        start = time.monotonic()
        code, out_text, err = invoke(capsys, "run", config)
        assert time.monotonic() - start < 15
        open_store.cache_clear()
    assert code == 1, err
    expected = {
        "wrong secret": ("input", source, "access denied", "AWS_SECRET_ACCESS_KEY"),
        "wrong secret in config": ("input", source, "access denied", "input.storage"),
        "missing bucket": ("output", out, "no such bucket"),
        "closed port": ("input", source, "cannot reach http://127.0.0.1:", "connection refused"),
    }[fault]
    assert_one_line_error(err, *expected)
    assert secret not in err + out_text and wrong not in err + out_text
    client = s3_env.client()
    assert object_keys(client, bucket, "out.zarr") == []

    if fault == "missing bucket":
        client.create_bucket(Bucket=target)
    if storage:
        config = write_config(tmp_path, source, out, CHAIN[:1])
    run_ok(capsys, config)
    status = zarr_output.read_status(parse(out))
    assert status is not None and status["complete"] is True
    if fault == "missing bucket":
        delete_prefix(client, target, "out.zarr")
        client.delete_bucket(Bucket=target)


# --- 9, 11. info, provenance, and partial outputs -------------------------------------------------------------------


@pytest.fixture
def partial_output(
    s3_env: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[str, int]:
    """An s3 output whose run failed after 3 of its 25 blocks (the store refused a write)."""
    bucket = s3_env.new_bucket()
    put_zarr(f"s3://{bucket}/in.zarr", IMAGE)
    out = f"s3://{bucket}/partial.zarr"
    real = zarr_output.write_block
    count = [0]

    def failing(*args: Any) -> None:
        if count[0] >= 3:
            raise OSError(5, "Input/output error")
        real(*args)
        count[0] += 1

    with monkeypatch.context() as patch:
        patch.setattr(zarr_output.ZarrOutput, "write_block", staticmethod(failing))
        config = write_config(tmp_path / "partial", f"s3://{bucket}/in.zarr", out)
        code, _, err = invoke(capsys, "run", config, "--quiet", "--scheduler", "sync")
    assert code == 1, err
    assert_one_line_error(err, out, "the output is incomplete")
    return out, 3


def test_info_on_complete_and_partial_outputs_shows_provenance_and_no_secret(
    s3_env: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], partial_output: tuple[str, int]
) -> None:
    bucket = s3_env.new_bucket()
    secret = s3_env.env["AWS_SECRET_ACCESS_KEY"]
    put_zarr(f"s3://{bucket}/in.zarr", IMAGE)
    out = f"s3://{bucket}/out.zarr"
    storage = {"secret_access_key": secret, "endpoint": s3_env.endpoint}
    err = run_ok(capsys, write_config(tmp_path, f"s3://{bucket}/in.zarr", out, input_storage=storage, storage=storage))
    assert secret not in err
    stored = s3_env.client().get_object(Bucket=bucket, Key="out.zarr/zarr.json")["Body"].read().decode()
    assert secret not in stored
    recorded = json.loads(stored)["attributes"]["convpipe"]["config"]
    assert recorded["output"]["storage"]["secret_access_key"] == "***"
    assert recorded["input"]["storage"]["secret_access_key"] == "***"

    code, text, err = invoke(capsys, "info", out)
    assert code == 0, err
    assert "complete (25 blocks)" in text and "gaussian" in text and "sobel" in text
    assert f"s3://{bucket}/in.zarr (300, 260) uint16" in text
    assert secret not in text + err

    partial, written = partial_output
    code, text, err = invoke(capsys, "info", partial)
    assert code == 0, err
    assert f"partial ({written} of 25 blocks written)" in text and "--resume" in text
    assert "made by" in text and secret not in text + err


def test_a_partial_output_in_a_bucket_is_refused_as_input(
    s3_env: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], partial_output: tuple[str, int]
) -> None:
    partial, written = partial_output
    config = write_config(tmp_path / "next", partial, tmp_path / "next.zarr")
    code, _, err = invoke(capsys, "run", config)
    assert code == 2
    assert_one_line_error(
        err, f"input {partial} is a partial convpipe output ({written} of 25 blocks); finish it with --resume first"
    )
    assert not (tmp_path / "next.zarr").exists()


# --- 10. http(s) inputs ---------------------------------------------------------------------------------------------


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A loopback HTTP server over a folder: (folder, base URL)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    folder = tmp_path / "site"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_ome_zarr_input_and_a_refused_http_output(
    site: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, base = site
    put_zarr(tmp_path / "in.zarr", IMAGE)
    image = folder / "img.ome.zarr"
    run_ok(
        capsys, write_config(tmp_path / "make", tmp_path / "in.zarr", image, CHAIN[:1], format="ome-zarr", pyramid=1)
    )
    run_ok(capsys, write_config(tmp_path / "ref", image, tmp_path / "ref.zarr"))
    run_ok(capsys, write_config(tmp_path / "run", f"{base}/img.ome.zarr", tmp_path / "out.zarr"))
    # An OME-Zarr input makes an OME-Zarr output: compare its level 0.
    assert_same_bits(read_zarr(tmp_path / "out.zarr", "0"), read_zarr(tmp_path / "ref.zarr", "0"))
    code, shown, err = invoke(capsys, "info", f"{base}/img.ome.zarr", "--json")
    assert code == 0, err
    status = json.loads(shown)["status"]
    assert status["complete"] is True and status["finish_pending"] is None  # http lists no records

    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    config = write_config(tmp_path / "web", tmp_path / "in.zarr", f"{base}/out.zarr")
    code, _, err = invoke(capsys, "run", config)
    assert code == 2
    assert_one_line_error(err, f"{base}/out.zarr", "read-only")
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
