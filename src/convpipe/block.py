"""One output block of a whole chain, computed from the input samples it depends on.

This is the fused kernel: the block reads its input once (with the halo of the whole chain),
then each step gathers its padded windows from what the previous step produced and runs its
operation. Each step pads its own input exactly as numpy.pad would pad the whole
intermediate image, so the block equals the whole-image result whatever the chunking.
Plain numpy: the engine runs it inside Dask tasks, the tests call it directly.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from convpipe.geometry import CONSTANT, AxisGather, AxisStep, axis_gather, axis_needs, padding_source
from convpipe.nodata import Policy
from convpipe.nodata import run as nodata_step
from convpipe.ops import apply_op
from convpipe.plan import StepPlan

Reader = Callable[[Sequence[np.ndarray]], np.ndarray]
ValueRange = tuple[float, float]


def needed_indices(steps: Sequence[StepPlan], block: Sequence[tuple[int, int]]) -> list[list[np.ndarray]]:
    """Per step, per axis: the indices of that step's input the block depends on.

    Entry ``k`` is for step k's input; the last entry is the block itself (the chain's output).
    Near a border the padding folds positions back into the image, so these are index sets,
    not always ranges (``wrap`` needs the far side of the image).
    """
    wanted = [np.arange(start, stop) for start, stop in block]
    needs = [wanted]
    for step in reversed(steps):
        padding = step.config.padding
        wanted = [_axis_needs(w, axis, padding) for w, axis in zip(wanted, step.axes, strict=True)]
        needs.append(wanted)
    return needs[::-1]


def _axis_needs(wanted: np.ndarray, axis: AxisStep, padding: str) -> np.ndarray:
    """``geometry.axis_needs``, without its window-by-window union for a run of outputs.

    The windows of consecutive outputs overlap (or touch) when the stride is at most the
    kernel size, so together they read one range of positions.
    """
    if len(wanted) and wanted[-1] - wanted[0] == len(wanted) - 1 and axis.stride <= axis.size:
        low = int(wanted[0]) * axis.stride - axis.pad_before
        high = int(wanted[-1]) * axis.stride - axis.pad_before + axis.size
        if low >= 0 and high <= axis.n_in:
            return np.arange(low, high)
        sources = padding_source(np.arange(low, high), axis.n_in, padding)
        return np.unique(sources[sources != CONSTANT])
    return axis_needs(wanted, axis, padding)


def run_step(
    step: StepPlan,
    data: np.ndarray,
    have: Sequence[np.ndarray],
    wanted: Sequence[np.ndarray],
    value_range: ValueRange | None,
    finite: bool = True,
) -> np.ndarray:
    """Gather the windows of the wanted outputs from ``data`` (holding ``have``) and apply.

    ``finite``: ``data`` holds no NaN or infinity (it lets kernels take their fast paths).
    """
    if any(len(w) == 0 for w in wanted):
        # Every output this block needs from here on comes from constant padding.
        return np.empty(tuple(len(w) for w in wanted), dtype=data.dtype)
    window, gathers = gather_window(step, data, have, wanted)
    return apply_step(step, window, gathers, value_range, finite)


def gather_window(
    step: StepPlan,
    data: np.ndarray,
    have: Sequence[np.ndarray],
    wanted: Sequence[np.ndarray],
    cval: float | None = None,
) -> tuple[np.ndarray, list[AxisGather]]:
    """The step's padded window (a view of ``data`` away from the image border) and its
    gathers; ``cval`` replaces the step's constant (the validity of padding is 1)."""
    cval = step.config.cval if cval is None else cval
    gathers = [axis_gather(w, h, axis, step.config.padding) for w, h, axis in zip(wanted, have, step.axes, strict=True)]
    window = _gather_runs(data, [g.take for g in gathers], cval)
    if window is not None:
        return window, gathers
    window = data
    for axis, gather in enumerate(gathers):
        if gather.needs_constant:
            shape = list(window.shape)
            shape[axis] = 1
            fill = np.full(shape, cval, dtype=window.dtype)
            window = np.concatenate([window, fill], axis=axis)
        if isinstance(gather.take, slice):
            window = window[(slice(None),) * axis + (gather.take,)]
        else:
            window = np.take(window, gather.take, axis=axis)
    return window, gathers


