"""Local files on the disk itself before anything says they are written (README, "Data safety").

A block is recorded as written, and an output marked complete, only after what they vouch for
has reached the disk: a killed process leaves its writes in the page cache, where the kernel
still writes them out, but a node that crashes or loses power drops them, and a record that
reached the disk first would then vouch for a chunk that is not there. So each file is synced
(``fdatasync``), and each folder from its own up to the output's root, so that its name
survives too. Object stores need none of this: a put is durable when it returns.

A synced file is also dropped from the page cache, unless the run reads it again (an OME-Zarr
pyramid reads each level to make the next): an output far larger than memory would only push
the input and everything else out of the cache, and the pages it frees are reused for the
next block's writes, which is cheaper than taking fresh ones, most of all on a virtual machine
that hands free memory back to its host.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

try:
    from fcntl import F_FULLFSYNC, fcntl  # macOS: fsync leaves the data in the drive's cache
except ImportError:
    F_FULLFSYNC = None


def _datasync(fd: int) -> None:
    if F_FULLFSYNC is not None:
        try:
            fcntl(fd, F_FULLFSYNC)
            return
        except OSError:  # some filesystems (SMB, FUSE) refuse it: as SQLite does, fall back
            pass
    getattr(os, "fdatasync", os.fsync)(fd)


_FADVISE = getattr(os, "posix_fadvise", None)  # not on macOS
_READ = os.O_RDONLY if os.name != "nt" else os.O_RDWR  # Windows syncs only what it may write
#: Files opened at once by ``flush``: their writeback is started together, within the
#: limit on open files.
BATCH = 64


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's ``sync_file_range``, which Python's os module does not offer; None elsewhere."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


def _start_writeback(fd: int) -> None:
    start = _sync_file_range()
    if start is not None:
        # SYNC_FILE_RANGE_WRITE, the whole file: started for every file of a batch before the
        # first is waited for, the disk takes them together; errors are the sync's to report.
        start(fd, 0, 0, 2)


def flush(files: Iterable[str | os.PathLike[str]], root: str | os.PathLike[str], *, drop: bool = True) -> None:
    """Put ``files`` and their names, in every folder up to and including ``root``, on the disk;
    ``drop``: and out of the page cache (not for what the run reads again)."""
    root = Path(root)
    paths = [Path(file) for file in files]
    for first in range(0, len(paths), BATCH):
        _sync_files(paths[first : first + BATCH], drop)
    folders: set[Path] = set()
    for path in paths:
        folder = path.parent
        while folder not in folders:
            folders.add(folder)
            if folder == root or folder == folder.parent:
                break
            folder = folder.parent
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        sync_folder(folder)


def _sync_files(paths: list[Path], drop: bool) -> None:
    descriptors: list[int] = []
    try:
        for path in paths:
            descriptors.append(os.open(path, _READ))
            _start_writeback(descriptors[-1])  # every file of the batch before the first sync
        for fd in descriptors:
            _datasync(fd)
            if drop and _FADVISE is not None:
                _FADVISE(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        for fd in descriptors:
            with contextlib.suppress(OSError):  # the others are closed too, and the first error kept
                os.close(fd)


def sync_folder(folder: str | os.PathLike[str]) -> None:
    """The names in ``folder`` on the disk (files created, renamed or removed in it)."""
    if os.name == "nt":  # Windows cannot open a folder to sync it; NTFS journals names itself
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_process() -> None:
    global _PROCESS
    _PROCESS = uuid.uuid4().hex


_PROCESS = ""
_new_process()
os.register_at_fork(after_in_child=_new_process)


def this_process() -> str:
    """This process, told apart from every other (pids repeat across hosts and containers,
    and a forked child keeps its parent's memory): only the process that drains a flusher
    may hand it work."""
    return _PROCESS


class Flusher:
    """Flushes in a thread of its own, then runs what waited for them (a block's record), so
    the threads computing blocks never wait for the disk. Each run's flushes are kept apart
    (``owner``), so a run is told of its own failures only. At most ``most`` wait at a time:
    past that a slow disk slows the blocks, and a run that stops has little to wait for."""

    def __init__(self, most: int = 8) -> None:
        self._lock = threading.Lock()
        self._room = threading.BoundedSemaphore(most)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[str, list[Future[None]]] = {}

    def submit(
        self,
        owner: str,
        files: Iterable[str | os.PathLike[str]],
        root: str | os.PathLike[str],
        then: Callable[[], None],
        *,
        drop: bool = True,
    ) -> None:
        """Flush ``files`` (``flush``), then call ``then``; raises the error of an earlier
        flush of ``owner`` that failed, so a run stops at its next block, not at its end."""
        with self._lock:
            mine = self._pending.get(owner, [])
            failed = next((future for future in mine if future.done() and future.exception()), None)
            self._pending[owner] = [future for future in mine if not future.done() or future.exception()]
            if failed is not None:
                self._pending[owner].remove(failed)
                raise failed.exception()  # type: ignore[misc]
        self._room.acquire()
        try:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="convpipe-flush")
                future = self._pool.submit(_flush_then, list(files), root, then, drop)
                self._pending.setdefault(owner, []).append(future)
        except BaseException:
            self._room.release()
            raise
        future.add_done_callback(lambda _: self._room.release())

    def drain(self, owner: str) -> None:
        """Wait for every flush ``owner`` submitted; raise the first that failed."""
        errors = self._wait(owner)
        if errors:
            raise errors[0]

    def wait(self, owner: str) -> None:
        """Wait for every flush ``owner`` submitted, whatever became of them (for a run that
        fails anyway: what failed to flush was not recorded, so a resume redoes it)."""
        self._wait(owner)

    def _wait(self, owner: str) -> list[BaseException]:
        with self._lock:
            pending = self._pending.pop(owner, [])
        errors: list[BaseException] = []
        interrupted: KeyboardInterrupt | None = None
        for future in pending:
            while True:  # a second Ctrl-C must not cut this short: the lease goes next
                try:
                    error = future.exception()
                    break
                except KeyboardInterrupt as interrupt:
                    interrupted = interrupt
            if error is not None:
                errors.append(error)
        if interrupted is not None:
            raise interrupted
        return errors


def _flush_then(
    files: list[str | os.PathLike[str]], root: str | os.PathLike[str], then: Callable[[], None], drop: bool
) -> None:
    flush(files, root, drop=drop)
    then()


#: The flusher of this process's runs: drained before an output is marked complete, and
#: waited for before its lease is released.
background = Flusher()
