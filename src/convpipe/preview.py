"""``convpipe preview``: a PNG of the input and the chain's output side by side.

One panel each, with a title and a colour bar, both drawn in the input's coordinates (pixels,
or the physical units its file gives: OME-Zarr, OME-TIFF, GeoTIFF) so the two panels line up.
With a region only the blocks that region needs are computed; without one, both panels are a
block-wise mean of the whole image (at most ``max_size`` pixels along the long side), computed
by Dask block by block so memory stays bounded.

Which pixels are shown:

* The last two spatial axes (y, x) are drawn. An earlier spatial axis (z) shows one slice: the
  middle one, or the middle of the region's z range. Non-spatial axes (t, c) show index 0.
* The input panel shows the region as given, in input pixels ``[start, stop)`` per axis.
* The output panel shows the output samples *whose input position falls in the region*. The
  input position of output sample j is the centre of the input window it is computed from:
  through a chain of steps with kernel size F, pad P_before and stride S it is
  ``j * S_total + offset``, where ``S_total`` is the product of the strides and ``offset`` adds
  up ``(F - 1)/2 - P_before`` of each step, times the product of the strides before it (0 for
  odd kernels with ``pad: same``). So with ``pad: same`` output j sits at input ``j * S_total``;
  a ``pad: valid`` 5x5 kernel's output j sits at input j + 2; a 4x4 ``valid`` box with stride 4
  averages input 4j..4j+3 and sits at 4j + 1.5. If no output sample falls inside a range
  (a range narrower than the stride), the one nearest the range's centre is shown. The z slice
  of the output is the output sample whose position is the input's z slice, or the nearest.
  Without a region the whole output is shown.
* Each panel is shrunk by the same integer factor along both axes (the mean of f x f pixels;
  the last ``n % f`` pixels along an axis are left out) until its long side is at most
  ``max_size``; a small region is shown pixel for pixel.
* Contrast: each panel's colours span its own 1st to 99th percentile (``percentiles``); values
  beyond are drawn in the end colours (the colour bar's arrows).
* Nodata: when the plan tracks nodata (``Plan.masked``: the input declares a value, or a float
  input's steps ``ignore`` or ``fill`` it), nodata samples are drawn in ``nodata_colour``
  (magenta) in both panels and left out of the percentiles, and each title says the colour
  and the share of the panel it covers. In the input they are the samples equal to
  ``Plan.nodata``, and NaN and infinities in a float input; in the output, the samples equal
  to ``Plan.output_nodata`` (what the run writes for them), and NaN in a float output. A
  shrunk pixel is the mean of its valid samples, nodata when it has none (as the COG's
  ``average`` overviews).

A chain with ``rescale`` still needs its global range pass over the whole image first.
"""

from __future__ import annotations

import math
import os
import textwrap
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convpipe import config as config_module
from convpipe import coords
from convpipe.config import Config
from convpipe.errors import ConfigError, RunError
from convpipe.io.inputs import ArrayReader, open_input
from convpipe.plan import Plan
from convpipe.run import input_spec, make_plan

if TYPE_CHECKING:
    import dask.array as da

#: Default longest side of a panel, in shown pixels.
MAX_SIZE = 1024

#: What nodata samples are drawn in: a colour no grey map (the default) and few others use.
NODATA_COLOUR = "magenta"

#: Panels are drawn at least this many screen pixels along the long side (small regions are
#: enlarged, pixel for pixel, with nearest-neighbour interpolation).
MIN_DRAWN = 512

#: The figure's resolution, raised so that a panel of more than PANEL_INCHES * DPI shown
#: pixels is still drawn pixel for pixel.
DPI = 100
PANEL_INCHES = 6.4

#: The fixed layout, in inches: room for tick labels and axis labels, the colour bar with its
#: labels, the heading; a panel is never smaller than MIN_BOX.
MARGIN_LEFT, MARGIN_MIDDLE, MARGIN_RIGHT, MARGIN_BOTTOM, HEADING = 0.9, 0.25, 0.1, 0.65, 0.4
COLOUR_BAR = 1.35
MIN_BOX = 2.2