def apply_step(
    step: StepPlan,
    window: np.ndarray,
    gathers: Sequence[AxisGather],
    value_range: ValueRange | None,
    finite: bool = True,
) -> np.ndarray:
    """Apply the step's operation to its gathered window and keep the wanted outputs."""
    # NaN and infinity follow IEEE arithmetic on purpose: no warnings about them.
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        result = apply_op(step.op, window, tuple(a.stride for a in step.axes), value_range, finite)
    return _kept(result, gathers)


def _kept(result: np.ndarray, gathers: Sequence[AxisGather]) -> np.ndarray:
    for axis, gather in enumerate(gathers):
        if not isinstance(gather.keep, slice):
            result = np.take(result, gather.keep, axis=axis)
    return result


#: A border gather is copied run by run (a run: consecutive, reversed or repeated samples,
#: or the constant) into one array, when it has at most this many pieces; else np.take.
MAX_GATHER_PIECES = 256


def _gather_runs(data: np.ndarray, takes: Sequence[slice | np.ndarray], cval: float) -> np.ndarray | None:
    """The window ``data`` indexed by ``takes`` (index ``len`` along an axis: the constant).

    All slices: a view. Otherwise one array, filled by slice copies (at an image border,
    reflect is a reversed run then the block): not one block-sized copy per padded axis.
    None when the index splits into too many runs.
    """
    if all(isinstance(t, slice) for t in takes):
        return data[tuple(takes)]
    pieces: list[list[tuple[slice, slice | None]]] = []
    shape = []
    for take, n in zip(takes, data.shape, strict=True):
        if isinstance(take, slice):
            pieces.append([(slice(None), take)])
            shape.append(len(range(*take.indices(n))))
            continue
        runs = _runs(np.asarray(take), n)
        if runs is None:
            return None
        pieces.append(runs)
        shape.append(len(take))
    if math.prod(len(p) for p in pieces) > MAX_GATHER_PIECES:
        return None
    out = np.empty(tuple(shape), dtype=data.dtype)
    for combination in itertools.product(*pieces):
        target = tuple(t for t, _ in combination)
        sources = [s for _, s in combination]
        if any(s is None for s in sources):
            out[target] = cval
        else:
            out[target] = data[tuple(sources)]  # type: ignore[index]
    return out


def _runs(take: np.ndarray, n: int) -> list[tuple[slice, slice | None]] | None:
    """Split a gather index into (target, source) slices: runs of consecutive, reversed or
    repeated indices (a repeated one is broadcast), or of the constant (source None)."""
    runs: list[tuple[slice, slice | None]] = []
    start = 0
    while start < len(take):
        if len(runs) == MAX_GATHER_PIECES:
            return None
        rest = take[start:]
        first = int(rest[0])
        if first == n:
            others = np.flatnonzero(rest != n)
            length = int(others[0]) if len(others) else len(rest)
            runs.append((slice(start, start + length), None))
            start += length
            continue
        step = int(rest[1]) - first if len(rest) > 1 and rest[1] != n else 0
        if step not in (-1, 0, 1):
            step = 0
        breaks = np.flatnonzero((np.diff(rest) != step) | (rest[1:] == n))
        length = int(breaks[0]) + 1 if len(breaks) else len(rest)
        last = first + step * (length - 1)
        if step == 0:
            source = slice(first, first + 1)  # broadcast over the run
        elif step == 1:
            source = slice(first, last + 1)
        else:
            source = slice(first, last - 1 if last >= 1 else None, -1)
        runs.append((slice(start, start + length), source))
        start += length
    return runs


