"""Local files on the disk itself before anything says they are written (README, "Data safety").

A block is recorded as written, and an output marked complete, only after what they vouch for
has reached the disk: a killed process leaves its writes in the page cache, where the kernel
still writes them out, but a node that crashes or loses power drops them, and a record that
reached the disk first would then vouch for a chunk that is not there. So each file is synced
(``fdatasync``), and each folder from its own up to the output's root, so that its name
survives too. Object stores need none of this: a put is durable when it returns.

A synced file is also dropped from the page cache. The run does not read its output again
(a pyramid level reads the one below it once), and an output far larger than memory would
only push the input and everything else out of the cache; the pages it frees are reused for
the next block's writes, which is cheaper than taking fresh ones, most of all on a virtual
machine that hands free memory back to its host.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

_DATASYNC = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
_FADVISE = getattr(os, "posix_fadvise", None)  # nor posix_fadvise


def flush(files: Iterable[str | os.PathLike[str]], root: str | os.PathLike[str]) -> None:
    """Put ``files`` and their names, in every folder up to and including ``root``, on the disk."""
    root = Path(root)
    folders: set[Path] = set()
    for file in files:
        path = Path(file)
        _sync_file(path)
        folder = path.parent
        while folder not in folders:
            folders.add(folder)
            if folder == root or folder == folder.parent:
                break
            folder = folder.parent
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        sync_folder(folder)


def _sync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY if os.name != "nt" else os.O_RDWR)
    try:
        _DATASYNC(fd)
        if _FADVISE is not None:
            _FADVISE(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
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


class Flusher:
    """Flushes in a thread of its own, then runs what waited for them (a block's record), so
    the threads computing blocks never wait for the disk. Only the process that drains it
    may use it: whatever it still holds when that process ends is lost."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []

    def submit(
        self, files: Iterable[str | os.PathLike[str]], root: str | os.PathLike[str], then: Callable[[], None]
    ) -> None:
        """Flush ``files`` (``flush``), then call ``then``; raises the error of an earlier
        flush that failed, so a run stops at its next block rather than at its end."""
        with self._lock:
            failed = next((future for future in self._pending if future.done() and future.exception()), None)
            self._pending = [future for future in self._pending if not future.done()]
            if failed is not None:
                raise failed.exception()  # type: ignore[misc]
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="convpipe-flush")
            self._pending.append(self._pool.submit(_flush_then, list(files), root, then))

    def drain(self) -> None:
        """Wait for every flush submitted so far; raise the first that failed."""
        errors = self._wait()
        if errors:
            raise errors[0]

    def wait(self) -> None:
        """Wait for every flush submitted so far, whatever became of them (a run that fails
        anyway: what failed to flush was not recorded, so a resume redoes it)."""
        self._wait()

    def _wait(self) -> list[BaseException]:
        with self._lock:
            pending, self._pending = self._pending, []
        return [error for future in pending if (error := future.exception()) is not None]


def _flush_then(files: list[str | os.PathLike[str]], root: str | os.PathLike[str], then: Callable[[], None]) -> None:
    flush(files, root)
    then()


#: The flusher of this process's runs: drained before an output is marked complete, and
#: waited for before its lease is released.
background = Flusher()
