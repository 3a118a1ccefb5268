#!/usr/bin/env python3
"""Benchmark convpipe against its peers on the same data, in the same run.

Usage (from the project root, with the bench extra installed: ``pip install -e '.[bench]'``)::

    .venv/bin/python scripts/bench.py                      # everything at full size: ~1 h on 2 cores, ~14 GB RAM
    .venv/bin/python scripts/bench.py --size 2048 --volume 16 256 256 --repeat 1   # a quick smoke run
    .venv/bin/python scripts/bench.py --cases edges,median3 --tools convpipe,dask-image --repeat 5

Cases (uint16 in, float32 out; the 2-D ones on the demo sample, ``volume`` on a 3-D sample):
``edges`` gaussian σ=2 → sharpen → sobel magnitude; ``edges-stride2`` the same with stride 2 on
the sobel step; ``kernel5`` one non-symmetric 5×5 ``convolve``; ``median3`` a 3×3 median;
``volume`` 3-D gaussian σ=1.5 → sobel magnitude. Padding is convpipe's default, reflect
(scipy's ``mirror``), for every tool.

Tools:
- ``convpipe``: ``convpipe run CONFIG --overwrite --quiet`` with its defaults (threads, one per core).
- ``dask-image``: ``dask_image.ndfilters`` chained lazily on ``da.from_zarr`` (storage chunks),
  written with ``da.to_zarr`` and zarr's default codec; threaded scheduler.
- ``scipy``: the whole image in memory, scipy.ndimage (single-threaded), written with zarr.
  Written frugally (in-place passes where scipy allows), as a careful user would.
- ``floor``: read → float32 → write with convpipe's codec and block shape and no filtering:
  the I/O and conversion cost no pipeline can avoid on this machine.
- ``vips``: libvips (pyvips) on a tiled, uncompressed TIFF copy of the input, streaming
  (``access="sequential"``), ``VIPS_CONCURRENCY`` = the core count, written as uncompressed
  ``.v``. Its Gaussian is ``convsep`` with ``gaussmat(σ, min_ampl=1e-4, separable=True)`` (what
  ``gaussblur`` does inside, but ``gaussblur`` refuses min_ampl < 0.001, i.e. radius 7): the same
  17 taps as scipy's radius ``int(4σ + 0.5)`` = 8 for σ=2. Stride 2 is ``affine`` with nearest
  neighbour (the samples ``subsample(2, 2)`` takes, five times faster). 2-D only: ``volume`` is
  skipped.

Every measured run is a subprocess (``scripts/bench.py --run TOOL CASE --input P --output P``,
or convpipe's own CLI), so every tool's memory is measured the same way: peak RSS is the
largest sum of RSS over the process and its children, polled every 20 ms; wall time is
``perf_counter`` around start → exit, Python start-up and imports included. Runs alternate
(each repeat runs every tool once), so drift in the machine hits all tools alike; the input
files are read once beforehand so every tool starts from a warm page cache. Output is written
to the page cache and not synced, for every tool alike. Before every run the bench waits
at least ``--settle`` seconds (default 1) after deleting the previous outputs, and on a virtual
machine whose balloon reports free memory to its host (``/sys/module/page_reporting``) until
the host has taken all of it back. Such a machine hands freed pages back in passes 2 s apart,
about 0.9 GB a pass, and writing into pages the host must supply again costs several times
the kernel time of writing into recycled ones (880 MB with ``dd``: 1.3 to 2.7 s of system
time, depending on the day, against 0.2 to 0.3 s). Without the wait, a run that starts
right after another tool's output was deleted writes into that tool's recycled pages, and the
order of the tools decides part of the result.

Reading the table: ``wall`` is the median over repeats [min–max]; ``input MB/s`` is the input's
uncompressed size over the median wall time; ``peak RSS`` is the median over repeats of each
run's peak (RSS of processes sharing pages, e.g. a process pool, is summed); ratios are against
convpipe (time < 1 means faster than convpipe, RSS < 1 means less memory). ``matches`` compares
the first run's output with convpipe's on a central 512×512 region (×16 planes in 3-D) and on
the first and last index along every axis (the borders): ``✓``/``✗`` with ``rtol=1e-4`` and
``atol=1e-3·max|convpipe|``, followed by the largest difference relative to ``max|convpipe|``.
libvips is not expected to match to the bit and handles borders its own way, so ``≈`` gives its
difference on the centre region only (kept 32 pixels clear of the borders).

``--baseline SRC`` adds ``baseline``: convpipe run from another source tree (``SRC`` first on
``PYTHONPATH``, e.g. ``git archive HEAD | tar -x -C /tmp/base`` then ``--baseline /tmp/base/src``)
in the same alternation, for before/after figures from one run; its output must equal
convpipe's to the bit (``= identical``), every sample compared.

Inputs are generated once and cached under ``data/`` (``scripts/make_sample.py``; the demo's
``data/sample.zarr`` is reused for ``--size 16384``); outputs go to ``out/bench/runs`` and are
deleted after each run; raw measurements are written as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import itertools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
OUT = ROOT / "out" / "bench"
RUNS = OUT / "runs"

CASES = ("edges", "edges-stride2", "kernel5", "median3", "volume")
TOOLS = ("convpipe", "dask-image", "scipy", "floor", "vips")
WORKER_TOOLS = ("dask-image", "scipy", "floor", "vips")
EXACT = ("dask-image", "scipy", "baseline")  # must match convpipe to float32 rounding (baseline: to the bit)
APPROX = ("vips",)  # a different implementation of the same chain: difference reported only
SKIPS = {("vips", "volume"): "2-D only"}

SIGMA_2D = 2.0
SIGMA_3D = 1.5
# libvips cuts its Gaussian where exp(-x²/2σ²) < min_ampl; 1e-4 lands on radius 8 for σ=2,
# scipy's int(4σ + 0.5) (exp(-8) = 3.4e-4 is kept, exp(-10.1) = 4.0e-5 is not).
VIPS_MIN_AMPL = 1e-4
# Fixed and non-symmetric in every direction, so a flipped or transposed kernel shows up.
KERNEL5 = (
    (1, 0, -1, 2, 0),
    (0, 3, 1, 0, -2),
    (-1, 1, 4, 1, 0),
    (2, 0, 1, -3, 1),
    (0, -1, 0, 1, 2),
)
SHARPEN = ((0, -1, 0), (-1, 5, -1), (0, -1, 0))  # image - laplacian(image), 4 neighbours
SOBEL_X = ((-1, 0, 1), (-2, 0, 2), (-1, 0, 1))  # derivative along x, as scipy.ndimage.sobel(axis=1)

SAMPLE_CHUNKS = (512, 512)
VOLUME_CHUNKS = (32, 256, 256)
TIFF_TILE = 512
POLL_S = 0.02
PAGE_REPORTING = Path("/sys/module/page_reporting/parameters/reported_kib")  # memory handed back to a VM's host
REPORTING_PASS_S = 3.0  # longer than the 2 s between the balloon's passes
CONVPIPE_CLI = "from convpipe.cli import main; main()"
CHECK_CENTRE = 512
RTOL = 1e-4
APPROX_MARGIN = 32  # libvips handles borders its own way: compare it only this far inside
ATOL_REL = 1e-3


# --------------------------------------------------------------------------- cases


def pipeline(case: str) -> list[dict[str, Any]]:
    """The case as a convpipe pipeline: the definition every other tool reproduces."""
    if case in ("edges", "edges-stride2"):
        sobel: dict[str, Any] = {"filter": "sobel"}
        if case == "edges-stride2":
            sobel["stride"] = 2
        return [{"filter": "gaussian", "sigma": SIGMA_2D}, {"filter": "sharpen", "amount": 1.0}, sobel]
    if case == "kernel5":
        return [{"filter": "convolve", "kernel": [list(row) for row in KERNEL5], "normalize": False}]
    if case == "median3":
        return [{"filter": "median", "size": 3}]
    if case == "volume":
        return [{"filter": "gaussian", "sigma": SIGMA_3D}, {"filter": "sobel"}]
    raise ValueError(f"unknown case {case!r}")


def convpipe_config(case: str, input_path: Path, output_path: Path) -> dict[str, Any]:
    return {
        "input": {"path": str(input_path)},
        "output": {"path": str(output_path), "dtype": "float32"},
        "pipeline": pipeline(case),
    }


# --------------------------------------------------------------------------- workers
# Each runs in its own process and imports only what its tool needs, so RSS is the tool's own.


def _dask_image_chain(case: str, x: Any) -> Any:
    """The case with dask_image.ndfilters, lazily, as a dask-image user would write it."""
    import dask.array as da
    from dask_image import ndfilters as f

    def magnitude(y: Any) -> Any:
        return da.sqrt(sum(f.sobel(y, axis=a, mode="mirror") ** 2 for a in range(y.ndim)))

    if case in ("edges", "edges-stride2"):
        x = f.gaussian_filter(x, SIGMA_2D, mode="mirror")
        x = x - f.laplace(x, mode="mirror")
        x = magnitude(x)
        return x[::2, ::2] if case == "edges-stride2" else x
    if case == "kernel5":
        return f.correlate(x, np.asarray(KERNEL5, dtype=np.float32), mode="mirror")
    if case == "median3":
        return f.median_filter(x, size=3, mode="mirror")
    if case == "volume":
        return magnitude(f.gaussian_filter(x, SIGMA_3D, mode="mirror"))
    raise ValueError(case)


def _regular(x: Any) -> Any:
    """da.to_zarr needs regular chunks; slicing an odd-sized chunk grid can break that."""
    if all(len(set(c[:-1])) <= 1 and c[-1] <= c[0] for c in x.chunks):
        return x
    return x.rechunk(x.chunksize)


def work_dask_image(case: str, src: str, dst: str, chunks: Sequence[int] | None) -> None:
    import dask.array as da

    x = da.from_zarr(src).astype(np.float32)
    da.to_zarr(_regular(_dask_image_chain(case, x)), dst)


def _scipy_magnitude(x: np.ndarray) -> np.ndarray:
    """sqrt(Σ sobel²) with two full-size temporaries rather than one per axis."""
    from scipy import ndimage as ndi

    acc = ndi.sobel(x, axis=0, mode="mirror")
    acc *= acc
    tmp = np.empty_like(x)
    for axis in range(1, x.ndim):
        ndi.sobel(x, axis=axis, mode="mirror", output=tmp)
        tmp *= tmp
        acc += tmp
    del tmp
    return np.sqrt(acc, out=acc)


def _scipy_chain(case: str, x: np.ndarray) -> np.ndarray:
    """The case with scipy.ndimage on the whole image; the Gaussian runs in place (1-D passes)."""
    from scipy import ndimage as ndi

    if case in ("edges", "edges-stride2"):
        ndi.gaussian_filter(x, SIGMA_2D, mode="mirror", output=x)
        x -= ndi.laplace(x, mode="mirror")
        y = _scipy_magnitude(x)
        return y[::2, ::2] if case == "edges-stride2" else y
    if case == "kernel5":
        return ndi.correlate(x, np.asarray(KERNEL5, dtype=np.float32), mode="mirror")
    if case == "median3":
        return ndi.median_filter(x, size=3, mode="mirror")
    if case == "volume":
        ndi.gaussian_filter(x, SIGMA_3D, mode="mirror", output=x)
        return _scipy_magnitude(x)
    raise ValueError(case)


def _blosc() -> Any:
    """convpipe's output codec: blosc lz4, byte shuffle."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def work_scipy(case: str, src: str, dst: str, chunks: Sequence[int] | None) -> None:
    import zarr

    image = zarr.open_array(src, mode="r")[...]
    x = image.astype(np.float32)
    del image
    y = _scipy_chain(case, x)
    del x
    want = (4096, 4096) if y.ndim == 2 else (64, 512, 512)
    out = zarr.create_array(
        store=dst,
        shape=y.shape,
        chunks=tuple(min(c, n) for c, n in zip(want, y.shape, strict=True)),
        dtype=np.float32,
        compressors=_blosc(),
    )
    out[...] = y


