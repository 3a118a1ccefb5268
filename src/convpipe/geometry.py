"""The arithmetic of padding, strides and halos: pure functions on integers and index arrays.

Everything here follows the README's "What it computes". For one step along one axis, with kernel size F, pads
P_before/P_after and stride S, an axis of length N becomes

    N_out = floor((N + P_before + P_after - F) / S) + 1

and output sample i reads the window of F padded samples that starts at padded position i*S,
that is input positions ``i*S - P_before ... i*S - P_before + F - 1``. Positions outside
``[0, N)`` hold padding, defined by the padding mode exactly as ``numpy.pad`` defines it.

No Dask and no I/O: the engine asks these functions which input samples a block needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Canonical padding modes, with the ``numpy.pad`` mode each one is.
PADDING_MODES: dict[str, str] = {
    "reflect": "reflect",
    "symmetric": "symmetric",
    "replicate": "edge",
    "wrap": "wrap",
    "zero": "constant",
    "constant": "constant",
}

#: Other names users know these modes by (PyTorch, OpenCV, scipy.ndimage).
PADDING_ALIASES: dict[str, str] = {
    "mirror": "reflect",
    "edge": "replicate",
    "nearest": "replicate",
    "circular": "wrap",
}

#: ``pad`` keywords and the (P_before, P_after) they give for a kernel of size F.
PAD_KEYWORDS = ("same", "valid", "full")

#: Marks a padded position that holds the constant value instead of an image sample.
CONSTANT = -1


def canonical_padding(name: str) -> str:
    """Resolve an alias (``mirror``, ``nearest``, ...) to its canonical padding mode."""
    name = PADDING_ALIASES.get(name, name)
    if name not in PADDING_MODES:
        raise ValueError(f"unknown padding {name!r}")
    return name


def pad_widths(pad: str | int, size: int) -> tuple[int, int]:
    """(P_before, P_after) for one axis: ``same`` puts the odd pixel after, as PyTorch does.

    >>> pad_widths("same", 4), pad_widths("valid", 3), pad_widths("full", 3), pad_widths(2, 5)
    ((1, 2), (0, 0), (2, 2), (2, 2))
    """
    if pad == "same":
        return (size - 1) // 2, size // 2
    if pad == "valid":
        return 0, 0
    if pad == "full":
        return size - 1, size - 1
    if isinstance(pad, int) and not isinstance(pad, bool) and pad >= 0:
        return pad, pad
    raise ValueError(f"pad must be same, valid, full or an integer >= 0 (got {pad!r})")


def output_length(n: int, size: int, pad_before: int, pad_after: int, stride: int) -> int:
    """N_out of the README's "What it computes"; may be < 1, which callers must reject."""
    return (n + pad_before + pad_after - size) // stride + 1


@dataclass(frozen=True)
class AxisStep:
    """One step along one axis: kernel size, pads, stride, and the lengths in and out."""

    size: int
    pad_before: int
    pad_after: int
    stride: int
    n_in: int

    @property
    def n_out(self) -> int:
        return output_length(self.n_in, self.size, self.pad_before, self.pad_after, self.stride)

    @property
    def halo_before(self) -> int:
        """Input samples before output block [a, b)'s own span [a*S, b*S) that it reads."""
        return self.pad_before

    @property
    def halo_after(self) -> int:
        """Input samples after the span [a*S, b*S); negative when the stride skips samples."""
        return self.size - self.pad_before - self.stride

    def formula(self) -> str:
        """The output-size formula with this axis's numbers, for error messages."""
        return (
            f"floor((N + P_before + P_after - F) / S) + 1 = "
            f"floor(({self.n_in} + {self.pad_before} + {self.pad_after} - {self.size}) "
            f"/ {self.stride}) + 1 = {self.n_out}"
        )


def chain_halo(steps: Sequence[AxisStep]) -> tuple[int, int, int]:
    """Total (stride, halo_before, halo_after) of a chain along one axis, in input samples.

    Output block [a, b) of the last step reads input [a*S - before, b*S + after) away from
    the image border, where S is the product of the strides.
    """
    stride, before, after = 1, 0, 0
    for step in reversed(steps):
        before = before * step.stride + step.halo_before
        after = after * step.stride + step.halo_after
        stride *= step.stride
    return stride, before, after


