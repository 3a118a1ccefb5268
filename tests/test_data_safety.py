"""Data safety on a local disk, one test per bug the previous main had (README, "Data safety"):
what ``--overwrite`` may replace, two runs at once, SIGTERM, requeued jobs on other hosts and in
containers (pid namespaces), partial outputs as inputs, resumes of changed inputs, chains that
fail only when blocks run, a full disk while the lock is written, ``--resume`` of a GeoTIFF.

Every test tries to lose data; each says what it proves. Tests that start processes are slow:
an import of convpipe takes seconds on a small machine.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import tifffile
import yaml
import zarr
from cli_tools import assert_one_line_error, invoke, lease_held

from convpipe.io import zarr_output

CHAIN = [{"filter": "median", "size": 5}, {"filter": "gaussian", "sigma": 4.0}]
LOCK = ".convpipe-lock"
CLI = [sys.executable, "-c", "from convpipe.cli import main; main()"]


# --- helpers ------------------------------------------------------------------------------------


def tree_digest(path: Path) -> str:
    """Every file's name and bytes and every folder's name under ``path`` (the lock included):
    equal digests mean nothing at all was touched."""
    digest = hashlib.sha256()
    for entry in sorted(path.rglob("*")):
        digest.update(str(entry.relative_to(path)).encode() + (b"/" if entry.is_dir() else b"\0"))
        if entry.is_file():
            digest.update(entry.read_bytes())
    return digest.hexdigest()


def data_digest(path: Path) -> dict[str, str]:
    """Every file of an output but its lease records, by SHA-256, so byte-identical outputs
    are equal; in ``zarr.json`` the two fields that name where the output and its config are
    (outputs compared here live in different folders) are left out, every other byte counts."""
    found = {}
    for file in sorted(path.rglob("*")):
        if not file.is_file() or LOCK in file.relative_to(path).parts:
            continue
        data = file.read_bytes()
        if file.name == "zarr.json":
            meta = json.loads(data)
            record = meta.get("attributes", {}).get("convpipe")
            if record is not None:
                record.pop("config_file")
                record["config"]["output"].pop("path")
            data = json.dumps(meta, sort_keys=True).encode()
        found[str(file.relative_to(path))] = hashlib.sha256(data).hexdigest()
    return found


def write_config(folder: Path, source: Path, output: str = "out.zarr", chunks: int = 32, **extra: Any) -> Path:
    data = {
        "input": {"path": str(source), "chunks": [chunks, chunks]},
        "output": {"path": output, **extra.pop("output", {})},
        "pipeline": extra.pop("pipeline", CHAIN),
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def make_input(path: Path, shape: tuple[int, int], seed: int = 4, **kwargs: Any) -> Path:
    rng = np.random.default_rng(seed)
    zarr.create_array(str(path), data=(rng.random(shape) * 4000).astype(np.uint16), chunks=(64, 64), **kwargs)
    return path


def complete(out: Path) -> bool:
    status = zarr_output.read_status(str(out))
    return status is not None and status.get("complete") is True


def reference(config: Path, capsys: pytest.CaptureFixture[str], folder: Path) -> dict[str, str]:
    """The digest of an uninterrupted run of ``config``, written elsewhere."""
    ref = folder / "reference.zarr"
    code, _, err = invoke(capsys, "run", config, "--quiet", "--set", f"output.path={ref}")
    assert code == 0, err
    return data_digest(ref)


def start(*args: str | Path, prefix: Sequence[str] = ()) -> subprocess.Popen[str]:
    """``convpipe ARGS`` in its own process group (``prefix``: e.g. an ``unshare`` command)."""
    return subprocess.Popen(
        [*prefix, *CLI, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_blocks(out: Path, count: int, process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (out / zarr_output.BLOCKS_PREFIX).is_dir() or zarr_output.count_written(str(out)) < count:
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be stopped: {process.communicate()}")
        assert time.monotonic() < deadline, "the run wrote no blocks in time"
        time.sleep(0.02)


def kill(process: subprocess.Popen[str]) -> None:
    """SIGKILL the process and everything in its group, as a batch system does."""
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)


def unshare(*flags: str) -> list[str]:
    """The ``unshare`` prefix, or skip the test where namespaces may not be made here."""
    command = ["unshare", *flags, "--fork", "true"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("unshare(1) is not installed")
    if done.returncode != 0:
        pytest.skip(f"cannot make namespaces here ({' '.join(command)}: {done.stderr.strip()})")
    return ["unshare", *flags, "--fork"]


def on_host(name: str) -> list[str]:
    """Run the command that follows with hostname ``name`` (a UTS namespace: another node)."""
    return [*unshare("--uts"), "sh", "-c", f'hostname {name} && exec "$@"', "sh"]


AS_PID_1 = ("--pid", "--mount-proc")  # a fresh pid namespace whose first process is convpipe

HOLD = """
import sys, time
from convpipe.io import lifecycle, zarr_output
with lifecycle.held(zarr_output.store(sys.argv[1]), zarr_output.LOCK_PREFIX, float(sys.argv[2]), wait=True):
    print("held", flush=True)
    time.sleep(600)
