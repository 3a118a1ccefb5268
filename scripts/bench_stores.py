#!/usr/bin/env python
"""obstore vs fsspec/s3fs as convpipe's zarr store over S3: the measurement behind convpipe.io.stores.

Starts moto's S3 server on loopback (tests/s3server.py), then, for each round, runs one fresh
subprocess per backend (order alternating between rounds) that writes an uncompressed zarr array of
N chunks of M MiB through the store and reads it back, checking the bytes. Prints the median wall
times and peak RSS (``resource.getrusage`` in the subprocess, which holds the source array and the
read-back copy: 2 x N x M MiB for either backend) and its growth once the source array exists
(the read-back copy plus what the store and zarr hold in flight).

    .venv/bin/python scripts/bench_stores.py            # 64 chunks of 4 MiB, 3 rounds
    .venv/bin/python scripts/bench_stores.py --chunks 16 --rounds 1

Needs moto[server], boto3 and s3fs (test extras). moto is a single Python process and is itself the
slowest part, so the numbers compare the client sides under the same server, not S3's speed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BACKENDS = ("obstore", "fsspec")


def worker(backend: str, url: str, chunks: int, chunk_mib: int) -> dict[str, float]:
    """One run in a fresh process: write then read the array through one backend."""
    import numpy as np
    import zarr

    side = 1024
    rows = chunk_mib * 1024 * 1024 // (side * 4)  # float32 chunks of chunk_mib MiB
    shape = (rows * chunks, side)
    data = np.random.default_rng(0).random(shape, dtype=np.float32)
    baseline_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    if backend == "obstore":
        from convpipe.io.stores import open_store, parse

        store = open_store(parse(url), read_only=False)
    else:
        from zarr.storage import FsspecStore

        options = {
            "endpoint_url": os.environ["AWS_ENDPOINT_URL"],
            "key": os.environ["AWS_ACCESS_KEY_ID"],
            "secret": os.environ["AWS_SECRET_ACCESS_KEY"],
            "client_kwargs": {"region_name": os.environ["AWS_REGION"]},
        }
        store = FsspecStore.from_url(url, storage_options=options, read_only=False)
    start = time.perf_counter()
    array = zarr.create_array(store=store, shape=shape, chunks=(rows, side), dtype="float32", compressors=None)
    array[:] = data
    wrote = time.perf_counter()
    back = zarr.open_array(store=store, mode="r")[:]
    read = time.perf_counter()
    if not np.array_equal(back, data):
        raise SystemExit(f"{backend}: read back different data")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    growth_mib = peak_mib - baseline_mib
    return {"write_s": wrote - start, "read_s": read - wrote, "peak_rss_mib": peak_mib, "growth_mib": growth_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--chunk-mib", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.url, args.chunks, args.chunk_mib)))
        return

    sys.path.insert(0, str(HERE.parent / "tests"))
    from s3server import running_moto

    results: dict[str, list[dict[str, float]]] = {b: [] for b in BACKENDS}
    with running_moto() as server:
        bucket = server.new_bucket()
        client = server.client()
        for round_ in range(args.rounds):
            order = BACKENDS if round_ % 2 == 0 else BACKENDS[::-1]
            for backend in order:
                prefix = f"{backend}-{round_}"
                command = [sys.executable, __file__, "--worker", backend, "--url", f"s3://{bucket}/{prefix}/a.zarr"]
                command += ["--chunks", str(args.chunks), "--chunk-mib", str(args.chunk_mib)]
                env = {**os.environ, **server.env}
                done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise SystemExit(f"{backend} run failed:\n{done.stderr}")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                results[backend].append(result)
                print(f"round {round_ + 1} {backend:8s} " + "  ".join(f"{k}={v:.2f}" for k, v in result.items()))
                listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
                while listed:  # keep moto's memory flat between runs
                    client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": o["Key"]} for o in listed]})
                    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])

    total = args.chunks * args.chunk_mib
    print(f"\nmedians over {args.rounds} rounds, {args.chunks} chunks x {args.chunk_mib} MiB = {total} MiB each way")
    print("backend     write s   read s  write MiB/s  read MiB/s  peak RSS MiB  RSS growth MiB")
    for backend, runs in results.items():
        write = statistics.median(r["write_s"] for r in runs)
        read = statistics.median(r["read_s"] for r in runs)
        rss = statistics.median(r["peak_rss_mib"] for r in runs)
        growth = statistics.median(r["growth_mib"] for r in runs)
        line = f"{backend:10s} {write:8.2f} {read:8.2f} {total / write:12.1f} {total / read:11.1f} {rss:13.0f}"
        print(f"{line} {growth:15.0f}")


if __name__ == "__main__":
    main()
