"""Progress of a run: blocks done of total, throughput and time left.

It watches the output's block markers rather than the scheduler, so it reports the same way
for threads, processes and a dask.distributed cluster (whose workers write the markers).
On a terminal it redraws one line; in a batch log it prints a line every ``interval`` seconds.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Reports ``count()`` (blocks written so far) against ``total`` while a run goes on."""

    def __init__(
        self,
        count: Callable[[], int],
        total: int,
        bytes_per_block: float,
        *,
        terminal: bool,
        interval: float | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.count = count
        self.total = total
        self.bytes_per_block = bytes_per_block
        self.terminal = terminal
        self.interval = interval if interval is not None else (0.5 if terminal else 10.0)
        self.stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="convpipe-progress", daemon=True)
        self._start = time.monotonic()
        self._first = 0

    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        try:
            self._first = self.count()
        except Exception:  # a store blip: the rate then counts from zero
            self._first = 0
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._report(final=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._report(final=False)

    def line(self, done: int, elapsed: float) -> str:
        """The status text for ``done`` blocks after ``elapsed`` seconds."""
        fraction = done / self.total if self.total else 1.0
        fresh = done - self._first
        rate = fresh / elapsed if elapsed > 0 else 0.0
        throughput = rate * self.bytes_per_block / 1e6
        left = (self.total - done) / rate if rate > 0 else None
        eta = _duration(left) if left is not None else "?"
        text = (
            f"{done}/{self.total} blocks ({100 * fraction:.0f}%), {throughput:.0f} MB/s, "
            f"elapsed {_duration(elapsed)}, ETA {eta}"
        )
        if self.terminal:
            width = 24
            filled = int(width * fraction)
            text = f"[{'#' * filled}{'-' * (width - filled)}] {text}"
        return text

    def _report(self, final: bool) -> None:
        try:
            done = self.count()
        except Exception:  # a progress line is never worth failing a run for (a store blip)
            return
        text = self.line(done, time.monotonic() - self._start)
        if self.terminal:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(f"convpipe: {text}\n")
        self.stream.flush()
