"""One write lifecycle for an output, the same on a local disk and in an object store.

Everything here goes through zarr's ``Store`` API, so a folder and a bucket prefix behave
alike: the lease that keeps two runs from writing one output, the records of written blocks,
the check that ``--overwrite`` only replaces what convpipe made, and the fingerprints a
resume compares.

The lease
---------
The only atomic primitive that both a POSIX disk and S3 give us is *exclusive create*
(``os.link`` onto a new name; a PUT with ``If-None-Match: *``). Overwrites and deletes are
not conditional, so a lock that is taken over by "check it is stale, delete it, create it"
has a race: two takers both see the stale lock, one deletes it and creates its own, the
other deletes *that* one and creates its own, and both believe they hold the lock.

So the lock is a sequence of *generations*: ``<prefix>/<generation:010d>``, each a small
JSON record (token, host, pid, pid start time, boot id, renewed, expires, seconds,
released). The holder is whoever wrote the highest generation. A taker never deletes or
overwrites a holder's record: it creates generation N+1 exclusively, reads it back and
compares its token (``set_if_not_exists`` does nothing, silently, when the key exists), so
of several racing takers exactly one wins. Only the winner of a generation deletes the
generations below it (lowest first), so the highest generation is never deleted, and a
taker that acted on an old listing (it recreated a generation cleaned up meanwhile) sees the
higher one when it lists again after winning, and backs off.

Generation N may be taken over when its record says ``released``, when its lease expired
(``expires < now``), or when its holder is provably dead: same host, same boot and same pid
namespace, and its pid is gone, or that pid now belongs to a process that started at another
time, or it is our own pid but not a lease this process holds. Otherwise the holder is
alive, or unknowable (another host; another pid namespace, i.e. a container, whose pids mean
nothing here, pid 1 least of all): ``Locked``, or with ``wait`` the taker waits until the
lease expires and takes over if it was not renewed meanwhile.

What a lease guarantees: at any moment at most one generation is the highest, so at most
one run *believes correctly* that it holds the output, and every writer that checks the
lease (``check_lease``) before a block stops as soon as another run took over or its own
lease expired. What it cannot: a check and the write after it are not atomic, so a holder
that froze (SIGSTOP, a paused VM, a long GC) after its check and wakes after a takeover may
still finish the blocks it had in flight (one per worker); it finds ``LeaseLost`` before its
next block.
A holder must renew well within ``seconds`` (``held`` renews every ``seconds / 4``).

Clocks: expiry compares the holder's recorded ``expires`` (its clock) with the local clock
of whoever reads it. This assumes the hosts' clocks agree to well within the lease length
(NTP-synchronised machines do, by orders of magnitude): a holder that renews on time keeps
``expires`` at least ``3/4 * seconds`` ahead, which is the skew the lease tolerates.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from convpipe.errors import ConfigError, RunError

LOCK_PREFIX = ".convpipe-lock"
BLOCKS_PREFIX = ".convpipe-blocks"
OWN_PREFIX = ".convpipe-"  # every key convpipe keeps beside its data starts with this
PARTIAL_SUFFIX = ".partial"  # zarr's LocalStore writes <key>.<uuid>.partial, then renames

_GENERATION = re.compile(r"\d{10}")
_BLOCK = re.compile(r"\d+(?:\.\d+)*")
_CONCURRENCY = 64


class Locked(ConfigError):
    """Another run holds the output's lease (or won the race for it)."""


class LeaseLost(RunError):
    """This run's lease is gone (taken over, expired or released): it must stop writing."""


# --- store access ------------------------------------------------------------------------------


def _buffer(data: bytes) -> Any:
    return default_buffer_prototype().buffer.from_bytes(data)


def _get(store: Store, key: str) -> bytes | None:
    found = sync(store.get(key, default_buffer_prototype()))
    return None if found is None else found.to_bytes()


def _put(store: Store, key: str, data: bytes) -> None:
    sync(store.set(key, _buffer(data)))


async def _list_dir(store: Store, prefix: str) -> list[str]:
    # ObjectStore.list_dir needs a running loop when called, so call it in here
    return [name async for name in store.list_dir(prefix)]


async def _list_all(store: Store) -> list[str]:
    return [key async for key in store.list()]


async def _delete_all(store: Store, keys: Iterable[str]) -> None:
    limit = asyncio.Semaphore(_CONCURRENCY)

    async def one(key: str) -> None:
        async with limit:
            await store.delete(key)

    await asyncio.gather(*(one(key) for key in keys))


