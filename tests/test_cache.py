"""ChunkCache: the bounded, thread-safe cache of decoded chunks that neighbouring halos share."""

from __future__ import annotations

import collections
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convpipe.io.cache import STRIP_BYTES, ChunkCache, _Strips

ALL = (slice(0, 10), slice(0, 10))


def chunk(value: int, shape: tuple[int, ...] = (10, 10), dtype: str = "u1") -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape) + np.array(value, dtype=dtype)


def check_bounds(cache: ChunkCache) -> None:
    for budget in (cache.whole, cache.strips):
        assert budget.size == sum(v.nbytes for v in budget.entries.values())
        assert budget.size <= budget.limit
    held = set(cache.whole.entries) | set(cache.strips.entries)
    assert set(cache.signatures) <= held


def test_default_budgets() -> None:
    cache = ChunkCache(0)
    assert (cache.whole.limit, cache.strips.limit) == (0, STRIP_BYTES)
    cache = ChunkCache(1000)
    assert (cache.whole.limit, cache.strips.limit) == (750, STRIP_BYTES)  # small chunks: many strips
    cache = ChunkCache(400 * 2**20)
    assert (cache.whole.limit, cache.strips.limit) == (300 * 2**20, 100 * 2**20)
    cache = ChunkCache(1000, strip_limit=10)
    assert (cache.whole.limit, cache.strips.limit) == (1000, 10)


def test_the_first_kept_is_evicted_first_whatever_was_read_since() -> None:
    """Reads do not refresh an entry: the blocks that need the chunks kept whole run in the
    order the chunks were decoded (io/cache.py)."""
    cache = ChunkCache(300, strip_limit=0)
    for i in range(3):
        cache.put((i,), chunk(i))  # 100 bytes each: full
    assert cache.get((0,)) is not None  # read again: still the first kept
    cache.put((3,), chunk(3))
    assert cache.get((0,)) is None
    assert all(cache.get((i,)) is not None for i in (1, 2, 3))
    cache.put((1,), chunk(1))  # kept again: now the last
    cache.put((4,), chunk(4))
    assert list(cache.whole.entries) == [(3,), (1,), (4,)]
    check_bounds(cache)


def test_too_big_is_not_kept() -> None:
    cache = ChunkCache(99, strip_limit=0)
    cache.put((0,), chunk(0))
    assert cache.get((0,)) is None
    assert cache.whole.size == 0


@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(0, 1200),
    strip_limit=st.integers(0, 300),
    depth=st.lists(st.integers(0, 6), min_size=2, max_size=2),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["put", "done", "done_held", "release", "lookup"]),
            st.integers(0, 7),  # key
            st.sampled_from([(10, 10), (4, 12), (3, 3)]),
            st.lists(st.tuples(st.booleans(), st.booleans()), min_size=2, max_size=2),
            st.integers(0, 2),  # signature
        ),
        max_size=40,
    ),
)
def test_byte_bound_never_exceeded(limit, strip_limit, depth, ops) -> None:
    cache = ChunkCache(limit, strip_limit)
    cache.saw(depth)
    for op, key, shape, held, sig in ops:
        data = chunk(key, shape)
        if op == "put":
            cache.put((key,), data)
        elif op == "done":
            cache.done((key,), data, None, sig)
        elif op == "done_held":
            cache.done((key,), data, held, sig)
        elif op == "release":
            cache.release((key,), held)
        else:
            cache.lookup((key,), (slice(0, 1), slice(0, 1)), sig)
        check_bounds(cache)


def test_strips_answer_only_within_depth() -> None:
    cache = ChunkCache(0)
    cache.saw([2, 3])
    data = chunk(0)
    cache.done((0, 0), data, [(True, True), (True, True)], "s")
    assert cache.get((0, 0)) is None  # its owner read it: strips only
    assert cache.strips.get((0, 0)) is not None
    inside = [
        (slice(0, 2), slice(0, 10)),  # low face, axis 0
        (slice(1, 2), slice(4, 6)),
        (slice(8, 10), slice(2, 7)),  # high face, axis 0
        (slice(3, 7), slice(0, 3)),  # low face, axis 1
        (slice(0, 10), slice(7, 10)),  # high face, axis 1
    ]
    for need in inside:
        np.testing.assert_array_equal(cache.lookup((0, 0), need, "s"), data[need])
    outside = [(slice(0, 3), slice(4, 6)), (slice(4, 6), slice(4, 6)), (slice(7, 10), slice(3, 7)), ALL]
    for need in outside:
        assert cache.lookup((0, 0), need, "s") is None
        assert cache.strips.get((0, 0)).part(need) is None