def work_floor(case: str, src: str, dst: str, chunks: Sequence[int] | None) -> None:
    import dask.array as da
    import zarr

    x = da.from_zarr(src).astype(np.float32)
    block = tuple(chunks) if chunks else x.chunksize
    out = zarr.create_array(store=dst, shape=x.shape, chunks=block, dtype=np.float32, compressors=_blosc())
    da.store(x.rechunk(block), out, lock=False)


def _vips_mask(rows: Sequence[Sequence[float]]) -> Any:
    import pyvips

    return pyvips.Image.new_from_array([list(r) for r in rows])


def _vips_gaussian(sigma: float) -> Any:
    """What gaussblur builds, with a smaller min_ampl than gaussblur accepts (≥ 0.001: radius 7)."""
    import pyvips

    return pyvips.Image.gaussmat(sigma, VIPS_MIN_AMPL, separable=True, precision="float")


def _every_second(im: Any) -> Any:
    """Samples 0, 2, 4, ... along x and y, libvips's fastest way: ``affine`` with nearest
    neighbour gives the same samples as ``subsample(2, 2)`` in a fifth of the time (5.6 s
    against 30 s on the edges chain, 16384²: subsample makes the convolutions upstream
    recompute lines)."""
    import pyvips

    return im.affine([0.5, 0, 0, 0.5], interpolate=pyvips.Interpolate.new("nearest"))


