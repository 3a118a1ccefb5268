"""What a run vouches for is on the disk first (README, "Data safety"): a node that crashes or
loses power keeps only what was synced, so a block's record, the completion mark and a
published GeoTIFF must never reach the disk before the data they vouch for.

A power cut cannot be staged in a test. These tests log every sync the run makes (each file's
``fdatasync``, each folder's ``fsync``, read through the descriptor the run syncs) beside every
record, completion mark and rename, and check the order at every point a cut could come.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import signal
import subprocess
import sys
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

from convpipe.io import durable, lifecycle, zarr_output

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")

Event = tuple[str, Any]
BLOCK = 32  # the processing block; the input is 3×3 blocks


@pytest.fixture
def small(tmp_path: Path) -> Path:
    data = (np.random.default_rng(7).random((96, 96)) * 4000).astype(np.uint16)
    path = tmp_path / "in.zarr"
    zarr.create_array(str(path), data=data, chunks=(32, 32))
    return path


def write_config(folder: Path, source: Path, output: Path, **options: Any) -> Path:
    data = {
        "input": {"path": str(source), "chunks": [BLOCK, BLOCK]},
        "output": {"path": str(output), **options},
        "pipeline": [{"filter": "gaussian", "sigma": 1.5}, {"filter": "sobel"}],
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def uninterrupted(capsys: pytest.CaptureFixture[str], config: Path, path: Path) -> Path:
    """The output the config gives at ``path`` when nothing fails: what a failed run must equal."""
    code, _, err = invoke(capsys, "run", config, "--quiet", "--set", f"output.path={path}")
    assert code == 0, err
    return path


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Event]]:
    """The log: ("file", (path, bytes synced)), ("folder", path), ("record", index),
    ("cleared", None), ("replace", (source, target)), ("released", None) for the lease,
    ("drop", path) from the page cache, in the order they happened."""
    log: list[Event] = []
    datasync, fsync, record, clear, replace, release = (
        durable._datasync,
        os.fsync,
        lifecycle.record_block,
        lifecycle.clear_blocks,
        os.replace,
        lifecycle.Lease.release,
    )

    def file_sync(fd: int) -> None:
        time.sleep(0.01)  # a slow disk: whatever waits for the sync must wait longer
        datasync(fd)
        log.append(("file", (os.readlink(f"/proc/self/fd/{fd}"), os.pread(fd, 1 << 16, 0))))

    def dropped(fd: int, *args: Any) -> None:
        log.append(("drop", os.readlink(f"/proc/self/fd/{fd}")))

    def folder_sync(fd: int) -> None:
        fsync(fd)
        log.append(("folder", os.readlink(f"/proc/self/fd/{fd}")))

    def recorded(store: Any, index: tuple[int, ...], *args: Any) -> None:
        record(store, index, *args)
        log.append(("record", tuple(index)))

    def released(lease: Any) -> None:
        log.append(("released", None))
        release(lease)

    def cleared(*args: Any) -> None:
        log.append(("cleared", None))
        clear(*args)

    def renamed(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        replace(source, target, *args, **kwargs)
        log.append(("replace", (os.fspath(source), os.fspath(target))))

    monkeypatch.setattr(durable, "_datasync", file_sync)
    monkeypatch.setattr(os, "fsync", folder_sync)
    monkeypatch.setattr(durable, "_FADVISE", dropped)
    monkeypatch.setattr(lifecycle, "record_block", recorded)
    monkeypatch.setattr(lifecycle, "clear_blocks", cleared)
    monkeypatch.setattr(os, "replace", renamed)
    monkeypatch.setattr(lifecycle.Lease, "release", released)
    yield log


def on_disk_before(log: list[Event], at: int, path: Path, root: Path) -> bool:
    """Whether ``path`` and its name in every folder up to ``root`` were synced before ``log[at]``
    (each folder after the file, so that it holds the file's final name)."""
    synced = [i for i, (kind, what) in enumerate(log[:at]) if kind == "file" and what[0] == str(path)]
    if not synced:
        return False
    folders = [path.parent, *path.parent.parents]
    folders = folders[: folders.index(root) + 1]
    return all(
        any(kind == "folder" and what == str(folder) for kind, what in log[synced[-1] : at]) for folder in folders
    )


def chunk_files(array: Any, root: Path, block: tuple[int, ...] | None = None) -> list[Path]:
    """The storage files (chunks or shards) of a written array, or those of one block."""
    stored = array.shards or array.chunks
    if block is None:
        grid = [range(-(-n // c)) for n, c in zip(array.shape, stored, strict=True)]
    else:
        grid = [
            range(i * BLOCK // c, -(-min((i + 1) * BLOCK, n) // c))
            for i, n, c in zip(block, array.shape, stored, strict=True)
        ]
    return [root / array.path / array.metadata.encode_chunk_key(c) for c in itertools.product(*grid)]


OUTPUTS = {
    "zarr": ("out.zarr", {}),
    "zarr, 16² chunks": ("out.zarr", {"chunks": [16, 16]}),
    "zarr, sharded": ("out.zarr", {"shards": True, "chunks": [16, 16]}),
    "ome-zarr 0.5, pyramid": ("out.ome.zarr", {"pyramid": 1}),
    "ome-zarr 0.4 (Zarr v2), pyramid": ("out.ome.zarr", {"pyramid": 1, "ngff_version": "0.4"}),
}


@pytest.mark.parametrize("kind", OUTPUTS)
def test_a_block_is_recorded_and_an_output_marked_complete_only_once_their_data_is_on_the_disk(
    tmp_path: Path, small: Path, events: list[Event], capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """Each record comes after its block's chunk (or shard) file and that file's name, in
    every folder up to the output, were synced; the records are dropped only after the
    metadata saying ``complete: true`` was synced, and every file of every level before it."""
    name, options = OUTPUTS[kind]
    out = tmp_path / name
    code, _, err = invoke(capsys, "run", write_config(tmp_path, small, out, **options), "--quiet")
    assert code == 0, err
    node = zarr.open(str(out), mode="r")
    level0 = node if isinstance(node, zarr.Array) else node["0"]
    arrays = [level0] if isinstance(node, zarr.Array) else [level0, node["1"]]

    records = [(i, what) for i, (kind_, what) in enumerate(events) if kind_ == "record"]
    assert sorted(index for _, index in records) == sorted(itertools.product(range(3), range(3)))
    for at, index in records:
        files = chunk_files(level0, out, index)
        assert len(files) == (4 if "16²" in kind else 1)
        for chunk in files:
            assert on_disk_before(events, at, chunk, out), f"block {index} recorded before {chunk} was on the disk"

    cleared = [i for i, (kind_, _) in enumerate(events) if kind_ == "cleared"]
    assert len(cleared) == 1
    at = cleared[0]
    for array in arrays:
        for chunk in chunk_files(array, out):
            assert on_disk_before(events, at, chunk, out), f"{chunk} not on the disk when the output was complete"
    metadata = str(out / (".zattrs" if "0.4" in kind else "zarr.json"))
    synced = [json.loads(what[1]) for kind_, what in events[:at] if kind_ == "file" and what[0] == metadata]
    assert synced, "the completion mark was never synced"
    assert synced[-1].get("attributes", synced[-1])["convpipe"]["complete"] is True
    assert any(kind_ == "folder" and what == str(out.parent) for kind_, what in events[:at])
    # Out of the page cache once synced, unless a pyramid level reads it again.
    dropped = {Path(what) for kind_, what in events if kind_ == "drop"}
    written = {chunk for array in arrays for chunk in chunk_files(array, out)}
    assert dropped & written == (set() if "pyramid" in kind else written)


def test_a_worker_process_syncs_a_block_before_it_records_it(
    tmp_path: Path, small: Path, events: list[Event], capsys: pytest.CaptureFixture[str]
) -> None:
    """A block written in another process (a process pool, a dask.distributed worker) is
    synced and recorded in that process, before its task returns."""
    out = tmp_path / "out.zarr"
    code, _, err = invoke(capsys, "run", write_config(tmp_path, small, out), "--quiet")
    assert code == 0, err
    events.clear()
    spec = zarr_output.OutputSpec(zarr_output._at(str(out)), "another-run", driver="another process")
    zarr_output.write_block(spec, (1, 2), ((32, 64), (64, 80)), np.ones((32, 16), np.float32))
    assert [kind for kind, _ in events].index("record") == len(events) - 1  # nothing waits in the background
    assert on_disk_before(events, len(events) - 1, out / "c" / "1" / "2", out)
    assert np.all(zarr.open_array(str(out), mode="r")[32:64, 64:80] == 1)


def test_a_chunk_the_disk_fails_to_sync_fails_the_run_and_stays_unrecorded(
    tmp_path: Path,
    small: Path,
    events: list[Event],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An I/O error at the sync (a failing disk, or a full one on NFS, which reports it only
    there) is one line, exit 1; the block is not recorded and the output stays incomplete,
    so --resume writes that block again and the result equals an uninterrupted run."""
    out = tmp_path / "out.zarr"
    config = write_config(tmp_path, small, out)
    reference = uninterrupted(capsys, config, tmp_path / "reference.zarr")
    events.clear()
    bad = str(out / "c" / "1" / "1")
    logged = durable._datasync

    def failing(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") == bad:
            raise OSError(errno.EIO, "Input/output error")
        logged(fd)

    with monkeypatch.context() as patch:
        patch.setattr(durable, "_datasync", failing)
        code, _, err = invoke(capsys, "run", config, "--quiet")
    assert code == 1, err
    assert_one_line_error(err, f"output {out}: writing failed", "Input/output error", "the output is incomplete")
    status = zarr_output.read_status(str(out))
    assert status is not None and status["complete"] is False
    assert (1, 1) not in zarr_output.written_blocks(str(out))
    code, _, err = invoke(capsys, "run", config, "--resume", "--quiet")
    assert code == 0, err
    assert zarr_output.read_status(str(out))["complete"] is True
    np.testing.assert_array_equal(zarr.open_array(str(out))[:], zarr.open_array(str(reference))[:])


def test_a_mark_the_disk_fails_to_sync_is_not_called_an_incomplete_output(
    tmp_path: Path,
    small: Path,
    events: list[Event],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every block is synced before the completion mark is written: if the mark's own sync then
    fails, the run fails (exit 1) and says what holds, the data is there and reads as complete,
    and --resume, as the message says, finishes it under the lease: the mark written anew (a
    second sync of the same pages could vouch for nothing) and synced, then the records removed."""
    out = tmp_path / "out.zarr"
    config = write_config(tmp_path, small, out)
    reference = uninterrupted(capsys, config, tmp_path / "reference.zarr")
    flush_metadata = zarr_output._flush_metadata

    def failing_on_the_mark(location: Any) -> None:
        if (zarr_output.read_status(location) or {}).get("complete"):
            raise OSError(errno.EIO, "Input/output error")
        flush_metadata(location)

    with monkeypatch.context() as patch:
        patch.setattr(zarr_output, "_flush_metadata", failing_on_the_mark)
        code, _, err = invoke(capsys, "run", config, "--quiet")
    assert code == 1, err
    assert_one_line_error(
        err,
        f"output {out}: every block is written and on the disk",
        "Input/output error",
        "run again with --resume to finish it",
        "after a crash it may read as incomplete",
    )
    assert "incomplete output" not in err and "the output is incomplete" not in err
    assert zarr_output.read_status(str(out))["complete"] is True
    assert zarr_output.count_written(str(out)) > 0  # the records were to go after the mark's sync
    code, shown, _ = invoke(capsys, "info", str(out))
    assert code == 0 and "complete (9 blocks), but its run failed after marking it" in shown
    assert "finish it with convpipe run --resume" in shown
    with lifecycle.held(zarr_output.store(str(out)), zarr_output.LOCK_PREFIX, 30.0):  # as a run finishing it
        code, shown, _ = invoke(capsys, "info", str(out))
    assert code == 0 and "complete (9 blocks); a run that holds its lease is finishing it" in shown
    mark = out / "zarr.json"
    unsynced = mark.stat().st_ino

    events.clear()
    code, said, err = invoke(capsys, "run", config, "--resume", "--json")
    assert code == 0, err
    assert "already complete; finished what its run left" in err
    assert json.loads(said)["finished_again"] is True
    assert mark.stat().st_ino != unsynced  # written anew
    cleared = events.index(("cleared", None))
    assert on_disk_before(events, cleared, mark, out)
    synced = [what[1] for kind, what in events[:cleared] if kind == "file" and what[0] == str(mark)]
    assert synced and json.loads(synced[-1])["attributes"]["convpipe"]["complete"] is True
    assert cleared < events.index(("released", None))  # under the lease
    assert zarr_output.count_written(str(out)) == 0
    np.testing.assert_array_equal(zarr.open_array(str(out))[:], zarr.open_array(str(reference))[:])
    code, shown, _ = invoke(capsys, "info", str(out), "--json")
    assert code == 0 and json.loads(shown)["status"]["finish_pending"] is False

    events.clear()
    code, said, err = invoke(capsys, "run", config, "--resume", "--json")
    assert code == 0, err
    assert "already complete; nothing to do" in err
    assert json.loads(said)["finished_again"] is False
    assert events == []  # finished: no lease, no sync, nothing written


def _holding_the_lease(out: Path, monkeypatch: pytest.MonkeyPatch, then: Any) -> threading.Thread:
    """A thread that holds the output's lease, as a run replacing the output would, until the
    resumed run has seen the records left, then calls ``then()`` and lets go."""
    seen = threading.Event()
    records_left = zarr_output.ZarrOutput.records_left

    def seeing(self: Any) -> bool:
        left = records_left(self)
        seen.set()
        return left

    monkeypatch.setattr(zarr_output.ZarrOutput, "records_left", seeing)
    waiting = threading.Event()
    wait_out = lifecycle._wait_out

    def waiting_out(*args: Any) -> Any:
        waiting.set()
        return wait_out(*args)

    monkeypatch.setattr(lifecycle, "_wait_out", waiting_out)
    holding = threading.Event()

    def hold() -> None:
        # Let go before the first renewal (a quarter of the lease): a holder that renews
        # is refused instead (Locked), as a resume must not wait on a live run.
        with lifecycle.held(zarr_output.store(str(out)), zarr_output.LOCK_PREFIX, 20.0):
            holding.set()
            if seen.wait(30) and waiting.wait(30):
                then()

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    return holder


def test_resume_of_a_complete_output_waits_for_the_lease_before_it_finishes_it(
    tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records left on a complete output are cleared only under its lease: a run that holds it
    and lets go (one that began replacing the output) is waited for, and what it wrote is then
    resumed, its records kept, not cleared as leftovers."""
    out = tmp_path / "out.zarr"
    config = write_config(tmp_path, small, out)
    reference = uninterrupted(capsys, config, tmp_path / "reference.zarr")
    uninterrupted(capsys, config, out)
    lifecycle.record_block(zarr_output.store(str(out)), (0, 0), zarr_output.BLOCKS_PREFIX)  # a leftover record
    total = zarr_output.read_status(str(out))["blocks"]

    def began_replacing() -> None:
        zarr_output._mark_incomplete(zarr_output._at(str(out)))

    holder = _holding_the_lease(out, monkeypatch, began_replacing)
    code, stdout, err = invoke(capsys, "run", config, "--resume", "--json")
    holder.join()
    assert code == 0, err
    assert "waiting" in err and "already complete" not in err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert (summary["resumed_from"], summary["blocks_written"]) == (1, total - 1)
    assert zarr_output.read_status(str(out))["complete"] is True
    np.testing.assert_array_equal(zarr.open_array(str(out))[:], zarr.open_array(str(reference))[:])


def test_resume_of_a_complete_output_made_differently_meanwhile_refuses_and_keeps_it(
    tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run with another config that finished the output while the resume waited for the lease:
    the resume checks what is there again, refuses (exit 2), and changes nothing."""
    out = tmp_path / "out.zarr"
    config = write_config(tmp_path, small, out)
    uninterrupted(capsys, config, out)
    lifecycle.record_block(zarr_output.store(str(out)), (0, 0), zarr_output.BLOCKS_PREFIX)
    other = [{"filter": "gaussian", "sigma": 9.0}]

    def finished_differently() -> None:
        node = zarr.open(str(out), mode="r+")
        status = dict(node.attrs["convpipe"])
        node.attrs["convpipe"] = {**status, "config": {**status["config"], "pipeline": other}}

    holder = _holding_the_lease(out, monkeypatch, finished_differently)
    code, _, err = invoke(capsys, "run", config, "--resume")
    holder.join()
    assert code == 2, err
    assert "made differently" in err.strip().splitlines()[-1]
    assert zarr_output.count_written(str(out)) == 1  # the record is where it was
    assert zarr_output.read_status(str(out))["config"]["pipeline"] == other


def test_a_resume_that_goes_on_after_taking_over_a_dead_run_says_it_took_over(
    tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records left on a complete output, and a run that begins replacing it and dies while the
    resume looks at it: the resume takes over the dead run's lease, resumes what that run
    wrote, and reports the takeover, though it took the lease again to write."""
    out = tmp_path / "out.zarr"
    config = write_config(tmp_path, small, out)
    reference = uninterrupted(capsys, config, tmp_path / "reference.zarr")
    uninterrupted(capsys, config, out)
    store = zarr_output.store(str(out))
    lifecycle.record_block(store, (0, 0), zarr_output.BLOCKS_PREFIX)  # a leftover record
    total = zarr_output.read_status(str(out))["blocks"]
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    records_left = zarr_output.ZarrOutput.records_left
    began: list[bool] = []

    def then_a_run_begins_and_dies(self: Any) -> bool:
        left = records_left(self)
        if not began:
            began.append(True)
            lease = lifecycle.acquire(store, zarr_output.LOCK_PREFIX, 600)
            zarr_output._mark_incomplete(zarr_output._at(str(out)))
            key = lifecycle._key(zarr_output.LOCK_PREFIX, lease.generation)
            record = lifecycle._read(store, key) or {}
            lifecycle._put(store, key, lifecycle._encode({**record, "pid": gone.pid, "pid_start": None}))
        return left

    monkeypatch.setattr(zarr_output.ZarrOutput, "records_left", then_a_run_begins_and_dies)
    code, stdout, err = invoke(capsys, "run", config, "--resume", "--json")
    assert code == 0, err
    assert f"from a run that stopped (pid {gone.pid}" in err and "already complete" not in err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["took_over"].startswith(f"pid {gone.pid} on ")
    assert (summary["resumed_from"], summary["blocks_written"]) == (1, total - 1)
    assert zarr_output.read_status(str(out))["complete"] is True
    np.testing.assert_array_equal(zarr.open_array(str(out))[:], zarr.open_array(str(reference))[:])


def test_a_resume_killed_between_its_mark_and_clearing_the_records_is_finished_by_the_next(
    tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kill -9 after the resume wrote the mark anew, before it removed the records: the output
    still reads as complete with records left, and the next --resume takes over the dead run's
    lease at once and finishes it; the data is the uninterrupted run's throughout."""
    out = tmp_path / "out.zarr"
    config = write_config(tmp_path, small, out)
    reference = zarr.open_array(str(uninterrupted(capsys, config, tmp_path / "reference.zarr")))[:]
    uninterrupted(capsys, config, out)
    store = zarr_output.store(str(out))
    lifecycle.record_block(store, (0, 0), zarr_output.BLOCKS_PREFIX)  # its finish failed after the mark
    mark = out / "zarr.json"
    before = mark.stat().st_ino
    killed_when_clearing = (
        "import os, signal\n"
        "from convpipe.io import lifecycle\n"
        "lifecycle.clear_blocks = lambda *args: os.kill(os.getpid(), signal.SIGKILL)\n"
        "from convpipe.cli import main\n"
        "main()\n"
    )
    resumed = subprocess.run(
        [sys.executable, "-c", killed_when_clearing, "run", str(config), "--resume"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == -signal.SIGKILL, resumed.stderr
    assert mark.stat().st_ino != before  # killed after writing the mark anew
    assert zarr_output.read_status(str(out))["complete"] is True
    assert zarr_output.count_written(str(out)) == 1
    generation, _ = lifecycle.lease_state(store)
    dead = lifecycle._read(store, lifecycle._key(zarr_output.LOCK_PREFIX, generation))
    assert dead is not None and dead["released"] is False and dead["pid"] != os.getpid()  # never let go
    np.testing.assert_array_equal(zarr.open_array(str(out))[:], reference)

    code, _, err = invoke(capsys, "run", config, "--resume")
    assert code == 0, err
    assert "took over" in err and "its process is gone" in err
    assert "already complete; finished what its run left" in err
    assert zarr_output.count_written(str(out)) == 0
    np.testing.assert_array_equal(zarr.open_array(str(out))[:], reference)


def test_a_resume_that_cannot_read_the_status_under_the_lease_changes_nothing(
    tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records left on a complete output, whose status cannot be read once the lease is taken
    (a store that fails for a moment): the resume stops with one message, exit 1, and neither
    clears the records nor replaces the output, which an unreadable status must never lead to."""
    out = tmp_path / "out.zarr"
    config = write_config(tmp_path, small, out)
    uninterrupted(capsys, config, out)
    lifecycle.record_block(zarr_output.store(str(out)), (0, 0), zarr_output.BLOCKS_PREFIX)

    def files() -> dict[Path, bytes]:  # all but the lease's
        found = sorted(out.rglob("*"))
        return {p: p.read_bytes() for p in found if p.is_file() and zarr_output.LOCK_PREFIX not in p.parts}

    before = files()
    read_status = zarr_output.ZarrOutput.read_status
    reads: list[int] = []

    def unreadable_the_second_time(self: Any) -> Any:
        reads.append(1)
        return None if len(reads) > 1 else read_status(self)

    monkeypatch.setattr(zarr_output.ZarrOutput, "read_status", unreadable_the_second_time)
    code, _, err = invoke(capsys, "run", config, "--resume")
    assert code == 1, err
    assert_one_line_error(err, f"output {out}: its status could not be read; nothing was changed, run again")
    assert files() == before
    assert not lifecycle.lease_state(zarr_output.store(str(out)))[1]  # let go


def test_a_geotiff_whose_folder_fails_to_sync_is_reported_as_written(
    tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is whole on the disk and published; only its name may not survive a crash."""
    out = tmp_path / "out.tif"
    config = write_config(tmp_path, small, out)
    reference = uninterrupted(capsys, config, tmp_path / "reference.tif")
    sync_folder = durable.sync_folder

    def failing_after_the_rename(folder: Any) -> None:
        if out.exists():
            raise OSError(errno.EIO, "Input/output error")
        sync_folder(folder)

    monkeypatch.setattr(durable, "sync_folder", failing_after_the_rename)
    code, _, err = invoke(capsys, "run", config, "--quiet")
    assert code == 1, err
    assert_one_line_error(err, f"output {out}: the file is written and on the disk", "Input/output error")
    assert "incomplete" not in err
    np.testing.assert_array_equal(tifffile.imread(out), tifffile.imread(reference))
    assert not list(tmp_path.glob("*.partial"))


def test_a_failed_run_lets_go_of_its_lease_only_after_its_flushes_under_way(
    tmp_path: Path,
    small: Path,
    events: list[Event],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Blocks written before a run fails are still being synced and recorded in the
    background; another run may take the output over once the lease is let go, and must not
    see records appear afterwards for blocks it may have removed or be writing."""
    out = tmp_path / "out.zarr"
    slow, check = durable._datasync, lifecycle.check_lease
    calls = []

    def slower(fd: int) -> None:
        time.sleep(0.05)
        slow(fd)

    def failing_fifth(*args: Any) -> None:
        if threading.current_thread().name.startswith("convpipe-flush"):  # a record's check
            check(*args)
            return
        calls.append(1)
        if len(calls) == 5:
            raise OSError(errno.EIO, "Input/output error")
        check(*args)

    monkeypatch.setattr(durable, "_datasync", slower)
    monkeypatch.setattr(lifecycle, "check_lease", failing_fifth)
    code, _, err = invoke(capsys, "run", write_config(tmp_path, small, out), "--quiet", "--workers", "1")
    assert code == 1, err
    kinds = [kind for kind, _ in events]
    assert kinds.count("released") == 1 and kinds.count("record") == 4
    assert "record" not in kinds[kinds.index("released") :], "a block was recorded after the lease was let go"


def test_a_geotiff_is_on_the_disk_before_it_takes_its_name(
    tmp_path: Path, small: Path, events: list[Event], capsys: pytest.CaptureFixture[str]
) -> None:
    """The partial file is synced whole before it is renamed over the output, and the folder
    after, so a power cut leaves the old file or the new one, never an empty one."""
    out = tmp_path / "out.tif"
    code, _, err = invoke(capsys, "run", write_config(tmp_path, small, out), "--quiet")
    assert code == 0, err
    tifffile.imread(out)
    renames = [(i, what) for i, (kind, what) in enumerate(events) if kind == "replace" and what[1] == str(out)]
    assert len(renames) == 1
    at, (partial, _) = renames[0]
    assert any(kind == "file" and what[0] == partial for kind, what in events[:at])
    assert any(kind == "folder" and what == str(tmp_path) for kind, what in events[at:])


def test_a_record_waiting_for_its_sync_checks_the_lease_again(
    tmp_path: Path,
    small: Path,
    events: list[Event],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sync may take long; if the run lost its lease meanwhile (another run took the
    output over), the block's chunk stays unrecorded and the writer is told, in the run's
    own process (in the background) and in a worker process alike."""
    out = tmp_path / "out.zarr"
    code, _, err = invoke(capsys, "run", write_config(tmp_path, small, out), "--quiet")
    assert code == 0, err
    key = lifecycle.LeaseKey(prefix=zarr_output.LOCK_PREFIX, generation=0, token="ours")
    checks: list[int] = []

    def lost_after_the_write(*args: Any) -> None:
        checks.append(1)
        if len(checks) % 2 == 0:
            raise lifecycle.LeaseLost("another run took the output over")

    monkeypatch.setattr(lifecycle, "check_lease", lost_after_the_write)
    for driver in ("another process", durable.this_process()):
        events.clear()
        spec = zarr_output.OutputSpec(zarr_output._at(str(out)), f"run-{len(checks)}", "", key, driver)
        with pytest.raises(lifecycle.LeaseLost):
            zarr_output.write_block(spec, (1, 2), ((32, 64), (64, 96)), np.full((32, 32), 7, np.float32))
            durable.background.drain(spec.run_id)
        assert np.all(zarr.open_array(str(out), mode="r")[32:64, 64:96] == 7)
        assert [kind for kind, _ in events if kind == "record"] == [], driver


def test_each_run_is_told_of_its_own_failed_syncs_only(tmp_path: Path) -> None:
    """Two runs in one process (a notebook) share the background thread, not their errors: a
    run whose sync failed is told so, at its next block or when it drains; the other run is
    not, and marks its output complete."""
    flusher = durable.Flusher()
    good = tmp_path / "good"
    good.write_bytes(b"data")
    flusher.submit("a", [tmp_path / "missing"], tmp_path, lambda: None)
    flusher.submit("b", [good], tmp_path, lambda: None)
    flusher.drain("b")
    with pytest.raises(FileNotFoundError):
        flusher.drain("a")
    flusher.drain("a")  # told once
    flusher.submit("a", [tmp_path / "missing"], tmp_path, lambda: None)
    flusher.wait("a")  # a failing run: waits, says nothing more
    flusher.drain("a")
    flusher.submit("a", [tmp_path / "missing"], tmp_path, lambda: None)
    flusher.wait("b")
    with pytest.raises(FileNotFoundError):  # at the run's next block
        while True:
            flusher.submit("a", [good], tmp_path, lambda: None)
    flusher.drain("a")  # told once


def test_the_background_holds_only_a_few_blocks_at_once(tmp_path: Path) -> None:
    """A disk slower than the blocks slows the blocks down, rather than leave an ever longer
    queue for a stopping run to wait on."""
    flusher = durable.Flusher(most=2)
    release = threading.Event()
    file = tmp_path / "chunk"
    file.write_bytes(b"data")
    try:
        for _ in range(2):
            flusher.submit("run", [file], tmp_path, lambda: release.wait(30))
        assert not flusher._room.acquire(blocking=False), "room for a third block"
        third = threading.Thread(target=flusher.submit, args=("run", [file], tmp_path, lambda: None))
        third.start()
        third.join(0.3)
        assert third.is_alive(), "a third block was queued behind two that had not finished"
    finally:
        release.set()
    third.join(30)
    assert not third.is_alive()
    flusher.drain("run")


def test_a_second_ctrl_c_does_not_cut_the_wait_for_the_syncs_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease is let go right after this wait: cut short, a record could still land after."""
    from concurrent.futures import Future

    flusher = durable.Flusher()
    file = tmp_path / "chunk"
    file.write_bytes(b"data")
    recorded: list[int] = []
    flusher.submit("run", [file], tmp_path, lambda: (time.sleep(0.2), recorded.append(1)))
    exception, interrupts = Future.exception, [1]

    def interrupted_once(self: Future[Any], timeout: float | None = None) -> BaseException | None:
        if interrupts:
            interrupts.pop()
            raise KeyboardInterrupt
        return exception(self, timeout)

    monkeypatch.setattr(Future, "exception", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        flusher.wait("run")
    assert recorded == [1]


def test_a_forked_worker_is_another_process_to_the_flusher() -> None:
    """A process pool may fork the run's process: the child keeps the parent's memory, the
    flusher included, but not its thread, so it must sync inline, as another process."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(1) as pool:
        child = pool.apply(durable.this_process)
    assert child != durable.this_process()


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_block_of_many_chunks_is_synced_whole_within_the_open_file_limit(tmp_path: Path, events: list[Event]) -> None:
    """Small chunks in a large block: a flush opens its files in batches (their writeback is
    started together), yet every file and every folder up to the root is synced, and nothing
    stays open."""
    files = []
    for index in range(2 * durable.BATCH + 3):
        file = tmp_path / "c" / str(index % 3) / str(index)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(index.to_bytes(2, "little"))
        files.append(file)
    before = open_descriptors()
    durable.flush(files, tmp_path)
    assert open_descriptors() == before
    synced = [Path(entry[0]) for kind, entry in events if kind == "file"]
    assert sorted(synced) == sorted(files)
    folders = [Path(path) for kind, path in events if kind == "folder"]
    assert sorted(folders) == sorted({tmp_path, tmp_path / "c", *(file.parent for file in files)})
    assert events.index(("folder", str(tmp_path))) > max(i for i, (kind, _) in enumerate(events) if kind == "file")


def test_a_sync_failing_in_a_batch_is_raised_and_closes_every_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The block is then not recorded (resume writes it again), and a long run that meets a
    bad disk again and again does not run out of file descriptors."""
    files = []
    for index in range(durable.BATCH + 10):
        files.append(tmp_path / f"chunk{index}")
        files[-1].write_bytes(b"data")
    datasync, calls = durable._datasync, [0]

    def failing_on_the_fifth(fd: int) -> None:
        calls[0] += 1
        if calls[0] == 5:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        datasync(fd)

    monkeypatch.setattr(durable, "_datasync", failing_on_the_fifth)
    before = open_descriptors()
    with pytest.raises(OSError, match="Input/output error"):
        durable.flush(files, tmp_path)
    assert open_descriptors() == before
    assert calls[0] == 5  # nothing after the failure is synced: the flush has failed
