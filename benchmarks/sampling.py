"""Sampling at scale: keys/s and peak memory of the streaming draw, side by side with the
obvious alternative (hold every key, then `random.sample`), and a real run on moto S3.

    .venv/bin/python benchmarks/sampling.py [--keys 1000000] [--objects 20000] [--size 1000]

Part 1 feeds a generator of simulated keys (laid out like `requests/<date>/<id>.json`)
to the draw; memory is Python's own allocation peak (tracemalloc), measured in a separate
pass from the timing because tracing slows allocation down. Part 2 writes real objects to
a local moto S3 server and runs the whole of `sample_documents` over them: paginated
listing, the draw, reading, checks and dedup.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from stillroom.env import apply_offline_env

apply_offline_env()

from stillroom import services  # noqa: E402
from stillroom.config import SamplingConfig, load_config  # noqa: E402
from stillroom.dedup import DedupConfig, Deduplicator  # noqa: E402
from stillroom.sampling import fill_pool, sample_documents  # noqa: E402
from stillroom.storage import ensure_bucket, iter_objects, make_s3_client, put_json  # noqa: E402
from stillroom.targets import load_target  # noqa: E402


def simulated_keys(n: int) -> Iterator[str]:
    for i in range(n):
        yield f"requests/2026-{1 + i % 12:02d}-{1 + i % 28:02d}/req-{i:09d}-a1b2c3d4.json"


def streaming_draw(n: int, size: int) -> int:
    pool, listed, _ = fill_pool(simulated_keys(n), SamplingConfig(size=size), oversample=1.3)
    return len(pool.ordered())


def hold_everything_draw(n: int, size: int) -> int:
    keys = list(simulated_keys(n))
    return len(random.Random(13).sample(keys, min(size, len(keys))))


def measure(draw: Callable[[int, int], int], n: int, size: int) -> tuple[float, float]:
    started = time.perf_counter()
    draw(n, size)
    elapsed = time.perf_counter() - started
    tracemalloc.start()
    draw(n, size)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return n / elapsed, peak / 2**20


def part_simulated(n: int, size: int) -> None:
    print(f"part 1: {n:,} simulated keys, sample of {size}")
    stream_rate, stream_mib = measure(streaming_draw, n, size)
    hold_rate, hold_mib = measure(hold_everything_draw, n, size)
    print(f"  streaming bottom-k draw   {stream_rate:>10,.0f} keys/s   peak {stream_mib:8.2f} MiB")
    print(f"  hold every key + sample   {hold_rate:>10,.0f} keys/s   peak {hold_mib:8.2f} MiB")
    print(
        f"  memory ratio {hold_mib / stream_mib:.0f}x less for the stream; "
        f"speed ratio {stream_rate / hold_rate:.2f}x (the stream hashes every key)"
    )


def document(i: int) -> dict:
    return {
        "id": f"req-{i}",
        "messages": [{"role": "user", "content": f"Convert {i} EUR to USD for invoice {i * 7}"}],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "convert_currency",
                    "description": "Convert an amount between currencies.",
                    "parameters": {
                        "type": "object",
                        "properties": {"amount": {"type": "number"}, "to": {"type": "string"}},
                    },
                },
            }
        ],
    }


def part_moto(objects: int, size: int) -> None:
    print(f"\npart 2: {objects:,} objects on a local moto S3 server, sample of {size}")
    services.ensure_local_aws_credentials()
    with (
        tempfile.TemporaryDirectory() as tmp,
        services.running(services.start_moto(Path(tmp))) as server,
    ):
        cfg = load_config(None, [f"storage.endpoint_url={server.url}"])
        s3, bucket = make_s3_client(cfg.storage), cfg.storage.bucket
        ensure_bucket(s3, bucket)
        started = time.perf_counter()

        def write(i: int) -> None:
            put_json(s3, bucket, f"requests/2026-11-{1 + i % 28:02d}/req-{i:07d}.json", document(i))

        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(write, range(objects)))
        print(f"  wrote {objects:,} objects in {time.perf_counter() - started:.0f} s")
        sampling = cfg.sampling.model_copy(update={"size": size})
        target = load_target(cfg.target)
        Deduplicator(DedupConfig())  # imports datasketch/scipy now, outside the measurements

        started = time.perf_counter()
        keys = (obj["Key"] for obj in iter_objects(s3, bucket, sampling.prefix))
        _, listed, _ = fill_pool(keys, sampling, sampling.oversample)
        listing_s = time.perf_counter() - started
        print(f"  listing + draw alone: {listing_s:.1f} s, {listed / listing_s:,.0f} keys/s")

        started = time.perf_counter()
        manifest = sample_documents(s3, bucket, sampling, target)
        elapsed = time.perf_counter() - started
        counts = manifest.counts()
        print(
            f"  sample_documents (list, draw, read {counts['examined']}, check, dedup): "
            f"{elapsed:.1f} s, {counts['listed'] / elapsed:,.0f} keys listed/s"
        )
        tracemalloc.start()
        sample_documents(s3, bucket, sampling, target)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"  peak Python memory of that run: {peak / 2**20:.1f} MiB")
        print("  counts: " + json.dumps({k: v for k, v in counts.items() if k != "strata"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--objects", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=1000)
    args = parser.parse_args()
    part_simulated(args.keys, args.size)
    part_moto(args.objects, min(args.size, args.objects))


if __name__ == "__main__":
    main()
