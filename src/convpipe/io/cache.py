"""A bounded cache of decoded storage chunks, shared by neighbouring blocks' halos.

Why: a block reads beyond its own samples by the chain's halo, so the storage chunks along
its border are also read by its neighbours. Without a cache each of those chunks is decoded
again for every block that touches it (up to 3**ndim times for a corner chunk).

What it keeps: whole decoded chunks until the block holding a chunk entirely has read it,
then only the strips along that chunk's faces, as deep as the halo, which is all its
neighbours still need. Whole chunks stay within the plan's ``cache_bytes`` (less a quarter
for strips); strips within their own budget (that quarter, and at least ``STRIP_BYTES``:
small chunks have many strips for their size). The entries kept longest are evicted first
(below), and an entry is dropped when its chunk file's signature (inode, size, mtime) changes.

Why first kept, first evicted, and not least recently used: blocks run in bands, row by row
(``traversal``), so the blocks that need the chunks kept whole run in the order the chunks
were decoded. Reads by halos say nothing about that, and refreshing entries on them let the
last block of a row (which reads the chunks beyond the band's edge, run in the next band)
push out, with two threads, a chunk the next row still needed.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["STRIP_BYTES", "ChunkCache"]


class _Budget:
    """Entries (anything with ``nbytes``) kept within ``limit`` bytes, the first kept evicted
    first; the size is kept in step with every put and pop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.entries: collections.OrderedDict[tuple[int, ...], Any] = collections.OrderedDict()

    def __contains__(self, key: tuple[int, ...]) -> bool:
        return key in self.entries

    def get(self, key: tuple[int, ...]) -> Any:
        return self.entries.get(key)

    def pop(self, key: tuple[int, ...]) -> Any:
        value = self.entries.pop(key, None)
        if value is not None:
            self.size -= value.nbytes
        return value

    def put(self, key: tuple[int, ...], value: Any) -> list[tuple[int, ...]]:
        """Keep ``value`` (not if it alone exceeds the budget); returns the keys evicted."""
        if value.nbytes > self.limit:
            return []
        self.pop(key)
        self.entries[key] = value
        self.size += value.nbytes
        evicted = []
        while self.size > self.limit and self.entries:
            gone, old = self.entries.popitem(last=False)
            self.size -= old.nbytes
            evicted.append(gone)
        return evicted


