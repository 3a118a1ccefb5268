#!/usr/bin/env python3
"""Generate the convpipe demo/benchmark input: a large synthetic uint16 image as Zarr v3.

Pure noise would make filter chains look pointless and compress unrealistically, so the image
has the kinds of structure real inputs have: an uneven illumination background, Gaussian
blobs (cells, stars) partly in clusters, sharp-edged rotated rectangles, discs, rings
(membranes) and thin lines at angles (roads, fibres), plus signal-dependent noise.

The scene is drawn once from the seeded RNG as a list of primitives in global coordinates;
every chunk renders only the primitives whose bounds reach it, so structures cross chunk
borders seamlessly and the image never has to exist in memory as a whole. Noise comes from
fixed-size tiles seeded by (seed, tile index), so the output depends only on seed and shape:
not on the thread count, nor even on the chunk grid. Works for 2-D images and 3-D volumes
(blobs become 3-D Gaussians, discs spheres, rectangles boxes, lines rods).

Usage: python scripts/make_sample.py [--shape 16384 16384] [--chunks 512 512] [--seed 0]
       [--workers N] [--force] [OUT]          (OUT defaults to <project>/data/sample.zarr)

`--satellite` makes the input of configs/satellite-nodata.yaml instead: a tiled GeoTIFF of
int16 surface reflectance x 10000 in blue, green, red and near infrared (bands, y, x; default
4 x 2048 x 2048, a few seconds), UTM 33N at 10 m, with a diagonal swath edge and cloud holes
marked nodata (GDAL_NODATA -9999); see "the satellite scene" below.

       python scripts/make_sample.py --satellite [--shape [BANDS] Y X] [--chunks TY TX]
       [--seed 0] [--workers N] [--force] [OUT]   (OUT defaults to <project>/data/satellite.tif)

Not part of the package; tests and benchmarks can load it by path and call make_sample()
or make_satellite().
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import NamedTuple
from xml.sax.saxutils import escape

import numpy as np
import zarr

ATTR_KEY = "convpipe_sample"
# Bump when the generated pixels change, so stale samples are regenerated rather than reused.
VERSION = 1
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "data" / "sample.zarr"
DEFAULT_SHAPE = (16384, 16384)

# Primitive counts per 16384**2 pixels; scaled by the image's pixel/voxel count.
REF_SIZE = 16384.0**2
N_BLOBS = 6000
N_RECTS = 500
N_LINES = 250
N_DISCS = 400
N_RINGS = 250

READ_NOISE = 20.0  # DN, Gaussian read noise
SHOT_GAIN = 1.0  # DN per "photon": noise variance grows with signal like Poisson noise


# NamedTuple rather than dataclass: dataclasses fail when this file is loaded by path without
# registering it in sys.modules (importlib.util.spec_from_file_location), as tests may do.
class Primitives(NamedTuple):
    """A batch of one kind of primitive, with integer pixel bounds for culling.

    Culling and clipping both use the same integer bounds, so whether a primitive touches a
    pixel never depends on which chunk the pixel is rendered in.
    """

    center: np.ndarray  # (n, ndim)
    amp: np.ndarray  # (n,)
    lo: np.ndarray  # (n, ndim) int64, first pixel of the bounding box
    hi: np.ndarray  # (n, ndim) int64, one past the last pixel
    sigma: np.ndarray | None = None  # blobs: (n, ndim) per-axis standard deviation
    radius: np.ndarray | None = None  # balls: (n,) outer radius
    inner: np.ndarray | None = None  # balls: (n,) inner radius, 0 for filled discs
    rot: np.ndarray | None = None  # boxes: (n, ndim, ndim), columns are the box axes
    half: np.ndarray | None = None  # boxes: (n, ndim) half-sizes along the box axes


class Scene(NamedTuple):
    """Everything needed to render any chunk: background parameters and primitives."""

    shape: tuple[int, ...]
    seed: int
    base: float
    slope: np.ndarray  # (ndim,) linear illumination gradient over the image
    vig_center: np.ndarray  # (ndim,) vignetting centre, normalised coordinates
    vig_strength: float
    ripples: list[tuple[float, np.ndarray, np.ndarray]]  # (amp, freqs, phases) per term
    blobs: Primitives
    balls: Primitives
    boxes: Primitives


def _count(n_ref: int, shape: Sequence[int], minimum: int) -> int:
    """Scale a count with image size so density is the same for small and large images."""
    return max(minimum, round(n_ref * math.prod(shape) / REF_SIZE))


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, size: int) -> np.ndarray:
    """Sizes spread evenly over scales: many small objects, a few large ones."""
    return np.exp(rng.uniform(math.log(lo), math.log(max(lo, hi)), size))


def _signed(rng: np.random.Generator, lo: float, hi: float, size: int, p_neg: float) -> np.ndarray:
    """Amplitudes; some negative (at half strength) so objects can be darker than surroundings."""
    sign = np.where(rng.random(size) < p_neg, -0.5, 1.0)
    return sign * rng.uniform(lo, hi, size)


def _rotations(rng: np.random.Generator, n: int, ndim: int) -> np.ndarray:
    """Uniformly random orthogonal matrices (QR of Gaussian matrices, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((n, ndim, ndim)))
    return q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]


