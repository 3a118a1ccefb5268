"""A config bound to an input's shape: every step's geometry, the block layout, a memory estimate.

Pure arithmetic: it takes the input's shape, dtype and storage chunks and never reads a pixel,
so ``convpipe plan`` and ``validate`` are instant and every number here is unit-testable.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from convpipe import coords, filters, ops, traversal
from convpipe.config import SPATIAL_AXES, TIFF_FORMATS, Config, OutputConfig, output_codec, output_dtype, output_format
from convpipe.coords import Frame
from convpipe.errors import ConfigError, ParamError
from convpipe.geometry import AxisStep, chain_halo, pad_widths
from convpipe.io import ngff
from convpipe.ops import Op

#: Default processing block: storage chunks grown until a float32 block is about this big.
#: 16 MiB (2048x2048) keeps every temporary under glibc's mmap threshold, so freed buffers
#: are reused instead of faulted in afresh, and keeps peak memory low (README, "Performance").
TARGET_BLOCK_BYTES = 16 * 2**20

#: Per step, the engine holds the padded window and its result plus about two temporaries.
ARRAYS_PER_STEP = 4

#: And a block with nodata (README, "Nodata"): the validity window, the validity's response and
#: for signed kernels under ``ignore`` the |w| pair, about four more.
MASKED_ARRAYS_PER_STEP = 4

#: What the convpipe process holds besides blocks: Python, numpy, Dask, zarr, OpenCV.
PROCESS_BYTES = 120 * 2**20

#: Blocks are not shrunk below this length to fit a memory budget: halos and per-task
#: overheads would dominate.
MIN_BLOCK = 64

#: Chunks inside a shard, by default: about 1 MiB, small enough for a viewer to fetch
#: one tile at a time.
INNER_CHUNK_BYTES = 2**20

#: GeoTIFF tiles, by default (GDAL's default too); TIFF wants multiples of 16.
TIFF_TILE = 256

#: COG tiles, by default: GDAL's COG driver's default.
COG_TILE = 512

#: A GeoTIFF is written a row of blocks at a time: rows of about this many bytes.
GEOTIFF_ROW_BYTES = 32 * 2**20

#: Tiles a GeoTIFF writer compresses at once (in parallel); tifffile's default, 512 MB,
#: would hold more memory than the rows themselves.
GEOTIFF_ENCODE_BYTES = 32 * 2**20


@dataclass(frozen=True)
class Storage:
    """How the output is stored. Planned with the blocks, because blocks must tile the chunks:
    no two blocks ever write into the same chunk (or shard, or TIFF tile)."""

    format: str  # zarr, ome-zarr, geotiff or cog
    codec: str
    chunks: tuple[int, ...] | None  # storage chunks / TIFF tiles; None: one per block
    shards: bool = False  # Zarr v3 sharding, one shard per block
    pyramid: int = 0  # OME-Zarr levels beyond the first
    ngff_version: str = "0.5"
    overview_resampling: str = "average"  # COG overviews: average or nearest


@dataclass(frozen=True)
class StepPlan:
    """One step bound to the data: its operation over every data axis and its geometry."""

    index: int
    config: filters.Step
    op: Op
    axes: tuple[AxisStep, ...]

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(a.n_out for a in self.axes)


@dataclass(frozen=True)
class Plan:
    """Everything the engine and the store need to know, decided before any pixel is read."""

    axes: str
    input_shape: tuple[int, ...]
    input_dtype: np.dtype
    input_chunks: tuple[int, ...]
    steps: tuple[StepPlan, ...]
    compute_dtype: np.dtype
    output_dtype: np.dtype
    input_block: tuple[int, ...]
    cache_bytes: int = -1  # decoded input chunks kept for neighbouring halos; -1: the default
    storage: Storage = Storage("zarr", "lz4", None)
    input_frame: Frame | None = None  # physical coordinates of the input; None: sample indices
    nodata: float | None = None  # the input's nodata value (NaN: NaN only); None: none declared
    output_nodata: float | None = None  # written for nodata samples; None: as NaN is (0 in an integer)

    def __post_init__(self) -> None:
        if self.cache_bytes < 0:
            streamed = self.storage.format in TIFF_FORMATS
            cache = traversal.default_cache(self.chunk_layout, streamed)
            object.__setattr__(self, "cache_bytes", cache)

    @property
    def chunk_layout(self) -> traversal.Layout:
        """The blocks over the input's storage chunks (what the chunk cache is sized from)."""
        return traversal.Layout(
            self.input_shape, self.input_chunks, self.input_block, self.spatial, self.input_dtype.itemsize
        )

    def block_order(self) -> list[tuple[int, ...]]:
        """The order a Zarr output's blocks run in: in bands as wide as the chunk cache holds
        (``traversal``), so each input chunk is decoded about once."""
        grid = tuple(len(c) for c in self.chunks)
        return traversal.block_order(grid, self.spatial, traversal.band_width(self.chunk_layout, self.cache_bytes))

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.steps[-1].out_shape

    @property
    def masked(self) -> bool:
        """Whether blocks track which samples are nodata: the input declares a nodata value,
        or a step does something other than propagate with the NaN of a float input."""
        if self.nodata is not None:
            return True
        return self.input_dtype.kind == "f" and any(s.config.nodata != "propagate" for s in self.steps)

    @property
    def block_shape(self) -> tuple[int, ...]:
        """The output block: the input block divided by the chain's strides."""
        return self.block_shape_after(len(self.steps))

    def block_shape_after(self, upto: int) -> tuple[int, ...]:
        """The block over the output of the first ``upto`` steps."""
        steps = self.steps[:upto]
        shape = steps[-1].out_shape if steps else self.input_shape
        return tuple(
            max(1, min(block // total_stride(steps, d), n))
            for d, (block, n) in enumerate(zip(self.input_block, shape, strict=True))
        )

    @property
    def storage_chunks(self) -> tuple[int, ...]:
        """The output's storage chunks (inside a shard when sharded)."""
        if self.storage.chunks is None:
            return self.block_shape
        return tuple(min(c, n) for c, n in zip(self.storage.chunks, self.output_shape, strict=True))

    @property
    def shard_shape(self) -> tuple[int, ...] | None:
        """One shard per block, rounded up to whole chunks (zarr's rule)."""
        if not self.storage.shards:
            return None
        return tuple(-(-b // c) * c for b, c in zip(self.block_shape, self.storage_chunks, strict=True))

    @property
    def output_frame(self) -> Frame:
        """Where the output's samples are, in the input's physical coordinates."""
        frame = self.input_frame or coords.identity(len(self.input_shape))
        return coords.through_chain(frame, [s.axes for s in self.steps])

    @property
    def sample_frame(self) -> Frame:
        """Where the output's samples are, in input sample indices (for GeoTIFF transforms)."""
        return coords.through_chain(coords.identity(len(self.input_shape)), [s.axes for s in self.steps])

    def halved_axes(self, level: int) -> tuple[int, ...]:
        """The axes that pyramid level ``level`` (>= 1) halves: spatial ones still longer than 1."""
        shape = self.level_shapes()[level - 1]
        return tuple(d for d in self.spatial if shape[d] > 1)

    def level_frames(self, physical: bool = True) -> list[Frame]:
        """The output's frame and each pyramid level's (``physical=False``: in input samples)."""
        frames = [self.output_frame if physical else self.sample_frame]
        for level in range(1, self.storage.pyramid + 1):
            frames.append(coords.halved(frames[-1], self.halved_axes(level)))
        return frames

    def level_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the output and of each pyramid level (2x mean per spatial axis, rounded up)."""
        shapes = [self.output_shape]
        for _ in range(self.storage.pyramid):
            shapes.append(tuple(-(-n // 2) if d in self.spatial else n for d, n in enumerate(shapes[-1])))
        return shapes

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(i for i, letter in enumerate(self.axes) if letter in SPATIAL_AXES)

    @property
    def chunks(self) -> tuple[tuple[int, ...], ...]:
        """The output block layout, in Dask's chunks form."""
        return self.layout(len(self.steps))

    def layout(self, upto: int) -> tuple[tuple[int, ...], ...]:
        """Blocks over the output of the first ``upto`` steps (0: the input), in chunks form."""
        shape = self.steps[upto - 1].out_shape if upto else self.input_shape
        block = self.block_shape_after(upto)
        return tuple(tuple(min(b, n - s) for s in range(0, n, b)) for n, b in zip(shape, block, strict=True))

    @property
    def num_blocks(self) -> int:
        return math.prod(len(c) for c in self.chunks)

    @property
    def range_passes(self) -> int:
        """Extra passes over the image: one per step that needs its input's global range."""
        return sum(1 for s in self.steps if getattr(s.op, "needs_range", False))

    @property
    def task_count(self) -> int:
        """Tasks in the graph: one per block per pass, plus one reduction per extra pass."""
        return self.num_blocks * (1 + self.range_passes) + self.range_passes

    def halo(self, upto: int) -> tuple[tuple[int, int], ...]:
        """Input samples, before and after, that a block reads beyond its own span, per axis."""
        return tuple(chain_halo([s.axes[d] for s in self.steps[: upto + 1]])[1:] for d in range(len(self.axes)))

    def block_extents(self) -> list[tuple[int, ...]]:
        """Per step, the largest input window one block reads (index 0 is the input itself)."""
        lengths = list(self.block_shape)
        extents = []
        for step in reversed(self.steps):
            lengths = [(n - 1) * a.stride + a.size for n, a in zip(lengths, step.axes, strict=True)]
            extents.append(tuple(lengths))
        return extents[::-1]

    def memory_per_block(self) -> int:
        """Bytes one block in flight holds at its peak (an estimate; see README)."""
        extents = self.block_extents()
        itemsize = self.compute_dtype.itemsize
        read = math.prod(extents[0]) * (self.input_dtype.itemsize + itemsize)
        work = max(math.prod(e) for e in extents) * itemsize * ARRAYS_PER_STEP
        written = math.prod(self.block_shape) * (itemsize + self.output_dtype.itemsize)
        if self.masked:  # a block with nodata also carries its validity through every step
            work += max(math.prod(e) for e in extents) * itemsize * MASKED_ARRAYS_PER_STEP
        chain = read + work + written
        if not self.storage.pyramid:
            return chain
        # A pyramid task reads the 2^d blocks below its own, as floats, and writes one block.
        below = math.prod(self.block_shape) * 2 ** len(self.spatial)
        pyramid = below * (self.output_dtype.itemsize + itemsize) + math.prod(self.block_shape) * itemsize
        return max(chain, pyramid)

    def writer_bytes(self, workers: int) -> int:
        """What a GeoTIFF or COG writer holds besides the blocks being computed (Zarr writes
        each block where it is computed): the batch of blocks it is taking and the next one
        (``stream_batch``),
        and a GeoTIFF's row of blocks and compression buffer, or a COG's tiles of a block being
        encoded and its unfinished overview tiles (a few per level)."""
        if self.storage.format not in TIFF_FORMATS:
            return 0
        block = math.prod(self.block_shape) * self.output_dtype.itemsize
        taken = 2 * stream_batch(workers) * block  # the batch being written, the next one computed
        if self.storage.format == "cog":
            assert self.storage.chunks is not None
            tile = math.prod(self.storage.chunks) * self.output_dtype.itemsize
            tiles = [-(-n // t) for n, t in zip(self.output_shape[-2:], self.storage.chunks[-2:], strict=True)]
            levels = 1 + math.ceil(math.log2(max(tiles)))  # halved until one tile holds it
            return taken + 2 * block + 4 * levels * tile
        row = math.prod(self.block_shape[:-1]) * self.output_shape[-1] * self.output_dtype.itemsize
        return taken + row + GEOTIFF_ENCODE_BYTES

    def memory_estimate(self, workers: int) -> int:
        """Peak bytes of a run with ``workers`` blocks computed at once, the process included."""
        return PROCESS_BYTES + self.cache_bytes + self.writer_bytes(workers) + workers * self.memory_per_block()

    def fitted(self, budget: int, workers: int) -> Plan:
        """The same plan fitted to ``budget``: first without the chunk cache, then with blocks
        halved (largest spatial axis first) until the estimate fits."""
        plan = self
        if plan.memory_estimate(workers) > budget:
            plan = dataclasses.replace(plan, cache_bytes=0)
        while plan.memory_estimate(workers) > budget:
            block = list(plan.input_block)
            axis = max(plan.spatial, key=lambda d: block[d])
            # Blocks stay whole multiples of the strides and of the output's storage chunks.
            unit = total_stride(plan.steps, axis)
            if plan.storage.chunks is not None:
                unit *= plan.storage_chunks[axis]
            smaller = max(unit, block[axis] // 2 // unit * unit)
            if smaller >= block[axis] or block[axis] <= MIN_BLOCK:
                raise ConfigError(
                    f"--memory: {budget / 2**20:.0f} MiB is not enough for {workers} workers: blocks of "
                    f"{tuple(block)} already need about {plan.memory_estimate(workers) / 2**20:.0f} MiB; "
                    "use fewer --workers or a larger budget"
                )
            block[axis] = smaller
            plan = dataclasses.replace(plan, input_block=tuple(block))
        return plan


def default_axes(ndim: int) -> str:
    if ndim == 2:
        return "yx"
    if ndim == 3:
        return "zyx"
    raise ConfigError(f"input.axes: the input has {ndim} dimensions; say which axis is which, e.g. axes: czyx")


def default_block(
    shape: tuple[int, ...], storage: tuple[int, ...], spatial: tuple[int, ...], stride: tuple[int, ...]
) -> tuple[int, ...]:
    """Storage chunks, grown by whole multiples along spatial axes toward the target size.

    Each length is then a multiple of the chain's total stride along its axis, so every output
    block covers exactly block / stride output samples.
    """
    block = [min(c, n) for c, n in zip(storage, shape, strict=True)]
    target = TARGET_BLOCK_BYTES // 4
    while math.prod(block) * 2 <= target:
        growable = [d for d in spatial if block[d] < shape[d]]
        if not growable:
            break
        axis = min(growable, key=lambda d: block[d])
        block[axis] = min(block[axis] * 2, shape[axis])
    return tuple(b if b >= n else max(s, b // s * s) for b, n, s in zip(block, shape, stride, strict=True))


def bind(
    config: Config,
    shape: tuple[int, ...],
    dtype: np.dtype,
    storage_chunks: tuple[int, ...],
    file_axes: str | None = None,
    *,
    frame: Frame | None = None,
    input_kind: str = "array",
    nodata: float | None = None,
) -> Plan:
    """Bind a config to an input of this shape: reject what cannot work, before any reading.

    Axes come from ``input.axes``, else from the file (``file_axes``: OME-Zarr axes, Zarr
    dimension names, TIFF series axes), else the 2-D/3-D defaults. ``frame`` is the input's
    physical coordinates; ``input_kind`` (zarr, ome-zarr, tiff) picks the default format;
    ``nodata`` is the file's own nodata value (``input.nodata`` overrides it).
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf" or dtype.kind == "b":
        raise ConfigError(
            f"input: dtype {dtype} is not supported "
            "(use integer or floating-point images: uint8, uint16, int16, float32, ...)"
        )
    if config.input.axes is None and file_axes is not None and len(file_axes) == len(shape):
        axes = file_axes
    else:
        axes = config.input.axes or default_axes(len(shape))
    if len(axes) != len(shape):
        raise ConfigError(f"input.axes: {axes!r} names {len(axes)} axes but the input has {len(shape)} (shape {shape})")
    spatial = tuple(i for i, letter in enumerate(axes) if letter in SPATIAL_AXES)
    spatial_letters = "".join(axes[i] for i in spatial)
    steps: list[StepPlan] = []
    current = tuple(shape)
    for index, step in enumerate(config.pipeline):
        place = f"pipeline[{index}]"
        try:
            op = filters.build_op(step, spatial_letters).expanded(len(shape), spatial)
            pads = filters.per_axis_values(step.pad, len(spatial), "pad")
            strides = filters.per_axis_values(step.stride, len(spatial), "stride")
        except ParamError as error:
            raise ConfigError(f"{place}.{error.key}: {error.message}") from None
        geometry = []
        for axis, (n, size) in enumerate(zip(current, op.size, strict=True)):
            if axis in spatial:
                k = spatial.index(axis)
                before, after = pad_widths(pads[k], size)
                geometry.append(AxisStep(size, before, after, strides[k], n))
            else:
                geometry.append(AxisStep(1, 0, 0, 1, n))
        for axis, g in enumerate(geometry):
            if g.n_out < 1:
                raise ConfigError(
                    f"{place}: the output would be empty along axis {axes[axis]} "
                    f"(F={g.size}, P_before={g.pad_before}, P_after={g.pad_after}, S={g.stride}): "
                    f"N_out = {g.formula()}"
                )
        steps.append(StepPlan(index, step, op, tuple(geometry)))
        current = steps[-1].out_shape
    out_dtype = output_dtype(config, dtype)
    compute = compute_dtype(steps, dtype, out_dtype, input_nodata(config.input.nodata, nodata, dtype))
    if config.input.chunks is not None:
        if len(config.input.chunks) != len(shape):
            raise ConfigError(
                f"input.chunks: needs one block length per dimension ({len(shape)}), got {len(config.input.chunks)}"
            )
        input_block = tuple(min(c, n) for c, n in zip(config.input.chunks, shape, strict=True))
    else:
        strides = tuple(total_stride(steps, d) for d in range(len(shape)))
        input_block = default_block(tuple(shape), tuple(storage_chunks), spatial, strides)
    storage = plan_storage(config.output, input_kind, axes, current, out_dtype)
    if storage.shards and storage.chunks is None:
        pairs = enumerate(zip(input_block, current, strict=True))
        out_block = tuple(max(1, min(b // total_stride(steps, d), n)) for d, (b, n) in pairs)
        storage = dataclasses.replace(storage, chunks=_inner_chunks(out_block, spatial, out_dtype.itemsize))
    if storage.format in TIFF_FORMATS:
        input_block = _geotiff_block(input_block, axes, steps, current, out_dtype, config.input.chunks is None)
    if storage.chunks is not None:
        input_block = align_block(input_block, storage.chunks, steps, current)
    return Plan(
        axes=axes,
        input_shape=tuple(shape),
        input_dtype=dtype,
        input_chunks=tuple(storage_chunks),
        steps=tuple(steps),
        compute_dtype=compute,
        output_dtype=out_dtype,
        input_block=input_block,
        storage=storage,
        input_frame=frame,
        nodata=(value := input_nodata(config.input.nodata, nodata, dtype)),
        output_nodata=output_nodata(config.output.nodata, value, out_dtype),
    )


#: Blocks a GeoTIFF or COG writer asks for at once: two per worker, at most this many, so the
#: process writing the file holds two such batches whatever the cluster's size.
STREAM_BATCH_MOST = 16


def stream_batch(workers: int) -> int:
    """Blocks a file written in one pass is fed at a time (``engine.computed_blocks``)."""
    return max(1, min(2 * workers, STREAM_BATCH_MOST))


def compute_dtype(steps: list[StepPlan], dtype: np.dtype, out_dtype: np.dtype, nodata: float | None) -> np.dtype:
    """What a block is computed in (README, "What it computes", exact integers).

    float32 holds every integer up to 2**24 exactly: 8- and 16-bit images compute in it. An
    input or output of 32-bit integers or float64 needs float64, exact for integers up to
    2**53. Beyond that (int64, uint64), a chain that only moves samples
    (``ops.moves_samples``) computes in the input's own dtype, so it copies every value; any
    other chain computes in float64. With nodata, blocks carry a validity mask in float.
    """
    wide = dtype.kind in "iu" and dtype.itemsize == 8
    if wide and nodata is None and all(ops.moves_samples(s.op, s.config.padding, s.config.cval, dtype) for s in steps):
        return dtype
    if np.can_cast(dtype, np.float32) and np.can_cast(out_dtype, np.float32):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def input_nodata(asked: float | str | None, found: float | None, dtype: np.dtype) -> float | None:
    """The input's nodata value as its samples hold it: ``input.nodata`` if set (``none``: no
    value), else the file's. A float image compares its samples with the value cast to its
    type, as GDAL does (-3.4e38 in float32). A value the dtype cannot hold marks nothing: an
    error when asked for, ignored when only the file says it."""
    if asked == "none":
        return None
    value = found if asked is None else (math.nan if asked == "nan" else float(asked))
    if value is None:
        return None
    held = stored(dtype, value)
    if held is None:
        if asked is None:
            return None  # a file's value its own samples cannot take (-9999 in uint16) marks nothing
        raise ConfigError(
            f"input.nodata: {_shown(value)} cannot occur in a {dtype} image; set a value it holds (or none)"
        )
    return held


def output_nodata(asked: float | str | None, nodata: float | None, dtype: np.dtype) -> float | None:
    """What nodata samples are written as: ``output.nodata``; else the input's value when the
    output dtype holds it; else NaN for a float output; else, for an input that declares
    nodata, an error asking for ``output.nodata``."""
    if asked is not None:
        value = math.nan if asked == "nan" else float(asked)
        held = stored(dtype, value)
        if held is None:
            raise ConfigError(
                f"output.nodata: {_shown(value)} does not fit the output dtype {dtype}; choose a value it holds"
            )
        return held
    if nodata is not None and (held := stored(dtype, nodata)) is not None:
        return held
    if dtype.kind == "f":
        return math.nan
    if nodata is not None:
        raise ConfigError(
            f"output.nodata: the input's nodata value {_shown(nodata)} does not fit the output dtype {dtype}; "
            "set output.nodata to a value it holds"
        )
    return None


def stored(dtype: np.dtype, value: float) -> float | None:
    """``value`` as ``dtype`` stores it, or None when it cannot: NaN in an integer type, a
    fraction or an out-of-range number in an integer type, a finite number beyond a float
    type's range."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        info = np.iinfo(dtype)
        ok = not math.isnan(value) and float(value).is_integer() and info.min <= value <= info.max
        return float(value) if ok else None
    with np.errstate(over="ignore"):
        cast = float(dtype.type(value))
    if math.isinf(cast) and not math.isinf(value):
        return None
    return cast


def _shown(value: float) -> str:
    """A number as the user wrote it: 300, -9999, 4294967295, 1e+300, nan."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _geotiff_block(
    input_block: tuple[int, ...],
    axes: str,
    steps: list[StepPlan],
    output_shape: tuple[int, ...],
    dtype: np.dtype,
    default: bool,
) -> tuple[int, ...]:
    """Blocks for a GeoTIFF: one band each (TIFF stores bands one after another), and by
    default rows of blocks (what the writer holds, twice) near GEOTIFF_ROW_BYTES."""
    block = list(input_block)
    if "c" in axes:
        block[axes.index("c")] = 1
    if default:
        y = axes.index("y")
        row_bytes = output_shape[-1] * dtype.itemsize
        rows = max(TIFF_TILE, GEOTIFF_ROW_BYTES // row_bytes // TIFF_TILE * TIFF_TILE)
        block[y] = min(block[y], rows * total_stride(steps, y))
    return tuple(block)


def total_stride(steps: list[StepPlan] | tuple[StepPlan, ...], axis: int) -> int:
    """How many input samples apart consecutive outputs of the chain are, along ``axis``."""
    return math.prod(s.axes[axis].stride for s in steps)


def align_block(
    input_block: tuple[int, ...], chunks: tuple[int, ...], steps: list[StepPlan], output_shape: tuple[int, ...]
) -> tuple[int, ...]:
    """The input block whose output is whole storage chunks: rounded down to a multiple of
    the chunk (at least one), so that no chunk is shared by two blocks."""
    aligned = []
    for d, (block, chunk, n) in enumerate(zip(input_block, chunks, output_shape, strict=True)):
        stride = total_stride(steps, d)
        out_block = min(max(1, block // stride), n)
        if out_block < n:
            out_block = max(chunk, out_block // chunk * chunk)
        aligned.append(out_block * stride)
    return tuple(aligned)


def _inner_chunks(block: tuple[int, ...], spatial: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunks of about INNER_CHUNK_BYTES inside a block-sized shard: halve the longest axis."""
    chunks = list(block)
    while math.prod(chunks) * itemsize > INNER_CHUNK_BYTES:
        axis = max(spatial, key=lambda d: chunks[d])
        if chunks[axis] <= 1:
            break
        chunks[axis] = -(-chunks[axis] // 2)
    return tuple(chunks)


def plan_storage(output: OutputConfig, input_kind: str, axes: str, shape: tuple[int, ...], dtype: np.dtype) -> Storage:
    """Resolve the output's format and layout, and refuse combinations that cannot be written."""
    format_name = output_format(output, input_kind)
    codec = output_codec(output, format_name)
    spatial = tuple(i for i, letter in enumerate(axes) if letter in SPATIAL_AXES)
    chunks = output.chunks
    if chunks is not None and len(chunks) != len(shape):
        raise ConfigError(
            f"output.chunks: needs one length per dimension ({len(shape)}, axes {axes}), got {len(chunks)}"
        )
    if output.pyramid and format_name != "ome-zarr":
        raise ConfigError(
            f"output.pyramid: only OME-Zarr outputs have pyramid levels (this output is {format_name}); "
            "set output.format: ome-zarr"
        )
    if output.ngff_version is not None and format_name != "ome-zarr":
        raise ConfigError(f"output.ngff_version: only for OME-Zarr outputs (this output is {format_name})")
    if output.overview_resampling is not None and format_name != "cog":
        raise ConfigError(
            f"output.overview_resampling: only for COG outputs (this output is {format_name}); set output.format: cog"
        )
    ngff_version = output.ngff_version or "0.5"
    if output.pyramid:
        longest = max(shape[d] for d in spatial)
        most = max(1, math.ceil(math.log2(longest)))
        if output.pyramid > most:
            raise ConfigError(
                f"output.pyramid: {output.pyramid} levels would halve the output {shape} below one sample; "
                f"at most {most}"
            )
    if output.shards and (format_name in TIFF_FORMATS or (format_name == "ome-zarr" and ngff_version == "0.4")):
        what = "GeoTIFF" if format_name in TIFF_FORMATS else "OME-Zarr 0.4 (Zarr v2)"
        raise ConfigError(f"output.shards: {what} has no shards; shards need Zarr v3 (zarr, or ome-zarr 0.5)")
    if format_name == "ome-zarr":
        problem = ngff.axes_problem(axes)
        if problem:
            raise ConfigError(f"output.format: an OME-Zarr image cannot hold this output: {problem}")
    if format_name in TIFF_FORMATS:
        if codec == "lz4":
            raise ConfigError("output.codec: lz4 is not a TIFF compression; use deflate, zstd or none")
        if axes not in ("yx", "cyx"):
            raise ConfigError(
                f"output.format: GeoTIFF holds 2-D rasters, axes yx (or cyx: bands); this output's axes are {axes}"
            )
        if chunks is None:
            side = COG_TILE if format_name == "cog" else TIFF_TILE
            chunks = tuple(1 if letter == "c" else side for letter in axes)
        elif any(chunks[d] % 16 for d in spatial) or ("c" in axes and chunks[0] != 1):
            raise ConfigError(
                f"output.chunks: GeoTIFF tiles must be multiples of 16 along y and x (and 1 band), got {list(chunks)}"
            )
    resampling = output.overview_resampling or "average"
    return Storage(format_name, codec, chunks, output.shards, output.pyramid, ngff_version, resampling)