def test_strips_only_along_held_faces() -> None:
    data = chunk(0)
    strips = _Strips.of(data, [2, 2], [(True, False), (False, False)])
    assert strips is not None
    assert strips.nbytes == 2 * 10
    np.testing.assert_array_equal(strips.part((slice(0, 2), slice(0, 10))), data[0:2])
    assert strips.part((slice(8, 10), slice(0, 10))) is None  # high face not kept
    assert strips.part((slice(0, 10), slice(0, 2))) is None  # axis 1 not kept


def test_no_strips_without_halo_or_when_they_would_be_the_chunk() -> None:
    data = chunk(0)
    assert _Strips.of(data, [0, 0], [(True, True), (True, True)]) is None
    assert _Strips.of(data, [5, 5], [(True, True), (True, True)]) is None  # 2k >= n
    assert _Strips.of(data, [2], [(True, True)]) is None  # depth of another rank
    cache = ChunkCache(1000)
    cache.saw([0, 0])
    cache.done((0, 0), data, [(True, True), (True, True)])
    assert cache.get((0, 0)) is None and cache.strips.get((0, 0)) is None


def test_release_keeps_strips_only() -> None:
    cache = ChunkCache(1000)
    cache.saw([1, 1])
    data = chunk(0)
    cache.put((0, 0), data)
    np.testing.assert_array_equal(cache.lookup((0, 0), (slice(4, 6), slice(4, 6))), data[4:6, 4:6])
    cache.release((0, 0), [(True, True), (True, True)])
    assert cache.get((0, 0)) is None
    assert cache.lookup((0, 0), (slice(4, 6), slice(4, 6))) is None
    np.testing.assert_array_equal(cache.lookup((0, 0), (slice(0, 1), slice(4, 6))), data[0:1, 4:6])
    check_bounds(cache)


def test_saw_keeps_the_deepest() -> None:
    cache = ChunkCache(0)
    cache.saw([1, 4])
    cache.saw([3, 2])
    assert cache.depth == [3, 4]
    cache.saw([1, 1, 1])  # another rank starts over
    assert cache.depth == [1, 1, 1]


def test_changed_signature_invalidates() -> None:
    cache = ChunkCache(1000)
    data = chunk(0)
    need = (slice(0, 2), slice(0, 2))
    cache.done((0, 0), data, None, signature=("ino", 1))
    np.testing.assert_array_equal(cache.lookup((0, 0), need, ("ino", 1)), data[need])
    assert cache.lookup((0, 0), need, ("ino", 2)) is None  # rewritten since: stale, dropped
    assert cache.lookup((0, 0), need, ("ino", 1)) is None
    assert cache.get((0, 0)) is None and (0, 0) not in cache.signatures
    part, mine = cache.claim((0, 0), need, ("ino", 2))
    assert part is None and mine
    fresh = chunk(50)
    cache.done((0, 0), fresh, None, ("ino", 2))
    np.testing.assert_array_equal(cache.lookup((0, 0), need, ("ino", 2)), fresh[need])


def test_changed_signature_invalidates_strips() -> None:
    cache = ChunkCache(0)
    cache.saw([1, 1])
    cache.done((0, 0), chunk(0), [(True, True), (True, True)], "old")
    need = (slice(0, 1), slice(0, 10))
    assert cache.lookup((0, 0), need, "old") is not None
    assert cache.lookup((0, 0), need, "new") is None
    assert cache.strips.get((0, 0)) is None


def _claim_in_thread(cache: ChunkCache, key, need, signature=None):
    started, result = threading.Event(), {}

    def run() -> None:
        started.set()
        result["value"] = cache.claim(key, need, signature)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(5)
    return thread, result


