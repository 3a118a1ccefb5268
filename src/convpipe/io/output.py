"""What a run asks of an output format, whichever it is.

Each format is one module that owns its checks, creation, writing, finishing and status:
``zarr_output`` (Zarr and OME-Zarr: blocks in any order, each into its own chunk) and
``geotiff_output`` (one file, written in file order and published whole). ``run.py`` drives
either through these two protocols and decides the policy (what ``--overwrite`` and
``--resume`` may do with what is found), so a new format is one module and one line in
``output_for``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from convpipe.io.stores import Location

if TYPE_CHECKING:
    from convpipe.io.geotiff import GeoInfo
    from convpipe.io.lifecycle import LeaseKey
    from convpipe.plan import Plan


@dataclass(frozen=True)
class Found:
    """What is at an output's path before a run touches it.

    ``missing``: nothing (or only the lease records of a run that wrote nothing); ``ours``: a
    convpipe output, complete or not; ``replaceable``: something ``--overwrite`` may replace
    although convpipe did not make it (a single Zarr array); ``foreign``: anything else, with
    ``refusal`` saying what is there (a sentence that starts with the location)."""

    kind: Literal["missing", "ours", "replaceable", "foreign"]
    refusal: str = ""


class Output(Protocol):
    """What every format answers before anything is written."""

    location: Location
    streamed: bool  # True: written in file order, from rows of blocks (StreamOutput)

    def lock_place(self) -> tuple[Location, str]:
        """The folder or prefix that holds the lease, and the lease's prefix in it."""
        ...

    def found(self) -> Found: ...

    def read_status(self) -> dict[str, Any] | None:
        """The ``convpipe`` provenance of the output there, or None when it is not ours."""
        ...

    def records_left(self) -> bool:
        """Whether an output that reads as complete still holds block records: the run that
        marked it failed to finish after the mark (and said to resume)."""
        ...


class BlockOutput(Output, Protocol):
    """A format that takes blocks in any order, from any process (Zarr, OME-Zarr)."""

    def begin(
        self, plan: Plan, record: dict[str, Any], extra: dict[str, Any], name: str, *, keep: bool
    ) -> set[tuple[int, ...]]:
        """Create the output marked incomplete (``name``: the image's, for viewers), or with
        ``keep`` keep the blocks an interrupted run wrote; returns the blocks already there."""
        ...

    def writer(self, lease: LeaseKey) -> Any:
        """A small picklable handle every writer of this run passes to ``write_block``."""
        ...

    write_block: Callable[..., None]
    read_level: Callable[..., np.ndarray]  # the pyramid reads the level below ...
    write_level: Callable[..., None]  # ... and writes the next one

    def count_written(self) -> int: ...

    def settle(self, *, raise_errors: bool = True) -> None:
        """Wait until every block written so far is safely stored and recorded; raise the
        first failure, or with ``raise_errors=False`` (a run that fails anyway) none."""
        ...

    def finish(self) -> None:
        """Every block is written: mark the output complete."""
        ...

    def finish_again(self) -> None:
        """``finish`` once more, for an output that reads as complete but holds records
        (``records_left``): the mark written anew and synced, then the records removed."""
        ...


class StreamOutput(Output, Protocol):
    """A format written in one pass into a file published whole (GeoTIFF, COG)."""

    def block_order(self, plan: Plan) -> list[tuple[int, ...]]:
        """Every block index, in the order the writer takes them."""
        ...

    def write(
        self,
        blocks: Iterator[tuple[tuple[int, ...], np.ndarray]],
        plan: Plan,
        record: dict[str, Any],
        geo: GeoInfo | None,
        before_publish: Callable[[], None],
    ) -> None:
        """Write every block, given with its index in ``block_order``; publish only a whole
        file, after ``before_publish``."""
        ...


def output_for(plan: Plan, location: Location) -> BlockOutput | StreamOutput:
    """The output format the plan asks for, at ``location``."""
    from convpipe.io.cog_output import CogOutput
    from convpipe.io.geotiff_output import GeoTiffOutput
    from convpipe.io.zarr_output import ZarrOutput

    if plan.storage.format == "geotiff":
        return GeoTiffOutput(location)
    if plan.storage.format == "cog":
        return CogOutput(location)
    return ZarrOutput(location, plan.storage.format)