Index = tuple[int | slice, ...]


@dataclass(frozen=True)
class PreviewResult:
    """What was drawn: the two panels' arrays and where they come from.

    ``input`` and ``output`` are exactly the 2-D arrays the panels show (for a region shown
    pixel for pixel, the input's and the output's own values and dtypes; when shrunk, float64
    means). ``input_index`` and ``output_index`` index the full input and output arrays (one
    entry per axis; ints for the fixed t, c and z) for the part shown, before shrinking by
    ``input_factor`` / ``output_factor``. Extents are ``(left, right, bottom, top)`` in input
    pixel coordinates (pixel i's centre is at i), as ``matplotlib.pyplot.imshow`` takes them;
    the drawn axes show the input's physical coordinates instead when its file has them (OME-Zarr,
    OME-TIFF, GeoTIFF), as ``axis_labels`` says. Limits are each panel's colour range.

    ``input_nodata`` and ``output_nodata`` are the panels' nodata masks (True: drawn in the
    nodata colour), None when the plan tracks no nodata. Where a shrunk panel is nodata its
    array holds NaN; shown pixel for pixel it holds the sample as stored (-9999, say).
    """

    path: Path
    input: np.ndarray
    output: np.ndarray
    input_index: Index
    output_index: Index
    input_factor: int
    output_factor: int
    input_extent: tuple[float, float, float, float]
    output_extent: tuple[float, float, float, float]
    input_limits: tuple[float, float]
    output_limits: tuple[float, float]
    input_title: str
    output_title: str
    axis_labels: tuple[str, str]
    seconds: float
    input_nodata: np.ndarray | None = None
    output_nodata: np.ndarray | None = None


# --- which samples --------------------------------------------------------------------------


def axis_position(plan: Plan, axis: int) -> tuple[int, Fraction]:
    """(S_total, offset) along ``axis``: output sample j sits at input position j*S_total + offset.

    ``Plan.sample_frame`` has them (``convpipe.coords``); offsets are whole or half samples,
    exact in floating point.
    """
    frame = plan.sample_frame[axis]
    return round(frame.scale), Fraction(frame.translation)


def output_range(plan: Plan, axis: int, start: int, stop: int) -> tuple[int, int]:
    """The output samples [lo, hi) along ``axis`` whose input position lies in [start, stop).

    If none does, the single sample nearest the range's centre (never an empty range).
    """
    stride, offset = axis_position(plan, axis)
    n_out = plan.output_shape[axis]
    lo = min(max(math.ceil((start - offset) / stride), 0), n_out)
    hi = min(max(math.ceil((stop - offset) / stride), 0), n_out)
    if hi > lo:
        return lo, hi
    centre = Fraction(start + stop - 1, 2)
    nearest = min(max(math.floor((centre - offset) / stride + Fraction(1, 2)), 0), n_out - 1)
    return nearest, nearest + 1


def _shown_axes(plan: Plan) -> tuple[int, int]:
    spatial = plan.spatial
    if len(spatial) < 2:
        raise ConfigError(
            f"preview: needs two spatial axes to draw an image; the input's axes are {plan.axes!r} "
            f"(shape {plan.input_shape})"
        )
    return spatial[-2], spatial[-1]


def _allowed(plan: Plan) -> str:
    """The --region forms this input takes, for error messages."""
    spatial = plan.spatial
    letters = [plan.axes[d] for d in spatial]
    whole = ",".join(f"0:{plan.input_shape[d]}" for d in spatial)
    form = ",".join(f"{letter}0:{letter}1" for letter in letters)
    if len(spatial) > 2:
        short = ",".join(f"{letter}0:{letter}1" for letter in letters[-2:])
        return f"{form} or {short} (middle {letters[0]} slice), within {whole}"
    return f"{form}, within {whole}"