def test_claim_waits_for_the_decoding_thread() -> None:
    cache = ChunkCache(1000)
    key, need = (1, 2), (slice(2, 5), slice(0, 3))
    assert cache.claim(key, need) == (None, True)  # this thread decodes
    thread, result = _claim_in_thread(cache, key, need)
    thread.join(0.05)
    assert thread.is_alive() and not result  # waiting, not decoding it again
    data = chunk(7)
    cache.done(key, data, None)
    thread.join(5)
    assert not thread.is_alive()
    part, mine = result["value"]
    assert not mine
    np.testing.assert_array_equal(part, data[need])
    assert not cache.pending


def test_claim_waiters_get_strips_when_the_owner_held_it() -> None:
    cache = ChunkCache(0)
    cache.saw([2, 2])
    key, need = (0, 0), (slice(8, 10), slice(0, 10))
    assert cache.claim(key, need) == (None, True)
    thread, result = _claim_in_thread(cache, key, need)
    data = chunk(3)
    cache.done(key, data, [(True, True), (True, True)])
    thread.join(5)
    part, mine = result["value"]
    assert not mine
    np.testing.assert_array_equal(part, data[need])


def test_failed_decode_wakes_waiters_to_decode_themselves() -> None:
    cache = ChunkCache(1000)
    key, need = (0, 0), ALL
    assert cache.claim(key, need) == (None, True)
    thread, result = _claim_in_thread(cache, key, need)
    thread.join(0.05)
    assert thread.is_alive()
    cache.done(key, None, None)  # the decode failed: nothing stored
    thread.join(5)
    assert not thread.is_alive()
    assert result["value"] == (None, True)  # the waiter now owns the decode
    assert key in cache.pending
    data = chunk(1)
    cache.done(key, data, None)
    assert not cache.pending
    np.testing.assert_array_equal(cache.lookup(key, need), data)


@pytest.mark.parametrize("waiters", [1, 4])
def test_many_waiters_one_decode(waiters: int) -> None:
    cache = ChunkCache(1000)
    key, need = (0,), (slice(0, 3), slice(0, 3))
    assert cache.claim(key, need) == (None, True)
    threads = [_claim_in_thread(cache, key, need) for _ in range(waiters)]
    data = chunk(9)
    cache.done(key, data, None)
    for thread, result in threads:
        thread.join(5)
        part, mine = result["value"]
        assert not mine
        np.testing.assert_array_equal(part, data[need])


def test_try_claim_never_waits() -> None:
    cache = ChunkCache(1000)
    key, need = (0, 1), (slice(0, 4), slice(0, 4))
    assert cache.try_claim(key, need) == (None, "mine")
    assert cache.try_claim(key, need) == (None, "busy")  # another claimant is told, not kept waiting
    data = chunk(4)
    cache.done(key, data, None)
    part, state = cache.try_claim(key, need)
    assert state == "cached" and not cache.pending
    np.testing.assert_array_equal(part, data[need])