def _vips_chain(case: str, im: Any) -> Any:
    """The case with libvips; conv applies masks as written (correlation), like convpipe."""
    if case in ("edges", "edges-stride2"):
        im = im.convsep(_vips_gaussian(SIGMA_2D), precision="float")
        im = im.conv(_vips_mask(SHARPEN), precision="float")
        gx = im.conv(_vips_mask(SOBEL_X), precision="float")
        gy = im.conv(_vips_mask(np.transpose(SOBEL_X)), precision="float")
        im = (gx * gx + gy * gy) ** 0.5
        return _every_second(im) if case == "edges-stride2" else im
    if case == "kernel5":
        return im.conv(_vips_mask(KERNEL5), precision="float")
    if case == "median3":
        return im.median(3)
    raise ValueError(f"vips: no {case} case")


def work_vips(case: str, src: str, dst: str, chunks: Sequence[int] | None) -> None:
    import pyvips

    im = pyvips.Image.new_from_file(src, access="sequential").cast("float")
    _vips_chain(case, im).write_to_file(dst)


WORKERS: dict[str, Callable[[str, str, str, Sequence[int] | None], None]] = {
    "dask-image": work_dask_image,
    "scipy": work_scipy,
    "floor": work_floor,
    "vips": work_vips,
}


# --------------------------------------------------------------------------- inputs