def parse_region(region: str | Sequence[slice | int] | None, plan: Plan) -> tuple[tuple[int, int], ...]:
    """One [start, stop) per spatial axis, checked against the input's shape.

    ``region`` is text like ``"4096:6144,4096:6144"`` (``--region``), or a tuple of slices or
    ints like ``numpy.s_[4096:6144, 4096:6144]``; one entry per spatial axis, or for 3-D data
    just y and x (then z is the whole axis, i.e. the middle slice is shown). An empty start or
    stop means the axis's start or end (``:,100:200``); a single number N means N:N+1.
    None: the whole image.
    """
    spatial = plan.spatial
    shape = plan.input_shape
    if region is None:
        return tuple((0, shape[d]) for d in spatial)
    text = region if isinstance(region, str) else ",".join(_slice_text(part) for part in region)
    where = f"--region {text}"
    parts = [part.strip() for part in text.split(",")]
    bounds = []
    for part in parts:
        pieces = [piece.strip() for piece in part.split(":")]
        try:
            if len(pieces) == 1:
                bounds.append((int(pieces[0]), int(pieces[0]) + 1))
            elif len(pieces) == 2:
                bounds.append((int(pieces[0]) if pieces[0] else None, int(pieces[1]) if pieces[1] else None))
            else:
                raise ValueError(part)
        except ValueError:
            raise ConfigError(
                f"{where}: {part!r} is not a range like start:stop (whole numbers); allowed: {_allowed(plan)}"
            ) from None
    if len(parts) != len(spatial) and not (len(spatial) > 2 and len(parts) == 2):
        names = ", ".join(plan.axes[d] for d in spatial)
        raise ConfigError(
            f"{where}: gives {len(parts)} range{'s' if len(parts) != 1 else ''} but the input has "
            f"{len(spatial)} spatial axes ({names}); allowed: {_allowed(plan)}"
        )
    ranges = {d: (0, shape[d]) for d in spatial}
    for d, (given_start, given_stop) in zip(spatial[len(spatial) - len(parts) :], bounds, strict=True):
        letter, n = plan.axes[d], shape[d]
        start = 0 if given_start is None else given_start
        stop = n if given_stop is None else given_stop
        if stop <= start:
            raise ConfigError(
                f"{where}: the {letter} range {start}:{stop} is empty (start must be less than stop); "
                f"allowed: {_allowed(plan)}"
            )
        if start < 0 or stop > n:
            raise ConfigError(
                f"{where}: the {letter} range {start}:{stop} is outside the input ({letter} has {n} pixels, "
                f"0:{n}); allowed: {_allowed(plan)}"
            )
        ranges[d] = (start, stop)
    return tuple(ranges[d] for d in spatial)


def _slice_text(part: slice | int) -> str:
    if isinstance(part, slice):
        if part.step not in (None, 1):
            raise ConfigError(f"region: a step is not allowed (got {part})")
        start = "" if part.start is None else str(int(part.start))
        stop = "" if part.stop is None else str(int(part.stop))
        return f"{start}:{stop}"
    if isinstance(part, int | np.integer):
        return str(int(part))
    raise ConfigError(f"region: expected slices or ints, like numpy.s_[0:512, 0:512] (got {part!r})")


@dataclass(frozen=True)
class Selection:
    """The input and output samples shown, before any shrinking."""

    input_index: Index
    output_index: Index
    rows: int  # the shown axes (y, x)
    cols: int
    #: For t, c and z: (letter, input index, output index, why this one, for the title).
    fixed: tuple[tuple[str, int, int, str], ...]