def _bounds(center: np.ndarray, ext: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half-open integer pixel bounds covering center ± ext."""
    lo = np.floor(center - ext).astype(np.int64)
    return lo, np.ceil(center + ext).astype(np.int64) + 1


def _boxes(rng: np.random.Generator, n: int, shape: np.ndarray, half: np.ndarray, amp: np.ndarray) -> Primitives:
    """Rotated boxes; the bounding box is |R| @ half around the centre."""
    center = rng.uniform(0, 1, (n, shape.size)) * shape
    rot = _rotations(rng, n, shape.size)
    ext = np.einsum("nji,ni->nj", np.abs(rot), half)
    return Primitives(center, amp, *_bounds(center, ext), rot=rot, half=half)


def _concat(a: Primitives, b: Primitives) -> Primitives:
    """Merge two batches of the same kind (rectangles and lines are both boxes)."""
    fields = {}
    for name in Primitives._fields:
        x, y = getattr(a, name), getattr(b, name)
        fields[name] = None if x is None else np.concatenate([x, y])
    return Primitives(**fields)


def make_scene(shape: Sequence[int], seed: int) -> Scene:
    """Draw all primitives from the seeded RNG in a fixed order (independent of chunking)."""
    shape_t = tuple(int(s) for s in shape)
    ndim = len(shape_t)
    shp = np.asarray(shape_t, dtype=np.float64)
    big = float(shp.max())
    small = float(shp.min())  # caps object sizes, so thin volumes are not all one object
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))

    # Background: ~4000 DN with a gradient, vignetting and slow ripples; it stays well above
    # zero so dark objects rarely clip.
    base = 4000.0
    slope = rng.uniform(-0.35, 0.35, ndim)
    vig_center = rng.uniform(0.3, 0.7, ndim)
    vig_strength = 0.25
    ripples = [
        (float(rng.uniform(150, 450)), rng.uniform(0.3, 2.5, ndim), rng.uniform(0, 2 * np.pi, ndim)) for _ in range(3)
    ]

    # Gaussian blobs, about half of them in clusters (colonies, star clusters).
    n_blobs = _count(N_BLOBS, shape_t, 20)
    n_clusters = max(1, n_blobs // 200)
    cl_center = rng.uniform(0, 1, (n_clusters, ndim)) * shp
    cl_spread = np.minimum(rng.uniform(60, 500, n_clusters), big / 6)
    in_cluster = rng.random(n_blobs) < 0.5
    which = rng.integers(0, n_clusters, n_blobs)
    scatter = rng.standard_normal((n_blobs, ndim)) * cl_spread[which, None]
    uniform = rng.uniform(0, 1, (n_blobs, ndim)) * shp
    center = np.where(in_cluster[:, None], cl_center[which] + scatter, uniform)
    center = np.clip(center, 0, shp - 1)
    sigma = np.clip(rng.lognormal(math.log(3.0), 0.6, n_blobs), 0.8, 40.0)
    sigma = sigma[:, None] * rng.lognormal(0.0, 0.25, (n_blobs, ndim))
    amp = np.clip(rng.lognormal(math.log(3000.0), 0.8, n_blobs), 200, 40000)
    amp *= np.where(rng.random(n_blobs) < 0.1, -0.3, 1.0)  # a few dark spots
    # Cut off at 5 sigma, where even the brightest blob is below 0.2 DN.
    blobs = Primitives(center, amp, *_bounds(center, 5 * sigma), sigma=sigma)

    # Balls: filled discs/spheres and thin rings/shells (membranes).
    n_discs = _count(N_DISCS, shape_t, 4)
    n_rings = _count(N_RINGS, shape_t, 3)
    n_balls = n_discs + n_rings
    center = rng.uniform(0, 1, (n_balls, ndim)) * shp
    radius = _log_uniform(rng, 5, min(300.0, small / 3), n_balls)
    width = rng.uniform(1.5, 5.0, n_balls)
    is_ring = np.arange(n_balls) >= n_discs
    inner = np.where(is_ring, np.maximum(radius - width, 0.0), 0.0)
    amp = np.where(is_ring, rng.uniform(1500, 8000, n_balls), _signed(rng, 500, 3000, n_balls, 0.35))
    r = radius[:, None]
    balls = Primitives(center, amp, *_bounds(center, r), radius=radius, inner=inner)

    # Boxes: rotated rectangles/boxes, and thin long ones as lines/rods.
    n_rects = _count(N_RECTS, shape_t, 4)
    half = _log_uniform(rng, 10, min(400.0, small / 3), n_rects * ndim).reshape(n_rects, ndim)
    rects = _boxes(rng, n_rects, shp, half, _signed(rng, 500, 3000, n_rects, 0.4))
    n_lines = _count(N_LINES, shape_t, 4)
    half = np.repeat(rng.uniform(0.8, 2.5, n_lines)[:, None], ndim, axis=1)
    half[:, 0] = _log_uniform(rng, 100, min(2500.0, big / 2), n_lines)
    lines = _boxes(rng, n_lines, shp, half, _signed(rng, 1000, 6000, n_lines, 0.3))

    return Scene(
        shape=shape_t,
        seed=seed,
        base=base,
        slope=slope,
        vig_center=vig_center,
        vig_strength=vig_strength,
        ripples=ripples,
        blobs=blobs,
        balls=balls,
        boxes=_concat(rects, lines),
    )


def _hits(p: Primitives, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Indices of primitives whose bounding box overlaps the pixel range [lo, hi)."""
    mask = np.all((p.hi > lo) & (p.lo < hi), axis=1)
    return np.flatnonzero(mask)


def _region(p: Primitives, i: int, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
    """Pixel bounds (global, half-open) of primitive i clipped to the chunk."""
    return np.maximum(lo, p.lo[i]), np.minimum(hi, p.hi[i])


def _axes(r_lo: np.ndarray, r_hi: np.ndarray, center: np.ndarray) -> list[np.ndarray]:
    """Per-axis pixel coordinates relative to `center`, shaped to broadcast (open mesh)."""
    coords = [np.arange(a, b, dtype=np.float32) - np.float32(c) for a, b, c in zip(r_lo, r_hi, center, strict=True)]
    return list(np.ix_(*coords))


def _background(scene: Scene, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Smooth illumination; every term is separable so it costs a few passes per chunk."""
    u = [
        (np.arange(a, b, dtype=np.float32) + np.float32(0.5)) / np.float32(n)
        for a, b, n in zip(lo, hi, scene.shape, strict=True)
    ]
    mesh = np.ix_(*u)
    lin = sum(np.float32(s) * (m - np.float32(0.5)) for s, m in zip(scene.slope, mesh, strict=True))
    vig = sum((m - np.float32(c)) ** 2 for c, m in zip(scene.vig_center, mesh, strict=True))
    # lin and vig are already full-size (sums over an open mesh), so `out` is a new array.
    out = np.float32(scene.base) * (1 + lin) * (1 - np.float32(scene.vig_strength) * vig)
    for amp, freq, phase in scene.ripples:
        term = np.float32(amp)
        for f, ph, m in zip(freq, phase, mesh, strict=True):
            term = term * np.cos(np.float32(2 * np.pi * f) * m + np.float32(ph))
        out += term
    return out


def _noise(scene: Scene, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Standard normal noise from fixed global tiles, so it does not depend on the chunk grid."""
    ndim = len(scene.shape)
    edge = 2 ** (16 // ndim)  # 256 px tiles in 2-D, 32 voxel tiles in 3-D
    out = np.empty(tuple(hi - lo), dtype=np.float32)
    ranges = [range(a // edge, (b - 1) // edge + 1) for a, b in zip(lo, hi, strict=True)]
    for tile in itertools.product(*ranges):
        rng = np.random.default_rng(np.random.SeedSequence([scene.seed, 1, *tile]))
        data = rng.standard_normal((edge,) * ndim, dtype=np.float32)
        t_lo = np.asarray(tile) * edge
        a = np.maximum(lo, t_lo)
        b = np.minimum(hi, t_lo + edge)
        dst = tuple(slice(x - o, y - o) for x, y, o in zip(a, b, lo, strict=True))
        src = tuple(slice(x - o, y - o) for x, y, o in zip(a, b, t_lo, strict=True))
        out[dst] = data[src]
    return out


def _box_hits(p: Primitives, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Boxes overlapping the chunk: bounding boxes, then the box's own axes (separating axes).

    The second test keeps a long diagonal line from being rendered in every chunk its
    bounding box covers.
    """
    idx = _hits(p, lo, hi)
    if idx.size == 0:
        return idx
    half_chunk = (hi - lo) / 2
    rel = (lo + hi - 1) / 2 - p.center[idx]  # chunk centre relative to box centre
    rot = p.rot[idx]
    proj = np.abs(np.einsum("nji,nj->ni", rot, rel))
    reach = np.einsum("nji,j->ni", np.abs(rot), half_chunk)
    return idx[np.all(proj <= p.half[idx] + reach + 1, axis=1)]


def render_chunk(scene: Scene, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """Render the global pixel range [lo, hi) as uint16; pure function of scene and range."""
    lo_a = np.asarray(lo, dtype=np.int64)
    hi_a = np.asarray(hi, dtype=np.int64)
    img = _background(scene, lo_a, hi_a)

    def view(r_lo: np.ndarray, r_hi: np.ndarray) -> np.ndarray:
        return img[tuple(slice(a, b) for a, b in zip(r_lo - lo_a, r_hi - lo_a, strict=True))]

    p = scene.blobs  # separable Gaussians: an outer product of 1-D profiles
    for i in _hits(p, lo_a, hi_a):
        r_lo, r_hi = _region(p, i, lo_a, hi_a)
        term = np.float32(p.amp[i])
        for m, s in zip(_axes(r_lo, r_hi, p.center[i]), p.sigma[i], strict=True):
            term = term * np.exp(np.float32(-0.5 / s**2) * m * m)
        view(r_lo, r_hi)[...] += term

    p = scene.balls
    for i in _hits(p, lo_a, hi_a):
        r_lo, r_hi = _region(p, i, lo_a, hi_a)
        r2 = sum(m * m for m in _axes(r_lo, r_hi, p.center[i]))
        mask = (r2 <= p.radius[i] ** 2) & (r2 >= p.inner[i] ** 2)
        view(r_lo, r_hi)[mask] += np.float32(p.amp[i])

    p = scene.boxes
    for i in _box_hits(p, lo_a, hi_a):
        r_lo, r_hi = _region(p, i, lo_a, hi_a)
        mesh = _axes(r_lo, r_hi, p.center[i])
        mask = True
        for k in range(len(mesh)):  # coordinate along box axis k = column k of the rotation
            q = sum(np.float32(p.rot[i][j, k]) * m for j, m in enumerate(mesh))
            mask = mask & (np.abs(q) <= p.half[i][k])
        view(r_lo, r_hi)[mask] += np.float32(p.amp[i])

    # Signal-dependent noise: variance = read noise**2 + signal / gain, like Poisson noise.
    sd = np.maximum(img, 0)
    sd *= np.float32(1 / SHOT_GAIN)
    sd += np.float32(READ_NOISE**2)
    np.sqrt(sd, out=sd)
    sd *= _noise(scene, lo_a, hi_a)
    img += sd
    np.clip(img, 0, 65535, out=img)
    np.rint(img, out=img)
    return img.astype(np.uint16)


def _chunk_ranges(shape: Sequence[int], chunks: Sequence[int]) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(lo, hi) for every chunk of the grid, in C order."""
    grid = [range(0, n, c) for n, c in zip(shape, chunks, strict=True)]
    for lo in itertools.product(*grid):
        yield lo, tuple(min(a + c, n) for a, c, n in zip(lo, chunks, shape, strict=True))


def _attrs(path: str | os.PathLike[str]) -> dict | None:
    """This script's attribute of an existing array, or None if unreadable/absent.

    Reads zarr.json directly: a half-written or foreign store must give None, not an error.
    """
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    value = attrs.get(ATTR_KEY) if isinstance(attrs, dict) else None
    return value if isinstance(value, dict) else None


def is_complete(path: str | os.PathLike[str], shape: Sequence[int], chunks: Sequence[int], seed: int) -> bool:
    """True if `path` holds a finished sample made with these parameters."""
    recorded = _attrs(path)
    made = _made_with(recorded, seed=seed, shape=list(shape), chunks=list(chunks), version=VERSION)
    return made and recorded is not None and recorded.get("complete") is True


def _made_with(recorded: dict | None, **expected: object) -> bool:
    """Whether the parameters a file records are all these (None: it records none)."""
    return recorded is not None and all(recorded.get(key) == value for key, value in expected.items())


def make_sample(
    path: str | os.PathLike[str],
    shape: Sequence[int] = DEFAULT_SHAPE,
    chunks: Sequence[int] = (512, 512),
    seed: int = 0,
    *,
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
) -> None:
    """(Re)write the sample at `path`, replacing whatever array is there.

    Marks the array complete only after the last chunk is written, so an interrupted run is
    detected (and redone) by the next one.
    """
    shape = tuple(int(s) for s in shape)
    chunks = tuple(int(c) for c in chunks)
    if len(shape) != len(chunks) or len(shape) not in (2, 3):
        raise ValueError(f"need 2-D or 3-D shape and matching chunks, got {shape}, {chunks}")
    if min(shape) < 1 or min(chunks) < 1:
        raise ValueError(f"shape and chunks must be positive, got {shape}, {chunks}")
    say = log or (lambda _msg: None)
    t0 = time.perf_counter()
    scene = make_scene(shape, seed)
    n_prims = len(scene.blobs.amp) + len(scene.balls.amp) + len(scene.boxes.amp)
    say(f"scene: {n_prims} primitives ({len(scene.blobs.amp)} blobs) in {time.perf_counter() - t0:.2f} s")

    meta = {
        "complete": False,
        "seed": seed,
        "shape": list(shape),
        "chunks": list(chunks),
        "version": VERSION,
    }
    names = ("z", "y", "x")[-len(shape) :]
    arr = zarr.create_array(
        store=str(path),
        shape=shape,
        chunks=chunks,
        dtype="uint16",
        fill_value=0,
        dimension_names=names,
        attributes={ATTR_KEY: meta},
        overwrite=True,
    )

    def work(lo: tuple[int, ...], hi: tuple[int, ...]) -> None:
        arr[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = render_chunk(scene, lo, hi)

    ranges = list(_chunk_ranges(shape, chunks))
    total = len(ranges)
    step = -(-total // 10)  # about ten progress lines
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(work, lo, hi) for lo, hi in ranges]
        try:
            for done, fut in enumerate(as_completed(futures), start=1):
                fut.result()
                if done % step == 0 or done == total:
                    say(f"{done}/{total} chunks ({100 * done // total}%) {time.perf_counter() - t0:.1f} s")
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    arr.update_attributes({ATTR_KEY: {**meta, "complete": True}})


def _default_chunks(shape: Sequence[int]) -> tuple[int, ...]:
    """512 x 512 for images (0.5 MB), 32 x 256 x 256 for volumes (4 MB), clipped to shape."""
    want = (32, 256, 256) if len(shape) == 3 else (512, 512)
    return tuple(min(c, s) for c, s in zip(want, shape, strict=True))


# --- the satellite scene (--satellite) ------------------------------------------------------
#
# A multi-band surface-reflectance scene as a satellite user gets it, for the nodata example
# (configs/satellite-nodata.yaml): int16 reflectance x 10000 in blue, green, red and near
# infrared (the HLS convention), on a 10 m UTM grid, with a diagonal swath edge (right of it:
# nodata) and masked clouds (nodata holes), GDAL_NODATA -9999. Land cover: soil and grassland
# under fields on a shared cadastral orientation, centre-pivot circles, woods, lakes, a
# meandering river and roads, each class with its own spectrum. Like the Zarr sample it is
# drawn once from the seed and rendered tile by tile from global coordinates, so the file
# depends only on seed, shape and tile size, and is written tile by tile in bounded memory.

SATELLITE_OUT = Path(__file__).resolve().parent.parent / "data" / "satellite.tif"
SATELLITE_SHAPE = (4, 2048, 2048)  # bands, y, x
SATELLITE_TILE = (256, 256)
SATELLITE_VERSION = 1
SATELLITE_KEY = "convpipe_satellite_sample"  # GDAL metadata item recording the parameters
SATELLITE_NODATA = -9999
BANDS = ("blue", "green", "red", "nir")
REFLECTANCE_SCALE = 1e-4  # reflectance = value x scale (GDAL's band scale)
PIXEL_SIZE = 10.0  # metres
ORIGIN = (399960.0, 5900040.0)  # upper-left corner (x, y) in UTM zone 33N
# GeoKeyDirectory: version 1.1.0, 3 keys: projected model, pixel is area, EPSG:32633.
GEOKEYS = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633)
# The swath edge runs from this fraction of the width at the top to this one at the bottom.
SWATH_TOP, SWATH_BOTTOM = 0.66, 0.93
N_CLOUDS = 7

# Surface reflectance x 10000 per class: blue, green, red, near infrared.
SPECTRA = np.array(
    [
        (600, 550, 350, 150),  # water
        (1000, 1300, 1700, 2400),  # bare soil
        (450, 800, 600, 3000),  # grassland
        (300, 700, 350, 4500),  # green crop
        (750, 1050, 1350, 2700),  # ripe crop
        (250, 450, 250, 3300),  # forest
        (1100, 1200, 1300, 1500),  # road
    ],
    dtype=np.float32,
)
WATER, SOIL, GRASS, CROP, RIPE, FOREST, ROAD = range(len(SPECTRA))

# Primitive counts per 2048**2 pixels (scaled with the area, like the Zarr sample's).
SAT_REF = 2048.0**2
N_FIELDS, N_WOODS, N_PIVOTS, N_LAKES, N_ROADS = 400, 120, 12, 3, 30


Meander = tuple[float, float, float]  # amplitude, wavelength (pixels), phase


class Satellite(NamedTuple):
    """Everything needed to render any tile of any band of the satellite scene."""

    shape: tuple[int, int, int]  # bands, y, x
    seed: int
    ripples: list[tuple[float, np.ndarray, np.ndarray]]  # soil/grass mix of the background
    fields: Primitives  # rotated rectangles; amp: brightness factor
    field_class: np.ndarray
    woods: Primitives  # Gaussian blobs; amp: canopy weight
    discs: Primitives  # centre pivots and lakes
    disc_class: np.ndarray
    roads: Primitives  # thin rotated rectangles
    river: tuple[float, float, float, tuple[Meander, ...]]  # y0, slope, half width, meanders
    clouds: Primitives  # discs of nodata


def _sat_count(n_ref: int, shape: Sequence[int], minimum: int) -> int:
    return max(minimum, round(n_ref * math.prod(shape) / SAT_REF))


def _rotated(center: np.ndarray, angle: np.ndarray, half: np.ndarray, amp: np.ndarray) -> Primitives:
    """2-D boxes at these angles: box axis 0 is (cos a, sin a) in (y, x)."""
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.stack([np.stack([cos, -sin], axis=1), np.stack([sin, cos], axis=1)], axis=1)
    ext = np.einsum("nji,ni->nj", np.abs(rot), half)
    return Primitives(center, amp, *_bounds(center, ext), rot=rot, half=half)


def _discs(center: np.ndarray, radius: np.ndarray) -> Primitives:
    amp = np.ones(len(radius))
    return Primitives(center, amp, *_bounds(center, radius[:, None]), radius=radius, inner=np.zeros(len(radius)))


def make_satellite_scene(shape: Sequence[int], seed: int) -> Satellite:
    """Draw the scene from the seeded RNG (a stream of its own: not the Zarr sample's)."""
    bands, height, width = (int(s) for s in shape)
    plane = (height, width)
    shp = np.asarray(plane, dtype=np.float64)
    size = float(min(plane))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 10]))

    ripples = [(float(rng.uniform(0.3, 0.6)), rng.uniform(1.0, 4.0, 2), rng.uniform(0, 2 * np.pi, 2)) for _ in range(3)]

    # Fields share the land register's orientation, give or take 3 degrees; 150 m to 2 km.
    grid = float(rng.uniform(0, np.pi / 2))
    n = _sat_count(N_FIELDS, plane, 8)
    center = rng.uniform(0, 1, (n, 2)) * shp
    angle = grid + rng.normal(0, 0.05, n)
    half = _log_uniform(rng, 8, max(8.0, min(100.0, size / 4)), 2 * n).reshape(n, 2)
    fields = _rotated(center, angle, half, rng.uniform(0.85, 1.15, n))
    field_class = rng.choice(np.array([SOIL, GRASS, CROP, RIPE]), n, p=[0.25, 0.2, 0.35, 0.2])

    # Woods: canopy blobs, most in clusters.
    n = _sat_count(N_WOODS, plane, 6)
    n_clusters = max(1, n // 15)
    cl_center = rng.uniform(0, 1, (n_clusters, 2)) * shp
    spread = rng.uniform(0.02, 0.07, n_clusters) * size
    which = rng.integers(0, n_clusters, n)
    center = cl_center[which] + rng.standard_normal((n, 2)) * spread[which, None]
    sigma = np.repeat(_log_uniform(rng, 5, max(5.0, min(40.0, size / 20)), n)[:, None], 2, axis=1)
    woods = Primitives(center, rng.uniform(0.6, 1.6, n), *_bounds(center, 3 * sigma), sigma=sigma)

    # Centre pivots (irrigated: green) and lakes.
    n_pivots, n_lakes = _sat_count(N_PIVOTS, plane, 1), _sat_count(N_LAKES, plane, 1)
    center = rng.uniform(0.05, 0.95, (n_pivots + n_lakes, 2)) * shp
    radius = np.concatenate(
        [
            rng.uniform(20, 40, n_pivots),
            _log_uniform(rng, 10, max(10.0, min(70.0, size / 6)), n_lakes),
        ]
    )
    discs = _discs(center, np.minimum(radius, size / 6))
    disc_class = np.array([CROP] * n_pivots + [WATER] * n_lakes)

    # Roads: most along the land register, a few at any angle; two long ones cross the scene.
    n = _sat_count(N_ROADS, plane, 3)
    angle = np.where(rng.random(n) < 0.7, grid + np.pi / 2 * rng.integers(0, 2, n), rng.uniform(0, np.pi, n))
    half = np.stack(
        [_log_uniform(rng, 60, max(60.0, min(1200.0, size / 2)), n), rng.uniform(0.6, 1.2, n)],
        axis=1,
    )
    roads = _rotated(rng.uniform(0, 1, (n, 2)) * shp, angle, half, np.ones(n))
    diagonal = float(np.hypot(*shp))
    highways = _rotated(
        rng.uniform(0.25, 0.75, (2, 2)) * shp,
        rng.uniform(0, np.pi, 2),
        np.stack([np.full(2, diagonal), rng.uniform(1.4, 2.0, 2)], axis=1),
        np.ones(2),
    )
    roads = _concat(roads, highways)

    # The river: a sine meander on a slow one, across the scene from left to right.
    river = (
        float(rng.uniform(0.3, 0.7) * height),
        float(rng.uniform(-0.15, 0.15)),
        float(np.clip(size * 0.004, 2.0, 10.0)),
        (
            (
                float(rng.uniform(0.03, 0.07) * height),
                float(rng.uniform(0.35, 0.6) * width),
                float(rng.uniform(0, 2 * np.pi)),
            ),
            (
                float(rng.uniform(0.01, 0.025) * height),
                float(rng.uniform(0.08, 0.15) * width),
                float(rng.uniform(0, 2 * np.pi)),
            ),
        ),
    )

    # Clouds: clumps of 3-7 discs, mostly inside the swath.
    centers, radii = [], []
    for _ in range(N_CLOUDS):
        middle = np.array([rng.uniform(0.05, 0.95) * height, rng.uniform(0.03, 0.7) * width])
        k = int(rng.integers(3, 8))
        centers.append(middle + rng.standard_normal((k, 2)) * 0.03 * size)
        radii.append(rng.uniform(0.012, 0.035, k) * size)
    clouds = _discs(np.concatenate(centers), np.maximum(np.concatenate(radii), 1.5))

    return Satellite(
        shape=(bands, height, width),
        seed=seed,
        ripples=ripples,
        fields=fields,
        field_class=field_class,
        woods=woods,
        discs=discs,
        disc_class=disc_class,
        roads=roads,
        river=river,
        clouds=clouds,
    )


def _band_noise(seed: int, band: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Standard normal noise from fixed 256 x 256 tiles of the band (independent of the tiling)."""
    edge = 256
    out = np.empty(tuple(hi - lo), dtype=np.float32)
    for tile in itertools.product(*(range(a // edge, (b - 1) // edge + 1) for a, b in zip(lo, hi, strict=True))):
        data = np.random.default_rng(np.random.SeedSequence([seed, 11, band, *tile])).standard_normal(
            (edge, edge), dtype=np.float32
        )
        t_lo = np.asarray(tile) * edge
        a, b = np.maximum(lo, t_lo), np.minimum(hi, t_lo + edge)
        out[tuple(slice(x - o, y - o) for x, y, o in zip(a, b, lo, strict=True))] = data[
            tuple(slice(x - o, y - o) for x, y, o in zip(a, b, t_lo, strict=True))
        ]
    return out


def satellite_nodata(scene: Satellite, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """Where the tile [lo, hi) is nodata (every band): right of the swath edge, or under a cloud."""
    lo_a, hi_a = np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)
    _, height, width = scene.shape
    y = (np.arange(lo_a[0], hi_a[0], dtype=np.float64)[:, None] + 0.5) / height
    x = (np.arange(lo_a[1], hi_a[1], dtype=np.float64)[None, :] + 0.5) / width
    mask = x > SWATH_TOP + (SWATH_BOTTOM - SWATH_TOP) * y
    p = scene.clouds
    for i in _hits(p, lo_a, hi_a):
        r_lo, r_hi = _region(p, i, lo_a, hi_a)
        r2 = sum(m * m for m in _axes(r_lo, r_hi, p.center[i]))
        view = mask[tuple(slice(a, b) for a, b in zip(r_lo - lo_a, r_hi - lo_a, strict=True))]
        view |= r2 <= p.radius[i] ** 2
    return mask


def render_satellite_tile(scene: Satellite, band: int, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """Band ``band`` of the pixel range [lo, hi) (y, x) as int16; a pure function of its
    arguments."""
    lo_a, hi_a = np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)
    _, height, width = scene.shape
    spectrum = SPECTRA[:, band]

    def view(r_lo: np.ndarray, r_hi: np.ndarray) -> np.ndarray:
        return img[tuple(slice(a, b) for a, b in zip(r_lo - lo_a, r_hi - lo_a, strict=True))]

    # Background: soil and grassland mixed by slow ripples.
    u = [
        (np.arange(a, b, dtype=np.float32) + np.float32(0.5)) / np.float32(n)
        for a, b, n in zip(lo_a, hi_a, (height, width), strict=True)
    ]
    mesh = np.ix_(*u)
    mix = np.full(tuple(hi_a - lo_a), 0.5, dtype=np.float32)
    for amp, freq, phase in scene.ripples:
        term = np.float32(amp / 2)
        for f, ph, m in zip(freq, phase, mesh, strict=True):
            term = term * np.cos(np.float32(2 * np.pi * f) * m + np.float32(ph))
        mix += term
    np.clip(mix, 0, 1, out=mix)
    img = spectrum[SOIL] + mix * (spectrum[GRASS] - spectrum[SOIL])

    p = scene.fields
    for i in _box_hits(p, lo_a, hi_a):
        r_lo, r_hi = _region(p, i, lo_a, hi_a)
        mesh_i = _axes(r_lo, r_hi, p.center[i])
        inside = True
        for k in range(2):
            q = sum(np.float32(p.rot[i][j, k]) * m for j, m in enumerate(mesh_i))
            inside = inside & (np.abs(q) <= p.half[i][k])
        view(r_lo, r_hi)[inside] = np.float32(spectrum[scene.field_class[i]] * p.amp[i])

    p = scene.woods  # canopy cover: a sum of Gaussian blobs, mixed towards the forest spectrum
    cover = np.zeros_like(img)
    for i in _hits(p, lo_a, hi_a):
        r_lo, r_hi = _region(p, i, lo_a, hi_a)
        term = np.float32(p.amp[i])
        for m, s in zip(_axes(r_lo, r_hi, p.center[i]), p.sigma[i], strict=True):
            term = term * np.exp(np.float32(-0.5 / s**2) * m * m)
        cover[tuple(slice(a, b) for a, b in zip(r_lo - lo_a, r_hi - lo_a, strict=True))] += term
    np.clip(cover, 0, 1, out=cover)
    img += cover * (spectrum[FOREST] - img)

    p = scene.discs
    for i in _hits(p, lo_a, hi_a):
        r_lo, r_hi = _region(p, i, lo_a, hi_a)
        r2 = sum(m * m for m in _axes(r_lo, r_hi, p.center[i]))
        view(r_lo, r_hi)[r2 <= p.radius[i] ** 2] = spectrum[scene.disc_class[i]]

    y0, slope, half, meanders = scene.river  # |y - centre(x)| scaled to the distance across
    x = np.arange(lo_a[1], hi_a[1], dtype=np.float64)
    centre = y0 + slope * x
    d_centre = np.full_like(x, slope)
    for amp, wavelength, phase in meanders:
        w = 2 * np.pi / wavelength
        centre += amp * np.sin(w * x + phase)
        d_centre += amp * w * np.cos(w * x + phase)
    reach = half * np.sqrt(1 + d_centre**2)
    if (centre + reach).max() >= lo_a[0] and (centre - reach).min() < hi_a[0]:
        y = np.arange(lo_a[0], hi_a[0], dtype=np.float64)[:, None]
        img[np.abs(y - centre) <= reach] = spectrum[WATER]

    p = scene.roads
    for i in _box_hits(p, lo_a, hi_a):
        r_lo, r_hi = _region(p, i, lo_a, hi_a)
        mesh_i = _axes(r_lo, r_hi, p.center[i])
        inside = True
        for k in range(2):
            q = sum(np.float32(p.rot[i][j, k]) * m for j, m in enumerate(mesh_i))
            inside = inside & (np.abs(q) <= p.half[i][k])
        view(r_lo, r_hi)[inside] = spectrum[ROAD]

    # Sensor noise: 2 % of the signal plus 30 (0.003 reflectance).
    img += (np.float32(0.02) * img + np.float32(30)) * _band_noise(scene.seed, band, lo_a, hi_a)
    np.clip(img, 0, 10000, out=img)
    np.rint(img, out=img)
    out = img.astype(np.int16)
    out[satellite_nodata(scene, lo_a, hi_a)] = SATELLITE_NODATA
    return out


def _satellite_metadata(shape: Sequence[int], tile: Sequence[int], seed: int) -> str:
    """GDAL's metadata tag: this script's parameters, and each band's name and scale."""
    record = json.dumps(
        {"seed": seed, "shape": list(shape), "tile": list(tile), "version": SATELLITE_VERSION},
        sort_keys=True,
    )
    items = [f'<Item name="{SATELLITE_KEY}">{escape(record)}</Item>']
    for band in range(shape[0]):
        items.append(f'<Item name="DESCRIPTION" sample="{band}" role="description">{BANDS[band]}</Item>')
        items.append(f'<Item name="SCALE" sample="{band}" role="scale">{REFLECTANCE_SCALE}</Item>')
        items.append(f'<Item name="OFFSET" sample="{band}" role="offset">0</Item>')
    return f"<GDALMetadata>{''.join(items)}</GDALMetadata>"


def satellite_parameters(path: str | os.PathLike[str]) -> dict | None:
    """The parameters a satellite scene at ``path`` was made with; None if it is not one."""
    import xml.etree.ElementTree as ElementTree

    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tag = tif.pages.first.tags.get(42112)  # GDAL_METADATA
            text = None if tag is None else str(tag.value)
        if text is None:
            return None
        for item in ElementTree.fromstring(text).iter("Item"):
            if item.get("name") == SATELLITE_KEY:
                value = json.loads(item.text or "")
                return value if isinstance(value, dict) else None
    except (OSError, ValueError, ElementTree.ParseError, tifffile.TiffFileError):
        return None
    return None


def is_satellite_complete(path: str | os.PathLike[str], shape: Sequence[int], tile: Sequence[int], seed: int) -> bool:
    """True if ``path`` holds a satellite scene made with these parameters (files are
    published whole, so one that exists is complete)."""
    return _made_with(
        satellite_parameters(path), seed=seed, shape=list(shape), tile=list(tile), version=SATELLITE_VERSION
    )


def make_satellite(
    path: str | os.PathLike[str],
    shape: Sequence[int] = SATELLITE_SHAPE,
    tile: Sequence[int] = SATELLITE_TILE,
    seed: int = 0,
    *,
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Write the satellite scene (bands, y, x) to the GeoTIFF ``path``, replacing it.

    Tiles are rendered in parallel and handed to tifffile in file order (all of band 0, then
    band 1, ...), a few rows of tiles ahead, so memory holds no more than that whatever the
    shape. The file is written beside ``path`` as ``NAME.partial`` and renamed when whole.
    """
    import tifffile

    shape = tuple(int(s) for s in shape)
    tile = tuple(int(t) for t in tile)
    if len(shape) != 3 or not 1 <= shape[0] <= len(BANDS) or min(shape) < 1:
        raise ValueError(f"need a shape (bands, y, x) with 1 to {len(BANDS)} bands, got {shape}")
    if len(tile) != 2 or min(tile) < 16 or any(t % 16 for t in tile):
        raise ValueError(f"need a tile (y, x) of multiples of 16, got {tile}")
    say = log or (lambda _msg: None)
    t0 = time.perf_counter()
    scene = make_satellite_scene(shape, seed)
    bands, height, width = shape
    ranges = [(band, lo, hi) for band in range(bands) for lo, hi in _chunk_ranges((height, width), tile)]
    per_band = len(ranges) // bands
    workers = workers or os.cpu_count() or 1
    tags = [
        (33550, "d", 3, (PIXEL_SIZE, PIXEL_SIZE, 0.0), True),  # ModelPixelScale
        (33922, "d", 6, (0.0, 0.0, 0.0, *ORIGIN, 0.0), True),  # ModelTiepoint: corner of pixel 0, 0
        (34735, "H", len(GEOKEYS), GEOKEYS, True),  # GeoKeyDirectory
        (42112, "s", 0, _satellite_metadata(shape, tile, seed), True),  # GDAL_METADATA
        (42113, "s", 0, str(SATELLITE_NODATA), True),  # GDAL_NODATA
    ]

    def tiles(pool: ThreadPoolExecutor) -> Iterator[np.ndarray]:
        ahead = max(2 * workers, -(-width // tile[1]))  # about a row of tiles in flight
        pending: deque = deque()
        done = 0

        def next_tile() -> np.ndarray:
            nonlocal done
            data = pending.popleft().result()
            done += 1
            if done % per_band == 0:
                band = done // per_band
                say(f"band {band}/{bands} ({BANDS[band - 1]}) {time.perf_counter() - t0:.1f} s")
            return _padded(data, tile)

        for band, lo, hi in ranges:
            pending.append(pool.submit(render_satellite_tile, scene, band, lo, hi))
            if len(pending) > ahead:
                yield next_tile()
        while pending:
            yield next_tile()

    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            tifffile.imwrite(
                partial,
                data=tiles(pool),
                shape=shape if bands > 1 else shape[1:],  # one band: a plain y, x image
                dtype=np.int16,
                tile=tile,
                compression="zlib",
                predictor=True,
                photometric="minisblack",
                planarconfig="separate" if bands > 1 else None,
                bigtiff=math.prod(shape) * 2 > 2**32 - 2**28,
                extratags=tags,
                metadata=None,
                maxworkers=workers,
                buffersize=16 * 2**20,  # tiles compressed 16 MiB at a time
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _padded(data: np.ndarray, tile: Sequence[int]) -> np.ndarray:
    """An edge tile padded to the whole tile (the padding is outside the image)."""
    if data.shape == tuple(tile):
        return data
    out = np.full(tuple(tile), SATELLITE_NODATA, dtype=data.dtype)
    out[: data.shape[0], : data.shape[1]] = data
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "out",
        nargs="?",
        default=None,
        metavar="OUT",
        help=f"output Zarr v3 array (default: {DEFAULT_OUT}; with --satellite: {SATELLITE_OUT})",
    )
    # nargs="+" would swallow a following OUT ("--shape 2048 2048 out.zarr"), so sizes are
    # taken as strings and a trailing non-number is given back as OUT below.
    ap.add_argument(
        "--shape",
        nargs="+",
        metavar="N",
        default=None,
        help="2 or 3 sizes (default: 16384 16384; with --satellite: bands y x, 4 2048 2048)",
    )
    ap.add_argument(
        "--chunks",
        nargs="+",
        metavar="N",
        help="chunk sizes, one per axis (default: 512 512; 32 256 256 for 3-D; with --satellite: "
        "the GeoTIFF's tile, 256 256)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None, help="threads (default: all cores)")
    ap.add_argument("--force", action="store_true", help="regenerate even if complete")
    ap.add_argument(
        "--satellite",
        action="store_true",
        help="make the satellite scene instead: a multi-band int16 reflectance GeoTIFF (UTM, "
        "10 m) with a swath edge and cloud holes marked nodata (-9999)",
    )
    args = ap.parse_args(argv)

    extra: list[str] = []

    def sizes(values: list[str], flag: str) -> tuple[int, ...]:
        n = len(values)
        while n and not values[n - 1].lstrip("-").isdigit():
            n -= 1
        extra.extend(values[n:])
        if not n:
            ap.error(f"{flag} needs integer sizes")
        return tuple(int(v) for v in values[:n])

    if args.satellite:
        return _satellite_main(ap, args, sizes, extra)
    shape = sizes(args.shape or [str(n) for n in DEFAULT_SHAPE], "--shape")
    if len(shape) not in (2, 3):
        ap.error("--shape needs 2 or 3 sizes")
    chunks = sizes(args.chunks, "--chunks") if args.chunks else _default_chunks(shape)
    if len(chunks) != len(shape):
        ap.error("--chunks needs one size per axis of --shape")
    if args.out is not None:
        extra.insert(0, args.out)
    if len(extra) > 1:
        ap.error(f"expected one OUT, got {extra}")
    if min(shape) < 1 or min(chunks) < 1:
        ap.error("--shape and --chunks must be positive")

    out = Path(extra[0]) if extra else DEFAULT_OUT
    if out.exists():
        if not args.force and is_complete(out, shape, chunks, args.seed):
            print(f"make_sample: {out} is complete, skipping (use --force to regenerate)")
            return 0
        # Only ever delete something this script could have written: a Zarr v3 node or an
        # empty directory (a run interrupted before writing metadata).
        if not out.is_dir() or (not (out / "zarr.json").exists() and any(out.iterdir())):
            print(
                f"make_sample: {out} exists and is not a Zarr v3 store; not touching it",
                file=sys.stderr,
            )
            return 2
        why = (
            "--force"
            if args.force
            else ("incomplete" if not (_attrs(out) or {}).get("complete") else "other parameters")
        )
        print(f"make_sample: removing {out} ({why})")
        shutil.rmtree(out)

    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"make_sample: writing {out} shape={shape} chunks={chunks} seed={args.seed}", flush=True)
    t0 = time.perf_counter()
    make_sample(
        out,
        shape,
        chunks,
        args.seed,
        workers=args.workers,
        log=lambda m: print(f"make_sample: {m}", flush=True),
    )
    print(f"make_sample: done in {time.perf_counter() - t0:.1f} s -> {out}")
    return 0


def _satellite_main(
    ap: argparse.ArgumentParser,
    args: argparse.Namespace,
    sizes: Callable[[list[str], str], tuple[int, ...]],
    extra: list[str],
) -> int:
    """``--satellite``: check the sizes, skip a complete scene, else (re)write it."""
    shape = sizes(args.shape, "--shape") if args.shape else SATELLITE_SHAPE
    if len(shape) == 2:
        shape = (SATELLITE_SHAPE[0], *shape)
    if len(shape) != 3 or not 1 <= shape[0] <= len(BANDS) or min(shape) < 1:
        ap.error(f"--satellite --shape needs Y X or BANDS Y X, with 1 to {len(BANDS)} bands")
    tile = sizes(args.chunks, "--chunks") if args.chunks else SATELLITE_TILE
    if len(tile) != 2 or min(tile) < 16 or any(t % 16 for t in tile):
        ap.error("--satellite --chunks needs a tile Y X, each a multiple of 16")
    if args.out is not None:
        extra.insert(0, args.out)
    if len(extra) > 1:
        ap.error(f"expected one OUT, got {extra}")
    out = Path(extra[0]) if extra else SATELLITE_OUT
    if out.exists():
        if not args.force and is_satellite_complete(out, shape, tile, args.seed):
            print(f"make_sample: {out} is complete, skipping (use --force to regenerate)")
            return 0
        # Only ever replace a scene this script wrote.
        if not out.is_file() or satellite_parameters(out) is None:
            print(
                f"make_sample: {out} exists and is not a satellite scene of this script; not touching it",
                file=sys.stderr,
            )
            return 2
        print(f"make_sample: replacing {out} ({'--force' if args.force else 'other parameters'})")
    out.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"make_sample: writing {out} shape={shape} (bands, y, x) tile={tile} seed={args.seed}",
        flush=True,
    )
    t0 = time.perf_counter()
    make_satellite(
        out,
        shape,
        tile,
        args.seed,
        workers=args.workers,
        log=lambda m: print(f"make_sample: {m}", flush=True),
    )
    print(f"make_sample: done in {time.perf_counter() - t0:.1f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
