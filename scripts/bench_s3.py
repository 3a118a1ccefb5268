#!/usr/bin/env python
"""The same convpipe run on local files and through a local S3 server, in one alternating run.

Starts moto's S3 server on loopback (tests/s3server.py), writes one uint16 input Zarr both to a
local folder and to a bucket, then runs ``convpipe run`` on the edges chain (gaussian σ=2 →
sharpen → sobel magnitude, float32 out) with input and output both local, and both in the
bucket, alternating, ``--repeat`` times. Each run is a subprocess measured as scripts/bench.py
measures (wall time from start to exit, peak RSS of the process tree polled every 20 ms). The
two outputs are compared to the bit.

    .venv/bin/python scripts/bench_s3.py                  # 8192², 512² chunks, 3 repeats
    .venv/bin/python scripts/bench_s3.py --size 4096 --repeat 1

moto is one Python process and keeps every object in memory; on a small machine it competes with
convpipe for the cores, so the plain figures measure moto as much as convpipe (the line after the
ratios says how much CPU the server burnt). ``--pin`` gives the server a core of its own, as S3
is on other machines: the server on the last core, convpipe (both runs, ``--workers`` cores - 1)
on the others. Peak RSS is convpipe's alone; user+system CPU seconds are convpipe's.

``--server`` picks the server: ``moto`` (moto_server, as the tests run it, with checked
credentials), ``moto-s3`` (moto's S3 backend served alone: moto_server works out the service of
every request under one lock, half of its CPU here), or ``s3rver`` (Node.js, objects on disk,
from the npm registry: ``npm install --prefix /tmp/s3rver s3rver``, then ``--s3rver
/tmp/s3rver/node_modules/.bin/s3rver``; it ignores ``If-None-Match``, enough for one writer).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests")]

import bench  # noqa: E402  (scripts/bench.py: the same measurement)
from s3server import REGION, S3Server, running_moto  # noqa: E402

PIPELINE = [
    {"filter": "gaussian", "sigma": 2.0},
    {"filter": "sharpen", "amount": 1.0},
    {"filter": "sobel"},
]


# moto's S3 backend served alone: moto_server routes every request through a dispatcher that
# works out the service under one lock (half of its CPU here, and it serialises the requests).
MOTO_S3_ONLY = """
import sys
from moto.moto_server.werkzeug_app import create_backend_app
from werkzeug.serving import run_simple
run_simple("127.0.0.1", int(sys.argv[1]), create_backend_app("s3"), threaded=True)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.1)