def select(plan: Plan, region: str | Sequence[slice | int] | None = None) -> Selection:
    """Which input and output samples the two panels show (see the module's docstring)."""
    rows, cols = _shown_axes(plan)
    ranges = dict(zip(plan.spatial, parse_region(region, plan), strict=True))
    input_index: list[int | slice] = []
    output_index: list[int | slice] = []
    fixed = []
    for d, letter in enumerate(plan.axes):
        if d in (rows, cols):
            start, stop = ranges[d]
            input_index.append(slice(start, stop))
            lo, hi = output_range(plan, d, start, stop) if region is not None else (0, plan.output_shape[d])
            output_index.append(slice(lo, hi))
        elif d in ranges:  # z: one slice, the middle of its range
            start, stop = ranges[d]
            middle = (start + stop) // 2
            lo, _ = output_range(plan, d, middle, middle + 1)
            input_index.append(middle)
            output_index.append(lo)
            why = "middle" if (start, stop) == (0, plan.input_shape[d]) else f"middle of {start}:{stop}"
            fixed.append((letter, middle, lo, why if stop - start > 1 else ""))
        else:  # t, c: the first
            input_index.append(0)
            output_index.append(0)
            fixed.append((letter, 0, 0, "first"))
    return Selection(tuple(input_index), tuple(output_index), rows, cols, tuple(fixed))


# --- computing ------------------------------------------------------------------------------


class _InputSource:
    """The input as an array-like for ``dask.array.from_array``, read through convpipe's reader
    (so a failing read is a one-line RunError)."""

    def __init__(self, reader: ArrayReader) -> None:
        self.reader = reader
        self.shape = reader.shape
        self.dtype = reader.dtype
        self.ndim = len(reader.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        """Slices and ints (Dask fuses the panel's selection into its reads), one per axis."""
        key = key if isinstance(key, tuple) else (key,)
        key += (slice(None),) * (self.ndim - len(key))
        indices = [
            np.arange(*k.indices(n)) if isinstance(k, slice) else np.array([int(k)])
            for k, n in zip(key, self.shape, strict=True)
        ]
        data = self.reader.read(indices)
        return data[tuple(slice(None) if isinstance(k, slice) else 0 for k in key)]


def shrink_factor(rows: int, cols: int, max_size: int) -> int:
    """The integer f such that the longest side, divided by f, is at most ``max_size``."""
    return max(1, math.ceil(max(rows, cols) / max_size))


def _shrink(array: da.Array, factor: int) -> da.Array:
    """The mean of factor x factor pixels, block by block (the leftover edge pixels dropped)."""
    if factor == 1:
        return array
    import dask.array as da

    factors = {axis: min(factor, n) for axis, n in enumerate(array.shape)}
    return da.coarsen(np.mean, array, factors, trim_excess=True)


def _nodata_mask(part: da.Array, value: float | None, non_finite: bool) -> da.Array | None:
    """Where ``part`` is nodata: equal to ``value`` (a number), or NaN (``non_finite``: and
    infinite) in a float array. None when nothing can be."""
    mask = None
    if part.dtype.kind == "f":
        import dask.array as da

        mask = ~da.isfinite(part) if non_finite else da.isnan(part)
    if value is not None and not math.isnan(value):
        equal = part == value
        mask = equal if mask is None else mask | equal
    return mask


def _masks(plan: Plan, input_part: da.Array, output_part: da.Array) -> tuple[da.Array | None, da.Array | None]:
    """The nodata masks of the two panels (see the module's docstring); None: no nodata."""
    if not plan.masked:
        return None, None
    return (
        _nodata_mask(input_part, plan.nodata, non_finite=True),
        _nodata_mask(output_part, plan.output_nodata, non_finite=False),
    )


def _shrink_masked(array: da.Array, nodata: da.Array, factor: int) -> tuple[da.Array, da.Array]:
    """The mean of the valid samples of each factor x factor cell, NaN and nodata where none is."""
    if factor == 1:
        return array, nodata
    import dask.array as da

    factors = {axis: min(factor, n) for axis, n in enumerate(array.shape)}
    valid = ~nodata
    total = da.coarsen(np.sum, da.where(valid, array.astype(np.float64), 0.0), factors, trim_excess=True)
    count = da.coarsen(np.sum, valid.astype(np.int64), factors, trim_excess=True)
    return da.where(count > 0, total / da.maximum(count, 1), np.nan), count == 0


def _limits(
    data: np.ndarray, percentiles: tuple[float, float], nodata: np.ndarray | None = None
) -> tuple[float, float]:
    """The panel's colour range: the percentiles of its finite samples that are not nodata."""
    if nodata is not None:
        data = data[~nodata]
    finite = data[np.isfinite(data)] if data.dtype.kind == "f" else data.ravel()
    if finite.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(finite, percentiles))
    if high <= low:  # a flat panel: centre it in a unit range
        return low - 0.5, low + 0.5
    return low, high