class ChunkCache:
    """Decoded storage chunks that neighbouring blocks' halos share: bounded, thread-safe.

    Two kinds of entries, the first kept evicted first, each kind within its own budget:

    - whole chunks (``limit`` bytes; the plan's cache, 0: none): a chunk decoded for a halo
      before the block that holds it entirely has run, which will need all of it;
    - edge strips (``strip_limit`` bytes): once the block holding a chunk entirely has read it,
      its neighbours only ever need the slabs along its faces as deep as the chain's halo, a
      few percent of the chunk (README, "Performance").

    A chunk being decoded by one thread is waited for, not decoded again, by another. Entries
    carry their file's signature (inode, size, modification time): a chunk rewritten since it
    was decoded (the reader outlives a run) is decoded again.
    """

    def __init__(self, limit: int, strip_limit: int | None = None) -> None:
        if strip_limit is None:  # a quarter of the budget, never less than STRIP_BYTES
            quarter = limit // 4
            limit -= quarter
            strip_limit = max(quarter, STRIP_BYTES)
        self.whole = _Budget(limit)
        self.strips = _Budget(strip_limit)
        self.signatures: dict[tuple[int, ...], Any] = {}  # of the whole chunks and strips held
        self.lock = threading.Lock()
        self.pending: dict[tuple[int, ...], threading.Event] = {}
        # How deep, per axis, blocks read beyond the chunks they hold entirely (the halo).
        self.depth: list[int] = []

    def get(self, key: tuple[int, ...]) -> np.ndarray | None:
        with self.lock:
            return self.whole.get(key)  # type: ignore[no-any-return]

    def put(self, key: tuple[int, ...], value: np.ndarray) -> None:
        with self.lock:
            self._keep(self.whole, key, value)

    def _keep(self, budget: _Budget, key: tuple[int, ...], value: Any) -> None:
        """Put into one budget; an evicted key's signature goes when neither kind holds it."""
        other = self.strips if budget is self.whole else self.whole
        for gone in budget.put(key, value):
            if gone not in other:
                self.signatures.pop(gone, None)

    def lookup(self, key: tuple[int, ...], need: tuple[slice, ...], signature: Any = None) -> np.ndarray | None:
        """The part ``need`` (chunk-local) of a chunk, from a whole chunk or one of its strips."""
        with self.lock:
            if self.signatures.get(key) != signature:
                self._drop(key)  # the chunk's file changed since: stale
                return None
            chunk = self.whole.get(key)
            if chunk is not None:
                return chunk[need]  # type: ignore[no-any-return]
            strips = self.strips.get(key)
            if strips is not None:
                return strips.part(need)  # type: ignore[no-any-return]
            return None

    def claim(
        self, key: tuple[int, ...], need: tuple[slice, ...], signature: Any = None
    ) -> tuple[np.ndarray | None, bool]:
        """``(part, False)`` if cached; ``(None, True)`` if the caller must decode the chunk
        (and then call ``done``); waits while another thread decodes it."""
        while True:
            part = self.lookup(key, need, signature)
            if part is not None:
                return part, False
            with self.lock:
                event = self.pending.get(key)
                if event is None:
                    self.pending[key] = threading.Event()
                    return None, True
            event.wait()

    def try_claim(
        self, key: tuple[int, ...], need: tuple[slice, ...], signature: Any = None
    ) -> tuple[np.ndarray | None, str]:
        """``claim`` that never waits, for a caller claiming many chunks before decoding them:
        ``(part, "cached")``; ``(None, "mine")``: decode it, then call ``done``; ``(None,
        "busy")``: another thread is decoding it (``claim`` it once holding no other claim)."""
        part = self.lookup(key, need, signature)
        if part is not None:
            return part, "cached"
        with self.lock:
            if key in self.pending:
                return None, "busy"
            self.pending[key] = threading.Event()
            return None, "mine"

    def done(
        self,
        key: tuple[int, ...],
        chunk: np.ndarray | None,
        held: Sequence[tuple[bool, bool]] | None,
        signature: Any = None,
    ) -> None:
        """Store a chunk this thread decoded: whole if a block will still need all of it (else
        its strips on every face, for its other neighbours), as strips if the block holding it
        entirely has read it (``held``: which of its faces, low and high per axis, neighbours
        still to run will read: on that block's border, facing blocks later in the order)."""
        with self.lock:
            if chunk is not None:
                if self.signatures.get(key) != signature:
                    self._drop(key)
                self.signatures[key] = signature
                if held is not None:
                    self.whole.pop(key)  # its owner is done with it
                    self._keep_strips(key, chunk, held)
                else:
                    self._keep(self.whole, key, chunk)
                    if key not in self.whole:
                        # Decoded for a halo and not kept whole: its other neighbours, which
                        # may run before its owner, read its strips rather than decode it again.
                        self._keep_strips(key, chunk, [(True, True)] * chunk.ndim)
                if key not in self.whole and key not in self.strips:
                    self.signatures.pop(key, None)  # not kept (too big, no strips): no entry
            event = self.pending.pop(key, None)
        if event is not None:
            event.set()

    def release(self, key: tuple[int, ...], held: Sequence[tuple[bool, bool]]) -> None:
        """The block holding this cached chunk entirely has read it: keep its strips only."""
        with self.lock:
            chunk = self.whole.pop(key)
            if chunk is not None:
                self._keep_strips(key, chunk, held)
                if key not in self.strips:
                    self.signatures.pop(key, None)  # no strips kept: no entry left

    def _keep_strips(self, key: tuple[int, ...], chunk: np.ndarray, held: Sequence[tuple[bool, bool]]) -> None:
        strips = _Strips.of(chunk, self.depth, held)
        if strips is not None:
            self._keep(self.strips, key, strips)

    def _drop(self, key: tuple[int, ...]) -> None:
        self.whole.pop(key)
        self.strips.pop(key)
        self.signatures.pop(key, None)

    def saw(self, depth: Sequence[int]) -> None:
        """Record how deep a block read into chunks it does not hold (the strips' depth)."""
        with self.lock:
            if len(self.depth) != len(depth):
                self.depth = [0] * len(depth)
            self.depth = [max(a, b) for a, b in zip(self.depth, depth, strict=True)]


@dataclass(frozen=True)
class _Strips:
    """Copies of the slabs along some of a chunk's faces, ``depth[d]`` deep across axis ``d``."""

    shape: tuple[int, ...]
    faces: tuple[tuple[int, np.ndarray | None, np.ndarray | None], ...]

    @staticmethod
    def of(chunk: np.ndarray, depth: Sequence[int], outward: Sequence[tuple[bool, bool]]) -> _Strips | None:
        """The strips along the faces ``outward`` marks (low, high per axis), or None."""
        if len(depth) != chunk.ndim:
            return None
        faces: list[tuple[int, np.ndarray | None, np.ndarray | None]] = []
        for axis, (n, k, (low, high)) in enumerate(zip(chunk.shape, depth, outward, strict=True)):
            if k <= 0 or 2 * k >= n:
                low = high = False  # no halo across this axis, or the strips would be the chunk
            before = (slice(None),) * axis
            faces.append(
                (
                    k,
                    chunk[(*before, slice(0, k))].copy() if low else None,
                    chunk[(*before, slice(n - k, n))].copy() if high else None,
                )
            )
        if all(low is None and high is None for _, low, high in faces):
            return None
        return _Strips(chunk.shape, tuple(faces))

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for _, low, high in self.faces for f in (low, high) if f is not None)

    def part(self, need: tuple[slice, ...]) -> np.ndarray | None:
        for axis, (k, low, high) in enumerate(self.faces):
            s, n = need[axis], self.shape[axis]
            if low is not None and s.stop <= k:
                return low[need]
            if high is not None and s.start >= n - k:
                shifted = (*need[:axis], slice(s.start - (n - k), s.stop - (n - k)), *need[axis + 1 :])
                return high[shifted]
        return None


#: Edge strips kept when the plan has no chunk cache (2-D): a row of blocks' worth of strips
#: is a few MiB at most.
STRIP_BYTES = 8 * 2**20