def test_many_threads_reading_overlapping_boxes_through_zarr_get_exact_samples() -> None:
    """The zarr-decoded path (any store but a local folder: here one in memory that counts the
    requests, as an object store would bill them) claims many chunks before reading them at
    once: threads reading overlapping boxes must neither wait on each other for ever nor get a
    wrong sample, and each chunk is fetched about once, not once per box touching it."""
    from concurrent.futures import ThreadPoolExecutor

    import zarr
    from zarr.storage import MemoryStore

    from convpipe.io.inputs import ArrayReader

    fetched: list[str] = []

    class Counting(MemoryStore):
        async def get(self, key, prototype, byte_range=None):  # type: ignore[no-untyped-def]
            if "/c/" in key or key.startswith("c/"):
                fetched.append(key)
            return await super().get(key, prototype, byte_range)

    data = np.random.default_rng(3).integers(0, 60000, (240, 200), dtype=np.uint16)
    store = Counting()
    zarr.create_array(store, shape=data.shape, chunks=(20, 20), dtype="u2")[...] = data
    reader = ArrayReader(zarr.open_array(store, mode="r"), "memory", None, 8 * 2**20)
    boxes = [
        (slice(max(y - 5, 0), min(y + 45, 240)), slice(max(x - 5, 0), min(x + 45, 200)))
        for y in range(0, 240, 40)
        for x in range(0, 200, 40)
    ]

    def one(box: tuple[slice, slice]) -> None:
        indices = [np.arange(box[0].start, box[0].stop), np.arange(box[1].start, box[1].stop)]
        np.testing.assert_array_equal(reader.read(indices), data[box])

    fetched.clear()
    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(one, box) for box in boxes]:
            future.result(timeout=60)
    assert reader.cache is not None and not reader.cache.pending
    chunks = (240 // 20) * (200 // 20)
    assert len(fetched) < 1.2 * chunks, f"{len(fetched)} requests for {chunks} chunks"


def test_a_read_that_fails_while_claiming_leaves_no_claim_pending() -> None:
    """Other threads wait on a pending claim with no timeout: a failure between claiming
    chunks and reading them must release every claim taken, or the run hangs."""
    import zarr
    from zarr.storage import MemoryStore

    from convpipe.io.inputs import ArrayReader

    store = MemoryStore()
    data = np.arange(80 * 80, dtype=np.float32).reshape(80, 80)
    zarr.create_array(store, shape=data.shape, chunks=(20, 20), dtype="f4")[...] = data
    reader = ArrayReader(zarr.open_array(store, mode="r"), "memory", None, 8 * 2**20)
    indices = [np.arange(0, 45), np.arange(0, 45)]
    reader.read(indices)  # the chunks it holds entirely are now cached whole: release is called next time
    assert reader.cache is not None

    def failing(*args: object) -> None:
        raise MemoryError("no room for the strips")

    reader.cache.release = failing  # type: ignore[method-assign]
    with pytest.raises(Exception, match="no room for the strips"):
        reader.read([np.arange(15, 65), np.arange(15, 65)])
    assert not reader.cache.pending


def test_blocks_the_size_of_chunks_decode_each_chunk_at_most_twice_without_a_chunk_cache(
    tmp_path: Path, decoded: collections.Counter[tuple[int, ...]]
) -> None:
    """Blocks of one chunk each (a local Zarr stored in 2048² chunks) read a halo from all
    eight neighbours. Without a whole-chunk budget (2-D's default), a chunk decoded for a halo
    before its owner ran leaves its strips on every face, so its other neighbours do not
    decode it again: once for the first neighbour, once for its owner, never a third time."""
    import zarr

    from convpipe.io import inputs

    data = np.random.default_rng(5).integers(0, 60000, (200, 240), dtype=np.uint16)
    zarr.create_array(tmp_path / "in.zarr", shape=data.shape, chunks=(40, 40), dtype="u2")[...] = data
    reader = inputs.ArrayReader(zarr.open_array(tmp_path / "in.zarr", mode="r"), "in.zarr", None, 0)
    halo = 3
    for y in range(0, 200, 40):  # row-major, as the blocks run
        for x in range(0, 240, 40):
            box = (slice(max(y - halo, 0), min(y + 40 + halo, 200)), slice(max(x - halo, 0), min(x + 40 + halo, 240)))
            indices = [np.arange(box[0].start, box[0].stop), np.arange(box[1].start, box[1].stop)]
            np.testing.assert_array_equal(reader.read(indices), data[box])
    assert reader.cache is not None and reader.cache.whole.limit == 0
    assert len(decoded) == (200 // 40) * (240 // 40)
    assert max(decoded.values()) <= 2, decoded.most_common(3)


def test_threads_opening_an_input_at_once_share_one_reader_and_its_cache(tmp_path: Path) -> None:
    """A process's first blocks start together: each opening a reader of its own would keep a
    cache of its own and decode the chunks they share once per reader."""
    import zarr

    from convpipe.io.inputs import InputSpec, forget_inputs, open_input

    zarr.create_array(tmp_path / "in.zarr", shape=(64, 64), chunks=(16, 16), dtype="u2")[...] = 1
    spec = InputSpec(str(tmp_path / "in.zarr"), cache_bytes=2**20)
    forget_inputs()
    start = threading.Barrier(8)
    readers: list[Any] = []

    def one() -> None:
        start.wait()
        readers.append(open_input(spec))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(readers) == 8 and len({id(reader) for reader in readers}) == 1
    forget_inputs()