# --- drawing --------------------------------------------------------------------------------


def _show_path(path: str | None) -> str:
    if not path:
        return "?"
    from convpipe.io import stores

    location = stores.parse(path)
    if location.is_remote:  # a URL as the user knows it, never its query (a signature)
        shown = location.display
        return shown if len(shown) <= 60 else "…" + shown[-59:]
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        relative = path
    shown = path if relative.startswith("..") else relative
    return shown if len(shown) <= 60 else "…" + shown[-59:]


def _chain_text(plan: Plan) -> str:
    names = []
    for step in plan.steps:
        strides = [step.axes[d].stride for d in plan.spatial]
        name = step.config.filter
        if any(s != 1 for s in strides):
            name += f" (stride {strides[0] if len(set(strides)) == 1 else 'x'.join(map(str, strides))})"
        names.append(name)
    return " → ".join(names)


def _titles(
    plan: Plan,
    selection: Selection,
    region: bool,
    factors: tuple[int, int],
    path: str,
    notes: tuple[str | None, str | None] = (None, None),
) -> tuple[str, str]:
    """Each panel's title: what it is, then which part of it is shown (and its nodata note)."""
    rows, cols = selection.rows, selection.cols

    def describe(
        index: Index, shape: tuple[int, ...], dtype: np.dtype, factor: int, fixed: list[str], note: str | None
    ) -> str:
        whole = f"{'×'.join(str(shape[d]) for d in (rows, cols))} {dtype}"
        parts = list(fixed)
        if region:
            spans = [(plan.axes[d], index[d]) for d in (rows, cols)]
            ranges = ", ".join(f"{letter} {s.start}:{s.stop}" for letter, s in spans if isinstance(s, slice))
            parts.append(f"{ranges} of {whole}")
        else:
            parts.append(f"all {whole}")
        if factor > 1:
            parts.append(f"mean of {factor}×{factor} px")
        if note:
            parts.append(note)
        return ", ".join(parts)

    fixed_in = [f"{letter} {i}" + (f" ({why})" if why else "") for letter, i, _, why in selection.fixed]
    fixed_out = [f"{letter} {o}" for letter, _, o, _ in selection.fixed]
    input_title = f"input {path}\n" + describe(
        selection.input_index, plan.input_shape, plan.input_dtype, factors[0], fixed_in, notes[0]
    )
    chain = textwrap.fill(f"output after {_chain_text(plan)}", 70)
    output_title = f"{chain}\n" + describe(
        selection.output_index, plan.output_shape, plan.output_dtype, factors[1], fixed_out, notes[1]
    )
    return input_title, output_title


def _nodata_note(nodata: np.ndarray | None, words: list[str], colour: str) -> str | None:
    """The title's legend for the nodata colour: which values, and how much of the panel."""
    if nodata is None:
        return None
    share = 100 * float(nodata.mean()) if nodata.size else 0.0
    return f"{colour}: nodata ({', '.join(words)}), {share:.1f} %"


def _nodata_words(value: float | None, float_data: bool, non_finite: bool) -> list[str]:
    words = [f"{value:g}"] if value is not None and not math.isnan(value) else []
    if float_data and (non_finite or not words):
        words.append("NaN, ±inf" if non_finite else "NaN")
    return words


@dataclass(frozen=True)
class _Panel:
    data: np.ndarray
    extent: tuple[float, float, float, float]
    limits: tuple[float, float]
    title: str
    colour_label: str
    nodata: np.ndarray | None = None  # True where the panel is nodata