def compute_block(
    steps: Sequence[StepPlan],
    read: Reader,
    block: Sequence[tuple[int, int]],
    compute_dtype: np.dtype,
    value_ranges: Sequence[ValueRange | None] | None = None,
    integer_input: bool = False,
    read_into: Callable[[Sequence[np.ndarray], np.ndarray], np.ndarray] | None = None,
    first: FirstWindow | None = None,
) -> np.ndarray:
    """The chain's output over ``block`` (one [start, stop) per axis), in ``compute_dtype``.

    ``integer_input``: the input holds integers (always finite). ``read_into(indices, out)``,
    if given, reads into ``out`` (converting): the first step's padded window is then read in
    place, its padding copied from the samples read, without a block-sized gather. ``first``:
    that window, already read (and its finiteness known).
    """
    needs = needed_indices(steps, block)
    if first is None:
        first = first_window(steps, needs, read_into, compute_dtype)
    window: np.ndarray | None = None
    if first is not None:
        known = first.finite
        window, gathers = first.take()
        finite = integer_input or (known if known is not None else bool(np.isfinite(window).all()))
        data = window
    else:
        raw = np.asarray(read(needs[0]))
        # Integers are always finite; float input is checked once. Every parameter (cval,
        # threshold values, weights) is finite, so finite input stays finite (overflow aside).
        finite = integer_input or raw.dtype.kind in "biu" or bool(np.isfinite(raw).all())
        data = raw.astype(compute_dtype, copy=False)
        del raw  # the input samples, if converted: not held while the steps run
    del first
    for k, step in enumerate(steps):
        value_range = value_ranges[k] if value_ranges is not None else None
        if k == 0 and window is not None:
            del data
            data = apply_step(step, window, gathers, value_range, finite)
            window = None
        elif any(len(w) == 0 for w in needs[k + 1]):
            data = run_step(step, data, needs[k], needs[k + 1], value_range, finite)
        else:
            window, gathers = gather_window(step, data, needs[k], needs[k + 1])
            del data  # a gathered copy holds what the step needs: free its input now
            data = apply_step(step, window, gathers, value_range, finite)
            window = None
        if value_range is not None and not all(math.isfinite(v) for v in value_range):
            finite = False  # rescaling by an infinite range makes NaN of finite pixels
    return data


@dataclass
class FirstWindow:
    """The first step's padded window, read in place, with its gathers."""

    window: np.ndarray | None
    gathers: list[AxisGather]
    finite: bool | None = None  # None: not looked at yet

    def take(self) -> tuple[np.ndarray, list[AxisGather]]:
        """The window, no longer held here: the chain frees it once the first step has run."""
        window, self.window = self.window, None
        assert window is not None, "a first window is taken once"
        return window, self.gathers


def first_window(
    steps: Sequence[StepPlan],
    needs: Sequence[Sequence[np.ndarray]],
    read_into: Callable[[Sequence[np.ndarray], np.ndarray], np.ndarray] | None,
    compute_dtype: np.dtype,
) -> FirstWindow | None:
    """The first step's padded window read straight from storage, or None where that is not
    possible (no ``read_into``, a block whose outputs all come from padding, ``wrap``)."""
    if read_into is None or not steps or not all(len(w) for w in needs[1]):
        return None
    step = steps[0]
    gathers = [
        axis_gather(w, h, axis, step.config.padding) for w, h, axis in zip(needs[1], needs[0], step.axes, strict=True)
    ]
    window = _read_padded(read_into, needs[0], gathers, step.config.cval, compute_dtype)
    return None if window is None else FirstWindow(window, gathers)


def all_valid(data: np.ndarray, nodata: float | None) -> bool:
    """``valid_samples(data, nodata).all()`` without a block-sized mask: the minimum and
    maximum are NaN if any sample is, infinite if any is, and bracket ``nodata`` if it may
    occur (it usually lies outside the data's range: -9999, or 0 below reflectances)."""
    if not data.size:
        return True
    low, high = float(np.min(data)), float(np.max(data))
    if data.dtype.kind == "f" and not (math.isfinite(low) and math.isfinite(high)):
        return False
    if nodata is None or math.isnan(nodata):
        return True
    with np.errstate(over="ignore"):
        stored = float(data.dtype.type(nodata)) if data.dtype.kind == "f" else nodata  # as == compares
    if not low <= stored <= high:
        return True
    return not bool((data == nodata).any())