def _make_sample_module() -> ModuleType:
    """scripts/make_sample.py, loaded by path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("convpipe_make_sample", ROOT / "scripts" / "make_sample.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ensure_sample(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...]) -> Path:
    """Generate the sample unless a complete one with these parameters is already there."""
    ms = _make_sample_module()
    chunks = tuple(min(c, n) for c, n in zip(chunks, shape, strict=True))
    if not ms.is_complete(path, shape, chunks, 0):
        print(f"bench: generating {path.relative_to(ROOT)} {shape} ...", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        ms.make_sample(path, shape, chunks, 0)
    return path


def _tiles(src: Any, tile: int) -> Iterator[np.ndarray]:
    """Full-size tiles in row-major order, one band of rows read at a time (bounded memory)."""
    height, width = src.shape
    for y in range(0, height, tile):
        band = src[y : y + tile, :]
        for x in range(0, width, tile):
            t = band[:, x : x + tile]
            if t.shape != (tile, tile):
                t = np.pad(t, ((0, tile - t.shape[0]), (0, tile - t.shape[1])))
            yield t


def ensure_tiff(zarr_path: Path, tif_path: Path) -> Path:
    """A tiled, uncompressed BigTIFF copy of the 2-D input for libvips; rewritten if older."""
    import tifffile
    import zarr

    source_time = (zarr_path / "zarr.json").stat().st_mtime
    if tif_path.exists() and tif_path.stat().st_mtime >= source_time:
        return tif_path
    print(f"bench: writing {tif_path.relative_to(ROOT)} ...", flush=True)
    src = zarr.open_array(str(zarr_path), mode="r")
    part = tif_path.with_name(tif_path.name + ".part")
    tifffile.imwrite(
        part, _tiles(src, TIFF_TILE), shape=src.shape, dtype=src.dtype, tile=(TIFF_TILE, TIFF_TILE), bigtiff=True
    )
    part.replace(tif_path)
    return tif_path


def warm(path: Path) -> None:
    """Read every file of the input once, so no tool pays for a cold page cache."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        with p.open("rb") as fh:
            while fh.read(1 << 24):
                pass


# --------------------------------------------------------------------------- measuring