def _draw(
    target: Path,
    panels: Sequence[_Panel],
    labels: tuple[str, str],
    axis_maps: tuple[tuple[float, float], tuple[float, float]],
    heading: str,
    cmap: str,
    nodata_colour: str = NODATA_COLOUR,
) -> None:
    """Write the figure to ``target`` (PNG), without pyplot: no display, no global state.

    The layout is fixed in inches (no layout engine), so each panel's image gets exactly its
    size: about one PNG pixel per shown pixel (small regions enlarged to MIN_DRAWN), text
    growing with the picture through the dpi. Extents are in input pixels; ``axis_maps``
    gives the axes' (scale, translation) from input pixels to what the axes show. A panel's
    nodata samples are drawn in ``nodata_colour`` (the colour map's "bad" colour).
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    (sy, ty), (sx, tx) = axis_maps

    # Both panels span the union of their extents.
    left = min(min(p.extent[:2]) for p in panels)
    right = max(max(p.extent[:2]) for p in panels)
    top = min(min(p.extent[2:]) for p in panels)
    bottom = max(max(p.extent[2:]) for p in panels)
    width, height = right - left, bottom - top
    drawn = max(MIN_DRAWN, *(max(p.data.shape) for p in panels))
    dpi = max(DPI, drawn / PANEL_INCHES)
    scale = drawn / dpi / max(width, height)  # inches per input pixel
    image_w, image_h = width * scale, height * scale
    box_w, box_h = max(image_w, MIN_BOX), max(image_h, MIN_BOX)  # the room a panel takes
    # A title may run over its colour bar: about 11 characters an inch.
    chars = max(30, int((box_w + COLOUR_BAR) * 11))
    titles = ["\n".join(textwrap.fill(line, chars) for line in p.title.split("\n")) for p in panels]
    title_h = 0.2 * max(t.count("\n") + 1 for t in titles) + 0.15
    column = MARGIN_LEFT + box_w + COLOUR_BAR
    fig_w, fig_h = 2 * column + MARGIN_MIDDLE + MARGIN_RIGHT, MARGIN_BOTTOM + box_h + title_h + HEADING
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    first = None
    for k, (panel, title) in enumerate(zip(panels, titles, strict=True)):
        x0 = k * (column + MARGIN_MIDDLE) + MARGIN_LEFT
        x, y = x0, MARGIN_BOTTOM + (box_h - image_h) / 2
        ax = fig.add_axes((x / fig_w, y / fig_h, image_w / fig_w, image_h / fig_h), sharex=first, sharey=first)
        first = first or ax
        colours = colormaps[cmap]
        data: np.ndarray = panel.data
        if panel.nodata is not None:
            colours = colours.with_extremes(bad=nodata_colour)
            data = np.ma.masked_array(panel.data, mask=panel.nodata)
        image = ax.imshow(
            data,
            cmap=colours,
            vmin=panel.limits[0],
            vmax=panel.limits[1],
            extent=(
                tx + panel.extent[0] * sx,
                tx + panel.extent[1] * sx,
                ty + panel.extent[2] * sy,
                ty + panel.extent[3] * sy,
            ),
            origin="upper",
            interpolation="nearest",
            aspect="equal",
        )
        ax.set_xlim(tx + left * sx, tx + right * sx)
        ax.set_ylim(ty + bottom * sy, ty + top * sy)  # y grows downwards (unless sy < 0)
        ax.set_title(title, fontsize=11, loc="left")
        ax.set_xlabel(labels[1], fontsize=10)
        ax.set_ylabel(labels[0], fontsize=10)
        ax.tick_params(labelsize=9)
        if image_w < 0.9:  # too narrow for two labels side by side: only the first pixel's
            ax.set_xticks([tx + (left + 0.5) * sx])
        bar_axes = fig.add_axes(((x + image_w + 0.12) / fig_w, MARGIN_BOTTOM / fig_h, 0.2 / fig_w, box_h / fig_h))
        bar = fig.colorbar(image, cax=bar_axes, extend="both", extendfrac=0.025)
        bar.ax.tick_params(labelsize=9)
        bar.set_label(panel.colour_label, fontsize=9)
    fig.text(0.08 / fig_w, 1 - 0.1 / fig_h, heading, fontsize=12, ha="left", va="top")
    fig.savefig(target, format="png", dpi=dpi, facecolor="white")


#: Short names for the NGFF units an input's frame most often has.
UNIT_SYMBOLS = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm", "meter": "m"}


def _axes_units(
    plan: Plan, rows: int, cols: int
) -> tuple[tuple[str, str], tuple[tuple[float, float], tuple[float, float]]]:
    """Axis labels, and (scale, translation) from input pixels to them: the input's physical
    coordinates when its file has them (OME-Zarr, OME-TIFF, ImageJ, GeoTIFF), else pixels."""
    frame = plan.input_frame
    if frame is None or coords.is_identity((frame[rows], frame[cols])):
        return (f"{plan.axes[rows]} (input pixels)", f"{plan.axes[cols]} (input pixels)"), ((1.0, 0.0), (1.0, 0.0))
    labels = tuple(
        f"{plan.axes[d]} ({UNIT_SYMBOLS.get(frame[d].unit or '', frame[d].unit or 'physical units')})"
        for d in (rows, cols)
    )
    return (labels[0], labels[1]), (
        (frame[rows].scale, frame[rows].translation),
        (frame[cols].scale, frame[cols].translation),
    )


def _colour_label(dtype: np.dtype, percentiles: tuple[float, float]) -> str:
    return f"{dtype}, percentiles {percentiles[0]:g}–{percentiles[1]:g}"


def _check_target(path: Path, config: Config) -> Path:
    if path.suffix.lower() != ".png":
        raise ConfigError(f"-o {path}: the preview is a PNG; give a name ending in .png")
    if path.is_dir():
        raise ConfigError(f"-o {path}: is a folder; give a file name ending in .png")
    from convpipe.io import stores

    location = stores.parse(config.input.path)
    if location.is_remote:
        return path
    source = Path(location.path).resolve()
    if path.resolve() == source or path.resolve().is_relative_to(source):
        raise ConfigError(f"-o {path}: is inside the input {config.input.path}; the input is never written to")
    return path


def preview(
    config: Config | str | Path,
    output_png: str | Path,
    region: str | Sequence[slice | int] | None = None,
    *,
    overrides: Sequence[str] = (),
    max_size: int = MAX_SIZE,
    percentiles: tuple[float, float] = (1.0, 99.0),
    cmap: str = "gray",
    nodata_colour: str = NODATA_COLOUR,
) -> PreviewResult:
    """Draw the input and the chain's output side by side into the PNG ``output_png``.

    ``config`` is a Config or a config file's path (then ``overrides`` are ``--set`` values).
    ``region``: ``"y0:y1,x0:x1"`` (``"z0:z1,y0:y1,x0:x1"`` for 3-D) in input pixels, or a
    tuple of slices like ``numpy.s_[0:512, 0:512]``; only the blocks it needs are computed.
    None: an overview of the whole image, shrunk by block-wise means to ``max_size`` pixels.
    The rules for which samples are shown, and how nodata is drawn (in ``nodata_colour``, any
    matplotlib colour), are in this module's docstring.

    The PNG is written under a temporary name beside ``output_png`` and renamed at the end,
    so a failure leaves no half-written file; an existing PNG is replaced. Errors: ConfigError
    (bad region, bad file name; nothing read), RunError (a failing read).
    """
    started = time.perf_counter()
    if not isinstance(config, Config):
        config = config_module.load(config, tuple(overrides))
    elif overrides:
        raise ConfigError("preview: overrides apply to a config file's path, not to a loaded Config")
    if max_size < 1:
        raise ConfigError(f"preview: max_size must be >= 1 (got {max_size})")
    target = _check_target(Path(output_png), config)
    plan = make_plan(config)
    selection = select(plan, region)

    import dask
    import dask.array as da

    from convpipe.engine import to_dask

    reader = open_input(input_spec(config))
    source = da.from_array(
        _InputSource(reader),
        chunks=plan.input_block,
        name=f"convpipe-preview-input-{uuid.uuid4().hex[:12]}",
        meta=np.empty((0,) * len(plan.input_shape), dtype=plan.input_dtype),
    )
    input_part = source[selection.input_index]
    output_part = to_dask(plan, input_spec(config, plan))[selection.output_index]
    factors = (shrink_factor(*input_part.shape, max_size), shrink_factor(*output_part.shape, max_size))
    masks = _masks(plan, input_part, output_part)
    lazy = [
        (_shrink(part, factor), None) if mask is None else _shrink_masked(part, mask, factor)
        for part, mask, factor in zip((input_part, output_part), masks, factors, strict=True)
    ]
    (shown_input, input_nodata), (shown_output, output_nodata) = dask.compute(*lazy)

    rows, cols = selection.rows, selection.cols
    in_rows, in_cols = selection.input_index[rows], selection.input_index[cols]
    assert isinstance(in_rows, slice) and isinstance(in_cols, slice)
    input_extent = (
        in_cols.start - 0.5,
        in_cols.start + shown_input.shape[1] * factors[0] - 0.5,
        in_rows.start + shown_input.shape[0] * factors[0] - 0.5,
        in_rows.start - 0.5,
    )
    output_extent = _output_extent(plan, selection, shown_output.shape, factors[1])
    limits = (_limits(shown_input, percentiles, input_nodata), _limits(shown_output, percentiles, output_nodata))
    notes = (
        _nodata_note(
            input_nodata, _nodata_words(plan.nodata, plan.input_dtype.kind == "f", non_finite=True), nodata_colour
        ),
        _nodata_note(
            output_nodata,
            _nodata_words(plan.output_nodata, plan.output_dtype.kind == "f", non_finite=False),
            nodata_colour,
        ),
    )
    titles = _titles(plan, selection, region is not None, factors, _show_path(config.input.path), notes)
    heading = f"convpipe preview of {_show_path(config.source)}" if config.source else "convpipe preview"
    labels, axis_maps = _axes_units(plan, rows, cols)
    colour_labels = (_colour_label(plan.input_dtype, percentiles), _colour_label(plan.output_dtype, percentiles))

    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        _draw(
            temporary,
            [
                _Panel(shown_input, input_extent, limits[0], titles[0], colour_labels[0], input_nodata),
                _Panel(shown_output, output_extent, limits[1], titles[1], colour_labels[1], output_nodata),
            ],
            labels,
            axis_maps,
            heading,
            cmap,
            nodata_colour,
        )
        os.replace(temporary, target)
    except OSError as error:
        raise RunError(f"-o {target}: cannot write the preview ({error.strerror or error})") from None
    finally:
        temporary.unlink(missing_ok=True)
    return PreviewResult(
        path=target,
        input=shown_input,
        output=shown_output,
        input_index=selection.input_index,
        output_index=selection.output_index,
        input_factor=factors[0],
        output_factor=factors[1],
        input_extent=input_extent,
        output_extent=output_extent,
        input_limits=limits[0],
        output_limits=limits[1],
        input_title=titles[0],
        output_title=titles[1],
        axis_labels=labels,
        seconds=time.perf_counter() - started,
        input_nodata=input_nodata,
        output_nodata=output_nodata,
    )


def _output_extent(
    plan: Plan, selection: Selection, shown: tuple[int, ...], factor: int
) -> tuple[float, float, float, float]:
    """Where the shown output samples lie in input pixels: sample j spans position ± S_total/2."""
    edges = []
    for d, n in zip((selection.rows, selection.cols), shown, strict=True):
        span = selection.output_index[d]
        assert isinstance(span, slice)
        stride, offset = axis_position(plan, d)
        first = span.start * stride + offset - Fraction(stride, 2)
        edges.append((float(first), float(first + n * factor * stride)))
    (top, bottom), (left, right) = edges
    return left, right, bottom, top
