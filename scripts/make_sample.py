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

Not part of the package; tests and benchmarks can load it by path and call make_sample().
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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import NamedTuple

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


def _boxes(
    rng: np.random.Generator, n: int, shape: np.ndarray, half: np.ndarray, amp: np.ndarray
) -> Primitives:
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
        (float(rng.uniform(150, 450)), rng.uniform(0.3, 2.5, ndim), rng.uniform(0, 2 * np.pi, ndim))
        for _ in range(3)
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
    amp = np.where(
        is_ring, rng.uniform(1500, 8000, n_balls), _signed(rng, 500, 3000, n_balls, 0.35)
    )
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
    coords = [
        np.arange(a, b, dtype=np.float32) - np.float32(c)
        for a, b, c in zip(r_lo, r_hi, center, strict=True)
    ]
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


def _chunk_ranges(
    shape: Sequence[int], chunks: Sequence[int]
) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
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


def is_complete(
    path: str | os.PathLike[str], shape: Sequence[int], chunks: Sequence[int], seed: int
) -> bool:
    """True if `path` holds a finished sample made with these parameters."""
    a = _attrs(path)
    return bool(
        a
        and a.get("complete") is True
        and a.get("seed") == seed
        and a.get("shape") == list(shape)
        and a.get("chunks") == list(chunks)
        and a.get("version") == VERSION
    )


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
    say(
        f"scene: {n_prims} primitives ({len(scene.blobs.amp)} blobs) "
        f"in {time.perf_counter() - t0:.2f} s"
    )

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
                    say(
                        f"{done}/{total} chunks ({100 * done // total}%) "
                        f"{time.perf_counter() - t0:.1f} s"
                    )
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    arr.update_attributes({ATTR_KEY: {**meta, "complete": True}})


def _default_chunks(shape: Sequence[int]) -> tuple[int, ...]:
    """512 x 512 for images (0.5 MB), 32 x 256 x 256 for volumes (4 MB), clipped to shape."""
    want = (32, 256, 256) if len(shape) == 3 else (512, 512)
    return tuple(min(c, s) for c, s in zip(want, shape, strict=True))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "out",
        nargs="?",
        default=None,
        metavar="OUT",
        help=f"output Zarr v3 array (default: {DEFAULT_OUT})",
    )
    # nargs="+" would swallow a following OUT ("--shape 2048 2048 out.zarr"), so sizes are
    # taken as strings and a trailing non-number is given back as OUT below.
    ap.add_argument(
        "--shape",
        nargs="+",
        metavar="N",
        default=[str(n) for n in DEFAULT_SHAPE],
        help="2 or 3 sizes (default: 16384 16384)",
    )
    ap.add_argument(
        "--chunks",
        nargs="+",
        metavar="N",
        help="chunk sizes, one per axis (default: 512 512; 32 256 256 for 3-D)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None, help="threads (default: all cores)")
    ap.add_argument("--force", action="store_true", help="regenerate even if complete")
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

    shape = sizes(args.shape, "--shape")
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


if __name__ == "__main__":
    sys.exit(main())