"""


def hold(out: Path, seconds: float, prefix: Sequence[str] = ()) -> subprocess.Popen[str]:
    """A live run on ``out`` (as far as the lease can tell): holds its lease, renewing it."""
    process = subprocess.Popen(
        [*prefix, sys.executable, "-c", HOLD, str(out), str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if line != "held":
        kill(process)
        pytest.fail(f"the holder did not take the lease: {process.stderr.read() if process.stderr else ''}")
    return process


def top_record(out: Path) -> dict[str, Any]:
    records = sorted((out / LOCK).glob("*"))
    return json.loads(records[-1].read_text())


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 512 x 512 input: 256 blocks of 32 x 32, a few seconds of work, long enough to stop."""
    return make_input(tmp_path_factory.mktemp("image") / "in.zarr", (512, 512))


@pytest.fixture(scope="module")
def image_reference(image: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The digest of an uninterrupted run on ``image`` (computed once for the module)."""
    from convpipe.cli import main

    folder = tmp_path_factory.mktemp("reference")
    config = write_config(folder, image)
    with pytest.raises(SystemExit) as done:
        main(["run", str(config), "--quiet"])
    assert not done.value.code
    return data_digest(folder / "out.zarr")


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """A 96 x 128 input of 12 blocks (seconds would be wasted on more)."""
    return make_input(tmp_path / "in.zarr", (96, 128), seed=9)


# --- 1. --overwrite replaces only what convpipe made ----------------------------------------------


def group_with_arrays_and_labels(out: Path) -> None:
    group = zarr.open_group(str(out), mode="w")
    group.create_array("raw", data=np.arange(64, dtype=np.uint16).reshape(8, 8))
    group.create_array("mask", data=np.ones((8, 8), np.uint8))
    labels = group.create_group("labels")
    labels.create_array("cells", data=np.zeros((8, 8), np.uint32))


def single_array_with_labels(out: Path) -> None:
    zarr.create_array(str(out), data=np.ones((16, 16), np.float32), chunks=(8, 8))
    labels = zarr.open_group(str(out / "labels"), mode="w")
    labels.create_array("cells", data=np.zeros((16, 16), np.uint32))


def stray_zarr_json_among_files(out: Path) -> None:
    out.mkdir()
    (out / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    (out / "thesis.tex").write_text("three years of work")
    (out / "figures").mkdir()
    (out / "figures" / "fig1.png").write_bytes(b"\x89PNG")


def array_metadata_among_files(out: Path) -> None:
    """A folder someone keeps files in, beside a stray array's zarr.json."""
    zarr.create_array(str(out), shape=(8, 8), dtype=np.uint8, chunks=(8, 8))
    (out / "README.txt").write_text("do not delete")


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (group_with_arrays_and_labels, ("labels/", "mask/", "raw/")),
        (single_array_with_labels, ("labels/",)),
        (stray_zarr_json_among_files, ("figures/", "thesis.tex")),
        (array_metadata_among_files, ("README.txt",)),
    ],
    ids=["group of arrays and labels", "array with labels", "stray zarr.json among files", "array among files"],
)
@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
def test_overwrite_refuses_a_zarr_group_holding_other_nodes(
    tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str], make: Any, named: tuple[str, ...], flag: str
) -> None:
    out = tmp_path / "out.zarr"
    make(out)
    before = tree_digest(out)
    config = write_config(tmp_path, small)
    for output_format in ("zarr", "ome-zarr"):
        code, _, err = invoke(capsys, "run", config, flag, "--set", f"output.format={output_format}")
        assert code == 2, err
        if flag == "--overwrite":
            assert_one_line_error(err, f"output.path: {out} holds things convpipe did not make (", *named)
        else:
            assert_one_line_error(err, f"--resume: {out} is not a convpipe output")
        assert tree_digest(out) == before


