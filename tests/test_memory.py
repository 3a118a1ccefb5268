"""The allocator settings of the convpipe command (convpipe.memory): freed block buffers are
reused without being faulted in again, and free memory beyond what is in use goes back.

Each case runs in a fresh interpreter: mallopt settings last for the life of a process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from convpipe.memory import _libc, _mallinfo2

pytestmark = pytest.mark.skipif(
    _libc() is None or _mallinfo2() is None, reason="glibc >= 2.33 only (elsewhere these are no-ops)"
)

PRELUDE = """
import resource
import numpy as np
from convpipe import memory

MiB = 2**20
PAGE = resource.getpagesize()

def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE

def blocks(count, size=24 * MiB):
    # Buffers the size of a block's temporaries, every page written, as a filter writes them.
    return [np.ones(size // 4, dtype=np.float32) for _ in range(count)]
"""


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("tuned", [True, False])
def test_buffers_freed_at_the_top_of_the_heap_stay_for_the_next_block(tuned: bool) -> None:
    """Three block-sized buffers freed together: glibc alone hands them back to the system at
    free(), and the next block faults them in again, zeroed; the command's settings keep them.
    (Measured as resident memory: with transparent huge pages a fault count says little.)"""
    out = run_python(
        f"""
        if {tuned}:
            memory.tune_allocator()
        first = blocks(3)
        before = rss()
        del first
        print((before - rss()) / MiB)
        """
    )
    returned = float(out)
    if tuned:
        assert returned < 4, f"{returned:.0f} MiB went back to the system at free()"
    else:
        # The control: without the settings the same buffers do go (the test would otherwise
        # pass whatever tune_allocator does).
        assert returned > 64, f"only {returned:.0f} MiB of 72 MiB went back"


def test_free_memory_beyond_what_is_in_use_goes_back() -> None:
    out = run_python(
        """
        memory.tune_allocator()
        kept = blocks(2)  # in use: 48 MiB
        spare = blocks(8)  # 192 MiB, freed below
        del spare
        before = rss()
        memory.release_free_memory(slack=16 * MiB)
        print((before - rss()) / MiB)
        """
    )
    assert float(out) > 150, f"only {float(out):.0f} MiB of 192 MiB free went back"


@pytest.mark.parametrize("case", ["within the slack", "within what is in use"])
def test_free_memory_the_next_blocks_need_is_kept(case: str) -> None:
    slack, held, freed = (64, 1, 2) if case == "within the slack" else (16, 4, 2)
    out = run_python(
        f"""
        memory.tune_allocator()
        kept = blocks({held})
        spare = blocks({freed})
        del spare
        before = rss()
        memory.release_free_memory(slack={slack} * MiB)
        print((before - rss()) / MiB)
        """
    )
    assert float(out) < 4, f"{float(out):.0f} MiB went back"


@pytest.mark.parametrize("workers", [1, 3])
def test_a_run_keeps_the_working_memory_of_the_blocks_it_computes_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """Blocks computed side by side may all end together: the memory kept between blocks is
    that of as many blocks as the scheduler runs at once, so none is faulted in afresh."""
    import numpy as np
    import zarr

    from convpipe import engine
    from convpipe.config import from_dict
    from convpipe.run import make_plan, run

    zarr.create_array(tmp_path / "in.zarr", shape=(256, 256), chunks=(64, 64), dtype="u2")[...] = np.arange(
        256 * 256, dtype=np.uint16
    ).reshape(256, 256)
    config = from_dict(
        {
            "input": {"path": str(tmp_path / "in.zarr"), "chunks": [64, 64]},
            "output": {"path": str(tmp_path / "out.zarr")},
            "pipeline": [{"filter": "gaussian", "sigma": 2}, {"filter": "sobel"}],
        }
    )
    slacks: list[int] = []
    monkeypatch.setattr(engine, "release_free_memory", lambda slack=0: slacks.append(slack))
    run(config, scheduler_name="threads", workers=workers)
    per_block = make_plan(config).memory_per_block()
    assert len(slacks) == 16 and set(slacks) == {workers * per_block}, (slacks[:3], per_block)
