"""The write lifecycle (convpipe.io.lifecycle) under attack: racing takers, dead and frozen
holders, takeovers, foreign data under the output, on a local disk and on S3 (moto).

S3 tests use the session fixture ``s3_server`` (tests/conftest.py) and skip without it."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import zarr
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore

from convpipe.errors import ConfigError, RunError
from convpipe.io import lifecycle
from convpipe.io.lifecycle import (
    Lease,
    LeaseKey,
    LeaseLost,
    Locked,
    acquire,
    check_lease,
    check_replaceable,
    classify,
    clear,
    clear_blocks,
    count_blocks,
    file_digest,
    fingerprint,
    first_difference,
    held,
    record_block,
    written_blocks,
)

LOCK = ".convpipe-lock"
TESTS = str(Path(__file__).resolve().parent)
SPAWN = multiprocessing.get_context("spawn")


# --- where: a local folder or a bucket prefix, described so that other processes can open it ------


def open_spec(spec: dict[str, Any]) -> Store:
    """The store a spec describes (also called in child processes)."""
    if spec["kind"] == "local":
        return LocalStore(spec["root"])
    import obstore

    s3 = obstore.store.S3Store(
        spec["bucket"],
        prefix=spec["prefix"],
        endpoint=spec["endpoint"],
        access_key_id=spec["key"],
        secret_access_key=spec["secret"],
        region="us-east-1",
        client_options={"allow_http": True},
    )
    return zarr.storage.ObjectStore(s3)


@pytest.fixture
def s3(request: pytest.FixtureRequest) -> Any:
    try:
        return request.getfixturevalue("s3_server")
    except pytest.FixtureLookupError:
        pytest.skip("no s3_server fixture (tests/conftest.py) in this tree")


def _s3_spec(server: Any) -> dict[str, Any]:
    env = dict(getattr(server, "env", None) or {})
    return {
        "kind": "s3",
        "bucket": server.new_bucket(),
        "prefix": "out.zarr",
        "endpoint": server.endpoint,
        "key": env.get("AWS_ACCESS_KEY_ID", "testing"),
        "secret": env.get("AWS_SECRET_ACCESS_KEY", "testing"),
    }


@pytest.fixture(params=["local", "s3"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "local":
        return {"kind": "local", "root": str(tmp_path / "out.zarr")}
    return _s3_spec(request.getfixturevalue("s3"))


@pytest.fixture
def store(spec: dict[str, Any]) -> Store:
    return open_spec(spec)


@pytest.fixture(scope="module")
def child() -> Any:
    """One spawned process, for checks that must run somewhere else than in this process."""
    with ProcessPoolExecutor(1, mp_context=SPAWN) as pool:
        yield pool


# --- helpers --------------------------------------------------------------------------------------


def keys(store: Store) -> list[str]:
    async def collect() -> list[str]:
        return sorted([key async for key in store.list()])

    return sync(collect())


def read(store: Store, key: str) -> dict[str, Any] | None:
    found = sync(store.get(key, default_buffer_prototype()))
    return None if found is None else json.loads(found.to_bytes())


def put(store: Store, key: str, data: bytes) -> None:
    sync(store.set(key, default_buffer_prototype().buffer.from_bytes(data)))


def gen_key(generation: int, prefix: str = LOCK) -> str:
    return f"{prefix}/{generation:010d}"


def plant(store: Store, generation: int = 0, prefix: str = LOCK, **fields: Any) -> dict[str, Any]:
    """Write a holder's record by hand (a run elsewhere, a dead one, an expired one...)."""
    now = time.time()
    record = {
        "token": uuid.uuid4().hex,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": lifecycle._start_time(os.getpid()),
        "boot_id": lifecycle._boot_id(),
        "since": now,
        "renewed": now,
        "expires": now + 600,
        "seconds": 600,
        "released": False,
    } | fields
    put(store, gen_key(generation, prefix), json.dumps(record).encode())
    return record


def expire(store: Store, generation: int = 0, prefix: str = LOCK) -> None:
    """Make a holder look like it stopped renewing long ago."""
    record = read(store, gen_key(generation, prefix))
    assert record is not None
    record |= {"renewed": time.time() - 120, "expires": time.time() - 60}
    put(store, gen_key(generation, prefix), json.dumps(record).encode())