def valid_samples(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """Which samples hold data: not ``nodata`` and, with nodata tracked, finite."""
    if data.dtype.kind in "biu":
        if nodata is None or math.isnan(nodata):
            return np.ones(data.shape, dtype=bool)
        return data != nodata
    valid = np.isfinite(data)
    if nodata is not None and not math.isnan(nodata):
        valid &= data != nodata
    return valid


def compute_block_masked(
    steps: Sequence[StepPlan],
    read: Reader,
    block: Sequence[tuple[int, int]],
    compute_dtype: np.dtype,
    nodata: float | None,
    value_ranges: Sequence[ValueRange | None] | None = None,
    integer_input: bool = False,
    read_into: Callable[[Sequence[np.ndarray], np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``compute_block`` with nodata (README, "Nodata"): the chain's output over ``block`` and
    which of its samples are valid (None: all of them). A block whose samples are all valid runs exactly as
    ``compute_block`` does, reading as it does; otherwise each step runs through
    ``convpipe.nodata`` on the data (nodata samples set to 0, so kernels stay on their finite
    paths) and its validity."""
    needs = needed_indices(steps, block)
    first = first_window(steps, needs, read_into, compute_dtype)
    if first is not None:
        assert first.window is not None
        if all_valid(first.window, nodata):  # no nodata here: the path of an image without nodata
            first.finite = True
            return compute_block(steps, read, block, compute_dtype, value_ranges, integer_input, first=first), None
        valid = valid_samples(first.window, nodata)
        step = steps[0]
        if step.config.padding not in ("constant", "zero") and step.config.nodata != "fill":
            # Padding copies samples, so the window's validity is its samples' own: the
            # first step runs on the window read, with no second read or gather.
            window, gathers = first.take()
            del first
            window[~valid] = 0
            result, ok = _masked_step(step, window, valid.astype(compute_dtype), gathers, value_ranges, 0)
            del window, valid
            return _masked_steps(steps, needs, result, ok, compute_dtype, value_ranges, start=1)
        del first, valid
    raw = np.asarray(read(needs[0]))
    if all_valid(raw, nodata):
        return compute_block(
            steps, lambda _, samples=raw: samples, block, compute_dtype, value_ranges, integer_input
        ), None
    valid = valid_samples(raw, nodata)
    data = raw.astype(compute_dtype)  # a copy: nodata samples are overwritten
    del raw
    data[~valid] = 0
    return _masked_steps(steps, needs, data, valid, compute_dtype, value_ranges, start=0)


def _masked_step(
    step: StepPlan,
    window: np.ndarray,
    validity: np.ndarray,
    gathers: Sequence[AxisGather],
    value_ranges: Sequence[ValueRange | None] | None,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One step on a window holding nodata (set to 0) and its validity (1 or 0): the kept
    outputs, nodata ones set to 0, and their validity."""
    value_range = value_ranges[k] if value_ranges is not None else None
    policy = Policy(step.config.nodata, step.config.min_valid, step.config.fill_value)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        result, ok = nodata_step(step.op, window, validity, tuple(a.stride for a in step.axes), value_range, policy)
    data, valid = _kept(result, gathers), _kept(ok, gathers)
    if not data.flags.writeable or np.may_share_memory(data, window):
        data = data.copy()
    data[~valid] = 0
    return data, valid


def _masked_steps(
    steps: Sequence[StepPlan],
    needs: Sequence[Sequence[np.ndarray]],
    data: np.ndarray,
    valid: np.ndarray,
    compute_dtype: np.dtype,
    value_ranges: Sequence[ValueRange | None] | None,
    start: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Steps ``start`` onwards of a block with nodata (``data`` holds 0 where not ``valid``)."""
    for k in range(start, len(steps)):
        step = steps[k]
        value_range = value_ranges[k] if value_ranges is not None else None
        if step.config.nodata == "fill" and not valid.all():
            assert step.config.fill_value is not None  # the config requires it
            data[~valid] = step.config.fill_value
            valid = np.ones(valid.shape, dtype=bool)
        if any(len(w) == 0 for w in needs[k + 1]):
            data = run_step(step, data, needs[k], needs[k + 1], value_range)
            valid = np.ones(data.shape, dtype=bool)
            continue
        if valid.all():
            window, gathers = gather_window(step, data, needs[k], needs[k + 1])
            data = apply_step(step, window, gathers, value_range)
            valid = np.ones(data.shape, dtype=bool)
            continue
        window, gathers = gather_window(step, data, needs[k], needs[k + 1])
        del data  # the window (a view of it, or a gathered copy) holds what the step needs
        validity, _ = gather_window(step, valid.astype(compute_dtype), needs[k], needs[k + 1], cval=1.0)
        del valid
        data, valid = _masked_step(step, window, validity, gathers, value_ranges, k)
        del window, validity
    return data, valid


def _read_padded(
    read_into: Callable[[Sequence[np.ndarray], np.ndarray], np.ndarray],
    have: Sequence[np.ndarray],
    gathers: Sequence[AxisGather],
    cval: float,
    dtype: np.dtype,
) -> np.ndarray | None:
    """A step's padded window over the samples ``have``, read from storage into place.

    Along each axis the window's longest ascending run of samples is read (one box, all
    axes at once); every other run (a border's reflection, a repeated edge, the constant)
    lies within it and is copied from it afterwards, axis after axis. None when an axis
    has no such layout (``wrap`` reads the far side of the image).
    """
    layout = []
    lengths = []
    for gather, h in zip(gathers, have, strict=True):
        take = gather.take
        if isinstance(take, slice):
            start, stop, step = take.indices(len(h))
            if step != 1 or stop <= start:
                return None
            layout.append((slice(0, stop - start), slice(start, stop), []))
            lengths.append(stop - start)
            continue
        lengths.append(len(take))
        take = np.asarray(take)
        start, stop = _longest_ascending(take, len(h))
        if stop - start < 2:
            return None
        main = (slice(start, stop), slice(int(take[start]), int(take[stop - 1]) + 1))
        before_runs, after_runs = _runs(take[:start], len(h)), _runs(take[stop:], len(h))
        if before_runs is None or after_runs is None:
            return None
        others = before_runs + [(slice(t.start + stop, t.stop + stop), src) for t, src in after_runs]
        for _, source in others:
            if source is not None:
                first, last = _run_ends(source)
                if min(first, last) < main[1].start or max(first, last) >= main[1].stop:
                    return None
        layout.append((main[0], main[1], others))
    window = np.empty(tuple(lengths), dtype=dtype)
    read_into([h[s] for h, (_, s, _) in zip(have, layout, strict=True)], window[tuple(t for t, _, _ in layout)])
    for axis, (target, source, others) in enumerate(layout):
        offset = target.start - source.start
        before = (slice(None),) * axis
        for piece, origin in others:
            if origin is None:
                window[(*before, piece)] = cval
                continue
            first, last = _run_ends(origin)
            step = -1 if last < first else 1
            stop = last + offset + step
            window[(*before, piece)] = window[(*before, slice(first + offset, stop if stop >= 0 else None, step))]
    return window


def _longest_ascending(take: np.ndarray, n: int) -> tuple[int, int]:
    """[start, stop) of the longest stretch of ``take`` holding consecutive samples (not the
    constant, index ``n``)."""
    step = (np.diff(take) == 1) & (take[:-1] != n) & (take[1:] != n)
    if not step.any():
        return 0, min(1, len(take)) if len(take) and take[0] != n else 0
    edges = np.flatnonzero(np.diff(np.concatenate([[0], step.astype(np.int8), [0]])))
    starts, stops = edges[::2], edges[1::2]
    best = int(np.argmax(stops - starts))
    return int(starts[best]), int(stops[best]) + 1


def _run_ends(source: slice) -> tuple[int, int]:
    """First and last index of a run's source slice (see _runs)."""
    if source.step == -1:
        return source.start, (source.stop + 1 if source.stop is not None else 0)
    return source.start, source.stop - 1


def to_dtype(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast for writing: integers are rounded to nearest and clipped, never wrapped; NaN is 0.

    float64 cannot hold int64's or uint64's maximum (2**63 - 1 rounds up to 2**63, where a
    cast wraps), so values at or above 2**63 (2**64) are set to the maximum after the cast.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return data.astype(dtype, copy=False)
    info = np.iinfo(dtype)
    if data.dtype.kind in "iu":  # an integer chain (plan.compute_dtype): clip in integers
        if data.dtype == dtype:
            return data
        source = np.iinfo(data.dtype)
        low, high = max(info.min, source.min), min(info.max, source.max)
        return np.clip(data, data.dtype.type(low), data.dtype.type(high)).astype(dtype)
    # float32 cannot hold 2**31 - 1 exactly: clip wide integer types in float64.
    rounded = np.rint(data.astype(np.float64) if info.bits >= 32 else data)
    if info.bits < 64:
        np.clip(rounded, info.min, info.max, out=rounded)
        np.nan_to_num(rounded, copy=False, nan=0.0)
        return rounded.astype(dtype)
    top = 2.0 ** (info.bits - 1 if info.kind == "i" else info.bits)  # max + 1, exact in float64
    over = rounded >= top
    np.clip(rounded, float(info.min), np.nextafter(top, 0.0), out=rounded)  # both castable exactly
    np.nan_to_num(rounded, copy=False, nan=0.0)
    out = rounded.astype(dtype)
    out[over] = info.max
    return out