def _tree_rss(proc: Any) -> int:
    """RSS of a process and all its descendants, skipping any that exit while we look."""
    import psutil

    total = 0
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in family:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def measure(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run cmd; wall time from start to exit, peak tree RSS polled on a side thread."""
    import psutil

    peak = [0]
    done = threading.Event()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
        ps = psutil.Process(proc.pid)

        def poll() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss(ps))
                done.wait(POLL_S)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        _, status, usage = os.wait4(proc.pid, 0)  # CPU of the process and the children it waited for
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        done.set()
        thread.join()
        out.seek(0)
        stdout = out.read().decode(errors="replace")
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return {
        "wall_s": wall,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "peak_rss": peak[0],
        "returncode": code,
        "stdout_tail": stdout[-2000:],
        "stderr_tail": stderr[-2000:],
    }


def settle(seconds: float) -> None:
    """Wait ``seconds``, then until the host has taken back the memory freed so far (see the
    module's docstring): until the balloon's count of reported memory stops growing for longer
    than one of its passes. At most a minute."""
    if seconds <= 0:
        return
    time.sleep(seconds)
    last, still = _reported(), time.monotonic()
    if last is None:  # not such a machine (or the count is not readable): the wait was enough
        return
    deadline = still + 60
    while time.monotonic() < deadline and time.monotonic() - still < REPORTING_PASS_S:
        time.sleep(0.25)
        now = _reported()
        if now != last:
            last, still = now, time.monotonic()


def _reported() -> str | None:
    try:
        return PAGE_REPORTING.read_text()
    except OSError:
        return None


def output_path(tool: str, case: str) -> Path:
    return RUNS / f"{tool}-{case}{'.v' if tool == 'vips' else '.zarr'}"


def remove(path: Path) -> None:
    """Delete a run's output; only ever something under out/bench/runs."""
    if RUNS not in path.parents:
        raise ValueError(f"refusing to delete {path}")
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def command(tool: str, case: str, src: Path, dst: Path, config: Path, block: Sequence[int]) -> list[str]:
    """convpipe runs as its own CLI (config written beforehand); the others as this file's workers."""
    if tool in ("convpipe", "baseline"):
        return [sys.executable, "-c", CONVPIPE_CLI, "run", str(config), "--overwrite", "--quiet"]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--run", tool, case]
    cmd += ["--input", str(src), "--output", str(dst)]
    if tool == "floor":
        cmd += ["--chunks", *map(str, block)]
    return cmd


# --------------------------------------------------------------------------- checking


def regions(shape: tuple[int, ...], margin: int = 0) -> tuple[tuple[slice, ...], list[tuple[slice, ...]]]:
    """The central box (512 along y and x, 16 along z; `margin` clear of the borders where the
    image is small) and the first/last index of every axis."""
    centre = []
    for axis, n in enumerate(shape):
        inner = max(1, n - 2 * margin)
        length = min(inner, CHECK_CENTRE if axis >= len(shape) - 2 else 16)
        start = (n - length) // 2
        centre.append(slice(start, start + length))
    borders = []
    for axis, n in enumerate(shape):
        for index in sorted({0, n - 1}):
            sl = [slice(None)] * len(shape)
            sl[axis] = slice(index, index + 1)
            borders.append(tuple(sl))
    return tuple(centre), borders


def reader(path: Path) -> tuple[tuple[int, ...], Callable[[tuple[slice, ...]], np.ndarray]]:
    """Shape and a region reader for a Zarr or a libvips output."""
    if path.suffix == ".v":
        import pyvips

        image = pyvips.Image.new_from_file(str(path))

        def read_vips(region: tuple[slice, ...]) -> np.ndarray:
            ys, xs = (s.indices(n) for s, n in zip(region, (image.height, image.width), strict=True))
            return image.crop(xs[0], ys[0], xs[1] - xs[0], ys[1] - ys[0]).numpy()

        return (image.height, image.width), read_vips
    import zarr

    array = zarr.open_array(str(path), mode="r")
    return tuple(array.shape), lambda region: np.asarray(array[region])


def compare(ref_path: Path, path: Path, exact: bool) -> dict[str, Any]:
    """Largest difference relative to max|ref| on the centre and borders; pass/fail if exact."""
    ref_shape, read_ref = reader(ref_path)
    shape, read = reader(path)
    if shape != ref_shape:
        return {"ok": False, "note": f"shape {shape} != convpipe's {ref_shape}"}
    centre, borders = regions(shape, 0 if exact else APPROX_MARGIN)
    checked = [centre, *borders] if exact else [centre]
    pairs = [(read_ref(r).astype(np.float64), read(r).astype(np.float64)) for r in checked]
    scale = max(float(np.abs(a).max()) for a, _ in pairs) or 1.0
    ok = all(np.allclose(b, a, rtol=RTOL, atol=ATOL_REL * scale) for a, b in pairs)
    diff = max(float(np.abs(b - a).max()) for a, b in pairs) / scale
    return {"ok": ok, "max_rel_diff": diff, "regions": "centre+borders" if exact else "centre"}


def check_case(case: str, tools: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Compare every kept output with convpipe's."""
    ref = output_path("convpipe", case)
    results: dict[str, dict[str, Any]] = {}
    if not ref.exists():
        return results
    for tool in tools:
        path = output_path(tool, case)
        if tool in (*EXACT, *APPROX) and path.exists():
            try:
                results[tool] = compare(ref, path, exact=tool in EXACT)
                if tool == "baseline":
                    results[tool]["identical"] = identical(ref, path)
                    results[tool]["ok"] &= results[tool]["identical"]
            except Exception as error:  # a broken output is a failed check, not a crashed bench
                results[tool] = {"ok": False, "note": f"{type(error).__name__}: {error}"}
    return results


def identical(ref_path: Path, path: Path) -> bool:
    """Every sample equal to the bit (NaN where NaN), chunk by chunk of the reference."""
    import zarr

    a, b = zarr.open_array(str(ref_path), mode="r"), zarr.open_array(str(path), mode="r")
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    for index in np.ndindex(*[-(-n // c) for n, c in zip(a.shape, a.chunks, strict=True)]):
        region = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, a.chunks, strict=True))
        if not np.array_equal(a[region], b[region], equal_nan=True):
            return False
    return True


# --------------------------------------------------------------------------- reporting


def _version(*names: str) -> str:
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(name)
    return "not installed"


def machine() -> dict[str, Any]:
    """What the numbers depend on: cores, memory, library versions."""
    import psutil

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        import pyvips

        libvips = ".".join(str(pyvips.version(i)) for i in range(3))
    except Exception:
        libvips = "not installed"
    return {
        "cpu": cpu,
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "ram_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "convpipe": _version("convpipe"),
            "numpy": _version("numpy"),
            "scipy": _version("scipy"),
            "dask": _version("dask"),
            "dask-image": _version("dask-image"),
            "zarr": _version("zarr"),
            "tifffile": _version("tifffile"),
            "opencv": _version("opencv-python", "opencv-python-headless", "opencv-contrib-python"),
            "pyvips": _version("pyvips"),
            "libvips": libvips,
        },
    }


def print_machine(info: dict[str, Any]) -> None:
    print(
        f"machine: {info['cpu']}, {info['cores_logical']} logical / {info['cores_physical']} physical cores, "
        f"{info['ram_gb']} GB RAM, {info['platform']}, Python {info['python']}"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))


def summarise(runs: list[dict[str, Any]]) -> dict[str, float] | None:
    good = [r for r in runs if r["returncode"] == 0]
    if not good:
        return None
    walls = [r["wall_s"] for r in good]
    return {
        "median": statistics.median(walls),
        "min": min(walls),
        "max": max(walls),
        "rss": statistics.median(r["peak_rss"] for r in good),
        "user": statistics.median(r.get("user_s", 0.0) for r in good),
        "sys": statistics.median(r.get("sys_s", 0.0) for r in good),
    }


def _rate(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _match_cell(tool: str, check: dict[str, Any] | None) -> str:
    if tool == "convpipe":
        return "reference"
    if check is None:
        return "—"
    if "max_rel_diff" not in check:
        return f"✗ {check.get('note', '')}"
    if tool in APPROX:
        return f"≈ {check['max_rel_diff']:.1e} (centre)"
    if "identical" in check:
        return "= identical" if check["identical"] else f"✗ not identical ({check['max_rel_diff']:.1e})"
    return f"{'✓' if check['ok'] else '✗'} {check['max_rel_diff']:.1e}"


def table(case: str, tools: Sequence[str], runs: list[dict[str, Any]], checks: dict[str, Any], mb: float) -> str:
    """One Markdown table per case, ready to paste into the README."""
    columns = ["tool", "wall median [min–max] s", "user s", "sys s", "input MB/s", "peak RSS GB"]
    columns += ["time vs convpipe", "RSS vs convpipe", "matches"]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    stats = {t: summarise([r for r in runs if r["tool"] == t]) for t in tools}
    base = stats.get("convpipe")
    for tool in tools:
        if (tool, case) in SKIPS:
            lines.append(f"| {tool} | skipped ({SKIPS[tool, case]}) | | | | | | | |")
            continue
        s = stats[tool]
        if s is None:
            codes = sorted({r["returncode"] for r in runs if r["tool"] == tool})
            lines.append(f"| {tool} | failed (exit {', '.join(map(str, codes))}) | | | | | | | |")
            continue
        t_ratio = f"{s['median'] / base['median']:.2f}×" if base else "—"
        m_ratio = f"{s['rss'] / base['rss']:.2f}×" if base and base["rss"] else "—"
        lines.append(
            f"| {tool} | {s['median']:.2f} [{s['min']:.2f}–{s['max']:.2f}] | {s['user']:.1f} | {s['sys']:.1f} "
            f"| {_rate(mb / s['median'])} "
            f"| {s['rss'] / 1e9:.2f} | {t_ratio} | {m_ratio} | {_match_cell(tool, checks.get(tool))} |"
        )
    return "\n".join(lines)


def describe(case: str, shape: tuple[int, ...]) -> str:
    chain = " → ".join(
        step["filter"] + "".join(f" {k}={v}" for k, v in step.items() if k not in ("filter", "kernel"))
        for step in pipeline(case)
    )
    return f"{case}: {'×'.join(map(str, shape))} uint16 → float32; {chain}"


# --------------------------------------------------------------------------- driver


def _csv(value: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"unknown {what} {bad or value!r}; choose from {','.join(allowed)}")
    return items


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=lambda v: _csv(v, CASES, "case"), default=list(CASES), help=",".join(CASES))
    ap.add_argument("--tools", type=lambda v: _csv(v, TOOLS, "tool"), default=list(TOOLS), help=",".join(TOOLS))
    ap.add_argument("--repeat", type=int, default=3, help="runs per tool and case, or per size of --scale (default 3)")
    ap.add_argument("--size", type=int, default=16384, help="side of the square 2-D input (default 16384)")
    ap.add_argument(
        "--input-chunks",
        type=int,
        default=SAMPLE_CHUNKS[0],
        metavar="N",
        help="the 2-D Zarr input's chunks, N×N (default 512: the demo sample; dask-image is fastest at 2048)",
    )
    ap.add_argument(
        "--volume", type=int, nargs=3, default=(256, 2048, 2048), metavar=("Z", "Y", "X"), help="3-D input shape"
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds to wait at least before each run, after deleting outputs, so every run starts from "
        "the same free memory (default 1; 0: no wait; see above)",
    )
    ap.add_argument("--json", type=Path, default=OUT / "results.json", help="raw measurements (default %(default)s)")
    ap.add_argument(
        "--baseline",
        type=Path,
        metavar="SRC",
        help="also run convpipe from this source tree (put first on PYTHONPATH) as tool 'baseline'",
    )
    ap.add_argument(
        "--scale",
        type=float,
        nargs="*",
        metavar="GIB",
        help="instead: convpipe's edges chain on square uint16 inputs of these sizes in GiB (default 1 4 16)",
    )
    ap.add_argument(
        "--scale-format",
        choices=("zarr", "geotiff", "cog"),
        default="zarr",
        help="the output format of --scale (default zarr; cog: a Cloud-Optimized GeoTIFF with overviews)",
    )
    ap.add_argument(
        "--scale-dtype",
        choices=("float32", "input"),
        default="float32",
        help="the output dtype of --scale (default float32; input: uint16, half the disk for a large COG)",
    )
    worker = ap.add_argument_group("worker (internal: one measured run)")
    worker.add_argument("--run", nargs=2, metavar=("TOOL", "CASE"))
    worker.add_argument("--input")
    worker.add_argument("--output")
    worker.add_argument("--chunks", type=int, nargs="+")
    args = ap.parse_args(argv)
    if args.repeat < 1 or args.size < 8 or min(args.volume) < 8:
        ap.error("--repeat must be ≥ 1 and sizes ≥ 8")
    if args.run and (args.run[0] not in WORKERS or args.run[1] not in CASES or not args.input or not args.output):
        ap.error(f"usage: --run TOOL CASE --input P --output P; TOOL: {','.join(WORKERS)}; CASE: {','.join(CASES)}")
    if args.baseline is not None:
        if not (args.baseline / "convpipe" / "__init__.py").is_file():
            ap.error(f"--baseline: {args.baseline} holds no convpipe package (give the src/ directory)")
        args.baseline = args.baseline.resolve()
        at = args.tools.index("convpipe") + 1 if "convpipe" in args.tools else 0
        args.tools = [*args.tools[:at], "baseline", *args.tools[at:]]
    return args


def prepare(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per case: the inputs each tool reads, the shape, and convpipe's config and block."""
    import yaml

    import convpipe

    cases = args.cases
    inputs: dict[str, dict[str, Any]] = {}
    if any(c != "volume" for c in cases):
        shape2 = (args.size, args.size)
        chunks = (args.input_chunks,) * 2
        demo = args.size == 16384 and chunks == SAMPLE_CHUNKS
        name = "sample.zarr" if demo else f"bench-{args.size}-chunks{args.input_chunks}.zarr"
        zarr2 = ensure_sample(DATA / name, shape2, chunks)
        tif = ensure_tiff(zarr2, DATA / f"bench-{args.size}.tif") if "vips" in args.tools else None
    if "volume" in cases:
        shape3 = tuple(args.volume)
        zarr3 = ensure_sample(DATA / f"volume-{'x'.join(map(str, shape3))}.zarr", shape3, VOLUME_CHUNKS)
    (OUT / "configs").mkdir(parents=True, exist_ok=True)
    RUNS.mkdir(parents=True, exist_ok=True)
    for case in cases:
        src, shape = (zarr3, shape3) if case == "volume" else (zarr2, shape2)
        cfg = convpipe_config(case, src, output_path("convpipe", case))
        config_path = OUT / "configs" / f"{case}.yaml"
        config_path.write_text(yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None))
        baseline_path = OUT / "configs" / f"{case}-baseline.yaml"
        baseline = convpipe_config(case, src, output_path("baseline", case))
        baseline_path.write_text(yaml.safe_dump(baseline, sort_keys=False, default_flow_style=None))
        plan = convpipe.make_plan(convpipe.from_dict(cfg))
        inputs[case] = {
            "baseline_config": baseline_path,
            "zarr": src,
            "tif": None if case == "volume" else tif,
            "shape": shape,
            "mb": float(np.prod(shape)) * 2 / 1e6,
            "config": config_path,
            "block": plan.input_block,
        }
    return inputs


def run_case(case: str, spec: dict[str, Any], args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """Alternate the tools for each repeat; check the first repeat's outputs, then delete them."""
    tools = [t for t in args.tools if (t, case) not in SKIPS]
    warm(spec["zarr"])
    if "vips" in tools:
        warm(spec["tif"])
    runs: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    for rep in range(args.repeat):
        for tool in tools:
            src = spec["tif"] if tool == "vips" else spec["zarr"]
            dst = output_path(tool, case)
            remove(dst)
            config, tool_env = spec["config"], env
            if tool == "baseline":
                config = spec["baseline_config"]
                tool_env = {
                    **env,
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(args.baseline), env.get("PYTHONPATH")])),
                }
            settle(args.settle)
            result = measure(command(tool, case, src, dst, config, spec["block"]), tool_env)
            result.update(case=case, tool=tool, rep=rep)
            runs.append(result)
            status = "ok" if result["returncode"] == 0 else f"FAILED (exit {result['returncode']})"
            print(
                f"  {case} rep {rep + 1}/{args.repeat} {tool:<10} {result['wall_s']:7.2f} s "
                f"{result['peak_rss'] / 1e9:6.2f} GB  {status}",
                flush=True,
            )
            if result["returncode"]:
                print("    " + result["stderr_tail"].strip().replace("\n", "\n    "), flush=True)
            elif result["stderr_tail"].strip():  # warnings can mean a silently ignored setting
                print(f"    stderr: {result['stderr_tail'].strip().splitlines()[-1][:200]}", flush=True)
            keep = rep == 0 and tool in ("convpipe", *EXACT, *APPROX) and result["returncode"] == 0
            if not keep:
                remove(dst)
        if rep == 0:
            checks = check_case(case, tools)
            for tool in tools:
                remove(output_path(tool, case))
    return {"runs": runs, "checks": checks}