def generations(store: Store, prefix: str = LOCK) -> list[int]:
    return lifecycle._generations(store, prefix)


def race(store: Store, prefix: str, contenders: int, seconds: float = 30) -> tuple[list[Lease], list[Locked]]:
    """``contenders`` threads call acquire at the same moment."""
    barrier = threading.Barrier(contenders)
    wins: list[Lease] = []
    losses: list[Locked] = []
    errors: list[BaseException] = []

    def contend() -> None:
        barrier.wait()
        try:
            wins.append(acquire(store, prefix, seconds))
        except Locked as error:
            losses.append(error)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=contend) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return wins, losses


def elsewhere_dead_pid() -> int:
    """A pid that ran on this host and is gone (reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


# --- child-process bodies (spawned: importable from this module) -----------------------------------


def _check_in_child(spec: dict[str, Any], key: LeaseKey) -> str:
    try:
        check_lease(open_spec(spec), key)
    except LeaseLost as error:
        return f"LeaseLost: {error}"
    return "ok"


def _contend_rounds(spec: dict[str, Any], rounds: int, barrier: Any, results: Any) -> None:
    store = open_spec(spec)
    mine = []
    for r in range(rounds):
        barrier.wait(60)
        try:
            lease = acquire(store, f"r{r}/{LOCK}", 30)
            mine.append((r, "won", lease.generation, lease.token))
        except Locked:
            mine.append((r, "locked", -1, ""))
    results.put((os.getpid(), mine))


HOLD_AND_SLEEP = """
import json, sys, time
sys.path.insert(0, {tests!r})
from test_lifecycle import open_spec
from convpipe.io.lifecycle import acquire
lease = acquire(open_spec(json.loads(sys.argv[1])), sys.argv[2], 600)
print("held", lease.token, flush=True)
time.sleep(600)
"""


# --- races ----------------------------------------------------------------------------------------


def test_fresh_output_races_have_exactly_one_winner(spec: dict[str, Any], store: Store) -> None:
    rounds, contenders = (60, 8) if spec["kind"] == "local" else (50, 4)  # S3: ~0.15 s a round on moto
    for r in range(rounds):
        prefix = f"r{r}/{LOCK}"
        wins, losses = race(store, prefix, contenders)
        assert len(wins) == 1 and len(losses) == contenders - 1, (r, wins, losses)
        assert generations(store, prefix) == [0]
        assert read(store, gen_key(0, prefix))["token"] == wins[0].token
        check_lease(store, wins[0].key)
        pid = f"pid {os.getpid()} on {socket.gethostname()}"  # every loser names the winner
        assert all(pid in str(loss) and "another convpipe run" in str(loss) for loss in losses), losses


def test_churn_never_has_two_holders(spec: dict[str, Any], store: Store) -> None:
    """Threads take, hold briefly and release one lock over and over: generations pile up and are
    cleaned up under the feet of takers with older listings; never two holders at once."""
    inside: list[str] = []
    guard = threading.Lock()
    errors: list[BaseException] = []
    wins = [0]
    deadline = time.monotonic() + (1.5 if spec["kind"] == "local" else 3)

    def churn() -> None:
        while time.monotonic() < deadline:
            try:
                lease = acquire(store, LOCK, 30)
            except Locked:
                time.sleep(0.005)
                continue
            except BaseException as error:
                errors.append(error)
                return
            with guard:
                inside.append(lease.token)
                overlap = len(inside) > 1
                wins[0] += 1
            try:
                assert not overlap, "two holders at once"
                check_lease(store, lease.key)
            except BaseException as error:
                errors.append(error)
            with guard:
                inside.remove(lease.token)
            lease.release()

    threads = [threading.Thread(target=churn) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]
    assert wins[0] >= 3, wins
    top = generations(store)[-1]
    assert top >= wins[0] - 1 and read(store, gen_key(top))["released"] is True


def test_processes_race_on_a_local_disk(tmp_path: Path) -> None:
    spec = {"kind": "local", "root": str(tmp_path / "out.zarr")}
    processes, rounds = 4, 50  # spawned once: importing convpipe costs ~1.5 s a process
    barrier = SPAWN.Barrier(processes)
    results = SPAWN.Queue()
    workers = [SPAWN.Process(target=_contend_rounds, args=(spec, rounds, barrier, results)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    store = open_spec(spec)
    for r in range(rounds):
        won = [
            (pid, token) for pid, mine in outcomes for (round_, what, _, token) in mine if round_ == r and what == "won"
        ]
        assert len(won) == 1, (r, won)
        assert read(store, gen_key(0, f"r{r}/{LOCK}"))["token"] == won[0][1]


def test_takeover_races_have_exactly_one_winner(spec: dict[str, Any], store: Store) -> None:
    for r in range(30 if spec["kind"] == "local" else 15):
        prefix = f"r{r}/{LOCK}"
        why = ("expired", "released", "dead")[r % 3]
        if why == "expired":
            old = plant(store, 0, prefix, host="elsewhere.example", expires=time.time() - 5)
        elif why == "released":
            old = plant(store, 0, prefix, host="elsewhere.example", released=True)
        else:
            old = plant(store, 0, prefix, pid=elsewhere_dead_pid(), pid_start=None)
        wins, losses = race(store, prefix, 5)
        assert len(wins) == 1 and len(losses) == 4, (r, wins, losses)
        (lease,) = wins
        assert lease.generation == 1
        assert generations(store, prefix) == [1]  # the winner cleaned up below itself
        if why == "released":
            assert lease.took_over is None
        else:
            assert lease.took_over is not None
            assert (lease.took_over["pid"], lease.took_over["host"]) == (old["pid"], old["host"])


def test_a_stale_listing_does_not_win_a_cleaned_up_generation(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    first = acquire(store, LOCK, 30)
    first.release()
    holder = acquire(store, LOCK, 30)  # generation 1; generation 0 is deleted
    assert generations(store) == [1]
    real = lifecycle._generations
    stale = [[]]  # the first listing is stale: "nothing there"
    monkeypatch.setattr(lifecycle, "_generations", lambda s, p: stale.pop() if stale else real(s, p))
    with pytest.raises(Locked, match=r"being written by another convpipe run.*it was just taken"):
        acquire(store, LOCK, 30)
    monkeypatch.undo()
    holder.check()  # the holder is unaffected
    assert read(store, gen_key(0))["released"] is True  # the recreated generation 0 says it is nobody's


# --- expiry, waiting, dead holders ---------------------------------------------------------------


def test_an_expired_lease_is_taken_over(store: Store) -> None:
    holder = acquire(store, LOCK, seconds=0.6)  # never renewed
    with pytest.raises(Locked) as locked:
        acquire(store, LOCK, 30)
    message = str(locked.value)
    assert f"pid {os.getpid()} on {socket.gethostname()}" in message and "renewed 0 s ago" in message
    time.sleep(max(0.0, holder.expires - time.time()) + 0.05)
    taker = acquire(store, LOCK, 30)
    assert taker.took_over is not None
    assert taker.took_over["pid"] == os.getpid() and taker.took_over["reason"] == "its lease expired"
    with pytest.raises(LeaseLost, match=f"another run took over this output \\(pid {os.getpid()}"):
        holder.renew()


def test_waiting_outlasts_a_lease_that_is_not_renewed(store: Store) -> None:
    holder = acquire(store, LOCK, seconds=0.6)
    told: list[str] = []
    started = time.monotonic()
    taker = acquire(store, LOCK, 30, wait=True, notify=told.append)
    waited = time.monotonic() - started
    assert time.time() > holder.expires and waited < 3
    assert taker.took_over is not None and taker.took_over["reason"] == "its lease expired"
    assert len(told) == 1 and "waiting up to" in told[0]


def test_a_renewing_holder_is_never_taken_over_even_when_waiting(store: Store) -> None:
    with held(store, LOCK, seconds=4) as lease:  # renewed every second
        started = time.monotonic()
        with pytest.raises(Locked, match="renewed its lease while this run waited"):
            acquire(store, LOCK, 30, wait=True)
        assert time.monotonic() - started < 3.5  # gave up at the renewal, not at the expiry
        lease.check()
        assert not lease.lost.is_set()
    assert read(store, gen_key(0))["released"] is True


def test_waiting_ends_at_once_when_the_holder_releases(store: Store) -> None:
    holder = acquire(store, LOCK, seconds=2)  # polled every 0.5 s
    threading.Timer(0.2, holder.release).start()
    started = time.monotonic()
    taker = acquire(store, LOCK, 30, wait=True)
    assert time.monotonic() - started < 5 and taker.took_over is None and taker.generation == 1


def test_a_killed_holder_on_this_host_is_taken_over_without_waiting(spec: dict[str, Any], store: Store) -> None:
    """Two holders (started together: each costs a Python start), SIGKILLed: one reaped, one left a zombie."""
    code = HOLD_AND_SLEEP.format(tests=TESTS)
    prefixes = {"reaped": f"reaped/{LOCK}", "zombie": f"zombie/{LOCK}"}
    processes = {
        how: subprocess.Popen([sys.executable, "-c", code, json.dumps(spec), prefix], stdout=subprocess.PIPE, text=True)
        for how, prefix in prefixes.items()
    }
    try:
        for how, process in processes.items():
            line = process.stdout.readline() if process.stdout else ""
            assert line.startswith("held"), line
            with pytest.raises(Locked, match=f"pid {process.pid} on"):
                acquire(store, prefixes[how], 30)  # alive: refused
            process.send_signal(signal.SIGKILL)
        processes["reaped"].wait()
        zombie = processes["zombie"].pid  # a zombie still answers kill(pid, 0): /proc says it is dead
        while (stat := lifecycle._proc_stat(zombie)) is not None and stat[0] != "Z":
            time.sleep(0.01)
        for how, process in processes.items():
            started = time.monotonic()
            taker = acquire(store, prefixes[how], 30)
            assert time.monotonic() - started < 5  # the holder's 600 s lease was not waited out
            assert taker.took_over is not None
            assert taker.took_over["pid"] == process.pid and taker.took_over["reason"] == "its process is gone"
    finally:
        for process in processes.values():
            process.kill()
            process.wait()


def test_a_reused_pid_is_a_dead_holder(store: Store) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        start = lifecycle._start_time(sleeper.pid)
        assert start is not None
        plant(store, 0, pid=sleeper.pid, pid_start=start)  # the very process: alive
        with pytest.raises(Locked, match=f"pid {sleeper.pid}"):
            acquire(store, LOCK, 30)
        plant(store, 0, pid=sleeper.pid, pid_start=start + 1000)  # same pid, another process
        taker = acquire(store, LOCK, 30)
        assert taker.took_over is not None and taker.took_over["reason"] == "its pid now belongs to another process"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_our_own_pid_with_another_token_is_a_dead_holder(store: Store) -> None:
    """PID 1 in a container: the restarted run has the pid of the killed one."""
    plant(store, 0, pid=os.getpid(), token="a-previous-life")
    taker = acquire(store, LOCK, 30)
    assert taker.took_over is not None and "this process" in taker.took_over["reason"]
    with pytest.raises(Locked):  # but a lease this process does hold is alive
        acquire(store, LOCK, 30)


@pytest.mark.parametrize(
    "fields",
    [
        {"host": "elsewhere.example"},
        {"boot_id": "another-boot"},
        {"boot_id": None},
    ],
    ids=["other-host", "other-boot", "no-boot-id"],
)
def test_a_dead_pid_proves_nothing_elsewhere(store: Store, fields: dict[str, Any]) -> None:
    plant(store, 0, pid=elsewhere_dead_pid(), **fields)
    with pytest.raises(Locked, match="is being written by another convpipe run"):
        acquire(store, LOCK, 30)


def test_an_unreadable_lock_record_is_refused(store: Store) -> None:
    put(store, gen_key(0), b"not json")
    with pytest.raises(Locked, match="is not a convpipe lock record"):
        acquire(store, LOCK, 30)


# --- after a takeover ----------------------------------------------------------------------------


def test_the_run_taken_over_finds_out_and_leaves_the_new_holder_alone(
    spec: dict[str, Any], store: Store, child: ProcessPoolExecutor
) -> None:
    old = acquire(store, LOCK, 30)
    assert child.submit(_check_in_child, spec, old.key).result(timeout=60) == "ok"
    expire(store, 0)  # it froze
    new = acquire(store, LOCK, 30)
    assert new.generation == 1 and new.took_over is not None
    with pytest.raises(LeaseLost, match=f"another run took over this output \\(pid {os.getpid()} on .*this run stops"):
        old.renew()
    with pytest.raises(LeaseLost):
        check_lease(store, old.key)
    assert child.submit(_check_in_child, spec, old.key).result(timeout=60).startswith("LeaseLost: ")
    before = read(store, gen_key(1))
    old.release()
    assert read(store, gen_key(1)) == before and before is not None and before["released"] is False
    assert generations(store) == [1]  # the old generation was not recreated
    new.check()
    assert child.submit(_check_in_child, spec, new.key).result(timeout=60) == "ok"
    new.release()
    assert read(store, gen_key(1))["released"] is True
    with pytest.raises(LeaseLost, match="released"):
        check_lease(store, new.key)


def test_a_takeover_between_check_and_renewal_is_caught(store: Store) -> None:
    lease = acquire(store, LOCK, 30)
    plant(store, 1, host="elsewhere.example", pid=4242)  # someone won generation 1
    with pytest.raises(LeaseLost, match=r"pid 4242 on elsewhere\.example"):
        lease.renew()
    with pytest.raises(LeaseLost):
        lease.check()


def test_check_lease_stops_writers_of_an_expired_lease(store: Store) -> None:
    lease = acquire(store, LOCK, 30)
    expire(store, 0)
    lease.verified -= 30  # the holder froze a lease-length ago: its writers must ask the store
    with pytest.raises(LeaseLost, match="lease expired"):
        check_lease(store, lease.key)
    lease.renew()  # not taken over yet: the holder may carry on
    check_lease(store, lease.key)


def test_writers_in_the_holding_process_trust_its_lease_for_half_a_lease_only(
    spec: dict[str, Any], store: Store, child: ProcessPoolExecutor
) -> None:
    lease = acquire(store, LOCK, 30)
    sync(store.delete(gen_key(0)))  # behind its back: only the store can tell
    check_lease(store, lease.key)  # renewed (here: taken) moments ago, so no request is made
    assert child.submit(_check_in_child, spec, lease.key).result(timeout=60).startswith("LeaseLost: ")
    lease.verified -= 15  # half a lease without the store showing it ours: ask the store again
    with pytest.raises(LeaseLost):
        check_lease(store, lease.key)
    with pytest.raises(LeaseLost):
        lease.renew()
    lease.verified = time.time()  # a lease found lost stays lost, however recent its last check
    with pytest.raises(LeaseLost):
        check_lease(store, lease.key)


def test_a_geotiff_lock_lives_beside_the_file(store: Store) -> None:
    put(store, "out.tif", b"II*\x00")
    with held(store, "out.tif.convpipe-lock/", seconds=30) as lease:
        assert lease.key.prefix == "out.tif.convpipe-lock"
        assert keys(store) == ["out.tif", "out.tif.convpipe-lock/0000000000"]
        with pytest.raises(Locked):
            acquire(store, "out.tif.convpipe-lock", 30)


def test_lease_keys_travel() -> None:
    key = LeaseKey(LOCK, 3, "abc", "output.path: s3://b/x.zarr")
    assert pickle.loads(pickle.dumps(key)) == key
    assert issubclass(Locked, ConfigError) and issubclass(LeaseLost, RunError)


# --- held() ---------------------------------------------------------------------------------------


def test_held_renews_and_releases(store: Store) -> None:
    with held(store, LOCK, seconds=1) as lease:
        first = read(store, gen_key(0))
        time.sleep(0.6)
        later = read(store, gen_key(0))
        assert later["renewed"] > first["renewed"] and later["expires"] > time.time()
        assert not lease.lost.is_set()
    assert read(store, gen_key(0))["released"] is True
    assert acquire(store, LOCK, 30).took_over is None


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_held_releases_when_the_block_fails(store: Store, error: type[BaseException]) -> None:
    with pytest.raises(error), held(store, LOCK, seconds=30):
        raise error("stop")
    assert read(store, gen_key(0))["released"] is True
    again = acquire(store, LOCK, 30)
    assert again.generation == 1 and again.took_over is None


def test_held_notices_a_takeover(store: Store) -> None:
    with held(store, LOCK, seconds=0.4) as lease:
        plant(store, 1, host="elsewhere.example", pid=4242)
        assert lease.lost.wait(3)
        assert "pid 4242 on elsewhere.example" in lease.lost_reason
        with pytest.raises(LeaseLost):
            lease.check()
    assert read(store, gen_key(1))["released"] is False  # the release left the new holder alone


def test_held_gives_up_when_renewals_keep_failing(store: Store) -> None:
    with held(store, LOCK, seconds=0.8) as lease:

        def broken() -> None:
            raise OSError("connection reset")

        lease.renew = broken  # type: ignore[method-assign]
        assert lease.lost.wait(3)
        assert "could not renew" in lease.lost_reason and "connection reset" in lease.lost_reason


# --- ownership ------------------------------------------------------------------------------------


def _array(store: Store, path: str = "", zarr_format: int = 3, **kwargs: Any) -> None:
    array = zarr.create_array(
        store=store, name=path or None, shape=(4, 4), chunks=(2, 2), dtype="u1", zarr_format=zarr_format, **kwargs
    )
    array[:] = 1


def _refused(store: Store) -> str:
    with pytest.raises(ConfigError) as refused:
        check_replaceable(store, "output.path: somewhere")
    message = str(refused.value)
    assert message.startswith("output.path: somewhere holds things convpipe did not make (")
    assert message.endswith("); refusing to replace it")
    return message


def test_replaceable_outputs(store: Store) -> None:
    assert classify(store) == "empty"
    check_replaceable(store, "output.path: somewhere")
    record_block(store, (0, 1))
    plant(store, 0)
    assert classify(store) == "leftover"
    check_replaceable(store, "output.path: somewhere")
    _array(store)
    assert classify(store) == "array"
    zarr.open_array(store=store, mode="r+").attrs["convpipe"] = {"complete": False}
    assert classify(store) == "convpipe"
    check_replaceable(store, "output.path: somewhere")
    put(store, "labels/zarr.json", b"{}")  # what a user added inside an output of ours stays
    assert classify(store) == "foreign"
    with pytest.raises(ConfigError, match=r"labels/"):
        check_replaceable(store, "output.path: somewhere")


def test_an_ome_zarr_output_of_ours_is_its_levels_and_nothing_else(store: Store) -> None:
    status = {"complete": True, "storage": {"levels": 2}}
    group = zarr.create_group(store=store, attributes={"convpipe": status})
    for level in ("0", "1"):
        group.create_array(level, shape=(4, 4), chunks=(2, 2), dtype="f4").attrs["x"] = 1
        group[level][...] = 1.0
    assert classify(store) == "convpipe"
    group.create_group("labels")
    assert classify(store) == "foreign"
    with pytest.raises(ConfigError, match=r"labels"):
        check_replaceable(store, "output.path: somewhere")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"zarr_format": 2},
        {"zarr_format": 2, "chunk_key_encoding": {"name": "v2", "separator": "/"}},
        {"zarr_format": 3, "chunk_key_encoding": {"name": "default", "separator": "."}},
        {"zarr_format": 3, "chunk_key_encoding": {"name": "v2", "separator": "/"}},
    ],
    ids=["v2-dot", "v2-slash", "v3-dot", "v3-v2-keys"],
)
def test_a_single_array_is_replaceable(store: Store, kwargs: dict[str, Any]) -> None:
    _array(store, **kwargs)
    record_block(store, (1, 1))
    assert classify(store) == "array"
    check_replaceable(store, "output.path: somewhere")
    if kwargs["zarr_format"] == 2:
        zarr.open_array(store=store, mode="r+").attrs["convpipe"] = {"complete": True}
        assert classify(store) == "convpipe"


def test_a_group_of_arrays_is_refused(store: Store) -> None:
    zarr.create_group(store=store)
    _array(store, "0")
    _array(store, "extra")
    message = _refused(store)
    assert "(0/, extra/)" in message


def test_a_folder_with_other_files_is_refused(store: Store) -> None:
    _array(store)
    put(store, "notes.txt", b"mine")
    assert "(notes.txt)" in _refused(store)


def test_an_array_with_labels_is_refused(store: Store) -> None:
    _array(store)
    put(store, "labels/zarr.json", json.dumps({"zarr_format": 3, "node_type": "group"}).encode())
    put(store, "c/9", b"a chunk key of the wrong rank")
    message = _refused(store)
    assert "(c/, labels/)" in message


def test_many_foreign_entries_are_summarised(store: Store) -> None:
    for name in ("a.txt", "b.txt", "c.txt", "d/x", "e/y"):
        put(store, name, b"x")
    plant(store, 0)
    assert "(a.txt, b.txt, c.txt, … 2 more)" in _refused(store)


def test_clear_keeps_only_the_lock(spec: dict[str, Any], store: Store) -> None:
    lease = acquire(store, LOCK, 30)
    _array(store)
    put(store, "labels/deep/zarr.json", json.dumps({"zarr_format": 3, "node_type": "group"}).encode())
    record_block(store, (0, 0))
    if spec["kind"] == "local":
        (Path(spec["root"]) / "c" / "0" / "0.1234.partial").write_bytes(b"half")
    clear(store, LOCK)
    assert keys(store) == [gen_key(0)]
    lease.check()
    if spec["kind"] == "local":
        assert sorted(p.name for p in Path(spec["root"]).iterdir()) == [LOCK]
    with pytest.raises(ValueError):
        clear(store, "")


# --- block records, fingerprints -----------------------------------------------------------------


def test_block_records_round_trip(spec: dict[str, Any], store: Store) -> None:
    assert written_blocks(store) == set() and count_blocks(store) == 0
    blocks = {(0, 0, 0), (0, 1, 2), (10, 0, 3)}
    for index in blocks:
        record_block(store, index)
    if spec["kind"] == "local":  # a marker whose write was cut short is not a block
        (Path(spec["root"]) / ".convpipe-blocks" / "0.1.2.abcdef.partial").write_bytes(b"")
    assert written_blocks(store) == blocks and count_blocks(store) == 3
    record_block(store, (5,), prefix="0/.convpipe-blocks")  # another level's records stay apart
    clear_blocks(store)
    assert written_blocks(store) == set() and written_blocks(store, "0/.convpipe-blocks") == {(5,)}


def test_fingerprints_see_one_changed_object(tmp_path: Path) -> None:
    listing = [("a/0", 10, "etag-1"), ("a/1", 20, "etag-2"), ("zarr.json", 300, "etag-3")]
    print_ = fingerprint(listing)
    assert print_["objects"] == 3 and print_["bytes"] == 330 and len(print_["digest"]) == 64
    assert fingerprint(reversed(listing)) == print_
    changed = fingerprint([*listing[:1], ("a/1", 20, "etag-2b"), listing[2]])
    assert changed["digest"] != print_["digest"] and changed["bytes"] == print_["bytes"]
    kernel = tmp_path / "k.npy"
    kernel.write_bytes(b"\x93NUMPY" + bytes(100))
    import hashlib

    assert file_digest(kernel) == hashlib.sha256(kernel.read_bytes()).hexdigest()


def test_first_difference_names_the_first_differing_leaf() -> None:
    old = {"input": {"fingerprint": {"digest": "ab", "objects": 3}, "shape": [4, 5]}, "version": "1"}
    assert first_difference(old, json.loads(json.dumps(old))) is None
    new = {"input": {"fingerprint": {"digest": "cd", "objects": 4}, "shape": [4, 5]}, "version": "1"}
    assert first_difference(old, new) == "input.fingerprint.digest: 'ab' when the output was started, 'cd' now"
    assert first_difference({"s": [1, 2]}, {"s": [1, 3]}) == "s[1]: 2 when the output was started, 3 now"
    assert first_difference({"a": 1}, {"a": 1, "b": 2}) == "b: None when the output was started, 2 now"


def test_a_renewal_that_finds_the_lease_expired_is_not_trusted_without_the_store(store: Store) -> None:
    """The holder froze past its lease; a taker read it expired; the holder's late renewal
    must not let its writers skip the store while the taker wins the next generation."""
    lease = acquire(store, LOCK, 30)
    expire(store, 0)
    lease.renew()  # late: the record it read had expired
    plant(store, 1, host="elsewhere.example", pid=4242)  # the taker that read it expired
    with pytest.raises(LeaseLost, match=r"pid 4242 on elsewhere\.example"):
        check_lease(store, lease.key)