@contextlib.contextmanager
def running_moto_s3() -> Iterator[S3Server]:
    """moto's S3 alone on a free loopback port (any credentials are accepted)."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", MOTO_S3_ONLY, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": REGION}
    server = S3Server(endpoint=endpoint, env={**env, "AWS_ENDPOINT_URL": endpoint}, process=process)
    try:
        _wait_for_port(port, process, "moto's S3 backend")
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def running_s3rver(binary: str, folder: Path) -> Iterator[S3Server]:
    """s3rver on a free loopback port, its objects under ``folder``."""
    port = _free_port()
    bucket = f"convpipe-{uuid.uuid4().hex[:12]}"
    command = [binary, "-d", str(folder), "-a", "127.0.0.1", "-p", str(port), "--silent", "--configure-bucket", bucket]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "S3RVER",  # s3rver's fixed credentials
        "AWS_SECRET_ACCESS_KEY": "S3RVER",
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
    }
    server = S3Server(endpoint=endpoint, env=env, process=process)
    server.new_bucket = lambda: bucket  # type: ignore[method-assign]
    try:
        _wait_for_port(port, process, " ".join(command))
        yield server
    finally:
        server.stop()


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process (the server), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_input(url: str, size: int, chunk: int, env: dict[str, str]) -> None:
    """The input, written chunk-row by chunk-row (never whole in memory)."""
    import numpy as np
    import zarr

    from convpipe.io import stores

    os.environ.update(env)
    stores.open_store.cache_clear()
    target = stores.open_store(stores.parse(url), read_only=False)
    array = zarr.create_array(store=target, shape=(size, size), chunks=(chunk, chunk), dtype="uint16")
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:chunk, 0:size]
    for top in range(0, size, chunk):
        rows = (np.sin((y + top) / 97.0) * np.cos(x / 53.0) * 20000 + 30000).astype(np.uint16)
        array[top : top + chunk] = rows + rng.integers(0, 500, rows.shape, dtype=np.uint16)


def config_file(folder: Path, name: str, source: str, output: str) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"input": {"path": source}, "output": {"path": output}, "pipeline": PIPELINE}))
    return path


def same_output(local: str, remote: str, env: dict[str, str]) -> bool:
    import numpy as np
    import zarr

    from convpipe.io import stores

    os.environ.update(env)
    stores.open_store.cache_clear()
    a = zarr.open_array(store=stores.open_store(stores.parse(local)), mode="r")
    b = zarr.open_array(store=stores.open_store(stores.parse(remote)), mode="r")
    rows = a.chunks[0]
    return all(np.array_equal(a[i : i + rows], b[i : i + rows]) for i in range(0, a.shape[0], rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8192, help="image side in pixels (default 8192)")
    parser.add_argument("--chunk", type=int, default=512, help="input chunk side (default 512)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument("--pin", action="store_true", help="the server on the last core, convpipe on the others")
    parser.add_argument(
        "--server",
        choices=("moto", "moto-s3", "s3rver"),
        default="moto",
        help="moto_server as the tests run it (default); moto's S3 backend alone; s3rver (--s3rver)",
    )
    parser.add_argument("--s3rver", metavar="PATH", help="the s3rver executable (npm install s3rver)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="convpipe-bench-s3-")))
        if args.server == "s3rver":
            if not args.s3rver:
                parser.error("--server s3rver needs --s3rver PATH")
            (folder / "s3rver").mkdir()
            server = stack.enter_context(running_s3rver(args.s3rver, folder / "s3rver"))
        elif args.server == "moto-s3":
            server = stack.enter_context(running_moto_s3())
        else:
            server = stack.enter_context(running_moto())
        bucket = server.new_bucket()
        env = {**os.environ, **server.env}
        local_in, local_out = str(folder / "in.zarr"), str(folder / "out.zarr")
        remote_in, remote_out = f"s3://{bucket}/in.zarr", f"s3://{bucket}/out.zarr"
        make_input(local_in, args.size, args.chunk, env)
        make_input(remote_in, args.size, args.chunk, env)
        bench.warm(Path(local_in))
        configs = {
            "local": config_file(folder, "local", local_in, local_out),
            "s3": config_file(folder, "s3", remote_in, remote_out),
        }
        convpipe = str(Path(sys.executable).with_name("convpipe"))
        extra: list[str] = []
        if args.pin:
            cores = sorted(os.sched_getaffinity(0))
            os.sched_setaffinity(server.process.pid, {cores[-1]})
            os.sched_setaffinity(0, set(cores[:-1]))  # convpipe's runs inherit it
            extra = ["--workers", str(len(cores) - 1)]
        runs: dict[str, list[dict[str, Any]]] = {"local": [], "s3": []}
        for round_ in range(args.repeat):
            order = ("local", "s3") if round_ % 2 == 0 else ("s3", "local")
            for name in order:
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                served = process_cpu(server.process.pid)
                result = bench.measure([convpipe, "run", str(configs[name]), "--overwrite", "--quiet", *extra], env)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                result["cpu_s"] = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
                result["server_cpu_s"] = process_cpu(server.process.pid) - served
                if result["returncode"] != 0:
                    print(f"{name} failed:\n{result['stderr_tail']}", file=sys.stderr)
                    return 1
                runs[name].append(result)
                wall_s, rss, cpu_s = result["wall_s"], result["peak_rss"] / 2**20, result["cpu_s"]
                print(
                    f"round {round_ + 1} {name:5s} {wall_s:6.2f} s  {rss:6.0f} MiB  cpu {cpu_s:.1f} s"
                    f"  (server cpu {result['server_cpu_s']:.1f} s)"
                )
        identical = same_output(local_out, remote_out, env)
        mb = args.size * args.size * 2 / 1e6
        print(f"\n{args.size}² uint16 ({mb:.0f} MB), {args.chunk}² chunks, edges chain, medians of {args.repeat}:")
        wall = {name: statistics.median(r["wall_s"] for r in runs[name]) for name in runs}
        rss = {name: statistics.median(r["peak_rss"] for r in runs[name]) for name in runs}
        cpu = {name: statistics.median(r["cpu_s"] for r in runs[name]) for name in runs}
        server_cpu = statistics.median(r["server_cpu_s"] for r in runs["s3"])
        for name in runs:
            rate, peak = mb / wall[name], rss[name] / 2**20
            print(f"  {name:5s} {wall[name]:6.2f} s  {rate:6.1f} MB/s  peak RSS {peak:6.0f} MiB  cpu {cpu[name]:.1f} s")
        ratios = [
            f"{what} {values['s3'] / values['local']:.2f}x" for what, values in (("time", wall), ("peak RSS", rss))
        ]
        print(f"  s3 / local: {', '.join(ratios)}, convpipe CPU {cpu['s3'] / cpu['local']:.2f}x")
        print(f"  the S3 server's CPU during the s3 run: {server_cpu:.1f} s ({args.server})")
        print(f"  outputs identical: {identical}")
        return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
