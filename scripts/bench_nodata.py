#!/usr/bin/env python
"""What nodata handling costs: the edges chain on a scene with and without nodata, one run.

Writes a float32 Zarr scene (``--size``², 512² chunks) whose samples are nodata (-9999) over
``--fraction`` of it (a swath edge and cloud blobs), and the same scene with no nodata sample,
then runs ``convpipe run`` alternating, ``--repeat`` times, on the edges chain (gaussian σ=2 →
sharpen → sobel magnitude, float32 out):

- ``plain``: the scene with holes, ``input.nodata: none`` (nodata filtered like any number: the
  cost of today's chain, and wrong values near holes);
- ``ignore``: the same scene, ``input.nodata: -9999``, every step ``nodata: ignore``;
- ``propagate``: the same, every step ``nodata: propagate``;
- ``clean``: the scene with no nodata sample, declared ``input.nodata: -9999`` with ``ignore``:
  every block takes the path of an image without nodata;
- ``clean-plain``: that scene with ``input.nodata: none``, what ``clean`` is compared with (the
  scene with holes compresses and decodes differently).

Each run is a subprocess measured as scripts/bench.py measures (wall time, peak RSS of the
process tree), with user+system CPU seconds. Ratios are over ``plain`` (``clean-plain`` for
the clean scene) in the same run.

    .venv/bin/python scripts/bench_nodata.py                 # 16384², 30 % nodata, 3 repeats
    .venv/bin/python scripts/bench_nodata.py --size 4096 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (scripts/bench.py: the same measurement)

CHAIN = [{"filter": "gaussian", "sigma": 2.0}, {"filter": "sharpen", "amount": 1.0}, {"filter": "sobel"}]
NODATA = -9999.0


def make_scene(path: Path, size: int, fraction: float, holes: bool) -> float:
    """The scene, chunk-row by chunk-row; returns the nodata fraction written."""
    import numpy as np
    import zarr

    chunk = 512
    array = zarr.create_array(str(path), shape=(size, size), chunks=(chunk, chunk), dtype="float32")
    rng = np.random.default_rng(3)
    # Cloud centres and radii drawn once; the swath edge takes a third of the wanted fraction.
    swath = fraction / 3
    clouds = max(1, int(size * size * (fraction - swath) / (np.pi * (size / 40) ** 2)))
    centres = rng.uniform(0, size, (clouds, 2))
    radii = rng.uniform(size / 80, size / 25, clouds)
    x = np.arange(size)
    nodata = 0
    for top in range(0, size, chunk):
        y = np.arange(top, min(top + chunk, size))[:, None]
        rows = (np.sin(y / 97.0) * np.cos(x / 53.0) * 2000 + 3000 + rng.normal(0, 30, (len(y), size))).astype(
            np.float32
        )
        if holes:
            mask = x[None, :] < swath * size + (y - size / 2) * 0.1  # a slanted swath edge
            near = np.abs(centres[:, 0] - (top + chunk / 2)) < radii + chunk
            for (cy, cx), r in zip(centres[near], radii[near], strict=True):
                mask |= (y - cy) ** 2 + (x[None, :] - cx) ** 2 < r * r
            rows[mask] = NODATA
            nodata += int(mask.sum())
        array[top : top + len(y)] = rows
    return nodata / (size * size)


def config(folder: Path, name: str, source: Path, nodata: str | float, policy: str) -> Path:
    path = folder / f"{name}.json"
    steps = [{**step, "nodata": policy} for step in CHAIN]
    document = {"input": {"path": str(source), "nodata": nodata}, "output": {"path": str(folder / f"{name}.zarr")}}
    path.write_text(json.dumps({**document, "pipeline": steps}))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=16384, help="image side in pixels (default 16384)")
    parser.add_argument("--fraction", type=float, default=0.3, help="share of nodata samples (default 0.3)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="convpipe-bench-nodata-") as tmp:
        folder = Path(tmp)
        holes, clean = folder / "scene-holes.zarr", folder / "scene-clean.zarr"
        share = make_scene(holes, args.size, args.fraction, holes=True)
        make_scene(clean, args.size, args.fraction, holes=False)
        bench.warm(holes)
        bench.warm(clean)
        cases = {
            "plain": config(folder, "plain", holes, "none", "propagate"),
            "ignore": config(folder, "ignore", holes, NODATA, "ignore"),
            "propagate": config(folder, "propagate", holes, NODATA, "propagate"),
            "clean": config(folder, "clean", clean, NODATA, "ignore"),
            "clean-plain": config(folder, "clean-plain", clean, "none", "propagate"),
        }
        convpipe = str(Path(sys.executable).with_name("convpipe"))
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
        for round_ in range(args.repeat):
            order = list(cases) if round_ % 2 == 0 else list(reversed(cases))
            for name in order:
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                result = bench.measure([convpipe, "run", str(cases[name]), "--overwrite", "--quiet"], dict(os.environ))
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                if result["returncode"] != 0:
                    print(f"{name} failed:\n{result['stderr_tail']}", file=sys.stderr)
                    return 1
                result["user_s"] = after.ru_utime - before.ru_utime
                result["sys_s"] = after.ru_stime - before.ru_stime
                runs[name].append(result)
                print(f"round {round_ + 1} {name:9s} {result['wall_s']:6.2f} s  {result['peak_rss'] / 2**20:6.0f} MiB")
        print(f"\n{args.size}² float32, {share:.0%} nodata, edges chain, medians of {args.repeat}:")
        median = {
            name: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "stderr_tail"}
            for name, rs in runs.items()
        }
        base = median["plain"]
        for name, m in median.items():
            if name.startswith("clean"):
                base = median["clean-plain"]
            print(
                f"  {name:9s} {m['wall_s']:6.2f} s ({m['wall_s'] / base['wall_s']:.2f}x)  "
                f"peak RSS {m['peak_rss'] / 2**20:5.0f} MiB ({m['peak_rss'] / base['peak_rss']:.2f}x)  "
                f"user {m['user_s']:.1f} s  sys {m['sys_s']:.1f} s"
            )
        return 0


if __name__ == "__main__":
    sys.exit(main())