def compiled(*trees: Path) -> None:
    """Byte-compile convpipe's sources (and the baseline's) once, as ``pip install`` does for
    the peers: with PYTHONDONTWRITEBYTECODE set, every run would compile them again (0.1 s)."""
    import compileall

    for tree in trees:
        compileall.compile_dir(str(tree), quiet=1)


def bench(args: argparse.Namespace) -> int:
    info = machine()
    print_machine(info)
    inputs = prepare(args)
    compiled(ROOT / "src", *([args.baseline] if args.baseline else []))
    env = {**os.environ, "VIPS_CONCURRENCY": os.environ.get("VIPS_CONCURRENCY", str(os.cpu_count() or 1))}
    print(
        f"repeat {args.repeat}, tools {','.join(args.tools)}; 2-D input chunks {args.input_chunks}²; "
        f"VIPS_CONCURRENCY={env['VIPS_CONCURRENCY']}; before each run a wait of at least {args.settle:g} s "
        "(--settle)\n"
    )
    results: dict[str, Any] = {}
    for case in args.cases:
        spec = inputs[case]
        print(describe(case, spec["shape"]), flush=True)
        results[case] = run_case(case, spec, args, env)
    print()
    failed = False
    for case in args.cases:
        spec = inputs[case]
        print(f"### {describe(case, spec['shape'])}\n")
        print(table(case, args.tools, results[case]["runs"], results[case]["checks"], spec["mb"]) + "\n")
        failed |= any(r["returncode"] for r in results[case]["runs"])
        failed |= any(not c.get("ok") for t, c in results[case]["checks"].items() if t in EXACT)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "machine": info,
        "args": {
            "cases": args.cases,
            "tools": args.tools,
            "repeat": args.repeat,
            "settle_s": args.settle,
            "size": args.size,
            "volume": list(args.volume),
        },
        "cases": {
            c: {**results[c], "shape": list(inputs[c]["shape"]), "input_mb": inputs[c]["mb"], "pipeline": pipeline(c)}
            for c in args.cases
        },
    }
    args.json.write_text(json.dumps(record, indent=1, default=str))
    print(f"raw measurements: {args.json}")
    return 1 if failed else 0