def padding_source(positions: np.ndarray, n: int, mode: str) -> np.ndarray:
    """The input index each position holds after ``numpy.pad`` with ``mode``; CONSTANT if none.

    ``positions`` are input coordinates: negative before the image, >= n after it. Padding
    deeper than the axis repeats the rule, as numpy.pad does: reflect and symmetric are
    periodic with period 2(n-1) and 2n, wrap with period n.

    >>> padding_source(np.arange(-2, 6), 4, "reflect").tolist()  # row a b c d -> c b a b c d c b
    [2, 1, 0, 1, 2, 3, 2, 1]
    """
    positions = np.asarray(positions, dtype=np.int64)
    mode = canonical_padding(mode)
    if mode in ("zero", "constant"):
        return np.where((positions >= 0) & (positions < n), positions, CONSTANT)
    if mode == "replicate":
        return np.clip(positions, 0, n - 1)
    if mode == "wrap":
        return positions % n
    if mode == "symmetric":
        folded = positions % (2 * n)
        return np.where(folded < n, folded, 2 * n - 1 - folded)
    if n == 1:  # reflect about a single sample leaves only that sample
        return np.zeros_like(positions)
    folded = positions % (2 * (n - 1))
    return np.where(folded < n, folded, 2 * (n - 1) - folded)


def runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """Split sorted unique indices into maximal runs of consecutive integers, as [start, stop)."""
    if len(indices) == 0:
        return []
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(indices)]])
    return [(int(indices[s]), int(indices[e - 1]) + 1) for s, e in zip(starts, stops, strict=True)]


@dataclass(frozen=True)
class AxisGather:
    """How to turn one step's available input samples into the windows its outputs need.

    ``take`` indexes the step's input as held (positions in ``have``; ``len(have)`` means the
    constant value). Applying a valid, strided window operation to the gathered samples gives
    outputs whose positions ``keep`` are the wanted ones, in order. A ``take`` that is a plain
    range is returned as a slice so interior blocks are views, not copies.
    """

    take: slice | np.ndarray
    keep: slice | np.ndarray
    needs_constant: bool


def axis_windows(wanted: np.ndarray, step: AxisStep) -> np.ndarray:
    """Input positions (padding coordinates allowed) the wanted outputs read, sorted unique."""
    starts = wanted * step.stride - step.pad_before
    return np.unique((starts[:, None] + np.arange(step.size)[None, :]).ravel())


def axis_needs(wanted: np.ndarray, step: AxisStep, mode: str) -> np.ndarray:
    """The step's input samples (real indices in [0, n_in)) that the wanted outputs depend on."""
    sources = padding_source(axis_windows(wanted, step), step.n_in, mode)
    return np.unique(sources[sources != CONSTANT])


def axis_gather(wanted: np.ndarray, have: np.ndarray, step: AxisStep, mode: str) -> AxisGather:
    """Plan the gather of windows for the wanted outputs from the samples in ``have``.

    Each run of consecutive wanted outputs becomes one contiguous stretch of padded samples,
    its length rounded up to a multiple of the stride so every stretch starts on a stride
    boundary: one valid, strided pass over the concatenation then yields every wanted output
    (plus a few straddling ones in between, which ``keep`` drops).
    """
    size, stride = step.size, step.stride
    # Samples no window reads (skipped by a stride wider than the kernel, or filler) may hold
    # anything: point them at a sample the block has.
    spare = int(have[0]) if len(have) else CONSTANT
    takes: list[np.ndarray] = []
    keeps: list[np.ndarray] = []
    offset = 0
    for start, stop in runs(wanted):
        length = (stop - start - 1) * stride + size
        padded_length = -(-length // stride) * stride
        first = start * stride - step.pad_before
        offsets = np.arange(padded_length)
        read = (offsets % stride < size) & (offsets < length)
        takes.append(np.where(read, padding_source(first + offsets, step.n_in, mode), spare))
        keeps.append(offset // stride + np.arange(stop - start))
        offset += padded_length
    sources = np.concatenate(takes)
    keep: slice | np.ndarray = np.concatenate(keeps)
    if len(keeps) == 1:
        # One run: trim the filler so the pass yields exactly the wanted outputs.
        sources = sources[: (len(wanted) - 1) * stride + size]
        keep = slice(None)
    constant = sources == CONSTANT
    local = np.searchsorted(have, sources)
    local[constant] = len(have)
    take: slice | np.ndarray = local
    if not constant.any() and (np.diff(local) == 1).all():
        take = slice(int(local[0]), int(local[-1]) + 1)
    return AxisGather(take=take, keep=keep, needs_constant=bool(constant.any()))