def _describe(store: Store) -> str:
    root = getattr(store, "root", None)
    return str(root) if isinstance(root, Path) else str(store)


# --- who holds it --------------------------------------------------------------------------------

_LIVE_TOKENS: set[str] = set()  # tokens of the leases this process holds (or is trying to take)
_TOKENS_LOCK = threading.Lock()
_HELD: dict[str, Lease] = {}  # token -> the lease this process holds: its writers check it in memory


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _pid_namespace() -> str | None:
    """This process's pid namespace ("pid:[4026531836]"): pids are only comparable within one."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a process, None if unknowable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()  # the name (field 2) may hold spaces
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _start_time(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def _alive(pid: int) -> bool:
    """Whether ``pid`` may be a running process on this host (zombies are dead)."""
    if pid <= 0:
        return True  # not a pid we can ask about: cannot prove anything
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except (OverflowError, ValueError):
        return True
    stat = _proc_stat(pid)
    return stat is None or stat[0] not in ("Z", "X")


def _dead_because(record: dict[str, Any]) -> str | None:
    """Why the holder of ``record`` is provably dead, or None if it may be alive.

    Only provable on its own host during the same boot: elsewhere a pid means nothing."""
    if record.get("host") != socket.gethostname():
        return None
    boot = _boot_id()
    if boot is None or record.get("boot_id") != boot:
        return None
    namespace = record.get("pid_ns")
    if namespace is not None and namespace != _pid_namespace():
        return None  # a pid of another container: it proves nothing here
    pid = record.get("pid")
    if not isinstance(pid, int):
        return None
    if pid == os.getpid():
        with _TOKENS_LOCK:
            ours = record.get("token") in _LIVE_TOKENS
        return None if ours else "its pid is this process's, which does not hold that lease"
    if not _alive(pid):
        return "its process is gone"
    recorded, current = record.get("pid_start"), _start_time(pid)
    if recorded is not None and current is not None and recorded != current:
        return "its pid now belongs to another process"
    return None


def _holder(record: dict[str, Any]) -> str:
    return f"pid {record.get('pid', '?')} on {record.get('host', '?')}"


def _by(record: dict[str, Any] | None) -> str:
    """The " (pid P on H)" naming a holder, or "" for an unreadable record."""
    return f" ({_holder(record)})" if record is not None and _valid(record) else ""


def _valid(record: dict[str, Any] | None) -> bool:
    return (
        record is not None
        and isinstance(record.get("token"), str)
        and isinstance(record.get("expires"), int | float)
        and isinstance(record.get("renewed"), int | float)
    )


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))


def _held_message(name: str, record: dict[str, Any], now: float) -> str:
    ago = max(0.0, now - float(record["renewed"]))
    left = float(record["expires"]) - now
    return (
        f"{name} is being written by another convpipe run ({_holder(record)}, lease renewed {ago:.0f} s ago, "
        f"expires in {max(0.0, left):.0f} s at {_clock(float(record['expires']))}); let it finish or stop it; "
        f"if it was killed, a new run takes over once its lease expires (or waits for that, if told to)"
    )


# --- the lease ----------------------------------------------------------------------------------


def _key(prefix: str, generation: int) -> str:
    return f"{prefix}/{generation:010d}"


def _generations(store: Store, prefix: str) -> list[int]:
    return sorted(int(name) for name in sync(_list_dir(store, prefix)) if _GENERATION.fullmatch(name))


def _read(store: Store, key: str) -> dict[str, Any] | None:
    """The record at ``key``; None if there is none; ``{}`` if it is not a convpipe record."""
    data = _get(store, key)
    if data is None:
        return None
    try:
        record = json.loads(data)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True).encode()


@dataclass(frozen=True)
class LeaseKey:
    """What a writer on any process needs to check that its run still holds the output."""

    prefix: str
    generation: int
    token: str
    name: str = "output"


class Lease:
    """A held generation of an output's lock. Renew it (``held`` does) or it expires."""

    def __init__(
        self,
        store: Store,
        prefix: str,
        generation: int,
        record: dict[str, Any],
        name: str,
        took_over: dict[str, Any] | None,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.generation = generation
        self.record = record
        self.name = name
        self.took_over = took_over
        self.seconds = float(record["seconds"])
        self.lost = threading.Event()
        self.lost_reason = ""
        self.released = False
        self.verified = float(record["renewed"])  # when the store last showed the lease ours
        self._lock = threading.Lock()  # renewals and the release, one at a time

    def __repr__(self) -> str:
        return f"Lease({self.name!r}, generation={self.generation}, expires={self.expires:.1f})"

    @property
    def token(self) -> str:
        return str(self.record["token"])

    @property
    def expires(self) -> float:
        return float(self.record["expires"])

    @property
    def key(self) -> LeaseKey:
        return LeaseKey(self.prefix, self.generation, self.token, self.name)

    def renew(self) -> None:
        """Push ``expires`` a lease length ahead, if the lease is still ours (else LeaseLost)."""
        with self._lock:
            if self.released:
                raise LeaseLost(f"{self.name}: this run already released its lease; this run stops")
            asked = time.time()
            try:
                record = _verify(self.store, self.key, check_expiry=False)
            except LeaseLost as error:
                self.lose(str(error))  # for good: this process's writers stop trusting it
                raise
            now = time.time()
            renewed = {**record, "renewed": now, "expires": now + self.seconds}
            _put(self.store, _key(self.prefix, self.generation), _encode(renewed))
            self.record = renewed
            # A renewal that found the lease already expired may race a taker that read it
            # expired: writers ask the store until a renewal finds it alive.
            self.verified = asked if float(record.get("expires", 0)) >= asked else 0.0

    def vouches(self) -> bool:
        """Whether a writer in this process may trust the lease without asking the store.

        After the store showed it ours at ``verified``, another run may take it over only once
        it expires (``seconds`` later; a same-host takeover needs this process dead, and the
        release comes after the writers finish). Trusting it for half that leaves the other
        half for clocks that disagree between hosts."""
        return not (self.lost.is_set() or self.released) and time.time() < self.verified + self.seconds / 2

    def release(self) -> None:
        """Mark our record released (if it is still ours); other generations are never touched.

        The record stays: deleting the highest generation would let a fresh taker start again
        at generation 0 while a taker acting on an older listing creates a higher one, and
        both would hold the lease for a moment (a churn test found exactly that)."""
        with self._lock:
            if self.released:
                return
            self.released = True
            with _TOKENS_LOCK:
                _LIVE_TOKENS.discard(self.token)
                _HELD.pop(self.token, None)
            try:
                record = _verify(self.store, self.key, check_expiry=False)
            except LeaseLost:
                return  # someone else's now: leave theirs alone
            released = {**record, "released": True, "renewed": time.time()}
            _put(self.store, _key(self.prefix, self.generation), _encode(released))
            self.record = released

    def lose(self, reason: str) -> None:
        self.lost_reason = reason
        self.lost.set()

    def check(self) -> None:
        """LeaseLost if the renewal thread lost the lease or another run took it over."""
        if self.lost.is_set():
            raise LeaseLost(self.lost_reason)
        check_lease(self.store, self.key)


def _verify(store: Store, key: LeaseKey, *, check_expiry: bool) -> dict[str, Any]:
    """Our record, if ours is the highest generation and still carries our token."""
    own = _key(key.prefix, key.generation)

    async def look() -> tuple[Any, list[str]]:
        return await asyncio.gather(store.get(own, default_buffer_prototype()), _list_dir(store, key.prefix))

    found, names = sync(look())
    generations = sorted(int(name) for name in names if _GENERATION.fullmatch(name))
    record: dict[str, Any] | None = None
    if found is not None:
        with contextlib.suppress(ValueError):
            record = json.loads(found.to_bytes())
    top = generations[-1] if generations else None
    if not isinstance(record, dict) or record.get("token") != key.token or (top is not None and top > key.generation):
        newer = _read(store, _key(key.prefix, top)) if top is not None and top != key.generation else record
        raise LeaseLost(f"{key.name}: another run took over this output{_by(newer)}; this run stops")
    if record.get("released"):
        raise LeaseLost(f"{key.name}: the run that held this output released it; this run stops")
    if check_expiry and float(record.get("expires", 0)) < time.time():
        raise LeaseLost(
            f"{key.name}: this run's lease expired at {_clock(float(record['expires']))} (its holder stopped renewing "
            f"it); this run stops"
        )
    return record


def check_lease(store: Store, key: LeaseKey) -> None:
    """Raise LeaseLost unless ``key`` is still the output's live lease (read-only; any process).

    Writers call it before each block: it catches a takeover, a release and an expired
    lease (the holder stopped renewing, so a takeover may be under way). A writer in the
    process holding the lease asks the lease itself (``Lease.vouches``), which the renewals
    keep checked against the store: two requests less per block, and no listing of the lock
    per block, which an object store charges for."""
    held = _HELD.get(key.token)
    if held is not None and held.key == key and held.vouches():
        return
    _verify(store, key, check_expiry=True)


def _took_over(record: dict[str, Any], generation: int, reason: str) -> dict[str, Any]:
    return {
        "pid": record.get("pid"),
        "host": record.get("host"),
        "generation": generation,
        "since": record.get("since"),
        "renewed": record.get("renewed"),
        "expires": record.get("expires"),
        "reason": reason,
    }


def _free(record: dict[str, Any], now: float) -> tuple[bool, str | None]:
    """Whether a holder's generation may be taken over, and why (None: it was released)."""
    if record.get("released"):
        return True, None
    if float(record["expires"]) < now:
        return True, "its lease expired"
    dead = _dead_because(record)
    return (True, dead) if dead else (False, None)


def _take(
    store: Store, prefix: str, generation: int, seconds: float, name: str, took_over: dict[str, Any] | None
) -> Lease:
    """Create ``generation`` exclusively; won if our token is what is there, and nothing newer is."""
    token = uuid.uuid4().hex
    with _TOKENS_LOCK:  # before the record exists, so a racing thread of ours sees it live
        _LIVE_TOKENS.add(token)
    try:
        now = time.time()
        pid = os.getpid()
        record = {
            "token": token,
            "host": socket.gethostname(),
            "pid": pid,
            "pid_start": _start_time(pid),
            "boot_id": _boot_id(),
            "pid_ns": _pid_namespace(),
            "since": now,
            "renewed": now,
            "expires": now + seconds,
            "seconds": seconds,
            "released": False,
        }
        key = _key(prefix, generation)
        try:
            sync(store.set_if_not_exists(key, _buffer(_encode(record))))
        except Exception as error:  # a full disk, a read-only folder or bucket: one line
            if not (isinstance(error, OSError) or type(error).__module__.startswith("obstore")):
                raise
            detail = getattr(error, "strerror", None) or str(error).splitlines()[0]
            message = f"{name}: cannot write its lease record {key} ({detail}); nothing else was written"
            raise RunError(message) from None
        there = _read(store, key)
        if there is None or there.get("token") != token:
            raise Locked(
                f"{name} is being written by another convpipe run{_by(there)}: it was just taken by that run, "
                "which started at the same time"
            )
        generations = _generations(store, prefix)
        newer = [g for g in generations if g > generation]
        if newer:  # we recreated a generation cleaned up under a newer holder: it is not ours
            with contextlib.suppress(Exception):
                _put(store, key, _encode({**record, "released": True}))
            holder = _by(_read(store, _key(prefix, newer[-1])))
            raise Locked(f"{name} is being written by another convpipe run{holder}: it was just taken by that run")
        for old in generations:  # lowest first: the highest generation is never missing
            if old < generation:
                with contextlib.suppress(Exception):
                    sync(store.delete(_key(prefix, old)))
        lease = Lease(store, prefix, generation, record, name, took_over)
        with _TOKENS_LOCK:
            _HELD[token] = lease
        return lease
    except BaseException:
        with _TOKENS_LOCK:
            _LIVE_TOKENS.discard(token)
        raise


def lease_state(store: Store, prefix: str = LOCK_PREFIX) -> tuple[int, dict[str, Any] | None]:
    """The highest generation of the lock (-1: none), and its record if a run that may be
    alive holds it (read-only)."""
    prefix = prefix.rstrip("/")
    generations = _generations(store, prefix)
    if not generations:
        return -1, None
    record = _read(store, _key(prefix, generations[-1]))
    live = record is not None and _valid(record) and not _free(record, time.time())[0]
    return generations[-1], record if live else None


def check_not_held(store: Store, prefix: str, name: str) -> None:
    """Locked, naming the holder, if a run that may be alive holds the lease (read-only)."""
    _, holder = lease_state(store, prefix)
    if holder is not None:
        raise Locked(_held_message(name, holder, time.time()))


def acquire(
    store: Store,
    prefix: str = LOCK_PREFIX,
    seconds: float = 60.0,
    *,
    wait: bool = False,
    name: str | None = None,
    notify: Callable[[str], None] | None = None,
) -> Lease:
    """Take the output's lease for ``seconds`` (renew it!), or raise Locked.

    A released, expired or provably dead holder is taken over at once. A holder that may be
    alive: Locked; with ``wait``, wait until its lease expires (polling) and take over if it
    did not renew meanwhile (Locked if it did). ``name`` names the output in messages
    (e.g. "output.path: s3://b/x.zarr"); ``notify`` is told once when waiting starts."""
    if not seconds > 0:
        raise ConfigError(f"lease length must be positive (got {seconds})")
    name = name or f"output {_describe(store)}"
    prefix = prefix.rstrip("/")
    for _ in range(20):  # only repeats when a record vanished under us (a newer holder cleaned up)
        generations = _generations(store, prefix)
        if not generations:
            return _take(store, prefix, 0, seconds, name, None)
        top = generations[-1]
        key = _key(prefix, top)
        record = _read(store, key)
        if record is None:
            continue
        if not _valid(record):
            raise Locked(f"{name}: {key} is not a convpipe lock record; remove it if no convpipe run writes here")
        now = time.time()
        free, reason = _free(record, now)
        if not free and not wait:
            raise Locked(_held_message(name, record, now))
        if not free:
            record = _wait_out(store, key, record, name, notify)
            if record is None:
                continue
            free, reason = _free(record, time.time())
        took_over = None if reason is None else _took_over(record, top, reason)
        return _take(store, prefix, top + 1, seconds, name, took_over)
    raise Locked(f"{name}: its lock kept changing while this run tried to take it; another run is starting")


def _wait_out(
    store: Store, key: str, record: dict[str, Any], name: str, notify: Callable[[str], None] | None
) -> dict[str, Any] | None:
    """Wait for the lease in ``record`` to expire unchanged; its last state, or None if it vanished."""
    holder_seconds = float(record.get("seconds") or 60.0)
    interval = max(0.02, min(1.0, holder_seconds / 4))
    if notify is not None:
        left = float(record["expires"]) - time.time()
        notify(f"{name}: waiting up to {left:.0f} s for the lease of {_holder(record)} to expire")
    while True:
        left = float(record["expires"]) - time.time()
        if left < 0:
            return record
        time.sleep(min(interval, left + 0.01))
        current = _read(store, key)
        if current is None:
            return None
        if current.get("token") != record.get("token"):
            return None
        if current.get("released"):
            return current
        if current.get("renewed") != record.get("renewed") or current.get("expires") != record.get("expires"):
            raise Locked(f"{_held_message(name, current, time.time())} (it renewed its lease while this run waited)")
        if _dead_because(current):
            return current


def _keep_renewing(lease: Lease, stop: threading.Event) -> None:
    """Renew every ``seconds / 4``; on LeaseLost, or failing until the lease would expire, set ``lost``."""
    interval = lease.seconds / 4
    retry = min(interval, 1.0)
    pause = interval
    while not stop.wait(pause):
        try:
            lease.renew()
            pause = interval
        except LeaseLost as error:
            lease.lose(str(error))
            return
        except Exception as error:
            if time.time() + retry >= lease.expires:
                lease.lose(
                    f"{lease.name}: could not renew this run's lease before it expired ({error}); this run stops"
                )
                return
            pause = retry


@contextlib.contextmanager
def held(
    store: Store,
    prefix: str = LOCK_PREFIX,
    seconds: float = 60.0,
    *,
    wait: bool = False,
    name: str | None = None,
    notify: Callable[[str], None] | None = None,
) -> Iterator[Lease]:
    """Hold the lease for the block: a daemon thread renews it; it is released however the
    block ends (KeyboardInterrupt too). Check ``lease.lost`` / ``lease.check()`` while writing."""
    lease = acquire(store, prefix, seconds, wait=wait, name=name, notify=notify)
    stop = threading.Event()
    thread = threading.Thread(target=_keep_renewing, args=(lease, stop), name="convpipe-lease", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        stop.set()
        thread.join(timeout=max(10.0, lease.seconds))
        # Never fail (or hide the error that ends) the block over a release: an unreleased
        # lease expires, and a resume waits it out.
        with contextlib.suppress(Exception):
            lease.release()


# --- block records --------------------------------------------------------------------------------


def _block_name(index: tuple[int, ...]) -> str:
    if not index:
        raise ValueError("a block index needs at least one dimension")
    return ".".join(str(int(i)) for i in index)


def record_block(store: Store, index: tuple[int, ...], prefix: str = BLOCKS_PREFIX) -> None:
    """Record that block ``index`` is written: an empty object ``<prefix>/<i.j.k>``."""
    _put(store, f"{prefix}/{_block_name(tuple(index))}", b"")


def is_block_record(name: str) -> bool:
    """Whether a name in the records folder is a block's record (not a temporary ``.partial``)."""
    return _BLOCK.fullmatch(name) is not None


def written_blocks(store: Store, prefix: str = BLOCKS_PREFIX) -> set[tuple[int, ...]]:
    """The recorded blocks, from one listing (temporary ``.partial`` files are ignored)."""
    names = sync(_list_dir(store, prefix))
    return {tuple(int(i) for i in name.split(".")) for name in names if is_block_record(name)}


def count_blocks(store: Store, prefix: str = BLOCKS_PREFIX) -> int:
    return len(written_blocks(store, prefix))


def clear_blocks(store: Store, prefix: str = BLOCKS_PREFIX) -> None:
    sync(store.delete_dir(prefix))


# --- ownership ------------------------------------------------------------------------------------


def _own(key: str) -> bool:
    return key.split("/", 1)[0].startswith(OWN_PREFIX) or key.endswith(PARTIAL_SUFFIX)


def _json(store: Store, key: str) -> dict[str, Any] | None:
    data = _get(store, key)
    try:
        found = json.loads(data) if data is not None else None
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def _ndim(meta: dict[str, Any]) -> int | None:
    shape = meta.get("shape")
    return len(shape) if isinstance(shape, list) else None


def _chunk_key(key: str, ndim: int | None, v3: bool) -> bool:
    """Whether ``key`` names a chunk of the root array: ``c/0/1``, ``c.0.1`` (v3), ``0.1``, ``0/1``."""
    parts = re.split(r"[./]", key)
    if v3 and parts[0] == "c":
        parts = parts[1:]
    elif ndim == 0:
        return key == "0"
    if not all(part.isdigit() for part in parts) or (not parts and not v3):
        return False
    return ndim is None or len(parts) == ndim


def survey(store: Store) -> tuple[str, list[str]]:
    """What is at ``store`` (see ``classify``) and, when foreign, the keys that make it so."""
    keys = sync(_list_all(store))
    if not keys:
        return "empty", []
    rest = [key for key in keys if not _own(key)]
    if not rest:
        return "leftover", []
    if "zarr.json" in rest:
        meta = _json(store, "zarr.json") or {}
        attributes = meta.get("attributes")
        if isinstance(attributes, dict) and "convpipe" in attributes:
            return _ours(rest, attributes["convpipe"], meta.get("node_type") == "array", _ndim(meta), v3=True)
        if meta.get("node_type") == "array":
            ndim = _ndim(meta)
            foreign = [key for key in rest if key != "zarr.json" and not _chunk_key(key, ndim, v3=True)]
            return ("foreign", foreign) if foreign else ("array", [])
    elif ".zattrs" in rest or ".zarray" in rest:
        attributes = _json(store, ".zattrs") if ".zattrs" in rest else None
        if attributes is not None and "convpipe" in attributes:
            array = ".zarray" in rest
            ndim = _ndim(_json(store, ".zarray") or {}) if array else None
            return _ours(rest, attributes["convpipe"], array, ndim, v3=False)
        if ".zarray" in rest:
            ndim = _ndim(_json(store, ".zarray") or {})
            meta_keys = (".zarray", ".zattrs")
            foreign = [key for key in rest if key not in meta_keys and not _chunk_key(key, ndim, v3=False)]
            return ("foreign", foreign) if foreign else ("array", [])
    return "foreign", rest


_METADATA = ("zarr.json", ".zgroup", ".zattrs", ".zarray")


def _ours(rest: list[str], status: Any, array: bool, ndim: int | None, v3: bool) -> tuple[str, list[str]]:
    """A convpipe output holds its chunks, or its levels, and nothing else: what a user added
    inside it (labels, notes) makes it foreign, so --overwrite never deletes that."""
    if array:
        foreign = [key for key in rest if key not in _METADATA and not _chunk_key(key, ndim, v3=v3)]
    else:
        storage = status.get("storage") if isinstance(status, dict) else None
        levels = storage.get("levels", 1) if isinstance(storage, dict) else 1
        names = {str(level) for level in range(levels if isinstance(levels, int) else 1)}
        foreign = [key for key in rest if key not in _METADATA and key.split("/", 1)[0] not in names]
    return ("foreign", foreign) if foreign else ("convpipe", [])


def classify(store: Store) -> str:
    """What is at ``store``: "empty", "convpipe" (an output of ours), "array" (one Zarr array
    and its chunks), "leftover" (only what a failed run of ours left) or "foreign"."""
    return survey(store)[0]


def _entries(keys: list[str], shown: int = 3) -> str:
    top = sorted({key.split("/", 1)[0] + ("/" if "/" in key else "") for key in keys})
    metadata = {"zarr.json", ".zgroup", ".zattrs", ".zarray"}
    if any(entry not in metadata for entry in top):  # a group's own metadata says little
        top = [entry for entry in top if entry not in metadata]
    more = len(top) - shown
    return ", ".join(top[:shown]) + (f", … {more} more" if more > 0 else "")


def check_replaceable(store: Store, what: str) -> None:
    """ConfigError unless ``--overwrite`` may replace what is at ``store``: nothing, an output
    of ours, a single Zarr array, or a failed run's leftovers. ``what`` names the location
    (e.g. "output.path: s3://b/x.zarr")."""
    kind, foreign = survey(store)
    if kind == "foreign":
        raise not_ours(what, foreign)


def not_ours(what: str, foreign: list[str]) -> ConfigError:
    """The refusal to replace what convpipe did not make, naming a few of those things."""
    return ConfigError(f"{what} holds things convpipe did not make ({_entries(foreign)}); refusing to replace it")


def _under(key: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return key == prefix or key.startswith(prefix + "/")


def clear(store: Store, keep_prefix: str) -> None:
    """Delete every key except those under ``keep_prefix`` (the lock we hold); on a local disk
    also remove the directories this leaves empty. The store must be rooted at the output."""
    if not keep_prefix.strip("/"):
        raise ValueError("clear() needs a prefix to keep (the lock)")
    doomed = [key for key in sync(_list_all(store)) if not _under(key, keep_prefix)]
    # In three waves, so a delete cut short never leaves what looks like something else: the
    # block records first (a resume then redoes every block), then the data, and the metadata
    # documents last (the output stays recognisably ours, and --overwrite or --resume take it).
    records = [key for key in doomed if _own(key)]
    metadata = [key for key in doomed if key.rsplit("/", 1)[-1] in _METADATA]
    data = [key for key in doomed if key not in set(records) | set(metadata)]
    for wave in (records, data, metadata):
        sync(_delete_all(store, wave))
    root = getattr(store, "root", None)
    if isinstance(root, Path) and root.is_dir():
        for folder, _dirs, _files in os.walk(root, topdown=False):
            relative = Path(folder).relative_to(root).as_posix()
            if relative != "." and not _under(relative, keep_prefix):
                with contextlib.suppress(OSError):
                    os.rmdir(folder)  # fails, harmlessly, unless empty


# --- fingerprints ---------------------------------------------------------------------------------


def fingerprint(listing: Iterable[tuple[str, int, str]]) -> dict[str, Any]:
    """A cheap identity of an input made of objects: (key, size, version) triples, where the
    version is an ETag or mtime+inode, so a rewrite shows without reading the data."""
    triples = sorted((str(key), int(size), str(version)) for key, size, version in listing)
    digest = hashlib.sha256()
    for triple in triples:
        digest.update(json.dumps(triple).encode() + b"\n")
    return {"objects": len(triples), "bytes": sum(size for _, size, _ in triples), "digest": digest.hexdigest()}


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a local file's bytes (small files: kernel .npy files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def first_difference(recorded: Any, current: Any, place: str = "") -> str | None:
    """The first leaf where two records differ, as "place: old when the output was started, new now"."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        for key in sorted(set(recorded) | set(current), key=str):
            found = first_difference(recorded.get(key), current.get(key), f"{place}.{key}" if place else str(key))
            if found:
                return found
        return None
    if isinstance(recorded, list) and isinstance(current, list) and len(recorded) == len(current):
        for i, (old, new) in enumerate(zip(recorded, current, strict=True)):
            found = first_difference(old, new, f"{place}[{i}]")
            if found:
                return found
        return None
    if recorded != current:
        return f"{place}: {recorded!r} when the output was started, {current!r} now"
    return None