def scale(
    sizes: Sequence[float], output_format: str = "zarr", dtype: str = "float32", repeat: int = 1, settle_s: float = 0.0
) -> int:
    """Peak memory, graph-building time and time per pixel as the image grows: the first two
    must not follow its size, the last must stay flat. Sizes alternate within each repeat, so
    drift in the machine hits every size alike; figures are medians over repeats."""
    import yaml

    print_machine(machine())
    compiled(ROOT / "src")
    inputs = []
    for gib in sizes:
        side = max(512, int(math.sqrt(gib * 2**30 / 2)) // 512 * 512)
        src = ensure_sample(DATA / f"scale-{side}.zarr", (side, side), SAMPLE_CHUNKS)
        config = OUT / "configs" / f"scale-{side}.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        dst = RUNS / ("scale.zarr" if output_format == "zarr" else "scale.tif")
        document = convpipe_config("edges", src, dst)
        document["output"]["format"] = output_format
        document["output"]["dtype"] = dtype
        config.write_text(yaml.safe_dump(document, sort_keys=False))
        inputs.append((gib, side, src, dst, config))
    runs: dict[int, list[tuple[int, float, int, float, float]]] = {side: [] for _, side, *_ in inputs}
    for _ in range(repeat):
        for gib, side, src, dst, config in inputs:
            warm(src)
            remove(dst)
            settle(settle_s)
            # --json: the run's own seconds to the millisecond (its summary line rounds them)
            cmd = [sys.executable, "-c", CONVPIPE_CLI, "run", str(config), "--overwrite", "--json"]
            result = measure(cmd, dict(os.environ))
            remove(dst)
            if result["returncode"]:
                print(result["stderr_tail"])
                return 1
            summary = json.loads(result["stdout_tail"].strip().splitlines()[-1])
            blocks, run_s, graph_s = summary["blocks_written"], summary["seconds"], summary["graph_seconds"]
            runs[side].append((blocks, result["wall_s"], result["peak_rss"], graph_s, run_s))
            print(f"  {gib:g} GiB ({side}²): {result['wall_s']:.1f} s, {result['peak_rss'] / 1e9:.2f} GB", flush=True)
    print(
        "\n| input | shape | blocks | wall s | input MB/s | peak RSS GB | task graph ms (% of run) "
        "| ns per pixel: wall | ns per pixel: run |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for gib, side, *_ in inputs:
        blocks = runs[side][0][0]
        wall, rss, graph_s, run_s = (statistics.median(r[k] for r in runs[side]) for k in range(1, 5))
        share = 100 * graph_s / run_s if run_s else 0.0
        pixels = side * side
        rows.append((rss, 1e9 * wall / pixels, 1e9 * run_s / pixels))
        print(
            f"| {gib:g} GiB | {side}×{side} | {blocks} | {wall:.1f} | {pixels * 2 / 1e6 / wall:.0f} "
            f"| {rss / 1e9:.2f} | {1000 * graph_s:.0f} ({share:.3f}%) | {rows[-1][1]:.2f} | {rows[-1][2]:.2f} |"
        )
    if len(rows) > 1:
        print(f"\npeak RSS, largest vs smallest input: {rows[-1][0] / rows[0][0]:.2f}x")
        for k, what in ((1, "wall (start-up and imports included)"), (2, "run (the run's own seconds, from --json)")):
            per = [row[k] for row in rows]
            middle = statistics.median(per)
            spread = max(abs(v / middle - 1) for v in per)
            print(f"time per pixel, {what}: {min(per):.2f}-{max(per):.2f} ns, ±{100 * spread:.1f} % of the median")
        # A cost paid once per run (the process's first pages, the output's creation, the last
        # syncs) weighs on small images alone: the least-squares line tells it from the rest.
        pixels = [side * side for _, side, *_ in inputs]
        seconds = [statistics.median(r[4] for r in runs[side]) for _, side, *_ in inputs]
        if len(set(pixels)) < 2:
            return 0
        slope, fixed = statistics.linear_regression(pixels, seconds)
        worst = max(abs(s / (fixed + slope * p) - 1) for p, s in zip(pixels, seconds, strict=True))
        print(f"run time ≈ {fixed:.3f} s + {1e9 * slope:.2f} ns per pixel (each size within {100 * worst:.1f} %)")
        # What each pixel added from one size to the next costs: the once-per-run cost cancels.
        steps = sorted(zip(pixels, seconds, [side for _, side, *_ in inputs], strict=True))
        added = [
            (f"{a}²→{b}²", 1e9 * (t_b - t_a) / (p_b - p_a))
            for (p_a, t_a, a), (p_b, t_b, b) in itertools.pairwise(steps)
            if p_b > p_a
        ]
        middle = statistics.median(v for _, v in added) if added else 0.0
        if middle > 0:  # noise can make a step negative
            spread = max(abs(v / middle - 1) for _, v in added)
            shown = ", ".join(f"{name} {v:.2f} ns" for name, v in added)
            print(f"time per added pixel, size to size: {shown}; ±{100 * spread:.1f} % of their median")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.scale is not None:
        return scale(args.scale or [1.0, 4.0, 16.0], args.scale_format, args.scale_dtype, args.repeat, args.settle)
    if args.run:
        tool, case = args.run
        WORKERS[tool](case, args.input, args.output, args.chunks)
        return 0
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