def test_overwrite_replaces_a_single_foreign_zarr_array(
    tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.zarr"
    zarr.create_array(str(out), data=np.full((40, 40), 7, np.int16), chunks=(8, 8))
    config = write_config(tmp_path, small)
    code, _, err = invoke(capsys, "run", config)
    assert code == 2
    assert_one_line_error(err, "already exists", "--overwrite")
    code, _, err = invoke(capsys, "run", config, "--overwrite", "--quiet")
    assert code == 0, err
    assert complete(out)
    assert sorted(p.name for p in out.iterdir()) == [LOCK, "c", "zarr.json"]
    assert data_digest(out) == reference(config, capsys, tmp_path)
    assert not lease_held(out)


@pytest.mark.slow
def test_a_failed_runs_leftover_folder_is_accepted_by_resume_and_overwrite(
    tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only ``.convpipe-lock/`` is left: a run killed right after it took the lease (its pid is
    gone: taken over at once), or one that failed before creating the output (released)."""
    out = tmp_path / "out.zarr"
    config = write_config(tmp_path, small)
    expected = reference(config, capsys, tmp_path)
    for flag in ("--resume", "--overwrite"):
        for how in ("killed", "released"):
            shutil.rmtree(out, ignore_errors=True)
            holder = hold(out, 600)
            if how == "killed":
                kill(holder)
                assert lease_held(out)
            else:
                holder.send_signal(signal.SIGINT)  # KeyboardInterrupt: ``held`` releases the lease
                holder.communicate(timeout=30)
                assert not lease_held(out)
            assert sorted(p.name for p in out.iterdir()) == [LOCK]
            code, _, err = invoke(capsys, "run", config, flag)
            assert code == 0, f"{flag} after a {how} run: {err}"
            assert ("took over" in err) == (how == "killed"), err
            assert complete(out) and not lease_held(out)
            assert data_digest(out) == expected


# --- 2. two runs at once --------------------------------------------------------------------------

RACE = r"""
import json, os, sys, time
from convpipe.cli import main

config, rounds, flags = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
folder = os.path.dirname(config)
results = []
for r in range(rounds):
    barrier, release = os.pipe()
    children = []
    for k in range(2):
        log = os.path.join(folder, f"race{r}-{k}.err")
        pid = os.fork()
        if pid == 0:  # a run: imported already, waits at the barrier, then starts
            os.close(release)
            os.dup2(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
            os.read(barrier, 1)
            try:
                main(["run", config, *flags, "--set", f"output.path={os.path.join(folder, f'out{r}.zarr')}"])
                code = 0
            except SystemExit as done:
                code = done.code or 0
            sys.stderr.flush()
            os._exit(code)
        children.append((pid, log))
    os.close(barrier)
    time.sleep(0.1)  # both are blocked on the pipe
    os.close(release)  # both wake at once
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid, _ in children]
    results.append([[code, open(log).read()] for code, (_, log) in zip(codes, children)])
print(json.dumps(results))
"""


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["", "--overwrite", "--resume"], ids=["new output", "--overwrite", "--resume"])
def test_two_runs_started_at_once_never_both_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    """Two processes released by one barrier (a pipe closed under both) on the same new
    output, 10 rounds: one writes the whole output, the other is refused; with --resume (what
    scripts/convpipe.sbatch runs) the other may instead wait for it and find nothing to do."""
    source = make_input(tmp_path / "in.zarr", (256, 256))
    config = write_config(tmp_path, source, chunks=64)
    expected = reference(config, capsys, tmp_path)
    rounds = 10
    flags = ([flag] if flag == "--resume" else [flag, "--quiet"] if flag else ["--quiet"]) + ["--lock-lease", "2"]
    done = subprocess.run(
        [sys.executable, "-c", RACE, str(config), str(rounds), *flags], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    outcomes = json.loads(done.stdout)
    assert len(outcomes) == rounds
    for r, pair in enumerate(outcomes):
        codes = sorted(code for code, _ in pair)
        if flag == "--resume" and codes == [0, 0]:
            assert sorted("already complete; nothing to do" in err for _, err in pair) == [False, True], pair
        else:
            assert codes == [0, 2], f"round {r}: {pair}"
            loser = next(err for code, err in pair if code == 2)
            assert "Traceback" not in loser
            assert loser.strip().splitlines()[-1].startswith("convpipe: error: "), loser
            last = loser.strip().splitlines()[-1]
            # Refused while the other writes, or after it finished (then the output exists).
            assert "being written by another convpipe run" in last or "already exists" in last, loser
        out = tmp_path / f"out{r}.zarr"
        assert complete(out) and not lease_held(out)
        assert data_digest(out) == expected, f"round {r}"


# --- 3. SIGTERM -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_sigterm_leaves_a_resumable_output_and_releases_the_lease(
    tmp_path: Path,
    image: Path,
    image_reference: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    scheduler: str,
) -> None:
    """What SLURM sends at walltime: exit 143, one line saying --resume, the lease released,
    no worker left behind; --resume then finishes the same bytes as an uninterrupted run."""
    config = write_config(tmp_path, image)
    out = tmp_path / "out.zarr"
    process = start("run", config, "--quiet", "--scheduler", scheduler, "--workers", "2")
    wait_for_blocks(out, 10, process)
    family = psutil.Process(process.pid).children(recursive=True)
    if scheduler == "processes":
        assert family, "the run has no worker processes to check"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[-1].startswith("convpipe: terminated (SIGTERM)") and "--resume" in lines[-1], err
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, f"worker processes outlived the run: {alive}"
    assert not lease_held(out)
    status = zarr_output.read_status(str(out))
    assert status is not None and status["complete"] is False
    assert 10 <= zarr_output.count_written(str(out)) < 256

    code, _, err = invoke(capsys, "run", config, "--resume")
    assert code == 0, err
    assert "resumed: " in err
    assert complete(out) and not lease_held(out)
    assert data_digest(out) == image_reference


# --- 4. a requeued job on another host ---------------------------------------------------------


@pytest.mark.slow
def test_a_requeued_job_on_another_host_takes_over_after_the_lease(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run on node "other-node" (a UTS namespace) with --lock-lease 3. While it runs and
    renews its lease, a --resume here is refused (a pid proves nothing on another host). Once
    it is SIGKILLed, --resume waits at most the lease, takes over, and finishes the same bytes.
    The run has 1024 blocks and one worker, so it outlasts the refused --resume by far (the
    module's 256-block image once finished first)."""
    prefix = on_host("other-node")
    config = write_config(tmp_path, make_input(tmp_path / "in.zarr", (1024, 1024)))
    expected = reference(config, capsys, tmp_path)
    out = tmp_path / "out.zarr"
    process = start("run", config, "--quiet", "--lock-lease", 3, "--workers", 1, prefix=prefix)
    wait_for_blocks(out, 5, process)
    assert top_record(out)["host"] == "other-node"

    code, _, err = invoke(capsys, "run", config, "--resume", "--quiet", "--lock-lease", 3)
    assert process.poll() is None, "the run on the other host ended before the check was over"
    assert code == 2, err
    assert_one_line_error(err, "being written by another convpipe run", "on other-node", "renewed its lease")

    kill(process)
    assert lease_held(out) and not complete(out)
    begun = time.monotonic()
    code, _, err = invoke(capsys, "run", config, "--resume", "--lock-lease", 3)
    assert code == 0, err
    waited = re.search(r"waiting up to (\d+) s for the lease of pid \d+ on other-node to expire", err)
    assert waited is not None and int(waited.group(1)) <= 3, err
    assert f"took over {out} from a run that stopped (pid {top_pid(err)} on other-node" in err
    assert time.monotonic() - begun < 3 + 30
    assert complete(out) and not lease_held(out)
    assert data_digest(out) == expected


def top_pid(err: str) -> str:
    found = re.search(r"pid (\d+) on other-node", err)
    assert found is not None, err
    return found.group(1)


# --- 5. a dead run that was pid 1 (a container) ----------------------------------------------------


@pytest.mark.slow
def test_a_dead_run_as_pid_1_is_taken_over(
    tmp_path: Path, image: Path, image_reference: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """convpipe as pid 1 of a pid namespace (a container's entry point), --lock-lease 3.
    Killed, it is taken over by a --resume that is pid 1 of a fresh namespace, and by one in
    the host's namespace, each within one lease. Alive, it is never taken over from either:
    its pid 1 is not the host's pid 1, nor the fresh namespace's."""
    as_pid_1 = unshare(*AS_PID_1)
    config = write_config(tmp_path, image)
    out = tmp_path / "out.zarr"
    host = socket.gethostname()

    # Killed as pid 1; a --resume as pid 1 of another namespace takes over.
    process = start("run", config, "--quiet", "--lock-lease", 3, prefix=as_pid_1)
    wait_for_blocks(out, 10, process)
    assert top_record(out)["pid"] == 1
    kill(process)
    resumed = start("run", config, "--resume", "--lock-lease", 3, prefix=as_pid_1)
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert f"took over {out} from a run that stopped (pid 1 on {host}" in err
    assert complete(out) and not lease_held(out)
    assert data_digest(out) == image_reference

    # Killed as pid 1 again (an --overwrite); a --resume from the host's namespace takes over.
    process = start("run", config, "--quiet", "--overwrite", "--lock-lease", 3, prefix=as_pid_1)
    wait_for_blocks(out, 10, process)
    kill(process)
    assert lease_held(out) and not complete(out)
    begun = time.monotonic()
    code, _, err = invoke(capsys, "run", config, "--resume", "--lock-lease", 3)
    assert code == 0, err
    assert f"took over {out} from a run that stopped (pid 1 on {host}" in err
    assert time.monotonic() - begun < 3 + 30
    assert complete(out) and not lease_held(out)
    assert data_digest(out) == image_reference

    # Alive as pid 1: refused from the host's namespace and from a fresh pid-1 namespace.
    holder = hold(out, 3, prefix=as_pid_1)
    try:
        before = data_digest(out)
        code, _, err = invoke(capsys, "run", config, "--overwrite", "--quiet", "--lock-lease", 3)
        assert code == 2, err
        assert_one_line_error(err, "being written by another convpipe run", f"pid 1 on {host}")
        other = start("run", config, "--overwrite", "--quiet", "--lock-lease", 3, prefix=as_pid_1)
        _, err = other.communicate(timeout=120)
        assert other.returncode == 2, err
        assert_one_line_error(err, "being written by another convpipe run", f"pid 1 on {host}")
        assert holder.poll() is None
        assert data_digest(out) == before and complete(out)
    finally:
        kill(holder)


# --- 6. a partial output is not an input ------------------------------------------------------------


@pytest.mark.slow
def test_a_partial_output_is_refused_as_an_input(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, image)
    out = tmp_path / "out.zarr"
    process = start("run", config, "--quiet")
    wait_for_blocks(out, 10, process)
    kill(process)
    written = zarr_output.count_written(str(out))
    assert 10 <= written < 256
    before = tree_digest(out)
    second = tmp_path / "second"
    second.mkdir()
    chained = write_config(second, out, "next.zarr")
    for flags in ((), ("--overwrite",), ("--resume",)):
        code, _, err = invoke(capsys, "run", chained, *flags)
        assert code == 2, err
        assert_one_line_error(
            err, f"input {out} is a partial convpipe output ({written} of 256 blocks); finish it with --resume first"
        )
    assert sorted(p.name for p in second.iterdir()) == ["config.yaml"]
    assert tree_digest(out) == before

    # An OME-Zarr output keeps its status on the group: its level array is refused too.
    ome = tmp_path / "out.ome.zarr"
    run_out_of_disk(write_config(tmp_path, image, ome.name, chunks=128), capsys, out=ome.name)
    before = tree_digest(ome)
    written = zarr_output.count_written(str(ome))
    for source in (ome, ome / "0"):
        code, _, err = invoke(capsys, "run", write_config(second, source, "next.zarr"))
        assert code == 2, err
        assert_one_line_error(err, f"input {ome} is a partial convpipe output ({written} of 16 blocks)")
    assert sorted(p.name for p in second.iterdir()) == ["config.yaml"]
    assert tree_digest(ome) == before


# --- 7. a resume continues the same computation or nothing ----------------------------------------


def run_out_of_disk(config: Path, capsys: pytest.CaptureFixture[str], blocks: int = 3, out: str = "out.zarr") -> None:
    """Run ``config`` until the disk is "full" after ``blocks`` chunks: a partial output."""
    from zarr.storage import LocalStore

    original = LocalStore.set
    writes = [0]

    async def set_until_full(self: Any, key: str, value: Any) -> None:
        if re.match(r"(0/)?c/", key):
            writes[0] += 1
            if writes[0] > blocks:
                raise OSError(errno.ENOSPC, "No space left on device")
        await original(self, key, value)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LocalStore, "set", set_until_full)
        code, _, err = invoke(capsys, "run", config, "--quiet", "--workers", "1")
    assert code == 1, err
    status = zarr_output.read_status(str(config.parent / out))
    assert status is not None and status["complete"] is False


def test_resume_refuses_a_changed_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Same shape, same dtype, one chunk rewritten with other values of the same size
    (uncompressed, so not even the size changes): the resume would mix two images."""
    source = make_input(tmp_path / "in.zarr", (96, 128), compressors=None)
    config = write_config(tmp_path, source)
    out = tmp_path / "out.zarr"
    run_out_of_disk(config, capsys)
    before = tree_digest(out)
    chunk = source / "c" / "1" / "1"
    size = chunk.stat().st_size
    zarr.open_array(str(source), mode="r+")[64:96, 64:128] = 1234
    assert chunk.stat().st_size == size
    code, _, err = invoke(capsys, "run", config, "--resume")
    assert code == 2, err
    assert_one_line_error(err, "--resume: the output was made differently", "input.fingerprint.digest")
    assert tree_digest(out) == before


def test_resume_refuses_a_changed_kernel_file(tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kernel = tmp_path / "k.npy"
    np.save(kernel, np.full((3, 3), 1 / 9, np.float32))
    config = write_config(tmp_path, small, pipeline=[{"filter": "convolve", "kernel_file": str(kernel)}])
    out = tmp_path / "out.zarr"
    run_out_of_disk(config, capsys)
    before = tree_digest(out)
    np.save(kernel, np.full((3, 3), 1 / 8, np.float32))  # same shape, same file size
    code, _, err = invoke(capsys, "run", config, "--resume")
    assert code == 2, err
    assert_one_line_error(err, "--resume: the output was made differently", f"kernels.{kernel}")
    assert tree_digest(out) == before


# --- 8. a chain that cannot run does not cost the old output --------------------------------------


LIMITED = """
import resource, sys
from convpipe.cli import main
import convpipe.engine, convpipe.run, cv2, dask.threaded, scipy.ndimage
size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (size + 48 * 2**20, resource.RLIM_INFINITY))
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_a_chain_that_cannot_allocate_its_block_does_not_destroy_the_output_it_would_replace(
    tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real chain that fails only when a block runs: one block of 4096 x 4096 (64 MiB of
    float32 for each of its arrays) in a process that may map only 48 MiB more than it has
    (``ulimit -v``; the memory check reads the machine's free memory and lets it through)."""
    from convpipe.memory import available_bytes

    if (available_bytes() or 0) < 4 * 2**30:
        pytest.skip("the memory check would refuse the chain before any block runs (under 4 GiB free)")
    config = write_config(tmp_path, small)
    out = tmp_path / "out.zarr"
    code, _, err = invoke(capsys, "run", config, "--quiet")
    assert code == 0, err
    before = tree_digest(out)
    huge = tmp_path / "huge.zarr"  # never written: its chunks read as the fill value
    zarr.create_array(str(huge), shape=(4096, 4096), dtype=np.uint16, chunks=(512, 512))
    chain = [{"filter": "median", "size": 9}, {"filter": "gaussian", "sigma": 30.0}]
    other = tmp_path / "other"
    other.mkdir()
    config = write_config(other, huge, str(out), chunks=4096, pipeline=chain)
    done = subprocess.run(
        [sys.executable, "-c", LIMITED, "run", str(config), "--overwrite", "--workers", "1", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert_one_line_error(done.stderr, "computing a block of (4096, 4096) ran out of memory; nothing was replaced")
    assert tree_digest(out) == before
    assert complete(out)


@pytest.mark.parametrize("error", [MemoryError, ValueError])
def test_a_chain_that_fails_when_blocks_run_does_not_destroy_the_output_it_would_replace(
    tmp_path: Path,
    small: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    error: type[Exception],
) -> None:
    """A complete output, then --overwrite with another chain whose every block fails (a
    window too large for memory; a bug in a filter): the old output stays, byte for byte."""
    from convpipe import engine

    config = write_config(tmp_path, small)
    out = tmp_path / "out.zarr"
    code, _, err = invoke(capsys, "run", config, "--quiet")
    assert code == 0, err
    before = tree_digest(out)

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise error("cannot allocate the window")

    monkeypatch.setattr(engine.ChainJob, "block", fail)
    code, _, err = invoke(capsys, "run", config, "--overwrite", "--set", "pipeline[1].sigma=9", "--quiet")
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    if error is MemoryError:
        assert_one_line_error(err, "ran out of memory; nothing was replaced")
    assert tree_digest(out) == before
    assert complete(out)


@pytest.mark.parametrize("after", [0, 3, 8])
def test_an_overwrite_cut_short_while_deleting_never_leaves_a_complete_looking_output(
    tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, after: int
) -> None:
    """--overwrite deletes the old output before writing the new one: a failure part-way
    through the delete (a lost connection, a kill) must leave something no reader takes for
    complete, and that --overwrite and --resume both accept."""
    from zarr.storage import LocalStore

    config = write_config(tmp_path, small)
    out = tmp_path / "out.zarr"
    assert invoke(capsys, "run", config, "--quiet")[0] == 0
    deleted = [0]
    original = LocalStore.delete

    async def delete_then_fail(self: LocalStore, key: str) -> None:
        if deleted[0] >= after:
            raise OSError(errno.EIO, "Input/output error")
        deleted[0] += 1
        await original(self, key)

    monkeypatch.setattr(LocalStore, "delete", delete_then_fail)
    code, _, err = invoke(capsys, "run", config, "--overwrite", "--set", "pipeline[1].sigma=9", "--quiet")
    assert code == 1, err
    assert_one_line_error(err, "Input/output error")
    monkeypatch.undo()
    assert not complete(out)  # whatever was deleted, the old output no longer says complete
    code, _, err = invoke(capsys, "run", config, "--resume", "--quiet")  # the old chain, finished again
    assert code == 0, err
    assert complete(out)
    code, _, err = invoke(capsys, "run", config, "--overwrite", "--set", "pipeline[1].sigma=9", "--quiet")
    assert code == 0, err
    assert complete(out)


# --- 9. a full disk while the lock is written -------------------------------------------------------


def fill(folder: Path) -> Path:
    """Fill the disk ``folder`` is on to the last byte."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as handle:
        for size in (4096, 1):
            try:
                while handle.write(b"\0" * size):
                    pass
            except OSError as error:
                assert error.errno == errno.ENOSPC
    return filler


@pytest.mark.parametrize("how", ["tmpfs", "tmpfs with room for the lock only", "patched store"])
def test_a_disk_full_while_the_lock_is_written_is_recoverable(
    tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest, how: str
) -> None:
    """The first thing a run writes is its lease record: a full disk there (or just after it,
    when the output is created and the lease cannot even be marked released) is one line,
    exit 1, and what it leaves is accepted by --resume and by --overwrite once there is room."""
    from zarr.storage import LocalStore

    disk = request.getfixturevalue("small_disk") if how.startswith("tmpfs") else tmp_path
    out = disk / "out.zarr"
    config = write_config(tmp_path, small, str(out))
    expected = reference(config, capsys, tmp_path)

    async def full(self: Any, key: str, value: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.MonkeyPatch.context() as patch:
        if how.startswith("tmpfs"):
            filler = fill(disk)
            if how.endswith("lock only"):  # one page: the lease record, nothing more
                os.truncate(filler, filler.stat().st_size // 4096 * 4096 - 4096)
        else:
            patch.setattr(LocalStore, "set_if_not_exists", full)
        code, _, err = invoke(capsys, "run", config, "--quiet")
    assert code == 1, err
    if how.endswith("lock only"):
        assert_one_line_error(err, f"output {out}: cannot create it (No space left on device)")
        assert lease_held(out)  # its release could not be written either
    else:
        assert_one_line_error(err, f"output.path: {out}: cannot write its lease record", "No space left on device")
        assert not [p for p in out.rglob("*") if p.is_file()], "a lease record or a file was left"
    if how.startswith("tmpfs"):
        filler.unlink()
    left = tmp_path / "left"
    if out.exists():
        shutil.copytree(out, left)
    for flag in ("--resume", "--overwrite"):
        shutil.rmtree(out, ignore_errors=True)
        if left.exists():
            shutil.copytree(left, out)
        code, _, err = invoke(capsys, "run", config, flag, "--quiet")
        assert code == 0, f"{flag}: {err}"
        assert complete(out) and not lease_held(out)
        assert data_digest(out) == expected


# --- 10. --resume starts a GeoTIFF --------------------------------------------------------------------


def test_resume_on_a_missing_geotiff_starts_one(
    tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """scripts/convpipe.sbatch always passes --resume: the first submission must start the file."""
    import convpipe
    from convpipe.io import geotiff_output, stores

    config = write_config(tmp_path, small, "out.tif")
    out = tmp_path / "out.tif"
    code, _, err = invoke(capsys, "run", config, "--resume", "--quiet")
    assert code == 0, err
    status = geotiff_output.read_status(stores.parse(str(out)))
    assert status is not None and status["complete"] is True
    expected = convpipe.filter_array(zarr.open_array(str(small), mode="r")[...], CHAIN).compute()
    np.testing.assert_array_equal(tifffile.imread(out), expected)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == [
        "out.tif",
        "out.tif.convpipe-lock",
    ]
    before = tree_digest(tmp_path / "out.tif.convpipe-lock") + hashlib.sha256(out.read_bytes()).hexdigest()
    code, _, err = invoke(capsys, "run", config, "--resume")
    assert code == 0 and "already complete" in err, err
    assert tree_digest(tmp_path / "out.tif.convpipe-lock") + hashlib.sha256(out.read_bytes()).hexdigest() == before


def test_overwrite_of_a_geotiff_waits_out_a_dead_runs_lease_then_takes_over(
    tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run on another node died holding the GeoTIFF's lease (beside the file): --overwrite
    is refused while the lease may be alive, and once it has expired waits no more than the
    lease, says it took over, and publishes the new file whole."""
    import uuid

    from convpipe.io import geotiff_output, stores

    config = write_config(tmp_path, small, "out.tif")
    out = tmp_path / "out.tif"
    code, _, err = invoke(capsys, "run", config, "--quiet")
    assert code == 0, err
    now = time.time()
    record = {
        "token": uuid.uuid4().hex,
        "host": "other-node",
        "pid": 4242,
        "since": now,
        "renewed": now,
        "expires": now + 2.0,
        "seconds": 2.0,
        "released": False,
    }
    lock = tmp_path / "out.tif.convpipe-lock"
    generation = max(int(p.name) for p in lock.iterdir()) + 1
    (lock / f"{generation:010d}").write_text(json.dumps(record))
    code, _, err = invoke(capsys, "run", config, "--quiet")  # no flag: it is held, say so
    assert code == 2 and "being written by another convpipe run" in err and "other-node" in err, err
    begun = time.monotonic()
    code, _, err = invoke(capsys, "run", config, "--overwrite", "--lock-lease", "2")
    assert code == 0, err
    assert "took over" in err and "pid 4242 on other-node" in err, err
    assert time.monotonic() - begun < 2 + 30
    status = geotiff_output.read_status(stores.parse(str(out)))
    assert status is not None and status["complete"] is True
    top = json.loads((lock / max(p.name for p in lock.iterdir())).read_text())
    assert top["released"] is True and top["token"] != record["token"]  # ours, and let go


def test_a_cog_run_killed_while_staging_leaves_the_old_file_and_the_next_run_clears_its_staging(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kill -9 while a COG's levels are staged: the published file is still the old one, and
    the next --overwrite takes over at once, publishes a whole COG and leaves no staging file."""
    config = tmp_path / "config.yaml"
    document = {
        "input": {"path": str(image), "chunks": [32, 32]},
        "output": {"path": "out.tif", "format": "cog", "chunks": [32, 32]},
        "pipeline": CHAIN,
    }
    config.write_text(yaml.safe_dump(document))
    out = tmp_path / "out.tif"
    code, _, err = invoke(capsys, "run", config, "--quiet")
    assert code == 0, err
    older = out.read_bytes()
    process = start("run", config, "--overwrite", "--quiet")
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("out.tif.convpipe-partial.level*")):
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be stopped: {process.communicate()}")
        assert time.monotonic() < deadline, "no level was staged in time"
        time.sleep(0.01)
    kill(process)
    assert out.read_bytes() == older  # never half a file under the output's name
    code, _, err = invoke(capsys, "run", config, "--overwrite", "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == [
        "out.tif",
        "out.tif.convpipe-lock",
    ]
    with tifffile.TiffFile(out) as tif:
        assert len(tif.series[0].levels) > 1  # a whole COG, overviews included
